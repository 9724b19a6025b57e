//! WAL sync from a cluster peer by set difference: every file the peer lists and this node
//! lacks is fetched, checked end to end (size and SHA-256 of the whole file), made durable
//! under its final name and recorded in the xlog.db with the peer's metadata. A transfer cut
//! at any byte resumes from there: the bytes received so far wait in `<server>/.sync/`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use barman_proto::v1::sync_client::SyncClient;
use barman_proto::v1::{FetchRequest, WalListRequest};
use tonic::transport::Channel;

use super::fetch::{Fetched, Origin, Source, Want, fetch_all};
use super::{SyncError, blocking, io_err};
use crate::catalog::ServerLayout;
use crate::catalog::durable;
use crate::catalog::xlogdb::{XlogDb, XlogEntry};
use crate::transport::copy::RateLimit;
use crate::wal::WalFileName;

/// How a sync runs.
#[derive(Debug, Clone, Default)]
pub struct WalSyncOptions {
    /// Files fetched at once (`parallel_jobs`).
    pub jobs: usize,
    /// Bytes per second over all of them (`bandwidth_limit` is in KB/s); None: no limit.
    pub bandwidth: Option<u64>,
    /// The peer's previous answer: only what it appended since is asked for (a cheap poll).
    /// Without it (the default) the whole listing is compared with ours, gaps included.
    pub cursor: Option<WalCursor>,
}

impl WalSyncOptions {
    /// The server's `parallel_jobs` and `bandwidth_limit`, no cursor.
    pub fn for_server(s: &crate::config::ServerConfig) -> WalSyncOptions {
        WalSyncOptions {
            jobs: s.opts.parallel_jobs.max(1) as usize,
            // KB/s as rsync's --bwlimit counts them (1024 bytes).
            bandwidth: s.opts.bandwidth_limit.map(|b| b.0 * 1024).filter(|b| *b > 0),
            cursor: None,
        }
    }

    /// The one rate limit all of a sync's transfers share.
    pub fn limit(&self) -> Option<Arc<RateLimit>> {
        self.bandwidth.filter(|b| *b > 0).map(|b| Arc::new(RateLimit::new(b)))
    }
}

/// Appends `entries` to the server's xlog.db under its lock (off the runtime's threads).
pub(crate) async fn record(layout: &ServerLayout, entries: Vec<XlogEntry>) -> Result<(), SyncError> {
    if entries.is_empty() {
        return Ok(());
    }
    let l = layout.clone();
    blocking(move || {
        let db = XlogDb::new(&l);
        let held = db.lock()?;
        Ok(db.append(&held, &entries)?)
    })
    .await
}

/// Where a peer's xlog.db was last read to: its last line's name and offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalCursor {
    pub last_name: String,
    pub last_position: u64,
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
    /// Where the peer's xlog.db was read to, for the next poll.
    pub cursor: WalCursor,
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
    let (after, position) = opts.cursor.as_ref().map_or((String::new(), 0), |c| (c.last_name.clone(), c.last_position));
    let reply = client
        .list_wals(WalListRequest { server: layout.server.clone(), after, position })
        .await
        .map_err(SyncError::rpc(peer, "listing its WAL"))?
        .into_inner();
    let cursor = WalCursor { last_name: reply.last_name, last_position: reply.last_position };
    let listed = reply.wals;
    // A poll from a cursor lists only what the peer appended since: our own xlog.db is read
    // only when one of those files is on disk already (a sync cut before it was recorded,
    // or a file this node archived itself when it owned the server).
    let read_ours = opts.cursor.is_none()
        || listed.iter().any(|w| w.name.parse::<WalFileName>().is_ok_and(|n| layout.wal_path(&n).exists()));
    let held: BTreeSet<String> = if read_ours {
        let l = layout.clone();
        let entries = blocking(move || Ok(XlogDb::new(&l).read_locked()?)).await?;
        entries.into_iter().map(|e| e.name.to_string()).collect()
    } else {
        BTreeSet::new()
    };
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
        // What goes into our xlog.db must be what Barman allows there: a forged tab or
        // newline would make lines of its own.
        let shown = crate::catalog::confine::shown;
        if !w.compression.is_empty() && w.compression.parse::<crate::wal::compression::Codec>().is_err() {
            let why = format!("listed '{name}' with the compression '{}'", shown(&w.compression));
            return Err(SyncError::Refused { peer: peer.into(), why });
        }
        if !matches!(w.encryption.as_str(), "" | "gpg") {
            let why = format!("listed '{name}' with the encryption '{}'", shown(&w.encryption));
            return Err(SyncError::Refused { peer: peer.into(), why });
        }
        if !super::is_time(w.time) {
            let why = format!("listed '{name}' with the time {}", w.time);
            return Err(SyncError::Refused { peer: peer.into(), why });
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
    let wants = wanted
        .iter()
        .map(|(name, w)| Want {
            what: name.to_string(),
            origin: Origin::Grpc(FetchRequest {
                server: layout.server.clone(),
                wal: name.to_string(),
                ..Default::default()
            }),
            dst: layout.wal_path(name),
            part: staging.join(format!("{name}.part")),
            size: w.size,
            mtime: w.time,
            mode: 0o600,
            owned: false,
        })
        .collect();
    let limit = opts.limit();
    let results = fetch_all(&Source::Grpc(client.clone()), peer, wants, opts.jobs, limit, false).await;
    // Record what arrived, in name order, even when another file failed; then report the
    // first failure.
    let mut report = WalSyncReport::default();
    let mut entries = Vec::new();
    let mut first_error = None;
    for ((name, w), r) in wanted.into_iter().zip(results) {
        match r {
            Some(Ok(Fetched { bytes, on_disk })) => {
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
            Some(Err(e)) => {
                first_error.get_or_insert(e);
            }
            None => {}
        }
    }
    record(layout, entries).await?;
    match first_error {
        Some(e) => Err(e),
        None => Ok(WalSyncReport { cursor, ..report }),
    }
}
