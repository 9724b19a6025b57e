//! The Raft group's types: members, the commands it replicates and the state they build.
//! openraft's names stay inside `cluster/` (its 0.10 line rewrites them).

use std::collections::BTreeMap;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use super::ownership::{Command, NodeId, Ownership};

openraft::declare_raft_types!(
    /// The cluster's openraft configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Member,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A node's id: derived from its `node_name`, so every node computes the same id for a
/// name in `owner_candidates` or `cluster_peers` without asking anyone.
pub fn node_id(name: &str) -> NodeId {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    // 53 bits: exact in JSON readers that parse numbers as doubles.
    u64::from_be_bytes(b) & ((1 << 53) - 1)
}

/// A member of the Raft group, as replicated in its membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub site: String,
    /// `host:port` of its gRPC endpoint (`node_advertise`).
    pub addr: String,
}

/// What the owner last reported about its stream, carried by its renewals so that every
/// node's `cluster status` can show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamReport {
    /// Flush position told to PostgreSQL (LSN as a number), 0 when not streaming.
    pub flushed: u64,
    /// PostgreSQL's current WAL position when last asked, 0 when unknown.
    pub server_lsn: u64,
    /// Newest WAL file archived by the owner.
    pub last_wal: Option<String>,
}

/// A command replicated through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Declares a server and the nodes allowed to own it, most preferred first (from the
    /// proposing node's configuration; the newest declaration wins).
    Server { name: String, candidates: Vec<NodeId> },
    /// Removes a server from the cluster's care (it has left every node's configuration).
    ForgetServer { name: String },
    /// A change of ownership of `server`.
    Ownership { server: String, cmd: Command, report: Option<StreamReport> },
    /// Asks the owner of `server` to hand it to `to` (`cluster transfer`): the owner stops
    /// streaming, then proposes the matching `Release`.
    Transfer { server: String, to: NodeId },
    /// A node tells its site (from its own `node_site`).
    Site { node: NodeId, site: String },
    /// Several commands in one log entry, applied in order (an owner's renewals of all its
    /// servers: one commit a renewal interval however many servers it streams). One level:
    /// a batch inside a batch is refused when decoded.
    Batch(#[serde(deserialize_with = "flat")] Vec<Request>),
    /// The owner of `server` in `epoch` deleted `backup` (its retention, or `barman
    /// delete` there): the other nodes move their copies to their trash. Deletions travel
    /// only this way, never as a backup missing from a listing.
    Deleted { server: String, backup: String, node: NodeId, epoch: u64, reason: String },
    /// Puts a certificate on the deny list, by `sha256:<fingerprint>` or `serial:<hex>`
    /// (`barman cluster revoke`, through a member's control socket).
    Revoke { id: String },
}

/// Entries kept on the deny list.
pub const MAX_REVOKED: usize = 10_000;

/// A backup the owner deleted, as every node learns it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    pub node: NodeId,
    pub epoch: u64,
    pub reason: String,
}

/// Records kept per server: the newest (backup ids sort by time); older ones have long
/// been acted on.
pub const MAX_DELETIONS: usize = 1000;
/// Longest reason kept.
pub const MAX_REASON: usize = 200;

/// The outcome of one applied command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Applied,
    /// The command was stale (a normal race, e.g. a renewal from a deposed owner).
    Stale(String),
    /// The command named something the state does not hold.
    Unknown(String),
    /// The outcomes of a `Batch`, in its order.
    Batch(#[serde(deserialize_with = "flat")] Vec<Response>),
}

thread_local! {
    /// Whether the decoder of this thread is inside a batch's list.
    static IN_BATCH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Decodes a batch's list, refusing a batch inside it as soon as its tag is read: nesting
/// without bound is what would let a small message from a peer overflow the stack.
fn flat<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            IN_BATCH.with(|c| c.set(false));
        }
    }
    if IN_BATCH.with(|c| c.replace(true)) {
        return Err(serde::de::Error::custom("a batch inside a batch"));
    }
    let _leave = Leave;
    Vec::<T>::deserialize(d)
}

