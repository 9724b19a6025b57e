//! The value types of the cluster's options (Barman has none of them): node names,
//! `host:port` addresses, bootstrap peers, seconds and files. Each parses once here, so
//! the node and the cluster commands only see valid values.

use super::{OptType, Parsed};
use serde_json::{Value, json};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// What a node name may be, as error messages say it.
pub const NODE_NAME_FORM: &str =
    "a DNS-style name of up to 63 letters, digits, '-', '_' and '.', starting with a letter or digit";

/// The form of an address, as error messages say it.
pub const HOST_PORT_FORM: &str = "host:port or [ipv6]:port";

/// A node's name in the cluster (`node_name`, `cluster_peers`, `owner_candidates`). It is
/// the DNS name in the node's certificate and may become a file name or a metrics label:
/// hence a DNS name's rules, on a small alphabet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName(String);

impl NodeName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeNameError {
    #[error("the name is empty")]
    Empty,
    #[error("the name '{0}' is longer than 63 characters")]
    TooLong(String),
    #[error("the name '{name}' contains '{ch}'")]
    BadChar { name: String, ch: char },
    #[error("the name '{0}' does not start with a letter or digit")]
    BadStart(String),
    #[error("the name '{0}' has an empty part between dots, or a part starting or ending with '-'")]
    BadLabel(String),
    #[error("the name '{0}' ends with a part of digits only, like an address")]
    Numeric(String),
}

impl FromStr for NodeName {
    type Err = NodeNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some(first) = s.chars().next() else { return Err(NodeNameError::Empty) };
        if let Some(ch) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
            return Err(NodeNameError::BadChar { name: s.to_string(), ch });
        }
        if !first.is_ascii_alphanumeric() {
            return Err(NodeNameError::BadStart(s.to_string()));
        }
        if s.len() > 63 {
            return Err(NodeNameError::TooLong(s.to_string()));
        }
        if s.split('.').any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-')) {
            return Err(NodeNameError::BadLabel(s.to_string()));
        }
        // TLS name checks refuse a last label of digits (it reads as an IPv4 address).
        if s.rsplit('.').next().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit())) {
            return Err(NodeNameError::Numeric(s.to_string()));
        }
        Ok(NodeName(s.to_string()))
    }
}

impl std::ops::Deref for NodeName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for NodeName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for NodeName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for NodeName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for NodeName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The host of an address: an IP address, or a name the system resolver looks up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => ip.fmt(f),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// `host:port`: `10.0.0.1:7000`, `[fd00::1]:7000` or `node1.example:7000`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: Host,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPortError {
    #[error("the address is empty")]
    Empty,
    #[error("'{0}' has no port")]
    NoPort(String),
    #[error("'{0}' has no host before the port")]
    NoHost(String),
    #[error("the port of '{0}' is not a number from 1 to 65535")]
    BadPort(String),
    #[error("'{0}' has '[' without ']'")]
    Unclosed(String),
    #[error("'{0}' has no IPv6 address between its brackets")]
    BadIpv6(String),
    #[error("'{0}' has an IPv6 address without brackets")]
    Unbracketed(String),
    #[error("'{0}' has an invalid IPv4 address")]
    BadIpv4(String),
    #[error("'{0}' has an invalid host name")]
    BadName(String),
}

/// A host name: dot-separated labels of letters, digits, `-` and `_` (the underscore is
/// not DNS, but container names use it), no label starting or ending with `-`.
fn valid_host_name(h: &str) -> bool {
    h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl FromStr for HostPort {
    type Err = HostPortError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(HostPortError::Empty);
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or_else(|| HostPortError::Unclosed(s.to_string()))?;
            let ip: Ipv6Addr = inner.parse().map_err(|_| HostPortError::BadIpv6(s.to_string()))?;
            let port = after.strip_prefix(':').ok_or_else(|| HostPortError::NoPort(s.to_string()))?;
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = s.rsplit_once(':').ok_or_else(|| HostPortError::NoPort(s.to_string()))?;
            let host = if host.contains(':') {
                return Err(HostPortError::Unbracketed(s.to_string()));
            } else if host.is_empty() {
                return Err(HostPortError::NoHost(s.to_string()));
            } else if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                // All digits and dots: meant as IPv4, not as a (legal but odd) host name.
                Host::Ip(IpAddr::V4(host.parse::<Ipv4Addr>().map_err(|_| HostPortError::BadIpv4(s.to_string()))?))
            } else if valid_host_name(host) {
                Host::Name(host.to_string())
            } else {
                return Err(HostPortError::BadName(s.to_string()));
            };
            (host, port)
        };
        let port = Some(port)
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| HostPortError::BadPort(s.to_string()))?;
        Ok(HostPort { host, port })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            h => write!(f, "{h}:{}", self.port),
        }
    }
}

