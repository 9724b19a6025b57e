//! check-backup's decision (Barman's `BackupManager.check_backup`): whether every
//! WAL segment from a backup's `begin_wal` to its `end_wal` is in the archive.

use crate::catalog::backup_info::BackupInfo;
use crate::wal::{SegmentSize, WalFileName};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// What the archive says of one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalCheck {
    /// No `end_wal` yet: nothing to decide.
    Unknown,
    /// Not every WAL has arrived yet, and none is known missing.
    Waiting,
    /// Every WAL from begin to end is archived.
    Done,
    /// A WAL older than the newest archived one is missing: it never will arrive.
    Failed { first_missing: String },
}

impl WalCheck {
    /// The status and error Barman records for the decision.
    pub fn apply(&self, info: &mut BackupInfo) {
        match self {
            WalCheck::Unknown => {}
            WalCheck::Waiting => info.status = "WAITING_FOR_WALS".into(),
            WalCheck::Done => info.status = "DONE".into(),
            WalCheck::Failed { first_missing } => {
                info.status = "FAILED".into();
                info.error =
                    Some(format!("At least one WAL file is missing. The first missing WAL file is {first_missing}"));
            }
        }
    }
}

/// Per timeline (8 hex digits as named), the newest plain segment under `wals/`:
/// the newest hash directory holding one decides, as Barman scans it.
pub fn last_archived(wals_dir: &Path) -> BTreeMap<String, String> {
    let names = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| b.cmp(a));
        v
    };
    let mut out = BTreeMap::new();
    for name in names(wals_dir) {
        let dir = wals_dir.join(&name);
        let Some(tli) = name.get(..8).filter(|t| u32::from_str_radix(t, 16).is_ok()) else { continue };
        if !dir.is_dir() || out.contains_key(tli) {
            continue;
        }
        let newest = names(&dir)
            .into_iter()
            .find(|f| !dir.join(f).is_dir() && f.parse::<WalFileName>().is_ok_and(|w| w.is_segment()));
        if let Some(f) = newest {
            out.insert(tli.to_string(), f);
        }
    }
    out
}

/// The decision for `info` against the archive in `wals_dir`.
pub fn check_wals(info: &BackupInfo, wals_dir: &Path) -> WalCheck {
    let (Some(begin), Some(end)) = (&info.begin_wal, &info.end_wal) else { return WalCheck::Unknown };
    let timeline = begin.as_str().get(..8).unwrap_or("");
    let archived = last_archived(wals_dir);
    let Some(last) = archived.get(timeline) else { return WalCheck::Waiting };
    // Names compare as text, as Barman compares them.
    if last.as_str() < begin.as_str() {
        return WalCheck::Waiting;
    }
    let Ok(size) = SegmentSize::new(info.xlog_segment_size) else { return WalCheck::Waiting };
    let (Some(mut seg), Some(stop)) = (begin.segment_id(), end.segment_id()) else { return WalCheck::Waiting };
    while (seg.log, seg.seg) <= (stop.log, stop.seg) {
        let name = WalFileName::segment(seg);
        if name.as_str() > last.as_str() {
            break;
        }
        let path = name.hash_dir().map(|h| wals_dir.join(h).join(name.as_str()));
        if !path.is_some_and(|p| p.exists()) {
            return WalCheck::Failed { first_missing: name.as_str().to_string() };
        }
        seg = seg.next(size);
    }
    if end.as_str() <= last.as_str() { WalCheck::Done } else { WalCheck::Waiting }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(dir: &Path, names: &[&str]) {
        for n in names {
            let d = dir.join(&n[..16]);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join(n), b"").unwrap();
        }
    }

    fn info(begin: &str, end: &str) -> BackupInfo {
        BackupInfo { begin_wal: begin.parse().ok(), end_wal: end.parse().ok(), ..Default::default() }
    }

    #[test]
    fn the_five_cases() {
        let d = tempfile::tempdir().unwrap();
        let b = info("000000010000000000000002", "000000010000000000000004");
        assert_eq!(check_wals(&BackupInfo::default(), d.path()), WalCheck::Unknown);
        assert_eq!(check_wals(&b, d.path()), WalCheck::Waiting);
        archive(d.path(), &["000000010000000000000001"]);
        assert_eq!(check_wals(&b, d.path()), WalCheck::Waiting);
        archive(d.path(), &["000000010000000000000002", "000000010000000000000003"]);
        assert_eq!(check_wals(&b, d.path()), WalCheck::Waiting);
        archive(d.path(), &["000000010000000000000005"]);
        assert_eq!(check_wals(&b, d.path()), WalCheck::Failed { first_missing: "000000010000000000000004".into() });
        archive(d.path(), &["000000010000000000000004"]);
        assert_eq!(check_wals(&b, d.path()), WalCheck::Done);
    }
}
