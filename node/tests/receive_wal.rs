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

/// psql running `sql` in the background (to see whether it blocks).
fn psql_child(pg: &PgCluster, sql: &str) -> Child {
    Command::new(cluster_tests::util::pg_bin("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-p"])
        .arg(pg.port().to_string())
        .args(["-c", sql])
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn synchronous_commits_wait_for_the_receiver() {
    let env = Env::new();
    let pg = start_pg(&env, &[("synchronous_standby_names", &conf_quote(APP))]);
    env.write_config(&server_section(&pg.conninfo(), ""));
    let receiver = spawn_receiver(&env);
    wait_streaming(&pg);
    assert_eq!(replication_row(&pg, "sync_state").as_deref(), Some("sync"));
    pg.pgbench_init(1).unwrap();
    let out = pg.pgbench(&["-c", "2", "-t", "200"]).unwrap();
    assert!(out.contains("number of transactions actually processed: 400/400"), "{out}");
    stop_receiver(&env, receiver);

    // Without the receiver a commit waits: its acknowledgement is real.
    let mut blocked = psql_child(&pg, "CREATE TABLE waited (i int)");
    std::thread::sleep(Duration::from_secs(3));
    assert!(blocked.try_wait().unwrap().is_none(), "the commit returned with no synchronous standby");
    let receiver = spawn_receiver(&env);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = blocked.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the commit still waits after receive-wal restarted");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success());
    assert_eq!(pg.psql("SELECT count(*) FROM waited").unwrap(), "0");
    stop_receiver(&env, receiver);
}

/// The reporting mode `replication-status` shows for our receiver ("" when none).
fn receiver_mode(env: &Env) -> String {
    let out = env.barman(&["replication-status", "--target", "wal-streamer", "pg"]);
    out.stdout.lines().find_map(|l| l.strip_prefix("     Receiver mode   : ")).unwrap_or_default().to_string()
}

#[test]
fn synchronous_standby_names_set_while_streaming_takes_effect_within_a_second() {
    let env = Env::new();
    let pg = start_pg(&env, &[]);
    env.write_config(&server_section(&pg.conninfo(), ""));
    pg.pgbench_init(1).unwrap();

    // The reference: the setting made before the receiver starts.
    pg.set_conf("synchronous_standby_names", &conf_quote(APP)).unwrap();
    let receiver = spawn_receiver(&env);
    wait_streaming(&pg);
    assert_eq!(replication_row(&pg, "sync_state").as_deref(), Some("sync"));
    let reference = pg.pgbench_tps(2, 3).unwrap();
    stop_receiver(&env, receiver);

    // The usual order: streaming first, then the setting.
    pg.set_conf("synchronous_standby_names", "''").unwrap();
    let receiver = spawn_receiver(&env);
    wait_streaming(&pg);
    assert_eq!(receiver_mode(&env), "asynchronous");
    for round in ["set after streaming started", "set again after being cleared"] {
        pg.set_conf("synchronous_standby_names", &conf_quote(APP)).unwrap();
        // A commit right after the reload is released by the switch, not by the 10 s status.
        let t0 = Instant::now();
        pg.psql("CREATE TABLE IF NOT EXISTS after_switch (i int)").unwrap();
        let waited = t0.elapsed();
        assert!(waited < Duration::from_secs(3), "{round}: the first commit waited {waited:?}");
        let tps = pg.pgbench_tps_reaching(0.8 * reference, 2, 3).unwrap();
        eprintln!("{round}: {tps:.0} tps against {reference:.0} with the setting made before the start");
        assert!(tps >= 0.8 * reference, "{round}: {tps:.1} tps, under 80% of {reference:.1}");
        assert_eq!(replication_row(&pg, "sync_state").as_deref(), Some("sync"));
        assert_eq!(receiver_mode(&env), "synchronous");

        pg.set_conf("synchronous_standby_names", "''").unwrap();
        wait_until(Duration::from_secs(2), "the receiver back to asynchronous reporting", || {
            receiver_mode(&env) == "asynchronous"
        })
        .unwrap();
        pg.pgbench(&["-n", "-c", "2", "-t", "50"]).unwrap();
    }
    let log = std::fs::read_to_string(env.path().join("barman.log")).unwrap();
    assert_eq!(log.matches("reporting is now synchronous").count(), 2, "{log}");
    assert_eq!(log.matches("reporting is now asynchronous").count(), 2, "{log}");
    stop_receiver(&env, receiver);
}

#[test]
fn promotion_of_the_upstream_switches_timeline_without_a_gap() {
    let env = Env::new();
    let primary = start_pg(&env, &[]);
    primary.pgbench_init(2).unwrap();
    let standby = primary.make_standby(env.path(), "false", true).unwrap();
    env.write_config(&server_section(&standby.conninfo(), ""));
    let receiver = spawn_receiver(&env);
    wait_streaming(&standby);

    // pgbench on the primary while the standby we stream from is promoted.
    std::thread::scope(|scope| {
        let load = scope.spawn(|| primary.pgbench(&["-c", "2", "-T", "6"]));
        std::thread::sleep(Duration::from_secs(3));
        standby.promote().unwrap();
        load.join().unwrap().unwrap();
    });
    // The new primary writes on timeline 2.
    standby.pgbench(&["-c", "2", "-T", "3"]).unwrap();
    standby.switch_wal().unwrap();
    let lsn = standby.current_lsn().unwrap();
    wait_flushed(&standby, &lsn);
    stop_receiver(&env, receiver);
    env.barman(&["archive-wal", "pg"]).ok();

    let wals = env.server_dir("pg").join("wals");
    let history = std::fs::read_to_string(wals.join("00000002.history")).expect("the history file is archived");
    let switch: Vec<&str> = history.split_whitespace().collect();
    let switch_lsn: &str = switch[1];
    let archived = archived_segments(&env);
    let tli = |n: &str| u32::from_str_radix(&n[..8], 16).unwrap();
    let old: Vec<u64> = archived.iter().filter(|(n, _)| tli(n) == 1).map(|(n, _)| seg_number(n)).collect();
    let new: Vec<&(String, PathBuf)> = archived.iter().filter(|(n, _)| tli(n) == 2).collect();
    assert!(!new.is_empty(), "{archived:?}");
    // The switch segment on timeline 2 follows timeline 1's last whole segment.
    let switch_seg = parse_lsn(switch_lsn) >> 24;
    assert_eq!(seg_number(&new[0].0), switch_seg, "{archived:?} {history}");
    // (None when streaming began in the switch segment: then only its .partial is there.)
    assert!(old.last().is_none_or(|&l| l + 1 >= switch_seg), "{archived:?} {history}");
    // Timeline 1's last, incomplete segment is kept as a partial file (archived
    // once a newer .partial exists: the newest one stays for the streamer, as Barman).
    let partial = format!("00000001{:08X}{:08X}.partial", switch_seg >> 8, switch_seg & 0xFF);
    let hash = &partial[..16];
    if switch_lsn_offset(switch_lsn) != 0 {
        assert!(
            wals.join(hash).join(&partial).exists() || env.server_dir("pg").join("streaming").join(&partial).exists(),
            "{partial} missing: {:?}, streaming {:?}, errors {:?}",
            names_in(&wals.join(hash)),
            names_in(&env.server_dir("pg").join("streaming")),
            names_in(&env.server_dir("pg").join("errors"))
        );
    }
    let pg_wal = standby.data_dir().join("pg_wal");
    for (name, path) in new {
        assert!(std::fs::read(path).unwrap() == std::fs::read(pg_wal.join(name)).unwrap(), "{name} differs");
    }
    for w in archived.iter().filter(|(n, _)| tli(n) == 2).map(|(n, _)| seg_number(n)).collect::<Vec<_>>().windows(2) {
        assert_eq!(w[1], w[0] + 1, "gap on timeline 2: {archived:?}");
    }
}

fn switch_lsn_offset(lsn: &str) -> u64 {
    parse_lsn(lsn) & ((16 << 20) - 1)
}

fn parse_lsn(s: &str) -> u64 {
    s.trim().parse::<barman::wal::Lsn>().unwrap().0
}

/// The streamed bytes below `lsn` (timeline 1) equal PostgreSQL's.
fn assert_on_disk_up_to(env: &Env, pg: &PgCluster, lsn: u64) {
    let seg = 16u64 << 20;
    let streaming = env.server_dir("pg").join("streaming");
    let last = (lsn - 1) / seg;
    let name = |n: u64| format!("00000001{:08X}{:08X}", n >> 8, n & 0xFF);
    let full = streaming.join(name(last));
    let path = if full.exists() { full } else { streaming.join(format!("{}.partial", name(last))) };
    let first = segments_in(&streaming)
        .iter()
        .chain(
            names_in(&streaming)
                .iter()
                .filter_map(|n| n.strip_suffix(".partial").map(str::to_string))
                .collect::<Vec<_>>()
                .iter(),
        )
        .map(|n| seg_number(n))
        .min();
    if !path.exists() && first.is_none_or(|f| last < f) {
        // Below where streaming started: the position reported at start (nothing of ours).
        return;
    }
    let ours = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let theirs = std::fs::read(pg.data_dir().join("pg_wal").join(name(last))).unwrap();
    let upto = (lsn - last * seg) as usize;
    assert!(ours[..upto] == theirs[..upto], "{} differs below {lsn:X}", path.display());
    // Every earlier segment is complete and equal.
    for n in segments_in(&streaming) {
        let num = seg_number(&n);
        if num < last {
            assert!(
                std::fs::read(streaming.join(&n)).unwrap()
                    == std::fs::read(pg.data_dir().join("pg_wal").join(&n)).unwrap(),
                "{n} differs"
            );
        }
    }
}

/// 20 rounds of: start the receiver, sample flush_lsn every 50 ms for a random
/// while, SIGKILL it, check the bytes below the last sample. Returns how many
/// rounds had a position to check.
fn kill_rounds(env: &Env, pg: &PgCluster, seed: u64) -> usize {
    let mut rng = seed | 1;
    let mut checked = 0;
    for _ in 0..20 {
        let mut child = spawn_receiver(env);
        wait_streaming(pg);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let run_for = Duration::from_millis(200 + rng % 1200);
        let started = Instant::now();
        let mut sampled = None;
        while started.elapsed() < run_for {
            if let Some(v) = replication_row(pg, "flush_lsn") {
                sampled = Some(parse_lsn(&v));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        if let Some(lsn) = sampled.filter(|&l| l > 0) {
            assert_on_disk_up_to(env, pg, lsn);
            checked += 1;
        }
        // The walsender notices the dead connection; wait for the slot to be free.
        wait_until(Duration::from_secs(30), "the slot to be released", || {
            pg.psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'barman'").is_ok_and(|v| v == "f")
        })
        .unwrap();
    }
    checked
}

struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn sigkill_under_load_keeps_every_acknowledged_byte() {
    let env = Env::new();
    let pg = start_pg(&env, &[]);
    env.write_config(&server_section(&pg.conninfo(), ""));
    pg.pgbench_init(1).unwrap();
    let seed: u64 = std::env::var("KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    let stop = std::sync::atomic::AtomicBool::new(false);
    let checked = std::thread::scope(|scope| {
        // Continuous load until the rounds are done.
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = pg.pgbench(&["-c", "2", "-T", "2"]);
            }
        });
        // Stops the load even when a round fails (else the scope would wait forever).
        let _stop = StopOnDrop(&stop);
        kill_rounds(&env, &pg, seed)
    });
    assert!(checked >= 15, "only {checked} rounds had a flush position to check (KILL_SEED={seed})");
}

/// receive-wal's one error line, for a setup that cannot work.
fn refused(env: &Env, needle: &str) {
    let out = env.barman(&["receive-wal", "pg"]);
    assert_eq!(out.code, 1, "stdout: {}\nstderr: {}", out.stdout, out.stderr);
    let errors: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(errors[0].contains(needle), "{:?} lacks {needle:?}", errors[0]);
}

#[test]
fn bad_setups_are_refused_with_one_clear_line() {
    let env = Env::new();
    let pg = PgCluster::start(env.path(), PgOptions { password: Some("right".into()), ..Default::default() }).unwrap();
    let good = format!("{} password=right", pg.conninfo());
    pg.psql("CREATE ROLE norepl LOGIN PASSWORD 'x'").unwrap();

    env.write_config(&format!(
        "[pg]\nconninfo = {good}\nstreaming_conninfo = {} password=wrong\nbackup_method = postgres\narchiver = on\nstreaming_archiver = on\n",
        pg.conninfo()
    ));
    refused(&env, "password authentication failed for user \"postgres\"");

    env.write_config(&format!(
        "[pg]\nconninfo = {good}\nstreaming_conninfo = host=127.0.0.1 port={} user=norepl password=x\nbackup_method = postgres\narchiver = on\nstreaming_archiver = on\n",
        pg.port()
    ));
    refused(&env, "replication");

    // A slot another consumer holds.
    pg.psql("SELECT pg_create_physical_replication_slot('barman')").unwrap();
    let mut other = Command::new(cluster_tests::util::pg_bin("pg_receivewal"))
        .args(["-h", "127.0.0.1", "-U", "postgres", "-S", "barman", "-n", "-p", &pg.port().to_string(), "-D"])
        .arg(env.path())
        .env("PGPASSWORD", "right")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(20), "pg_receivewal to hold the slot", || {
        pg.psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'barman'").is_ok_and(|v| v == "t")
    })
    .unwrap();
    env.write_config(&server_section(&good, ""));
    refused(&env, "replication slot 'barman' is already in use");
    other.kill().unwrap();
    other.wait().unwrap();

    // A catalog that belongs to another cluster.
    let dir = env.server_dir("pg");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("identity.json"), "{\n    \"systemid\": \"1234\",\n    \"version\": \"15\"\n}\n").unwrap();
    wait_until(Duration::from_secs(20), "the slot to be free", || {
        pg.psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'barman'").is_ok_and(|v| v == "f")
    })
    .unwrap();
    refused(&env, "differs from 1234");
    std::fs::remove_file(dir.join("identity.json")).unwrap();

    // wal_level = minimal.
    let minimal = PgCluster::start(
        env.path(),
        PgOptions { conf: conf(&[("wal_level", "minimal"), ("max_wal_senders", "0")]), ..Default::default() },
    )
    .unwrap();
    env.write_config(&server_section(&minimal.conninfo(), ""));
    refused(&env, "wal_level is 'minimal'");

    // streaming_archiver off: Barman's message.
    env.write_config(&format!("[pg]\nconninfo = {good}\nbackup_method = postgres\narchiver = on\n"));
    refused(&env, "streaming_archiver option set to 'off'");
}