impl From<SocketAddr> for HostPort {
    fn from(a: SocketAddr) -> Self {
        HostPort { host: Host::Ip(a.ip()), port: a.port() }
    }
}

impl HostPort {
    /// `0.0.0.0` or `[::]`: a server may bind it, no peer can dial it.
    pub fn is_unspecified(&self) -> bool {
        matches!(&self.host, Host::Ip(ip) if ip.is_unspecified())
    }

    /// The socket addresses it names, a host name through the system resolver.
    pub fn socket_addrs(&self) -> std::io::Result<Vec<SocketAddr>> {
        match &self.host {
            Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, self.port)]),
            Host::Name(n) => Ok((n.as_str(), self.port).to_socket_addrs()?.collect()),
        }
    }
}

/// One item of `cluster_peers`: `name=host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    pub name: NodeName,
    pub addr: HostPort,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("no '=' between name and address")]
    NoEquals,
    #[error(transparent)]
    Name(#[from] NodeNameError),
    #[error(transparent)]
    Addr(#[from] HostPortError),
}

impl FromStr for Peer {
    type Err = PeerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, addr) = s.split_once('=').ok_or(PeerError::NoEquals)?;
        Ok(Peer { name: name.trim().parse()?, addr: addr.trim().parse()? })
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.addr)
    }
}

/// The items of a comma-separated list, trimmed (a value may span several lines).
fn items(raw: &str) -> impl Iterator<Item = &str> {
    raw.split(',').map(str::trim)
}

const EMPTY_ITEM: &str = "an item is empty (a comma too many)";

/// `node_name`: empty leaves it unset.
impl OptType for Option<NodeName> {
    fn parse(raw: &str) -> Parsed<Self> {
        if raw.is_empty() {
            return Parsed::Unset;
        }
        match raw.parse() {
            Ok(n) => Parsed::Set(Some(n)),
            Err(e) => Parsed::Invalid(format!("{e}; expected {NODE_NAME_FORM}")),
        }
    }
    fn show(&self) -> String {
        self.as_ref().map_or("None".into(), |n| n.to_string())
    }
    fn json(&self) -> Value {
        json!(self.as_ref().map(|n| n.to_string()))
    }
}

/// `owner_candidates`: node names, most preferred first; empty means every member.
impl OptType for Vec<NodeName> {
    fn parse(raw: &str) -> Parsed<Self> {
        const FORM: &str = "expected node names separated by commas";
        let mut names: Vec<NodeName> = Vec::new();
        if raw.trim().is_empty() {
            return Parsed::Set(names);
        }
        for item in items(raw) {
            if item.is_empty() {
                return Parsed::Invalid(format!("{EMPTY_ITEM}; {FORM}"));
            }
            let name: NodeName = match item.parse() {
                Ok(n) => n,
                Err(e) => return Parsed::Invalid(format!("{e}; {FORM}, each {NODE_NAME_FORM}")),
            };
            if names.contains(&name) {
                return Parsed::Invalid(format!("the name '{name}' is given twice; {FORM}, each once"));
            }
            names.push(name);
        }
        Parsed::Set(names)
    }
    /// The list as written in the file (Barman has no such option to mimic).
    fn show(&self) -> String {
        self.iter().map(NodeName::as_str).collect::<Vec<_>>().join(", ")
    }
    fn json(&self) -> Value {
        json!(self.iter().map(NodeName::as_str).collect::<Vec<_>>())
    }
}

