//! `backup_method = rsync | local-rsync`: a concurrent backup (`pg_backup_start` and
//! `pg_backup_stop` on one held session) whose files the copy engine pulls from the
//! PostgreSQL host — through `barman-agent` over SSH (block delta), SFTP without it, or
//! the agent beside us for local-rsync — reusing the previous backup's unchanged files.

use std::path::Path;
use std::sync::Arc;

use chrono::Local;

use super::{Ended, Failure, Run};
use crate::backup::label;
use crate::catalog::backup_info::BackupInfo;
use crate::catalog::backups;
use crate::catalog::durable;
use crate::catalog::pyliteral::PyValue;
use crate::config::types::{BackupMethod, ReuseBackup, human_duration};
use crate::postgres::PgConnection;
use crate::transport::blocks::{BlockIndex, blocks_path};
use crate::transport::copy::RateLimit;
use crate::transport::copy::pull::{Basis, Far, PullOptions, PullReport, Root, pull};
use crate::transport::ssh::Remote;
use crate::wal::{SegmentId, WalFileName};

/// PGDATA directories copied empty (Barman's exclusions, PostgreSQL's excludeDirContents).
const SKIP_DIRS: [&str; 11] = [
    "pg_log",
    "log",
    "pg_xlog",
    "pg_wal",
    "pg_dynshmem",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_stat_tmp",
    "pg_snapshots",
    "pg_subtrans",
];
/// Names left out anywhere (Barman's EXCLUDE_LIST).
const SKIP_NAMES: [&str; 7] = [
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "pg_internal.init",
    "postmaster.pid",
    "postmaster.opts",
    "recovery.conf",
    "standby.signal",
];

