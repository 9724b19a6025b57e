//! The cluster of `barman node run` processes: (a) failover after SIGKILL of the owner of `pg`
//! under a light synchronous pgbench load, runs alternating between an owner that leads the
//! Raft group and one that does not; (b) the commit latency of lease renewals through Raft,
//! from the owner's metrics endpoint, against an fsync'd append and TCP round trips measured
//! alongside; (c) memory and CPU of idle nodes with 1 and with 10 servers each.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use cluster_tests::fixture::{ClusterOptions, TestCluster, node_name};
use cluster_tests::nodes::{check_intervals, mono_ms, streaming_intervals};
use cluster_tests::util::{is_root, pg_bin, tail, unique_subdir};

use crate::Ctx;
use crate::measure::median;
use crate::report::{Table, fmt_ms, verdict};

/// Raft's election timeout range (node/src/node/mod.rs), ms.
const ELECTION_MS: (f64, f64) = (750.0, 1500.0);
/// What openraft 0.9 adds to a follower's election timeout while it has a committed vote (a
/// known leader): `election_timeout_max` (its `leader_lease`, core/raft_core.rs), ms.
const VOTE_LEASE_MS: f64 = 1500.0;
/// pgbench's rate: light load, every commit waiting for the owner's flush.
const PGBENCH_TPS: &str = "20";
/// The goals for an idle node with 10 servers.
const GOAL_RSS_MIB: f64 = 30.0;
const GOAL_CPU_PCT: f64 = 1.0;

/// What a lease implies, as the node derives it (node/src/node/driver.rs), in ms.
#[derive(Debug, Clone, Copy)]
struct LeaseTimes {
    lease: f64,
    margin: f64,
    renew: f64,
}

impl LeaseTimes {
    fn of(lease_s: f64) -> LeaseTimes {
        let lease = lease_s * 1000.0;
        LeaseTimes { lease, margin: (lease / 4.0).max(250.0), renew: (lease / 3.0).clamp(100.0, 1000.0) }
    }

    /// Upper bound: the leader reassigns lease + margin after the last renewal it saw (at most
    /// a renewal interval before the kill, which covers the commits that follow); a lost
    /// leader adds at worst an election and a full lease + margin (when the new leader had not
    /// yet applied the last renewal at its election). `vote_lease`: with openraft's wait
    /// before an election.
    fn bound(&self, leader_lost: bool, vote_lease: bool) -> f64 {
        let base = self.lease + self.margin + self.renew;
        match (leader_lost, vote_lease) {
            (false, _) => base,
            (true, false) => ELECTION_MS.1 + base,
            (true, true) => VOTE_LEASE_MS + ELECTION_MS.1 + base,
        }
    }

    /// The waits alone, without commits and connections (openraft's vote lease included): "lo–hi".
    fn waits(&self, leader_lost: bool) -> String {
        let (lo, hi) = if leader_lost {
            // The new leader counts the lease from the last renewal it saw as a follower:
            // the election and the lease run at once, the longer one decides.
            let expiry = (self.lease + self.margin - self.renew, self.lease + self.margin);
            (expiry.0.max(VOTE_LEASE_MS + ELECTION_MS.0), expiry.1.max(VOTE_LEASE_MS + ELECTION_MS.1))
        } else {
            (self.lease + self.margin - self.renew, self.lease + self.margin)
        };
        format!("{lo:.0}–{hi:.0}")
    }
}

/// Sub-millisecond figures with three decimals, the rest as the report does.
fn fmt_fine(v: f64) -> String {
    if v < 1.0 { format!("{v:.3}") } else { fmt_ms(v) }
}

/// A background process (pgbench, the psql watcher), killed and reaped on drop.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (PostgreSQL's time in Unix seconds, the pids of our walsenders it listed then).
type Observations = Vec<(f64, Vec<u32>)>;

/// Our walsenders for `pg` as PostgreSQL lists them every 20 ms (`\watch`), each observation
/// stamped with PostgreSQL's clock (Unix seconds): (time, walsender pids).
struct WalsenderTimes {
    _psql: Background,
    _stdin: ChildStdin,
    seen: Arc<Mutex<Observations>>,
}

impl WalsenderTimes {
    fn start(c: &TestCluster) -> Result<WalsenderTimes> {
        let mut child = Command::new(pg_bin("psql"))
            .args(["-X", "-A", "-t", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-p"])
            .arg(c.pg.port().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting psql for the walsender watch")?;
        let mut stdin = child.stdin.take().context("psql stdin")?;
        let stdout = child.stdout.take().context("psql stdout")?;
        let psql = Background(child);
        writeln!(
            stdin,
            "SELECT extract(epoch FROM clock_timestamp()) || ' ' || coalesce(string_agg(pid::text, ','), '') \
             FROM pg_stat_replication WHERE application_name = 'barman_pg' AND state = 'streaming' \\watch 0.02"
        )?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let line = line.trim();
                let (t, pids) = line.split_once(' ').unwrap_or((line, ""));
                let Ok(t) = t.parse::<f64>() else { continue };
                let pids = pids.split(',').filter_map(|p| p.parse().ok()).collect();
                sink.lock().unwrap_or_else(|e| e.into_inner()).push((t, pids));
            }
        });
        Ok(WalsenderTimes { _psql: psql, _stdin: stdin, seen })
    }

