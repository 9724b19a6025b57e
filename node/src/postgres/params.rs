//! From a [`Conninfo`] to the parameters of an actual connection, with libpq's
//! defaults: environment variables (`PGHOST`, `PGPORT`, ...), the OS user, the
//! Unix socket directory and the password file. The environment is passed in as a
//! [`LibpqEnv`] so that tests never touch the process environment.

use super::conninfo::{Conninfo, ConninfoError};
use super::pgpass::{self, PgpassKey};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// How long a connection attempt may take when the conninfo does not say. libpq
/// waits forever; a `barman check` against a dead host must not.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

pub const DEFAULT_PORT: u16 = 5432;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl FromStr for SslMode {
    type Err = ConninfoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return Err(invalid("sslmode", s)),
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where to connect: a TCP host name or address, or a Unix socket directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Tcp(String),
    Socket(PathBuf),
}

impl Host {
    /// libpq treats a host starting with `/` as a socket directory.
    fn from_text(s: &str) -> Host {
        if s.starts_with('/') { Host::Socket(PathBuf::from(s)) } else { Host::Tcp(s.to_string()) }
    }
}

/// The server's root certificate source for `verify-ca` / `verify-full`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    /// `sslrootcert=system` (libpq 16+): the operating system's trust store.
    System,
}

/// A secret that prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// What libpq would read from the process: its variables, the OS user and home,
/// and the compiled-in socket directory.
#[derive(Clone)]
pub struct LibpqEnv {
    vars: BTreeMap<String, String>,
    os_user: Option<String>,
    home: Option<PathBuf>,
    default_socket_dir: PathBuf,
}

/// Variable names only: PGPASSWORD is among the values.
impl fmt::Debug for LibpqEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LibpqEnv")
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("os_user", &self.os_user)
            .field("home", &self.home)
            .field("default_socket_dir", &self.default_socket_dir)
            .finish()
    }
}

impl LibpqEnv {
    /// The real environment of this process.
    pub fn from_process() -> Self {
        let vars = std::env::vars().filter(|(k, _)| k.starts_with("PG")).collect();
        let (os_user, pw_home) = crate::config::os_user::passwd_entry();
        // libpq prefers $HOME and falls back to the passwd entry.
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from).or(pw_home);
        let debian_dir = Path::new("/var/run/postgresql");
        // Debian's libpq uses /var/run/postgresql, upstream's /tmp.
        let default_socket_dir = if debian_dir.is_dir() { debian_dir.to_path_buf() } else { PathBuf::from("/tmp") };
        LibpqEnv { vars, os_user, home, default_socket_dir }
    }

    /// No variables, no user, no home; sockets in /tmp. For tests.
    pub fn isolated() -> Self {
        LibpqEnv { vars: BTreeMap::new(), os_user: None, home: None, default_socket_dir: PathBuf::from("/tmp") }
    }

    pub fn with_var(mut self, key: &str, value: &str) -> Self {
        self.vars.insert(key.to_string(), value.to_string());
        self
    }

    pub fn with_os_user(mut self, user: &str) -> Self {
        self.os_user = Some(user.to_string());
        self
    }

    pub fn with_home(mut self, home: impl Into<PathBuf>) -> Self {
        self.home = Some(home.into());
        self
    }

    pub fn with_default_socket_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.default_socket_dir = dir.into();
        self
    }

    pub fn default_socket_dir(&self) -> &Path {
        &self.default_socket_dir
    }

    /// libpq ignores empty values for the settings handled here.
    fn var(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn home_file(&self, rel: &str) -> Option<PathBuf> {
        self.home.as_ref().map(|h| h.join(rel))
    }
}

/// Keywords libpq knows that we act on, ignore on purpose, or refuse.
const HONOURED: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "connect_timeout",
    "options",
    "application_name",
    "fallback_application_name",
    "sslmode",
    "requiressl",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslnegotiation",
    "channel_binding",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "target_session_attrs",
    "load_balance_hosts",
    "replication",
];

/// Keywords without effect on what we do: client-side encoding (we always speak
/// UTF-8), GSSAPI knobs while GSSAPI is not required, legacy or cosmetic ones.
const IGNORED: &[&str] = &[
    "client_encoding",
    "sslcompression",
    "sslsni",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "authtype",
    "tty",
    "min_protocol_version",
    "max_protocol_version",
];

