//! known_hosts files as OpenSSH reads and writes them: which lines apply to a host
//! (patterns, negations, hashed names, `@revoked` and `@cert-authority` markers), what
//! they say about the key a host presents, and the line `accept-new` appends.

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use russh::keys::{Algorithm, PublicKey};

use super::host_hash;
use super::target::glob;
use crate::catalog::durable;

#[derive(Debug, thiserror::Error)]
pub enum KnownHostsError {
    #[error("cannot create the directory {}: {source}", dir.display())]
    CreateDir { dir: PathBuf, source: io::Error },
    #[error("{} is a symbolic link, and known hosts are never written through one", file.display())]
    Symlink { file: PathBuf },
    #[error("cannot append to {}: {source}", file.display())]
    Write { file: PathBuf, source: io::Error },
    #[error("cannot encode the host key: {0}")]
    Encode(String),
}

/// What a line says about the key on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Marker {
    /// A key of the host.
    Host,
    /// `@revoked`: never accept this key.
    Revoked,
    /// `@cert-authority`: a CA signing host certificates (which we do not support).
    CertAuthority,
}

/// One known_hosts line that applies to the host being checked.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub file: PathBuf,
    /// 1-based, counting every line of the file, as OpenSSH reports it.
    pub line: usize,
    pub marker: Marker,
    /// None when we cannot read it (a type we do not know): such a line still lists the
    /// host, so a host known only that way is never taken for new.
    pub key: Option<PublicKey>,
}

/// What the known hosts files say about a presented key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// One of the host's keys.
    Known,
    /// Marked `@revoked`: refused whatever other lines say.
    Revoked { file: PathBuf, line: usize },
    /// The host has keys listed and this is none of them.
    Changed { file: PathBuf, line: usize },
    /// The host is listed only through `@cert-authority` lines.
    CertificateOnly { file: PathBuf, line: usize },
    /// Nothing about this host.
    Unknown,
}

/// The name a host has in known_hosts: `host` on port 22, else `[host]:port`.
pub(super) fn host_port(host: &str, port: u16) -> String {
    if port == 22 { host.to_string() } else { format!("[{host}]:{port}") }
}

/// The lines of `files` that apply to `name`. A missing file is no entry; unreadable
/// files and malformed lines are skipped, as OpenSSH does; a line whose key we cannot
/// read is kept, matching no key.
pub(super) fn entries_for(files: &[PathBuf], name: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    for file in files {
        let text = match std::fs::read(file) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!("cannot read the known hosts file {}: {e}", file.display());
                continue;
            }
        };
        for (i, text) in text.lines().enumerate() {
            let Some((marker, hosts, key)) = parse_line(text) else {
                continue;
            };
            if !hosts_match(hosts, name) {
                continue;
            }
            if key.is_none() {
                tracing::debug!("{}:{}: cannot read the key, it matches no key", file.display(), i + 1);
            }
            entries.push(Entry { file: file.clone(), line: i + 1, marker, key });
        }
    }
    entries
}

/// `[@marker] hosts keytype base64 [comment]`; None for blank lines, comments and lines
/// that are not of that shape. The key is None when it cannot be read (an unknown type).
fn parse_line(text: &str) -> Option<(Marker, &str, Option<PublicKey>)> {
    let mut words = text.split([' ', '\t']).filter(|w| !w.is_empty());
    let mut first = words.next()?;
    if first.starts_with('#') {
        return None;
    }
    let marker = match first {
        "@revoked" => Marker::Revoked,
        "@cert-authority" => Marker::CertAuthority,
        m if m.starts_with('@') => return None,
        _ => Marker::Host,
    };
    if marker != Marker::Host {
        first = words.next()?;
    }
    let (kind, data) = (words.next()?, words.next()?);
    Some((marker, first, PublicKey::from_openssh(&format!("{kind} {data}")).ok()))
}

/// OpenSSH's host list: comma-separated patterns (`*`, `?`, case-insensitive), `!pattern`
/// excludes the host from the line whatever else matches, `|1|salt|hash` is a hashed name.
fn hosts_match(patterns: &str, name: &str) -> bool {
    let mut matched = false;
    for p in patterns.split(',') {
        if p.starts_with("|1|") {
            matched |= host_hash::matches(p, name);
        } else if let Some(negated) = p.strip_prefix('!') {
            if glob(negated, name) {
                return false;
            }
        } else if glob(p, name) {
            matched = true;
        }
    }
    matched
}

