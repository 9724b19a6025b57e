//! `barman recover --remote-ssh-command` through our SSH client into a real sshd, logging
//! in as a second account (the PostgreSQL OS user when run as root): a point-in-time
//! recovery with a relocated tablespace starts and has the recorded tables; bad requests
//! are refused with one line and leave the destination as it was.
#![allow(clippy::unwrap_used)]

mod common;

use cluster_tests::pg::PgCluster;
use cluster_tests::ssh::Sshd;
use cluster_tests::util::{chown_to_pg_user, free_port, is_root, pg_os_user};
use common::{CHECKSUMS, Env, names_in};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The account recoveries log in as: the PostgreSQL OS user when root (a second account),
/// else the current user (sshd cannot switch users without root).
fn account(sshd: &Sshd) -> String {
    if is_root() { pg_os_user().unwrap().name } else { sshd.login_user() }
}

/// A directory the remote account can write in.
fn remote_root(env: &Env) -> PathBuf {
    let dir = env.path().join("remote");
    fs::create_dir_all(&dir).unwrap();
    chown_to_pg_user(&dir).unwrap();
    dir
}

/// A primary with a tablespace, a backup, then work up to restore point `rp` whose table
/// checksums are returned, then more work, all archived.
fn primary_with_backup(env: &Env, compression: &str) -> (PgCluster, String, String) {
    let pg = env.archiving_primary(&[]);
    env.tablespace(&pg);
    pg.pgbench(&["-i", "-s", "2", "-q", "--tablespace=ts"]).unwrap();
    pg.psql("CREATE TABLE marker (i int)").unwrap();
    env.write_config(&format!(
        "[pg]\nconninfo = {}\nbackup_method = postgres\narchiver = on\nimmediate_checkpoint = true\n{compression}",
        pg.conninfo()
    ));
    pg.switch_wal().unwrap();
    env.barman(&["backup", "pg", "--wait"]).ok();
    let id = env.barman(&["list-backups", "--minimal", "pg"]).stdout.trim().to_string();
    pg.pgbench(&["-n", "-t", "300"]).unwrap();
    pg.psql("INSERT INTO marker VALUES (1)").unwrap();
    pg.psql("SELECT pg_create_restore_point('rp')").unwrap();
    let at_rp = pg.psql(CHECKSUMS).unwrap();
    pg.pgbench(&["-n", "-t", "300"]).unwrap();
    pg.psql("INSERT INTO marker VALUES (2)").unwrap();
    env.switch_and_archive(&pg);
    (pg, id, at_rp)
}

#[test]
fn remote_point_in_time_recovery_with_a_relocated_tablespace() {
    let env = Env::new();
    let (pg, id, at_rp) = primary_with_backup(&env, "");
    let sshd = Sshd::start_with(env.path(), std::slice::from_ref(&env.bin), &[], is_root()).unwrap();
    let user = account(&sshd);
    let root = remote_root(&env);
    let data = root.join("restored/data");
    let ts = root.join("ts_moved");
    let ssh = format!("ssh -F {} {user}@127.0.0.1", sshd.ssh_config().display());
    let out = env.barman(&[
        "recover",
        "--remote-ssh-command",
        &ssh,
        "--target-name",
        "rp",
        "--target-action",
        "promote",
        "--no-get-wal",
        "--tablespace",
        &format!("ts:{}", ts.display()),
        "--jobs",
        "2",
        "pg",
        &id,
        &data.display().to_string(),
    ]);
    out.ok();
    assert!(out.stdout.contains(&format!("Starting remote restore for server pg using backup {id}")), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("Remote command: {ssh}")), "{}", out.stdout);
    let oid = pg.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'").unwrap();
    assert!(out.stdout.contains(&format!("\t{oid}, ts, {}", ts.display())), "{}", out.stdout);

    // Written by the remote account, as that account's files.
    if is_root() {
        let uid = pg_os_user().unwrap().uid;
        for p in [data.join("PG_VERSION"), data.join("base"), ts.clone(), data.join("postgresql.auto.conf")] {
            assert_eq!(fs::metadata(&p).unwrap().uid(), uid, "{} belongs to {user}", p.display());
        }
    }
    assert_eq!(fs::read_link(data.join("pg_tblspc").join(&oid)).unwrap(), ts);
    assert!(!data.join("tablespace_map").exists());
    assert!(data.join("recovery.signal").exists());
    assert!(data.join(format!("backup_manifest.{id}")).exists());
    assert!(data.join(".barman-recover.info").exists());
    let auto = fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    let wal_dir = data.join("barman_wal");
    assert!(auto.contains(&format!("restore_command = 'cp {}/%f %p'", wal_dir.display())), "{auto}");
    assert!(auto.contains("recovery_target_name = 'rp'"), "{auto}");
    assert!(data.join("postgresql.auto.conf.origin").exists());
    assert!(!names_in(&wal_dir).is_empty(), "the WAL the target needs was copied");
    let conf = fs::read_to_string(data.join("postgresql.conf")).unwrap();
    assert!(conf.contains("archive_command = false"), "the recovered cluster archives nothing");

    let r = common::start_recovered(&root.join("restored"), &[&ts]);
    assert_eq!(r.psql(CHECKSUMS).unwrap(), at_rp);
    assert_eq!(r.psql("SHOW archive_command").unwrap(), "false");
}

