//! `sync-info`: a server's backups, WAL and configuration as Barman 3.17 prints them for a
//! passive node: the same keys in the same order, the same encodings, the same offsets
//! into the xlog.db, so that a real Barman passive can follow one of our nodes.

use serde_json::{Map, Value, json};

use crate::catalog::ServerLayout;
use crate::catalog::backup_info::BackupInfo;
use crate::catalog::backups::{self, COPY_DONE};
use crate::catalog::xlogdb::{XlogDb, XlogDbError, XlogEntry};
use crate::config::{GlobalConfig, ServerConfig};

/// The Barman version a passive sees in `version`: the one whose formats we keep.
pub const BARMAN_VERSION: &str = "3.17.0";

/// Barman 3.17's server options in the order of its `ServerConfig.KEYS` (`config` in
/// sync-info lists them so, then `name`). Options of ours that Barman does not know stay
/// out: a passive gives what it reads to Barman's own classes.
pub const BARMAN_CONFIG_KEYS: &[&str] = &[
    "active",
    "archiver",
    "archiver_batch_size",
    "autogenerate_manifest",
    "aws_await_snapshots_timeout",
    "aws_snapshot_lock_mode",
    "aws_snapshot_lock_duration",
    "aws_snapshot_lock_cool_off_period",
    "aws_snapshot_lock_expiration_date",
    "aws_profile",
    "aws_region",
    "azure_credential",
    "azure_resource_group",
    "azure_subscription_id",
    "backup_compression",
    "backup_compression_format",
    "backup_compression_level",
    "backup_compression_location",
    "backup_compression_workers",
    "backup_directory",
    "backup_method",
    "backup_options",
    "bandwidth_limit",
    "basebackup_retry_sleep",
    "basebackup_retry_times",
    "basebackups_directory",
    "check_timeout",
    "cluster",
    "compression",
    "compression_level",
    "conninfo",
    "custom_compression_filter",
    "custom_decompression_filter",
    "custom_compression_magic",
    "description",
    "disabled",
    "encryption",
    "encryption_key_id",
    "encryption_passphrase_command",
    "errors_directory",
    "forward_config_path",
    "gcp_project",
    "gcp_zone",
    "immediate_checkpoint",
    "incoming_wals_directory",
    "keepalive_interval",
    "last_backup_maximum_age",
    "last_backup_minimum_size",
    "last_wal_maximum_age",
    "combine_mode",
    "local_staging_path",
    "max_incoming_wals_queue",
    "minimum_redundancy",
    "network_compression",
    "parallel_jobs",
    "parallel_jobs_start_batch_period",
    "parallel_jobs_start_batch_size",
    "path_prefix",
    "post_archive_retry_script",
    "post_archive_script",
    "post_backup_retry_script",
    "post_backup_script",
    "post_delete_script",
    "post_delete_retry_script",
    "post_recovery_retry_script",
    "post_recovery_script",
    "post_wal_delete_script",
    "post_wal_delete_retry_script",
    "pre_archive_retry_script",
    "pre_archive_script",
    "pre_backup_retry_script",
    "pre_backup_script",
    "pre_delete_script",
    "pre_delete_retry_script",
    "pre_recovery_retry_script",
    "pre_recovery_script",
    "pre_wal_delete_script",
    "pre_wal_delete_retry_script",
    "primary_checkpoint_timeout",
    "primary_conninfo",
    "primary_ssh_command",
    "recovery_options",
    "recovery_staging_path",
    "create_slot",
    "retention_policy",
    "retention_policy_mode",
    "reuse_backup",
    "slot_name",
    "snapshot_disks",
    "snapshot_gcp_project",
    "snapshot_instance",
    "snapshot_provider",
    "snapshot_zone",
    "ssh_command",
    "staging_path",
    "staging_location",
    "streaming_archiver",
    "streaming_archiver_batch_size",
    "streaming_archiver_name",
    "streaming_backup_name",
    "streaming_conninfo",
    "streaming_wals_directory",
    "tablespace_bandwidth_limit",
    "wal_conninfo",
    "wal_retention_policy",
    "wal_streaming_conninfo",
    "wals_directory",
    "worm_mode",
    "xlogdb_directory",
];

