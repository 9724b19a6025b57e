//! `barman backup` with backup_method = postgres against a real PostgreSQL 15:
//! a backup taken while pgbench writes (a tablespace included), verified with
//! PostgreSQL's own tools, recovered by hand and by the real Barman 3.17 to the
//! same table checksums as the source.
#![allow(clippy::unwrap_used)]

mod common;

use cluster_tests::pg::PgCluster;
use cluster_tests::util::pg_bin;
use common::Env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Every pgbench table, as one comparable string.
const CHECKSUMS: &str = "SELECT string_agg(x, ' ' ORDER BY x) FROM ( \
    SELECT 'a:' || md5(string_agg(t::text, ',' ORDER BY aid)) AS x FROM pgbench_accounts t \
    UNION ALL SELECT 'b:' || md5(string_agg(t::text, ',' ORDER BY bid)) FROM pgbench_branches t \
    UNION ALL SELECT 't:' || md5(string_agg(t::text, ',' ORDER BY tid)) FROM pgbench_tellers t \
    UNION ALL SELECT 'h:' || md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM pgbench_history t \
    UNION ALL SELECT 'n:' || count(*) FROM pgbench_history) s";

/// A primary archiving into the server's incoming directory, with a tablespace
/// holding the pgbench tables.
fn primary(env: &Env) -> (PgCluster, PathBuf) {
    let pg = env.archiving_primary(&[("wal_keep_size", "'1GB'")]);
    let ts = env.tablespace(&pg);
    pg.pgbench(&["-i", "-s", "4", "--tablespace=ts", "-q"]).unwrap();
    (pg, ts)
}

fn config(env: &Env, pg: &PgCluster, extra: &str) {
    env.write_config(&format!(
        "[pg]\nconninfo = {ci}\nstreaming_conninfo = {ci}\nbackup_method = postgres\narchiver = on\nimmediate_checkpoint = true\n{extra}",
        ci = pg.conninfo()
    ));
}

