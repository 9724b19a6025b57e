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
