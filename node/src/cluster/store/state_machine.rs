//! The replicated state machine and its snapshots (openraft's `RaftStateMachine`), with the
//! change feed the node daemon follows.

use std::io::Cursor;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use sled::transaction::ConflictableTransactionError;
use tokio::sync::watch;

use super::{Disk, StoreError};
use crate::cluster::ownership::NodeId;
use crate::cluster::types::{ClusterState, Member, Response, TypeConfig};

const APPLIED: &[u8] = b"applied";
const SNAPSHOT: &[u8] = b"snapshot";

/// What the state machine holds after an apply batch or a snapshot install.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, Member>,
    pub state: ClusterState,
}

/// [`Applied`] as written (same fields, same order as [`AppliedRecord`]).
#[derive(Serialize)]
struct AppliedRef<'a> {
    last_applied: &'a Option<LogId<NodeId>>,
    membership: &'a StoredMembership<NodeId, Member>,
    state: &'a ClusterState,
}

/// [`Applied`] as read back.
#[derive(Deserialize)]
struct AppliedRecord {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Member>,
    state: ClusterState,
}

/// The current snapshot as stored: its data is the encoded [`ClusterState`], as sent to
/// followers.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Member>,
    data: Vec<u8>,
}

impl StoredSnapshot {
    fn into_snapshot(self) -> Snapshot<TypeConfig> {
        Snapshot { meta: self.meta, snapshot: Box::new(Cursor::new(self.data)) }
    }
}

fn encode_applied(disk: &Disk, a: &Applied) -> Result<Vec<u8>, StoreError> {
    let record = AppliedRef { last_applied: &a.last_applied, membership: &a.membership, state: &a.state };
    disk.encode("the applied state", &record)
}

/// Stores `snap` as the current snapshot, with `applied` if given, and flushes. Unless
/// `replace_newer`, a stored snapshot newer than `snap` is kept and `false` returned (a
/// builder may finish after a newer snapshot was installed).
async fn save_snapshot(
    disk: &Disk,
    tree: &sled::Tree,
    snap: &StoredSnapshot,
    applied: Option<&[u8]>,
    replace_newer: bool,
) -> Result<bool, StoreError> {
    let bytes = disk.encode("the snapshot", snap)?;
    let saved = tree
        .transaction(|t| {
            if !replace_newer && let Some(old) = t.get(SNAPSHOT)? {
                let old: StoredSnapshot =
                    disk.decode("the snapshot", &old).map_err(ConflictableTransactionError::Abort)?;
                if old.meta.last_log_id > snap.meta.last_log_id {
                    return Ok(false);
                }
            }
            t.insert(SNAPSHOT, bytes.as_slice())?;
            if let Some(applied) = applied {
                t.insert(APPLIED, applied)?;
            }
            Ok(true)
        })
        .map_err(|e| disk.tx_error("write the snapshot", e))?;
    // The log is purged behind a snapshot: it must be durable first.
    disk.flush("the snapshot").await?;
    Ok(saved)
}

/// The state machine: [`ClusterState`], the last applied log id and the membership.
pub struct StateMachineStore {
    disk: Disk,
    tree: sled::Tree,
    current: Applied,
    tx: watch::Sender<Applied>,
}

impl StateMachineStore {
    /// Loads the applied state, or the snapshot when it is newer (the applied state is not
    /// flushed; a snapshot is).
    pub(super) fn load(disk: Disk, tree: sled::Tree) -> Result<StateMachineStore, StoreError> {
        let mut current = match disk.get::<AppliedRecord>(&tree, APPLIED, "the applied state")? {
            Some(r) => Applied { last_applied: r.last_applied, membership: r.membership, state: r.state },
            None => Applied::default(),
        };
        if let Some(snap) = disk.get::<StoredSnapshot>(&tree, SNAPSHOT, "the snapshot")?
            && snap.meta.last_log_id > current.last_applied
        {
            current = Applied {
                last_applied: snap.meta.last_log_id,
                membership: snap.meta.last_membership,
                state: disk.decode("the snapshot's state", &snap.data)?,
            };
        }
        let (tx, _) = watch::channel(current.clone());
        Ok(StateMachineStore { disk, tree, current, tx })
    }

    /// The change feed: the state after every apply batch and snapshot install, starting
    /// with the state loaded from disk.
    pub fn watch(&self) -> watch::Receiver<Applied> {
        self.tx.subscribe()
    }

    fn publish(&self) {
        // send_replace: the value is kept even while nobody is subscribed.
        self.tx.send_replace(self.current.clone());
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>), StorageError<NodeId>> {
        Ok((self.current.last_applied, self.current.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        for entry in entries {
            self.current.last_applied = Some(entry.log_id);
            replies.push(match entry.payload {
                EntryPayload::Blank => Response::Applied,
                EntryPayload::Normal(req) => self.current.state.apply(&req),
                EntryPayload::Membership(m) => {
                    self.current.membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::Applied
                }
            });
        }
        if replies.is_empty() {
            return Ok(replies);
        }
        // Not flushed: after a crash, the log replays what was lost.
        let bytes = encode_applied(&self.disk, &self.current).map_err(|e| StorageIOError::write_state_machine(&e))?;
        self.tree
            .insert(APPLIED, bytes)
            .map_err(|e| StorageIOError::write_state_machine(&self.disk.io("write the applied state", e)))?;
        self.publish();
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder { disk: self.disk.clone(), tree: self.tree.clone(), applied: self.current.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let signature = Some(meta.signature());
        let data = snapshot.into_inner();
        let state: ClusterState = self
            .disk
            .decode("the received snapshot", &data)
            .map_err(|e| StorageIOError::read_snapshot(signature.clone(), &e))?;
        let installed = Applied { last_applied: meta.last_log_id, membership: meta.last_membership.clone(), state };
        let applied = encode_applied(&self.disk, &installed).map_err(|e| StorageIOError::write_state_machine(&e))?;
        let stored = StoredSnapshot { meta: meta.clone(), data };
        save_snapshot(&self.disk, &self.tree, &stored, Some(&applied), true)
            .await
            .map_err(|e| StorageIOError::write_snapshot(signature, &e))?;
        self.current = installed;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let stored: Option<StoredSnapshot> =
            self.disk.get(&self.tree, SNAPSHOT, "the snapshot").map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(StoredSnapshot::into_snapshot))
    }
}

/// Builds a snapshot of the state as it was when the builder was taken.
pub struct SnapshotBuilder {
    disk: Disk,
    tree: sled::Tree,
    applied: Applied,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let data = self
            .disk
            .encode("the snapshot's state", &self.applied.state)
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let meta = SnapshotMeta {
            last_log_id: self.applied.last_applied,
            last_membership: self.applied.membership.clone(),
            snapshot_id: snapshot_id(self.applied.last_applied),
        };
        let stored = StoredSnapshot { meta, data };
        save_snapshot(&self.disk, &self.tree, &stored, None, false)
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(stored.meta.signature()), &e))?;
        Ok(stored.into_snapshot())
    }
}

/// A snapshot's id: its last log id and the time it was built (two snapshots with the same
/// last log id hold the same state anyway).
fn snapshot_id(last: Option<LogId<NodeId>>) -> String {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    match last {
        Some(l) => format!("{l}-{millis}"),
        None => format!("empty-{millis}"),
    }
}
