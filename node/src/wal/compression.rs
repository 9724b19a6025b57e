//! WAL compression as Barman's registry defines it: the same names, the same magic
//! bytes, the same level mapping, and standard stream formats, so an archive
//! written by either Barman or us is read by the other.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read, Write};
use std::process::{Command, Stdio};
use std::str::FromStr;

/// A WAL compression algorithm, by its Barman registry name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Bzip2,
    Custom,
    Gzip,
    Lz4,
    Pigz,
    PyBzip2,
    PyGzip,
    Snappy,
    Xz,
    Zstd,
}

/// Registry names in alphabetical order: the order Barman tries magic bytes in,
/// so gzip data is always reported as `gzip`, never `pigz` or `pygzip`.
pub const ALL: [Codec; 10] = [
    Codec::Bzip2,
    Codec::Custom,
    Codec::Gzip,
    Codec::Lz4,
    Codec::Pigz,
    Codec::PyBzip2,
    Codec::PyGzip,
    Codec::Snappy,
    Codec::Xz,
    Codec::Zstd,
];

const GZIP_MAGIC: &[u8] = b"\x1f\x8b\x08";
const BZIP2_MAGIC: &[u8] = b"\x42\x5a\x68";

/// (min, max, low, medium, high) as Barman maps `compression_level`.
type Levels = (i32, i32, i32, i32, i32);

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::Bzip2 => "bzip2",
            Codec::Custom => "custom",
            Codec::Gzip => "gzip",
            Codec::Lz4 => "lz4",
            Codec::Pigz => "pigz",
            Codec::PyBzip2 => "pybzip2",
            Codec::PyGzip => "pygzip",
            Codec::Snappy => "snappy",
            Codec::Xz => "xz",
            Codec::Zstd => "zstd",
        }
    }

    /// Magic bytes of the format (custom: only when configured).
    pub fn magic(self) -> Option<&'static [u8]> {
        match self {
            Codec::Bzip2 | Codec::PyBzip2 => Some(BZIP2_MAGIC),
            Codec::Gzip | Codec::PyGzip | Codec::Pigz => Some(GZIP_MAGIC),
            Codec::Lz4 => Some(b"\x04\x22\x4d\x18"),
            Codec::Snappy => Some(b"\xff\x06\x00\x00sNaPpY"),
            Codec::Xz => Some(b"\xfd7zXZ\x00"),
            Codec::Zstd => Some(b"\x28\xb5\x2f\xfd"),
            Codec::Custom => None,
        }
    }

    fn levels(self) -> Option<Levels> {
        match self {
            Codec::Gzip | Codec::PyGzip | Codec::Pigz => Some((1, 9, 1, 6, 9)),
            Codec::Bzip2 | Codec::PyBzip2 => Some((1, 9, 1, 5, 9)),
            Codec::Xz => Some((1, 9, 1, 3, 5)),
            Codec::Zstd => Some((-22, 22, 1, 4, 9)),
            Codec::Lz4 => Some((0, 16, 0, 6, 10)),
            Codec::Snappy | Codec::Custom => None,
        }
    }

    /// The level used for `level`, clamped to the codec's range as Barman does.
    pub fn resolve_level(self, level: Level) -> i32 {
        let Some((min, max, low, med, high)) = self.levels() else {
            return 0;
        };
        match level {
            Level::Low => low,
            Level::Medium => med,
            Level::High => high,
            Level::Int(n) => n.clamp(min, max),
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Codec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let l = s.to_ascii_lowercase();
        ALL.iter()
            .copied()
            .find(|c| c.name() == l)
            .ok_or_else(|| format!("must be one of: {}", ALL.map(Codec::name).join(", ")))
    }
}

/// `compression_level`: `low`, `medium`, `high` or an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Level {
    Low,
    #[default]
    Medium,
    High,
    Int(i32),
}