#[test]
fn cron_keeps_one_receiver_and_check_reports_streaming() {
    let env = Env::new();
    let pg = start_pg(&env, &[]);
    env.write_config(&server_section(&pg.conninfo(), ""));
    let out = env.barman(&["cron"]);
    assert!(out.stdout.contains("Starting streaming archiver for server pg"), "{}{}", out.stdout, out.stderr);
    wait_streaming(&pg);
    // A second cron sees the receiver and starts nothing.
    let again = env.barman(&["cron"]);
    assert!(!again.stdout.contains("Starting streaming archiver"), "{}", again.stdout);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        pg.psql(&format!("SELECT count(*) FROM pg_stat_replication WHERE application_name = '{APP}'")).unwrap(),
        "1"
    );

    let check = env.barman(&["check", "pg"]);
    for line in ["\tPostgreSQL streaming: OK", "\treplication slot: OK", "\treceive-wal running: OK", "\twal_level: OK"]
    {
        assert!(check.stdout.contains(line), "{line:?} missing from:\n{}", check.stdout);
    }

    // get-wal -P serves the segment being streamed: PostgreSQL's bytes up to our flush.
    pg.psql("CREATE TABLE p AS SELECT generate_series(1, 5000) g").unwrap();
    let lsn = pg.current_lsn().unwrap();
    wait_flushed(&pg, &lsn);
    let current = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())").unwrap();
    let got = env.barman_cmd(&["get-wal", "-P", "pg", &current]).output().unwrap();
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    let theirs = std::fs::read(pg.data_dir().join("pg_wal").join(&current)).unwrap();
    let upto = (parse_lsn(&lsn) % (16 << 20)) as usize;
    assert_eq!(got.stdout.len(), 16 << 20);
    assert!(got.stdout[..upto] == theirs[..upto], "the partial served differs from pg_wal");

    // Streaming turned off: cron stops the receiver.
    env.write_config(&format!("[pg]\nconninfo = {}\nbackup_method = postgres\narchiver = on\n", pg.conninfo()));
    env.barman(&["cron"]);
    wait_until(Duration::from_secs(20), "cron to stop the receiver", || {
        pg.psql(&format!("SELECT count(*) FROM pg_stat_replication WHERE application_name = '{APP}'"))
            .is_ok_and(|v| v == "0")
    })
    .unwrap();
}