/// The replicated record of one server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    pub ownership: Ownership,
    pub candidates: Vec<NodeId>,
    pub report: StreamReport,
    /// A planned hand-over asked for in the current epoch.
    pub transfer_to: Option<NodeId>,
}

/// The state machine's content (membership is kept by openraft beside it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub servers: BTreeMap<String, ServerRecord>,
    pub sites: BTreeMap<NodeId, String>,
    /// Per server, the backups its owners deleted. Read as empty from a state written
    /// before deletions were recorded (it ends after `sites`).
    #[serde(deserialize_with = "tolerant_tail")]
    pub deleted: BTreeMap<String, BTreeMap<String, Deletion>>,
    /// The revoked certificates: every node refuses them. Absent (empty) likewise.
    #[serde(deserialize_with = "tolerant_tail")]
    pub revoked: std::collections::BTreeSet<String>,
}

/// The last field of [`ClusterState`], absent from a state written by an earlier version:
/// bincode reports its end as an error, read here as "no deletions".
fn tolerant_tail<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(T::deserialize(d).unwrap_or_default())
}

impl ClusterState {
    /// Applies one committed command, in log order, the same on every node.
    pub fn apply(&mut self, req: &Request) -> Response {
        match req {
            Request::Server { name, candidates } => {
                self.servers.entry(name.clone()).or_default().candidates = candidates.clone();
                Response::Applied
            }
            Request::ForgetServer { name } => match self.servers.remove(name) {
                Some(_) => Response::Applied,
                None => Response::Unknown(format!("server '{name}' is not in the cluster")),
            },
            Request::Ownership { server, cmd, report } => {
                let Some(rec) = self.servers.get_mut(server) else {
                    return Response::Unknown(format!("server '{server}' is not in the cluster"));
                };
                match rec.ownership.apply(cmd) {
                    Ok(()) => {
                        match (cmd, report) {
                            (Command::Renew { .. }, Some(r)) => rec.report = r.clone(),
                            (Command::Renew { .. }, None) => {}
                            _ => {
                                rec.report = StreamReport::default();
                                rec.transfer_to = None;
                            }
                        }
                        Response::Applied
                    }
                    Err(stale) => Response::Stale(stale.to_string()),
                }
            }
            Request::Transfer { server, to } => {
                let Some(rec) = self.servers.get_mut(server) else {
                    return Response::Unknown(format!("server '{server}' is not in the cluster"));
                };
                if rec.ownership.owner.is_none() {
                    return Response::Stale(format!("server '{server}' has no owner to hand it over"));
                }
                rec.transfer_to = (rec.ownership.owner != Some(*to)).then_some(*to);
                Response::Applied
            }
            Request::Site { node, site } => {
                self.sites.insert(*node, site.clone());
                Response::Applied
            }
            Request::Batch(reqs) => Response::Batch(reqs.iter().map(|r| self.apply(r)).collect()),
            Request::Deleted { server, backup, node, epoch, reason } => {
                let Some(rec) = self.servers.get(server) else {
                    return Response::Unknown(format!("server '{server}' is not in the cluster"));
                };
                if rec.ownership.owner != Some(*node) || rec.ownership.epoch != *epoch {
                    return Response::Stale(format!(
                        "node {node} is not the owner of '{server}' in epoch {epoch}: its deletion of {backup} is not recorded"
                    ));
                }
                if !crate::catalog::backups::is_backup_id(backup) {
                    return Response::Unknown(format!("'{backup}' is not a backup id"));
                }
                let reason: String = reason.chars().filter(|c| !c.is_control()).take(MAX_REASON).collect();
                let records = self.deleted.entry(server.clone()).or_default();
                records.insert(backup.clone(), Deletion { node: *node, epoch: *epoch, reason });
                while records.len() > MAX_DELETIONS {
                    records.pop_first();
                }
                Response::Applied
            }
            Request::Revoke { id } => {
                let well_formed = id
                    .strip_prefix("sha256:")
                    .map(|h| h.len() == 64)
                    .or_else(|| id.strip_prefix("serial:").map(|h| !h.is_empty() && h.len() <= 40))
                    .unwrap_or(false)
                    && id.split_once(':').is_some_and(|(_, h)| h.bytes().all(|b| b.is_ascii_hexdigit()));
                if !well_formed {
                    return Response::Unknown(format!("'{id}' is not a certificate's sha256:HEX or serial:HEX"));
                }
                if self.revoked.len() >= MAX_REVOKED && !self.revoked.contains(id) {
                    return Response::Stale(format!("the deny list holds {MAX_REVOKED} entries already"));
                }
                self.revoked.insert(id.clone());
                Response::Applied
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(node_id("a"), node_id("a"));
        assert_ne!(node_id("a"), node_id("b"));
        assert!(node_id("site-1") < (1 << 53));
    }

    #[test]
    fn renewal_carries_the_report_and_a_new_epoch_clears_it() {
        let mut s = ClusterState::default();
        let (a, b) = (node_id("a"), node_id("b"));
        assert_eq!(s.apply(&Request::Server { name: "pg".into(), candidates: vec![a, b] }), Response::Applied);
        let assign = |node, epoch| Request::Ownership {
            server: "pg".into(),
            cmd: Command::Assign { node, epoch, renewals: 0 },
            report: None,
        };
        assert_eq!(s.apply(&assign(a, 1)), Response::Applied);
        let report = StreamReport { flushed: 42, server_lsn: 50, last_wal: None };
        let renew = Request::Ownership {
            server: "pg".into(),
            cmd: Command::Renew { node: a, epoch: 1 },
            report: Some(report.clone()),
        };
        assert_eq!(s.apply(&renew), Response::Applied);
        assert_eq!(s.servers["pg"].report, report);
        assert!(matches!(s.apply(&assign(b, 2)), Response::Stale(_)), "renewal count moved on");
        assert_eq!(s.apply(&Request::Transfer { server: "pg".into(), to: b }), Response::Applied);
        assert_eq!(s.servers["pg"].transfer_to, Some(b));
        let release = Request::Ownership {
            server: "pg".into(),
            cmd: Command::Release { node: a, epoch: 1, to: Some(b) },
            report: None,
        };
        assert_eq!(s.apply(&release), Response::Applied);
        assert_eq!(s.servers["pg"].ownership.owner, Some(b));
        assert_eq!(s.servers["pg"].report, StreamReport::default());
        assert_eq!(s.servers["pg"].transfer_to, None, "a new epoch ends the hand-over request");
        assert!(matches!(s.apply(&renew), Response::Stale(_)), "old owner's renewal");
        assert!(matches!(
            s.apply(&Request::Ownership {
                server: "x".into(),
                cmd: Command::Renew { node: a, epoch: 1 },
                report: None
            }),
            Response::Unknown(_)
        ));
    }

    #[test]
    fn a_batch_inside_a_batch_is_refused_when_decoded_at_any_depth() {
        use crate::transport::grpc::{decode, encode};
        let one = Request::Batch(vec![Request::Site { node: 1, site: "a".into() }]);
        assert_eq!(decode::<Request>(&encode(&one).unwrap()).unwrap(), one);
        let nested = Request::Batch(vec![Request::Batch(vec![])]);
        let err = decode::<Request>(&encode(&nested).unwrap()).unwrap_err().to_string();
        assert!(err.contains("a batch inside a batch"), "{err}");
        // 50,000 levels in 100 KB (bincode: variant 5 then a length of 1, again and again),
        // as a peer could send them: refused at the second level, no stack overflow.
        let mut bytes = vec![0u8]; // ForwardRequest::Write
        for _ in 0..50_000 {
            bytes.extend([5u8, 1u8]);
        }
        let err = decode::<crate::cluster::rpc::ForwardRequest>(&bytes).unwrap_err().to_string();
        assert!(err.contains("a batch inside a batch"), "{err}");
        let mut bytes = Vec::new();
        for _ in 0..50_000 {
            bytes.extend([3u8, 1u8]); // Response::Batch
        }
        assert!(decode::<Response>(&bytes).is_err());
        // The flag is left clear: the next decode on this thread is not refused.
        assert_eq!(decode::<Request>(&encode(&one).unwrap()).unwrap(), one);
    }

    #[test]
    fn only_the_owner_in_its_epoch_records_a_deletion() {
        let mut s = ClusterState::default();
        let (a, b) = (node_id("a"), node_id("b"));
        s.apply(&Request::Server { name: "pg".into(), candidates: vec![] });
        s.apply(&Request::Ownership {
            server: "pg".into(),
            cmd: Command::Assign { node: a, epoch: 1, renewals: 0 },
            report: None,
        });
        let del = |node, epoch, backup: &str| Request::Deleted {
            server: "pg".into(),
            backup: backup.into(),
            node,
            epoch,
            reason: "retention policy\nforged".into(),
        };
        assert!(matches!(s.apply(&del(b, 1, "20260101T000000")), Response::Stale(_)), "not the owner");
        assert!(matches!(s.apply(&del(a, 0, "20260101T000000")), Response::Stale(_)), "an old epoch");
        assert!(matches!(s.apply(&del(a, 1, "../x")), Response::Unknown(_)));
        assert_eq!(s.apply(&del(a, 1, "20260101T000000")), Response::Applied);
        let d = &s.deleted["pg"]["20260101T000000"];
        assert_eq!((d.node, d.epoch, d.reason.as_str()), (a, 1, "retention policyforged"));
        // Bounded: the oldest records go first.
        for i in 0..MAX_DELETIONS + 5 {
            s.apply(&del(a, 1, &format!("2027{:04}T000000", i % 10000)));
        }
        assert_eq!(s.deleted["pg"].len(), MAX_DELETIONS);
        assert!(!s.deleted["pg"].contains_key("20260101T000000"));
    }

    #[test]
    fn a_state_written_before_deletions_were_recorded_still_loads() {
        #[derive(Serialize)]
        struct Earlier {
            servers: BTreeMap<String, ServerRecord>,
            sites: BTreeMap<NodeId, String>,
        }
        let mut servers = BTreeMap::new();
        servers.insert("pg".to_string(), ServerRecord::default());
        let old = Earlier { servers: servers.clone(), sites: BTreeMap::from([(1, "s1".to_string())]) };
        let bytes = crate::transport::grpc::encode(&old).unwrap();
        let state: ClusterState = crate::transport::grpc::decode(&bytes).unwrap();
        assert_eq!(state.servers, servers);
        assert!(state.deleted.is_empty());
        // And as the last field of a record, as the applied state stores it.
        let bytes = crate::transport::grpc::encode(&(7u64, old)).unwrap();
        let (n, state): (u64, ClusterState) = crate::transport::grpc::decode(&bytes).unwrap();
        assert_eq!((n, state.sites.len()), (7, 1));
        // A state with deletions round-trips.
        let mut s = ClusterState::default();
        s.deleted.entry("pg".into()).or_default().insert("20260101T000000".into(), Deletion::default());
        let back: ClusterState = crate::transport::grpc::decode(&crate::transport::grpc::encode(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn a_batch_applies_each_command_in_order() {
        let mut s = ClusterState::default();
        let a = node_id("a");
        let assign = |server: &str| Request::Ownership {
            server: server.into(),
            cmd: Command::Assign { node: a, epoch: 1, renewals: 0 },
            report: None,
        };
        let renew = |server: &str, flushed| Request::Ownership {
            server: server.into(),
            cmd: Command::Renew { node: a, epoch: 1 },
            report: Some(StreamReport { flushed, server_lsn: 0, last_wal: None }),
        };
        let batch = Request::Batch(vec![
            Request::Server { name: "pg".into(), candidates: vec![a] },
            assign("pg"),
            renew("pg", 7),
            renew("nope", 1),
            Request::Batch(vec![renew("pg", 9)]),
        ]);
        assert_eq!(
            s.apply(&batch),
            Response::Batch(vec![
                Response::Applied,
                Response::Applied,
                Response::Applied,
                Response::Unknown("server 'nope' is not in the cluster".into()),
                Response::Batch(vec![Response::Applied]),
            ])
        );
        assert_eq!(s.servers["pg"].ownership.renewals, 2);
        assert_eq!(s.servers["pg"].report.flushed, 9);
    }
}
