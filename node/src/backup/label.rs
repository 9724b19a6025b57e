//! What Barman reads from a backup's `backup_label`: where the backup starts
//! (`START WAL LOCATION: X/Y (file NAME)`), its timeline (from the file name)
//! and `START TIME`.

use crate::wal::{Lsn, WalFileName};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelStart {
    pub begin_xlog: Lsn,
    pub begin_wal: WalFileName,
    /// Offset of `begin_xlog` in its segment.
    pub begin_offset: u64,
    pub timeline: u32,
    /// `START TIME` as written (`2026-11-21 11:30:00 UTC`).
    pub start_time: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot read backup_label: {0} (the backup is not usable; take a new one)")]
pub struct LabelError(String);

/// Barman's `_backup_info_from_backup_label` for segments of `segment_size`.
pub fn parse(label: &str, segment_size: crate::wal::SegmentSize) -> Result<LabelStart, LabelError> {
    let line = |prefix: &str| label.lines().find_map(|l| l.strip_prefix(prefix));
    let wal = line("START WAL LOCATION: ").ok_or_else(|| LabelError("no START WAL LOCATION line".into()))?;
    let (lsn, rest) = wal.split_once(" (file ").ok_or_else(|| LabelError(format!("bad START WAL LOCATION {wal:?}")))?;
    let file = rest.strip_suffix(')').ok_or_else(|| LabelError(format!("bad START WAL LOCATION {wal:?}")))?;
    let begin_xlog: Lsn = lsn.parse().map_err(|_| LabelError(format!("bad LSN {lsn:?}")))?;
    let begin_wal: WalFileName = file.parse().map_err(|_| LabelError(format!("bad WAL file name {file:?}")))?;
    let timeline = u32::from_str_radix(file.get(..8).unwrap_or(""), 16)
        .map_err(|_| LabelError(format!("bad WAL file name {file:?}")))?;
    let start_time = line("START TIME: ").ok_or_else(|| LabelError("no START TIME line".into()))?.to_string();
    Ok(LabelStart { begin_offset: segment_size.offset(begin_xlog), begin_xlog, begin_wal, timeline, start_time })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As PostgreSQL 15 writes it for BASE_BACKUP.
    const LABEL: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
        CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
        START TIME: 2026-11-21 11:30:00 UTC\nLABEL: barman\nSTART TIMELINE: 1\n";

    #[test]
    fn reads_what_barman_reads() {
        let s = parse(LABEL, crate::wal::SegmentSize::default()).unwrap();
        assert_eq!(s.begin_xlog, Lsn(0x2000028));
        assert_eq!(s.begin_wal.as_str(), "000000010000000000000002");
        assert_eq!((s.begin_offset, s.timeline), (0x28, 1));
        assert_eq!(s.start_time, "2026-11-21 11:30:00 UTC");
        let on_tli_3 = LABEL.replace("(file 0000000100", "(file 0000000300");
        assert_eq!(parse(&on_tli_3, crate::wal::SegmentSize::default()).unwrap().timeline, 3);
    }

    #[test]
    fn a_damaged_label_is_one_clear_error() {
        let e = parse("LABEL: x\n", crate::wal::SegmentSize::default()).unwrap_err().to_string();
        assert!(e.contains("START WAL LOCATION"), "{e}");
        let e =
            parse(&LABEL.replace("(file 000000010000000000000002)", "(file zz)"), crate::wal::SegmentSize::default())
                .unwrap_err();
        assert!(e.to_string().contains("zz"), "{e}");
    }
}