impl FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let l = s.trim().to_ascii_lowercase();
        match l.as_str() {
            "low" => Ok(Level::Low),
            "medium" => Ok(Level::Medium),
            "high" => Ok(Level::High),
            _ if !l.is_empty() && l.trim_start_matches('-').bytes().all(|b| b.is_ascii_digit()) => {
                l.parse().map(Level::Int).map_err(|_| format!("'{s}' is out of range"))
            }
            _ => Err("must be one of low, medium, high or an integer".to_string()),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Level::Low => f.write_str("low"),
            Level::Medium => f.write_str("medium"),
            Level::High => f.write_str("high"),
            Level::Int(n) => write!(f, "{n}"),
        }
    }
}

/// The deprecated `custom` codec: shell filters reading stdin and writing stdout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomFilters {
    pub compress: Option<String>,
    pub decompress: Option<String>,
    pub magic: Option<Vec<u8>>,
}

/// Everything needed to run codecs for one server.
#[derive(Debug, Clone, Default)]
pub struct Codecs {
    pub custom: CustomFilters,
    /// `PATH` for external filters, with the server's `path_prefix` in front.
    pub path_env: Option<OsString>,
    /// Name given to files without a known magic (Barman: `custom` when the server
    /// uses custom compression without a magic).
    pub unidentified: Option<Codec>,
}

#[derive(Debug, thiserror::Error)]
pub enum CompressionError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("custom compression needs '{0}' to be set")]
    MissingFilter(&'static str),
    #[error("filter '{cmd}' failed ({status}): {stderr}")]
    FilterFailed { cmd: String, status: String, stderr: String },
}

/// Longest magic we need to read to identify a file.
pub const MAGIC_PROBE_LEN: usize = 16;

/// Reads until `buf` is full or the input ends; the number of bytes read.
pub fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The first bytes of a file: enough to tell its codec (or encryption).
pub struct Head {
    buf: [u8; MAGIC_PROBE_LEN],
    len: usize,
}

