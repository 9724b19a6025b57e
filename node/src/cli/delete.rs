//! `delete`, `keep`, and the retention policy cron enforces, with Barman's
//! rules: the `delete_this` marker written first (cron finishes an interrupted
//! delete), keep annotations, minimum_redundancy, WAL removed only when no
//! older backup needs it, hooks around each delete.

use super::backups::load;
use super::context::{Ctx, Pick};
use super::retention::{keep_of, labels};
use crate::backup::retention::{Keep, Label};
use crate::catalog::ServerLayout;
use crate::catalog::backups::{self, Backup, COPY_DONE};
use crate::catalog::durable;
use crate::catalog::lock::{Lock, LockError, LockKind};
use crate::catalog::wal_removal::{Protect, remove_wals};
use crate::config::ServerConfig;
use crate::config::types::human_duration;
use crate::hooks::{Event, Hooks, Phase};
use chrono::Local;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn annotation(l: &ServerLayout, id: &str, key: &str) -> PathBuf {
    l.meta_dir().join(format!("{id}-{key}"))
}

/// Whether an interrupted delete left its marker.
pub fn has_delete_marker(l: &ServerLayout, id: &str) -> bool {
    annotation(l, id, "delete_this").exists() || l.base_dir.join(id).join("annotations").join("delete_this").exists()
}

fn release(l: &ServerLayout, id: &str, key: &str) {
    for p in [annotation(l, id, key), l.base_dir.join(id).join("annotations").join(key)] {
        let _ = durable::remove(&p);
    }
}

/// Metadata without its data: what an interrupted delete can leave.
fn is_orphan(l: &ServerLayout, b: &Backup) -> bool {
    let dir = l.base_dir.join(&b.id);
    match std::fs::read_dir(&dir) {
        Err(_) => true,
        Ok(rd) => rd.flatten().all(|e| e.file_name() == "backup.info"),
    }
}

fn hook_env(l: &ServerLayout, all: &[Backup], b: &Backup) -> Vec<(&'static str, String)> {
    let mut env = super::backups::backup_hook_env(l, all, &b.id, &b.path, &b.info.status);
    env.push(("BARMAN_ERROR", b.info.error.clone().unwrap_or_default()));
    env
}

/// Barman's `should_remove_wals`: WAL goes only when no older backup needs it
/// (older keep:standalone backups only need their own range, when allowed).
fn wal_plan(l: &ServerLayout, all: &[Backup], b: &Backup, skip_if_standalone: bool) -> Option<Vec<(String, String)>> {
    let mut ranges = Vec::new();
    // Barman's find_previous_backup_in: only copied (WAITING_FOR_WALS, DONE) backups count.
    let older = all.iter().filter(|x| x.id < b.id && x.is_copy_done()).rev();
    for prev in older {
        match keep_of(l, &prev.id) {
            Some(Keep::Standalone) if !skip_if_standalone => {
                if let (Some(bw), Some(ew)) = (&prev.info.begin_wal, &prev.info.end_wal) {
                    ranges.push((bw.to_string(), ew.to_string()));
                }
            }
            _ => return None,
        }
    }
    Some(ranges)
}

