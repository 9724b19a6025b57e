//! `barman node run`: the long-running node. It serves gRPC (mutual TLS only), takes part
//! in the Raft group, runs the maintenance loop, streams the servers it owns (only within
//! its lease), answers the local control socket and, when configured, the metrics endpoint.

pub mod clock;
pub mod control;
mod driver;
mod follow;
mod forward;
mod maint;
pub mod metrics;
pub mod stream;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::cluster::network::{Acks, Network, Peers};
use crate::cluster::ownership::NodeId;
use crate::cluster::rpc::{self, ForwardRequest, ForwardResponse, RaftService};
use crate::cluster::store::{self, Applied};
use crate::cluster::types::{Member, Request, Response, TypeConfig, node_id};
use crate::config::Config;
use crate::transport::{grpc, tls};
use clock::mono_ms;
use control::{ControlRequest, ControlResponse};
use driver::{Driver, Proposal, ServerStatus};

type Raft = openraft::Raft<TypeConfig>;

/// What the node's loops that reach other nodes (the follower, the forwarder) share: who
/// this node is, the cluster's membership and applied state, the channels to peers.
#[derive(Clone)]
struct Peering {
    me: NodeId,
    name: String,
    cfg: Arc<Config>,
    raft: Raft,
    peers: Peers,
    applied: watch::Receiver<Applied>,
    /// Servers whose owner listed no backup at all while this node holds some DONE.
    empty_listings: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl Peering {
    /// A member of the cluster as its current membership has it.
    fn member(&self, id: NodeId) -> Option<Member> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config.membership().get_node(&id).cloned()
    }
}

/// The Raft handle as the driver sees it.
struct Handle {
    raft: Raft,
    peers: Peers,
    acks: Arc<Acks>,
    /// How long a proposal may take before it is given up (a lease: a renewal that takes
    /// longer is useless anyway).
    patience: Duration,
}

