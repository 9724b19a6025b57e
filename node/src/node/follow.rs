//! Following the owners: for every server this node does not own, the WAL its owner holds
//! is fetched over the Sync service (cheap polls for newer files every second while the
//! owner's stream moves, as its lease renewals report it, and for a few seconds after; a full
//! set difference every minute and at each change of owner, so a gap a failover left is
//! filled), and its backups (every ten seconds, one at a time, in a task of their own so that
//! a long copy does not hold up the WAL).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use barman_proto::v1::sync_client::SyncClient;

use crate::catalog::ServerLayout;
use crate::catalog::lock::{Lock, LockKind};
use crate::cluster::ownership::NodeId;
use crate::cluster::types::Member;
use crate::config::ServerConfig;
use crate::sync::wals::{WalCursor, WalSyncOptions, sync_wals};
use crate::sync::{SyncError, backups};
use crate::transport::grpc;

/// How often the owners are asked for newer WAL while their streams move.
const POLL: Duration = Duration::from_secs(1);
/// How long polls go on after the owner's flush position last moved: the segment it
/// completed is archived a moment after.
const HOT: Duration = Duration::from_secs(5);
/// How often a full listing looks for gaps as well.
const FULL: Duration = Duration::from_secs(60);
/// How often the owner's backups are compared with ours.
const BACKUPS: Duration = Duration::from_secs(10);

pub(super) struct Follower {
    pub(super) p: super::Peering,
}

/// Per server: the owner followed, when its last full listing was, the last error told.
#[derive(Default)]
struct Seen {
    owner: Option<NodeId>,
    full_at: Option<Instant>,
    error: Option<String>,
    backups_at: Option<Instant>,
    /// Where the owner's xlog.db was read to (None: list everything next time).
    cursor: Option<WalCursor>,
    /// The owner's flush position last seen in its renewals, and until when to poll.
    flushed: u64,
    hot_until: Option<Instant>,
    backup_task: Option<tokio::task::JoinHandle<()>>,
    /// The backups the owner followed listed at the last round (its deletions are followed).
    owner_backups: Arc<std::sync::Mutex<(Option<NodeId>, std::collections::BTreeSet<String>)>>,
}

impl Follower {
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(POLL) => {}
            }
            let state = self.p.applied.borrow().state.clone();
            for (server, rec) in &state.servers {
                let Some(owner) = rec.ownership.owner.filter(|o| *o != self.p.me) else { continue };
                let Some(s) = self.p.cfg.servers.get(server) else { continue };
                let Some(member) = self.p.member(owner) else { continue };
                let sn = seen.entry(server.clone()).or_default();
                self.follow(s, owner, &member, rec.report.flushed, sn).await;
            }
        }
    }

    /// One round for server `s`, owned by `owner`: its backups when due (in a task of their
    /// own), then its WAL when due.
    async fn follow(&self, s: &ServerConfig, owner: NodeId, member: &Member, flushed: u64, sn: &mut Seen) {
        let server = s.name.as_str();
        let full = sn.owner != Some(owner) || sn.full_at.is_none_or(|t| t.elapsed() >= FULL);
        if sn.flushed != flushed {
            sn.flushed = flushed;
            sn.hot_until = Some(Instant::now() + HOT);
        }
        let wal_due = full || sn.cursor.is_none() || sn.hot_until.is_some_and(|t| Instant::now() < t);
        let backups_due = sn.backups_at.is_none_or(|t| t.elapsed() >= BACKUPS)
            && sn.backup_task.as_ref().is_none_or(|t| t.is_finished());
        // An idle owner costs no poll.
        if !wal_due && !backups_due {
            return;
        }
        let channel = match self.p.peers.channel(owner, member) {
            Ok(c) => c,
            Err(e) => {
                let why =
                    SyncError::Rpc { peer: member.name.clone(), what: "connecting".into(), status: e.to_string() };
                self.tell(server, sn, why);
                return;
            }
        };
        let mut client = SyncClient::new(channel)
            .max_decoding_message_size(grpc::MAX_MESSAGE)
            .max_encoding_message_size(grpc::MAX_MESSAGE);
        let opts =
            WalSyncOptions { cursor: if full { None } else { sn.cursor.clone() }, ..WalSyncOptions::for_server(s) };
        let layout = ServerLayout::new(&self.p.cfg.global, s);
        if backups_due {
            sn.backups_at = Some(Instant::now());
            let (mut client, layout, opts) = (client.clone(), layout.clone(), opts.clone());
            let (node, peer, config) = (self.p.name.clone(), member.name.clone(), self.p.cfg.file.clone());
            let seen = sn.owner_backups.clone();
            sn.backup_task = Some(tokio::spawn(async move {
                // One listing per round serves the copies and the deletions.
                let listing = match backups::listing(&mut client, &peer, &layout).await {
                    Ok(l) => l,
                    Err(e) => {
                        let server = &layout.server;
                        tracing::info!(node = %node, server = %server, "cannot list the owner's backups, will retry: {e}");
                        return;
                    }
                };
                follow_backups(&node, &peer, &mut client, &layout, &opts, backups::wanted_in(&listing, &layout)).await;
                follow_expiry(&node, (owner, &peer), &listing, &layout, &config, &seen).await;
            }));
        }
        if !wal_due {
            return;
        }
        // A `barman sync-wals` run by hand holds the lock: this round is its.
        let Some(_lock) = try_lock(&layout, LockKind::SyncWal) else { return };
        match sync_wals(&mut client, &member.name, &layout, &opts).await {
            Ok(r) => {
                if full {
                    sn.owner = Some(owner);
                    sn.full_at = Some(Instant::now());
                }
                sn.error = None;
                sn.cursor = Some(r.cursor.clone());
                if !r.fetched.is_empty() || !r.recorded.is_empty() {
                    tracing::info!(
                        node = %self.p.name, server = %server, peer = %member.name,
                        "WAL synced from the owner: {} file(s), {} bytes, up to {}",
                        r.fetched.len() + r.recorded.len(), r.bytes,
                        r.fetched.iter().chain(&r.recorded).max().map_or("", String::as_str)
                    );
                }
            }
            Err(e) => {
                sn.cursor = None;
                self.tell(server, sn, e);
            }
        }
    }

    /// A failure is told once until it changes or clears: at INFO when the owner could not
    /// be reached (it may be down for a while, a successor is coming), at WARN when what it
    /// sent was refused or this node could not keep it.
    fn tell(&self, server: &str, sn: &mut Seen, e: SyncError) {
        let why = e.to_string();
        if sn.error.as_deref() == Some(why.as_str()) {
            return;
        }
        match e {
            SyncError::Rpc { .. } => {
                tracing::info!(node = %self.p.name, server = %server, "WAL sync from the owner failed, will retry: {why}")
            }
            _ => tracing::warn!(node = %self.p.name, server = %server, "WAL sync from the owner failed: {why}"),
        }
        sn.error = Some(why);
    }
}

