//! The backup catalogue commands: `check-backup`, `list-backups`.

use super::check::pretty_size;
use super::context::{Ctx, Pick};
use super::status::ctime;
use crate::backup::check as wal_check;
use crate::catalog::ServerLayout;
use crate::catalog::backups::{self, Backup};
use crate::catalog::lock::{Lock, LockError, LockKind};
use crate::catalog::xlogdb::{XlogDb, XlogEntry};
use crate::config::ServerConfig;
use serde_json::json;

fn layout(ctx: &Ctx, s: &ServerConfig) -> ServerLayout {
    ServerLayout::new(&ctx.cfg.global, s)
}

/// The catalogue of `s`, or one error line.
pub fn load(ctx: &mut Ctx, l: &ServerLayout) -> Option<Vec<Backup>> {
    match backups::load(l) {
        Ok(b) => Some(b),
        Err(e) => {
            ctx.out.error(e.to_string());
            None
        }
    }
}

/// A backup left EMPTY or STARTED whose `backup` process is gone (its lock is
/// free) can never complete: it is marked FAILED. Returns whether it was.
pub fn fail_abandoned(l: &ServerLayout, b: &mut Backup) -> Result<bool, String> {
    if !matches!(b.info.status.as_str(), "EMPTY" | "STARTED") {
        return Ok(false);
    }
    let lock_path = l.lock_dir.join(LockKind::Backup.file_name(&l.server));
    let probe = match Lock::acquire(&lock_path, false) {
        Ok(lock) => lock,
        Err(LockError::Busy(_)) => return Ok(false),
        Err(e) => return Err(e.to_string()),
    };
    let was = b.info.status.clone();
    b.info.status = "FAILED".into();
    b.info.error = Some(format!("failure interrupted backup (the backup process ended while the backup was {was})"));
    let saved = b.info.save(&backups::meta_path(l, &b.id)).map_err(|e| e.to_string());
    drop(probe);
    saved.map(|()| true)
}

/// What check-backup says of a backup it has just marked FAILED.
pub fn marked_failed(info: &crate::catalog::backup_info::BackupInfo) -> String {
    format!(
        "This backup has been marked as FAILED due to the following reason: {}",
        info.error.as_deref().unwrap_or_default()
    )
}

/// Why check-backup did not pass.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Another process (the backup itself, finishing) holds the backup's lock.
    #[error("Another action is in progress for the backup {id} of server {server}, skipping check-backup")]
    Busy { id: String, server: String },
    #[error("{0}")]
    Failed(String),
}

impl From<String> for CheckError {
    fn from(s: String) -> CheckError {
        CheckError::Failed(s)
    }
}

/// check-backup's work on one backup, under the backup-id lock.
pub fn check_one(l: &ServerLayout, b: &mut Backup) -> Result<(), CheckError> {
    let lock_path = l.lock_dir.join(LockKind::BackupId(b.id.clone()).file_name(&l.server));
    let _lock = match Lock::acquire(&lock_path, false) {
        Ok(lock) => lock,
        Err(LockError::Busy(_)) => return Err(CheckError::Busy { id: b.id.clone(), server: l.server.clone() }),
        Err(e) => return Err(e.to_string().into()),
    };
    if fail_abandoned(l, b)? {
        return Ok(());
    }
    if b.info.status == "FAILED" {
        return Err(CheckError::Failed("The validity of a failed backup cannot be checked".into()));
    }
    let before = b.info.status.clone();
    wal_check::check_wals(&b.info, &l.wals_dir).apply(&mut b.info);
    if b.info.status != before {
        b.info.save(&backups::meta_path(l, &b.id)).map_err(|e| e.to_string())?;
        if b.info.status == "FAILED" {
            return Err(marked_failed(&b.info).into());
        }
    }
    Ok(())
}

pub fn check_backup(ctx: &mut Ctx, server: &str, backup_id: &str) {
    let Some(s) = ctx.server(server, Pick::DEFAULT) else { return };
    let l = layout(ctx, &s);
    let Some(mut all) = load(ctx, &l) else { return };
    let id = match backups::resolve(&all, backup_id, &s.name) {
        Ok(b) => b.id.clone(),
        Err(e) => return ctx.out.error(e),
    };
    let Some(b) = all.iter_mut().find(|b| b.id == id) else { return };
    if let Err(e) = check_one(&l, b) {
        ctx.out.error(e.to_string());
    }
}

