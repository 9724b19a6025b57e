//! The typed questions Barman asks a PostgreSQL server (its `PostgreSQLConnection`
//! in postgres.py), one query each where one suffices: identity, WAL position and
//! switch, archiver statistics, privileges, slots, settings.

use super::connection::PgConnection;
use super::error::PgError;
use crate::wal::{Lsn, SegmentSize, SystemId, WalFileName};
use chrono::{DateTime, FixedOffset};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// Barman's `current_xlog_info`: where the server is writing (a primary) or
/// replaying (a standby). File name and offset are known on a primary only.
#[derive(Debug, Clone, PartialEq)]
pub struct XlogInfo {
    pub location: Lsn,
    /// On a segment boundary this is the segment just finished, on every
    /// PostgreSQL version (Barman undoes the change PostgreSQL 17 made).
    pub file_name: Option<WalFileName>,
    pub file_offset: Option<u32>,
    pub timestamp: DateTime<FixedOffset>,
}

/// What `pg_backup_stop` gave back.
#[derive(Debug, Clone)]
pub struct BackupStop {
    pub lsn: Lsn,
    pub timeline: crate::wal::TimelineId,
    pub label: String,
    pub tablespace_map: Option<String>,
    pub timestamp: DateTime<FixedOffset>,
}

/// One row of `pg_stat_archiver`, with the two values Barman derives from it.
/// Times carry the offset of the session's TimeZone, as psycopg2 gives them.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchiverStats {
    pub archived_count: i64,
    pub last_archived_wal: Option<WalFileName>,
    pub last_archived_time: Option<DateTime<FixedOffset>>,
    pub failed_count: i64,
    pub last_failed_wal: Option<WalFileName>,
    pub last_failed_time: Option<DateTime<FixedOffset>>,
    pub stats_reset: Option<DateTime<FixedOffset>>,
    /// Barman's expression; SQL NULL (possible when a failure is recorded but no
    /// success ever was) is reported as false, which is how Barman treats it.
    pub is_archiving: bool,
    pub current_archived_wals_per_second: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotType {
    Physical,
    Logical,
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationSlot {
    pub name: String,
    pub slot_type: SlotType,
    pub active: bool,
    /// Null until the slot is first used, when created without RESERVE_WAL.
    pub restart_lsn: Option<Lsn>,
}

impl ReplicationSlot {
    pub fn is_physical(&self) -> bool {
        self.slot_type == SlotType::Physical
    }
}

/// The configuration files PostgreSQL reads (Barman's `get_configuration_files`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigurationFiles {
    pub config_file: Option<String>,
    pub hba_file: Option<String>,
    pub ident_file: Option<String>,
    pub included_files: Vec<String>,
}

/// Function names of the server's version (Barman's `function_name_map`).
struct Names {
    switch_wal: &'static str,
    walfile_name: &'static str,
    walfile_name_offset: &'static str,
    last_wal_replay_lsn: &'static str,
    last_wal_receive_lsn: &'static str,
    current_wal_lsn: &'static str,
    current_wal_insert_lsn: &'static str,
    backup_start: &'static str,
    backup_stop: &'static str,
}

fn names(version: u32) -> Names {
    let pre10 = version < 100000;
    let pre15 = version < 150000;
    Names {
        switch_wal: if pre10 { "pg_switch_xlog" } else { "pg_switch_wal" },
        walfile_name: if pre10 { "pg_xlogfile_name" } else { "pg_walfile_name" },
        walfile_name_offset: if pre10 { "pg_xlogfile_name_offset" } else { "pg_walfile_name_offset" },
        last_wal_replay_lsn: if pre10 { "pg_last_xlog_replay_location" } else { "pg_last_wal_replay_lsn" },
        last_wal_receive_lsn: if pre10 { "pg_last_xlog_receive_location" } else { "pg_last_wal_receive_lsn" },
        current_wal_lsn: if pre10 { "pg_current_xlog_location" } else { "pg_current_wal_lsn" },
        current_wal_insert_lsn: if pre10 { "pg_current_xlog_insert_location" } else { "pg_current_wal_insert_lsn" },
        backup_start: if pre15 { "pg_start_backup" } else { "pg_backup_start" },
        backup_stop: if pre15 { "pg_stop_backup" } else { "pg_backup_stop" },
    }
}

/// Barman's parse of `synchronous_standby_names`: the names inside the first
/// `(`...last `)` if any, otherwise the whole list; blanks and double quotes
/// stripped. Barman keeps an empty name for an empty setting; we drop it.
pub fn parse_synchronous_standby_names(setting: &str) -> Vec<String> {
    let start = setting.find('(').map_or(0, |i| i + 1);
    let end = setting.rfind(')').unwrap_or(setting.len());
    let list = setting.get(start..end).unwrap_or("");
    list.split(',').map(|x| x.trim().trim_matches('"').to_string()).filter(|x| !x.is_empty()).collect()
}

