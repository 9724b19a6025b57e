//! The SQL connection against a real PostgreSQL 15: identity, versions, WAL
//! switch semantics, archiver statistics, privileges, standbys, password
//! authentication and TLS.

#![allow(clippy::unwrap_used)]

use barman::postgres::{Conninfo, LibpqEnv, PgConnection, PgError, PostgresStatus, SlotType};
use barman::wal::SystemId;
use cluster_tests::pg::{PgCluster, PgOptions, conf_quote};
use cluster_tests::util::{TestDir, chown_to_pg_user, free_port};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// An environment with no PG* variables and no home: what a test connects with
/// must come from its conninfo.
fn env() -> LibpqEnv {
    LibpqEnv::isolated().with_os_user("postgres")
}

async fn connect(ci: &str) -> Result<PgConnection, PgError> {
    PgConnection::connect_with_env(&Conninfo::parse(ci).expect("conninfo parses"), Some("barman"), &env()).await
}

fn start(dir: &TestDir, opts: PgOptions) -> PgCluster {
    PgCluster::start(dir.path(), opts).expect("PostgreSQL starts")
}

fn conf(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Polls `f` every 100 ms for up to 20 s.
async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn identity_versions_and_settings() {
    let dir = TestDir::new().unwrap();
    let pg = start(&dir, PgOptions::default());
    let c = connect(&pg.conninfo()).await.unwrap();

    assert_eq!(c.system_identifier().await.unwrap(), SystemId(pg.system_identifier().unwrap()));
    let v = c.server_version_num();
    assert!((150000..160000).contains(&v), "{v}");
    assert_eq!(c.server_version_text(), format!("15.{}", v % 100));
    assert_eq!(c.server_major_version(), "15");
    assert_eq!(c.reported_version().await.unwrap(), c.server_version_text());
    assert!(!c.is_in_recovery().await.unwrap());
    assert!(c.is_superuser().await.unwrap());
    assert!(c.has_backup_privileges().await.unwrap());
    assert!(c.has_monitoring_privileges().await.unwrap());
    assert!(c.has_checkpoint_privileges().await.unwrap());
    c.checkpoint().await.unwrap();

    assert_eq!(c.setting("wal_level").await.unwrap().as_deref(), Some("replica"));
    assert_eq!(c.setting("no_such_setting").await.unwrap(), None);
    assert_eq!(c.wal_segment_size().await.unwrap().bytes(), 16 << 20);
    let data_dir = fs::canonicalize(pg.data_dir()).unwrap();
    assert_eq!(fs::canonicalize(c.data_directory().await.unwrap()).unwrap(), data_dir);
    assert!(c.synchronous_standby_names().await.unwrap().is_empty());
    assert!(c.configuration_files().await.unwrap().config_file.unwrap().ends_with("postgresql.conf"));

    // Barman's session name, unless the conninfo names the application.
    assert_eq!(app(&c).await, "barman");
    let named = connect(&format!("{} application_name=mine", pg.conninfo())).await.unwrap();
    assert_eq!(app(&named).await, "mine");

    // Position and file agree on a primary.
    let info = c.current_xlog_info().await.unwrap();
    let (file, offset) = c.current_wal_file().await.unwrap();
    assert_eq!(info.file_name.as_ref(), Some(&file));
    assert_eq!(info.file_offset, Some(offset));
    assert!(c.current_lsn().await.unwrap() >= info.location);

    // Slots: absent, then a fresh physical one with no restart LSN yet.
    assert_eq!(c.replication_slot("barman").await.unwrap(), None);
    pg.psql("SELECT pg_create_physical_replication_slot('barman')").unwrap();
    let slot = c.replication_slot("barman").await.unwrap().unwrap();
    assert_eq!(
        (slot.name.as_str(), &slot.slot_type, slot.active, slot.restart_lsn),
        ("barman", &SlotType::Physical, false, None)
    );

    let rp = c.create_restore_point("before-test").await.unwrap().unwrap();
    assert!(rp >= info.location);
}

#[tokio::test]
async fn switch_wal_closes_a_segment_once() {
    let dir = TestDir::new().unwrap();
    let pg = start(&dir, PgOptions::default());
    let c = connect(&pg.conninfo()).await.unwrap();

    c.client().batch_execute("CREATE TABLE t AS SELECT generate_series(1, 1000)").await.unwrap();
    let (before, _) = c.current_wal_file().await.unwrap();
    let closed = c.switch_wal().await.unwrap().expect("a segment was closed");
    assert_eq!(closed, before);
    // Nothing written since: Barman's switch_wal reports that nothing was switched.
    assert_eq!(c.switch_wal().await.unwrap(), None);
    // Writing again makes the next switch close the following segment.
    c.client().batch_execute("INSERT INTO t SELECT generate_series(1, 10)").await.unwrap();
    let next = c.switch_wal().await.unwrap().expect("a second segment was closed");
    assert!(next > closed, "{next} after {closed}");
}

#[tokio::test]
async fn archiver_stats_follow_the_archiver() {
    let dir = TestDir::new().unwrap();
    let pg = start(
        &dir,
        PgOptions { conf: conf(&[("archive_mode", "on"), ("archive_command", "'/bin/false'")]), ..Default::default() },
    );
    let c = connect(&pg.conninfo()).await.unwrap();
    let s = c.archiver_stats().await.unwrap().unwrap();
    assert_eq!((s.archived_count, s.failed_count), (0, 0));
    assert!(s.stats_reset.is_some());
    // archive_mode=on and no failure yet.
    assert!(s.is_archiving);

    c.client().batch_execute("CREATE TABLE t AS SELECT generate_series(1, 1000)").await.unwrap();
    let closed = c.switch_wal().await.unwrap().unwrap();
    let failed =
        eventually("a failed archive", async || c.archiver_stats().await.unwrap().filter(|s| s.failed_count > 0)).await;
    assert_eq!(failed.last_failed_wal.as_ref(), Some(&closed));
    assert!(failed.last_failed_time.is_some());
    assert!(!failed.is_archiving);

    pg.set_conf("archive_command", "'/bin/true'").unwrap();
    let ok = eventually("a successful archive", async || {
        c.archiver_stats().await.unwrap().filter(|s| s.last_archived_wal.as_ref() == Some(&closed))
    })
    .await;
    assert!(ok.archived_count >= 1);
    assert!(ok.is_archiving);
    assert!(ok.last_archived_time >= ok.last_failed_time);
    assert!(ok.current_archived_wals_per_second.is_some_and(|r| r > 0.0));
}

#[tokio::test]
async fn segment_size_is_read_from_the_server() {
    let dir = TestDir::new().unwrap();
    let pg = start(&dir, PgOptions { wal_segsize_mb: Some(1), data_checksums: true, ..Default::default() });
    let c = connect(&pg.conninfo()).await.unwrap();
    assert_eq!(c.wal_segment_size().await.unwrap().bytes(), 1 << 20);
    assert_eq!(c.setting("data_checksums").await.unwrap().as_deref(), Some("on"));
}

#[tokio::test]
async fn remote_status_gathers_everything_or_degrades() {
    let dir = TestDir::new().unwrap();
    let pg = start(
        &dir,
        PgOptions { conf: conf(&[("archive_mode", "on"), ("archive_command", "'/bin/true'")]), ..Default::default() },
    );
    pg.psql("SELECT pg_create_physical_replication_slot('barman')").unwrap();
    let ci = Conninfo::parse(&pg.conninfo()).unwrap();
    let c = PgConnection::connect_with_env(&ci, Some("barman"), &env()).await.unwrap();
    let s = PostgresStatus::gather(&c, Some("barman")).await;
    assert!(s.is_connected());
    assert_eq!(s.server_major_version.as_deref(), Some("15"));
    assert_eq!(s.server_txt_version, Some(c.server_version_text()));
    assert_eq!(s.version_supported, Some(true));
    assert_eq!((s.is_superuser, s.has_backup_privileges, s.is_in_recovery), (Some(true), Some(true), Some(false)));
    assert_eq!(s.wal_level.as_deref(), Some("replica"));
    assert_eq!(s.archive_mode.as_deref(), Some("on"));
    assert_eq!(s.archive_command.as_deref(), Some("/bin/true"));
    assert!(s.archiver.is_some());
    assert!(s.current_lsn.is_some() && s.current_xlog.is_some());
    assert!(s.current_size.is_some_and(|b| b > 0));
    assert_eq!(s.archive_timeout, Some(0));
    assert_eq!(s.checkpoint_timeout, Some(300));
    assert_eq!(s.wal_segment_size.map(|w| w.bytes()), Some(16 << 20));
    assert_eq!(s.system_identifier, Some(SystemId(pg.system_identifier().unwrap())));
    assert_eq!(s.replication_slot.map(|sl| sl.name), Some("barman".to_string()));
    assert_eq!(s.wal_keep.as_deref(), Some("0"));
    assert!(s.data_directory.is_some());

    // A user without privileges: the privileged fields degrade, the rest stays.
    pg.psql("CREATE ROLE plain LOGIN").unwrap();
    let plain = connect(&format!("{} user=plain", pg.conninfo())).await.unwrap();
    assert!(!plain.is_superuser().await.unwrap());
    assert!(!plain.has_backup_privileges().await.unwrap());
    assert!(!plain.has_monitoring_privileges().await.unwrap());
    assert!(matches!(plain.data_directory().await, Err(PgError::Query { .. })));
    assert!(matches!(plain.switch_wal().await, Err(PgError::MissingPrivileges { ref user, .. }) if user == "plain"));
    assert!(matches!(plain.checkpoint().await, Err(PgError::MissingPrivileges { .. })));
    let s = PostgresStatus::gather(&plain, None).await;
    assert_eq!((s.is_superuser, s.has_backup_privileges), (Some(false), Some(false)));
    assert_eq!(s.data_directory, None);
    assert_eq!(s.wal_level.as_deref(), Some("replica"));
    assert!(s.system_identifier.is_some());

    // The grants Barman documents for a non-superuser backup user.
    pg.psql(
        "GRANT pg_monitor TO plain;
         GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO plain;
         GRANT EXECUTE ON FUNCTION pg_backup_stop(boolean) TO plain;
         GRANT EXECUTE ON FUNCTION pg_switch_wal() TO plain;
         GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO plain;",
    )
    .unwrap();
    assert!(plain.has_backup_privileges().await.unwrap());
    assert!(plain.has_monitoring_privileges().await.unwrap());
    // PostgreSQL 15 lets nobody but the owner create in public: write WAL as postgres.
    pg.psql("CREATE TABLE t AS SELECT 1 AS x").unwrap();
    assert!(plain.switch_wal().await.unwrap().is_some());

    // No server: only the connection error.
    let port = free_port().unwrap();
    let closed = Conninfo::parse(&format!("host=127.0.0.1 port={port} user=postgres")).unwrap();
    let s = PostgresStatus::fetch(&closed, Some("barman"), None).await;
    assert!(!s.is_connected());
    assert!(s.connection_error.unwrap().contains(&format!("port {port}")));
    assert_eq!(s.server_version_num, None);
}

#[tokio::test]
async fn standby_answers_as_a_standby() {
    let dir = TestDir::new().unwrap();
    let pg = start(&dir, PgOptions::default());
    let standby = pg.make_standby(dir.path(), "false", true).unwrap();
    let lsn = pg.current_lsn().unwrap();
    standby.wait_replay(&lsn, Duration::from_secs(30)).unwrap();
    let c = connect(&standby.conninfo()).await.unwrap();

    assert!(c.is_in_recovery().await.unwrap());
    assert_eq!(c.system_identifier().await.unwrap(), SystemId(pg.system_identifier().unwrap()));
    let info = c.current_xlog_info().await.unwrap();
    assert!(info.location >= lsn.parse().unwrap());
    assert_eq!((info.file_name, info.file_offset), (None, None));
    assert!(matches!(c.current_wal_file().await, Err(PgError::InRecovery { .. })));
    assert!(matches!(c.switch_wal().await, Err(PgError::InRecovery { .. })));
    assert_eq!(c.create_restore_point("nope").await.unwrap(), None);
    let s = PostgresStatus::gather(&c, None).await;
    assert_eq!(s.is_in_recovery, Some(true));
    assert!(s.current_lsn.is_some());
    assert_eq!(s.current_xlog, None);
}

#[tokio::test]
async fn scram_password_authentication() {
    let password = "s3cr3t 'pw'\\x";
    let dir = TestDir::new().unwrap();
    let pg = start(&dir, PgOptions { password: Some(password.to_string()), ..Default::default() });
    let base = Conninfo::parse(&pg.conninfo()).unwrap();

    let good = base.clone().with("password", password);
    let c = PgConnection::connect_with_env(&good, None, &env()).await.unwrap();
    assert_eq!(c.system_identifier().await.unwrap(), SystemId(pg.system_identifier().unwrap()));
    // Round trip through the quoted string form too.
    let text = good.to_conninfo_string();
    assert!(connect(&text).await.is_ok(), "{}", good.masked());

    let wrong_pw = "wrong-Pa55word";
    let bad = base.clone().with("password", wrong_pw);
    let e = PgConnection::connect_with_env(&bad, None, &env()).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, PgError::Connect { .. }), "{msg}");
    assert!(msg.contains("password authentication failed for user \"postgres\""), "{msg}");
    assert!(msg.contains(&format!("port {}", pg.port())), "{msg}");
    assert!(!msg.contains('\n'));
    for shown in [msg.clone(), format!("{e:?}")] {
        assert!(!shown.contains(wrong_pw) && !shown.contains(password), "{shown}");
    }

    let e = PgConnection::connect_with_env(&base, None, &env()).await.unwrap_err();
    assert!(e.to_string().ends_with("fe_sendauth: no password supplied"), "{e}");

    // The password file, with libpq's escapes for ':' and '\'.
    let pgpass = dir.path().join("pgpass");
    let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
    fs::write(&pgpass, format!("127.0.0.1:{}:*:postgres:{escaped}\n", pg.port())).unwrap();
    fs::set_permissions(&pgpass, fs::Permissions::from_mode(0o600)).unwrap();
    let via_file = env().with_var("PGPASSFILE", pgpass.to_str().unwrap());
    PgConnection::connect_with_env(&base, None, &via_file).await.unwrap();
    fs::write(&pgpass, format!("*:*:*:*:{wrong_pw}\n")).unwrap();
    let e = PgConnection::connect_with_env(&base, None, &via_file).await.unwrap_err();
    assert!(e.to_string().contains("password retrieved from file"), "{e}");
    assert!(!e.to_string().contains(wrong_pw));
}

