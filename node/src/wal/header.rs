//! Checks of a segment's first page header (`XLogLongPageHeaderData`), so that a
//! file is known to be the segment its name says, of the cluster we back up,
//! before it is acknowledged or archived.

use super::lsn::Lsn;
use super::name::TimelineId;
use super::segment::{SegmentId, SegmentSize};
use std::fmt;

/// Bytes of the long page header that we read.
pub const LONG_HEADER_LEN: usize = 40;
const XLP_LONG_HEADER: u16 = 0x0002;
const XLP_ALL_FLAGS: u16 = 0x000F;

/// PostgreSQL's system identifier (pg_control), as found in every segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SystemId(pub u64);

impl fmt::Display for SystemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for SystemId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim().parse().map(SystemId)
    }
}

/// `XLOG_PAGE_MAGIC` of each PostgreSQL major version (9.5 onwards).
const MAGICS: &[(u32, u16)] = &[
    (95, 0xD087),
    (96, 0xD093),
    (10, 0xD097),
    (11, 0xD098),
    (12, 0xD101),
    (13, 0xD106),
    (14, 0xD10D),
    (15, 0xD110),
    (16, 0xD113),
    (17, 0xD116),
    (18, 0xD118),
];

/// The page magic PostgreSQL `major` writes (`major` as 15, 16, ...; 9.6 as 96).
pub fn magic_for_major(major: u32) -> Option<u16> {
    MAGICS.iter().find(|(m, _)| *m == major).map(|(_, v)| *v)
}

/// The major version that writes `magic`, shown as PostgreSQL names it.
pub fn major_for_magic(magic: u16) -> Option<String> {
    MAGICS.iter().find(|(_, v)| *v == magic).map(|(m, _)| match m {
        95 => "9.5".to_string(),
        96 => "9.6".to_string(),
        m => m.to_string(),
    })
}

/// What the long header of a segment says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongHeader {
    pub magic: u16,
    pub info: u16,
    pub tli: TimelineId,
    pub pageaddr: Lsn,
    pub sysid: SystemId,
    pub seg_size: u32,
    pub block_size: u32,
}

impl LongHeader {
    /// Decodes the first 40 bytes of a segment (native little-endian, or big-endian
    /// when the magic only makes sense that way).
    pub fn parse(b: &[u8]) -> Option<LongHeader> {
        if b.len() < LONG_HEADER_LEN {
            return None;
        }
        let le = |r: std::ops::Range<usize>| -> u64 { b[r].iter().rev().fold(0u64, |a, x| (a << 8) | u64::from(*x)) };
        let be = |r: std::ops::Range<usize>| -> u64 { b[r].iter().fold(0u64, |a, x| (a << 8) | u64::from(*x)) };
        let little = major_for_magic(le(0..2) as u16).is_some() || major_for_magic(be(0..2) as u16).is_none();
        let rd = |r: std::ops::Range<usize>| if little { le(r) } else { be(r) };
        Some(LongHeader {
            magic: rd(0..2) as u16,
            info: rd(2..4) as u16,
            tli: TimelineId(rd(4..8) as u32),
            pageaddr: Lsn(rd(8..16)),
            sysid: SystemId(rd(24..32)),
            seg_size: rd(32..36) as u32,
            block_size: rd(36..40) as u32,
        })
    }
}

/// What we know of the cluster a segment must come from.
#[derive(Debug, Clone, Copy, Default)]
pub struct Expected {
    pub sysid: Option<SystemId>,
    /// PostgreSQL major version (15, 16, ...).
    pub major: Option<u32>,
    pub seg_size: Option<SegmentSize>,
}

/// Why a file is not the segment its name says.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("file is {len} bytes, shorter than a WAL page header")]
    TooShort { len: u64 },
    #[error("page magic 0x{found:04X} is not a PostgreSQL WAL page")]
    BadMagic { found: u16 },
    #[error("page magic 0x{found:04X} is from PostgreSQL {found_version}, the server runs PostgreSQL {expected}")]
    WrongVersion { found: u16, found_version: String, expected: u32 },
    #[error("first page has no long header (xlp_info 0x{info:04X})")]
    NotLongHeader { info: u16 },
    #[error("header segment size {header} bytes is not a valid WAL segment size")]
    BadSegmentSize { header: u32 },
    #[error("header segment size {header} bytes differs from the server's {expected}")]
    SegmentSizeMismatch { header: u32, expected: u64 },
    #[error("file is {len} bytes but segments are {expected} bytes (truncated or padded)")]
    WrongLength { len: u64, expected: u64 },
    #[error("segment number is beyond the last one ({last}) of a log id with {size}-byte segments")]
    SegmentOutOfRange { last: u32, size: u64 },
    #[error("xlp_pageaddr is {found}, expected {expected} from the file name (a recycled or renamed segment)")]
    WrongPageAddr { found: Lsn, expected: Lsn },
    #[error("page timeline {found} is newer than the file name's timeline {name}")]
    TimelineAhead { found: TimelineId, name: TimelineId },
    #[error("system identifier {found} differs from the server's {expected} (WAL from another cluster)")]
    ForeignSystem { found: SystemId, expected: SystemId },
}

