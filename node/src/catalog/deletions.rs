//! Deletions across sites: a node never deletes a copy because a peer stopped listing it.
//! The owner's deletions (its retention, `barman delete` there) are journaled here before
//! the backup goes, then recorded in the cluster's replicated state by the node; the other
//! nodes move their copies to a trash (`<backup_directory>/.trash`) and purge it only after
//! `sync_delete_delay`. A lost or lying owner can at worst fill the others' trash.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::ServerLayout;
use super::backups::is_backup_id;
use super::durable;

/// Where the deletions of this node wait to be recorded in the cluster.
fn journal_dir(layout: &ServerLayout) -> PathBuf {
    layout.backup_dir.join(".sync").join("deleted")
}

/// Where this node keeps the copies the owner deleted, until they are purged.
pub fn trash_dir(layout: &ServerLayout) -> PathBuf {
    layout.backup_dir.join(".trash")
}

/// Journals the deletion of backup `id` for `reason`, durably, before it is carried out.
pub fn journal(layout: &ServerLayout, id: &str, reason: &str) -> io::Result<()> {
    let dir = journal_dir(layout);
    durable::create_dir_all(&dir)?;
    durable::write_file(&dir.join(id), reason.as_bytes(), 0o600)
}

/// The journaled deletions, oldest backup first: (id, reason).
pub fn journaled(layout: &ServerLayout) -> Vec<(String, String)> {
    let Ok(rd) = fs::read_dir(journal_dir(layout)) else { return Vec::new() };
    let mut out: Vec<(String, String)> = rd
        .flatten()
        .filter_map(|e| {
            let id = e.file_name().to_string_lossy().into_owned();
            let reason = fs::read_to_string(e.path()).ok()?;
            is_backup_id(&id).then_some((id, reason))
        })
        .collect();
    out.sort();
    out
}

/// Forgets a journaled deletion (recorded in the cluster, or not this node's to record).
pub fn forget(layout: &ServerLayout, id: &str) -> io::Result<()> {
    durable::remove(&journal_dir(layout).join(id))
}

/// Moves backup `id` (its directory and its metadata) into the trash, where the catalog
/// no longer sees it: `.trash/<id>/backup` and `.trash/<id>/backup.info`, with `reason`
/// beside them. The trash is in the backup directory, so this is a rename.
pub fn move_to_trash(layout: &ServerLayout, id: &str, reason: &str) -> io::Result<PathBuf> {
    let entry = trash_dir(layout).join(id);
    durable::create_dir_all(&entry)?;
    durable::write_file(&entry.join("reason"), reason.as_bytes(), 0o600)?;
    let meta = super::backups::meta_path(layout, id);
    if meta.exists() {
        fs::rename(&meta, entry.join("backup.info"))?;
    }
    let base = layout.base_dir.join(id);
    if base.exists() {
        fs::rename(&base, entry.join("backup"))?;
    }
    for d in [&entry, &layout.base_dir, &layout.meta_dir()] {
        if d.exists() {
            durable::fsync_dir(d)?;
        }
    }
    Ok(entry)
}

/// Removes the trash entries older than `delay` (by when they were trashed); their ids.
pub fn purge(layout: &ServerLayout, delay: Duration, now: SystemTime) -> io::Result<Vec<String>> {
    let Ok(rd) = fs::read_dir(trash_dir(layout)) else { return Ok(Vec::new()) };
    let mut purged = Vec::new();
    for e in rd.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        let trashed = fs::symlink_metadata(e.path().join("reason")).and_then(|m| m.modified());
        let old = trashed.is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age >= delay));
        if is_backup_id(&id) && old {
            remove_tree(&e.path())?;
            purged.push(id);
        }
    }
    purged.sort();
    Ok(purged)
}

fn remove_tree(p: &Path) -> io::Result<()> {
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Which of the backups the owner deleted (`recorded`) to move to the trash here: those
/// held here DONE (`done`, oldest first), never leaving fewer than `minimum_redundancy`
/// DONE here, the oldest first.
pub fn to_trash(recorded: &[&str], done: &[String], minimum_redundancy: usize) -> Vec<String> {
    let mut left = done.len();
    let mut out = Vec::new();
    for id in done {
        if left <= minimum_redundancy {
            break;
        }
        if recorded.contains(&id.as_str()) {
            out.push(id.clone());
            left -= 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_trash_never_leaves_fewer_than_minimum_redundancy() {
        let done = ids(&["20260101T000000", "20260102T000000", "20260103T000000"]);
        let all: Vec<&str> = done.iter().map(String::as_str).collect();
        assert_eq!(to_trash(&all, &done, 0), done);
        assert_eq!(to_trash(&all, &done, 1), ids(&["20260101T000000", "20260102T000000"]));
        assert_eq!(to_trash(&all, &done, 3), Vec::<String>::new());
        assert_eq!(to_trash(&["20260102T000000", "20991231T000000"], &done, 0), ids(&["20260102T000000"]));
        // Nothing recorded, nothing moved: absence from a listing deletes nothing.
        assert_eq!(to_trash(&[], &done, 0), Vec::<String>::new());
    }

    #[test]
    fn journal_trash_and_purge() {
        let d = tempfile::tempdir().unwrap();
        let layout = ServerLayout::under("pg", &d.path().join("pg"), d.path());
        let id = "20260101T000000";
        journal(&layout, id, "retention policy").unwrap();
        assert_eq!(journaled(&layout), vec![(id.to_string(), "retention policy".to_string())]);
        forget(&layout, id).unwrap();
        assert!(journaled(&layout).is_empty());

        fs::create_dir_all(layout.base_dir.join(id).join("data")).unwrap();
        fs::write(layout.base_dir.join(id).join("data/PG_VERSION"), b"15\n").unwrap();
        fs::create_dir_all(layout.meta_dir()).unwrap();
        fs::write(super::super::backups::meta_path(&layout, id), b"status=DONE\n").unwrap();
        let entry = move_to_trash(&layout, id, "deleted by the owner n1").unwrap();
        assert!(!layout.base_dir.join(id).exists());
        assert!(super::super::backups::scan(&layout).is_empty(), "the catalog still sees it");
        assert_eq!(fs::read(entry.join("backup/data/PG_VERSION")).unwrap(), b"15\n");
        let now = SystemTime::now();
        assert!(purge(&layout, Duration::from_secs(3600), now).unwrap().is_empty());
        assert_eq!(purge(&layout, Duration::from_secs(3600), now + Duration::from_secs(3601)).unwrap(), ids(&[id]));
        assert!(!entry.exists());
    }
}
