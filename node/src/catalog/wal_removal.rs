//! Removing WAL files no backup needs any more (Barman's
//! `remove_wal_before_backup`): history files are always kept, and so are the
//! protected timelines and ranges. The catalogue is rewritten first, then the
//! files go, each between its `wal_delete` hooks; a hash directory left empty
//! goes with its last file.

use super::ServerLayout;
use super::xlogdb::{XlogDb, XlogDbError, XlogEntry};
use crate::hooks::{Event, Hooks, Phase};
use std::collections::BTreeSet;
use std::fs;

/// What must stay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protect {
    /// Everything from this name on (the begin_wal of the oldest backup kept).
    pub from: Option<String>,
    /// Timelines of which nothing is removed.
    pub timelines: BTreeSet<u32>,
    /// Inclusive `(begin_wal, end_wal)` ranges kept (keep:standalone backups).
    pub ranges: Vec<(String, String)>,
}

impl Protect {
    fn keeps(&self, e: &XlogEntry) -> bool {
        let name = e.name.as_str();
        if e.name.is_history() {
            return true;
        }
        if u32::from_str_radix(name.get(..8).unwrap_or(""), 16).is_ok_and(|t| self.timelines.contains(&t)) {
            return true;
        }
        // A .backup file counts as the segment it belongs to.
        let seg = if e.name.is_backup_label() { name.get(..24).unwrap_or(name) } else { name };
        if self.ranges.iter().any(|(b, end)| seg >= b.as_str() && seg <= end.as_str()) {
            return true;
        }
        self.from.as_deref().is_some_and(|f| name >= f)
    }
}

/// Removes every archived WAL `protect` does not keep; the names removed.
pub fn remove_wals(
    layout: &ServerLayout,
    protect: &Protect,
    hooks: Option<&Hooks<'_>>,
) -> Result<Vec<String>, XlogDbError> {
    let db = XlogDb::new(layout);
    let lock = db.lock()?;
    let dropped = db.retain(&lock, &|e| protect.keeps(e))?;
    let mut removed = Vec::new();
    for e in dropped {
        let path = layout.wal_path(&e.name);
        let env = [
            ("BARMAN_SEGMENT", e.name.to_string()),
            ("BARMAN_FILE", path.display().to_string()),
            ("BARMAN_SIZE", e.size.to_string()),
            ("BARMAN_TIMESTAMP", e.time.to_string()),
            ("BARMAN_COMPRESSION", e.compression.clone().unwrap_or_default()),
        ];
        if let Some(h) = hooks {
            let _ = h.run(Event::WalDelete, Phase::Pre, &env, None);
        }
        let error = match fs::remove_file(&path) {
            Ok(()) => None,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => {
                let msg = format!("Ignoring deletion of WAL file {} for server {}: {err}", e.name, layout.server);
                tracing::warn!("{msg}");
                Some(msg)
            }
        };
        if let Some(dir) = path.parent()
            && dir != layout.wals_dir
        {
            // Fails (as it should) while the hash directory still holds files.
            let _ = fs::remove_dir(dir);
        }
        if let Some(h) = hooks {
            let _ = h.run(Event::WalDelete, Phase::Post, &env, error.as_deref());
        }
        removed.push(e.name.to_string());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> XlogEntry {
        XlogEntry { name: name.parse().unwrap(), size: 1, time: 0.0, compression: None, encryption: None }
    }

    #[test]
    fn keeps_history_protected_timelines_ranges_and_newer() {
        let p = Protect {
            from: Some("000000010000000000000010".into()),
            timelines: [2].into(),
            ranges: vec![("000000010000000000000004".into(), "000000010000000000000005".into())],
        };
        assert!(p.keeps(&entry("00000002.history")));
        assert!(p.keeps(&entry("000000020000000000000001")));
        assert!(p.keeps(&entry("000000010000000000000004.00000028.backup")));
        assert!(p.keeps(&entry("000000010000000000000005")));
        assert!(!p.keeps(&entry("000000010000000000000006")));
        assert!(p.keeps(&entry("000000010000000000000010")));
        assert!(!p.keeps(&entry("00000001000000000000000F")));
        assert!(!Protect::default().keeps(&entry("000000010000000000000001")));
    }
}
