//! Passing on what `barman-wal-archive` put to this node over gRPC while another node owned
//! the server: the put was acknowledged once the files and their forward markers were
//! durable here; this loop puts each marked file to the current owner and removes its
//! marker once the owner holds it. Markers of a server this node comes to own are dropped:
//! what it holds is the owner's then.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::archive::rpc::{drop_markers, forward_dir, forward_pending};
use crate::catalog::ServerLayout;

/// How often markers left by a failed pass are tried again.
const RETRY: Duration = Duration::from_secs(2);

pub(super) struct Forwarder {
    pub(super) p: super::Peering,
    /// Woken when the Archive service marked files to forward.
    pub(super) kick: Arc<Notify>,
}

impl Forwarder {
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut told: Option<String> = None;
        loop {
            for s in self.p.cfg.servers.values() {
                let layout = ServerLayout::new(&self.p.cfg.global, s);
                let pending = std::fs::read_dir(forward_dir(&layout)).is_ok_and(|mut d| d.next().is_some());
                if !pending {
                    continue;
                }
                let owner = self.p.applied.borrow().state.servers.get(&s.name).and_then(|r| r.ownership.owner);
                let Some(owner) = owner else { continue };
                if owner == self.p.me {
                    drop_markers(&layout);
                    continue;
                }
                let Some(member) = self.p.member(owner) else { continue };
                let result = match self.p.peers.channel(owner, &member) {
                    Ok(ch) => forward_pending(&self.p.cfg, s, ch).await,
                    Err(e) => Err(e.to_string()),
                };
                match result {
                    Ok(0) => {}
                    Ok(n) => {
                        told = None;
                        tracing::info!(node = %self.p.name, server = %s.name, owner = %member.name,
                            "forwarded {n} WAL file(s) put to this node to the owner {}", member.name);
                    }
                    Err(e) if told.as_deref() != Some(e.as_str()) => {
                        tracing::warn!(node = %self.p.name, server = %s.name, "{e}; will retry");
                        told = Some(e);
                    }
                    Err(_) => {}
                }
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(RETRY) => {}
                () = self.kick.notified() => {}
            }
        }
    }
}
