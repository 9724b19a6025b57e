//! `sync-info`: Barman's JSON for a passive node, on standard output with nothing else;
//! and the passive side: `sync-info --primary`, `sync-wals`, `sync-backup`, cron's sync step.

use std::io::Write;
use std::sync::Arc;

use super::context::{Ctx, Pick};
use crate::archive::server::codecs_for;
use crate::catalog::backups::{self, COPY_DONE};
use crate::catalog::lock::{Lock, LockError, LockKind};
use crate::catalog::{ServerLayout, durable, pyjson};
use crate::config::ServerConfig;
use crate::sync::SyncError;
use crate::sync::info::{Cursor, sync_info as build};
use crate::sync::passive::{self, Needed};
use crate::sync::primary;
use crate::sync::wals::WalSyncOptions;
use crate::transport::ssh::Remote;
use crate::wal::compression::Level;

pub fn sync_info(ctx: &mut Ctx, server: &str, last_wal: Option<String>, last_position: Option<u64>) {
    let Some(s) = ctx.server(server, Pick::DEFAULT) else { return };
    match build(&ctx.cfg.global, &s, &Cursor { last_wal, last_position }) {
        Ok(v) => print_json(ctx, &pyjson::dumps(&v, Some(4), false), &format!("the sync-info of server {}", s.name)),
        Err(e) => ctx.out.error(e.to_string()),
    }
}

/// `sync-info --primary`: the primary's answer, as the primary printed it re-indented.
pub fn sync_info_primary(ctx: &mut Ctx, server: &str, last_wal: Option<String>, last_position: Option<u64>) {
    let s = match route(ctx, server) {
        Some(Route::Ssh(s)) => s,
        Some(Route::Cluster(s)) => return super::sync_peer::sync_info(ctx, &s, last_wal, last_position),
        None => return,
    };
    let Some(remote) = connect(ctx, &s) else { return };
    let cmd = primary::remote_command(&s, &ctx.cfg.file, last_wal.as_deref(), last_position);
    match remote.run(&cmd, None) {
        Ok(out) if out.success() => match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            Ok(v) => print_json(ctx, &pyjson::dumps(&v, Some(4), false), "the primary's sync-info"),
            Err(e) => ctx.out.error(format!(
                "the primary of server {} answered something that is not JSON ({e}): check that nothing prints at login",
                s.name
            )),
        },
        Ok(out) => ctx.out.error(format!("Failed to retrieve the primary node status: {}", out.why())),
        Err(e) => ctx.out.error(format!("Failed to retrieve the primary node status: {e}")),
    }
}

/// `sync-wals SERVER`: the WAL the saved primary.info lists and this node lacks.
pub fn sync_wals(ctx: &mut Ctx, server: &str) {
    let s = match route(ctx, server) {
        Some(Route::Ssh(s)) => s,
        Some(Route::Cluster(s)) => return super::sync_peer::sync_wals(ctx, &s),
        None => return,
    };
    let layout = ServerLayout::new(&ctx.cfg.global, &s);
    let _lock = match take_lock(ctx, &layout, LockKind::SyncWal, true) {
        Some(l) => l,
        None => return,
    };
    let info = match passive::load_primary_info(&layout) {
        Ok(i) => i,
        Err(e) => return ctx.out.error(format!("{e}: run 'barman cron' (it asks the primary) first")),
    };
    // Barman's passive refuses to start the WAL before it holds a base backup they serve.
    let local: Vec<_> = match backups::load(&layout) {
        Ok(b) => b.into_iter().filter(|b| COPY_DONE.contains(&b.info.status.as_str())).collect(),
        Err(e) => return ctx.out.error(e.to_string()),
    };
    let Some(first) = local.first() else {
        return ctx.out.warning(format!("No base backup for server {}", s.name));
    };
    let first_remote = info.wals.iter().find(|w| w.name.is_segment()).map(|w| w.name.to_string());
    if let (Some(begin), Some(remote)) = (first.info.begin_wal.as_ref(), first_remote.as_ref())
        && begin.as_str() > remote.as_str()
    {
        return ctx.out.warning(format!(
            "Skipping WAL synchronisation for server {}: no available local backup for {remote}",
            s.name
        ));
    }
    let Some(remote) = connect(ctx, &s) else { return };
    let local = passive::LocalCompression {
        codec: s.opts.compression,
        level: s.opts.compression_level.unwrap_or(Level::Medium),
        codecs: codecs_for(&s),
    };
    let opts = WalSyncOptions::for_server(&s);
    let run = remote.runtime().block_on(async {
        let sftp = remote.control().sftp().await.map_err(SyncError::from)?;
        passive::sync_wals(remote.control(), Arc::new(sftp), &layout, &info, &local, &opts).await
    });
    tell_wal_sync(ctx, &s.name, "", run);
}

