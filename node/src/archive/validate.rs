//! Content checks of a WAL file before it is acknowledged or archived: the name
//! says what the file must be, and the file must be exactly that, from our cluster.

use crate::wal::compression::{Codec, Codecs, CompressionError, Head, read_full};
use crate::wal::header::{self, Expected, HeaderError, LONG_HEADER_LEN};
use crate::wal::history::{BadHistory, parse_history};
use crate::wal::{WalFileName, WalKind};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Why a file is not what its name says.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("{0}")]
    Header(#[from] HeaderError),
    #[error("bad history file: {0}")]
    History(#[from] BadHistory),
    #[error("bad backup label file: {0}")]
    BackupLabel(String),
    #[error("cannot decompress the {codec} data: {reason}")]
    Corrupt { codec: Codec, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// What a valid file turned out to be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Checked {
    /// Compression found by magic bytes (client-side compression).
    pub compression: Option<Codec>,
    /// Size once decompressed.
    pub plain_len: u64,
    /// The segment's long header, for segments and partials.
    pub header: Option<header::LongHeader>,
}

/// Keeps the first bytes written and counts the rest.
struct HeadCounter {
    head: Vec<u8>,
    keep: usize,
    len: u64,
}

impl Write for HeadCounter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.head.len() < self.keep {
            let n = (self.keep - self.head.len()).min(b.len());
            self.head.extend_from_slice(&b[..n]);
        }
        self.len += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads the start of the plain content and its length, decompressing when the
/// file is compressed. `keep` bytes of the start are returned.
fn plain_head(path: &Path, codecs: &Codecs, keep: usize) -> Result<(Option<Codec>, Vec<u8>, u64), ValidateError> {
    let mut f = File::open(path)?;
    let probe = Head::read(&mut f)?;
    // Only real magic counts here: an unidentified file is plain WAL.
    match codecs.identify_magic(probe.bytes()) {
        None => {
            let len = f.metadata()?.len();
            let mut head = probe.bytes().to_vec();
            if keep > head.len() {
                let mut rest = vec![0u8; keep - head.len()];
                let m = read_full(&mut f, &mut rest)?;
                head.extend_from_slice(&rest[..m]);
            }
            head.truncate(keep);
            Ok((None, head, len))
        }
        Some(c) => {
            f.seek(SeekFrom::Start(0))?;
            let mut sink = HeadCounter { head: Vec::with_capacity(keep), keep, len: 0 };
            codecs.decompress(c, &mut f, &mut sink).map_err(|e| decompress_error(c, e))?;
            Ok((Some(c), sink.head, sink.len))
        }
    }
}

/// Damaged compressed data makes the file invalid; other I/O errors stay I/O errors.
fn decompress_error(codec: Codec, e: CompressionError) -> ValidateError {
    match e {
        CompressionError::Io(ioe)
            if ioe.kind() != io::ErrorKind::InvalidData && ioe.kind() != io::ErrorKind::UnexpectedEof =>
        {
            ValidateError::Io(ioe)
        }
        other => ValidateError::Invalid(Invalid::Corrupt { codec, reason: other.to_string() }),
    }
}

/// Checks that the file at `path` is the WAL file `name` says, of the expected cluster.
pub fn check_file(path: &Path, name: &WalFileName, codecs: &Codecs, exp: &Expected) -> Result<Checked, ValidateError> {
    match name.kind() {
        WalKind::Segment(id) | WalKind::Partial(id) => {
            let (compression, head, len) = plain_head(path, codecs, LONG_HEADER_LEN)?;
            let h = header::check_segment(&head, len, id, exp).map_err(Invalid::from)?;
            Ok(Checked { compression, plain_len: len, header: Some(h) })
        }
        WalKind::History(tli) => {
            let (compression, body, len) = plain_head(path, codecs, 1 << 20)?;
            parse_history(tli, &body).map_err(Invalid::from)?;
            Ok(Checked { compression, plain_len: len, header: None })
        }
        WalKind::Backup(..) => {
            let (compression, body, len) = plain_head(path, codecs, 64 << 10)?;
            let text = std::str::from_utf8(&body).map_err(|_| Invalid::BackupLabel("not UTF-8 text".into()))?;
            if !text.starts_with("START WAL LOCATION:") {
                return Err(Invalid::BackupLabel("it does not start with 'START WAL LOCATION:'".into()).into());
            }
            Ok(Checked { compression, plain_len: len, header: None })
        }
    }
}

/// Compares the plain content of an archived file and of an incoming one whose
/// compression `check_file` found; the offset of the first difference, or None
/// when identical. An archived copy that cannot be decompressed is `Invalid`.
pub fn first_difference(
    archived: &Path,
    incoming: &Path,
    incoming_codec: Option<Codec>,
    codecs: &Codecs,
) -> Result<Option<u64>, ValidateError> {
    let plain = |p: &Path, codec: Option<Codec>| -> Result<Vec<u8>, ValidateError> {
        let mut f = File::open(p)?;
        let mut out = Vec::new();
        match codec {
            None => {
                f.read_to_end(&mut out)?;
            }
            Some(c) => codecs.decompress(c, &mut f, &mut out).map_err(|e| decompress_error(c, e))?,
        }
        Ok(out)
    };
    // The archive's files without magic are of the configured custom codec.
    let archived_codec = codecs.identify(File::open(archived).and_then(|mut f| Head::read(&mut f))?.bytes());
    let (x, y) = (plain(archived, archived_codec)?, plain(incoming, incoming_codec)?);
    if x == y {
        return Ok(None);
    }
    let common = x.iter().zip(&y).position(|(p, q)| p != q).unwrap_or(x.len().min(y.len()));
    Ok(Some(common as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::SystemId;
    use crate::wal::compression::Level;

    const SYS: u64 = 42;

    fn segment(pageaddr: u64) -> Vec<u8> {
        let mut v = crate::wal::header::synthetic_header(0xD110, 1, pageaddr, SYS, 16 << 20);
        v.resize(16 << 20, 0);
        v
    }

    fn exp() -> Expected {
        Expected { sysid: Some(SystemId(SYS)), major: Some(15), seg_size: None }
    }

    #[test]
    fn plain_and_compressed_segments() {
        let d = tempfile::tempdir().unwrap();
        let name: WalFileName = "000000010000000000000003".parse().unwrap();
        let p = d.path().join("plain");
        std::fs::write(&p, segment(0x0300_0000)).unwrap();
        let c = check_file(&p, &name, &Codecs::default(), &exp()).unwrap();
        assert_eq!(c.compression, None);
        let z = d.path().join("zstd");
        let mut out = Vec::new();
        Codecs::default().compress(Codec::Zstd, Level::Low, &mut &segment(0x0300_0000)[..], &mut out).unwrap();
        std::fs::write(&z, &out).unwrap();
        let c = check_file(&z, &name, &Codecs::default(), &exp()).unwrap();
        assert_eq!((c.compression, c.plain_len), (Some(Codec::Zstd), 16 << 20));
        // Truncated compressed data is corrupt, not an I/O error.
        std::fs::write(&z, &out[..out.len() / 2]).unwrap();
        assert!(matches!(
            check_file(&z, &name, &Codecs::default(), &exp()),
            Err(ValidateError::Invalid(Invalid::Corrupt { .. }))
        ));
    }

    #[test]
    fn renamed_truncated_and_foreign_segments_are_invalid() {
        let d = tempfile::tempdir().unwrap();
        let name: WalFileName = "000000010000000000000004".parse().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, segment(0x0300_0000)).unwrap();
        let e = check_file(&p, &name, &Codecs::default(), &exp()).unwrap_err();
        assert!(e.to_string().contains("xlp_pageaddr"), "{e}");
        std::fs::write(&p, &segment(0x0400_0000)[..8192]).unwrap();
        assert!(check_file(&p, &name, &Codecs::default(), &exp()).unwrap_err().to_string().contains("truncated"));
        let foreign = Expected { sysid: Some(SystemId(SYS + 1)), ..exp() };
        std::fs::write(&p, segment(0x0400_0000)).unwrap();
        assert!(
            check_file(&p, &name, &Codecs::default(), &foreign).unwrap_err().to_string().contains("another cluster")
        );
    }

    #[test]
    fn history_and_label_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("h");
        std::fs::write(&p, "1\t0/3000000\tno recovery target specified\n").unwrap();
        assert!(check_file(&p, &"00000002.history".parse().unwrap(), &Codecs::default(), &exp()).is_ok());
        std::fs::write(&p, "garbage").unwrap();
        assert!(check_file(&p, &"00000002.history".parse().unwrap(), &Codecs::default(), &exp()).is_err());
        std::fs::write(&p, "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n").unwrap();
        assert!(
            check_file(&p, &"000000010000000000000002.00000028.backup".parse().unwrap(), &Codecs::default(), &exp())
                .is_ok()
        );
    }

    #[test]
    fn difference_offsets() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::write(&a, b"hello world").unwrap();
        std::fs::write(&b, b"hello there").unwrap();
        assert_eq!(first_difference(&a, &b, None, &Codecs::default()).unwrap(), Some(6));
        let mut gz = Vec::new();
        Codecs::default().compress(Codec::Gzip, Level::Low, &mut &b"hello world"[..], &mut gz).unwrap();
        std::fs::write(&b, gz).unwrap();
        assert_eq!(first_difference(&a, &b, Some(Codec::Gzip), &Codecs::default()).unwrap(), None);
        // compression = custom without magic: the archived copy is custom, a
        // plain re-send of the same segment is identical, not a duplicate.
        let custom = Codecs {
            custom: crate::wal::compression::CustomFilters {
                compress: Some("base64".into()),
                decompress: Some("base64 -d".into()),
                magic: None,
            },
            unidentified: Some(Codec::Custom),
            ..Codecs::default()
        };
        let mut packed = Vec::new();
        custom.compress(Codec::Custom, Level::Low, &mut &b"hello world"[..], &mut packed).unwrap();
        std::fs::write(&b, &packed).unwrap();
        assert_eq!(first_difference(&b, &a, None, &custom).unwrap(), None);
        std::fs::write(&a, b"hello there").unwrap();
        assert_eq!(first_difference(&b, &a, None, &custom).unwrap(), Some(6));
    }
}
