//! A real standby whose restore_command is `barman-wal-restore -p 4` replays to
//! the primary's LSN; prefetched segments arrive in bundles.

#![allow(clippy::unwrap_used)]

mod common;

use cluster_tests::pg::{PgCluster, PgOptions, conf_quote};
use cluster_tests::ssh::Sshd;
use cluster_tests::util::chown_to_pg_user;
use common::Env;
use std::time::Duration;

#[test]
fn standby_replays_through_barman_wal_restore_with_prefetch() {
    let env = Env::new();
    let pg = PgCluster::start(
        env.path(),
        PgOptions { conf: vec![("archive_mode".into(), "on".into())], ..Default::default() },
    )
    .unwrap();
    let sshd = Sshd::start(env.path(), std::slice::from_ref(&env.bin), &[]).unwrap();
    env.write_config(&format!(
        "[pg]\nconninfo = {}\nbackup_method = postgres\narchiver = on\ncompression = zstd\n",
        pg.conninfo()
    ));
    env.barman(&["check", "pg"]);
    let ssh_path = sshd.wrapper_dir();
    pg.set_conf(
        "archive_command",
        &conf_quote(&format!(
            "PATH={}:$PATH {}/barman-wal-archive -c {} -U {} 127.0.0.1 pg %p",
            ssh_path.display(),
            env.bin.display(),
            env.config.display(),
            sshd.login_user()
        )),
    )
    .unwrap();
    pg.pgbench_init(1).unwrap();
    let spool = env.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    chown_to_pg_user(&spool).unwrap();
    let restore = format!(
        "PATH={}:$PATH {}/barman-wal-restore -U {} -c {} -p 4 --spool-dir {} 127.0.0.1 pg %f %p",
        ssh_path.display(),
        env.bin.display(),
        sshd.login_user(),
        env.config.display(),
        spool.display()
    );
    let mut standby = pg.make_standby(env.path(), &restore, false).unwrap();
    // Several segments archived while the standby is down: it catches up through
    // the archive, several segments per ssh round trip.
    standby.stop().unwrap();
    let mut target = String::new();
    for _ in 0..6 {
        pg.pgbench(&["-n", "-t", "300", "-c", "2"]).unwrap();
        target = pg.current_lsn().unwrap();
        env.barman(&["switch-wal", "--force", "--archive", "--archive-timeout", "60", "pg"]).ok();
    }
    standby.restart().unwrap();
    standby
        .wait_replay(&target, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e:#}\nbarman log:\n{}", env.log()));
    let q = "SELECT count(*), sum(delta) FROM pgbench_history";
    assert_eq!(standby.psql(q).unwrap(), pg.psql(q).unwrap());
    // The prefetch worked in bundles of several segments, one ssh call each.
    let log = env.log();
    assert!(
        log.lines().any(|l| l.contains("Sent ") && !l.contains("Sent 1 WAL files") && !l.contains("Sent 0 WAL")),
        "no multi-file bundle in the log:\n{log}"
    );
}
