//! The barman command line against a real PostgreSQL and against Barman 3.17's
//! own output: configuration read the same way, passwords masked, Barman's
//! check names, Nagios output and exit codes.

#![allow(clippy::unwrap_used)]

mod common;

use barman::config::options::SERVER_OPTIONS;
use cluster_tests::pg::{PgCluster, PgOptions};
use cluster_tests::reference;
use common::{Env, run};
use std::collections::BTreeMap;
use std::process::Command;

const TRICKY: &str = "compression = gzip\nretention_policy = RECOVERY WINDOW OF 2 weeks\nlast_wal_maximum_age = 1 hour\n\n\
[pg]\ndescription = \"my pg\"\nconninfo = host=127.0.0.1 port=1 user=x password=topsecret connect_timeout=2\nbackup_method = postgres\n\
streaming_archiver = on\nslot_name = Barman\narchiver = maybe\nbackup_options = concurrent_backup\nrecovery_options = get-wal\n\
minimum_redundancy = -2\nbandwidth_limit = 100\ncompression_level = 9\npath_prefix = /opt/%(slot_name)s/bin\n\
[other]\nconninfo = host=127.0.0.1 port=1\nssh_command = ssh pg\ncompression =\nretention_policy = keep forever\n";

/// `key: value` lines of show-servers, for the options of the table.
fn option_lines(text: &str) -> BTreeMap<String, String> {
    let names: Vec<&str> = SERVER_OPTIONS.iter().map(|s| s.name).collect();
    // Barman's redaction eats the newline after a password: split it back.
    let text = text.replace("*REDACTED*\t", "*REDACTED*\n\t");
    text.lines()
        .filter_map(|l| l.strip_prefix('\t'))
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| names.contains(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn show_servers_reads_the_configuration_as_barman_does() {
    let env = Env::new();
    let text =
        format!("[barman]\nbarman_home = {}\nbarman_user = {}\n{TRICKY}", env.home.display(), common::barman_user());
    std::fs::write(&env.config, &text).unwrap();
    let barman = reference::barman().expect("reference Barman");
    for server in ["pg", "other"] {
        let theirs =
            run(Command::new(&barman).args(["-c", env.config.to_str().unwrap(), "show-servers", server]), None);
        let ours = env.barman(&["show-servers", server]);
        assert_eq!(ours.code, 0, "{}", ours.stderr);
        let (t, o) = (option_lines(&theirs.stdout), option_lines(&ours.stdout));
        assert!(t.len() > 100, "{}", theirs.stdout);
        assert_eq!(o, t, "show-servers {server} differs from Barman's");
        assert!(!ours.stdout.contains("topsecret"));
        if server == "pg" {
            assert!(ours.stdout.contains("password=*REDACTED*"), "{}", ours.stdout);
        }
    }
    // Invalid values are named with file and line.
    let warn = env.barman(&["list-servers"]).stderr;
    assert!(
        warn.contains(&format!(
            "{}:14: ignoring invalid value 'maybe' for option 'archiver' in [pg]",
            env.config.display()
        )),
        "{warn}"
    );
    assert!(warn.contains("option 'retention_policy' in [other]: not a retention policy"), "{warn}");
    // Barman disables 'other' (rsync without ... no: with ssh_command it is enabled);
    // the listing shows descriptions as Barman's does.
    let ours = env.barman(&["list-servers"]);
    let theirs = run(Command::new(&barman).args(["-c", env.config.to_str().unwrap(), "list-servers"]), None);
    assert_eq!(ours.stdout, theirs.stdout);
    let minimal = env.barman(&["list-servers", "--minimal"]);
    assert_eq!(minimal.stdout, "other\npg\n");
    let json: serde_json::Value = serde_json::from_str(&env.barman(&["-f", "json", "list-servers"]).stdout).unwrap();
    assert_eq!(json["pg"]["description"], "my pg");
    let check = env.barman(&["check", "other"]);
    assert!(check.stdout.contains("retention policy settings: FAILED (see log)"), "{}", check.stdout);
    // No output form shows a password, nor does a conninfo Barman's pattern misses.
    let json = env.barman(&["-f", "json", "show-servers", "pg"]);
    assert!(json.stdout.contains("password=*REDACTED*") && !json.stdout.contains("topsecret"), "{}", json.stdout);
    env.write_config("[pg]\nconninfo = host=127.0.0.1 PASSWORD = s3cret\nbackup_method = postgres\n");
    let check = env.barman(&["check", "pg"]);
    assert!(check.stdout.contains("is not a valid connection string"), "{}", check.stdout);
    assert!(!check.stdout.contains("s3cret") && !check.stderr.contains("s3cret"), "{}{}", check.stdout, check.stderr);
}

#[test]
fn disabled_servers_say_why() {
    let env = Env::new();
    env.write_config("[nossh]\nconninfo = host=127.0.0.1 port=1\n[gpg]\nconninfo = host=127.0.0.1 port=1\nbackup_method = postgres\nencryption = gpg\n");
    let out = env.barman(&["check", "nossh"]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.starts_with("Server nossh (WARNING: disabled):"), "{}", out.stdout);
    assert!(
        out.stdout.contains(
            "\tconfiguration: FAILED\n\t\tMissing or invalid ssh_command in barman configuration for server nossh"
        ),
        "{}",
        out.stdout
    );
    let show = env.barman(&["show-servers", "gpg"]);
    assert!(show.stdout.contains("configuration_errors: encryption = gpg is not supported"), "{}", show.stdout);
    let get = env.barman(&["get-wal", "gpg", "000000010000000000000001"]);
    assert_eq!(get.code, 1);
    assert!(get.stderr.contains("encryption = gpg is not supported"), "{}", get.stderr);
    let ls = env.barman(&["list-servers"]);
    // Barman appends " (WARNING: disabled)" to an empty description.
    assert_eq!(ls.stdout, "gpg -  (WARNING: disabled)\nnossh -  (WARNING: disabled)\n");
}

#[test]
fn check_status_and_nagios_against_postgresql() {
    let env = Env::new();
    let pg = PgCluster::start(
        env.path(),
        PgOptions { conf: vec![("archive_mode".into(), "on".into())], ..Default::default() },
    )
    .unwrap();
    let incoming = env.server_dir("pg").join("incoming");
    pg.set_conf("archive_command", &cluster_tests::pg::conf_quote(&format!("cp %p {}/%f", incoming.display())))
        .unwrap();
    env.write_config(&format!(
        "[pg]\nconninfo = {}\nbackup_method = postgres\narchiver = on\ncompression = lz4\n",
        pg.conninfo()
    ));
    std::fs::create_dir_all(&incoming).unwrap();
    cluster_tests::util::chown_to_pg_user(&incoming).unwrap();
    // check itself switches WAL and archives when the archive is empty.
    let out = env.barman(&["check", "pg"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for line in [
        "Server pg:",
        "\tPostgreSQL: OK",
        "\tsuperuser or standard user with backup privileges: OK",
        "\twal_level: OK",
        "\tdirectories: OK",
        "\tsystemid coherence: OK",
        "\tarchive_mode: OK",
        "\tarchive_command: OK",
        "\tarchiver errors: OK",
    ] {
        assert!(out.stdout.contains(line), "missing {line:?} in\n{}", out.stdout);
    }
    assert!(!out.stdout.contains("WAL archive: FAILED"));
    let nagios = env.barman(&["check", "--nagios", "pg"]);
    assert_eq!(nagios.code, 0);
    assert!(
        nagios.stdout.starts_with("BARMAN OK - Ready to serve the Espresso backup for pg|pg=0B pg_wals="),
        "{}",
        nagios.stdout
    );
    let json: serde_json::Value = serde_json::from_str(&env.barman(&["-f", "json", "check", "pg"]).stdout).unwrap();
    assert_eq!(json["pg"]["postgresql"]["status"], "OK");
    let status = env.barman(&["status", "pg"]);
    assert!(status.stdout.contains("\tPostgreSQL version: 15."), "{}", status.stdout);
    assert!(status.stdout.contains("\tCluster state: in production"), "{}", status.stdout);
    // Break it: archive_command off, a rejected file in errors/.
    pg.set_conf("archive_command", "''").unwrap();
    std::fs::create_dir_all(env.server_dir("pg").join("errors")).unwrap();
    std::fs::write(env.server_dir("pg").join("errors/000000010000000000000009.20260101T000000Z.duplicate"), b"x")
        .unwrap();
    let out = env.barman(&["check", "pg"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains("\tarchive_command: FAILED (please set it accordingly to documentation)"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("\tarchiver errors: FAILED (duplicates: 1)"), "{}", out.stdout);
    let nagios = env.barman(&["check", "--nagios", "pg"]);
    assert_eq!(nagios.code, 2);
    let first = nagios.stdout.lines().next().unwrap();
    assert!(
        first.starts_with(
            "BARMAN CRITICAL - server pg has issues * pg FAILED: archive_command, archiver errors|pg=0B pg_wals="
        ),
        "{}",
        nagios.stdout
    );
    assert!(nagios.stdout.contains("\npg.archiver errors: FAILED (duplicates: 1)"), "{}", nagios.stdout);
    // The ready checks of the WAL commands.
    assert_eq!(env.barman(&["put-wal", "--test", "pg"]).stdout, "Ready to accept WAL files for the server pg\n");
    assert_eq!(
        env.barman(&["get-wal", "--test", "pg", "x"]).stdout,
        "Ready to retrieve WAL files from the server pg\n"
    );
    let diag: serde_json::Value = serde_json::from_str(&env.barman(&["diagnose"]).stdout).unwrap();
    assert_eq!(diag["servers"]["pg"]["config"]["compression"], "lz4");
    assert!(diag["servers"]["pg"]["status"]["postgres_systemid"].is_string());
    // switch-wal --force as a user who may not CHECKPOINT gets Barman's hint.
    pg.psql("CREATE ROLE nocp LOGIN").unwrap();
    env.write_config(&format!(
        "[pg]\nconninfo = {}\nbackup_method = postgres\narchiver = on\n",
        pg.conninfo().replace("user=postgres", "user=nocp")
    ));
    let out = env.barman(&["switch-wal", "--force", "pg"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("ERROR: Barman switch-wal --force requires superuser rights or the 'pg_checkpoint' role"),
        "{}",
        out.stderr
    );
}

#[test]
fn unknown_user_and_unknown_server() {
    let env = Env::new();
    std::fs::write(
        &env.config,
        format!("[barman]\nbarman_home = {}\nbarman_user = no_such_user_here\n", env.home.display()),
    )
    .unwrap();
    let out = env.barman(&["list-servers"]);
    assert_eq!(out.code, 1);
    assert_eq!(out.stderr.trim(), "ERROR: the configured user 'no_such_user_here' does not exists");
    env.write_config("");
    let out = env.barman(&["archive-wal", "nosuch"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("ERROR: Unknown server 'nosuch'"), "{}", out.stderr);
    let out = env.barman(&["archive-wal", "all"]);
    assert!(out.stderr.contains("You cannot use 'all' in a single server context"), "{}", out.stderr);
    let missing =
        Command::new(env.bin.join("barman")).args(["-c", "/nonexistent.conf", "list-servers"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("'/nonexistent.conf' does not exist"));
    // A log file that cannot be opened is said, and the command goes on.
    std::fs::write(
        &env.config,
        format!(
            "[barman]\nbarman_home = {}\nbarman_user = {}\nlog_file = /proc/no/such/dir/barman.log\n",
            env.home.display(),
            common::barman_user()
        ),
    )
    .unwrap();
    let out = env.barman(&["list-servers"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("WARNING: Failed opening the requested log file /proc/no/such/dir/barman.log"),
        "{}",
        out.stderr
    );
}

#[test]
fn cron_archives_in_the_background_and_cleans_lock_files() {
    let env = Env::new();
    env.write_config("[pg]\nconninfo = host=127.0.0.1 port=1 user=nobody\nbackup_method = postgres\narchiver = on\ncompression = gzip\n");
    common::write_identity(&env, "pg");
    let incoming = env.server_dir("pg").join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    for s in 1..=3 {
        std::fs::write(incoming.join(common::seg_name(s)), common::segment(s, common::SYS, s, false)).unwrap();
    }
    // A lock file nobody holds, left by a process that died.
    let stale = env.home.join(".pg-backup.lock");
    std::fs::write(&stale, "999999\n").unwrap();
    let out = env.barman(&["cron"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("Starting WAL archiving for server pg"), "{}", out.stdout);
    cluster_tests::util::wait_until(std::time::Duration::from_secs(30), "cron's archive-wal", || {
        common::names_in(&incoming).is_empty()
    })
    .unwrap();
    let db = std::fs::read_to_string(env.server_dir("pg").join("wals/pg-xlog.db")).unwrap();
    assert_eq!(db.lines().count(), 3, "{db}");
    assert!(!stale.exists(), "unheld lock files are removed");
}

#[test]
fn check_fails_when_no_wal_is_shipped() {
    let env = Env::new();
    env.write_config("[pg]\nconninfo = host=127.0.0.1 port=1 user=nobody connect_timeout=2\nbackup_method = postgres\narchiver = on\n");
    let out = env.barman(&["check", "pg"]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("\tWAL archive: FAILED (please make sure WAL shipping is setup)"), "{}", out.stdout);
    assert!(
        out.stdout.contains("\tPostgreSQL: FAILED (connection to server at \"127.0.0.1\", port 1 failed"),
        "{}",
        out.stdout
    );
    let nagios = env.barman(&["check", "--nagios", "pg"]);
    assert_eq!(nagios.code, 2);
    assert!(
        nagios.stdout.starts_with("BARMAN CRITICAL - server pg has issues * pg FAILED: WAL archive, PostgreSQL"),
        "{}",
        nagios.stdout
    );
    // A catalogue line that cannot be read fails the archive check, naming the line.
    std::fs::create_dir_all(env.server_dir("pg").join("wals")).unwrap();
    std::fs::write(env.server_dir("pg").join("wals/pg-xlog.db"), "garbage line\n").unwrap();
    let out = env.barman(&["check", "pg"]);
    assert!(out.stdout.contains("pg-xlog.db:1: cannot read the line"), "{}", out.stdout);
    std::fs::remove_file(env.server_dir("pg").join("wals/pg-xlog.db")).unwrap();
    // An inactive server's failures are ignored.
    env.write_config("[pg]\nactive = false\nconninfo = host=127.0.0.1 port=1 user=nobody connect_timeout=2\nbackup_method = postgres\narchiver = on\n");
    let out = env.barman(&["check", "pg"]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.starts_with("Server pg (inactive):"), "{}", out.stdout);
    assert!(
        env.barman(&["check", "--nagios", "pg"]).stdout.starts_with("BARMAN OK - No server configured * IGNORING: pg")
    );
}
