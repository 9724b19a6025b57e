//! `backup SERVER|all` with `backup_method = postgres`: one `BASE_BACKUP` over
//! the replication protocol, stored in Barman's layout, with Barman's steps,
//! messages and backup.info states (EMPTY → STARTED → WAITING_FOR_WALS → DONE,
//! or FAILED with the failing action recorded).

mod rsync;

use super::check;
use super::context::{Ctx, Pick, interrupted, runtime};
use super::remote::APPLICATION_NAME;
use crate::backup::check as wal_check;
use crate::backup::copy::{CopyProgress, copy};
use crate::backup::label;
use crate::backup::store::{Algorithm, ClientCompression, StoreSpec};
use crate::catalog::ServerLayout;
use crate::catalog::backup_info::{BackupInfo, Tablespace};
use crate::catalog::backups::{self, is_backup_id};
use crate::catalog::identity::Identity;
use crate::catalog::lock::{Lock, LockError, LockKind};
use crate::catalog::pyliteral::PyValue;
use crate::catalog::wal_removal::{Protect, remove_wals};
use crate::config::ServerConfig;
use crate::config::types::{
    BackupCompressionFormat, BackupCompressionLocation, BackupMethod, ReuseBackup, human_duration,
};
use crate::hooks::{Event, Hooks, Phase};
use crate::postgres::replication::{BaseBackupOptions, ReplicationConnection};
use crate::postgres::{Conninfo, PgConnection};
use crate::wal::{SegmentId, WalFileName};
use chrono::{DateTime, Local};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The command line of `backup`, as Barman 3.17 takes it.
#[derive(Debug, Clone, Default)]
pub struct BackupArgs {
    pub servers: Vec<String>,
    pub immediate_checkpoint: Option<bool>,
    pub incremental: Option<String>,
    pub reuse_backup: Option<ReuseBackup>,
    pub retry_times: Option<u32>,
    pub retry_sleep: Option<u32>,
    pub bwlimit: Option<u64>,
    pub wait: bool,
    pub wait_timeout: Option<u64>,
    pub name: Option<String>,
    pub check_timeout: Option<u64>,
    /// `--jobs` (rsync methods).
    pub jobs: Option<usize>,
}

/// Checks whose failure does not stop a backup (Barman's list).
/// `ssh` and `ssh output clean` are ours: the rsync copy connects itself and records why it
/// could not in the FAILED backup.
const NON_CRITICAL: [&str; 13] = [
    "ssh",
    "ssh output clean",
    "minimum redundancy requirements",
    "backup maximum age",
    "backup minimum size",
    "failed backups",
    "archiver errors",
    "empty incoming directory",
    "empty streaming directory",
    "incoming WALs directory",
    "streaming WALs directory",
    "wal maximum age",
    "PostgreSQL server is standby",
];

const RESERVED_NAMES: [&str; 8] =
    ["latest", "last", "oldest", "first", "last-failed", "latest-full", "last-full", "auto"];

/// Barman's `check_backup_name`, for `--name`.
pub fn check_backup_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("Backup name cannot be empty".into());
    }
    if is_backup_id(name) {
        return Err(format!("Backup name '{name}' is not allowed: backup ID"));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(format!("Backup name '{name}' is not allowed: reserved word"));
    }
    Ok(name.to_string())
}

pub fn backup(ctx: &mut Ctx, args: &BackupArgs) {
    let pick = Pick { skip_inactive: true, ..Pick::DEFAULT };
    for s in ctx.servers(&args.servers, pick) {
        if s.passive {
            ctx.out.info(format!("Skipping passive server '{}'", s.name));
            continue;
        }
        if let Some(why) = super::cluster::refused_here(ctx, &s.name, "Backup") {
            ctx.out.error(why);
            continue;
        }
        backup_server(ctx, &s, args);
    }
}