    /// Forgets what was seen before `t` (Unix seconds).
    fn forget_before(&self, t: f64) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).retain(|(at, _)| *at >= t);
    }

    /// When PostgreSQL first showed, at or after `from`, exactly one walsender other than `old`.
    fn first_new(&self, from: f64, old: u32) -> Option<f64> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter().find(|(t, p)| *t >= from && p.len() == 1 && p[0] != old).map(|(t, _)| *t)
    }
}

fn unix_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The RFC 3339 time a node log line starts with, as Unix seconds.
fn line_time(line: &str) -> Option<f64> {
    let t = chrono::DateTime::parse_from_rfc3339(line.split_whitespace().next()?).ok()?;
    Some(t.timestamp_micros() as f64 / 1e6)
}

/// Leader and owner of `pg` as one node sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct View {
    leader: usize,
    owner: usize,
    epoch: u64,
}

/// Node `i`'s view, and whether it streams `pg` itself.
fn view(c: &TestCluster, i: usize) -> Option<(View, bool)> {
    let v = c.status(i).ok()?;
    let index = |name: &str| (0..c.nodes.len()).find(|k| node_name(*k) == name);
    let s = v["servers"].as_array()?.iter().find(|s| s["name"] == "pg")?;
    let view = View {
        leader: index(v["leader"].as_str()?)?,
        owner: index(s["owner"].as_str()?)?,
        epoch: s["epoch"].as_u64()?,
    };
    Some((view, s["streaming_here"] == true))
}

/// The view every node shares, once all run, agree, and the owner says it streams.
fn agreed(c: &mut TestCluster) -> Option<View> {
    let mut shared: Option<View> = None;
    let mut streaming = false;
    for i in 0..c.nodes.len() {
        if !c.nodes[i].is_running() {
            return None;
        }
        let (v, here) = view(c, i)?;
        if shared.is_some_and(|s| s != v) {
            return None;
        }
        streaming |= here && v.owner == i;
        shared = Some(v);
    }
    shared.filter(|_| streaming)
}

/// Waits until the nodes agree and the owner streams alone, then two leases more (renewals
/// seen by the leader, the restarted node caught up).
fn settle(c: &mut TestCluster, lease_s: f64) -> Result<View> {
    c.wait(Duration::from_secs(60), "the nodes to agree on leader and owner, the owner streaming alone", |c| {
        agreed(c).is_some() && c.walsenders().unwrap_or(0) == 1
    })?;
    thread::sleep(Duration::from_secs_f64((2.0 * lease_s).max(3.0)));
    let v = agreed(c).context("the nodes disagree on leader or owner after settling")?;
    let n = c.walsenders()?;
    if n != 1 {
        bail!("{n} walsenders of ours after settling");
    }
    Ok(v)
}

/// Milliseconds after the kill, from the surviving nodes' log times.
#[derive(Debug, Clone, Copy, Default)]
struct Steps {
    elected: Option<f64>,
    assigned: Option<f64>,
    owned: Option<f64>,
}

impl Steps {
    fn from_logs(logs: &[(String, String)], killed: &str, kill_wall: f64) -> Steps {
        let mut s = Steps::default();
        let first = |slot: &mut Option<f64>, t: f64| {
            if slot.is_none_or(|x| t < x) {
                *slot = Some(t);
            }
        };
        for (_, log) in logs.iter().filter(|(n, _)| n != killed) {
            for line in log.lines() {
                let Some(t) = line_time(line).map(|t| (t - kill_wall) * 1000.0).filter(|t| *t >= 0.0) else { continue };
                let pg = line.split_whitespace().any(|w| w == "server=pg");
                if line.contains("leading the cluster") {
                    first(&mut s.elected, t);
                } else if pg && line.contains("assigning the server") {
                    first(&mut s.assigned, t);
                } else if pg && line.contains("this node owns the server now") {
                    first(&mut s.owned, t);
                }
            }
        }
        s
    }
}

/// One failover.
#[derive(Debug, Clone)]
struct Failover {
    leader_lost: bool,
    /// Kill → the new owner's `streaming started` (CLOCK_MONOTONIC, both sides), ms.
    to_started: f64,
    /// Kill → PostgreSQL lists the new walsender (its clock, 20 ms polls), ms.
    to_walsender: f64,
    steps: Steps,
}

