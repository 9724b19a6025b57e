//! One file from a peer's Sync service, resumable and checked end to end: the bytes go to
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
use tonic::transport::Channel;

use super::{SyncError, io_err};
use crate::catalog::durable;
use crate::transport::copy::RateLimit;

/// A file to fetch.
pub struct Want {
    /// How errors name it (`000000010000000000000002`, `data/base/1/1259 of backup ...`).
    pub what: String,
    /// The request (its offset is set here).
    pub request: FetchRequest,
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

/// Fetches `want` into place (see the module's comment).
pub async fn fetch(
    client: &mut SyncClient<Channel>,
    peer: &str,
    want: &Want,
    limit: Option<&RateLimit>,
) -> Result<Fetched, SyncError> {
    let (name, dst, part) = (&want.what, &want.dst, &want.part);
    if want.owned {
        match fs::symlink_metadata(dst) {
            Ok(m) if m.is_file() && m.len() == want.size => return Ok(Fetched { bytes: 0, on_disk: true }),
            Ok(_) => fs::remove_file(dst).map_err(io_err(dst))?,
            Err(_) => {}
        }
    }
    let on_disk = dst.exists();
    // What is held already: the final file (then only its checksum is asked), or the part
    // of an earlier transfer.
    let (mut hasher, mut have) = if on_disk {
        hash_file(dst).map_err(io_err(dst))?
    } else {
        match hash_file(part) {
            Ok((h, n)) if n <= want.size => (h, n),
            // Longer than announced: useless, start again.
            Ok(_) => {
                fs::remove_file(part).map_err(io_err(part))?;
                (Sha256::new(), 0)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Sha256::new(), 0),
            Err(e) => return Err(io_err(part)(e)),
        }
    };
    if on_disk && have != want.size {
        return Err(SyncError::Conflict { peer: peer.into(), name: name.to_string(), ours: have, theirs: want.size });
    }
    let request = FetchRequest { offset: have, ..want.request.clone() };
    let mut stream =
        client.fetch(request).await.map_err(SyncError::rpc(peer, format!("fetching {name}")))?.into_inner();
    let mut out = if on_disk {
        None
    } else {
        Some(OpenOptions::new().create(true).append(true).open(part).map_err(io_err(part))?)
    };
    let corrupt = |why: String| SyncError::Corrupt { peer: peer.into(), name: name.to_string(), why };
    let mut received = 0u64;
    let last = loop {
        let chunk = match stream.message().await {
            Ok(Some(c)) => c,
            Ok(None) => {
                drop(out.take());
                if !on_disk {
                    let _ = fs::remove_file(part);
                }
                return Err(corrupt("the stream ended without its checksum".into()));
            }
            Err(s) => {
                // Cut: what arrived stays in the part file for the next try.
                if let Some(f) = out.as_mut() {
                    f.sync_data().map_err(io_err(part))?;
                }
                return Err(SyncError::rpc(peer, format!("fetching {name}"))(s));
            }
        };
        if !chunk.data.is_empty() {
            let Some(f) = out.as_mut() else {
                return Err(corrupt("data for a file this node already holds whole".into()));
            };
            if have + chunk.data.len() as u64 > want.size {
                drop(out.take());
                let _ = fs::remove_file(part);
                return Err(corrupt(format!("more than the {} bytes it listed", want.size)));
            }
            if let Some(l) = limit {
                l.wait(chunk.data.len() as u64).await;
            }
            f.write_all(&chunk.data).map_err(io_err(part))?;
            hasher.update(&chunk.data);
            have += chunk.data.len() as u64;
            received += chunk.data.len() as u64;
        }
        if chunk.last {
            break chunk;
        }
    };
    let ours = hasher.finalize().to_vec();
    let bad = if last.size != want.size || have != want.size {
        Some(format!("{have} bytes received and {} announced at the end, {} listed", last.size, want.size))
    } else if last.sha256 != ours {
        Some(format!("SHA-256 {} here, {} announced", hex::encode(&ours), hex::encode(&last.sha256)))
    } else {
        None
    };
    if let Some(why) = bad {
        if on_disk {
            return Err(SyncError::Conflict {
                peer: peer.into(),
                name: name.to_string(),
                ours: have,
                theirs: last.size,
            });
        }
        drop(out.take());
        let _ = fs::remove_file(part);
        return Err(corrupt(why));
    }
    if let Some(f) = out.take() {
        // The peer's mtime, as Barman's rsync keeps it (--times).
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(want.mtime.max(0.0));
        f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t)).map_err(io_err(part))?;
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(want.mode)).map_err(io_err(part))?;
        f.sync_all().map_err(io_err(part))?;
        drop(f);
        let dir = dst.parent().map(Path::to_path_buf).unwrap_or_default();
        durable::create_dir_all(&dir).map_err(io_err(&dir))?;
        // Never over a file that appeared meanwhile (another sync, archive-wal).
        match fs::hard_link(part, dst) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let (h, n) = hash_file(dst).map_err(io_err(dst))?;
                if n != want.size || h.finalize().to_vec() != ours {
                    return Err(SyncError::Conflict {
                        peer: peer.into(),
                        name: name.to_string(),
                        ours: n,
                        theirs: want.size,
                    });
                }
            }
            Err(e) => return Err(io_err(dst)(e)),
        }
        durable::fsync_dir(&dir).map_err(io_err(&dir))?;
        fs::remove_file(part).map_err(io_err(part))?;
    }
    Ok(Fetched { bytes: received, on_disk })
}

/// Fetches `wants`, `jobs` at a time, each on a clone of the one channel to the peer, under
/// one bandwidth `limit`; the results in the order of `wants`. With `stop_on_error`, no
/// transfer starts after one failed (those running finish their file): theirs are None.
pub async fn fetch_all(
    client: &SyncClient<Channel>,
    peer: &str,
    wants: Vec<Want>,
    jobs: usize,
    limit: Option<Arc<RateLimit>>,
    stop_on_error: bool,
) -> Vec<Option<Result<Fetched, SyncError>>> {
    let mut results: Vec<Option<Result<Fetched, SyncError>>> = (0..wants.len()).map(|_| None).collect();
    let mut queue = wants.into_iter().enumerate();
    let mut running = tokio::task::JoinSet::new();
    let mut index = std::collections::HashMap::new();
    let mut stopped = false;
    loop {
        while !stopped && running.len() < jobs.max(1) {
            let Some((i, want)) = queue.next() else { break };
            let (mut client, peer, limit) = (client.clone(), peer.to_string(), limit.clone());
            let task = running.spawn(async move { fetch(&mut client, &peer, &want, limit.as_deref()).await });
            index.insert(task.id(), i);
        }
        let (id, r) = match running.join_next_with_id().await {
            Some(Ok((id, r))) => (id, r),
            Some(Err(e)) => (e.id(), Err(SyncError::Task(e.to_string()))),
            None => break,
        };
        stopped |= stop_on_error && r.is_err();
        if let Some(i) = index.get(&id) {
            results[*i] = Some(r);
        }
    }
    results
}