/// Keywords we cannot honour; connecting while ignoring them would connect
/// somewhere else or with weaker security than asked for.
const REFUSED: &[(&str, &str)] = &[
    ("service", "connection service files are not read"),
    ("require_auth", "authentication method restrictions are not implemented"),
    ("requirepeer", "peer credential checks are not implemented"),
    ("sslcrl", "certificate revocation lists are not implemented"),
    ("sslcrldir", "certificate revocation lists are not implemented"),
    ("sslcertmode", "sslcertmode is not implemented"),
    ("sslpassword", "encrypted client keys are not supported"),
    ("scram_client_key", "SCRAM pass-through keys are not supported"),
    ("scram_server_key", "SCRAM pass-through keys are not supported"),
    ("oauth_issuer", "OAuth authentication is not supported"),
    ("oauth_client_id", "OAuth authentication is not supported"),
    ("oauth_client_secret", "OAuth authentication is not supported"),
    ("oauth_scope", "OAuth authentication is not supported"),
];

/// SCRAM channel binding (`channel_binding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelBinding {
    Disable,
    #[default]
    Prefer,
    Require,
}

/// Everything needed to open one connection, resolved.
#[derive(Debug, Clone)]
pub struct ConnParams {
    pub hosts: Vec<Host>,
    /// Numeric addresses (`hostaddr`), one per host when given.
    pub hostaddrs: Vec<IpAddr>,
    /// One port for all hosts, or one per host.
    pub ports: Vec<u16>,
    pub user: String,
    pub dbname: String,
    password: Option<Password>,
    /// The password file the password came from, for error messages as libpq's.
    pub password_file: Option<PathBuf>,
    /// `None`: wait forever (`connect_timeout=0`, as libpq).
    pub connect_timeout: Option<Duration>,
    /// From the conninfo or `PGAPPNAME`, before any caller default applies.
    pub application_name: Option<String>,
    pub fallback_application_name: Option<String>,
    /// Whether the conninfo itself names the application (Barman's test).
    pub conninfo_sets_application_name: bool,
    pub options: Option<String>,
    pub sslmode: SslMode,
    pub ssl_direct: bool,
    pub sslrootcert: Option<RootCert>,
    /// Whether `sslrootcert` was given rather than defaulted (libpq's `require`
    /// verifies the CA only when the root file exists, given or default).
    pub sslrootcert_explicit: bool,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    pub channel_binding: ChannelBinding,
    pub keepalives: bool,
    pub keepalives_idle: Option<Duration>,
    pub keepalives_interval: Option<Duration>,
    pub keepalives_count: Option<u32>,
    pub tcp_user_timeout: Option<Duration>,
    pub target_read_write: bool,
    pub load_balance_random: bool,
    /// `replication=` as written (`true`, `database`...): for the replication
    /// client; a SQL connection refuses anything but a false value.
    pub replication: Option<String>,
    /// Things libpq would print as warnings (an unsafe password file).
    pub warnings: Vec<String>,
}

fn invalid(key: &str, value: &str) -> ConninfoError {
    ConninfoError::InvalidValue { key: key.to_string(), value: value.to_string() }
}

/// A conninfo value, or the environment variable libpq reads for it when the
/// key is not written at all; empty (written or in the environment) is unset.
fn pick(ci: &Conninfo, env: &LibpqEnv, key: &str, var: &str) -> Option<String> {
    match ci.get(key) {
        Some(v) => Some(v),
        None => env.var(var),
    }
    .filter(|v| !v.is_empty())
    .map(str::to_string)
}

/// libpq's `parse_int_param`: an integer, blanks allowed around it.
fn int_param(key: &str, value: &str) -> Result<i64, ConninfoError> {
    value.trim().parse::<i64>().map_err(|_| invalid(key, value))
}

fn seconds_param(key: &str, value: Option<String>) -> Result<Option<Duration>, ConninfoError> {
    match value {
        None => Ok(None),
        Some(v) => Ok(Some(Duration::from_secs(int_param(key, &v)?.max(0).unsigned_abs()))),
    }
}

