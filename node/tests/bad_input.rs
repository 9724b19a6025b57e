//! Bad input, each a test: one clear error line, a non-zero exit, nothing lost
//! or overwritten, nothing half-written under a final name.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Env, Out, SYS, names_in, write_identity};
use std::path::Path;

fn segment(seg: u32, sysid: u64, pageaddr_seg: u32) -> Vec<u8> {
    common::segment(seg, sysid, pageaddr_seg, false)
}

fn name(seg: u32) -> String {
    common::seg_name(seg)
}

fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    common::put_wal_stream(files)
}

fn setup() -> Env {
    let env = Env::new();
    env.write_config("[pg]\nconninfo = host=127.0.0.1 port=1 user=nobody connect_timeout=2\nbackup_method = postgres\narchiver = on\ncompression = zstd\n");
    write_identity(&env, "pg");
    env
}

/// Exactly one `ERROR:` line on stderr, naming `what`; a non-zero exit.
fn one_error(out: &Out, what: &str) {
    assert_ne!(out.code, 0, "{}", out.stderr);
    let errors: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("ERROR:")).collect();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(errors[0].contains(what), "'{}' lacks '{what}'", errors[0]);
}

fn incoming(env: &Env) -> Vec<String> {
    names_in(&env.server_dir("pg").join("incoming"))
}

#[test]
fn tar_entries_with_dotdot_or_absolute_paths_are_refused() {
    let env = setup();
    let seg = segment(2, SYS, 2);
    for bad in ["../000000010000000000000002", "/tmp/000000010000000000000002", "x/../../000000010000000000000002"] {
        let out = env.barman_stdin(&["put-wal", "pg"], &tar(&[(bad, &seg)]));
        one_error(&out, "Unsupported filename");
        assert!(incoming(&env).is_empty(), "{:?}", incoming(&env));
        assert!(!Path::new("/tmp/000000010000000000000002").exists());
    }
}

#[test]
fn a_checksum_mismatch_is_refused() {
    let env = setup();
    let mut stream = tar(&[(&name(2), &segment(2, SYS, 2))]);
    stream[1024 + 5000] ^= 0x55; // inside the WAL member's data
    one_error(&env.barman_stdin(&["put-wal", "pg"], &stream), "Bad file checksum");
    assert!(incoming(&env).is_empty());
}

#[test]
fn a_truncated_segment_is_refused() {
    let env = setup();
    let seg = segment(2, SYS, 2);
    one_error(&env.barman_stdin(&["put-wal", "pg"], &tar(&[(&name(2), &seg[..1 << 20])])), "truncated");
    assert!(incoming(&env).is_empty());
}

#[test]
fn a_segment_from_another_system_is_refused_and_set_aside() {
    let env = setup();
    let foreign = segment(2, SYS + 1, 2);
    one_error(&env.barman_stdin(&["put-wal", "pg"], &tar(&[(&name(2), &foreign)])), "another cluster");
    assert!(incoming(&env).is_empty());
    // The same file arriving another way (rsync into incoming/) is set aside.
    let dir = env.server_dir("pg").join("incoming");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name(2)), &foreign).unwrap();
    one_error(&env.barman(&["archive-wal", "pg"]), "another cluster");
    assert!(incoming(&env).is_empty());
    assert!(names_in(&env.server_dir("pg").join("errors"))[0].ends_with(".invalid"));
    assert!(!env.server_dir("pg").join("wals/0000000100000000").join(name(2)).exists());
    let check = env.barman(&["check", "pg"]);
    assert!(check.stdout.contains("archiver errors: FAILED (invalid: 1)"), "{}", check.stdout);
    assert_ne!(check.code, 0);
}

#[test]
fn a_recycled_segment_is_refused() {
    let env = setup();
    // The bytes of segment 2 under the name of segment 5.
    one_error(&env.barman_stdin(&["put-wal", "pg"], &tar(&[(&name(5), &segment(2, SYS, 2))])), "xlp_pageaddr");
    assert!(incoming(&env).is_empty());
}

#[test]
fn a_bad_wal_name_is_refused() {
    let env = setup();
    one_error(
        &env.barman_stdin(&["put-wal", "pg"], &tar(&[("000000010000000000000002.bak", b"x")])),
        "not a valid wal file name",
    );
    one_error(&env.barman(&["get-wal", "pg", "nonsense"]), "is not a valid wal file name");
    assert_eq!(env.barman(&["get-wal", "pg", "nonsense"]).code, 3);
    // Arriving by another way, it is moved to errors/ as Barman does.
    let dir = env.server_dir("pg").join("incoming");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("backup_label"), b"x").unwrap();
    let out = env.barman(&["archive-wal", "pg"]);
    assert!(out.stdout.contains("Objects moved to errors directory"), "{}", out.stdout);
    assert!(names_in(&env.server_dir("pg").join("errors"))[0].ends_with(".unknown"));
}