impl Failover {
    fn describe(&self) -> String {
        let o = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.0}"));
        format!(
            "leader elected +{}, assigned +{}, new owner knows +{}, streaming started +{:.0}, walsender +{:.0} ms",
            o(self.steps.elected),
            o(self.steps.assigned),
            o(self.steps.owned),
            self.to_started,
            self.to_walsender
        )
    }
}

/// One run: the owner placed on the leader or off it, settled, SIGKILLed, timed, restarted.
fn one_failover(c: &mut TestCluster, watch: &WalsenderTimes, want_leader: bool, lease_s: f64) -> Result<Failover> {
    let mut v = settle(c, lease_s)?;
    if (v.owner == v.leader) != want_leader {
        let to = if want_leader { v.leader } else { (0..c.nodes.len()).find(|k| *k != v.leader).unwrap_or(0) };
        c.barman(v.owner, &["cluster", "transfer", "pg", &node_name(to)])?;
        v = settle(c, lease_s)?;
    }
    let old: u32 = c.pg.psql("SELECT pid FROM pg_stat_replication WHERE application_name = 'barman_pg'")?.parse()?;
    // A kill at a random point of the renewal cycle, not in step with the settling above.
    let renew_ms = LeaseTimes::of(lease_s).renew as u32;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    thread::sleep(Duration::from_millis(u64::from(nanos % renew_ms)));
    let killed = node_name(v.owner);
    let (kill_wall, kill_mono) = (unix_secs(), mono_ms());
    watch.forget_before(kill_wall - 1.0);
    c.nodes[v.owner].kill()?;
    let until = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        if let Some(t) = watch.first_new(kill_wall, old) {
            break t;
        }
        if Instant::now() > until {
            bail!("no new walsender within 60 s of killing {killed}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    // `cluster status` names the new owner (checked; its log says when it knew).
    let after = (0..c.nodes.len()).filter(|i| *i != v.owner).find_map(|i| view(c, i)).map(|(v, _)| v);
    if !after.is_some_and(|a| a.owner != v.owner && a.epoch > v.epoch) {
        bail!("a new walsender, but cluster status shows {after:?} (before the kill: {v:?})");
    }
    let logs = c.logs();
    let started = streaming_intervals(&logs)
        .map_err(anyhow::Error::msg)?
        .iter()
        .filter(|i| i.server == "pg" && i.epoch > v.epoch && i.start_ms >= kill_mono)
        .map(|i| i.start_ms)
        .min()
        .context("no `streaming started` line after the kill")?;
    let steps = Steps::from_logs(&logs, &killed, kill_wall);
    c.nodes[v.owner].restart()?;
    Ok(Failover {
        leader_lost: v.owner == v.leader,
        to_started: (started - kill_mono) as f64,
        to_walsender: (seen - kill_wall) * 1000.0,
        steps,
    })
}

/// Nearest-rank percentile; NaN when empty.
fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1]
}

/// Renewal latency quantiles from a node's metrics endpoint.
#[derive(Debug, Clone, Default)]
struct Latency {
    count: f64,
    p50: f64,
    p90: f64,
    p99: f64,
}

fn metrics_text(c: &TestCluster, i: usize) -> Result<String> {
    let addr = c.nodes[i].spec().metrics.clone().context("the node has no metrics endpoint")?;
    // The endpoint listens on the loopback of the node's own site.
    let get = move || -> Result<String> {
        let mut s = TcpStream::connect(&addr).with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    };
    match &c.sites {
        Some(sites) => sites.in_ns(i, get)?,
        None => get(),
    }
}

fn renewal_latency(c: &TestCluster, i: usize) -> Result<Latency> {
    let text = metrics_text(c, i)?;
    let mut l = Latency::default();
    for line in text.lines().filter(|l| l.starts_with("barman_raft_commit_seconds")) {
        let Some((key, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        if key.starts_with("barman_raft_commit_seconds_count") {
            l.count = value;
        } else if key.contains("quantile=\"0.5\"") {
            l.p50 = value * 1000.0;
        } else if key.contains("quantile=\"0.9\"") {
            l.p90 = value * 1000.0;
        } else if key.contains("quantile=\"0.99\"") {
            l.p99 = value * 1000.0;
        }
    }
    if l.count == 0.0 {
        bail!("{} reports no renewal latency:\n{}", node_name(i), tail(&text, 40));
    }
    Ok(l)
}

/// `n` appends of 100 bytes to a file in `dir`, each followed by fsync, ms each.
fn fsync_appends(dir: &Path, n: usize) -> Result<Vec<f64>> {
    let path = dir.join("fsync-probe");
    let mut f = fs::OpenOptions::new().create(true).append(true).open(&path)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&[b'x'; 100])?;
        f.sync_all()?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    drop(f);
    fs::remove_file(&path)?;
    Ok(out)
}

/// `n` round trips of 100 bytes over TCP (no Nagle) to an echo on `listener`, ms each.
fn round_trips(
    listener: TcpListener,
    connect: impl FnOnce(SocketAddr) -> Result<TcpStream>,
    n: usize,
) -> Result<Vec<f64>> {
    let addr = listener.local_addr()?;
    let echo = thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; 100];
        while s.read_exact(&mut buf).is_ok() {
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let mut s = connect(addr)?;
    s.set_nodelay(true)?;
    let mut buf = [7u8; 100];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&buf)?;
        s.read_exact(&mut buf)?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    drop(s);
    echo.join().map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    Ok(out)
}

