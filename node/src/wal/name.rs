//! WAL file names as PostgreSQL and Barman write them: segments, `.partial`,
//! `.backup` labels and `.history` files. Parsed once, compared numerically.

use super::segment::SegmentId;
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TimelineId(pub u32);

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a WAL file name denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WalKind {
    /// A complete segment, `TTTTTTTTLLLLLLLLSSSSSSSS`.
    Segment(SegmentId),
    /// An incomplete segment, `<segment>.partial`.
    Partial(SegmentId),
    /// A backup label, `<segment>.<offset>.backup`.
    Backup(SegmentId, u32),
    /// A timeline history file, `TTTTTTTT.history`.
    History(TimelineId),
}

/// A valid WAL file name. Keeps the spelling it was read with (hex may be lower
/// case in names written by hand), so paths on disk are found as they are.
#[derive(Debug, Clone)]
pub struct WalFileName {
    kind: WalKind,
    text: Box<str>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{0}' is not a valid wal file name")]
pub struct BadWalName(pub String);

fn hex8(s: &str) -> Option<u32> {
    if s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()) { u32::from_str_radix(s, 16).ok() } else { None }
}

impl FromStr for WalFileName {
    type Err = BadWalName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadWalName(s.to_string());
        let kind = if let Some(tli) = s.strip_suffix(".history") {
            WalKind::History(TimelineId(hex8(tli).ok_or_else(bad)?))
        } else {
            // Hex digits only: a name from another host may hold any character, and the
            // slices below are by byte.
            if s.len() < 24 || !s.as_bytes()[..24].iter().all(u8::is_ascii_hexdigit) {
                return Err(bad());
            }
            let (seg, rest) = s.split_at(24);
            let id = SegmentId::new(
                TimelineId(hex8(&seg[0..8]).ok_or_else(bad)?),
                hex8(&seg[8..16]).ok_or_else(bad)?,
                hex8(&seg[16..24]).ok_or_else(bad)?,
            );
            match rest {
                "" => WalKind::Segment(id),
                ".partial" => WalKind::Partial(id),
                _ => {
                    let off = rest
                        .strip_prefix('.')
                        .and_then(|r| r.strip_suffix(".backup"))
                        .and_then(hex8)
                        .ok_or_else(bad)?;
                    WalKind::Backup(id, off)
                }
            }
        };
        Ok(WalFileName { kind, text: s.into() })
    }
}

impl WalFileName {
    pub fn segment(id: SegmentId) -> Self {
        WalFileName { kind: WalKind::Segment(id), text: id.to_string().into() }
    }
    pub fn partial(id: SegmentId) -> Self {
        WalFileName { kind: WalKind::Partial(id), text: format!("{id}.partial").into() }
    }
    pub fn history(tli: TimelineId) -> Self {
        WalFileName { kind: WalKind::History(tli), text: format!("{:08X}.history", tli.0).into() }
    }

    pub fn kind(&self) -> WalKind {
        self.kind
    }
    pub fn as_str(&self) -> &str {
        &self.text
    }
    pub fn timeline(&self) -> TimelineId {
        match self.kind {
            WalKind::Segment(id) | WalKind::Partial(id) | WalKind::Backup(id, _) => id.tli,
            WalKind::History(t) => t,
        }
    }
    /// The segment this name belongs to (none for history files).
    pub fn segment_id(&self) -> Option<SegmentId> {
        match self.kind {
            WalKind::Segment(id) | WalKind::Partial(id) | WalKind::Backup(id, _) => Some(id),
            WalKind::History(_) => None,
        }
    }
    pub fn is_segment(&self) -> bool {
        matches!(self.kind, WalKind::Segment(_))
    }
    pub fn is_partial(&self) -> bool {
        matches!(self.kind, WalKind::Partial(_))
    }
    pub fn is_history(&self) -> bool {
        matches!(self.kind, WalKind::History(_))
    }
    pub fn is_backup_label(&self) -> bool {
        matches!(self.kind, WalKind::Backup(..))
    }
    /// The archive sub-directory: timeline and log id in upper-case hex, or none
    /// for history files, which live at the top of `wals/`.
    pub fn hash_dir(&self) -> Option<String> {
        self.segment_id().map(|id| format!("{:08X}{:08X}", id.tli.0, id.log))
    }

    /// The order Barman's sorted directory listings give (its names are upper case),
    /// made independent of letter case.
    fn sort_key(&self) -> String {
        self.text.to_ascii_uppercase()
    }
}

impl PartialEq for WalFileName {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
    }
}
impl Eq for WalFileName {}
impl std::hash::Hash for WalFileName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.kind.hash(state)
    }
}
impl PartialOrd for WalFileName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for WalFileName {
    fn cmp(&self, other: &Self) -> Ordering {
        self.sort_key().cmp(&other.sort_key())
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> WalFileName {
        s.parse().unwrap()
    }

    #[test]
    fn a_name_with_other_characters_is_refused_not_a_panic() {
        // Found by the decoder fuzzing: a multi-byte character across byte 8.
        for name in [
            "\u{fffd}\u{fffd}\u{fffd}M\u{fffd}\u{fffd}\u{fffd}(",
            "0000000é0000000000000001",
            "00000001000000000000000\u{e9}",
        ] {
            assert!(name.parse::<WalFileName>().is_err(), "{name}");
        }
    }

    #[test]
    fn parses_the_four_kinds() {
        let s = n("000000010000000A000000FF");
        assert!(s.is_segment());
        assert_eq!(s.hash_dir().unwrap(), "000000010000000A");
        let p = n("000000010000000A000000FF.partial");
        assert!(p.is_partial());
        assert_eq!(p.segment_id(), s.segment_id());
        let b = n("000000010000000A000000FF.00000028.backup");
        assert_eq!(b.kind(), WalKind::Backup(s.segment_id().unwrap(), 0x28));
        let h = n("00000002.history");
        assert_eq!(h.kind(), WalKind::History(TimelineId(2)));
        assert_eq!(h.hash_dir(), None);
    }

    #[test]
    fn lower_case_is_kept_and_hash_dir_is_upper() {
        let s = n("000000010000000a000000ff");
        assert_eq!(s.as_str(), "000000010000000a000000ff");
        assert_eq!(s.hash_dir().unwrap(), "000000010000000A");
        assert_eq!(s, n("000000010000000A000000FF"));
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "00000001000000000000000",
            "0000000100000000000000001",
            "00000001000000000000000G",
            "000000010000000000000001.part",
            "000000010000000000000001.0000002.backup",
            "000000010000000000000001.backup",
            "0000001.history",
            "../00000001.history",
            "00000001000000000000000é",
            "000000010000000000000001.tmp",
        ] {
            assert!(bad.parse::<WalFileName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sorts_like_barman_listings() {
        let mut v = [
            n("000000020000000000000001"),
            n("00000002.history"),
            n("000000010000000000000002.partial"),
            n("000000010000000000000002"),
            n("000000010000000000000001.00000028.backup"),
        ];
        v.sort();
        let got: Vec<_> = v.iter().map(|w| w.as_str()).collect();
        assert_eq!(
            got,
            [
                "000000010000000000000001.00000028.backup",
                "000000010000000000000002",
                "000000010000000000000002.partial",
                "00000002.history",
                "000000020000000000000001",
            ]
        );
    }
}