impl driver::Raft for Handle {
    fn propose(&self, req: Request) -> Proposal {
        let (raft, peers, patience) = (self.raft.clone(), self.peers.clone(), self.patience);
        Box::pin(async move {
            match rpc::propose(&raft, &peers, ForwardRequest::Write(req), patience).await {
                Ok(ForwardResponse::Written(r)) => Ok(r),
                Ok(other) => Err(format!("{other:?}")),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn propose_as_leader(&self, req: Request) -> Proposal {
        let (raft, patience) = (self.raft.clone(), self.patience);
        Box::pin(async move {
            match tokio::time::timeout(patience, rpc::apply(&raft, ForwardRequest::Write(req))).await {
                Ok(ForwardResponse::Written(r)) => Ok(r),
                Ok(other) => Err(format!("{other:?}")),
                Err(_) => Err("not committed in time".into()),
            }
        })
    }

    fn leader(&self) -> (Option<NodeId>, u64) {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.current_leader, m.current_term)
    }

    fn voters(&self) -> BTreeMap<NodeId, String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let mem = m.membership_config.membership();
        mem.voter_ids().filter_map(|id| mem.get_node(&id).map(|n| (id, n.name.clone()))).collect()
    }

    fn alive(&self, within: Duration) -> BTreeSet<NodeId> {
        self.acks.alive(within)
    }
}

/// Everything the control socket's answers are made from.
struct Shared {
    me: NodeId,
    name: String,
    site: String,
    advertise: String,
    peers_cfg: Vec<(String, String)>,
    handle: Arc<Handle>,
    applied: watch::Receiver<Applied>,
    status: watch::Receiver<Vec<ServerStatus>>,
    latencies: Arc<std::sync::Mutex<driver::Latencies>>,
    cfg: Arc<Config>,
    /// Bytes the Sync service sent to peers.
    sent: Arc<crate::sync::rpc::Sent>,
    empty_listings: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

/// Runs the node until SIGTERM or SIGINT.
pub fn run(cfg: &Config) -> Result<(), String> {
    let g = &cfg.global;
    let name = g
        .node_name
        .as_ref()
        .map(|n| n.to_string())
        .ok_or("node_name is not set in [barman]: give this node a name (see docs/cluster.md)")?;
    let listen = g
        .node_listen
        .clone()
        .ok_or("node_listen is not set in [barman]: give the host:port the node serves gRPC on")?;
    let advertise = g.node_advertise.clone().unwrap_or_else(|| listen.clone()).to_string();
    let files = tls::TlsFiles::of_node(g);
    // Only ring is compiled in; installing it makes the choice explicit for every config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server_tls = tls::server_config(&files).map_err(|e| e.to_string())?;
    let client_tls = tls::ClientTls::load(&files).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let cfg = Arc::new(cfg.clone());
    rt.block_on(run_async(cfg, name, listen.to_string(), advertise, server_tls, client_tls))
}

async fn run_async(
    cfg: Arc<Config>,
    name: String,
    listen: String,
    advertise: String,
    server_tls: Arc<rustls::ServerConfig>,
    client_tls: tls::ClientTls,
) -> Result<(), String> {
    let g = &cfg.global;
    let me = node_id(&name);
    let site = g.site().to_string();
    let home = g.barman_home.clone();
    crate::catalog::durable::create_dir_all(&home.join(".node"))
        .map_err(|e| format!("{}: {e}", home.join(".node").display()))?;
    let (log_store, sm_store) = store::open(&home.join(".node").join("raft")).map_err(|e| e.to_string())?;
    let applied = sm_store.watch();
    let raft_config = openraft::Config {
        cluster_name: "barman".into(),
        // Three heartbeats within the shortest election timeout; fewer cost an idle node less.
        heartbeat_interval: 250,
        election_timeout_min: 750,
        election_timeout_max: 1500,
        // An owner renews every second (one entry for all its servers): keep the log short.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(2000),
        max_in_snapshot_log_to_keep: 500,
        ..Default::default()
    };
    let raft_config = Arc::new(raft_config.validate().map_err(|e| format!("Raft configuration: {e}"))?);
    let peers = Peers::new(client_tls);
    let acks = Acks::new();
    let network = Network::new(me, peers.clone(), acks.clone());
    let raft = openraft::Raft::new(me, raft_config, network, log_store, sm_store)
        .await
        .map_err(|e| format!("cannot start Raft: {e}"))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let listener = tokio::net::TcpListener::bind(&listen).await.map_err(|e| format!("node_listen {listen}: {e}"))?;
    // Peers are served the Sync service only while they are members of the cluster.
    let admit: crate::sync::rpc::Admit = {
        let raft = raft.clone();
        Arc::new(move |peer: &str| {
            let m = raft.metrics();
            let m = m.borrow();
            m.membership_config.membership().nodes().any(|(_, n)| n.name == peer)
        })
    };
    // WAL put to this node for a server another node owns is marked and passed on.
    let forward_kick = Arc::new(tokio::sync::Notify::new());
    let elsewhere: crate::archive::rpc::OwnedElsewhere = {
        let applied = applied.clone();
        Arc::new(move |server: &str| {
            applied.borrow().state.servers.get(server).and_then(|r| r.ownership.owner).is_some_and(|o| o != me)
        })
    };
    let sync_service = crate::sync::rpc::SyncService::new(cfg.clone(), admit.clone());
    let sent = sync_service.sent();
    let routes = RaftService::new(raft.clone(), g.cluster_peers.iter().map(|p| p.name.to_string()).collect())
        .routes()
        .add_service(sync_service.server())
        .add_service(
            crate::archive::rpc::ArchiveService::new(cfg.clone(), Some(elsewhere), forward_kick.clone(), admit.clone())
                .server(),
        );
    let grpc_task = tokio::spawn(grpc::serve(listener, server_tls, routes, stopped()));

    let handle = Arc::new(Handle { raft: raft.clone(), peers: peers.clone(), acks, patience: g.ownership_lease });
    let kick = Arc::new(tokio::sync::Notify::new());
    let empty_listings: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>> = Arc::default();
    let (drv, status) =
        Driver::new(me, name.clone(), site.clone(), cfg.clone(), handle.clone(), g.ownership_lease, kick.clone());
    let shared = Arc::new(Shared {
        me,
        name: name.clone(),
        site,
        advertise,
        peers_cfg: g.cluster_peers.iter().map(|p| (p.name.to_string(), p.addr.to_string())).collect(),
        handle,
        applied: applied.clone(),
        status,
        latencies: drv.latencies.clone(),
        cfg: cfg.clone(),
        sent,
        empty_listings: empty_listings.clone(),
    });
    let control_task = {
        let shared = shared.clone();
        let handler = move |req| {
            let shared = shared.clone();
            async move { answer(&shared, req).await }
        };
        tokio::spawn(control::serve(control::socket_path(&home), handler, stopped()))
    };
    let metrics_task = match &g.node_metrics_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr.to_string())
                .await
                .map_err(|e| format!("node_metrics_listen {addr}: {e}"))?;
            let shared = shared.clone();
            Some(tokio::spawn(metrics::serve(l, move || render_metrics(&shared), stopped())))
        }
        None => None,
    };
    let maint_task = tokio::spawn(maint::run(name.clone(), cfg.file.clone(), Duration::from_secs(5), kick, stopped()));
    let peering = Peering {
        me,
        name: name.clone(),
        cfg: cfg.clone(),
        raft: raft.clone(),
        peers: peers.clone(),
        applied: applied.clone(),
        empty_listings,
    };
    let follow_task = tokio::spawn(follow::Follower { p: peering.clone() }.run(stopped()));
    // The deny list follows the replicated state at once: a revoked certificate is refused
    // at its next call or handshake.
    let revoked_task = {
        let mut applied = applied.clone();
        tokio::spawn(async move {
            loop {
                let ids = applied.borrow_and_update().state.revoked.clone();
                grpc::set_revoked(ids);
                if applied.changed().await.is_err() {
                    return;
                }
            }
        })
    };
    let forwarder = forward::Forwarder { p: peering, kick: forward_kick };
    let forward_task = tokio::spawn(forwarder.run(stopped()));
    let driver_task = tokio::spawn(drv.run(applied, stopped()));
    tracing::info!(node = %name, id = me, mono_ms = mono_ms(), "node started");

