//! The Raft service other nodes call, and the proposing side.
//!
//! Served: openraft's three RPCs and `Forward` (a change asked of the leader by another
//! node), taken only from members of the cluster: a certificate of our CA for a name outside
//! it (a WAL client's, a removed node's) must neither vote nor change anything. A node not in
//! a cluster yet takes the Raft RPCs only from the nodes of its `cluster_peers`. Inside
//! `Forward`, each request is checked against its sender ([`authorize`]): a node speaks only
//! for itself. Proposing: carry the change out here when this node leads, else forward it to
//! the leader, following its hints through elections until a deadline.

use std::collections::BTreeSet;
use std::time::Duration;

use barman_proto::v1::raft_server::{Raft as RaftRpc, RaftServer};
use barman_proto::v1::{RaftReply, RaftRequest};
use openraft::error::{ClientWriteError, Fatal, RaftError};
use openraft::{ChangeMembers, RaftMetrics};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tonic::Status;
use tonic::service::Routes;

use super::network::Peers;
use super::ownership::{Command, NodeId};
use super::types::{Member, Request, Response, TypeConfig, node_id};
use crate::transport::grpc;

type Raft = openraft::Raft<TypeConfig>;

/// A change asked of the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardRequest {
    /// A command to replicate.
    Write(Request),
    /// Adds a node as a voter (first as a learner, until it has caught up).
    AddNode { id: NodeId, member: Member },
    /// Takes a node out of the group.
    RemoveNode { id: NodeId },
}

/// What the leader (or a node that is not) answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardResponse {
    /// The command was committed and applied; its outcome.
    Written(Response),
    /// The membership change is committed (or there was nothing to change).
    Done,
    /// This node does not lead; the leader it knows of, if any.
    NotLeader { leader: Option<(NodeId, Member)> },
    /// The leader refused or failed the change.
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("no leader took the change within {:.1}s (last: {last}): is a majority of the cluster up?", waited.as_secs_f64())]
    NoLeader { waited: Duration, last: String },
    #[error("this node's Raft has stopped: {0}")]
    Stopped(String),
    /// A node refused this node the change (not a member, or not its to ask): final.
    #[error("refused by {0}")]
    Refused(String),
}

/// Why a forwarded attempt got no answer, or a final one.
enum Unanswered {
    /// Down, unreachable, not answering in time: try again or elsewhere.
    Transient(String),
    /// Refused for who we are or what we asked: asking again changes nothing.
    Refused(String),
}

/// Carries out `req` on this node, which must be the leader (else `NotLeader`).
pub async fn apply(raft: &Raft, req: ForwardRequest) -> ForwardResponse {
    match req {
        ForwardRequest::Write(r) => match raft.client_write(r).await {
            Ok(written) => ForwardResponse::Written(written.data),
            Err(e) => refusal(e),
        },
        ForwardRequest::AddNode { id, member } => add_node(raft, id, member).await,
        ForwardRequest::RemoveNode { id } => remove_node(raft, id).await,
    }
}

fn refusal(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> ForwardResponse {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ForwardResponse::NotLeader { leader: f.leader_id.zip(f.leader_node) }
        }
        e => ForwardResponse::Failed(e.to_string()),
    }
}

/// `Some(NotLeader)` unless this node leads: a membership change judged on a follower's
/// (possibly stale) view could answer `Done` for a change never made.
fn unless_leader(raft: &Raft) -> Option<ForwardResponse> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    (m.current_leader != Some(m.id)).then(|| ForwardResponse::NotLeader { leader: leader_of(&m) })
}

async fn add_node(raft: &Raft, id: NodeId, member: Member) -> ForwardResponse {
    if let Some(not) = unless_leader(raft) {
        return not;
    }
    let stored = raft.metrics().borrow().membership_config.clone();
    let membership = stored.membership();
    if let Some(known) = membership.get_node(&id) {
        if *known != member {
            return ForwardResponse::Failed(format!(
                "node {id} is already in the cluster as '{}' at {}: remove it first to change it",
                known.name, known.addr
            ));
        }
        if membership.voter_ids().any(|v| v == id) {
            return ForwardResponse::Done;
        }
    }
    // Blocking: returns once the learner has caught up, so it votes knowing the log.
    if let Err(e) = raft.add_learner(id, member, true).await {
        return refusal(e);
    }
    match raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false).await {
        Ok(_) => ForwardResponse::Done,
        Err(e) => refusal(e),
    }
}

