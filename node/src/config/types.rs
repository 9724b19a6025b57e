//! The value types of configuration options: how each parses (with Barman's
//! rules for empty and invalid values), how `show-servers` prints it (Python's
//! `str()` of Barman's value) and how JSON output encodes it.

use crate::wal::compression::{Codec, Level};
use serde_json::{Value, json};
use std::collections::BTreeSet;

mod cluster;
pub use cluster::{
    HOST_PORT_FORM, Host, HostPort, HostPortError, NODE_NAME_FORM, NodeName, NodeNameError, Peer, PeerError,
    parse_seconds, show_seconds,
};

/// The outcome of parsing one raw value.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed<T> {
    /// The text sets nothing: keep looking in `[barman]`, then the default.
    Unset,
    Set(T),
    /// Accepted, but changed (e.g. clamped); the text says how.
    Adjusted(T, String),
    /// Rejected: a warning naming what is allowed; keep looking.
    Invalid(String),
}

pub trait OptType: Sized + Clone + std::fmt::Debug {
    fn parse(raw: &str) -> Parsed<Self>;
    /// Python's `str()` of the value, as `show-servers` prints it.
    fn show(&self) -> String;
    fn json(&self) -> Value;
}

fn py_bool(b: bool) -> String {
    if b { "True".into() } else { "False".into() }
}

impl OptType for bool {
    fn parse(raw: &str) -> Parsed<Self> {
        match raw.to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "1" | "on" => Parsed::Set(true),
            "false" | "f" | "no" | "0" | "off" => Parsed::Set(false),
            _ => Parsed::Invalid("a boolean is one of true|t|yes|1|on or false|f|no|0|off".into()),
        }
    }
    fn show(&self) -> String {
        py_bool(*self)
    }
    fn json(&self) -> Value {
        json!(self)
    }
}

/// Python's `int()`: surrounding whitespace, a sign, digits with single
/// underscores between them.
pub fn parse_py_int(raw: &str) -> Option<i64> {
    let t = raw.trim();
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits.is_empty() || digits.starts_with('_') || digits.ends_with('_') || digits.contains("__") {
        return None;
    }
    if !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        return None;
    }
    t.replace('_', "").parse().ok()
}

impl OptType for i64 {
    fn parse(raw: &str) -> Parsed<Self> {
        match parse_py_int(raw) {
            Some(v) => Parsed::Set(v),
            None => Parsed::Invalid("an integer is expected".into()),
        }
    }
    fn show(&self) -> String {
        self.to_string()
    }
    fn json(&self) -> Value {
        json!(self)
    }
}

impl OptType for Option<i64> {
    fn parse(raw: &str) -> Parsed<Self> {
        match i64::parse(raw) {
            Parsed::Set(v) => Parsed::Set(Some(v)),
            Parsed::Invalid(e) => Parsed::Invalid(e),
            _ => Parsed::Unset,
        }
    }
    fn show(&self) -> String {
        self.map_or("None".into(), |v| v.to_string())
    }
    fn json(&self) -> Value {
        json!(self)
    }
}

/// Plain strings: an empty value unsets the option and blocks inheritance.
impl OptType for Option<String> {
    fn parse(raw: &str) -> Parsed<Self> {
        if raw.is_empty() { Parsed::Set(None) } else { Parsed::Set(Some(raw.to_string())) }
    }
    fn show(&self) -> String {
        self.clone().unwrap_or_else(|| "None".into())
    }
    fn json(&self) -> Value {
        json!(self)
    }
}

impl OptType for Option<Codec> {
    fn parse(raw: &str) -> Parsed<Self> {
        if raw.is_empty() {
            return Parsed::Set(None);
        }
        match raw.parse::<Codec>() {
            Ok(c) => Parsed::Set(Some(c)),
            Err(e) => Parsed::Invalid(e),
        }
    }
    fn show(&self) -> String {
        self.map_or("None".into(), |c| c.name().into())
    }
    fn json(&self) -> Value {
        json!(self.map(|c| c.name()))
    }
}

impl OptType for Option<Level> {
    fn parse(raw: &str) -> Parsed<Self> {
        if raw.is_empty() {
            return Parsed::Set(None);
        }
        match raw.parse::<Level>() {
            Ok(l) => Parsed::Set(Some(l)),
            Err(e) => Parsed::Invalid(e),
        }
    }
    fn show(&self) -> String {
        self.map_or("None".into(), |l| l.to_string())
    }
    fn json(&self) -> Value {
        match self {
            None => Value::Null,
            Some(Level::Int(n)) => json!(n),
            Some(l) => json!(l.to_string()),
        }
    }
}