fn backup_server(ctx: &mut Ctx, s: &ServerConfig, args: &BackupArgs) {
    if s.opts.backup_method == BackupMethod::Snapshot {
        ctx.out.error(format!(
            "backup of server {}: backup_method = snapshot is not supported by this version; set backup_method = \
             postgres, rsync or local-rsync",
            s.name,
        ));
        return;
    }
    let postgres = s.opts.backup_method == BackupMethod::Postgres;
    if postgres && matches!(args.reuse_backup, Some(ReuseBackup::Copy | ReuseBackup::Link)) {
        ctx.out.error("failed to start backup: reuse_backup option is not supported by postgres backup_method");
        return;
    }
    if args.incremental.is_some() && !postgres {
        ctx.out.error("failed to start backup: incremental backups are taken with the postgres backup_method only");
        return;
    }
    if args.incremental.is_some() {
        ctx.out.error(
            "failed to start backup: Postgres version 17 or greater is required for incremental backups \
             using the Postgres backup method, and this version does not take incremental backups",
        );
        return;
    }
    // As Barman: the checks run silently; only a critical failure stops the backup.
    let failed = check::failed_checks(ctx, s, args.check_timeout);
    let critical: Vec<_> = failed.iter().filter(|c| !NON_CRITICAL.contains(&c.check.as_str())).collect();
    if !critical.is_empty() {
        for c in &critical {
            tracing::error!(server = %s.name, "check '{}' failed{}", c.check, c.hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default());
        }
        let names: Vec<&str> = critical.iter().map(|c| c.check.as_str()).collect();
        ctx.out.error(format!(
            "Impossible to start the backup. Check the log for more details, or run 'barman check {}' (failed: {})",
            s.name,
            names.join(", ")
        ));
        return;
    }
    let layout = ServerLayout::new(&ctx.cfg.global, s);
    for (_, d) in layout.directories() {
        if let Err(e) = crate::catalog::durable::create_dir_all(d) {
            ctx.out.error(format!("failed to create {} directory: {e}", d.display()));
            return;
        }
    }
    let lock_path = layout.lock_dir.join(LockKind::Backup.file_name(&s.name));
    let lock = match Lock::acquire(&lock_path, false) {
        Ok(l) => l,
        Err(LockError::Busy(_)) => {
            ctx.out.error("Another backup process is running");
            return;
        }
        Err(e) => {
            ctx.out.error(format!("Permission denied, unable to access '{e}'"));
            return;
        }
    };
    let info = {
        let mut run = Run::new(ctx, s, &layout, args);
        run.execute();
        (run.id, run.info)
    };
    drop(lock);
    // As Barman: archive what arrived, then decide whether the backup is complete.
    super::wal::run_archiver(ctx, s, false);
    let (id, info) = info;
    let mut b = backups::Backup { path: backups::meta_path(&layout, &id), id, info };
    if b.info.status == "WAITING_FOR_WALS"
        && let Err(e) = super::backups::check_one(&layout, &mut b)
    {
        ctx.out.error(e.to_string());
    }
    if b.info.status == "WAITING_FOR_WALS" {
        ctx.out.warning(
            "IMPORTANT: this backup is classified as WAITING_FOR_WALS, meaning that Barman has not received yet all \
             the required WAL files for the backup consistency.\nThis is a common behaviour in concurrent backup \
             scenarios, and Barman automatically set the backup as DONE once all the required WAL files have been \
             archived.\nHint: execute the backup command with '--wait'",
        );
    }
}

/// Python's `str()` of a naive local datetime.
fn naive_str(t: &DateTime<Local>) -> String {
    let mut s = t.format("%Y-%m-%d %H:%M:%S").to_string();
    let us = t.timestamp_subsec_micros();
    if us != 0 {
        s.push_str(&format!(".{us:06}"));
    }
    s
}

/// One backup being taken.
struct Run<'a> {
    ctx: &'a mut Ctx,
    s: &'a ServerConfig,
    layout: &'a ServerLayout,
    args: &'a BackupArgs,
    id: String,
    path: PathBuf,
    info: BackupInfo,
    action: &'static str,
}

/// Where a copy ended: the backup's end position, its timeline, the server's time then
/// (when the stop gave it), and whether the server was a standby.
struct Ended {
    end: crate::wal::Lsn,
    timeline: crate::wal::TimelineId,
    time: Option<DateTime<chrono::FixedOffset>>,
    in_recovery: bool,
    copy_start: DateTime<Local>,
}

/// Why a step failed: the message Barman shows and records.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

impl<'a> Run<'a> {
    fn new(ctx: &'a mut Ctx, s: &'a ServerConfig, layout: &'a ServerLayout, args: &'a BackupArgs) -> Self {
        // Ids are seconds: a second backup in the same second waits for the next one.
        let mut id = Local::now().format("%Y%m%dT%H%M%S").to_string();
        while backups::scan(layout).contains_key(&id) || layout.base_dir.join(&id).exists() {
            std::thread::sleep(Duration::from_millis(200));
            id = Local::now().format("%Y%m%dT%H%M%S").to_string();
        }
        let path = backups::meta_path(layout, &id);
        Run { ctx, s, layout, args, path, id, info: BackupInfo::default(), action: "starting backup" }
    }

