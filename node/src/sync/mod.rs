//! Geo-redundancy: what a server holds (`sync-info`), the service that offers it to peers,
//! and passive nodes that copy it.

pub mod backups;
pub mod fetch;
pub mod info;
pub mod passive;
pub mod primary;
pub mod rpc;
pub mod wals;

/// Why a sync could not take a file, or could not run.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("peer {peer}: {what}: {status}")]
    Rpc { peer: String, what: String, status: String },
    /// The peer sent something that is not what it announced: nothing of it is kept.
    #[error("peer {peer} sent a bad copy of {name}: {why}; the transfer was discarded")]
    Corrupt { peer: String, name: String, why: String },
    /// The peer's listing or answer breaks the rules (a bad name, a path outside the server).
    #[error("peer {peer}: {why}")]
    Refused { peer: String, why: String },
    /// A file we hold under the same name differs from the peer's: ours is kept.
    #[error(
        "{name}: this node holds a different file than peer {peer} (size {ours} here, {theirs} there, or other content); kept this node's, check both archives"
    )]
    Conflict { peer: String, name: String, ours: u64, theirs: u64 },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(transparent)]
    Ssh(#[from] crate::transport::ssh::SshError),
    #[error(transparent)]
    Xlog(#[from] crate::catalog::xlogdb::XlogDbError),
    /// A task of the sync panicked or was cancelled.
    #[error("a sync task ended abnormally: {0}")]
    Task(String),
}

impl SyncError {
    /// Maps a failed call to `peer` made while doing `what`.
    pub fn rpc(peer: &str, what: impl Into<String>) -> impl FnOnce(tonic::Status) -> SyncError {
        let (peer, what) = (peer.to_string(), what.into());
        move |s| SyncError::Rpc { peer, what, status: crate::transport::grpc::status_text(&s) }
    }
}

/// Runs blocking file work (the xlog.db under its lock) off the runtime's threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SyncError> + Send + 'static,
) -> Result<T, SyncError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| SyncError::Task(e.to_string()))?
}

/// A listing's mtime (seconds since the epoch, as Barman's floats) as a time to set.
/// Latest time taken from a peer (year 2500): anything later is not a time.
const MAX_MTIME: f64 = 16_725_225_600.0;

/// Whether a peer's float mtime is a time: finite, from the epoch to year 2500.
pub(crate) fn is_time(secs: f64) -> bool {
    (0.0..=MAX_MTIME).contains(&secs)
}

/// A peer's float mtime as a time; one that is no time ([`is_time`]) is the epoch, never
/// a panic.
pub(crate) fn system_time(secs: f64) -> std::time::SystemTime {
    match std::time::Duration::try_from_secs_f64(secs) {
        Ok(d) if is_time(secs) => std::time::UNIX_EPOCH + d,
        _ => std::time::UNIX_EPOCH,
    }
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> SyncError + '_ {
    move |source| SyncError::Io { path: path.display().to_string(), source }
}