#[tokio::test]
async fn closed_port_fails_fast() {
    let port = free_port().unwrap();
    let started = Instant::now();
    let e = connect(&format!("host=127.0.0.1 port={port} user=postgres dbname=postgres")).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(e.to_string(), format!("connection to server at \"127.0.0.1\", port {port} failed: Connection refused"));

    // The process environment path works the same way.
    let ci = Conninfo::parse(&format!("host=127.0.0.1 port={port} user=postgres sslmode=disable")).unwrap();
    let e = PgConnection::connect(&ci, Some("barman")).await.unwrap_err();
    assert!(e.to_string().contains(&format!("port {port} failed")), "{e}");
}

#[tokio::test]
async fn ssl_required_but_server_has_none() {
    let dir = TestDir::new().unwrap();
    let pg = start(&dir, PgOptions::default());
    let e = connect(&format!("{} sslmode=require", pg.conninfo())).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "connection to server at \"127.0.0.1\", port {} failed: server does not support SSL, but SSL was required",
            pg.port()
        )
    );
    // prefer falls back to a plain session.
    let c = connect(&format!("{} sslmode=prefer", pg.conninfo())).await.unwrap();
    assert!(!uses_ssl(&c).await);
    // verify-full without a root file fails before any network traffic.
    let e = connect(&format!("{} sslmode=verify-full", pg.conninfo())).await.unwrap_err();
    assert!(matches!(e, PgError::Tls(_)), "{e}");
    assert!(e.to_string().contains("root certificate file"), "{e}");
}