/// Validates the first page of a segment named `id` whose file is `len` bytes.
pub fn check_segment(head: &[u8], len: u64, id: SegmentId, exp: &Expected) -> Result<LongHeader, HeaderError> {
    let h = LongHeader::parse(head).ok_or(HeaderError::TooShort { len })?;
    let Some(found_version) = major_for_magic(h.magic) else {
        return Err(HeaderError::BadMagic { found: h.magic });
    };
    if let Some(major) = exp.major
        && let Some(m) = magic_for_major(major)
        && m != h.magic
    {
        return Err(HeaderError::WrongVersion { found: h.magic, found_version, expected: major });
    }
    if h.info & XLP_LONG_HEADER == 0 || h.info & !XLP_ALL_FLAGS != 0 {
        return Err(HeaderError::NotLongHeader { info: h.info });
    }
    let size =
        SegmentSize::new(u64::from(h.seg_size)).map_err(|_| HeaderError::BadSegmentSize { header: h.seg_size })?;
    if let Some(want) = exp.seg_size
        && want != size
    {
        return Err(HeaderError::SegmentSizeMismatch { header: h.seg_size, expected: want.bytes() });
    }
    if len != size.bytes() {
        return Err(HeaderError::WrongLength { len, expected: size.bytes() });
    }
    if !id.fits(size) {
        return Err(HeaderError::SegmentOutOfRange { last: size.last_seg_in_log(), size: size.bytes() });
    }
    let want_addr = id.start_lsn(size);
    if h.pageaddr != want_addr {
        return Err(HeaderError::WrongPageAddr { found: h.pageaddr, expected: want_addr });
    }
    // The first segment of a new timeline starts with pages copied from its parent,
    // so a lower page timeline is normal; a higher one is not.
    if h.tli > id.tli || h.tli.0 == 0 {
        return Err(HeaderError::TimelineAhead { found: h.tli, name: id.tli });
    }
    if let Some(sys) = exp.sysid
        && sys != h.sysid
    {
        return Err(HeaderError::ForeignSystem { found: h.sysid, expected: sys });
    }
    Ok(h)
}

#[cfg(test)]
pub(crate) fn synthetic_header(magic: u16, tli: u32, pageaddr: u64, sysid: u64, seg_size: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(LONG_HEADER_LEN);
    v.extend_from_slice(&magic.to_le_bytes());
    v.extend_from_slice(&XLP_LONG_HEADER.to_le_bytes());
    v.extend_from_slice(&tli.to_le_bytes());
    v.extend_from_slice(&pageaddr.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(&sysid.to_le_bytes());
    v.extend_from_slice(&seg_size.to_le_bytes());
    v.extend_from_slice(&8192u32.to_le_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYS: u64 = 7_300_000_000_000_000_001;
    const SZ: u32 = 16 << 20;

    fn id(s: &str) -> SegmentId {
        s.parse::<super::super::name::WalFileName>().unwrap().segment_id().unwrap()
    }

    fn exp() -> Expected {
        Expected { sysid: Some(SystemId(SYS)), major: Some(15), seg_size: None }
    }

    #[test]
    fn accepts_a_matching_segment() {
        let h = synthetic_header(0xD110, 1, 0x0000_0003_0500_0000, SYS, SZ);
        let got = check_segment(&h, u64::from(SZ), id("000000010000000300000005"), &exp()).unwrap();
        assert_eq!(got.sysid, SystemId(SYS));
    }

    #[test]
    fn parent_timeline_pages_are_accepted_but_not_newer_ones() {
        let h = synthetic_header(0xD110, 1, 0x0500_0000, SYS, SZ);
        assert!(check_segment(&h, u64::from(SZ), id("000000020000000000000005"), &exp()).is_ok());
        let h = synthetic_header(0xD110, 3, 0x0500_0000, SYS, SZ);
        assert!(matches!(
            check_segment(&h, u64::from(SZ), id("000000020000000000000005"), &exp()),
            Err(HeaderError::TimelineAhead { .. })
        ));
    }

    #[test]
    fn each_mismatch_is_named() {
        let name = id("000000010000000000000005");
        let good = |m, a, s, z| synthetic_header(m, 1, a, s, z);
        type Case = (Vec<u8>, u64, fn(&HeaderError) -> bool);
        let cases: Vec<Case> = vec![
            (vec![0; 10], 10, |e| matches!(e, HeaderError::TooShort { .. })),
            (good(0x1234, 0x0500_0000, SYS, SZ), SZ.into(), |e| matches!(e, HeaderError::BadMagic { .. })),
            (good(0xD113, 0x0500_0000, SYS, SZ), SZ.into(), |e| matches!(e, HeaderError::WrongVersion { .. })),
            (good(0xD110, 0x0400_0000, SYS, SZ), SZ.into(), |e| matches!(e, HeaderError::WrongPageAddr { .. })),
            (good(0xD110, 0x0500_0000, SYS + 1, SZ), SZ.into(), |e| matches!(e, HeaderError::ForeignSystem { .. })),
            (good(0xD110, 0x0500_0000, SYS, SZ), 8192, |e| matches!(e, HeaderError::WrongLength { .. })),
            (good(0xD110, 0x0500_0000, SYS, 3 << 20), SZ.into(), |e| matches!(e, HeaderError::BadSegmentSize { .. })),
        ];
        for (h, len, pred) in cases {
            let e = check_segment(&h, len, name, &exp()).unwrap_err();
            assert!(pred(&e), "{e}");
        }
        let e = check_segment(
            &good(0xD110, 0x0500_0000, SYS, 1 << 20),
            SZ.into(),
            name,
            &Expected { seg_size: Some(SegmentSize::new(16 << 20).unwrap()), ..exp() },
        )
        .unwrap_err();
        assert!(matches!(e, HeaderError::SegmentSizeMismatch { .. }));
    }

    #[test]
    fn out_of_range_segment_number() {
        // 64 MiB segments stop at 0x3F within a log id.
        let size = 64u32 << 20;
        let h = synthetic_header(0xD110, 1, 0x40u64 * u64::from(size), SYS, size);
        let e = check_segment(&h, size.into(), id("000000010000000000000040"), &exp()).unwrap_err();
        assert!(matches!(e, HeaderError::SegmentOutOfRange { .. }), "{e}");
    }
}
