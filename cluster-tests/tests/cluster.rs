//! The cluster under faults: several `barman node run` processes (each in its own network
//! namespace when run as root), one PostgreSQL, pgbench; SIGKILL, SIGSTOP, partitions and
//! planned hand-overs. Every test checks the fencing invariants on the nodes' own logs.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use cluster_tests::fixture::{ClusterOptions, TestCluster, node_name};
use cluster_tests::nodes::{assert_clean_logs, check_intervals, streaming_intervals, waldump_gap_check};
use cluster_tests::util::{TestDir, is_root, pg_bin, skip};

/// One cluster at a time: each runs PostgreSQL, pgbench and three nodes on two cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// Log lines that are part of the faults these tests inject.
const FAULT_NOISE: &[&str] = &[
    // openraft reports peers it cannot reach (killed, stopped, partitioned) at ERROR.
    "Unreachable",
    "RPCError",
    "while requesting vote",
    // A stopped or cut-off node's proposals time out.
    "no leader took the change",
    "lease not handed back",
    "hand-over not committed yet",
];

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// pgbench in the background for `secs`; its output when joined.
fn pgbench(c: &TestCluster, secs: u32) -> thread::JoinHandle<anyhow::Result<String>> {
    let port = c.pg.port();
    let t = secs.to_string();
    thread::spawn(move || {
        let out = std::process::Command::new(pg_bin("pgbench"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-p",
                &port.to_string(),
                "-n",
                "-c",
                "2",
                "-j",
                "1",
                "-T",
                &t,
                "postgres",
            ])
            .output()?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        anyhow::ensure!(out.status.success(), "pgbench failed: {text}");
        Ok(text)
    })
}

fn assert_pgbench_clean(out: &str) {
    assert!(!out.contains("error") && !out.contains("aborted"), "pgbench saw errors:\n{out}");
    assert!(out.contains("number of failed transactions: 0"), "pgbench output:\n{out}");
}

/// Polls pg_stat_replication every 100 ms; the most of our walsenders ever seen.
struct WalsenderWatch {
    stop: std::sync::Arc<AtomicBool>,
    max: std::sync::Arc<AtomicUsize>,
    handle: Option<thread::JoinHandle<()>>,
}