async fn app(c: &PgConnection) -> String {
    c.client().query_one("SHOW application_name", &[]).await.expect("SHOW application_name").get(0)
}

async fn uses_ssl(c: &PgConnection) -> bool {
    let row = c
        .client()
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .expect("pg_stat_ssl");
    row.get(0)
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, and a server certificate it signs for `localhost` only.
fn make_certs(dir: &Path, ca: &str) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut a = vec!["req", "-x509", "-days", "2", "-subj", "/CN=test-ca"];
    a.extend(ec);
    a.extend(["-keyout", "ca.key", "-out", ca]);
    a.extend(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    openssl(dir, &a);
    let mut r = vec!["req", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr"];
    r.extend(ec);
    openssl(dir, &r);
    fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("writing ext.cnf");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            ca,
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.crt",
        ],
    );
}

/// A PostgreSQL with `ssl = on` and a certificate for `localhost` signed by a
/// test CA (returned); `password` as in [`PgOptions`].
fn tls_server(dir: &TestDir, password: Option<&str>) -> (PgCluster, std::path::PathBuf) {
    let certs = dir.path().join("certs");
    fs::create_dir(&certs).unwrap();
    make_certs(&certs, "ca.crt");
    for f in ["server.crt", "server.key"] {
        chown_to_pg_user(&certs.join(f)).unwrap();
    }
    fs::set_permissions(certs.join("server.key"), fs::Permissions::from_mode(0o600)).unwrap();
    let pg = start(
        dir,
        PgOptions {
            conf: vec![
                ("ssl".into(), "on".into()),
                ("ssl_cert_file".into(), conf_quote(&certs.join("server.crt").to_string_lossy())),
                ("ssl_key_file".into(), conf_quote(&certs.join("server.key").to_string_lossy())),
            ],
            password: password.map(str::to_string),
            ..Default::default()
        },
    );
    (pg, certs.join("ca.crt"))
}

