//! The retention decision, as Barman 3.17's `RedundancyRetentionPolicy` and
//! `RecoveryWindowRetentionPolicy` make it: a pure function from the catalog
//! (every backup that is not EMPTY), the policy, `minimum_redundancy` and the
//! current time to one label per backup.

use crate::config::types::{RetentionPolicy, WindowUnit};
use chrono::{DateTime, Duration, FixedOffset};
use std::collections::BTreeMap;
use std::fmt;

/// A `keep` annotation on a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Full,
    Standalone,
}

/// A retention status label (Barman's `BackupInfo.RETENTION_STATUS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    Valid,
    Obsolete,
    /// Outside the policy but kept for `minimum_redundancy`.
    PotentiallyObsolete,
    KeepFull,
    KeepStandalone,
    /// Not DONE: the policy does not apply.
    None,
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Label::Valid => "VALID",
            Label::Obsolete => "OBSOLETE",
            Label::PotentiallyObsolete => "OBSOLETE*",
            Label::KeepFull => "KEEP:FULL",
            Label::KeepStandalone => "KEEP:STANDALONE",
            Label::None => "-",
        })
    }
}

/// What the decision reads of one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub status: String,
    pub end_time: Option<DateTime<FixedOffset>>,
    pub keep: Option<Keep>,
    /// Set for a PostgreSQL 17 incremental backup: it takes its parent's label.
    pub parent: Option<String>,
}

fn keep_label(k: Option<Keep>) -> Option<Label> {
    k.map(|k| match k {
        Keep::Full => Label::KeepFull,
        Keep::Standalone => Label::KeepStandalone,
    })
}

/// Every descendant of `id` (children, their children, ...).
fn descendants<'a>(id: &str, all: &'a [Candidate]) -> Vec<&'a Candidate> {
    let mut out = Vec::new();
    let mut stack = vec![id.to_string()];
    while let Some(p) = stack.pop() {
        for c in all.iter().filter(|c| c.parent.as_deref() == Some(p.as_str())) {
            out.push(c);
            stack.push(c.id.clone());
        }
    }
    out
}

/// Labels for `backups` (EMPTY ones left out by the caller, as Barman does).
pub fn report(
    policy: RetentionPolicy,
    minimum_redundancy: u32,
    now: DateTime<FixedOffset>,
    backups: &[Candidate],
) -> BTreeMap<String, Label> {
    let mut sorted: Vec<&Candidate> = backups.iter().collect();
    sorted.sort_by(|a, b| b.id.cmp(&a.id));
    let mut report = BTreeMap::new();
    // Redundancy: below minimum_redundancy, the minimum is enforced.
    let redundancy = match policy {
        RetentionPolicy::Redundancy(n) => Some(n.max(minimum_redundancy)),
        RetentionPolicy::Window { .. } => None,
    };
    let point = match policy {
        RetentionPolicy::Window { value, unit } => {
            let days = i64::from(value)
                * match unit {
                    WindowUnit::Days => 1,
                    WindowUnit::Weeks => 7,
                    WindowUnit::Months => 31,
                };
            Some(now - Duration::days(days))
        }
        RetentionPolicy::Redundancy(_) => None,
    };
    // Redundancy: DONE backups seen; window: past the point of recoverability, and kept ones.
    let (mut seen, mut found, mut valid) = (0u32, false, 0u32);
    for b in sorted {
        if b.parent.is_some() {
            continue;
        }
        let label = if b.status != "DONE" {
            Label::None
        } else if let Some(r) = redundancy {
            let l = keep_label(b.keep).unwrap_or(if seen < r { Label::Valid } else { Label::Obsolete });
            seen += 1;
            l
        } else if found {
            if valid < minimum_redundancy {
                valid += 1;
                keep_label(b.keep).unwrap_or(Label::PotentiallyObsolete)
            } else {
                keep_label(b.keep).unwrap_or(Label::Obsolete)
            }
        } else {
            valid += 1;
            // A backup ending before the point is the last one still needed.
            if let (Some(end), Some(p)) = (b.end_time, point)
                && end < p
            {
                found = true;
            }
            keep_label(b.keep).unwrap_or(Label::Valid)
        };
        report.insert(b.id.clone(), label);
        let children = descendants(&b.id, backups);
        if !children.is_empty() {
            let outside = match redundancy {
                Some(r) => seen > r,
                None => found,
            };
            let status = match label {
                Label::KeepStandalone if outside => Label::Obsolete,
                Label::KeepStandalone | Label::KeepFull => Label::Valid,
                other => other,
            };
            for c in children {
                report.insert(c.id.clone(), status);
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(days_ago: i64) -> Option<DateTime<FixedOffset>> {
        Some(now() - Duration::days(days_ago))
    }

    fn now() -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339("2026-11-21T12:00:00+00:00").unwrap()
    }

    fn b(id: &str, status: &str, days_ago: i64) -> Candidate {
        Candidate { id: id.into(), status: status.into(), end_time: at(days_ago), keep: None, parent: None }
    }

    fn labels(r: &BTreeMap<String, Label>) -> Vec<String> {
        r.values().map(ToString::to_string).collect()
    }

    #[test]
    fn redundancy_counts_done_backups_newest_first() {
        let cat = vec![
            b("20260101T000000", "DONE", 30),
            b("20260102T000000", "FAILED", 29),
            b("20260103T000000", "DONE", 28),
            b("20260104T000000", "DONE", 1),
        ];
        let r = report(RetentionPolicy::Redundancy(2), 0, now(), &cat);
        assert_eq!(labels(&r), ["OBSOLETE", "-", "VALID", "VALID"]);
        // minimum_redundancy above the policy wins.
        let r = report(RetentionPolicy::Redundancy(1), 3, now(), &cat);
        assert_eq!(labels(&r), ["VALID", "-", "VALID", "VALID"]);
    }

    #[test]
    fn window_keeps_the_newest_backup_outside_it() {
        let cat = vec![
            b("20260101T000000", "DONE", 30),
            b("20260102T000000", "DONE", 20),
            b("20260103T000000", "DONE", 10),
            b("20260104T000000", "DONE", 1),
        ];
        let w = RetentionPolicy::Window { value: 2, unit: WindowUnit::Weeks };
        // 20260102 ends before the window: the newest such backup stays VALID.
        assert_eq!(labels(&report(w, 0, now(), &cat)), ["OBSOLETE", "VALID", "VALID", "VALID"]);
        assert_eq!(labels(&report(w, 4, now(), &cat)), ["OBSOLETE*", "VALID", "VALID", "VALID"]);
    }
}
