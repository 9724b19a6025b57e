//! Backup sync from a cluster peer: the backups it holds in `DONE` or `WAITING_FOR_WALS`
//! and this node does not hold `DONE` are copied file by file through the Sync service
//! (each file resumable and checked end to end, see `fetch`), `SYNCING` while the copy runs
//! and `DONE` once every file is durable, as Barman's passive marks them. A failed copy is
//! `FAILED` with Barman's error text; the next sync resumes it from what arrived.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use barman_proto::v1::file_meta::Kind;
use barman_proto::v1::sync_client::SyncClient;
use barman_proto::v1::{BackupMeta, BackupRequest, FetchRequest, FileMeta, ServerRequest};
use tonic::transport::Channel;

use super::fetch::{Origin, Source, Want, fetch_all};
use super::wals::{WalSyncOptions, staging_dir};
use super::{SyncError, io_err};
use crate::catalog::ServerLayout;
use crate::catalog::backup_info::BackupInfo;
use crate::catalog::backups::{self, COPY_DONE};
use crate::catalog::confine::RelPath;
use crate::catalog::durable;

/// What one backup sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupSyncReport {
    pub id: String,
    /// Files fetched (or found complete from an earlier try).
    pub files: usize,
    /// Bytes received over the wire.
    pub bytes: u64,
}

/// The peer's backups of the server, checked: ids that are backup ids, metadata that parses.
pub async fn listing(
    client: &mut SyncClient<Channel>,
    peer: &str,
    layout: &ServerLayout,
) -> Result<Vec<(BackupMeta, BackupInfo)>, SyncError> {
    let list = client
        .list_backups(ServerRequest { server: layout.server.clone() })
        .await
        .map_err(SyncError::rpc(peer, "listing its backups"))?
        .into_inner()
        .backups;
    let mut out = Vec::new();
    for m in list {
        if !backups::is_backup_id(&m.id) {
            return Err(SyncError::Refused { peer: peer.into(), why: format!("listed '{}', not a backup id", m.id) });
        }
        let info = BackupInfo::parse(&m.info, &format!("backup.info of {} on {peer}", m.id))
            .map_err(|e| SyncError::Refused { peer: peer.into(), why: e.to_string() })?;
        out.push((m, info));
    }
    Ok(out)
}

/// The peer's copied backups (WAITING_FOR_WALS, DONE) that are not DONE here, oldest first.
pub async fn wanted(
    client: &mut SyncClient<Channel>,
    peer: &str,
    layout: &ServerLayout,
) -> Result<Vec<BackupMeta>, SyncError> {
    Ok(wanted_in(&listing(client, peer, layout).await?, layout))
}

/// [`wanted`] from a [`listing`] already made.
pub fn wanted_in(listing: &[(BackupMeta, BackupInfo)], layout: &ServerLayout) -> Vec<BackupMeta> {
    let local = backups::scan(layout);
    let mut out = Vec::new();
    for (m, info) in listing {
        if !COPY_DONE.contains(&info.status.as_str()) {
            continue;
        }
        let done_here = local.get(&m.id).and_then(|p| BackupInfo::read(p).ok()).is_some_and(|b| b.status == "DONE");
        if !done_here {
            out.push(m.clone());
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Copies backup `meta.id` from `peer`.
pub async fn sync_backup(
    client: &mut SyncClient<Channel>,
    peer: &str,
    layout: &ServerLayout,
    meta: &BackupMeta,
    opts: &WalSyncOptions,
) -> Result<BackupSyncReport, SyncError> {
    let id = meta.id.clone();
    let refused = |why: String| SyncError::Refused { peer: peer.into(), why };
    let theirs =
        BackupInfo::parse(&meta.info, &format!("backup.info of {id} on {peer}")).map_err(|e| refused(e.to_string()))?;
    if theirs.server_name.as_deref().is_some_and(|n| n != layout.server) {
        return Err(refused(format!(
            "backup {id} is of server '{}', not '{}'",
            theirs.server_name.unwrap_or_default(),
            layout.server
        )));
    }
    tracked(layout, &id, theirs, copy(client, peer, layout, &id, opts)).await
}

/// Runs `copy` with backup `id`'s metadata `mine` saved as `SYNCING`, then `DONE` (Barman's
/// passive marks a synced backup DONE, whatever the primary's status), or `FAILED` with
/// Barman's error text.
pub(crate) async fn tracked(
    layout: &ServerLayout,
    id: &str,
    mut mine: BackupInfo,
    copy: impl std::future::Future<Output = Result<BackupSyncReport, SyncError>>,
) -> Result<BackupSyncReport, SyncError> {
    let info_path = backups::meta_path(layout, id);
    mine.status = "SYNCING".into();
    mine.error = None;
    save(&mine, &info_path)?;
    let result = copy.await;
    match &result {
        Ok(_) => mine.status = "DONE".into(),
        Err(e) => {
            mine.status = "FAILED".into();
            mine.error = Some(format!("failure syncing server {} backup {id}: {e}", layout.server));
        }
    }
    save(&mine, &info_path)?;
    result
}

fn save(info: &BackupInfo, path: &Path) -> Result<(), SyncError> {
    info.save(path).map_err(|e| SyncError::Io { path: path.display().to_string(), source: std::io::Error::other(e) })
}

/// Checks a listing: plain relative paths (each once), known kinds, times that are times,
/// nothing under a link (writing there would write wherever the link points).
pub(crate) fn check_listing(peer: &str, id: &str, files: &[FileMeta]) -> Result<(), SyncError> {
    let refused = |why: String| SyncError::Refused { peer: peer.into(), why: format!("backup {id}: {why}") };
    let links: BTreeSet<&str> = files.iter().filter(|f| f.kind() == Kind::Symlink).map(|f| f.path.as_str()).collect();
    let mut seen = BTreeSet::new();
    for f in files {
        let rel = RelPath::parse(&f.path).map_err(|e| refused(e.to_string()))?;
        if !seen.insert(f.path.as_str()) {
            return Err(refused(format!("'{rel}' listed twice")));
        }
        if f.path == "backup.info" {
            return Err(refused("lists a file named backup.info at its top".into()));
        }
        if !super::is_time(f.mtime) {
            return Err(refused(format!("'{rel}' has the modification time {}", f.mtime)));
        }
        let mut parent = Path::new(&f.path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            if links.contains(p.to_string_lossy().as_ref()) {
                return Err(refused(format!("'{}' lies under the link '{}'", f.path, p.display())));
            }
            parent = p.parent();
        }
    }
    Ok(())
}

/// Creates `rel`'s directories under `base` one level at a time, refusing any that is a
/// link on disk.
fn make_dirs(base: &Path, rel: &Path, mode: Option<u32>) -> Result<PathBuf, SyncError> {
    use std::os::unix::fs::PermissionsExt;
    let mut at = base.to_path_buf();
    for c in rel.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(SyncError::Io {
                    path: at.display().to_string(),
                    source: std::io::Error::other("not a directory (a link or a file) where the backup has one"),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&at).map_err(io_err(&at))?;
            }
            Err(e) => return Err(io_err(&at)(e)),
        }
    }
    if let Some(m) = mode {
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(m | 0o700)).map_err(io_err(&at))?;
    }
    Ok(at)
}

