//! Log sequence numbers, shown as PostgreSQL shows them: `X/Y` in upper-case hex.

use std::fmt;
use std::str::FromStr;

/// A position in the WAL stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub fn high(self) -> u32 {
        (self.0 >> 32) as u32
    }
    pub fn low(self) -> u32 {
        self.0 as u32
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.high(), self.low())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{0}' is not a valid LSN (expected two hex numbers as X/Y, e.g. 0/3000028)")]
pub struct BadLsn(pub String);

impl FromStr for Lsn {
    type Err = BadLsn;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadLsn(s.to_string());
        let (h, l) = s.split_once('/').ok_or_else(bad)?;
        let ok = |p: &str| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok(h) || !ok(l) {
            return Err(bad());
        }
        let h = u32::from_str_radix(h, 16).map_err(|_| bad())?;
        let l = u32::from_str_radix(l, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(h) << 32) | u64::from(l)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_postgres_notation() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        assert_eq!("a/b".parse::<Lsn>().unwrap().to_string(), "A/B");
    }

    #[test]
    fn rejects_malformed() {
        for s in ["", "0", "/1", "1/", "G/1", "1/2/3", "123456789/0", " 0/1"] {
            assert!(s.parse::<Lsn>().is_err(), "{s}");
        }
    }
}