/// Barman's lock of a sync (the one `sync-wals` and `sync-backup` take), if free; `None`
/// when another process holds it or it cannot be taken (said at debug: the next round
/// tries again).
fn try_lock(layout: &ServerLayout, kind: LockKind) -> Option<Lock> {
    Lock::take(&layout.lock_dir, &layout.server, &kind, false)
        .inspect_err(|e| tracing::debug!(server = %layout.server, "sync skipped this round: {e}"))
        .ok()
}

/// Copies the owner's backups this node lacks, oldest first. Failures are logged (the
/// backup is left FAILED with the reason, and retried next time from what arrived).
async fn follow_backups(
    node: &str,
    peer: &str,
    client: &mut SyncClient<tonic::transport::Channel>,
    layout: &ServerLayout,
    opts: &WalSyncOptions,
    wanted: Vec<barman_proto::v1::BackupMeta>,
) {
    let server = &layout.server;
    for meta in wanted {
        // A `barman sync-backup` run by hand copies it: the next round looks again.
        let Some(_lock) = try_lock(layout, LockKind::SyncBackup(meta.id.clone())) else { return };
        let t = Instant::now();
        tracing::info!(node = %node, server = %server, peer = %peer, backup = %meta.id, "copying backup {} from the owner", meta.id);
        match backups::sync_backup(client, peer, layout, &meta, opts).await {
            Ok(r) => tracing::info!(
                node = %node, server = %server, peer = %peer, backup = %meta.id,
                "backup {} synced from the owner: {} file(s), {} bytes received in {} ms",
                meta.id, r.files, r.bytes, t.elapsed().as_millis()
            ),
            Err(e) => {
                let level_warn = !matches!(e, SyncError::Rpc { .. });
                if level_warn {
                    tracing::warn!(node = %node, server = %server, backup = %meta.id, "backup sync failed: {e}");
                } else {
                    tracing::info!(node = %node, server = %server, backup = %meta.id, "backup sync cut, will resume: {e}");
                }
                return;
            }
        }
    }
}

/// Deletes here the backups the owner deleted ([`backups::expired`]: its retention, or a
/// `barman delete` there), each by
/// a child `barman delete`, so Barman's rules apply as to any delete: never below
/// `minimum_redundancy`, keep annotations honoured, the WAL only this backup needed
/// removed with it.
async fn follow_expiry(
    node: &str,
    (owner, peer): (NodeId, &str),
    listing: &[(barman_proto::v1::BackupMeta, crate::catalog::backup_info::BackupInfo)],
    layout: &ServerLayout,
    config: &std::path::Path,
    seen: &std::sync::Mutex<(Option<NodeId>, std::collections::BTreeSet<String>)>,
) {
    let server = &layout.server;
    // What another owner listed says nothing of this one's deletions.
    let mut known = match seen.lock() {
        Ok(mut g) if g.0 == Some(owner) => std::mem::take(&mut g.1),
        _ => std::collections::BTreeSet::new(),
    };
    let expired = backups::expired(listing, layout, &mut known);
    if let Ok(mut g) = seen.lock() {
        *g = (Some(owner), known);
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(node = %node, server = %server, "cannot follow the owner's expiry: {e}");
            return;
        }
    };
    for id in expired {
        let out = tokio::process::Command::new(&exe)
            .arg("-c")
            .arg(config)
            .args(["delete", server, &id])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await;
        match out {
            Ok(o) if o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("Skipping") => {
                tracing::info!(node = %node, server = %server, backup = %id,
                    "backup {id} expired by the owner {peer}: deleted here too")
            }
            Ok(o) => {
                let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                // Told at each round while it lasts (minimum_redundancy, a keep): debug only.
                tracing::debug!(node = %node, server = %server, backup = %id,
                    "backup {id} expired by the owner {peer} is kept here: {}", text.trim());
            }
            Err(e) => tracing::warn!(node = %node, server = %server, "cannot run delete for backup {id}: {e}"),
        }
    }
}