/// SQL reading a timestamptz as microseconds since the epoch and its UTC offset
/// in the session's TimeZone: no dependency on DateStyle or on chrono support in
/// tokio-postgres.
fn ts_sql(expr: &str) -> String {
    format!("(EXTRACT(EPOCH FROM {expr}) * 1000000)::int8, EXTRACT(TIMEZONE FROM {expr})::int4")
}

fn ts_from(
    what: &'static str,
    micros: Option<i64>,
    offset: Option<i32>,
) -> Result<Option<DateTime<FixedOffset>>, PgError> {
    let (Some(us), Some(off)) = (micros, offset) else { return Ok(None) };
    let tz = FixedOffset::east_opt(off).ok_or_else(|| PgError::bad_value(what, format!("UTC offset {off}")))?;
    let t = DateTime::from_timestamp_micros(us).ok_or_else(|| PgError::bad_value(what, format!("{us} µs")))?;
    Ok(Some(t.with_timezone(&tz)))
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, idx: usize, what: &'static str) -> Result<T, PgError> {
    row.try_get(idx).map_err(|e| PgError::query(what, &e))
}

fn parse_lsn(what: &'static str, s: &str) -> Result<Lsn, PgError> {
    s.parse().map_err(|_| PgError::bad_value(what, s))
}

fn parse_wal(what: &'static str, s: &str) -> Result<WalFileName, PgError> {
    s.parse().map_err(|_| PgError::bad_value(what, s))
}

fn opt_wal(what: &'static str, s: Option<String>) -> Result<Option<WalFileName>, PgError> {
    s.map(|s| parse_wal(what, &s)).transpose()
}

/// The segment before `name` (Barman's `xlog.previous_segment_name`).
fn previous_segment(name: &WalFileName, size: SegmentSize) -> WalFileName {
    match name.segment_id() {
        Some(id) => WalFileName::segment(id.prev(size)),
        None => name.clone(),
    }
}

const SQLSTATE_INSUFFICIENT_PRIVILEGE: &str = "42501";
/// `object_not_in_prerequisite_state`: what WAL-position functions raise in recovery.
const SQLSTATE_NOT_IN_PREREQUISITE_STATE: &str = "55000";

impl PgConnection {
    async fn one(&self, what: &'static str, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<Row, PgError> {
        self.client().query_one(sql, args).await.map_err(|e| PgError::query(what, &e))
    }

    async fn opt(&self, what: &'static str, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, PgError> {
        self.client().query_opt(sql, args).await.map_err(|e| PgError::query(what, &e))
    }

    /// The version word of `SELECT version()`, which Barman's SQL connection
    /// reports as `server_txt_version` ("15.18", "17beta2"; EPAS's extra field
    /// dropped).
    pub async fn reported_version(&self) -> Result<String, PgError> {
        let row = self.one("version()", "SELECT version()", &[]).await?;
        let text: String = get(&row, 0, "version()")?;
        let mut words = text.split_whitespace();
        let (Some(platform), Some(version)) = (words.next(), words.next()) else {
            return Err(PgError::bad_value("version()", text));
        };
        if platform == "EnterpriseDB" {
            let parts: Vec<&str> = version.split('.').collect();
            return Ok(parts[..parts.len().saturating_sub(1)].join("."));
        }
        Ok(version.to_string())
    }

    pub async fn system_identifier(&self) -> Result<SystemId, PgError> {
        const WHAT: &str = "pg_control_system()";
        let row = self.one(WHAT, "SELECT system_identifier::text FROM pg_control_system()", &[]).await?;
        let text: String = get(&row, 0, WHAT)?;
        // The column is int8: an identifier with the top bit set shows negative.
        let id = text
            .parse::<u64>()
            .or_else(|_| text.parse::<i64>().map(|v| v as u64))
            .map_err(|_| PgError::bad_value(WHAT, &text))?;
        Ok(SystemId(id))
    }

    pub async fn is_in_recovery(&self) -> Result<bool, PgError> {
        let row = self.one("pg_is_in_recovery()", "SELECT pg_is_in_recovery()", &[]).await?;
        get(&row, 0, "pg_is_in_recovery()")
    }

    /// A setting as `SHOW` prints it (Barman's `get_setting`); `None` if unknown.
    /// Settings restricted to privileged roles fail rather than return `None`.
    pub async fn setting(&self, name: &str) -> Result<Option<String>, PgError> {
        let row = self.one("current_setting()", "SELECT current_setting($1, true)", &[&name]).await?;
        get(&row, 0, "current_setting()")
    }

    /// A setting in `pg_settings` units, unformatted (16777216 rather than "16MB").
    pub async fn raw_setting(&self, name: &str) -> Result<Option<String>, PgError> {
        let row = self.opt("pg_settings", "SELECT setting FROM pg_settings WHERE name = $1", &[&name]).await?;
        row.map(|r| get(&r, 0, "pg_settings")).transpose()
    }

    async fn raw_setting_u64(&self, name: &str, what: &'static str) -> Result<u64, PgError> {
        let v = self.raw_setting(name).await?.ok_or_else(|| PgError::bad_value(what, "missing"))?;
        v.parse().map_err(|_| PgError::bad_value(what, v))
    }