/// `node_listen`, `node_advertise`, `node_metrics_listen`: empty leaves the default (for
/// `node_advertise`, `node_listen`).
impl OptType for Option<HostPort> {
    fn parse(raw: &str) -> Parsed<Self> {
        if raw.is_empty() {
            return Parsed::Unset;
        }
        match raw.parse() {
            Ok(a) => Parsed::Set(Some(a)),
            Err(e) => Parsed::Invalid(format!("{e}; expected {HOST_PORT_FORM}")),
        }
    }
    fn show(&self) -> String {
        self.as_ref().map_or("None".into(), |a| a.to_string())
    }
    fn json(&self) -> Value {
        json!(self.as_ref().map(|a| a.to_string()))
    }
}

/// `cluster_peers`: `name=host:port` items, each name and each address once.
impl OptType for Vec<Peer> {
    fn parse(raw: &str) -> Parsed<Self> {
        const FORM: &str = "expected name=host:port";
        let mut peers: Vec<Peer> = Vec::new();
        if raw.trim().is_empty() {
            return Parsed::Set(peers);
        }
        for item in items(raw) {
            if item.is_empty() {
                return Parsed::Invalid(format!("{EMPTY_ITEM}; {FORM} items separated by commas"));
            }
            let peer: Peer = match item.parse() {
                Ok(p) => p,
                Err(e) => return Parsed::Invalid(format!("item '{item}': {e}; {FORM}")),
            };
            if let Some(first) = peers.iter().find(|p| p.name == peer.name) {
                return Parsed::Invalid(format!(
                    "item '{item}': the name '{}' is already given to '{first}'; {FORM}, each name once",
                    peer.name
                ));
            }
            if let Some(first) = peers.iter().find(|p| p.addr == peer.addr) {
                return Parsed::Invalid(format!(
                    "item '{item}': the address '{}' is already given to '{first}'; {FORM}, each address once",
                    peer.addr
                ));
            }
            peers.push(peer);
        }
        Parsed::Set(peers)
    }
    fn show(&self) -> String {
        self.iter().map(Peer::to_string).collect::<Vec<_>>().join(", ")
    }
    fn json(&self) -> Value {
        json!(self.iter().map(|p| json!({"name": p.name.as_str(), "addr": p.addr.to_string()})).collect::<Vec<_>>())
    }
}

/// A non-negative decimal number of seconds (`2.5`), read exactly to the nanosecond.
pub fn parse_seconds(raw: &str) -> Option<Duration> {
    let t = raw.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) || frac.len() > 9 {
        return None;
    }
    let secs = if int.is_empty() { 0 } else { int.parse().ok()? };
    let nanos = format!("{frac:0<9}").parse().ok()?;
    Some(Duration::new(secs, nanos))
}

/// Seconds as a decimal without trailing zeros: `3`, `2.5`.
pub fn show_seconds(d: Duration) -> String {
    match d.subsec_nanos() {
        0 => d.as_secs().to_string(),
        n => format!("{}.{}", d.as_secs(), format!("{n:09}").trim_end_matches('0')),
    }
}

/// `ownership_lease`: seconds; empty leaves the default.
impl OptType for Duration {
    fn parse(raw: &str) -> Parsed<Self> {
        if raw.is_empty() {
            return Parsed::Unset;
        }
        match parse_seconds(raw) {
            Some(d) => Parsed::Set(d),
            None => Parsed::Invalid(format!("'{raw}' is not a number of seconds; expected seconds such as 3 or 2.5")),
        }
    }
    fn show(&self) -> String {
        show_seconds(*self)
    }
    fn json(&self) -> Value {
        json!(self.as_secs_f64())
    }
}

/// A file with a default (the TLS files): empty leaves the default.
impl OptType for PathBuf {
    fn parse(raw: &str) -> Parsed<Self> {
        if raw.is_empty() { Parsed::Unset } else { Parsed::Set(PathBuf::from(raw)) }
    }
    fn show(&self) -> String {
        self.display().to_string()
    }
    fn json(&self) -> Value {
        json!(self.display().to_string())
    }
}
