//! The node's Raft storage: the log, the vote and the state machine in one sled database
//! (`barman_home/.node/` in DESIGN.md), one per process.
//!
//! Layout, one sled tree each:
//! - `raft_log`: key = big-endian `u64` log index (so keys sort as indexes), value = entry;
//! - `raft_meta`: the vote, the committed log id, the last purged log id;
//! - `state_machine`: the applied state (last applied log id, membership, [`ClusterState`])
//!   and the current snapshot.
//!
//! Values go through [`codec`], the only code that knows the serialisation format.
//! Durability: appended entries and the vote are flushed before they are acknowledged, and
//! so are snapshots (the log is purged behind them). The applied state is written after
//! every apply batch without a flush: after a crash the log replays what was lost.
//!
//! [`ClusterState`]: super::types::ClusterState

mod codec;
mod raft_log;
mod state_machine;

#[cfg(test)]
mod tests;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::raft_log::LogStore;
pub use self::state_machine::{Applied, SnapshotBuilder, StateMachineStore};

const LOG_TREE: &str = "raft_log";
const META_TREE: &str = "raft_meta";
const STATE_MACHINE_TREE: &str = "state_machine";

/// sled's page cache bound; the Raft group's data is small.
const CACHE_BYTES: u64 = 64 << 20;

/// A failure of the node's Raft store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the node store directory {path}: {source}; check the permissions of its parent")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error(
        "the node store {path} is in use by another node process; stop that process, or give this node its own directory"
    )]
    InUse { path: PathBuf },
    #[error(
        "cannot open the node store {path}: {source}; check its permissions and free space, or move it aside to rebuild this node from the cluster"
    )]
    Open { path: PathBuf, source: sled::Error },
    #[error("node store {path}: cannot {action}: {source}; check the disk and free space")]
    Io { path: PathBuf, action: String, source: sled::Error },
    #[error("node store {path}: {what} is corrupt ({detail}); move {path} aside to rebuild this node from the cluster")]
    Corrupt { path: PathBuf, what: String, detail: String },
    #[error("node store {path}: cannot encode {what}: {detail}")]
    Encode { path: PathBuf, what: String, detail: String },
}

/// Opens (creating it with mode 0700 if missing) the store in `dir`. sled locks the
/// directory: only one process, and one `open` in it, may hold it at a time.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::CreateDir { path: dir.to_path_buf(), source })?;
    }
    let db = sled::Config::new().path(dir).cache_capacity(CACHE_BYTES).open().map_err(|source| {
        if is_lock_conflict(&source) {
            StoreError::InUse { path: dir.to_path_buf() }
        } else {
            StoreError::Open { path: dir.to_path_buf(), source }
        }
    })?;
    let disk = Disk { db, path: Arc::from(dir) };
    let log = LogStore::new(disk.clone(), disk.tree(LOG_TREE)?, disk.tree(META_TREE)?);
    let sm = StateMachineStore::load(disk.clone(), disk.tree(STATE_MACHINE_TREE)?)?;
    Ok((log, sm))
}

/// sled 0.34 reports a directory locked by another `Db` only through this message.
fn is_lock_conflict(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// The shared sled handle and the directory it lives in, for errors that name it.
#[derive(Clone)]
struct Disk {
    db: sled::Db,
    path: Arc<Path>,
}

impl Disk {
    fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(name).map_err(|e| self.io(format!("open tree {name}"), e))
    }

    fn io(&self, action: impl Into<String>, source: sled::Error) -> StoreError {
        StoreError::Io { path: self.path.to_path_buf(), action: action.into(), source }
    }

    fn encode<T: Serialize>(&self, what: &str, value: &T) -> Result<Vec<u8>, StoreError> {
        codec::encode(value).map_err(|e| StoreError::Encode {
            path: self.path.to_path_buf(),
            what: what.to_string(),
            detail: e.to_string(),
        })
    }

    fn decode<T: DeserializeOwned>(&self, what: &str, bytes: &[u8]) -> Result<T, StoreError> {
        codec::decode(bytes).map_err(|e| StoreError::Corrupt {
            path: self.path.to_path_buf(),
            what: what.to_string(),
            detail: e.to_string(),
        })
    }

    /// Reads and decodes `key` of `tree`.
    fn get<T: DeserializeOwned>(&self, tree: &sled::Tree, key: &[u8], what: &str) -> Result<Option<T>, StoreError> {
        match tree.get(key).map_err(|e| self.io(format!("read {what}"), e))? {
            Some(bytes) => self.decode(what, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Encodes and writes `key` of `tree` (not flushed).
    fn put<T: Serialize>(&self, tree: &sled::Tree, key: &[u8], what: &str, value: &T) -> Result<(), StoreError> {
        let bytes = self.encode(what, value)?;
        tree.insert(key, bytes).map_err(|e| self.io(format!("write {what}"), e))?;
        Ok(())
    }

    /// Makes every write so far durable.
    async fn flush(&self, what: &str) -> Result<(), StoreError> {
        self.db.flush_async().await.map_err(|e| self.io(format!("flush {what}"), e))?;
        Ok(())
    }

    /// The error of a failed sled transaction.
    fn tx_error(&self, action: &str, e: sled::transaction::TransactionError<StoreError>) -> StoreError {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => self.io(action, e),
        }
    }
}
