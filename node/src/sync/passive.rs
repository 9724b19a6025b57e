//! The passive side against a Barman primary over SSH: `sync-info --primary`, `sync-wals`
//! and `sync-backup` as Barman's passive runs them, with the files read over SFTP and each
//! checked against the SHA-256 the primary's own `sha256sum` gives (one command per batch),
//! so a file is verified end to end as it is between cluster peers. Transfers resume from
//! the bytes already received (see `fetch`).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use barman_proto::v1::FileMeta;
use barman_proto::v1::file_meta::Kind;
use bytes::Bytes;

use super::fetch::{Origin, Source, Want, fetch_all};
use super::primary::{PrimaryInfo, primary_info_path, remote_command, write_sync_wals_info};
use super::wals::{WalSyncOptions, WalSyncReport, staging_dir};
use super::{SyncError, io_err};
use crate::catalog::ServerLayout;
use crate::catalog::backup_info::BackupInfo;
use crate::catalog::backups::{self, COPY_DONE};
use crate::catalog::durable::{self, DurableFile};
use crate::catalog::xlogdb::{XlogDb, XlogEntry};
use crate::config::ServerConfig;
use crate::transport::ssh::{Session, quote};
use crate::wal::compression::{Codec, Codecs, Level};

/// What calling the primary gave: its answer and, when the cursor was refused, the warning.
pub struct Called {
    pub info: PrimaryInfo,
    pub warning: Option<String>,
}

/// Runs the primary's `sync-info` with the cursor of `sync-wals.info` (Barman's rule: exit
/// status 1 with a cursor → once more without it), and saves the answer in `primary.info`.
pub async fn call_primary(
    session: &Session,
    s: &ServerConfig,
    config_path: &Path,
    layout: &ServerLayout,
    cursor: (Option<String>, Option<u64>),
) -> Result<Called, SyncError> {
    let peer = session.who().to_string();
    let mut warning = None;
    let mut out = session.exec(&remote_command(s, config_path, cursor.0.as_deref(), cursor.1), None).await?;
    if out.code == Some(1) && cursor.0.is_some() {
        warning = Some(format!(
            "sync-info is out of sync. Self-recovery procedure started: requesting full synchronisation from primary server {}",
            s.name
        ));
        out = session.exec(&remote_command(s, config_path, None, None), None).await?;
    }
    if !out.success() {
        return Err(SyncError::Rpc {
            peer,
            what: "retrieving the primary node status (barman sync-info)".into(),
            status: out.why(),
        });
    }
    let text = String::from_utf8(out.stdout)
        .map_err(|_| SyncError::Refused { peer: peer.clone(), why: "its sync-info is not UTF-8".into() })?;
    let info = PrimaryInfo::parse(&text, &peer)?;
    if !info.name.is_empty() && info.name != s.name {
        return Err(SyncError::Refused {
            peer,
            why: format!(
                "it answered for server '{}', not '{}' (a server must have the same name on both)",
                info.name, s.name
            ),
        });
    }
    let path = primary_info_path(layout);
    durable::create_dir_all(&layout.backup_dir).map_err(io_err(&layout.backup_dir))?;
    durable::write_file(&path, text.as_bytes(), 0o600).map_err(io_err(&path))?;
    Ok(Called { info, warning })
}

/// Reads `primary.info`.
pub fn load_primary_info(layout: &ServerLayout) -> Result<PrimaryInfo, SyncError> {
    let path = primary_info_path(layout);
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    PrimaryInfo::parse(&text, &format!("the primary (as saved in {})", path.display()))
}