    let why = interrupted().await;
    tracing::info!(node = %name, "{why} received: stopping streaming, handing leases back");
    let _ = stop_tx.send(true);
    // The driver stops streaming and releases leases through Raft: Raft must still run.
    let _ = driver_task.await;
    let _ = maint_task.await;
    let _ = follow_task.await;
    revoked_task.abort();
    let _ = forward_task.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    let _ = control_task.await;
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(node = %name, "Raft did not stop cleanly: {e}");
    }
    match grpc_task.await {
        Ok(Err(e)) => tracing::warn!(node = %name, "gRPC server: {e}"),
        Err(e) => tracing::warn!(node = %name, "gRPC server: {e}"),
        Ok(Ok(())) => {}
    }
    tracing::info!(node = %name, mono_ms = mono_ms(), "node stopped");
    Ok(())
}

/// Resolves at SIGTERM or SIGINT, naming it.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

async fn answer(sh: &Shared, req: ControlRequest) -> ControlResponse {
    let raft = &sh.handle.raft;
    match req {
        ControlRequest::Status => ControlResponse::ok(status_json(sh)),
        ControlRequest::Init => {
            let mut members = BTreeMap::new();
            members.insert(sh.me, Member { name: sh.name.clone(), site: sh.site.clone(), addr: sh.advertise.clone() });
            for (n, a) in &sh.peers_cfg {
                members.entry(node_id(n)).or_insert_with(|| Member {
                    name: n.clone(),
                    site: String::new(),
                    addr: a.clone(),
                });
            }
            let names: Vec<String> = members.values().map(|m| m.name.clone()).collect();
            match raft.initialize(members).await {
                Ok(()) => {
                    tracing::info!(node = %sh.name, "cluster initialised with {}", names.join(", "));
                    ControlResponse::ok(serde_json::json!({ "members": names }))
                }
                Err(e) => ControlResponse::err(format!("cannot initialise the cluster: {e}")),
            }
        }
        ControlRequest::AddNode { name, addr } => {
            if let Err(e) = addr.parse::<crate::config::types::HostPort>() {
                return ControlResponse::err(format!("'{addr}': {e}; give the new node's node_advertise as host:port"));
            }
            let req = ForwardRequest::AddNode {
                id: node_id(&name),
                member: Member { name: name.clone(), site: String::new(), addr },
            };
            membership_answer(rpc::propose(raft, &sh.handle.peers, req, Duration::from_secs(60)).await)
        }
        ControlRequest::RemoveNode { name } => {
            let req = ForwardRequest::RemoveNode { id: node_id(&name) };
            membership_answer(rpc::propose(raft, &sh.handle.peers, req, Duration::from_secs(60)).await)
        }
        ControlRequest::Revoke { id } => {
            let req = ForwardRequest::Write(Request::Revoke { id: id.clone() });
            match rpc::propose(raft, &sh.handle.peers, req, Duration::from_secs(10)).await {
                Ok(ForwardResponse::Written(Response::Applied)) => {
                    tracing::warn!(node = %sh.name, "certificate {id} revoked");
                    ControlResponse::ok(serde_json::json!({ "revoked": id }))
                }
                Ok(other) => ControlResponse::err(format!("revocation of {id} refused: {other:?}")),
                Err(e) => ControlResponse::err(format!("revocation of {id} failed: {e}")),
            }
        }
        ControlRequest::Transfer { server, node } => {
            let to = node_id(&node);
            let state = sh.applied.borrow().clone();
            if !state.membership.membership().voter_ids().any(|v| v == to) {
                return ControlResponse::err(format!(
                    "node '{node}' is not a voting member of the cluster; see 'barman cluster status'"
                ));
            }
            let Some(rec) = state.state.servers.get(&server) else {
                return ControlResponse::err(format!(
                    "server '{server}' is not known to the cluster; see 'barman cluster status'"
                ));
            };
            if !rec.candidates.is_empty() && !rec.candidates.contains(&to) {
                return ControlResponse::err(format!("node '{node}' is not in owner_candidates of server '{server}'"));
            }
            let req = ForwardRequest::Write(Request::Transfer { server: server.clone(), to });
            match rpc::propose(raft, &sh.handle.peers, req, Duration::from_secs(10)).await {
                Ok(ForwardResponse::Written(Response::Applied)) => ControlResponse::ok(serde_json::json!({})),
                Ok(ForwardResponse::Written(r)) => {
                    ControlResponse::err(format!("hand-over of '{server}' refused: {r:?}"))
                }
                Ok(other) => ControlResponse::err(format!("hand-over of '{server}' failed: {other:?}")),
                Err(e) => ControlResponse::err(format!("hand-over of '{server}' failed: {e}")),
            }
        }
    }
}