fn latency_row(what: &str, l: &Latency) -> Vec<String> {
    vec![what.to_string(), format!("{:.0}", l.count), fmt_fine(l.p50), fmt_fine(l.p90), fmt_fine(l.p99)]
}

fn sample_row(what: &str, v: &[f64]) -> Vec<String> {
    let q = |q| fmt_fine(percentile(v, q));
    vec![what.to_string(), v.len().to_string(), fmt_fine(median(v.to_vec())), q(0.9), q(0.99)]
}

/// pgbench at a low fixed rate for as long as it lives (killed on drop).
fn light_pgbench(c: &TestCluster) -> Result<Background> {
    let log = fs::File::create(c.dir.join("pgbench.log"))?;
    let child = Command::new(pg_bin("pgbench"))
        .args(["-h", "127.0.0.1", "-U", "postgres", "-p", &c.pg.port().to_string()])
        .args(["-n", "-c", "2", "-j", "1", "-R", PGBENCH_TPS, "-T", "86400", "postgres"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting pgbench")?;
    Ok(Background(child))
}

/// What one lease's cluster gave.
struct LeaseResult {
    lease_s: f64,
    runs: Vec<Failover>,
    notes: Vec<String>,
}

/// A cluster with lease `lease_s`: renewal latencies first when `latency` is given (a steady
/// period with the owner leading, one with it following), then the failover runs.
fn failovers(ctx: &Ctx, lease_s: f64, latency: Option<&mut Table>) -> Result<LeaseResult> {
    let (runs, steady) = (ctx.counts.failover_runs, Duration::from_secs(ctx.counts.cluster_steady_secs));
    let dir = unique_subdir(&ctx.scratch, "cluster")?;
    let opts = ClusterOptions {
        nodes: 3,
        sites: is_root(),
        lease: lease_s,
        synchronous: true,
        extra_servers: 0,
        metrics: true,
        archiving: false,
    };
    progress!("cluster: lease {lease_s} s: starting PostgreSQL and 3 nodes ...");
    let mut c = TestCluster::start(&dir, opts)?;
    c.pg.pgbench_init(1)?;
    let mut pgbench = light_pgbench(&c)?;
    let mut notes = Vec::new();
    if let Some(table) = latency {
        for pass in 0..2 {
            let v = settle(&mut c, lease_s)?;
            if pass == 1 {
                // The other placement: onto the leader, or off it.
                let to = if v.owner == v.leader { (v.leader + 1) % c.nodes.len() } else { v.leader };
                c.barman(v.owner, &["cluster", "transfer", "pg", &node_name(to)])?;
                settle(&mut c, lease_s)?;
            }
            progress!("cluster: renewals through Raft for {} s ...", steady.as_secs());
            thread::sleep(steady);
            let v = agreed(&mut c).context("no agreed owner after the steady period")?;
            let l = renewal_latency(&c, v.owner)?;
            let role = if v.owner == v.leader { "the Raft leader" } else { "a follower (forwarded to the leader)" };
            table.row(latency_row(&format!("renewal of `pg`, lease {lease_s} s, owner is {role}"), &l));
        }
        let fsync = fsync_appends(&c.dir, 1000)?;
        table.row(sample_row("reference: 100-byte append + fsync, same filesystem", &fsync));
        let lo = round_trips(TcpListener::bind("127.0.0.1:0")?, |a| Ok(TcpStream::connect(a)?), 1000)?;
        table.row(sample_row("reference: TCP round trip of 100 bytes, loopback", &lo));
        if let Some(sites) = &c.sites {
            let bind = (sites.cluster_addr(1), 0u16);
            let listener = sites.in_ns(1, || TcpListener::bind(bind))??;
            let connect = |a: SocketAddr| -> Result<TcpStream> { Ok(sites.in_ns(0, || TcpStream::connect(a))??) };
            let cross = round_trips(listener, connect, 1000)?;
            table.row(sample_row("reference: TCP round trip of 100 bytes, site 1 → site 2 (bridge)", &cross));
        }
    }
    let watch = WalsenderTimes::start(&c)?;
    let mut out = Vec::new();
    let mut failed = 0;
    for k in 0..runs {
        let want_leader = k % 2 == 0;
        progress!(
            "cluster: lease {lease_s} s: failover {}/{runs} (owner {}the leader) ...",
            k + 1,
            if want_leader { "" } else { "not " }
        );
        match one_failover(&mut c, &watch, want_leader, lease_s) {
            Ok(f) => out.push(f),
            Err(e) => {
                failed += 1;
                progress!("cluster: run {} failed: {e:#}", k + 1);
                notes.push(format!("Run {} failed: {e:#}.", k + 1));
                for n in &mut c.nodes {
                    if !n.is_running() {
                        n.restart()?;
                    }
                }
                if failed > 2 {
                    bail!("{failed} failover runs failed; the last: {e:#}");
                }
            }
        }
    }
    let logs = c.logs();
    let intervals = streaming_intervals(&logs).map_err(anyhow::Error::msg)?;
    match check_intervals(&intervals) {
        Ok(()) => notes.push(format!(
            "Fencing held: the {} streaming intervals in the nodes' logs never overlap, epochs grow.",
            intervals.len()
        )),
        Err(e) => notes.push(format!("**Fencing violated**: {e}")),
    }
    if let Ok(Some(status)) = pgbench.0.try_wait() {
        let log = fs::read_to_string(c.dir.join("pgbench.log")).unwrap_or_default();
        notes.push(format!("pgbench ended early ({status}): {}", tail(&log, 5)));
    }
    Ok(LeaseResult { lease_s, runs: out, notes })
}

/// CPU seconds spent by one node so far.
struct CpuSample {
    /// utime + stime of the node process.
    own: f64,
    /// cutime + cstime: the children it reaped.
    children: f64,
    /// Everything in its cgroup, when it has one.
    tree: Option<f64>,
    /// Per thread name: CPU seconds and voluntary context switches (each one a wake-up).
    threads: Vec<(String, f64, f64)>,
}

impl CpuSample {
    fn take(pid: u32, group: Option<&CpuGroup>) -> Result<CpuSample> {
        let (own, children) = cpu_secs(&fs::read_to_string(format!("/proc/{pid}/stat"))?)?;
        let mut threads: Vec<(String, f64, f64)> = Vec::new();
        for t in fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
            let (Ok(stat), Ok(status)) =
                (fs::read_to_string(t.path().join("stat")), fs::read_to_string(t.path().join("status")))
            else {
                continue;
            };
            let name = stat.split_once('(').and_then(|(_, r)| r.rsplit_once(')')).map_or("", |(n, _)| n).to_string();
            let cpu = cpu_secs(&stat).map_or(0.0, |(own, _)| own);
            let wakeups = status_field(&status, "voluntary_ctxt_switches");
            match threads.iter_mut().find(|(n, _, _)| *n == name) {
                Some(e) => (e.1, e.2) = (e.1 + cpu, e.2 + wakeups),
                None => threads.push((name, cpu, wakeups)),
            }
        }
        Ok(CpuSample { own, children, tree: group.and_then(CpuGroup::usage), threads })
    }

    fn wakeups(&self) -> f64 {
        self.threads.iter().map(|t| t.2).sum()
    }
}

/// (utime + stime, cutime + cstime) in seconds from a /proc stat line.
fn cpu_secs(stat: &str) -> Result<(f64, f64)> {
    let after = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let f: Vec<f64> = after.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect();
    if f.len() < 15 {
        bail!("/proc/PID/stat: {} fields after the name", f.len());
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // Fields 14–17 of stat(5) (utime, stime, cutime, cstime); the slice starts at field 3.
    Ok(((f[11] + f[12]) / hz, (f[13] + f[14]) / hz))
}

/// A field of /proc/PID/status in MiB (kB fields) or as a count.
fn status_field(status: &str, key: &str) -> f64 {
    let v = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok());
    let v = v.unwrap_or(f64::NAN);
    if key.starts_with("Vm") || key.starts_with("Rss") { v / 1024.0 } else { v }
}

/// A cgroup holding one node and everything it starts from now on (its `barman cron`
/// children and the `archive-wal` processes cron starts detached, which nobody's cutime
/// counts): CPU seconds of the whole tree. Root only; removed on drop.
struct CpuGroup {
    dir: PathBuf,
    v2: bool,
}

impl CpuGroup {
    fn create(name: &str, pid: u32) -> Option<CpuGroup> {
        let mounts = fs::read_to_string("/proc/mounts").ok()?;
        let mut candidates = Vec::new();
        for l in mounts.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [_, at, "cgroup2", ..] => candidates.insert(0, (PathBuf::from(at), true)),
                [_, at, "cgroup", opts, ..] if opts.split(',').any(|o| o == "cpuacct") => {
                    candidates.push((PathBuf::from(at), false))
                }
                _ => {}
            }
        }
        candidates.into_iter().find_map(|(root, v2)| {
            let dir = root.join(format!("barman-bench-{}-{name}", std::process::id()));
            fs::create_dir(&dir).ok()?;
            let g = CpuGroup { dir, v2 };
            fs::write(g.dir.join("cgroup.procs"), pid.to_string()).ok()?;
            g.usage().map(|_| g)
        })
    }

    fn usage(&self) -> Option<f64> {
        if self.v2 {
            let s = fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
            Some(s.lines().find_map(|l| l.strip_prefix("usage_usec "))?.trim().parse::<f64>().ok()? / 1e6)
        } else {
            Some(fs::read_to_string(self.dir.join("cpuacct.usage")).ok()?.trim().parse::<f64>().ok()? / 1e9)
        }
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        // Whatever still runs goes back to the parent group; an empty group can go.
        let parent = self.dir.parent().map(|p| p.join("cgroup.procs"));
        for _ in 0..50 {
            let procs = fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            for p in procs.lines() {
                if let Some(parent) = &parent {
                    let _ = fs::write(parent, p);
                }
            }
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove cgroup {}", self.dir.display());
    }
}