/// Declares a keyword option type: a fixed set of lower-case words.
macro_rules! keyword_type {
    ($name:ident { $first:ident = $ftext:literal $(, $variant:ident = $text:literal)* $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name { #[default] $first $(, $variant)* }
        impl $name {
            pub const WORDS: &'static [&'static str] = &[$ftext $(, $text)*];
            pub fn as_str(self) -> &'static str {
                match self { $name::$first => $ftext, $($name::$variant => $text),* }
            }
            fn from_word(raw: &str) -> Result<Self, String> {
                match raw.to_ascii_lowercase().as_str() {
                    $ftext => Ok($name::$first),
                    $($text => Ok($name::$variant),)*
                    _ => Err(format!("must be one of: {}", Self::WORDS.join(", "))),
                }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
        impl OptType for $name {
            fn parse(raw: &str) -> Parsed<Self> {
                match Self::from_word(raw) { Ok(v) => Parsed::Set(v), Err(e) => Parsed::Invalid(e) }
            }
            fn show(&self) -> String { self.as_str().to_string() }
            fn json(&self) -> Value { json!(self.as_str()) }
        }
        impl OptType for Option<$name> {
            fn parse(raw: &str) -> Parsed<Self> {
                match $name::from_word(raw) { Ok(v) => Parsed::Set(Some(v)), Err(e) => Parsed::Invalid(e) }
            }
            fn show(&self) -> String { self.map_or("None".into(), |v| v.as_str().to_string()) }
            fn json(&self) -> Value { json!(self.map(|v| v.as_str())) }
        }
    };
}

keyword_type!(BackupMethod { Rsync = "rsync", Postgres = "postgres", LocalRsync = "local-rsync", Snapshot = "snapshot" });
keyword_type!(BackupCompression { Gzip = "gzip", Lz4 = "lz4", Zstd = "zstd", None = "none" });
keyword_type!(BackupCompressionFormat { Plain = "plain", Tar = "tar" });
keyword_type!(BackupCompressionLocation { Client = "client", Server = "server" });
keyword_type!(CreateSlot { Manual = "manual", Auto = "auto" });
keyword_type!(UnboundClients { Allow = "allow", Refuse = "refuse" });
keyword_type!(CombineMode { Copy = "copy", Link = "link", Clone = "clone", CopyFileRange = "copy-file-range" });
keyword_type!(ReuseBackup { Copy = "copy", Link = "link", Off = "off" });
keyword_type!(StagingLocation { Local = "local", Remote = "remote" });
keyword_type!(SnapshotProvider { Aws = "aws", Azure = "azure", Gcp = "gcp" });

/// `encryption`: `none` (unset) or `gpg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpg;

impl OptType for Option<Gpg> {
    fn parse(raw: &str) -> Parsed<Self> {
        match raw.to_ascii_lowercase().as_str() {
            "none" => Parsed::Set(None),
            "gpg" => Parsed::Set(Some(Gpg)),
            _ => Parsed::Invalid("must be one of: none, gpg".into()),
        }
    }
    fn show(&self) -> String {
        if self.is_some() { "gpg".into() } else { "None".into() }
    }
    fn json(&self) -> Value {
        if self.is_some() { json!("gpg") } else { Value::Null }
    }
}

/// A comma-separated set of keywords (`backup_options`, `recovery_options`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CsvSet<const K: u8>(pub BTreeSet<String>);

pub const BACKUP_OPTIONS: u8 = 0;
pub const RECOVERY_OPTIONS: u8 = 1;
pub type BackupOptions = CsvSet<BACKUP_OPTIONS>;
pub type RecoveryOptions = CsvSet<RECOVERY_OPTIONS>;

impl<const K: u8> CsvSet<K> {
    fn words() -> &'static [&'static str] {
        if K == BACKUP_OPTIONS {
            &["exclusive_backup", "concurrent_backup", "external_configuration"]
        } else {
            &["get-wal", "delta-restore"]
        }
    }
    fn class_name() -> &'static str {
        if K == BACKUP_OPTIONS { "BackupOptions" } else { "RecoveryOptions" }
    }
    pub fn contains(&self, w: &str) -> bool {
        self.0.contains(w)
    }
}

