//! `check`: Barman's checks, in Barman's order and with its names and hints, for
//! everything this version does; `--nagios` output; exit 1 (Nagios: 2) when a
//! check of an active server fails.

use super::context::{Ctx, Pick};
use super::output::Writer;
use super::remote;
use super::wal::run_archiver;
use crate::archive::server::expected_from_identity;
use crate::catalog::ServerLayout;
use crate::catalog::backups::{self, BackupSummary};
use crate::catalog::identity::Identity;
use crate::catalog::lock::{LockKind, holder};
use crate::catalog::rejects;
use crate::catalog::xlogdb::{XlogDb, XlogEntry};
use crate::config::ServerConfig;
use crate::config::types::{BackupMethod, Retention, human_duration};
use crate::postgres::PostgresStatus;
use crate::wal::WalFileName;
use std::path::Path;
use std::time::{Duration, Instant};

/// Barman's `pretty_size`.
pub fn pretty_size(n: impl Into<i128>) -> String {
    pretty_size_f64(n.into() as f64)
}

/// Barman's `pretty_size` of any number (`%d B` truncates a float).
pub fn pretty_size_f64(mut size: f64) -> String {
    for suffix in ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB"] {
        if size.abs() < 1024.0 {
            return if suffix == "B" { format!("{} B", size.trunc() as i64) } else { format!("{size:.1} {suffix}") };
        }
        size /= 1024.0;
    }
    format!("{size:.1} YiB")
}

struct Checker<'a> {
    ctx: &'a mut Ctx,
    s: &'a ServerConfig,
    deadline: Option<Instant>,
    /// The system identifier seen over the streaming connection.
    streaming_sysid: Option<crate::wal::SystemId>,
}

impl Checker<'_> {
    fn result(&mut self, check: &str, ok: bool, hint: Option<&str>) {
        let name = self.s.name.clone();
        self.ctx.out.check_result(&name, check, ok, hint, None);
    }
    fn result_perf(&mut self, check: &str, ok: bool, hint: Option<&str>, perf: u64) {
        let name = self.s.name.clone();
        self.ctx.out.check_result(&name, check, ok, hint, Some(perf));
    }
    fn timed_out(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
    fn remaining(&self) -> Duration {
        self.deadline
            .map_or(Duration::ZERO, |d| d.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)))
    }
}

pub fn check(ctx: &mut Ctx, names: &[String], nagios: bool, timeout: Option<u64>) {
    if nagios {
        ctx.out.writer = Writer::Nagios;
    }
    for s in ctx.servers(names, Pick::ALL) {
        ctx.out.init_check(&s.name, s.active(), s.disabled());
        let secs = timeout.unwrap_or(s.opts.check_timeout.max(0) as u64);
        let deadline = (secs > 0).then(|| Instant::now() + Duration::from_secs(secs));
        let mut c = Checker { ctx, s: &s, deadline, streaming_sysid: None };
        if !run_checks(&mut c) {
            c.result("check timeout", false, Some("barman check command timed out"));
        }
    }
}

/// The checks `backup` runs first, silently: those that failed.
pub fn failed_checks(ctx: &mut Ctx, s: &ServerConfig, timeout: Option<u64>) -> Vec<super::output::CheckRecord> {
    let silent = super::output::Output::new(Writer::Null, true, false, false);
    let saved = std::mem::replace(&mut ctx.out, silent);
    let secs = timeout.unwrap_or(s.opts.check_timeout.max(0) as u64);
    let deadline = (secs > 0).then(|| Instant::now() + Duration::from_secs(secs));
    let mut c = Checker { ctx, s, deadline, streaming_sysid: None };
    if !run_checks(&mut c) {
        c.result("check timeout", false, Some("barman check command timed out"));
    }
    let checks = std::mem::replace(&mut ctx.out, saved).take_checks();
    checks.into_iter().filter(|c| !c.ok).collect()
}

fn xlogdb_empty(l: &ServerLayout) -> bool {
    std::fs::metadata(l.xlogdb_path()).map(|m| m.len() == 0).unwrap_or(true)
}