fn membership_answer(r: Result<ForwardResponse, rpc::ProposeError>) -> ControlResponse {
    match r {
        Ok(ForwardResponse::Done) => ControlResponse::ok(serde_json::json!({})),
        Ok(ForwardResponse::Failed(e)) => ControlResponse::err(e),
        Ok(other) => ControlResponse::err(format!("{other:?}")),
        Err(e) => ControlResponse::err(e.to_string()),
    }
}

fn status_json(sh: &Shared) -> serde_json::Value {
    let m = sh.handle.raft.metrics().borrow().clone();
    let applied = sh.applied.borrow().clone();
    let mem = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
    let leader = m.current_leader.and_then(|id| mem.get_node(&id)).map(|n| n.name.clone());
    let members: Vec<serde_json::Value> = mem
        .nodes()
        .map(|(id, n)| {
            serde_json::json!({
                "name": n.name,
                "id": id,
                "site": applied.state.sites.get(id).cloned().unwrap_or_else(|| n.site.clone()),
                "addr": n.addr,
                "voter": voters.contains(id),
            })
        })
        .collect();
    serde_json::json!({
        "node": sh.name,
        "site": sh.site,
        "leader": leader,
        "term": m.current_term,
        "commit_index": m.last_applied.map(|l| l.index),
        "last_log_index": m.last_log_index,
        "members": members,
        "servers": *sh.status.borrow(),
    })
}

