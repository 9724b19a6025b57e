//! Our clients and Barman 3.17's, against our server and Barman's, over real ssh:
//! every pairing archives and restores the same bytes, with every client option.

#![allow(clippy::unwrap_used)]

mod common;

use cluster_tests::reference;
use cluster_tests::ssh::Sshd;
use common::{Env, real_segments, run};
use std::path::{Path, PathBuf};
use std::process::Command;

fn config_for(pg: &cluster_tests::pg::PgCluster) -> String {
    format!("[pg]\nconninfo = {}\nbackup_method = postgres\narchiver = on\ncompression = gzip\n", pg.conninfo())
}

/// Runs a client with `ssh` resolved through the sshd's wrapper.
fn client<S: AsRef<std::ffi::OsStr>>(program: &Path, sshd: &Sshd, args: &[S]) -> Command {
    let mut c = Command::new(program);
    let path = format!("{}:{}", sshd.wrapper_dir().display(), std::env::var("PATH").unwrap_or_default());
    c.env("PATH", path).args(args);
    c
}

/// barman-wal-restore's arguments: `-c CFG -U USER [-p N --spool-dir SPOOL] 127.0.0.1 pg WAL DEST`.
fn restore_args(cfg: &str, user: &str, prefetch: Option<(u32, &Path)>, wal: &str, dest: &Path) -> Vec<String> {
    let mut a: Vec<String> = vec!["-c".into(), cfg.into(), "-U".into(), user.into()];
    if let Some((n, spool)) = prefetch {
        a.extend(["-p".into(), n.to_string(), "--spool-dir".into(), spool.display().to_string()]);
    }
    a.extend(["127.0.0.1".into(), "pg".into(), wal.into(), dest.display().to_string()]);
    a
}

