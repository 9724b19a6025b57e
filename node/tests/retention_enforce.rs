//! delete, keep and the retention policy cron enforces, on real backups of a
//! real PostgreSQL 15, with what the real Barman 3.17 prints of the same
//! catalogue as the reference.
#![allow(clippy::unwrap_used)]

mod common;

use cluster_tests::pg::PgCluster;
use common::{Env, Out};
use std::fs;
use std::path::Path;
use std::process::Command;

fn setup(env: &Env) -> PgCluster {
    let pg = env.archiving_primary(&[]);
    pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
    pg
}

fn config(env: &Env, pg: &PgCluster, extra: &str) {
    env.write_config(&format!(
        "[pg]\nconninfo = {}\nbackup_method = postgres\narchiver = on\nimmediate_checkpoint = true\n{extra}",
        pg.conninfo()
    ));
}

/// A backup with some WAL before and after it, complete (DONE).
fn backup(env: &Env, pg: &PgCluster) -> String {
    pg.pgbench(&["-t", "200", "-n"]).unwrap();
    pg.switch_wal().unwrap();
    env.barman(&["backup", "pg", "--wait"]).ok();
    pg.pgbench(&["-t", "200", "-n"]).unwrap();
    env.switch_and_archive(pg);
    env.barman(&["list-backups", "--minimal", "pg"]).stdout.lines().next().unwrap().to_string()
}

fn ids(env: &Env) -> Vec<String> {
    env.barman(&["list-backups", "--minimal", "pg"]).stdout.lines().map(str::to_string).collect()
}

fn begin_wal(env: &Env, id: &str) -> String {
    let text = fs::read_to_string(env.server_dir("pg").join("meta").join(format!("{id}-backup.info"))).unwrap();
    text.lines().find_map(|l| l.strip_prefix("begin_wal=")).unwrap().to_string()
}

/// Archived segment names, sorted.
fn archived(wals: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for d in fs::read_dir(wals).unwrap().flatten() {
        if d.path().is_dir() {
            v.extend(fs::read_dir(d.path()).unwrap().flatten().map(|f| f.file_name().to_string_lossy().into_owned()));
        }
    }
    v.sort();
    v
}

fn theirs(env: &Env, args: &[&str]) -> Out {
    let barman = cluster_tests::reference::barman().expect("reference Barman (scripts/setup-reference.sh)");
    common::run(Command::new(barman).arg("-c").arg(&env.config).args(args), None)
}