/// Barman's `BackupManager.delete_backup`; false when it could not delete.
fn delete_one(ctx: &mut Ctx, s: &ServerConfig, l: &ServerLayout, all: &[Backup], b: &Backup, retention: bool) -> bool {
    let marker = annotation(l, &b.id, "delete_this");
    if let Err(e) = durable::write_file(&marker, b"delete", 0o644) {
        ctx.out.error(format!("Failure deleting backup {} for server {}.\n{e}", b.id, s.name));
        return false;
    }
    let started = Local::now();
    let hooks = Hooks::new(s, &ctx.cfg.file);
    let env = hook_env(l, all, b);
    if let Err(stop) = hooks.run(Event::Delete, Phase::Pre, &env, None) {
        release(l, &b.id, "delete_this");
        ctx.out.error(format!("Delete of backup {} for server {} stopped: {stop}", b.id, s.name));
        return false;
    }
    // Journaled before anything goes: on a cluster node that owns the server, the node
    // records it for the other sites (the only way a deletion reaches them).
    let reason = if retention { "retention policy" } else { "barman delete" };
    let clustered = ctx.cfg.global.node_name.is_some();
    if let Err(e) = clustered.then(|| crate::catalog::deletions::journal(l, &b.id, reason)).transpose() {
        release(l, &b.id, "delete_this");
        ctx.out.error(format!("Failure deleting backup {} for server {}.\n{e}", b.id, s.name));
        return false;
    }
    ctx.out.info(format!("Deleting backup {} for server {}", b.id, s.name));
    let plan = wal_plan(l, all, b, !retention);
    let next = all.iter().find(|x| x.id > b.id && x.is_copy_done());
    let dir = l.base_dir.join(&b.id);
    // Data first (tablespaces, then data/), so a crash leaves the marker and the metadata.
    let mut doomed: Vec<PathBuf> = b.info.tablespaces.iter().flatten().map(|t| dir.join(t.oid.to_string())).collect();
    doomed.push(dir.join("data"));
    for d in doomed {
        if let Err(e) = remove_tree(&d) {
            ctx.out.error(format!("Failure deleting backup {} for server {}.\n{e}", b.id, s.name));
            return false;
        }
    }
    if let Some(ranges) = plan {
        // Up to the next backup's start; with none left, up to this one's (concurrent backups).
        let until = next.unwrap_or(b);
        // Other backups' timelines keep all their WAL.
        let mut timelines = BTreeSet::new();
        for x in all.iter().filter(|x| x.id != b.id) {
            if matches!(x.info.status.as_str(), "STARTED" | "WAITING_FOR_WALS" | "DONE" | "SYNCING")
                && let Some(t) = x.info.timeline
            {
                timelines.insert(t);
            }
        }
        if let Some(t) = until.info.timeline {
            timelines.remove(&t);
        }
        let protect = Protect { from: until.info.begin_wal.as_ref().map(|w| w.to_string()), timelines, ranges };
        ctx.out.info("Delete associated WAL segments:");
        match remove_wals(l, &protect, Some(&hooks)) {
            Ok(removed) => {
                for w in removed {
                    ctx.out.info(format!("\t{w}"));
                }
            }
            Err(e) => ctx.out.warning(format!("WAL files of backup {} were not removed: {e}", b.id)),
        }
    }
    release(l, &b.id, "delete_this");
    if let Err(e) = remove_tree(&dir) {
        ctx.out.error(format!(
            "Failure deleting backup {} for server {}.\n{e}\nPlease manually remove the '{}' directory",
            b.id,
            s.name,
            dir.display()
        ));
        return false;
    }
    if let Err(e) = durable::remove(&b.path) {
        ctx.out.error(format!(
            "Failure deleting file {} for server {}.\n{e}\nPlease manually remove the file",
            b.path.display(),
            s.name
        ));
        return false;
    }
    release(l, &b.id, "keep");
    // The rsync methods' block hashes.
    release(l, &b.id, "blocks");
    let _ = std::fs::remove_file(l.lock_dir.join(LockKind::SyncBackup(b.id.clone()).file_name(&s.name)));
    ctx.out.info(format!(
        "Deleted backup {} (start time: {}, elapsed time: {})",
        b.id,
        super::status::ctime(&started),
        human_duration((Local::now() - started).num_seconds().max(0) as u64)
    ));
    let _ = hooks.run(Event::Delete, Phase::Post, &env, None);
    true
}