    pub async fn wal_segment_size(&self) -> Result<SegmentSize, PgError> {
        const WHAT: &str = "wal_segment_size";
        let mut bytes = self.raw_setting_u64("wal_segment_size", WHAT).await?;
        // Before version 11 the setting counts WAL blocks.
        if self.server_version_num() < 110000 {
            bytes = bytes.saturating_mul(self.raw_setting_u64("wal_block_size", WHAT).await?);
        }
        SegmentSize::new(bytes).map_err(|e| PgError::bad_value(WHAT, e))
    }

    /// `archive_timeout` in seconds.
    pub async fn archive_timeout(&self) -> Result<u64, PgError> {
        self.raw_setting_u64("archive_timeout", "archive_timeout").await
    }

    /// `checkpoint_timeout` in seconds.
    pub async fn checkpoint_timeout(&self) -> Result<u64, PgError> {
        self.raw_setting_u64("checkpoint_timeout", "checkpoint_timeout").await
    }

    /// Barman's `current_xlog_info`, in one query: the write position of a
    /// primary with its file name and offset, or the replay position of a standby.
    pub async fn current_xlog_info(&self) -> Result<XlogInfo, PgError> {
        const WHAT: &str = "current WAL position";
        let n = names(self.server_version_num());
        let sql = format!(
            "SELECT r.loc::text, \
               CASE WHEN NOT r.rec THEN ({offset}(r.loc)).file_name END, \
               CASE WHEN NOT r.rec THEN ({offset}(r.loc)).file_offset END, \
               {ts} \
             FROM (SELECT pg_is_in_recovery() AS rec, \
                     CASE WHEN pg_is_in_recovery() THEN {replay}() ELSE {current}() END AS loc) AS r",
            offset = n.walfile_name_offset,
            replay = n.last_wal_replay_lsn,
            current = n.current_wal_lsn,
            ts = ts_sql("CURRENT_TIMESTAMP"),
        );
        let row = self.one(WHAT, &sql, &[]).await?;
        let location: Option<String> = get(&row, 0, WHAT)?;
        let location = location.ok_or_else(|| PgError::bad_value(WHAT, "no position (NULL)"))?;
        let location = parse_lsn(WHAT, &location)?;
        let mut file_name = opt_wal(WHAT, get(&row, 1, WHAT)?)?;
        let file_offset: Option<i32> = get(&row, 2, WHAT)?;
        let file_offset = file_offset.map(|o| u32::try_from(o).map_err(|_| PgError::bad_value(WHAT, o))).transpose()?;
        let timestamp = ts_from(WHAT, get(&row, 3, WHAT)?, get(&row, 4, WHAT)?)?
            .ok_or_else(|| PgError::bad_value(WHAT, "no timestamp"))?;
        if self.server_version_num() >= 170000
            && file_offset == Some(0)
            && let Some(name) = &file_name
        {
            // PostgreSQL 17 names the new segment on a boundary; Barman keeps the old meaning.
            file_name = Some(previous_segment(name, self.wal_segment_size().await?));
        }
        Ok(XlogInfo { location, file_name, file_offset, timestamp })
    }

    /// The current WAL position: written on a primary, replayed on a standby.
    pub async fn current_lsn(&self) -> Result<Lsn, PgError> {
        Ok(self.current_xlog_info().await?.location)
    }

    /// The WAL file holding the current write position and the offset in it (a
    /// primary only). At offset 0 the file is the one just finished, as Barman reports it.
    pub async fn current_wal_file(&self) -> Result<(WalFileName, u32), PgError> {
        const WHAT: &str = "pg_walfile_name_offset()";
        let n = names(self.server_version_num());
        let sql = format!("SELECT file_name, file_offset FROM {}({}())", n.walfile_name_offset, n.current_wal_lsn);
        let row = self.one(WHAT, &sql, &[]).await.map_err(|e| in_recovery_as("current_wal_file", e))?;
        let name: String = get(&row, 0, WHAT)?;
        let offset: i32 = get(&row, 1, WHAT)?;
        let offset = u32::try_from(offset).map_err(|_| PgError::bad_value(WHAT, offset))?;
        let mut name = parse_wal(WHAT, &name)?;
        if self.server_version_num() >= 170000 && offset == 0 {
            name = previous_segment(&name, self.wal_segment_size().await?);
        }
        Ok((name, offset))
    }

