//! `barman recover` on this host against a real PostgreSQL 15: point in time
//! recovery to every target kind gives exactly the tables recorded at the
//! target; the recovered cluster never archives into the source's archive.
#![allow(clippy::unwrap_used)]

mod common;

use cluster_tests::pg::PgCluster;
use common::Env;
use std::fs;
use std::path::Path;
use std::time::Duration;

const CHECKSUMS: &str = "SELECT string_agg(x, ' ' ORDER BY x) FROM ( \
    SELECT 'a:' || md5(string_agg(t::text, ',' ORDER BY aid)) AS x FROM pgbench_accounts t \
    UNION ALL SELECT 'h:' || md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM pgbench_history t \
    UNION ALL SELECT 'm:' || coalesce(string_agg(i::text, ',' ORDER BY i), '') FROM marker) s";

/// Recovers `id` into `<test dir>/<name>` with `args`, starts PostgreSQL on it
/// and waits for the end of recovery.
fn recovered(env: &Env, name: &str, id: &str, args: &[&str]) -> PgCluster {
    let dir = env.path().join(name);
    let mut a = vec!["recover", "pg", id];
    let data = dir.join("data");
    let data_s = data.display().to_string();
    a.push(&data_s);
    a.extend_from_slice(args);
    let out = env.barman(&a);
    out.ok();
    assert!(
        out.stdout.contains("Your PostgreSQL server has been successfully prepared for recovery!"),
        "{}",
        out.stdout
    );
    let pg = PgCluster::adopt(&dir, &[], "").unwrap();
    cluster_tests::util::wait_until(Duration::from_secs(60), "end of recovery", || {
        pg.psql("SELECT pg_is_in_recovery()").is_ok_and(|v| v == "f")
    })
    .unwrap();
    pg
}

#[test]
fn point_in_time_recovery_to_every_target_kind() {
    let env = Env::new();
    let pg = env.archiving_primary(&[]);
    pg.pgbench(&["-i", "-s", "2", "-q"]).unwrap();
    pg.psql("CREATE TABLE marker (i int)").unwrap();
    env.write_config(&format!(
        "[pg]\nconninfo = {}\nbackup_method = postgres\narchiver = on\nimmediate_checkpoint = true\n",
        pg.conninfo()
    ));
    pg.switch_wal().unwrap();
    env.barman(&["backup", "pg", "--wait"]).ok();
    let id = env.barman(&["list-backups", "--minimal", "pg"]).stdout.trim().to_string();

    let bench = || pg.pgbench(&["-n", "-t", "300"]).unwrap();
    bench();
    pg.psql("SELECT pg_create_restore_point('before_marker')").unwrap();
    let at_name = pg.psql(CHECKSUMS).unwrap();
    bench();
    let xid = pg.psql("BEGIN; INSERT INTO marker VALUES (1); SELECT txid_current(); COMMIT;").unwrap();
    let at_xid = pg.psql(CHECKSUMS).unwrap();
    bench();
    pg.psql("INSERT INTO marker VALUES (2)").unwrap();
    let lsn = pg.psql("SELECT pg_current_wal_insert_lsn()").unwrap();
    let at_lsn = pg.psql(CHECKSUMS).unwrap();
    bench();
    pg.psql("INSERT INTO marker VALUES (3)").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let time = pg.psql("SELECT to_char(now(), 'YYYY-MM-DD HH24:MI:SS.USOF')").unwrap();
    let at_time = pg.psql(CHECKSUMS).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    bench();
    pg.psql("INSERT INTO marker VALUES (4)").unwrap();
    let at_end = pg.psql(CHECKSUMS).unwrap();
    pg.switch_wal().unwrap();
    cluster_tests::util::wait_until(Duration::from_secs(30), "the last segment archived", || {
        env.barman(&["archive-wal", "pg"]);
        pg.psql("SELECT last_archived_wal = pg_walfile_name(pg_current_wal_lsn() - 1) FROM pg_stat_archiver")
            .is_ok_and(|v| v == "t")
    })
    .unwrap();
    env.barman(&["archive-wal", "pg"]).ok();
    let archived_before: Vec<_> = fs::read_dir(env.server_dir("pg").join("wals")).unwrap().flatten().collect();

    let promote = ["--target-action", "promote"];
    let r = recovered(&env, "by_name", &id, &[&["--target-name", "before_marker"][..], &promote].concat());
    assert_eq!(r.psql(CHECKSUMS).unwrap(), at_name, "--target-name");
    assert_eq!(r.psql("SHOW archive_command").unwrap(), "false", "the recovered cluster archives nothing");
    drop(r);
    let r = recovered(&env, "by_xid", &id, &[&["--target-xid", &xid][..], &promote].concat());
    assert_eq!(r.psql(CHECKSUMS).unwrap(), at_xid, "--target-xid");
    drop(r);
    let r = recovered(&env, "by_xid_exclusive", &id, &[&["--target-xid", &xid, "--exclusive"][..], &promote].concat());
    assert_eq!(r.psql("SELECT count(*) FROM marker").unwrap(), "0", "--exclusive leaves the target transaction out");
    drop(r);
    let r = recovered(&env, "by_lsn", &id, &[&["--target-lsn", &lsn][..], &promote].concat());
    assert_eq!(r.psql(CHECKSUMS).unwrap(), at_lsn, "--target-lsn");
    drop(r);
    let r = recovered(&env, "by_time", &id, &[&["--target-time", &time][..], &promote].concat());
    assert_eq!(r.psql(CHECKSUMS).unwrap(), at_time, "--target-time");
    drop(r);
    let r = recovered(&env, "to_end", &id, &[]);
    assert_eq!(r.psql(CHECKSUMS).unwrap(), at_end, "to the end of the archive");
    // The recovered clusters promoted on new timelines: nothing of theirs reached the archive.
    let archived_after: Vec<_> = fs::read_dir(env.server_dir("pg").join("wals")).unwrap().flatten().collect();
    assert_eq!(archived_after.len(), archived_before.len());
    assert!(!Path::new(&env.server_dir("pg").join("wals").join("00000002.history")).exists());
    assert!(fs::read_dir(env.server_dir("pg").join("incoming")).unwrap().next().is_none());
}

