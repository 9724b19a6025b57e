//! Where the archives of a `BASE_BACKUP` go, in Barman's layout for the
//! postgres method: plain (`data/` plus `<oid>/` per tablespace, the links in
//! `pg_tblspc` pointing at them) or tar (`data/base.tar[.ext]`,
//! `data/<oid>.tar[.ext]`), compressed by the server or here. Each archive is
//! written by its own thread fed through a bounded channel, so receiving and
//! writing (or compressing) overlap, and memory stays bounded.

use super::extract::{ExtractError, extract_tar_relinked};
use crate::catalog::durable::fsync_dir;
use bytes::{Buf, Bytes};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

/// A base backup compression algorithm (`backup_compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Gzip,
    Lz4,
    Zstd,
}

impl Algorithm {
    /// The name PostgreSQL and Barman use.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Gzip => "gzip",
            Algorithm::Lz4 => "lz4",
            Algorithm::Zstd => "zstd",
        }
    }
    /// The suffix pg_basebackup gives compressed archives.
    pub fn suffix(self) -> &'static str {
        match self {
            Algorithm::Gzip => ".gz",
            Algorithm::Lz4 => ".lz4",
            Algorithm::Zstd => ".zst",
        }
    }
    /// The algorithm of a backup.info `compression` value (`none`: no algorithm).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        match name {
            "gzip" => Some(Algorithm::Gzip),
            "lz4" => Some(Algorithm::Lz4),
            "zstd" => Some(Algorithm::Zstd),
            _ => None,
        }
    }
    /// `r` decompressed with `algo`, or as it is without one.
    pub fn decoded<'a>(algo: Option<Algorithm>, r: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
        match algo {
            None => Ok(Box::new(r)),
            Some(a) => a.decoder(r),
        }
    }
    fn decoder<'a>(self, r: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Algorithm::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
            Algorithm::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(r)),
            Algorithm::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
        })
    }
}

/// Compression done here, on the received tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCompression {
    pub algorithm: Algorithm,
    /// `None`: the algorithm's default (gzip 6, zstd 3; lz4 has one level here).
    pub level: Option<i32>,
    /// zstd worker threads (0 or `None`: compress in the writing thread).
    pub workers: Option<u32>,
}

/// How the backup is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSpec {
    /// `base/<id>`.
    pub backup_dir: PathBuf,
    /// Tar archives rather than a plain copy.
    pub tar: bool,
    /// The algorithm the server compresses with (`COMPRESSION`), if any.
    pub server: Option<Algorithm>,
    pub client: Option<ClientCompression>,
    /// `(oid, location)` of every tablespace, for the plain layout's links.
    pub tablespaces: Vec<(u32, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Extract(#[from] ExtractError),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("the server sent an archive named {0:?}, which is not a base backup archive")]
    BadName(String),
    #[error("the writer of {0} stopped unexpectedly")]
    WriterLost(String),
    #[error("could not find backup_label in {0}")]
    NoLabel(String),
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.display().to_string(), source }
}

impl StoreSpec {
    /// `base/<id>/data`.
    pub fn data_dir(&self) -> PathBuf {
        self.backup_dir.join("data")
    }

    /// Every directory the backup writes into: data/ and, when plain, one per tablespace.
    pub fn directories(&self) -> Vec<PathBuf> {
        let mut v = vec![self.data_dir()];
        if !self.tar {
            v.extend(self.tablespaces.iter().map(|(oid, _)| self.backup_dir.join(oid.to_string())));
        }
        v
    }