    fn backup_dir(&self) -> PathBuf {
        self.layout.base_dir.join(&self.id)
    }

    fn save(&mut self) -> Result<(), Failure> {
        self.info.save(&self.path).map_err(Failure::from)
    }

    fn hook_env(&self) -> Vec<(&'static str, String)> {
        let all = backups::load(self.layout).unwrap_or_default();
        super::backups::backup_hook_env(self.layout, &all, &self.id, &self.path, &self.info.status)
    }

    fn execute(&mut self) {
        self.info.server_name = Some(self.s.name.clone());
        self.info.backup_name = self.args.name.clone();
        self.info.mode = Some(match self.s.opts.backup_method {
            BackupMethod::Postgres => "postgres".into(),
            _ => "rsync-concurrent".into(),
        });
        let started = Local::now();
        let result = self.take(started);
        if let Err(Failure(msg)) = result {
            let lines: Vec<&str> = msg.trim().lines().collect();
            let first = lines.first().copied().unwrap_or("Error");
            self.info.status = "FAILED".into();
            self.info.error = Some(format!("failure {} ({first})", self.action));
            self.ctx.out.error(format!("Backup failed {}.\nDETAILS: {}", self.action, lines.join("\n")));
        }
        if let Err(Failure(e)) = self.save() {
            self.ctx.out.error(e);
        }
        let hooks = Hooks::new(self.s, &self.ctx.cfg.file);
        let env = self.hook_env();
        let _ = hooks.run(Event::Backup, Phase::Post, &env, self.info.error.as_deref());
    }

    fn take(&mut self, started: DateTime<Local>) -> Result<(), Failure> {
        let rt = runtime()?;
        let conninfo = self.s.opts.conninfo.clone().ok_or_else(|| Failure("no conninfo".into()))?;
        let ci = Conninfo::parse(&conninfo)?;
        let pg = rt.block_on(PgConnection::connect(&ci, Some(APPLICATION_NAME)))?;
        let sysid = rt.block_on(pg.system_identifier())?;
        self.info.systemid = Some(sysid.to_string());
        // identity.json is written at the first backup and never changed.
        let identity = Identity { systemid: sysid, version: pg.server_major_version() };
        identity.write_once(&self.layout.identity_path())?;
        self.save()?;
        self.ctx.out.info(format!(
            "Starting backup using {} method for server {} in {}",
            self.info.mode.as_deref().unwrap_or("postgres"),
            self.s.name,
            self.backup_dir().display()
        ));

        let hooks = Hooks::new(self.s, &self.ctx.cfg.file);
        let env = self.hook_env();
        hooks.run(Event::Backup, Phase::Pre, &env, None)?;

        // PostgreSQL's metadata (Barman's _pg_get_metadata).
        self.action = "detecting data directory";
        self.info.pgdata = Some(rt.block_on(pg.data_directory())?);
        self.info.version = Some(pg.server_version_num());
        let segsize = rt.block_on(pg.wal_segment_size())?;
        self.info.xlog_segment_size = segsize.bytes();
        let files = rt.block_on(pg.configuration_files())?;
        self.info.config_file = files.config_file;
        self.info.hba_file = files.hba_file;
        self.info.ident_file = files.ident_file;
        self.info.included_files = (!files.included_files.is_empty()).then_some(files.included_files);
        self.action = "detecting tablespaces";
        let spcs = rt.block_on(pg.tablespaces())?;
        self.info.tablespaces = (!spcs.is_empty())
            .then(|| spcs.into_iter().map(|(name, oid, location)| Tablespace { name, oid, location }).collect());
        self.info.data_checksums = rt.block_on(pg.setting("data_checksums"))?;
        self.info.summarize_wal = None;
        if pg.server_version_num() >= 170000 {
            self.info.summarize_wal = rt.block_on(pg.setting("summarize_wal"))?;
        }
        self.info.cluster_size = rt.block_on(pg.current_size())?;

        let ended = match self.s.opts.backup_method {
            BackupMethod::Postgres => self.copy_postgres(&rt, &pg)?,
            _ => self.copy_rsync(&rt, &pg)?,
        };
        if self.s.opts.backup_method == BackupMethod::Postgres {
            self.action = "stopping postgres backup_method";
            self.ctx.out.info("Finalising the backup.");
        }
        let segsize = self.segment_size();
        let end_seg = SegmentId::ending_at(ended.end, ended.timeline, segsize);
        let offset = segsize.offset(ended.end);
        self.info.end_xlog = Some(ended.end);
        self.info.end_wal = Some(WalFileName::segment(end_seg));
        self.info.end_offset = Some(offset);
        self.info.end_time = Some(match ended.time {
            Some(t) => t,
            None => rt.block_on(pg.current_xlog_info())?.timestamp,
        });
        // Close the segment holding the end so it is archived now (on the primary
        // when the backup came from a standby).
        if ended.in_recovery {
            if let Some(primary) = self.s.opts.primary_conninfo.clone() {
                let pci = Conninfo::parse(&primary)?;
                let p = rt.block_on(PgConnection::connect(&pci, Some(APPLICATION_NAME)))?;
                rt.block_on(p.switch_wal())?;
            }
        } else {
            rt.block_on(pg.switch_wal())?;
        }
        self.purge_before_first_backup();
        // Barman: a restore point after every backup (skipped on a standby).
        self.action = "creating restore point";
        rt.block_on(pg.create_restore_point(&format!("barman_{}", self.id)))?;
        drop(pg);

        self.action = "calculating backup size";
        let (size, dedup) = dir_sizes(&self.backup_dir())?;
        self.info.size = Some(size);
        self.info.deduplicated_size = Some(dedup);
        self.ctx.out.info(format!("Backup size: {}", check::pretty_size(size)));
        self.info.status = "WAITING_FOR_WALS".into();
        self.save()?;
        self.ctx.out.info(format!(
            "Backup end at LSN: {} ({}, {:08X})",
            ended.end,
            WalFileName::segment(end_seg),
            offset
        ));
        self.ctx.out.info(format!(
            "Backup completed (start time: {}, elapsed time: {})",
            naive_str(&ended.copy_start),
            human_duration((Local::now() - started).num_seconds().max(0) as u64)
        ));
        if self.args.wait {
            self.wait_for_end_wal();
        }
        Ok(())
    }

