//! The Sync gRPC service a node offers its peers: sync-info, the WAL it holds, and files
//! streamed from any offset with an end-to-end checksum. Only cluster members are served.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use barman_proto::v1::file_meta::Kind;
use barman_proto::v1::sync_server::{Sync, SyncServer};
use barman_proto::v1::{
    BackupList, BackupMeta, BackupRequest, FetchRequest, FileChunk, FileList, FileMeta, ServerRequest, SyncInfoReply,
    SyncInfoRequest, WalEntry, WalList, WalListRequest,
};
use sha2::{Digest, Sha256};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::info::{Cursor, SyncInfoError, sync_info};
use crate::catalog::ServerLayout;
use crate::catalog::backups;
use crate::catalog::pyjson;
use crate::catalog::xlogdb::{XlogDb, XlogDbError, XlogEntry};
use crate::config::{Config, ServerConfig};
use crate::transport::grpc;
use crate::wal::WalFileName;

/// Bytes per streamed chunk.
pub const CHUNK: usize = 1 << 20;

/// Whether a peer, by the node name of its verified certificate, may be served.
pub type Admit = Arc<dyn Fn(&str) -> bool + Send + std::marker::Sync>;

pub struct SyncService {
    cfg: Arc<Config>,
    admit: Admit,
    sent: Arc<Sent>,
}

/// Bytes of file content handed to peers, per server, kind (`wal`, `backup`) and peer:
/// what the geo sync costs on the wire, and what a cut transfer had to send again.
#[derive(Default)]
pub struct Sent(std::sync::Mutex<std::collections::BTreeMap<SentKey, Arc<AtomicU64>>>);

/// Server, kind, peer.
type SentKey = (String, &'static str, String);

impl Sent {
    /// The counter of `key`, taken once per transfer (its chunks add to it).
    fn counter(&self, key: SentKey) -> Arc<AtomicU64> {
        let mut m = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        m.entry(key).or_default().clone()
    }

    /// `((server, kind, peer), bytes)` for each that sent anything.
    pub fn snapshot(&self) -> Vec<(SentKey, u64)> {
        let m = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        m.iter().map(|(k, n)| (k.clone(), n.load(Ordering::Relaxed))).collect()
    }
}

impl SyncService {
    pub fn new(cfg: Arc<Config>, admit: Admit) -> SyncService {
        SyncService { cfg, admit, sent: Arc::default() }
    }

    /// The counter of bytes this service sends, for the node's metrics.
    pub fn sent(&self) -> Arc<Sent> {
        self.sent.clone()
    }

    pub fn server(self) -> SyncServer<SyncService> {
        SyncServer::new(self).max_decoding_message_size(grpc::MAX_MESSAGE).max_encoding_message_size(grpc::MAX_MESSAGE)
    }

    fn check<T>(&self, request: &Request<T>, rpc: &str) -> Result<(), Status> {
        let peer = grpc::admitted_peer(request)?;
        let name = peer.name.as_deref().unwrap_or_default();
        // A node certificate of a member: a WAL client's is never one, whatever its name.
        if matches!(peer.role, Some(crate::transport::tls::Role::Node)) && (self.admit)(name) {
            return Ok(());
        }
        let name = crate::catalog::confine::shown(name);
        tracing::warn!(peer = %peer.addr, "refused {rpc} from '{name}' at {}: not a member of the cluster", peer.addr);
        Err(Status::permission_denied(format!("'{name}' is not a member of this cluster")))
    }

    fn server_cfg(&self, name: &str) -> Result<ServerConfig, Status> {
        self.cfg
            .servers
            .get(name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("server '{name}' is not configured on this node")))
    }
}

fn to_proto(e: &XlogEntry) -> WalEntry {
    WalEntry {
        name: e.name.to_string(),
        size: e.size,
        time: e.time,
        compression: e.compression.clone().unwrap_or_default(),
        encryption: e.encryption.clone().unwrap_or_default(),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Status> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(e.to_string()))?
}