    /// Removes what an earlier attempt wrote and makes the directories again, mode 0700.
    pub fn prepare(&self) -> Result<(), StoreError> {
        use std::os::unix::fs::PermissionsExt;
        for d in self.directories() {
            match fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_at(&d)(e)),
            }
            fs::create_dir_all(&d).map_err(io_at(&d))?;
            fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).map_err(io_at(&d))?;
        }
        fsync_dir(&self.backup_dir).map_err(io_at(&self.backup_dir))?;
        Ok(())
    }

    /// The `BASE_BACKUP` option `TABLESPACE_MAP`: pg_basebackup asks it for tar
    /// output only; a plain copy keeps the links in pg_tblspc instead.
    pub fn wants_tablespace_map(&self) -> bool {
        self.tar
    }

    /// The file the main archive is stored in (tar only).
    pub fn base_archive(&self) -> PathBuf {
        self.data_dir().join(format!("base.tar{}", self.stored_suffix()))
    }

    fn stored_suffix(&self) -> &'static str {
        match (self.server, self.client) {
            (Some(a), _) => a.suffix(),
            (None, Some(c)) => c.algorithm.suffix(),
            (None, None) => "",
        }
    }

    /// Starts writing the archive the server announced (`base.tar[.ext]`, `<oid>.tar[.ext]`).
    pub fn open_archive(&self, name: &str) -> Result<ArchiveWriter, StoreError> {
        let stem = self.server.map_or(name, |a| name.strip_suffix(a.suffix()).unwrap_or(name));
        let oid = match stem.strip_suffix(".tar") {
            Some("base") => None,
            Some(n) => Some(n.parse::<u32>().map_err(|_| StoreError::BadName(name.to_string()))?),
            None => return Err(StoreError::BadName(name.to_string())),
        };
        if self.tar {
            let path = self.data_dir().join(format!("{stem}{}", self.stored_suffix()));
            let client = if self.server.is_some() { None } else { self.client };
            Ok(spawn(path.display().to_string(), move |rx| write_tar(rx, &path, client)))
        } else {
            let dest = match oid {
                None => self.data_dir(),
                Some(oid) => self.backup_dir.join(oid.to_string()),
            };
            let links: Vec<(PathBuf, PathBuf)> = self
                .tablespaces
                .iter()
                .map(|(oid, loc)| (PathBuf::from(loc), self.backup_dir.join(oid.to_string())))
                .collect();
            let server = self.server;
            Ok(spawn(dest.display().to_string(), move |rx| {
                let input = Algorithm::decoded(server, ChanReader::new(rx)).map_err(io_at(&dest))?;
                let relink = |target: &Path| links.iter().find(|(from, _)| from == target).map(|(_, to)| to.clone());
                Ok(extract_tar_relinked(input, &dest, &relink)?.bytes)
            }))
        }
    }

    /// Starts writing `data/backup_manifest`.
    pub fn open_manifest(&self) -> ArchiveWriter {
        let path = self.data_dir().join("backup_manifest");
        spawn(path.display().to_string(), move |rx| write_tar(rx, &path, None))
    }

    /// The backup_label the server put first in the main archive.
    pub fn read_label(&self) -> Result<String, StoreError> {
        if !self.tar {
            let p = self.data_dir().join("backup_label");
            return fs::read_to_string(&p).map_err(io_at(&p));
        }
        let p = self.base_archive();
        let f = File::open(&p).map_err(io_at(&p))?;
        let algo = self.server.or(self.client.map(|c| c.algorithm));
        let input = Algorithm::decoded(algo, io::BufReader::new(f)).map_err(io_at(&p))?;
        let mut archive = tar::Archive::new(input);
        for entry in archive.entries().map_err(io_at(&p))? {
            let mut entry = entry.map_err(io_at(&p))?;
            if entry.path().map_err(io_at(&p))?.as_os_str() == "backup_label" {
                let mut s = String::new();
                entry.read_to_string(&mut s).map_err(io_at(&p))?;
                return Ok(s);
            }
        }
        Err(StoreError::NoLabel(p.display().to_string()))
    }
}

/// One archive being written by its thread.
pub struct ArchiveWriter {
    name: String,
    tx: Option<mpsc::Sender<Bytes>>,
    thread: std::thread::JoinHandle<Result<u64, StoreError>>,
}

/// Chunks in flight per archive: the server sends up to 32 kB per message, so
/// this bounds the buffer to a few MB.
const QUEUE: usize = 128;

fn spawn(
    name: String,
    work: impl FnOnce(mpsc::Receiver<Bytes>) -> Result<u64, StoreError> + Send + 'static,
) -> ArchiveWriter {
    let (tx, rx) = mpsc::channel(QUEUE);
    let thread = std::thread::spawn(move || work(rx));
    ArchiveWriter { name, tx: Some(tx), thread }
}

