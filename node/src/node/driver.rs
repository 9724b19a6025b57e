//! The ownership driver: turns the replicated state into what this node does. As owner it
//! renews its lease and streams only within it; as Raft leader it hands out servers whose
//! owner stopped renewing; it carries out planned hand-overs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::clock::mono_ms;
use super::stream::{LeaseFence, Supervisor};
use crate::cluster::ownership::{Assigner, Command, Holder, Millis, NodeId, Ownership, ServerView};
use crate::cluster::types::{ClusterState, Request, Response, ServerRecord, StreamReport};
use crate::config::Config;

/// A proposal on its way through Raft.
pub type Proposal = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, String>> + Send>>;

/// What the driver needs from the Raft plumbing, so that it can be tested without it.
pub trait Raft: Send + Sync + 'static {
    /// Proposes `req` (forwarded to the leader when this node is not it); the applied
    /// response, or why it could not be committed.
    fn propose(&self, req: Request) -> Proposal;
    /// Proposes `req` only while this node leads (never forwarded): the leader's own
    /// decisions, which no other node accepts from it through `Forward`.
    fn propose_as_leader(&self, req: Request) -> Proposal;
    /// The current leader and term, as this node knows them.
    fn leader(&self) -> (Option<NodeId>, u64);
    /// Voters of the current membership, with their names.
    fn voters(&self) -> BTreeMap<NodeId, String>;
    /// Nodes that answered the leader within `within`.
    fn alive(&self, within: Duration) -> BTreeSet<NodeId>;
}

/// Per-server state of this node.
struct Local {
    holder: Holder,
    fence: Arc<LeaseFence>,
    sup: Option<Supervisor>,
    last_renew_sent: Millis,
    renewing: bool,
    /// (renewals, epoch) and when this node last saw them change: the lease age.
    seen: ((u64, u64), Millis),
    handing_over: bool,
    /// The lease of the current epoch ran out: this node never streams in it again.
    spent: bool,
    last_declared: Millis,
}

impl Local {
    fn new(me: NodeId, lease: Millis, now: Millis) -> Local {
        Local {
            holder: Holder::new(me, lease),
            fence: Arc::new(LeaseFence::default()),
            sup: None,
            last_renew_sent: 0,
            renewing: false,
            seen: ((u64::MAX, u64::MAX), now),
            handing_over: false,
            spent: false,
            last_declared: 0,
        }
    }
}

/// A snapshot for `cluster status` and the metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ServerStatus {
    pub name: String,
    pub owner: Option<String>,
    pub epoch: u64,
    /// Milliseconds since this node last saw the owner's lease renewed.
    pub lease_age_ms: Option<u64>,
    /// Whether this node streams it now.
    pub streaming_here: bool,
    pub flushed_lsn: String,
    pub server_lsn: String,
    pub lag_bytes: Option<u64>,
    pub last_wal: Option<String>,
    pub transfer_to: Option<String>,
    pub candidates: Vec<String>,
}

/// Commit latencies of this node's renewals (a proposal through Raft, end to end), the
/// latest 1024, in microseconds.
#[derive(Debug, Default)]
pub struct Latencies {
    recent: std::collections::VecDeque<u64>,
    pub count: u64,
    pub sum_us: u64,
}

impl Latencies {
    fn record(&mut self, us: u64) {
        if self.recent.len() == 1024 {
            self.recent.pop_front();
        }
        self.recent.push_back(us);
        self.count += 1;
        self.sum_us += us;
    }

    /// The `q` quantile of the recent latencies, in microseconds.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let mut v: Vec<u64> = self.recent.iter().copied().collect();
        v.sort_unstable();
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v.get(i).copied()
    }
}

/// A renewal a pass could send: (server, epoch, report, due now).
type Renewal = (String, u64, StreamReport, bool);

/// Messages back into the driver's loop.
enum Event {
    /// One batch of renewals came back: per server, its epoch and whether it applied.
    Renewed {
        renewed: Vec<(String, u64, bool)>,
        sent_at: Millis,
        took_us: u64,
    },
    HandedOver {
        server: String,
    },
}

