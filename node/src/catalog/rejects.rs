//! The `errors/` directory: rejected files renamed `<name>.<UTC stamp>.<reason>`.

use super::durable;
use std::io;
use std::path::{Path, PathBuf};

/// Why a file was set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Same name as an archived file, different content (Barman's `duplicate`).
    Duplicate,
    /// Not a WAL file name (Barman's `unknown`).
    Unknown,
    /// A WAL name, but the content is not that segment of our cluster.
    Invalid,
}

impl RejectReason {
    pub fn suffix(self) -> &'static str {
        match self {
            RejectReason::Duplicate => "duplicate",
            RejectReason::Unknown => "unknown",
            RejectReason::Invalid => "invalid",
        }
    }
}

/// Moves `src` into `errors_dir` under Barman's naming, never replacing a file
/// already there (a second reject in the same second gets `_<n>` after the stamp).
pub fn move_to_errors(errors_dir: &Path, src: &Path, name: &str, reason: RejectReason) -> io::Result<PathBuf> {
    durable::create_dir_all(errors_dir)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    // The reject is kept as evidence: durable before the source goes.
    std::fs::File::open(src)?.sync_all()?;
    for n in 0.. {
        let suffix = if n == 0 { String::new() } else { format!("_{n}") };
        let dst = errors_dir.join(format!("{name}.{stamp}{suffix}.{}", reason.suffix()));
        if durable::link_new(src, &dst, None)? {
            durable::remove(src)?;
            return Ok(dst);
        }
    }
    unreachable!("an unbounded range ends only by returning")
}

/// Counts of files in `errors/` by kind, as `check` summarises them.
pub fn summarise(errors_dir: &Path) -> Vec<(&'static str, usize)> {
    let mut counts: Vec<(&'static str, usize)> = Vec::new();
    let Ok(rd) = std::fs::read_dir(errors_dir) else { return counts };
    let mut names: Vec<String> =
        rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for n in names {
        if n.starts_with('.') {
            continue;
        }
        let kind = if n.ends_with(".error") {
            "not relevant"
        } else if n.ends_with(".duplicate") {
            "duplicates"
        } else if n.ends_with(".unknown") {
            "unknown"
        } else if n.ends_with(".invalid") {
            "invalid"
        } else {
            "unknown failure"
        };
        match counts.iter_mut().find(|(k, _)| *k == kind) {
            Some(c) => c.1 += 1,
            None => counts.push((kind, 1)),
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_replaces_an_earlier_reject() {
        let d = tempfile::tempdir().unwrap();
        let errors = d.path().join("errors");
        for i in 0..3 {
            let src = d.path().join(format!("f{i}"));
            std::fs::write(&src, format!("{i}")).unwrap();
            let dst = move_to_errors(&errors, &src, "000000010000000000000001", RejectReason::Duplicate).unwrap();
            assert!(dst.to_string_lossy().ends_with(".duplicate"));
            assert!(!src.exists());
        }
        assert_eq!(std::fs::read_dir(&errors).unwrap().count(), 3);
        assert_eq!(summarise(&errors), vec![("duplicates", 3)]);
    }
}