    /// Barman's `switch_wal`: closes the current WAL segment and returns its name,
    /// or `None` when PostgreSQL had nothing to switch (no WAL written since the
    /// last switch, so the insert position did not move to a later file).
    pub async fn switch_wal(&self) -> Result<Option<WalFileName>, PgError> {
        const WHAT: &str = "pg_switch_wal()";
        if !self.has_backup_privileges().await? {
            return Err(PgError::MissingPrivileges { user: self.user().to_string(), operation: WHAT });
        }
        if self.is_in_recovery().await? {
            return Err(PgError::InRecovery { operation: WHAT });
        }
        let n = names(self.server_version_num());
        let pre_sql =
            format!("SELECT file_name, file_offset FROM {}({}())", n.walfile_name_offset, n.current_wal_insert_lsn);
        let row = self.one(WHAT, &pre_sql, &[]).await?;
        let pre = parse_wal(WHAT, &get::<String>(&row, 0, WHAT)?)?;
        let pre_offset: i32 = get(&row, 1, WHAT)?;
        self.one(WHAT, &format!("SELECT {}({}())", n.walfile_name, n.switch_wal), &[]).await?;
        let row = self.one(WHAT, &format!("SELECT {}({}())", n.walfile_name, n.current_wal_insert_lsn), &[]).await?;
        let post = parse_wal(WHAT, &get::<String>(&row, 0, WHAT)?)?;
        if pre >= post {
            return Ok(None);
        }
        if self.server_version_num() >= 170000 && pre_offset == 0 {
            return Ok(Some(previous_segment(&pre, self.wal_segment_size().await?)));
        }
        Ok(Some(pre))
    }

    /// `CHECKPOINT`. Needs superuser, or `pg_checkpoint` from version 15 on.
    pub async fn checkpoint(&self) -> Result<(), PgError> {
        match self.client().execute("CHECKPOINT", &[]).await {
            Ok(_) => Ok(()),
            Err(e) if e.code().is_some_and(|c| c.code() == SQLSTATE_INSUFFICIENT_PRIVILEGE) => {
                Err(PgError::MissingPrivileges { user: self.user().to_string(), operation: "CHECKPOINT" })
            }
            Err(e) => Err(PgError::query("CHECKPOINT", &e)),
        }
    }

    /// Barman's `get_archiver_stats` query: `pg_stat_archiver` plus `is_archiving`
    /// and `current_archived_wals_per_second`, computed by the server exactly as
    /// Barman asks it to (the rate divides by the age since `stats_reset`).
    pub async fn archiver_stats(&self) -> Result<Option<ArchiverStats>, PgError> {
        const WHAT: &str = "pg_stat_archiver";
        let sql = format!(
            "SELECT archived_count, last_archived_wal, {lat}, failed_count, last_failed_wal, {lft}, {sr}, \
               current_setting('archive_mode') IN ('on', 'always') \
               AND (last_failed_wal IS NULL \
               OR last_failed_wal LIKE '%.history' \
               AND substring(last_failed_wal from 1 for 8) \
               <= substring(last_archived_wal from 1 for 8) \
               OR last_failed_time <= last_archived_time) \
               AS is_archiving, \
               (CAST (archived_count AS NUMERIC) \
               / EXTRACT (EPOCH FROM age(now(), stats_reset)))::float8 \
               AS current_archived_wals_per_second \
             FROM pg_stat_archiver",
            lat = ts_sql("last_archived_time"),
            lft = ts_sql("last_failed_time"),
            sr = ts_sql("stats_reset"),
        );
        let Some(row) = self.opt(WHAT, &sql, &[]).await? else { return Ok(None) };
        Ok(Some(ArchiverStats {
            archived_count: get(&row, 0, WHAT)?,
            last_archived_wal: opt_wal(WHAT, get(&row, 1, WHAT)?)?,
            last_archived_time: ts_from(WHAT, get(&row, 2, WHAT)?, get(&row, 3, WHAT)?)?,
            failed_count: get(&row, 4, WHAT)?,
            last_failed_wal: opt_wal(WHAT, get(&row, 5, WHAT)?)?,
            last_failed_time: ts_from(WHAT, get(&row, 6, WHAT)?, get(&row, 7, WHAT)?)?,
            stats_reset: ts_from(WHAT, get(&row, 8, WHAT)?, get(&row, 9, WHAT)?)?,
            is_archiving: get::<Option<bool>>(&row, 10, WHAT)?.unwrap_or(false),
            current_archived_wals_per_second: get(&row, 11, WHAT)?,
        }))
    }

    pub async fn is_superuser(&self) -> Result<bool, PgError> {
        const WHAT: &str = "pg_user.usesuper";
        let row = self.opt(WHAT, "SELECT usesuper FROM pg_user WHERE usename = CURRENT_USER", &[]).await?;
        let row = row.ok_or_else(|| PgError::bad_value(WHAT, "no pg_user row for the current user"))?;
        get(&row, 0, WHAT)
    }

    /// Barman's `has_backup_privileges`: superuser, or (from version 10) a user
    /// with monitoring roles and EXECUTE on the backup, switch and restore-point
    /// functions.
    pub async fn has_backup_privileges(&self) -> Result<bool, PgError> {
        const WHAT: &str = "backup privileges";
        if self.server_version_num() < 100000 {
            return self.is_superuser().await;
        }
        let row = self.opt(WHAT, &backup_privileges_sql(self.server_version_num()), &[]).await?;
        let row = row.ok_or_else(|| PgError::bad_value(WHAT, "no pg_user row for the current user"))?;
        Ok(get::<Option<bool>>(&row, 0, WHAT)?.unwrap_or(false))
    }

