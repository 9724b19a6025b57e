//! A passive server fed by a Barman primary over SSH (`primary_ssh_command`): the primary's
//! `sync-info` JSON, run through our SSH client as Barman's passive runs it, read strictly
//! (a key Barman 3.17 does not know, a name that is not a WAL file or backup id, a relative
//! directory: refused), and kept in `primary.info` and `sync-wals.info` as Barman keeps them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::SyncError;
use crate::catalog::ServerLayout;
use crate::catalog::backup_info::BackupInfo;
use crate::catalog::backups;
use crate::catalog::durable;
use crate::catalog::pyliteral::PyValue;
use crate::catalog::xlogdb::XlogEntry;
use crate::config::ServerConfig;
use crate::wal::WalFileName;

/// The keys of a backup object Barman 3.17 writes and reads (backup.info's fields plus
/// `backup_id` and the ISO times).
const BACKUP_KEYS: &[&str] = &[
    "backup_label",
    "backup_name",
    "begin_offset",
    "begin_time",
    "begin_wal",
    "begin_xlog",
    "children_backup_ids",
    "cluster_size",
    "compression",
    "config_file",
    "copy_stats",
    "data_checksums",
    "deduplicated_size",
    "encryption",
    "end_offset",
    "end_time",
    "end_wal",
    "end_xlog",
    "error",
    "hba_file",
    "ident_file",
    "included_files",
    "mode",
    "parent_backup_id",
    "pgdata",
    "server_name",
    "size",
    "snapshots_info",
    "status",
    "summarize_wal",
    "systemid",
    "tablespaces",
    "timeline",
    "version",
    "xlog_segment_size",
    "backup_id",
    "begin_time_iso",
    "end_time_iso",
];

const WAL_KEYS: &[&str] = &["name", "size", "time", "compression", "encryption"];
const TOP_KEYS: &[&str] = &["last_position", "last_name", "backups", "wals", "version", "config"];

/// The primary's answer, checked.
#[derive(Debug, Clone)]
pub struct PrimaryInfo {
    pub last_position: u64,
    pub last_name: String,
    /// By id: the backup as this node records it (the primary's fields, its ISO times).
    pub backups: BTreeMap<String, BackupInfo>,
    pub wals: Vec<XlogEntry>,
    pub version: String,
    pub name: String,
    pub compression: Option<String>,
    pub basebackups_directory: String,
    pub wals_directory: String,
}

fn refused(peer: &str, why: String) -> SyncError {
    SyncError::Refused { peer: peer.into(), why }
}

/// Keys of `o` that are not in `known`.
fn unknown<'a>(o: &'a Map<String, Value>, known: &[&str]) -> Vec<&'a str> {
    o.keys().map(String::as_str).filter(|k| !known.contains(k)).collect()
}

/// An absolute directory without `.`/`..` components.
fn plain_absolute(p: &str) -> bool {
    p.starts_with('/') && p.split('/').all(|c| c != "." && c != "..")
}

impl PrimaryInfo {
    /// Reads `text` (the primary's sync-info output) from `peer`.
    pub fn parse(text: &str, peer: &str) -> Result<PrimaryInfo, SyncError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| refused(peer, format!("its sync-info is not JSON ({e}): is something printing on login?")))?;
        let Value::Object(top) = v else { return Err(refused(peer, "its sync-info is not a JSON object".into())) };
        let extra = unknown(&top, TOP_KEYS);
        if !extra.is_empty() {
            return Err(refused(peer, format!("its sync-info has keys Barman does not know: {}", extra.join(", "))));
        }
        let last_position = top
            .get("last_position")
            .and_then(Value::as_u64)
            .ok_or_else(|| refused(peer, "sync-info: last_position is not a number".into()))?;
        let last_name = top.get("last_name").and_then(Value::as_str).unwrap_or_default().to_string();
        let version = top.get("version").and_then(Value::as_str).unwrap_or_default().to_string();
        let config = top
            .get("config")
            .and_then(Value::as_object)
            .ok_or_else(|| refused(peer, "sync-info has no config object".into()))?;
        let dir = |key: &str| -> Result<String, SyncError> {
            match config.get(key).and_then(Value::as_str) {
                Some(d) if plain_absolute(d) => Ok(d.trim_end_matches('/').to_string()),
                other => Err(refused(peer, format!("sync-info: config {key} {other:?} is not an absolute directory"))),
            }
        };
        let basebackups_directory = dir("basebackups_directory")?;
        let wals_directory = dir("wals_directory")?;
        let name = config.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        let compression = config.get("compression").and_then(Value::as_str).map(str::to_string);
        let mut backups = BTreeMap::new();
        if let Some(b) = top.get("backups") {
            let b = b.as_object().ok_or_else(|| refused(peer, "sync-info: backups is not an object".into()))?;
            for (id, o) in b {
                backups.insert(id.clone(), backup_from_json(id, o, peer)?);
            }
        }
        let mut wals = Vec::new();
        for w in top.get("wals").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
            wals.push(wal_from_json(w, peer)?);
        }
        Ok(PrimaryInfo {
            last_position,
            last_name,
            backups,
            wals,
            version,
            name,
            compression,
            basebackups_directory,
            wals_directory,
        })
    }

    /// Where a WAL file lies under a `wals_directory`: `<hash>/<name>`, or `<name>` for a
    /// history file.
    pub fn wal_rel(name: &WalFileName) -> String {
        match name.hash_dir() {
            Some(h) => format!("{h}/{name}"),
            None => name.to_string(),
        }
    }
}

