//! `receive-wal`: Barman's command, options and messages around our own
//! streamer (archive::receive_wal), and the replication slot commands.

use super::context::{Ctx, Pick, runtime};
use super::remote::APPLICATION_NAME;
use crate::archive::receive_wal::{self as rw, ReceiverConfig, newest_streamed};
pub use crate::archive::receive_wal::{app_name, streaming_params, wal_conninfos};
use crate::catalog::ServerLayout;
use crate::catalog::lock::{Lock, LockError, LockKind, holder};
use crate::config::ServerConfig;
use crate::postgres::replication::ReplicationConnection;
use crate::postgres::{ConnParams, Conninfo, PgConnection, PgError};
use crate::wal::{SegmentId, WalFileName};
use std::time::Duration;

#[derive(Debug, Clone, Copy, Default)]
pub struct Flags {
    pub stop: bool,
    pub reset: bool,
    pub create_slot: bool,
    pub drop_slot: bool,
    pub if_not_exists: bool,
}

/// Barman's line naming the conninfo overrides a WAL command applies.
pub fn announce_overrides(ctx: &mut Ctx, overrides: &[String]) {
    if !overrides.is_empty() {
        ctx.out.info(format!("Configuration overrides applied: {}", overrides.join(" and ")));
    }
}

pub fn receive_wal(ctx: &mut Ctx, server: &str, f: Flags) {
    let skip_inactive = !(f.create_slot || f.drop_slot || f.stop || f.reset);
    let Some(s) = ctx.server(server, Pick { skip_inactive, ..Pick::DEFAULT }) else { return };
    if f.stop && f.reset {
        ctx.out.error("--stop and --reset options are not compatible");
    } else if f.stop {
        kill_receiver(ctx, &s, true);
    } else if f.create_slot {
        create_slot(ctx, &s, f.if_not_exists);
    } else if f.drop_slot {
        drop_slot(ctx, &s);
    } else {
        start(ctx, &s, f.reset);
    }
}