impl Run<'_> {
    /// The rsync methods' copy between `pg_backup_start` and `pg_backup_stop`.
    pub(super) fn copy_rsync(&mut self, rt: &tokio::runtime::Runtime, pg: &PgConnection) -> Result<Ended, Failure> {
        let o = &self.s.opts;
        let fast = self.args.immediate_checkpoint.unwrap_or(o.immediate_checkpoint);
        let segsize = self.segment_size();
        // The host first: a backup that cannot copy starts nothing on the server.
        self.action = "connecting to the PostgreSQL host";
        let remote = match o.backup_method {
            BackupMethod::LocalRsync => None,
            _ => {
                let cmd = o.ssh_command.clone().ok_or_else(|| Failure("no ssh_command".into()))?;
                Some(Remote::connect(&cmd, false)?)
            }
        };
        self.action = "issuing start backup command";
        let in_recovery = rt.block_on(pg.is_in_recovery())?;
        let label_text = format!("Barman backup {} {}", self.s.name, self.id);
        let start = rt.block_on(pg.backup_start(&label_text, fast))?;
        let tli = rt.block_on(pg.checkpoint_timeline())?;
        let begin_wal = WalFileName::segment(SegmentId::containing(start, tli, segsize));
        self.info.begin_xlog = Some(start);
        self.info.begin_wal = Some(begin_wal.clone());
        self.info.begin_offset = Some(segsize.offset(start));
        self.info.begin_time = Some(rt.block_on(pg.current_xlog_info())?.timestamp);
        self.info.timeline = Some(tli.0);
        self.info.status = "STARTED".into();
        self.save()?;
        self.ctx.out.info(format!("Backup start at LSN: {start} ({begin_wal}, {:08X})", segsize.offset(start)));

        self.action = "copying files";
        let local = o.backup_method == BackupMethod::LocalRsync;
        let jobs = self.args.jobs.unwrap_or(o.parallel_jobs.max(1) as usize).max(1);
        self.ctx.out.info(format!(
            "Starting backup copy via {} for {}{}",
            if local { "local rsync" } else { "rsync/SSH" },
            self.id,
            if jobs > 1 { format!(" ({jobs} jobs)") } else { String::new() }
        ));
        let copy_start = Local::now();
        let report = self.pull_with_retries(jobs, remote.as_ref())?;
        let copy_secs = (Local::now() - copy_start).as_seconds_f64();
        for v in &report.vanished {
            tracing::warn!(server = %self.s.name, "{v} vanished during the copy (dropped by PostgreSQL; WAL replay accounts for it)");
        }
        if !report.vanished.is_empty() {
            self.ctx.out.info(format!(
                "{} file(s) vanished during the copy (relations PostgreSQL dropped meanwhile)",
                report.vanished.len()
            ));
        }
        let f = |x: u64| PyValue::Int(x as i64);
        let key = |k: &str| PyValue::Str(k.into());
        self.info.copy_stats = Some(PyValue::Dict(vec![
            (key("copy_time"), PyValue::Float(copy_secs)),
            (key("total_time"), PyValue::Float(copy_secs)),
            (key("number_of_workers"), f(jobs as u64)),
            (key("analysis_time"), PyValue::Float(report.analysis_secs)),
            (key("transferred_bytes"), f(report.transferred)),
            (key("linked_bytes"), f(report.linked)),
            (key("copied_bytes"), f(report.copied)),
        ]));
        self.ctx.out.info(format!("Copy done (time: {})", human_duration(copy_secs as u64)));

        self.action = "issuing stop backup command";
        self.ctx.out.info("Asking PostgreSQL server to finalize the backup.");
        let stop = rt.block_on(pg.backup_stop())?;
        self.action = "writing the backup label";
        let data = self.backup_dir().join("data");
        durable::write_file(&data.join("backup_label"), stop.label.as_bytes(), 0o600)?;
        let start = label::parse(&stop.label, segsize)?;
        self.info.backup_label = Some(stop.label.clone());
        self.info.timeline = Some(start.timeline);
        self.info.begin_xlog = Some(start.begin_xlog);
        self.info.begin_wal = Some(start.begin_wal);
        self.info.begin_offset = Some(start.begin_offset);
        // Everything written is on disk before the backup can be called complete.
        let dir = self.backup_dir();
        durable::sync_filesystem(&dir).map_err(|e| Failure(format!("syncing {}: {e}", dir.display())))?;
        Ok(Ended { end: stop.lsn, timeline: stop.timeline, time: Some(stop.timestamp), in_recovery, copy_start })
    }

    /// The pull, retried as `basebackup_retry_times` / `--retry-times` say (each try
    /// starts again from an empty backup directory).
    fn pull_with_retries(&mut self, jobs: usize, remote: Option<&Remote>) -> Result<PullReport, Failure> {
        let o = &self.s.opts;
        let retries = self.args.retry_times.map_or(o.basebackup_retry_times.max(0) as u32, |n| n);
        let sleep = self.args.retry_sleep.map_or(o.basebackup_retry_sleep.max(0) as u64, u64::from);
        let mut attempt = 0;
        loop {
            match self.pull_once(jobs, remote) {
                Ok(r) => return Ok(r),
                Err(e) if attempt < retries => {
                    attempt += 1;
                    tracing::error!(server = %self.s.name, "backup copy failed: {e}");
                    self.ctx.out.warning(format!("Failure executing a backup using rsync (attempt {attempt})"));
                    self.ctx.out.warning(format!(
                        "The files copied so far will be removed and the backup process will restart in {sleep} seconds"
                    ));
                    std::thread::sleep(std::time::Duration::from_secs(sleep));
                }
                Err(e) => return Err(Failure(format!("data transfer failure: {e}"))),
            }
        }
    }

    fn pull_once(&mut self, jobs: usize, remote: Option<&Remote>) -> Result<PullReport, String> {
        let o = &self.s.opts;
        let dir = self.backup_dir();
        for sub in
            ["data".to_string()].into_iter().chain(self.info.tablespaces.iter().flatten().map(|t| t.oid.to_string()))
        {
            match std::fs::remove_dir_all(dir.join(&sub)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(format!("{}: {e}", dir.display())),
                _ => {}
            }
        }
        let kbps = match self.args.bwlimit {
            Some(0) => None,
            Some(n) => Some(n),
            None => o.bandwidth_limit.map(|b| b.0),
        };
        let global = kbps.map(|k| Arc::new(RateLimit::new(k * 1024)));
        let roots = self.roots(global);
        let reuse = self.args.reuse_backup.or(o.reuse_backup).unwrap_or(ReuseBackup::Off);
        let basis = match reuse {
            ReuseBackup::Off => None,
            ReuseBackup::Link | ReuseBackup::Copy => self.basis(reuse == ReuseBackup::Link),
        };
        if let Some(b) = &basis {
            tracing::info!(server = %self.s.name, "reusing {} ({})", b.dir.display(), if b.link { "link" } else { "copy" });
        }
        let opts = PullOptions { jobs, compress: o.network_compression };
        let hashes = blocks_path(&self.layout.meta_dir(), &self.id);
        durable::create_dir_all(&self.layout.meta_dir()).map_err(|e| e.to_string())?;
        let far = match remote {
            Some(r) => Far::Ssh(r),
            None => Far::Local,
        };
        let report = pull(&far, &roots, basis.as_ref(), &hashes, &opts);
        report.map_err(|e| e.to_string())
    }

    /// PGDATA into `data/`, each tablespace's `PG_<major>_*` into `<oid>/`, and the
    /// configuration files kept outside PGDATA into `data/`.
    fn roots(&self, global: Option<Arc<RateLimit>>) -> Vec<Root> {
        let dir = self.backup_dir();
        let pgdata = self.info.pgdata.clone().unwrap_or_default();
        let major = crate::postgres::major_version(self.info.version.unwrap_or(0));
        let limits = self.s.opts.tablespace_bandwidth_limit.clone().map(|t| t.0).unwrap_or_default();
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut skip = strings(&SKIP_DIRS);
        skip.push("pg_tblspc".into());
        let mut exclude = vec!["global/pg_control.tmp".to_string()];
        let mut roots = Vec::new();
        for t in self.info.tablespaces.iter().flatten() {
            // A tablespace inside PGDATA is copied as a tablespace, not twice.
            if let Some(rel) = t.location.strip_prefix(&format!("{pgdata}/")) {
                skip.push(rel.to_string());
            }
            let limit = match limits.iter().find(|(name, _)| *name == t.name) {
                Some((_, 0)) => None,
                Some((_, k)) => Some(Arc::new(RateLimit::new(k * 1024))),
                None => global.clone(),
            };
            let prefix = format!("PG_{major}_");
            roots.push(Root {
                label: t.oid.to_string(),
                src: t.location.clone(),
                dst: dir.join(t.oid.to_string()),
                skip: Vec::new(),
                skip_names: strings(&SKIP_NAMES),
                skip_prefix: vec!["pgsql_tmp".into()],
                temp_relations: true,
                exclude: Vec::new(),
                keep: Some(Box::new(move |top: &str| top.starts_with(&prefix))),
                limit,
            });
        }
        exclude.push("backup_label".into());
        roots.push(Root {
            label: "data".into(),
            src: pgdata.clone(),
            dst: dir.join("data"),
            skip,
            skip_names: strings(&SKIP_NAMES),
            skip_prefix: vec!["pgsql_tmp".into()],
            temp_relations: true,
            exclude,
            keep: None,
            limit: global.clone(),
        });
        for file in [&self.info.config_file, &self.info.hba_file, &self.info.ident_file].into_iter().flatten() {
            let p = Path::new(file);
            if p.starts_with(&pgdata) {
                continue;
            }
            let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else { continue };
            let name = name.to_string_lossy().into_owned();
            roots.push(Root {
                label: "data".into(),
                src: parent.display().to_string(),
                dst: dir.join("data"),
                skip: Vec::new(),
                skip_names: Vec::new(),
                skip_prefix: Vec::new(),
                temp_relations: false,
                exclude: Vec::new(),
                keep: Some(Box::new(move |top: &str| top == name)),
                limit: global.clone(),
            });
        }
        roots
    }

    /// The backup to reuse: the latest whose copy is complete and whose files are a plain tree.
    fn basis(&self, link: bool) -> Option<Basis> {
        let all = backups::scan(self.layout);
        let (id, info) = all.iter().rev().filter(|(id, _)| **id < self.id).find_map(|(id, path)| {
            let info = BackupInfo::read(path).ok()?;
            let usable = matches!(info.status.as_str(), "DONE" | "WAITING_FOR_WALS")
                && self.layout.base_dir.join(id).join("data").is_dir()
                && info.compression.is_none();
            usable.then(|| (id.clone(), info))
        })?;
        let begin = info.begin_time?;
        let hashes = match BlockIndex::open(&blocks_path(&self.layout.meta_dir(), &id)) {
            Ok(h) => h.map(Arc::new),
            Err(e) => {
                tracing::warn!(server = %self.s.name, "block hashes of backup {id} unreadable ({e}): changed files are sent whole");
                None
            }
        };
        Some(Basis {
            dir: self.layout.base_dir.join(&id),
            hashes,
            horizon_ns: begin.timestamp().saturating_mul(1_000_000_000),
            link,
        })
    }
}