async fn copy(
    client: &mut SyncClient<Channel>,
    peer: &str,
    layout: &ServerLayout,
    id: &str,
    opts: &WalSyncOptions,
) -> Result<BackupSyncReport, SyncError> {
    let files = client
        .list_backup_files(BackupRequest { server: layout.server.clone(), backup_id: id.to_string() })
        .await
        .map_err(SyncError::rpc(peer, format!("listing the files of backup {id}")))?
        .into_inner()
        .files;
    check_listing(peer, id, &files)?;
    let origin = |f: &FileMeta| {
        Origin::Grpc(FetchRequest {
            server: layout.server.clone(),
            backup_id: id.to_string(),
            path: f.path.clone(),
            ..Default::default()
        })
    };
    copy_tree(&Source::Grpc(client.clone()), peer, layout, id, &files, origin, opts).await
}

/// Copies a checked listing of backup `id` into `base/<id>/`: its directories, its files
/// (each fetched from where `origin` says, resumable and checked), its links; then the
/// directories are fsynced.
/// Where the part of `rel` of backup `id` waits while it arrives: in the server's staging
/// directory, under a name no listing can make (a hash of the path), so that no link a peer
/// listed can stand where a part file is opened.
pub fn part_path(layout: &ServerLayout, id: &str, rel: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(rel.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    staging_dir(layout).join(format!("backup-{id}")).join(format!("{hex}.part"))
}

pub(crate) async fn copy_tree(
    source: &Source,
    peer: &str,
    layout: &ServerLayout,
    id: &str,
    files: &[FileMeta],
    origin: impl Fn(&FileMeta) -> Origin,
    opts: &WalSyncOptions,
) -> Result<BackupSyncReport, SyncError> {
    let base = layout.base_dir.join(id);
    durable::create_dir_all(&base).map_err(io_err(&base))?;
    let parts = staging_dir(layout).join(format!("backup-{id}"));
    durable::create_dir_all(&parts).map_err(io_err(&parts))?;
    let mut dirs = vec![base.clone()];
    for f in files.iter().filter(|f| f.kind() == Kind::Dir) {
        dirs.push(make_dirs(&base, Path::new(&f.path), Some(f.mode & 0o750))?);
    }
    let mut wants = Vec::new();
    for f in files.iter().filter(|f| f.kind() == Kind::File) {
        let rel = Path::new(&f.path);
        let dir = make_dirs(&base, rel.parent().unwrap_or(Path::new("")), None)?;
        let name = rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        wants.push(Want {
            what: format!("{} of backup {id}", f.path),
            origin: origin(f),
            dst: dir.join(&name),
            part: part_path(layout, id, &f.path),
            size: f.size,
            mtime: f.mtime,
            // Never for others, never set-id: the modes are ours, not the peer's.
            mode: f.mode & 0o750,
            owned: true,
        });
    }
    let mut report = BackupSyncReport { id: id.to_string(), ..Default::default() };
    for r in fetch_all(source, peer, wants, opts.jobs, opts.limit(), true).await.into_iter().flatten() {
        let fetched = r?;
        report.files += 1;
        report.bytes += fetched.bytes;
    }
    for f in files.iter().filter(|f| f.kind() == Kind::Symlink) {
        let at = base.join(&f.path);
        match std::fs::read_link(&at) {
            Ok(t) if t == Path::new(&f.target) => continue,
            Ok(_) => std::fs::remove_file(&at).map_err(io_err(&at))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&at)(e)),
        }
        std::os::unix::fs::symlink(&f.target, &at).map_err(io_err(&at))?;
    }
    for d in dirs.iter().rev() {
        durable::fsync_dir(d).map_err(io_err(d))?;
    }
    // Every part was published and removed: the staging directory is empty.
    std::fs::remove_dir(&parts).map_err(io_err(&parts))?;
    Ok(report)
}