/// Runs every check; false when the time ran out.
fn run_checks(c: &mut Checker<'_>) -> bool {
    let s = c.s;
    let l = ServerLayout::new(&c.ctx.cfg.global, s);
    let catalogue = backups::list(&l);

    // WAL archive (reported only on failure).
    let mut has_wal = !xlogdb_empty(&l) || catalogue.iter().any(|b| b.status == "WAITING_FOR_WALS");
    if !has_wal && !s.disabled() {
        let saved = std::mem::replace(&mut c.ctx.out, super::output::Output::new(Writer::Null, true, false, false));
        run_archiver(c.ctx, s, false);
        has_wal = !xlogdb_empty(&l);
        if !has_wal && !s.passive && s.opts.conninfo.is_some() {
            let wait = (s.opts.check_timeout.max(0) / 3) as u64;
            // As Barman: switch, and wait for the file only if the switch worked.
            super::switch_wal::switch_one(c.ctx, s, false, true, wait);
            has_wal = !xlogdb_empty(&l);
        }
        c.ctx.out = saved;
    }
    if !has_wal {
        c.result("WAL archive", false, Some("please make sure WAL shipping is setup"));
    }
    wal_queue(c, &l.incoming_dir, "incoming", s.opts.archiver, "archiver");
    wal_queue(c, &l.streaming_dir, "streaming", s.opts.streaming_archiver, "streaming_archiver");
    if c.timed_out() {
        return false;
    }

    let status = if s.passive { PostgresStatus::default() } else { remote::status(s, c.remaining()) };
    if c.timed_out() {
        return false;
    }
    if !s.passive {
        check_postgres(c, &status);
        if let (Some(slot), true) = (&s.opts.slot_name, status.is_connected()) {
            replication_slot(c, &status, &slot.0);
        }
    }

    // directories
    if !s.disabled() {
        let mut failed = None;
        for (_, d) in l.directories() {
            if let Err(e) = crate::catalog::durable::create_dir_all(d) {
                failed = Some(format!("{}: {e}", d.display()));
                break;
            }
        }
        match failed {
            None => c.result("directories", true, None),
            Some(h) => c.result("directories", false, Some(&h)),
        }
    }
    let bad_policy = matches!(s.opts.retention_policy, Some(Retention::Invalid(_)));
    c.result("retention policy settings", !bad_policy, bad_policy.then_some("see log"));

    backup_validity(c, &catalogue);
    wal_validity(c, &l, &catalogue);

    // compression settings, failed backups, minimum redundancy
    let custom_ok = s.opts.compression != Some(crate::wal::compression::Codec::Custom)
        || (s.opts.custom_compression_filter.is_some() && s.opts.custom_decompression_filter.is_some());
    c.result("compression settings", custom_ok, None);
    let failed = catalogue.iter().filter(|b| b.status == "FAILED").count();
    c.result("failed backups", failed == 0, Some(&format!("there are {failed} failed backups")));
    let full = catalogue.iter().filter(|b| b.is_done() && !b.is_incremental()).count();
    let min = s.opts.minimum_redundancy.0 as usize;
    c.result(
        "minimum redundancy requirements",
        full >= min,
        Some(&format!("have {full} non-incremental backups, expected at least {min}")),
    );
    executor_checks(c, &status);
    if c.timed_out() {
        return false;
    }

    // configuration (reported only on failure)
    if !s.msg_list.is_empty() {
        c.result("configuration", false, None);
        for m in &s.msg_list {
            c.ctx.out.info(format!("\t\t{m}"));
        }
    }
    systemid_coherence(c, &l, &status);

    if s.opts.streaming_archiver && !s.passive {
        let lock = l.lock_dir.join(LockKind::ReceiveWal.file_name(&s.name));
        let running = holder(&lock).is_some();
        c.result("receive-wal running", running, (!running).then_some("See the Barman log file for more details"));
    }
    if s.opts.archiver && !s.passive && status.connection_error.is_none() {
        file_archiver(c, &status);
    }
    let errors = rejects::summarise(&l.errors_dir);
    let hint =
        (!errors.is_empty()).then(|| errors.iter().map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", "));
    c.result("archiver errors", errors.is_empty(), hint.as_deref());
    !c.timed_out()
}

