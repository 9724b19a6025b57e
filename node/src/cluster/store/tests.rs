use std::collections::BTreeMap;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite, log_id};
use openraft::{
    Entry, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder, StorageError, StorageIOError, Vote,
};
use tempfile::TempDir;

use super::*;
use crate::cluster::ownership::{Command, NodeId};
use crate::cluster::types::{ClusterState, Member, Request, Response, TypeConfig, node_id};

/// A fresh store in its own temporary directory, removed when the guard drops.
struct FreshStore;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for FreshStore {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let (log, sm) = open(&dir.path().join("node")).map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

/// openraft's storage conformance suite (it runs its own runtimes: not a tokio test).
#[test]
fn openraft_storage_suite() {
    Suite::test_all(FreshStore).expect("storage suite");
}

fn entry(term: u64, index: u64, payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
    Entry { log_id: log_id(term, node_id("a"), index), payload }
}

fn members() -> Membership<NodeId, Member> {
    let a = Member { name: "a".into(), site: "s1".into(), addr: "127.0.0.1:7001".into() };
    Membership::new(vec![[node_id("a")].into()], BTreeMap::from([(node_id("a"), a)]))
}

fn server(name: &str) -> Request {
    Request::Server { name: name.into(), candidates: vec![node_id("a")] }
}

/// Everything a node needs after a restart comes back from disk: vote, log state, commit
/// index, applied state, snapshot, and the change feed's first value.
#[tokio::test]
async fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node");
    let a = node_id("a");
    let assign = Request::Ownership {
        server: "pg".into(),
        cmd: Command::Assign { node: a, epoch: 1, renewals: 0 },
        report: None,
    };
    let entries = vec![
        entry(1, 1, EntryPayload::Blank),
        entry(1, 2, EntryPayload::Membership(members())),
        entry(1, 3, EntryPayload::Normal(server("pg"))),
        entry(1, 4, EntryPayload::Normal(assign)),
        entry(1, 5, EntryPayload::Normal(Request::ForgetServer { name: "nope".into() })),
    ];
    let later = entry(2, 6, EntryPayload::Normal(server("other")));

    let (snapshot_meta, expected_state) = {
        let (mut log, mut sm) = open(&path).unwrap();
        let mut feed = sm.watch();
        log.blocking_append(entries.clone()).await.unwrap();
        log.save_vote(&Vote::new(2, a)).await.unwrap();
        log.save_committed(Some(log_id(1, a, 5))).await.unwrap();

        let replies = sm.apply(entries.clone()).await.unwrap();
        assert_eq!(replies.len(), 5, "one response per entry");
        assert_eq!(replies[..4], [Response::Applied, Response::Applied, Response::Applied, Response::Applied]);
        assert!(matches!(replies[4], Response::Unknown(_)));
        assert!(feed.has_changed().unwrap(), "apply publishes");
        assert_eq!(feed.borrow_and_update().last_applied, Some(log_id(1, a, 5)));

        let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, a, 5)));
        log.purge(log_id(1, a, 5)).await.unwrap();

        // Applied past the snapshot: the applied state, not the snapshot, must come back.
        log.blocking_append([later.clone()]).await.unwrap();
        log.save_committed(Some(log_id(2, a, 6))).await.unwrap();
        assert_eq!(sm.apply([later.clone()]).await.unwrap(), [Response::Applied]);
        let state = feed.borrow().state.clone();
        assert_eq!(state.servers.len(), 2);
        (snap.meta, state)
    };

    let (mut log, mut sm) = eventually(|| open(&path));
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, a)));
    let st = log.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(log_id(1, a, 5)));
    assert_eq!(st.last_log_id, Some(log_id(2, a, 6)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, a, 6)));
    let kept = log.try_get_log_entries(0..).await.unwrap();
    assert_eq!(kept.iter().map(|e| e.log_id).collect::<Vec<_>>(), [later.log_id]);

    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(2, a, 6)));
    assert_eq!(membership.log_id(), &Some(log_id(1, a, 2)));
    assert_eq!(membership.membership(), &members());

    let feed = sm.watch();
    let first = feed.borrow();
    assert_eq!(first.last_applied, Some(log_id(2, a, 6)));
    assert_eq!(first.membership, membership);
    assert_eq!(first.state, expected_state);
    assert_eq!(first.state.servers["pg"].ownership.owner, Some(a));

    let snap = sm.get_current_snapshot().await.unwrap().expect("the snapshot survives");
    assert_eq!(snap.meta, snapshot_meta);
    let state: ClusterState = codec::decode(snap.snapshot.get_ref()).unwrap();
    assert_eq!(state.servers.keys().collect::<Vec<_>>(), ["pg"]);
}