fn pgbench_background(pg: &PgCluster, seconds: u32) -> Child {
    Command::new(pg_bin("pgbench"))
        .args(["-h", "127.0.0.1", "-U", "postgres", "-p", &pg.port().to_string()])
        .args(["-c", "2", "-T", &seconds.to_string(), "-n", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn backup_ids(env: &Env) -> Vec<String> {
    let out = env.barman(&["list-backups", "--minimal", "pg"]);
    out.ok();
    out.stdout.lines().map(str::to_string).collect()
}

fn info(env: &Env, id: &str) -> String {
    fs::read_to_string(env.server_dir("pg").join("meta").join(format!("{id}-backup.info"))).unwrap()
}

fn field<'a>(info: &'a str, key: &str) -> &'a str {
    info.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or_else(|| panic!("no {key} in\n{info}"))
}

/// Copies a directory tree as `cp -a` does.
fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

/// Every archived segment, flat, into `dest`.
fn copy_wals(wals: &Path, dest: &Path) {
    for d in fs::read_dir(wals).unwrap().flatten() {
        if !d.path().is_dir() {
            continue;
        }
        for f in fs::read_dir(d.path()).unwrap().flatten() {
            let n = f.file_name().to_string_lossy().into_owned();
            if n.len() == 24 {
                fs::copy(f.path(), dest.join(&n)).unwrap();
            }
        }
    }
}

#[test]
fn backup_under_pgbench_with_a_tablespace_recovers_to_the_same_tables() {
    let env = Env::new();
    let (pg, _ts) = primary(&env);
    config(&env, &pg, "");
    let oid = pg.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'").unwrap();

    let bench = pgbench_background(&pg, 8);
    std::thread::sleep(Duration::from_secs(2));
    let out = env.barman(&["backup", "pg"]);
    out.ok();
    for l in [
        "Starting backup using postgres method for server pg in ",
        "Backup start at LSN: ",
        "Copy done (time: ",
        "Finalising the backup.",
        "This is the first backup for server pg",
        "Backup size: ",
        "Backup end at LSN: ",
        "Backup completed (start time: ",
    ] {
        assert!(out.stdout.contains(l), "missing {l:?} in\n{}", out.stdout);
    }
    let bench = bench.wait_with_output().unwrap();
    assert!(bench.status.success(), "pgbench: {}", String::from_utf8_lossy(&bench.stderr));

    let ids = backup_ids(&env);
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = &ids[0];
    let text = info(&env, id);
    assert_eq!(field(&text, "mode"), "postgres");
    assert_eq!(field(&text, "tablespaces"), format!("[('ts', {oid}, '{}')]", env.path().join("tblspc").display()));
    assert_eq!(field(&text, "compression"), "None");
    let status = field(&text, "status");
    assert!(status == "WAITING_FOR_WALS" || status == "DONE", "{status}");
    assert!(fs::read_to_string(env.server_dir("pg").join("identity.json")).unwrap().contains("\"version\": \"15\""));

    // The source is final: its checksums are what every recovery must give.
    pg.switch_wal().unwrap();
    let want = pg.psql(CHECKSUMS).unwrap();
    env.switch_and_archive(&pg);
    env.barman(&["check-backup", "pg", id]).ok();
    assert_eq!(field(&info(&env, id), "status"), "DONE");
    let listed = env.barman(&["list-backups", "pg"]);
    assert!(listed.stdout.starts_with(&format!("pg {id} - F - ")), "{}", listed.stdout);

    // PostgreSQL's own check of the copy against its manifest.
    let backup_dir = env.server_dir("pg").join("base").join(id);
    let data = backup_dir.join("data");
    assert_eq!(
        fs::read_link(data.join("pg_tblspc").join(&oid)).unwrap(),
        backup_dir.join(&oid),
        "the tablespace link points into the backup, as pg_basebackup's mapping does"
    );
    let verify = Command::new(pg_bin("pg_verifybackup")).arg("-n").arg(&data).output().unwrap();
    assert!(verify.status.success(), "pg_verifybackup: {}", String::from_utf8_lossy(&verify.stderr));

    // Recovery by hand: the data directory, the tablespace where the link says,
    // the archived WAL in pg_wal, crash recovery from backup_label to the end.
    let r = env.path().join("restored");
    fs::create_dir_all(&r).unwrap();
    copy_tree(&data, &r.join("data"));
    let rts = env.path().join("restored_ts");
    copy_tree(&backup_dir.join(&oid), &rts);
    let link = r.join("data/pg_tblspc").join(&oid);
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&rts, &link).unwrap();
    copy_wals(&env.server_dir("pg").join("wals"), &r.join("data/pg_wal"));
    let restored = PgCluster::adopt(&r, &[&rts], "archive_mode = off").unwrap();
    assert_eq!(restored.psql(CHECKSUMS).unwrap(), want);
    let amcheck = Command::new(pg_bin("pg_amcheck"))
        .args(["-h", "127.0.0.1", "-U", "postgres", "-p", &restored.port().to_string()])
        .args(["--all", "--install-missing", "--heapallindexed"])
        .output()
        .unwrap();
    assert!(
        amcheck.status.success(),
        "pg_amcheck: {}{}",
        String::from_utf8_lossy(&amcheck.stdout),
        String::from_utf8_lossy(&amcheck.stderr)
    );
    drop(restored);

    // The real Barman reads our catalogue and recovers our backup.
    let barman = cluster_tests::reference::barman().expect("reference Barman (scripts/setup-reference.sh)");
    let theirs = Command::new(&barman).arg("-c").arg(&env.config).args(["list-backups", "pg"]).output().unwrap();
    let theirs_out = String::from_utf8_lossy(&theirs.stdout);
    assert!(theirs.status.success(), "barman list-backups: {theirs_out}{}", String::from_utf8_lossy(&theirs.stderr));
    assert!(theirs_out.starts_with(&format!("pg {id} - F - ")), "{theirs_out}");
    let b = env.path().join("by_barman");
    let bts = env.path().join("by_barman_ts");
    let rec = Command::new(&barman)
        .arg("-c")
        .arg(&env.config)
        .args(["recover", "pg", id])
        .arg(b.join("data"))
        .arg("--tablespace")
        .arg(format!("ts:{}", bts.display()))
        .output()
        .unwrap();
    assert!(
        rec.status.success(),
        "barman recover: {}{}",
        String::from_utf8_lossy(&rec.stdout),
        String::from_utf8_lossy(&rec.stderr)
    );
    let by_barman = PgCluster::adopt(&b, &[&bts], "archive_mode = off").unwrap();
    cluster_tests::util::wait_until(Duration::from_secs(60), "end of recovery", || {
        by_barman.psql("SELECT pg_is_in_recovery()").is_ok_and(|v| v == "f")
    })
    .unwrap();
    assert_eq!(by_barman.psql(CHECKSUMS).unwrap(), want);
}

