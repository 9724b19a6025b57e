//! libpq `keyword=value` connection strings: parsed with libpq's own lexical rules,
//! kept in the order they were written, and printed back with quoting where needed.
//! The password never leaves this type in `Debug` or `Display` output.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// What the connection string text says, and what can be wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConninfoError {
    #[error("missing \"=\" after \"{key}\" in connection info string")]
    MissingEquals { key: String },
    #[error("unterminated quoted string in connection info string")]
    UnterminatedQuote,
    #[error("empty keyword in connection info string")]
    EmptyKeyword,
    #[error("URI connection strings (postgresql://...) are not supported: use keyword=value pairs")]
    Uri,
    #[error("invalid connection option \"{key}\"")]
    InvalidOption { key: String },
    /// Never raised for `password`: its value must not reach an error message.
    #[error("invalid value \"{value}\" for connection option \"{key}\"")]
    InvalidValue { key: String, value: String },
    #[error("connection option \"{key}\" is not supported here: {why}")]
    Unsupported { key: String, why: &'static str },
    #[error("could not determine the user name to connect as: set user= in the conninfo or PGUSER")]
    NoUser,
}

/// A parsed connection string. Later duplicates replace earlier values in place, as
/// both libpq (last one wins) and Barman's dict do.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Conninfo {
    params: Vec<(String, String)>,
}

/// One `key=value` pair as found in the text, with where its value was written.
#[derive(Debug)]
struct Lexeme {
    key: String,
    value: String,
    /// Byte range of the value as written (quotes included), for masking in place.
    value_span: Range<usize>,
}