/// Prints sync-info JSON `text` (`what` it is) as it is, nothing else on standard output:
/// as Python's json.dump with indent=4, no newline at the end.
pub(super) fn print_json(ctx: &mut Ctx, text: &str, what: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        ctx.out.error(format!("cannot write {what}: {e}"));
    }
}

/// Tells what a WAL sync of `server` did (`from`: where from, for the message).
pub(super) fn tell_wal_sync(
    ctx: &mut Ctx,
    server: &str,
    from: &str,
    run: Result<crate::sync::wals::WalSyncReport, SyncError>,
) {
    match run {
        Ok(r) if r.fetched.is_empty() && r.recorded.is_empty() => {
            ctx.out.info(format!("No WAL synchronisation required for server {server}"))
        }
        Ok(r) => ctx.out.info(format!(
            "Synchronised {} WAL file(s) for server {server}{from} ({} bytes received)",
            r.fetched.len() + r.recorded.len(),
            r.bytes
        )),
        Err(e) => ctx.out.error(format!("WAL synchronisation for server {server} failed: {e}")),
    }
}

/// `sync-backup SERVER BACKUP_ID`.
pub fn sync_backup(ctx: &mut Ctx, server: &str, id: &str) {
    let s = match route(ctx, server) {
        Some(Route::Ssh(s)) => s,
        Some(Route::Cluster(s)) => return super::sync_peer::sync_backup(ctx, &s, id),
        None => return,
    };
    let layout = ServerLayout::new(&ctx.cfg.global, &s);
    let info = match passive::load_primary_info(&layout) {
        Ok(i) => i,
        Err(e) => return ctx.out.error(format!("{e}: run 'barman cron' (it asks the primary) first")),
    };
    match passive::needed(&layout, &info, id) {
        Needed::Sync => {}
        Needed::Nothing(why) => return ctx.out.info(why),
        Needed::Unknown => {
            return ctx.out.error(format!("backup {id} of server {} is neither on the primary nor here", s.name));
        }
        Needed::DeleteLocal => {
            ctx.out.info(format!("backup {id} FAILED here and is gone from the primary: removing the local copy"));
            let base = layout.base_dir.join(id);
            if let Err(e) = std::fs::remove_dir_all(&base).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            }) {
                return ctx.out.error(format!("{}: {e}", base.display()));
            }
            let meta = backups::meta_path(&layout, id);
            if let Err(e) = durable::remove(&meta) {
                ctx.out.error(format!("{}: {e}", meta.display()));
            }
            return;
        }
    }
    let Some(_lock) = take_lock(ctx, &layout, LockKind::SyncBackup(id.to_string()), false) else { return };
    let Some(remote) = connect(ctx, &s) else { return };
    let opts = WalSyncOptions::for_server(&s);
    let run = remote.runtime().block_on(async {
        let sftp = remote.control().sftp().await.map_err(SyncError::from)?;
        passive::sync_backup(remote.control(), Arc::new(sftp), &layout, &info, id, &opts).await
    });
    match run {
        Ok(r) => ctx.out.info(format!(
            "Backup {id} of server {} synchronised: {} file(s), {} bytes received",
            s.name, r.files, r.bytes
        )),
        Err(e) => ctx.out.error(format!("failure syncing server {} backup {id}: {e}", s.name)),
    }
}