fn render_metrics(sh: &Shared) -> String {
    let m = sh.handle.raft.metrics().borrow().clone();
    let servers = sh.status.borrow().clone();
    let mut e = metrics::Exposition::default();
    let node = sh.name.as_str();
    e.family("barman_raft_term", "gauge", "Current Raft term.").sample(&[("node", node)], m.current_term as f64);
    e.family("barman_raft_commit_index", "gauge", "Last applied Raft log index.")
        .sample(&[("node", node)], m.last_applied.map_or(0, |l| l.index) as f64);
    e.family("barman_raft_leader", "gauge", "1 when this node leads the Raft group.")
        .sample(&[("node", node)], f64::from(u8::from(m.current_leader == Some(sh.me))));
    if let Ok(l) = sh.latencies.lock() {
        let mut f = e.family(
            "barman_raft_commit_seconds",
            "summary",
            "Commit latency of this node's lease renewals through Raft.",
        );
        for q in [0.5, 0.9, 0.99] {
            if let Some(us) = l.quantile(q) {
                f.sample(&[("node", node), ("quantile", &q.to_string())], us as f64 / 1e6);
            }
        }
        f.sample_suffixed("_count", &[("node", node)], l.count as f64);
        f.sample_suffixed("_sum", &[("node", node)], l.sum_us as f64 / 1e6);
    }
    {
        let mut f = e.family("barman_server_owned", "gauge", "1 when this node owns the server.");
        for s in &servers {
            f.sample(&[("node", node), ("server", &s.name)], f64::from(u8::from(s.owner.as_deref() == Some(node))));
        }
    }
    {
        let mut f = e.family("barman_server_epoch", "gauge", "Epoch of the server's ownership.");
        for s in &servers {
            f.sample(&[("node", node), ("server", &s.name)], s.epoch as f64);
        }
    }
    {
        let mut f = e.family(
            "barman_server_lease_age_seconds",
            "gauge",
            "Seconds since this node saw the owner's lease renewed.",
        );
        for s in &servers {
            if let Some(a) = s.lease_age_ms {
                f.sample(&[("node", node), ("server", &s.name)], a as f64 / 1000.0);
            }
        }
    }
    {
        let mut f = e.family("barman_server_streaming", "gauge", "1 when this node streams the server's WAL now.");
        for s in &servers {
            f.sample(&[("node", node), ("server", &s.name)], f64::from(u8::from(s.streaming_here)));
        }
    }
    {
        let mut f = e.family(
            "barman_server_streaming_lag_bytes",
            "gauge",
            "PostgreSQL's WAL position minus the owner's flushed position.",
        );
        for s in &servers {
            if let Some(l) = s.lag_bytes {
                f.sample(&[("node", node), ("server", &s.name)], l as f64);
            }
        }
    }
    {
        let mut f = e.family(
            "barman_sync_sent_bytes_total",
            "counter",
            "File bytes this node sent to each peer's sync since it started (kind: wal or backup).",
        );
        for ((server, kind, peer), n) in sh.sent.snapshot() {
            f.sample(&[("node", node), ("server", &server), ("kind", kind), ("peer", &peer)], n as f64);
        }
    }
    {
        let mut f = e.family(
            "barman_owner_listing_empty",
            "gauge",
            "1 when the server's owner lists no backup while this node holds some DONE (nothing is deleted for it).",
        );
        let empty = sh.empty_listings.lock().map(|g| g.clone()).unwrap_or_default();
        for server in sh.cfg.servers.keys() {
            f.sample(&[("node", node), ("server", server)], if empty.contains(server) { 1.0 } else { 0.0 });
        }
    }
    catalog_metrics(&mut e, sh);
    e.finish()
}

/// What this node's catalog holds per server: the newest archived WAL file and the age of
/// the newest finished backup.
fn catalog_metrics(e: &mut metrics::Exposition, sh: &Shared) {
    let node = sh.name.as_str();
    let mut wal = Vec::new();
    let mut backup = Vec::new();
    for s in sh.cfg.servers.values() {
        let layout = crate::catalog::ServerLayout::new(&sh.cfg.global, s);
        if let Ok(entries) = crate::catalog::xlogdb::XlogDb::new(&layout).read_locked()
            && let Some(last) =
                entries.iter().filter(|x| x.name.is_segment()).max_by(|a, b| a.name.as_str().cmp(b.name.as_str()))
        {
            wal.push((s.name.clone(), last.name.to_string(), last.time));
        }
        let newest =
            crate::catalog::backups::list(&layout).into_iter().filter(|b| b.is_done()).filter_map(|b| b.end_time).max();
        if let Some(t) = newest {
            let age = chrono::Utc::now().signed_duration_since(t).num_milliseconds().max(0) as f64 / 1000.0;
            backup.push((s.name.clone(), age));
        }
    }
    {
        let mut f = e.family(
            "barman_server_last_archived_wal_timestamp_seconds",
            "gauge",
            "Time of the newest WAL file in this node's archive (its name in the wal label).",
        );
        for (s, name, t) in &wal {
            f.sample(&[("node", node), ("server", s), ("wal", name)], *t);
        }
    }
    let mut f = e.family(
        "barman_server_last_backup_age_seconds",
        "gauge",
        "Age of the newest DONE backup in this node's catalog.",
    );
    for (s, age) in &backup {
        f.sample(&[("node", node), ("server", s)], *age);
    }
}