fn write_segment(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn barman_wal_archive_of_barman_feeds_our_put_wal_and_ours_feeds_barmans() {
    let env = Env::new();
    let (pg, segs) = real_segments(&env, 9);
    env.write_config(&config_for(&pg));
    let barman = reference::barman().expect("reference Barman");
    let venv_bin = barman.parent().unwrap().to_path_buf();
    let ours = Sshd::start(env.path(), std::slice::from_ref(&env.bin), &[]).unwrap();
    let theirs = Sshd::start(env.path(), std::slice::from_ref(&venv_bin), &[]).unwrap();
    let flags: [&[&str]; 9] = [
        &[],
        &["--md5"],
        &["-z"],
        &["-j"],
        &["--xz"],
        &["--zstd"],
        &["--lz4"],
        &["--snappy"],
        &["--zstd", "--compression-level", "high"],
    ];
    let cfg = env.config.to_str().unwrap().to_string();
    let staging = env.path().join("pgwal");
    for (pairing, (program, sshd, reader)) in [
        (reference::barman_wal_archive().unwrap(), &ours, env.bin.join("barman")),
        (env.bin.join("barman-wal-archive"), &theirs, barman.clone()),
    ]
    .into_iter()
    .enumerate()
    {
        // A fresh archive for each pairing.
        let _ = std::fs::remove_dir_all(env.server_dir("pg"));
        for ((name, bytes), extra) in segs.iter().zip(flags) {
            let wal = write_segment(&staging, name, bytes);
            let mut args: Vec<&str> = extra.to_vec();
            let user = sshd.login_user();
            args.extend(["-c", &cfg, "-U", &user, "127.0.0.1", "pg", wal.to_str().unwrap()]);
            let out = run(&mut client(&program, sshd, &args), None);
            assert_eq!(out.code, 0, "pairing {pairing} {extra:?}: {}{}", out.stdout, out.stderr);
        }
        let arch = run(Command::new(&reader).args(["-c", &cfg, "archive-wal", "pg"]), None);
        assert_eq!(arch.code, 0, "pairing {pairing}: {}{}", arch.stdout, arch.stderr);
        for (name, bytes) in &segs {
            let got = Command::new(&reader).args(["-c", &cfg, "-q", "get-wal", "pg", name]).output().unwrap();
            assert!(got.status.success(), "pairing {pairing} {name}: {}", String::from_utf8_lossy(&got.stderr));
            assert!(got.stdout == *bytes, "pairing {pairing}: {name} differs");
        }
    }
    // --test reports the server's readiness.
    let user = ours.login_user();
    let t = run(
        &mut client(
            &env.bin.join("barman-wal-archive"),
            &ours,
            &["--test", "-c", &cfg, "-U", &user, "127.0.0.1", "pg", "DUMMY"],
        ),
        None,
    );
    assert_eq!(t.code, 0);
    assert!(t.stdout.contains("Ready to accept WAL files for the server pg"), "{}", t.stdout);
}

#[test]
fn barman_wal_restore_with_both_servers() {
    let env = Env::new();
    let (pg, segs) = real_segments(&env, 6);
    env.write_config(&config_for(&pg));
    let cfg = env.config.to_str().unwrap().to_string();
    // Fill our archive through put-wal's directory and archive-wal.
    let incoming = env.server_dir("pg").join("incoming");
    for (name, bytes) in &segs {
        write_segment(&incoming, name, bytes);
    }
    env.barman(&["archive-wal", "pg"]).ok();
    let barman = reference::barman().unwrap();
    let ours = Sshd::start(env.path(), std::slice::from_ref(&env.bin), &[]).unwrap();
    let theirs = Sshd::start(env.path(), &[barman.parent().unwrap().to_path_buf()], &[]).unwrap();
    let our_client = env.bin.join("barman-wal-restore");
    let their_client = reference::barman_wal_restore().unwrap();
    let cases = [
        ("ours->ours", &our_client, &ours),
        ("ours->barman", &our_client, &theirs),
        ("barman->ours", &their_client, &ours),
    ];
    for (label, program, sshd) in cases {
        let spool = env.path().join(format!("spool-{}", label.replace("->", "-")));
        let dest = env.path().join("dest");
        let user = sshd.login_user();
        let args = restore_args(&cfg, &user, Some((3, &spool)), &segs[0].0, &dest);
        let out = run(&mut client(program, sshd, &args), None);
        assert_eq!(out.code, 0, "{label}: {}{}", out.stdout, out.stderr);
        assert!(std::fs::read(&dest).unwrap() == segs[0].1, "{label}: first segment differs");
        // The next two were prefetched, plain, into the spool; the next call takes
        // its file from there without ssh.
        for (name, bytes) in &segs[1..3] {
            let spooled = std::fs::read(spool.join(name)).unwrap_or_else(|e| {
                panic!("{label}: {name} not spooled ({e}): {:?} {}", common::names_in(&spool), out.stderr)
            });
            assert!(spooled == *bytes, "{label}: spooled {name} differs");
        }
        let args = restore_args(&cfg, &user, Some((3, &spool)), &segs[1].0, &dest);
        let mut no_ssh = Command::new(program);
        no_ssh.env("PATH", "/nonexistent").args(args);
        let out = run(&mut no_ssh, None);
        assert_eq!(out.code, 0, "{label}: spool delivery used ssh? {}", out.stderr);
        assert!(std::fs::read(&dest).unwrap() == segs[1].1);
        // A missing WAL: non-zero, never a hang; with -p Barman's code 2.
        let missing = "0000000100000000000000FE";
        let args = restore_args(&cfg, &user, Some((3, &spool)), missing, &dest);
        assert_eq!(run(&mut client(program, sshd, &args), None).code, 2, "{label}: missing WAL with -p");
        let args = restore_args(&cfg, &user, None, missing, &dest);
        assert_eq!(run(&mut client(program, sshd, &args), None).code, 1, "{label}: missing WAL");
        let args = restore_args(&cfg, &user, None, "not-a-wal", &dest);
        assert_eq!(run(&mut client(program, sshd, &args), None).code, 3, "{label}: bad name");
    }
    // A server nobody listens on: ssh's 255 becomes 2.
    let dest = env.path().join("dest");
    let mut c = Command::new(&our_client);
    c.args(["--port", "1", "-U", "nobody", "127.0.0.1", "pg", &segs[0].0, dest.to_str().unwrap()]);
    assert_eq!(run(&mut c, None).code, 2);
}

#[test]
fn prefetch_of_an_uncompressed_archive() {
    let env = Env::new();
    let (pg, segs) = real_segments(&env, 4);
    env.write_config(&format!("[pg]\nconninfo = {}\nbackup_method = postgres\narchiver = on\n", pg.conninfo()));
    let cfg = env.config.to_str().unwrap().to_string();
    let incoming = env.server_dir("pg").join("incoming");
    for (name, bytes) in &segs {
        write_segment(&incoming, name, bytes);
    }
    env.barman(&["archive-wal", "pg"]).ok();
    let sshd = Sshd::start(env.path(), std::slice::from_ref(&env.bin), &[]).unwrap();
    let spool = env.path().join("spool");
    let dest = env.path().join("dest");
    let user = sshd.login_user();
    let args = restore_args(&cfg, &user, Some((4, &spool)), &segs[0].0, &dest);
    let out = run(&mut client(&env.bin.join("barman-wal-restore"), &sshd, &args), None);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(std::fs::read(&dest).unwrap() == segs[0].1);
    for (name, bytes) in &segs[1..] {
        assert!(std::fs::read(spool.join(name)).unwrap() == *bytes, "{name}");
    }
    // Only final files in the spool: no temporary file is left behind.
    assert!(common::names_in(&spool).iter().all(|n| !n.ends_with(".tmp")), "{:?}", common::names_in(&spool));
}
