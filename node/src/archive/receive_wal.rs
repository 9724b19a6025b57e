//! receive-wal: streams WAL from PostgreSQL into the streaming directory, as
//! pg_receivewal lays it out (`<segment>.partial` zero-padded to the segment
//! size, renamed when complete), for archive-wal to file.
//!
//! The rule that makes the stream safe to acknowledge: a flush position is
//! reported to PostgreSQL only once the bytes up to it are fsynced, and the file
//! holding them (and its directory entry) is durable too. In synchronous mode
//! the position is reported as soon as everything received so far is durable;
//! the mode follows `synchronous_standby_names` while streaming (receive_mode).

use super::archive_wal::listing;
use super::receive_mode::{self, ModeState, ModeWatch, is_synchronous_standby, mode_name};
use crate::archive::server::pin_identity;
use crate::catalog::ServerLayout;
use crate::catalog::durable::{self, fsync_dir};
use crate::catalog::identity::Identity;
use crate::config::ServerConfig;
use crate::postgres::replication::{ReplicationConnection, StreamEvent, SystemInfo};
use crate::postgres::{ConnParams, Conninfo, LibpqEnv, PgError};
use crate::wal::{Lsn, SegmentId, SegmentSize, SystemId, TimelineId, WalFileName};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("{0}")]
    Pg(#[from] PgError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "PostgreSQL's system identifier {server} differs from {catalog} in {file}: this server's archive belongs to another cluster; point the streaming connection at the right server"
    )]
    SystemIdMismatch { server: SystemId, catalog: SystemId, file: PathBuf },
    #[error(
        "PostgreSQL no longer has the WAL at {lsn} on timeline {tli} that receive-wal must resume from ({reason}); WAL from there is lost unless archive_command kept it. Run 'barman receive-wal --reset {server}' to restart from PostgreSQL's current position"
    )]
    PositionGone { lsn: Lsn, tli: u32, reason: String, server: String },
    #[error(
        "replication slot '{slot}' is already in use ({reason}); stop the other receiver, or give this server its own slot_name"
    )]
    SlotInUse { slot: String, reason: String },
    #[error("unexpected data from PostgreSQL: {0}")]
    Protocol(String),
    #[error("PostgreSQL ended the WAL stream (server shut down?) at {0}")]
    Ended(Lsn),
    #[error("streaming stopped at {0}: this node's lease on the server ran out (it fenced itself)")]
    Fenced(Lsn),
}

/// Decides, before every flush report, whether this receiver may still acknowledge WAL to
/// PostgreSQL (a cluster node's lease; always yes for a plain `receive-wal`).
pub trait Fence: Send + Sync {
    fn may_report(&self) -> bool;
}

/// What the receiver needs to know.
pub struct ReceiverConfig {
    pub layout: ServerLayout,
    pub params: ConnParams,
    /// The SQL connection on which `synchronous_standby_names` is followed (none: the
    /// mode read at start stays).
    pub sql: Option<Conninfo>,
    /// `streaming_archiver_name`.
    pub application_name: String,
    pub slot: Option<String>,
    /// Longest time between two status updates (pg_receivewal's 10 s default).
    pub status_interval: Duration,
    /// Checked before every flush report; when it says no, streaming stops unreported.
    pub fence: Option<std::sync::Arc<dyn Fence>>,
    /// Start here (a segment start) instead of the newest file on disk.
    pub start_at: Option<(Lsn, TimelineId)>,
    /// Log each completed segment at INFO (a cluster node traces every file to its epoch).
    pub log_segments: bool,
    /// Where the last reported flush position is published (LSN as a number).
    pub progress: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// Notified each time a segment completes (a node archives it at once).
    pub segment_done: Option<std::sync::Arc<tokio::sync::Notify>>,
}

impl ReceiverConfig {
    fn may_report(&self) -> bool {
        self.fence.as_ref().is_none_or(|f| f.may_report())
    }
}

/// The segment file being written.
struct Open {
    id: SegmentId,
    partial: PathBuf,
    file: File,
    dirty: bool,
    /// Whether any WAL was written into it (the next segment is opened as soon as one
    /// completes, before its first byte comes).
    written: bool,
}

struct Receiver<'a> {
    cfg: &'a ReceiverConfig,
    size: SegmentSize,
    tli: TimelineId,
    write: Lsn,
    flush: Lsn,
    open: Option<Open>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ReceiveError + '_ {
    move |source| ReceiveError::Io { path: path.to_path_buf(), source }
}