impl<const K: u8> OptType for CsvSet<K> {
    fn parse(raw: &str) -> Parsed<Self> {
        let mut set = BTreeSet::new();
        if raw.is_empty() {
            return Parsed::Set(CsvSet(set));
        }
        for part in raw.split(',') {
            let w = part.trim().to_ascii_lowercase();
            if !Self::words().contains(&w.as_str()) {
                return Parsed::Invalid(format!("'{w}' is not one of: {}", Self::words().join(", ")));
            }
            set.insert(w);
        }
        if set.contains("exclusive_backup") && set.contains("concurrent_backup") {
            return Parsed::Invalid("cannot contain both 'exclusive_backup' and 'concurrent_backup'".into());
        }
        Parsed::Set(CsvSet(set))
    }
    fn show(&self) -> String {
        if self.0.is_empty() {
            format!("{}()", Self::class_name())
        } else {
            let items: Vec<String> = self.0.iter().map(|w| format!("'{w}'")).collect();
            format!("{}({{{}}})", Self::class_name(), items.join(", "))
        }
    }
    fn json(&self) -> Value {
        json!(self.0.iter().cloned().collect::<Vec<_>>().join(","))
    }
}

/// `replication slot` names: `[0-9a-z_]+`, lower-cased first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotName(pub String);

impl OptType for Option<SlotName> {
    fn parse(raw: &str) -> Parsed<Self> {
        let l = raw.to_ascii_lowercase();
        if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'_') {
            Parsed::Set(Some(SlotName(l)))
        } else {
            Parsed::Invalid("replication slot names may only contain lower case letters, numbers and '_'".into())
        }
    }
    fn show(&self) -> String {
        self.as_ref().map_or("None".into(), |s| s.0.clone())
    }
    fn json(&self) -> Value {
        json!(self.as_ref().map(|s| s.0.clone()))
    }
}

/// An absolute path (`staging_path` and its deprecated aliases).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsPath(pub String);

impl OptType for Option<AbsPath> {
    fn parse(raw: &str) -> Parsed<Self> {
        if raw.starts_with('/') {
            Parsed::Set(Some(AbsPath(raw.to_string())))
        } else {
            Parsed::Invalid("must be an absolute path".into())
        }
    }
    fn show(&self) -> String {
        self.as_ref().map_or("None".into(), |p| p.0.clone())
    }
    fn json(&self) -> Value {
        json!(self.as_ref().map(|p| p.0.clone()))
    }
}

/// `snapshot_disks`: a comma-separated list of non-empty names.
impl OptType for Option<Vec<String>> {
    fn parse(raw: &str) -> Parsed<Self> {
        let v: Vec<String> = raw.split(',').map(str::to_string).collect();
        if v.iter().any(|d| d.is_empty()) {
            return Parsed::Invalid("a comma-separated list of disk names, none empty".into());
        }
        Parsed::Set(Some(v))
    }
    fn show(&self) -> String {
        match self {
            None => "None".into(),
            Some(v) => format!("[{}]", v.iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(", ")),
        }
    }
    fn json(&self) -> Value {
        json!(self)
    }
}

/// A duration in seconds from `N day[s]|week[s]|month[s]|hour[s]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub seconds: u64,
}

impl Interval {
    /// Python's `str(timedelta)`: `7 days, 0:00:00`.
    pub fn python_str(self) -> String {
        let days = self.seconds / 86_400;
        let rem = self.seconds % 86_400;
        let hms = format!("{}:{:02}:{:02}", rem / 3600, (rem % 3600) / 60, rem % 60);
        match days {
            0 => hms,
            1 => format!("1 day, {hms}"),
            d => format!("{d} days, {hms}"),
        }
    }
    /// Barman's `human_readable_timedelta`: `7 days`, `1 day, 3 hours`.
    pub fn human(self) -> String {
        human_duration(self.seconds)
    }
}

/// Barman's `human_readable_timedelta` for a non-negative number of seconds.
pub fn human_duration(total: u64) -> String {
    let parts = [
        (total / 86_400, "day"),
        ((total % 86_400) / 3600, "hour"),
        ((total % 3600) / 60, "minute"),
        (total % 60, "second"),
    ];
    let v: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, u)| if *n == 1 { format!("1 {u}") } else { format!("{n} {u}s") })
        .collect();
    if v.is_empty() { "less than one second".into() } else { v.join(", ") }
}

