//! Segment sizes and segment numbering (timeline, log id, segment within the log id).

use super::lsn::Lsn;
use super::name::TimelineId;
use std::fmt;

/// WAL segment size in bytes: a power of two from 1 MiB to 1 GiB (PostgreSQL 11+).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentSize(u32);

pub const DEFAULT_SEGMENT_SIZE: SegmentSize = SegmentSize(16 * 1024 * 1024);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid WAL segment size {0} bytes (must be a power of two between 1 MiB and 1 GiB)")]
pub struct BadSegmentSize(pub u64);

impl SegmentSize {
    pub const MIN: u64 = 1 << 20;
    pub const MAX: u64 = 1 << 30;

    pub fn new(bytes: u64) -> Result<Self, BadSegmentSize> {
        if bytes.is_power_of_two() && (Self::MIN..=Self::MAX).contains(&bytes) {
            Ok(SegmentSize(bytes as u32))
        } else {
            Err(BadSegmentSize(bytes))
        }
    }
    pub fn bytes(self) -> u64 {
        u64::from(self.0)
    }
    /// Where `lsn` lies within its segment.
    pub fn offset(self, lsn: Lsn) -> u64 {
        lsn.0 % self.bytes()
    }
    /// Highest segment number within one log id (`0xFFFFFFFF // size`, as Barman computes it).
    pub fn last_seg_in_log(self) -> u32 {
        0xFFFF_FFFF / self.0
    }
}

impl Default for SegmentSize {
    fn default() -> Self {
        DEFAULT_SEGMENT_SIZE
    }
}

impl fmt::Display for SegmentSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One segment of the WAL stream: `TTTTTTTTLLLLLLLLSSSSSSSS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId {
    pub tli: TimelineId,
    pub log: u32,
    pub seg: u32,
}

impl SegmentId {
    pub fn new(tli: TimelineId, log: u32, seg: u32) -> Self {
        SegmentId { tli, log, seg }
    }

    /// The segment holding `lsn` (a position on an exact boundary maps to the new segment).
    pub fn containing(lsn: Lsn, tli: TimelineId, size: SegmentSize) -> Self {
        let seg = lsn.low() / size.0;
        SegmentId { tli, log: lsn.high(), seg }
    }

    /// The segment holding the last byte before `end`: on an exact boundary,
    /// the segment just finished (where a backup or a switch ends).
    pub fn ending_at(end: Lsn, tli: TimelineId, size: SegmentSize) -> Self {
        let seg = Self::containing(end, tli, size);
        if size.offset(end) == 0 { seg.prev(size) } else { seg }
    }

    /// Position of the first byte of the segment.
    pub fn start_lsn(self, size: SegmentSize) -> Lsn {
        Lsn((u64::from(self.log) << 32) | (u64::from(self.seg) * size.bytes()))
    }

    /// Whether the segment number exists for this size (`seg <= 0xFFFFFFFF // size`).
    pub fn fits(self, size: SegmentSize) -> bool {
        self.seg <= size.last_seg_in_log()
    }

    pub fn next(self, size: SegmentSize) -> Self {
        if self.seg >= size.last_seg_in_log() {
            SegmentId { log: self.log.wrapping_add(1), seg: 0, ..self }
        } else {
            SegmentId { seg: self.seg + 1, ..self }
        }
    }

    pub fn prev(self, size: SegmentSize) -> Self {
        if self.seg == 0 {
            SegmentId { log: self.log.wrapping_sub(1), seg: size.last_seg_in_log(), ..self }
        } else {
            SegmentId { seg: self.seg - 1, ..self }
        }
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}{:08X}{:08X}", self.tli.0, self.log, self.seg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert!(SegmentSize::new(16 << 20).is_ok());
        assert!(SegmentSize::new(1 << 20).is_ok());
        assert!(SegmentSize::new(1 << 30).is_ok());
        assert!(SegmentSize::new(1 << 19).is_err());
        assert!(SegmentSize::new(2 << 30).is_err());
        assert!(SegmentSize::new(3 << 20).is_err());
        assert_eq!(DEFAULT_SEGMENT_SIZE.last_seg_in_log(), 255);
        assert_eq!(SegmentSize::new(64 << 20).unwrap().last_seg_in_log(), 63);
        assert_eq!(SegmentSize::new(1 << 20).unwrap().last_seg_in_log(), 4095);
    }

    #[test]
    fn lsn_to_segment_and_back() {
        let s = DEFAULT_SEGMENT_SIZE;
        let id = SegmentId::containing("16/B374D848".parse().unwrap(), TimelineId(1), s);
        assert_eq!(id.to_string(), "0000000100000016000000B3");
        assert_eq!(id.start_lsn(s).to_string(), "16/B3000000");
        // A boundary maps to the new segment.
        let b = SegmentId::containing("0/3000000".parse().unwrap(), TimelineId(2), s);
        assert_eq!(b.to_string(), "000000020000000000000003");
    }

    #[test]
    fn an_end_on_a_boundary_belongs_to_the_segment_it_finishes() {
        let size = DEFAULT_SEGMENT_SIZE;
        let t = TimelineId(1);
        assert_eq!(SegmentId::ending_at(Lsn(0x1_0300_0028), t, size), SegmentId::new(t, 1, 3));
        assert_eq!(SegmentId::ending_at(Lsn(0x1_0300_0000), t, size), SegmentId::new(t, 1, 2));
        assert_eq!(SegmentId::ending_at(Lsn(0x2_0000_0000), t, size), SegmentId::new(t, 1, 0xFF));
        assert_eq!(size.offset(Lsn(0x1_0300_0028)), 0x28);
    }

    #[test]
    fn next_and_prev_cross_log_ids() {
        let s = DEFAULT_SEGMENT_SIZE;
        let a = SegmentId::new(TimelineId(1), 0xA, 0xFF);
        assert_eq!(a.next(s).to_string(), "000000010000000B00000000");
        assert_eq!(a.next(s).prev(s), a);
        let big = SegmentSize::new(1 << 30).unwrap();
        let b = SegmentId::new(TimelineId(1), 0, 3);
        assert_eq!(b.next(big).to_string(), "000000010000000100000000");
    }
}
