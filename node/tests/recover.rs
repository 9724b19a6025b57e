//! `barman recover` on this host against a real PostgreSQL 15: point in time
//! recovery to every target kind gives exactly the tables recorded at the
//! target; the recovered cluster never archives into the source's archive.
#![allow(clippy::unwrap_used)]

mod common;

use cluster_tests::pg::PgCluster;
use common::{CHECKSUMS, Env};
use std::fs;
use std::path::Path;
use std::time::Duration;

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
    common::start_recovered(&dir, &[])
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
    let hooks = env.path().join("hooks");
    fs::create_dir_all(&hooks).unwrap();
    env.write_config(&format!(
        "[pg]\nconninfo = {}\nbackup_method = postgres\narchiver = on\nimmediate_checkpoint = true\n\
         pre_recovery_script = env | grep ^BARMAN_ | sort > {}/$(basename $BARMAN_DESTINATION_DIRECTORY).env\n",
        pg.conninfo(),
        hooks.display()
    ));
    pg.switch_wal().unwrap();
    env.barman(&["backup", "pg", "--wait"]).ok();
    pg.psql("SELECT pg_create_restore_point('rp')").unwrap();
    env.switch_and_archive(&pg);
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
        let top = |d: &Path| -> Vec<String> {
            common::names_in(d).into_iter().filter(|n| n != "pg_wal" && n != "barman_wal").collect()
        };
        assert_eq!(top(&ours_dir), top(&theirs_dir), "{case}: top-level files");
        for f in [
            "postgresql.auto.conf",
            "postgresql.conf",
            "postgresql.auto.conf.origin",
            "recovery.signal",
            "standby.signal",
        ] {
            assert_eq!(common::dest_text(&ours_dir, f), common::dest_text(&theirs_dir, f), "{case}: {f}");
        }
        for sub in ["pg_wal", "barman_wal", "pg_wal/archive_status"] {
            assert_eq!(common::names_in(&ours_dir.join(sub)), common::names_in(&theirs_dir.join(sub)), "{case}: {sub}");
        }
        // Their messages, ours: the same lines but for times and paths.
        assert_eq!(
            common::recover_output(&ours.stdout, &ours_dir),
            common::recover_output(&theirs.stdout, &theirs_dir),
            "{case}: output"
        );
        // The recovery hook's environment, but for the destination's own name.
        let hook_env = |d: &Path| {
            let name = d.file_name().unwrap().to_string_lossy().into_owned();
            fs::read_to_string(hooks.join(format!("{name}.env"))).unwrap().replace(&d.display().to_string(), "DEST")
        };
        let strip = |s: String| -> String {
            s.lines()
                .filter(|l| !l.starts_with("BARMAN_TEST_") && !l.starts_with("BARMAN_REFERENCE_"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip(hook_env(&ours_dir)), strip(hook_env(&theirs_dir)), "{case}: pre_recovery_script environment");
    }
}

/// A configuration for server `pg` run as the PostgreSQL OS user, so that the
/// recovered cluster's restore_command (`barman get-wal`) can read the archive.
fn config_as_pg_user(env: &Env, server: &str) {
    let user = cluster_tests::util::pg_os_user().unwrap();
    fs::write(
        &env.config,
        format!(
            "[barman]\nbarman_home = {}\nbarman_user = {}\nlog_file = {}/barman.log\nlog_level = DEBUG\n\n{server}",
            env.home.display(),
            user.name,
            env.home.display()
        ),
    )
    .unwrap();
    if cluster_tests::util::is_root() {
        let st = std::process::Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", user.uid, user.gid))
            .arg(&env.home)
            .status()
            .unwrap();
        assert!(st.success());
        // The PostgreSQL user reads the configuration and runs our binaries.
        for p in [env.config.as_path(), env.path()] {
            std::os::unix::fs::chown(p, Some(user.uid), Some(user.gid)).unwrap();
        }
    }
}

/// Checks the generated restore_command, then appends the same command naming
/// our binary and configuration (the generated one relies on `barman` in PATH
/// and its default configuration file).
fn name_our_barman(env: &Env, data: &Path, generated: &str, args: &str) {
    let auto = fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains(&format!("restore_command = '{generated}'")), "{auto}");
    let ours = format!("{} -c {} {args}", env.bin.join("barman").display(), env.config.display());
    fs::write(data.join("postgresql.auto.conf"), format!("{auto}restore_command = '{ours}'\n")).unwrap();
}

