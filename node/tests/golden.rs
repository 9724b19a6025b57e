//! Golden files of Barman's formats, made with real Barman 3.17 code, pinned in
//! tests/golden/: the put-wal tar stream, identity.json and xlog.db lines.
//! identity.json and xlog.db are also re-made by the reference Barman in every
//! run and compared; the tar goldens were made once by Barman's client code.
//! With UPDATE_GOLDEN set, the xlog.db golden is rewritten from Barman's output
//! and the test fails, so that a run never passes by comparing a file with itself.

#![allow(clippy::unwrap_used)]

mod common;

use barman::archive::wire::{MemberInfo, SumAlgo, TarWriter};
use barman::catalog::identity::Identity;
use barman::wal::SystemId;
use cluster_tests::reference;
use common::{Env, run};
use std::path::{Path, PathBuf};
use std::process::Command;

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

fn golden_data() -> Vec<u8> {
    (0..100_000u32).map(|i| ((i * 7 + (i >> 8)) % 251) as u8).collect()
}

#[test]
fn put_wal_tar_stream_is_byte_identical_to_barmans_client() {
    for (algo, file) in [(SumAlgo::Sha256, "put-wal-sha256.tar"), (SumAlgo::Md5, "put-wal-md5.tar")] {
        let data = golden_data();
        let info = MemberInfo {
            name: "000000010000000000000001".into(),
            mode: 0o600,
            uid: 26,
            gid: 26,
            uname: "postgres".into(),
            gname: "postgres".into(),
            mtime: 1795255200.25,
            size: data.len() as u64,
        };
        let mut w = TarWriter::new(Vec::new(), algo);
        w.append(&info, &mut &data[..]).unwrap();
        let ours = w.finish().unwrap();
        let want = std::fs::read(golden(file)).unwrap();
        assert!(ours == want, "{file}: our tar stream differs from Barman's ({} vs {} bytes)", ours.len(), want.len());
    }
}

#[test]
fn identity_json_is_byte_identical() {
    let id = Identity { systemid: SystemId(7301234567890123456), version: "15".into() };
    assert_eq!(id.to_json_text(), std::fs::read_to_string(golden("identity.json")).unwrap());
    // And Barman's own Server.write_identity_file still writes exactly this.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.json");
    let script = format!(
        "import types, barman.server as s\n\
         stub = types.SimpleNamespace(get_identity_file_path=lambda: {path:?}, systemid='7301234567890123456',\n\
         postgres=types.SimpleNamespace(server_major_version='15'))\n\
         s.Server.write_identity_file(stub)\n",
        path = path.display().to_string()
    );
    let out = Command::new(reference::python().expect("reference Barman")).args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), id.to_json_text());
}

fn segment(seg: u32) -> Vec<u8> {
    common::segment(seg, common::SYS, seg, false)
}