/// Stops the running receive-wal with SIGINT, as Barman's `kill`, waiting up
/// to 10 s for it to let its lock go.
pub fn kill_receiver(ctx: &mut Ctx, s: &ServerConfig, fail_if_not_present: bool) {
    let l = ServerLayout::new(&ctx.cfg.global, s);
    let lock = l.lock_dir.join(LockKind::ReceiveWal.file_name(&s.name));
    let Some(pid) = holder(&lock) else {
        if fail_if_not_present {
            ctx.out.error(format!("Termination of receive-wal failed: no such process for server {}", s.name));
        }
        return;
    };
    // SAFETY: a signal to the pid the lock's holder wrote in it.
    let rc = unsafe { libc::kill(pid as i32, libc::SIGINT) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH) {
        ctx.out.error(std::io::Error::last_os_error().to_string());
        return;
    }
    for _ in 0..100 {
        if holder(&lock).is_none() {
            ctx.out.info(format!("Stopped process receive-wal({pid})"));
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ctx.out.error(format!("Cannot terminate process receive-wal({pid})"));
}

/// Opens the replication connection, or says why not in Barman's words.
fn replication<T>(
    ctx: &mut Ctx,
    s: &ServerConfig,
    action: &str,
    f: impl AsyncFnOnce(&mut ReplicationConnection) -> Result<T, PgError>,
) -> Option<Result<T, PgError>> {
    let (streaming, _, _) = wal_conninfos(s);
    let Some(raw) = streaming else {
        ctx.out.error(format!("Unable to {action} a physical replication slot: streaming connection not configured"));
        return None;
    };
    let params = match streaming_params(&raw) {
        Ok(p) => p,
        Err(e) => {
            ctx.out.error(e);
            return None;
        }
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(e) => {
            ctx.out.error(e);
            return None;
        }
    };
    let app = app_name(s);
    let connected = rt.block_on(ReplicationConnection::connect(&params, Some(&app)));
    let mut conn = match connected {
        Ok(c) => c,
        Err(e) => {
            ctx.out.error(format!("Cannot connect to server '{}'", s.name));
            tracing::error!(server = %s.name, "Cannot connect to server '{}': {e}", s.name);
            return None;
        }
    };
    if conn.server_version() < 90400 {
        ctx.out.error(format!(
            "Unable to {action} a physical replication slot: not supported by '{}' (9.4 or higher is required)",
            crate::postgres::major_version(conn.server_version())
        ));
        return None;
    }
    if s.opts.slot_name.is_none() {
        ctx.out
            .error(format!("Unable to {action} a physical replication slot: slot_name configuration option required"));
        return None;
    }
    let r = rt.block_on(async {
        let r = f(&mut conn).await;
        conn.close().await;
        r
    });
    Some(r)
}

pub fn create_slot(ctx: &mut Ctx, s: &ServerConfig, if_not_exists: bool) {
    let slot = s.opts.slot_name.as_ref().map(|n| n.0.clone()).unwrap_or_default();
    let name = s.name.clone();
    let Some(r) = replication(ctx, s, "create", async |c| c.create_physical_slot(&slot).await) else {
        return;
    };
    ctx.out.info(format!("Creating physical replication slot '{slot}' on server '{name}'"));
    match r {
        Ok(()) => ctx.out.info(format!("Replication slot '{slot}' created")),
        Err(e) if e.sqlstate() == Some("42710") && if_not_exists => ctx.out.info(format!(
            "Replication slot '{slot}' already exists and --if-not-exists was specified. Skipping creation"
        )),
        Err(e) if e.sqlstate() == Some("42710") => ctx.out.error(format!("Replication slot '{slot}' already exists")),
        Err(e) if e.sqlstate() == Some("53400") => ctx.out.error(format!(
            "All replication slots for server '{name}' are in use\nFree one or increase the max_replication_slots value on your PostgreSQL server."
        )),
        Err(e) => ctx.out.error(format!("Cannot create replication slot '{slot}' on server '{name}': {}", e.reason())),
    }
}

pub fn drop_slot(ctx: &mut Ctx, s: &ServerConfig) {
    let slot = s.opts.slot_name.as_ref().map(|n| n.0.clone()).unwrap_or_default();
    let name = s.name.clone();
    let Some(r) = replication(ctx, s, "drop", async |c| c.drop_slot(&slot).await) else { return };
    ctx.out.info(format!("Dropping physical replication slot '{slot}' on server '{name}'"));
    match r {
        Ok(()) => ctx.out.info(format!("Replication slot '{slot}' dropped")),
        Err(e) if e.sqlstate() == Some("42704") => ctx.out.error(format!("Replication slot '{slot}' does not exist")),
        Err(e) if e.sqlstate() == Some("55006") => {
            ctx.out.error(format!("Cannot drop replication slot '{slot}' on server '{name}' because it is in use."))
        }
        Err(e) => ctx.out.error(format!("Cannot drop replication slot '{slot}' on server '{name}': {}", e.reason())),
    }
}

/// What the SQL connection says before streaming starts.
struct Preflight {
    slot: Option<crate::postgres::ReplicationSlot>,
    current_lsn: Option<crate::wal::Lsn>,
}

/// Barman's preflight: monitoring privileges and wal_level over the SQL
/// connection; the slot's state; PostgreSQL's current LSN (for --reset).
async fn preflight(raw: &str, slot: Option<&str>) -> Result<Preflight, String> {
    let ci = Conninfo::parse(raw).map_err(|e| format!("conninfo: {e}"))?;
    let c = PgConnection::connect(&ci, Some(APPLICATION_NAME)).await.map_err(|e| e.to_string())?;
    if !c.has_monitoring_privileges().await.map_err(|e| e.to_string())? {
        return Err(format!(
            "Postgres user '{}' has no monitoring privileges (needs superuser, pg_monitor, or pg_read_all_settings and pg_read_all_stats)",
            c.user()
        ));
    }
    let level = c.setting("wal_level").await.map_err(|e| e.to_string())?.unwrap_or_default();
    if level == "minimal" {
        return Err("wal_level is 'minimal' on PostgreSQL; WAL streaming needs 'replica' or 'logical'".into());
    }
    let slot = match slot {
        Some(n) => c.replication_slot(n).await.map_err(|e| e.to_string())?,
        None => None,
    };
    let current_lsn = if c.is_in_recovery().await.map_err(|e| e.to_string())? {
        None
    } else {
        Some(c.current_lsn().await.map_err(|e| e.to_string())?)
    };
    Ok(Preflight { slot, current_lsn })
}

fn start(ctx: &mut Ctx, s: &ServerConfig, reset: bool) {
    if !s.opts.streaming_archiver {
        ctx.out.error(
            "Unable to start receive-wal process: streaming_archiver option set to 'off' in barman configuration file",
        );
        return;
    }
    if let Some(why) = super::cluster::refused_here(ctx, &s.name, "WAL streaming") {
        return ctx.out.error(why);
    }
    let (streaming, sql, overrides) = wal_conninfos(s);
    announce_overrides(ctx, &overrides);
    let impossible = |ctx: &mut Ctx, why: &str| {
        tracing::error!(server = %s.name, "{why}");
        ctx.out.error(format!(
            "Impossible to start WAL streaming ({why}). Check the log for more details, or run 'barman check {}'",
            s.name
        ));
    };
    let (Some(streaming), Some(sql)) = (streaming, sql) else {
        return impossible(ctx, "no streaming_conninfo or conninfo configured");
    };
    let params = match streaming_params(&streaming) {
        Ok(p) => p,
        Err(e) => return impossible(ctx, &e),
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(e) => return ctx.out.error(e),
    };
    let slot = s.opts.slot_name.as_ref().map(|n| n.0.clone());
    let pre = match rt.block_on(preflight(&sql, slot.as_deref())) {
        Ok(p) => p,
        Err(e) => return impossible(ctx, &e),
    };
    if !reset {
        ctx.out.info(format!("Starting receive-wal for server {}", s.name));
    }
    let l = ServerLayout::new(&ctx.cfg.global, s);
    if let Err(e) = crate::catalog::durable::create_dir_all(&l.lock_dir) {
        return ctx.out.error(format!("{}: {e}", l.lock_dir.display()));
    }
    let _lock = match Lock::acquire(&l.lock_dir.join(LockKind::ReceiveWal.file_name(&s.name)), false) {
        Ok(lock) => lock,
        Err(LockError::Busy(_)) if reset => {
            return ctx.out.error(format!(
                "Unable to reset the status of receive-wal for server {}. Process is still running",
                s.name
            ));
        }
        Err(LockError::Busy(_)) => {
            return ctx.out.error(format!("Another receive-wal process is already running for server {}.", s.name));
        }
        Err(e) => return ctx.out.error(e.to_string()),
    };
    if let Err(e) = crate::catalog::durable::create_dir_all(&l.streaming_dir) {
        return ctx.out.error(format!("{}: {e}", l.streaming_dir.display()));
    }
    if let Some(name) = &slot {
        match &pre.slot {
            None if s.opts.create_slot == crate::config::types::CreateSlot::Auto => {
                if !reset {
                    ctx.out.info(format!("Creating replication slot '{name}'"));
                    create_slot(ctx, s, false);
                }
            }
            None => {
                return ctx.out.error(format!(
                    "replication slot '{name}' doesn't exist. Please execute 'barman receive-wal --create-slot {}'",
                    s.name
                ));
            }
            Some(r) if r.active => return ctx.out.error(format!("replication slot '{name}' is already in use")),
            Some(_) => {}
        }
    }
    if reset {
        return reset_status(ctx, &rt, s, &l, &params, &pre);
    }
    tracing::info!(server = %s.name, "Activating WAL archiving through streaming protocol");
    let cfg = ReceiverConfig {
        layout: l,
        params,
        sql: Conninfo::parse(&sql).ok(),
        application_name: app_name(s),
        slot,
        status_interval: Duration::from_secs(10),
        fence: None,
        start_at: None,
        log_segments: false,
        progress: None,
        segment_done: None,
    };
    let result = rt.block_on(async {
        let stop = async {
            super::context::interrupted().await;
        };
        rw::receive(&cfg, stop).await
    });
    match result {
        Ok(_) => ctx.out.info("SIGINT received. Terminate gracefully."),
        Err(e) => ctx.out.error(format!("{}: {e}", s.name)),
    }
}

/// Barman's `_reset_streaming_status`, except that a `.partial` holding WAL is
/// never deleted: it stays for archive-wal, which files it as a partial file.
fn reset_status(
    ctx: &mut Ctx,
    rt: &tokio::runtime::Runtime,
    s: &ServerConfig,
    l: &ServerLayout,
    params: &ConnParams,
    pre: &Preflight,
) {
    let Some(current_lsn) = pre.current_lsn else {
        return ctx.out.error("Cannot reset receive-wal: PostgreSQL is in recovery and has no current WAL position");
    };
    let app = app_name(s);
    let info = rt.block_on(async {
        let mut c = ReplicationConnection::connect(params, Some(&app)).await?;
        let sys = c.identify_system().await?;
        let size = c.wal_segment_size().await?;
        c.close().await;
        Ok::<_, PgError>((sys, size))
    });
    let (sys, size) = match info {
        Ok(v) => v,
        Err(e) => return ctx.out.error(format!("Cannot reset receive-wal for server {}: {e}", s.name)),
    };
    let current = WalFileName::segment(SegmentId::containing(current_lsn, sys.timeline, size));
    let restart = match pre.slot.as_ref().and_then(|r| r.restart_lsn) {
        Some(lsn) => WalFileName::segment(SegmentId::containing(lsn, sys.timeline, size)),
        None => current.clone(),
    };
    let restart_partial = l.streaming_dir.join(format!("{restart}.partial"));
    let last = match newest_streamed(&l.streaming_dir) {
        Ok(v) => v,
        Err(e) => return ctx.out.error(format!("{}: {e}", l.streaming_dir.display())),
    };
    let Some((last, last_path)) = last else {
        return ctx.out.info("Nothing to do. Position of receive-wal is aligned.");
    };
    if last_path == restart_partial || last.as_str() == restart.as_str() {
        return ctx.out.info("Nothing to do. Position of receive-wal is aligned.");
    }
    let base = last.as_str().trim_end_matches(".partial");
    if base > current.as_str() {
        return ctx.out.error(format!(
            "The receive-wal position is ahead of PostgreSQL current WAL lsn ({} > {current})",
            last.as_str()
        ));
    }
    let keep = match last.is_partial().then(|| holds_wal(&last_path)) {
        Some(Err(e)) => return ctx.out.error(format!("{}: {e}", last_path.display())),
        Some(Ok(k)) => k,
        None => false,
    };
    if keep && restart.as_str() < base {
        // The slot still holds WAL from before this file: streaming resumes from it.
        return ctx.out.info(format!(
            "Nothing to do. {} holds WAL PostgreSQL still has; receive-wal resumes from it.",
            last_path.display()
        ));
    }
    ctx.out.info("Resetting receive-wal directory status");
    if keep {
        ctx.out.info(format!(
            "Keeping {}: it holds WAL the archive may lack; archive-wal will file it as a partial WAL file",
            last_path.display()
        ));
    } else if last.is_partial() {
        ctx.out.info(format!("Removing status file {}", last_path.display()));
        if let Err(e) = crate::catalog::durable::remove(&last_path) {
            return ctx.out.error(format!("{}: {e}", last_path.display()));
        }
    }
    ctx.out.info(format!("Creating status file {}", restart_partial.display()));
    if let Err(e) = crate::catalog::durable::write_file(&restart_partial, b"", 0o600) {
        ctx.out.error(format!("{}: {e}", restart_partial.display()));
    }
}

/// Whether a `.partial` has any byte that is not zero (padding only means empty).
fn holds_wal(path: &std::path::Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(false);
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(true);
        }
    }
}
