//! The ownership rules, case by case, then a seeded randomized simulation of a cluster with
//! drifting clocks, paused processes, partitions, slow messages and leader changes, checking
//! that no two nodes ever stream one server at the same (real) time, and that someone streams
//! again once the faults stop. A failing seed is printed; `OWNERSHIP_SIM_SEED=<n>` replays it.

use super::*;

const LEASE: Millis = 5_000;
const MARGIN: Millis = 1_000;

fn owned(owner: NodeId, epoch: u64, renewals: u64) -> Ownership {
    Ownership { owner: Some(owner), epoch, renewals }
}

#[test]
fn commands_apply_only_to_the_state_they_were_decided_on() {
    let mut o = Ownership::default();
    assert!(o.apply(&Command::Renew { node: 1, epoch: 0 }).is_err(), "nobody owns it yet");
    o.apply(&Command::Assign { node: 1, epoch: 1, renewals: 0 }).unwrap();
    assert_eq!(o, owned(1, 1, 0));
    // The same decision arriving twice: the second is stale.
    assert!(o.apply(&Command::Assign { node: 1, epoch: 1, renewals: 0 }).is_err());
    o.apply(&Command::Renew { node: 1, epoch: 1 }).unwrap();
    assert_eq!(o.renewals, 1);
    // Decided before that renewal: cancelled by it.
    let e = o.apply(&Command::Assign { node: 2, epoch: 2, renewals: 0 }).unwrap_err();
    assert!(matches!(e, Stale::Outdated { .. }), "{e}");
    assert!(o.apply(&Command::Renew { node: 2, epoch: 1 }).is_err(), "not the owner");
    assert!(o.apply(&Command::Renew { node: 1, epoch: 0 }).is_err(), "an old epoch");
    o.apply(&Command::Assign { node: 2, epoch: 2, renewals: 1 }).unwrap();
    assert_eq!(o, owned(2, 2, 0));
    assert!(o.apply(&Command::Release { node: 1, epoch: 2, to: None }).is_err(), "only the owner releases");
    o.apply(&Command::Release { node: 2, epoch: 2, to: Some(3) }).unwrap();
    assert_eq!(o, owned(3, 3, 0), "a planned transfer is a new epoch");
    o.apply(&Command::Release { node: 3, epoch: 3, to: None }).unwrap();
    assert_eq!(o, Ownership { owner: None, epoch: 4, renewals: 0 });
}

#[test]
fn a_holder_streams_only_between_its_first_committed_renewal_and_its_deadline() {
    let mut h = Holder::new(1, LEASE);
    assert!(!h.may_stream(0));
    h.observe(&owned(1, 1, 0));
    assert_eq!(h.epoch(), Some(1));
    assert!(!h.may_stream(10), "owner without a committed renewal");
    h.renewal_committed(1, 100);
    assert!(h.may_stream(100) && h.may_stream(100 + LEASE - 1));
    assert!(!h.may_stream(100 + LEASE), "fenced at send time + lease");
    assert_eq!(h.lease_left(1_100), LEASE - 1_000);
    // An older renewal committing late does not shorten the lease; a stale epoch is ignored.
    h.renewal_committed(1, 2_000);
    h.renewal_committed(1, 1_000);
    assert!(h.may_stream(2_000 + LEASE - 1));
    h.renewal_committed(0, 9_000);
    assert!(!h.may_stream(2_000 + LEASE));
    // Renewals do not reset the lease; a new epoch of ours does, until it is renewed.
    h.observe(&owned(1, 1, 5));
    assert!(h.may_stream(3_000));
    h.observe(&owned(1, 2, 0));
    assert!(!h.may_stream(3_000));
    h.observe(&owned(2, 3, 0));
    assert_eq!(h.epoch(), None);
    h.renewal_committed(2, 3_000);
    assert!(!h.may_stream(3_001), "a lost epoch cannot be renewed");
    h.observe(&owned(1, 4, 0));
    h.renewal_committed(4, 4_000);
    h.fence();
    assert!(!h.may_stream(4_001), "fenced for a hand-over");
    h.renewal_committed(4, 4_002);
    assert!(!h.may_stream(4_003), "a renewal still in flight when fenced does not re-arm the epoch");
    h.observe(&owned(1, 5, 0));
    h.renewal_committed(5, 5_000);
    assert!(h.may_stream(5_001), "a new epoch is a new lease");
}