#[derive(Debug, thiserror::Error)]
pub enum SyncInfoError {
    #[error("last_wal '{last_wal}' is older than the first available wal '{first}'")]
    OlderThanFirst { last_wal: String, first: String },
    // Barman's message, double space included.
    #[error("last_wal '{last_wal}' is newer than the last available wal  '{last}'")]
    NewerThanLast { last_wal: String, last: String },
    #[error(transparent)]
    Xlog(#[from] XlogDbError),
    #[error(transparent)]
    Backup(#[from] crate::catalog::backup_info::BackupInfoError),
}

/// Python's `datetime.isoformat()` of an aware time: microseconds only when not zero.
fn isoformat(t: &chrono::DateTime<chrono::FixedOffset>) -> String {
    if t.timestamp_subsec_micros() == 0 {
        t.format("%Y-%m-%dT%H:%M:%S%:z").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.6f%:z").to_string()
    }
}

/// Barman's `BackupInfo.to_json()`: every backup.info field in the file's order, the
/// times as `ctime()`, then `backup_id` and the times in ISO 8601.
pub fn backup_json(id: &str, b: &BackupInfo) -> Value {
    let mut m = Map::new();
    for (k, _) in b.fields() {
        m.insert(k.to_string(), backup_field(b, k));
    }
    m.insert("backup_id".into(), json!(id));
    if let Some(t) = &b.begin_time {
        m.insert("begin_time_iso".into(), json!(isoformat(t)));
    }
    if let Some(t) = &b.end_time {
        m.insert("end_time_iso".into(), json!(isoformat(t)));
    }
    Value::Object(m)
}

fn backup_field(b: &BackupInfo, key: &str) -> Value {
    use crate::catalog::backups::ctime;
    let s = |v: &Option<String>| json!(v);
    match key {
        // As stored: Python's repr of the label, quotes included.
        "backup_label" => {
            json!(b.backup_label.as_ref().filter(|l| !l.is_empty()).map(|l| crate::catalog::pyliteral::repr_str(l)))
        }
        "backup_name" => s(&b.backup_name),
        "begin_offset" => json!(b.begin_offset),
        "begin_time" => json!(b.begin_time.as_ref().map(ctime)),
        "begin_wal" => json!(b.begin_wal.as_ref().map(ToString::to_string)),
        "begin_xlog" => json!(b.begin_xlog.as_ref().map(ToString::to_string)),
        "children_backup_ids" => json!(b.children_backup_ids.as_ref().filter(|v| !v.is_empty()).map(|v| v.join(","))),
        "cluster_size" => json!(b.cluster_size),
        "compression" => s(&b.compression),
        "config_file" => s(&b.config_file),
        "copy_stats" => b.copy_stats.as_ref().map_or(Value::Null, |v| v.to_json()),
        "data_checksums" => s(&b.data_checksums),
        "deduplicated_size" => json!(b.deduplicated_size),
        "encryption" => s(&b.encryption),
        "end_offset" => json!(b.end_offset),
        "end_time" => json!(b.end_time.as_ref().map(ctime)),
        "end_wal" => json!(b.end_wal.as_ref().map(ToString::to_string)),
        "end_xlog" => json!(b.end_xlog.as_ref().map(ToString::to_string)),
        "error" => s(&b.error),
        "hba_file" => s(&b.hba_file),
        "ident_file" => s(&b.ident_file),
        "included_files" => json!(b.included_files),
        "mode" => s(&b.mode),
        "parent_backup_id" => s(&b.parent_backup_id),
        "pgdata" => s(&b.pgdata),
        "server_name" => s(&b.server_name),
        "size" => json!(b.size),
        "snapshots_info" => b.snapshots_info.as_ref().map_or(Value::Null, |v| v.to_json()),
        "status" => json!(b.status),
        "summarize_wal" => s(&b.summarize_wal),
        "systemid" => s(&b.systemid),
        "tablespaces" => match &b.tablespaces {
            Some(t) if !t.is_empty() => Value::Array(t.iter().map(|t| json!([t.name, t.oid, t.location])).collect()),
            _ => Value::Null,
        },
        "timeline" => json!(b.timeline),
        "version" => json!(b.version),
        "xlog_segment_size" => json!(b.xlog_segment_size),
        _ => Value::Null,
    }
}

/// Barman's `WalFileInfo.to_json()`.
pub fn wal_json(e: &XlogEntry) -> Value {
    json!({
        "compression": e.compression,
        "encryption": e.encryption,
        "name": e.name.to_string(),
        "size": e.size,
        "time": e.time,
    })
}

/// The `config` object: Barman's server options in its order, then `name`.
pub fn config_json(s: &ServerConfig) -> Value {
    let mut m = Map::new();
    for k in BARMAN_CONFIG_KEYS {
        m.insert((*k).to_string(), s.json(k).unwrap_or(Value::Null));
    }
    m.insert("name".into(), json!(s.name));
    Value::Object(m)
}

/// What a passive asks: the WAL it holds last, and that WAL's line offset in our xlog.db.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub last_wal: Option<String>,
    pub last_position: Option<u64>,
}

/// The sync-info of `server` past `cursor`, as Barman's `sync_status` builds it.
pub fn sync_info(global: &GlobalConfig, server: &ServerConfig, cursor: &Cursor) -> Result<Value, SyncInfoError> {
    let layout = ServerLayout::new(global, server);
    let mut backups_json = Map::new();
    let mut first_useful_wal: Option<String> = None;
    for b in backups::load(&layout)? {
        if !COPY_DONE.contains(&b.info.status.as_str()) {
            continue;
        }
        if first_useful_wal.is_none() {
            first_useful_wal = b.info.begin_wal.as_ref().map(|w| w.to_string());
        }
        backups_json.insert(b.id.clone(), backup_json(&b.id, &b.info));
    }
    let db = XlogDb::new(&layout);
    let held = db.lock()?;
    let last_wal = cursor.last_wal.as_deref();
    // Where to start: the cursor's line when it still names the same WAL, else the top.
    // (Barman reads 24 characters there and compares them with the name.)
    let pos = cursor.last_position.unwrap_or(0);
    let start = match last_wal {
        Some(w) if db.peek(&held, pos, 24)? == w.as_bytes() => pos,
        _ => 0,
    };
    let entries = db.entries_from(&held, start)?;
    drop(held);
    if start == 0
        && let (Some(w), Some((_, first))) = (last_wal, entries.first())
        && w < first.name.as_str()
    {
        return Err(SyncInfoError::OlderThanFirst { last_wal: w.into(), first: first.name.to_string() });
    }
    let mut wals = Vec::new();
    for (_, e) in &entries {
        let name = e.name.as_str();
        let keep = match (last_wal, &first_useful_wal) {
            (Some(w), _) => name > w,
            (None, Some(f)) => name >= f.as_str(),
            (None, None) => true,
        };
        if keep {
            wals.push(wal_json(e));
        }
    }
    let last = entries.last().map(|(at, e)| (*at, e.name.to_string()));
    let (last_position, last_name) = match last {
        Some((at, name)) => {
            if let Some(w) = last_wal
                && w > name.as_str()
            {
                return Err(SyncInfoError::NewerThanLast { last_wal: w.into(), last: name });
            }
            (at, name)
        }
        None => (0, String::new()),
    };
    let mut out = Map::new();
    out.insert("last_position".into(), json!(last_position));
    out.insert("last_name".into(), json!(last_name));
    out.insert("backups".into(), Value::Object(backups_json));
    out.insert("wals".into(), Value::Array(wals));
    out.insert("version".into(), json!(BARMAN_VERSION));
    out.insert("config".into(), config_json(server));
    Ok(Value::Object(out))
}
