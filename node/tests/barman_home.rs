//! A home written by real Barman 3.17, WAL archived with several codecs, is read
//! as it is: get-wal returns the segments byte-identical, rebuild-xlogdb gives
//! Barman's catalogue, and the pre-3.13 layout is migrated as Barman does.

#![allow(clippy::unwrap_used)]

mod common;

use cluster_tests::reference;
use common::{Env, real_segments, run};
use std::process::Command;

const CODECS: [&str; 7] = ["gzip", "bzip2", "xz", "zstd", "lz4", "snappy", "pigz"];

#[test]
fn a_barman_home_is_read_as_it_is() {
    let env = Env::new();
    let (pg, segs) = real_segments(&env, CODECS.len() + 1);
    let barman = reference::barman().expect("reference Barman");
    let cfg = env.config.to_str().unwrap().to_string();
    let server = |codec: &str| {
        let c = if codec.is_empty() { String::new() } else { format!("compression = {codec}\n") };
        format!("[pg]\nconninfo = {}\nbackup_method = postgres\narchiver = on\n{c}", pg.conninfo())
    };
    let incoming = env.server_dir("pg").join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    let pigz_available =
        Command::new("sh").args(["-c", "command -v pigz"]).output().map(|o| o.status.success()).unwrap_or(false);
    if !pigz_available {
        cluster_tests::util::skip("pigz is not installed: the pigz-written file is gzip-written instead");
    }
    for ((name, bytes), codec) in segs.iter().zip(CODECS.iter().copied().chain([""])) {
        // Barman runs the pigz program for pigz; skip it where it is not installed.
        let codec = if codec == "pigz" && !pigz_available { "gzip" } else { codec };
        env.write_config(&server(codec));
        std::fs::write(incoming.join(name), bytes).unwrap();
        let out = run(Command::new(&barman).args(["-c", &cfg, "archive-wal", "pg"]), None);
        assert_eq!(out.code, 0, "Barman archive-wal with {codec}: {}{}", out.stdout, out.stderr);
    }
    let barman_db = std::fs::read_to_string(env.server_dir("pg").join("wals/pg-xlog.db")).unwrap();
    assert_eq!(barman_db.lines().count(), segs.len(), "{barman_db}");
    for (name, bytes) in &segs {
        let got =
            Command::new(env.bin.join("barman")).args(["-c", &cfg, "-q", "get-wal", "pg", name]).output().unwrap();
        assert!(got.status.success(), "{name}: {}", String::from_utf8_lossy(&got.stderr));
        assert!(got.stdout == *bytes, "{name} read back differently");
    }
    // Our rebuild gives what Barman's rebuild gives.
    let ours = env.barman(&["rebuild-xlogdb", "pg"]);
    assert_eq!(ours.code, 0, "{}", ours.stderr);
    let our_db = std::fs::read_to_string(env.server_dir("pg").join("wals/pg-xlog.db")).unwrap();
    let theirs = run(Command::new(&barman).args(["-c", &cfg, "rebuild-xlogdb", "pg"]), None);
    assert_eq!(theirs.code, 0);
    let their_db = std::fs::read_to_string(env.server_dir("pg").join("wals/pg-xlog.db")).unwrap();
    assert_eq!(our_db, their_db);
    for l in their_db.lines() {
        assert!(barman_db.contains(l.split('\t').next().unwrap()));
    }

    // The pre-3.13 layout: wals/xlog.db and base/<id>/backup.info.
    let wals = env.server_dir("pg").join("wals");
    std::fs::rename(wals.join("pg-xlog.db"), wals.join("xlog.db")).unwrap();
    let legacy = env.server_dir("pg").join("base/20240101T000000");
    std::fs::create_dir_all(legacy.join("data")).unwrap();
    std::fs::write(
        legacy.join("backup.info"),
        format!(
            "begin_offset=40\nbegin_time=2024-01-01 00:00:00+00:00\nbegin_wal={0}\nbegin_xlog=0/1000028\nend_offset=256\n\
             end_time=2024-01-01 00:10:00+00:00\nend_wal={0}\nend_xlog=0/1000100\nmode=postgres\npgdata=/srv/pg\nsize=1000\n\
             status=DONE\ntimeline=1\nversion=150018\nxlog_segment_size=16777216\n",
            segs[0].0
        ),
    )
    .unwrap();
    let out = env.barman(&["archive-wal", "pg"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!wals.join("xlog.db").exists(), "the legacy catalogue is dropped once rebuilt");
    assert_eq!(std::fs::read_to_string(wals.join("pg-xlog.db")).unwrap(), their_db);
    let st = env.barman(&["status", "pg"]);
    assert!(st.stdout.contains("No. of available backups: 1"), "{}", st.stdout);
    assert!(st.stdout.contains("First available backup: 20240101T000000"), "{}", st.stdout);
    // And Barman still reads everything after we touched it.
    let check = run(Command::new(&barman).args(["-c", &cfg, "list-backups", "pg"]), None);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    assert!(check.stdout.contains("20240101T000000"), "{}", check.stdout);
}