    /// The postgres method's copy: one BASE_BACKUP; where it ended.
    fn copy_postgres(&mut self, rt: &tokio::runtime::Runtime, pg: &PgConnection) -> Result<Ended, Failure> {
        // Start: the current position, as Barman records it before the copy.
        self.action = "issuing start backup command";
        let here = rt.block_on(pg.current_xlog_info())?;
        let in_recovery = here.file_name.is_none();
        let segsize = self.segment_size();
        let begin_wal = match &here.file_name {
            Some(n) => n.clone(),
            // A standby has no current file: the segment of its replay position
            // on the timeline of its last restartpoint.
            None => {
                let tli = rt.block_on(pg.checkpoint_timeline())?;
                WalFileName::segment(SegmentId::containing(here.location, tli, segsize))
            }
        };
        self.info.begin_xlog = Some(here.location);
        self.info.begin_wal = Some(begin_wal.clone());
        self.info.begin_offset = Some(segsize.offset(here.location));
        self.info.begin_time = Some(here.timestamp);
        self.info.status = "STARTED".into();
        self.save()?;
        self.ctx.out.info(format!(
            "Backup start at LSN: {} ({}, {:08X})",
            here.location,
            begin_wal,
            segsize.offset(here.location)
        ));

        // The copy.
        self.action = "copying files";
        self.ctx.out.info(format!("Starting backup copy via pg_basebackup protocol for {}", self.id));
        let spec = self.store_spec();
        let copy_start = Local::now();
        let copied = self.copy_with_retries(rt, &spec)?;
        let copy_secs = (Local::now() - copy_start).as_seconds_f64();
        self.info.copy_stats = Some(PyValue::Dict(vec![
            (PyValue::Str("copy_time".into()), PyValue::Float(copy_secs)),
            (PyValue::Str("total_time".into()), PyValue::Float(copy_secs)),
        ]));
        self.ctx.out.info(format!("Copy done (time: {})", human_duration(copy_secs as u64)));

        // Stop: the label overrides the start; the end is where the server ended the backup.
        if spec.tar {
            self.info.compression = Some(self.compression_name());
        }
        self.action = "reading the backup label";
        let label_text = spec.read_label()?;
        let start = label::parse(&label_text, segsize)?;
        self.info.backup_label = Some(label_text);
        self.info.timeline = Some(start.timeline);
        self.info.begin_xlog = Some(start.begin_xlog);
        self.info.begin_wal = Some(start.begin_wal);
        self.info.begin_offset = Some(start.begin_offset);
        Ok(Ended { end: copied.end, timeline: copied.end_timeline, time: None, in_recovery, copy_start })
    }