    /// Barman's `has_monitoring_privileges`: superuser, `pg_monitor`, or both
    /// `pg_read_all_settings` and `pg_read_all_stats`.
    pub async fn has_monitoring_privileges(&self) -> Result<bool, PgError> {
        const WHAT: &str = "monitoring privileges";
        if self.is_superuser().await? {
            return Ok(true);
        }
        let sql = "SELECT pg_has_role(CURRENT_USER, 'pg_monitor', 'USAGE') \
                   OR (pg_has_role(CURRENT_USER, 'pg_read_all_settings', 'USAGE') \
                       AND pg_has_role(CURRENT_USER, 'pg_read_all_stats', 'USAGE'))";
        let row = self.one(WHAT, sql, &[]).await?;
        get(&row, 0, WHAT)
    }

    /// Barman's `has_checkpoint_privileges`: superuser, or `pg_checkpoint` from 15
    /// (Barman asks from 14 on, where the role does not exist and its query fails).
    pub async fn has_checkpoint_privileges(&self) -> Result<bool, PgError> {
        if self.is_superuser().await? {
            return Ok(true);
        }
        if self.server_version_num() < 150000 {
            return Ok(false);
        }
        const WHAT: &str = "pg_checkpoint role";
        let row = self.one(WHAT, "SELECT pg_has_role(CURRENT_USER, 'pg_checkpoint', 'USAGE')", &[]).await?;
        get(&row, 0, WHAT)
    }

    /// `data_directory` (needs superuser or `pg_read_all_settings`).
    pub async fn data_directory(&self) -> Result<String, PgError> {
        self.setting("data_directory").await?.ok_or_else(|| PgError::bad_value("data_directory", "missing"))
    }

    /// The slot of that name, of any type. Barman looks for physical slots only:
    /// callers mirroring it treat a non-physical slot as absent.
    pub async fn replication_slot(&self, name: &str) -> Result<Option<ReplicationSlot>, PgError> {
        const WHAT: &str = "pg_replication_slots";
        let sql = "SELECT slot_name::text, slot_type, active, restart_lsn::text \
                   FROM pg_replication_slots WHERE slot_name = $1";
        let Some(row) = self.opt(WHAT, sql, &[&name]).await? else { return Ok(None) };
        let slot_type: String = get(&row, 1, WHAT)?;
        let restart: Option<String> = get(&row, 3, WHAT)?;
        Ok(Some(ReplicationSlot {
            name: get(&row, 0, WHAT)?,
            slot_type: match slot_type.as_str() {
                "physical" => SlotType::Physical,
                "logical" => SlotType::Logical,
                _ => SlotType::Other(slot_type),
            },
            active: get(&row, 2, WHAT)?,
            restart_lsn: restart.map(|s| parse_lsn(WHAT, &s)).transpose()?,
        }))
    }

    /// Walsenders serving `application_name` or holding `slot`: the receivers a cluster
    /// node must end before it streams (an old owner's, paused or cut off, lives on until
    /// `wal_sender_timeout`; the epoch, not PostgreSQL, decides who streams).
    pub async fn receiver_pids(&self, application_name: &str, slot: Option<&str>) -> Result<Vec<i32>, PgError> {
        const WHAT: &str = "pg_stat_replication";
        let sql = "SELECT pid FROM pg_stat_replication WHERE application_name = $1 \
                   UNION SELECT active_pid FROM pg_replication_slots \
                   WHERE slot_name = $2 AND active_pid IS NOT NULL";
        let rows = self
            .client()
            .query(sql, &[&application_name, &slot.unwrap_or("")])
            .await
            .map_err(|e| PgError::query(WHAT, &e))?;
        rows.iter().map(|r| get(r, 0, WHAT)).collect()
    }

    /// `pg_terminate_backend(pid)`: true when the signal was sent.
    pub async fn terminate_backend(&self, pid: i32) -> Result<bool, PgError> {
        const WHAT: &str = "pg_terminate_backend()";
        let row = self.one(WHAT, "SELECT pg_terminate_backend($1)", &[&pid]).await?;
        get(&row, 0, WHAT)
    }

    /// `pg_create_restore_point(name)`; `None` on a standby, where Barman skips it.
    pub async fn create_restore_point(&self, name: &str) -> Result<Option<Lsn>, PgError> {
        const WHAT: &str = "pg_create_restore_point()";
        // One statement, so a promotion between a recovery test and the call cannot matter.
        let sql = "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_create_restore_point($1)::text END";
        let row = self.one(WHAT, sql, &[&name]).await?;
        let lsn: Option<String> = get(&row, 0, WHAT)?;
        let lsn = lsn.map(|s| parse_lsn(WHAT, &s)).transpose()?;
        if lsn.is_some() {
            tracing::info!("Restore point '{name}' successfully created");
        }
        Ok(lsn)
    }

    /// The standby names of `synchronous_standby_names`, parsed as Barman does.
    pub async fn synchronous_standby_names(&self) -> Result<Vec<String>, PgError> {
        let s = self.setting("synchronous_standby_names").await?;
        Ok(s.as_deref().map(parse_synchronous_standby_names).unwrap_or_default())
    }

