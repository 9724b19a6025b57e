//! Tests of the harness itself: each starts the real thing and checks what later tests rely on.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use cluster_tests::pg::{PgCluster, PgOptions};
use cluster_tests::ssh::Sshd;
use cluster_tests::util::{
    TestDir, as_pg_user, chown_to_pg_user, free_port, install_binaries, pg_bin, small_filesystem, wait_until,
};
use cluster_tests::{reference, util};

fn is_wal_name(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn util_basics() {
    let a = free_port().unwrap();
    let b = free_port().unwrap();
    assert_ne!(a, b, "free_port handed the same port twice");

    let dir = TestDir::new().unwrap();
    let path = dir.path().to_path_buf();
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o755);
    drop(dir);
    if std::env::var("KEEP_TEST_DIRS").as_deref() != Ok("1") {
        assert!(!path.exists(), "TestDir was not removed on drop");
    }

    let err = wait_until(Duration::from_millis(100), "nothing", || false).unwrap_err();
    assert!(err.to_string().contains("nothing"), "{err}");
    let mut n = 0;
    wait_until(Duration::from_secs(5), "three calls", || {
        n += 1;
        n == 3
    })
    .unwrap();
    assert_eq!(n, 3);

    let pg_user = util::pg_os_user().unwrap();
    if util::is_root() {
        assert_eq!(pg_user.name, "postgres", "PostgreSQL cannot run as root");
    } else {
        assert_eq!(pg_user, util::current_os_user().unwrap());
    }
}

#[test]
fn cluster_starts_and_answers() {
    let dir = TestDir::new().unwrap();
    let pg = PgCluster::start(dir.path(), PgOptions::default()).unwrap();
    assert_eq!(pg.psql("SELECT 1").unwrap(), "1");
    assert_ne!(pg.system_identifier().unwrap(), 0);
    let first = pg.switch_wal().unwrap();
    let second = pg.switch_wal().unwrap();
    assert!(is_wal_name(&first) && is_wal_name(&second), "{first} {second}");
    assert!(second > first, "the second switch did not close a later segment: {first} then {second}");
    assert!(pg.current_lsn().unwrap().contains('/'));

    let err = pg.psql("SELECT no_such_column").unwrap_err();
    assert!(format!("{err:#}").contains("no_such_column"), "psql error lacks stderr: {err:#}");

    pg.set_conf("work_mem", "'7MB'").unwrap();
    assert_eq!(pg.psql("SHOW work_mem").unwrap(), "7MB");
    assert_eq!(pg.psql("SHOW wal_level").unwrap(), "replica");
    assert!(pg.log().contains("database system is ready"), "log: {}", pg.log());
}

#[test]
fn password_cluster_requires_the_password() {
    let dir = TestDir::new().unwrap();
    let opts = PgOptions {
        password: Some("s3cret".into()),
        wal_segsize_mb: Some(1),
        data_checksums: true,
        conf: vec![("application_name".into(), "'harness'".into())],
        ..PgOptions::default()
    };
    let mut pg = PgCluster::start(dir.path(), opts).unwrap();
    assert_eq!(pg.psql("SHOW data_checksums").unwrap(), "on");
    assert_eq!(pg.psql("SHOW wal_segment_size").unwrap(), "1MB");
    let without = Command::new(pg_bin("psql"))
        .args(["-X", "-w", "-h", "127.0.0.1", "-U", "postgres", "-c", "SELECT 1"])
        .arg("-p")
        .arg(pg.port().to_string())
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert!(!without.status.success(), "psql without a password was let in");
    pg.restart().unwrap();
    assert_eq!(pg.psql("SELECT 2").unwrap(), "2");
    pg.stop().unwrap();
    assert!(pg.psql("SELECT 3").is_err(), "a stopped cluster answered");
}