#[tokio::test]
async fn tls_modes_against_a_tls_server() {
    if Command::new("openssl").arg("version").output().is_err() {
        cluster_tests::util::skip("openssl is not installed: no TLS server test");
        return;
    }
    let dir = TestDir::new().unwrap();
    let (pg, ca) = tls_server(&dir, None);
    // Another CA that signed nothing here.
    let other = dir.path().join("other");
    fs::create_dir(&other).unwrap();
    make_certs(&other, "ca.crt");
    let other_ca = other.join("ca.crt");
    let port = pg.port();
    let by_ip = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let by_name = format!("host=localhost hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres");

    // Encryption without verification: the default (prefer) and require.
    assert!(uses_ssl(&connect(&by_ip).await.unwrap()).await);
    assert!(uses_ssl(&connect(&format!("{by_ip} sslmode=require")).await.unwrap()).await);
    assert!(!uses_ssl(&connect(&format!("{by_ip} sslmode=disable")).await.unwrap()).await);

    // verify-ca: the chain counts, not the name.
    let c = connect(&format!("{by_ip} sslmode=verify-ca sslrootcert={}", ca.display())).await.unwrap();
    assert!(uses_ssl(&c).await);
    let e = connect(&format!("{by_ip} sslmode=verify-ca sslrootcert={}", other_ca.display())).await.unwrap_err();
    assert!(matches!(e, PgError::Connect { .. }), "{e}");
    assert!(e.to_string().contains("certificate"), "{e}");
    // require with an explicit root file verifies the CA, as libpq.
    assert!(connect(&format!("{by_ip} sslmode=require sslrootcert={}", other_ca.display())).await.is_err());

    // verify-full: the name must match too.
    let c = connect(&format!("{by_name} sslmode=verify-full sslrootcert={}", ca.display())).await.unwrap();
    assert!(uses_ssl(&c).await);
    let e = connect(&format!("{by_ip} sslmode=verify-full sslrootcert={}", ca.display())).await.unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    assert!(!e.to_string().contains('\n'));
}

