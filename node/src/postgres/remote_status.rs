//! What `barman check` and `barman status` learn from the SQL connection, gathered
//! in one call. As Barman's `fetch_remote_status` (and the file archiver's), a
//! failed query leaves its field `None` and the others are still filled.

use super::connection::PgConnection;
use super::conninfo::Conninfo;
use super::error::PgError;
use super::queries::{ArchiverStats, ConfigurationFiles, ReplicationSlot};
use crate::wal::{Lsn, SegmentSize, SystemId, WalFileName};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PostgresStatus {
    /// Why no connection could be made; every other field is then `None`.
    pub connection_error: Option<String>,
    pub server_version_num: Option<u32>,
    /// As Barman's SQL connection reports it: the version word of `SELECT version()`.
    pub server_txt_version: Option<String>,
    pub server_major_version: Option<String>,
    /// At least [`super::connection::MINIMAL_VERSION`].
    pub version_supported: Option<bool>,
    pub is_superuser: Option<bool>,
    pub has_backup_privileges: Option<bool>,
    pub has_monitoring_privileges: Option<bool>,
    /// `pg_is_in_recovery()`.
    pub is_in_recovery: Option<bool>,
    /// Read only when the user has backup privileges, as Barman does.
    pub data_directory: Option<String>,
    pub wal_level: Option<String>,
    pub hot_standby: Option<String>,
    pub max_wal_senders: Option<String>,
    pub data_checksums: Option<String>,
    pub max_replication_slots: Option<String>,
    pub wal_compression: Option<String>,
    /// `wal_keep_size` from version 13, `wal_keep_segments` before.
    pub wal_keep: Option<String>,
    pub archive_mode: Option<String>,
    pub archive_command: Option<String>,
    pub archiver: Option<ArchiverStats>,
    pub current_lsn: Option<Lsn>,
    /// The current WAL file (a primary only).
    pub current_xlog: Option<WalFileName>,
    pub current_size: Option<u64>,
    pub archive_timeout: Option<u64>,
    pub checkpoint_timeout: Option<u64>,
    pub wal_segment_size: Option<SegmentSize>,
    pub configuration_files: Option<ConfigurationFiles>,
    /// The configured physical slot, when one was asked for and exists.
    pub replication_slot: Option<ReplicationSlot>,
    pub synchronous_standby_names: Option<Vec<String>>,
    pub system_identifier: Option<SystemId>,
}

/// A field's value, or `None` with the reason logged at debug level as Barman does.
fn keep<T>(what: &str, r: Result<T, PgError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::debug!("Error retrieving PostgreSQL {what}: {e}");
            None
        }
    }
}

impl PostgresStatus {
    /// Connects (with `application_name` unless the conninfo sets one) and gathers.
    /// `slot_name` is the configured replication slot, if any.
    pub async fn fetch(ci: &Conninfo, application_name: Option<&str>, slot_name: Option<&str>) -> PostgresStatus {
        match PgConnection::connect(ci, application_name).await {
            Ok(conn) => PostgresStatus::gather(&conn, slot_name).await,
            Err(e) => {
                tracing::warn!("Error retrieving PostgreSQL status: {e}");
                PostgresStatus { connection_error: Some(e.to_string()), ..PostgresStatus::default() }
            }
        }
    }

    /// Everything from an open connection, one query per field.
    pub async fn gather(conn: &PgConnection, slot_name: Option<&str>) -> PostgresStatus {
        let version = conn.server_version_num();
        let mut s = PostgresStatus {
            server_version_num: Some(version),
            server_major_version: Some(conn.server_major_version()),
            version_supported: Some(conn.is_minimal_postgres_version()),
            ..PostgresStatus::default()
        };
        s.server_txt_version = keep("version", conn.reported_version().await);
        s.is_superuser = keep("superuser status", conn.is_superuser().await);
        s.has_backup_privileges = keep("backup privileges", conn.has_backup_privileges().await);
        s.has_monitoring_privileges = keep("monitoring privileges", conn.has_monitoring_privileges().await);
        s.is_in_recovery = keep("recovery status", conn.is_in_recovery().await);
        if s.has_backup_privileges == Some(true) {
            s.data_directory = keep("data_directory", conn.data_directory().await);
        }
        let setting = |name: &'static str| async move { keep(name, conn.setting(name).await).flatten() };
        s.wal_level = setting("wal_level").await;
        s.hot_standby = setting("hot_standby").await;
        s.max_wal_senders = setting("max_wal_senders").await;
        s.data_checksums = setting("data_checksums").await;
        s.max_replication_slots = setting("max_replication_slots").await;
        s.wal_compression = setting("wal_compression").await;
        s.wal_keep = if version < 130000 { setting("wal_keep_segments").await } else { setting("wal_keep_size").await };
        s.archive_mode = setting("archive_mode").await;
        s.archive_command = setting("archive_command").await;
        s.archiver = keep("pg_stat_archiver", conn.archiver_stats().await).flatten();
        if let Some(info) = keep("current WAL position", conn.current_xlog_info().await) {
            s.current_lsn = Some(info.location);
            s.current_xlog = info.file_name;
        }
        // Barman reads the size only with backup privileges (pg_tablespace_size needs them).
        if s.has_backup_privileges == Some(true) {
            s.current_size = keep("total size", conn.current_size().await).flatten();
        }
        s.archive_timeout = keep("archive_timeout", conn.archive_timeout().await);
        s.checkpoint_timeout = keep("checkpoint_timeout", conn.checkpoint_timeout().await);
        s.wal_segment_size = keep("wal_segment_size", conn.wal_segment_size().await);
        s.configuration_files = keep("configuration files", conn.configuration_files().await);
        if let Some(name) = slot_name {
            s.replication_slot =
                keep("replication slot", conn.replication_slot(name).await).flatten().filter(|sl| sl.is_physical());
        }
        s.synchronous_standby_names = keep("synchronous_standby_names", conn.synchronous_standby_names().await);
        s.system_identifier = keep("system identifier", conn.system_identifier().await);
        s
    }

    pub fn is_connected(&self) -> bool {
        self.connection_error.is_none() && self.server_version_num.is_some()
    }
}