fn wal_queue(c: &mut Checker<'_>, dir: &Path, label: &str, enabled: bool, option: &str) {
    let mut count = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    !n.starts_with('.') && !n.ends_with(".tmp")
                })
                .count() as i64
        })
        .unwrap_or(0);
    if label == "streaming" {
        count -= 1; // the .partial the streamer is writing
    }
    if !enabled {
        if count > 0 {
            c.result(
                &format!("empty {label} directory"),
                false,
                Some(&format!("'{}' must be empty when {option}=off", dir.display())),
            );
        }
        return;
    }
    if let Some(max) = c.s.opts.max_incoming_wals_queue
        && count > max
    {
        c.result(
            &format!("{label} WALs directory"),
            false,
            Some(&format!("there are too many WALs in queue: {count}, max {max}")),
        );
    }
}

fn check_postgres(c: &mut Checker<'_>, st: &PostgresStatus) {
    let Some(version) = st.server_txt_version.clone() else {
        // Barman gives no hint; the reason is too useful to drop.
        c.result("PostgreSQL", false, st.connection_error.as_deref());
        return;
    };
    if st.version_supported == Some(false) {
        c.result(
            "PostgreSQL",
            false,
            Some(&format!("unsupported version: PostgreSQL server is too old ({version} < 9.6)")),
        );
        return;
    }
    c.result("PostgreSQL", true, None);
    match st.has_backup_privileges {
        Some(true) => c.result("superuser or standard user with backup privileges", true, None),
        Some(false) => c.result(
            "no access to backup functions",
            false,
            Some("privileges for PostgreSQL backup functions are required (see documentation)"),
        ),
        None => {}
    }
    let streams = c.s.opts.streaming_archiver || c.s.opts.backup_method == BackupMethod::Postgres;
    if streams {
        match remote::streaming_identity(c.s, c.remaining()) {
            Ok(info) => {
                c.streaming_sysid = Some(info.system_id);
                c.result("PostgreSQL streaming", true, None);
            }
            Err(e) => c.result("PostgreSQL streaming", false, Some(&e)),
        }
    }
    if let Some(level) = &st.wal_level {
        let ok = level != "minimal";
        c.result("wal_level", ok, (!ok).then_some("please set it to a higher level than 'minimal'"));
    }
    // Not Barman's (reported only on failure): settings that make streaming impossible.
    if c.s.opts.streaming_archiver && st.max_wal_senders.as_deref() == Some("0") {
        c.result("max_wal_senders", false, Some("please set it to a value higher than 0 for WAL streaming"));
    }
    if c.s.opts.slot_name.is_some() && st.max_replication_slots.as_deref() == Some("0") {
        c.result("max_replication_slots", false, Some("please set it to a value higher than 0 to use slot_name"));
    }
    if let Some(primary) = c.s.opts.primary_conninfo.clone() {
        standby_checks(c, st, &primary);
    }
}

fn standby_checks(c: &mut Checker<'_>, st: &PostgresStatus, primary: &str) {
    let standby = st.is_in_recovery == Some(true);
    c.result(
        "PostgreSQL server is standby",
        standby,
        (!standby).then_some("conninfo should point to a standby server if primary_conninfo is set"),
    );
    if !standby {
        return;
    }
    let p = remote::with_connection(primary, async |conn| {
        Ok((conn.is_in_recovery().await?, conn.system_identifier().await?))
    });
    match p {
        Ok((in_recovery, sysid)) => {
            c.result(
                "Primary server is not a standby",
                !in_recovery,
                in_recovery.then_some("primary_conninfo should point to a primary server, not a standby"),
            );
            let same = st.system_identifier == Some(sysid);
            c.result(
                "Primary and standby have same system ID",
                same,
                (!same).then_some("primary_conninfo and conninfo should point to primary and standby servers which share the same system identifier"),
            );
        }
        Err(e) => c.result("Primary server is not a standby", false, Some(&e)),
    }
}

fn replication_slot(c: &mut Checker<'_>, st: &PostgresStatus, slot: &str) {
    let s = c.s;
    let found = st.replication_slot.as_ref();
    if s.opts.streaming_archiver {
        match found {
            None => c.result(
                "replication slot",
                false,
                Some(&format!(
                    "replication slot '{slot}' doesn't exist. Please execute 'barman receive-wal --create-slot {}'",
                    s.name
                )),
            ),
            Some(r) if r.restart_lsn.is_none() => c.result(
                "replication slot",
                false,
                Some(&format!("slot '{slot}' not initialised: is 'receive-wal' running?")),
            ),
            Some(r) if !r.active => c.result(
                "replication slot",
                false,
                Some(&format!("slot '{slot}' not active: is 'receive-wal' running?")),
            ),
            Some(_) => c.result("replication slot", true, None),
        }
    } else if let Some(r) = found
        && r.restart_lsn.is_some()
    {
        let state = if r.active { "active" } else { "initialised" };
        c.result(
            "replication slot",
            true,
            Some(&format!("WARNING: slot '{slot}' is {state} but not required by the current config")),
        );
    }
}

