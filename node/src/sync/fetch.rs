//! One file from a peer — a cluster node's Sync service, or a Barman host over SFTP —
//! resumable and checked end to end: the bytes go to
//! a part file beside the final name (hidden from every scan), are checked against the size
//! the peer listed and the SHA-256 of the whole file it sends last, fsynced with the peer's
//! mtime and our mode, and hard-linked under the final name (never over an existing file)
//! before the directory is fsynced. A cut leaves the part file: the next try asks only for
//! the rest. A file already under its final name is checked by its checksum alone, unless
//! the destination is the sync's own (`Want::owned`).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use barman_proto::v1::FetchRequest;
use barman_proto::v1::sync_client::SyncClient;
use sha2::{Digest, Sha256};
use std::os::unix::fs::OpenOptionsExt;
use tonic::transport::Channel;

use super::{SyncError, io_err};
use crate::catalog::durable;
use crate::transport::copy::RateLimit;

/// Where the bytes come from.
#[derive(Clone)]
pub enum Source {
    /// A cluster peer's Sync service: one tonic channel, cloned per transfer.
    Grpc(SyncClient<Channel>),
    /// A Barman host's files over SFTP (one session; its requests are multiplexed).
    Sftp(Arc<russh_sftp::client::SftpSession>),
}

/// How the source names the file.
#[derive(Clone)]
pub enum Origin {
    /// The request (its offset is set at each try).
    Grpc(FetchRequest),
    /// An absolute path on the Barman host, and the SHA-256 its `sha256sum` gave.
    Sftp { path: String, sha256: Vec<u8> },
}

/// A file to fetch.
pub struct Want {
    /// How errors name it (`000000010000000000000002`, `data/base/1/1259 of backup ...`).
    pub what: String,
    pub origin: Origin,
    pub dst: PathBuf,
    pub part: PathBuf,
    /// What the peer listed.
    pub size: u64,
    pub mtime: f64,
    /// Permission bits given to the file.
    pub mode: u32,
    /// The destination belongs to this sync (a backup being copied, not yet DONE): a file
    /// already there with the listed size arrived checked in an earlier try and counts as
    /// fetched; one of another size is fetched again.
    pub owned: bool,
}

/// What one transfer did.
pub struct Fetched {
    /// Bytes received over the wire.
    pub bytes: u64,
    /// The file was already complete under its final name (a sync cut after the rename).
    pub on_disk: bool,
}

/// SHA-256 and length of what `path` holds.
pub fn hash_file(path: &Path) -> std::io::Result<(Sha256, u64)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            return Ok((h, n));
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
}

/// A file's bytes from some offset on, then its size and SHA-256 as the source gives them.
enum Chunks {
    Grpc(tonic::Streaming<barman_proto::v1::FileChunk>),
    Sftp { file: russh_sftp::client::fs::File, buf: Vec<u8>, at: u64, sha256: Vec<u8> },
}

/// One piece of a file; the last one (data possibly empty) carries the size and checksum.
struct Chunk {
    data: Vec<u8>,
    end: Option<(u64, Vec<u8>)>,
}

enum Cut {
    /// The transfer broke: what arrived is kept for the next try.
    Broken(SyncError),
    /// The source ended without the checksum.
    Unended,
}

impl Chunks {
    async fn open(source: &Source, peer: &str, want: &Want, offset: u64, max_rate: u64) -> Result<Chunks, SyncError> {
        let name = &want.what;
        match (source, &want.origin) {
            (Source::Grpc(client), Origin::Grpc(request)) => {
                let request = FetchRequest { offset, max_rate, ..request.clone() };
                let stream = client
                    .clone()
                    .fetch(request)
                    .await
                    .map_err(SyncError::rpc(peer, format!("fetching {name}")))?
                    .into_inner();
                Ok(Chunks::Grpc(stream))
            }
            (Source::Sftp(sftp), Origin::Sftp { path, sha256 }) => {
                use tokio::io::AsyncSeekExt;
                let failed = |e: &dyn std::fmt::Display| SyncError::Rpc {
                    peer: peer.into(),
                    what: format!("reading {path}"),
                    status: e.to_string(),
                };
                let mut file = sftp.open(path.as_str()).await.map_err(|e| failed(&e))?;
                file.seek(std::io::SeekFrom::Start(offset)).await.map_err(|e| failed(&e))?;
                Ok(Chunks::Sftp { file, buf: vec![0; 256 * 1024], at: offset, sha256: sha256.clone() })
            }
            _ => Err(SyncError::Task(format!("{name}: a transfer asked of the wrong kind of source"))),
        }
    }

