//! Who streams each PostgreSQL server: ownership, epochs and leases, as pure state machines
//! driven by events and a clock passed in (milliseconds of the caller's monotonic clock).
//!
//! Three parts, each owned by a different actor:
//! - [`Ownership`]: the replicated record of one server, changed only by committed
//!   [`Command`]s, in log order, the same on every node.
//! - [`Holder`]: the owner's own view. It may stream only until its *deadline*: the send time
//!   of its last committed renewal plus the lease. Past it, it fences itself (stops
//!   streaming) whatever else happens, before anyone can be handed the server.
//! - [`Assigner`]: the Raft leader's decisions. It hands a server to another node only after
//!   lease + margin without a renewal *as the leader saw them applied*, and a new leader first
//!   waits a full lease + margin. An assignment names the renewal count it was decided on, so
//!   a renewal that slips in before it is applied cancels it.
//!
//! Why it is safe: a renewal is applied on the leader after it was sent, so the leader's
//! "last seen" is later than the owner's send time; the owner's deadline (send + lease, own
//! clock) therefore comes before the leader's earliest reassignment (seen + lease + margin,
//! leader's clock) as long as clocks drift apart by less than the margin over one lease.
//! The new owner streams only after its own first renewal commits.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A member of the cluster.
pub type NodeId = u64;

/// Milliseconds on one node's monotonic clock.
pub type Millis = u64;

/// The replicated ownership record of one server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ownership {
    pub owner: Option<NodeId>,
    /// Bumped at every change of owner; WAL and logs carry it.
    pub epoch: u64,
    /// Committed renewals in this epoch (what an assignment is conditioned on).
    pub renewals: u64,
}

/// A change proposed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// The owner extends its lease.
    Renew { node: NodeId, epoch: u64 },
    /// The leader hands the server to `node` as epoch `epoch`, provided nothing changed
    /// since it decided (`epoch` is the next one, `renewals` still as counted).
    Assign { node: NodeId, epoch: u64, renewals: u64 },
    /// The owner, having stopped streaming, gives the server to `to` (a planned transfer)
    /// or to nobody.
    Release { node: NodeId, epoch: u64, to: Option<NodeId> },
}

/// Why a committed command changed nothing (a stale proposal: normal, not an error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stale {
    #[error("node {node} is not the owner in epoch {epoch} (owner {owner:?}, epoch {current})")]
    NotOwner { node: NodeId, epoch: u64, owner: Option<NodeId>, current: u64 },
    #[error("assignment for epoch {epoch} decided on {renewals} renewals; now epoch {current}, {now} renewals")]
    Outdated { epoch: u64, renewals: u64, current: u64, now: u64 },
}

impl Ownership {
    /// Applies one committed command, in log order.
    pub fn apply(&mut self, cmd: &Command) -> Result<(), Stale> {
        match *cmd {
            Command::Renew { node, epoch } | Command::Release { node, epoch, .. }
                if self.owner != Some(node) || self.epoch != epoch =>
            {
                Err(Stale::NotOwner { node, epoch, owner: self.owner, current: self.epoch })
            }
            Command::Renew { .. } => {
                self.renewals += 1;
                Ok(())
            }
            Command::Release { to, .. } => {
                self.owner = to;
                self.epoch += 1;
                self.renewals = 0;
                Ok(())
            }
            Command::Assign { node, epoch, renewals } => {
                if epoch != self.epoch + 1 || renewals != self.renewals {
                    return Err(Stale::Outdated { epoch, renewals, current: self.epoch, now: self.renewals });
                }
                self.owner = Some(node);
                self.epoch = epoch;
                self.renewals = 0;
                Ok(())
            }
        }
    }
}

/// What a node holding (or hoping to hold) a server may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    node: NodeId,
    lease: Millis,
    /// The epoch this node owns, as last applied here.
    epoch: Option<u64>,
    /// Streaming is allowed strictly before this local time.
    deadline: Option<Millis>,
    /// Fenced for a hand-over: no renewal of this epoch counts any more.
    fenced: bool,
}

impl Holder {
    pub fn new(node: NodeId, lease: Millis) -> Holder {
        Holder { node, lease, epoch: None, deadline: None, fenced: false }
    }

    /// The epoch this node owns, if any.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// A committed command seen here (in log order): ownership gained or lost.
    pub fn observe(&mut self, after: &Ownership) {
        let mine = after.owner == Some(self.node);
        match (mine, self.epoch) {
            (true, Some(e)) if e == after.epoch => {}
            // A new epoch of ours: no lease until our own first renewal commits.
            (true, _) => {
                self.epoch = Some(after.epoch);
                self.deadline = None;
                self.fenced = false;
            }
            (false, _) => {
                self.epoch = None;
                self.deadline = None;
                self.fenced = false;
            }
        }
    }