    /// Starts a concurrent (non-exclusive) backup on this session, which must stay open
    /// until [`PgConnection::backup_stop`]; the start position.
    pub async fn backup_start(&self, label: &str, fast: bool) -> Result<Lsn, PgError> {
        const WHAT: &str = "pg_backup_start()";
        let n = names(self.server_version_num());
        let sql = if self.server_version_num() >= 150000 {
            format!("SELECT {}($1, $2)::text", n.backup_start)
        } else {
            format!("SELECT {}($1, $2, false)::text", n.backup_start)
        };
        let row = self.one(WHAT, &sql, &[&label, &fast]).await?;
        let lsn: String = get(&row, 0, WHAT)?;
        parse_lsn(WHAT, &lsn)
    }

    /// Ends the session's concurrent backup without waiting for its WAL to be archived (as
    /// Barman): the end position and timeline, the backup label, the tablespace map.
    pub async fn backup_stop(&self) -> Result<BackupStop, PgError> {
        const WHAT: &str = "pg_backup_stop()";
        let n = names(self.server_version_num());
        let call = if self.server_version_num() >= 150000 {
            format!("{}(wait_for_archive => false)", n.backup_stop)
        } else {
            format!("{}(false, false)", n.backup_stop)
        };
        let sql = format!(
            "SELECT end_row.lsn::text, \
               (SELECT CASE WHEN pg_is_in_recovery() THEN min_recovery_end_timeline ELSE timeline_id END \
                  FROM pg_control_checkpoint(), pg_control_recovery())::int8, \
               end_row.labelfile, end_row.spcmapfile, {ts} \
             FROM {call} AS end_row",
            ts = ts_sql("CURRENT_TIMESTAMP"),
        );
        let row = self.one(WHAT, &sql, &[]).await?;
        let lsn: String = get(&row, 0, WHAT)?;
        let tli: i64 = get(&row, 1, WHAT)?;
        Ok(BackupStop {
            lsn: parse_lsn(WHAT, &lsn)?,
            timeline: u32::try_from(tli).map(crate::wal::TimelineId).map_err(|_| PgError::bad_value(WHAT, tli))?,
            label: get::<Option<String>>(&row, 2, WHAT)?.unwrap_or_default(),
            tablespace_map: get::<Option<String>>(&row, 3, WHAT)?.filter(|m| !m.is_empty()),
            timestamp: ts_from(WHAT, get(&row, 4, WHAT)?, get(&row, 5, WHAT)?)?
                .ok_or_else(|| PgError::bad_value(WHAT, "no timestamp"))?,
        })
    }

    /// The timeline of the last checkpoint (or restartpoint, on a standby).
    pub async fn checkpoint_timeline(&self) -> Result<crate::wal::TimelineId, PgError> {
        const WHAT: &str = "pg_control_checkpoint()";
        let row = self.one(WHAT, "SELECT timeline_id::int8 FROM pg_control_checkpoint()", &[]).await?;
        let t: i64 = get(&row, 0, WHAT)?;
        u32::try_from(t).map(crate::wal::TimelineId).map_err(|_| PgError::bad_value(WHAT, t))
    }

    /// Barman's `get_tablespaces`: `(name, oid, location)` of every tablespace
    /// outside the data directory.
    pub async fn tablespaces(&self) -> Result<Vec<(String, u32, String)>, PgError> {
        const WHAT: &str = "pg_tablespace";
        let rows = self
            .client()
            .query(
                "SELECT spcname::text, oid::int8, pg_tablespace_location(oid) FROM pg_tablespace \
                 WHERE pg_tablespace_location(oid) != '' ORDER BY oid",
                &[],
            )
            .await
            .map_err(|e| PgError::query(WHAT, &e))?;
        rows.iter()
            .map(|r| {
                let oid: i64 = get(r, 1, WHAT)?;
                let oid = u32::try_from(oid).map_err(|_| PgError::bad_value(WHAT, oid))?;
                Ok((get(r, 0, WHAT)?, oid, get(r, 2, WHAT)?))
            })
            .collect()
    }

    /// Total size of all tablespaces in bytes (Barman's `current_size`).
    pub async fn current_size(&self) -> Result<Option<u64>, PgError> {
        const WHAT: &str = "pg_tablespace_size()";
        let row = self.one(WHAT, "SELECT sum(pg_tablespace_size(oid))::int8 FROM pg_tablespace", &[]).await?;
        let v: Option<i64> = get(&row, 0, WHAT)?;
        Ok(v.map(|v| v.max(0).unsigned_abs()))
    }

