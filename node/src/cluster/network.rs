//! openraft's network over our gRPC: one lazily-connecting channel per peer (shared with
//! forwarded proposals), openraft's messages bincode-encoded in the `data` fields, and the
//! time each peer last answered, which the leader reads to tell live nodes from dead ones.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use barman_proto::v1::RaftRequest;
use barman_proto::v1::raft_client::RaftClient;
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Code;
use tonic::transport::Channel;

use super::ownership::NodeId;
use super::types::{Member, TypeConfig};
use crate::transport::grpc::{self, GrpcError};
use crate::transport::tls::ClientTls;

/// When each peer last answered an AppendEntries or a Vote, on this node's monotonic clock.
#[derive(Debug, Default)]
pub struct Acks {
    last: Mutex<HashMap<NodeId, Instant>>,
}

impl Acks {
    pub fn new() -> Arc<Acks> {
        Arc::default()
    }

    pub fn record(&self, node: NodeId) {
        self.record_at(node, Instant::now());
    }

    pub fn record_at(&self, node: NodeId, at: Instant) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let t = last.entry(node).or_insert(at);
        *t = (*t).max(at);
    }

    pub fn last(&self, node: NodeId) -> Option<Instant> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner).get(&node).copied()
    }

    /// The peers that answered within `within` (this node is not among them: it sends
    /// itself nothing).
    pub fn alive(&self, within: Duration) -> BTreeSet<NodeId> {
        self.alive_at(Instant::now(), within)
    }

    pub fn alive_at(&self, now: Instant, within: Duration) -> BTreeSet<NodeId> {
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.iter().filter(|(_, t)| now.saturating_duration_since(**t) <= within).map(|(id, _)| *id).collect()
    }
}

/// One channel per peer, made on first use and reused; made anew when the member's name or
/// address changes.
#[derive(Debug, Clone)]
pub struct Peers {
    tls: ClientTls,
    channels: Arc<Mutex<HashMap<NodeId, (Member, Channel)>>>,
}

impl Peers {
    pub fn new(tls: ClientTls) -> Peers {
        Peers { tls, channels: Arc::default() }
    }

    /// The one channel to `member` (every service of the peer shares it). Call it inside a
    /// Tokio runtime.
    pub fn channel(&self, id: NodeId, member: &Member) -> Result<Channel, GrpcError> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(match channels.get(&id) {
            Some((m, ch)) if m.name == member.name && m.addr == member.addr => ch.clone(),
            _ => {
                let ch = grpc::channel(&member.addr, &member.name, &self.tls)?;
                channels.insert(id, (member.clone(), ch.clone()));
                ch
            }
        })
    }

    /// The Raft service of `member`. Call it inside a Tokio runtime.
    pub fn client(&self, id: NodeId, member: &Member) -> Result<RaftClient<Channel>, GrpcError> {
        let channel = self.channel(id, member)?;
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(grpc::MAX_MESSAGE)
            .max_encoding_message_size(grpc::MAX_MESSAGE))
    }
}

/// Makes openraft's per-peer clients.
pub struct Network {
    id: NodeId,
    peers: Peers,
    acks: Arc<Acks>,
}