/// The newest backup in {WAITING_FOR_WALS, DONE} ("copy done"), Barman's "last".
fn last_copy_done(catalogue: &[BackupSummary]) -> Option<&BackupSummary> {
    catalogue.iter().rev().find(|b| b.status == "DONE" || b.status == "WAITING_FOR_WALS")
}

fn backup_validity(c: &mut Checker<'_>, catalogue: &[BackupSummary]) {
    let last = last_copy_done(catalogue);
    match c.s.opts.last_backup_maximum_age {
        Some(max) => {
            let (ok, age) = match last.and_then(|b| b.end_time) {
                Some(t) => {
                    let secs = (chrono::Local::now().fixed_offset() - t).num_seconds().max(0) as u64;
                    (secs <= max.seconds, human_duration(secs))
                }
                None => (false, "No available backups".to_string()),
            };
            c.result(
                "backup maximum age",
                ok,
                Some(&format!("interval provided: {}, latest backup age: {age}", max.human())),
            );
        }
        None => c.result("backup maximum age", true, Some("no last_backup_maximum_age provided")),
    }
    let size = last.and_then(|b| b.size).unwrap_or(0);
    match c.s.opts.last_backup_minimum_size {
        Some(min) => {
            let ok = last.is_some() && size >= min.0;
            let cmp = if ok { ">" } else { "<" };
            c.result_perf(
                "backup minimum size",
                ok,
                Some(&format!("last backup size {} {cmp} {} minimum", pretty_size(size), pretty_size(min.0))),
                size,
            );
        }
        None => c.result_perf("backup minimum size", true, Some(&pretty_size(size)), size),
    }
}

fn wal_validity(c: &mut Checker<'_>, l: &ServerLayout, catalogue: &[BackupSummary]) {
    let last = last_copy_done(catalogue);
    let entries: Vec<XlogEntry> = match XlogDb::new(l).read_locked() {
        Ok(e) => e,
        Err(e) => {
            // A catalogue that cannot be read is a failed archive, with the reason.
            c.result("WAL archive", false, Some(&e.to_string()));
            return;
        }
    };
    // WAL files from the last backup's end on (Barman's "until next backup").
    let (size, last_time) = match last.and_then(|b| b.begin_wal.clone().zip(b.end_wal.clone())) {
        Some((begin, end)) => {
            let mut size = 0;
            let mut last_time = None;
            for e in entries.iter().filter(|e| e.name.is_segment() && e.name.as_str() >= begin.as_str()) {
                if e.name.as_str() > end.as_str() {
                    size += e.size;
                }
                last_time = Some(e.time);
            }
            (size, last_time)
        }
        None => (0, None),
    };
    match c.s.opts.last_wal_maximum_age {
        Some(max) => match last_time {
            None => c.result("wal maximum age", false, Some("No WAL files archived for last backup")),
            Some(t) => {
                let age = (chrono::Utc::now().timestamp() as f64 - t).max(0.0) as u64;
                c.result(
                    "wal maximum age",
                    age <= max.seconds,
                    Some(&format!("interval provided: {}, latest wal age: {}", max.human(), human_duration(age))),
                );
            }
        },
        None => c.result("wal maximum age", true, Some("no last_wal_maximum_age provided")),
    }
    c.result_perf("wal size", true, Some(&pretty_size(size)), size);
}