/// The cron step of a passive server: ask the primary, start one backup copy at most,
/// then the WAL copy.
pub fn cron_passive(ctx: &mut Ctx, s: &ServerConfig, spawn: &dyn Fn(&[&str]) -> std::io::Result<()>) {
    let layout = ServerLayout::new(&ctx.cfg.global, s);
    let Some(remote) = connect(ctx, s) else { return };
    let cursor = primary::read_sync_wals_info(&layout);
    let called = remote.runtime().block_on(passive::call_primary(remote.control(), s, &ctx.cfg.file, &layout, cursor));
    let called = match called {
        Ok(c) => c,
        Err(e) => return ctx.out.error(format!("Failed to retrieve the primary node status: {e}")),
    };
    if let Some(w) = called.warning {
        ctx.out.warning(w);
    }
    for id in passive::candidates(&layout, &called.info) {
        if passive::needed(&layout, &called.info, &id) != Needed::Sync {
            continue;
        }
        let path = layout.lock_dir.join(LockKind::SyncBackup(id.clone()).file_name(&s.name));
        match Lock::acquire(&path, false) {
            Ok(probe) => {
                drop(probe);
                ctx.out.info(format!("Starting copy of backup {id} for server {}", s.name));
                if let Err(e) = spawn(&["sync-backup", &s.name, &id]) {
                    ctx.out.error(format!("cannot start sync-backup for server {}: {e}", s.name));
                }
            }
            Err(_) => ctx
                .out
                .info(format!("A synchronisation process for backup {id} on server {} is already in progress", s.name)),
        }
        // One backup per cron run, as Barman.
        break;
    }
    if called.info.wals.is_empty() {
        ctx.out.info(format!("No WAL synchronisation required for server {}", s.name));
    } else {
        ctx.out.info(format!("Starting copy of WAL files for server {}", s.name));
        if let Err(e) = spawn(&["sync-wals", &s.name]) {
            ctx.out.error(format!("cannot start sync-wals for server {}: {e}", s.name));
        }
    }
}

/// Where a passive server's primary is.
enum Route {
    /// A Barman host, through `primary_ssh_command`.
    Ssh(ServerConfig),
    /// The cluster node that owns the server.
    Cluster(ServerConfig),
}

fn route(ctx: &mut Ctx, server: &str) -> Option<Route> {
    let s = ctx.server(server, Pick::DEFAULT)?;
    if s.passive {
        return Some(Route::Ssh(s));
    }
    if ctx.cfg.global.node_name.is_some() {
        return Some(Route::Cluster(s));
    }
    ctx.out.error(format!("server {} is not passive", s.name));
    None
}

fn connect(ctx: &mut Ctx, s: &ServerConfig) -> Option<Remote> {
    let cmd = s.opts.primary_ssh_command.clone().unwrap_or_default();
    match Remote::connect(&cmd, s.opts.network_compression) {
        Ok(r) => Some(r),
        Err(e) => {
            ctx.out.error(format!("cannot reach the primary of server {} (primary_ssh_command): {e}", s.name));
            None
        }
    }
}

pub(super) fn take_lock(ctx: &mut Ctx, layout: &ServerLayout, kind: LockKind, wait: bool) -> Option<Lock> {
    match Lock::take(&layout.lock_dir, &layout.server, &kind, wait) {
        Ok(l) => Some(l),
        Err(LockError::Busy(_)) => {
            let what = match &kind {
                LockKind::SyncBackup(id) => format!("backup {id}"),
                _ => "WAL files".into(),
            };
            ctx.out.error(format!(
                "A synchronisation process for {what} on server {} is already in progress",
                layout.server
            ));
            None
        }
        Err(e) => {
            ctx.out.error(e.to_string());
            None
        }
    }
}
