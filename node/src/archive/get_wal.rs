//! `get-wal`: finds a WAL file in the archive, `incoming/` or `streaming/` and
//! delivers it plain (or as stored, or recompressed), with Barman's search order,
//! `--peek` listing and exit codes; plus `--bundle`, our batch of several
//! segments in one tar stream for `barman-wal-restore`.

use super::wire::{MemberInfo, SumAlgo, TarWriter};
use crate::catalog::ServerLayout;
use crate::catalog::xlogdb::{detect_gpg, mtime_float};
use crate::wal::compression::{Codec, Codecs, CompressionError, Head, Level};
use crate::wal::{SegmentId, WalFileName, WalKind};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Segments per log id assumed when the segment size is unknown (Barman's peek).
const UNKNOWN_SIZE_SEGS_PER_LOG: u32 = 0x7FFFF;

#[derive(Debug, thiserror::Error)]
pub enum GetWalError {
    #[error("'{0}' is not a valid wal file name")]
    BadName(String),
    #[error("WAL file '{name}' not found in server '{server}'")]
    NotFound { name: String, server: String },
    #[error("Unable to open '{path}' file: {source}")]
    Output { path: String, source: io::Error },
    #[error("WAL file '{0}' is encrypted (gpg); this version cannot decrypt it")]
    Encrypted(String),
    #[error("Error decompressing WAL: {0}")]
    Decompress(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl GetWalError {
    /// Barman's exit codes: 3 for a bad name or destination, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            GetWalError::BadName(_) | GetWalError::Output { .. } => 3,
            _ => 1,
        }
    }
}

/// A WAL file found for delivery.
pub struct Found {
    pub path: PathBuf,
    file: File,
    /// Its compression, by magic bytes (none for a `.partial`).
    pub stored: Option<Codec>,
    encrypted: bool,
    partial_file: bool,
}

/// How to deliver the file.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delivery {
    /// Recompress the output (`--gzip` / `--bzip2`).
    pub compress: Option<Codec>,
    /// Send the bytes as stored (`--keep-compression`).
    pub keep_compression: bool,
    /// Also look for `.partial` files (`--partial`).
    pub partial: bool,
}

pub struct WalSource<'a> {
    pub layout: &'a ServerLayout,
    pub codecs: &'a Codecs,
    /// Used when a `custom_decompression_filter` is configured.
    pub custom_decompression: bool,
}