impl OptType for Option<Interval> {
    fn parse(raw: &str) -> Parsed<Self> {
        if raw.is_empty() {
            return Parsed::Unset;
        }
        let words: Vec<&str> = raw.split_whitespace().collect();
        let bad = || Parsed::Invalid("a time interval is 'N day[s]', 'N week[s]', 'N month[s]' or 'N hour[s]'".into());
        let [n, unit] = words.as_slice() else { return bad() };
        let Ok(n) = n.parse::<u64>() else { return bad() };
        let u = unit.to_ascii_lowercase();
        let u = u.strip_suffix('s').unwrap_or(&u);
        let per = match u {
            "day" => 86_400,
            "week" => 7 * 86_400,
            "month" => 31 * 86_400,
            "hour" => 3600,
            _ => return bad(),
        };
        Parsed::Set(Some(Interval { seconds: n * per }))
    }
    fn show(&self) -> String {
        self.map_or("None".into(), Interval::python_str)
    }
    fn json(&self) -> Value {
        json!(self.map(Interval::human))
    }
}

/// `last_backup_minimum_size`: `N[k|Ki|M|Mi|G|Gi|T|Ti]` (case-sensitive suffix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiSize(pub u64);

impl OptType for Option<SiSize> {
    fn parse(raw: &str) -> Parsed<Self> {
        if raw.is_empty() {
            return Parsed::Unset;
        }
        let t = raw.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || Parsed::Invalid("a size is a number with an optional k, Ki, M, Mi, G, Gi, T or Ti suffix".into());
        let Ok(n) = num.parse::<u64>() else { return bad() };
        let mult: u64 = match unit.trim() {
            "" => 1,
            "k" => 1000,
            "Ki" => 1 << 10,
            "M" => 1_000_000,
            "Mi" => 1 << 20,
            "G" => 1_000_000_000,
            "Gi" => 1 << 30,
            "T" => 1_000_000_000_000,
            "Ti" => 1 << 40,
            _ => return bad(),
        };
        Parsed::Set(Some(SiSize(n.saturating_mul(mult))))
    }
    fn show(&self) -> String {
        self.map_or("None".into(), |s| s.0.to_string())
    }
    fn json(&self) -> Value {
        json!(self.map(|s| s.0))
    }
}

/// A backup retention policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionPolicy {
    Redundancy(u32),
    /// Recovery window of N days/weeks/months (a month is 31 days).
    Window {
        value: u32,
        unit: WindowUnit,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowUnit {
    Days,
    Weeks,
    Months,
}

impl RetentionPolicy {
    /// Barman's grammar: `REDUNDANCY n` or `RECOVERY WINDOW OF n DAY[S]|WEEK[S]|MONTH[S]`, any case.
    pub fn parse_text(raw: &str) -> Option<Self> {
        let w: Vec<String> = raw.split_whitespace().map(|s| s.to_ascii_lowercase()).collect();
        match w.as_slice() {
            [r, n] if r == "redundancy" => n.parse().ok().map(RetentionPolicy::Redundancy),
            [a, b, c, n, u] if a == "recovery" && b == "window" && c == "of" => {
                let value = n.parse().ok()?;
                let unit = match u.strip_suffix('s').unwrap_or(u) {
                    "day" => WindowUnit::Days,
                    "week" => WindowUnit::Weeks,
                    "month" => WindowUnit::Months,
                    _ => return None,
                };
                Some(RetentionPolicy::Window { value, unit })
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for RetentionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RetentionPolicy::Redundancy(n) => write!(f, "REDUNDANCY {n}"),
            RetentionPolicy::Window { value, unit } => {
                let u = match unit {
                    WindowUnit::Days => "DAYS",
                    WindowUnit::Weeks => "WEEKS",
                    WindowUnit::Months => "MONTHS",
                };
                write!(f, "RECOVERY WINDOW OF {value} {u}")
            }
        }
    }
}

/// `retention_policy`: a policy, or a text Barman could not parse (then no
/// policy is enforced and `check` fails "retention policy settings").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retention {
    Policy(RetentionPolicy),
    Invalid(String),
}

impl OptType for Option<Retention> {
    fn parse(raw: &str) -> Parsed<Self> {
        if raw.is_empty() {
            return Parsed::Set(None);
        }
        match RetentionPolicy::parse_text(raw) {
            Some(p) => Parsed::Set(Some(Retention::Policy(p))),
            None => Parsed::Adjusted(
                Some(Retention::Invalid(raw.to_string())),
                "not a retention policy ('REDUNDANCY n' or 'RECOVERY WINDOW OF n DAYS|WEEKS|MONTHS'); no retention policy is enforced".into(),
            ),
        }
    }
    fn show(&self) -> String {
        match self {
            None => "None".into(),
            Some(Retention::Policy(p)) => p.to_string(),
            Some(Retention::Invalid(raw)) => raw.clone(),
        }
    }
    fn json(&self) -> Value {
        match self {
            None => Value::Null,
            Some(r) => json!(Some(r.clone()).show()),
        }
    }
}

/// An option Barman accepts with a single value (`auto`, `main`) and otherwise
/// warns about and replaces with that value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OnlyWord<const W: u8>;
pub const WORD_AUTO: u8 = 0;
pub const WORD_MAIN: u8 = 1;

impl<const W: u8> OnlyWord<W> {
    fn word() -> &'static str {
        if W == WORD_AUTO { "auto" } else { "main" }
    }
}