/// What our recover writes is what the real Barman 3.17 writes for the same
/// backup and options: the same files, the same settings, the same mangling.
#[test]
fn recover_writes_what_barman_writes() {
    let env = Env::new();
    let pg = env.archiving_primary(&[]);
    pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
    // Something for the mangling to find in both configuration files.
    pg.psql("ALTER SYSTEM SET recovery_target_timeline = 'latest'").unwrap();
    env.write_config(&format!(
        "[pg]\nconninfo = {}\nbackup_method = postgres\narchiver = on\nimmediate_checkpoint = true\n",
        pg.conninfo()
    ));
    pg.switch_wal().unwrap();
    env.barman(&["backup", "pg", "--wait"]).ok();
    pg.psql("SELECT pg_create_restore_point('rp')").unwrap();
    pg.switch_wal().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    env.barman(&["archive-wal", "pg"]).ok();
    let barman = cluster_tests::reference::barman().expect("reference Barman");
    for (case, args) in [
        ("name", vec!["--target-name", "rp", "--target-action", "promote"]),
        ("getwal", vec!["--get-wal", "--target-immediate"]),
        ("standby", vec!["--get-wal", "--standby-mode"]),
        ("end", vec![]),
    ] {
        let ours_dir = env.path().join(format!("ours_{case}"));
        let theirs_dir = env.path().join(format!("theirs_{case}"));
        let mut a = vec!["recover", "pg", "latest"];
        let o = ours_dir.display().to_string();
        a.push(&o);
        a.extend(args.iter().copied());
        let ours = env.barman(&a);
        ours.ok();
        let t = theirs_dir.display().to_string();
        a[3] = &t;
        let theirs = common::run(std::process::Command::new(&barman).arg("-c").arg(&env.config).args(&a), None);
        theirs.ok();
        let listing = |d: &Path| {
            let mut v: Vec<String> = fs::read_dir(d)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "pg_wal" && n != "barman_wal")
                .collect();
            v.sort();
            v
        };
        assert_eq!(listing(&ours_dir), listing(&theirs_dir), "{case}: top-level files");
        for f in [
            "postgresql.auto.conf",
            "postgresql.conf",
            "postgresql.auto.conf.origin",
            "recovery.signal",
            "standby.signal",
        ] {
            let read =
                |d: &Path| fs::read_to_string(d.join(f)).ok().map(|s| s.replace(&d.display().to_string(), "DEST"));
            assert_eq!(read(&ours_dir), read(&theirs_dir), "{case}: {f}");
        }
        let wals = |d: &Path, sub: &str| -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(d.join(sub))
                .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            v.sort();
            v
        };
        for sub in ["pg_wal", "barman_wal", "pg_wal/archive_status"] {
            assert_eq!(wals(&ours_dir, sub), wals(&theirs_dir, sub), "{case}: {sub}");
        }
        // Their messages, ours: the same lines but for times and paths.
        let norm = |s: &str, d: &Path| -> Vec<String> {
            s.replace(&d.display().to_string(), "DEST")
                .lines()
                .filter(|l| !l.starts_with("Restore operation completed") && !l.starts_with("Processing xlog segments"))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(norm(&ours.stdout, &ours_dir), norm(&theirs.stdout, &theirs_dir), "{case}: output");
    }
}