impl Network {
    /// The network of node `id`, recording answers in `acks`.
    pub fn new(id: NodeId, peers: Peers, acks: Arc<Acks>) -> Network {
        Network { id, peers, acks }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerNetwork {
        PeerNetwork {
            id: self.id,
            target,
            member: node.clone(),
            client: self.peers.client(target, node).map_err(|e| e.to_string()),
            acks: self.acks.clone(),
        }
    }
}

/// openraft's client for one peer.
pub struct PeerNetwork {
    id: NodeId,
    target: NodeId,
    member: Member,
    /// Err when no channel could be set up (a bad address): every call is then unreachable.
    client: Result<RaftClient<Channel>, String>,
    acks: Arc<Acks>,
}

/// Why a call got no answer from the peer's Raft.
enum Failure {
    Unreachable(String),
    Timeout,
    /// It answered something we cannot read.
    Garbled(String),
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct CallError(String);

impl PeerNetwork {
    async fn call<T: DeserializeOwned>(
        &mut self,
        kind: RPCTypes,
        req: &impl Serialize,
        ttl: Duration,
    ) -> Result<T, Failure> {
        let data = grpc::encode(req).map_err(|e| Failure::Garbled(e.to_string()))?;
        let client = self.client.as_mut().map_err(|why| Failure::Unreachable(why.clone()))?;
        let mut request = tonic::Request::new(RaftRequest { data });
        request.set_timeout(ttl);
        let call = async {
            match kind {
                RPCTypes::AppendEntries => client.append_entries(request).await,
                RPCTypes::Vote => client.vote(request).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, call).await {
            Err(_) => return Err(Failure::Timeout),
            // Cancelled is how the server reports the deadline it was given.
            Ok(Err(s)) if matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled) => return Err(Failure::Timeout),
            // Refused connections, TLS failures, a peer that does not admit us: all make
            // openraft back off before the next try.
            Ok(Err(s)) => return Err(Failure::Unreachable(grpc::status_text(&s))),
            Ok(Ok(r)) => r.into_inner(),
        };
        grpc::decode(&reply.data).map_err(|e| Failure::Garbled(e.to_string()))
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        kind: RPCTypes,
        ttl: Duration,
        failure: Failure,
    ) -> RPCError<NodeId, Member, RaftError<NodeId, E>> {
        let who = |why: String| CallError(format!("{} at {}: {why}", self.member.name, self.member.addr));
        match failure {
            Failure::Unreachable(why) => RPCError::Unreachable(Unreachable::new(&who(why))),
            Failure::Garbled(why) => RPCError::Network(NetworkError::new(&who(why))),
            Failure::Timeout => {
                RPCError::Timeout(Timeout { action: kind, id: self.id, target: self.target, timeout: ttl })
            }
        }
    }

    /// One RPC whose answer is the peer's `Result<T, W>`, recorded in the acks when it came.
    /// `W` is what crosses the wire: `Fatal` where openraft's error is `RaftError<_,
    /// Infallible>` (Infallible has no serde), the `RaftError` itself otherwise.
    async fn rpc<T, W, E>(
        &mut self,
        kind: RPCTypes,
        req: &impl Serialize,
        option: RPCOption,
        record: bool,
    ) -> Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        T: DeserializeOwned,
        W: DeserializeOwned + Into<RaftError<NodeId, E>>,
        E: std::error::Error,
    {
        let ttl = option.hard_ttl();
        let answer: Result<T, W> = self.call(kind, req, ttl).await.map_err(|f| self.rpc_error(kind, ttl, f))?;
        match answer {
            Ok(resp) => {
                if record {
                    self.acks.record(self.target);
                }
                Ok(resp)
            }
            Err(e) => {
                Err(RPCError::RemoteError(RemoteError::new_with_node(self.target, self.member.clone(), e.into())))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.rpc::<_, Fatal<NodeId>, _>(RPCTypes::AppendEntries, &rpc, option, true).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.rpc::<_, RaftError<NodeId, InstallSnapshotError>, _>(RPCTypes::InstallSnapshot, &rpc, option, false).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.rpc::<_, Fatal<NodeId>, _>(RPCTypes::Vote, &rpc, option, true).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_means_answered_within_the_window() {
        let acks = Acks::default();
        let t0 = Instant::now();
        acks.record_at(1, t0);
        acks.record_at(2, t0 + Duration::from_secs(3));
        acks.record_at(2, t0 + Duration::from_secs(1));
        assert_eq!(acks.last(2), Some(t0 + Duration::from_secs(3)), "a late older answer does not go back");
        let now = t0 + Duration::from_secs(5);
        assert_eq!(acks.alive_at(now, Duration::from_secs(2)), BTreeSet::from([2]));
        assert_eq!(acks.alive_at(now, Duration::from_secs(5)), BTreeSet::from([1, 2]));
        assert_eq!(acks.alive_at(now, Duration::from_secs(1)), BTreeSet::new());
        assert!(acks.last(3).is_none());
    }
}