/// Fills `incoming/` with the golden inputs: names, contents and mtimes fixed.
fn golden_inputs(incoming: &Path) {
    std::fs::create_dir_all(incoming).unwrap();
    let files: Vec<(&str, Vec<u8>, i64, u32)> = vec![
        ("000000010000000000000001", segment(1), 1_795_255_200, 0),
        ("000000010000000000000002", segment(2), 1_795_255_260, 250_000_000),
        ("000000010000000000000002.00000028.backup", b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\n".to_vec(), 1_795_255_261, 123_456_789),
        ("000000010000000000000003", segment(3), 1_795_255_320, 999_999_999),
        ("00000002.history", b"1\t0/4000000\tno recovery target specified\n".to_vec(), 1_795_255_400, 500_000_000),
    ];
    std::fs::write(incoming.join("notes.txt"), b"not a WAL file").unwrap();
    for (name, body, secs, nanos) in files {
        let p = incoming.join(name);
        std::fs::write(&p, body).unwrap();
        let t = std::time::UNIX_EPOCH + std::time::Duration::new(secs as u64, nanos);
        std::fs::File::options().write(true).open(&p).unwrap().set_modified(t).unwrap();
    }
}

fn config(home: &Path) -> String {
    format!(
        "[barman]\nbarman_home = {}\nbarman_user = {}\n\n[pg]\nconninfo = host=127.0.0.1 port=1 user=x\nbackup_method = postgres\narchiver = on\n",
        home.display(),
        common::barman_user()
    )
}

#[test]
fn xlog_db_lines_are_byte_identical_to_barmans() {
    let env = Env::new();
    let (ours, theirs) = (env.path().join("ours"), env.path().join("theirs"));
    for home in [&ours, &theirs] {
        golden_inputs(&home.join("pg/incoming"));
        std::fs::write(home.join("barman.conf"), config(home)).unwrap();
        // Our archive-wal checks segments against identity.json (PostgreSQL is not running).
        std::fs::write(
            home.join("pg/identity.json"),
            Identity { systemid: SystemId(7301234567890123456), version: "15".into() }.to_json_text(),
        )
        .unwrap();
    }
    let out = run(
        Command::new(env.bin.join("barman")).args([
            "-c",
            ours.join("barman.conf").to_str().unwrap(),
            "archive-wal",
            "pg",
        ]),
        None,
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let our_stdout = out.stdout;
    let ours_db = std::fs::read_to_string(ours.join("pg/wals/pg-xlog.db")).unwrap();
    let barman = reference::barman().expect("reference Barman");
    let out = run(
        Command::new(&barman).args(["-c", theirs.join("barman.conf").to_str().unwrap(), "archive-wal", "pg"]),
        None,
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(our_stdout, out.stdout, "archive-wal prints differently from Barman");
    let theirs_db = std::fs::read_to_string(theirs.join("pg/wals/pg-xlog.db")).unwrap();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(golden("xlog.db"), &theirs_db).unwrap();
        panic!("golden xlog.db rewritten from Barman's output; rerun without UPDATE_GOLDEN");
    }
    let want = std::fs::read_to_string(golden("xlog.db")).unwrap();
    assert_eq!(theirs_db, want, "Barman writes differently from the golden file");
    assert_eq!(ours_db, want);
    // Both rebuilds give the same catalogue too.
    for (home, prog) in [(&ours, env.bin.join("barman")), (&theirs, barman.clone())] {
        let out = run(
            Command::new(prog).args(["-c", home.join("barman.conf").to_str().unwrap(), "rebuild-xlogdb", "pg"]),
            None,
        );
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        assert!(
            out.stdout.contains("Done rebuilding xlogdb for server pg (history: 1, backup_labels: 1, wal_file: 3)"),
            "{}",
            out.stdout
        );
    }
    assert_eq!(
        std::fs::read_to_string(ours.join("pg/wals/pg-xlog.db")).unwrap(),
        std::fs::read_to_string(theirs.join("pg/wals/pg-xlog.db")).unwrap()
    );
}

/// A backup.info with every kind of value Barman writes (and awkward text).
fn rich_backup_info() -> barman::catalog::backup_info::BackupInfo {
    use barman::catalog::backup_info::{BackupInfo, Tablespace};
    use barman::catalog::pyliteral::PyValue;
    let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap();
    BackupInfo {
        backup_label: Some(
            "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\n\
             BACKUP METHOD: streamed\nLABEL: it's \"barman\" \\ é\n"
                .into(),
        ),
        backup_name: Some("before upgrade".into()),
        begin_offset: Some(40),
        begin_time: Some(t("2026-11-21T10:20:03.890822+01:00")),
        begin_wal: Some("000000010000000000000002".parse().unwrap()),
        begin_xlog: Some("0/2000028".parse().unwrap()),
        children_backup_ids: Some(vec!["20261122T000000".into(), "20261123T000000".into()]),
        cluster_size: Some(31_337_000),
        compression: Some("gzip".into()),
        config_file: Some("/etc/postgresql/15/main/postgresql.conf".into()),
        copy_stats: Some(PyValue::Dict(vec![
            (PyValue::Str("copy_time".into()), PyValue::Float(1.25)),
            (PyValue::Str("total_time".into()), PyValue::Float(2.0000001)),
        ])),
        data_checksums: Some("on".into()),
        deduplicated_size: Some(1234),
        encryption: None,
        end_offset: Some(312),
        end_time: Some(t("2026-11-21T10:21:00-05:30")),
        end_wal: Some("000000010000000000000003".parse().unwrap()),
        end_xlog: Some("0/3000138".parse().unwrap()),
        error: None,
        hba_file: Some("/etc/postgresql/15/main/pg_hba.conf".into()),
        ident_file: Some("/etc/postgresql/15/main/pg_ident.conf".into()),
        included_files: Some(vec!["/etc/postgresql/15/main/conf.d/it's.conf".into()]),
        mode: Some("postgres".into()),
        parent_backup_id: None,
        pgdata: Some("/var/lib/postgresql/15/main".into()),
        server_name: Some("pg".into()),
        size: Some(987_654_321),
        snapshots_info: None,
        status: "DONE".into(),
        summarize_wal: None,
        systemid: Some("7301234567890123456".into()),
        tablespaces: Some(vec![
            Tablespace { name: "tbs1".into(), oid: 16387, location: "/srv/tbs1".into() },
            Tablespace { name: "o'brien".into(), oid: 16390, location: "/srv/ob".into() },
        ]),
        timeline: Some(1),
        version: Some(150020),
        xlog_segment_size: 16 << 20,
    }
}

#[test]
fn backup_info_is_byte_identical_to_barmans() {
    use barman::catalog::backup_info::BackupInfo;
    let ours = rich_backup_info();
    let dir = tempfile::tempdir().unwrap();
    let (theirs_path, ours_path, resaved) =
        (dir.path().join("theirs.info"), dir.path().join("ours.info"), dir.path().join("resaved.info"));
    ours.save(&ours_path).unwrap();
    // Barman's BackupInfo built from the same values, saved by Barman's code; then
    // Barman loads our file and saves it again.
    let script = format!(
        "import datetime as d\n\
         import barman.output\n\
         from barman.infofile import BackupInfo, Tablespace\n\
         tz = lambda h, m=0: d.timezone(d.timedelta(hours=h, minutes=m))\n\
         b = BackupInfo('20261121T102003',\n\
           backup_label={label}, backup_name='before upgrade', begin_offset=40,\n\
           begin_time=d.datetime(2026, 11, 21, 10, 20, 3, 890822, tzinfo=tz(1)),\n\
           begin_wal='000000010000000000000002', begin_xlog='0/2000028',\n\
           children_backup_ids=['20261122T000000', '20261123T000000'], cluster_size=31337000,\n\
           compression='gzip', config_file='/etc/postgresql/15/main/postgresql.conf',\n\
           copy_stats={{'copy_time': 1.25, 'total_time': 2.0000001}}, data_checksums='on',\n\
           deduplicated_size=1234, end_offset=312,\n\
           end_time=d.datetime(2026, 11, 21, 10, 21, 0, tzinfo=tz(-5, -30)),\n\
           end_wal='000000010000000000000003', end_xlog='0/3000138',\n\
           hba_file='/etc/postgresql/15/main/pg_hba.conf', ident_file='/etc/postgresql/15/main/pg_ident.conf',\n\
           included_files=[\"/etc/postgresql/15/main/conf.d/it's.conf\"], mode='postgres',\n\
           pgdata='/var/lib/postgresql/15/main', server_name='pg', size=987654321, status='DONE',\n\
           systemid='7301234567890123456',\n\
           tablespaces=[Tablespace('tbs1', 16387, '/srv/tbs1'), Tablespace(\"o'brien\", 16390, '/srv/ob')],\n\
           timeline=1, version=150020, xlog_segment_size=16777216)\n\
         b.save(filename={theirs:?})\n\
         again = BackupInfo('20261121T102003')\n\
         again.load(filename={ours:?})\n\
         again.save(filename={resaved:?})\n",
        label = barman::catalog::pyliteral::repr_str(ours.backup_label.as_deref().unwrap()),
        theirs = theirs_path.display().to_string(),
        ours = ours_path.display().to_string(),
        resaved = resaved.display().to_string(),
    );
    let out = Command::new(reference::python().expect("reference Barman")).args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs = std::fs::read_to_string(&theirs_path).unwrap();
    assert_eq!(ours.to_text(), theirs, "our backup.info differs from Barman's");
    assert_eq!(std::fs::read_to_string(&resaved).unwrap(), theirs, "Barman did not read our file back unchanged");
    assert_eq!(BackupInfo::read(&theirs_path).unwrap(), ours, "we did not read Barman's file back unchanged");
}

/// The recovery settings lines and the configuration mangling of a recovery,
/// against Barman's own `_generate_recovery_conf` and `ConfigurationFileMangeler`
/// on the same inputs.
#[test]
fn recovery_settings_and_mangling_are_byte_identical_to_barmans() {
    use barman::recover::settings::{Targets, WalSource, mangle, recovery_lines};
    let dir = tempfile::tempdir().unwrap();
    // (source, standby, targets) and the Python arguments producing the same.
    let get_wal = WalSource::GetWal { user: "barman".into(), server: "pg".into() };
    let remote = WalSource::WalRestore {
        user: "barman".into(),
        port: Some(2222),
        host: "backup.example.com".into(),
        server: "pg".into(),
        parallel_jobs: 4,
    };
    let copied = WalSource::Copied { wal_dest: "/var/lib/pgsql/data/barman_wal".into() };
    let t = |f: &dyn Fn(&mut Targets)| {
        let mut x = Targets::default();
        f(&mut x);
        x
    };
    let cases: Vec<(WalSource, bool, Targets, &str)> = vec![
        (get_wal.clone(), false, Targets::default(), "get_wal=True, remote=None, standby=False"),
        (get_wal.clone(), true, Targets::default(), "get_wal=True, remote=None, standby=True"),
        (
            remote.clone(),
            false,
            t(&|x| x.name = Some("barman_x".into())),
            "get_wal=True, remote='ssh pg', standby=False, name='barman_x', port=2222, jobs=4",
        ),
        (
            copied.clone(),
            false,
            t(&|x| {
                x.time = Some("2026-11-21 10:00:00+00:00".into());
                x.exclusive = true;
                x.tli = Some("latest".into());
                x.action = Some("promote".into());
            }),
            "get_wal=False, remote=None, standby=False, time='2026-11-21 10:00:00+00:00', exclusive=True, tli='latest', action='promote'",
        ),
        (
            copied.clone(),
            false,
            t(&|x| x.xid = Some("1234".into())),
            "get_wal=False, remote=None, standby=False, xid='1234'",
        ),
        (
            copied.clone(),
            false,
            t(&|x| x.lsn = Some("0/3000060".into())),
            "get_wal=False, remote=None, standby=False, lsn='0/3000060'",
        ),
        (
            copied.clone(),
            false,
            t(&|x| {
                x.lsn = Some("0/3000060".into());
                x.exclusive = true;
            }),
            "get_wal=False, remote=None, standby=False, lsn='0/3000060', exclusive=True",
        ),
        (copied, true, t(&|x| x.immediate = true), "get_wal=False, remote=None, standby=True, immediate=True"),
    ];
    let mut py = String::from(
        "import json, sys, os, tempfile, types\n\
         import barman.output\n\
         from barman.recovery_executor import RecoveryExecutor, ConfigurationFileMangeler\n\
         def gen(get_wal, remote, standby, time=None, xid=None, lsn=None, name=None, immediate=None, exclusive=False, tli=None, action=None, port=None, jobs=1):\n\
         \x20   ex = RecoveryExecutor.__new__(RecoveryExecutor)\n\
         \x20   ex.config = types.SimpleNamespace(config=types.SimpleNamespace(user='barman'), name='pg', parallel_jobs=jobs, bandwidth_limit=None, network_compression=False)\n\
         \x20   ex.server = types.SimpleNamespace(path=None)\n\
         \x20   d = tempfile.mkdtemp()\n\
         \x20   info = {'wal_dest': '/var/lib/pgsql/data/barman_wal', 'get_wal': get_wal, 'recovery_option_port': port, 'results': {}, 'tempdir': d, 'target_datetime': time}\n\
         \x20   if action: info['recovery_target_action'] = action\n\
         \x20   import socket\n\
         \x20   socket.getfqdn = lambda: 'backup.example.com'\n\
         \x20   import barman.recovery_executor as re_mod\n\
         \x20   re_mod.RsyncPgData = lambda **kw: types.SimpleNamespace(from_file_list=lambda *a: None)\n\
         \x20   ex._generate_recovery_conf(info, types.SimpleNamespace(version=150000), d, immediate, exclusive, remote, name, time, tli, xid, lsn, standby)\n\
         \x20   return info['auto_conf_append_lines']\n\
         out = []\n",
    );
    let mut ours = Vec::new();
    for (source, standby, targets, args) in &cases {
        py.push_str(&format!("out.append(gen({args}))\n"));
        ours.push(recovery_lines(source, *standby, targets));
    }
    // Mangling: several files, with and without a final newline, settings in every shape.
    let files: Vec<(&str, &[u8])> = vec![
        ("a.conf", b"# comment\narchive_command = 'cp %p /x/%f'\n  recovery_target_time='2020-01-01'\nshared_buffers = 128MB\n#archive_command = 'old'\n"),
        ("b.conf", b"archive_mode = on\narchive_command='rsync %p host:/a'"),
        ("c.conf", b"recovery_target_name\nport = 5433"),
        ("d.conf", b""),
    ];
    let append = vec!["restore_command = 'cp /w/%f %p'".to_string(), "recovery_target = 'immediate'".to_string()];
    py.push_str("mangled = []\n");
    for (name, content) in &files {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        py.push_str(&format!(
            "m = ConfigurationFileMangeler().mangle_options({p:?}, {orig:?}, {append:?})\n\
             mangled.append([[a.line, a.key, a.value] for a in m])\n",
            p = p.display().to_string(),
            orig = format!("{}.origin", p.display()),
            append = append,
        ));
    }
    py.push_str("print(json.dumps({'lines': out, 'mangled': mangled}))\n");
    let out = Command::new(reference::python().expect("reference Barman")).args(["-c", &py]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(serde_json::json!(ours), theirs["lines"]);
    for (i, (name, content)) in files.iter().enumerate() {
        let (mine, changed) = mangle(content, &append);
        let p = dir.path().join(name);
        assert_eq!(String::from_utf8_lossy(&mine), std::fs::read_to_string(&p).unwrap(), "{name}");
        assert_eq!(
            std::fs::read(format!("{}.origin", p.display())).unwrap(),
            *content,
            "{name}: Barman kept the original"
        );
        let changed: Vec<serde_json::Value> =
            changed.iter().map(|m| serde_json::json!([m.line, m.key, m.value])).collect();
        assert_eq!(serde_json::json!(changed), theirs["mangled"][i], "{name}");
    }
}
