//! `switch-wal`: closes the current WAL segment on PostgreSQL, optionally
//! checkpointing first and waiting for the segment to be archived.

use super::context::{Ctx, Pick};
use super::remote::with_connection;
use super::wal::run_archiver;
use crate::catalog::ServerLayout;
use crate::config::ServerConfig;
use crate::postgres::PgError;
use crate::wal::WalFileName;
use std::time::{Duration, Instant};

enum Switched {
    Closed(WalFileName),
    NotNeeded,
    Standby,
    NoCheckpointRights,
}

pub fn switch_wal(ctx: &mut Ctx, names: &[String], force: bool, archive: bool, timeout: u64) {
    for s in ctx.servers(names, Pick::DEFAULT) {
        switch_one(ctx, &s, force, archive, timeout);
    }
}

/// One server's switch; with `archive`, waits for the file when a switch happened.
pub fn switch_one(ctx: &mut Ctx, s: &ServerConfig, force: bool, archive: bool, timeout: u64) {
    if s.passive {
        ctx.out.error(format!("switch-wal cannot be run on the passive server '{}'", s.name));
        return;
    }
    let Some(ci) = s.opts.conninfo.clone() else {
        ctx.out.error(format!("Unable to perform pg_switch_wal for server '{}'.", s.name));
        return;
    };
    let r = with_connection(&ci, async |c| {
        if force {
            tracing::info!(server = %s.name, "Force a CHECKPOINT before pg_switch_wal()");
            // Barman asks before it tries, so a missing right is told as such.
            if !c.has_checkpoint_privileges().await? {
                return Ok(Switched::NoCheckpointRights);
            }
            c.checkpoint().await?;
        }
        match c.switch_wal().await {
            Ok(Some(w)) => Ok(Switched::Closed(w)),
            Ok(None) => Ok(Switched::NotNeeded),
            Err(PgError::InRecovery { .. }) => Ok(Switched::Standby),
            Err(e) => Err(e),
        }
    });
    let closed = match r {
        Ok(Switched::Closed(w)) => {
            ctx.out.info(format!("The WAL file {w} has been closed on server '{}'", s.name));
            Some(w)
        }
        Ok(Switched::NotNeeded) => {
            ctx.out.info(format!("No switch required for server '{}'", s.name));
            None
        }
        Ok(Switched::Standby) => {
            ctx.out.info(format!("No switch performed because server '{}' is a standby.", s.name));
            None
        }
        Ok(Switched::NoCheckpointRights) => {
            ctx.out.error("Barman switch-wal --force requires superuser rights or the 'pg_checkpoint' role");
            return;
        }
        Err(e) => {
            ctx.out.error(format!("Unable to perform pg_switch_wal for server '{}': {e}", s.name));
            return;
        }
    };
    if archive {
        wait_for_wal(ctx, s, closed.as_ref(), timeout);
    }
}

/// The newest archived segment per timeline, from the archive directories.
fn latest_per_timeline(l: &ServerLayout) -> Vec<String> {
    let mut latest: std::collections::BTreeMap<u32, String> = std::collections::BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(&l.wals_dir) else { return Vec::new() };
    for d in rd.flatten().filter(|d| d.path().is_dir()) {
        let Ok(files) = std::fs::read_dir(d.path()) else { continue };
        for f in files.flatten() {
            if let Ok(w) = f.file_name().to_string_lossy().parse::<WalFileName>()
                && w.is_segment()
            {
                let e = latest.entry(w.timeline().0).or_default();
                if w.as_str().to_ascii_uppercase() > e.to_ascii_uppercase() {
                    *e = w.to_string();
                }
            }
        }
    }
    latest.into_values().collect()
}

/// Runs archive-wal until the closed file (or any new file) is archived.
pub fn wait_for_wal(ctx: &mut Ctx, s: &ServerConfig, wal: Option<&WalFileName>, timeout: u64) {
    let l = ServerLayout::new(&ctx.cfg.global, s);
    let max = if timeout > 0 { format!(" (max: {timeout} seconds)") } else { String::new() };
    let initial = latest_per_timeline(&l);
    match wal {
        Some(w) => ctx.out.info(format!("Waiting for the WAL file {w} from server '{}'{max}", s.name)),
        None => ctx.out.info(format!("Waiting for a WAL file from server '{}' to be archived{max}", s.name)),
    }
    let end = (timeout > 0).then(|| Instant::now() + Duration::from_secs(timeout));
    loop {
        run_archiver(ctx, s, false);
        let done = match wal {
            Some(w) => l.wal_path(w).exists(),
            None => latest_per_timeline(&l) != initial,
        };
        if done {
            return;
        }
        if end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match wal {
        Some(w) => ctx.out.error(format!("The WAL file {w} has not been received in {timeout} seconds")),
        None => ctx.out.info(format!("A WAL file has not been received in {timeout} seconds")),
    }
}
