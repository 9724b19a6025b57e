//! The copy engine: files from this host into directories of another, as tar streams fed
//! into `tar -x` over SSH. The directory structure goes first on one stream; then files
//! and archives, largest first, are shared among `jobs` streams, each on its own connection.
//! A shared rate limit caps the total; zlib on the wire when asked.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

pub mod pull;

use super::chunks::ChunkSender;
use super::lock;
use super::ssh::{Remote, Session, SshError};

/// Bytes handed to the connection at a time.
const CHUNK: usize = 256 * 1024;
/// Chunks queued between a stream's tar builder and its connection.
const QUEUE: usize = 16;
/// GNU tar on the far side: keep modes, own the files as the login user, read stdin, paths from /.
const UNTAR: &str = "tar -x -p --no-same-owner -f - -C /";

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("reading {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("tar on {who} failed: {why}")]
    Untar { who: String, why: String },
    #[error("the copy stream stopped: {0}")]
    Stream(String),
}

/// What a unit produces when its turn comes (a WAL file decompressed, a generated file).
pub type Producer = Box<dyn FnOnce() -> io::Result<Vec<u8>> + Send>;
/// Opens an archive's tar stream (decompressing it) when its turn comes, on the stream's thread.
pub type ArchiveOpener = Box<dyn FnOnce() -> io::Result<Box<dyn Read>> + Send>;
/// Which members of an archive go across (by their path inside the archive).
pub type MemberFilter = Arc<dyn Fn(&Path) -> bool + Send + Sync>;

/// One thing to create on the far side. Destinations are absolute paths there.
pub enum Unit {
    Dir {
        dest: PathBuf,
        mode: u32,
    },
    Symlink {
        dest: PathBuf,
        target: PathBuf,
    },
    /// A local file, with its mode and mtime.
    File {
        dest: PathBuf,
        source: PathBuf,
        size: u64,
    },
    /// Contents made on demand; `size` is a guess for scheduling.
    Made {
        dest: PathBuf,
        mode: u32,
        size: u64,
        produce: Producer,
    },
    /// A tar archive unpacked under `dest`, members passing `keep`.
    Archive {
        dest: PathBuf,
        size: u64,
        open: ArchiveOpener,
        keep: MemberFilter,
    },
}

impl Unit {
    fn weight(&self) -> u64 {
        match self {
            Unit::File { size, .. } | Unit::Made { size, .. } | Unit::Archive { size, .. } => *size,
            _ => 0,
        }
    }

    fn is_structure(&self) -> bool {
        matches!(self, Unit::Dir { .. } | Unit::Symlink { .. })
    }
}

/// How a copy runs.
#[derive(Clone, Default)]
pub struct CopyOptions {
    /// Parallel streams (at least one).
    pub jobs: usize,
    /// Total bytes per second over all streams; None for no limit.
    pub bandwidth: Option<u64>,
    /// Bytes sent so far, for a progress display.
    pub progress: Option<Arc<AtomicU64>>,
}

/// Sends every unit to `remote`; returns once every remote `tar` exited cleanly.
pub fn push(remote: &Remote, units: Vec<Unit>, opts: &CopyOptions) -> Result<(), CopyError> {
    let (structure, mut heavy): (Vec<Unit>, Vec<Unit>) = units.into_iter().partition(Unit::is_structure);
    heavy.sort_by_key(|u| std::cmp::Reverse(u.weight()));
    let limit = opts.bandwidth.filter(|b| *b > 0).map(|b| Arc::new(RateLimit::new(b)));
    let sent = opts.progress.clone().unwrap_or_default();
    remote.runtime().block_on(async {
        // Directories and links first, so the parallel streams find their parents.
        if !structure.is_empty() {
            let queue = Arc::new(Mutex::new(VecDeque::from(structure)));
            stream(remote.control().clone(), queue, limit.clone(), sent.clone()).await?;
        }
        if heavy.is_empty() {
            return Ok(());
        }
        let jobs = opts.jobs.max(1).min(heavy.len());
        let queue = Arc::new(Mutex::new(VecDeque::from(heavy)));
        // Every connection first: a failure to open one must not leave streams running.
        let mut sessions = vec![remote.control().clone()];
        for _ in 1..jobs {
            sessions.push(remote.open().await?);
        }
        let mut workers = Vec::new();
        for session in sessions {
            workers.push(tokio::spawn(stream(session, queue.clone(), limit.clone(), sent.clone())));
        }
        let mut first_error = None;
        for w in workers {
            let res = w.await.map_err(|e| CopyError::Stream(e.to_string())).and_then(|r| r);
            if let Err(e) = res {
                // The others stop at their next unit: the queue is emptied.
                first_error.get_or_insert(e);
                lock(&queue).clear();
            }
        }
        first_error.map_or(Ok(()), Err)
    })
}

