//! The checks that disable a server whose configuration cannot work (Barman's
//! server initialisation), path conflicts, the features this version does
//! not implement (those disable the server instead of being silently ignored),
//! and the cluster's options that parse but cannot work together.

use super::ini::Origin;
use super::types::{BackupMethod, HostPort};
use super::{Config, ConfigWarning, GlobalConfig, ServerConfig};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

/// The shortest and longest `ownership_lease`: below, renewals through Raft cannot keep
/// up; above, a failed owner leaves its server unstreamed for more than ten minutes.
const LEASE_RANGE: std::ops::RangeInclusive<Duration> = Duration::from_millis(500)..=Duration::from_secs(600);

/// The cluster's options that parse but cannot work: one line each, at the value's
/// file and line. Required options are the commands' business, not checked here.
pub(super) fn check_cluster(g: &GlobalConfig, sources: &HashMap<&'static str, Origin>) -> Vec<ConfigWarning> {
    let mut out = Vec::new();
    let mut problem = |key: &str, msg: String| {
        let msg = format!("option '{key}' in [barman]: {msg}");
        out.push(match sources.get(key) {
            Some(o) => ConfigWarning::at(o, msg),
            None => ConfigWarning::general(msg),
        });
    };
    if !LEASE_RANGE.contains(&g.ownership_lease) {
        problem(
            "ownership_lease",
            format!(
                "'{}' is out of range; expected seconds from 0.5 to 600",
                super::types::show_seconds(g.ownership_lease)
            ),
        );
    }
    if let Some(a) = g.node_advertise.as_ref().filter(|a| a.is_unspecified()) {
        if sources.contains_key("node_advertise") {
            problem(
                "node_advertise",
                format!(
                    "'{a}' is a wildcard address no other node can dial; expected this node's address as host:port"
                ),
            );
        } else {
            problem(
                "node_listen",
                format!(
                    "'{a}' is a wildcard address and node_advertise is unset; expected node_advertise = this node's address as host:port"
                ),
            );
        }
    }
    if let (Some(m), Some(l)) = (&g.node_metrics_listen, &g.node_listen)
        && same_socket(m, l)
    {
        problem("node_metrics_listen", format!("'{m}' is also node_listen ('{l}'); expected another host:port"));
    }
    out
}

/// Whether binding both would clash: one port, and one host or a wildcard.
fn same_socket(a: &HostPort, b: &HostPort) -> bool {
    a.port == b.port && (a.host == b.host || a.is_unspecified() || b.is_unspecified())
}