impl<const W: u8> OptType for OnlyWord<W> {
    fn parse(raw: &str) -> Parsed<Self> {
        if raw.trim().eq_ignore_ascii_case(Self::word()) {
            Parsed::Set(OnlyWord)
        } else {
            Parsed::Adjusted(OnlyWord, format!("only '{}' is supported; using it", Self::word()))
        }
    }
    fn show(&self) -> String {
        Self::word().into()
    }
    fn json(&self) -> Value {
        json!(Self::word())
    }
}

/// `minimum_redundancy`: a non-negative count; anything else becomes 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MinRedundancy(pub u32);

impl OptType for MinRedundancy {
    fn parse(raw: &str) -> Parsed<Self> {
        match parse_py_int(raw) {
            Some(n) if n >= 0 => Parsed::Set(MinRedundancy(n.min(u32::MAX as i64) as u32)),
            _ => Parsed::Adjusted(MinRedundancy(0), "must be a non-negative integer; using 0".into()),
        }
    }
    fn show(&self) -> String {
        self.0.to_string()
    }
    fn json(&self) -> Value {
        json!(self.0)
    }
}

/// `bandwidth_limit` in KB/s; 0 or unset means no limit; invalid means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bandwidth(pub u64);

impl OptType for Option<Bandwidth> {
    fn parse(raw: &str) -> Parsed<Self> {
        if raw.is_empty() {
            return Parsed::Set(None);
        }
        match parse_py_int(raw) {
            Some(0) => Parsed::Set(None),
            Some(n) if n > 0 => Parsed::Set(Some(Bandwidth(n as u64))),
            _ => Parsed::Adjusted(None, "must be a number of KB/s; no limit is applied".into()),
        }
    }
    fn show(&self) -> String {
        self.map_or("None".into(), |b| b.0.to_string())
    }
    fn json(&self) -> Value {
        json!(self.map(|b| b.0))
    }
}

/// `tablespace_bandwidth_limit`: `name:kbps` rules separated by spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablespaceLimits(pub Vec<(String, u64)>);

impl OptType for Option<TablespaceLimits> {
    fn parse(raw: &str) -> Parsed<Self> {
        if raw.is_empty() {
            return Parsed::Set(None);
        }
        let mut rules = Vec::new();
        let mut bad = Vec::new();
        // Barman separates rules with spaces; commas are taken too.
        for rule in raw.split(|c: char| c.is_whitespace() || c == ',').filter(|r| !r.is_empty()) {
            match rule.split_once(':').and_then(|(n, v)| parse_py_int(v).map(|v| (n, v))) {
                Some((n, v)) if v >= 0 => rules.push((n.to_string(), v as u64)),
                _ => bad.push(rule.to_string()),
            }
        }
        let value = if rules.is_empty() { None } else { Some(TablespaceLimits(rules)) };
        if bad.is_empty() {
            Parsed::Set(value)
        } else {
            Parsed::Adjusted(value, format!("ignoring rule(s) {} (each rule is name:kbps)", bad.join(" ")))
        }
    }
    fn show(&self) -> String {
        match self {
            None => "None".into(),
            Some(t) => {
                let items: Vec<String> = t.0.iter().map(|(n, v)| format!("'{n}': {v}")).collect();
                format!("{{{}}}", items.join(", "))
            }
        }
    }
    fn json(&self) -> Value {
        match self {
            None => Value::Null,
            Some(t) => Value::Object(t.0.iter().map(|(n, v)| (n.clone(), json!(v))).collect()),
        }
    }
}