/// One stream: a builder thread turns units from the queue into tar, this task sends it.
async fn stream(
    session: Session,
    queue: Arc<Mutex<VecDeque<Unit>>>,
    limit: Option<Arc<RateLimit>>,
    sent: Arc<AtomicU64>,
) -> Result<(), CopyError> {
    let (input, collector) = session.start(UNTAR).await?;
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    let builder = std::thread::Builder::new()
        .name("tar-stream".into())
        .spawn(move || build(queue, ChunkSender::new(tx, CHUNK, Bytes::from)))
        .map_err(|e| CopyError::Stream(format!("starting a stream thread: {e}")))?;
    let mut send_error = None;
    while let Some(chunk) = rx.recv().await {
        if let Some(l) = &limit {
            l.wait(chunk.len() as u64).await;
        }
        let n = chunk.len() as u64;
        if let Err(e) = input.send(chunk).await {
            send_error = Some(e);
            break;
        }
        sent.fetch_add(n, Ordering::Relaxed);
    }
    // Dropping the receiver stops the builder at its next chunk.
    drop(rx);
    let built = tokio::task::spawn_blocking(move || builder.join())
        .await
        .map_err(|e| CopyError::Stream(e.to_string()))?
        .map_err(|_| CopyError::Stream("a stream thread panicked".into()))?;
    let closed = input.finish().await;
    let out = collector.finish().await?;
    // The first cause wins: a local read error explains the remote tar's complaint, which
    // explains a refused send, which explains the builder's broken pipe.
    if let Err(e @ CopyError::Read { .. }) = built {
        return Err(e);
    }
    if !out.success() {
        return Err(untar_failed(&session, &out));
    }
    if let Some(e) = send_error {
        return Err(e.into());
    }
    built?;
    closed?;
    Ok(())
}

fn untar_failed(session: &Session, out: &super::ssh::Output) -> CopyError {
    CopyError::Untar { who: session.who().to_string(), why: out.why() }
}

/// The builder thread: units until the queue is empty, then the end-of-archive blocks.
fn build(queue: Arc<Mutex<VecDeque<Unit>>>, out: ChunkSender<Bytes>) -> Result<(), CopyError> {
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Complete);
    tar.follow_symlinks(false);
    loop {
        let next = lock(&queue).pop_front();
        let Some(unit) = next else { break };
        append(&mut tar, unit)?;
    }
    let mut out = tar.into_inner().map_err(stopped)?;
    out.flush().map_err(stopped)
}

fn stopped(e: io::Error) -> CopyError {
    CopyError::Stream(e.to_string())
}

/// A member name: the destination without its leading '/' (the far side extracts at /).
fn member(dest: &Path) -> PathBuf {
    dest.strip_prefix("/").unwrap_or(dest).to_path_buf()
}

fn append(tar: &mut tar::Builder<ChunkSender<Bytes>>, unit: Unit) -> Result<(), CopyError> {
    let read_err = |p: &Path| {
        let path = p.display().to_string();
        move |source| CopyError::Read { path, source }
    };
    match unit {
        Unit::Dir { dest, mode } => {
            let mut h = header(tar::EntryType::Directory, mode, 0);
            tar.append_data(&mut h, member(&dest), io::empty()).map_err(stopped)?;
        }
        Unit::Symlink { dest, target } => {
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            tar.append_link(&mut h, member(&dest), &target).map_err(stopped)?;
        }
        Unit::File { dest, source, .. } => {
            let mut f = fs::File::open(&source).map_err(read_err(&source))?;
            let meta = f.metadata().map_err(read_err(&source))?;
            let mut h = tar::Header::new_gnu();
            h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            // The size read now is the size sent: a file that changes under us fails loudly.
            let mut limited = (&mut f).take(meta.len());
            tar.append_data(&mut h, member(&dest), &mut limited).map_err(|e| sent_or_read(e, &source))?;
        }
        Unit::Made { dest, mode, produce, .. } => {
            let data = produce().map_err(read_err(&dest))?;
            let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
            tar.append_data(&mut h, member(&dest), data.as_slice()).map_err(stopped)?;
        }
        Unit::Archive { dest, open, keep, .. } => {
            let input = open().map_err(read_err(&dest))?;
            let mut archive = tar::Archive::new(input);
            let entries = archive.entries().map_err(read_err(&dest))?;
            for entry in entries {
                let mut entry = entry.map_err(read_err(&dest))?;
                let kind = entry.header().entry_type();
                if matches!(kind, tar::EntryType::XHeader | tar::EntryType::XGlobalHeader) {
                    continue;
                }
                let rel = entry.path().map_err(read_err(&dest))?.into_owned();
                if !keep(&rel) {
                    continue;
                }
                let name = member(&dest.join(&rel));
                let mut h = entry.header().clone();
                if kind.is_symlink() || kind.is_hard_link() {
                    let target = entry.link_name().map_err(read_err(&dest))?.unwrap_or_default().into_owned();
                    let target = if kind.is_hard_link() { member(&dest.join(target)) } else { target };
                    tar.append_link(&mut h, name, target).map_err(stopped)?;
                } else {
                    tar.append_data(&mut h, name, &mut entry).map_err(|e| sent_or_read(e, &dest))?;
                    if kind.is_file() {}
                }
            }
        }
    }
    Ok(())
}

/// Errors while appending come from the source (a read) or the stream (it stopped).
fn sent_or_read(e: io::Error, source: &Path) -> CopyError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        stopped(e)
    } else {
        CopyError::Read { path: source.display().to_string(), source: e }
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    h
}

/// A shared budget of bytes per second, measured from the first byte (the copy engine's
/// streams and the sync's transfers share one per run).
pub struct RateLimit {
    per_second: u64,
    state: Mutex<Option<(Instant, u64)>>,
}

impl RateLimit {
    pub fn new(per_second: u64) -> RateLimit {
        RateLimit { per_second, state: Mutex::new(None) }
    }

    /// The rate, in bytes per second.
    pub fn per_second(&self) -> u64 {
        self.per_second
    }

    /// Takes `n` bytes of the budget, sleeping until they are due.
    pub async fn wait(&self, n: u64) {
        let due = {
            let mut s = lock(&self.state);
            let (start, total) = s.get_or_insert_with(|| (Instant::now(), 0));
            *total += n;
            *start + Duration::from_secs_f64(*total as f64 / self.per_second as f64)
        };
        tokio::time::sleep_until(due.into()).await;
    }
}