/// A key compared as OpenSSH does: the key material only, never the comment.
fn same_key(recorded: &Option<PublicKey>, key: &PublicKey) -> bool {
    recorded.as_ref().is_some_and(|r| r.key_data() == key.key_data())
}

fn same_type(a: &Algorithm, b: &Algorithm) -> bool {
    matches!((a, b), (Algorithm::Rsa { .. }, Algorithm::Rsa { .. })) || a == b
}

fn recorded_type(recorded: &Option<PublicKey>, algorithm: &Algorithm) -> bool {
    recorded.as_ref().is_some_and(|r| same_type(&r.algorithm(), algorithm))
}

/// What `entries` (all for one host) say about `key`. A revocation wins over any match;
/// a host listed with several keys accepts any of them.
pub(super) fn judge(entries: &[Entry], key: &PublicKey) -> Verdict {
    let of = |m: Marker| entries.iter().filter(move |e| e.marker == m);
    if let Some(e) = of(Marker::Revoked).find(|e| same_key(&e.key, key)) {
        return Verdict::Revoked { file: e.file.clone(), line: e.line };
    }
    if of(Marker::Host).any(|e| same_key(&e.key, key)) {
        return Verdict::Known;
    }
    // Point at a recorded key of the same type when there is one: the likely culprit.
    let changed = of(Marker::Host).find(|e| recorded_type(&e.key, &key.algorithm()));
    if let Some(e) = changed.or_else(|| of(Marker::Host).next()) {
        return Verdict::Changed { file: e.file.clone(), line: e.line };
    }
    if let Some(e) = of(Marker::CertAuthority).next() {
        return Verdict::CertificateOnly { file: e.file.clone(), line: e.line };
    }
    Verdict::Unknown
}

/// `preferred` with the types of the host's recorded keys first, as OpenSSH orders its
/// host key algorithms: a host that has a key we know presents that one, and is not
/// taken for changed because it offered another type first.
pub(super) fn known_types_first(entries: &[Entry], preferred: &[Algorithm]) -> Vec<Algorithm> {
    let known = |a: &Algorithm| entries.iter().any(|e| e.marker == Marker::Host && recorded_type(&e.key, a));
    let (first, rest): (Vec<Algorithm>, Vec<Algorithm>) = preferred.iter().cloned().partition(known);
    first.into_iter().chain(rest).collect()
}

