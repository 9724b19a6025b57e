//! `cron` (the archive step and the WAL receiver, or a passive server's sync step; then
//! the backups' checks and retention),
//! `lock-directory-cleanup` and `list-processes`.

use super::context::{Ctx, Pick};
use crate::catalog::ServerLayout;
use crate::catalog::lock::{Lock, LockError, LockKind, holder};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// Tasks found through lock files, `sync-backup` before `backup` (both end in `-backup.lock`).
const TASKS: [&str; 6] = ["receive-wal", "sync-backup", "backup", "cron", "archive-wal", "sync-wal"];

/// Starts `barman -c <config> -q <args>` in its own session, as Barman does.
fn spawn_detached(config: &Path, args: &[&str], keep_descriptors: bool) -> std::io::Result<()> {
    let exe = std::env::current_exe()?;
    let mut c = Command::new(exe);
    c.arg("-c").arg(config).arg("-q").args(args);
    if !keep_descriptors {
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    }
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    c.spawn().map(|_| ())
}

pub fn cron(ctx: &mut Ctx, keep_descriptors: bool) {
    // As Barman's cron: every server but the inactive and the disabled, said so.
    let pick = Pick { skip_inactive: true, skip_disabled: true, inactive_is_error: false, disabled_is_error: false };
    if !ctx.cfg.global_errors.is_empty() {
        ctx.servers(&[], pick);
        return;
    }
    for s in ctx.servers(&["all".to_string()], pick) {
        let l = ServerLayout::new(&ctx.cfg.global, &s);
        if let Err(e) = crate::catalog::durable::create_dir_all(&l.lock_dir) {
            ctx.out.error(format!("{}: {e}", l.lock_dir.display()));
            continue;
        }
        let cron_lock = match Lock::acquire(&l.lock_dir.join(LockKind::Cron.file_name(&s.name)), false) {
            Ok(lock) => lock,
            Err(LockError::Busy(_)) => {
                ctx.out.info(format!(
                    "Another cron process is already running on server {}. Skipping to the next server",
                    s.name
                ));
                continue;
            }
            Err(LockError::PermissionDenied(p)) => {
                ctx.out.error(format!("Permission denied, unable to access '{}'", p.display()));
                continue;
            }
            Err(e) => {
                ctx.out.error(e.to_string());
                continue;
            }
        };
        if s.passive {
            // A passive server copies from its primary instead of archiving and streaming.
            let (file, keep) = (ctx.cfg.file.clone(), keep_descriptors);
            super::sync::cron_passive(ctx, &s, &|args| spawn_detached(&file, args, keep));
            super::backups::cron_backups(ctx, &s);
            super::delete::cron_retention(ctx, &s);
            drop(cron_lock);
            continue;
        }
        // A cluster node runs cron every few seconds: archive-wal only when files wait.
        let idle = ctx.cfg.global.node_name.is_some()
            && crate::archive::archive_wal::has_waiting(&l).is_ok_and(|waiting| !waiting);
        // Only start archive-wal when none is running.
        match Lock::acquire(&l.lock_dir.join(LockKind::ArchiveWal.file_name(&s.name)), false) {
            Ok(_) if idle => tracing::debug!(server = %s.name, "no WAL file waits to be archived"),
            Ok(probe) => {
                drop(probe);
                ctx.out.info(format!("Starting WAL archiving for server {}", s.name));
                if let Err(e) = spawn_detached(&ctx.cfg.file, &["archive-wal", &s.name], keep_descriptors) {
                    ctx.out.error(format!("cannot start archive-wal for server {}: {e}", s.name));
                }
            }
            Err(LockError::Busy(_)) => ctx.out.info(format!(
                "Another archive-wal process is already running on server {}. Skipping to the next server",
                s.name
            )),
            Err(e) => ctx.out.error(e.to_string()),
        }
        let receiver_lock = l.lock_dir.join(LockKind::ReceiveWal.file_name(&s.name));
        if ctx.cfg.global.node_name.is_some() {
            // On a cluster node the node daemon streams the servers it owns, and only those.
            tracing::debug!(server = %s.name, "WAL streaming is supervised by the cluster node");
        } else if s.opts.streaming_archiver {
            // Exactly one receiver per server: started only when none holds the lock.
            match Lock::acquire(&receiver_lock, false) {
                Ok(probe) => {
                    drop(probe);
                    ctx.out.info(format!("Starting streaming archiver for server {}", s.name));
                    if let Err(e) = spawn_detached(&ctx.cfg.file, &["receive-wal", &s.name], keep_descriptors) {
                        ctx.out.error(format!("cannot start receive-wal for server {}: {e}", s.name));
                    }
                }
                Err(LockError::Busy(_)) => {
                    tracing::debug!(server = %s.name, "Another STREAMING ARCHIVER process is running for server {}", s.name);
                }
                Err(e) => ctx.out.error(e.to_string()),
            }
        } else if let Some(pid) = holder(&receiver_lock) {
            // A receiver left over from when streaming was on is stopped.
            // SAFETY: sending a signal to a pid read from the lock its holder keeps.
            unsafe { libc::kill(pid as i32, libc::SIGINT) };
        }
        // Abandoned backups become FAILED; the oldest WAITING_FOR_WALS one is checked.
        super::backups::cron_backups(ctx, &s);
        super::delete::cron_retention(ctx, &s);
        drop(cron_lock);
    }
    if ctx.cfg.global.lock_directory_cleanup {
        cleanup_locks(&ctx.cfg.global.lock_directory);
    }
}

/// Removes `.*.lock` files nobody holds.
pub fn cleanup_locks(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !(n.starts_with('.') && n.ends_with(".lock")) {
            continue;
        }
        // Take the lock ourselves before removing, so a holder is never surprised.
        if let Ok(l) = Lock::acquire(&e.path(), false) {
            let _ = std::fs::remove_file(e.path());
            drop(l);
        }
    }
}

pub fn lock_directory_cleanup(ctx: &mut Ctx) {
    cleanup_locks(&ctx.cfg.global.lock_directory.clone());
}

pub fn list_processes(ctx: &mut Ctx, server: &str) {
    let Some(s) = ctx.server(server, super::context::Pick::DEFAULT) else { return };
    let l = ServerLayout::new(&ctx.cfg.global, &s);
    let prefix = format!(".{}-", s.name);
    let mut found: Vec<(u32, String)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&l.lock_dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = n.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".lock")) else { continue };
            let Some(task) = TASKS.iter().find(|t| rest == **t || rest.ends_with(&format!("-{t}"))) else { continue };
            if let Some(pid) = holder(&e.path()) {
                found.push((pid, task.to_string()));
            }
        }
    }
    found.sort();
    if found.is_empty() {
        ctx.out.info(format!("No active subprocesses found for server {}.", s.name));
    } else {
        ctx.out.info(format!("Active subprocesses for server {}:", s.name));
        for (pid, task) in found {
            ctx.out.info(format!("{pid} {task}"));
        }
    }
}