/// The largest figures among the nodes of one idle cluster: RSS MiB, CPU % of the node
/// alone, CPU % of everything it runs.
#[derive(Debug, Clone, Copy, Default)]
struct Worst {
    rss: f64,
    cpu: f64,
    tree: f64,
}

/// Three idle nodes with `servers` servers each: memory, and CPU over a window after a steady
/// period, as rows of `t` (thread breakdowns as notes when `threads`).
fn idle(ctx: &Ctx, servers: usize, t: &mut Table, latency: &mut Table, threads: bool) -> Result<Worst> {
    let steady = Duration::from_secs(ctx.counts.cluster_steady_secs);
    let dir = unique_subdir(&ctx.scratch, "cluster-idle")?;
    let opts = ClusterOptions {
        nodes: 3,
        sites: is_root(),
        lease: 3.0,
        synchronous: false,
        extra_servers: servers - 1,
        metrics: true,
        archiving: false,
    };
    progress!("cluster: idle: 3 nodes, {servers} servers each: steady for {} s, then measured ...", steady.as_secs());
    let mut c = TestCluster::start(&dir, opts)?;
    let all = "SELECT count(*) FROM pg_stat_replication WHERE application_name LIKE 'barman\\_pg%'";
    let want = servers.to_string();
    c.wait(Duration::from_secs(120), "one walsender per server", |c| c.pg.psql(all).is_ok_and(|n| n == want))?;
    thread::sleep(steady);
    let pids: Vec<u32> = c.nodes.iter().map(|n| n.pid().context("a node without a process")).collect::<Result<_>>()?;
    for (i, pid) in pids.iter().enumerate() {
        // `ip netns exec` execs the node: the pid must be barman's own.
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "barman" {
            bail!("{}: pid {pid} is {comm:?}, not the barman node itself", node_name(i));
        }
    }
    let groups: Vec<Option<CpuGroup>> =
        pids.iter().enumerate().map(|(i, p)| CpuGroup::create(&format!("{servers}-{}", node_name(i)), *p)).collect();
    let before: Vec<CpuSample> =
        pids.iter().zip(&groups).map(|(p, g)| CpuSample::take(*p, g.as_ref())).collect::<Result<_>>()?;
    let t0 = Instant::now();
    thread::sleep(steady);
    let secs = t0.elapsed().as_secs_f64();
    let status = c.status(0)?;
    let leader = status["leader"].as_str().unwrap_or_default().to_string();
    let owned =
        |name: &str| status["servers"].as_array().map_or(0, |a| a.iter().filter(|s| s["owner"] == name).count());
    let mut worst = Worst::default();
    let mut busiest = (0, 0);
    for (i, pid) in pids.iter().enumerate() {
        let name = node_name(i);
        let (b, a) = (&before[i], CpuSample::take(*pid, groups[i].as_ref())?);
        let st = fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss = status_field(&st, "VmRSS");
        let pct = |d: f64| 100.0 * d / secs;
        let (own, kids) = (pct(a.own - b.own), pct(a.children - b.children));
        let tree = a.tree.zip(b.tree).map(|(a, b)| pct(a - b));
        worst.rss = worst.rss.max(rss);
        worst.cpu = worst.cpu.max(own);
        worst.tree = worst.tree.max(tree.unwrap_or(own + kids));
        let n_owned = owned(&name);
        if n_owned >= busiest.1 {
            busiest = (i, n_owned);
        }
        t.row(vec![
            servers.to_string(),
            format!("{name}, {}", if name == leader { "Raft leader" } else { "follower" }),
            format!("{n_owned} of {servers}"),
            format!("{:.1} ({:.1} + {:.1})", rss, status_field(&st, "RssAnon"), status_field(&st, "RssFile")),
            format!("{:.1}", status_field(&st, "VmHWM")),
            format!("{:.0}", status_field(&st, "Threads")),
            format!("{:.0}", (a.wakeups() - b.wakeups()) / secs),
            format!("{own:.2}"),
            format!("{:.2}", own + kids),
            tree.map_or("—".to_string(), |v| format!("{v:.2}")),
        ]);
        if threads {
            let mut by_name: Vec<(String, f64, f64)> = a
                .threads
                .iter()
                .map(|(n, cpu, w)| {
                    let (cpu0, w0) = b.threads.iter().find(|(m, _, _)| m == n).map_or((0.0, 0.0), |t| (t.1, t.2));
                    (n.clone(), pct(cpu - cpu0), (w - w0) / secs)
                })
                .filter(|(_, p, w)| *p > 0.0 || *w >= 1.0)
                .collect();
            by_name.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.2.total_cmp(&a.2)));
            let list: Vec<String> = by_name.iter().take(6).map(|(n, p, w)| format!("{n} {p:.2}% ({w:.0}/s)")).collect();
            t.note(format!(
                "{servers} servers, {name}'s threads by name, % of a core and wake-ups/s over the window: {}.",
                if list.is_empty() { "none measurable".into() } else { list.join(", ") }
            ));
        }
    }
    let l = renewal_latency(&c, busiest.0)?;
    let role = if node_name(busiest.0) == leader { "the Raft leader" } else { "a follower" };
    let what = format!("renewals of {servers} server(s), lease 3 s, idle, owner is {role}");
    latency.row(latency_row(&what, &l));
    drop(c);
    drop(groups);
    Ok(worst)
}