/// `custom_compression_magic`: `0x` followed by hex bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Magic {
    pub text: String,
    pub bytes: Vec<u8>,
}

impl OptType for Option<Magic> {
    fn parse(raw: &str) -> Parsed<Self> {
        if raw.is_empty() {
            return Parsed::Set(None);
        }
        let hex_part = raw.strip_prefix("0x").or_else(|| raw.strip_prefix("0X"));
        match hex_part.and_then(|h| hex::decode(h).ok()).filter(|b| !b.is_empty()) {
            Some(bytes) => Parsed::Set(Some(Magic { text: raw.to_string(), bytes })),
            None => Parsed::Invalid("must be 0x followed by an even number of hex digits".into()),
        }
    }
    fn show(&self) -> String {
        self.as_ref().map_or("None".into(), |m| m.text.clone())
    }
    fn json(&self) -> Value {
        json!(self.as_ref().map(|m| m.text.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_and_ints_like_barman() {
        assert_eq!(bool::parse("ON"), Parsed::Set(true));
        assert_eq!(bool::parse("f"), Parsed::Set(false));
        assert!(matches!(bool::parse(""), Parsed::Invalid(_)));
        assert_eq!(parse_py_int(" 1_000 "), Some(1000));
        assert_eq!(parse_py_int("-5"), Some(-5));
        assert_eq!(parse_py_int("1.0"), None);
        assert_eq!(parse_py_int(""), None);
        assert_eq!(parse_py_int("1__0"), None);
    }

    #[test]
    fn empty_values_follow_the_type() {
        assert_eq!(<Option<String>>::parse(""), Parsed::Set(None));
        assert_eq!(<Option<Codec>>::parse(""), Parsed::Set(None));
        assert_eq!(<Option<Interval>>::parse(""), Parsed::Unset);
        assert!(matches!(<Option<SlotName>>::parse(""), Parsed::Invalid(_)));
        assert!(matches!(<Option<BackupMethod>>::parse(""), Parsed::Invalid(_)));
        assert_eq!(BackupOptions::parse(""), Parsed::Set(CsvSet::default()));
    }

    #[test]
    fn show_like_python() {
        let Parsed::Set(o) = BackupOptions::parse("concurrent_backup") else { panic!() };
        assert_eq!(o.show(), "BackupOptions({'concurrent_backup'})");
        assert_eq!(RecoveryOptions::default().show(), "RecoveryOptions()");
        assert!(matches!(BackupOptions::parse("exclusive_backup, concurrent_backup"), Parsed::Invalid(_)));
        let Parsed::Set(i) = <Option<Interval>>::parse("7 DAYS") else { panic!() };
        assert_eq!(i.show(), "7 days, 0:00:00");
        assert_eq!(i.json(), json!("7 days"));
        let Parsed::Set(h) = <Option<Interval>>::parse("1 hour") else { panic!() };
        assert_eq!(h.show(), "1:00:00");
        assert_eq!(human_duration(90_061), "1 day, 1 hour, 1 minute, 1 second");
    }

    #[test]
    fn sizes_and_retention() {
        assert_eq!(<Option<SiSize>>::parse("2 Gi"), Parsed::Set(Some(SiSize(2 << 30))));
        assert!(matches!(<Option<SiSize>>::parse("2 gi"), Parsed::Invalid(_)));
        let Parsed::Set(Some(Retention::Policy(p))) = <Option<Retention>>::parse(" recovery window of 2 week ") else {
            panic!()
        };
        assert_eq!(p.to_string(), "RECOVERY WINDOW OF 2 WEEKS");
        assert!(matches!(<Option<Retention>>::parse("keep forever"), Parsed::Adjusted(Some(Retention::Invalid(_)), _)));
        assert!(matches!(MinRedundancy::parse("-1"), Parsed::Adjusted(MinRedundancy(0), _)));
    }

    #[test]
    fn magic_and_tablespace_rules() {
        let Parsed::Set(Some(m)) = <Option<Magic>>::parse("0x1f8b") else { panic!() };
        assert_eq!(m.bytes, vec![0x1f, 0x8b]);
        assert!(matches!(<Option<Magic>>::parse("1f8b"), Parsed::Invalid(_)));
        let Parsed::Adjusted(Some(t), _) = <Option<TablespaceLimits>>::parse("a:10 bogus b:20") else { panic!() };
        assert_eq!(t.0, vec![("a".to_string(), 10), ("b".to_string(), 20)]);
    }
}