#[test]
fn delete_keep_and_retention_as_barman() {
    let env = Env::new();
    let pg = setup(&env);
    config(&env, &pg, "minimum_redundancy = 1\n");
    let b1 = backup(&env, &pg);
    let b2 = backup(&env, &pg);
    let b3 = backup(&env, &pg);
    assert_eq!(ids(&env), vec![b3.clone(), b2.clone(), b1.clone()]);

    // keep: set, shown as Barman shows it, refused by delete, released.
    env.barman(&["keep", "pg", &b1, "--target", "standalone"]).ok();
    assert_eq!(fs::read_to_string(env.server_dir("pg").join("meta").join(format!("{b1}-keep"))).unwrap(), "standalone");
    let ours = env.barman(&["keep", "pg", &b1, "--status"]);
    assert_eq!(ours.stdout, theirs(&env, &["keep", "pg", &b1, "--status"]).stdout);
    let listed = env.barman(&["list-backups", "pg"]);
    assert_eq!(listed.stdout, theirs(&env, &["list-backups", "pg"]).stdout);
    let out = env.barman(&["delete", "pg", &b1]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(&format!(
            "WARNING: Skipping delete of backup {b1} for server pg as it has a current keep request."
        )),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(&format!("ERROR: Cannot delete backup (pg {b1})")), "{}", out.stderr);
    env.barman(&["keep", "pg", &b1, "--release"]).ok();
    assert_eq!(env.barman(&["keep", "pg", &b1, "--status"]).stdout, "Server pg:\n\tKeep: nokeep\n");

    // delete of the oldest: its data and the WAL before the next backup go,
    // each WAL file between its hooks.
    let hooks = env.path().join("hooks.log");
    let h = hooks.display();
    config(
        &env,
        &pg,
        &format!(
            "minimum_redundancy = 1\npre_delete_script = echo \"pre $BARMAN_BACKUP_ID $BARMAN_STATUS $BARMAN_NEXT_ID\" >> {h}\n\
             post_wal_delete_script = echo \"wal $BARMAN_SEGMENT $BARMAN_PHASE\" >> {h}\n"
        ),
    );
    let out = env.barman(&["delete", "pg", "oldest"]);
    out.ok();
    let log = fs::read_to_string(&hooks).unwrap();
    let mut lines = log.lines();
    assert_eq!(lines.next().unwrap(), format!("pre {b1} DONE {b2}"));
    let removed: Vec<&str> = out.stdout.lines().filter_map(|l| l.strip_prefix('\t')).collect();
    let hooked: Vec<String> = lines.map(str::to_string).collect();
    assert!(!removed.is_empty());
    assert_eq!(hooked, removed.iter().map(|w| format!("wal {w} post")).collect::<Vec<_>>());
    assert!(out.stdout.contains(&format!("Deleting backup {b1} for server pg")), "{}", out.stdout);
    assert!(out.stdout.contains("Delete associated WAL segments:"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("Deleted backup {b1} (start time: ")), "{}", out.stdout);
    assert!(!env.server_dir("pg").join("base").join(&b1).exists());
    let b2_begin = begin_wal(&env, &b2);
    let wals = archived(&env.server_dir("pg").join("wals"));
    assert!(wals.iter().all(|w| w.as_str() >= b2_begin.as_str()), "{b2_begin}: {wals:?}");
    assert!(wals.iter().any(|w| w.as_str() > b2_begin.as_str()));

    // minimum_redundancy: not below it.
    config(&env, &pg, "minimum_redundancy = 2\n");
    let out = env.barman(&["delete", "pg", &b2]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains(&format!(
        "WARNING: Skipping delete of backup {b2} for server pg due to minimum redundancy requirements (minimum redundancy = 2, current redundancy = 2)"
    )), "{}", out.stderr);
    let out = env.barman(&["delete", "pg", "20200101T000000"]);
    assert_eq!(out.stderr.trim(), "ERROR: Unknown backup '20200101T000000' for server 'pg'");

    // An interrupted delete (its marker left, data half gone) is finished by cron.
    config(&env, &pg, "");
    fs::write(env.server_dir("pg").join("meta").join(format!("{b2}-delete_this")), "delete").unwrap();
    fs::remove_dir_all(env.server_dir("pg").join("base").join(&b2).join("data")).unwrap();
    env.barman(&["cron"]).ok();
    assert_eq!(ids(&env), vec![b3.clone()]);

    // REDUNDANCY 1: the older backup becomes OBSOLETE and cron removes it with its WAL.
    config(&env, &pg, "retention_policy = REDUNDANCY 1\n");
    let b4 = backup(&env, &pg);
    let listed = env.barman(&["list-backups", "pg"]);
    assert_eq!(listed.stdout, theirs(&env, &["list-backups", "pg"]).stdout);
    assert!(
        listed.stdout.contains(&format!("pg {b3} - F - ")) && listed.stdout.contains(" - OBSOLETE\n"),
        "{}",
        listed.stdout
    );
    let out = env.barman(&["cron"]);
    out.ok();
    assert!(
        out.stdout.contains(&format!("Enforcing retention policy: removing backup {b3} for server pg")),
        "{}",
        out.stdout
    );
    assert_eq!(ids(&env), vec![b4.clone()]);
    let b4_begin = begin_wal(&env, &b4);
    let wals = archived(&env.server_dir("pg").join("wals"));
    assert!(wals.iter().all(|w| w.as_str() >= b4_begin.as_str()), "{b4_begin}: {wals:?}");
    assert_eq!(env.barman(&["list-backups", "pg"]).stdout, theirs(&env, &["list-backups", "pg"]).stdout);
}

#[test]
fn check_reports_the_backup_checks_as_barman() {
    let env = Env::new();
    let pg = setup(&env);
    config(
        &env,
        &pg,
        "minimum_redundancy = 2\nlast_backup_maximum_age = 1 day\nretention_policy = RECOVERY WINDOW OF 2 WEEKS\n",
    );
    backup(&env, &pg);
    let ours = env.barman(&["check", "pg"]);
    let theirs = theirs(&env, &["check", "pg"]);
    // Barman's executor checks are about the pg_basebackup program, which the
    // postgres method here does not use.
    // The backup's age is read a moment apart: compared up to its value.
    let age = |l: &str| l.split(" latest backup age: ").next().unwrap_or(l).to_string();
    let want: Vec<String> = theirs.stdout.lines().filter(|l| !l.contains("pg_basebackup")).map(age).collect();
    let got: Vec<String> = ours.stdout.lines().map(age).collect();
    assert_eq!(got, want, "ours:\n{}\ntheirs:\n{}", ours.stdout, theirs.stdout);
    assert!(ours.stdout.contains("\tbackup maximum age: OK (interval provided: 1 day, latest backup age: "));
    assert_eq!(ours.code, theirs.code);
}

/// Deleting a backup that is not the oldest keeps every WAL file: the older
/// backup still needs them to reach the present.
#[test]
fn deleting_a_middle_backup_keeps_the_wal_older_backups_need() {
    let env = Env::new();
    let pg = setup(&env);
    config(&env, &pg, "");
    let b1 = backup(&env, &pg);
    let b2 = backup(&env, &pg);
    let b3 = backup(&env, &pg);
    let wals = env.server_dir("pg").join("wals");
    let before = archived(&wals);
    let out = env.barman(&["delete", "pg", &b2]);
    out.ok();
    assert!(!out.stdout.contains("Delete associated WAL segments"), "{}", out.stdout);
    assert_eq!(archived(&wals), before, "no WAL removed");
    assert_eq!(ids(&env), vec![b3, b1.clone()]);
    // The oldest backup can still be checked complete from the archive it kept.
    env.barman(&["check-backup", "pg", &b1]).ok();
    assert!(
        fs::read_to_string(env.server_dir("pg").join("meta").join(format!("{b1}-backup.info")))
            .unwrap()
            .contains("status=DONE\n")
    );
}