/// Appends `name keytype base64` to `file` and fsyncs it (and its directory), creating
/// the file 0600 and missing directories 0700. Never through a symbolic link. Returns
/// false when `file` is not a regular file (`/dev/null`): nothing to keep.
pub(super) fn record(file: &Path, name: &str, key: &PublicKey) -> Result<bool, KnownHostsError> {
    let write_err = |source| KnownHostsError::Write { file: file.to_path_buf(), source };
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    durable::create_dir_all(dir).map_err(|source| KnownHostsError::CreateDir { dir: dir.to_path_buf(), source })?;
    let opened =
        OpenOptions::new().read(true).append(true).create(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(file);
    let mut f = match opened {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(KnownHostsError::Symlink { file: file.to_path_buf() });
        }
        Err(e) => return Err(write_err(e)),
    };
    let meta = f.metadata().map_err(write_err)?;
    if !meta.is_file() {
        return Ok(false);
    }
    // Never glue our line onto a last line that lacks its newline.
    let mut line = String::new();
    if meta.len() > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::End(-1)).and_then(|_| f.read_exact(&mut last)).map_err(write_err)?;
        if last[0] != b'\n' {
            line.push('\n');
        }
    }
    let bare = PublicKey::new(key.key_data().clone(), "");
    let text = bare.to_openssh().map_err(|e| KnownHostsError::Encode(e.to_string()))?;
    line.push_str(&format!("{name} {}\n", text.trim_end()));
    // One write with O_APPEND: a concurrent writer's line never lands inside ours.
    f.write_all(line.as_bytes()).map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    durable::fsync_dir(dir).map_err(write_err)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDno5U5ZzK2+kJC1p9PUOQXFqjCaTdYc2nsdSjOaFb7o";
    const KEY_B: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBOo7F1XOSIpcBdgFfA4TPwwr97iD8ouwGmy+H8wO+IA";
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBO+RsOzFlAcA+b3h2sg0BEhuyvyUAB7fDhe353mbE76WQd9c19FnDG38QXQM+WCViNxxebYqQ8iFvt8QGedIefM=";

    fn key(text: &str) -> PublicKey {
        PublicKey::from_openssh(text).expect("test key")
    }

    fn entries(text: &str, name: &str) -> (tempfile::TempDir, PathBuf, Vec<Entry>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("known_hosts");
        std::fs::write(&file, text).expect("write");
        let found = entries_for(std::slice::from_ref(&file), name);
        (dir, file, found)
    }

    #[test]
    fn patterns_negations_markers_and_line_numbers() {
        let text = format!(
            "# comment\n\n  db1,db2 {KEY_A} comment words\n!db2,db* {KEY_B}\n@revoked *\t{ECDSA}\n@bogus db1 {KEY_A}\n\
             other {KEY_A}\ndb1 ssh-ed25519 notbase64\ndb1\n"
        );
        let (_d, _f, found) = entries(&text, "db1");
        let got: Vec<(usize, Marker)> = found.iter().map(|e| (e.line, e.marker)).collect();
        assert_eq!(got, vec![(3, Marker::Host), (4, Marker::Host), (5, Marker::Revoked), (8, Marker::Host)]);
        assert!(found[3].key.is_none(), "an unreadable key is kept as a listing");
        let (_d, _f, found) = entries(&text, "db2");
        assert_eq!(found.iter().map(|e| e.line).collect::<Vec<_>>(), vec![3, 5]);
        let (_d, _f, found) = entries(&format!("[DB1]:2222 {KEY_A}\n"), "[db1]:2222");
        assert_eq!(found.len(), 1, "patterns match case-insensitively");
    }

    #[test]
    fn revoked_beats_a_matching_line_and_several_keys_all_count() {
        let a = key(KEY_A);
        let text = format!("db1 {KEY_B}\ndb1 {KEY_A}\ndb1 {ECDSA}\n");
        let (_d, file, found) = entries(&text, "db1");
        assert_eq!(judge(&found, &a), Verdict::Known);
        assert_eq!(judge(&found, &key(ECDSA)), Verdict::Known);
        let other = key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICxTlWkePNnskTaEmXLTLi22GqJUVh5ZCRJRd3Y57qgZ");
        assert_eq!(judge(&found, &other), Verdict::Changed { file, line: 1 });
        let (_d, file, found) = entries(&format!("{text}@revoked * {KEY_A}\n"), "db1");
        assert_eq!(judge(&found, &a), Verdict::Revoked { file, line: 4 });
    }

    #[test]
    fn a_host_listed_with_an_unreadable_key_is_not_new() {
        let (_d, file, found) = entries("db1 ssh-dss AAAAB3NzaC1kc3MAAACBAP\n", "db1");
        assert_eq!(judge(&found, &key(KEY_A)), Verdict::Changed { file, line: 1 });
    }

    #[test]
    fn changed_points_at_a_key_of_the_same_type() {
        let (_d, file, found) = entries(&format!("db1 {ECDSA}\ndb1 {KEY_B}\n"), "db1");
        assert_eq!(judge(&found, &key(KEY_A)), Verdict::Changed { file, line: 2 });
    }

    #[test]
    fn cert_authority_alone_is_not_a_listing() {
        let (_d, file, found) = entries(&format!("@cert-authority *.example.com {KEY_B}\n"), "db1.example.com");
        assert_eq!(judge(&found, &key(KEY_A)), Verdict::CertificateOnly { file, line: 1 });
        // With a plain line as well, the plain line decides.
        let (_d, _f, found) = entries(&format!("@cert-authority * {KEY_B}\ndb1 {KEY_A}\n"), "db1");
        assert_eq!(judge(&found, &key(KEY_A)), Verdict::Known);
    }

    #[test]
    fn known_types_come_first() {
        let (_d, _f, found) = entries(&format!("db1 {ECDSA}\n@revoked db1 {KEY_A}\n"), "db1");
        let order = known_types_first(&found, &russh::Preferred::DEFAULT.key);
        assert_eq!(order[0], key(ECDSA).algorithm());
        assert_eq!(order.len(), russh::Preferred::DEFAULT.key.len());
        assert_eq!(order[1], Algorithm::Ed25519, "the rest keep their order; a revoked key's type is no reason");
    }

    #[test]
    fn record_appends_after_a_missing_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("known_hosts");
        std::fs::write(&file, format!("db2 {KEY_B}")).expect("write");
        assert!(record(&file, "db1", &key(&format!("{KEY_A} a comment"))).expect("record"));
        let text = std::fs::read_to_string(&file).expect("read");
        assert_eq!(text, format!("db2 {KEY_B}\ndb1 {KEY_A}\n"));
        assert!(!record(Path::new("/dev/null"), "db1", &key(KEY_A)).expect("/dev/null"));
    }
}