/// What cron does with the catalogue: abandoned backups become FAILED, and the
/// oldest WAITING_FOR_WALS backup is checked (one per run, as Barman).
pub fn cron_backups(ctx: &mut Ctx, s: &ServerConfig) {
    let l = layout(ctx, s);
    let Some(mut all) = load(ctx, &l) else { return };
    for b in all.iter_mut() {
        match fail_abandoned(&l, b) {
            Ok(true) => ctx.out.warning(format!(
                "Backup {} of server {} was left unfinished by a process that ended: marked FAILED",
                b.id, s.name
            )),
            Ok(false) => {}
            Err(e) => ctx.out.error(e),
        }
    }
    let Some(b) = all.iter_mut().find(|b| b.info.status == "WAITING_FOR_WALS") else { return };
    match check_one(&l, b) {
        Ok(()) => {}
        // The backup's own process still holds it (finishing up): the next cron run checks
        // it. Not an error: a cluster node runs cron every few seconds and would log one.
        Err(e @ CheckError::Busy { .. }) => tracing::debug!(server = %s.name, "{e}"),
        Err(e) => ctx.out.error(e.to_string()),
    }
}

fn read_xlogdb(l: &ServerLayout) -> Vec<XlogEntry> {
    XlogDb::new(l).read_locked().unwrap_or_default()
}

pub fn list_backups(ctx: &mut Ctx, names: &[String], minimal: bool) {
    let json = ctx.out.writer == super::output::Writer::Json;
    for s in ctx.servers(names, Pick::ALL) {
        let l = layout(ctx, &s);
        let Some(all) = load(ctx, &l) else { continue };
        // The WAL catalogue and the keep annotations matter only to the full lines.
        let entries = if minimal { Vec::new() } else { read_xlogdb(&l) };
        let labels = if minimal { None } else { super::retention::labels(&s, &l, &all) };
        let mut json_list = Vec::new();
        for (i, b) in all.iter().enumerate().rev() {
            if minimal {
                if !json {
                    ctx.out.info(&b.id);
                }
                json_list.push(json!(b.id));
                continue;
            }
            let next_end = all[i + 1..].iter().find(|n| n.is_copy_done()).and_then(|n| n.info.end_wal.as_ref());
            let mut size = b.info.size.unwrap_or(0);
            let mut wal_size = 0;
            if b.is_copy_done()
                && let Some(begin) = &b.info.begin_wal
            {
                let w = super::show_backup::wal_info(
                    b,
                    &super::show_backup::wal_until_next(&entries, begin, next_end, false),
                );
                size += w.size;
                wal_size = w.until_next_size;
            }
            let server_name = b.info.server_name.clone().unwrap_or_else(|| s.name.clone());
            let mut line = format!("{server_name} {}", b.id);
            if let Some(n) = &b.info.backup_name {
                line.push_str(&format!(" '{n}'"));
            }
            let ty = b.backup_type();
            line.push_str(&format!(" - {} - ", ty[..1].to_uppercase()));
            let rstatus = labels.as_ref().and_then(|l| l.get(&b.id)).map(|l| l.to_string());
            let mut obj = json!({"backup_id": b.id, "backup_type": ty});
            if let Some(n) = &b.info.backup_name {
                obj["backup_name"] = json!(n);
            }
            match (&b.info.end_time, b.is_copy_done()) {
                (Some(end), true) => {
                    line.push_str(&format!(
                        "{} - Size: {} - WAL Size: {}",
                        ctime(end),
                        pretty_size(size),
                        pretty_size(wal_size)
                    ));
                    if b.info.status == "WAITING_FOR_WALS" {
                        line.push_str(" - WAITING_FOR_WALS");
                    }
                    if let Some(r) = rstatus.as_deref().filter(|r| *r != "VALID" && *r != "-") {
                        line.push_str(&format!(" - {r}"));
                    }
                    obj["end_time"] = json!(ctime(end));
                    obj["end_time_timestamp"] = json!(end.timestamp().to_string());
                    obj["size_bytes"] = json!(size);
                    obj["wal_size_bytes"] = json!(wal_size);
                    obj["size"] = json!(pretty_size(size));
                    obj["wal_size"] = json!(pretty_size(wal_size));
                    obj["status"] = json!(b.info.status);
                    obj["retention_status"] = json!(rstatus.unwrap_or_else(|| "-".into()));
                }
                _ => {
                    line.push_str(&b.info.status);
                    obj["status"] = json!(b.info.status);
                }
            }
            if !json {
                ctx.out.info(line);
            }
            json_list.push(obj);
        }
        if json {
            ctx.out.json_set(&s.name, serde_json::Value::Array(json_list));
        }
    }
}

/// The variables every backup-related hook gets (Barman's `env_from_backup_info`).
pub fn backup_hook_env(
    l: &ServerLayout,
    all: &[Backup],
    id: &str,
    info_path: &std::path::Path,
    status: &str,
) -> Vec<(&'static str, String)> {
    let (prev, next) = backups::neighbours(all, id);
    vec![
        ("BARMAN_BACKUP_DIR", l.base_dir.join(id).display().to_string()),
        ("BARMAN_BACKUP_INFO_PATH", info_path.display().to_string()),
        ("BARMAN_BACKUP_ID", id.to_string()),
        ("BARMAN_PREVIOUS_ID", prev.unwrap_or_default()),
        ("BARMAN_NEXT_ID", next.unwrap_or_default()),
        ("BARMAN_STATUS", status.to_string()),
    ]
}