#[tonic::async_trait]
impl Sync for SyncService {
    async fn info(&self, request: Request<SyncInfoRequest>) -> Result<Response<SyncInfoReply>, Status> {
        self.check(&request, "sync Info")?;
        let r = request.into_inner();
        let s = self.server_cfg(&r.server)?;
        let global = self.cfg.global.clone();
        let cursor = Cursor {
            last_wal: Some(r.last_wal).filter(|w| !w.is_empty()),
            last_position: Some(r.last_position).filter(|p| *p > 0),
        };
        let json = blocking(move || match sync_info(&global, &s, &cursor) {
            Ok(v) => Ok(pyjson::dumps(&v, Some(4), false)),
            Err(e @ (SyncInfoError::OlderThanFirst { .. } | SyncInfoError::NewerThanLast { .. })) => {
                Err(Status::out_of_range(e.to_string()))
            }
            Err(e) => Err(Status::internal(e.to_string())),
        })
        .await?;
        Ok(Response::new(SyncInfoReply { json }))
    }

    async fn list_wals(&self, request: Request<WalListRequest>) -> Result<Response<WalList>, Status> {
        self.check(&request, "sync ListWals")?;
        let r = request.into_inner();
        let s = self.server_cfg(&r.server)?;
        let layout = ServerLayout::new(&self.cfg.global, &s);
        let list =
            blocking(move || read_after(&layout, &r.after, r.position).map_err(|e| Status::internal(e.to_string())))
                .await?;
        Ok(Response::new(list))
    }

    type FetchStream = ReceiverStream<Result<FileChunk, Status>>;

    async fn fetch(&self, request: Request<FetchRequest>) -> Result<Response<Self::FetchStream>, Status> {
        self.check(&request, "sync Fetch")?;
        let peer = grpc::peer(&request).and_then(|p| p.name.clone()).unwrap_or_default();
        let r = request.into_inner();
        let s = self.server_cfg(&r.server)?;
        let layout = ServerLayout::new(&self.cfg.global, &s);
        let kind = if r.backup_id.is_empty() { "wal" } else { "backup" };
        let (path, what) = if r.backup_id.is_empty() {
            let name: WalFileName = r
                .wal
                .parse()
                .map_err(|e| Status::invalid_argument(format!("'{}' is not a WAL file name: {e}", r.wal)))?;
            (layout.wal_path(&name), format!("WAL file {name}"))
        } else {
            (backup_file(&layout, &r.backup_id, &r.path)?, format!("file {} of backup {}", r.path, r.backup_id))
        };
        let mut file = std::fs::File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Status::not_found(format!("{what} of server '{}' is not on this node", s.name))
            }
            _ => Status::internal(format!("{}: {e}", path.display())),
        })?;
        let size = file.metadata().map_err(|e| Status::internal(format!("{}: {e}", path.display())))?.len();
        if r.offset > size {
            return Err(Status::out_of_range(format!("offset {} is past the end of {what} ({size} bytes)", r.offset)));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let sent = self.sent.counter((s.name.clone(), kind, peer));
        tokio::task::spawn_blocking(move || {
            // The whole file is hashed, the part before the offset too: the caller checks
            // what it already held along with what it is sent.
            let mut hasher = Sha256::new();
            let mut at = 0u64;
            // Paced to the caller's rate: chunks of about an eighth of a second.
            let rate = r.max_rate;
            let chunk = if rate > 0 { (rate / 8).clamp(64 << 10, CHUNK as u64) as usize } else { CHUNK };
            let started = std::time::Instant::now();
            let mut paced = 0u64;
            loop {
                // A buffer per chunk, moved into the message: no copy.
                let mut buf = Vec::with_capacity(chunk);
                let n = match (&mut file).take(chunk as u64).read_to_end(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Status::internal(format!("{}: {e}", path.display()))));
                        return;
                    }
                };
                hasher.update(&buf);
                let end = at + n as u64;
                if end > r.offset {
                    let from = r.offset.saturating_sub(at) as usize;
                    if from > 0 {
                        buf.drain(..from);
                    }
                    let n = buf.len() as u64;
                    if rate > 0 {
                        let due = started + std::time::Duration::from_secs_f64(paced as f64 / rate as f64);
                        std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
                        paced += n;
                    }
                    let chunk = FileChunk { data: buf, ..Default::default() };
                    if tx.blocking_send(Ok(chunk)).is_err() {
                        return;
                    }
                    sent.fetch_add(n, Ordering::Relaxed);
                }
                at = end;
            }
            let last = FileChunk { data: Vec::new(), last: true, size: at, sha256: hasher.finalize().to_vec() };
            let _ = tx.blocking_send(Ok(last));
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_backups(&self, request: Request<ServerRequest>) -> Result<Response<BackupList>, Status> {
        self.check(&request, "sync ListBackups")?;
        let s = self.server_cfg(&request.into_inner().server)?;
        let layout = ServerLayout::new(&self.cfg.global, &s);
        let list = blocking(move || {
            let mut out = Vec::new();
            for (id, path) in backups::scan(&layout) {
                let info =
                    std::fs::read_to_string(&path).map_err(|e| Status::internal(format!("{}: {e}", path.display())))?;
                out.push(BackupMeta { id, info });
            }
            Ok(out)
        })
        .await?;
        Ok(Response::new(BackupList { backups: list }))
    }

    async fn list_backup_files(&self, request: Request<BackupRequest>) -> Result<Response<FileList>, Status> {
        self.check(&request, "sync ListBackupFiles")?;
        let r = request.into_inner();
        let s = self.server_cfg(&r.server)?;
        if !backups::is_backup_id(&r.backup_id) {
            return Err(Status::invalid_argument(format!("'{}' is not a backup id", r.backup_id)));
        }
        let dir = ServerLayout::new(&self.cfg.global, &s).base_dir.join(&r.backup_id);
        let files = blocking(move || {
            let mut out = Vec::new();
            walk(&dir, &dir, &mut out).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Status::not_found(format!("{}: no such backup here", dir.display())),
                _ => Status::internal(format!("{}: {e}", dir.display())),
            })?;
            Ok(out)
        })
        .await?;
        Ok(Response::new(FileList { files }))
    }
}