impl Head {
    /// Reads the head from the current position of `r`.
    pub fn read(r: &mut dyn Read) -> io::Result<Head> {
        let mut buf = [0u8; MAGIC_PROBE_LEN];
        let len = read_full(r, &mut buf)?;
        Ok(Head { buf, len })
    }
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Codecs {
    /// The codec whose magic starts `head`, in Barman's (alphabetical) order;
    /// else the configured codec of files without magic.
    pub fn identify(&self, head: &[u8]) -> Option<Codec> {
        self.identify_magic(head).or(self.unidentified)
    }

    /// Only real magic: an unidentified file is not compressed (what a client sends).
    pub fn identify_magic(&self, head: &[u8]) -> Option<Codec> {
        for c in ALL {
            let magic = match c {
                Codec::Custom => self.custom.magic.as_deref(),
                _ => c.magic(),
            };
            if let Some(m) = magic
                && !m.is_empty()
                && head.starts_with(m)
            {
                return Some(c);
            }
        }
        None
    }

    /// Compresses all of `src` into `dst` with `codec` at `level`.
    pub fn compress(
        &self,
        codec: Codec,
        level: Level,
        src: &mut (dyn Read + Send),
        dst: &mut dyn Write,
    ) -> Result<(), CompressionError> {
        let lvl = codec.resolve_level(level);
        match codec {
            Codec::Gzip | Codec::PyGzip | Codec::Pigz => {
                let mut e = flate2::write::GzEncoder::new(dst, flate2::Compression::new(lvl as u32));
                io::copy(src, &mut e)?;
                e.finish()?;
            }
            Codec::Bzip2 | Codec::PyBzip2 => {
                let mut e = bzip2::write::BzEncoder::new(dst, bzip2::Compression::new(lvl as u32));
                io::copy(src, &mut e)?;
                e.finish()?;
            }
            Codec::Xz => {
                let mut e = liblzma::write::XzEncoder::new(dst, lvl as u32);
                io::copy(src, &mut e)?;
                e.finish()?;
            }
            Codec::Zstd => zstd::stream::copy_encode(src, dst, lvl)?,
            Codec::Lz4 => {
                // lz4_flex writes standard frames at its one (fast) level; the
                // frames are what Barman's lz4 module reads at any level.
                let mut e = lz4_flex::frame::FrameEncoder::new(dst);
                io::copy(src, &mut e)?;
                e.finish().map_err(io::Error::other)?;
            }
            Codec::Snappy => {
                let mut e = snap::write::FrameEncoder::new(dst);
                io::copy(src, &mut e)?;
                e.flush()?;
            }
            Codec::Custom => {
                let cmd = self
                    .custom
                    .compress
                    .as_deref()
                    .ok_or(CompressionError::MissingFilter("custom_compression_filter"))?;
                self.run_filter(cmd, src, dst)?;
            }
        }
        Ok(())
    }

    /// Decompresses all of `src` (in `codec`'s format) into `dst`.
    pub fn decompress(
        &self,
        codec: Codec,
        src: &mut (dyn Read + Send),
        dst: &mut dyn Write,
    ) -> Result<(), CompressionError> {
        match codec {
            Codec::Gzip | Codec::PyGzip | Codec::Pigz => {
                io::copy(&mut flate2::read::MultiGzDecoder::new(src), dst)?;
            }
            Codec::Bzip2 | Codec::PyBzip2 => {
                io::copy(&mut bzip2::read::MultiBzDecoder::new(src), dst)?;
            }
            Codec::Xz => {
                io::copy(&mut liblzma::read::XzDecoder::new_multi_decoder(src), dst)?;
            }
            Codec::Zstd => zstd::stream::copy_decode(src, dst)?,
            Codec::Lz4 => {
                io::copy(&mut lz4_flex::frame::FrameDecoder::new(src), dst)?;
            }
            Codec::Snappy => {
                io::copy(&mut snap::read::FrameDecoder::new(src), dst)?;
            }
            Codec::Custom => {
                let cmd = self
                    .custom
                    .decompress
                    .as_deref()
                    .ok_or(CompressionError::MissingFilter("custom_decompression_filter"))?;
                self.run_filter(cmd, src, dst)?;
            }
        }
        Ok(())
    }

    /// Runs a shell filter with `src` on its stdin and its stdout into `dst`.
    fn run_filter(&self, cmd: &str, src: &mut (dyn Read + Send), dst: &mut dyn Write) -> Result<(), CompressionError> {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(cmd).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(p) = &self.path_env {
            c.env("PATH", p);
        }
        let mut child = c.spawn()?;
        let mut stdin = child.stdin.take().ok_or_else(|| io::Error::other("filter stdin unavailable"))?;
        let mut stdout = child.stdout.take().ok_or_else(|| io::Error::other("filter stdout unavailable"))?;
        let mut stderr = child.stderr.take().ok_or_else(|| io::Error::other("filter stderr unavailable"))?;
        // Feed stdin from a scoped thread while this one drains stdout, so neither
        // pipe can fill up and stall the filter.
        let (fed, copied, err_text) = std::thread::scope(|s| {
            let feeder = s.spawn(move || {
                let r = io::copy(src, &mut stdin);
                drop(stdin);
                r
            });
            let err_reader = s.spawn(move || {
                let mut t = String::new();
                let _ = stderr.read_to_string(&mut t);
                t
            });
            let copied = io::copy(&mut stdout, dst);
            let fed = feeder.join().unwrap_or_else(|_| Err(io::Error::other("filter feeder panicked")));
            let err_text = err_reader.join().unwrap_or_default();
            (fed, copied, err_text)
        });
        let status = child.wait()?;
        if !status.success() {
            return Err(CompressionError::FilterFailed {
                cmd: cmd.to_string(),
                status: status.to_string(),
                stderr: err_text.trim().to_string(),
            });
        }
        // A filter may legitimately stop reading early only if it failed; it did not.
        fed?;
        copied?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_like() -> Vec<u8> {
        // Mostly zeros with some structure, like a lightly used segment.
        let mut v = vec![0u8; 1 << 20];
        for (i, b) in v.iter_mut().enumerate().take(200_000) {
            *b = (i % 251) as u8 ^ (i / 4096) as u8;
        }
        v
    }

    #[test]
    fn every_builtin_codec_round_trips_and_is_identified() {
        let c = Codecs::default();
        let data = wal_like();
        for codec in ALL.into_iter().filter(|c| *c != Codec::Custom) {
            let mut packed = Vec::new();
            c.compress(codec, Level::Medium, &mut &data[..], &mut packed).unwrap();
            assert!(packed.len() < data.len() / 2, "{codec} did not compress");
            let found = c.identify(&packed[..MAGIC_PROBE_LEN]).unwrap();
            // Formats shared by several names are reported under the first name.
            let expect = match codec {
                Codec::Pigz | Codec::PyGzip => Codec::Gzip,
                Codec::PyBzip2 => Codec::Bzip2,
                other => other,
            };
            assert_eq!(found, expect);
            let mut back = Vec::new();
            c.decompress(found, &mut &packed[..], &mut back).unwrap();
            assert!(back == data, "{codec} round trip differs");
        }
    }

    #[test]
    fn levels_map_and_clamp_as_barman() {
        assert_eq!(Codec::Gzip.resolve_level(Level::Medium), 6);
        assert_eq!(Codec::Bzip2.resolve_level(Level::Medium), 5);
        assert_eq!(Codec::Xz.resolve_level(Level::High), 5);
        assert_eq!(Codec::Zstd.resolve_level(Level::Low), 1);
        assert_eq!(Codec::Zstd.resolve_level(Level::Int(-40)), -22);
        assert_eq!(Codec::Lz4.resolve_level(Level::Int(99)), 16);
        assert_eq!("MEDIUM".parse::<Level>().unwrap(), Level::Medium);
        assert_eq!("-3".parse::<Level>().unwrap(), Level::Int(-3));
        assert!("fast".parse::<Level>().is_err());
        assert!("".parse::<Level>().is_err());
    }

    #[test]
    fn custom_filters_run_through_the_shell() {
        let c = Codecs {
            custom: CustomFilters {
                compress: Some("gzip -c -1".into()),
                decompress: Some("gzip -c -d".into()),
                magic: None,
            },
            path_env: None,
            unidentified: Some(Codec::Custom),
        };
        let data = wal_like();
        let mut packed = Vec::new();
        c.compress(Codec::Custom, Level::Medium, &mut &data[..], &mut packed).unwrap();
        // Without a custom magic gzip's own magic wins, as in Barman.
        assert_eq!(c.identify(&packed), Some(Codec::Gzip));
        assert_eq!(c.identify(b"no magic here"), Some(Codec::Custom));
        let mut back = Vec::new();
        c.decompress(Codec::Custom, &mut &packed[..], &mut back).unwrap();
        assert!(back == data);
    }

    #[test]
    fn a_failing_filter_is_an_error() {
        let c = Codecs {
            custom: CustomFilters { compress: Some("exit 3".into()), ..Default::default() },
            ..Default::default()
        };
        let err = c.compress(Codec::Custom, Level::Medium, &mut &b"x"[..], &mut Vec::new()).unwrap_err();
        assert!(matches!(err, CompressionError::FilterFailed { .. }), "{err}");
    }

    #[test]
    fn custom_magic_is_tried_before_gzip() {
        let c = Codecs {
            custom: CustomFilters { magic: Some(GZIP_MAGIC.to_vec()), ..Default::default() },
            ..Default::default()
        };
        assert_eq!(c.identify(b"\x1f\x8b\x08rest"), Some(Codec::Custom));
        assert_eq!(c.identify(b"plain"), None);
    }
}