/// A snapshot installed from a leader replaces the state, survives a restart, and is
/// published on the change feed.
#[tokio::test]
async fn installed_snapshot_survives_reopen() {
    let a = node_id("a");
    let leader_dir = tempfile::tempdir().unwrap();
    let (_leader_log, mut leader) = open(leader_dir.path()).unwrap();
    leader
        .apply([entry(1, 1, EntryPayload::Membership(members())), entry(1, 2, EntryPayload::Normal(server("pg")))])
        .await
        .unwrap();
    let snap = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    {
        let (_log, mut sm) = open(dir.path()).unwrap();
        let mut feed = sm.watch();
        let mut incoming = sm.begin_receiving_snapshot().await.unwrap();
        *incoming = *snap.snapshot;
        sm.install_snapshot(&snap.meta, incoming).await.unwrap();
        assert!(feed.has_changed().unwrap(), "install publishes");
        assert_eq!(feed.borrow_and_update().last_applied, Some(log_id(1, a, 2)));
    }
    let (_log, mut sm) = open(dir.path()).unwrap();
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, a, 2)));
    assert!(sm.watch().borrow().state.servers.contains_key("pg"));
    assert_eq!(sm.get_current_snapshot().await.unwrap().map(|s| s.meta), Some(snap.meta));
}

/// sled locks its directory: a second store on it, even in the same process, is refused in
/// one line that names the directory; it opens again once the first is gone.
#[test]
fn second_open_of_a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node");
    let first = open(&path).unwrap();
    let err = open(&path).err().expect("second open must fail");
    assert!(matches!(&err, StoreError::InUse { path: p } if *p == path), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()) && msg.contains("another node process"), "{msg}");
    drop(first);
    eventually(|| open(&path));
}

#[test]
fn directory_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("home").join(".node");
    let _store = open(&path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o700);
}

/// `f()` once it succeeds, trying for up to 10 s (a lock released by a background thread).
fn eventually<T, E: std::fmt::Debug>(mut f: impl FnMut() -> Result<T, E>) -> T {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if std::time::Instant::now() > until => panic!("{e:?}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

/// A damaged log record is reported as such, naming the entry and the directory.
#[tokio::test]
async fn corrupt_log_entry_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node");
    {
        let (mut log, _sm) = open(&path).unwrap();
        log.blocking_append([entry(1, 1, EntryPayload::Blank), entry(1, 2, EntryPayload::Blank)]).await.unwrap();
    }
    {
        // sled lets its file lock go when its flusher thread notices the drop: wait for it.
        let db = eventually(|| sled::open(&path));
        db.open_tree(LOG_TREE).unwrap().insert(2u64.to_be_bytes(), &[1u8, 0xff, 0xff][..]).unwrap();
        db.flush().unwrap();
    }
    let (mut log, _sm) = eventually(|| open(&path));
    let err = log.get_log_state().await.unwrap_err().to_string();
    assert!(err.contains("log entry 2 is corrupt") && err.contains(&path.display().to_string()), "{err}");
    assert!(log.try_get_log_entries(1..2).await.is_ok(), "the sound entry still reads");
}

#[test]
fn codec_refuses_what_it_did_not_write() {
    let bytes = codec::encode(&(7u64, "x".to_string())).unwrap();
    assert_eq!(codec::decode::<(u64, String)>(&bytes).unwrap(), (7, "x".to_string()));
    assert!(codec::decode::<u64>(&[]).is_err(), "empty");
    assert!(codec::decode::<u64>(&[9, 7]).unwrap_err().to_string().contains("unknown record format 9"));
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(codec::decode::<(u64, String)>(&longer).unwrap_err().to_string().contains("trailing"));
    assert!(codec::decode::<(u64, String)>(&bytes[..bytes.len() - 1]).is_err(), "truncated");
}