#[test]
fn the_leader_assigns_free_servers_at_once_and_owned_ones_only_after_lease_and_margin() {
    let candidates = [2, 1, 3];
    let alive: BTreeSet<NodeId> = [1, 2, 3].into();
    let decide = |a: &mut Assigner, now, o: &Ownership, alive: &BTreeSet<NodeId>| {
        let view: BTreeMap<String, ServerView<'_>> =
            [("pg".to_string(), ServerView { ownership: o, candidates: &candidates })].into();
        a.decide(now, &view, alive)
    };
    let mut a = Assigner::new(LEASE, MARGIN, 1_000);
    let free = Ownership::default();
    assert_eq!(
        decide(&mut a, 1_000, &free, &alive),
        [("pg".into(), Command::Assign { node: 2, epoch: 1, renewals: 0 })]
    );
    let down: BTreeSet<NodeId> = [1, 3].into();
    assert_eq!(decide(&mut a, 1_000, &free, &down)[0].1, Command::Assign { node: 1, epoch: 1, renewals: 0 });
    assert!(decide(&mut a, 1_000, &free, &BTreeSet::new()).is_empty(), "nobody alive");

    // Owned by 2: a new leader waits a full lease + margin from its election.
    let mut a = Assigner::new(LEASE, MARGIN, 1_000);
    let o = owned(2, 1, 7);
    assert!(decide(&mut a, 1_000, &o, &down).is_empty());
    assert!(decide(&mut a, 1_000 + LEASE + MARGIN - 1, &o, &down).is_empty());
    assert_eq!(
        decide(&mut a, 1_000 + LEASE + MARGIN, &o, &down),
        [("pg".into(), Command::Assign { node: 1, epoch: 2, renewals: 7 })]
    );
    // A renewal seen restarts the wait.
    let o = owned(2, 1, 8);
    let t = 20_000;
    assert!(decide(&mut a, t, &o, &down).is_empty());
    assert!(decide(&mut a, t + LEASE + MARGIN - 1, &o, &down).is_empty());
    assert_eq!(decide(&mut a, t + LEASE + MARGIN, &o, &down)[0].1, Command::Assign { node: 1, epoch: 2, renewals: 8 });
    // The expired owner gets it back only if it is the one candidate alive.
    let only_owner: BTreeSet<NodeId> = [2].into();
    assert_eq!(
        decide(&mut a, t + LEASE + MARGIN, &o, &only_owner)[0].1,
        Command::Assign { node: 2, epoch: 2, renewals: 8 }
    );
}

#[test]
fn a_new_leader_counts_from_what_it_saw_as_follower_only_for_the_same_renewal() {
    let candidates = [2, 1, 3];
    let down: BTreeSet<NodeId> = [1, 3].into();
    let decide = |a: &mut Assigner, now, o: &Ownership| {
        let view: BTreeMap<String, ServerView<'_>> =
            [("pg".to_string(), ServerView { ownership: o, candidates: &candidates })].into();
        a.decide(now, &view, &down)
    };
    let o = owned(2, 1, 7);
    // Renewal 7 of epoch 1 seen at 400 as a follower, elected at 1 000.
    let mut a = Assigner::new(LEASE, MARGIN, 1_000);
    a.inherit("pg", (7, 1), 400);
    assert!(decide(&mut a, 400 + LEASE + MARGIN - 1, &o).is_empty());
    assert_eq!(decide(&mut a, 400 + LEASE + MARGIN, &o)[0].1, Command::Assign { node: 1, epoch: 2, renewals: 7 });
    // Seen "after" the election (a clock that cannot be): never later than counting from it.
    let mut a = Assigner::new(LEASE, MARGIN, 1_000);
    a.inherit("pg", (7, 1), 5_000);
    assert_eq!(decide(&mut a, 1_000 + LEASE + MARGIN, &o).len(), 1);
    // What it saw was an older renewal: the current one restarts the clock at election.
    let mut a = Assigner::new(LEASE, MARGIN, 1_000);
    a.inherit("pg", (6, 1), 400);
    assert!(decide(&mut a, 1_000, &o).is_empty());
    assert!(decide(&mut a, 1_000 + LEASE + MARGIN - 1, &o).is_empty());
    assert_eq!(decide(&mut a, 1_000 + LEASE + MARGIN, &o).len(), 1);
    // Another epoch with the same count: not the same renewal either.
    let mut a = Assigner::new(LEASE, MARGIN, 1_000);
    a.inherit("pg", (7, 0), 400);
    assert!(decide(&mut a, 1_000 + LEASE + MARGIN - 1, &o).is_empty());
}