/// The WAL streaming connections (Barman's `get_wal_conninfo`): the replication
/// one (`wal_streaming_conninfo`, else `streaming_conninfo`) and the SQL one
/// for checks (`wal_conninfo`, else `wal_streaming_conninfo`, else `conninfo`),
/// with the overrides that applied.
pub fn wal_conninfos(s: &ServerConfig) -> (Option<String>, Option<String>, Vec<String>) {
    let mut overrides = Vec::new();
    if let Some(w) = &s.opts.wal_streaming_conninfo {
        overrides.push(format!("'streaming_conninfo' overridden with '{}'", crate::postgres::mask_password(w)));
    }
    let streaming = s.opts.wal_streaming_conninfo.clone().or_else(|| s.opts.streaming_conninfo.clone());
    let sql = match (&s.opts.wal_conninfo, &s.opts.wal_streaming_conninfo) {
        (Some(w), _) | (None, Some(w)) => {
            overrides.push(format!("'conninfo' overridden with '{}'", crate::postgres::mask_password(w)));
            Some(w.clone())
        }
        _ => s.opts.conninfo.clone(),
    };
    (streaming, sql, overrides)
}

/// Resolved parameters of the replication connection (Barman's streaming conninfo).
pub fn streaming_params(raw: &str) -> Result<ConnParams, String> {
    let ci = Conninfo::parse(raw).map_err(|e| format!("streaming_conninfo: {e}"))?;
    ConnParams::resolve(&ci.barman_streaming(), &LibpqEnv::from_process())
        .map_err(|e| format!("streaming_conninfo: {e}"))
}

/// `streaming_archiver_name`: the application name of WAL streaming.
pub fn app_name(s: &ServerConfig) -> String {
    s.opts.streaming_archiver_name.clone().unwrap_or_else(|| "barman_receive_wal".into())
}

/// The newest WAL segment or `.partial` in the streaming directory.
pub fn newest_streamed(dir: &Path) -> io::Result<Option<(WalFileName, PathBuf)>> {
    Ok(listing(dir)?.into_iter().rev().find_map(|p| {
        let name = p.file_name()?.to_string_lossy().parse::<WalFileName>().ok()?;
        (name.is_segment() || name.is_partial()).then_some((name, p))
    }))
}

/// Where streaming resumes: the newest file on disk (a `.partial` from its
/// start, a complete segment from the next one), else the slot's restart_lsn,
/// else the server's current position; always at a segment start.
async fn start_position(
    conn: &mut ReplicationConnection,
    dir: &Path,
    size: SegmentSize,
    slot: Option<&str>,
    sys: &SystemInfo,
) -> Result<(Lsn, TimelineId), ReceiveError> {
    if let Some((name, _)) = newest_streamed(dir).map_err(io_err(dir))?
        && let Some(id) = name.segment_id()
    {
        let id = if name.is_partial() { id } else { id.next(size) };
        return Ok((id.start_lsn(size), id.tli));
    }
    if let Some(slot) = slot
        && conn.server_version() >= 150000
        && let Some(pos) = conn.read_slot(slot).await?
        && let Some(lsn) = pos.restart_lsn
    {
        let tli = pos.timeline.unwrap_or(sys.timeline);
        return Ok((SegmentId::containing(lsn, tli, size).start_lsn(size), tli));
    }
    Ok((SegmentId::containing(sys.xlogpos, sys.timeline, size).start_lsn(size), sys.timeline))
}

