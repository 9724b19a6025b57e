//! Timeline history files: `parentTLI<TAB>switchpoint<TAB>reason` lines.

use super::lsn::Lsn;
use super::name::TimelineId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub parent: TimelineId,
    pub switchpoint: Lsn,
    pub reason: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadHistory {
    #[error("history file is empty")]
    Empty,
    #[error("history file is not UTF-8 text")]
    NotText,
    #[error("line {line}: expected 'parent timeline<TAB>switch LSN<TAB>reason', found {text:?}")]
    BadLine { line: usize, text: String },
    #[error("line {line}: parent timeline {parent} is not below the file's timeline {tli}")]
    ParentNotOlder { line: usize, parent: u32, tli: u32 },
}

/// Parses a history file of timeline `tli` (blank and `#` lines are skipped, as
/// PostgreSQL and Barman do).
pub fn parse_history(tli: TimelineId, bytes: &[u8]) -> Result<Vec<HistoryEntry>, BadHistory> {
    let text = std::str::from_utf8(bytes).map_err(|_| BadHistory::NotText)?;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || BadHistory::BadLine { line: i + 1, text: raw.to_string() };
        let mut parts = line.splitn(3, '\t');
        let (Some(p), Some(l), Some(r)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let parent = p.trim().parse::<u32>().map_err(|_| bad())?;
        let switchpoint = l.trim().parse::<Lsn>().map_err(|_| bad())?;
        if parent >= tli.0 {
            return Err(BadHistory::ParentNotOlder { line: i + 1, parent, tli: tli.0 });
        }
        out.push(HistoryEntry { parent: TimelineId(parent), switchpoint, reason: r.trim().to_string() });
    }
    if out.is_empty() {
        return Err(BadHistory::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postgres_history() {
        let h = b"1\t0/3000000\tno recovery target specified\n\n2\t0/5000160\tat restore point \"x\"\n";
        let e = parse_history(TimelineId(3), h).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].parent, TimelineId(2));
        assert_eq!(e[1].switchpoint.to_string(), "0/5000160");
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse_history(TimelineId(2), b""), Err(BadHistory::Empty));
        assert!(matches!(parse_history(TimelineId(2), b"1 0/3000000 x\n"), Err(BadHistory::BadLine { .. })));
        assert!(matches!(parse_history(TimelineId(2), b"2\t0/3\tx\n"), Err(BadHistory::ParentNotOlder { .. })));
        assert_eq!(parse_history(TimelineId(2), &[0xff, 0xfe]), Err(BadHistory::NotText));
    }
}
