//! WAL streaming of one owned server, supervised by the node: only within the lease, with
//! the old owner's walsender ended first, restarted after failures while ownership lasts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use super::clock::mono_ms;
use crate::archive::receive_wal::{
    self as rw, Fence, ReceiveError, ReceiverConfig, app_name, streaming_params, wal_conninfos,
};
use crate::catalog::ServerLayout;
use crate::catalog::lock::{Lock, LockError, LockKind};
use crate::config::types::CreateSlot;
use crate::config::{GlobalConfig, ServerConfig};
use crate::postgres::{Conninfo, PgConnection};
use crate::wal::{Lsn, TimelineId};

/// The application name of the node's SQL connections.
const SQL_APPLICATION_NAME: &str = "barman_node";

/// The owner's right to report flush positions, mirrored from its lease: streaming may
/// acknowledge WAL strictly before `deadline` (monotonic ms; 0 = fenced).
#[derive(Debug, Default)]
pub struct LeaseFence {
    deadline: AtomicU64,
    /// Wakes the waiters of `expired` when the deadline moves earlier.
    earlier: tokio::sync::Notify,
}

impl LeaseFence {
    /// The lease's deadline, as the holder computes it from its committed renewals.
    pub fn set_deadline(&self, at: u64) {
        if self.deadline.swap(at, Ordering::SeqCst) > at {
            self.earlier.notify_waiters();
        }
    }

    /// Ends the authority now (a lost epoch, a hand-over): the deadline becomes the
    /// earlier of itself and now, so that it still tells when the authority ended.
    pub fn revoke(&self) {
        let now = mono_ms();
        if self.deadline.fetch_min(now, Ordering::SeqCst) > now {
            self.earlier.notify_waiters();
        }
    }

    pub fn deadline(&self) -> u64 {
        self.deadline.load(Ordering::SeqCst)
    }

    /// Resolves once the deadline has passed (extensions are followed). One timer per
    /// waiter, set to the deadline: tokio's timers run on CLOCK_MONOTONIC, which goes on
    /// during a pause (SIGSTOP, a stalled disk), so a deadline that passed during one fires
    /// as soon as the process runs again.
    pub async fn expired(&self) {
        loop {
            let earlier = self.earlier.notified();
            tokio::pin!(earlier);
            earlier.as_mut().enable();
            let (now, d) = (mono_ms(), self.deadline());
            if now >= d {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(d - now)) => {}
                () = earlier => {}
            }
        }
    }
}

impl Fence for LeaseFence {
    fn may_report(&self) -> bool {
        mono_ms() < self.deadline()
    }
}

/// What the supervisor reports back to the node (metrics, renewals).
#[derive(Debug, Clone, Default)]
pub struct StreamState {
    pub streaming: bool,
    /// Last flush position told to PostgreSQL, as far as known here.
    pub flushed: u64,
    /// PostgreSQL's current WAL position when last asked (0: unknown).
    pub server_lsn: u64,
    pub last_error: Option<String>,
}

