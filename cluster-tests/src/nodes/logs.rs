//! Reading node logs: ERROR and WARN lines nobody expected, and the intervals in which each
//! node streamed from PostgreSQL, checked against the cluster's fencing invariants.
//!
//! Lines are tracing's fmt output without ANSI colours, one event per line:
//! `<RFC3339 time>  INFO <spans and target>: <message> key=value ...`. Fields are read from
//! the whole line (span fields first, the event's own last, which win).

use std::collections::{BTreeMap, HashMap};

/// Milliseconds of CLOCK_MONOTONIC, the clock of `mono_ms=` fields (shared by all processes
/// of the machine, namespaces included).
pub fn mono_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// Every ERROR or WARN line (and every panic) of `log` that contains none of `allowed`.
pub fn unexpected_lines(log: &str, allowed: &[&str]) -> Vec<String> {
    log.lines()
        .filter(|line| is_alarm(line))
        .filter(|line| !allowed.iter().any(|a| line.contains(a)))
        .map(str::to_string)
        .collect()
}

/// The level is the first word after the timestamp; without a timestamp, the first word
/// (`ERROR: ...` as barman prints before logging is set up, clap's `error: ...`). A panic
/// message is an alarm too.
fn is_alarm(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let first = words.next().unwrap_or_default();
    let level = if first.starts_with(|c: char| c.is_ascii_digit()) {
        words.next().unwrap_or_default().to_string()
    } else {
        first.trim_end_matches(':').to_ascii_uppercase()
    };
    matches!(level.as_str(), "ERROR" | "WARN" | "WARNING") || line.contains("panicked at")
}

/// One period in which `node` streamed `server`'s WAL in `epoch`, in CLOCK_MONOTONIC ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    /// The node, as named by the caller.
    pub node: String,
    /// The server streamed.
    pub server: String,
    /// The ownership epoch the node streamed in.
    pub epoch: u64,
    /// When streaming started.
    pub start_ms: u64,
    /// When it stopped; `None` while it may still run.
    pub end_ms: Option<u64>,
}

impl Interval {
    fn end(&self) -> u64 {
        self.end_ms.unwrap_or(u64::MAX)
    }

    fn describe(&self) -> String {
        let end = self.end_ms.map_or_else(|| "open".to_string(), |e| e.to_string());
        format!("{} epoch {} [{}, {end}]", self.node, self.epoch, self.start_ms)
    }
}

const STARTED: &str = "streaming started";
const STOPPED: &str = "streaming stopped";
/// Lines after which the node's earlier process cannot stream any more: its own start line,
/// and what the harness notes when it kills a node or sees it exit.
const GONE: [&str; 3] = ["node started", "node killed by the harness", "node exit seen by the harness"];

/// The streaming intervals in the logs of several nodes, `(node name, log text)`, sorted by
/// server then start. An interval left open by a process that died (SIGKILL) ends at the
/// next line saying the process is gone, or stays open. Fails on a streaming line without
/// the fields it needs.
pub fn streaming_intervals<N: AsRef<str>, L: AsRef<str>>(logs: &[(N, L)]) -> Result<Vec<Interval>, String> {
    let mut all = Vec::new();
    for (node, log) in logs {
        let node = node.as_ref();
        let mut open: BTreeMap<String, Interval> = BTreeMap::new();
        for (n, line) in log.as_ref().lines().enumerate() {
            let field = |key: &str| {
                fields(line).remove(key).ok_or_else(|| format!("{node} log line {}: no {key}= in {line:?}", n + 1))
            };
            let number = |key: &str| {
                field(key)?
                    .parse::<u64>()
                    .map_err(|e| format!("{node} log line {}: {key}= is not a number ({e}) in {line:?}", n + 1))
            };
            if is_event(line, STARTED) {
                let (server, epoch, at) = (field("server")?, number("epoch")?, number("mono_ms")?);
                // Started again without a stop line: the earlier interval ended by then.
                if let Some(mut earlier) = open.remove(&server) {
                    earlier.end_ms = Some(at);
                    all.push(earlier);
                }
                let interval =
                    Interval { node: node.to_string(), server: server.clone(), epoch, start_ms: at, end_ms: None };
                open.insert(server, interval);
            } else if is_event(line, STOPPED) {
                let (server, at) = (field("server")?, number("mono_ms")?);
                if let Some(mut interval) = open.remove(&server) {
                    interval.end_ms = Some(at);
                    all.push(interval);
                }
            } else if GONE.iter().any(|phrase| is_event(line, phrase)) && !open.is_empty() {
                let at = number("mono_ms")?;
                for (_, mut interval) in std::mem::take(&mut open) {
                    interval.end_ms = Some(at);
                    all.push(interval);
                }
            }
        }
        all.extend(open.into_values());
    }
    all.sort_by(|a, b| (&a.server, a.start_ms, &a.node).cmp(&(&b.server, b.start_ms, &b.node)));
    Ok(all)
}