/// The xlog.db entries named after `after`, read from `position` when the line there still
/// names `after` (a poll reads only what was appended since), else from the top.
fn read_after(layout: &ServerLayout, after: &str, position: u64) -> Result<WalList, XlogDbError> {
    let db = XlogDb::new(layout);
    let held = db.lock()?;
    let key = format!("{after}\t");
    let start = if !after.is_empty() && position > 0 && db.peek(&held, position, key.len())? == key.as_bytes() {
        position
    } else {
        0
    };
    let entries = db.entries_from(&held, start)?;
    drop(held);
    let mut out = WalList::default();
    for (i, (at, e)) in entries.iter().enumerate() {
        // From the cursor: every line after its own, whatever the name (a history or
        // backup label file may come after a later segment). From the top: by name.
        let keep = if start > 0 { i > 0 } else { e.name.as_str() > after };
        if keep {
            out.wals.push(to_proto(e));
        }
        out.last_name = e.name.to_string();
        out.last_position = *at;
    }
    Ok(out)
}

/// What a backup's tree holds, parents before children, links not followed. The metadata
/// and lock Barman may keep at its top are not part of it.
fn walk(root: &Path, dir: &Path, out: &mut Vec<FileMeta>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel = path.strip_prefix(root).map_err(std::io::Error::other)?.to_string_lossy().into_owned();
        if dir == root && (rel == "backup.info" || rel == ".backup.lock") {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path)?;
        let mtime = crate::catalog::xlogdb::mtime_float(&meta);
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        let entry = |kind: Kind, size: u64, target: String| FileMeta {
            path: rel.clone(),
            kind: kind.into(),
            size,
            mode,
            mtime,
            target,
        };
        if ft.is_symlink() {
            out.push(entry(Kind::Symlink, 0, std::fs::read_link(&path)?.to_string_lossy().into_owned()));
        } else if ft.is_dir() {
            out.push(entry(Kind::Dir, 0, String::new()));
            walk(root, &path, out)?;
        } else if ft.is_file() {
            out.push(entry(Kind::File, meta.len(), String::new()));
        }
    }
    Ok(())
}

/// Whether `rel` is a plain relative path, written the one way: `/`-separated names, none
/// empty, `.` or `..` (so no root, no trailing or doubled slash).
pub fn is_plain_relative(rel: &str) -> bool {
    crate::catalog::confine::RelPath::parse(rel).is_ok()
}

/// The file `rel` of backup `id`; refused when it is not a plain path inside the backup, or
/// when it would pass through a link (a tablespace link points outside the backup).
fn backup_file(layout: &ServerLayout, id: &str, rel: &str) -> Result<PathBuf, Status> {
    if !backups::is_backup_id(id) {
        return Err(Status::invalid_argument(format!("'{id}' is not a backup id")));
    }
    if !is_plain_relative(rel) {
        return Err(Status::invalid_argument(format!("'{rel}' is not a path inside backup {id}")));
    }
    let mut path = layout.base_dir.join(id);
    for c in Path::new(rel).components() {
        path.push(c);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(Status::invalid_argument(format!("'{rel}' of backup {id} goes through a link")));
        }
    }
    Ok(path)
}