/// A zstd tar backup streams to the remote host unpacked, over two compressed streams, and
/// recovers to the end of the archive; with get-wal, restore_command is barman-wal-restore
/// back to this host, named as Python's `socket.getfqdn()` names it.
#[test]
fn remote_recovery_of_a_compressed_backup_and_barman_wal_restore() {
    let env = Env::new();
    let (pg, id, _) = primary_with_backup(&env, "backup_compression = zstd\n");
    let want = pg.psql(CHECKSUMS).unwrap();
    let sshd = Sshd::start_with(env.path(), std::slice::from_ref(&env.bin), &[], is_root()).unwrap();
    let user = account(&sshd);
    let root = remote_root(&env);
    let ts = root.join("ts_moved");
    let ssh = format!("ssh -F {} {user}@127.0.0.1", sshd.ssh_config().display());
    let recover = |data: &Path, extra: &[&str]| {
        let dest = data.display().to_string();
        let tablespace = format!("ts:{}", ts.display());
        let mut args = vec!["recover", "--remote-ssh-command", &ssh, "--tablespace", &tablespace, "-j", "2"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["pg", &id, &dest]);
        env.barman(&args).ok().stdout.clone()
    };

    let data = root.join("restored/data");
    recover(&data, &["--no-get-wal", "--network-compression"]);
    assert!(data.join("pg_wal/archive_status").is_dir());
    let r = common::start_recovered(&root.join("restored"), &[&ts]);
    assert_eq!(r.psql(CHECKSUMS).unwrap(), want, "to the end of the archive");
    drop(r);

    let fqdn = std::process::Command::new(cluster_tests::reference::python().unwrap())
        .args(["-c", "import socket; print(socket.getfqdn())"])
        .output()
        .unwrap();
    let fqdn = String::from_utf8(fqdn.stdout).unwrap().trim().to_string();
    fs::remove_dir_all(&ts).unwrap();
    let data = root.join("get_wal/data");
    let out = recover(&data, &["--get-wal", "--recovery-option-port", "2022", "--target-immediate"]);
    assert!(out.contains("WARNING: 'get-wal' is in the specified 'recovery_options'."), "{out}");
    let auto = fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    let line =
        format!("restore_command = 'barman-wal-restore -P -U {} --port 2022 {fqdn} pg %f %p'", common::barman_user());
    assert!(auto.contains(&line), "{line}\n{auto}");
    assert!(auto.contains("# The 'barman-wal-restore' command is provided in the 'barman-cli' package"), "{auto}");
    assert!(auto.contains("recovery_target = 'immediate'"), "{auto}");
    assert_eq!(names_in(&data.join("barman_wal")), ["archive_status"], "no WAL copied with get-wal");
    assert!(names_in(&data.join("pg_wal")).iter().all(|n| n == "archive_status"), "no WAL in pg_wal either");
}