    async fn next(&mut self, peer: &str, name: &str) -> Result<Chunk, Cut> {
        match self {
            Chunks::Grpc(stream) => match stream.message().await {
                Ok(Some(c)) => Ok(Chunk { end: c.last.then_some((c.size, c.sha256)), data: c.data }),
                Ok(None) => Err(Cut::Unended),
                Err(s) => Err(Cut::Broken(SyncError::rpc(peer, format!("fetching {name}"))(s))),
            },
            Chunks::Sftp { file, buf, at, sha256 } => {
                use tokio::io::AsyncReadExt;
                match file.read(buf).await {
                    // The end of the file: its size is where the reads got to; the checksum is
                    // the one sha256sum gave on the host.
                    Ok(0) => Ok(Chunk { data: Vec::new(), end: Some((*at, sha256.clone())) }),
                    Ok(n) => {
                        *at += n as u64;
                        Ok(Chunk { data: buf[..n].to_vec(), end: None })
                    }
                    Err(e) => Err(Cut::Broken(SyncError::Rpc {
                        peer: peer.into(),
                        what: format!("reading {name}"),
                        status: e.to_string(),
                    })),
                }
            }
        }
    }
}

/// What is held of a file before its transfer: the final file (then only its checksum is
/// asked), or the part of an earlier try. None: the final file is the sync's own and whole.
fn held(want: &Want) -> Result<Option<(bool, Sha256, u64)>, SyncError> {
    let (dst, part) = (&want.dst, &want.part);
    if want.owned {
        match fs::symlink_metadata(dst) {
            Ok(m) if m.is_file() && m.len() == want.size => {
                // A part file beside it is what a cut between the link and its removal left.
                durable::remove(part).map_err(io_err(part))?;
                return Ok(None);
            }
            Ok(_) => fs::remove_file(dst).map_err(io_err(dst))?,
            Err(_) => {}
        }
    }
    let on_disk = dst.exists();
    if on_disk {
        durable::remove(part).map_err(io_err(part))?;
        let (h, n) = hash_file(dst).map_err(io_err(dst))?;
        return Ok(Some((true, h, n)));
    }
    match hash_file(part) {
        Ok((h, n)) if n <= want.size => Ok(Some((false, h, n))),
        // Longer than announced: useless, start again.
        Ok(_) => {
            fs::remove_file(part).map_err(io_err(part))?;
            Ok(Some((false, Sha256::new(), 0)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some((false, Sha256::new(), 0))),
        Err(e) => Err(io_err(part)(e)),
    }
}

/// Puts a complete, checked part file under its final name: the peer's mtime, our mode,
/// fsynced, hard-linked (never over a file that appeared meanwhile: another sync,
/// archive-wal), the part removed.
fn publish(want: &Want, peer: &str, f: File, sha256: &[u8]) -> Result<(), SyncError> {
    let (dst, part) = (&want.dst, &want.part);
    let t = super::system_time(want.mtime);
    f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t)).map_err(io_err(part))?;
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(want.mode)).map_err(io_err(part))?;
    f.sync_all().map_err(io_err(part))?;
    drop(f);
    let dir = dst.parent().map(Path::to_path_buf).unwrap_or_default();
    durable::create_dir_all(&dir).map_err(io_err(&dir))?;
    match fs::hard_link(part, dst) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let (h, n) = hash_file(dst).map_err(io_err(dst))?;
            if n != want.size || h.finalize().as_slice() != sha256 {
                return Err(SyncError::Conflict {
                    peer: peer.into(),
                    name: want.what.clone(),
                    ours: n,
                    theirs: want.size,
                });
            }
        }
        Err(e) => return Err(io_err(dst)(e)),
    }
    // The directory is fsynced once for all its files, by fetch_all, before it returns.
    fs::remove_file(part).map_err(io_err(part))
}

/// Appends chunks to a part file and hashes them, in a blocking task.
struct Writer {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    task: tokio::task::JoinHandle<Result<(File, Sha256), SyncError>>,
}