impl ArchiveWriter {
    /// Queues bytes; an error means the writer stopped, and [`Self::finish`] says why.
    pub async fn send(&mut self, data: Bytes) -> Result<(), ()> {
        match &self.tx {
            Some(tx) => tx.send(data).await.map_err(|_| ()),
            None => Err(()),
        }
    }

    /// Ends the archive and waits until it is written and fsynced; the bytes written.
    pub fn finish(mut self) -> Result<u64, StoreError> {
        self.tx = None;
        match self.thread.join() {
            Ok(r) => r,
            Err(_) => Err(StoreError::WriterLost(self.name)),
        }
    }
}

/// A `Read` over the chunks of a channel; end of file when the sender is gone.
struct ChanReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl ChanReader {
    fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        ChanReader { rx, cur: Bytes::new() }
    }
}

impl Read for ChanReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur.advance(n);
        Ok(n)
    }
}

/// Writes a stream to `path` as it comes, compressed if asked; fsynced with its directory.
fn write_tar(mut rx: mpsc::Receiver<Bytes>, path: &Path, client: Option<ClientCompression>) -> Result<u64, StoreError> {
    let file = File::create(path).map_err(io_at(path))?;
    let mut out: Box<dyn FinishWrite> = match client {
        None => Box::new(BufWriter::with_capacity(1 << 20, file)),
        Some(c) => encoder(c, file).map_err(io_at(path))?,
    };
    let mut n = 0u64;
    while let Some(chunk) = rx.blocking_recv() {
        n += chunk.len() as u64;
        out.write_all(&chunk).map_err(io_at(path))?;
    }
    let file = out.finish_file().map_err(io_at(path))?;
    file.sync_all().map_err(io_at(path))?;
    if let Some(dir) = path.parent() {
        fsync_dir(dir).map_err(io_at(dir))?;
    }
    Ok(n)
}

/// A writer that ends its stream (trailer, flush) and gives the file back.
trait FinishWrite: Write + Send {
    fn finish_file(self: Box<Self>) -> io::Result<File>;
}

impl FinishWrite for BufWriter<File> {
    fn finish_file(self: Box<Self>) -> io::Result<File> {
        self.into_inner().map_err(|e| e.into_error())
    }
}

impl FinishWrite for flate2::write::GzEncoder<BufWriter<File>> {
    fn finish_file(self: Box<Self>) -> io::Result<File> {
        (*self).finish()?.into_inner().map_err(|e| e.into_error())
    }
}

impl FinishWrite for lz4_flex::frame::FrameEncoder<BufWriter<File>> {
    fn finish_file(self: Box<Self>) -> io::Result<File> {
        (*self).finish().map_err(io::Error::other)?.into_inner().map_err(|e| e.into_error())
    }
}

impl FinishWrite for zstd::stream::write::Encoder<'static, BufWriter<File>> {
    fn finish_file(self: Box<Self>) -> io::Result<File> {
        (*self).finish()?.into_inner().map_err(|e| e.into_error())
    }
}

fn encoder(c: ClientCompression, file: File) -> io::Result<Box<dyn FinishWrite>> {
    let w = BufWriter::with_capacity(1 << 20, file);
    Ok(match c.algorithm {
        Algorithm::Gzip => {
            let level = c.level.map_or(6, |l| l.clamp(1, 9)) as u32;
            Box::new(flate2::write::GzEncoder::new(w, flate2::Compression::new(level)))
        }
        Algorithm::Lz4 => {
            let mut info = lz4_flex::frame::FrameInfo::new();
            info.block_size = lz4_flex::frame::BlockSize::Max4MB;
            Box::new(lz4_flex::frame::FrameEncoder::with_frame_info(info, w))
        }
        Algorithm::Zstd => {
            let mut e = zstd::stream::write::Encoder::new(w, c.level.unwrap_or(3))?;
            if let Some(n) = c.workers.filter(|n| *n > 0) {
                e.multithread(n)?;
            }
            Box::new(e)
        }
    })
}