    /// Barman's `get_configuration_files`.
    pub async fn configuration_files(&self) -> Result<ConfigurationFiles, PgError> {
        const WHAT: &str = "pg_settings (configuration files)";
        let rows = self
            .client()
            .query("SELECT name, setting FROM pg_settings WHERE name IN ('config_file', 'hba_file', 'ident_file')", &[])
            .await
            .map_err(|e| PgError::query(WHAT, &e))?;
        let mut files = ConfigurationFiles::default();
        for r in &rows {
            let name: String = get(r, 0, WHAT)?;
            let value: Option<String> = get(r, 1, WHAT)?;
            match name.as_str() {
                "config_file" => files.config_file = value,
                "hba_file" => files.hba_file = value,
                "ident_file" => files.ident_file = value,
                _ => {}
            }
        }
        let rows = self
            .client()
            .query(
                "SELECT DISTINCT sourcefile AS included_file FROM pg_settings \
                 WHERE sourcefile IS NOT NULL \
                 AND sourcefile NOT IN (SELECT setting FROM pg_settings WHERE name = 'config_file') \
                 ORDER BY 1",
                &[],
            )
            .await
            .map_err(|e| PgError::query(WHAT, &e))?;
        files.included_files = rows.iter().map(|r| get(r, 0, WHAT)).collect::<Result<_, _>>()?;
        Ok(files)
    }
}

/// Barman's privilege query for backups, for version 10 onwards.
fn backup_privileges_sql(version: u32) -> String {
    let n = names(version);
    let (start_args, stop_args, stop_no_args) = if version < 150000 {
        (
            "text,bool,bool",
            "bool,bool",
            format!("has_function_privilege(CURRENT_USER, '{}()', 'EXECUTE') OR ", n.backup_stop),
        )
    } else {
        ("text,bool", "bool", String::new())
    };
    format!(
        "SELECT usesuper OR ( \
           (pg_has_role(CURRENT_USER, 'pg_monitor', 'USAGE') \
            OR (pg_has_role(CURRENT_USER, 'pg_read_all_settings', 'USAGE') \
                AND pg_has_role(CURRENT_USER, 'pg_read_all_stats', 'USAGE'))) \
           AND (has_function_privilege(CURRENT_USER, '{start}({start_args})', 'EXECUTE')) \
           AND ({stop_no_args}has_function_privilege(CURRENT_USER, '{stop}({stop_args})', 'EXECUTE')) \
           AND has_function_privilege(CURRENT_USER, '{switch}()', 'EXECUTE') \
           AND has_function_privilege(CURRENT_USER, 'pg_create_restore_point(text)', 'EXECUTE')) \
         FROM pg_user WHERE usename = CURRENT_USER",
        start = n.backup_start,
        stop = n.backup_stop,
        switch = n.switch_wal,
    )
}

/// Which clients of `pg_stat_replication` to list (`replication-status --target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// Every streaming client.
    Any,
    /// Clients that replay WAL: hot standbys.
    Standby,
    /// Clients that never replay (`replay_lsn` is NULL): pg_receivewal, barman receive-wal.
    WalStreamer,
}

/// One row of Barman's `get_replication_stats` query: a WAL sender, its physical
/// slot if any, and the server's current position at the time of the query.
#[derive(Debug, Clone, PartialEq)]
pub struct StatReplication {
    pub pid: i32,
    pub usename: Option<String>,
    pub application_name: Option<String>,
    /// `host(client_addr)`: NULL for a Unix socket.
    pub client_addr: Option<String>,
    pub client_hostname: Option<String>,
    pub client_port: Option<i32>,
    pub backend_start: Option<DateTime<FixedOffset>>,
    /// An xid, as text (psycopg2 has no typecaster for xid either).
    pub backend_xmin: Option<String>,
    pub state: Option<String>,
    pub sent_lsn: Option<Lsn>,
    pub write_lsn: Option<Lsn>,
    pub flush_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    pub sync_priority: Option<i32>,
    pub sync_state: Option<String>,
    pub slot_name: Option<String>,
    /// Written position on a primary, received position on a standby.
    pub current_lsn: Option<Lsn>,
}