fn failover_tables(results: &[LeaseResult]) -> Vec<Table> {
    let mut t = Table::new(
        "Failover after SIGKILL of the owner: 3 nodes, synchronous standby, pgbench at 20 TPS (ms after the kill)",
        &[
            "lease",
            "killed owner",
            "measured until",
            "runs",
            "min",
            "median",
            "p90",
            "max",
            "bound",
            "bound with vote lease",
            "waits alone",
        ],
    );
    let mut steps = Table::new(
        "Where the failover time goes (median ms after the kill, from the surviving nodes' logs)",
        &[
            "lease",
            "killed owner",
            "new leader elected",
            "server assigned",
            "new owner knows",
            "streaming started",
            "walsender listed",
        ],
    );
    for r in results {
        let lt = LeaseTimes::of(r.lease_s);
        for leader_lost in [false, true] {
            let runs: Vec<&Failover> = r.runs.iter().filter(|f| f.leader_lost == leader_lost).collect();
            let case = if leader_lost { "the Raft leader" } else { "a follower" };
            let lease = format!("{} s", r.lease_s);
            for (until, v) in [
                ("`streaming started` (log)", runs.iter().map(|f| f.to_started).collect::<Vec<_>>()),
                ("walsender listed (20 ms poll)", runs.iter().map(|f| f.to_walsender).collect()),
            ] {
                let max = v.iter().copied().fold(f64::NAN, f64::max);
                t.row(vec![
                    lease.clone(),
                    case.into(),
                    until.into(),
                    v.len().to_string(),
                    fmt_ms(v.iter().copied().fold(f64::NAN, f64::min)),
                    fmt_ms(median(v.clone())),
                    fmt_ms(percentile(&v, 0.9)),
                    fmt_ms(max),
                    format!("{:.0}", lt.bound(leader_lost, false)),
                    format!("{:.0}", lt.bound(leader_lost, true)),
                    lt.waits(leader_lost),
                ]);
            }
            let med = |f: fn(&Failover) -> Option<f64>| {
                let v: Vec<f64> = runs.iter().filter_map(|r| f(r)).collect();
                if v.is_empty() { "—".to_string() } else { format!("{:.0} ({})", median(v.clone()), v.len()) }
            };
            steps.row(vec![
                lease.clone(),
                case.into(),
                med(|f| f.steps.elected),
                med(|f| f.steps.assigned),
                med(|f| f.steps.owned),
                med(|f| Some(f.to_started)),
                med(|f| Some(f.to_walsender)),
            ]);
            for (k, f) in runs.iter().enumerate() {
                if f.to_walsender > lt.bound(leader_lost, true) {
                    t.note(format!(
                        "Over the bound with vote lease: lease {} s, killed owner {case}, run {} of the case: {}.",
                        r.lease_s,
                        k + 1,
                        f.describe()
                    ));
                }
            }
        }
        let list: Vec<String> =
            r.runs.iter().map(|f| format!("{}{:.0}", if f.leader_lost { "L" } else { "F" }, f.to_started)).collect();
        t.note(format!(
            "Lease {} s, every run in order (L: the owner led, F: it followed; ms to `streaming started`): {}.",
            r.lease_s,
            list.join(", ")
        ));
        for n in &r.notes {
            t.note(format!("Lease {} s: {n}", r.lease_s));
        }
    }
    t.note(
        "Bound: lease + margin (lease/4, at least 250 ms) + renewal interval (lease/3, 100–1000 ms); when the \
         killed owner led the Raft group, plus the longest election timeout (1500 ms): at worst the new leader \
         had not applied the last renewal when elected and counts a full lease + margin from its election. Bound \
         with vote lease: openraft 0.9 lets a follower that knows a leader \
         start an election only after its leader lease (election_timeout_max, 1500 ms) + its election timeout \
         (drawn once per process in 750–1500 ms) without a heartbeat: 1500 ms more when the leader is lost. \
         Waits alone: the waits without commits and connections (a follower owner: lease + margin less the time \
         since the last renewal the leader saw; a leader owner: the longer of the election, 2250–3000 ms, and \
         the lease + margin less the time since the last renewal, both counted from the kill, since the new \
         leader counts the lease from the last renewal it saw as a follower). The kill comes at a random point of the renewal cycle.",
    );
    steps.note("In parentheses: the runs whose logs had the step (an election only when the leader was killed).");
    vec![t, steps]
}

