//! The retention decision against Barman 3.17's own retention code: every case
//! of the table is given to Barman's RetentionPolicyFactory (on a catalog of the
//! same backups) and to ours; the labels must be the same, backup by backup.

#![allow(clippy::unwrap_used)]

use barman::backup::retention::{Candidate, Keep, report};
use barman::config::types::RetentionPolicy;
use chrono::{DateTime, Duration, FixedOffset};
use cluster_tests::reference;
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};

/// One backup of a case: id suffix, status, days since it ended, keep, parent index.
type B = (&'static str, &'static str, i64, Option<Keep>, Option<usize>);

struct Case {
    name: &'static str,
    policy: &'static str,
    minimum_redundancy: u32,
    backups: Vec<B>,
}

const DONE: &str = "DONE";

fn cases() -> Vec<Case> {
    let plain = |statuses: &[(&'static str, i64)]| -> Vec<B> {
        statuses.iter().enumerate().map(|(i, (s, d))| (ID[i], *s, *d, None, None)).collect()
    };
    vec![
        Case {
            name: "redundancy 2, all done",
            policy: "REDUNDANCY 2",
            minimum_redundancy: 0,
            backups: plain(&[(DONE, 40), (DONE, 30), (DONE, 20), (DONE, 10)]),
        },
        Case {
            name: "redundancy 2, failed ones among them",
            policy: "REDUNDANCY 2",
            minimum_redundancy: 0,
            backups: plain(&[
                (DONE, 40),
                ("FAILED", 35),
                (DONE, 30),
                ("WAITING_FOR_WALS", 25),
                (DONE, 20),
                ("FAILED", 1),
            ]),
        },
        Case {
            name: "redundancy below the minimum",
            policy: "REDUNDANCY 1",
            minimum_redundancy: 3,
            backups: plain(&[(DONE, 40), (DONE, 30), (DONE, 20), (DONE, 10)]),
        },
        Case {
            name: "redundancy 0",
            policy: "REDUNDANCY 0",
            minimum_redundancy: 0,
            backups: plain(&[(DONE, 40), (DONE, 10)]),
        },
        Case {
            name: "redundancy with keeps",
            policy: "REDUNDANCY 1",
            minimum_redundancy: 0,
            backups: vec![
                (ID[0], DONE, 40, Some(Keep::Full), None),
                (ID[1], DONE, 30, None, None),
                (ID[2], DONE, 20, Some(Keep::Standalone), None),
                (ID[3], DONE, 10, None, None),
            ],
        },
        Case {
            name: "window of 2 weeks",
            policy: "RECOVERY WINDOW OF 2 WEEKS",
            minimum_redundancy: 0,
            backups: plain(&[(DONE, 40), (DONE, 30), (DONE, 20), (DONE, 10), (DONE, 1)]),
        },
        Case {
            name: "window, minimum redundancy keeps old ones",
            policy: "RECOVERY WINDOW OF 7 DAYS",
            minimum_redundancy: 4,
            backups: plain(&[(DONE, 40), (DONE, 30), (DONE, 20), (DONE, 10), (DONE, 1)]),
        },
        Case {
            name: "window with nothing inside",
            policy: "RECOVERY WINDOW OF 3 DAYS",
            minimum_redundancy: 1,
            backups: plain(&[(DONE, 40), (DONE, 30), (DONE, 20)]),
        },
        Case {
            name: "window in months, failed and waiting",
            policy: "RECOVERY WINDOW OF 1 MONTHS",
            minimum_redundancy: 0,
            backups: plain(&[(DONE, 90), ("FAILED", 60), (DONE, 45), ("WAITING_FOR_WALS", 20), (DONE, 5)]),
        },
        Case {
            name: "window with keeps past it",
            policy: "RECOVERY WINDOW OF 10 DAYS",
            minimum_redundancy: 1,
            backups: vec![
                (ID[0], DONE, 50, Some(Keep::Standalone), None),
                (ID[1], DONE, 40, None, None),
                (ID[2], DONE, 30, Some(Keep::Full), None),
                (ID[3], DONE, 20, None, None),
                (ID[4], DONE, 2, None, None),
            ],
        },
        Case {
            name: "incremental children take the parent's label",
            policy: "REDUNDANCY 1",
            minimum_redundancy: 0,
            backups: vec![
                (ID[0], DONE, 40, None, None),
                (ID[1], DONE, 39, None, Some(0)),
                (ID[2], DONE, 38, None, Some(1)),
                (ID[3], DONE, 10, Some(Keep::Standalone), None),
                (ID[4], DONE, 9, None, Some(3)),
                (ID[5], DONE, 1, None, None),
            ],
        },
        Case {
            name: "window, children of kept parents",
            policy: "RECOVERY WINDOW OF 7 DAYS",
            minimum_redundancy: 0,
            backups: vec![
                (ID[0], DONE, 40, Some(Keep::Standalone), None),
                (ID[1], DONE, 39, None, Some(0)),
                (ID[2], DONE, 30, Some(Keep::Full), None),
                (ID[3], DONE, 29, None, Some(2)),
                (ID[4], DONE, 20, None, None),
                (ID[5], DONE, 3, None, None),
            ],
        },
    ]
}

const ID: [&str; 6] =
    ["20260101T000000", "20260102T000000", "20260103T000000", "20260104T000000", "20260105T000000", "20260106T000000"];

/// Barman's labels for every case, computed by its RetentionPolicyFactory with
/// a catalog stub holding the same backups (end times relative to its own now).
fn barmans(cases: &[Case]) -> Vec<Value> {
    let input: Vec<Value> = cases
        .iter()
        .map(|c| {
            json!({
                "policy": c.policy,
                "minimum_redundancy": c.minimum_redundancy,
                "backups": c.backups.iter().map(|(id, st, days, keep, parent)| json!({
                    "id": id, "status": st, "days": days,
                    "keep": keep.map(|k| if k == Keep::Full { "full" } else { "standalone" }),
                    "parent": parent.map(|p| ID[p]),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let script = r#"
import json, sys, types, datetime
from dateutil import tz
import barman.output
from barman.retention_policies import RetentionPolicyFactory
out = []
for case in json.load(sys.stdin):
    now = datetime.datetime.now(tz.tzlocal())
    infos = {}
    for b in case["backups"]:
        infos[b["id"]] = types.SimpleNamespace(backup_id=b["id"], status=b["status"],
            end_time=now - datetime.timedelta(days=b["days"]), parent_backup_id=b["parent"],
            is_incremental=b["parent"] is not None)
    def tree(bid):
        kids = [i for i in infos.values() if i.parent_backup_id == bid]
        res = []
        for k in kids:
            res.extend(tree(k.backup_id))
            res.append(k)
        return res
    for i in infos.values():
        i.has_children = bool(tree(i.backup_id))
        i.walk_backups_tree = (lambda bid: lambda return_self=True: tree(bid))(i.backup_id)
    keeps = {b["id"]: b["keep"] for b in case["backups"]}
    catalog = types.SimpleNamespace(get_backup_list=lambda: infos, get_keep_target=lambda bid: keeps.get(bid))
    p = RetentionPolicyFactory.create("retention_policy", case["policy"], server_name="pg",
        catalog=catalog, minimum_redundancy=case["minimum_redundancy"])
    out.append(p.report())
print(json.dumps(out))
"#;
    let mut child = Command::new(reference::python().expect("reference Barman (scripts/setup-reference.sh)"))
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(Value::Array(input).to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

#[test]
fn retention_labels_are_barmans() {
    let cases = cases();
    let theirs = barmans(&cases);
    let now: DateTime<FixedOffset> = chrono::Local::now().fixed_offset();
    for (case, want) in cases.iter().zip(theirs) {
        let candidates: Vec<Candidate> = case
            .backups
            .iter()
            .map(|(id, st, days, keep, parent)| Candidate {
                id: id.to_string(),
                status: st.to_string(),
                end_time: Some(now - Duration::days(*days)),
                keep: *keep,
                parent: parent.map(|p| ID[p].to_string()),
            })
            .collect();
        let ours = report(RetentionPolicy::parse_text(case.policy).unwrap(), case.minimum_redundancy, now, &candidates);
        let ours: serde_json::Map<String, Value> = ours.into_iter().map(|(k, v)| (k, json!(v.to_string()))).collect();
        assert_eq!(Value::Object(ours), want, "case {:?}: ours (left) differs from Barman's", case.name);
    }
}
