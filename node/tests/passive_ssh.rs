//! Our node as the passive of a real Barman 3.17 primary over SSH (a throwaway sshd on
//! 127.0.0.1): `cron` asks the primary's `barman sync-info`, copies its backup over SFTP
//! byte for byte and its WAL (recompressed: the two compress differently), and a recovery
//! from the passive gives the primary's tables. A primary that lies is refused.

#![allow(clippy::unwrap_used)]

mod common;

use cluster_tests::pg::PgCluster;
use cluster_tests::reference;
use cluster_tests::ssh::Sshd;
use cluster_tests::util::{pg_bin, wait_until};
use common::{CHECKSUMS, Env, Out, files_under, run};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Real Barman with the primary's configuration.
fn theirs(pri: &Env, args: &[&str]) -> Out {
    let barman = reference::barman().expect("reference Barman (scripts/setup-reference.sh)");
    run(Command::new(&barman).arg("-c").arg(&pri.config).args(args), None)
}

fn script(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A directory for the SSH sessions' PATH whose `barman` is the real one with the
/// primary's configuration (the passive runs plain `barman sync-info pg` there).
fn remote_bin(pri: &Env) -> PathBuf {
    let dir = pri.path().join("remote-bin");
    let barman = reference::barman().unwrap();
    script(&dir.join("barman"), &format!("#!/bin/sh\nexec {} -c {} \"$@\"\n", barman.display(), pri.config.display()));
    dir
}

/// PostgreSQL archiving into `pri`'s incoming directory, its server `pg` configured (gzip),
/// pgbench tables and the `marker` table made.
fn archiving_server(pri: &Env, description: &str) -> PgCluster {
    let pg = pri.archiving_primary(&[]);
    pri.write_config(&format!(
        "[pg]\ndescription = {description}\nconninfo = {c}\nstreaming_conninfo = {c}\n\
         backup_method = postgres\narchiver = on\nimmediate_checkpoint = true\ncompression = gzip\n\
         path_prefix = {bin}\n",
        c = pg.conninfo(),
        bin = pg_bin("pg_basebackup").parent().unwrap().display()
    ));
    pg.pgbench(&["-i", "-s", "2", "-q"]).unwrap();
    pg.psql("CREATE TABLE marker (i int)").unwrap();
    pg
}

/// The real Barman primary: PostgreSQL archiving into its incoming directory, one backup.
fn primary(pri: &Env) -> PgCluster {
    let pg = archiving_server(pri, "real Barman primary");
    archive_all(pri, &pg);
    theirs(pri, &["backup", "pg"]).ok();
    pg
}

/// Closes the current segment and lets the real Barman archive everything PostgreSQL archived.
fn archive_all(pri: &Env, pg: &PgCluster) {
    pg.switch_wal().unwrap();
    wait_until(Duration::from_secs(60), "the primary archives the last segment", || {
        theirs(pri, &["archive-wal", "pg"]);
        let done = pg
            .psql("SELECT last_archived_wal = pg_walfile_name(pg_current_wal_lsn() - 1) FROM pg_stat_archiver")
            .is_ok_and(|v| v == "t");
        done && std::fs::read_dir(pri.server_dir("pg").join("incoming")).unwrap().next().is_none()
    })
    .unwrap();
    theirs(pri, &["archive-wal", "pg"]).ok();
}

/// The primary's environment with one backup taken by the real Barman, the passive's, the
/// PostgreSQL and the backup's id.
fn setup() -> (Env, Env, PgCluster, String) {
    let pri = Env::new();
    let pas = Env::new();
    let pg = primary(&pri);
    let id = theirs(&pri, &["list-backups", "--minimal", "pg"]).stdout.trim().to_string();
    assert!(!id.is_empty(), "the primary took no backup");
    (pri, pas, pg, id)
}

fn passive_config(pas: &Env, sshd: &Sshd, extra: &str) {
    pas.write_config(&format!(
        "[pg]\ndescription = passive of a Barman primary\nprimary_ssh_command = ssh -F {} 127.0.0.1\n\
         compression = zstd\nparallel_jobs = 2\n{extra}",
        sshd.ssh_config().display()
    ));
}

/// WAL names in a server's xlog.db.
fn xlog_names(home: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(home.join("pg").join("wals").join("pg-xlog.db")).unwrap_or_default();
    text.lines().filter_map(|l| l.split('\t').next()).map(str::to_string).collect()
}

fn status_of(home: &Path, id: &str) -> String {
    let info = std::fs::read_to_string(home.join("pg").join("meta").join(format!("{id}-backup.info")))
        .or_else(|_| std::fs::read_to_string(home.join("pg").join("base").join(id).join("backup.info")))
        .unwrap_or_default();
    info.lines().find_map(|l| l.strip_prefix("status=")).unwrap_or("").to_string()
}

#[test]
fn our_passive_follows_a_real_barman_primary_and_recovers_its_tables() {
    let (pri, pas, pg, id) = setup();
    // Work after the backup, archived by the primary.
    pg.pgbench(&["-n", "-t", "500"]).unwrap();
    pg.psql("CREATE TABLE after_backup AS SELECT generate_series(1, 1000) AS i").unwrap();
    let expected = pg.psql(CHECKSUMS).unwrap();
    let after: i64 = pg.psql("SELECT count(*) FROM after_backup").unwrap().parse().unwrap();
    archive_all(&pri, &pg);

    let sshd = Sshd::start(pas.path(), &[remote_bin(&pri)], &[]).unwrap();
    passive_config(&pas, &sshd, "");
    // Plain sync-info on the passive works (it can be a primary itself); --primary asks.
    let asked = pas.barman(&["sync-info", "--primary", "pg"]);
    asked.ok();
    assert!(asked.stdout.contains(&format!("\"{id}\"")), "{}", asked.stdout);
    // A passive refuses what needs PostgreSQL.
    let b = pas.barman(&["backup", "pg"]);
    assert!(b.stdout.contains("Skipping passive server 'pg'"), "{}{}", b.stdout, b.stderr);
    let not_passive = pri.barman(&["sync-wals", "pg"]);
    assert_ne!(not_passive.code, 0);
    assert!(not_passive.stderr.contains("server pg is not passive"), "{}", not_passive.stderr);

    let early = pas.barman(&["sync-wals", "pg"]);
    assert_ne!(early.code, 0);
    assert!(early.stderr.contains("run 'barman cron'"), "sync-wals before any cron: {}", early.stderr);

    let primary_wals: Vec<String> = xlog_names(&pri.home);
    wait_until(Duration::from_secs(120), "the passive holds the backup DONE and every WAL", || {
        pas.barman(&["cron"]);
        let held = xlog_names(&pas.home);
        status_of(&pas.home, &id) == "DONE" && primary_wals.iter().all(|w| held.contains(w))
    })
    .unwrap_or_else(|e| panic!("{e:#}\nlog:\n{}", pas.log()));

    // The backup's files are the primary's, byte for byte (backup.info is the passive's own).
    let base = |e: &Env| e.server_dir("pg").join("base").join(&id);
    let rel = |root: &Path| -> Vec<PathBuf> {
        files_under(root).into_iter().map(|p| p.strip_prefix(root).unwrap().to_path_buf()).collect()
    };
    let mut theirs_files = rel(&base(&pri));
    theirs_files.retain(|p| p != Path::new("backup.info"));
    let mut ours = rel(&base(&pas));
    ours.retain(|p| p != Path::new("backup.info"));
    assert_eq!(ours, theirs_files, "the backup's file list");
    for f in &ours {
        assert!(std::fs::read(base(&pas).join(f)).unwrap() == std::fs::read(base(&pri).join(f)).unwrap(), "{f:?}");
    }
    // Every WAL file reads back the same through both get-wals (gzip there, zstd here).
    for w in primary_wals.iter().filter(|w| w.len() == 24) {
        let barman = reference::barman().unwrap();
        let a = Command::new(&barman).arg("-c").arg(&pri.config).args(["get-wal", "pg", w]).output().unwrap();
        let b = pas.barman_cmd(&["get-wal", "pg", w]).output().unwrap();
        assert!(a.status.success() && b.status.success(), "get-wal {w}");
        assert!(a.stdout == b.stdout && a.stdout.len() == 16 << 20, "get-wal {w}: different bytes");
    }
    let zstd = pas.server_dir("pg").join("wals").join(&primary_wals[0][..16]).join(&primary_wals[0]);
    assert_eq!(&std::fs::read(&zstd).unwrap()[..4], &[0x28, 0xb5, 0x2f, 0xfd], "stored in the passive's codec");
    let info = std::fs::read_to_string(pas.server_dir("pg").join("wals").join("sync-wals.info")).unwrap();
    assert!(info.starts_with(primary_wals.last().unwrap()), "sync-wals.info: {info}");
    // Nothing more to do: a second round copies nothing.
    let again = pas.barman(&["sync-wals", "pg"]);
    assert!(again.stdout.contains("No WAL synchronisation required"), "{}{}", again.stdout, again.stderr);

    // A cursor the primary no longer knows: its sync-info exits 1, the passive asks again
    // without it (Barman's self-recovery), and the cursor is put right.
    let cursor = pas.server_dir("pg").join("wals").join("sync-wals.info");
    std::fs::write(&cursor, "0000000100000000000000FF\t999999").unwrap();
    let o = pas.barman(&["cron"]);
    o.ok();
    assert!(o.stderr.contains("sync-info is out of sync"), "{}{}", o.stdout, o.stderr);
    wait_until(Duration::from_secs(30), "sync-wals.info rewritten", || {
        std::fs::read_to_string(&cursor).is_ok_and(|c| c.starts_with(primary_wals.last().unwrap()))
    })
    .unwrap();

    // A recovery from the passive gives the primary's tables.
    let dir = pas.path().join("recovered");
    let out = pas.barman(&["recover", "pg", &id, &dir.join("data").display().to_string()]);
    out.ok();
    let r = common::start_recovered(&dir, &[]);
    assert_eq!(r.psql(CHECKSUMS).unwrap(), expected);
    assert_eq!(r.psql("SELECT count(*) FROM after_backup").unwrap(), after.to_string());
}

#[test]
fn a_lying_primary_is_refused_and_nothing_is_kept() {
    let (pri, pas, _pg, id) = setup();
    let honest = theirs(&pri, &["sync-info", "pg"]).stdout;
    let bin = pri.path().join("lying-bin");
    let sshd = Sshd::start(pas.path(), std::slice::from_ref(&bin), &[]).unwrap();
    passive_config(&pas, &sshd, "");
    let answer = |json: &str| {
        std::fs::write(pri.path().join("answer.json"), json).unwrap();
        script(&bin.join("barman"), &format!("#!/bin/sh\ncat {}\n", pri.path().join("answer.json").display()));
    };
    let refused = |json: &str, why: &str| {
        answer(json);
        let o = pas.barman(&["cron"]);
        assert!(o.stderr.contains(why), "expected '{why}' in:\n{}{}", o.stdout, o.stderr);
        assert!(!pas.server_dir("pg").join("primary.info").exists(), "a refused answer was saved");
    };
    // A key Barman does not know, in a backup and in a WAL entry.
    refused(
        &honest.replacen("\"backup_id\":", "\"shiny_new_field\": 1, \"backup_id\":", 1),
        "keys Barman does not know: shiny_new_field",
    );
    refused(&honest.replacen("\"compression\": ", "\"colour\": 1, \"compression\": ", 1), "keys Barman does not know");
    // Names that would lead outside the server's directories.
    let wal = xlog_names(&pri.home).into_iter().find(|w| w.len() == 24).unwrap();
    refused(
        &honest.replacen(&format!("\"name\": \"{wal}\""), "\"name\": \"../../../etc/passwd\"", 1),
        "not a WAL file name",
    );
    refused(&honest.replacen(&format!("\"{id}\": {{"), "\"../outside\": {", 1), "not a backup id");
    let wals_dir = pri.server_dir("pg").join("wals").display().to_string();
    refused(&honest.replacen(&format!("\"{wals_dir}\""), "\"/srv/../etc\"", 1), "is not an absolute directory");

    // An honest listing, but checksums that do not match the bytes: nothing is stored.
    script(
        &bin.join("barman"),
        &format!("#!/bin/sh\nexec {} -c {} \"$@\"\n", reference::barman().unwrap().display(), pri.config.display()),
    );
    script(
        &bin.join("sha256sum"),
        "#!/bin/sh\nfor f in \"$@\"; do [ \"$f\" = -- ] && continue; \
         echo \"0000000000000000000000000000000000000000000000000000000000000000  $f\"; done\n",
    );
    // cron starts the copy in the background; it fails.
    pas.barman(&["cron"]).ok();
    wait_until(Duration::from_secs(60), "the copy to fail", || status_of(&pas.home, &id) == "FAILED").unwrap();
    let info = std::fs::read_to_string(pas.server_dir("pg").join("meta").join(format!("{id}-backup.info"))).unwrap();
    assert!(info.contains("sent a bad copy"), "{info}");
    // Run by hand, the same (once cron's copy, which wrote FAILED, has let its lock go).
    let lock = pas.home.join(format!(".pg-{id}-sync-backup.lock"));
    wait_until(Duration::from_secs(20), "cron's sync-backup to end", || barman::catalog::lock::holder(&lock).is_none())
        .unwrap();
    let o = pas.barman(&["sync-backup", "pg", &id]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("sent a bad copy"), "{}{}", o.stdout, o.stderr);
    let kept: Vec<PathBuf> = files_under(&pas.server_dir("pg").join("base").join(&id));
    assert!(kept.is_empty(), "files kept from a bad copy: {kept:?}");
    let l = pas.barman(&["list-backups", "pg"]);
    assert!(l.stdout.contains("FAILED"), "{}", l.stdout);
}

/// Bytes of the files under `dir` (part files included).
fn bytes_under(dir: &Path) -> u64 {
    files_under(dir).iter().filter_map(|p| std::fs::symlink_metadata(p).ok()).map(|m| m.len()).sum()
}

#[test]
fn a_backup_copy_cut_twenty_times_resends_only_what_is_missing() {
    let (pri, pas, _pg, id) = setup();
    let sshd = Sshd::start(pas.path(), &[remote_bin(&pri)], &[]).unwrap();
    // Slow enough that each run is cut in the middle of some file.
    passive_config(&pas, &sshd, "bandwidth_limit = 2000\n");
    let theirs_base = pri.server_dir("pg").join("base").join(&id);
    let total =
        bytes_under(&theirs_base) - std::fs::metadata(theirs_base.join("backup.info")).map(|m| m.len()).unwrap_or(0);
    // cron saves primary.info and starts a copy: that one is stopped at once, the test
    // drives the copies itself.
    pas.barman(&["cron"]).ok();
    let lock = pas.home.join(format!(".pg-{id}-sync-backup.lock"));
    wait_until(Duration::from_secs(20), "cron's sync-backup to start", || {
        barman::catalog::lock::holder(&lock).is_some()
    })
    .unwrap();
    if let Some(pid) = barman::catalog::lock::holder(&lock) {
        // SAFETY: the pid the running sync-backup wrote into its lock.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    wait_until(Duration::from_secs(20), "cron's sync-backup to end", || barman::catalog::lock::holder(&lock).is_none())
        .unwrap();
    let ours = pas.server_dir("pg").join("base").join(&id);
    // Parts in progress wait in the server's staging directory.
    let staging = pas.server_dir("pg").join(".sync");
    let on_disk = || bytes_under(&ours) + bytes_under(&staging);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut cuts = 0;
    let mut before = 0;
    while cuts < 20 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let after_ms = 400 + rng % 1200;
        let mut child = pas.barman_cmd(&["sync-backup", "pg", &id]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(after_ms));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        // SAFETY: a pid of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        cuts += 1;
        let now = on_disk();
        assert!(now >= before, "cut {cuts}: bytes on disk went from {before} down to {now}");
        before = now;
    }
    assert!(cuts >= 10, "only {cuts} cuts before the copy finished: slow it down");
    // What is on disk now is reused: the last run receives exactly the rest.
    let held = on_disk() - std::fs::metadata(ours.join("backup.info")).map(|m| m.len()).unwrap_or(0);
    eprintln!("{cuts} cuts: {held} of {total} bytes on disk before the last run");
    let last = pas.barman(&["sync-backup", "pg", &id]);
    last.ok();
    let received: u64 = last
        .stdout
        .split(", ")
        .find_map(|p| p.strip_suffix(" bytes received").or_else(|| p.trim().strip_suffix(" bytes received")))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no byte count in: {}", last.stdout));
    assert_eq!(received, total - held, "after {cuts} cuts: {held} of {total} bytes were on disk");
    assert_eq!(status_of(&pas.home, &id), "DONE");
    for f in files_under(&theirs_base) {
        let rel = f.strip_prefix(&theirs_base).unwrap();
        if rel == Path::new("backup.info") {
            continue;
        }
        assert!(std::fs::read(ours.join(rel)).unwrap() == std::fs::read(&f).unwrap(), "{rel:?} differs");
    }
    let parts = files_under(&pas.server_dir("pg").join(".sync"));
    assert!(parts.is_empty(), "part files left: {parts:?}");
}

/// Real Barman with the passive's configuration.
fn theirs_passive(pas: &Env, args: &[&str]) -> Out {
    let barman = reference::barman().expect("reference Barman (scripts/setup-reference.sh)");
    run(Command::new(&barman).arg("-c").arg(&pas.config).args(args), None)
}

#[test]
fn a_real_barman_passive_follows_our_node_and_recovers_its_tables() {
    let pri = Env::new();
    let pas = Env::new();
    // Our node is the primary: PostgreSQL archives into it, it takes the backup.
    let pg = archiving_server(&pri, "our primary");
    pri.switch_and_archive(&pg);
    pri.barman(&["backup", "pg"]).ok();
    pri.switch_and_archive(&pg);
    pri.barman(&["cron"]).ok();
    let id = pri.barman(&["list-backups", "--minimal", "pg"]).stdout.trim().to_string();
    assert_eq!(status_of(&pri.home, &id), "DONE", "our backup {id}");
    pg.pgbench(&["-n", "-t", "500"]).unwrap();
    pg.psql("CREATE TABLE after_backup AS SELECT generate_series(1, 1000) AS i").unwrap();
    let expected = pg.psql(CHECKSUMS).unwrap();
    pri.switch_and_archive(&pg);

    // The SSH sessions' `barman` is ours with the primary's configuration; rsync is the system's.
    let bin = pri.path().join("remote-bin");
    script(
        &bin.join("barman"),
        &format!("#!/bin/sh\nexec {} -c {} \"$@\"\n", pri.bin.join("barman").display(), pri.config.display()),
    );
    let sshd = Sshd::start(pas.path(), &[bin], &[]).unwrap();
    pas.write_config(&format!(
        "[pg]\ndescription = real Barman passive\nprimary_ssh_command = ssh -F {} 127.0.0.1\ncompression = gzip\n",
        sshd.ssh_config().display()
    ));

    let converge = |what: &str| {
        let wanted = xlog_names(&pri.home);
        let t0 = std::time::Instant::now();
        wait_until(Duration::from_secs(120), what, || {
            theirs_passive(&pas, &["cron"]);
            let held = xlog_names(&pas.home);
            status_of(&pas.home, &id) == "DONE" && wanted.iter().all(|w| held.contains(w))
        })
        .unwrap_or_else(|e| panic!("{e:#}\npassive log:\n{}\nsshd log:\n{}", pas.log(), sshd.log()));
        t0.elapsed()
    };
    let first = converge("the real Barman passive holds our backup DONE and every WAL");

    // Its catalog takes our metadata (every key of our sync-info is one its BackupInfo knows).
    let shown = theirs_passive(&pas, &["show-backup", "pg", &id]);
    shown.ok();
    assert!(shown.stdout.contains("Status                 : DONE"), "{}", shown.stdout);
    // The backup's files are ours, byte for byte (backup.info is the passive's own).
    let base = |e: &Env| e.server_dir("pg").join("base").join(&id);
    let rel = |root: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> =
            files_under(root).into_iter().map(|p| p.strip_prefix(root).unwrap().to_path_buf()).collect();
        v.retain(|p| p != Path::new("backup.info"));
        v
    };
    let ours = rel(&base(&pri));
    assert!(!ours.is_empty());
    assert_eq!(rel(&base(&pas)), ours, "the backup's file list");
    for f in &ours {
        assert!(std::fs::read(base(&pas).join(f)).unwrap() == std::fs::read(base(&pri).join(f)).unwrap(), "{f:?}");
    }
    // Every WAL file is ours, byte for byte, and its get-wal gives what ours gives.
    for w in xlog_names(&pri.home) {
        let p = |e: &Env| {
            let dir = e.server_dir("pg").join("wals");
            if w.ends_with(".history") { dir.join(&w) } else { dir.join(&w[..16]).join(&w) }
        };
        assert!(std::fs::read(p(&pas)).unwrap() == std::fs::read(p(&pri)).unwrap(), "{w}");
    }
    let pri_db = std::fs::read_to_string(pri.server_dir("pg").join("wals").join("pg-xlog.db")).unwrap();
    let pas_db = std::fs::read_to_string(pas.server_dir("pg").join("wals").join("pg-xlog.db")).unwrap();
    // As sets: a real Barman passive's first sync-wals rebuilds its missing xlog.db from the
    // files it has just copied, then appends the same lines again (Barman 3.17 does this to
    // any primary).
    let set = |t: &str| t.lines().map(str::to_string).collect::<std::collections::BTreeSet<_>>();
    assert_eq!(set(&pas_db), set(&pri_db), "xlog.db lines copied as ours");

    // One more segment: the time until the passive holds it.
    pg.psql("INSERT INTO after_backup SELECT generate_series(1001, 2000)").unwrap();
    let expected_after: String = pg.psql("SELECT count(*) FROM after_backup").unwrap();
    pri.switch_and_archive(&pg);
    let next = converge("the real Barman passive holds the switched segment");
    eprintln!("real Barman passive: first sync {first:?}, one switch-wal later {next:?}");

    // A recovery by the real Barman from its passive copy gives our primary's tables.
    let dir = pas.path().join("recovered");
    let out = theirs_passive(&pas, &["recover", "pg", &id, &dir.join("data").display().to_string()]);
    out.ok();
    let r = common::start_recovered(&dir, &[]);
    assert_eq!(r.psql(CHECKSUMS).unwrap(), expected);
    let got_after = r.psql("SELECT count(*) FROM after_backup").unwrap();
    assert_eq!(got_after, expected_after, "rows after the backup replayed from the passive's WAL");
}