/// Whether `line` is the event `phrase`: the phrase starts the message (right after the
/// level, or after `target: `) and is followed by nothing or by `key=value` fields.
fn is_event(line: &str, phrase: &str) -> bool {
    line.match_indices(phrase).any(|(at, _)| {
        let (before, after) = (&line[..at], &line[at + phrase.len()..]);
        let starts = before.ends_with(": ") || (before.ends_with(' ') && before.split_whitespace().count() <= 2);
        let ends = after.is_empty()
            || (after.starts_with(' ') && after.split_whitespace().next().is_none_or(|w| w.contains('=')));
        starts && ends
    })
}

/// The `key=value` words of a line, span fields included (`span{key=value}:`); later ones win.
fn fields(line: &str) -> HashMap<String, String> {
    line.replace(['{', '}'], " ")
        .split_whitespace()
        .filter_map(|word| {
            let (key, value) = word.split_once('=')?;
            let key = key.rsplit(':').next().unwrap_or(key);
            let valid = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
            valid.then(|| (key.to_string(), value.trim_end_matches(':').trim_matches('"').to_string()))
        })
        .collect()
}

/// The fencing invariants, per server: no two nodes' intervals overlap; in start order the
/// epoch never decreases and grows whenever the node changes (so one node may stream several
/// times in one epoch only with no other node in between); no epoch is used by two nodes.
/// The error lists every violation.
pub fn check_intervals(intervals: &[Interval]) -> Result<(), String> {
    let mut by_server: BTreeMap<&str, Vec<&Interval>> = BTreeMap::new();
    for interval in intervals {
        by_server.entry(&interval.server).or_default().push(interval);
    }
    let mut problems = Vec::new();
    for (server, mut list) in by_server {
        list.sort_by(|a, b| (a.start_ms, &a.node).cmp(&(b.start_ms, &b.node)));
        for (i, a) in list.iter().enumerate() {
            for b in &list[i + 1..] {
                if a.node != b.node && a.start_ms < b.end() && b.start_ms < a.end() {
                    problems.push(format!(
                        "server {server}: two nodes streamed at once: {} and {}",
                        a.describe(),
                        b.describe()
                    ));
                }
            }
        }
        for pair in list.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a.node != b.node && b.epoch <= a.epoch {
                problems.push(format!(
                    "server {server}: the epoch did not grow from one node to the next: {} then {}",
                    a.describe(),
                    b.describe()
                ));
            } else if b.epoch < a.epoch {
                problems.push(format!("server {server}: the epoch went back: {} then {}", a.describe(), b.describe()));
            }
        }
        let mut owner_of: BTreeMap<u64, &Interval> = BTreeMap::new();
        for interval in &list {
            let first = owner_of.entry(interval.epoch).or_insert(interval);
            if first.node != interval.node {
                problems.push(format!(
                    "server {server}: two nodes streamed in epoch {}: {} and {}",
                    interval.epoch,
                    first.describe(),
                    interval.describe()
                ));
            }
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "2025-01-02T03:04:05.123456Z";

    fn info(rest: &str) -> String {
        format!("{T}  INFO barman::node::stream: {rest}\n")
    }

    fn started(node: &str, epoch: u64, at: u64) -> String {
        info(&format!("streaming started node={node} server=pg epoch={epoch} mono_ms={at}"))
    }

    fn stopped(node: &str, epoch: u64, at: u64) -> String {
        info(&format!("streaming stopped node={node} server=pg epoch={epoch} mono_ms={at} reason=\"lease lost\""))
    }

    fn intervals(logs: &[(&str, String)]) -> Vec<Interval> {
        streaming_intervals(logs).unwrap()
    }

    fn iv(node: &str, epoch: u64, start_ms: u64, end_ms: Option<u64>) -> Interval {
        Interval { node: node.into(), server: "pg".into(), epoch, start_ms, end_ms }
    }

    #[test]
    fn unexpected_lines_are_errors_warnings_and_panics_not_allowed() {
        let log = format!(
            "{T} ERROR barman::node: disk full node=n1\n\
             {T}  WARN barman::node: peer n2 unreachable node=n1\n\
             {T}  INFO barman::node: an ERROR in the message is no error node=n1\n\
             {T} DEBUG barman::node: WARN neither\n\
             {T}  WARN barman::node: lease not handed back within 5 s; it runs out by itself\n\
             ERROR: please run barman as 'barman' user\n\
             error: unrecognized subcommand 'node'\n\
             {T}  INFO barman::node: ERROR at the start of a message is no level\n\
             thread 'main' panicked at node/src/node/driver.rs:1:1:\n\
             plain stderr text\n"
        );
        let bad = unexpected_lines(&log, &["lease not handed back"]);
        assert_eq!(bad.len(), 5, "{bad:#?}");
        assert!(bad[0].contains("disk full") && bad[1].contains("unreachable"), "{bad:#?}");
        assert!(bad[2].starts_with("ERROR:") && bad[3].starts_with("error:"), "{bad:#?}");
        assert!(bad[4].contains("panicked"), "{bad:#?}");
        assert!(unexpected_lines(&info("all is well"), &[]).is_empty());
    }

    #[test]
    fn events_and_fields_are_read_from_fmt_lines() {
        let line = format!(
            "{T}  INFO node{{node=n1}}:stream{{server=pg epoch=2}}: barman::x: streaming started epoch=3 mono_ms=7"
        );
        assert!(is_event(&line, STARTED));
        let f = fields(&line);
        assert_eq!((f["node"].as_str(), f["server"].as_str(), f["epoch"].as_str()), ("n1", "pg", "3"));
        assert!(is_event(&format!("{T}  INFO streaming started server=pg"), STARTED), "without a target");
        assert!(is_event(&format!("{T}  INFO x: streaming started"), STARTED), "without fields");
        for other in ["streaming started late node=n1", "the streaming started node=n1", "not streaming started: x"] {
            assert!(!is_event(&info(other), STARTED), "{other}");
        }
        assert!(!is_event(&info("node started streaming node=n1"), "node started"));
    }

    #[test]
    fn a_clean_handover_passes() {
        let n1 =
            format!("{}{}{}", info("node started node=n1 mono_ms=50"), started("n1", 1, 100), stopped("n1", 1, 200));
        let n2 = format!("{}{}", started("n2", 2, 300), info("lease renewed node=n2 epoch=2"));
        let found = intervals(&[("n1", n1), ("n2", n2)]);
        assert_eq!(found, vec![iv("n1", 1, 100, Some(200)), iv("n2", 2, 300, None)]);
        check_intervals(&found).unwrap();
    }

    #[test]
    fn overlapping_nodes_are_reported() {
        let n1 = format!("{}{}", started("n1", 1, 100), stopped("n1", 1, 250));
        let n2 = format!("{}{}", started("n2", 2, 200), stopped("n2", 2, 300));
        let err = check_intervals(&intervals(&[("n1", n1), ("n2", n2)])).unwrap_err();
        assert!(err.contains("two nodes streamed at once") && err.contains("n1 epoch 1 [100, 250]"), "{err}");
        // Touching is not overlapping.
        let n1 = format!("{}{}", started("n1", 1, 100), stopped("n1", 1, 200));
        let n2 = started("n2", 2, 200);
        check_intervals(&intervals(&[("n1", n1), ("n2", n2)])).unwrap();
    }

    #[test]
    fn an_interval_left_open_by_sigkill_ends_when_the_node_restarts() {
        let n1 =
            format!("{}{}{}", started("n1", 1, 100), info("node started node=n1 mono_ms=400"), started("n1", 3, 900));
        let found = intervals(&[("n1", n1.clone())]);
        assert_eq!(found, vec![iv("n1", 1, 100, Some(400)), iv("n1", 3, 900, None)]);
        let n2 = format!("{}{}", started("n2", 2, 500), stopped("n2", 2, 800));
        check_intervals(&intervals(&[("n1", n1.clone()), ("n2", n2)])).unwrap();
        // n2 took over while n1's killed process might still have run: reported.
        let n2 = format!("{}{}", started("n2", 2, 300), stopped("n2", 2, 800));
        let err = check_intervals(&intervals(&[("n1", n1), ("n2", n2)])).unwrap_err();
        assert!(err.contains("n1 epoch 1 [100, 400]"), "{err}");
        // Killed and never restarted: open for ever, so any later owner overlaps.
        let found = intervals(&[("n1", started("n1", 1, 100)), ("n2", started("n2", 2, 5000))]);
        assert!(check_intervals(&found).is_err());
    }

    #[test]
    fn the_harness_kill_note_ends_an_interval() {
        let kill = format!("{T}  INFO cluster_tests: node killed by the harness node=n1 pid=42 mono_ms=150\n");
        let found = intervals(&[("n1", format!("{}{kill}", started("n1", 1, 100))), ("n2", started("n2", 2, 160))]);
        assert_eq!(found[0], iv("n1", 1, 100, Some(150)));
        check_intervals(&found).unwrap();
    }

    #[test]
    fn epochs_must_grow_across_nodes() {
        let back = [iv("n1", 2, 100, Some(200)), iv("n2", 1, 300, Some(400))];
        assert!(check_intervals(&back).unwrap_err().contains("did not grow"));
        let shared = [iv("n1", 3, 100, Some(200)), iv("n2", 3, 300, Some(400))];
        assert!(check_intervals(&shared).unwrap_err().contains("two nodes streamed in epoch 3"));
        let again = [iv("n1", 3, 100, Some(200)), iv("n1", 3, 300, Some(400)), iv("n2", 4, 500, None)];
        check_intervals(&again).unwrap();
        let between = [iv("n1", 3, 100, Some(200)), iv("n2", 4, 300, Some(400)), iv("n1", 3, 500, None)];
        assert!(check_intervals(&between).is_err());
        let own_back = [iv("n1", 4, 100, Some(200)), iv("n1", 3, 300, None)];
        assert!(check_intervals(&own_back).unwrap_err().contains("went back"));
        // Servers are independent.
        let mut other = iv("n2", 1, 150, None);
        other.server = "other".into();
        check_intervals(&[iv("n1", 3, 100, None), other]).unwrap();
    }

    #[test]
    fn a_streaming_line_without_its_fields_fails() {
        let err = streaming_intervals(&[("n1", info("streaming started node=n1 server=pg epoch=1"))]).unwrap_err();
        assert!(err.contains("no mono_ms="), "{err}");
    }
}