/// splitmix64: small, seedable, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() as f64 / u64::MAX as f64) < p
    }
}

/// A commit heard by a node: (deliver at, state after it, our accepted renewal (epoch, sent at)).
type Notice = (u64, Ownership, Option<(u64, Millis)>);

struct SimNode {
    /// Local clock: offset + real × rate.
    offset: u64,
    rate: f64,
    holder: Holder,
    paused_until: u64,
    cut_until: u64,
    next_renew: Millis,
    inbox: std::collections::VecDeque<Notice>,
    /// (renewals, epoch) and when (local clock) this node first saw it: what it brings
    /// into a leadership, as the node's driver does.
    seen: Option<((u64, u64), Millis)>,
}

impl SimNode {
    fn local(&self, t: u64) -> Millis {
        self.offset + (t as f64 * self.rate) as u64
    }
    fn up(&self, t: u64) -> bool {
        t >= self.paused_until && t >= self.cut_until
    }
}

/// One run; Err describes the first violation.
fn simulate(seed: u64) -> Result<u64, String> {
    const TICK: u64 = 10;
    const FAULTY_UNTIL: u64 = 120_000;
    const END: u64 = FAULTY_UNTIL + 4 * (LEASE + MARGIN);
    let mut rng = Rng(seed);
    let n = if rng.chance(0.5) { 3 } else { 5 };
    let candidates: Vec<NodeId> = (0..n).collect();
    let mut nodes: Vec<SimNode> = (0..n)
        .map(|i| SimNode {
            offset: rng.range(0, 1_000_000),
            // ±0.2 %: over a lease that is 10 ms, far inside the margin.
            rate: 1.0 + (rng.range(0, 4_000) as f64 - 2_000.0) / 1_000_000.0,
            holder: Holder::new(i, LEASE),
            paused_until: 0,
            cut_until: 0,
            next_renew: 0,
            inbox: Default::default(),
            seen: None,
        })
        .collect();
    let mut truth = Ownership::default();
    // (arrive at the log, proposer, command, proposer's local send time, proposer's leader term)
    let mut to_log: Vec<(u64, NodeId, Command, Millis, Option<u64>)> = Vec::new();
    let mut leader: Option<(NodeId, u64, Assigner)> = None;
    let mut term = 0u64;
    let mut leader_lost_at: Option<u64> = Some(0);
    let mut heard: Vec<u64> = vec![0; n as usize];
    let mut streamed_at_end = false;
    let mut t = 0;
    while t <= END {
        let faulty = t < FAULTY_UNTIL;
        // Faults: now and then anyone; more often the owner, just after it renewed.
        let owner = truth.owner;
        for (i, node) in nodes.iter_mut().enumerate() {
            let target = if owner == Some(i as u64) { 0.002 } else { 0.0005 };
            if faulty && node.up(t) && rng.chance(target) {
                node.paused_until = t + rng.range(100, 3 * LEASE);
            }
            if faulty && node.up(t) && rng.chance(target) {
                node.cut_until = t + rng.range(100, 3 * LEASE);
            }
            if node.up(t) && t % 200 == (i as u64 * TICK) % 200 {
                heard[i] = t;
            }
        }
        // Leadership: lost when the leader is paused or cut; re-elected among the up nodes.
        if let Some((l, _, _)) = &leader
            && (!nodes[*l as usize].up(t) || (faulty && rng.chance(0.0002)))
        {
            leader = None;
            leader_lost_at = Some(t);
        }
        let up: Vec<NodeId> = (0..n).filter(|i| nodes[*i as usize].up(t)).collect();
        if leader.is_none() && leader_lost_at.is_some_and(|at| t >= at + 1_000) && !up.is_empty() {
            let l = up[rng.range(0, up.len() as u64 - 1) as usize];
            term += 1;
            let now = nodes[l as usize].local(t);
            let mut assigner = Assigner::new(LEASE, MARGIN, now);
            if let Some((key, at)) = nodes[l as usize].seen {
                assigner.inherit("pg", key, at);
            }
            leader = Some((l, term, assigner));
            leader_lost_at = None;
        }
        // Proposals reaching the log: only with a leader, and only the current term's
        // assignments (an old leader's are refused, as Raft refuses a stale term).
        to_log.sort_by_key(|p| p.0);
        let due: Vec<_> = to_log.iter().filter(|p| p.0 <= t).cloned().collect();
        to_log.retain(|p| p.0 > t);
        for (_, from, cmd, sent_at, from_term) in due {
            let Some((l, lterm, assigner)) = &mut leader else { continue };
            if from_term.is_some_and(|ft| ft != *lterm) || !nodes[from as usize].up(t) && from_term.is_none() {
                continue;
            }
            let accepted = truth.apply(&cmd).is_ok();
            let lnow = nodes[*l as usize].local(t);
            assigner.saw("pg", &truth, lnow);
            for (i, node) in nodes.iter_mut().enumerate() {
                let base = node.inbox.back().map_or(t, |m| m.0).max(t).max(node.cut_until);
                let mine = match cmd {
                    Command::Renew { node: who, epoch } if accepted && who == i as u64 => Some((epoch, sent_at)),
                    _ => None,
                };
                // Now and then a node hears of a commit late (a slow link, a busy process).
                let delay = if faulty && rng.chance(0.1) { rng.range(300, 3_000) } else { rng.range(1, 300) };
                node.inbox.push_back((base + delay, truth.clone(), mine));
            }
        }
        // The leader decides every 100 ms.
        if let Some((l, lterm, assigner)) = &mut leader
            && t % 100 == 0
        {
            let lnow = nodes[*l as usize].local(t);
            let alive: BTreeSet<NodeId> = (0..n).filter(|i| t.saturating_sub(heard[*i as usize]) < LEASE).collect();
            let view: BTreeMap<String, ServerView<'_>> =
                [("pg".to_string(), ServerView { ownership: &truth, candidates: &candidates })].into();
            for (_, cmd) in assigner.decide(lnow, &view, &alive) {
                to_log.push((t + rng.range(1, 300), *l, cmd, lnow, Some(*lterm)));
            }
        }
        // The nodes: read what committed, renew, and stream if the lease allows.
        let mut streaming = Vec::new();
        for (i, node) in nodes.iter_mut().enumerate() {
            if t < node.paused_until {
                continue;
            }
            let now = node.local(t);
            while node.inbox.front().is_some_and(|m| m.0 <= t) {
                let Some((_, state, mine)) = node.inbox.pop_front() else { break };
                node.holder.observe(&state);
                let key = (state.renewals, state.epoch);
                if node.seen.is_none_or(|(k, _)| k != key) {
                    node.seen = Some((key, now));
                }
                if let Some((epoch, sent_at)) = mine {
                    node.holder.renewal_committed(epoch, sent_at);
                }
            }
            if let Some(epoch) = node.holder.epoch()
                && now >= node.next_renew
            {
                node.next_renew = now + 1_000;
                if node.up(t) {
                    to_log.push((t + rng.range(1, 300), i as u64, Command::Renew { node: i as u64, epoch }, now, None));
                }
            }
            if node.holder.may_stream(now) {
                streaming.push(i);
            }
        }
        if streaming.len() > 1 {
            return Err(format!("at {t} ms nodes {streaming:?} stream at once; truth {truth:?}"));
        }
        if t == END {
            streamed_at_end = !streaming.is_empty();
        }
        t += TICK;
    }
    if !streamed_at_end {
        return Err(format!("nobody streams {} ms after the faults stopped; truth {truth:?}", END - FAULTY_UNTIL));
    }
    Ok(truth.epoch)
}

#[test]
fn never_two_streamers_in_a_seeded_simulation() {
    if let Some(seed) = std::env::var("OWNERSHIP_SIM_SEED").ok().and_then(|s| s.parse::<u64>().ok()) {
        simulate(seed).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        return;
    }
    let seeds: u64 = std::env::var("OWNERSHIP_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(500);
    // A different range each run; the failing seed is printed for replay.
    let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) << 16;
    let mut epochs = 0;
    for seed in base..base + seeds {
        match simulate(seed) {
            Ok(e) => epochs += e,
            Err(e) => panic!("seed {seed} (replay: OWNERSHIP_SIM_SEED={seed}): {e}"),
        }
    }
    // The faults must actually move ownership around, or the check above proves little.
    assert!(epochs >= 3 * seeds, "{seeds} runs gave only {epochs} epochs: the faults are too gentle");
}
