//! How receive-wal reports to PostgreSQL: synchronously (every write fsynced and reported at
//! once, so commits waiting for us are released at once) while `synchronous_standby_names`
//! names us, else at its status interval. Barman decides this once, at start (pg_receivewal's
//! `--synchronous`); a receiver runs for days and the setting is usually made after it
//! started, so we follow the setting on the SQL connection while streaming.
//!
//! The mode in force is also written beside the receive-wal lock, for `replication-status`.

use crate::catalog::ServerLayout;
use crate::catalog::durable;
use crate::catalog::lock::{LockKind, holder};
use crate::postgres::{Conninfo, PgConnection};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

/// How often the setting is read: a change takes effect within this (plus one query).
const POLL: Duration = Duration::from_millis(500);
/// The SQL session's application name (never the streaming one: a node ends every
/// walsender of that name before it streams).
const APPLICATION_NAME: &str = "barman_receive_wal_mode";

/// Whether `synchronous_standby_names` makes `app` a (candidate) synchronous standby.
pub fn is_synchronous_standby(setting: &str, app: &str) -> bool {
    crate::postgres::parse_synchronous_standby_names(setting).iter().any(|n| n == "*" || n.eq_ignore_ascii_case(app))
}

/// The reporting mode, followed in the background; the task ends when this is dropped.
pub struct ModeWatch {
    rx: watch::Receiver<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for ModeWatch {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl ModeWatch {
    /// Starts following the setting over `sql` (from `initial`, read at start). Without an
    /// SQL connection the mode stays `initial`.
    pub fn follow(sql: Option<Conninfo>, server: String, app: String, initial: bool) -> ModeWatch {
        let (tx, rx) = watch::channel(initial);
        let task = sql.map(|ci| tokio::spawn(poll(ci, server, app, tx)));
        ModeWatch { rx, task }
    }

    pub fn synchronous(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves with the new mode when it changes; never when it cannot (cancel-safe).
    pub async fn changed(&mut self) -> bool {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        *self.rx.borrow_and_update()
    }
}

/// Reads the setting every [`POLL`], reconnecting after a failure (the last known mode
/// stays meanwhile: the stream itself does not depend on this connection).
async fn poll(ci: Conninfo, server: String, app: String, tx: watch::Sender<bool>) {
    let mut conn: Option<PgConnection> = None;
    let mut failing = false;
    loop {
        let read = async {
            if conn.is_none() {
                conn = Some(PgConnection::connect(&ci, Some(APPLICATION_NAME)).await?);
            }
            match &conn {
                Some(c) => c.setting("synchronous_standby_names").await,
                None => Ok(None),
            }
        };
        match read.await {
            Ok(setting) => {
                if failing {
                    tracing::info!(server = %server, "reading synchronous_standby_names again");
                    failing = false;
                }
                let sync = is_synchronous_standby(setting.as_deref().unwrap_or(""), &app);
                tx.send_if_modified(|m| std::mem::replace(m, sync) != sync);
            }
            Err(e) => {
                conn = None;
                if !failing {
                    tracing::warn!(server = %server, "cannot read synchronous_standby_names (the reporting mode stays {}): {e}", mode_name(*tx.borrow()));
                    failing = true;
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

pub fn mode_name(synchronous: bool) -> &'static str {
    if synchronous { "synchronous" } else { "asynchronous" }
}

/// What `replication-status` shows of the receiver: its mode, for its walsender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeState {
    /// The receiving process (the receive-wal lock's holder).
    pub pid: u32,
    /// Its walsender on PostgreSQL (`pg_stat_replication.pid`).
    pub walsender_pid: Option<i32>,
    pub synchronous: bool,
}

fn state_path(layout: &ServerLayout) -> PathBuf {
    layout.lock_dir.join(format!(".{}-receive-wal.mode", layout.server))
}

pub fn write_state(layout: &ServerLayout, state: &ModeState) {
    let path = state_path(layout);
    let written = serde_json::to_vec(state)
        .map_err(std::io::Error::other)
        .and_then(|bytes| durable::write_file(&path, &bytes, 0o600));
    if let Err(e) = written {
        tracing::warn!(server = %layout.server, "{}: {e}", path.display());
    }
}

pub fn remove_state(layout: &ServerLayout) {
    let _ = std::fs::remove_file(state_path(layout));
}

/// The mode of the receiver streaming this server now, if one does and said so.
pub fn read_state(layout: &ServerLayout) -> Option<ModeState> {
    let mut text = String::new();
    std::fs::File::open(state_path(layout)).ok()?.take(4096).read_to_string(&mut text).ok()?;
    let state: ModeState = serde_json::from_str(&text).ok()?;
    let lock = layout.lock_dir.join(LockKind::ReceiveWal.file_name(&layout.server));
    (holder(&lock) == Some(state.pid)).then_some(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synchronous_names() {
        assert!(is_synchronous_standby("barman_receive_wal", "barman_receive_wal"));
        assert!(is_synchronous_standby("FIRST 1 (s1, barman_receive_wal)", "barman_receive_wal"));
        assert!(is_synchronous_standby("ANY 1 (s1, \"barman_receive_wal\")", "barman_receive_wal"));
        assert!(is_synchronous_standby("*", "barman_receive_wal"));
        assert!(!is_synchronous_standby("", "barman_receive_wal"));
        assert!(!is_synchronous_standby("barman_receive_wal2", "barman_receive_wal"));
    }

    #[test]
    fn state_is_shown_only_while_its_writer_holds_the_lock() {
        let d = tempfile::tempdir().unwrap();
        let layout = ServerLayout::under("pg", &d.path().join("pg"), d.path());
        let state = ModeState { pid: std::process::id(), walsender_pid: Some(42), synchronous: true };
        write_state(&layout, &state);
        assert_eq!(read_state(&layout), None, "no receiver holds the lock");
        let lock =
            crate::catalog::lock::Lock::acquire(&layout.lock_dir.join(LockKind::ReceiveWal.file_name("pg")), false)
                .unwrap();
        assert_eq!(read_state(&layout), Some(state));
        drop(lock);
        assert_eq!(read_state(&layout), None);
        remove_state(&layout);
        assert!(!state_path(&layout).exists());
    }
}