impl Receiver<'_> {
    fn dir(&self) -> &Path {
        &self.cfg.layout.streaming_dir
    }

    /// Opens (creating and padding as needed) the file of the segment holding `self.write`.
    fn open_segment(&mut self) -> Result<(), ReceiveError> {
        let id = SegmentId::containing(self.write, self.tli, self.size);
        let partial = self.dir().join(WalFileName::partial(id).as_str());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&partial)
            .map_err(io_err(&partial))?;
        let len = file.metadata().map_err(io_err(&partial))?.len();
        if len != self.size.bytes() {
            if len != 0 {
                tracing::info!(server = %self.cfg.layout.server, "Truncating partial file {} that has wrong size {len} while {} was expected.", partial.display(), self.size.bytes());
                file.set_len(0).map_err(io_err(&partial))?;
            }
            preallocate(&file, self.size.bytes()).map_err(io_err(&partial))?;
            file.sync_all().map_err(io_err(&partial))?;
            fsync_dir(self.dir()).map_err(io_err(self.dir()))?;
        }
        self.open = Some(Open { id, partial, file, dirty: false, written: false });
        Ok(())
    }

    fn write_data(&mut self, start: Lsn, data: &[u8]) -> Result<(), ReceiveError> {
        if start != self.write {
            return Err(ReceiveError::Protocol(format!("WAL data at {start}, expected at {}", self.write)));
        }
        let seg = self.size.bytes();
        let mut done = 0usize;
        while done < data.len() {
            if self.open.is_none() {
                self.open_segment()?;
            }
            let Some(open) = self.open.as_mut() else { unreachable!("opened above") };
            let off = self.write.0 % seg;
            let n = (data.len() - done).min((seg - off) as usize);
            open.file.write_all_at(&data[done..done + n], off).map_err(io_err(&open.partial))?;
            open.dirty = true;
            open.written = true;
            done += n;
            self.write = Lsn(self.write.0 + n as u64);
            if off + n as u64 == seg {
                self.complete_segment()?;
            }
        }
        Ok(())
    }

    /// fsync, then `<segment>.partial` → `<segment>`, then the directory.
    fn complete_segment(&mut self) -> Result<(), ReceiveError> {
        let Some(open) = self.open.take() else { return Ok(()) };
        open.file.sync_data().map_err(io_err(&open.partial))?;
        let done = self.dir().join(WalFileName::segment(open.id).as_str());
        fs::rename(&open.partial, &done).map_err(io_err(&done))?;
        fsync_dir(self.dir()).map_err(io_err(self.dir()))?;
        self.flush = self.write;
        if self.cfg.log_segments {
            tracing::info!(server = %self.cfg.layout.server, segment = %WalFileName::segment(open.id), "segment complete");
        } else {
            tracing::debug!(server = %self.cfg.layout.server, segment = %WalFileName::segment(open.id), "segment complete");
        }
        // The next segment's `.partial` at once: archive-wal holds back the newest file of
        // the directory for us, which would otherwise be the segment just completed until
        // more WAL comes (after a switch-wal on an idle server, for as long as it idles).
        self.open_segment()?;
        if let Some(n) = &self.cfg.segment_done {
            n.notify_one();
        }
        Ok(())
    }

    /// Drops the open `.partial` if nothing was written into it (opened ahead of a timeline
    /// that ended at the segment boundary): it would stand for WAL that never existed.
    fn drop_unwritten(&mut self) -> Result<(), ReceiveError> {
        if let Some(open) = self.open.take_if(|o| !o.written) {
            drop(open.file);
            fs::remove_file(&open.partial).map_err(io_err(&open.partial))?;
            fsync_dir(self.dir()).map_err(io_err(self.dir()))?;
        }
        Ok(())
    }

    /// Makes everything written durable; true when the flush position moved.
    fn make_durable(&mut self) -> Result<bool, ReceiveError> {
        if let Some(open) = self.open.as_mut()
            && open.dirty
        {
            open.file.sync_data().map_err(io_err(&open.partial))?;
            open.dirty = false;
        }
        let moved = self.flush != self.write;
        self.flush = self.write;
        Ok(moved)
    }

    /// Writes `<tli>.history` into the streaming directory unless the archive has it.
    async fn fetch_history(&self, conn: &mut ReplicationConnection, tli: TimelineId) -> Result<(), ReceiveError> {
        if tli.0 <= 1 {
            return Ok(());
        }
        let name = WalFileName::history(tli);
        let here = self.dir().join(name.as_str());
        if here.exists() || self.cfg.layout.wal_path(&name).exists() {
            return Ok(());
        }
        let (_, content) = conn.timeline_history(tli).await?;
        durable::write_file(&here, &content, 0o600).map_err(io_err(&here))?;
        tracing::info!(server = %self.cfg.layout.server, "received timeline history file {name}");
        Ok(())
    }
}