/// Commits one row per transaction until the server goes away; every row the
/// server acknowledged is counted.
fn writer(conninfo: String, acked: std::sync::Arc<std::sync::atomic::AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let Ok((client, conn)) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await else { return };
            tokio::spawn(conn);
            for n in 1u64.. {
                if client.execute("INSERT INTO acks VALUES ($1)", &[&(n as i64)]).await.is_err() {
                    return;
                }
                acked.store(n, std::sync::atomic::Ordering::SeqCst);
            }
        });
    })
}

/// A crash of the primary while a synchronous streamer receives its WAL: a
/// recovery to the end with get-wal (which serves the streamer's last
/// `.partial`) holds every commit the primary acknowledged.
#[test]
fn recovery_to_the_end_holds_every_commit_the_synchronous_streamer_acknowledged() {
    let env = Env::new();
    let mut pg = PgCluster::start(
        env.path(),
        cluster_tests::pg::PgOptions {
            conf: vec![("synchronous_standby_names".into(), "'barman_receive_wal'".into())],
            ..Default::default()
        },
    )
    .unwrap();
    config_as_pg_user(
        &env,
        &format!(
            "[pg]\nconninfo = {ci}\nstreaming_conninfo = {ci}\nbackup_method = postgres\nstreaming_archiver = on\n\
             slot_name = barman\ncreate_slot = auto\nimmediate_checkpoint = true\n",
            ci = pg.conninfo()
        ),
    );
    let mut receiver = env
        .barman_cmd(&["receive-wal", "pg"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    cluster_tests::util::wait_until(Duration::from_secs(30), "the synchronous streamer", || {
        pg.psql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'barman_receive_wal'")
            .is_ok_and(|v| v == "sync")
    })
    .unwrap();
    pg.psql("CREATE TABLE acks (n bigint PRIMARY KEY)").unwrap();
    pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
    pg.switch_wal().unwrap();
    env.barman(&["backup", "pg", "--wait", "--wait-timeout", "60"]).ok();

    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let w = writer(pg.conninfo(), acked.clone());
    std::thread::sleep(Duration::from_secs(3));
    pg.crash().unwrap();
    w.join().unwrap();
    let acked = acked.load(std::sync::atomic::Ordering::SeqCst);
    assert!(acked > 10, "the writer committed {acked} rows");
    std::thread::sleep(Duration::from_millis(500));
    let _ = receiver.kill();
    let _ = receiver.wait();
    let partial = fs::read_dir(env.server_dir("pg").join("streaming"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".partial"));
    assert!(partial, "the streamer kept the segment it was writing as .partial");

    let dir = env.path().join("restored");
    let data = dir.join("data");
    let out = env.barman(&["recover", "pg", "latest", &data.display().to_string(), "--get-wal"]);
    out.ok();
    name_our_barman(&env, &data, "barman get-wal -P pg %f > %p", "get-wal -P pg %f > %p");
    let r = common::start_recovered(&dir, &[]);
    let got = r.psql("SELECT count(*), coalesce(max(n), 0) FROM acks").unwrap();
    let (count, max) = got.split_once('|').unwrap();
    let (count, max): (u64, u64) = (count.parse().unwrap(), max.parse().unwrap());
    assert!(max >= acked, "acknowledged {acked}, recovered up to {max}");
    assert_eq!(count, max, "no acknowledged row is missing");
}

/// `--standby-mode` with get-wal: a standby that keeps replaying what the
/// archive receives after the recovery.
#[test]
fn a_standby_mode_recovery_follows_the_archive() {
    let env = Env::new();
    let pg = env.archiving_primary(&[]);
    pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
    config_as_pg_user(
        &env,
        &format!(
            "[pg]\nconninfo = {}\nbackup_method = postgres\narchiver = on\nimmediate_checkpoint = true\n",
            pg.conninfo()
        ),
    );
    pg.switch_wal().unwrap();
    env.barman(&["backup", "pg", "--wait", "--wait-timeout", "60"]).ok();
    let dir = env.path().join("standby");
    let data = dir.join("data");
    env.barman(&["recover", "pg", "latest", &data.display().to_string(), "--get-wal", "--standby-mode"]).ok();
    assert!(data.join("standby.signal").exists());
    name_our_barman(&env, &data, "barman get-wal  pg %f > %p", "get-wal pg %f > %p");
    let standby = PgCluster::adopt(&dir, &[], "hot_standby = on\nwal_retrieve_retry_interval = '1s'").unwrap();
    // New writes on the primary reach the standby only through the archive.
    for round in 0..2 {
        pg.pgbench(&["-n", "-t", "200"]).unwrap();
        let lsn = pg.psql("SELECT pg_current_wal_lsn()").unwrap();
        pg.switch_wal().unwrap();
        cluster_tests::util::wait_until(Duration::from_secs(60), "the archive to receive the segment", || {
            env.barman(&["archive-wal", "pg"]);
            standby.wait_replay(&lsn, Duration::from_secs(1)).is_ok()
        })
        .unwrap();
        let q = "SELECT count(*) FROM pgbench_history";
        assert_eq!(standby.psql(q).unwrap(), pg.psql(q).unwrap(), "round {round}");
    }
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()").unwrap(), "t");
}

/// Bad requests: one error line each, and nothing written.
#[test]
fn recover_refuses_bad_requests_with_one_line() {
    let env = Env::new();
    let pg = env.archiving_primary(&[]);
    pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
    env.write_config(&format!(
        "[pg]\nconninfo = {}\nbackup_method = postgres\narchiver = on\nimmediate_checkpoint = true\n",
        pg.conninfo()
    ));
    pg.switch_wal().unwrap();
    env.barman(&["backup", "pg", "--wait"]).ok();
    let dest = env.path().join("dest");
    let d = dest.display().to_string();
    let refused = |args: &[&str], want: &str| {
        let mut a = vec!["recover"];
        a.extend_from_slice(args);
        let out = env.barman(&a);
        assert_eq!(out.code, 1, "{args:?}: {}", out.stdout);
        assert!(out.stderr.contains(want) && out.stderr.lines().count() == 1, "{args:?}: {}", out.stderr);
    };
    refused(
        &["pg", "latest", &d, "--target-name", "x", "--target-xid", "5"],
        "ERROR: You cannot specify multiple targets for the recovery operation",
    );
    refused(
        &["pg", "latest", &d, "--target-action", "promote"],
        "ERROR: Can't enable recovery target action when PITR is not required",
    );
    refused(&["pg", "latest", &d, "--target-time", "2000-01-01 00:00:00+00:00"], "is before the backup end time");
    refused(&["pg", "latest", &d, "--tablespace", "nope:/tmp/x"], "ERROR: Invalid tablespace name 'nope'");
    refused(
        &["pg", "auto", &d, "--target-xid", "5"],
        "'target_xid' recovery target is not allowed without a backup_id.",
    );
    refused(
        &["pg", "auto", &d, "--target-time", "2000-01-01 00:00:00+00:00"],
        "ERROR: Cannot find any candidate backup for recovery.",
    );
    refused(&["pg", "20200101T000000", &d], "ERROR: Unknown backup '20200101T000000' for server 'pg'");
    refused(
        &["pg", "latest", &d, "--tablespace", "ts"],
        "Invalid tablespace relocation rule 'ts': expected NAME:LOCATION",
    );
    refused(&["pg", "latest", &d, "--target-lsn", "nowhere"], "ERROR: 'nowhere' is not a valid LSN");
    refused(
        &["pg", "latest", &d, "--target-name", "x", "--target-action", "explode"],
        "Illegal target action 'explode'",
    );
    refused(
        &["pg", "latest", &d, "--target-time", "yesterday"],
        "Unable to parse the target time parameter 'yesterday'",
    );
    refused(&["pg", "latest", &d, "--target-tli", "sideways"], "'sideways' is not a valid timeline");
    refused(
        &["pg", "latest", &d, "--remote-ssh-command", "ssh pg"],
        "Unable to connect to the target host using the command 'ssh pg'",
    );
    assert!(!dest.exists(), "nothing written");
    fs::create_dir_all(&dest).unwrap();
    fs::write(dest.join("postmaster.pid"), "12345\n").unwrap();
    refused(&["pg", "latest", &d], "(it holds postmaster.pid): stop it and choose an empty destination");
    fs::remove_file(dest.join("postmaster.pid")).unwrap();
    fs::write(dest.join("PG_VERSION"), "15\n").unwrap();
    refused(&["pg", "latest", &d], &format!("ERROR: Destination directory '{d}' must be empty"));
    assert_eq!(fs::read_dir(&dest).unwrap().count(), 1, "the destination is left as it was");
    // `auto` finds the backup for a later target time.
    env.barman(&[
        "recover",
        "pg",
        "auto",
        &env.path().join("auto").display().to_string(),
        "--target-time",
        "2999-01-01 00:00:00+00:00",
    ])
    .ok();
    // A destination too small for the cluster.
    let small = env.path().join("small");
    let Some(_mount) = cluster_tests::util::small_filesystem(&small, 2).unwrap() else { return };
    let s = small.join("data").display().to_string();
    refused(&["pg", "latest", &s], "available");
}

/// A compressed tar backup with a tablespace, recovered with the tablespace
/// relocated: the same tables as the source.
#[test]
fn recover_unpacks_a_compressed_tar_backup_and_relocates_its_tablespace() {
    let env = Env::new();
    let pg = env.archiving_primary(&[]);
    env.tablespace(&pg);
    pg.pgbench(&["-i", "-s", "2", "-q", "--tablespace=ts"]).unwrap();
    pg.psql("CREATE TABLE marker (i int)").unwrap();
    env.write_config(&format!(
        "[pg]\nconninfo = {}\nbackup_method = postgres\narchiver = on\nimmediate_checkpoint = true\nbackup_compression = lz4\n",
        pg.conninfo()
    ));
    pg.switch_wal().unwrap();
    env.barman(&["backup", "pg", "--wait"]).ok();
    pg.pgbench(&["-n", "-t", "300"]).unwrap();
    let want = pg.psql(CHECKSUMS).unwrap();
    env.switch_and_archive(&pg);
    let dir = env.path().join("restored");
    let ts = env.path().join("restored_ts");
    let out = env.barman(&[
        "recover",
        "pg",
        "latest",
        &dir.join("data").display().to_string(),
        "--tablespace",
        &format!("ts:{}", ts.display()),
    ]);
    out.ok();
    let oid = pg.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'").unwrap();
    assert!(out.stdout.contains(&format!("\t{oid}, ts, {}", ts.display())), "{}", out.stdout);
    assert_eq!(fs::read_link(dir.join("data/pg_tblspc").join(&oid)).unwrap(), ts);
    assert!(!dir.join("data/tablespace_map").exists(), "the links replace the map");
    let r = common::start_recovered(&dir, &[&ts]);
    assert_eq!(r.psql(CHECKSUMS).unwrap(), want);
}

/// The timeline PostgreSQL writes on now, from the name of its current WAL file.
fn current_timeline(pg: &PgCluster) -> u32 {
    let name = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())").unwrap();
    u32::from_str_radix(&name[..8], 16).unwrap()
}

/// Backup B on timeline 1 with row 1 written after it; then a standby of the
/// primary, promoted to timeline 2, archives into the same server (as the
/// PostgreSQL OS user, so that get-wal can read the archive) and writes row 2.
/// B's id.
fn backup_then_a_promotion(env: &Env) -> String {
    let mut pg = env.archiving_primary(&[]);
    pg.psql("CREATE TABLE marker (i int, tli text)").unwrap();
    config_as_pg_user(
        env,
        &format!(
            "[pg]\nconninfo = {}\nbackup_method = postgres\narchiver = on\nimmediate_checkpoint = true\n",
            pg.conninfo()
        ),
    );
    pg.switch_wal().unwrap();
    env.barman(&["backup", "pg", "--wait", "--wait-timeout", "60"]).ok();
    let id = env.barman(&["list-backups", "--minimal", "pg"]).stdout.trim().to_string();
    pg.psql("INSERT INTO marker VALUES (1, 'one')").unwrap();
    // The standby's postgresql.conf is the primary's: after its promotion it
    // archives into the same incoming directory, with the same system identifier.
    let standby = pg.make_standby(env.path(), "false", true).unwrap();
    env.switch_and_archive(&pg);
    standby.wait_replay(&pg.current_lsn().unwrap(), Duration::from_secs(60)).unwrap();
    pg.stop().unwrap();
    standby.promote().unwrap();
    assert_eq!(current_timeline(&standby), 2);
    standby.psql("INSERT INTO marker VALUES (2, 'two')").unwrap();
    env.switch_and_archive(&standby);
    let wals = env.server_dir("pg").join("wals");
    assert!(wals.join("00000002.history").exists(), "{:?}", common::names_in(&wals));
    id
}

/// Recovery past a promotion: from B, `--target-tli latest` replays timeline
/// 2's rows (copied WAL, and through get-wal); without it, as Barman, the
/// recovery stays on the backup's timeline.
#[test]
fn recovery_past_a_promotion_reaches_the_new_timeline() {
    let env = Env::new();
    let id = backup_then_a_promotion(&env);
    let all_rows = "SELECT string_agg(i::text || tli, ',' ORDER BY i) FROM marker";
    let promote = |r: &PgCluster| {
        // 00000003.history: the recovered cluster forked from timeline 2.
        let h = fs::read_to_string(r.data_dir().join("pg_wal/00000003.history")).unwrap();
        let parents: Vec<&str> = h.lines().filter(|l| !l.is_empty()).filter_map(|l| l.split('\t').next()).collect();
        assert_eq!(parents, ["1", "2"], "{h}");
        assert_eq!(current_timeline(r), 3, "a new timeline after timeline 2");
    };
    let r = recovered(&env, "latest", &id, &["--target-tli", "latest", "--no-get-wal"]);
    assert_eq!(r.psql(all_rows).unwrap(), "1one,2two", "timeline 2's row is replayed");
    promote(&r);
    drop(r);

    // The same through get-wal, run as the PostgreSQL user with our configuration.
    let dir = env.path().join("latest_get_wal");
    let data = dir.join("data");
    let out = env.barman(&["recover", "pg", &id, &data.display().to_string(), "--target-tli", "latest", "--get-wal"]);
    out.ok();
    assert!(out.stdout.contains("Doing PITR. Recovery target timeline: '2'"), "{}", out.stdout);
    name_our_barman(&env, &data, "barman get-wal -P pg %f > %p", "get-wal -P pg %f > %p");
    let r = common::start_recovered(&dir, &[]);
    assert_eq!(r.psql(all_rows).unwrap(), "1one,2two", "timeline 2's row through get-wal");
    promote(&r);
    drop(r);

    // Barman's default is the backup's timeline: timeline 1 to its end, nothing of 2.
    let r = recovered(&env, "current", &id, &["--no-get-wal"]);
    assert_eq!(r.psql(all_rows).unwrap(), "1one", "only timeline 1's row");
    assert_eq!(current_timeline(&r), 1);
}

/// Regression: `required_wals` stopped reading the catalogue at the first
/// segment past an immediate (or LSN) target, so the history files catalogued
/// after it were not copied; Barman's `get_required_xlog_files` copies them
/// all. Without 00000002.history the
/// recovered cluster promotes to timeline 2, which the archive already holds
/// (and a 00000002.history of its own that differs from the archived one);
/// with it, as after Barman's recovery, to timeline 3.
#[test]
fn an_immediate_recovery_copies_every_history_file_and_promotes_past_archived_timelines() {
    let env = Env::new();
    let id = backup_then_a_promotion(&env);
    let dir = env.path().join("immediate");
    let data = dir.join("data");
    let d = data.display().to_string();
    env.barman(&["recover", "pg", &id, &d, "--no-get-wal", "--target-immediate", "--target-action", "promote"]).ok();
    // barman_wal goes at the end of recovery (recovery_end_command): look now.
    let copied = common::names_in(&data.join("barman_wal"));
    let r = common::start_recovered(&dir, &[]);
    assert_eq!(r.psql("SELECT count(*) FROM marker").unwrap(), "0", "the backup's consistent point");
    assert!(copied.contains(&"00000002.history".to_string()), "every history file is copied: {copied:?}");
    assert_eq!(current_timeline(&r), 3, "a timeline the archive does not hold");
}

/// One backup of a small primary archiving into server `pg`: the primary and
/// the backup's id.
fn primary_with_a_backup(env: &Env) -> (PgCluster, String) {
    let pg = env.archiving_primary(&[]);
    pg.psql("CREATE TABLE marker (i int)").unwrap();
    env.write_config(&format!(
        "[pg]\nconninfo = {}\nbackup_method = postgres\narchiver = on\nimmediate_checkpoint = true\n",
        pg.conninfo()
    ));
    pg.switch_wal().unwrap();
    env.barman(&["backup", "pg", "--wait"]).ok();
    let id = env.barman(&["list-backups", "--minimal", "pg"]).stdout.trim().to_string();
    (pg, id)
}

/// Where server `pg` keeps backup `id`'s backup.info (Barman 3's `meta/`).
fn backup_info(env: &Env, id: &str) -> std::path::PathBuf {
    env.server_dir("pg").join("meta").join(format!("{id}-backup.info"))
}

/// A backup whose status is FAILED or STARTED is refused with one line, by id
/// or shortcut, before anything is written; WAITING_FOR_WALS is recovered
/// with Barman's warning.
#[test]
fn recover_refuses_a_backup_that_is_not_done() {
    let env = Env::new();
    let (_pg, id) = primary_with_a_backup(&env);
    let info = backup_info(&env, &id);
    let done = fs::read_to_string(&info).unwrap();
    assert!(done.contains("\nstatus=DONE\n"), "{done}");
    let set_status = |s: &str| fs::write(&info, done.replace("\nstatus=DONE\n", &format!("\nstatus={s}\n"))).unwrap();
    let dest = env.path().join("dest");
    let d = dest.display().to_string();
    let refused = |backup: &str, want: &str| {
        let out = env.barman(&["recover", "pg", backup, &d]);
        assert_eq!(out.code, 1, "{backup}: {}\n{}", out.stdout, out.stderr);
        assert!(out.stderr.contains(want) && out.stderr.lines().count() == 1, "{backup}: {}", out.stderr);
        assert!(!out.stdout.contains("Starting local restore"), "{backup}: {}", out.stdout);
        assert!(!dest.exists(), "{backup}: nothing written");
    };
    let not_done = format!("ERROR: Cannot restore from backup '{id}' of server 'pg': backup status is not DONE");
    for status in ["FAILED", "STARTED"] {
        set_status(status);
        refused(&id, &not_done);
        // `latest` only ever names a backup whose copy is done.
        refused("latest", "ERROR: Unknown backup 'latest' for server 'pg'");
    }
    set_status("FAILED");
    refused("last-failed", "backup status is not DONE");

    set_status("WAITING_FOR_WALS");
    let out = env.barman(&["recover", "pg", &id, &d]);
    out.ok();
    assert!(
        out.stderr.contains("IMPORTANT: You have requested a recovery operation for a backup that does not have yet"),
        "{}",
        out.stderr
    );
    assert!(dest.join("PG_VERSION").exists());
}

/// A segment the recovery needs is gone from the archive (the catalogue still
/// lists it): `recover --no-get-wal` to a restore point stops with one error
/// line naming it, and leaves nothing PostgreSQL would start a recovery from.
#[test]
fn recover_fails_cleanly_when_a_required_wal_segment_is_missing() {
    let env = Env::new();
    let (pg, id) = primary_with_a_backup(&env);
    for i in 1..=3 {
        pg.psql(&format!("INSERT INTO marker SELECT {i} FROM generate_series(1, 1000)")).unwrap();
        env.switch_and_archive(&pg);
    }
    pg.psql("SELECT pg_create_restore_point('rp')").unwrap();
    env.switch_and_archive(&pg);
    let info = fs::read_to_string(backup_info(&env, &id)).unwrap();
    let end_wal = info.lines().find_map(|l| l.strip_prefix("end_wal=")).unwrap().to_string();
    let hashed = env.server_dir("pg").join("wals").join(&end_wal[..16]);
    let after: Vec<String> =
        common::names_in(&hashed).into_iter().filter(|n| n.len() == 24 && n.as_str() > end_wal.as_str()).collect();
    assert!(after.len() >= 4, "{after:?}");
    // The second segment after the backup: before the restore point, and not the first copied.
    let missing = &after[1];
    fs::remove_file(hashed.join(missing)).unwrap();

    let dest = env.path().join("dest");
    let out = env.barman(&["recover", "pg", &id, &dest.display().to_string(), "--no-get-wal", "--target-name", "rp"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with("ERROR: Failure copying WAL files: ") && out.stderr.contains(missing.as_str()),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("successfully prepared"), "{}", out.stdout);
    // What is left: the base backup and the segments copied before the missing
    // one, but no recovery.signal nor restore_command, so PostgreSQL would not
    // start a recovery that ends early at the gap.
    assert!(dest.join("PG_VERSION").exists());
    assert!(!dest.join("recovery.signal").exists() && !dest.join("standby.signal").exists());
    let auto = fs::read_to_string(dest.join("postgresql.auto.conf")).unwrap_or_default();
    assert!(!auto.contains("restore_command"), "{auto}");
    let copied = common::names_in(&dest.join("barman_wal"));
    assert!(copied.contains(&after[0]), "{copied:?}");
    assert!(!copied.contains(&after[1]), "no empty file under the missing segment's name: {copied:?}");
    assert!(!copied.contains(&after[2]), "nothing copied past the missing segment: {copied:?}");
}