fn wal_from_json(w: &Value, peer: &str) -> Result<XlogEntry, SyncError> {
    let o = w.as_object().ok_or_else(|| refused(peer, "sync-info: a WAL entry is not an object".into()))?;
    let extra = unknown(o, WAL_KEYS);
    if !extra.is_empty() {
        return Err(refused(
            peer,
            format!("sync-info: a WAL entry has keys Barman does not know: {}", extra.join(", ")),
        ));
    }
    let raw = o.get("name").and_then(Value::as_str).unwrap_or_default();
    let name: WalFileName =
        raw.parse().map_err(|e| refused(peer, format!("sync-info lists '{raw}', not a WAL file name: {e}")))?;
    if name.is_partial() {
        return Err(refused(peer, format!("sync-info lists a partial file '{raw}'")));
    }
    let size = o.get("size").and_then(Value::as_u64).ok_or_else(|| refused(peer, format!("{raw}: size")))?;
    let time = o.get("time").and_then(Value::as_f64).ok_or_else(|| refused(peer, format!("{raw}: time")))?;
    let text = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
    Ok(XlogEntry { name, size, time, compression: text("compression"), encryption: text("encryption") })
}

/// The backup object as backup.info text, then read as a backup.info is: the ISO times win
/// over the ctime strings, the values Barman keeps in Python form are written as such.
fn backup_from_json(id: &str, o: &Value, peer: &str) -> Result<BackupInfo, SyncError> {
    if !backups::is_backup_id(id) {
        return Err(refused(peer, format!("sync-info lists '{id}', not a backup id")));
    }
    let o = o.as_object().ok_or_else(|| refused(peer, format!("sync-info: backup {id} is not an object")))?;
    let extra = unknown(o, BACKUP_KEYS);
    if !extra.is_empty() {
        return Err(refused(
            peer,
            format!("sync-info: backup {id} has keys Barman does not know: {}", extra.join(", ")),
        ));
    }
    if o.get("backup_id").and_then(Value::as_str).is_some_and(|b| b != id) {
        return Err(refused(peer, format!("sync-info: backup {id} says it is {:?}", o.get("backup_id"))));
    }
    let mut text = String::new();
    for (k, v) in o {
        let value = match (k.as_str(), v) {
            ("backup_id" | "begin_time_iso" | "end_time_iso", _) => continue,
            ("begin_time" | "end_time", Value::Null) => "None".to_string(),
            ("begin_time" | "end_time", _) => {
                let iso = o.get(&format!("{k}_iso")).and_then(Value::as_str).ok_or_else(|| {
                    refused(peer, format!("sync-info: backup {id} has {k} without {k}_iso (an older Barman?)"))
                })?;
                iso.replacen('T', " ", 1)
            }
            ("tablespaces", Value::Array(list)) => {
                let mut items = Vec::new();
                for t in list {
                    match t.as_array().map(Vec::as_slice) {
                        Some([n, oid, loc]) => items.push(PyValue::Tuple(vec![
                            PyValue::from_json(n),
                            PyValue::from_json(oid),
                            PyValue::from_json(loc),
                        ])),
                        _ => {
                            return Err(refused(
                                peer,
                                format!("sync-info: backup {id}: a tablespace is not [name, oid, location]"),
                            ));
                        }
                    }
                }
                PyValue::List(items).repr()
            }
            (_, Value::String(s)) => s.replace(['\n', '\r'], " "),
            (_, Value::Null) => "None".to_string(),
            (_, Value::Number(n)) => n.to_string(),
            (_, other) => PyValue::from_json(other).repr(),
        };
        text.push_str(&format!("{k}={value}\n"));
    }
    BackupInfo::parse(&text, &format!("backup {id} in the sync-info of {peer}"))
        .map_err(|e| refused(peer, e.to_string()))
}

/// `<backup_directory>/primary.info`: the primary's last answer, verbatim.
pub fn primary_info_path(layout: &ServerLayout) -> PathBuf {
    layout.backup_dir.join("primary.info")
}

/// `<wals_directory>/sync-wals.info`: the primary's xlog.db cursor after the last WAL sync.
pub fn sync_wals_info_path(layout: &ServerLayout) -> PathBuf {
    layout.wals_dir.join("sync-wals.info")
}

/// The cursor Barman's passive sends: `last_wal<TAB>last_position` (either may be absent).
pub fn read_sync_wals_info(layout: &ServerLayout) -> (Option<String>, Option<u64>) {
    let Ok(text) = std::fs::read_to_string(sync_wals_info_path(layout)) else { return (None, None) };
    let mut parts = text.trim().split('\t');
    let wal = parts.next().filter(|w| !w.is_empty()).map(str::to_string);
    let pos = parts.next().and_then(|p| p.trim().parse().ok());
    (wal, pos)
}

pub fn write_sync_wals_info(layout: &ServerLayout, info: &PrimaryInfo) -> std::io::Result<()> {
    durable::create_dir_all(&layout.wals_dir)?;
    durable::write_file(
        &sync_wals_info_path(layout),
        format!("{}\t{}", info.last_name, info.last_position).as_bytes(),
        0o600,
    )
}

/// The remote command Barman's passive runs (§ "How the passive calls the primary").
pub fn remote_command(
    s: &ServerConfig,
    config_path: &Path,
    last_wal: Option<&str>,
    last_position: Option<u64>,
) -> String {
    let mut cmd = if s.opts.forward_config_path {
        format!("barman -c {} sync-info {}", crate::transport::ssh::quote(&config_path.display().to_string()), s.name)
    } else {
        format!("barman sync-info {}", s.name)
    };
    if let Some(w) = last_wal {
        cmd.push_str(&format!(" {w} "));
        if let Some(p) = last_position {
            cmd.push_str(&format!(" {p} "));
        }
    }
    cmd
}
