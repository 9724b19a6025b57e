//! The Raft log and vote (openraft's `RaftLogStorage`).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use sled::Transactional;

use super::{Disk, StoreError};
use crate::cluster::ownership::NodeId;
use crate::cluster::types::TypeConfig;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// The Raft log, vote and commit index. Cheap to clone: clones share the same trees (one
/// serves as the log reader of the replication tasks).
#[derive(Clone)]
pub struct LogStore {
    disk: Disk,
    log: sled::Tree,
    meta: sled::Tree,
}

/// The key of log index `index`: big-endian, so that keys sort as indexes.
fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_bound(b: Bound<&u64>) -> Bound<[u8; 8]> {
    match b {
        Bound::Included(i) => Bound::Included(key(*i)),
        Bound::Excluded(i) => Bound::Excluded(key(*i)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl LogStore {
    pub(super) fn new(disk: Disk, log: sled::Tree, meta: sled::Tree) -> LogStore {
        LogStore { disk, log, meta }
    }

    /// Decodes one stored entry, checking that it sits under its own index.
    fn decode_entry(&self, k: &[u8], v: &[u8]) -> Result<Entry<TypeConfig>, StoreError> {
        let index = <[u8; 8]>::try_from(k).map(u64::from_be_bytes).map_err(|_| StoreError::Corrupt {
            path: self.disk.path.to_path_buf(),
            what: "the log".into(),
            detail: format!("a key of {} bytes instead of 8", k.len()),
        })?;
        let what = format!("log entry {index}");
        let entry: Entry<TypeConfig> = self.disk.decode(&what, v)?;
        if entry.log_id.index != index {
            return Err(StoreError::Corrupt {
                path: self.disk.path.to_path_buf(),
                what,
                detail: format!("it holds entry {}", entry.log_id),
            });
        }
        Ok(entry)
    }

    fn entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let bounds = (key_bound(range.start_bound()), key_bound(range.end_bound()));
        let mut out = Vec::new();
        for item in self.log.range::<[u8; 8], _>(bounds) {
            let (k, v) = item.map_err(|e| self.disk.io("read the log", e))?;
            out.push(self.decode_entry(&k, &v)?);
        }
        Ok(out)
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        let last_purged_log_id: Option<LogId<NodeId>> =
            self.disk.get(&self.meta, LAST_PURGED, "the last purged log id")?;
        let last = match self.log.last().map_err(|e| self.disk.io("read the last log entry", e))? {
            Some((k, v)) => Some(self.decode_entry(&k, &v)?.log_id),
            None => None,
        };
        // With every entry purged, the last log id is the last purged one.
        let last_log_id = last.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    /// Writes `entries` in one atomic batch (not flushed).
    fn write_entries(&self, entries: impl IntoIterator<Item = Entry<TypeConfig>>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let what = format!("log entry {}", entry.log_id.index);
            batch.insert(&key(entry.log_id.index), self.disk.encode(&what, &entry)?);
        }
        self.log.apply_batch(batch).map_err(|e| self.disk.io("append to the log", e))
    }

    /// Deletes the entries from `index` onwards. Not flushed, like purges: the flush of the
    /// next append covers it, and a crash before that only brings back the entries this node
    /// held before, none of which it has acknowledged to the new leader.
    fn remove_from(&self, index: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for k in self.log.range(key(index)..).keys() {
            batch.remove(k.map_err(|e| self.disk.io("read the log", e))?);
        }
        self.log.apply_batch(batch).map_err(|e| self.disk.io(format!("truncate the log from {index}"), e))
    }

    /// Deletes the entries up to `upto` inclusive and records it as the last purged, atomically.
    fn remove_upto(&self, upto: &LogId<NodeId>) -> Result<(), StoreError> {
        let action = format!("purge the log up to {upto}");
        let keys = self
            .log
            .range(..=key(upto.index))
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.disk.io(&action, e))?;
        let purged = self.disk.encode("the last purged log id", upto)?;
        (&self.log, &self.meta)
            .transaction(|(log, meta)| {
                meta.insert(LAST_PURGED, purged.as_slice())?;
                for k in &keys {
                    log.remove(k)?;
                }
                Ok(())
            })
            .map_err(|e| self.disk.tx_error(&action, e))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.entries(range).map_err(|e| StorageIOError::read_logs(&e))?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        Ok(self.log_state().map_err(|e| StorageIOError::read_logs(&e))?)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.disk.put(&self.meta, VOTE, "the vote", vote).map_err(|e| StorageIOError::write_vote(&e))?;
        self.disk.flush("the vote").await.map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.disk.get(&self.meta, VOTE, "the vote").map_err(|e| StorageIOError::read_vote(&e))?)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        // Not flushed: a lost commit index is found again from the leader.
        self.disk
            .put(&self.meta, COMMITTED, "the committed log id", &committed)
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let committed: Option<Option<LogId<NodeId>>> =
            self.disk.get(&self.meta, COMMITTED, "the committed log id").map_err(|e| StorageIOError::read(&e))?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.write_entries(entries).map_err(|e| StorageIOError::write_logs(&e))?;
        // Acknowledged only once durable.
        match self.disk.flush("the log").await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        Ok(self.remove_from(log_id.index).map_err(|e| StorageIOError::write_logs(&e))?)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        Ok(self.remove_upto(&log_id).map_err(|e| StorageIOError::write_logs(&e))?)
    }
}
