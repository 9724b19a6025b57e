//! Node-to-node gRPC under mutual TLS, with real single-node Rafts on 127.0.0.1 and
//! certificates made by our own helpers: who gets an answer, who is refused at the handshake
//! (and that the server logged it), who is denied by the Raft service, and a node joining
//! and proposing through the leader.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use barman::cluster::network::{Acks, Network, Peers};
use barman::cluster::rpc::{ForwardRequest, ForwardResponse, ProposeError, RaftService, propose, propose_via};
use barman::cluster::types::{Member, Request, Response, TypeConfig, node_id};
use barman::transport::grpc;
use barman::transport::tls::{self, ClientTls, Pem, TlsFiles};
use barman_proto::v1::RaftRequest;
use barman_proto::v1::raft_client::RaftClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tracing::Instrument;

type Raft = openraft::Raft<TypeConfig>;

/// Every WARN of this test binary, as text (one subscriber for all tests; each test reads
/// the lines of its own server, whose span names its listening address).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buf
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The logged lines of the server listening on `addr` that contain `needle`, once at
/// least `n` are there (or after 5 s).
async fn log_lines(addr: SocketAddr, needle: &str, n: usize) -> Vec<String> {
    let tag = format!("listen={addr}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
        let lines: Vec<String> =
            text.lines().filter(|l| l.contains(&tag) && l.contains(needle)).map(str::to_string).collect();
        if lines.len() >= n || Instant::now() > deadline {
            // A little longer, to see a second line that should not come.
            if lines.len() >= n {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
                return text.lines().filter(|l| l.contains(&tag) && l.contains(needle)).map(str::to_string).collect();
            }
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A CA and the files of the nodes it signed, in a temporary directory.
struct Pki {
    ca: Pem,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = tls::new_ca(name).unwrap();
        std::fs::write(dir.path().join("ca.crt"), &ca.cert).unwrap();
        Pki { ca, dir }
    }

    fn node(&self, name: &str) -> Pem {
        tls::new_node_cert(&self.ca, name, &["127.0.0.1".into()]).unwrap()
    }

    /// Writes `name`'s certificate and key with our helper.
    fn files(&self, name: &str) -> TlsFiles {
        let d = self.dir.path();
        let (cert, key) = (d.join(format!("{name}.crt")), d.join(format!("{name}.key")));
        tls::write_pem_files(&self.node(name), &cert, &key).unwrap();
        TlsFiles { ca: d.join("ca.crt"), cert, key }
    }

    fn client(&self, name: &str) -> ClientTls {
        ClientTls::from_pem(&self.ca.cert, &self.node(name))
    }
}

struct Node {
    id: u64,
    raft: Raft,
    addr: SocketAddr,
    member: Member,
    peers: Peers,
    acks: Arc<Acks>,
    _stop: oneshot::Sender<()>,
}

/// A node serving its Raft on 127.0.0.1, alone in a new cluster when `init`.
async fn start(name: &str, files: &TlsFiles, init: bool) -> Node {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let member = Member { name: name.into(), site: "s1".into(), addr: addr.to_string() };
    let id = node_id(name);
    let config = openraft::Config {
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        ..Default::default()
    };
    let config = Arc::new(config.validate().unwrap());
    let acks = Acks::new();
    let peers = Peers::new(ClientTls::load(files).unwrap());
    let network = Network::new(id, peers.clone(), acks.clone());
    let raft = Raft::new(id, config, network, mem::LogStore::default(), mem::StateMachine::default()).await.unwrap();
    let server_tls = tls::server_config(files).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    // Every node of these tests lists the other in its cluster_peers.
    let routes = RaftService::new(raft.clone(), ["alpha", "beta"].map(String::from).into()).routes();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let span = tracing::warn_span!("node", node = name, listen = %addr);
    tokio::spawn(grpc::serve(listener, server_tls, routes, shutdown).instrument(span));
    if init {
        raft.initialize(BTreeMap::from([(id, member.clone())])).await.unwrap();
        raft.wait(Some(Duration::from_secs(10))).current_leader(id, "alone").await.unwrap();
    }
    Node { id, raft, addr, member, peers, acks, _stop: stop }
}

/// A Vote as a stranger would send it.
fn vote_request(from: &str) -> RaftRequest {
    let vote = openraft::raft::VoteRequest::new(openraft::Vote::new(99, node_id(from)), None);
    RaftRequest { data: grpc::encode(&vote).unwrap() }
}

fn raw_client(node: &Node, tls: &ClientTls) -> RaftClient<tonic::transport::Channel> {
    RaftClient::new(grpc::channel(&node.addr.to_string(), &node.member.name, tls).unwrap())
}

fn server_decl(name: &str) -> ForwardRequest {
    ForwardRequest::Write(Request::Server { name: name.into(), candidates: vec![node_id("alpha")] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_our_ca_gets_answers() {
    logs();
    let pki = Pki::new("cluster");
    let alpha = start("alpha", &pki.files("alpha"), true).await;

    // A member's Vote is answered (it is stale: alpha leads in a later term than 0).
    let mut member = raw_client(&alpha, &pki.client("alpha"));
    let reply = member.vote(vote_request("alpha")).await.expect("a member is answered").into_inner();
    let answer: Result<openraft::raft::VoteResponse<u64>, openraft::error::Fatal<u64>> =
        grpc::decode(&reply.data).unwrap();
    assert!(answer.is_ok(), "{answer:?}");

    // A node of our CA that is not a member may not forward a change: refused at once
    // (not retried until the deadline), and logged once.
    let beta = Peers::new(pki.client("beta"));
    let t0 = Instant::now();
    let e = propose_via(&beta, std::slice::from_ref(&alpha.member), server_decl("pg1"), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(e, ProposeError::Refused(_)), "{e}");
    assert!(e.to_string().contains("'beta' is not a member of this cluster"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(4), "the refusal was retried");
    // On the leader itself, propose applies locally.
    let done = propose(&alpha.raft, &alpha.peers, server_decl("pg2"), Duration::from_secs(5)).await.unwrap();
    assert_eq!(done, ForwardResponse::Written(Response::Applied));
    let refused = log_lines(alpha.addr, "refused", 1).await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("refused Forward from 'beta'"), "{}", refused[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused_and_the_refusal_logged() {
    logs();
    let pki = Pki::new("cluster");
    let alpha = start("alpha", &pki.files("alpha"), true).await;
    let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca.cert)).domain_name("alpha");
    let channel =
        Endpoint::from_shared(format!("https://{}", alpha.addr)).unwrap().tls_config(config).unwrap().connect_lazy();
    // With TLS 1.3 the client finishes its handshake before the server refuses: the first
    // RPC is where it fails.
    let status = RaftClient::new(channel).vote(vote_request("anonymous")).await.unwrap_err();
    assert_ne!(status.code(), Code::Ok);
    let lines = log_lines(alpha.addr, "refused a connection from 127.0.0.1:", 1).await;
    assert_eq!(lines.len(), 1, "logged once: {lines:?}");
    assert!(lines[0].contains("WARN") && lines[0].contains("no certificates"), "{}", lines[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_of_another_ca_is_refused_and_the_refusal_logged() {
    logs();
    let pki = Pki::new("cluster");
    let alpha = start("alpha", &pki.files("alpha"), true).await;
    let foreign = Pki::new("cluster");
    // It trusts our CA for the server, but presents a certificate of another CA (same CA
    // name, even).
    let eve = ClientTls::from_pem(&pki.ca.cert, &foreign.node("eve"));
    let status = raw_client(&alpha, &eve).vote(vote_request("eve")).await.unwrap_err();
    assert_ne!(status.code(), Code::Ok);
    let lines = log_lines(alpha.addr, "refused a connection from 127.0.0.1:", 1).await;
    assert_eq!(lines.len(), 1, "logged once: {lines:?}");
    assert!(lines[0].contains("UnknownIssuer") || lines[0].contains("BadSignature"), "{}", lines[0]);
    // Not even a Forward gets through.
    let e =
        propose_via(&Peers::new(eve), std::slice::from_ref(&alpha.member), server_decl("x"), Duration::from_secs(1))
            .await
            .unwrap_err();
    assert!(e.to_string().contains("no leader took the change"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_of_another_ca_or_name_is_refused_by_the_client() {
    logs();
    let foreign = Pki::new("cluster");
    let alpha = start("alpha", &foreign.files("alpha"), true).await;
    let pki = Pki::new("cluster");
    let status = raw_client(&alpha, &pki.client("beta")).vote(vote_request("beta")).await.unwrap_err();
    let text = grpc::status_text(&status);
    assert!(text.contains("UnknownIssuer") || text.contains("BadSignature"), "{text}");

    // Our CA, but the certificate of another node than the one we meant to call.
    let gamma = Member { name: "gamma".into(), ..alpha.member.clone() };
    let client = ClientTls::from_pem(&foreign.ca.cert, &foreign.node("beta"));
    let mut wrong = RaftClient::new(grpc::channel(&gamma.addr, &gamma.name, &client).unwrap());
    let status = wrong.vote(vote_request("beta")).await.unwrap_err();
    let text = grpc::status_text(&status);
    assert!(text.contains("not valid for name \"gamma\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_our_ca_for_a_name_outside_the_cluster_cannot_vote() {
    logs();
    let pki = Pki::new("cluster");
    let alpha = start("alpha", &pki.files("alpha"), true).await;
    let mut mallory = raw_client(&alpha, &pki.client("mallory"));
    let status = mallory.vote(vote_request("mallory")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("'mallory' is not a member"), "{}", status.message());
    let entries = openraft::raft::AppendEntriesRequest::<TypeConfig> {
        vote: openraft::Vote::new_committed(99, node_id("mallory")),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    let status = mallory.append_entries(RaftRequest { data: grpc::encode(&entries).unwrap() }).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let lines = log_lines(alpha.addr, "from 'mallory'", 2).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains("WARN") && lines[0].contains("refused Vote from 'mallory'"), "{}", lines[0]);
    assert!(lines[1].contains("refused AppendEntries from 'mallory'"), "{}", lines[1]);
    let m = alpha.raft.metrics().borrow().clone();
    assert_eq!(m.current_leader, Some(alpha.id), "alpha still leads");
    assert_eq!(m.vote.leader_id().term, m.current_term);
    assert!(m.current_term < 99, "mallory's term was never seen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_through_the_leader_and_proposes_through_it() {
    logs();
    let pki = Pki::new("cluster");
    let alpha = start("alpha", &pki.files("alpha"), true).await;
    let beta = start("beta", &pki.files("beta"), false).await;

    let join = ForwardRequest::AddNode { id: beta.id, member: beta.member.clone() };
    let seeds = std::slice::from_ref(&alpha.member);
    // A node outside the cluster cannot add itself: membership changes through a member
    // (the operator's `cluster add-node` on it).
    let e = propose_via(&beta.peers, seeds, join.clone(), Duration::from_secs(2)).await.unwrap_err();
    assert!(matches!(e, ProposeError::Refused(_)), "{e}");
    assert_eq!(
        propose(&alpha.raft, &alpha.peers, join.clone(), Duration::from_secs(20)).await.unwrap(),
        ForwardResponse::Done
    );
    let voters: Vec<u64> = alpha.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
    assert_eq!(voters.len(), 2);
    assert!(voters.contains(&beta.id));
    // Once a member, beta may ask (the same change again: nothing to do).
    assert_eq!(propose_via(&beta.peers, seeds, join, Duration::from_secs(5)).await.unwrap(), ForwardResponse::Done);

    // beta now knows its leader and forwards to it.
    beta.raft.wait(Some(Duration::from_secs(10))).current_leader(alpha.id, "beta follows alpha").await.unwrap();
    let done = propose(&beta.raft, &beta.peers, server_decl("pg1"), Duration::from_secs(5)).await.unwrap();
    assert_eq!(done, ForwardResponse::Written(Response::Applied));
    assert!(alpha.acks.alive(Duration::from_secs(2)).contains(&beta.id), "beta answers alpha's heartbeats");
    assert!(alpha.acks.last(beta.id).is_some());

    let done = propose(&beta.raft, &beta.peers, ForwardRequest::RemoveNode { id: beta.id }, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done, ForwardResponse::Done);
    // The change is committed; alpha's metrics show it once applied there.
    let only_alpha = |m: &openraft::RaftMetrics<_, _>| m.membership_config.membership().nodes().count() == 1;
    let _ = alpha.raft.wait(Some(Duration::from_secs(5))).metrics(only_alpha, "beta removed").await;
    let nodes: Vec<u64> =
        alpha.raft.metrics().borrow().membership_config.membership().nodes().map(|(id, _)| *id).collect();
    assert_eq!(nodes, [alpha.id]);
    let refused = log_lines(alpha.addr, "refused", 1).await;
    assert_eq!(refused.len(), 1, "only beta's own join was refused: {refused:?}");
    assert!(refused[0].contains("refused Forward from 'beta'"), "{}", refused[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_from_one_address_cannot_hold_every_handshake() {
    use tokio::io::AsyncReadExt;
    logs();
    let pki = Pki::new("cluster");
    let alpha = start("alpha", &pki.files("alpha"), true).await;
    let extra = 4;
    let mut silent = Vec::new();
    for _ in 0..grpc::MAX_HANDSHAKES_PER_ADDRESS + extra {
        silent.push(tokio::net::TcpStream::connect(alpha.addr).await.unwrap());
        // In order: the server accepts them as they come.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Those over the limit are closed at once, unread; the others wait for a handshake.
    let mut reads = tokio::task::JoinSet::new();
    for (i, mut s) in silent.into_iter().enumerate() {
        reads.spawn(async move {
            let mut b = [0u8; 1];
            let closed =
                matches!(tokio::time::timeout(Duration::from_secs(1), s.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_)));
            (i, closed, s)
        });
    }
    let mut closed: Vec<usize> = Vec::new();
    let mut held = Vec::new();
    while let Some(r) = reads.join_next().await {
        let (i, c, s) = r.unwrap();
        if c {
            closed.push(i);
        } else {
            held.push(s);
        }
    }
    closed.sort();
    let over: Vec<usize> = (grpc::MAX_HANDSHAKES_PER_ADDRESS..grpc::MAX_HANDSHAKES_PER_ADDRESS + extra).collect();
    assert_eq!(closed, over, "the connections over the limit were not the ones closed");
    let refused = log_lines(alpha.addr, "over the limits", 1).await;
    assert_eq!(refused.len(), 1, "one line for the burst: {refused:?}");
    // Once they go, a member is served again.
    drop(held);
    let mut member = raw_client(&alpha, &pki.client("alpha"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match member.vote(vote_request("alpha")).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "not served after the silent ones left: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn certificate_files_are_never_overwritten() {
    let pki = Pki::new("cluster");
    pki.files("alpha");
    let d = pki.dir.path();
    let e = tls::write_pem_files(&pki.node("alpha"), &d.join("alpha.crt"), &d.join("alpha.key")).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    assert!(Path::new(&d.join("alpha.key")).exists());
}

/// A Raft store in memory, enough for these tests (the node's own is on disk).
mod mem {
    use std::fmt::Debug;
    use std::io::Cursor;
    use std::ops::RangeBounds;
    use std::sync::{Arc, Mutex};

    use barman::cluster::types::{ClusterState, Member, Response, TypeConfig};
    use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
    use openraft::{
        Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
        StorageError, StoredMembership, Vote,
    };

    type Id = u64;

    #[derive(Default)]
    struct Log {
        vote: Option<Vote<Id>>,
        committed: Option<LogId<Id>>,
        purged: Option<LogId<Id>>,
        entries: std::collections::BTreeMap<u64, Entry<TypeConfig>>,
    }

    #[derive(Clone, Default)]
    pub struct LogStore(Arc<Mutex<Log>>);

    impl RaftLogReader<TypeConfig> for LogStore {
        async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
            &mut self,
            range: RB,
        ) -> Result<Vec<Entry<TypeConfig>>, StorageError<Id>> {
            Ok(self.0.lock().unwrap().entries.range(range).map(|(_, e)| e.clone()).collect())
        }
    }

    impl RaftLogStorage<TypeConfig> for LogStore {
        type LogReader = Self;

        async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<Id>> {
            let log = self.0.lock().unwrap();
            let last = log.entries.values().next_back().map(|e| e.log_id).or(log.purged);
            Ok(LogState { last_purged_log_id: log.purged, last_log_id: last })
        }

        async fn get_log_reader(&mut self) -> Self {
            self.clone()
        }

        async fn save_vote(&mut self, vote: &Vote<Id>) -> Result<(), StorageError<Id>> {
            self.0.lock().unwrap().vote = Some(*vote);
            Ok(())
        }

        async fn read_vote(&mut self) -> Result<Option<Vote<Id>>, StorageError<Id>> {
            Ok(self.0.lock().unwrap().vote)
        }

        async fn save_committed(&mut self, committed: Option<LogId<Id>>) -> Result<(), StorageError<Id>> {
            self.0.lock().unwrap().committed = committed;
            Ok(())
        }

        async fn read_committed(&mut self) -> Result<Option<LogId<Id>>, StorageError<Id>> {
            Ok(self.0.lock().unwrap().committed)
        }

        async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<Id>>
        where
            I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
            I::IntoIter: OptionalSend,
        {
            {
                let mut log = self.0.lock().unwrap();
                for e in entries {
                    log.entries.insert(e.log_id.index, e);
                }
            }
            callback.log_io_completed(Ok(()));
            Ok(())
        }

        async fn truncate(&mut self, log_id: LogId<Id>) -> Result<(), StorageError<Id>> {
            self.0.lock().unwrap().entries.split_off(&log_id.index);
            Ok(())
        }

        async fn purge(&mut self, log_id: LogId<Id>) -> Result<(), StorageError<Id>> {
            let mut log = self.0.lock().unwrap();
            log.purged = Some(log_id);
            log.entries = log.entries.split_off(&(log_id.index + 1));
            Ok(())
        }
    }

    #[derive(Default)]
    struct Machine {
        applied: Option<LogId<Id>>,
        membership: StoredMembership<Id, Member>,
        state: ClusterState,
        snapshot: Option<(SnapshotMeta<Id, Member>, Vec<u8>)>,
    }

    #[derive(Clone, Default)]
    pub struct StateMachine(Arc<Mutex<Machine>>);

    impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
        async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<Id>> {
            let mut m = self.0.lock().unwrap();
            let data = serde_json::to_vec(&m.state).unwrap();
            let meta = SnapshotMeta {
                last_log_id: m.applied,
                last_membership: m.membership.clone(),
                snapshot_id: format!("{:?}", m.applied),
            };
            m.snapshot = Some((meta.clone(), data.clone()));
            Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
        }
    }

    impl RaftStateMachine<TypeConfig> for StateMachine {
        type SnapshotBuilder = Self;

        async fn applied_state(
            &mut self,
        ) -> Result<(Option<LogId<Id>>, StoredMembership<Id, Member>), StorageError<Id>> {
            let m = self.0.lock().unwrap();
            Ok((m.applied, m.membership.clone()))
        }

        async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<Id>>
        where
            I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
            I::IntoIter: OptionalSend,
        {
            let mut m = self.0.lock().unwrap();
            let mut out = Vec::new();
            for e in entries {
                m.applied = Some(e.log_id);
                out.push(match e.payload {
                    EntryPayload::Blank => Response::Applied,
                    EntryPayload::Normal(req) => m.state.apply(&req),
                    EntryPayload::Membership(mem) => {
                        m.membership = StoredMembership::new(Some(e.log_id), mem);
                        Response::Applied
                    }
                });
            }
            Ok(out)
        }

        async fn get_snapshot_builder(&mut self) -> Self {
            self.clone()
        }

        async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<Id>> {
            Ok(Box::new(Cursor::new(Vec::new())))
        }

        async fn install_snapshot(
            &mut self,
            meta: &SnapshotMeta<Id, Member>,
            snapshot: Box<Cursor<Vec<u8>>>,
        ) -> Result<(), StorageError<Id>> {
            let mut m = self.0.lock().unwrap();
            m.state = serde_json::from_slice(snapshot.get_ref()).unwrap();
            m.applied = meta.last_log_id;
            m.membership = meta.last_membership.clone();
            m.snapshot = Some((meta.clone(), snapshot.into_inner()));
            Ok(())
        }

        async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<Id>> {
            let m = self.0.lock().unwrap();
            Ok(m.snapshot.clone().map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
        }
    }
}