pub struct Driver<R: Raft> {
    pub me: NodeId,
    pub name: String,
    pub site: String,
    pub cfg: Arc<Config>,
    pub raft: Arc<R>,
    pub lease: Millis,
    pub margin: Millis,
    locals: BTreeMap<String, Local>,
    assigner: Option<(u64, Assigner)>,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    status: watch::Sender<Vec<ServerStatus>>,
    pub latencies: Arc<std::sync::Mutex<Latencies>>,
    /// The epoch last proposed per server by this leader, and when.
    proposed: BTreeMap<String, (u64, Millis)>,
    /// When this node last told its site (0: never).
    site_told: Millis,
    /// Tells the maintenance loop to archive now (a streamed segment completed).
    archive_kick: Arc<tokio::sync::Notify>,
}

impl<R: Raft> Driver<R> {
    pub fn new(
        me: NodeId,
        name: String,
        site: String,
        cfg: Arc<Config>,
        raft: Arc<R>,
        lease: Duration,
        archive_kick: Arc<tokio::sync::Notify>,
    ) -> (Self, watch::Receiver<Vec<ServerStatus>>) {
        let lease = lease.as_millis() as Millis;
        // The margin covers clock drift over one lease and the commit latency of a renewal.
        let margin = (lease / 4).max(250);
        let (tx, rx) = mpsc::unbounded_channel();
        let (status, srx) = watch::channel(Vec::new());
        let d = Driver {
            me,
            name,
            site,
            cfg,
            raft,
            lease,
            margin,
            locals: BTreeMap::new(),
            assigner: None,
            tx,
            rx,
            status,
            site_told: 0,
            latencies: Arc::default(),
            proposed: BTreeMap::new(),
            archive_kick,
        };
        (d, srx)
    }

    fn renew_every(&self) -> Millis {
        (self.lease / 3).clamp(100, 1000)
    }