impl WalSource<'_> {
    /// Barman's search order; the archive is tried again last to cover a file the
    /// archiver moved while we looked.
    pub fn possible_paths(&self, name: &WalFileName, partial: bool) -> Vec<PathBuf> {
        let l = self.layout;
        let archive = l.wal_path(name);
        let incoming = l.incoming_dir.join(name.as_str());
        let streaming = l.streaming_dir.join(name.as_str());
        let with_partial = |p: &Path| {
            let mut s = p.as_os_str().to_os_string();
            s.push(".partial");
            PathBuf::from(s)
        };
        let mut v = vec![archive.clone(), incoming.clone(), streaming.clone()];
        if partial {
            v.push(with_partial(&streaming));
            v.push(streaming);
            v.push(with_partial(&archive));
            v.push(with_partial(&incoming));
        }
        v.push(archive);
        v
    }

    fn exists_anywhere(&self, name: &WalFileName) -> bool {
        self.possible_paths(name, false).iter().any(|p| p.exists())
    }

    /// `--peek N`: up to N names from `name` on that exist, as Barman lists them.
    pub fn peek(&self, name: &WalFileName, n: u32) -> Vec<String> {
        let mut out = Vec::new();
        let WalKind::Segment(start) = name.kind() else {
            if self.exists_anywhere(name) {
                out.push(name.to_string());
            }
            return out;
        };
        let mut cur = start;
        while (out.len() as u32) < n {
            let w = WalFileName::segment(cur);
            if self.exists_anywhere(&w) {
                out.push(w.to_string());
                cur = if cur.seg >= UNKNOWN_SIZE_SEGS_PER_LOG {
                    SegmentId { log: cur.log.wrapping_add(1), seg: 0, ..cur }
                } else {
                    SegmentId { seg: cur.seg + 1, ..cur }
                };
                continue;
            }
            // Past the last segment of a log id comes the next log id; such a
            // boundary is at a power of two whatever the segment size.
            if !cur.seg.is_power_of_two() {
                break;
            }
            cur = SegmentId { log: cur.log.wrapping_add(1), seg: 0, ..cur };
        }
        out
    }

    /// Opens the first existing candidate; the path found and the open file.
    fn open(&self, name: &WalFileName, partial: bool) -> Option<(PathBuf, File)> {
        for p in self.possible_paths(name, partial) {
            match File::open(&p) {
                Ok(f) => return Some((p, f)),
                // Vanished or absent: the search goes on.
                Err(_) => continue,
            }
        }
        None
    }

    /// Finds `name`: the path, the open file and how it is stored.
    pub fn find(&self, name: &WalFileName, partial: bool) -> Result<Found, GetWalError> {
        let (path, mut file) = self
            .open(name, partial)
            .ok_or_else(|| GetWalError::NotFound { name: name.to_string(), server: self.layout.server.clone() })?;
        let sent_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let head = Head::read(&mut file)?;
        file.seek(SeekFrom::Start(0))?;
        // A .partial is still being written by the streamer: never transformed.
        let partial_file = sent_name.ends_with(".partial");
        let stored = if partial_file { None } else { self.codecs.identify(head.bytes()) };
        Ok(Found { path, file, stored, encrypted: !partial_file && detect_gpg(head.bytes()), partial_file })
    }

    /// Copies the file found for `name` into `out`, transformed as requested.
    /// Returns the path that was sent.
    pub fn send<W: Write>(&self, name: &WalFileName, how: Delivery, out: &mut W) -> Result<PathBuf, GetWalError> {
        let found = self.find(name, how.partial)?;
        let path = found.path.clone();
        self.deliver(found, how, out)?;
        Ok(path)
    }

    /// Sends a found file. Untransformed bytes go by `io::copy` between the file and
    /// `out`, which the kernel does itself when `out` is a file or stdout.
    pub fn deliver<W: Write>(&self, f: Found, how: Delivery, out: &mut W) -> Result<(), GetWalError> {
        let Found { path, mut file, stored, encrypted, partial_file } = f;
        if encrypted && !how.keep_compression {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            return Err(GetWalError::Encrypted(name));
        }
        let same = stored.map(Codec::name) == how.compress.map(Codec::name);
        if partial_file || how.keep_compression || same {
            io::copy(&mut file, out)?;
            return Ok(());
        }
        let mut buffered = io::BufWriter::with_capacity(1 << 20, out);
        match (stored, how.compress) {
            (None, None) => {
                io::copy(&mut file, buffered.get_mut())?;
            }
            (None, Some(c)) => self.compress(c, &mut file, &mut buffered)?,
            (Some(s), None) => self.decompress(s, &path, &mut file, &mut buffered)?,
            (Some(s), Some(c)) => {
                let mut plain = Vec::new();
                self.decompress(s, &path, &mut file, &mut plain)?;
                self.compress(c, &mut &plain[..], &mut buffered)?;
            }
        }
        buffered.flush()?;
        Ok(())
    }

    fn compress(&self, c: Codec, src: &mut (dyn Read + Send), out: &mut dyn Write) -> Result<(), GetWalError> {
        self.codecs.compress(c, Level::Medium, src, out).map_err(|e| match e {
            CompressionError::Io(io) => GetWalError::Io(io),
            other => GetWalError::Decompress(other.to_string()),
        })
    }

    fn decompress(
        &self,
        c: Codec,
        path: &Path,
        src: &mut (dyn Read + Send),
        out: &mut dyn Write,
    ) -> Result<(), GetWalError> {
        // Barman tries a configured custom filter first, then the codec the magic names.
        if self.custom_decompression && c != Codec::Custom {
            let mut buf = Vec::new();
            if self.codecs.decompress(Codec::Custom, &mut File::open(path)?, &mut buf).is_ok() {
                out.write_all(&buf)?;
                return Ok(());
            }
        }
        self.codecs.decompress(c, src, out).map_err(|e| GetWalError::Decompress(e.to_string()))
    }

    /// `--bundle N`: the requested segment and the next ones that exist (as
    /// `--peek` finds them) in one tar stream with a SHA256SUMS member; members
    /// compressed with a codec that has magic bytes travel as stored. The first
    /// member is always the requested file.
    pub fn send_bundle(
        &self,
        name: &WalFileName,
        n: u32,
        how: Delivery,
        out: &mut dyn Write,
    ) -> Result<Vec<String>, GetWalError> {
        let mut names = vec![name.to_string()];
        if name.is_segment() && n > 1 {
            names.extend(self.peek(name, n).into_iter().filter(|p| p != name.as_str()));
            names.truncate(n as usize);
        }
        let mut w = TarWriter::new(BufWriter::with_capacity(1 << 20, out), SumAlgo::Sha256);
        let mut sent = Vec::new();
        for (i, member) in names.iter().enumerate() {
            let Ok(wal) = member.parse::<WalFileName>() else { continue };
            let mut body = Vec::new();
            let partial = how.partial && i == 0;
            let sent_file = self.find(&wal, partial).and_then(|f| {
                let path = f.path.clone();
                // Compressed files travel as stored (a fifth of the bytes over ssh) and
                // the client decodes them by their magic bytes; custom-compressed ones,
                // which only our filters can decode, travel plain.
                let as_stored = f.stored.is_some_and(|c| c != Codec::Custom);
                self.deliver(f, Delivery { keep_compression: as_stored, partial, ..how }, &mut body)?;
                Ok(path)
            });
            let path = match sent_file {
                Ok(p) => p,
                // The first file must exist; a later one vanishing only shortens the batch.
                Err(e) if i == 0 => return Err(e),
                Err(_) => continue,
            };
            let mtime = std::fs::metadata(&path).map(|m| mtime_float(&m)).unwrap_or(0.0);
            let info = MemberInfo::anonymous(member.clone(), body.len() as u64, mtime);
            w.append(&info, &mut &body[..])?;
            sent.push(member.clone());
        }
        w.finish()?.flush()?;
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, ServerLayout) {
        let d = tempfile::tempdir().unwrap();
        let l = ServerLayout::under("pg", &d.path().join("pg"), d.path());
        for dir in [&l.wals_dir, &l.incoming_dir, &l.streaming_dir] {
            std::fs::create_dir_all(dir).unwrap();
        }
        (d, l)
    }

    fn put(l: &ServerLayout, where_: &str, name: &str, body: &[u8]) {
        let w: WalFileName = name.parse().unwrap();
        let p = match where_ {
            "archive" => l.wal_path(&w),
            "incoming" => l.incoming_dir.join(name),
            _ => l.streaming_dir.join(name),
        };
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }

    #[test]
    fn search_order_and_partial() {
        let (_d, l) = setup();
        let codecs = Codecs::default();
        let src = WalSource { layout: &l, codecs: &codecs, custom_decompression: false };
        let n: WalFileName = "000000010000000000000005".parse().unwrap();
        put(&l, "streaming", "000000010000000000000005.partial", b"partial");
        let mut out = Vec::new();
        assert!(matches!(src.send(&n, Delivery::default(), &mut out), Err(GetWalError::NotFound { .. })));
        src.send(&n, Delivery { partial: true, ..Default::default() }, &mut out).unwrap();
        assert_eq!(out, b"partial");
        put(&l, "incoming", "000000010000000000000005", b"incoming");
        put(&l, "archive", "000000010000000000000005", b"archive");
        out.clear();
        src.send(&n, Delivery::default(), &mut out).unwrap();
        assert_eq!(out, b"archive");
    }

    #[test]
    fn decompresses_recompresses_or_keeps() {
        let (_d, l) = setup();
        let codecs = Codecs::default();
        let src = WalSource { layout: &l, codecs: &codecs, custom_decompression: false };
        let plain = vec![3u8; 10_000];
        let mut z = Vec::new();
        codecs.compress(Codec::Zstd, Level::Low, &mut &plain[..], &mut z).unwrap();
        put(&l, "archive", "000000010000000000000007", &z);
        let n: WalFileName = "000000010000000000000007".parse().unwrap();
        let mut out = Vec::new();
        src.send(&n, Delivery::default(), &mut out).unwrap();
        assert_eq!(out, plain);
        out.clear();
        src.send(&n, Delivery { keep_compression: true, ..Default::default() }, &mut out).unwrap();
        assert_eq!(out, z);
        out.clear();
        src.send(&n, Delivery { compress: Some(Codec::Gzip), ..Default::default() }, &mut out).unwrap();
        assert_eq!(codecs.identify(&out), Some(Codec::Gzip));
        let mut back = Vec::new();
        codecs.decompress(Codec::Gzip, &mut &out[..], &mut back).unwrap();
        assert_eq!(back, plain);
    }

    #[test]
    fn peek_like_barman() {
        let (_d, l) = setup();
        let codecs = Codecs::default();
        let src = WalSource { layout: &l, codecs: &codecs, custom_decompression: false };
        for s in ["0000000100000000000000FE", "0000000100000000000000FF", "000000010000000100000000"] {
            put(&l, "archive", s, b"x");
        }
        put(&l, "incoming", "000000010000000100000001", b"x");
        put(&l, "streaming", "000000010000000100000002", b"x");
        let got = src.peek(&"0000000100000000000000FE".parse().unwrap(), 10);
        assert_eq!(
            got,
            [
                "0000000100000000000000FE",
                "0000000100000000000000FF",
                "000000010000000100000000",
                "000000010000000100000001",
                "000000010000000100000002"
            ]
        );
        assert_eq!(src.peek(&"0000000100000000000000FE".parse().unwrap(), 2).len(), 2);
        assert!(src.peek(&"000000010000000000000011".parse().unwrap(), 5).is_empty());
        // A missing segment at a power of two jumps to the next log id, as Barman does.
        assert_eq!(src.peek(&"000000010000000000000010".parse().unwrap(), 1), ["000000010000000100000000"]);
    }

    #[test]
    fn bundle_holds_the_batch() {
        let (_d, l) = setup();
        let codecs = Codecs::default();
        let src = WalSource { layout: &l, codecs: &codecs, custom_decompression: false };
        for (i, s) in
            ["000000010000000000000010", "000000010000000000000011", "000000010000000000000012"].iter().enumerate()
        {
            let mut gz = Vec::new();
            codecs.compress(Codec::Gzip, Level::Low, &mut &vec![i as u8; 100][..], &mut gz).unwrap();
            put(&l, "archive", s, &gz);
        }
        let mut out = Vec::new();
        let sent =
            src.send_bundle(&"000000010000000000000010".parse().unwrap(), 2, Delivery::default(), &mut out).unwrap();
        assert_eq!(sent, ["000000010000000000000010", "000000010000000000000011"]);
        let mut a = tar::Archive::new(&out[..]);
        let mut bodies = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let mut b = Vec::new();
            e.read_to_end(&mut b).unwrap();
            bodies.push((e.path().unwrap().to_string_lossy().into_owned(), b));
        }
        // Members travel as stored: gzip, decoded by the receiver.
        for (i, (_, body)) in bodies[..2].iter().enumerate() {
            assert_eq!(codecs.identify(body), Some(Codec::Gzip));
            let mut plain = Vec::new();
            codecs.decompress(Codec::Gzip, &mut &body[..], &mut plain).unwrap();
            assert_eq!(plain, vec![i as u8; 100]);
        }
        assert_eq!(bodies[2].0, "SHA256SUMS");
        let mut out = Vec::new();
        assert!(
            src.send_bundle(&"000000010000000000000020".parse().unwrap(), 4, Delivery::default(), &mut out).is_err()
        );
    }
}