impl Writer {
    fn start(f: File, hasher: Sha256, part: PathBuf) -> Writer {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let task = tokio::task::spawn_blocking(move || {
            let (mut f, mut h) = (f, hasher);
            while let Some(d) = rx.blocking_recv() {
                f.write_all(&d).map_err(io_err(&part))?;
                h.update(&d);
            }
            Ok((f, h))
        });
        Writer { tx, task }
    }

    /// Stops writing and removes the part file: what it held is not to be kept.
    async fn discard(self, part: &Path) {
        let _ = self.finish().await;
        let _ = fs::remove_file(part);
    }

    /// Waits for everything sent to be written; the file and the hash of all it holds.
    async fn finish(self) -> Result<(File, Sha256), SyncError> {
        drop(self.tx);
        self.task.await.map_err(|e| SyncError::Task(e.to_string()))?
    }
}

/// Fetches `want` into place (see the module's comment). The disk work runs off the
/// runtime's threads (an fsync must not hold up the other transfers' network reads). Under
/// a `limit`, a peer is asked to send at `max_rate` (bytes per second): what it would send
/// faster would only wait in buffers here, and be lost if the transfer were cut.
pub async fn fetch(
    source: &Source,
    peer: &str,
    want: Arc<Want>,
    limit: Option<&RateLimit>,
    max_rate: u64,
) -> Result<Fetched, SyncError> {
    let name = want.what.clone();
    let part = want.part.clone();
    let w = want.clone();
    let Some((on_disk, hasher, have)) = super::blocking(move || held(&w)).await? else {
        return Ok(Fetched { bytes: 0, on_disk: true });
    };
    if on_disk && have != want.size {
        return Err(SyncError::Conflict { peer: peer.into(), name, ours: have, theirs: want.size });
    }
    let mut stream = Chunks::open(source, peer, &want, have, max_rate).await?;
    // The bytes go to a writer of their own off the runtime's threads, which hashes what
    // it writes; the network reads go on meanwhile.
    let mut writer = if on_disk {
        None
    } else {
        // Never through a link at the part's name.
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&part)
            .map_err(io_err(&part))?;
        Some(Writer::start(f, hasher.clone(), part.clone()))
    };
    let corrupt = |why: String| SyncError::Corrupt { peer: peer.into(), name: name.clone(), why };
    let (mut have, mut received) = (have, 0u64);
    let (last_size, last_sha256) = loop {
        let chunk = match stream.next(peer, &name).await {
            Ok(c) => c,
            Err(Cut::Unended) => {
                if let Some(w) = writer.take() {
                    w.discard(&part).await;
                }
                return Err(corrupt("the stream ended without its checksum".into()));
            }
            Err(Cut::Broken(e)) => {
                // Cut: what arrived stays in the part file for the next try.
                if let Some(w) = writer.take() {
                    let (f, _) = w.finish().await?;
                    let p = part.clone();
                    super::blocking(move || f.sync_data().map_err(io_err(&p))).await?;
                }
                return Err(e);
            }
        };
        if !chunk.data.is_empty() {
            let Some(w) = writer.as_mut() else {
                return Err(corrupt("data for a file this node already holds whole".into()));
            };
            let n = chunk.data.len() as u64;
            if have + n > want.size {
                if let Some(w) = writer.take() {
                    w.discard(&part).await;
                }
                return Err(corrupt(format!("more than the {} bytes it listed", want.size)));
            }
            if let Some(l) = limit {
                l.wait(n).await;
            }
            if w.tx.send(chunk.data).await.is_err() {
                // The writer stopped: its error says why.
                if let Some(w) = writer.take() {
                    w.finish().await?;
                }
                return Err(SyncError::Task(format!("{name}: the writer stopped")));
            }
            have += n;
            received += n;
        }
        if let Some(end) = chunk.end {
            break end;
        }
    };
    let (out, hasher) = match writer.take() {
        Some(w) => {
            let (f, h) = w.finish().await?;
            (Some(f), h)
        }
        None => (None, hasher),
    };
    let ours = hasher.finalize().to_vec();
    let bad = if last_size != want.size || have != want.size {
        Some(format!("{have} bytes received and {last_size} announced at the end, {} listed", want.size))
    } else if last_sha256 != ours {
        Some(format!("SHA-256 {} here, {} announced", hex::encode(&ours), hex::encode(&last_sha256)))
    } else {
        None
    };
    if let Some(why) = bad {
        if on_disk {
            return Err(SyncError::Conflict { peer: peer.into(), name, ours: have, theirs: last_size });
        }
        drop(out);
        let _ = fs::remove_file(&part);
        return Err(corrupt(why));
    }
    if let Some(f) = out {
        let (w, peer) = (want.clone(), peer.to_string());
        super::blocking(move || publish(&w, &peer, f, &ours)).await?;
    }
    Ok(Fetched { bytes: received, on_disk })
}

