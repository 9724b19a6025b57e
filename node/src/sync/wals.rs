//! WAL sync from a cluster peer by set difference: every file the peer lists and this node
//! lacks is fetched, checked end to end (size and SHA-256 of the whole file), made durable
//! under its final name and recorded in the xlog.db with the peer's metadata. A transfer cut
//! at any byte resumes from there: the bytes received so far wait in `<server>/.sync/`.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use barman_proto::v1::sync_client::SyncClient;
use barman_proto::v1::{FetchRequest, WalEntry, WalListRequest};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use super::{SyncError, io_err};
use crate::catalog::ServerLayout;
use crate::catalog::durable;
use crate::catalog::xlogdb::{XlogDb, XlogEntry};
use crate::transport::copy::RateLimit;
use crate::transport::grpc;
use crate::wal::WalFileName;

/// How a sync runs.
#[derive(Debug, Clone, Default)]
pub struct WalSyncOptions {
    /// Files fetched at once (`parallel_jobs`).
    pub jobs: usize,
    /// Bytes per second over all of them (`bandwidth_limit` is in KB/s); None: no limit.
    pub bandwidth: Option<u64>,
    /// Only ask for files named after the newest this node holds: a cheap poll. A full
    /// listing (the default) also finds the gaps.
    pub newer_only: bool,
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalSyncReport {
    /// Files fetched and recorded, in name order.
    pub fetched: Vec<String>,
    /// Bytes received over the wire.
    pub bytes: u64,
    /// Files that were already complete on disk and only needed recording.
    pub recorded: Vec<String>,
}

/// Where a server's transfers in progress wait.
pub fn staging_dir(layout: &ServerLayout) -> PathBuf {
    layout.backup_dir.join(".sync")
}

/// Fetches every WAL file `peer` holds for the server and this node lacks.
pub async fn sync_wals(
    client: &mut SyncClient<Channel>,
    peer: &str,
    layout: &ServerLayout,
    opts: &WalSyncOptions,
) -> Result<WalSyncReport, SyncError> {
    let rpc = |what: &str| {
        let (peer, what) = (peer.to_string(), what.to_string());
        move |s: tonic::Status| SyncError::Rpc { peer, what, status: grpc::status_text(&s) }
    };
    let held: BTreeSet<String> = {
        let l = layout.clone();
        let entries = tokio::task::spawn_blocking(move || XlogDb::new(&l).read_locked())
            .await
            .map_err(|e| SyncError::Io { path: "xlog.db".into(), source: std::io::Error::other(e) })??;
        entries.into_iter().map(|e| e.name.to_string()).collect()
    };
    let after = if opts.newer_only { held.last().cloned().unwrap_or_default() } else { String::new() };
    let listed = client
        .list_wals(WalListRequest { server: layout.server.clone(), after })
        .await
        .map_err(rpc("listing its WAL"))?
        .into_inner()
        .wals;
    let mut wanted = Vec::new();
    let mut seen = BTreeSet::new();
    for w in listed {
        let name: WalFileName = w.name.parse().map_err(|e| SyncError::Refused {
            peer: peer.into(),
            why: format!("listed '{}', not a WAL file name: {e}", w.name),
        })?;
        if name.is_partial() {
            return Err(SyncError::Refused { peer: peer.into(), why: format!("listed a partial file '{name}'") });
        }
        if !held.contains(name.as_str()) && seen.insert(name.to_string()) {
            wanted.push((name, w));
        }
    }
    wanted.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    let staging = staging_dir(layout);
    if !wanted.is_empty() {
        durable::create_dir_all(&staging).map_err(io_err(&staging))?;
    }
    let limit = opts.bandwidth.filter(|b| *b > 0).map(|b| Arc::new(RateLimit::new(b)));
    let jobs = opts.jobs.max(1);
    // `jobs` transfers at a time, each on a clone of the one channel to the peer.
    let mut queue = wanted.into_iter();
    let mut running = tokio::task::JoinSet::new();
    let mut results = Vec::new();
    loop {
        while running.len() < jobs {
            let Some((name, w)) = queue.next() else { break };
            let mut client = client.clone();
            let (staging, limit, layout, peer) = (staging.clone(), limit.clone(), layout.clone(), peer.to_string());
            running.spawn(async move {
                let r = fetch_wal(&mut client, &peer, &layout, &staging, &name, &w, limit.as_deref()).await;
                (name, w, r)
            });
        }
        match running.join_next().await {
            Some(Ok(done)) => results.push(done),
            Some(Err(e)) => {
                return Err(SyncError::Io { path: staging.display().to_string(), source: std::io::Error::other(e) });
            }
            None => break,
        }
    }
    // Record what arrived, in name order, even when another file failed; then report the
    // first failure.
    let mut report = WalSyncReport::default();
    let mut entries = Vec::new();
    let mut first_error = None;
    results.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    for (name, w, r) in results {
        match r {
            Ok(Fetched { bytes, on_disk }) => {
                report.bytes += bytes;
                if on_disk {
                    report.recorded.push(name.to_string());
                } else {
                    report.fetched.push(name.to_string());
                }
                entries.push(XlogEntry {
                    name,
                    size: w.size,
                    time: w.time,
                    compression: Some(w.compression).filter(|c| !c.is_empty()),
                    encryption: Some(w.encryption).filter(|c| !c.is_empty()),
                });
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if !entries.is_empty() {
        let l = layout.clone();
        tokio::task::spawn_blocking(move || {
            let db = XlogDb::new(&l);
            let held = db.lock()?;
            db.append(&held, &entries)
        })
        .await
        .map_err(|e| SyncError::Io { path: "xlog.db".into(), source: std::io::Error::other(e) })??;
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

struct Fetched {
    bytes: u64,
    /// The file was already complete under its final name (a sync cut after the rename).
    on_disk: bool,
}

/// SHA-256 and length of what `path` holds.
fn hash_file(path: &Path) -> std::io::Result<(Sha256, u64)> {
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

async fn fetch_wal(
    client: &mut SyncClient<Channel>,
    peer: &str,
    layout: &ServerLayout,
    staging: &Path,
    name: &WalFileName,
    listed: &WalEntry,
    limit: Option<&RateLimit>,
) -> Result<Fetched, SyncError> {
    let dst = layout.wal_path(name);
    let part = staging.join(format!("{name}.part"));
    let on_disk = dst.exists();
    // What is held already: the final file (then only its checksum is asked), or the part
    // of an earlier transfer.
    let (mut hasher, mut have) = if on_disk {
        hash_file(&dst).map_err(io_err(&dst))?
    } else {
        match hash_file(&part) {
            Ok((h, n)) if n <= listed.size => (h, n),
            // Longer than announced: useless, start again.
            Ok(_) => {
                fs::remove_file(&part).map_err(io_err(&part))?;
                (Sha256::new(), 0)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Sha256::new(), 0),
            Err(e) => return Err(io_err(&part)(e)),
        }
    };
    if on_disk && have != listed.size {
        return Err(SyncError::Conflict { peer: peer.into(), name: name.to_string(), ours: have, theirs: listed.size });
    }
    let request = FetchRequest { server: layout.server.clone(), wal: name.to_string(), offset: have };
    let mut stream = client
        .fetch(request)
        .await
        .map_err(|s| SyncError::Rpc {
            peer: peer.into(),
            what: format!("fetching {name}"),
            status: grpc::status_text(&s),
        })?
        .into_inner();
    let mut out = if on_disk {
        None
    } else {
        Some(OpenOptions::new().create(true).append(true).open(&part).map_err(io_err(&part))?)
    };
    let corrupt = |why: String| SyncError::Corrupt { peer: peer.into(), name: name.to_string(), why };
    let mut received = 0u64;
    let last = loop {
        let chunk = match stream.message().await {
            Ok(Some(c)) => c,
            Ok(None) => {
                drop(out.take());
                if !on_disk {
                    let _ = fs::remove_file(&part);
                }
                return Err(corrupt("the stream ended without its checksum".into()));
            }
            Err(s) => {
                // Cut: what arrived stays in the part file for the next try.
                if let Some(f) = out.as_mut() {
                    f.sync_data().map_err(io_err(&part))?;
                }
                return Err(SyncError::Rpc {
                    peer: peer.into(),
                    what: format!("fetching {name}"),
                    status: grpc::status_text(&s),
                });
            }
        };
        if !chunk.data.is_empty() {
            let Some(f) = out.as_mut() else {
                return Err(corrupt("data for a file this node already holds whole".into()));
            };
            if have + chunk.data.len() as u64 > listed.size {
                drop(out.take());
                let _ = fs::remove_file(&part);
                return Err(corrupt(format!("more than the {} bytes it listed", listed.size)));
            }
            if let Some(l) = limit {
                l.wait(chunk.data.len() as u64).await;
            }
            f.write_all(&chunk.data).map_err(io_err(&part))?;
            hasher.update(&chunk.data);
            have += chunk.data.len() as u64;
            received += chunk.data.len() as u64;
        }
        if chunk.last {
            break chunk;
        }
    };
    let ours = hasher.finalize().to_vec();
    let bad = if last.size != listed.size || have != listed.size {
        Some(format!("{have} bytes received and {} announced at the end, {} listed", last.size, listed.size))
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
        let _ = fs::remove_file(&part);
        return Err(corrupt(why));
    }
    if let Some(f) = out.take() {
        // The peer's mtime, as Barman's rsync keeps it (--times).
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(listed.time.max(0.0));
        f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t)).map_err(io_err(&part))?;
        f.sync_all().map_err(io_err(&part))?;
        drop(f);
        let dir = dst.parent().map(Path::to_path_buf).unwrap_or_else(|| layout.wals_dir.clone());
        durable::create_dir_all(&dir).map_err(io_err(&dir))?;
        // Never over a file that appeared meanwhile (another sync, archive-wal).
        match fs::hard_link(&part, &dst) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let (h, n) = hash_file(&dst).map_err(io_err(&dst))?;
                if n != listed.size || h.finalize().to_vec() != ours {
                    return Err(SyncError::Conflict {
                        peer: peer.into(),
                        name: name.to_string(),
                        ours: n,
                        theirs: listed.size,
                    });
                }
            }
            Err(e) => return Err(io_err(&dst)(e)),
        }
        durable::fsync_dir(&dir).map_err(io_err(&dir))?;
        fs::remove_file(&part).map_err(io_err(&part))?;
    }
    Ok(Fetched { bytes: received, on_disk })
}