pub fn run(ctx: &Ctx) -> Result<Vec<Table>> {
    let mut latency = Table::new(
        "Raft commit latency of a lease renewal (owner's `barman_raft_commit_seconds`), references in the same run (ms)",
        &["what", "samples", "p50", "p90", "p99"],
    );
    latency.note(
        "Renewals: the quantiles are over the owner's latest renewals (up to 1024), samples = all its renewals; a \
         renewal is a proposal committed by a majority (the leader's and one follower's sled flush) and applied. \
         References: 1000 each, median, p90, p99.",
    );
    let load = crate::loadavg();
    let mut results = vec![failovers(ctx, 2.0, Some(&mut latency))?];
    results.push(failovers(ctx, 3.0, None)?);
    let idle_t = idle_table(ctx, &mut latency)?;
    latency.note(format!(
        "Load average (1/5/15 min) when the cluster benchmarks started: {load}; at the end: {}.",
        crate::loadavg()
    ));
    let mut tables = failover_tables(&results);
    tables.push(latency);
    tables.push(idle_t);
    Ok(tables)
}

/// The idle part alone (`--only cluster-idle`): memory and CPU of idle nodes, with the
/// renewals' commit latency.
pub fn run_idle(ctx: &Ctx) -> Result<Vec<Table>> {
    let mut latency = Table::new(
        "Raft commit latency of a lease renewal, idle nodes (owner's `barman_raft_commit_seconds`, ms)",
        &["what", "samples", "p50", "p90", "p99"],
    );
    let idle_t = idle_table(ctx, &mut latency)?;
    Ok(vec![latency, idle_t])
}