/// SHA-256 of files under `dir` on the primary, by their relative paths: one `sha256sum`
/// run, the list on its standard input.
async fn remote_sums(session: &Session, dir: &str, rels: &[String]) -> Result<HashMap<String, Vec<u8>>, SyncError> {
    let peer = session.who().to_string();
    if let Some(bad) = rels.iter().find(|r| r.contains('\n')) {
        return Err(SyncError::Refused { peer, why: format!("a file name with a line break: {bad:?}") });
    }
    let mut list = rels.join("\n");
    list.push('\n');
    let cmd = format!("cd {} && xargs -d '\\n' sha256sum --", quote(dir));
    let out = session.exec(&cmd, Some(Bytes::from(list))).await?;
    if !out.success() {
        return Err(SyncError::Rpc { peer, what: format!("checksumming files in {dir}"), status: out.why() });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut sums = HashMap::new();
    for line in text.lines() {
        let Some((hex, rel)) = line.split_once("  ") else { continue };
        if let Ok(sum) = hex::decode(hex) {
            sums.insert(rel.to_string(), sum);
        }
    }
    if let Some(missing) = rels.iter().find(|r| !sums.contains_key(*r)) {
        return Err(SyncError::Rpc {
            peer,
            what: format!("checksumming {dir}/{missing}"),
            status: "no checksum".into(),
        });
    }
    Ok(sums)
}

/// The codec a listing names (None: uncompressed).
fn codec(name: Option<&str>) -> Result<Option<Codec>, String> {
    match name {
        None | Some("None") | Some("") => Ok(None),
        Some(n) => n.parse::<Codec>().map(Some).map_err(|_| format!("unknown compression '{n}'")),
    }
}

/// `staged` (in the primary's compression) stored at `dst` in ours, durably; the new size.
fn recompress(
    staged: &Path,
    dst: &Path,
    from: Option<Codec>,
    to: Option<Codec>,
    level: Level,
    codecs: &Codecs,
    mtime: std::time::SystemTime,
) -> Result<u64, SyncError> {
    let err = |e: &dyn std::fmt::Display| SyncError::Io {
        path: dst.display().to_string(),
        source: std::io::Error::other(format!("recompressing: {e}")),
    };
    let plain = staged.with_extension("plain");
    let source = match from {
        Some(c) => {
            let mut src = std::fs::File::open(staged).map_err(io_err(staged))?;
            let mut out = std::fs::File::create(&plain).map_err(io_err(&plain))?;
            codecs.decompress(c, &mut src, &mut out).map_err(|e| err(&e))?;
            plain.clone()
        }
        None => staged.to_path_buf(),
    };
    let dir = dst.parent().unwrap_or(Path::new("/"));
    durable::create_dir_all(dir).map_err(io_err(dir))?;
    let mut tmp = DurableFile::create(dst).map_err(io_err(dst))?;
    {
        let mut src = std::fs::File::open(&source).map_err(io_err(&source))?;
        let f = tmp.file().map_err(io_err(dst))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        match to {
            Some(c) => codecs.compress(c, level, &mut src, &mut w).map_err(|e| err(&e))?,
            None => {
                std::io::copy(&mut src, &mut w).map_err(io_err(dst))?;
            }
        }
        std::io::Write::flush(&mut w).map_err(io_err(dst))?;
    }
    tmp.seal(0o600, Some(mtime)).map_err(io_err(dst))?;
    let size = tmp.file().and_then(|f| f.metadata()).map_err(io_err(dst))?.len();
    if !tmp.publish_new().map_err(io_err(dst))? {
        return Err(SyncError::Io {
            path: dst.display().to_string(),
            source: std::io::Error::other("a file appeared under this name during the sync; kept it"),
        });
    }
    let _ = std::fs::remove_file(&plain);
    let _ = std::fs::remove_file(staged);
    Ok(size)
}

/// How this node stores WAL: its codec and level, and the codecs' settings.
pub struct LocalCompression {
    pub codec: Option<Codec>,
    pub level: Level,
    pub codecs: Codecs,
}

/// `sync-wals` against a Barman primary: every WAL file the saved listing names and this
/// node lacks (a set difference: history files and gaps included), fetched over SFTP,
/// checked, recompressed when the two nodes compress differently, and recorded; then the
/// primary's cursor goes to `sync-wals.info`.
pub async fn sync_wals(
    session: &Session,
    sftp: Arc<russh_sftp::client::SftpSession>,
    layout: &ServerLayout,
    info: &PrimaryInfo,
    local: &LocalCompression,
    opts: &WalSyncOptions,
) -> Result<WalSyncReport, SyncError> {
    let peer = session.who().to_string();
    let l = layout.clone();
    let held: BTreeSet<String> = super::blocking(move || Ok(XlogDb::new(&l).read_locked()?))
        .await?
        .into_iter()
        .map(|e| e.name.to_string())
        .collect();
    let mut wanted: Vec<&XlogEntry> = info.wals.iter().filter(|w| !held.contains(w.name.as_str())).collect();
    wanted.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
    wanted.dedup_by(|a, b| a.name == b.name);
    let mut report = WalSyncReport::default();
    if !wanted.is_empty() {
        let rels: Vec<String> = wanted.iter().map(|w| PrimaryInfo::wal_rel(&w.name)).collect();
        let sums = remote_sums(session, &info.wals_directory, &rels).await?;
        let staging = staging_dir(layout);
        durable::create_dir_all(&staging).map_err(io_err(&staging))?;
        let mut plan = Vec::new();
        let mut wants = Vec::new();
        for (w, rel) in wanted.iter().zip(&rels) {
            let theirs = codec(w.compression.as_deref())
                .map_err(|why| SyncError::Refused { peer: peer.clone(), why: format!("{}: {why}", w.name) })?;
            // Stored as it comes when both nodes compress alike (history and backup label
            // files are never compressed); else fetched aside and recompressed here.
            let same = theirs == local.codec || !w.name.is_segment();
            let dst = if same { layout.wal_path(&w.name) } else { staging.join(format!("{}.fetched", w.name)) };
            plan.push((*w, same, theirs, dst.clone()));
            wants.push(Want {
                what: w.name.to_string(),
                origin: Origin::Sftp { path: format!("{}/{rel}", info.wals_directory), sha256: sums[rel].clone() },
                dst,
                part: staging.join(format!("{}.part", w.name)),
                size: w.size,
                mtime: w.time,
                mode: 0o600,
                // A staged copy is ours; a file already in the archive is checked.
                owned: !same,
            });
        }
        let results = fetch_all(&Source::Sftp(sftp), &peer, wants, opts.jobs, opts.limit(), false).await;
        let mut entries = Vec::new();
        let mut first_error = None;
        for ((w, same, theirs, dst), r) in plan.into_iter().zip(results) {
            let fetched = match r {
                Some(Ok(f)) => f,
                Some(Err(e)) => {
                    first_error.get_or_insert(e);
                    continue;
                }
                None => continue,
            };
            report.bytes += fetched.bytes;
            let mut entry = w.clone();
            if !same {
                let mtime = super::system_time(w.time);
                let final_path = layout.wal_path(&w.name);
                let (to, level, codecs) = (local.codec, local.level, local.codecs.clone());
                let size =
                    super::blocking(move || recompress(&dst, &final_path, theirs, to, level, &codecs, mtime)).await;
                match size {
                    Ok(n) => {
                        entry.size = n;
                        entry.compression = local.codec.map(|c| c.name().to_string());
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                        continue;
                    }
                }
            }
            if fetched.on_disk {
                report.recorded.push(w.name.to_string());
            } else {
                report.fetched.push(w.name.to_string());
            }
            entries.push(entry);
        }
        super::wals::record(layout, entries).await?;
        if let Some(e) = first_error {
            return Err(e);
        }
    }
    write_sync_wals_info(layout, info).map_err(io_err(&layout.wals_dir))?;
    report.cursor = super::wals::WalCursor { last_name: info.last_name.clone(), last_position: info.last_position };
    Ok(report)
}

/// Every entry under `root` on the primary, links followed (rsync `-L`), except what
/// Barman's passive excludes: the top `backup.info` and `.backup.lock`, and each
/// tablespace's link under `data/pg_tblspc/`.
async fn list_remote(
    sftp: &russh_sftp::client::SftpSession,
    peer: &str,
    root: &str,
    exclude: &BTreeSet<String>,
) -> Result<Vec<FileMeta>, SyncError> {
    let failed =
        |what: String, e: &dyn std::fmt::Display| SyncError::Rpc { peer: peer.into(), what, status: e.to_string() };
    let mut out = Vec::new();
    let mut dirs = vec![String::new()];
    while let Some(rel) = dirs.pop() {
        let at = if rel.is_empty() { root.to_string() } else { format!("{root}/{rel}") };
        let entries = sftp.read_dir(at.as_str()).await.map_err(|e| failed(format!("listing {at}"), &e))?;
        for e in entries {
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            if name.contains('/') {
                return Err(SyncError::Refused { peer: peer.into(), why: format!("a file name with a slash in {at}") });
            }
            let child = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            if exclude.contains(&child) {
                continue;
            }
            let mut meta = e.metadata();
            if meta.is_symlink() {
                let path = format!("{root}/{child}");
                meta = sftp.metadata(path.as_str()).await.map_err(|e| failed(format!("following {path}"), &e))?;
            }
            let kind = if meta.is_dir() {
                dirs.push(child.clone());
                Kind::Dir
            } else if meta.is_regular() {
                Kind::File
            } else {
                continue;
            };
            out.push(FileMeta {
                path: child,
                kind: kind.into(),
                size: meta.size.unwrap_or(0),
                mode: meta.permissions.unwrap_or(0o600) & 0o7777,
                mtime: f64::from(meta.mtime.unwrap_or(0)),
                target: String::new(),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Copies backup `id` from the primary (§ sync-backup): `SYNCING` while it runs, `DONE`
/// once every file is durable and checked, `FAILED` with Barman's error text otherwise.
pub async fn sync_backup(
    session: &Session,
    sftp: Arc<russh_sftp::client::SftpSession>,
    layout: &ServerLayout,
    info: &PrimaryInfo,
    id: &str,
    opts: &WalSyncOptions,
) -> Result<super::backups::BackupSyncReport, SyncError> {
    let peer = session.who().to_string();
    let theirs = info.backups.get(id).ok_or_else(|| SyncError::Refused {
        peer: peer.clone(),
        why: format!("backup {id} is not in its sync-info"),
    })?;
    let info_path = backups::meta_path(layout, id);
    // An earlier attempt's metadata wins over the primary's, as Barman reloads it.
    let mine = match BackupInfo::read(&info_path) {
        Ok(b) => b,
        Err(_) => {
            let mut b = theirs.clone();
            b.server_name = Some(layout.server.clone());
            b.mode = Some("passive".into());
            b
        }
    };
    super::backups::tracked(layout, id, mine, copy_backup(session, sftp, layout, info, theirs, id, opts)).await
}

async fn copy_backup(
    session: &Session,
    sftp: Arc<russh_sftp::client::SftpSession>,
    layout: &ServerLayout,
    info: &PrimaryInfo,
    theirs: &BackupInfo,
    id: &str,
    opts: &WalSyncOptions,
) -> Result<super::backups::BackupSyncReport, SyncError> {
    let peer = session.who().to_string();
    let root = format!("{}/{id}", info.basebackups_directory);
    let mut exclude: BTreeSet<String> = ["backup.info", ".backup.lock"].iter().map(|s| s.to_string()).collect();
    for t in theirs.tablespaces.iter().flatten() {
        exclude.insert(format!("data/pg_tblspc/{}", t.oid));
    }
    let files = list_remote(&sftp, &peer, &root, &exclude).await?;
    super::backups::check_listing(&peer, id, &files)?;
    let rels: Vec<String> = files.iter().filter(|f| f.kind() == Kind::File).map(|f| f.path.clone()).collect();
    let sums = if rels.is_empty() { HashMap::new() } else { remote_sums(session, &root, &rels).await? };
    let origin = |f: &FileMeta| Origin::Sftp {
        path: format!("{root}/{}", f.path),
        sha256: sums.get(&f.path).cloned().unwrap_or_default(),
    };
    super::backups::copy_tree(&Source::Sftp(sftp), &peer, layout, id, &files, origin, opts).await
}

/// What the sync-required rules (§6.5) say of backup `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Needed {
    Sync,
    /// Nothing to do, and why (said at INFO).
    Nothing(String),
    /// The local copy is FAILED and the primary no longer has it: removed.
    DeleteLocal,
    /// Neither node has it.
    Unknown,
}

pub fn needed(layout: &ServerLayout, info: &PrimaryInfo, id: &str) -> Needed {
    let local = backups::scan(layout).get(id).and_then(|p| BackupInfo::read(p).ok()).map(|b| b.status);
    match (info.backups.get(id), local.as_deref()) {
        (None, None) => Needed::Unknown,
        (None, Some("FAILED")) => Needed::DeleteLocal,
        (None, Some(_)) => Needed::Nothing(format!("backup {id} exists only on this node: kept")),
        (Some(_), Some("DONE")) => Needed::Nothing(format!("backup {id} is already synced")),
        (Some(b), _) if !COPY_DONE.contains(&b.status.as_str()) => {
            Needed::Nothing(format!("backup {id} is {} on the primary", b.status))
        }
        (Some(_), _) => Needed::Sync,
    }
}

/// The backups to copy, oldest first: on the primary, and not WAITING_FOR_WALS/DONE here.
pub fn candidates(layout: &ServerLayout, info: &PrimaryInfo) -> Vec<String> {
    let local = backups::scan(layout);
    info.backups
        .keys()
        .filter(|id| {
            !local
                .get(*id)
                .and_then(|p| BackupInfo::read(p).ok())
                .is_some_and(|b| COPY_DONE.contains(&b.status.as_str()))
        })
        .cloned()
        .collect()
}