#[test]
fn slot_commands_and_reset_speak_barman() {
    let env = Env::new();
    let pg = start_pg(&env, &[]);
    env.write_config(&server_section(&pg.conninfo(), "create_slot = manual\n"));
    let out = env.barman(&["receive-wal", "--create-slot", "pg"]);
    out.ok();
    assert_eq!(
        out.stdout,
        "Creating physical replication slot 'barman' on server 'pg'\nReplication slot 'barman' created\n"
    );
    let again = env.barman(&["receive-wal", "--create-slot", "pg"]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("Replication slot 'barman' already exists"), "{}", again.stderr);
    env.barman(&["receive-wal", "--create-slot", "--if-not-exists", "pg"]).ok();
    let both = env.barman(&["receive-wal", "--stop", "--reset", "pg"]);
    assert!(both.stderr.contains("--stop and --reset options are not compatible"), "{}", both.stderr);
    let none = env.barman(&["receive-wal", "--stop", "pg"]);
    assert!(
        none.stderr.contains("Termination of receive-wal failed: no such process for server pg"),
        "{}",
        none.stderr
    );

    // --reset: a .partial holding WAL is kept; the new start is marked by an empty one.
    let streaming = env.server_dir("pg").join("streaming");
    let receiver = spawn_receiver(&env);
    wait_streaming(&pg);
    pg.psql("CREATE TABLE r AS SELECT generate_series(1, 1000) g").unwrap();
    wait_flushed(&pg, &pg.current_lsn().unwrap());
    stop_receiver(&env, receiver);
    let before: Vec<String> = names_in(&streaming).into_iter().filter(|n| n.ends_with(".partial")).collect();
    assert_eq!(before.len(), 1, "{before:?}");
    pg.psql("SELECT pg_drop_replication_slot('barman')").unwrap();
    for _ in 0..3 {
        pg.switch_wal().unwrap();
    }
    env.write_config(&server_section(&pg.conninfo(), "create_slot = auto\n"));
    let reset = env.barman(&["receive-wal", "--reset", "pg"]);
    reset.ok();
    assert!(reset.stdout.contains("Resetting receive-wal directory status"), "{}", reset.stdout);
    assert!(reset.stdout.contains(&format!("Keeping {}", streaming.join(&before[0]).display())), "{}", reset.stdout);
    assert!(streaming.join(&before[0]).exists(), "the .partial with WAL was thrown away");
    let after: Vec<String> = names_in(&streaming).into_iter().filter(|n| n.ends_with(".partial")).collect();
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after[1] > before[0], "{after:?}");
    assert_eq!(std::fs::metadata(streaming.join(&after[1])).unwrap().len(), 0);
    let aligned = env.barman(&["receive-wal", "--reset", "pg"]);
    assert!(aligned.stdout.contains("Nothing to do. Position of receive-wal is aligned."), "{}", aligned.stdout);

    env.barman(&["receive-wal", "--create-slot", "pg"]).ok();
    env.barman(&["receive-wal", "--drop-slot", "pg"]).ok();
    let gone = env.barman(&["receive-wal", "--drop-slot", "pg"]);
    assert!(gone.stderr.contains("Replication slot 'barman' does not exist"), "{}", gone.stderr);
}