/// A running supervisor; dropping `stop` ends it.
pub struct Supervisor {
    pub epoch: u64,
    pub fence: Arc<LeaseFence>,
    pub state: watch::Receiver<StreamState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervisor {
    /// Starts streaming `server` in `epoch` under `fence`.
    pub fn start(
        node: String,
        global: &GlobalConfig,
        server: &ServerConfig,
        epoch: u64,
        fence: Arc<LeaseFence>,
        archive_kick: Arc<tokio::sync::Notify>,
    ) -> Supervisor {
        let (tx, rx) = watch::channel(StreamState::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let job = Job {
            node,
            layout: ServerLayout::new(global, server),
            server: server.clone(),
            epoch,
            fence: fence.clone(),
            archive_kick,
        };
        let task = tokio::spawn(job.run(tx, stop_rx));
        Supervisor { epoch, fence, state: rx, stop: Some(stop_tx), task }
    }

    /// Stops streaming (everything received is made durable first) and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

struct Job {
    node: String,
    layout: ServerLayout,
    server: ServerConfig,
    epoch: u64,
    fence: Arc<LeaseFence>,
    archive_kick: Arc<tokio::sync::Notify>,
}

/// Why one streaming attempt ended.
enum Ended {
    Stopped,
    Fenced,
    Failed(String),
    /// PostgreSQL no longer has where we would resume: start again from the slot.
    PositionGone((Lsn, TimelineId)),
}

impl Job {
    async fn run(self, state: watch::Sender<StreamState>, mut stop: tokio::sync::oneshot::Receiver<()>) {
        let s = &self.server.name;
        // The receive-wal lock keeps a manual `barman receive-wal` away while we stream.
        if let Err(e) = crate::catalog::durable::create_dir_all(&self.layout.lock_dir) {
            tracing::error!(node = %self.node, server = %s, epoch = self.epoch, "{}: {e}", self.layout.lock_dir.display());
            return;
        }
        let lock_path = self.layout.lock_dir.join(LockKind::ReceiveWal.file_name(s));
        let mut backoff = Duration::from_millis(200);
        let _lock = loop {
            match Lock::acquire(&lock_path, false) {
                Ok(l) => break l,
                Err(LockError::Busy(_)) => {
                    tracing::info!(node = %self.node, server = %s, "waiting for another receive-wal to let {} go", lock_path.display());
                }
                Err(e) => tracing::warn!(node = %self.node, server = %s, "{e}"),
            }
            tokio::select! {
                _ = &mut stop => return,
                () = self.fence.expired() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        };
        let mut start_at = None;
        let mut backoff = Duration::from_millis(200);
        loop {
            if !self.fence.may_report() {
                return;
            }
            let ended = self.attempt(&state, &mut stop, start_at.take()).await;
            match ended {
                Ok(Ended::Stopped) | Ok(Ended::Fenced) => return,
                Ok(Ended::Failed(why)) | Err(why) => {
                    state.send_modify(|st| {
                        st.streaming = false;
                        st.last_error = Some(why.clone());
                    });
                    // After the lease ran out (a pause, a partition) the failure is the new
                    // owner ending our walsender: expected, and nothing to retry.
                    if !self.fence.may_report() {
                        tracing::info!(node = %self.node, server = %s, epoch = self.epoch, "streaming ended after the lease ran out: {why}");
                        return;
                    }
                    tracing::warn!(node = %self.node, server = %s, epoch = self.epoch, "WAL streaming failed, retrying in {} ms: {why}", backoff.as_millis());
                }
                Ok(Ended::PositionGone(at)) => {
                    start_at = Some(at);
                    continue;
                }
            }
            tokio::select! {
                _ = &mut stop => return,
                () = self.fence.expired() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

impl Job {
    /// Ends every walsender serving our application name or holding the slot, and waits
    /// until PostgreSQL shows none: two of our receivers must never stream at once.
    async fn take_over(&self, c: &PgConnection, app: &str, slot: Option<&str>) -> Result<(), String> {
        let s = &self.server.name;
        let deadline = mono_ms() + 10_000;
        let mut told = false;
        loop {
            let pids = c.receiver_pids(app, slot).await.map_err(|e| e.to_string())?;
            if pids.is_empty() {
                return Ok(());
            }
            if !told {
                for pid in &pids {
                    tracing::info!(node = %self.node, server = %s, epoch = self.epoch, "ending walsender {pid} of an earlier receiver");
                    c.terminate_backend(*pid).await.map_err(|e| e.to_string())?;
                }
                told = true;
            }
            if mono_ms() > deadline {
                return Err(format!("walsender(s) {pids:?} still running 10 s after pg_terminate_backend"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates the slot when missing and `create_slot = auto`.
    async fn ensure_slot(
        &self,
        c: &PgConnection,
        params: &crate::postgres::ConnParams,
        app: &str,
        slot: &str,
    ) -> Result<(), String> {
        if c.replication_slot(slot).await.map_err(|e| e.to_string())?.is_some() {
            return Ok(());
        }
        if self.server.opts.create_slot != CreateSlot::Auto {
            return Err(format!(
                "replication slot '{slot}' doesn't exist; set create_slot = auto or run 'barman receive-wal --create-slot {}'",
                self.server.name
            ));
        }
        let mut r = crate::postgres::replication::ReplicationConnection::connect(params, Some(app))
            .await
            .map_err(|e| e.to_string())?;
        let created = r.create_physical_slot(slot).await;
        r.close().await;
        match created {
            Ok(()) => {
                tracing::info!(node = %self.node, server = %self.server.name, "created replication slot '{slot}'");
                Ok(())
            }
            // Created meanwhile by someone else: fine.
            Err(e) if e.sqlstate() == Some("42710") => Ok(()),
            Err(e) => Err(format!("cannot create replication slot '{slot}': {}", e.reason())),
        }
    }

    async fn attempt(
        &self,
        state: &watch::Sender<StreamState>,
        stop: &mut tokio::sync::oneshot::Receiver<()>,
        start_at: Option<(Lsn, TimelineId)>,
    ) -> Result<Ended, String> {
        let s = &self.server.name;
        let (streaming, sql, _) = wal_conninfos(&self.server);
        let (Some(streaming), Some(sql)) = (streaming, sql) else {
            return Err("no streaming_conninfo or conninfo configured".into());
        };
        let params = streaming_params(&streaming)?;
        let app = app_name(&self.server);
        let slot = self.server.opts.slot_name.as_ref().map(|n| n.0.clone());
        let ci = Conninfo::parse(&sql).map_err(|e| format!("conninfo: {e}"))?;
        let c = PgConnection::connect(&ci, Some(SQL_APPLICATION_NAME)).await.map_err(|e| e.to_string())?;
        self.take_over(&c, &app, slot.as_deref()).await?;
        if let Some(slot) = &slot {
            self.ensure_slot(&c, &params, &app, slot).await?;
        }
        if !self.fence.may_report() {
            return Ok(Ended::Fenced);
        }
        let progress = Arc::new(AtomicU64::new(0));
        let cfg = ReceiverConfig {
            layout: self.layout.clone(),
            params,
            sql: Some(ci.clone()),
            application_name: app,
            slot: slot.clone(),
            status_interval: Duration::from_secs(10),
            fence: Some(self.fence.clone()),
            start_at,
            log_segments: true,
            progress: Some(progress.clone()),
            // A completed segment is archived at once, so the passives can fetch it at once.
            segment_done: Some(self.archive_kick.clone()),
        };
        tracing::info!(node = %self.node, server = %s, epoch = self.epoch, mono_ms = mono_ms(), "streaming started");
        state.send_modify(|st| {
            st.streaming = true;
            st.last_error = None;
        });
        let fence = self.fence.clone();
        let publish = {
            let (state, progress, c) = (state.clone(), progress.clone(), &c);
            async move {
                let mut tick = 0u32;
                loop {
                    // Once a second, the renewals' cadence that carries the position.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let f = progress.load(Ordering::Relaxed);
                    state.send_if_modified(|st| std::mem::replace(&mut st.flushed, f) != f);
                    tick += 1;
                    // PostgreSQL's position, for the lag, every five seconds.
                    if tick.is_multiple_of(5)
                        && let Ok(lsn) = c.current_lsn().await
                    {
                        state.send_modify(|st| st.server_lsn = lsn.0);
                    }
                }
            }
        };
        let stopped = async {
            tokio::select! {
                _ = stop => {}
                () = fence.expired() => {}
            }
        };
        // Every line of the stream (each completed segment) names the epoch it belongs to.
        let span = tracing::info_span!("stream", node = %self.node, server = %s, epoch = self.epoch);
        let result = tokio::select! {
            r = tracing::Instrument::instrument(rw::receive(&cfg, stopped), span) => r,
            () = publish => unreachable!("the publisher never ends"),
        };
        // Authority to report ended at the fence's deadline at the latest.
        let end = mono_ms().min(self.fence.deadline().max(1));
        let (ended, reason) = match result {
            Ok(_) if !self.fence.may_report() => (Ended::Fenced, "lease expired".to_string()),
            Ok(_) => (Ended::Stopped, "stopped".to_string()),
            Err(ReceiveError::Fenced(_)) => (Ended::Fenced, "lease expired".to_string()),
            Err(ReceiveError::PositionGone { lsn, tli, .. }) => {
                let from = match &slot {
                    Some(name) => c.replication_slot(name).await.ok().flatten().and_then(|x| x.restart_lsn),
                    None => None,
                };
                match from {
                    Some(at) => {
                        tracing::info!(node = %self.node, server = %s, epoch = self.epoch, "PostgreSQL no longer has WAL at {lsn}; resuming from the slot at {at}");
                        (Ended::PositionGone((at, TimelineId(tli))), "resuming from the slot".to_string())
                    }
                    None => (
                        Ended::Failed(format!(
                            "PostgreSQL no longer has WAL at {lsn} and there is no slot to resume from"
                        )),
                        "position gone".into(),
                    ),
                }
            }
            Err(e) => (Ended::Failed(e.to_string()), e.to_string()),
        };
        state.send_modify(|st| {
            st.streaming = false;
            st.flushed = progress.load(Ordering::Relaxed);
        });
        tracing::info!(node = %self.node, server = %s, epoch = self.epoch, mono_ms = end, reason = %reason, "streaming stopped");
        Ok(ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn expired_follows_extensions_and_wakes_on_revoke() {
        let fence = Arc::new(LeaseFence::default());
        fence.set_deadline(mono_ms() + 100);
        let f = fence.clone();
        let t0 = std::time::Instant::now();
        let waiter = tokio::spawn(async move { f.expired().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        fence.set_deadline(mono_ms() + 150);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "the extension was not followed");
        assert!(fence.may_report());
        fence.set_deadline(mono_ms() + 60_000);
        fence.revoke();
        tokio::time::timeout(Duration::from_secs(2), waiter).await.expect("revoke did not wake the waiter").unwrap();
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(!fence.may_report());
    }
}
