//! `sync-info` against Barman 3.17 itself: the same configuration, catalog and xlog.db are
//! given to the real `barman sync-info` and to ours, for cursors at the top, on a line, off
//! a line, past the end and before the start; standard output, standard error and the exit
//! code must be byte for byte the same.

#![allow(clippy::unwrap_used)]

mod common;

use cluster_tests::reference;
use common::{Env, Out, run};
use std::process::Command;

/// Options whose encodings differ in sync-info's `config`: retention policies, CSV lists,
/// intervals, a dict, booleans, numbers, unset values.
const SERVERS: &str = "\
[pg]
description = \"primary in site A\"
conninfo = host=127.0.0.1 port=1 user=postgres dbname=postgres
streaming_conninfo = host=127.0.0.1 port=1 user=streaming_barman
backup_method = rsync
ssh_command = ssh -p 2222 postgres@127.0.0.1
streaming_archiver = on
slot_name = barman
create_slot = auto
compression = gzip
retention_policy = RECOVERY WINDOW OF 2 WEEKS
wal_retention_policy = main
minimum_redundancy = 1
last_backup_maximum_age = 1 DAYS
last_wal_maximum_age = 2 hours
backup_options = concurrent_backup
recovery_options = get-wal
tablespace_bandwidth_limit = tbs1:100 tbs2:200
bandwidth_limit = 4000
network_compression = true
parallel_jobs = 3
reuse_backup = link
immediate_checkpoint = true

[other]
conninfo = host=127.0.0.1 port=1 user=postgres dbname=postgres
backup_method = postgres
archiver = on
retention_policy = REDUNDANCY 3
";

const XLOGDB: &str = "000000010000000000000001\t16777216\t1767222000.0\tNone\n\
000000010000000000000002\t4194811\t1767222001.5\tgzip\n\
000000010000000000000002.00000028.backup\t312\t1767222005.25\tNone\n\
000000010000000000000003\t16777216\t1767222006.0\n\
00000002.history\t42\t1767222006.125\tNone\tNone\n\
000000020000000000000003\t16777216\t1767222007.0\tNone\n\
000000020000000000000004\t16777216\t1767222008.0\tNone\n";

/// A DONE backup with every kind of value, a WAITING_FOR_WALS one and a FAILED one.
fn write_catalog(env: &Env) {
    let meta = env.server_dir("pg").join("meta");
    std::fs::create_dir_all(&meta).unwrap();
    let done = "\
backup_label='START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\\nCHECKPOINT LOCATION: 0/2000060\\nLABEL: \\'it\\'s\\'\\n'
backup_name=nightly \u{e9}t\u{e9}
begin_offset=40
begin_time=2026-01-01 00:00:00.123456+01:00
begin_wal=000000010000000000000002
begin_xlog=0/2000028
children_backup_ids=20260102T000000,20260103T000000
cluster_size=31457280
compression=None
config_file=/var/lib/postgresql/15/main/postgresql.conf
copy_stats={'total_time': 1.5, 'copy_time': 1.25, 'analysis_time': 0, 'number_of_workers': 2}
data_checksums=on
deduplicated_size=1024
encryption=None
end_offset=312
end_time=2026-01-01 00:00:05+01:00
end_wal=000000010000000000000002
end_xlog=0/2000138
error=None
hba_file=/etc/pg_hba.conf
ident_file=/etc/pg_ident.conf
included_files=['/etc/postgresql/extra.conf']
mode=postgres
parent_backup_id=None
pgdata=/var/lib/postgresql/15/main
server_name=pg
size=30000000
status=DONE
summarize_wal=off
systemid=7300000000000000001
tablespaces=[('tbs1', 16385, '/srv/tbs1'), ('tbs2', 16386, '/srv/tbs2')]
timeline=1
version=150020
xlog_segment_size=16777216
";
    std::fs::write(meta.join("20260101T000000-backup.info"), done).unwrap();
    let waiting = done
        .replace("status=DONE", "status=WAITING_FOR_WALS")
        .replace("begin_wal=000000010000000000000002", "begin_wal=000000010000000000000003")
        .replace("2026-01-01 00:00:05+01:00", "2026-01-02 10:20:30.000001-03:30")
        .replace("backup_name=nightly \u{e9}t\u{e9}\n", "")
        .replace("tablespaces=[('tbs1', 16385, '/srv/tbs1'), ('tbs2', 16386, '/srv/tbs2')]", "tablespaces=None");
    std::fs::write(meta.join("20260102T000000-backup.info"), waiting).unwrap();
    let failed = done
        .replace("status=DONE", "status=FAILED")
        .replace("begin_wal=000000010000000000000002", "begin_wal=000000010000000000000001")
        .replace("error=None", "error=failure copying files (ran out of space)");
    std::fs::write(meta.join("20251231T000000-backup.info"), failed).unwrap();
    let wals = env.server_dir("pg").join("wals");
    std::fs::create_dir_all(&wals).unwrap();
    std::fs::write(wals.join("pg-xlog.db"), XLOGDB).unwrap();
}

