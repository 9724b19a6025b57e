//! A read-only view of the backup catalogue (`meta/<id>-backup.info`, or the
//! legacy `base/<id>/backup.info`), with the fields `check` and `status` need.

use super::ServerLayout;
use super::backup_info::{BackupInfo, BackupInfoError};
use chrono::{DateTime, FixedOffset, Local, NaiveDateTime, TimeZone};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub struct BackupSummary {
    pub id: String,
    pub status: String,
    pub mode: Option<String>,
    pub parent_backup_id: Option<String>,
    pub begin_wal: Option<String>,
    pub end_wal: Option<String>,
    pub end_time: Option<DateTime<FixedOffset>>,
    pub size: Option<u64>,
    pub timeline: Option<u32>,
}

impl BackupSummary {
    pub fn is_incremental(&self) -> bool {
        self.parent_backup_id.is_some()
    }
    pub fn is_done(&self) -> bool {
        self.status == "DONE"
    }
}

/// `^\d{8}T\d{6}$`: the shape of a backup id.
pub fn is_backup_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 15 && b[8] == b'T' && b.iter().enumerate().all(|(i, c)| i == 8 || c.is_ascii_digit())
}

/// Python's `datetime.ctime()`: `Sat Nov 21 06:14:50 2026`.
pub fn ctime<T: chrono::TimeZone>(t: &chrono::DateTime<T>) -> String
where
    T::Offset: std::fmt::Display,
{
    t.format("%a %b %e %H:%M:%S %Y").to_string()
}

/// Python's `str()` (and `isoformat(" ")`) of an aware datetime, as Barman
/// writes it: microseconds only when non-zero, offset as `+HH:MM[:SS]`.
pub fn format_time(t: &DateTime<FixedOffset>) -> String {
    let mut s = t.format("%Y-%m-%d %H:%M:%S").to_string();
    let micros = t.timestamp_subsec_micros();
    if micros != 0 {
        s.push_str(&format!(".{micros:06}"));
    }
    let off = t.offset().local_minus_utc();
    let (sign, off) = if off < 0 { ('-', -off) } else { ('+', off) };
    s.push_str(&format!("{sign}{:02}:{:02}", off / 3600, off / 60 % 60));
    if off % 60 != 0 {
        s.push_str(&format!(":{:02}", off % 60));
    }
    s
}

/// Barman's `str()` of an aware datetime; a naive one is local time.
pub fn parse_time(s: &str) -> Option<DateTime<FixedOffset>> {
    for f in ["%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%:z"] {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Some(t);
        }
    }
    let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").ok()?;
    Local.from_local_datetime(&naive).single().map(|t| t.fixed_offset())
}

/// The summary of a backup.info read in full (an unreadable file is left out).
fn summary(id: &str, path: &Path) -> Option<BackupSummary> {
    let i = BackupInfo::read(path).ok()?;
    Some(BackupSummary {
        id: id.to_string(),
        status: i.status,
        mode: i.mode,
        parent_backup_id: i.parent_backup_id,
        begin_wal: i.begin_wal.map(|w| w.to_string()),
        end_wal: i.end_wal.map(|w| w.to_string()),
        end_time: i.end_time,
        size: i.size,
        timeline: i.timeline,
    })
}

/// Where every backup's metadata is, by id (`meta/` wins over the legacy place).
pub fn scan(layout: &ServerLayout) -> BTreeMap<String, PathBuf> {
    let mut found: BTreeMap<String, PathBuf> = BTreeMap::new();
    if let Ok(rd) = fs::read_dir(&layout.base_dir) {
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let p = e.path().join("backup.info");
            if is_backup_id(&id) && p.is_file() {
                found.insert(id, p);
            }
        }
    }
    if let Ok(rd) = fs::read_dir(layout.meta_dir()) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = n.strip_suffix("-backup.info")
                && is_backup_id(id)
            {
                found.insert(id.to_string(), e.path());
            }
        }
    }
    found
}

/// Where a backup's metadata is written: `meta/<id>-backup.info`.
pub fn meta_path(layout: &ServerLayout, id: &str) -> PathBuf {
    layout.meta_dir().join(format!("{id}-backup.info"))
}

/// Every backup of a server, sorted by id.
pub fn list(layout: &ServerLayout) -> Vec<BackupSummary> {
    scan(layout).iter().filter_map(|(id, p)| summary(id, p)).collect()
}

/// One backup of the catalogue, read in full.
#[derive(Debug, Clone)]
pub struct Backup {
    pub id: String,
    /// Where its backup.info was read from.
    pub path: PathBuf,
    pub info: BackupInfo,
}