#[test]
fn server_shutdown_and_lost_position_end_with_one_error_line() {
    let env = Env::new();
    // No slot, little WAL kept: what the receiver needs can be recycled.
    let mut pg = PgCluster::start(
        env.path(),
        PgOptions { conf: conf(&[("max_wal_size", "'32MB'"), ("min_wal_size", "'32MB'")]), ..Default::default() },
    )
    .unwrap();
    let section = format!(
        "[pg]\nconninfo = {c}\nstreaming_conninfo = {c}\nbackup_method = postgres\narchiver = on\nstreaming_archiver = on\n",
        c = pg.conninfo()
    );
    env.write_config(&section);

    // PostgreSQL shuts down under the receiver: it exits 1 with one error line,
    // and what it had reported flushed is on disk.
    let receiver = spawn_receiver(&env);
    wait_streaming(&pg);
    pg.psql("CREATE TABLE s AS SELECT generate_series(1, 10000) g").unwrap();
    let lsn = pg.current_lsn().unwrap();
    wait_flushed(&pg, &lsn);
    pg.stop().unwrap();
    let out = receiver.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].starts_with("ERROR: pg: "), "{stderr}");

    // The WAL after our position is recycled while no receiver runs: the
    // restart says so and names --reset; after --reset streaming resumes.
    pg.restart().unwrap();
    pg.psql("CREATE TABLE big (t text)").unwrap();
    for _ in 0..6 {
        pg.psql("INSERT INTO big SELECT repeat(md5(g::text), 20) FROM generate_series(1, 20000) g").unwrap();
        pg.switch_wal().unwrap();
        pg.psql("CHECKPOINT").unwrap();
    }
    refused(&env, "--reset pg");
    // Room again, so that no checkpoint removes WAL while the receiver catches up.
    pg.psql("ALTER SYSTEM SET max_wal_size = '1GB'").unwrap();
    pg.psql("SELECT pg_reload_conf()").unwrap();
    let reset = env.barman(&["receive-wal", "--reset", "pg"]);
    reset.ok();
    assert!(reset.stdout.contains("Creating status file"), "{}", reset.stdout);
    let receiver = spawn_receiver(&env);
    wait_streaming(&pg);
    pg.switch_wal().unwrap();
    wait_flushed(&pg, &pg.current_lsn().unwrap());
    stop_receiver(&env, receiver);
}