#[test]
fn sshd_runs_commands_with_session_path() {
    let dir = TestDir::new().unwrap();
    let script = dir.path().join("hello-src");
    fs::write(&script, "#!/bin/sh\necho hello from $(id -un)\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o700)).unwrap();
    let bin = install_binaries(dir.path(), &[("ct-hello", &script)]).unwrap();

    let env = vec![("CT_MARK".to_string(), "marked value".to_string())];
    let sshd = Sshd::start(dir.path(), std::slice::from_ref(&bin), &env).unwrap();
    let ssh = |args: &[&str]| {
        let mut cmd = Command::new("/usr/bin/ssh");
        cmd.arg("-F").arg(sshd.ssh_config()).arg(sshd.host()).args(args);
        let out = as_pg_user(&mut cmd).unwrap().output().unwrap();
        assert!(
            out.status.success(),
            "ssh {args:?}: {}\nsshd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            sshd.log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(ssh(&["echo", "hi"]), "hi");
    let path = ssh(&["echo", "$PATH"]);
    assert!(path.starts_with(&format!("{}:", bin.display())), "session PATH is {path}");
    assert_eq!(ssh(&["echo", "$CT_MARK"]), "marked value");
    assert_eq!(ssh(&["ct-hello"]), format!("hello from {}", sshd.login_user()));

    // The wrapper makes plain `ssh` use our config, as barman-wal-archive would.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ssh 127.0.0.1 echo wrapped")
        .env("PATH", format!("{}:/usr/bin:/bin", sshd.wrapper_dir().display()));
    let out = as_pg_user(&mut cmd).unwrap().output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "wrapped", "{}", String::from_utf8_lossy(&out.stderr));

    let cm = sshd.with_control_master().unwrap();
    let run_cm = |args: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("ssh {args}"))
            .env("PATH", format!("{}:/usr/bin:/bin", cm.display()))
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    assert_eq!(run_cm("127.0.0.1 echo muxed"), (true, "muxed".to_string()));
    assert!(run_cm("-O check 127.0.0.1").0, "no control master after a first connection");
}

#[test]
fn standby_replays_from_the_archive() {
    let dir = TestDir::new().unwrap();
    let archive = dir.path().join("archive");
    fs::create_dir(&archive).unwrap();
    chown_to_pg_user(&archive).unwrap();
    let archive_command = format!("'test ! -f {0}/%f && cp %p {0}/%f'", archive.display());
    let opts = PgOptions {
        conf: vec![("archive_mode".into(), "on".into()), ("archive_command".into(), archive_command)],
        ..PgOptions::default()
    };
    let primary = PgCluster::start(dir.path(), opts).unwrap();
    primary.psql("CREATE TABLE t AS SELECT generate_series(1, 100) AS i").unwrap();
    let standby = primary.make_standby(dir.path(), &format!("cp {}/%f %p", archive.display()), false).unwrap();
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()").unwrap(), "t");

    primary.psql("INSERT INTO t SELECT generate_series(101, 250)").unwrap();
    let lsn = primary.current_lsn().unwrap();
    let closed = primary.switch_wal().unwrap();
    standby.wait_replay(&lsn, Duration::from_secs(60)).unwrap();
    assert!(archive.join(&closed).exists(), "{closed} was not archived");
    assert_eq!(standby.psql("SELECT count(*) FROM t").unwrap(), "250");
    assert_eq!(standby.psql("SELECT count(*) FROM pg_stat_wal_receiver").unwrap(), "0", "it must not stream");
}

#[test]
fn small_filesystem_fills_up() {
    let dir = TestDir::new().unwrap();
    let Some(mount) = small_filesystem(&dir.path().join("small"), 1).unwrap() else {
        return;
    };
    let mut file = fs::File::create(mount.path().join("big")).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let err = (0..64).find_map(|_| file.write_all(&chunk).and_then(|()| file.sync_all()).err());
    let err = err.expect("wrote 4 MiB to a 1 MiB filesystem");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
}

#[test]
fn reference_barman_is_3_17_0() {
    let barman = reference::barman().unwrap();
    let mut cmd = Command::new(&barman);
    cmd.arg("--version");
    // The PostgreSQL OS user must be able to run it too (archive_command, restore_command).
    let out = as_pg_user(&mut cmd).unwrap().output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.starts_with(reference::VERSION), "{}: {text}", barman.display());
    for tool in [reference::barman_wal_archive().unwrap(), reference::barman_wal_restore().unwrap()] {
        assert!(tool.is_file(), "{}", tool.display());
    }
    let py = reference::python().unwrap();
    let ok = Command::new(py).args(["-c", "import barman, zstandard, lz4.frame, snappy"]).status().unwrap();
    assert!(ok.success(), "compression modules missing from the reference venv");
}
