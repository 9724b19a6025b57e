//! The copy of a base backup: one `BASE_BACKUP` over the replication protocol,
//! its archives written as they arrive by [`StoreSpec`] writers.

use super::store::{ArchiveWriter, StoreError, StoreSpec};
use crate::postgres::error::PgError;
use crate::postgres::replication::ReplicationConnection;
use crate::postgres::replication::{BackupEvent, BaseBackupOptions};
use crate::wal::{Lsn, TimelineId};

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where the copied backup starts and ends, as the server reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    pub start: Lsn,
    pub start_timeline: TimelineId,
    pub end: Lsn,
    pub end_timeline: TimelineId,
    /// Bytes received for the archives (before any compression here).
    pub bytes: u64,
}

/// Progress: bytes received so far, and the server's estimate of the total
/// (only with `PROGRESS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyProgress {
    pub done: u64,
    pub total: Option<u64>,
}

/// Runs the backup on `conn` and stores it as `spec` says.
pub async fn copy(
    conn: &mut ReplicationConnection,
    opts: &BaseBackupOptions,
    spec: &StoreSpec,
    progress: &mut (dyn FnMut(CopyProgress) + Send),
) -> Result<Copied, CopyError> {
    let start = conn.base_backup(opts).await?;
    let total = opts
        .progress
        .then(|| start.tablespaces.iter().filter_map(|t| t.size_kb).map(|k| k.max(0).unsigned_abs() * 1024).sum());
    let mut current: Option<ArchiveWriter> = None;
    let mut bytes = 0u64;
    let finish = |w: Option<ArchiveWriter>| -> Result<(), StoreError> { w.map_or(Ok(()), |w| w.finish().map(drop)) };
    let result = loop {
        let ev = match conn.base_backup_next().await {
            Ok(ev) => ev,
            Err(e) => break Err(CopyError::from(e)),
        };
        match ev {
            BackupEvent::Archive { name, .. } => {
                if let Err(e) = finish(current.take()) {
                    break Err(e.into());
                }
                match spec.open_archive(&name) {
                    Ok(w) => current = Some(w),
                    Err(e) => break Err(e.into()),
                }
            }
            BackupEvent::Manifest => {
                if let Err(e) = finish(current.take()) {
                    break Err(e.into());
                }
                current = Some(spec.open_manifest());
            }
            BackupEvent::Data(d) => {
                let Some(w) = current.as_mut() else {
                    break Err(PgError::bad_value("BASE_BACKUP", "data before any archive").into());
                };
                let len = d.len() as u64;
                if w.send(d).await.is_err() {
                    // The writer stopped: its own error says why.
                    let e = current.take().map(ArchiveWriter::finish);
                    break Err(match e {
                        Some(Err(e)) => e.into(),
                        _ => StoreError::WriterLost(spec.backup_dir.display().to_string()).into(),
                    });
                }
                bytes += len;
            }
            BackupEvent::Progress(done) => progress(CopyProgress { done, total }),
            BackupEvent::End { end, timeline } => {
                if let Err(e) = finish(current.take()) {
                    break Err(e.into());
                }
                break Ok(Copied {
                    start: start.start,
                    start_timeline: start.timeline,
                    end,
                    end_timeline: timeline,
                    bytes,
                });
            }
        }
    };
    if result.is_err() {
        // Let a writer still running end (its input closes) before the caller cleans up.
        let _ = finish(current.take());
    }
    result
}