impl WalsenderWatch {
    fn start(c: &TestCluster) -> WalsenderWatch {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let max = std::sync::Arc::new(AtomicUsize::new(0));
        let (s, m, port) = (stop.clone(), max.clone(), c.pg.port());
        let handle = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let out = std::process::Command::new(pg_bin("psql"))
                    .args(["-h", "127.0.0.1", "-U", "postgres", "-p", &port.to_string(), "-At", "-c"])
                    .arg("SELECT count(*) FROM pg_stat_replication WHERE application_name = 'barman_pg'")
                    .arg("postgres")
                    .output();
                if let Ok(o) = out
                    && let Ok(n) = String::from_utf8_lossy(&o.stdout).trim().parse::<usize>()
                {
                    m.fetch_max(n, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        WalsenderWatch { stop, max, handle: Some(handle) }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.max.load(Ordering::Relaxed)
    }
}

/// The invariants every test ends with: streaming intervals never overlap and epochs grow;
/// no unexpected ERROR/WARN line; the union of the nodes' WAL has no gap from `from` to
/// PostgreSQL's position now.
fn check_invariants(c: &mut TestCluster, from: &str, allowed: &[&str]) {
    let logs = c.logs();
    let intervals = streaming_intervals(&logs).expect("streaming intervals");
    check_intervals(&intervals).unwrap_or_else(|e| panic!("{e}\n{intervals:#?}"));
    let nodes: Vec<&cluster_tests::nodes::Node> = c.nodes.iter().collect();
    let mut allow: Vec<&str> = FAULT_NOISE.to_vec();
    allow.extend_from_slice(allowed);
    assert_clean_logs(&nodes, &allow).expect("clean logs");
    // Close the current segment so that what the owner holds is a complete file too.
    c.pg.switch_wal().expect("switch wal");
    let to = c.pg.current_lsn().expect("lsn");
    let dirs = c.wal_dirs();
    let mut last = Err(anyhow::anyhow!("not tried"));
    // The owner needs a moment to receive the switch.
    for _ in 0..50 {
        last = waldump_gap_check(&pg_bin("pg_waldump"), &dirs, from, &to);
        if last.is_ok() {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    last.unwrap_or_else(|e| panic!("WAL gap in the nodes' archives from {from} to {to}: {e}"));
}

fn opts(synchronous: bool) -> ClusterOptions {
    ClusterOptions { sites: is_root(), synchronous, ..ClusterOptions::default() }
}

#[test]
fn sigkill_of_the_owner_fails_over_under_pgbench() {
    let _g = serial();
    let dir = TestDir::new().unwrap();
    let mut c = TestCluster::start(dir.path(), opts(true)).unwrap();
    c.pg.pgbench_init(1).unwrap();
    let from = c.pg.current_lsn().unwrap();
    let bench = pgbench(&c, 20);
    thread::sleep(Duration::from_secs(4));
    let (owner, epoch) = c.owner().expect("an owner");
    let t0 = Instant::now();
    c.nodes[owner].kill().unwrap();
    let mut taken = None;
    c.wait(Duration::from_secs(10), "another node streaming", |c| {
        let now = c.owner();
        if let Some((o, e)) = now
            && o != owner
            && e > epoch
            && c.walsenders().unwrap_or(0) == 1
        {
            taken = Some((o, e));
            true
        } else {
            false
        }
    })
    .unwrap();
    let failover = t0.elapsed();
    println!("failover after SIGKILL: {} ms (owner {} -> {:?})", failover.as_millis(), node_name(owner), taken);
    let out = bench.join().unwrap().unwrap();
    assert_pgbench_clean(&out);
    c.nodes[owner].restart().unwrap();
    c.nodes[owner].wait_log("node started", Duration::from_secs(30)).unwrap();
    check_invariants(&mut c, &from, &[]);
}

#[test]
fn partitioned_owner_fences_itself_before_the_majority_takes_over() {
    if !is_root() {
        return skip("partitions need network namespaces (root)");
    }
    let _g = serial();
    let dir = TestDir::new().unwrap();
    let mut c = TestCluster::start(dir.path(), opts(true)).unwrap();
    c.pg.pgbench_init(1).unwrap();
    let from = c.pg.current_lsn().unwrap();
    let watch = WalsenderWatch::start(&c);
    let bench = pgbench(&c, 20);
    thread::sleep(Duration::from_secs(3));
    let (owner, epoch) = c.owner().expect("an owner");
    c.sites.as_ref().expect("sites").partition(owner).unwrap();
    c.wait(Duration::from_secs(15), "the majority to take over", |c| {
        (0..c.nodes.len()).filter(|i| *i != owner).any(|i| {
            c.status(i).ok().is_some_and(|v| {
                v["servers"].as_array().and_then(|a| a.iter().find(|s| s["name"] == "pg")).is_some_and(|s| {
                    s["epoch"].as_u64().unwrap_or(0) > epoch && s["owner"].as_str() != Some(&node_name(owner))
                })
            })
        }) && c.walsenders().unwrap_or(0) == 1
    })
    .unwrap();
    let out = bench.join().unwrap().unwrap();
    assert_pgbench_clean(&out);
    c.sites.as_ref().expect("sites").heal(owner).unwrap();
    // After healing, the old owner follows: it learns the new epoch and does not stream.
    c.wait(Duration::from_secs(15), "the old owner to learn the new epoch", |c| {
        c.status(owner).ok().is_some_and(|v| {
            v["servers"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s["name"] == "pg"))
                .is_some_and(|s| s["epoch"].as_u64().unwrap_or(0) > epoch && s["streaming_here"] == false)
        })
    })
    .unwrap();
    let max = watch.finish();
    assert!(max <= 1, "pg_stat_replication showed {max} of our walsenders at once");
    check_invariants(&mut c, &from, &["WAL streaming failed"]);
}

#[test]
fn sigstopped_owner_does_not_resume_in_its_old_epoch() {
    let _g = serial();
    let dir = TestDir::new().unwrap();
    let mut c = TestCluster::start(dir.path(), opts(false)).unwrap();
    let from = c.pg.current_lsn().unwrap();
    let (owner, epoch) = c.owner().expect("an owner");
    c.nodes[owner].stop().unwrap();
    c.wait(Duration::from_secs(15), "another node streaming", |c| {
        c.owner().is_some_and(|(o, e)| o != owner && e > epoch) && c.walsenders().unwrap_or(0) == 1
    })
    .unwrap();
    c.pg.psql("CREATE TABLE after_stop AS SELECT 1 AS x").unwrap();
    c.nodes[owner].cont().unwrap();
    thread::sleep(Duration::from_secs(4));
    let log = c.nodes[owner].log();
    let resumed =
        log.lines().filter(|l| l.contains("streaming started") && l.contains(&format!("epoch={epoch} "))).count();
    assert_eq!(resumed, 1, "the stopped owner streamed again in epoch {epoch}:\n{log}");
    assert_eq!(c.walsenders().unwrap(), 1);
    check_invariants(&mut c, &from, &["WAL streaming failed"]);
}

#[test]
fn planned_transfer_under_pgbench_leaves_no_gap() {
    let _g = serial();
    let dir = TestDir::new().unwrap();
    let mut c = TestCluster::start(dir.path(), opts(true)).unwrap();
    c.pg.pgbench_init(1).unwrap();
    let from = c.pg.current_lsn().unwrap();
    let bench = pgbench(&c, 12);
    thread::sleep(Duration::from_secs(3));
    let (owner, epoch) = c.owner().expect("an owner");
    let to = (owner + 1) % c.nodes.len();
    let out = c.barman(owner, &["cluster", "transfer", "pg", &node_name(to)]).unwrap();
    assert!(out.contains(&format!("Node '{}' owns server 'pg'", node_name(to))), "{out}");
    let (now, e) = c.owner().unwrap();
    assert_eq!((now, e), (to, epoch + 1));
    let out = bench.join().unwrap().unwrap();
    assert_pgbench_clean(&out);
    let v = c.status(owner).unwrap();
    assert_eq!(v["servers"][0]["streaming_here"], false, "the old owner is passive: {v}");
    check_invariants(&mut c, &from, &[]);
}

#[test]
fn only_the_owner_may_stream_or_back_up() {
    let _g = serial();
    let dir = TestDir::new().unwrap();
    let mut c = TestCluster::start(dir.path(), opts(false)).unwrap();
    let (owner, epoch) = c.owner().expect("an owner");
    let other = (owner + 1) % c.nodes.len();
    for args in [["receive-wal", "pg"], ["backup", "pg"]] {
        let mut cmd = std::process::Command::new(cluster_tests::nodes::barman_bin().unwrap());
        let out = cmd.arg("-c").arg(&c.confs[other]).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} on a non-owner succeeded");
        assert!(err.contains(&format!("node '{}' owns it (epoch {epoch})", node_name(owner))), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}