fn theirs(env: &Env, args: &[&str]) -> Out {
    let barman = reference::barman().expect("reference Barman (scripts/setup-reference.sh)");
    run(Command::new(&barman).arg("-c").arg(&env.config).arg("sync-info").args(args), None)
}

fn same(env: &Env, args: &[&str]) -> Out {
    let t = theirs(env, args);
    let mut cmd = vec!["sync-info"];
    cmd.extend_from_slice(args);
    let o = env.barman(&cmd);
    assert_eq!(o.stdout, t.stdout, "sync-info {args:?}: stdout, ours (left) and Barman's (right)");
    assert_eq!(o.stderr, t.stderr, "sync-info {args:?}: stderr, ours (left) and Barman's (right)");
    assert_eq!(o.code, t.code, "sync-info {args:?}: exit code, ours (left) and Barman's (right)");
    o
}

#[test]
fn sync_info_is_barmans_byte_for_byte() {
    let env = Env::new();
    env.write_config(SERVERS);
    write_catalog(&env);
    // Offsets of lines in XLOGDB: the 2nd line starts at 50, the history file's at 214.
    let line_at = |name: &str| XLOGDB.find(name).unwrap().to_string();
    let second = line_at("000000010000000000000002\t");
    let history = line_at("00000002.history");
    let last = line_at("000000020000000000000004");
    let cases: Vec<Vec<&str>> = vec![
        vec!["pg"],
        vec!["pg", "000000010000000000000002"],
        vec!["pg", "000000010000000000000002", &second],
        vec!["pg", "000000010000000000000002", "51"],
        vec!["pg", "000000010000000000000002", "100000"],
        vec!["pg", "00000002.history", &history],
        vec!["pg", "000000020000000000000004", &last],
        vec!["pg", "000000020000000000000005"],
        vec!["pg", "000000000000000000000001"],
        vec!["pg", "0000000300000000000000FF"],
        vec!["other"],
        vec!["other", "000000010000000000000002"],
    ];
    let mut outcomes = std::collections::BTreeSet::new();
    for args in &cases {
        let o = same(&env, args);
        outcomes.insert(o.code);
        if o.code == 0 {
            let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
            assert!(v["config"]["name"].is_string(), "{args:?}: no config name");
        }
    }
    // Both answers and both refusals were seen.
    assert_eq!(outcomes.into_iter().collect::<Vec<_>>(), [0, 1]);
    // The whole answer lists the DONE and WAITING_FOR_WALS backups, and the WAL from the
    // oldest one's begin_wal on.
    let v: serde_json::Value = serde_json::from_str(&env.barman(&["sync-info", "pg"]).stdout).unwrap();
    let ids: Vec<&String> = v["backups"].as_object().unwrap().keys().collect();
    assert_eq!(ids, ["20260101T000000", "20260102T000000"]);
    assert_eq!(v["wals"][0]["name"], "000000010000000000000002");
    assert_eq!(v["last_name"], "000000020000000000000004");
    assert_eq!(v["last_position"].as_u64().unwrap().to_string(), last);
}

#[test]
fn a_zero_position_or_a_position_without_a_wal_is_a_usage_error() {
    let env = Env::new();
    env.write_config(SERVERS);
    let o = env.barman(&["sync-info", "pg", "000000010000000000000002", "0"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("not a positive integer"), "{}", o.stderr);
    let o = env.barman(&["sync-info", "pg", "000000010000000000000002", "x"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    let o = env.barman(&["sync-info", "nope"]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("Unknown server 'nope'"), "{}", o.stderr);
}