// The replication connection (walsender sessions) over the same conninfo rules.

use barman::postgres::ConnParams;
use barman::postgres::replication::{BackupEvent, BackupStart, BaseBackupOptions, ReplicationConnection, StreamEvent};
use barman::wal::{Lsn, TimelineId};

const WALRCV: &str = "barman_receive_wal";

async fn repl_with(ci: &str, env: &LibpqEnv) -> Result<ReplicationConnection, PgError> {
    let params = ConnParams::resolve(&Conninfo::parse(ci).unwrap().barman_streaming(), env)?;
    ReplicationConnection::connect(&params, Some(WALRCV)).await
}

#[tokio::test]
async fn replication_commands_and_stream() {
    let dir = TestDir::new().unwrap();
    let pg = start(&dir, PgOptions::default());
    let mut r = repl_with(&pg.conninfo(), &env()).await.unwrap();
    let sys = r.identify_system().await.unwrap();
    assert_eq!(sys.system_id, SystemId(pg.system_identifier().unwrap()));
    assert_eq!(sys.timeline, TimelineId(1));
    assert_eq!(r.show("wal_segment_size").await.unwrap(), "16MB");
    assert!((150000..160000).contains(&r.server_version()));
    // Timeline 1 has no history file: a server error, typed.
    assert!(matches!(r.timeline_history(TimelineId(1)).await, Err(PgError::Query { .. })));

    r.create_physical_slot("s1").await.unwrap();
    let e = r.create_physical_slot("s1").await.unwrap_err();
    assert_eq!(e.sqlstate(), Some("42710"), "{e}");
    let slot = r.read_slot("s1").await.unwrap().unwrap();
    assert_eq!(slot.restart_lsn, None, "created without RESERVE_WAL");
    assert_eq!(r.read_slot("nope").await.unwrap(), None);

    let start = Lsn(sys.xlogpos.0 & !((16 << 20) - 1));
    r.start(Some("s1"), start, sys.timeline).await.unwrap();
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 10000) g").unwrap();
    let target: Lsn = pg.current_lsn().unwrap().parse().unwrap();
    let mut at = start;
    while at < target {
        match tokio::time::timeout(Duration::from_secs(20), r.next_event()).await.expect("WAL arrives").unwrap() {
            StreamEvent::XLogData { start: s, data, .. } => {
                assert_eq!(s, at, "contiguous");
                at = Lsn(at.0 + data.len() as u64);
            }
            StreamEvent::Keepalive { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    r.send_status(at, at, false).await.unwrap();
    // PostgreSQL sees exactly what we report: flush and write, no replay.
    let row = eventually("our status in pg_stat_replication", async || {
        let v = pg
            .psql(&format!(
                "SELECT flush_lsn >= '{target}', write_lsn >= '{target}', replay_lsn IS NULL FROM pg_stat_replication WHERE application_name = '{WALRCV}'"
            ))
            .ok()?;
        (v == "t|t|t").then_some(v)
    })
    .await;
    assert_eq!(row, "t|t|t");
    r.close().await;

    let mut r = repl_with(&pg.conninfo(), &env()).await.unwrap();
    eventually("the slot to be released", async || {
        (pg.psql("SELECT active FROM pg_replication_slots WHERE slot_name = 's1'").ok()? == "f").then_some(())
    })
    .await;
    r.drop_slot("s1").await.unwrap();
    assert_eq!(r.drop_slot("s1").await.unwrap_err().sqlstate(), Some("42704"));
}

#[tokio::test]
async fn replication_passwords_scram_md5_and_pgpass() {
    let dir = TestDir::new().unwrap();
    let pg = start(&dir, PgOptions { password: Some("scram-pw".into()), ..Default::default() });
    let base = pg.conninfo();
    let mut r = repl_with(&format!("{base} password=scram-pw"), &env()).await.unwrap();
    assert_eq!(r.identify_system().await.unwrap().system_id, SystemId(pg.system_identifier().unwrap()));
    let e = repl_with(&format!("{base} password=wrong"), &env()).await.unwrap_err();
    assert!(e.to_string().contains("password authentication failed for user \"postgres\""), "{e}");
    assert!(!e.to_string().contains("wrong"), "{e}");
    let e = repl_with(&base, &env()).await.unwrap_err();
    assert!(e.to_string().ends_with("fe_sendauth: no password supplied"), "{e}");

    // md5: a role whose password is stored as md5, allowed by an md5 line.
    pg.psql("SET password_encryption = 'md5'; CREATE ROLE m LOGIN REPLICATION PASSWORD 'md5-pw'").unwrap();
    assert!(pg.psql("SELECT rolpassword LIKE 'md5%' FROM pg_authid WHERE rolname = 'm'").unwrap() == "t");
    let hba = pg.data_dir().join("pg_hba.conf");
    let text = fs::read_to_string(&hba).unwrap();
    fs::write(&hba, format!("host replication m 127.0.0.1/32 md5\n{text}")).unwrap();
    pg.psql("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let md5 = format!("host=127.0.0.1 port={} user=m", pg.port());
    repl_with(&format!("{md5} password=md5-pw"), &env()).await.unwrap();
    assert!(repl_with(&format!("{md5} password=nope"), &env()).await.is_err());

    // Both from the password file.
    let pgpass = dir.path().join("pgpass");
    fs::write(&pgpass, format!("127.0.0.1:{p}:*:postgres:scram-pw\n127.0.0.1:{p}:*:m:md5-pw\n", p = pg.port()))
        .unwrap();
    fs::set_permissions(&pgpass, fs::Permissions::from_mode(0o600)).unwrap();
    let via_file = env().with_var("PGPASSFILE", pgpass.to_str().unwrap());
    repl_with(&base, &via_file).await.unwrap();
    repl_with(&md5, &via_file).await.unwrap();
    fs::write(&pgpass, "*:*:*:*:bad\n").unwrap();
    let e = repl_with(&base, &via_file).await.unwrap_err();
    assert!(e.to_string().contains("password retrieved from file"), "{e}");
}

#[tokio::test]
async fn replication_over_tls() {
    if Command::new("openssl").arg("version").output().is_err() {
        cluster_tests::util::skip("openssl is not installed: no TLS server test");
        return;
    }
    let dir = TestDir::new().unwrap();
    let (pg, ca) = tls_server(&dir, Some("tls-pw"));
    let port = pg.port();
    let by_ip = format!("host=127.0.0.1 port={port} user=postgres password=tls-pw");
    let by_name = format!("host=localhost hostaddr=127.0.0.1 port={port} user=postgres password=tls-pw");
    let walsender_ssl = async |app: &str| {
        eventually("the walsender in pg_stat_ssl", async || {
            let v = pg
                .psql(&format!(
                    "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = '{app}' AND a.backend_type = 'walsender'"
                ))
                .ok()?;
            (!v.is_empty()).then_some(v)
        })
        .await
    };

    let r = repl_with(&format!("{by_ip} sslmode=require application_name=req"), &env()).await.unwrap();
    assert_eq!(walsender_ssl("req").await, "t");
    drop(r);
    let r =
        repl_with(&format!("{by_name} sslmode=verify-full sslrootcert={} application_name=full", ca.display()), &env())
            .await
            .unwrap();
    assert_eq!(walsender_ssl("full").await, "t");
    drop(r);
    // SCRAM with channel binding over TLS.
    repl_with(&format!("{by_ip} sslmode=require channel_binding=require"), &env()).await.unwrap();
    // The name must match for verify-full.
    let e = repl_with(&format!("{by_ip} sslmode=verify-full sslrootcert={}", ca.display()), &env()).await.unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    assert!(!e.to_string().contains('\n'));
    let plain = repl_with(&format!("{by_ip} sslmode=disable application_name=plain"), &env()).await.unwrap();
    assert_eq!(walsender_ssl("plain").await, "f");
    drop(plain);
}

/// Runs a whole BASE_BACKUP; the archives and the manifest land in `out` under
/// the names the server gives them. Returns the start, the archive names, the
/// number of progress reports and the end position.
async fn take_base_backup(
    r: &mut ReplicationConnection,
    opts: &BaseBackupOptions,
    out: &Path,
) -> (BackupStart, Vec<String>, usize, Lsn) {
    use std::io::Write;
    let start = r.base_backup(opts).await.unwrap();
    let (mut names, mut progress) = (Vec::new(), 0);
    let mut file: Option<fs::File> = None;
    loop {
        match r.base_backup_next().await.unwrap() {
            BackupEvent::Archive { name, .. } => {
                file = Some(fs::File::create(out.join(&name)).unwrap());
                names.push(name);
            }
            BackupEvent::Manifest => file = Some(fs::File::create(out.join("backup_manifest")).unwrap()),
            BackupEvent::Data(d) => file.as_mut().expect("data inside an archive").write_all(&d).unwrap(),
            BackupEvent::Progress(_) => progress += 1,
            BackupEvent::End { end, timeline } => {
                assert_eq!(timeline, start.timeline);
                return (start, names, progress, end);
            }
        }
    }
}

fn tar(args: &[&str], dir: &Path) {
    let out = Command::new("tar").args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "tar {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn base_backup_streams_archives_and_a_manifest_pg_verifybackup_accepts() {
    let dir = TestDir::new().unwrap();
    let pg = start(&dir, PgOptions::default());
    let ts = dir.path().join("ts");
    fs::create_dir_all(&ts).unwrap();
    chown_to_pg_user(&ts).unwrap();
    pg.psql(&format!("CREATE TABLESPACE ts LOCATION '{}'", ts.display())).unwrap();
    pg.psql("CREATE TABLE in_ts TABLESPACE ts AS SELECT g, md5(g::text) FROM generate_series(1, 20000) g").unwrap();
    pg.psql("CREATE TABLE in_base AS SELECT g FROM generate_series(1, 20000) g").unwrap();
    let oid: u32 = pg.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'").unwrap().parse().unwrap();

    let mut r = repl_with(&pg.conninfo(), &env()).await.unwrap();
    let out = dir.path().join("plain");
    fs::create_dir_all(&out).unwrap();
    let opts = BaseBackupOptions {
        label: "barman's test".into(),
        fast_checkpoint: true,
        manifest: true,
        max_rate_kb: None,
        compression: None,
        compression_detail: None,
        progress: true,
        tablespace_map: true,
    };
    let (start, names, progress, end) = take_base_backup(&mut r, &opts, &out).await;
    assert!(end > start.start, "end {end} not after start {}", start.start);
    assert_eq!(names, vec![format!("{oid}.tar"), "base.tar".to_string()]);
    assert!(progress > 0, "no progress report");
    let spc: Vec<_> = start.tablespaces.iter().map(|t| (t.oid, t.location.clone())).collect();
    assert_eq!(spc, vec![(Some(oid), Some(ts.display().to_string())), (None, None)]);
    assert!(start.tablespaces.iter().all(|t| t.size_kb.is_some()), "PROGRESS sizes every tablespace");

    // As a plain backup: data/ from base.tar, the tablespace beside it, linked in.
    // Through our own extractor, as the backup command writes a plain backup.
    let data = out.join("data");
    let tsdir = out.join(oid.to_string());
    let extract = |name: &str, to: &Path| {
        barman::backup::extract::extract_tar(fs::File::open(out.join(name)).unwrap(), to).unwrap()
    };
    let base = extract("base.tar", &data);
    let spc = extract(&format!("{oid}.tar"), &tsdir);
    assert!(base.files > 900 && spc.files >= 2, "{base:?} {spc:?}");
    let label = fs::read_to_string(data.join("backup_label")).unwrap();
    assert!(label.contains("LABEL: barman's test"), "{label}");
    // What Barman takes from the label agrees with what the server announced.
    let begin = barman::backup::label::parse(&label, barman::wal::SegmentSize::default()).unwrap();
    assert_eq!((begin.begin_xlog, TimelineId(begin.timeline)), (start.start, start.timeline));
    assert!(fs::read_to_string(data.join("tablespace_map")).unwrap().starts_with(&format!("{oid} ")));
    fs::create_dir_all(data.join("pg_tblspc")).unwrap();
    std::os::unix::fs::symlink(&tsdir, data.join("pg_tblspc").join(oid.to_string())).unwrap();
    fs::rename(out.join("backup_manifest"), data.join("backup_manifest")).unwrap();
    let verify = Command::new(cluster_tests::util::pg_bin("pg_verifybackup")).arg("-n").arg(&data).output().unwrap();
    assert!(
        verify.status.success(),
        "pg_verifybackup: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    // Server-side compression: the server names and compresses the archives.
    let gz = dir.path().join("gz");
    fs::create_dir_all(&gz).unwrap();
    let opts = BaseBackupOptions {
        compression: Some("gzip".into()),
        compression_detail: Some("level=1".into()),
        progress: false,
        tablespace_map: true,
        ..opts
    };
    let (_, names, _, _) = take_base_backup(&mut r, &opts, &gz).await;
    assert_eq!(names, vec![format!("{oid}.tar.gz"), "base.tar.gz".to_string()]);
    tar(&["-xzf", "base.tar.gz", "PG_VERSION"], &gz);
    assert_eq!(fs::read_to_string(gz.join("PG_VERSION")).unwrap().trim(), "15");

    // A refused option is the server's error, and the session stays usable.
    let bad = BaseBackupOptions { max_rate_kb: Some(1), compression: None, ..opts };
    let e = r.base_backup(&bad).await.unwrap_err();
    assert!(e.to_string().contains("outside the valid range for parameter \"MAX_RATE\""), "{e}");
    assert_eq!(r.identify_system().await.unwrap().timeline, TimelineId(1));
}
