//! Retention policies applied to a server's catalogue: the labels
//! `list-backups` / `show-backup` print, and keep annotations.

use crate::backup::retention::{Candidate, Keep, Label, report};
use crate::catalog::ServerLayout;
use crate::catalog::backups::Backup;
use crate::config::ServerConfig;
use crate::config::types::Retention;
use std::collections::BTreeMap;

/// `meta/<id>-keep` (or the legacy `base/<id>/annotations/keep`): `full` or `standalone`.
pub fn keep_of(l: &ServerLayout, id: &str) -> Option<Keep> {
    let meta = l.meta_dir().join(format!("{id}-keep"));
    let legacy = l.base_dir.join(id).join("annotations").join("keep");
    let text = std::fs::read_to_string(&meta).or_else(|_| std::fs::read_to_string(&legacy)).ok()?;
    // Barman counts an unknown target as full.
    Some(if text.trim() == "standalone" { Keep::Standalone } else { Keep::Full })
}

/// The retention label of every backup, or `None` when no valid policy is set.
pub fn labels(s: &ServerConfig, l: &ServerLayout, all: &[Backup]) -> Option<BTreeMap<String, Label>> {
    let Some(Retention::Policy(policy)) = s.opts.retention_policy.clone() else { return None };
    let candidates: Vec<Candidate> = all
        .iter()
        .filter(|b| b.info.status != "EMPTY")
        .map(|b| Candidate {
            id: b.id.clone(),
            status: b.info.status.clone(),
            end_time: b.info.end_time,
            keep: keep_of(l, &b.id),
            parent: b.info.parent_backup_id.clone(),
        })
        .collect();
    let now = chrono::Local::now().fixed_offset();
    Some(report(policy, s.opts.minimum_redundancy.0, now, &candidates))
}