#[test]
fn remote_recovery_refuses_bad_requests_with_one_line() {
    let env = Env::new();
    let (_pg, id, _) = primary_with_backup(&env, "");
    let sshd = Sshd::start_with(env.path(), std::slice::from_ref(&env.bin), &[], is_root()).unwrap();
    let user = account(&sshd);
    let root = remote_root(&env);
    let cfg = sshd.ssh_config().display().to_string();
    let refused = |ssh: &str, dest: &Path, extra: &[&str], why: &str| {
        let dest_s = dest.display().to_string();
        let mut args = vec!["recover", "--remote-ssh-command", ssh, "pg", &id, &dest_s];
        args.extend_from_slice(extra);
        let before = names_in(&root);
        let out = env.barman(&args);
        assert_eq!(out.code, 1, "{ssh} {extra:?}: {}{}", out.stdout, out.stderr);
        let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line: {}", out.stderr);
        assert!(lines[0].contains(why), "{why}: {}", out.stderr);
        assert_eq!(names_in(&root), before, "nothing written");
    };
    let fresh = root.join("fresh/data");
    // Nobody listens there.
    let port = free_port().unwrap();
    refused(&format!("ssh -F {cfg} -p {port} {user}@127.0.0.1"), &fresh, &[], "Unable to connect to the target host");
    // A host key we do not know.
    refused(
        &format!("ssh -o UserKnownHostsFile=/dev/null -F {cfg} {user}@127.0.0.1"),
        &fresh,
        &[],
        "not in the known hosts files",
    );
    // Without the test's client config: the port, key and known hosts given on the line.
    let keys = env.path().join("other_keys");
    fs::create_dir_all(&keys).unwrap();
    let keygen = |name: &str| {
        let st = std::process::Command::new("/usr/bin/ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(keys.join(name))
            .status()
            .unwrap();
        assert!(st.success());
        keys.join(name)
    };
    let sshd_dir = sshd.ssh_config().parent().unwrap().to_path_buf();
    let bare = |key: &Path, known: &Path| {
        format!(
            "ssh -F /dev/null -p {} -i {} -o UserKnownHostsFile={} {user}@127.0.0.1",
            sshd.port(),
            key.display(),
            known.display()
        )
    };
    // The host presents another key than the one recorded for it.
    let impostor = keygen("impostor");
    let recorded = keys.join("known_hosts");
    let impostor_pub = fs::read_to_string(impostor.with_extension("pub")).unwrap();
    fs::write(&recorded, format!("[127.0.0.1]:{} {}", sshd.port(), impostor_pub)).unwrap();
    refused(&bare(&sshd_dir.join("id_ed25519"), &recorded), &fresh, &[], "differs from the one recorded");
    // A key the account does not authorize.
    let stranger = keygen("stranger");
    refused(&bare(&stranger, &sshd_dir.join("known_hosts")), &fresh, &[], "accepted none of the keys offered");
    refused(&format!("ssh -J jump -F {cfg} {user}@127.0.0.1"), &fresh, &[], "jump hosts");
    refused(&format!("ssh -F {cfg} {user}@127.0.0.1"), Path::new("relative/data"), &[], "absolute path");
    // A destination where PostgreSQL runs, one that is not empty.
    let busy = root.join("busy");
    fs::create_dir_all(&busy).unwrap();
    fs::write(busy.join("postmaster.pid"), "4242\n").unwrap();
    fs::write(busy.join("PG_VERSION"), "15\n").unwrap();
    chown_to_pg_user(&busy).unwrap();
    let ssh = format!("ssh -F {cfg} {user}@127.0.0.1");
    refused(&ssh, &busy, &[], "postmaster.pid");
    fs::remove_file(busy.join("postmaster.pid")).unwrap();
    refused(&ssh, &busy, &[], "must be empty");
    assert_eq!(names_in(&busy), ["PG_VERSION"], "the destination is as it was");
    // The remote account cannot write there: the remote tar's own complaint, in one line.
    let locked = root.join("locked");
    fs::create_dir_all(&locked).unwrap();
    chown_to_pg_user(&locked).unwrap();
    fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    let moved = format!("ts:{}", root.join("fresh_ts").display());
    let failed = env.barman(&[
        "recover",
        "--remote-ssh-command",
        &ssh,
        "--tablespace",
        &moved,
        "pg",
        &id,
        &locked.join("data").display().to_string(),
    ]);
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    let lines: Vec<&str> = failed.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{}", failed.stderr);
    assert!(
        lines[0].contains("Failure copying base backup: tar on") && lines[0].contains("Permission denied"),
        "{}",
        lines[0]
    );
    assert!(names_in(&locked).is_empty());
    fs::remove_dir_all(root.join("fresh_ts")).ok();
    refused(&ssh, &fresh, &["--target-name", "rp", "--target-lsn", "0/1"], "multiple targets");
    // The source's own tablespace directory is in use on this (same) host.
    refused(&ssh, &fresh, &[], "Tablespace destination directory");
    let moved = format!("ts:{}", root.join("fresh_ts").display());
    refused(
        &ssh,
        &fresh,
        &["--tablespace", &moved, "--target-time", "2000-01-01 00:00:00+00"],
        "before the backup end",
    );
}

/// The real Barman 3.17's remote recovery (rsync over ssh) and ours, for the same backup
/// and options, into the same account: the same files at the top, the same settings and
/// mangling, the same WAL, the same messages (but for times and paths).
#[test]
fn remote_recovery_writes_what_barman_writes() {
    let env = Env::new();
    let pg = env.archiving_primary(&[]);
    pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
    pg.psql("ALTER SYSTEM SET recovery_target_timeline = 'latest'").unwrap();
    env.write_config(&format!(
        "[pg]\nconninfo = {}\nbackup_method = postgres\narchiver = on\nimmediate_checkpoint = true\n",
        pg.conninfo()
    ));
    pg.switch_wal().unwrap();
    env.barman(&["backup", "pg", "--wait"]).ok();
    pg.psql("SELECT pg_create_restore_point('rp')").unwrap();
    env.switch_and_archive(&pg);
    let sshd = Sshd::start_with(env.path(), std::slice::from_ref(&env.bin), &[], is_root()).unwrap();
    let user = account(&sshd);
    let root = remote_root(&env);
    let ssh = format!("ssh -F {} {user}@127.0.0.1", sshd.ssh_config().display());
    let barman = cluster_tests::reference::barman().expect("reference Barman");
    // Barman runs ssh and rsync: the wrapper makes its ssh use the test's client config.
    let path = format!("{}:{}", sshd.wrapper_dir().display(), std::env::var("PATH").unwrap_or_default());
    for (case, args) in [
        ("name", vec!["--target-name", "rp", "--target-action", "promote", "--no-get-wal"]),
        ("getwal", vec!["--get-wal", "--target-immediate"]),
        ("end", vec!["--no-get-wal"]),
    ] {
        let ours_dir = root.join(format!("ours_{case}"));
        let theirs_dir = root.join(format!("theirs_{case}"));
        let run = |program: Option<&Path>, dir: &Path| {
            let d = dir.display().to_string();
            let mut a = vec!["recover", "--remote-ssh-command", &ssh, "pg", "latest", &d];
            a.extend(args.iter().copied());
            match program {
                None => env.barman(&a),
                Some(p) => common::run(
                    std::process::Command::new(p).env("PATH", &path).arg("-c").arg(&env.config).args(&a),
                    None,
                ),
            }
        };
        let ours = run(None, &ours_dir);
        ours.ok();
        let theirs = run(Some(&barman), &theirs_dir);
        theirs.ok();
        for sub in ["", "pg_wal", "barman_wal", "pg_wal/archive_status"] {
            assert_eq!(names_in(&ours_dir.join(sub)), names_in(&theirs_dir.join(sub)), "{case}: files in '{sub}'");
        }
        for f in ["postgresql.auto.conf", "postgresql.conf", "postgresql.auto.conf.origin", "recovery.signal"] {
            assert_eq!(common::dest_text(&ours_dir, f), common::dest_text(&theirs_dir, f), "{case}: {f}");
            if is_root() && ours_dir.join(f).exists() {
                let owner = |d: &Path| fs::metadata(d.join(f)).unwrap().uid();
                assert_eq!(owner(&ours_dir), owner(&theirs_dir), "{case}: {f} belongs to the remote account");
            }
        }
        assert_eq!(
            common::recover_output(&ours.stdout, &ours_dir),
            common::recover_output(&theirs.stdout, &theirs_dir),
            "{case}: output"
        );
    }
}