impl PgConnection {
    /// Barman's `get_replication_stats`: the WAL senders of `kind`, physical slot
    /// users only, ordered as Barman orders them (`sync_state DESC, sync_priority`).
    /// Needs monitoring privileges, as Barman demands.
    pub async fn replication_stats(&self, kind: ClientKind) -> Result<Vec<StatReplication>, PgError> {
        const WHAT: &str = "pg_stat_replication";
        if !self.has_monitoring_privileges().await? {
            return Err(PgError::MissingMonitoringPrivileges { user: self.user().to_string() });
        }
        let v = self.server_version_num();
        let (sent, write, flush, replay) = if v < 100000 {
            ("sent_location", "write_location", "flush_location", "replay_location")
        } else {
            ("sent_lsn", "write_lsn", "flush_lsn", "replay_lsn")
        };
        let n = names(v);
        let filter = match kind {
            ClientKind::Any => String::new(),
            ClientKind::Standby => format!(" AND r.{replay} IS NOT NULL"),
            ClientKind::WalStreamer => format!(" AND r.{replay} IS NULL"),
        };
        let sql = format!(
            "SELECT r.pid, r.usename::text, r.application_name, host(r.client_addr), r.client_hostname, \
               r.client_port, {start}, r.backend_xmin::text, r.state, \
               r.{sent}::text, r.{write}::text, r.{flush}::text, r.{replay}::text, \
               r.sync_priority, r.sync_state, rs.slot_name::text, \
               (CASE WHEN pg_is_in_recovery() THEN {receive}() ELSE {current}() END)::text \
             FROM pg_stat_replication r \
             LEFT JOIN pg_replication_slots rs ON (r.pid = rs.active_pid) \
             WHERE (rs.slot_type IS NULL OR rs.slot_type = 'physical'){filter} \
             ORDER BY sync_state DESC, sync_priority",
            start = ts_sql("r.backend_start"),
            receive = n.last_wal_receive_lsn,
            current = n.current_wal_lsn,
        );
        let rows = self.client().query(sql.as_str(), &[]).await.map_err(|e| PgError::query(WHAT, &e))?;
        let lsn = |row: &Row, i: usize| -> Result<Option<Lsn>, PgError> {
            get::<Option<String>>(row, i, WHAT)?.map(|s| parse_lsn(WHAT, &s)).transpose()
        };
        rows.iter()
            .map(|row| {
                Ok(StatReplication {
                    pid: get(row, 0, WHAT)?,
                    usename: get(row, 1, WHAT)?,
                    application_name: get(row, 2, WHAT)?,
                    client_addr: get(row, 3, WHAT)?,
                    client_hostname: get(row, 4, WHAT)?,
                    client_port: get(row, 5, WHAT)?,
                    backend_start: ts_from(WHAT, get(row, 6, WHAT)?, get(row, 7, WHAT)?)?,
                    backend_xmin: get(row, 8, WHAT)?,
                    state: get(row, 9, WHAT)?,
                    sent_lsn: lsn(row, 10)?,
                    write_lsn: lsn(row, 11)?,
                    flush_lsn: lsn(row, 12)?,
                    replay_lsn: lsn(row, 13)?,
                    sync_priority: get(row, 14, WHAT)?,
                    sync_state: get(row, 15, WHAT)?,
                    slot_name: get(row, 16, WHAT)?,
                    current_lsn: lsn(row, 17)?,
                })
            })
            .collect()
    }
}

/// A query refused because the server is a standby, as the typed error.
fn in_recovery_as(operation: &'static str, e: PgError) -> PgError {
    if e.sqlstate() == Some(SQLSTATE_NOT_IN_PREREQUISITE_STATE) { PgError::InRecovery { operation } } else { e }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::segment::DEFAULT_SEGMENT_SIZE;

    #[test]
    fn synchronous_standby_names_as_barman() {
        assert_eq!(parse_synchronous_standby_names(""), Vec::<String>::new());
        assert_eq!(parse_synchronous_standby_names("a, b"), vec!["a", "b"]);
        assert_eq!(
            parse_synchronous_standby_names("FIRST 2 (s1, \"barman receive-wal\")"),
            vec!["s1", "barman receive-wal"]
        );
        assert_eq!(parse_synchronous_standby_names("ANY 1 (*)"), vec!["*"]);
        assert_eq!(parse_synchronous_standby_names("2 (x,y)"), vec!["x", "y"]);
    }

    #[test]
    fn function_names_by_version() {
        let n = names(90624);
        assert_eq!((n.switch_wal, n.walfile_name_offset), ("pg_switch_xlog", "pg_xlogfile_name_offset"));
        let n = names(140005);
        assert_eq!(
            (n.switch_wal, n.backup_start, n.backup_stop),
            ("pg_switch_wal", "pg_start_backup", "pg_stop_backup")
        );
        let n = names(150018);
        assert_eq!((n.backup_start, n.backup_stop), ("pg_backup_start", "pg_backup_stop"));
    }

    #[test]
    fn backup_privilege_queries_follow_barman() {
        let q = backup_privileges_sql(150018);
        assert!(q.contains("'pg_backup_start(text,bool)'"));
        assert!(q.contains("'pg_backup_stop(bool)'"));
        assert!(!q.contains("pg_stop_backup"));
        let q = backup_privileges_sql(140005);
        assert!(q.contains("'pg_start_backup(text,bool,bool)'"));
        assert!(q.contains(
            "'pg_stop_backup()', 'EXECUTE') OR has_function_privilege(CURRENT_USER, 'pg_stop_backup(bool,bool)'"
        ));
    }

    #[test]
    fn timestamps_keep_the_session_offset() {
        let t = ts_from("t", Some(1_700_000_000_123_456), Some(3600)).unwrap().unwrap();
        assert_eq!(t.to_rfc3339(), "2023-11-14T23:13:20.123456+01:00");
        assert_eq!(ts_from("t", None, None).unwrap(), None);
        assert!(ts_from("t", Some(0), Some(100_000)).is_err());
    }

    #[test]
    fn previous_segment_crosses_log_ids() {
        let n: WalFileName = "000000010000000200000000".parse().unwrap();
        assert_eq!(previous_segment(&n, DEFAULT_SEGMENT_SIZE).as_str(), "0000000100000001000000FF");
    }
}