/// Two directory options resolving to the same place: within a server the server
/// is disabled; across servers it is a global error.
pub(super) fn check_paths(cfg: &mut Config) {
    let mut seen: BTreeMap<PathBuf, (&'static str, String)> = BTreeMap::new();
    let mut global = Vec::new();
    let mut local: Vec<(String, String)> = Vec::new();
    for (name, s) in &cfg.servers {
        let mut paths: Vec<(&'static str, Option<String>)> = vec![
            ("backup_directory", s.opts.backup_directory.clone()),
            ("basebackups_directory", s.opts.basebackups_directory.clone()),
            ("errors_directory", s.opts.errors_directory.clone()),
            ("incoming_wals_directory", s.opts.incoming_wals_directory.clone()),
            ("streaming_wals_directory", s.opts.streaming_wals_directory.clone()),
            ("wals_directory", s.opts.wals_directory.clone()),
        ];
        paths.sort_by_key(|(l, _)| *l);
        for (label, path) in paths {
            let path = path.unwrap_or_else(|| "None".to_string());
            let real = realpath(&path);
            let shown = if real.to_string_lossy() == path {
                format!("{label}={path}")
            } else {
                format!("{label}={path} (symlink to: {})", real.display())
            };
            match seen.get(&real) {
                None => {
                    seen.insert(real, (label, name.clone()));
                }
                Some((other_label, other)) if other == name => {
                    local.push((
                        name.clone(),
                        format!("Conflicting path: {shown} conflicts with '{other_label}' for server '{other}'"),
                    ));
                }
                Some((other_label, other)) => {
                    let (a, b) = shown.split_once('=').unwrap_or((&shown, ""));
                    global.push(format!(
                        "Conflicting path: {a}={b} for server '{name}' conflicts with '{other_label}' for server '{other}'"
                    ));
                }
            }
        }
    }
    for (name, msg) in local {
        if let Some(s) = cfg.servers.get_mut(&name) {
            s.disable(msg);
        }
    }
    cfg.global_errors = global;
}

/// `os.path.realpath`: resolves what exists, keeps the rest as written.
fn realpath(p: &str) -> PathBuf {
    let path = PathBuf::from(p);
    let abs = if path.is_absolute() { path } else { std::env::current_dir().unwrap_or_default().join(path) };
    let mut existing = abs.clone();
    let mut tail = Vec::new();
    loop {
        if let Ok(r) = existing.canonicalize() {
            let mut out = r;
            for t in tail.iter().rev() {
                out.push(t);
            }
            return out;
        }
        match (existing.file_name().map(|f| f.to_os_string()), existing.parent().map(|p| p.to_path_buf())) {
            (Some(f), Some(parent)) => {
                tail.push(f);
                existing = parent;
            }
            _ => return abs,
        }
    }
}

/// Barman's test of a conninfo (`dict(x.split("=", 1) for x in dsn.split())`):
/// every blank-separated word (Python's blanks) must contain `=`. Barman disables
/// the server when this fails, even where libpq would accept the string (`host = x`).
fn barman_valid_conninfo(ci: &str) -> bool {
    ci.split(|c: char| c.is_whitespace() || matches!(c, '\x1c'..='\x1f')).all(|w| w.is_empty() || w.contains('='))
}

fn check_conninfo(s: &mut ServerConfig, what: &str, label: &str, value: Option<String>) {
    match value {
        None => {
            let msg = format!("{label}: Missing '{what}' parameter for server '{}'", s.name);
            s.disable(msg);
        }
        Some(ci) if !barman_valid_conninfo(&ci) => {
            s.disable(format!("{label}: Cannot connect to postgres: \"{ci}\" is not a valid connection string"));
        }
        Some(_) => {}
    }
}

/// Barman's per-server initialisation checks, then ours for unsupported features.
pub(super) fn validate_server(s: &mut ServerConfig, warnings: &mut Vec<ConfigWarning>) {
    let name = s.name.clone();
    if !s.passive {
        check_conninfo(s, "conninfo", "PostgreSQL connection", s.opts.conninfo.clone());
        if s.opts.backup_method == BackupMethod::Postgres || s.opts.streaming_archiver {
            check_conninfo(s, "streaming_conninfo", "Streaming connection", s.opts.streaming_conninfo.clone());
        }
        if !s.opts.archiver && s.opts.streaming_archiver && s.opts.slot_name.is_none() {
            s.disable("Streaming-only archiver requires 'streaming_conninfo' and 'slot_name' options to be properly configured");
        }
        if !s.opts.archiver && !s.opts.streaming_archiver {
            warnings.push(ConfigWarning::general(format!(
                "No archiver enabled for server '{name}'. Please turn on 'archiver', 'streaming_archiver' or both"
            )));
            warnings.push(ConfigWarning::general("Forcing 'archiver = on'".to_string()));
            s.opts.archiver = true;
        }
    }
    backup_method_checks(s, warnings);
    unsupported_features(s);
}

fn backup_method_checks(s: &mut ServerConfig, warnings: &mut Vec<ConfigWarning>) {
    let name = s.name.clone();
    if s.passive {
        if s.opts.primary_ssh_command.as_deref().is_none_or(|c| c.split_whitespace().next().is_none()) {
            s.disable(format!("Invalid primary_ssh_command in barman configuration for server {name}"));
        }
        return;
    }
    let has_ssh = s.opts.ssh_command.as_deref().is_some_and(|c| c.split_whitespace().next().is_some());
    match s.opts.backup_method {
        BackupMethod::Rsync | BackupMethod::LocalRsync => {
            let local = s.opts.backup_method == BackupMethod::LocalRsync;
            if !local && !has_ssh {
                s.disable(format!("Missing or invalid ssh_command in barman configuration for server {name}"));
                return;
            }
            if local && has_ssh {
                s.disable(format!(
                    "Local copy requires ssh_command in barman configuration to be empty for server {name}"
                ));
                return;
            }
            // Our SSH client must be able to do what the command line asks.
            if let Some(cmd) = s.opts.ssh_command.clone().filter(|_| !local)
                && let Err(e) = crate::transport::ssh::SshTarget::from_command(&cmd)
            {
                s.disable(format!("{e} (ssh_command of server {name})"));
                return;
            }
            let o = &mut s.opts.backup_options.0;
            if !o.contains("concurrent_backup") && !o.contains("exclusive_backup") {
                o.insert("concurrent_backup".to_string());
                warnings.push(ConfigWarning::general(format!(
                    "No backup strategy set for server '{name}' (using default 'concurrent_backup')."
                )));
            }
        }
        BackupMethod::Postgres => {
            let o = &mut s.opts.backup_options.0;
            if o.remove("exclusive_backup") {
                warnings.push(ConfigWarning::general(
                    "'exclusive_backup' is not a valid backup_option using postgres backup_method. Overriding with 'concurrent_backup'."
                        .to_string(),
                ));
            }
            o.insert("concurrent_backup".to_string());
            if s.opts.tablespace_bandwidth_limit.is_some() {
                s.disable("tablespace_bandwidth_limit option is not supported by postgres backup_method");
            }
            if matches!(s.opts.reuse_backup, Some(super::types::ReuseBackup::Copy | super::types::ReuseBackup::Link)) {
                s.disable("reuse_backup option is not supported by postgres backup_method");
            }
            if s.opts.network_compression {
                s.disable("network_compression option is not supported by postgres backup_method");
            }
            for issue in backup_compression_issues(s) {
                s.disable(issue);
            }
        }
        BackupMethod::Snapshot => {}
    }
}

/// Barman's validation of `backup_compression` and its companions
/// (`PgBaseBackupCompressionOption.validate`, for PostgreSQL 15+).
fn backup_compression_issues(s: &ServerConfig) -> Vec<String> {
    use super::types::{BackupCompression as C, BackupCompressionFormat, BackupCompressionLocation};
    let o = &s.opts;
    let Some(c) = o.backup_compression else { return Vec::new() };
    let mut issues = Vec::new();
    if o.backup_compression_format == Some(BackupCompressionFormat::Plain)
        && o.backup_compression_location != Some(BackupCompressionLocation::Server)
    {
        issues.push(format!(
            "backup_compression_format plain is not compatible with backup_compression_location {}",
            o.backup_compression_location.map_or("None", |l| l.as_str())
        ));
    }
    let level = o.backup_compression_level;
    let workers = o.backup_compression_workers;
    match c {
        C::Gzip => {
            if let Some(l) = level.filter(|l| !(1..=9).contains(l) && *l != -1) {
                let mut m = format!(
                    "backup_compression_level {l} unsupported by compression algorithm. gzip expects a compression level between 1 and 9 (-1 will use default compression level)."
                );
                if l == 0 {
                    m.push_str("\nIf you need to create an archive not compressed, you should set `backup_compression = none`.");
                }
                issues.push(m);
            }
            if workers.is_some() {
                issues.push("backup_compression_workers is not compatible with compression gzip".into());
            }
        }
        C::Lz4 => {
            if let Some(l) = level.filter(|l| !(0..=12).contains(l)) {
                issues.push(format!(
                    "backup_compression_level {l} unsupported by compression algorithm. lz4 expects a compression level between 1 and 12 (0 will use default compression level)."
                ));
            }
            if workers.is_some() {
                issues.push("backup_compression_workers is not compatible with compression lz4.".into());
            }
        }
        C::Zstd => {
            if let Some(l) = level.filter(|l| !(-131_072..=22).contains(l)) {
                issues.push(format!(
                    "backup_compression_level {l} unsupported by compression algorithm. 'zstd' expects a compression level between -131072 and 22 (3 will use default compression level)."
                ));
            }
            if let Some(w) = workers.filter(|w| *w < 0) {
                issues.push(format!("backup_compression_workers should be a positive integer: '{w}' is invalid."));
            }
        }
        C::None => {
            if level.is_some_and(|l| l != 0) {
                issues.push("backup_compression none only supports backup_compression_level 0.".into());
            }
            if workers.is_some() {
                issues.push("backup_compression_workers is not compatible with compression 'none'.".into());
            }
        }
    }
    issues
}

/// Features this version does not implement: a server asking for one is disabled
/// with a message naming it, so nothing is silently done differently.
fn unsupported_features(s: &mut ServerConfig) {
    let mut msgs = Vec::new();
    if s.opts.backup_method == BackupMethod::Snapshot {
        msgs.push("backup_method = snapshot (cloud disk snapshots) is not supported by this version".to_string());
    }
    let snapshot_opts: [(&str, bool); 13] = [
        ("snapshot_disks", s.opts.snapshot_disks.is_some()),
        ("snapshot_instance", s.opts.snapshot_instance.is_some()),
        ("snapshot_provider", s.opts.snapshot_provider.is_some()),
        ("snapshot_zone", s.opts.snapshot_zone.is_some()),
        ("snapshot_gcp_project", s.opts.snapshot_gcp_project.is_some()),
        ("gcp_project", s.opts.gcp_project.is_some()),
        ("gcp_zone", s.opts.gcp_zone.is_some()),
        ("aws_profile", s.opts.aws_profile.is_some()),
        ("aws_region", s.opts.aws_region.is_some()),
        ("aws_snapshot_lock_mode", s.opts.aws_snapshot_lock_mode.is_some()),
        ("azure_credential", s.opts.azure_credential.is_some()),
        ("azure_resource_group", s.opts.azure_resource_group.is_some()),
        ("azure_subscription_id", s.opts.azure_subscription_id.is_some()),
    ];
    for (opt, set) in snapshot_opts {
        if set {
            msgs.push(format!("option '{opt}' configures snapshot backups, which this version does not support"));
        }
    }
    if s.opts.encryption.is_some() {
        msgs.push(
            "encryption = gpg is not supported by this version: WAL files would be stored unencrypted; remove the option or use Barman"
                .to_string(),
        );
    }
    if s.opts.encryption_key_id.is_some() || s.opts.encryption_passphrase_command.is_some() {
        msgs.push(
            "encryption_key_id / encryption_passphrase_command: GPG encryption is not supported by this version"
                .to_string(),
        );
    }
    for m in msgs {
        s.disable(m);
    }
}

#[cfg(test)]
mod tests {
    use super::barman_valid_conninfo as valid;

    #[test]
    fn barman_rule_is_stricter_than_libpq() {
        assert!(valid("host=pg user=barman"));
        assert!(valid(""));
        assert!(valid("password=a=b"));
        assert!(valid("host=pg\x1fuser=x"));
        assert!(!valid("host = pg"));
        assert!(!valid("host=pg junk"));
        assert!(!valid("host=pg\x1cjunk"));
        assert!(!valid("password='a b'"));
    }
}