/// libpq's `isspace` in the C locale.
fn is_libpq_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// Walks `s` as libpq's `conninfo_parse` does. With `lenient`, an error stops the
/// walk and returns what was found so far (used for masking broken strings).
fn lex(s: &str, lenient: bool) -> Result<Vec<Lexeme>, ConninfoError> {
    let b: Vec<(usize, char)> = s.char_indices().collect();
    let end = s.len();
    let at = |i: usize| b.get(i).map(|&(_, c)| c);
    let pos = |i: usize| b.get(i).map_or(end, |&(p, _)| p);
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while at(i).is_some_and(is_libpq_space) {
            i += 1;
        }
        if i >= b.len() {
            return Ok(out);
        }
        let key_start = i;
        while at(i).is_some_and(|c| c != '=' && !is_libpq_space(c)) {
            i += 1;
        }
        let key = s[pos(key_start)..pos(i)].to_string();
        while at(i).is_some_and(is_libpq_space) {
            i += 1;
        }
        if at(i) != Some('=') {
            return if lenient { Ok(out) } else { Err(ConninfoError::MissingEquals { key }) };
        }
        if key.is_empty() && !lenient {
            return Err(ConninfoError::EmptyKeyword);
        }
        i += 1;
        // libpq skips blanks after '=', so `a= b` gives a the value "b".
        while at(i).is_some_and(is_libpq_space) {
            i += 1;
        }
        let value_start = pos(i);
        let mut value = String::new();
        if at(i) == Some('\'') {
            i += 1;
            loop {
                match at(i) {
                    None => {
                        if lenient {
                            out.push(Lexeme { key, value, value_span: value_start..end });
                            return Ok(out);
                        }
                        return Err(ConninfoError::UnterminatedQuote);
                    }
                    Some('\\') => {
                        i += 1;
                        if let Some(c) = at(i) {
                            value.push(c);
                            i += 1;
                        }
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while let Some(c) = at(i) {
                if is_libpq_space(c) {
                    break;
                }
                i += 1;
                if c == '\\' {
                    if let Some(n) = at(i) {
                        value.push(n);
                        i += 1;
                    }
                } else {
                    value.push(c);
                }
            }
        }
        out.push(Lexeme { key, value, value_span: value_start..pos(i) });
    }
}

fn is_uri(s: &str) -> bool {
    let t = s.trim_start();
    t.starts_with("postgresql://") || t.starts_with("postgres://")
}

/// Whether libpq needs the value quoted to read it back unchanged.
fn needs_quoting(v: &str) -> bool {
    v.is_empty() || v.chars().any(|c| is_libpq_space(c) || c == '\'' || c == '\\')
}

fn quote_value(v: &str) -> String {
    if !needs_quoting(v) {
        return v.to_string();
    }
    let mut q = String::with_capacity(v.len() + 2);
    q.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('\'');
    q
}

const MASK: &str = "***";

/// Keys whose values are secrets: the password, and the passphrase of the client key.
fn is_password_key(k: &str) -> bool {
    k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword")
}

/// `raw` with every password value replaced by `***`, the rest kept as written.
/// Works on strings that do not parse: the lexer stops at the first error, and a
/// `password=` left after that point is still masked up to the next blank.
pub fn mask_password(raw: &str) -> String {
    let lexemes = lex(raw, true).unwrap_or_default();
    let mut spans: Vec<Range<usize>> =
        lexemes.iter().filter(|l| is_password_key(&l.key)).map(|l| l.value_span.clone()).collect();
    let lexed_to = lexemes.last().map_or(0, |l| l.value_span.end);
    spans.extend(password_spans_by_search(raw, lexed_to));
    let mut out = String::with_capacity(raw.len());
    let mut last = 0;
    for s in spans {
        if s.start < last {
            continue;
        }
        out.push_str(&raw[last..s.start]);
        out.push_str(MASK);
        last = s.end;
    }
    out.push_str(&raw[last..]);
    out
}

/// Fallback for the part the lexer could not read: any `password` word followed by
/// `=`; its value runs to the closing quote or the next blank.
fn password_spans_by_search(raw: &str, from: usize) -> Vec<Range<usize>> {
    let lower = raw.to_ascii_lowercase();
    let mut spans = Vec::new();
    let mut search = from;
    while let Some(found) = lower.get(search..).and_then(|t| t.find("password")) {
        let start = search + found;
        search = start + "password".len();
        let word_from =
            raw[..start].char_indices().rev().find(|(_, c)| c.is_whitespace()).map_or(0, |(i, c)| i + c.len_utf8());
        if !is_password_key(&raw[word_from..search]) {
            continue;
        }
        let rest = &raw[search..];
        let after_blank = rest.trim_start_matches(|c: char| c.is_whitespace());
        let Some(after_eq) = after_blank.strip_prefix('=') else { continue };
        let value = after_eq.trim_start_matches(|c: char| c.is_whitespace());
        let vstart = raw.len() - value.len();
        let vlen = if let Some(q) = value.strip_prefix('\'') {
            let mut n = 1;
            let mut chars = q.chars();
            while let Some(c) = chars.next() {
                n += c.len_utf8();
                if c == '\\' {
                    n += chars.next().map_or(0, char::len_utf8);
                } else if c == '\'' {
                    break;
                }
            }
            n
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        spans.push(vstart..vstart + vlen);
        search = vstart + vlen;
    }
    spans
}

impl Conninfo {
    pub fn new() -> Self {
        Conninfo::default()
    }

    /// Parses with libpq's rules: blank-separated `key=value`, optional blanks
    /// around `=`, single-quoted values, `\'` and `\\` escapes (also unquoted).
    /// Keywords are not checked here; [`super::params::ConnParams`] does that.
    pub fn parse(s: &str) -> Result<Conninfo, ConninfoError> {
        if is_uri(s) {
            return Err(ConninfoError::Uri);
        }
        let mut ci = Conninfo::new();
        for l in lex(s, false)? {
            ci.set(l.key, l.value);
        }
        Ok(ci)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key`, keeping its place if present, appending it otherwise. `key`
    /// should be a libpq keyword (no blanks, no `=`).
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let (mut key, mut value) = (key.into(), value.into());
        // libpq stores the deprecated requiressl as sslmode where it is written,
        // so whichever of the two comes last wins.
        if key == "requiressl" {
            value = if value.starts_with('1') { "require" } else { "prefer" }.to_string();
            key = "sslmode".to_string();
        }
        match self.params.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.params.push((key, value)),
        }
    }

    /// [`Conninfo::set`] for chaining.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.set(key, value);
        self
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.params.iter().position(|(k, _)| k == key)?;
        Some(self.params.remove(i).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// The string to hand to libpq or a client tool, in the original key order.
    /// Contains the password: never log it, use [`Conninfo::masked`].
    pub fn to_conninfo_string(&self) -> String {
        join(self.params.iter(), false)
    }

    /// Keys sorted, as Barman's `encode_dsn` writes the streaming conninfo. Barman
    /// never quotes (its values cannot hold blanks); we quote only what libpq needs.
    pub fn sorted_string(&self) -> String {
        let mut v: Vec<_> = self.params.iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        join(v.into_iter(), false)
    }

    /// Barman's streaming conninfo: `replication=true`, `options=-cdatestyle=iso`
    /// and `dbname=replication` forced; print it with [`Conninfo::sorted_string`]
    /// to get Barman's text.
    pub fn barman_streaming(&self) -> Conninfo {
        self.clone().with("replication", "true").with("options", "-cdatestyle=iso").with("dbname", "replication")
    }

    /// Barman's `get_connection_string` for the client tools it runs
    /// (pg_basebackup, pg_receivewal): `application_name` added unless present,
    /// and `options=-csearch_path=` (a safe search path) unless `options` is set.
    pub fn for_client_tool(&self, application_name: Option<&str>) -> Conninfo {
        let mut ci = self.clone();
        if let Some(app) = application_name
            && !ci.contains("application_name")
        {
            ci.set("application_name", app);
        }
        if !ci.contains("options") {
            ci.set("options", "-csearch_path=");
        }
        ci
    }

    /// The conninfo for display: the password, if any, shown as `***`.
    pub fn masked(&self) -> String {
        join(self.params.iter(), true)
    }
}

fn join<'a>(it: impl Iterator<Item = &'a (String, String)>, mask: bool) -> String {
    it.map(|(k, v)| if mask && is_password_key(k) { format!("{k}={MASK}") } else { format!("{k}={}", quote_value(v)) })
        .collect::<Vec<_>>()
        .join(" ")
}

impl FromStr for Conninfo {
    type Err = ConninfoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Conninfo::parse(s)
    }
}

/// Masked: a conninfo is shown to people, and people must not see passwords.
impl fmt::Display for Conninfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for Conninfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Conninfo({:?})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &str) -> Vec<(String, String)> {
        Conninfo::parse(s).unwrap().iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn p(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_plain_pairs_in_order() {
        assert_eq!(
            pairs("host=pg port=5432 user=barman dbname=postgres"),
            p(&[("host", "pg"), ("port", "5432"), ("user", "barman"), ("dbname", "postgres")])
        );
        assert_eq!(pairs("  \t\n"), p(&[]));
        assert_eq!(pairs(""), p(&[]));
    }

    #[test]
    fn blanks_around_equals_as_libpq() {
        assert_eq!(pairs("host = pg port= 1 user =u"), p(&[("host", "pg"), ("port", "1"), ("user", "u")]));
        // libpq skips blanks after '=', so the next word becomes the value.
        assert_eq!(pairs("host= port=5"), p(&[("host", "port=5")]));
        assert_eq!(pairs("host="), p(&[("host", "")]));
    }

    #[test]
    fn quoted_values_and_escapes() {
        assert_eq!(pairs(r"password='a b' x=1"), p(&[("password", "a b"), ("x", "1")]));
        assert_eq!(pairs(r"password='it\'s' y=''"), p(&[("password", "it's"), ("y", "")]));
        assert_eq!(pairs(r"password='back\\slash'"), p(&[("password", r"back\slash")]));
        // Backslash escapes outside quotes too.
        assert_eq!(pairs(r"password=a\ b\'c"), p(&[("password", "a b'c")]));
        assert_eq!(pairs("application_name='é ü'"), p(&[("application_name", "é ü")]));
    }

    #[test]
    fn errors_as_libpq_words_them() {
        assert_eq!(
            Conninfo::parse("host").unwrap_err().to_string(),
            "missing \"=\" after \"host\" in connection info string"
        );
        assert_eq!(Conninfo::parse("host pg").unwrap_err(), ConninfoError::MissingEquals { key: "host".into() });
        assert_eq!(Conninfo::parse("password='abc").unwrap_err(), ConninfoError::UnterminatedQuote);
        assert_eq!(Conninfo::parse("=x").unwrap_err(), ConninfoError::EmptyKeyword);
        assert_eq!(Conninfo::parse("postgresql://u@h/db").unwrap_err(), ConninfoError::Uri);
    }

    #[test]
    fn duplicates_replace_in_place() {
        assert_eq!(pairs("a=1 b=2 a=3"), p(&[("a", "3"), ("b", "2")]));
    }

    #[test]
    fn get_set_with_remove() {
        let mut ci = Conninfo::parse("host=pg user=u").unwrap();
        assert_eq!(ci.get("host"), Some("pg"));
        assert_eq!(ci.get("port"), None);
        ci.set("host", "other");
        ci.set("port", "5433");
        assert_eq!(ci.to_conninfo_string(), "host=other user=u port=5433");
        assert_eq!(ci.remove("user").as_deref(), Some("u"));
        assert_eq!(ci.remove("user"), None);
        let ci = ci.with("dbname", "replication");
        assert_eq!(ci.to_conninfo_string(), "host=other port=5433 dbname=replication");
    }

    #[test]
    fn quoting_round_trips() {
        let ci = Conninfo::new()
            .with("host", "pg")
            .with("password", "a b'c\\d")
            .with("options", "-c search_path=")
            .with("application_name", "");
        let s = ci.to_conninfo_string();
        assert_eq!(s, r"host=pg password='a b\'c\\d' options='-c search_path=' application_name=''");
        assert_eq!(Conninfo::parse(&s).unwrap(), ci);
    }

    #[test]
    fn sorted_like_barman_encode_dsn() {
        let ci = Conninfo::parse("user=u host=h")
            .unwrap()
            .with("replication", "true")
            .with("options", "-cdatestyle=iso")
            .with("dbname", "replication");
        assert_eq!(ci.sorted_string(), "dbname=replication host=h options=-cdatestyle=iso replication=true user=u");
    }

    #[test]
    fn barman_streaming_and_client_tool_strings() {
        let ci = Conninfo::parse("host=pg user=streaming_barman dbname=postgres password=x").unwrap();
        assert_eq!(
            ci.barman_streaming().sorted_string(),
            "dbname=replication host=pg options=-cdatestyle=iso password=x replication=true user=streaming_barman"
        );
        let tool = ci.barman_streaming().for_client_tool(Some("barman_receive_wal"));
        assert_eq!(tool.get("application_name"), Some("barman_receive_wal"));
        assert_eq!(tool.get("options"), Some("-cdatestyle=iso"));
        let named = Conninfo::parse("host=pg application_name=mine").unwrap().for_client_tool(Some("barman"));
        assert_eq!(named.to_conninfo_string(), "host=pg application_name=mine options=-csearch_path=");
    }

    #[test]
    fn masking_hides_passwords_everywhere() {
        let ci = Conninfo::parse("host=pg password='s3 cret' user=u").unwrap();
        assert_eq!(ci.masked(), "host=pg password=*** user=u");
        assert_eq!(ci.to_string(), "host=pg password=*** user=u");
        let dbg = format!("{ci:?}");
        assert!(!dbg.contains("s3"), "{dbg}");
        assert!(dbg.contains("***"));
        // In place, keeping the original spelling.
        assert_eq!(mask_password("host=pg  password = 'a b' user=u"), "host=pg  password = *** user=u");
        assert_eq!(mask_password(r"password=x\ y port=1"), "password=*** port=1");
        assert_eq!(mask_password("host=pg"), "host=pg");
        // Strings that do not parse are masked too.
        assert_eq!(mask_password("junk password=secret"), "junk password=***");
        assert_eq!(mask_password("host=pg password='unterminated"), "host=pg password=***");
        assert_eq!(mask_password("bad word PASSWORD = 'a\\'b c' x"), "bad word PASSWORD = *** x");
        assert_eq!(mask_password("a=b c password=p1 d password=p2"), "a=b c password=*** d password=***");
        // The client key's passphrase is a secret too; other words containing it are not.
        assert_eq!(mask_password("sslpassword=k password=p"), "sslpassword=*** password=***");
        assert_eq!(mask_password("x y mypassword=k"), "x y mypassword=k");
        assert_eq!(mask_password("x y sslpassword = k"), "x y sslpassword = ***");
    }
}