/// Extracts a stored tar archive with the system's tar and the algorithm's own tool.
fn untar(archive: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    let name = archive.file_name().unwrap().to_string_lossy().into_owned();
    let mut c = Command::new("tar");
    c.arg("-x").arg("-f").arg(archive).arg("-C").arg(to);
    if name.ends_with(".gz") {
        c.arg("-z");
    } else if name.ends_with(".lz4") {
        c.args(["-I", "lz4"]);
    } else if name.ends_with(".zst") {
        c.args(["-I", "zstd"]);
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "tar {name}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn compressed_and_tar_backups_are_stored_as_barman_stores_them() {
    let env = Env::new();
    let (pg, _ts) = primary(&env);
    let oid = pg.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'").unwrap();
    // (configuration, stored suffix, backup.info compression)
    let variants = [
        ("backup_compression = none\n", "", "'none'"),
        ("backup_compression = gzip\nbackup_compression_level = 1\n", ".gz", "'gzip'"),
        ("backup_compression = lz4\nbackup_compression_location = server\n", ".lz4", "'lz4'"),
        ("backup_compression = zstd\nbackup_compression_workers = 2\n", ".zst", "'zstd'"),
        (
            "backup_compression = zstd\nbackup_compression_location = server\nbackup_compression_level = 5\n",
            ".zst",
            "'zstd'",
        ),
    ];
    let mut done = 0;
    for (extra, suffix, compression) in variants {
        config(&env, &pg, extra);
        env.barman(&["backup", "pg"]).ok();
        done += 1;
        let ids = backup_ids(&env);
        assert_eq!(ids.len(), done, "{ids:?}");
        let id = &ids[0];
        let text = info(&env, id);
        assert_eq!(field(&text, "compression"), compression.trim_matches('\''), "{extra}");
        let data = env.server_dir("pg").join("base").join(id).join("data");
        let mut stored: Vec<String> =
            fs::read_dir(&data).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        stored.sort();
        let mut want = vec![format!("{oid}.tar{suffix}"), "backup_manifest".to_string(), format!("base.tar{suffix}")];
        want.sort();
        assert_eq!(stored, want, "{extra}");
        // What the system's tar makes of it is a backup pg_verifybackup accepts.
        let x = env.path().join(format!("x{done}"));
        untar(&data.join(format!("base.tar{suffix}")), &x.join("data"));
        untar(&data.join(format!("{oid}.tar{suffix}")), &x.join("ts"));
        let map = fs::read_to_string(x.join("data/tablespace_map")).unwrap();
        assert!(map.starts_with(&format!("{oid} ")), "{map}");
        fs::create_dir_all(x.join("data/pg_tblspc")).unwrap();
        std::os::unix::fs::symlink(x.join("ts"), x.join("data/pg_tblspc").join(&oid)).unwrap();
        fs::copy(data.join("backup_manifest"), x.join("data/backup_manifest")).unwrap();
        let verify = Command::new(pg_bin("pg_verifybackup")).arg("-n").arg(x.join("data")).output().unwrap();
        assert!(verify.status.success(), "{extra}: pg_verifybackup: {}", String::from_utf8_lossy(&verify.stderr));
        let label = fs::read_to_string(x.join("data/backup_label")).unwrap();
        assert!(label.contains(&format!("LABEL: Barman backup pg {id}")), "{label}");
        assert_eq!(field(&text, "backup_label"), format!("{:?}", label).replace('"', "'"), "{extra}");
    }

    // Plain storage of a server-compressed stream: decompressed as it arrives.
    config(
        &env,
        &pg,
        "backup_compression = gzip\nbackup_compression_format = plain\nbackup_compression_location = server\n",
    );
    env.barman(&["backup", "pg"]).ok();
    let id = backup_ids(&env)[0].clone();
    assert_eq!(field(&info(&env, &id), "compression"), "None");
    let data = env.server_dir("pg").join("base").join(&id).join("data");
    assert!(data.join("PG_VERSION").is_file() && data.join("backup_manifest").is_file());
    let verify = Command::new(pg_bin("pg_verifybackup")).arg("-n").arg(&data).output().unwrap();
    assert!(verify.status.success(), "pg_verifybackup: {}", String::from_utf8_lossy(&verify.stderr));

    // On a terminal, a progress line; elsewhere (every run above) none.
    config(&env, &pg, "");
    let cmd = format!("{} -c {} backup pg", env.bin.join("barman").display(), env.config.display());
    let tty = Command::new("script").args(["-qec", &cmd, "/dev/null"]).output().unwrap();
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{shown}");
    assert!(shown.contains(" kB (100%)"), "no progress line on a terminal:\n{shown}");

    // Barman's own validation of the options: the server is disabled with its words.
    config(&env, &pg, "backup_compression = gzip\nbackup_compression_format = plain\n");
    let out = env.barman(&["backup", "pg"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("backup_compression_format plain is not compatible with backup_compression_location None"),
        "{}",
        out.stderr
    );
}

fn wait_status(env: &Env, server: &str, want: &str) -> String {
    let meta = env.server_dir(server).join("meta");
    let mut found = String::new();
    cluster_tests::util::wait_until(Duration::from_secs(60), &format!("a backup {want}"), || {
        let Ok(rd) = fs::read_dir(&meta) else { return false };
        for e in rd.flatten() {
            // Not the hidden temporary file a backup.info is written through.
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix("-backup.info") else { continue };
            let text = fs::read_to_string(e.path()).unwrap_or_default();
            if text.contains(&format!("status={want}\n")) {
                found = id.to_string();
                return true;
            }
        }
        false
    })
    .unwrap();
    found
}

#[test]
fn killed_locked_hooked_and_full_disk_backups_fail_cleanly() {
    let env = Env::new();
    let (pg, _ts) = primary(&env);
    config(&env, &pg, "");
    env.barman(&["backup", "pg"]).ok();
    let first = backup_ids(&env)[0].clone();
    let first_info = info(&env, &first);

    // A slow backup (bandwidth_limit), killed with SIGKILL while it copies; a
    // second backup meanwhile is refused by the lock.
    config(&env, &pg, "bandwidth_limit = 1024\n");
    let mut slow = env.barman_cmd(&["backup", "pg"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let killed = wait_status(&env, "pg", "STARTED");
    let second = env.barman(&["backup", "pg"]);
    assert_eq!(second.code, 1);
    assert_eq!(second.stderr.trim(), "ERROR: Another backup process is running");
    slow.kill().unwrap();
    slow.wait().unwrap();
    assert!(info(&env, &killed).contains("status=STARTED\n"));
    // check-backup (and cron) see the lock free: the backup can never end.
    env.barman(&["check-backup", "pg", &killed]).ok();
    let text = info(&env, &killed);
    assert!(text.contains("status=FAILED\n"), "{text}");
    assert!(field(&text, "error").contains("the backup process ended while the backup was STARTED"), "{text}");
    assert_eq!(info(&env, &first), first_info, "the other backup is untouched");
    let listed = env.barman(&["list-backups", "pg"]);
    assert!(listed.stdout.contains(&format!("pg {killed} - F - FAILED")), "{}", listed.stdout);

    // SIGINT stops a backup too, which then says why it FAILED.
    let slow = env.barman_cmd(&["backup", "pg"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let interrupted = wait_status(&env, "pg", "STARTED");
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(slow.id() as i32, libc::SIGINT) };
    let out = slow.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = info(&env, &interrupted);
    assert_eq!(field(&text, "error"), "failure copying files (interrupted by SIGINT)", "{text}");

    // The next backup succeeds.
    config(&env, &pg, "");
    env.barman(&["backup", "pg", "--wait"]).ok();
    let next = backup_ids(&env)[0].clone();
    assert!(info(&env, &next).contains("status=DONE\n"));

    // A standard hook that hangs is killed after the hook timeout; the backup goes on.
    config(&env, &pg, "pre_backup_script = sleep 300\n");
    let mut c = env.barman_cmd(&["backup", "pg"]);
    c.env("BARMAN_HOOK_TIMEOUT", "2");
    let out = common::run(&mut c, None);
    out.ok();
    let log = fs::read_to_string(env.path().join("barman.log")).unwrap();
    assert!(log.contains("pre_backup_script 'sleep 300' did not end within 2 seconds and was killed"), "{log}");

    // ABORT_STOP from a pre retry hook fails the backup.
    config(&env, &pg, "pre_backup_retry_script = exit 63\n");
    let out = env.barman(&["backup", "pg"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("ERROR: Backup failed starting backup."), "{}", out.stderr);
    let failed = env.barman(&["list-backups", "pg"]);
    assert!(failed.stdout.lines().next().unwrap().ends_with("- F - FAILED"), "{}", failed.stdout);
    // first, killed, interrupted, next, hook hang, aborted.
    let ids = backup_ids(&env);
    assert_eq!(ids.len(), 6, "{ids:?}");
    let error = info(&env, &ids[0]);
    assert!(field(&error, "error").starts_with("failure starting backup ("), "{error}");

    // An unknown backup id is one clear line.
    let out = env.barman(&["check-backup", "pg", "20200101T000000"]);
    assert_eq!((out.code, out.stderr.trim()), (1, "ERROR: Unknown backup '20200101T000000' for server 'pg'"));

    // A destination that fills up: FAILED with the reason, the other server's
    // backups and its archive untouched.
    let small = env.path().join("small");
    let Some(_mount) = cluster_tests::util::small_filesystem(&small, 20).unwrap() else { return };
    let before = backup_ids(&env);
    env.write_config(&format!(
        "[pg]\nconninfo = {ci}\nbackup_method = postgres\narchiver = on\nimmediate_checkpoint = true\n\
         [full]\nconninfo = {ci}\nbackup_method = postgres\narchiver = on\nimmediate_checkpoint = true\n\
         basebackups_directory = {}\n",
        small.display(),
        ci = pg.conninfo()
    ));
    // The archive check of the new server needs one WAL file in its archive.
    let incoming = env.server_dir("full").join("incoming");
    fs::create_dir_all(&incoming).unwrap();
    let seg = env.server_dir("pg").join("wals");
    copy_wals(&seg, &incoming);
    env.barman(&["archive-wal", "full"]).ok();
    let out = env.barman(&["backup", "full"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stderr.contains("ERROR: Backup failed copying files."), "{}", out.stderr);
    assert!(out.stderr.contains("No space left on device"), "{}", out.stderr);
    let full_meta = env.server_dir("full").join("meta");
    let name = fs::read_dir(&full_meta).unwrap().next().unwrap().unwrap().path();
    let text = fs::read_to_string(name).unwrap();
    assert!(text.contains("status=FAILED\n"), "{text}");
    assert!(field(&text, "error").starts_with("failure copying files (data transfer failure"), "{text}");
    assert_eq!(backup_ids(&env), before, "the other server's catalogue is untouched");
}

#[test]
fn backup_from_a_standby_runs_hooks_with_barmans_environment() {
    let env = Env::new();
    let pg = env.archiving_primary(&[]);
    pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
    let standby = pg.make_standby(env.path(), "/bin/false", true).unwrap();
    standby.wait_replay(&pg.current_lsn().unwrap(), Duration::from_secs(30)).unwrap();
    let hooks = env.path().join("hooks");
    fs::create_dir_all(&hooks).unwrap();
    let dump = |phase: &str| format!("env | grep ^BARMAN_ | sort > {}/{phase}.env", hooks.display());
    env.write_config(&format!(
        "[pg]\nconninfo = {sb}\nstreaming_conninfo = {sb}\nprimary_conninfo = {p}\nbackup_method = postgres\n\
         archiver = on\nimmediate_checkpoint = true\npre_backup_script = {}\npost_backup_script = {}\n",
        dump("pre"),
        dump("post"),
        sb = standby.conninfo(),
        p = pg.conninfo()
    ));
    // The archive check wants one archived WAL file first.
    pg.switch_wal().unwrap();
    // Hooks inherit barman's environment: only Barman's own variables are compared,
    // so what the test runner exports (BARMAN_TEST_STRICT, ...) is kept out.
    let mut cmd = env.barman_cmd(&["backup", "pg", "--wait", "--wait-timeout", "60"]);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BARMAN_") {
            cmd.env_remove(k);
        }
    }
    common::run(&mut cmd, None).ok();
    let id = backup_ids(&env)[0].clone();
    let text = info(&env, &id);
    assert_eq!(field(&text, "status"), "DONE", "the primary switched WAL so the end segment arrived\n{text}");
    let data = env.server_dir("pg").join("base").join(&id).join("data");
    let verify = Command::new(pg_bin("pg_verifybackup")).arg("-n").arg(&data).output().unwrap();
    assert!(verify.status.success(), "pg_verifybackup: {}", String::from_utf8_lossy(&verify.stderr));

    let meta = env.server_dir("pg").join("meta").join(format!("{id}-backup.info"));
    let base = env.server_dir("pg").join("base").join(&id);
    for (phase, status) in [("pre", "EMPTY"), ("post", "DONE")] {
        let got = fs::read_to_string(hooks.join(format!("{phase}.env"))).unwrap();
        let want = format!(
            "BARMAN_BACKUP_DIR={}\nBARMAN_BACKUP_ID={id}\nBARMAN_BACKUP_INFO_PATH={}\nBARMAN_CONFIGURATION={}\n\
             BARMAN_ERROR=\nBARMAN_HOOK=backup_script\nBARMAN_NEXT_ID=\nBARMAN_PHASE={phase}\nBARMAN_PREVIOUS_ID=\n\
             BARMAN_RETRY=0\nBARMAN_SERVER=pg\nBARMAN_STATUS={status}\nBARMAN_VERSION=3.17.0\n",
            base.display(),
            meta.display(),
            env.config.display()
        );
        assert_eq!(got, want, "{phase}");
    }
}

/// A copy cut off mid-way is retried from scratch (basebackup_retry_times) and
/// the backup is whole; with PostgreSQL down, the checks stop a backup before
/// anything is written.
#[test]
fn a_cut_copy_is_retried_and_failing_checks_stop_the_backup_first() {
    let env = Env::new();
    let mut pg = env.archiving_primary(&[]);
    pg.pgbench(&["-i", "-s", "2", "-q"]).unwrap();
    config(&env, &pg, "bandwidth_limit = 8192\nbasebackup_retry_times = 1\nbasebackup_retry_sleep = 1\n");
    let child = env.barman_cmd(&["backup", "pg"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let walsender = "SELECT pid FROM pg_stat_replication WHERE application_name = 'barman_streaming_backup'";
    cluster_tests::util::wait_until(Duration::from_secs(60), "the backup's walsender", || {
        pg.psql(walsender).is_ok_and(|p| !p.is_empty())
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    pg.psql(&format!("SELECT pg_terminate_backend(pid) FROM ({walsender}) w")).unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("WARNING: Failure executing a backup using pg_basebackup (attempt 1)"), "{stderr}");
    assert!(
        stderr.contains("The files copied so far will be removed and the backup process will restart in 1 seconds"),
        "{stderr}"
    );
    let id = backup_ids(&env)[0].clone();
    let data = env.server_dir("pg").join("base").join(&id).join("data");
    let verify = Command::new(pg_bin("pg_verifybackup")).arg("-n").arg(&data).output().unwrap();
    assert!(verify.status.success(), "pg_verifybackup: {}", String::from_utf8_lossy(&verify.stderr));

    pg.stop().unwrap();
    let before = fs::read_dir(env.server_dir("pg").join("meta")).unwrap().count();
    let out = env.barman(&["backup", "pg"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(
            "ERROR: Impossible to start the backup. Check the log for more details, or run 'barman check pg'"
        ),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("PostgreSQL"), "the failed check is named: {}", out.stderr);
    assert_eq!(fs::read_dir(env.server_dir("pg").join("meta")).unwrap().count(), before, "nothing written");
}