impl ConnParams {
    /// Applies libpq's defaults to `ci`. Reads the password file if no password
    /// was given; its warnings land in `warnings`, and are logged.
    pub fn resolve(ci: &Conninfo, env: &LibpqEnv) -> Result<ConnParams, ConninfoError> {
        for (key, _) in ci.iter() {
            if let Some((_, why)) = REFUSED.iter().find(|(k, _)| *k == key) {
                return Err(ConninfoError::Unsupported { key: key.to_string(), why });
            }
            if !HONOURED.contains(&key) && !IGNORED.contains(&key) && key != "gssencmode" {
                return Err(ConninfoError::InvalidOption { key: key.to_string() });
            }
        }
        if let Some(v) = pick(ci, env, "gssencmode", "PGGSSENCMODE")
            && v == "require"
        {
            return Err(ConninfoError::Unsupported {
                key: "gssencmode".into(),
                why: "GSSAPI encryption is not supported",
            });
        }

        let hostaddrs = match pick(ci, env, "hostaddr", "PGHOSTADDR") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|a| a.trim().parse::<IpAddr>().map_err(|_| invalid("hostaddr", a)))
                .collect::<Result<_, _>>()?,
        };
        let hosts: Vec<Host> = match pick(ci, env, "host", "PGHOST") {
            Some(list) => list
                .split(',')
                .map(|h| if h.is_empty() { Host::Socket(env.default_socket_dir.clone()) } else { Host::from_text(h) })
                .collect(),
            // With only hostaddr, the addresses are also the names.
            None if !hostaddrs.is_empty() => hostaddrs.iter().map(|a| Host::Tcp(a.to_string())).collect(),
            None => vec![Host::Socket(env.default_socket_dir.clone())],
        };
        if !hostaddrs.is_empty() && hostaddrs.len() != hosts.len() {
            return Err(ConninfoError::InvalidValue {
                key: "hostaddr".into(),
                value: format!("{} addresses for {} hosts", hostaddrs.len(), hosts.len()),
            });
        }
        let ports: Vec<u16> = match pick(ci, env, "port", "PGPORT") {
            None => vec![DEFAULT_PORT],
            Some(list) => list
                .split(',')
                .map(|p| {
                    if p.trim().is_empty() {
                        return Ok(DEFAULT_PORT);
                    }
                    match int_param("port", p)? {
                        n @ 1..=65535 => Ok(n as u16),
                        _ => Err(invalid("port", p)),
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        if ports.len() != 1 && ports.len() != hosts.len() {
            return Err(ConninfoError::InvalidValue {
                key: "port".into(),
                value: format!("could not match {} port numbers to {} hosts", ports.len(), hosts.len()),
            });
        }

        let user = pick(ci, env, "user", "PGUSER").or_else(|| env.os_user.clone()).ok_or(ConninfoError::NoUser)?;
        let dbname = pick(ci, env, "dbname", "PGDATABASE").unwrap_or_else(|| user.clone());

        let connect_timeout = match pick(ci, env, "connect_timeout", "PGCONNECT_TIMEOUT") {
            None => Some(DEFAULT_CONNECT_TIMEOUT),
            Some(v) => match int_param("connect_timeout", &v)? {
                n if n <= 0 => None,
                // libpq rounds 1 up to 2 so that a single second boundary cannot expire it at once.
                1 => Some(Duration::from_secs(2)),
                n => Some(Duration::from_secs(n.unsigned_abs())),
            },
        };

        // requiressl= in the conninfo is stored as sslmode (Conninfo::set); the
        // deprecated PGREQUIRESSL counts only when PGSSLMODE is not set.
        let requiressl = env.var("PGREQUIRESSL").is_some_and(|v| v.starts_with('1'));
        let sslmode = match pick(ci, env, "sslmode", "PGSSLMODE") {
            Some(v) => v.parse()?,
            None if requiressl => SslMode::Require,
            None => SslMode::default(),
        };
        let ssl_direct = match pick(ci, env, "sslnegotiation", "PGSSLNEGOTIATION").as_deref() {
            None | Some("postgres") => false,
            Some("direct") => true,
            Some(v) => return Err(invalid("sslnegotiation", v)),
        };
        let given_root = pick(ci, env, "sslrootcert", "PGSSLROOTCERT");
        let sslrootcert_explicit = given_root.is_some();
        let sslrootcert = match given_root.as_deref() {
            Some("system") => Some(RootCert::System),
            Some(p) => Some(RootCert::File(PathBuf::from(p))),
            None => env.home_file(".postgresql/root.crt").map(RootCert::File),
        };
        let sslcert = pick(ci, env, "sslcert", "PGSSLCERT")
            .map(PathBuf::from)
            .or_else(|| env.home_file(".postgresql/postgresql.crt"));
        let sslkey = pick(ci, env, "sslkey", "PGSSLKEY")
            .map(PathBuf::from)
            .or_else(|| env.home_file(".postgresql/postgresql.key"));
        let channel_binding = match pick(ci, env, "channel_binding", "PGCHANNELBINDING").as_deref() {
            None | Some("prefer") => ChannelBinding::Prefer,
            Some("disable") => ChannelBinding::Disable,
            Some("require") => ChannelBinding::Require,
            Some(v) => return Err(invalid("channel_binding", v)),
        };
        let target_read_write = match pick(ci, env, "target_session_attrs", "PGTARGETSESSIONATTRS").as_deref() {
            None | Some("any") => false,
            Some("read-write") => true,
            Some(v) => {
                return Err(ConninfoError::Unsupported {
                    key: "target_session_attrs".into(),
                    why: if ["read-only", "primary", "standby", "prefer-standby"].contains(&v) {
                        "only \"any\" and \"read-write\" are implemented"
                    } else {
                        "invalid value"
                    },
                });
            }
        };
        let load_balance_random = match pick(ci, env, "load_balance_hosts", "PGLOADBALANCEHOSTS").as_deref() {
            None | Some("disable") => false,
            Some("random") => true,
            Some(v) => return Err(invalid("load_balance_hosts", v)),
        };
        let keepalives = match ci.get("keepalives") {
            None | Some("") => true,
            Some(v) => int_param("keepalives", v)? != 0,
        };
        let keepalives_count = match ci.get("keepalives_count").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(
                u32::try_from(int_param("keepalives_count", v)?.max(0)).map_err(|_| invalid("keepalives_count", v))?,
            ),
        };
        let tcp_user_timeout = match ci.get("tcp_user_timeout").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(Duration::from_millis(int_param("tcp_user_timeout", v)?.max(0).unsigned_abs())),
        };

        let mut params = ConnParams {
            hosts,
            hostaddrs,
            ports,
            user,
            dbname,
            password: None,
            password_file: None,
            connect_timeout,
            application_name: pick(ci, env, "application_name", "PGAPPNAME"),
            fallback_application_name: ci.get("fallback_application_name").map(str::to_string),
            conninfo_sets_application_name: ci.contains("application_name"),
            options: pick(ci, env, "options", "PGOPTIONS"),
            sslmode,
            ssl_direct,
            sslrootcert,
            sslrootcert_explicit,
            sslcert,
            sslkey,
            channel_binding,
            keepalives,
            keepalives_idle: seconds_param("keepalives_idle", ci.get("keepalives_idle").map(str::to_string))?,
            keepalives_interval: seconds_param(
                "keepalives_interval",
                ci.get("keepalives_interval").map(str::to_string),
            )?,
            keepalives_count,
            tcp_user_timeout,
            target_read_write,
            load_balance_random,
            replication: ci.get("replication").filter(|v| !v.is_empty()).map(str::to_string),
            warnings: Vec::new(),
        };
        params.password = match pick(ci, env, "password", "PGPASSWORD") {
            Some(p) => Some(Password(p)),
            None => params.password_from_file(ci, env),
        };
        Ok(params)
    }

    /// libpq consults the password file only when no non-empty password was given.
    fn password_from_file(&mut self, ci: &Conninfo, env: &LibpqEnv) -> Option<Password> {
        let file = pick(ci, env, "passfile", "PGPASSFILE").map(PathBuf::from).or_else(|| env.home_file(".pgpass"))?;
        let host = self.pgpass_host(env);
        let port = self.ports.first().copied().unwrap_or(DEFAULT_PORT).to_string();
        let key = PgpassKey { host: &host, port: &port, dbname: &self.dbname, user: &self.user };
        let found = pgpass::lookup(&file, key);
        if let Some(w) = found.warning {
            tracing::warn!("{w}");
            self.warnings.push(w);
        }
        let p = found.password?;
        self.password_file = Some(file);
        Some(Password(p))
    }

    /// The host name libpq matches in the password file: `localhost` for the
    /// default socket directory, otherwise the host (or address) as written.
    /// Only the first host is looked up: one connection carries one password.
    fn pgpass_host(&self, env: &LibpqEnv) -> String {
        match self.hosts.first() {
            Some(Host::Socket(dir)) if dir == env.default_socket_dir() => "localhost".to_string(),
            Some(Host::Socket(dir)) => dir.display().to_string(),
            Some(Host::Tcp(h)) => h.clone(),
            None => "localhost".to_string(),
        }
    }

    pub fn password(&self) -> Option<&Password> {
        self.password.as_ref()
    }

    /// Whether `replication=` asks for a walsender session (libpq's boolean
    /// spellings, or `database`).
    pub fn wants_replication(&self) -> bool {
        self.replication.as_deref().is_some_and(|v| !matches!(v, "0" | "false" | "off" | "no"))
    }

    /// The port of host `i`: its own, else the one given for all.
    pub fn port_for(&self, i: usize) -> u16 {
        self.ports.get(i).or(self.ports.first()).copied().unwrap_or(DEFAULT_PORT)
    }

    /// Host `i` as libpq names it in errors: `at "host", port N` (with the
    /// address when `hostaddr` differs) or `on socket "/dir/.s.PGSQL.N"`.
    pub fn host_target(&self, i: usize) -> String {
        let port = self.port_for(i);
        match self.hosts.get(i) {
            Some(Host::Tcp(name)) => match self.hostaddrs.get(i) {
                Some(a) if a.to_string() != *name => format!("at \"{name}\" ({a}), port {port}"),
                _ => format!("at \"{name}\", port {port}"),
            },
            Some(Host::Socket(dir)) => format!("on socket \"{}/.s.PGSQL.{port}\"", dir.display()),
            None => "(no host)".to_string(),
        }
    }

    /// Every host as [`ConnParams::host_target`] names it, for an error about all of them.
    pub fn target_description(&self) -> String {
        (0..self.hosts.len()).map(|i| self.host_target(i)).collect::<Vec<_>>().join(" / ")
    }

    /// The session's application_name: Barman's name for it unless the conninfo
    /// names the application itself (an environment PGAPPNAME does not stop
    /// it), else the fallback.
    pub fn session_application_name(&self, default: Option<&str>) -> Option<String> {
        if self.conninfo_sets_application_name {
            self.application_name.clone()
        } else {
            default.map(str::to_string).or_else(|| self.application_name.clone())
        }
        .or_else(|| self.fallback_application_name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn resolve(ci: &str, env: &LibpqEnv) -> ConnParams {
        ConnParams::resolve(&Conninfo::parse(ci).unwrap(), env).unwrap()
    }

    fn env() -> LibpqEnv {
        LibpqEnv::isolated().with_os_user("osuser").with_default_socket_dir("/run/pg")
    }

    #[test]
    fn defaults_as_libpq() {
        let p = resolve("", &env());
        assert_eq!(p.hosts, vec![Host::Socket("/run/pg".into())]);
        assert_eq!(p.ports, vec![5432]);
        assert_eq!(p.user, "osuser");
        assert_eq!(p.dbname, "osuser");
        assert!(p.password().is_none());
        assert_eq!(p.connect_timeout, Some(DEFAULT_CONNECT_TIMEOUT));
        assert_eq!(p.sslmode, SslMode::Prefer);
        assert_eq!(p.target_description(), "on socket \"/run/pg/.s.PGSQL.5432\"");
        assert!(matches!(ConnParams::resolve(&Conninfo::new(), &LibpqEnv::isolated()), Err(ConninfoError::NoUser)));
    }

    #[test]
    fn environment_then_conninfo() {
        let e = env()
            .with_var("PGHOST", "envhost")
            .with_var("PGPORT", "6000")
            .with_var("PGUSER", "envuser")
            .with_var("PGDATABASE", "envdb")
            .with_var("PGPASSWORD", "envpw")
            .with_var("PGAPPNAME", "envapp")
            .with_var("PGSSLMODE", "require")
            .with_var("PGCONNECT_TIMEOUT", "7");
        let p = resolve("", &e);
        assert_eq!(p.hosts, vec![Host::Tcp("envhost".into())]);
        assert_eq!(p.ports, vec![6000]);
        assert_eq!((p.user.as_str(), p.dbname.as_str()), ("envuser", "envdb"));
        assert_eq!(p.password().map(Password::expose), Some("envpw"));
        assert_eq!(p.application_name.as_deref(), Some("envapp"));
        assert!(!p.conninfo_sets_application_name);
        assert_eq!(p.sslmode, SslMode::Require);
        assert_eq!(p.connect_timeout, Some(Duration::from_secs(7)));
        let p = resolve("host=/sock port=1 user=u dbname=d password=pw application_name=a sslmode=disable", &e);
        assert_eq!(p.hosts, vec![Host::Socket("/sock".into())]);
        assert_eq!((p.ports[0], p.user.as_str(), p.dbname.as_str()), (1, "u", "d"));
        assert_eq!(p.password().map(Password::expose), Some("pw"));
        assert!(p.conninfo_sets_application_name);
        assert_eq!(p.sslmode, SslMode::Disable);
        // The user defaults the database, not the other way round.
        assert_eq!(resolve("user=x", &env()).dbname, "x");
    }

    #[test]
    fn timeouts_and_numbers() {
        assert_eq!(resolve("connect_timeout=0", &env()).connect_timeout, None);
        assert_eq!(resolve("connect_timeout=1", &env()).connect_timeout, Some(Duration::from_secs(2)));
        assert_eq!(resolve("connect_timeout=' 5 '", &env()).connect_timeout, Some(Duration::from_secs(5)));
        for bad in ["connect_timeout=x", "port=0", "port=70000", "port=abc", "sslmode=maybe", "hostaddr=nothost"] {
            let e = ConnParams::resolve(&Conninfo::parse(bad).unwrap(), &env()).unwrap_err();
            assert!(matches!(e, ConninfoError::InvalidValue { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn several_hosts() {
        let p = resolve("host=a,/s,b port=1,2,3", &env());
        assert_eq!(p.hosts, vec![Host::Tcp("a".into()), Host::Socket("/s".into()), Host::Tcp("b".into())]);
        assert_eq!(p.ports, vec![1, 2, 3]);
        assert_eq!(p.target_description(), "at \"a\", port 1 / on socket \"/s/.s.PGSQL.2\" / at \"b\", port 3");
        assert!(ConnParams::resolve(&Conninfo::parse("host=a,b port=1,2,3").unwrap(), &env()).is_err());
        let p = resolve("hostaddr=127.0.0.1", &env());
        assert_eq!(p.hosts, vec![Host::Tcp("127.0.0.1".into())]);
        assert_eq!(p.target_description(), "at \"127.0.0.1\", port 5432");
    }

    #[test]
    fn unknown_and_refused_keywords() {
        let e = ConnParams::resolve(&Conninfo::parse("hots=x").unwrap(), &env()).unwrap_err();
        assert_eq!(e.to_string(), "invalid connection option \"hots\"");
        let e = ConnParams::resolve(&Conninfo::parse("service=x").unwrap(), &env()).unwrap_err();
        assert!(matches!(e, ConninfoError::Unsupported { .. }));
        assert!(ConnParams::resolve(&Conninfo::parse("gssencmode=require").unwrap(), &env()).is_err());
        assert!(
            ConnParams::resolve(&Conninfo::parse("gssencmode=prefer client_encoding=UTF8").unwrap(), &env()).is_ok()
        );
    }

    #[test]
    fn ssl_files_default_under_home() {
        let p = resolve("sslmode=verify-full", &env().with_home("/h"));
        assert_eq!(p.sslrootcert, Some(RootCert::File("/h/.postgresql/root.crt".into())));
        assert!(!p.sslrootcert_explicit);
        assert_eq!(p.sslcert.as_deref(), Some(Path::new("/h/.postgresql/postgresql.crt")));
        let p = resolve("sslrootcert=/ca.pem", &env().with_home("/h"));
        assert_eq!(p.sslrootcert, Some(RootCert::File("/ca.pem".into())));
        assert!(p.sslrootcert_explicit);
        assert_eq!(resolve("sslrootcert=system", &env()).sslrootcert, Some(RootCert::System));
        assert_eq!(resolve("requiressl=1", &env()).sslmode, SslMode::Require);
        // As libpq: the later of requiressl/sslmode wins, and either beats the environment.
        assert_eq!(resolve("sslmode=disable requiressl=1", &env()).sslmode, SslMode::Require);
        assert_eq!(resolve("requiressl=1 sslmode=disable", &env()).sslmode, SslMode::Disable);
        assert_eq!(resolve("requiressl=10", &env().with_var("PGSSLMODE", "disable")).sslmode, SslMode::Require);
        assert_eq!(resolve("", &env().with_var("PGREQUIRESSL", "1")).sslmode, SslMode::Require);
        // A key written empty means the default, not the environment.
        assert_eq!(resolve("sslmode=", &env().with_var("PGSSLMODE", "disable")).sslmode, SslMode::default());
    }

    fn write_pgpass(dir: &Path, name: &str, body: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, body).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn password_file_from_home_pgpassfile_and_passfile() {
        let dir = tempfile::tempdir().unwrap();
        write_pgpass(dir.path(), ".pgpass", "db:5432:app:alice:fromhome\n", 0o600);
        let other = write_pgpass(dir.path(), "other", "db:5432:app:alice:fromvar\n", 0o600);
        let third = write_pgpass(dir.path(), "third", "db:5432:app:alice:fromkeyword\n", 0o600);
        let e = env().with_home(dir.path());
        let ci = "host=db user=alice dbname=app";
        let p = resolve(ci, &e);
        assert_eq!(p.password().map(Password::expose), Some("fromhome"));
        assert_eq!(p.password_file.as_deref(), Some(dir.path().join(".pgpass").as_path()));
        let e2 = e.clone().with_var("PGPASSFILE", other.to_str().unwrap());
        assert_eq!(resolve(ci, &e2).password().map(Password::expose), Some("fromvar"));
        let with_kw = format!("{ci} passfile={}", third.display());
        assert_eq!(resolve(&with_kw, &e2).password().map(Password::expose), Some("fromkeyword"));
        // A given password wins; an empty one does not.
        assert_eq!(resolve(&format!("{ci} password=given"), &e).password().map(Password::expose), Some("given"));
        assert_eq!(resolve(&format!("{ci} password=''"), &e).password().map(Password::expose), Some("fromhome"));
        // No match: no password.
        assert!(resolve("host=db user=bob dbname=app", &e).password().is_none());
    }

    #[test]
    fn password_file_localhost_means_default_socket() {
        let dir = tempfile::tempdir().unwrap();
        let f = write_pgpass(dir.path(), "pw", "localhost:5432:*:u:sock\n/elsewhere:5432:*:u:path\n", 0o600);
        let e = env().with_var("PGPASSFILE", f.to_str().unwrap());
        assert_eq!(resolve("user=u", &e).password().map(Password::expose), Some("sock"));
        assert_eq!(resolve("user=u host=/run/pg", &e).password().map(Password::expose), Some("sock"));
        assert_eq!(resolve("user=u host=/elsewhere", &e).password().map(Password::expose), Some("path"));
        assert_eq!(resolve("user=u host=localhost", &e).password().map(Password::expose), Some("sock"));
        assert!(resolve("user=u host=127.0.0.1", &e).password().is_none());
    }

    #[test]
    fn unsafe_password_file_is_ignored_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let f = write_pgpass(dir.path(), "pw", "*:*:*:*:secret\n", 0o644);
        let p = resolve("user=u", &env().with_var("PGPASSFILE", f.to_str().unwrap()));
        assert!(p.password().is_none());
        assert_eq!(p.warnings.len(), 1);
        assert!(p.warnings[0].contains("group or world access"), "{}", p.warnings[0]);
    }

    #[test]
    fn password_never_in_debug() {
        let p = resolve("user=u password=hunter2", &env());
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        let e = env().with_var("PGPASSWORD", "hunter3");
        let dbg = format!("{e:?} {:?}", resolve("", &e));
        assert!(!dbg.contains("hunter3") && dbg.contains("PGPASSWORD"), "{dbg}");
    }

    #[test]
    fn replication_is_resolved_for_the_replication_client() {
        assert!(resolve("replication=true", &env()).wants_replication());
        assert!(resolve("replication=database", &env()).wants_replication());
        assert!(!resolve("replication=0", &env()).wants_replication());
        assert!(!resolve("", &env()).wants_replication());
    }
}
