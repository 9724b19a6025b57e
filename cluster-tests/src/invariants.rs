//! What every multi-node test checks at its end, and the load it runs meanwhile: the
//! cluster's invariants on the nodes' own logs and WAL, pgbench against PostgreSQL, and a
//! watch on PostgreSQL's walsenders.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};

use crate::fixture::TestCluster;
use crate::nodes::{Node, assert_clean_logs, check_intervals, streaming_intervals, waldump_gap_check};
use crate::util::pg_bin;

/// Log lines that are part of the faults the tests inject.
pub const FAULT_NOISE: &[&str] = &[
    // openraft reports peers it cannot reach (killed, stopped, partitioned) at ERROR.
    "Unreachable",
    "RPCError",
    "while requesting vote",
    // openraft's own line for a vote that a frozen or cut-off peer did not answer in time.
    "when Vote ",
    // A stopped or cut-off node's proposals time out.
    "no leader took the change",
    "lease not handed back",
    "hand-over not committed yet",
    // A streaming attempt that failed while its node was being faulted, retried.
    "WAL streaming failed",
];

/// Streaming intervals never overlap and epochs grow; no ERROR/WARN line other than
/// [`FAULT_NOISE`] and `allowed`; the union of the nodes' WAL has no gap from `from` to
/// PostgreSQL's position now.
pub fn check_invariants(c: &mut TestCluster, from: &str, allowed: &[&str]) -> Result<()> {
    let logs = c.logs();
    let intervals = streaming_intervals(&logs).map_err(|e| anyhow!("streaming intervals: {e}"))?;
    // An end before the start would hide any overlap of that interval.
    let backwards: Vec<String> = intervals
        .iter()
        .filter(|i| i.end_ms.is_some_and(|e| e < i.start_ms))
        .map(|i| format!("{} epoch {} [{}, {:?}]", i.node, i.epoch, i.start_ms, i.end_ms))
        .collect();
    ensure!(backwards.is_empty(), "'streaming stopped' with a mono_ms before its start: {}", backwards.join(", "));
    check_intervals(&intervals).map_err(|e| anyhow!("{e}\n{intervals:#?}"))?;
    let nodes: Vec<&Node> = c.nodes.iter().collect();
    let mut allow: Vec<&str> = FAULT_NOISE.to_vec();
    allow.extend_from_slice(allowed);
    assert_clean_logs(&nodes, &allow)?;
    // Close the current segment so that what the owner holds is a complete file too.
    c.pg.switch_wal()?;
    let to = c.pg.current_lsn()?;
    let mut last = Err(anyhow!("not tried"));
    // The owner needs a moment to receive the switch. The directories are listed each time:
    // `wals/` exists only once a first segment was archived, which may be this one.
    for _ in 0..50 {
        let dirs = c.wal_dirs();
        last = waldump_gap_check(&pg_bin("pg_waldump"), &dirs, from, &to);
        if last.is_ok() {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    last.with_context(|| format!("WAL gap in the nodes' archives from {from} to {to}"))
}

/// pgbench (2 clients) in the background for `secs`; its output when joined, an error when
/// it failed or reported a failed transaction.
pub fn pgbench(c: &TestCluster, secs: u32) -> thread::JoinHandle<Result<String>> {
    let port = c.pg.port().to_string();
    let t = secs.to_string();
    thread::spawn(move || {
        let out = std::process::Command::new(pg_bin("pgbench"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p", &port, "-n", "-c", "2", "-j", "1", "-T", &t, "postgres"])
            .stdin(std::process::Stdio::null())
            .output()?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        ensure!(out.status.success(), "pgbench failed ({}):\n{text}", out.status);
        ensure!(!text.contains("error") && !text.contains("aborted"), "pgbench saw errors:\n{text}");
        ensure!(text.contains("number of failed transactions: 0"), "pgbench output:\n{text}");
        Ok(text)
    })
}

/// Polls pg_stat_replication every 100 ms; the most of our walsenders for `pg` ever seen.
pub struct WalsenderWatch {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicUsize>,
    handle: Option<thread::JoinHandle<()>>,
}

impl WalsenderWatch {
    pub fn start(c: &TestCluster) -> WalsenderWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicUsize::new(0));
        let (s, m, port) = (stop.clone(), max.clone(), c.pg.port());
        let handle = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(n) = walsenders(port) {
                    m.fetch_max(n, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        WalsenderWatch { stop, max, handle: Some(handle) }
    }

    /// Stops polling; the most seen at once.
    pub fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.max.load(Ordering::Relaxed)
    }
}

impl Drop for WalsenderWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Our walsenders for `pg` (application name `barman_pg`) on the PostgreSQL at `port`.
pub fn walsenders(port: u16) -> Option<usize> {
    let out = std::process::Command::new(pg_bin("psql"))
        .args(["-h", "127.0.0.1", "-U", "postgres", "-p", &port.to_string(), "-At", "-c"])
        .arg("SELECT count(*) FROM pg_stat_replication WHERE application_name = 'barman_pg'")
        .arg("postgres")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}
