//! What a recovery writes into the restored data directory's configuration,
//! byte for byte as Barman 3.17 does: the recovery settings (its
//! `_generate_recovery_conf`) and the mangling of `archive_command` and the
//! `recovery_target*` settings already there (its `ConfigurationFileMangeler`),
//! so a recovered cluster never archives into the source's archive.

/// Where the recovered cluster gets its WAL from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalSource {
    /// `barman get-wal` on this host, run as `user`.
    GetWal { user: String, server: String },
    /// `barman-wal-restore` from the recovery host back to `host`.
    WalRestore { user: String, port: Option<u16>, host: String, server: String, parallel_jobs: u32 },
    /// Copied beforehand into `wal_dest`, removed at the end of recovery.
    Copied { wal_dest: String },
}

/// The recovery targets, as validated and formatted for the settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    /// `recovery_target_time`, already in Barman's format.
    pub time: Option<String>,
    pub xid: Option<String>,
    pub lsn: Option<String>,
    pub name: Option<String>,
    pub immediate: bool,
    /// `--exclusive`: stop just before the target.
    pub exclusive: bool,
    /// `recovery_target_timeline` as given (a number, `current` or `latest`).
    pub tli: Option<String>,
    /// `recovery_target_action`.
    pub action: Option<String>,
}

