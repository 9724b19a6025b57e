//! Following the owners: for every server this node does not own, the WAL its owner holds
//! is fetched over the Sync service (cheap polls for newer files every second while the
//! owner's stream moves, as its lease renewals report it, and for a few seconds after; a full
//! set difference every minute and at each change of owner, so a gap a failover left is
//! filled), and its backups (every ten seconds, one at a time, in a task of their own so that
//! a long copy does not hold up the WAL).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use barman_proto::v1::sync_client::SyncClient;

use crate::catalog::ServerLayout;
use crate::catalog::deletions;
use crate::catalog::lock::{Lock, LockKind};
use crate::cluster::ownership::NodeId;
use crate::cluster::rpc::{self, ForwardRequest, ForwardResponse};
use crate::cluster::types::{Deletion, Member, Request, Response};
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
                let Some(s) = self.p.cfg.servers.get(server) else { continue };
                self.record_deletions(s, rec.ownership.owner, rec.ownership.epoch).await;
                let Some(owner) = rec.ownership.owner.filter(|o| *o != self.p.me) else { continue };
                let Some(member) = self.p.member(owner) else { continue };
                let sn = seen.entry(server.clone()).or_default();
                let deleted = state.deleted.get(server).cloned().unwrap_or_default();
                self.follow(s, owner, &member, rec.report.flushed, deleted, sn).await;
            }
        }
    }

    /// One round for server `s`, owned by `owner`: its backups when due (in a task of their
    /// own), then its WAL when due.
    async fn follow(
        &self,
        s: &ServerConfig,
        owner: NodeId,
        member: &Member,
        flushed: u64,
        deleted: BTreeMap<String, Deletion>,
        sn: &mut Seen,
    ) {
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
            let (node, peer) = (self.p.name.clone(), member.name.clone());
            let (empty, keep) = (self.p.empty_listings.clone(), Keep::of(s));
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
                follow_deletions(&node, &peer, &deleted, listing.is_empty(), &layout, keep, &empty);
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

/// What this node keeps of the owner's deletions: its own `minimum_redundancy`, and how
/// long the trash holds a copy (`sync_delete_delay`).
#[derive(Clone, Copy)]
struct Keep {
    minimum_redundancy: usize,
    delay: Duration,
}

impl Keep {
    fn of(s: &ServerConfig) -> Keep {
        Keep {
            minimum_redundancy: s.opts.minimum_redundancy.0 as usize,
            delay: Duration::from_secs(s.opts.sync_delete_delay.map_or(7 * 86_400, |i| i.seconds)),
        }
    }
}

/// Follows the owner's deletions — only those recorded in the cluster's state, never a
/// backup missing from its listing: each copy the owner deleted moves to this node's trash
/// (never below this node's `minimum_redundancy` DONE), and the trash is purged after
/// `sync_delete_delay`. An owner that lists no backup at all while this node holds some is
/// told (WARN, and the `barman_owner_listing_empty` metric), and deletes nothing.
fn follow_deletions(
    node: &str,
    peer: &str,
    deleted: &BTreeMap<String, Deletion>,
    owner_lists_none: bool,
    layout: &ServerLayout,
    keep: Keep,
    empty: &std::sync::Mutex<std::collections::BTreeSet<String>>,
) {
    let server = &layout.server;
    let done: Vec<String> = backups_here(layout, "DONE");
    let flagged = empty.lock().map(|mut g| {
        if owner_lists_none && !done.is_empty() {
            g.insert(server.clone())
        } else {
            g.remove(server);
            false
        }
    });
    if flagged.unwrap_or(false) {
        tracing::warn!(node = %node, server = %server, peer = %peer,
            "the owner {peer} lists no backup of {server} while this node holds {} DONE: nothing is deleted here for that; check the owner's catalogue", done.len());
    }
    let recorded: Vec<&str> = deleted.keys().map(String::as_str).collect();
    for id in deletions::to_trash(&recorded, &done, keep.minimum_redundancy) {
        // A `barman sync-backup` of it by hand: the next round looks again.
        let Some(_lock) = try_lock(layout, LockKind::SyncBackup(id.clone())) else { continue };
        let Some(d) = deleted.get(&id) else { continue };
        let why = format!("deleted by the owner (node {}, epoch {}): {}", d.node, d.epoch, d.reason);
        match deletions::move_to_trash(layout, &id, &why) {
            Ok(at) => tracing::info!(node = %node, server = %server, backup = %id,
                "backup {id} {why}; moved to {} here, purged after sync_delete_delay", at.display()),
            Err(e) => {
                tracing::warn!(node = %node, server = %server, backup = %id, "cannot move backup {id} to the trash: {e}")
            }
        }
    }
    match deletions::purge(layout, keep.delay, std::time::SystemTime::now()) {
        Ok(purged) => {
            for id in purged {
                tracing::info!(node = %node, server = %server, backup = %id, "backup {id} purged from the trash");
            }
        }
        Err(e) => tracing::warn!(node = %node, server = %server, "cannot purge the trash: {e}"),
    }
}

/// The backups held here in `status`, oldest first.
fn backups_here(layout: &ServerLayout, status: &str) -> Vec<String> {
    crate::catalog::backups::scan(layout)
        .into_iter()
        .filter(|(_, p)| crate::catalog::backup_info::BackupInfo::read(p).is_ok_and(|b| b.status == status))
        .map(|(id, _)| id)
        .collect()
}

impl Follower {
    /// Records in the cluster the deletions journaled on this node for a server it owns
    /// (in `epoch`); forgets those of a server another node owns (a deletion there is the
    /// owner's to record).
    async fn record_deletions(&self, s: &ServerConfig, owner: Option<NodeId>, epoch: u64) {
        let layout = ServerLayout::new(&self.p.cfg.global, s);
        for (id, reason) in deletions::journaled(&layout) {
            if owner.is_some_and(|o| o != self.p.me) {
                let _ = deletions::forget(&layout, &id);
                continue;
            }
            if owner != Some(self.p.me) {
                return;
            }
            let req = Request::Deleted { server: s.name.clone(), backup: id.clone(), node: self.p.me, epoch, reason };
            match rpc::propose(&self.p.raft, &self.p.peers, ForwardRequest::Write(req), Duration::from_secs(5)).await {
                Ok(ForwardResponse::Written(Response::Applied)) => {
                    tracing::info!(node = %self.p.name, server = %s.name, backup = %id, "the deletion of backup {id} is recorded for the other nodes");
                    let _ = deletions::forget(&layout, &id);
                }
                Ok(ForwardResponse::Written(r)) => {
                    tracing::info!(node = %self.p.name, server = %s.name, backup = %id, "the deletion of backup {id} is not recorded: {r:?}");
                    let _ = deletions::forget(&layout, &id);
                }
                // No leader now: the next round tries again.
                Ok(other) => tracing::debug!(node = %self.p.name, server = %s.name, "recording a deletion: {other:?}"),
                Err(e) => tracing::debug!(node = %self.p.name, server = %s.name, "recording a deletion: {e}"),
            }
        }
    }
}