    fn segment_size(&self) -> crate::wal::SegmentSize {
        crate::wal::SegmentSize::new(self.info.xlog_segment_size).unwrap_or_default()
    }

    fn compression_name(&self) -> String {
        self.s.opts.backup_compression.map_or("none", |c| c.as_str()).to_string()
    }

    fn store_spec(&self) -> StoreSpec {
        let o = &self.s.opts;
        let algo = o.backup_compression.and_then(|c| Algorithm::from_name(c.as_str()));
        // pg_basebackup's default format is plain; Barman asks tar whenever compression is set.
        let tar = match o.backup_compression {
            None => false,
            Some(_) => o.backup_compression_format != Some(BackupCompressionFormat::Plain),
        };
        let server_side = o.backup_compression_location == Some(BackupCompressionLocation::Server);
        StoreSpec {
            backup_dir: self.backup_dir(),
            tar,
            server: algo.filter(|_| server_side),
            client: algo.filter(|_| !server_side).map(|algorithm| ClientCompression {
                algorithm,
                level: o.backup_compression_level.map(|l| l as i32),
                workers: o.backup_compression_workers.map(|w| w.max(0) as u32),
            }),
            tablespaces: self.info.tablespaces.iter().flatten().map(|t| (t.oid, t.location.clone())).collect(),
        }
    }

    fn base_backup_options(&self, spec: &StoreSpec) -> BaseBackupOptions {
        let o = &self.s.opts;
        let bw = match self.args.bwlimit {
            Some(0) => None,
            Some(n) => Some(n),
            None => o.bandwidth_limit.map(|b| b.0),
        };
        let mut detail = Vec::new();
        if spec.server.is_some() {
            if let Some(l) = o.backup_compression_level {
                detail.push(format!("level={l}"));
            }
            if let Some(w) = o.backup_compression_workers {
                detail.push(format!("workers={w}"));
            }
        }
        BaseBackupOptions {
            label: format!("Barman backup {} {}", self.s.name, self.id),
            fast_checkpoint: self.args.immediate_checkpoint.unwrap_or(o.immediate_checkpoint),
            manifest: true,
            max_rate_kb: bw.map(|b| u32::try_from(b).unwrap_or(u32::MAX)),
            compression: spec.server.map(|a| a.name().to_string()),
            compression_detail: (!detail.is_empty()).then(|| detail.join(",")),
            progress: self.show_progress(),
            tablespace_map: spec.wants_tablespace_map(),
        }
    }

    fn show_progress(&self) -> bool {
        !self.ctx.out.quiet && std::io::stderr().is_terminal()
    }

