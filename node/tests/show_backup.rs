//! `show-backup` and `list-files` against Barman 3.17 itself: real backups of a
//! PostgreSQL 15 primary taken by our `barman backup` (plain with a tablespace,
//! then gzip tar with a name), their WAL archived; then the real Barman and ours
//! read the same configuration and catalogue, and print the same thing, console
//! byte for byte, JSON as the same values.
#![allow(clippy::unwrap_used)]

mod common;

use cluster_tests::pg::PgCluster;
use common::{Env, Out, run};
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A primary archiving into the server's incoming directory, with a table in a tablespace.
fn primary(env: &Env) -> PgCluster {
    let pg = env.archiving_primary(&[]);
    env.tablespace(&pg);
    pg.psql("CREATE TABLE t (i int, s text) TABLESPACE ts").unwrap();
    pg.psql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 50000) g").unwrap();
    pg
}

fn config(env: &Env, pg: &PgCluster, extra: &str) {
    env.write_config(&format!(
        "[pg]\nconninfo = {ci}\nstreaming_conninfo = {ci}\nbackup_method = postgres\narchiver = on\nimmediate_checkpoint = true\n\
         compression = gzip\n{extra}",
        ci = pg.conninfo()
    ));
}

fn backup_ids(env: &Env) -> Vec<String> {
    let out = env.barman(&["list-backups", "--minimal", "pg"]);
    out.ok();
    out.stdout.lines().map(str::to_string).collect()
}

/// Archives what PostgreSQL has sent and checks the backups `ids` (all when empty) to DONE.
fn archive_and_check(env: &Env, pg: &PgCluster, ids: &[&str]) {
    let last = pg.switch_wal().unwrap();
    let incoming = env.server_dir("pg").join("incoming");
    cluster_tests::util::wait_until(Duration::from_secs(30), "the last segment in incoming", || {
        incoming.join(&last).exists()
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    env.barman(&["archive-wal", "pg"]).ok();
    let all = backup_ids(env);
    for id in if ids.is_empty() { all.iter().map(String::as_str).collect() } else { ids.to_vec() } {
        env.barman(&["check-backup", "pg", id]).ok();
    }
}

struct Both {
    barman: PathBuf,
}

impl Both {
    fn theirs(&self, env: &Env, args: &[&str]) -> Out {
        run(Command::new(&self.barman).arg("-c").arg(&env.config).args(args), None)
    }

    /// Both print the same bytes, with the same exit code; ours is returned.
    fn same(&self, env: &Env, args: &[&str]) -> Out {
        let theirs = self.theirs(env, args);
        let ours = env.barman(args);
        assert_eq!(ours.stdout, theirs.stdout, "stdout of {args:?} (left ours, right Barman)");
        assert_eq!(ours.stderr, theirs.stderr, "stderr of {args:?} (left ours, right Barman)");
        assert_eq!(ours.code, theirs.code, "exit code of {args:?}");
        ours
    }

    /// `-f json`: the same document.
    fn same_json(&self, env: &Env, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["-f", "json"];
        full.extend_from_slice(args);
        let theirs = self.theirs(env, &full);
        let ours = env.barman(&full);
        assert_eq!(ours.code, theirs.code, "exit code of {full:?}: {}", ours.stderr);
        let parse = |o: &Out| -> serde_json::Value {
            serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{full:?}: {e}: {:?} {:?}", o.stdout, o.stderr))
        };
        let (o, t) = (parse(&ours), parse(&theirs));
        assert_eq!(o, t, "JSON of {full:?} (left ours, right Barman)");
        o
    }
}

fn lines_with(out: &Out, what: &str) -> usize {
    out.stdout.lines().filter(|l| l.contains(what)).count()
}

/// Writes the metadata of backup `id`: `from`'s, with the fields of `set`
/// replaced (or added), and those set to "" left out.
fn derived_backup(env: &Env, from: &str, id: &str, set: &[(&str, &str)]) {
    let meta = env.server_dir("pg").join("meta");
    let text = fs::read_to_string(meta.join(format!("{from}-backup.info"))).unwrap();
    let mut lines: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !set.iter().any(|(s, _)| s == k))
        .collect();
    lines.extend(set.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.to_string(), v.to_string())));
    lines.sort();
    let text: String = lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    fs::write(meta.join(format!("{id}-backup.info")), text).unwrap();
}