/// Files below this size are mostly round trips and an fsync: more of them run at once.
const SMALL: u64 = 1 << 20;
/// How many small files per job may be in flight.
const SMALL_PER_JOB: usize = 8;

/// Fetches `wants` on the one channel or session to the peer, under one bandwidth `limit`:
/// `jobs` large files at a time and, beside them, up to `8 × jobs` small ones (their cost
/// is the request's round trip and the fsync, not the bytes); the results in the order of
/// `wants`. With `stop_on_error`, no transfer starts after one failed (those running finish
/// their file): theirs are None.
pub async fn fetch_all(
    source: &Source,
    peer: &str,
    wants: Vec<Want>,
    jobs: usize,
    limit: Option<Arc<RateLimit>>,
    stop_on_error: bool,
) -> Vec<Option<Result<Fetched, SyncError>>> {
    let mut results: Vec<Option<Result<Fetched, SyncError>>> = (0..wants.len()).map(|_| None).collect();
    let dirs: Vec<Option<PathBuf>> = wants.iter().map(|w| w.dst.parent().map(Path::to_path_buf)).collect();
    let (small, large): (Vec<_>, Vec<_>) = wants.into_iter().enumerate().partition(|(_, w)| w.size < SMALL);
    let mut queues = [large.into_iter(), small.into_iter()];
    let caps = [jobs.max(1), jobs.max(1) * SMALL_PER_JOB];
    let mut in_flight = [0usize; 2];
    let mut running = tokio::task::JoinSet::new();
    let mut index = std::collections::HashMap::new();
    let mut stopped = false;
    // What each transfer asks the peer for: a large one's share of the limit.
    let max_rate = limit.as_ref().map_or(0, |l| (l.per_second() / caps[0] as u64).max(1));
    loop {
        for k in 0..2 {
            while !stopped && in_flight[k] < caps[k] {
                let Some((i, want)) = queues[k].next() else { break };
                let (source, peer, limit) = (source.clone(), peer.to_string(), limit.clone());
                let task = running
                    .spawn(async move { fetch(&source, &peer, Arc::new(want), limit.as_deref(), max_rate).await });
                index.insert(task.id(), (i, k));
                in_flight[k] += 1;
            }
        }
        let (id, r) = match running.join_next_with_id().await {
            Some(Ok((id, r))) => (id, r),
            Some(Err(e)) => (e.id(), Err(SyncError::Task(e.to_string()))),
            None => break,
        };
        stopped |= stop_on_error && r.is_err();
        if let Some((i, k)) = index.get(&id) {
            results[*i] = Some(r);
            in_flight[*k] -= 1;
        }
    }
    // Each directory that received a file is fsynced once, before anything is reported
    // fetched (and recorded by the caller); if that fails, its files are not fetched.
    let mut touched: std::collections::BTreeSet<PathBuf> = std::collections::BTreeSet::new();
    for (r, d) in results.iter().zip(&dirs) {
        if let (Some(Ok(f)), Some(d)) = (r, d)
            && !f.on_disk
        {
            touched.insert(d.clone());
        }
    }
    let all: Vec<PathBuf> = touched.iter().cloned().collect();
    let failed = super::blocking(move || {
        Ok(touched.into_iter().filter_map(|d| durable::fsync_dir(&d).err().map(|e| (d, e))).collect::<Vec<_>>())
    })
    .await
    .unwrap_or_else(|e| all.into_iter().map(|d| (d, std::io::Error::other(e.to_string()))).collect());
    for (dir, e) in failed {
        for (r, d) in results.iter_mut().zip(&dirs) {
            if d.as_ref() == Some(&dir) && matches!(r, Some(Ok(_))) {
                let source = std::io::Error::new(e.kind(), e.to_string());
                *r = Some(Err(SyncError::Io { path: dir.display().to_string(), source }));
            }
        }
    }
    results
}