    /// Runs until `shutdown`; then stops streaming, hands the leases back and returns.
    pub async fn run(
        mut self,
        mut applied: watch::Receiver<crate::cluster::store::Applied>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let tick = Duration::from_millis((self.lease / 10).clamp(20, 300));
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                r = applied.changed() => if r.is_err() { break },
                Some(ev) = self.rx.recv() => self.event(ev),
                () = tokio::time::sleep(tick) => {}
            }
            let state = applied.borrow_and_update().state.clone();
            self.step(&state).await;
        }
        self.shutdown().await;
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Renewed { renewed, sent_at, took_us } => {
                if renewed.iter().any(|(_, _, ok)| *ok)
                    && let Ok(mut l) = self.latencies.lock()
                {
                    l.record(took_us);
                }
                for (server, epoch, ok) in renewed {
                    if let Some(l) = self.locals.get_mut(&server) {
                        l.renewing = false;
                        if ok {
                            l.holder.renewal_committed(epoch, sent_at);
                        }
                    }
                }
            }
            Event::HandedOver { server } => {
                if let Some(l) = self.locals.get_mut(&server) {
                    l.handing_over = false;
                }
            }
        }
    }

    /// One pass: observe, renew, fence, supervise, hand over, assign, declare.
    async fn step(&mut self, state: &ClusterState) {
        let now = mono_ms();
        for (name, rec) in &state.servers {
            let lease = self.lease;
            let me = self.me;
            let l = self.locals.entry(name.clone()).or_insert_with(|| Local::new(me, lease, now));
            let key = (rec.ownership.renewals, rec.ownership.epoch);
            if l.seen.0 != key {
                l.seen = (key, now);
            }
            let before = l.holder.epoch();
            l.holder.observe(&rec.ownership);
            if l.holder.epoch() != before {
                // A new epoch (or none): the old stream's authority ends now.
                l.spent = false;
                l.fence.revoke();
                l.fence = Arc::new(LeaseFence::default());
                if let Some(e) = l.holder.epoch() {
                    tracing::info!(node = %self.name, server = %name, epoch = e, "this node owns the server now");
                } else if let Some(e) = before {
                    tracing::info!(node = %self.name, server = %name, epoch = e, "this node no longer owns the server");
                }
            }
        }
        let names: Vec<String> = self.locals.keys().cloned().collect();
        let mut renewable = Vec::new();
        for name in names {
            let Some(rec) = state.servers.get(&name) else {
                // Forgotten by the cluster: stop whatever we did for it.
                if let Some(l) = self.locals.remove(&name) {
                    l.fence.revoke();
                    if let Some(s) = l.sup {
                        tokio::spawn(s.stop());
                    }
                }
                continue;
            };
            renewable.extend(self.own(&name, rec, now));
        }
        self.renew(renewable, now);
        self.lead(state, now);
        self.declare(state, now);
        self.publish(state, now);
    }

    /// The owner's part for one server.
    /// Returns the renewal this pass could send for it: (server, epoch, report, due now).
    fn own(&mut self, name: &str, rec: &ServerRecord, now: Millis) -> Option<Renewal> {
        let renew_every = self.renew_every();
        let server_cfg = self.cfg.servers.get(name).cloned()?;
        let l = self.locals.get_mut(name)?;
        // Mirror the lease into the fence streaming checks before every flush report.
        match l.holder.deadline() {
            Some(d) => l.fence.set_deadline(d),
            None => l.fence.revoke(),
        }
        let Some(epoch) = l.holder.epoch() else {
            if let Some(s) = l.sup.take() {
                tokio::spawn(s.stop());
            }
            return None;
        };
        // A planned hand-over: stop streaming (durably, reported), then release.
        if let Some(to) = rec.transfer_to
            && !l.handing_over
        {
            l.handing_over = true;
            l.holder.fence();
            let sup = l.sup.take();
            let fence = l.fence.clone();
            let (raft, tx, server, me, node) =
                (self.raft.clone(), self.tx.clone(), name.to_string(), self.me, self.name.clone());
            tokio::spawn(async move {
                if let Some(s) = sup {
                    s.stop().await;
                }
                fence.revoke();
                tracing::info!(node = %node, server = %server, epoch, "handing the server over to node {to}");
                let r = raft
                    .propose(Request::Ownership {
                        server: server.clone(),
                        cmd: Command::Release { node: me, epoch, to: Some(to) },
                        report: None,
                    })
                    .await;
                if let Err(e) = r {
                    tracing::warn!(node = %node, server = %server, epoch, "hand-over not committed yet: {e}");
                }
                let _ = tx.send(Event::HandedOver { server });
            });
            return None;
        }
        if l.handing_over || l.spent {
            return None;
        }
        // A lease that ran out (a pause, a partition, a stalled disk) ends this epoch for
        // us: the server goes back to the leader, which may give it to us again, but only
        // in a new epoch.
        if let Some(d) = l.holder.deadline()
            && now >= d
        {
            l.spent = true;
            l.fence.revoke();
            if let Some(s) = l.sup.take() {
                tokio::spawn(s.stop());
            }
            tracing::info!(node = %self.name, server = %name, epoch, "lease expired {} ms ago: fenced; handing the server back", now - d);
            let (raft, server, me, node) = (self.raft.clone(), name.to_string(), self.me, self.name.clone());
            tokio::spawn(async move {
                let r = raft
                    .propose(Request::Ownership {
                        server: server.clone(),
                        cmd: Command::Release { node: me, epoch, to: None },
                        report: None,
                    })
                    .await;
                if let Ok(Response::Stale(why)) = r {
                    tracing::info!(node = %node, server = %server, epoch, "epoch already over: {why}");
                }
            });
            return None;
        }
        // Renewals go out together (see `renew`): due after a renewal interval, and taken
        // along with a due one from half of it, so that an owner's servers fall into step.
        let since = now.saturating_sub(l.last_renew_sent);
        let mut renewal = None;
        if !l.renewing && since >= renew_every / 2 {
            let report = l.sup.as_ref().map_or_else(StreamReport::default, |s| {
                let st = s.state.borrow();
                StreamReport { flushed: st.flushed, server_lsn: st.server_lsn, last_wal: None }
            });
            renewal = Some((name.to_string(), epoch, report, since >= renew_every));
        }
        let may = l.holder.may_stream(now);
        match (&l.sup, may) {
            (Some(s), _) if s.epoch != epoch || s.is_finished() => {
                if let Some(s) = l.sup.take() {
                    tokio::spawn(s.stop());
                }
            }
            (None, true) => {
                l.sup = Some(Supervisor::start(
                    self.name.clone(),
                    &self.cfg.global,
                    &server_cfg,
                    epoch,
                    l.fence.clone(),
                    self.archive_kick.clone(),
                ));
            }
            _ => {}
        }
        renewal
    }

    /// Sends this pass's renewals, if one of them is due, as one Raft entry: one commit a
    /// renewal interval however many servers this node owns. The send time is taken before
    /// proposing; the leases run from it.
    fn renew(&mut self, renewable: Vec<Renewal>, now: Millis) {
        if !renewable.iter().any(|(.., due)| *due) {
            return;
        }
        let mut servers = Vec::with_capacity(renewable.len());
        let mut reqs = Vec::with_capacity(renewable.len());
        for (server, epoch, report, _) in renewable {
            if let Some(l) = self.locals.get_mut(&server) {
                l.renewing = true;
                l.last_renew_sent = now;
            }
            reqs.push(Request::Ownership {
                server: server.clone(),
                cmd: Command::Renew { node: self.me, epoch },
                report: Some(report),
            });
            servers.push((server, epoch));
        }
        let (raft, tx) = (self.raft.clone(), self.tx.clone());
        tokio::spawn(async move {
            let sent_at = mono_ms();
            let t = std::time::Instant::now();
            let r = raft.propose(Request::Batch(reqs)).await;
            let took_us = t.elapsed().as_micros() as u64;
            let oks: Vec<bool> = match r {
                Ok(Response::Batch(rs)) => rs.iter().map(|r| matches!(r, Response::Applied)).collect(),
                _ => Vec::new(),
            };
            let renewed = servers
                .into_iter()
                .enumerate()
                .map(|(i, (server, epoch))| (server, epoch, oks.get(i).copied().unwrap_or(false)))
                .collect();
            let _ = tx.send(Event::Renewed { renewed, sent_at, took_us });
        });
    }

    /// The leader's part: hand out servers whose owner is gone.
    fn lead(&mut self, state: &ClusterState, now: Millis) {
        let (leader, term) = self.raft.leader();
        if leader != Some(self.me) {
            self.assigner = None;
            return;
        }
        if self.assigner.as_ref().is_none_or(|(t, _)| *t != term) {
            tracing::info!(node = %self.name, term, "leading the cluster; owners keep their servers until their lease runs out as this node saw it");
            let mut a = Assigner::new(self.lease, self.margin, now);
            // The lease of an owner that stopped renewing runs from when this node last saw
            // its renewal, even as a follower: a failover that lost the leader too does not
            // wait a whole lease after the election.
            for (name, l) in &self.locals {
                a.inherit(name, l.seen.0, l.seen.1);
            }
            self.assigner = Some((term, a));
        }
        let voters = self.raft.voters();
        let mut by_name: Vec<(&String, &NodeId)> = voters.iter().map(|(id, n)| (n, id)).collect();
        by_name.sort();
        let everyone: Vec<NodeId> = by_name.into_iter().map(|(_, id)| *id).collect();
        let candidates: BTreeMap<&String, Vec<NodeId>> = state
            .servers
            .iter()
            .map(|(n, r)| {
                let c = if r.candidates.is_empty() {
                    everyone.clone()
                } else {
                    r.candidates.iter().copied().filter(|id| voters.contains_key(id)).collect()
                };
                (n, c)
            })
            .collect();
        let views: BTreeMap<String, ServerView<'_>> = state
            .servers
            .iter()
            .map(|(n, r)| (n.clone(), ServerView { ownership: &r.ownership, candidates: &candidates[n] }))
            .collect();
        let mut alive = self.raft.alive(Duration::from_millis(self.lease));
        alive.insert(self.me);
        let Some((_, a)) = self.assigner.as_mut() else { return };
        for (server, cmd) in a.decide(now, &views, &alive) {
            // One proposal per epoch while it is in flight (a tick comes before it applies).
            let next = state.servers.get(&server).map_or(1, |r| r.ownership.epoch + 1);
            if self.proposed.get(&server).is_some_and(|(e, at)| *e == next && now.saturating_sub(*at) < self.lease) {
                continue;
            }
            self.proposed.insert(server.clone(), (next, now));
            let raft = self.raft.clone();
            let node = self.name.clone();
            let prev: Ownership = state.servers.get(&server).map(|r| r.ownership.clone()).unwrap_or_default();
            tracing::info!(node = %node, server = %server, epoch = prev.epoch + 1, "assigning the server: {cmd:?} (owner was {:?})", prev.owner);
            tokio::spawn(async move {
                // Deposed meanwhile: the new leader decides for itself.
                let _ = raft.propose_as_leader(Request::Ownership { server, cmd, report: None }).await;
            });
        }
    }

    /// Declares the servers of our configuration (and our site) to the cluster.
    fn declare(&mut self, state: &ClusterState, now: Millis) {
        if state.sites.get(&self.me) != Some(&self.site)
            && (self.site_told == 0 || now.saturating_sub(self.site_told) > 5000)
        {
            self.site_told = now;
            let raft = self.raft.clone();
            let req = Request::Site { node: self.me, site: self.site.clone() };
            tokio::spawn(async move {
                let _ = raft.propose(req).await;
            });
        }
        for s in self.cfg.servers.values() {
            if !s.active() || !s.opts.streaming_archiver {
                continue;
            }
            let candidates: Vec<NodeId> =
                s.opts.owner_candidates.iter().map(|n| crate::cluster::types::node_id(n.as_str())).collect();
            if state.servers.get(&s.name).is_some_and(|r| r.candidates == candidates) {
                continue;
            }
            let (me, lease) = (self.me, self.lease);
            let l = self.locals.entry(s.name.clone()).or_insert_with(|| Local::new(me, lease, now));
            if l.last_declared != 0 && now.saturating_sub(l.last_declared) < 5000 {
                continue;
            }
            l.last_declared = now;
            let raft = self.raft.clone();
            let req = Request::Server { name: s.name.clone(), candidates };
            tokio::spawn(async move {
                let _ = raft.propose(req).await;
            });
        }
    }

    fn publish(&self, state: &ClusterState, now: Millis) {
        let voters = self.raft.voters();
        let name_of = |id: NodeId| voters.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
        let list = state
            .servers
            .iter()
            .map(|(n, r)| {
                let l = self.locals.get(n);
                let flushed = r.report.flushed;
                ServerStatus {
                    name: n.clone(),
                    owner: r.ownership.owner.map(name_of),
                    epoch: r.ownership.epoch,
                    lease_age_ms: r.ownership.owner.and(l.map(|l| now.saturating_sub(l.seen.1))),
                    streaming_here: l.and_then(|l| l.sup.as_ref()).is_some_and(|s| s.state.borrow().streaming),
                    flushed_lsn: crate::wal::Lsn(flushed).to_string(),
                    server_lsn: crate::wal::Lsn(r.report.server_lsn).to_string(),
                    lag_bytes: (r.report.server_lsn > 0).then(|| r.report.server_lsn.saturating_sub(flushed)),
                    last_wal: r.report.last_wal.clone(),
                    transfer_to: r.transfer_to.map(name_of),
                    candidates: r.candidates.iter().map(|c| name_of(*c)).collect(),
                }
            })
            .collect();
        self.status.send_replace(list);
    }

    /// SIGTERM: streaming stopped (durable, reported), leases handed back.
    async fn shutdown(mut self) {
        let mut releases = Vec::new();
        for (name, l) in std::mem::take(&mut self.locals) {
            if let Some(s) = l.sup {
                s.stop().await;
            }
            l.fence.revoke();
            if let Some(epoch) = l.holder.epoch() {
                releases.push((name, epoch));
            }
        }
        for (server, epoch) in releases {
            let r = tokio::time::timeout(
                Duration::from_secs(5),
                self.raft.propose(Request::Ownership {
                    server: server.clone(),
                    cmd: Command::Release { node: self.me, epoch, to: None },
                    report: None,
                }),
            )
            .await;
            match r {
                Ok(Ok(Response::Applied)) => {
                    tracing::info!(node = %self.name, server = %server, epoch, "lease handed back")
                }
                Ok(Ok(other)) => {
                    tracing::info!(node = %self.name, server = %server, epoch, "lease not handed back: {other:?}")
                }
                Ok(Err(e)) => tracing::warn!(node = %self.name, server = %server, epoch, "lease not handed back: {e}"),
                Err(_) => {
                    tracing::warn!(node = %self.name, server = %server, epoch, "lease not handed back within 5 s; it runs out by itself")
                }
            }
        }
    }
}