/// Allocates `len` zeroed bytes for the file, as pg_receivewal pads a new
/// segment (so a later write cannot fail for want of space).
fn preallocate(file: &File, len: u64) -> io::Result<()> {
    // Zeros in 8 KiB writes, as pg_receivewal pads: measured here, WAL written
    // later into posix_fallocate'd (unwritten) extents cost the receiver about
    // twice the kernel CPU of overwriting small zeroed pages, and its throughput.
    const BLOCK: usize = 8192;
    let zeros = [0u8; BLOCK];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(BLOCK as u64) as usize;
        file.write_all_at(&zeros[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

/// Checks the cluster against `identity.json`, and writes it when missing.
fn check_identity(layout: &ServerLayout, sys: &SystemInfo, version: u32) -> Result<(), ReceiveError> {
    let path = layout.identity_path();
    match Identity::read(&path) {
        Ok(Some(id)) if id.systemid != sys.system_id => {
            Err(ReceiveError::SystemIdMismatch { server: sys.system_id, catalog: id.systemid, file: path })
        }
        Ok(Some(_)) => Ok(()),
        Ok(None) => {
            pin_identity(
                layout,
                Identity { systemid: sys.system_id, version: crate::postgres::major_version(version) },
            );
            Ok(())
        }
        Err(e) => {
            tracing::warn!(server = %layout.server, "{e}");
            Ok(())
        }
    }
}

fn start_error(e: PgError, cfg: &ReceiverConfig, lsn: Lsn, tli: TimelineId) -> ReceiveError {
    match e.sqlstate() {
        // "requested WAL segment ... has already been removed"
        Some("58P01") => {
            ReceiveError::PositionGone { lsn, tli: tli.0, reason: e.reason(), server: cfg.layout.server.clone() }
        }
        // "replication slot ... is active for PID n"
        Some("55006") => ReceiveError::SlotInUse { slot: cfg.slot.clone().unwrap_or_default(), reason: e.reason() },
        _ => ReceiveError::Pg(e),
    }
}

/// Before a flush report: past the fence, the error returns and the connection is dropped
/// (closed) without reporting.
fn fence_check(cfg: &ReceiverConfig, flushed: Lsn) -> Result<(), ReceiveError> {
    if !cfg.may_report() {
        return Err(ReceiveError::Fenced(flushed));
    }
    if let Some(p) = &cfg.progress {
        p.store(flushed.0, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

/// Streams until `stop` completes, then makes everything durable, reports it and
/// returns the flush position; or an error. Takes no lock: the caller holds the
/// receive-wal lock.
pub async fn receive(cfg: &ReceiverConfig, stop: impl std::future::Future<Output = ()>) -> Result<Lsn, ReceiveError> {
    let mut conn = ReplicationConnection::connect(&cfg.params, Some(&cfg.application_name)).await?;
    let sys = conn.identify_system().await?;
    check_identity(&cfg.layout, &sys, conn.server_version())?;
    let size = conn.wal_segment_size().await?;
    // Barman's rule for --synchronous, then followed while streaming.
    let initial = is_synchronous_standby(&conn.show("synchronous_standby_names").await?, &cfg.application_name);
    let mut mode = ModeWatch::follow(cfg.sql.clone(), cfg.layout.server.clone(), cfg.application_name.clone(), initial);
    let result = stream(cfg, conn, sys, size, &mut mode, stop).await;
    receive_mode::remove_state(&cfg.layout);
    result
}

async fn stream(
    cfg: &ReceiverConfig,
    mut conn: ReplicationConnection,
    sys: SystemInfo,
    size: SegmentSize,
    mode: &mut ModeWatch,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Lsn, ReceiveError> {
    let dir = &cfg.layout.streaming_dir;
    durable::create_dir_all(dir).map_err(io_err(dir))?;
    let (start, tli) = match cfg.start_at {
        Some((lsn, tli)) => (SegmentId::containing(lsn, tli, size).start_lsn(size), tli),
        None => start_position(&mut conn, dir, size, cfg.slot.as_deref(), &sys).await?,
    };
    let mut r = Receiver { cfg, size, tli, write: start, flush: start, open: None };
    tokio::pin!(stop);

    let mut synchronous = mode.synchronous();
    let walsender_pid = conn.backend_pid();
    let state = |synchronous| ModeState { pid: std::process::id(), walsender_pid, synchronous };
    receive_mode::write_state(&cfg.layout, &state(synchronous));
    loop {
        r.fetch_history(&mut conn, r.tli).await?;
        tracing::info!(server = %cfg.layout.server, "starting WAL streaming at {} on timeline {} ({} reporting)", r.write, r.tli.0, mode_name(synchronous));
        conn.start(cfg.slot.as_deref(), r.write, r.tli).await.map_err(|e| start_error(e, cfg, r.write, r.tli))?;
        let mut next_status = Instant::now() + cfg.status_interval;
        // Tell the server where we are at once, so the slot and
        // pg_stat_replication show us from the start.
        fence_check(cfg, r.flush)?;
        conn.send_status(r.write, r.flush, false).await?;
        let mut reported = r.flush;
        // One timer, re-armed lazily when it fires early: a new timer (or a reset)
        // per message would touch the runtime's timer wheel and wake its driver
        // (an eventfd write) for every message.
        let status_timer = tokio::time::sleep_until(next_status);
        tokio::pin!(status_timer);
        let ended = loop {
            let event = tokio::select! {
                ev = conn.next_event() => ev.map_err(|e| start_error(e, cfg, r.write, r.tli))?,
                now = mode.changed() => {
                    if now == synchronous {
                        continue;
                    }
                    synchronous = now;
                    tracing::info!(server = %cfg.layout.server, "synchronous_standby_names {} us: reporting is now {} at {}", if now { "names" } else { "no longer names" }, mode_name(now), r.write);
                    receive_mode::write_state(&cfg.layout, &state(now));
                    // Commits may be waiting for what we already hold: release them now.
                    if now {
                        r.make_durable()?;
                        fence_check(cfg, r.flush)?;
                        conn.send_status(r.write, r.flush, false).await?;
                        reported = r.flush;
                        next_status = Instant::now() + cfg.status_interval;
                    }
                    continue;
                }
                () = &mut status_timer => {
                    // A status went out since it was armed: wait for the interval from then.
                    if Instant::now() < next_status {
                        status_timer.as_mut().reset(next_status);
                        continue;
                    }
                    r.make_durable()?;
                    fence_check(cfg, r.flush)?;
                    conn.send_status(r.write, r.flush, false).await?;
                    reported = r.flush;
                    next_status = Instant::now() + cfg.status_interval;
                    status_timer.as_mut().reset(next_status);
                    continue;
                }
                () = &mut stop => {
                    r.make_durable()?;
                    fence_check(cfg, r.flush)?;
                    conn.send_status(r.write, r.flush, false).await?;
                    let flushed = r.flush;
                    conn.close().await;
                    tracing::info!(server = %cfg.layout.server, "receive-wal stopped at {flushed}");
                    return Ok(flushed);
                }
            };
            // Everything already received is written before it is made durable
            // and reported: one fsync per burst, not per message.
            let mut reply = false;
            let mut end = None;
            let mut pending = Some(event);
            while let Some(ev) = pending.take() {
                match ev {
                    StreamEvent::XLogData { start, data, .. } => r.write_data(start, &data)?,
                    StreamEvent::Keepalive { reply: asked, .. } => reply |= asked,
                    other => {
                        end = Some(other);
                        break;
                    }
                }
                if conn.has_buffered_message() {
                    pending = Some(conn.next_event().await.map_err(|e| start_error(e, cfg, r.write, r.tli))?);
                }
            }
            if let Some(end) = end {
                break end;
            }
            let due = Instant::now() >= next_status;
            let mut report = reply || due || r.flush != reported;
            if synchronous || reply || due {
                report |= r.make_durable()?;
            }
            // A segment completed (flush moved) is told at once, so the slot follows.
            if report {
                fence_check(cfg, r.flush)?;
                conn.send_status(r.write, r.flush, false).await?;
                reported = r.flush;
                next_status = Instant::now() + cfg.status_interval;
            }
        };
        match ended {
            StreamEvent::EndOfTimeline { next_timeline, next_start } => {
                // The old timeline's last segment stays `.partial` (as pg_receivewal).
                r.make_durable()?;
                r.drop_unwritten()?;
                r.open = None;
                tracing::info!(server = %cfg.layout.server, "timeline {} ended at {}; switching to timeline {} at {next_start}", r.tli.0, r.write, next_timeline.0);
                if next_timeline.0 <= r.tli.0 {
                    return Err(ReceiveError::Protocol(format!(
                        "server switched from timeline {} to timeline {}",
                        r.tli.0, next_timeline.0
                    )));
                }
                r.tli = next_timeline;
                let start = SegmentId::containing(next_start, next_timeline, size).start_lsn(size);
                r.write = start;
                r.flush = start;
            }
            _ => {
                r.make_durable()?;
                let at = r.flush;
                conn.close().await;
                return Err(ReceiveError::Ended(at));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_file_decides() {
        let d = tempfile::tempdir().unwrap();
        assert!(newest_streamed(d.path()).unwrap().is_none());
        for n in ["000000010000000000000003", "000000010000000000000004.partial", "00000002.history"] {
            fs::write(d.path().join(n), b"").unwrap();
        }
        let (n, _) = newest_streamed(d.path()).unwrap().unwrap();
        assert_eq!(n.as_str(), "000000010000000000000004.partial");
    }
}
