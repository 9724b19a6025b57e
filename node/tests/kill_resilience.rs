//! SIGKILL of put-wal and archive-wal at random points, again and again: no
//! half-written file under a final name, nothing acknowledged lost, and a rerun
//! completes.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Env, names_in, write_identity};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

fn segment(seg: u32) -> Vec<u8> {
    common::segment(seg, common::SYS, seg, true)
}

fn name(seg: u32) -> String {
    common::seg_name(seg)
}

/// A simple seeded generator, printed so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn seed() -> u64 {
    let s = std::env::var("KILL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) | 1
    });
    eprintln!("KILL_SEED={s}");
    s
}

fn setup(compression: &str) -> Env {
    let env = Env::new();
    env.write_config(&format!(
        "[pg]\nconninfo = host=127.0.0.1 port=1 user=nobody\nbackup_method = postgres\narchiver = on\n{compression}"
    ));
    write_identity(&env, "pg");
    env
}

/// Files whose names carry no leading dot (what anybody may take as final).
fn final_names(dir: &std::path::Path) -> Vec<String> {
    names_in(dir).into_iter().filter(|n| !n.starts_with('.')).collect()
}

#[test]
fn put_wal_killed_at_random_points() {
    let env = setup("");
    let mut rng = Rng(seed());
    let incoming = env.server_dir("pg").join("incoming");
    let mut killed = 0;
    for round in 0..25u32 {
        let seg = 10 + round;
        let data = segment(seg);
        let seg_name = name(seg);
        let stream = common::put_wal_stream(&[(&seg_name, &data)]);
        let mut child = env
            .barman_cmd(&["put-wal", "pg"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let cut = (rng.next() % stream.len() as u64) as usize;
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&stream[..cut]);
            std::thread::sleep(Duration::from_millis(20));
            let _ = stdin.write_all(&stream[cut..]);
        });
        std::thread::sleep(Duration::from_millis(rng.next() % 60));
        let _ = child.kill();
        let status = child.wait().unwrap();
        let acknowledged = status.success();
        killed += usize::from(status.signal() == Some(libc::SIGKILL));
        let _ = feeder.join();
        // Whatever the kill point: a final name holds the complete file or nothing.
        let names = final_names(&incoming);
        if names.contains(&name(seg)) {
            assert!(
                std::fs::read(incoming.join(name(seg))).unwrap() == data,
                "round {round}: a half-written file under its final name"
            );
        } else {
            assert!(!acknowledged, "round {round}: put-wal exited 0 but the file is not there");
            // PostgreSQL retries: the rerun completes.
            env.barman_stdin(&["put-wal", "pg"], &common::put_wal_stream(&[(&seg_name, &data)])).ok();
            assert!(std::fs::read(incoming.join(name(seg))).unwrap() == data);
        }
    }
    assert!(killed > 0, "no run was interrupted");
    // A later archive-wal files them all and clears the leftovers of killed runs.
    env.barman(&["archive-wal", "pg"]).ok();
    assert!(names_in(&incoming).is_empty(), "{:?}", names_in(&incoming));
    let db = std::fs::read_to_string(env.server_dir("pg").join("wals/pg-xlog.db")).unwrap();
    assert_eq!(db.lines().count(), 25);
}

#[test]
fn archive_wal_killed_at_random_points() {
    let env = setup("compression = zstd\nparallel_jobs = 2\n");
    let mut rng = Rng(seed());
    let incoming = env.server_dir("pg").join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    // Enough work that a kill within 200 ms lands mid-run.
    let segs: Vec<u32> = (1..=32).collect();
    for s in &segs {
        std::fs::write(incoming.join(name(*s)), segment(*s)).unwrap();
    }
    let wals = env.server_dir("pg").join("wals/0000000100000000");
    let mut killed = 0;
    for _ in 0..30 {
        if final_names(&incoming).is_empty() {
            break;
        }
        let mut child =
            env.barman_cmd(&["-q", "archive-wal", "pg"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.next() % 200));
        let _ = child.kill();
        killed += usize::from(child.wait().unwrap().signal() == Some(libc::SIGKILL));
        // Every file under a final name in the archive is complete.
        for n in final_names(&wals) {
            let got = Command::new(env.bin.join("barman"))
                .args(["-c", env.config.to_str().unwrap(), "-q", "get-wal", "pg", &n])
                .output()
                .unwrap();
            let seg = u32::from_str_radix(&n[16..], 16).unwrap();
            assert!(got.status.success() && got.stdout == segment(seg), "{n} is damaged in the archive");
        }
        // Nothing is lost: each segment is in incoming/, in the archive, or both.
        for s in &segs {
            assert!(incoming.join(name(*s)).exists() || wals.join(name(*s)).exists(), "{} lost", name(*s));
        }
    }
    assert!(killed > 0, "no run was interrupted");
    env.barman(&["archive-wal", "pg"]).ok();
    assert!(names_in(&incoming).is_empty(), "{:?}", names_in(&incoming));
    let db = std::fs::read_to_string(env.server_dir("pg").join("wals/pg-xlog.db")).unwrap();
    let mut names: Vec<&str> = db.lines().map(|l| l.split('\t').next().unwrap()).collect();
    names.sort();
    let want: Vec<String> = segs.iter().map(|s| name(*s)).collect();
    assert_eq!(names, want, "each segment catalogued exactly once");
    assert_eq!(final_names(&wals), want);
    assert!(names_in(&wals).iter().all(|n| !n.ends_with(".tmp")), "{:?}", names_in(&wals));
}