/// A FAILED backup in the catalogue: a copy of `from`'s metadata, older than any other.
fn failed_backup(env: &Env, from: &str) -> String {
    let id = "20000101T000000";
    derived_backup(
        env,
        from,
        id,
        &[("status", "FAILED"), ("error", "failure copying files (data transfer failure)"), ("backup_name", "")],
    );
    id.to_string()
}

fn compare_backup(both: &Both, env: &Env, id: &str) {
    both.same(env, &["show-backup", "pg", id]);
    both.same_json(env, &["show-backup", "pg", id]);
    for target in ["standalone", "data", "wal", "full"] {
        both.same(env, &["list-files", "pg", id, "--target", target]);
    }
}

#[test]
fn show_backup_and_list_files_print_what_barman_prints() {
    let barman = cluster_tests::reference::barman().expect("reference Barman (scripts/setup-reference.sh)");
    let both = Both { barman };
    let env = Env::new();
    let pg = primary(&env);

    // A plain backup with a tablespace, then a named gzip tar one.
    config(&env, &pg, "");
    env.barman(&["backup", "pg"]).ok();
    pg.psql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g").unwrap();
    pg.switch_wal().unwrap();
    config(&env, &pg, "backup_compression = gzip\n");
    env.barman(&["backup", "--name", "nightly", "pg"]).ok();
    pg.psql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g").unwrap();
    archive_and_check(&env, &pg, &[]);
    let ids = backup_ids(&env);
    assert_eq!(ids.len(), 2, "{ids:?}");
    let (tar, plain) = (ids[0].clone(), ids[1].clone());

    // Every target of both backups, console and JSON.
    let failed = failed_backup(&env, &plain);
    config(&env, &pg, "retention_policy = REDUNDANCY 1\n");
    for id in [&plain, &tar] {
        compare_backup(&both, &env, id);
    }
    let shown = both.same(&env, &["show-backup", "pg", &plain]);
    for l in [
        "  Status                 : DONE",
        "    Backup Method        : postgres",
        "    Backup Type          : full",
        "  Tablespaces:",
        "    WAL compression ratio: ",
        "    Retention Policy     : OBSOLETE",
        "    Previous Backup      : - (this is the oldest base backup)",
        &format!("    Next Backup          : {tar}"),
    ] {
        assert!(shown.stdout.contains(l), "missing {l:?} in\n{}", shown.stdout);
    }
    let shown = both.same(&env, &["show-backup", "pg", "latest"]);
    for l in
        ["  Backup Name            : nightly", "    Backup Compression   : gzip", "    Retention Policy     : VALID"]
    {
        assert!(shown.stdout.contains(l), "missing {l:?} in\n{}", shown.stdout);
    }
    let doc = both.same_json(&env, &["show-backup", "pg", "nightly"]);
    assert_eq!(doc["pg"]["backup_id"], serde_json::json!(tar));
    assert_eq!(doc["pg"]["base_backup_information"]["compression"], "gzip");
    both.same(&env, &["show-backups", "pg", "oldest"]);

    // The file lists: the plain backup's data, its tablespace and the WAL it needs.
    let files = both.same(&env, &["list-files", "pg", &plain]);
    let base = env.server_dir("pg").join("base").join(&plain);
    assert!(files.stdout.starts_with(&format!("{}/", base.display())), "{}", files.stdout);
    assert!(lines_with(&files, "/data/PG_VERSION") == 1 && lines_with(&files, "/wals/") >= 1, "{}", files.stdout);
    let data = both.same(&env, &["list-files", "--target", "data", "pg", &plain]);
    assert_eq!(lines_with(&data, "/wals/"), 0);
    let tar_files = both.same(&env, &["list-files", "pg", &tar, "--target", "data"]);
    assert!(tar_files.stdout.contains("/data/base.tar.gz\n"), "{}", tar_files.stdout);
    both.same(&env, &["list-files", "pg", &plain, "--target", "data", "--list-empty-directories"]);
    both.same(&env, &["-f", "json", "list-files", "pg", &tar, "--target", "full"]);

    // A FAILED backup: general information and its error.
    let f = both.same(&env, &["show-backup", "pg", &failed]);
    assert!(f.stdout.contains("  Error                  : failure copying files"), "{}", f.stdout);
    both.same_json(&env, &["show-backup", "pg", "last-failed"]);
    both.same(&env, &["list-files", "pg", &failed, "--target", "data"]);
    both.same(&env, &["list-files", "pg", &failed, "--target", "wal"]);

    // Unknown backups, as Barman says it.
    for cmd in ["show-backup", "list-files"] {
        let out = both.same(&env, &[cmd, "pg", "20200101T000000"]);
        assert_eq!((out.code, out.stderr.trim()), (1, "ERROR: Unknown backup '20200101T000000' for server 'pg'"));
        both.same(&env, &[cmd, "pg", "no-such-name"]);
    }
    both.same(&env, &["show-backup", "nosuchserver", "latest"]);

    // An inactive server still shows its backups.
    config(&env, &pg, "active = false\n");
    both.same(&env, &["show-backup", "pg", &tar]);
    both.same(&env, &["list-files", "pg", &tar]);

    // A timeline forked after both backups: reachable from both, and listed
    // among the WAL files from the newest backup on.
    let lsn = pg.current_lsn().unwrap();
    config(&env, &pg, "");
    let incoming = env.server_dir("pg").join("incoming");
    fs::write(incoming.join("00000002.history"), format!("1\t{lsn}\tno recovery target specified\n")).unwrap();
    archive_and_check(&env, &pg, &[&plain, &tar]);
    assert!(env.server_dir("pg").join("wals/00000002.history").exists());
    config(&env, &pg, "retention_policy = REDUNDANCY 1\n");
    for id in [&plain, &tar] {
        let out = both.same(&env, &["show-backup", "pg", id]);
        assert!(out.stdout.contains("    Reachable timelines  : 2\n"), "{}", out.stdout);
        assert!(out.stdout.contains("WARNING: WAL information is inaccurate"), "{}", out.stdout);
        let doc = both.same_json(&env, &["show-backup", "pg", id]);
        assert_eq!(doc["pg"]["wal_information"]["timelines"], serde_json::json!(["2"]));
    }
    let wal = both.same(&env, &["list-files", "pg", &tar, "--target", "wal"]);
    assert!(wal.stdout.contains("/wals/00000002.history\n"), "{}", wal.stdout);
    both.same(&env, &["list-files", "pg", &plain, "--target", "full"]);
    drop(pg);

    // What our postgres method does not make but Barman's catalogues hold: an
    // rsync backup with copy statistics of several workers, and a PostgreSQL 17
    // incremental backup whose parent names it as its child.
    let rsync = "20000102T000000";
    derived_backup(
        &env,
        &plain,
        rsync,
        &[
            ("mode", "rsync-concurrent"),
            ("encryption", "gpg"),
            ("deduplicated_size", "9000000"),
            ("copy_stats", "{'copy_time': 125.5, 'analysis_time': 2.25, 'number_of_workers': 4, 'total_time': 130}"),
            ("tablespaces", "None"),
        ],
    );
    let incremental = "20991231T000000";
    derived_backup(
        &env,
        &tar,
        incremental,
        &[
            ("parent_backup_id", &tar),
            ("summarize_wal", "on"),
            ("data_checksums", "on"),
            ("deduplicated_size", "1000000"),
            ("copy_stats", "{'copy_time': 2, 'total_time': 3}"),
            ("backup_name", ""),
        ],
    );
    derived_backup(&env, &tar, &tar, &[("children_backup_ids", incremental)]);
    for id in [rsync, incremental, &tar] {
        both.same(&env, &["show-backup", "pg", id]);
        both.same_json(&env, &["show-backup", "pg", id]);
        both.same(&env, &["list-files", "pg", id, "--target", "wal"]);
    }
    let out = both.same(&env, &["show-backup", "pg", rsync]);
    for l in [
        "    Encryption           : gpg",
        "    Resources saved      : ",
        "    Copy time            : 2 minutes, 5 seconds + 2 seconds startup",
        " (4 jobs)",
    ] {
        assert!(out.stdout.contains(l), "missing {l:?} in\n{}", out.stdout);
    }
    let out = both.same(&env, &["show-backup", "pg", "latest"]);
    for l in [
        "    WAL summarizer       : on",
        "    Backup Type          : incremental",
        &format!("    Root Backup          : {tar}"),
        "    Backup chain size    : 2",
    ] {
        assert!(out.stdout.contains(l), "missing {l:?} in\n{}", out.stdout);
    }
    let out = both.same(&env, &["show-backup", "pg", &tar]);
    assert!(out.stdout.contains(&format!("    Children Backup(s)   : {incremental}")), "{}", out.stdout);
}