fn idle_table(ctx: &Ctx, latency: &mut Table) -> Result<Table> {
    let secs = ctx.counts.cluster_steady_secs;
    let mut idle_t = Table::new(
        &format!("Idle nodes, no load: memory, and CPU over {secs} s after {secs} s steady (lease 3 s)"),
        &[
            "servers",
            "node",
            "owns",
            "RSS MiB (anon + file)",
            "peak RSS MiB",
            "threads",
            "wake-ups/s",
            "CPU % of a core: node",
            "+ cron children",
            "whole tree (cgroup)",
        ],
    );
    let load_idle = crate::loadavg();
    idle(ctx, 1, &mut idle_t, latency, false)?;
    let w = idle(ctx, 10, &mut idle_t, latency, true)?;
    idle_t.note(format!(
        "Goals for an idle node with 10 servers: RSS ≤ {GOAL_RSS_MIB:.0} MiB: {} (largest {:.1} MiB); \
         CPU < {GOAL_CPU_PCT:.0}% of a core: the node process alone {} (largest {:.2}%), \
         with everything it starts {} (largest {:.2}%).",
        verdict(w.rss <= GOAL_RSS_MIB),
        w.rss,
        verdict(w.cpu < GOAL_CPU_PCT),
        w.cpu,
        verdict(w.tree < GOAL_CPU_PCT),
        w.tree,
    ));
    idle_t.note(format!(
        "Wake-ups/s: voluntary context switches of the node's threads. \
         Node = utime + stime of the node process; + cron children adds the cutime + cstime of the \
         `barman cron` it runs every 5 s and reaps; whole tree = a cgroup the node was moved into at the \
         window's start, so it also counts the `archive-wal` processes cron starts detached (on a cluster \
         node only when files wait in `incoming/` or `streaming/`). Load average (1/5/15 min) before: {load_idle}; after: {}.",
        crate::loadavg()
    ));
    Ok(idle_t)
}
