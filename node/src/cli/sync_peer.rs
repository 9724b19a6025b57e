//! `sync-info --primary`, `sync-wals` and `sync-backup` on a cluster node, for a server
//! another node owns: the owner is the primary, asked over its Sync service with this
//! node's certificate. The node's follower does the same on its own; these run it now, by
//! hand or from a script, under Barman's sync locks (the follower skips what they hold).

use std::time::Duration;

use barman_proto::v1::SyncInfoRequest;
use barman_proto::v1::sync_client::SyncClient;
use tonic::transport::Channel;

use super::context::Ctx;
use crate::catalog::ServerLayout;
use crate::catalog::backup_info::BackupInfo;
use crate::catalog::backups;
use crate::catalog::lock::LockKind;
use crate::config::ServerConfig;
use crate::node::control::{self, ControlRequest};
use crate::sync::backups::{listing, sync_backup as copy_backup};
use crate::sync::wals::{WalSyncOptions, sync_wals as copy_wals};
use crate::transport::{grpc, tls};

/// The owner of a server, reached from this node.
struct Owner {
    rt: tokio::runtime::Runtime,
    client: SyncClient<Channel>,
    name: String,
}

/// The node that owns `s` (from this node's running daemon), connected; `None` after the
/// error was told.
fn owner(ctx: &mut Ctx, s: &ServerConfig) -> Option<Owner> {
    let me = ctx.cfg.global.node_name.as_ref().map(|n| n.to_string()).unwrap_or_default();
    let path = control::socket_path(&ctx.cfg.global.barman_home);
    let v = match control::call(&path, &ControlRequest::Status, Duration::from_secs(10)) {
        Ok(v) => v,
        Err(e) => {
            ctx.out.error(format!(
                "cannot sync server {}: this host is cluster node '{me}' and the owner is known to its daemon: {e}",
                s.name
            ));
            return None;
        }
    };
    let Some((Some(name), _)) = super::cluster::server_owner(&v, &s.name) else {
        ctx.out.error(format!(
            "cannot sync server {}: the cluster has not given it an owner yet; see 'barman cluster status'",
            s.name
        ));
        return None;
    };
    if name == me {
        ctx.out.error(format!(
            "server {} is owned by this node ('{me}'): it is the primary, there is nothing to sync from",
            s.name
        ));
        return None;
    }
    let Some(addr) = v["members"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["name"] == name.as_str()))
        .and_then(|m| m["addr"].as_str())
        .map(str::to_string)
    else {
        ctx.out.error(format!("cannot sync server {}: its owner '{name}' is not among the members", s.name));
        return None;
    };
    let g = &ctx.cfg.global;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let made = tls::ClientTls::load(&tls::TlsFiles::of_node(g)).map_err(|e| e.to_string()).and_then(|t| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?;
        let channel = {
            let _in = rt.enter();
            grpc::channel(&addr, &name, &t).map_err(|e| e.to_string())?
        };
        Ok((rt, channel))
    });
    match made {
        Ok((rt, channel)) => {
            let client = SyncClient::new(channel)
                .max_decoding_message_size(grpc::MAX_MESSAGE)
                .max_encoding_message_size(grpc::MAX_MESSAGE);
            Some(Owner { rt, client, name })
        }
        Err(e) => {
            ctx.out.error(format!("cannot reach node '{name}', the owner of server {}: {e}", s.name));
            None
        }
    }
}

/// `sync-info --primary`: the owner's answer.
pub fn sync_info(ctx: &mut Ctx, s: &ServerConfig, last_wal: Option<String>, last_position: Option<u64>) {
    let Some(mut o) = owner(ctx, s) else { return };
    let req = SyncInfoRequest {
        server: s.name.clone(),
        last_wal: last_wal.unwrap_or_default(),
        last_position: last_position.unwrap_or(0),
    };
    match o.rt.block_on(o.client.info(req)) {
        Ok(r) => super::sync::print_json(ctx, &r.into_inner().json, "the primary's sync-info"),
        Err(e) => ctx.out.error(format!(
            "Failed to retrieve the primary node status: node '{}': {}",
            o.name,
            grpc::status_text(&e)
        )),
    }
}

/// `sync-wals SERVER`: every WAL file the owner holds and this node lacks (a full set
/// difference: a gap left by a change of owner is filled).
pub fn sync_wals(ctx: &mut Ctx, s: &ServerConfig) {
    let layout = ServerLayout::new(&ctx.cfg.global, s);
    let Some(_lock) = super::sync::take_lock(ctx, &layout, LockKind::SyncWal, true) else { return };
    let Some(mut o) = owner(ctx, s) else { return };
    let opts = WalSyncOptions::for_server(s);
    let run = o.rt.block_on(copy_wals(&mut o.client, &o.name, &layout, &opts));
    super::sync::tell_wal_sync(ctx, &s.name, &format!(" from node '{}'", o.name), run);
}

/// `sync-backup SERVER BACKUP_ID`: the owner's backup, resumed from what an earlier try
/// left.
pub fn sync_backup(ctx: &mut Ctx, s: &ServerConfig, id: &str) {
    let layout = ServerLayout::new(&ctx.cfg.global, s);
    let Some(mut o) = owner(ctx, s) else { return };
    let listed = match o.rt.block_on(listing(&mut o.client, &o.name, &layout)) {
        Ok(l) => l,
        Err(e) => return ctx.out.error(format!("failure syncing server {} backup {id}: {e}", s.name)),
    };
    let here = backups::scan(&layout).get(id).and_then(|p| BackupInfo::read(p).ok()).map(|b| b.status);
    let Some((meta, theirs)) = listed.into_iter().find(|(m, _)| m.id == id) else {
        return match here {
            Some(_) => ctx.out.info(format!("backup {id} exists only on this node: kept")),
            None => ctx.out.error(format!("backup {id} of server {} is neither on node '{}' nor here", s.name, o.name)),
        };
    };
    if here.as_deref() == Some("DONE") {
        return ctx.out.info(format!("backup {id} is already synced"));
    }
    if !backups::COPY_DONE.contains(&theirs.status.as_str()) {
        return ctx.out.info(format!("backup {id} is {} on node '{}'", theirs.status, o.name));
    }
    let Some(_lock) = super::sync::take_lock(ctx, &layout, LockKind::SyncBackup(id.to_string()), false) else {
        return;
    };
    let opts = WalSyncOptions::for_server(s);
    match o.rt.block_on(copy_backup(&mut o.client, &o.name, &layout, &meta, &opts)) {
        Ok(r) => ctx.out.info(format!(
            "Backup {id} of server {} synchronised from node '{}': {} file(s), {} bytes received",
            s.name, o.name, r.files, r.bytes
        )),
        Err(e) => ctx.out.error(format!("failure syncing server {} backup {id}: {e}", s.name)),
    }
}