/// "Copy done": the statuses shortcuts, names and restores consider.
pub const COPY_DONE: [&str; 2] = ["WAITING_FOR_WALS", "DONE"];

impl Backup {
    pub fn is_copy_done(&self) -> bool {
        COPY_DONE.contains(&self.info.status.as_str())
    }
    /// Barman's `backup_type`: snapshot, rsync, incremental or full.
    pub fn backup_type(&self) -> &'static str {
        let mode = self.info.mode.as_deref().unwrap_or("");
        if mode.starts_with("snapshot") {
            "snapshot"
        } else if mode.starts_with("rsync") {
            "rsync"
        } else if self.info.parent_backup_id.is_some() {
            "incremental"
        } else {
            "full"
        }
    }
}

/// Every backup with its backup.info, sorted by id. An unreadable file stops
/// the reading, as Barman's catalogue does.
pub fn load(layout: &ServerLayout) -> Result<Vec<Backup>, BackupInfoError> {
    scan(layout).into_iter().map(|(id, path)| BackupInfo::read(&path).map(|info| Backup { id, path, info })).collect()
}

/// The copy-done backups just before and after `id` (Barman's previous/next backup).
pub fn neighbours(all: &[Backup], id: &str) -> (Option<String>, Option<String>) {
    let prev = all.iter().rev().find(|b| b.id.as_str() < id && b.is_copy_done()).map(|b| b.id.clone());
    let next = all.iter().find(|b| b.id.as_str() > id && b.is_copy_done()).map(|b| b.id.clone());
    (prev, next)
}

/// Barman's `parse_backup_id`: an id, a shortcut (`latest`/`last`,
/// `oldest`/`first`, `last-failed` and, as Barman's substring test has it,
/// any part of that word, `latest-full`/`last-full`), or a backup name.
pub fn resolve<'a>(backups: &'a [Backup], arg: &str, server: &str) -> Result<&'a Backup, String> {
    let done = || backups.iter().filter(|b| b.is_copy_done());
    let id: Option<String> = match arg {
        "latest" | "last" => done().next_back().map(|b| b.id.clone()),
        "oldest" | "first" => done().next().map(|b| b.id.clone()),
        "latest-full" | "last-full" => done().rfind(|b| b.backup_type() == "full").map(|b| b.id.clone()),
        a if "last-failed".contains(a) => backups.iter().rfind(|b| b.info.status == "FAILED").map(|b| b.id.clone()),
        a if is_backup_id(a) => Some(a.to_string()),
        a => {
            let named: Vec<&Backup> = done().filter(|b| b.info.backup_name.as_deref() == Some(a)).collect();
            if named.len() > 1 {
                let ids: Vec<&str> = named.iter().map(|b| b.id.as_str()).collect();
                return Err(format!(
                    "Multiple backups found matching name '{a}' (try using backup ID instead): {}",
                    ids.join(" ")
                ));
            }
            named.first().map(|b| b.id.clone())
        }
    };
    id.and_then(|id| backups.iter().find(|b| b.id == id))
        .ok_or_else(|| format!("Unknown backup '{arg}' for server '{server}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_python_does() {
        for s in ["2026-11-21 10:20:03.890822+00:00", "2026-11-21 10:20:03+05:30", "2026-01-02 03:04:05.000001-08:00"] {
            let t = parse_time(s).unwrap();
            assert_eq!(format_time(&t), s);
        }
    }

    #[test]
    fn reads_meta_and_legacy_files() {
        let d = tempfile::tempdir().unwrap();
        let l = ServerLayout::under("pg", d.path(), d.path());
        fs::create_dir_all(l.base_dir.join("20240101T000000")).unwrap();
        fs::write(l.base_dir.join("20240101T000000/backup.info"), "status=DONE\nsize=10\n").unwrap();
        fs::create_dir_all(l.meta_dir()).unwrap();
        fs::write(
            l.meta_dir().join("20240102T000000-backup.info"),
            "begin_wal=000000010000000000000004\nend_time=2024-01-02 00:05:00.5+01:00\nparent_backup_id=None\nstatus=WAITING_FOR_WALS\n",
        )
        .unwrap();
        let b = list(&l);
        assert_eq!(b.len(), 2);
        assert!(b[0].is_done());
        assert_eq!(b[1].status, "WAITING_FOR_WALS");
        assert_eq!(b[1].end_time.unwrap().to_rfc3339(), "2024-01-02T00:05:00.500+01:00");
        assert!(!b[1].is_incremental());
        assert!(is_backup_id("20240101T120000") && !is_backup_id("2024010T1120000"));
    }
}