async fn remove_node(raft: &Raft, id: NodeId) -> ForwardResponse {
    if let Some(not) = unless_leader(raft) {
        return not;
    }
    let stored = raft.metrics().borrow().membership_config.clone();
    let membership = stored.membership();
    let change = if membership.voter_ids().any(|v| v == id) {
        // retain = false: the removed voter leaves the nodes too, not kept as a learner.
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else if membership.get_node(&id).is_some() {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    } else {
        return ForwardResponse::Done;
    };
    match raft.change_membership(change, false).await {
        Ok(_) => ForwardResponse::Done,
        Err(e) => refusal(e),
    }
}

/// Whether `sender` may ask for `req` through `Forward`; why not otherwise. A member speaks
/// for itself only: its own renewals, releases and site. Only the leader's own decisions
/// (made on the leader, never forwarded) assign ownership. Server declarations, transfers
/// and membership changes come from the operator through some member's control socket;
/// which member cannot be proven here, so any member may forward them.
pub fn authorize(sender: NodeId, req: &ForwardRequest) -> Result<(), String> {
    fn write(sender: NodeId, req: &Request, nested: bool) -> Result<(), String> {
        let itself = |node: NodeId, what: &str| {
            if node == sender { Ok(()) } else { Err(format!("{what} for node {node}, not for itself")) }
        };
        match req {
            Request::Ownership { cmd: Command::Renew { node, .. }, .. } => itself(*node, "a lease renewal"),
            Request::Ownership { cmd: Command::Release { node, .. }, .. } => itself(*node, "a release"),
            Request::Ownership { cmd: Command::Assign { .. }, server, .. } => {
                Err(format!("an assignment of '{server}': only the leader assigns ownership"))
            }
            Request::Site { node, .. } => itself(*node, "a site"),
            // Checked again when applied: only the owner in its epoch is recorded.
            Request::Deleted { node, .. } => itself(*node, "a deletion"),
            Request::Server { .. }
            | Request::ForgetServer { .. }
            | Request::Transfer { .. }
            | Request::Revoke { .. } => Ok(()),
            Request::Batch(_) if nested => Err("a batch inside a batch".into()),
            Request::Batch(reqs) => reqs.iter().try_for_each(|r| write(sender, r, true)),
        }
    }
    match req {
        ForwardRequest::Write(r) => write(sender, r, false),
        ForwardRequest::AddNode { .. } | ForwardRequest::RemoveNode { .. } => Ok(()),
    }
}

/// The Raft service of this node.
pub struct RaftService {
    raft: Raft,
    /// `cluster_peers`: whom a node not in a cluster yet takes Raft RPCs from.
    bootstrap: BTreeSet<String>,
}

impl RaftService {
    pub fn new(raft: Raft, bootstrap: BTreeSet<String>) -> RaftService {
        RaftService { raft, bootstrap }
    }

    /// The service as routes for [`grpc::serve`].
    pub fn routes(self) -> Routes {
        Routes::new(
            RaftServer::new(self)
                .max_decoding_message_size(grpc::MAX_MESSAGE)
                .max_encoding_message_size(grpc::MAX_MESSAGE),
        )
    }

    /// Lets an RPC through only from a member of the cluster; the sender's name. A node not
    /// in any cluster yet (no members) takes them from the nodes of its `cluster_peers`: that
    /// is how it is sent the log when initialised or added.
    fn admit<T>(&self, request: &tonic::Request<T>, rpc: &str) -> Result<String, Status> {
        let peer = grpc::admitted_peer(request)?;
        let name = peer.name.as_deref().unwrap_or_default();
        let node = matches!(peer.role, Some(crate::transport::tls::Role::Node));
        let stored = self.raft.metrics().borrow().membership_config.clone();
        let mut members = stored.membership().nodes().map(|(_, m)| m).peekable();
        let admitted =
            if members.peek().is_none() { self.bootstrap.contains(name) } else { members.any(|m| m.name == name) };
        if admitted && node {
            return Ok(name.to_string());
        }
        tracing::warn!(peer = %peer.addr, "refused {rpc} from '{}' at {}: not a member of the cluster", crate::catalog::confine::shown(name), peer.addr);
        Err(Status::permission_denied(format!(
            "'{}' is not a member of this cluster",
            crate::catalog::confine::shown(name)
        )))
    }
}

fn decode<T: DeserializeOwned>(request: tonic::Request<RaftRequest>) -> Result<T, Status> {
    grpc::decode(&request.into_inner().data).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn reply<T: Serialize>(answer: &T) -> Result<tonic::Response<RaftReply>, Status> {
    let data = grpc::encode(answer).map_err(|e| Status::internal(e.to_string()))?;
    Ok(tonic::Response::new(RaftReply { data }))
}

/// The answer to AppendEntries and Vote: openraft's `RaftError<_, Infallible>` crosses the
/// wire as its `Fatal` (Infallible has no serde).
fn reply_fatal<T: Serialize>(answer: Result<T, RaftError<NodeId>>) -> Result<tonic::Response<RaftReply>, Status> {
    let answer: Result<T, Fatal<NodeId>> = answer.map_err(|e| match e {
        RaftError::Fatal(f) => f,
        RaftError::APIError(never) => match never {},
    });
    reply(&answer)
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(&self, request: tonic::Request<RaftRequest>) -> Result<tonic::Response<RaftReply>, Status> {
        self.admit(&request, "AppendEntries")?;
        reply_fatal(self.raft.append_entries(decode(request)?).await)
    }

    async fn vote(&self, request: tonic::Request<RaftRequest>) -> Result<tonic::Response<RaftReply>, Status> {
        self.admit(&request, "Vote")?;
        reply_fatal(self.raft.vote(decode(request)?).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, Status> {
        self.admit(&request, "InstallSnapshot")?;
        reply(&self.raft.install_snapshot(decode(request)?).await)
    }

    async fn forward(&self, request: tonic::Request<RaftRequest>) -> Result<tonic::Response<RaftReply>, Status> {
        let name = self.admit(&request, "Forward")?;
        let addr = grpc::peer(&request).map(|p| p.addr.to_string()).unwrap_or_default();
        let req: ForwardRequest = decode(request).inspect_err(|s| {
            tracing::warn!(peer = %addr, "refused Forward from node '{name}' at {addr}: {}", s.message());
        })?;
        if let Err(why) = authorize(node_id(&name), &req) {
            tracing::warn!(peer = %addr, "refused Forward from node '{name}' at {addr}: {why}");
            return Err(Status::permission_denied(why));
        }
        reply(&apply(&self.raft, req).await)
    }
}

/// The leader `metrics` know of, with its address.
fn leader_of(metrics: &RaftMetrics<NodeId, Member>) -> Option<(NodeId, Member)> {
    let id = metrics.current_leader?;
    let member = metrics.membership_config.membership().get_node(&id)?.clone();
    Some((id, member))
}

/// Carries out `req` through the cluster: here when this node leads, else on the leader,
/// following its hints and retrying through elections until `deadline`. A write whose
/// answer was lost may be applied twice: replicated commands are conditional (epochs,
/// renewal counts) or idempotent for that reason.
pub async fn propose(
    raft: &Raft,
    peers: &Peers,
    req: ForwardRequest,
    deadline: Duration,
) -> Result<ForwardResponse, ProposeError> {
    drive(Some(raft), peers, &[], req, deadline).await
}

/// Like [`propose`] from a node outside the cluster (one asking to join): asks `seeds` in
/// turn until one leads or names the leader.
pub async fn propose_via(
    peers: &Peers,
    seeds: &[Member],
    req: ForwardRequest,
    deadline: Duration,
) -> Result<ForwardResponse, ProposeError> {
    drive(None, peers, seeds, req, deadline).await
}

async fn drive(
    raft: Option<&Raft>,
    peers: &Peers,
    seeds: &[Member],
    req: ForwardRequest,
    deadline: Duration,
) -> Result<ForwardResponse, ProposeError> {
    let until = Instant::now() + deadline;
    let mut pause = Duration::from_millis(20);
    let mut hint: Option<(NodeId, Member)> = None;
    let mut next_seed = 0;
    let mut last = String::from("no leader known yet");
    loop {
        let mut me = None;
        let mut known = None;
        if let Some(raft) = raft {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            if let Err(e) = &m.running_state {
                return Err(ProposeError::Stopped(e.to_string()));
            }
            me = Some(m.id);
            known = leader_of(&m);
        }
        let target = match hint.take().or(known) {
            Some(t) => Some(t),
            None => {
                let seed = seeds.get(next_seed % seeds.len().max(1)).map(|s| (node_id(&s.name), s.clone()));
                next_seed += 1;
                seed
            }
        };
        let outcome = match (target, raft) {
            (Some((id, _)), Some(raft)) if Some(id) == me => {
                let left = until.saturating_duration_since(Instant::now());
                tokio::time::timeout(left, apply(raft, req.clone())).await.map_err(|_| {
                    Unanswered::Transient("this node leads but did not commit the change in time".to_string())
                })
            }
            (Some((id, member)), _) => forward(peers, id, &member, &req, until).await,
            (None, _) => Err(Unanswered::Transient(last.clone())),
        };
        match outcome {
            Ok(ForwardResponse::NotLeader { leader }) => {
                last = match &leader {
                    Some((_, m)) => format!("told to ask '{}' at {}", m.name, m.addr),
                    None => "a node knows no leader (an election?)".into(),
                };
                hint = leader;
            }
            Ok(done) => return Ok(done),
            Err(Unanswered::Refused(why)) => return Err(ProposeError::Refused(why)),
            Err(Unanswered::Transient(why)) => last = why,
        }
        let now = Instant::now();
        if now + pause >= until {
            return Err(ProposeError::NoLeader { waited: deadline, last });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// One forwarded attempt.
async fn forward(
    peers: &Peers,
    id: NodeId,
    member: &Member,
    req: &ForwardRequest,
    until: Instant,
) -> Result<ForwardResponse, Unanswered> {
    let who = |why: String| Unanswered::Transient(format!("'{}' at {}: {why}", member.name, member.addr));
    let mut client = peers.client(id, member).map_err(|e| who(e.to_string()))?;
    let data = grpc::encode(req).map_err(|e| who(e.to_string()))?;
    let ttl = until.saturating_duration_since(Instant::now());
    let mut request = tonic::Request::new(RaftRequest { data });
    request.set_timeout(ttl);
    let answer = match tokio::time::timeout(ttl, client.forward(request)).await {
        Err(_) => return Err(who("no answer in time".into())),
        Ok(Err(s)) if s.code() == tonic::Code::PermissionDenied => {
            return Err(Unanswered::Refused(format!("'{}' at {}: {}", member.name, member.addr, s.message())));
        }
        Ok(Err(s)) => return Err(who(grpc::status_text(&s))),
        Ok(Ok(r)) => r.into_inner(),
    };
    grpc::decode(&answer.data).map_err(|e| who(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::types::{Member, node_id};

    /// docs/security.md's table of who may forward what, read and checked against
    /// [`authorize`] with one request of each kind, for the sender itself and for another.
    #[test]
    fn the_forward_table_in_docs_security_md_is_what_authorize_does() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md")).unwrap();
        let (me, other) = (node_id("n1"), node_id("n2"));
        let member = Member { name: "n2".into(), site: "s".into(), addr: "h:1".into() };
        // Each kind, as node `who` would ask it for itself.
        let example = |kind: &str, who: NodeId| -> Option<ForwardRequest> {
            let own = |cmd| ForwardRequest::Write(Request::Ownership { server: "pg".into(), cmd, report: None });
            Some(match kind {
                "Renew" => own(Command::Renew { node: who, epoch: 1 }),
                "Release" => own(Command::Release { node: who, epoch: 1, to: None }),
                "Assign" => own(Command::Assign { node: who, epoch: 2, renewals: 0 }),
                "Site" => ForwardRequest::Write(Request::Site { node: who, site: "s".into() }),
                "Server" => ForwardRequest::Write(Request::Server { name: "pg".into(), candidates: vec![] }),
                "ForgetServer" => ForwardRequest::Write(Request::ForgetServer { name: "pg".into() }),
                "Transfer" => ForwardRequest::Write(Request::Transfer { server: "pg".into(), to: who }),
                "Revoke" => ForwardRequest::Write(Request::Revoke { id: "serial:1".into() }),
                "Deleted" => ForwardRequest::Write(Request::Deleted {
                    server: "pg".into(),
                    backup: "20260101T000000".into(),
                    node: who,
                    epoch: 1,
                    reason: String::new(),
                }),
                "AddNode" => ForwardRequest::AddNode { id: other, member: member.clone() },
                "RemoveNode" => ForwardRequest::RemoveNode { id: other },
                _ => return None,
            })
        };
        let table = doc.split("| request | allowed from |").nth(1).expect("the Forward table");
        let mut checked = std::collections::BTreeSet::new();
        for row in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let (kinds, rule) = (cells[1], cells[2]);
            for kind in kinds.split('`').skip(1).step_by(2) {
                let Some(own) = example(kind, me) else { continue };
                let (mine, theirs) = (authorize(me, &own), authorize(me, &example(kind, other).unwrap()));
                if rule.starts_with("the node named in it, only") {
                    assert!(mine.is_ok() && theirs.is_err(), "{kind}: {rule}");
                } else if rule.starts_with("nobody") {
                    assert!(mine.is_err() && theirs.is_err(), "{kind}: {rule}");
                } else if rule.starts_with("any member") {
                    assert!(mine.is_ok() && theirs.is_ok(), "{kind}: {rule}");
                } else {
                    panic!("a rule this test does not know: {rule}");
                }
                checked.insert(kind.to_string());
            }
        }
        let all = [
            "Renew",
            "Release",
            "Assign",
            "Site",
            "Server",
            "ForgetServer",
            "Transfer",
            "Revoke",
            "Deleted",
            "AddNode",
            "RemoveNode",
        ];
        for kind in all {
            assert!(checked.contains(kind), "docs/security.md says nothing of {kind}");
        }
    }

    #[test]
    fn a_node_speaks_only_for_itself_and_never_assigns() {
        let (me, other) = (node_id("n1"), node_id("n2"));
        let own = |cmd| Request::Ownership { server: "pg".into(), cmd, report: None };
        let ok = |r: Request| authorize(me, &ForwardRequest::Write(r));
        assert!(ok(own(Command::Renew { node: me, epoch: 3 })).is_ok());
        assert!(ok(own(Command::Release { node: me, epoch: 3, to: Some(other) })).is_ok());
        assert!(ok(Request::Site { node: me, site: "a".into() }).is_ok());
        assert!(ok(Request::Server { name: "pg".into(), candidates: vec![other] }).is_ok());
        assert!(ok(Request::Transfer { server: "pg".into(), to: other }).is_ok());
        assert!(authorize(me, &ForwardRequest::RemoveNode { id: other }).is_ok());

        let refused = |r: Request| ok(r).unwrap_err();
        assert!(refused(own(Command::Renew { node: other, epoch: 3 })).contains("not for itself"));
        assert!(refused(own(Command::Release { node: other, epoch: 3, to: Some(me) })).contains("not for itself"));
        assert!(refused(Request::Site { node: other, site: "x".into() }).contains("not for itself"));
        assert!(refused(own(Command::Assign { node: me, epoch: 4, renewals: 0 })).contains("only the leader assigns"));
        // Inside a batch: each command is judged, one level only.
        let renew_other = own(Command::Renew { node: other, epoch: 3 });
        assert!(
            refused(Request::Batch(vec![own(Command::Renew { node: me, epoch: 3 }), renew_other]))
                .contains("not for itself")
        );
        assert!(refused(Request::Batch(vec![Request::Batch(vec![])])).contains("batch inside a batch"));
        assert!(ok(Request::Batch(vec![own(Command::Renew { node: me, epoch: 3 })])).is_ok());
    }
}