fn remove_tree(p: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Under the backup-id lock; the lock file goes with the backup.
fn delete_locked(
    ctx: &mut Ctx,
    s: &ServerConfig,
    l: &ServerLayout,
    all: &[Backup],
    b: &Backup,
    retention: bool,
) -> bool {
    let path = l.lock_dir.join(LockKind::BackupId(b.id.clone()).file_name(&s.name));
    let lock = match Lock::acquire(&path, false) {
        Ok(lock) => lock,
        Err(LockError::Busy(_)) => {
            if retention {
                ctx.out.warning(format!(
                    "Another action is in progress for the backup {} of server {}, skipping retention policy application",
                    b.id, s.name
                ));
            } else {
                ctx.out.error(format!("Another process is holding the lock for backup {} of server {}.", b.id, s.name));
            }
            return false;
        }
        Err(e) => {
            ctx.out.error(format!("Permission denied, unable to access '{e}'"));
            return false;
        }
    };
    let deleted = delete_one(ctx, s, l, all, b, retention);
    if deleted {
        let _ = std::fs::remove_file(&path);
    }
    drop(lock);
    deleted
}

pub fn delete(ctx: &mut Ctx, server: &str, backup_id: &str) {
    let pick = Pick { skip_inactive: false, skip_disabled: false, inactive_is_error: false, disabled_is_error: true };
    let Some(s) = ctx.server(server, pick) else { return };
    let l = ServerLayout::new(&ctx.cfg.global, &s);
    let Some(all) = load(ctx, &l) else { return };
    let b = match backups::resolve(&all, backup_id, &s.name) {
        Ok(b) => b.clone(),
        Err(e) => return ctx.out.error(e),
    };
    if !delete_checked(ctx, &s, &l, &all, &b) {
        ctx.out.error(format!("Cannot delete backup ({} {})", s.name, b.id));
    }
}

/// Barman's `Server.delete_backup`: keep and minimum_redundancy first, then the
/// server's backup lock (no delete while a backup runs).
fn delete_checked(ctx: &mut Ctx, s: &ServerConfig, l: &ServerLayout, all: &[Backup], b: &Backup) -> bool {
    if keep_of(l, &b.id).is_some() {
        ctx.out.warning(format!(
            "Skipping delete of backup {} for server {} as it has a current keep request. If you really want to \
             delete this backup please remove the keep and try again.",
            b.id, s.name
        ));
        return false;
    }
    let done_full = all.iter().filter(|x| x.info.status == "DONE" && x.info.parent_backup_id.is_none()).count();
    let min = s.opts.minimum_redundancy.0 as usize;
    if b.info.status == "DONE" && b.info.parent_backup_id.is_none() && min >= done_full {
        ctx.out.warning(format!(
            "Skipping delete of backup {} for server {} due to minimum redundancy requirements (minimum redundancy = \
             {min}, current redundancy = {done_full})",
            b.id, s.name
        ));
        return false;
    }
    let lock_path = l.lock_dir.join(LockKind::Backup.file_name(&s.name));
    let _server_lock = match Lock::acquire(&lock_path, false) {
        Ok(lock) => lock,
        Err(LockError::Busy(_)) => {
            ctx.out.error(format!("Another process in running on server {}. Impossible to delete the backup.", s.name));
            return false;
        }
        Err(e) => {
            ctx.out.error(format!("Permission denied, unable to access '{e}'"));
            return false;
        }
    };
    delete_locked(ctx, s, l, all, b, false)
}

/// cron's retention step: interrupted deletes are finished, then (with a valid
/// policy, mode auto) every OBSOLETE backup is deleted, oldest first.
pub fn cron_retention(ctx: &mut Ctx, s: &ServerConfig) {
    let l = ServerLayout::new(&ctx.cfg.global, s);
    let Some(all) = load(ctx, &l) else { return };
    let mut obsolete: Vec<String> = Vec::new();
    if let Some(lab) = labels(s, &l, &all) {
        obsolete.extend(lab.iter().filter(|(_, v)| **v == Label::Obsolete).map(|(k, _)| k.clone()));
    }
    for b in &all {
        if has_delete_marker(&l, &b.id) {
            obsolete.push(b.id.clone());
        } else if is_orphan(&l, b) && COPY_DONE.contains(&b.info.status.as_str()) {
            ctx.out.warning(format!(
                "Backup '{}' is an orphan backup, this is possibly the result of an incomplete delete operation. \
                 Please manually delete the following files or directories if present:\n* {} \n* {} \n",
                b.id,
                l.base_dir.join(&b.id).display(),
                b.path.display()
            ));
        }
    }
    obsolete.sort();
    obsolete.dedup();
    for id in obsolete {
        let Some(b) = all.iter().find(|b| b.id == id) else { continue };
        if is_orphan(&l, b) && !has_delete_marker(&l, &b.id) {
            continue;
        }
        ctx.out.info(format!("Enforcing retention policy: removing backup {id} for server {}", s.name));
        // The catalogue as it is now: earlier deletes of this run are gone from it.
        let Some(now) = load(ctx, &l) else { return };
        delete_locked(ctx, s, &l, &now, b, true);
    }
}

pub fn keep(ctx: &mut Ctx, server: &str, backup_id: &str, target: Option<&str>, status: bool, release_it: bool) {
    if !(status || release_it || target.is_some()) {
        ctx.out.error("one of the arguments -r/--release -s/--status --target is required");
        return;
    }
    let Some(s) = ctx.server(server, Pick::DEFAULT) else { return };
    let l = ServerLayout::new(&ctx.cfg.global, &s);
    let Some(all) = load(ctx, &l) else { return };
    let b = match backups::resolve(&all, backup_id, &s.name) {
        Ok(b) => b.clone(),
        Err(e) => return ctx.out.error(e),
    };
    if status {
        let k = match keep_of(&l, &b.id) {
            Some(Keep::Full) => "full",
            Some(Keep::Standalone) => "standalone",
            None => "nokeep",
        };
        ctx.out.server_header(&s.name, None);
        ctx.out.info(format!("\tKeep: {k}"));
        ctx.out.json_entry(&s.name).insert("keep_status".into(), serde_json::json!({"Keep": k}));
    } else if release_it {
        release(&l, &b.id, "keep");
    } else if let Some(t) = target {
        if b.info.status != "DONE" {
            return ctx.out.error(format!(
                "Cannot add keep to backup {} because it has status {}. Only backups with status DONE can be kept.",
                b.id, b.info.status
            ));
        }
        if b.info.parent_backup_id.is_some() {
            return ctx.out.error(format!(
                "Unable to execute the keep command on backup {}: is an incremental backup.\nOnly full backups are \
                 eligible for the use of the keep command.",
                b.id
            ));
        }
        if let Err(e) = durable::write_file(&annotation(&l, &b.id, "keep"), t.as_bytes(), 0o644) {
            ctx.out.error(format!("cannot keep backup {}: {e}", b.id));
        }
    }
}