/// Runs the same command with Barman 3.17 and with ours until Barman gives the
/// same answer twice around ours (positions move while WAL is written), then
/// asserts ours is that answer: stdout, stderr and exit code.
fn same_as_barman(env: &Env, args: &[&str]) -> String {
    let barman = cluster_tests::reference::barman().expect("reference Barman (scripts/setup-reference.sh)");
    let theirs = || {
        let o = common::run(Command::new(&barman).arg("-c").arg(&env.config).args(args), None);
        (o.code, o.stdout, o.stderr)
    };
    let ours = || {
        let o = env.barman(args);
        (o.code, o.stdout, o.stderr)
    };
    let mut last = None;
    for _ in 0..20 {
        let (before, mut mine, after) = (theirs(), ours(), theirs());
        // The one thing ours adds: our own receiver's reporting mode (docs/receive-wal.md).
        for mode in ["synchronous", "asynchronous"] {
            mine.1 = mine.1.replace(&format!("     Receiver mode   : {mode}\n"), "");
            mine.1 = mine.1.replace(&format!("\"receiver_mode\": \"{mode}\", "), "");
        }
        if before == after {
            assert_eq!(mine, before, "barman {args:?} differs from Barman 3.17 (left: ours)");
            return mine.1;
        }
        last = Some((before, after));
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("Barman's own answer never settled for {args:?}: {last:?}");
}

#[test]
fn replication_status_prints_what_barman_prints() {
    let env = Env::new();
    let pg = start_pg(&env, &[]);
    pg.psql("CREATE ROLE nomon LOGIN").unwrap();
    // One more WAL streamer, over the Unix socket and without a slot (asynchronous).
    let socket_streamer = env.path().join("pg_receivewal");
    std::fs::create_dir_all(&socket_streamer).unwrap();
    let mut other = Command::new(cluster_tests::util::pg_bin("pg_receivewal"))
        .arg("-d")
        .arg(format!(
            "host={} port={} user=postgres application_name=socket_streamer",
            pg.socket_dir().display(),
            pg.port()
        ))
        .args(["-n", "-D"])
        .arg(&socket_streamer)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _other = Kill(&mut other);
    let standby = pg.make_standby(env.path(), "false", true).unwrap();
    standby.set_conf("hot_standby_feedback", "on").unwrap();
    let down = cluster_tests::util::free_port().unwrap();
    let mut config = server_section(&pg.conninfo(), "");
    config.push_str(&format!(
        "[down]\nconninfo = host=127.0.0.1 port={down} user=postgres dbname=postgres\nbackup_method = postgres\narchiver = on\n\
         [nomon]\nconninfo = host=127.0.0.1 port={port} user=nomon dbname=postgres\nbackup_method = postgres\narchiver = on\n\
         [stby]\nconninfo = {stby}\nbackup_method = postgres\narchiver = on\n\
         [viawal]\nconninfo = host=127.0.0.1 port={down} user=postgres dbname=postgres\nwal_conninfo = {pgci}\n\
         backup_method = postgres\narchiver = on\n",
        port = pg.port(),
        stby = standby.conninfo(),
        pgci = pg.conninfo(),
    ));
    env.write_config(&config);
    let receiver = spawn_receiver(&env);
    wait_streaming(&pg);
    pg.set_conf("synchronous_standby_names", &conf_quote(APP)).unwrap();
    wait_until(Duration::from_secs(30), "three streaming clients, ours synchronous", || {
        pg.psql(
            "SELECT string_agg(application_name || ':' || sync_state, ',' ORDER BY application_name) \
                 FROM pg_stat_replication WHERE state = 'streaming'",
        )
        .is_ok_and(|v| v.contains(&format!("{APP}:sync")) && v.split(',').count() == 3)
    })
    .unwrap();

    let full = same_as_barman(&env, &["replication-status", "pg", "stby", "down"]);
    // What the cluster promises to show: our receiver as the synchronous WAL streamer.
    assert!(full.contains("  1. #1 Sync WAL streamer\n     Application name: barman_receive_wal\n"), "{full}");
    assert!(full.contains("     Current state   : streaming (sync)\n     Replication slot: barman\n"), "{full}");
    // Set after streaming started, followed: ours says so under Barman's lines.
    assert_eq!(receiver_mode(&env), "synchronous");
    assert!(full.contains("Async standby") && full.contains("Unix domain socket"), "{full}");
    assert!(full.contains("Standby's xmin  : "), "{full}");
    assert!(full.contains("Status of streaming clients for server 'stby':\n  Current LSN on master: "), "{full}");
    for args in [
        &["replication-status", "--minimal", "pg", "stby", "viawal"][..],
        &["replication-status", "--target", "wal-streamer", "pg"],
        &["replication-status", "--target", "hot-standby", "--minimal", "pg", "stby"],
        &["replication-status", "--source", "wal-host", "--target", "wal-streamer", "viawal"],
        &["replication-status", "--source", "backup-host", "viawal"],
        &["-f", "json", "replication-status", "pg", "stby", "down"],
        &["-f", "json", "replication-status", "--minimal", "pg"],
    ] {
        same_as_barman(&env, args);
    }

    // A role without monitoring privileges: one line saying so (Barman aborts the
    // whole command there with a traceback-like EXCEPTION); the next server is still shown.
    let out = env.barman(&["replication-status", "nomon", "pg"]);
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr.lines().collect::<Vec<_>>(),
        [
            "ERROR: Postgres user 'nomon' is missing required privileges (see \"Preliminary steps\" in the Barman manual)"
        ]
    );
    assert!(out.stdout.starts_with("Status of streaming clients for server 'pg':"), "{}", out.stdout);
    stop_receiver(&env, receiver);
}