#[test]
fn a_corrupt_configuration_line_is_named() {
    let env = setup();
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, format!("{text}this is not an option line\n")).unwrap();
    for args in [&["list-servers"][..], &["get-wal", "pg", &name(2)], &["put-wal", "pg"]] {
        let out = env.barman(args);
        one_error(&out, &format!("{}:", env.config.display()));
        assert!(out.stderr.contains("cannot parse 'this is not an option line'"), "{}", out.stderr);
    }
}

#[test]
fn a_full_disk_mid_write_loses_nothing() {
    let env = setup();
    let incoming_dir = env.server_dir("pg").join("incoming");
    std::fs::create_dir_all(&incoming_dir).unwrap();
    let Some(_mount) = cluster_tests::util::small_filesystem(&incoming_dir, 10).unwrap() else {
        return;
    };
    let seg = segment(2, SYS, 2);
    one_error(&env.barman_stdin(&["put-wal", "pg"], &tar(&[(&name(2), &seg)])), "No space left on device");
    assert!(incoming(&env).is_empty(), "{:?}", incoming(&env));
    // The archive filling up: the file stays in incoming/, nothing is catalogued.
    drop(_mount);
    std::fs::write(incoming_dir.join(name(3)), segment(3, SYS, 3)).unwrap();
    let wals = env.server_dir("pg").join("wals");
    std::fs::create_dir_all(&wals).unwrap();
    let Some(_wals_mount) = cluster_tests::util::small_filesystem(&wals, 1).unwrap() else { return };
    env.write_config("[pg]\nconninfo = host=127.0.0.1 port=1 user=nobody\nbackup_method = postgres\narchiver = on\n");
    let out = env.barman(&["archive-wal", "pg"]);
    one_error(&out, "No space left on device");
    assert_eq!(incoming(&env), [name(3)]);
    assert_eq!(std::fs::read(incoming_dir.join(name(3))).unwrap(), segment(3, SYS, 3));
    let db = std::fs::read_to_string(wals.join("pg-xlog.db")).unwrap_or_default();
    assert!(db.is_empty(), "{db}");
    assert!(!wals.join("0000000100000000").join(name(3)).exists());
}

/// A tar stream built by hand, for what our writer never produces.
fn raw_tar(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

fn file_header(size: usize) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size as u64);
    h.set_mode(0o600);
    h.set_cksum();
    h
}

#[test]
fn a_stream_without_checksums_or_with_odd_members_is_refused() {
    let env = setup();
    let seg = segment(2, SYS, 2);
    // No SHA256SUMS: nothing can be verified, nothing is kept.
    let no_sums = raw_tar(|b| b.append_data(&mut file_header(seg.len()), name(2), &seg[..]).unwrap());
    one_error(&env.barman_stdin(&["put-wal", "pg"], &no_sums), "Missing checksum");
    assert!(incoming(&env).is_empty(), "{:?}", incoming(&env));
    // A checksum line for a file the stream does not hold.
    let sums = format!("{}  {}\n", "0".repeat(64), name(3));
    let orphan = raw_tar(|b| {
        b.append_data(&mut file_header(seg.len()), name(2), &seg[..]).unwrap();
        b.append_data(&mut file_header(sums.len()), "SHA256SUMS", sums.as_bytes()).unwrap();
    });
    one_error(&env.barman_stdin(&["put-wal", "pg"], &orphan), &name(3));
    assert!(incoming(&env).is_empty(), "{:?}", incoming(&env));
    // A symbolic link is not a WAL file.
    let link = raw_tar(|b| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, name(2), "/etc/passwd").unwrap();
    });
    one_error(&env.barman_stdin(&["put-wal", "pg"], &link), "Unsupported file type");
    assert!(incoming(&env).is_empty(), "{:?}", incoming(&env));
}

#[test]
fn a_damaged_compressed_file_in_the_archive_is_an_error_not_garbage() {
    let env = setup();
    let dir = env.server_dir("pg").join("wals/0000000100000000");
    std::fs::create_dir_all(&dir).unwrap();
    // zstd magic, then garbage.
    std::fs::write(dir.join(name(2)), b"\x28\xb5\x2f\xfdnot really zstd data at all").unwrap();
    let out = env.barman(&["get-wal", "pg", &name(2)]);
    one_error(&out, "Error decompressing WAL");
    assert!(out.stdout.is_empty(), "nothing may reach restore_command's file");
}

#[test]
fn archive_wal_while_another_runs_says_so_and_touches_nothing() {
    let env = setup();
    let incoming_dir = env.server_dir("pg").join("incoming");
    std::fs::create_dir_all(&incoming_dir).unwrap();
    std::fs::write(incoming_dir.join(name(2)), segment(2, SYS, 2)).unwrap();
    let lock = env.home.join(".pg-archive-wal.lock");
    let held = barman::catalog::lock::Lock::acquire(&lock, false).unwrap();
    let out = env.barman(&["archive-wal", "pg"]);
    assert!(
        out.stdout.contains("Another archive-wal process is already running on server pg. Skipping to the next server"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(incoming(&env), [name(2)]);
    drop(held);
    env.barman(&["archive-wal", "pg"]).ok();
    assert!(incoming(&env).is_empty());
}