/// The settings lines Barman writes (appended to `postgresql.auto.conf` from
/// PostgreSQL 12), in Barman's order.
pub fn recovery_lines(source: &WalSource, standby_mode: bool, t: &Targets) -> Vec<String> {
    let mut lines = Vec::new();
    // Barman drops -P in standby mode and keeps the two spaces around it.
    let partial = if standby_mode { "" } else { "-P" };
    match source {
        WalSource::GetWal { user, server } => {
            lines.push(format!("# The 'barman get-wal' command must run as '{user}' user"));
            lines.push(format!("restore_command = 'barman get-wal {partial} {server} %f > %p'"));
        }
        WalSource::WalRestore { user, port, host, server, parallel_jobs } => {
            lines.push("# The 'barman-wal-restore' command is provided in the 'barman-cli' package".into());
            let port = port.map(|p| format!("--port {p}")).unwrap_or_default();
            let mut cmd =
                format!("restore_command = 'barman-wal-restore {partial} -U {user} {port} {host} {server} %f %p'");
            if *parallel_jobs > 1 {
                cmd.pop();
                cmd.push_str(&format!(" -p {parallel_jobs}'"));
            }
            // Barman collapses every run of blanks here (not in the get-wal line).
            lines.push(cmd.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        WalSource::Copied { wal_dest } if !standby_mode => {
            lines.push(format!("restore_command = 'cp {wal_dest}/%f %p'"));
            lines.push(format!("recovery_end_command = 'rm -fr {wal_dest}'"));
        }
        WalSource::Copied { .. } => {}
    }
    if let Some(v) = &t.time {
        lines.push(format!("recovery_target_time = '{v}'"));
    }
    if let Some(v) = &t.xid {
        lines.push(format!("recovery_target_xid = '{v}'"));
    }
    if let Some(v) = &t.lsn {
        lines.push(format!("recovery_target_lsn = '{v}'"));
    }
    if let Some(v) = &t.name {
        lines.push(format!("recovery_target_name = '{v}'"));
    }
    if t.immediate {
        lines.push("recovery_target = 'immediate'".into());
    }
    if (t.xid.is_some() || t.time.is_some() || t.lsn.is_some()) && t.exclusive {
        lines.push("recovery_target_inclusive = 'False'".into());
    }
    if let Some(v) = &t.tli {
        lines.push(format!("recovery_target_timeline = {v}"));
    }
    if let Some(v) = &t.action {
        lines.push(format!("recovery_target_action = '{v}'"));
    }
    lines
}

/// Settings Barman forces (`Some`) or comments out (`None`) in a recovered
/// cluster's configuration.
const MANGLED: [(&str, Option<&str>); 9] = [
    ("archive_command", Some("false")),
    ("recovery_target", None),
    ("recovery_target_name", None),
    ("recovery_target_time", None),
    ("recovery_target_xid", None),
    ("recovery_target_lsn", None),
    ("recovery_target_inclusive", None),
    ("recovery_target_timeline", None),
    ("recovery_target_action", None),
];

/// One setting changed by [`mangle`]: its 0-based line and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mangled {
    pub line: usize,
    pub key: String,
    pub value: Option<&'static str>,
}

/// The key of a configuration line, as Barman's `^\s*([^\s=]+)\s*=?\s*(.*)$` reads it.
fn setting_key(line: &[u8]) -> Option<&[u8]> {
    let start = line.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = &line[start..];
    let len = rest.iter().position(|b| b.is_ascii_whitespace() || *b == b'=').unwrap_or(rest.len());
    (len > 0).then(|| &rest[..len])
}

/// Barman's `mangle_options`: each line setting one of [`MANGLED`] is kept
/// behind `#BARMAN#` (followed by the forced value, if any); `append` is added
/// at the end, after a newline whenever a line was kept (so an empty line when
/// the file already ended with one).
pub fn mangle(content: &[u8], append: &[String]) -> (Vec<u8>, Vec<Mangled>) {
    let mut out = Vec::with_capacity(content.len() + 256);
    let mut changed = Vec::new();
    let mut last_line = None;
    for (n, line) in content.split_inclusive(|b| *b == b'\n').enumerate() {
        let hit = setting_key(line).and_then(|k| MANGLED.iter().find(|(name, _)| name.as_bytes() == k));
        if let Some((key, value)) = hit {
            out.extend_from_slice(b"#BARMAN#");
            out.extend_from_slice(line);
            if let Some(v) = value {
                out.extend_from_slice(format!("{key} = {v}\n").as_bytes());
            }
            changed.push(Mangled { line: n, key: key.to_string(), value: *value });
            continue;
        }
        last_line = Some(());
        out.extend_from_slice(line);
    }
    if !append.is_empty() {
        // Barman means "if the file does not end with a newline", but compares
        // an int with bytes: any kept line yields a newline before the appended ones.
        if last_line.is_some() {
            out.push(b'\n');
        }
        out.extend_from_slice(append.join("\n").as_bytes());
        out.push(b'\n');
    }
    (out, changed)
}

/// Settings a recovered cluster may not want as they are (paths of the source
/// host): Barman's `ConfigIssueDetection.DANGEROUS_OPTIONS`.
const DANGEROUS: [&str; 14] = [
    "data_directory",
    "config_file",
    "hba_file",
    "ident_file",
    "external_pid_file",
    "ssl_cert_file",
    "ssl_key_file",
    "ssl_ca_file",
    "ssl_crl_file",
    "unix_socket_directory",
    "unix_socket_directories",
    "include",
    "include_dir",
    "include_if_exists",
];

/// Barman's `detect_issues`: `(0-based line, key, value as written)` of every
/// dangerous setting in `content`.
pub fn dangerous_settings(content: &[u8]) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    for (n, line) in content.split_inclusive(|b| *b == b'\n').enumerate() {
        let Some(key) = setting_key(line) else { continue };
        let key = String::from_utf8_lossy(key).into_owned();
        if !DANGEROUS.contains(&key.as_str()) {
            continue;
        }
        let text = String::from_utf8_lossy(line);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let after_key = &text[text.find(&key).map_or(0, |i| i + key.len())..];
        let rest = after_key.trim_start();
        let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
        out.push((n, key, rest.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_as_barmans_expression_reads_them() {
        assert_eq!(setting_key(b"  archive_command='x'\n"), Some(&b"archive_command"[..]));
        assert_eq!(setting_key(b"archive_command\n"), Some(&b"archive_command"[..]));
        assert_eq!(setting_key(b"#archive_command = 'x'\n"), Some(&b"#archive_command"[..]));
        assert_eq!(setting_key(b"\n"), None);
        assert_eq!(setting_key(b"   \n"), None);
    }

    #[test]
    fn dangerous_settings_with_their_values() {
        let got =
            dangerous_settings(b"port = 5432\n  data_directory = '/srv/pg'\ninclude_dir 'conf.d'\n#hba_file = 'x'\n");
        assert_eq!(
            got,
            vec![(1, "data_directory".into(), "'/srv/pg'".into()), (2, "include_dir".into(), "'conf.d'".into())]
        );
    }
}