    /// Our renewal for `epoch`, sent at local time `sent_at`, has committed.
    pub fn renewal_committed(&mut self, epoch: u64, sent_at: Millis) {
        if self.epoch == Some(epoch) && !self.fenced {
            let d = sent_at.saturating_add(self.lease);
            self.deadline = Some(self.deadline.map_or(d, |old| old.max(d)));
        }
    }

    /// May this node stream (and report a flush position) at local time `now`?
    /// Checked before every flush report, and first thing after any pause.
    pub fn may_stream(&self, now: Millis) -> bool {
        self.epoch.is_some() && self.deadline.is_some_and(|d| now < d)
    }

    /// The local time streaming must stop by, once a renewal of the current epoch committed.
    pub fn deadline(&self) -> Option<Millis> {
        self.epoch.and(self.deadline)
    }

    /// Time left on the lease at `now` (0 when fenced).
    pub fn lease_left(&self, now: Millis) -> Millis {
        if self.epoch.is_none() {
            return 0;
        }
        self.deadline.map_or(0, |d| d.saturating_sub(now))
    }

    /// A planned hand-over: stop streaming at once; the caller then proposes Release.
    pub fn fence(&mut self) {
        self.deadline = None;
        self.fenced = true;
    }
}

/// Per-server facts the leader decides on.
#[derive(Debug, Clone)]
pub struct ServerView<'a> {
    pub ownership: &'a Ownership,
    /// Nodes allowed to own the server, most preferred first.
    pub candidates: &'a [NodeId],
}

/// The Raft leader's reassignment logic; volatile, rebuilt at each election.
#[derive(Debug, Clone)]
pub struct Assigner {
    lease: Millis,
    margin: Millis,
    leader_since: Millis,
    /// Per server: (renewals count, epoch) last seen applied, and when (this node's clock).
    seen: BTreeMap<String, ((u64, u64), Millis)>,
}

impl Assigner {
    /// A leader elected at local time `now`: every owned server gets a full lease + margin
    /// from now, unless what this node saw before its election says less (`inherit`).
    pub fn new(lease: Millis, margin: Millis, now: Millis) -> Assigner {
        Assigner { lease, margin, leader_since: now, seen: BTreeMap::new() }
    }

    /// What this node saw as a follower: `key` = (renewals, epoch) of `server` first seen
    /// applied at `at` on this node's clock. Safe to count the lease from: a renewal is
    /// applied after it was sent, and an assignment is conditioned on the renewal count it
    /// was decided on, so one decided before a later renewal was applied here is refused.
    pub fn inherit(&mut self, server: &str, key: (u64, u64), at: Millis) {
        self.seen.insert(server.to_string(), (key, at.min(self.leader_since)));
    }

    /// Called whenever the leader applies a change to `server` (or looks at it): a change of
    /// renewal count or epoch restarts the server's clock.
    pub fn saw(&mut self, server: &str, o: &Ownership, now: Millis) {
        let key = (o.renewals, o.epoch);
        match self.seen.get(server) {
            Some((k, _)) if *k == key => {}
            _ => {
                self.seen.insert(server.to_string(), (key, now));
            }
        }
    }

    /// The assignments to propose at `now`, given who is alive (heard from recently).
    pub fn decide(
        &mut self,
        now: Millis,
        servers: &BTreeMap<String, ServerView<'_>>,
        alive: &BTreeSet<NodeId>,
    ) -> Vec<(String, Command)> {
        let mut out = Vec::new();
        for (name, v) in servers {
            let o = v.ownership;
            self.saw(name, o, now);
            let choose = |exclude: Option<NodeId>| {
                v.candidates.iter().copied().find(|n| alive.contains(n) && Some(*n) != exclude)
            };
            match o.owner {
                // Nobody streams it (never owned, or released after stopping): assign at once.
                None => {
                    if let Some(n) = choose(None) {
                        out.push((name.clone(), Command::Assign { node: n, epoch: o.epoch + 1, renewals: o.renewals }));
                    }
                }
                Some(owner) => {
                    // Seen just above: when this node first saw the current renewal count,
                    // as follower (inherited) or as leader (from its election at the earliest).
                    let since = self.seen.get(name).map_or(self.leader_since, |(_, t)| *t);
                    if now < since.saturating_add(self.lease + self.margin) {
                        continue;
                    }
                    // Expired: prefer another live candidate; the owner itself only if it
                    // is the one left (it must renew again in the new epoch before streaming).
                    if let Some(n) = choose(Some(owner)).or_else(|| choose(None)) {
                        out.push((name.clone(), Command::Assign { node: n, epoch: o.epoch + 1, renewals: o.renewals }));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