/// Barman's `ssh` check, through our SSH client (the one the copies use): `true` run on
/// the host, and nothing printed. Why it failed goes to the log.
fn ssh_check(c: &mut Checker<'_>, cmd: &str, hint: &str) {
    let ran = crate::transport::ssh::Remote::connect(cmd, false).and_then(|r| r.run("true", None));
    match ran {
        Ok(o) if o.success() => {
            c.result("ssh", true, None);
            if !o.stdout.is_empty() {
                c.result(
                    "ssh output clean",
                    false,
                    Some("the configured ssh_command must not add anything to the remote command output"),
                );
            }
        }
        Ok(o) => {
            tracing::error!(server = %c.s.name, "ssh check: true failed on the host: {}", o.why());
            c.result("ssh", false, Some(hint));
        }
        Err(e) => {
            tracing::error!(server = %c.s.name, "ssh check: {e}");
            c.result("ssh", false, Some(hint));
        }
    }
}

fn executor_checks(c: &mut Checker<'_>, st: &PostgresStatus) {
    let s = c.s;
    if s.passive {
        // A passive server's executor is its primary Barman.
        if let Some(cmd) = s.opts.primary_ssh_command.clone() {
            ssh_check(c, &cmd, "Barman primary node");
        }
        return;
    }
    match s.opts.backup_method {
        BackupMethod::Rsync => {
            let Some(cmd) = s.opts.ssh_command.clone() else { return };
            ssh_check(c, &cmd, "PostgreSQL server");
            if st.server_version_num.is_some_and(|v| v < 90600) {
                c.result("postgres minimal version", false, Some("PostgreSQL 9.6 or later is required"));
            }
        }
        BackupMethod::LocalRsync => {
            let ok = st.data_directory.as_deref().is_some_and(|d| Path::new(d).is_dir());
            c.result("local PGDATA", ok, (!ok).then_some("PGDATA is not readable on this host"));
        }
        // The postgres method uses our own replication client, not pg_basebackup:
        // Barman's pg_basebackup checks do not apply.
        BackupMethod::Postgres | BackupMethod::Snapshot => {}
    }
}

fn systemid_coherence(c: &mut Checker<'_>, l: &ServerLayout, st: &PostgresStatus) {
    let Some(live) = st.system_identifier else {
        c.result("systemid coherence", true, Some("no system Id available"));
        return;
    };
    if let Some(streamed) = c.streaming_sysid
        && streamed != live
    {
        c.result(
            "systemid coherence",
            false,
            Some("is the streaming DSN targeting the same server of the PostgreSQL connection string?"),
        );
        return;
    }
    match Identity::read(&l.identity_path()) {
        Ok(None) => c.result("systemid coherence", true, Some("no system Id stored on disk")),
        Ok(Some(id)) if id.systemid == live => c.result("systemid coherence", true, None),
        Ok(Some(_)) => c.result(
            "systemid coherence",
            false,
            Some(&format!(
                "the system Id of the connected PostgreSQL server changed, stored in \"{}\"",
                l.identity_path().display()
            )),
        ),
        Err(e) => c.result("systemid coherence", false, Some(&e.to_string())),
    }
    // Files that cannot be verified yet wait in incoming/: say so.
    if let Ok(None) = expected_from_identity(l)
        && st.connection_error.is_some()
    {
        let waiting = std::fs::read_dir(&l.incoming_dir)
            .map(|rd| rd.flatten().filter(|e| e.file_name().to_string_lossy().parse::<WalFileName>().is_ok()).count())
            .unwrap_or(0);
        if waiting > 0 {
            c.result(
                "incoming WAL verification",
                false,
                Some(&format!("{waiting} WAL files wait in incoming: no identity.json and PostgreSQL cannot be reached to check their system identifier")),
            );
        }
    }
}

fn file_archiver(c: &mut Checker<'_>, st: &PostgresStatus) {
    let Some(mode) = &st.archive_mode else { return };
    let ok = mode == "on" || mode == "always";
    c.result("archive_mode", ok, (!ok).then_some("please set it to 'on' or 'always'"));
    match st.archive_command.as_deref() {
        Some(cmd) if !cmd.is_empty() && cmd != "(disabled)" => {
            c.result("archive_command", true, None);
            if let Some(a) = &st.archiver {
                c.result("continuous archiving", a.is_archiving, None);
            }
        }
        _ => c.result("archive_command", false, Some("please set it accordingly to documentation")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_barman() {
        assert_eq!(pretty_size(0), "0 B");
        assert_eq!(pretty_size(1023), "1023 B");
        assert_eq!(pretty_size(1024), "1.0 KiB");
        assert_eq!(pretty_size(16 << 20), "16.0 MiB");
    }
}
