//! PostgreSQL access for commands: the remote status of a server, with a timeout.

use super::context::runtime;
use crate::config::ServerConfig;
use crate::postgres::{Conninfo, PgConnection, PgError, PostgresStatus};
use std::time::Duration;

/// Barman's SQL connections call themselves `barman` unless the conninfo names one.
pub const APPLICATION_NAME: &str = "barman";

/// The server's status over `conninfo`; a connection failure is reported in
/// `connection_error`. A zero timeout waits forever.
pub fn status(s: &ServerConfig, timeout: Duration) -> PostgresStatus {
    let failed = |e: String| PostgresStatus { connection_error: Some(e), ..PostgresStatus::default() };
    let Some(raw) = s.opts.conninfo.as_deref() else {
        return failed("no conninfo".into());
    };
    let ci = match Conninfo::parse(raw) {
        Ok(c) => c,
        Err(e) => return failed(e.to_string()),
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let slot = s.opts.slot_name.as_ref().map(|n| n.0.clone());
    rt.block_on(async {
        let fut = PostgresStatus::fetch(&ci, Some(APPLICATION_NAME), slot.as_deref());
        if timeout.is_zero() {
            fut.await
        } else {
            match tokio::time::timeout(timeout, fut).await {
                Ok(st) => st,
                Err(_) => failed(format!("no answer from PostgreSQL within {} seconds", timeout.as_secs())),
            }
        }
    })
}

/// Runs `f` on a fresh connection to `conninfo`.
pub fn with_connection<T>(
    raw_conninfo: &str,
    f: impl AsyncFnOnce(&PgConnection) -> Result<T, PgError>,
) -> Result<T, String> {
    let ci = Conninfo::parse(raw_conninfo).map_err(|e| e.to_string())?;
    let rt = runtime()?;
    rt.block_on(async {
        let c = PgConnection::connect(&ci, Some(APPLICATION_NAME)).await.map_err(|e| e.to_string())?;
        f(&c).await.map_err(|e| e.to_string())
    })
}

/// IDENTIFY_SYSTEM over the server's WAL streaming connection (Barman's
/// "PostgreSQL streaming" check): the answer, or why no session opened.
pub fn streaming_identity(
    s: &ServerConfig,
    timeout: Duration,
) -> Result<crate::postgres::replication::SystemInfo, String> {
    let (streaming, _, _) = super::receive_wal::wal_conninfos(s);
    let raw = streaming.ok_or_else(|| format!("Missing 'streaming_conninfo' parameter for server '{}'", s.name))?;
    let params = super::receive_wal::streaming_params(&raw)?;
    let app = super::receive_wal::app_name(s);
    let rt = runtime()?;
    rt.block_on(async {
        let work = async {
            let mut c = crate::postgres::replication::ReplicationConnection::connect(&params, Some(&app)).await?;
            let info = c.identify_system().await;
            c.close().await;
            info
        };
        let r = if timeout.is_zero() {
            work.await
        } else {
            tokio::time::timeout(timeout, work)
                .await
                .map_err(|_| format!("no answer from PostgreSQL within {} seconds", timeout.as_secs()))?
        };
        r.map_err(|e| e.to_string())
    })
}
