//! The backup catalog against Barman 3.17 itself: for each case, the same
//! catalog and archive are given to `barman check-backup` (the real one) and to
//! our decision; the status and error recorded must be the same.

#![allow(clippy::unwrap_used)]

mod common;

use barman::backup::check::check_wals;
use barman::catalog::backup_info::BackupInfo;
use cluster_tests::reference;
use common::{Env, run};
use std::process::Command;

const ID: &str = "20261121T100000";

struct Case {
    name: &'static str,
    begin: &'static str,
    end: Option<&'static str>,
    archived: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "empty archive",
            begin: "000000010000000000000002",
            end: Some("000000010000000000000004"),
            archived: &[],
        },
        Case {
            name: "only older WAL",
            begin: "000000010000000000000002",
            end: Some("000000010000000000000004"),
            archived: &["000000010000000000000001"],
        },
        Case {
            name: "half way",
            begin: "000000010000000000000002",
            end: Some("000000010000000000000004"),
            archived: &["000000010000000000000002", "000000010000000000000003"],
        },
        Case {
            name: "complete",
            begin: "000000010000000000000002",
            end: Some("000000010000000000000004"),
            archived: &["000000010000000000000002", "000000010000000000000003", "000000010000000000000004"],
        },
        Case {
            name: "a hole",
            begin: "000000010000000000000002",
            end: Some("000000010000000000000004"),
            archived: &["000000010000000000000002", "000000010000000000000004", "000000010000000000000005"],
        },
        Case {
            name: "across a log boundary",
            begin: "0000000100000001000000FE",
            end: Some("000000010000000200000001"),
            archived: &[
                "0000000100000001000000FE",
                "0000000100000001000000FF",
                "000000010000000200000000",
                "000000010000000200000001",
            ],
        },
        Case {
            name: "hole across a log boundary",
            begin: "0000000100000001000000FE",
            end: Some("000000010000000200000001"),
            archived: &["0000000100000001000000FE", "000000010000000200000000", "000000010000000200000001"],
        },
        Case {
            name: "other timeline only",
            begin: "000000010000000000000002",
            end: Some("000000010000000000000003"),
            archived: &["000000020000000000000002", "000000020000000000000003"],
        },
        Case {
            name: "newest file a partial",
            begin: "000000010000000000000002",
            end: Some("000000010000000000000003"),
            archived: &["000000010000000000000002", "000000010000000000000003.partial"],
        },
        Case {
            name: "newest dir holds only a backup label",
            begin: "000000010000000000000002",
            end: Some("000000010000000000000003"),
            archived: &[
                "000000010000000000000002",
                "000000010000000000000003",
                "000000010000000100000003.00000028.backup",
            ],
        },
        Case {
            name: "no end yet",
            begin: "000000010000000000000002",
            end: None,
            archived: &["000000010000000000000002"],
        },
    ]
}

fn write_case(env: &Env, case: &Case) -> BackupInfo {
    let server = env.server_dir("pg");
    let _ = std::fs::remove_dir_all(&server);
    for n in case.archived {
        let dir = server.join("wals").join(&n[..16]);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(n), b"").unwrap();
    }
    std::fs::create_dir_all(server.join("wals")).unwrap();
    let info = BackupInfo {
        status: "WAITING_FOR_WALS".into(),
        server_name: Some("pg".into()),
        mode: Some("postgres".into()),
        version: Some(150000),
        begin_wal: Some(case.begin.parse().unwrap()),
        end_wal: case.end.map(|e| e.parse().unwrap()),
        timeline: Some(1),
        ..Default::default()
    };
    info.save(&server.join("meta").join(format!("{ID}-backup.info"))).unwrap();
    std::fs::create_dir_all(server.join("base").join(ID)).unwrap();
    info
}

#[test]
fn check_backup_decides_as_barman_does() {
    let env = Env::new();
    env.write_config("[pg]\nconninfo = host=127.0.0.1 port=1\nbackup_method = postgres\narchiver = on\n");
    let barman = reference::barman().expect("reference Barman (scripts/setup-reference.sh)");
    let mut seen = std::collections::BTreeSet::new();
    for case in cases() {
        let before = write_case(&env, &case);
        let out = run(Command::new(&barman).arg("-c").arg(&env.config).args(["check-backup", "pg", ID]), None);
        let path = env.server_dir("pg").join("meta").join(format!("{ID}-backup.info"));
        let theirs = BackupInfo::read(&path).unwrap();
        let mut ours = before.clone();
        check_wals(&ours, &env.server_dir("pg").join("wals")).apply(&mut ours);
        assert_eq!(
            (ours.status.as_str(), ours.error.as_deref()),
            (theirs.status.as_str(), theirs.error.as_deref()),
            "case {:?}: ours (left) differs from Barman's; Barman said: {}{}",
            case.name,
            out.stdout,
            out.stderr
        );
        seen.insert(theirs.status.clone());
    }
    // Barman really decided (a run that changed nothing would leave only WAITING_FOR_WALS).
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["DONE", "FAILED", "WAITING_FOR_WALS"]);
}
