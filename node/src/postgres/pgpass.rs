//! The libpq password file (`~/.pgpass`, `PGPASSFILE`, `passfile=`), read with
//! libpq's rules: `hostname:port:database:username:password`, a field of `*`
//! matches anything, `\:` and `\\` escape, `#` starts a comment line, and a file
//! that group or others can read is ignored with a warning.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// What an entry is matched against: the connection's host (already mapped to
/// `localhost` where libpq does so), port, database and user.
#[derive(Debug, Clone, Copy)]
pub struct PgpassKey<'a> {
    pub host: &'a str,
    pub port: &'a str,
    pub dbname: &'a str,
    pub user: &'a str,
}

/// The outcome of consulting the file: the password found, and the warning to show
/// when the file was skipped. A missing file is neither.
#[derive(Default)]
pub struct PgpassLookup {
    pub password: Option<String>,
    pub warning: Option<String>,
}

/// Reads `path` and returns the password of the first matching entry.
pub fn lookup(path: &Path, key: PgpassKey<'_>) -> PgpassLookup {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return PgpassLookup::default(),
        Err(e) => {
            return PgpassLookup {
                password: None,
                warning: Some(format!("could not read password file \"{}\": {e}", path.display())),
            };
        }
    };
    if !meta.is_file() {
        return warn(format!("WARNING: password file \"{}\" is not a plain file", path.display()));
    }
    // The same test as libpq: any group or other bit, not just read access.
    if meta.permissions().mode() & 0o077 != 0 {
        return warn(format!(
            "WARNING: password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
            path.display()
        ));
    }
    match std::fs::read(path) {
        Ok(bytes) => PgpassLookup { password: find(&String::from_utf8_lossy(&bytes), key), warning: None },
        Err(e) => warn(format!("could not read password file \"{}\": {e}", path.display())),
    }
}

fn warn(w: String) -> PgpassLookup {
    PgpassLookup { password: None, warning: Some(w) }
}

/// The password of the first entry of `contents` matching `key`.
pub fn find(contents: &str, key: PgpassKey<'_>) -> Option<String> {
    for line in contents.split('\n') {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let rest = Some(line)
            .and_then(|t| match_field(t, key.host))
            .and_then(|t| match_field(t, key.port))
            .and_then(|t| match_field(t, key.dbname))
            .and_then(|t| match_field(t, key.user));
        if let Some(rest) = rest {
            return Some(unescape_password(rest));
        }
    }
    None
}

/// libpq's `pwdfMatchesString`: if the field at the start of `line` matches `token`,
/// the text after its `:`. `*` matches only as a whole field.
fn match_field<'a>(line: &'a str, token: &str) -> Option<&'a str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let mut chars = line.char_indices();
    let mut want = token.chars();
    loop {
        let (i, mut c) = chars.next()?;
        let mut escaped = false;
        if c == '\\' {
            escaped = true;
            c = chars.next()?.1;
        }
        // An unescaped ':' ends the field only once the token is used up; before
        // that libpq compares it like any other character.
        if c == ':' && !escaped && want.clone().next().is_none() {
            return Some(&line[i + 1..]);
        }
        if want.next() != Some(c) {
            return None;
        }
    }
}

/// The password field: up to the first unescaped `:` or the end of the line.
fn unescape_password(rest: &str) -> String {
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            ':' => break,
            '\\' => match chars.next() {
                Some(n) => out.push(n),
                None => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn key<'a>(host: &'a str, port: &'a str, dbname: &'a str, user: &'a str) -> PgpassKey<'a> {
        PgpassKey { host, port, dbname, user }
    }

    #[test]
    fn first_match_wins_and_wildcards_are_whole_fields() {
        let f = "\
# comment:*:*:*:nope
db1:5432:app:alice:first
*:*:*:alice:second
loc*:*:*:bob:never
*:5433:*:bob:third
";
        assert_eq!(find(f, key("db1", "5432", "app", "alice")).as_deref(), Some("first"));
        assert_eq!(find(f, key("db2", "5432", "app", "alice")).as_deref(), Some("second"));
        assert_eq!(find(f, key("localhost", "5432", "x", "bob")), None);
        assert_eq!(find(f, key("localhost", "5433", "x", "bob")).as_deref(), Some("third"));
        assert_eq!(find(f, key("db1", "5432", "app", "carol")), None);
    }

    #[test]
    fn escapes_in_fields_and_password() {
        let f = "h\\:x:5432:d\\\\b:u:pa\\:ss\\\\word:ignored\r\n";
        assert_eq!(find(f, key("h:x", "5432", "d\\b", "u")).as_deref(), Some("pa:ss\\word"));
        assert_eq!(find(f, key("h", "5432", "d\\b", "u")), None);
        // A prefix of the field is not a match, nor is a longer token.
        assert_eq!(find("host:1:d:u:p\n", key("hos", "1", "d", "u")), None);
        assert_eq!(find("host:1:d:u:p\n", key("hostx", "1", "d", "u")), None);
        // Empty password field.
        assert_eq!(find("h:1:d:u:\n", key("h", "1", "d", "u")).as_deref(), Some(""));
        // A line too short never matches.
        assert_eq!(find("h:1:d\n", key("h", "1", "d", "u")), None);
    }

    #[test]
    fn file_permissions_as_libpq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        fs::write(&path, "*:*:*:*:secret\n").unwrap();
        let k = key("h", "1", "d", "u");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let got = lookup(&path, k);
        assert_eq!(got.password.as_deref(), Some("secret"));
        assert!(got.warning.is_none());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let got = lookup(&path, k);
        assert_eq!(got.password, None);
        assert!(got.warning.unwrap().contains("has group or world access"));
        let missing = lookup(&dir.path().join("nope"), k);
        assert!(missing.password.is_none() && missing.warning.is_none());
        let not_file = lookup(dir.path(), k);
        assert!(not_file.warning.unwrap().contains("not a plain file"));
    }
}