    /// The copy, retried as `basebackup_retry_times` / `--retry-times` say.
    fn copy_with_retries(
        &mut self,
        rt: &tokio::runtime::Runtime,
        spec: &StoreSpec,
    ) -> Result<crate::backup::copy::Copied, Failure> {
        let retries = self.args.retry_times.map_or(self.s.opts.basebackup_retry_times.max(0) as u32, |n| n);
        let sleep = self.args.retry_sleep.map_or(self.s.opts.basebackup_retry_sleep.max(0) as u64, u64::from);
        let opts = self.base_backup_options(spec);
        let raw = self.s.opts.streaming_conninfo.clone().or_else(|| self.s.opts.conninfo.clone());
        let raw = raw.ok_or_else(|| Failure("no streaming_conninfo".into()))?;
        let params = super::receive_wal::streaming_params(&raw)?;
        let app = self.s.opts.streaming_backup_name.clone().unwrap_or_else(|| "barman_streaming_backup".into());
        let mut attempt = 0;
        loop {
            spec.prepare()?;
            let progress_on = opts.progress;
            let mut last_draw = Instant::now();
            let mut draw = move |p: CopyProgress| {
                if progress_on && last_draw.elapsed() >= Duration::from_millis(200) {
                    last_draw = Instant::now();
                    eprint!("\r{}", progress_line(p));
                }
            };
            let r: Result<_, CopyFailure> = rt.block_on(async {
                let mut conn = ReplicationConnection::connect(&params, Some(&app))
                    .await
                    .map_err(|e| CopyFailure::Failed(e.to_string()))?;
                let r = tokio::select! {
                    r = copy(&mut conn, &opts, spec, &mut draw) => r.map_err(|e| CopyFailure::Failed(e.to_string())),
                    // A backup stopped so is FAILED, not left STARTED.
                    sig = interrupted() => Err(CopyFailure::Interrupted(format!("interrupted by {sig}"))),
                };
                if r.is_ok() {
                    conn.close().await;
                }
                r
            });
            if progress_on {
                // The last line says what arrived, as pg_basebackup's final report does.
                match &r {
                    Ok(c) => eprintln!("\r{}", progress_line(CopyProgress { done: c.bytes, total: Some(c.bytes) })),
                    Err(_) => eprintln!(),
                }
            }
            match r {
                Ok(c) => return Ok(c),
                Err(CopyFailure::Interrupted(why)) => return Err(Failure(why)),
                Err(CopyFailure::Failed(e)) if attempt < retries => {
                    attempt += 1;
                    tracing::error!(server = %self.s.name, "backup copy failed: {e}");
                    self.ctx.out.warning(format!("Failure executing a backup using pg_basebackup (attempt {attempt})"));
                    self.ctx.out.warning(format!(
                        "The files copied so far will be removed and the backup process will restart in {sleep} seconds"
                    ));
                    std::thread::sleep(Duration::from_secs(sleep));
                }
                Err(CopyFailure::Failed(e)) => {
                    return Err(Failure(format!(
                        "data transfer failure on directory '{}'\n{e}",
                        spec.data_dir().display()
                    )));
                }
            }
        }
    }

    /// Barman's first-backup purge: WAL older than the first backup's start is
    /// not needed by any backup (unless worm_mode keeps everything).
    fn purge_before_first_backup(&mut self) {
        let ids = backups::scan(self.layout);
        if ids.range(..self.id.clone()).next().is_some() {
            return;
        }
        self.ctx.out.info(format!("This is the first backup for server {}", self.s.name));
        if self.s.opts.worm_mode {
            self.ctx.out.info("'worm_mode' is enabled, skip purging of unused WAL files.");
            return;
        }
        let Some(begin) = self.info.begin_wal.clone() else { return };
        let protect = Protect { from: Some(begin.to_string()), ..Protect::default() };
        let hooks = Hooks::new(self.s, &self.ctx.cfg.file);
        match remove_wals(self.layout, &protect, Some(&hooks)) {
            Ok(removed) if !removed.is_empty() => {
                self.ctx.out.info("WAL segments preceding the current backup have been found:");
                for w in removed {
                    self.ctx.out.info(format!("\t{w} from server {} has been removed", self.s.name));
                }
            }
            Ok(_) => {}
            Err(e) => self.ctx.out.warning(format!("could not remove WAL files older than {begin}: {e}")),
        }
    }

    /// `--wait`: until `end_wal` is archived (or `--wait-timeout` passes), then check-backup.
    fn wait_for_end_wal(&mut self) {
        let Some(end) = self.info.end_wal.clone() else { return };
        super::switch_wal::wait_for_wal(self.ctx, self.s, Some(&end), self.args.wait_timeout.unwrap_or(0));
        wal_check::check_wals(&self.info, &self.layout.wals_dir).apply(&mut self.info);
        if self.info.status == "FAILED" {
            self.ctx.out.error(super::backups::marked_failed(&self.info));
        }
    }
}

enum CopyFailure {
    Failed(String),
    Interrupted(String),
}

pub(super) fn progress_line(p: CopyProgress) -> String {
    let done_kb = p.done / 1024;
    match p.total.filter(|t| *t > 0) {
        Some(t) => {
            let pct = (p.done.min(t) * 100) / t;
            format!("{done_kb}/{} kB ({pct}%)", t / 1024)
        }
        None => format!("{done_kb} kB"),
    }
}

/// Sum of the sizes of the files under `dir`, and of those not hard-linked
/// elsewhere (Barman's size and deduplicated_size).
fn dir_sizes(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut dedup = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let m = e.path().symlink_metadata()?;
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                total += m.len();
                if m.nlink() == 1 {
                    dedup += m.len();
                }
            }
        }
    }
    Ok((total, dedup))
}
