//! Recovery on this host. (a) Our `barman recover` of a plain and of a zstd backup against
//! `cp -a` + `sync` of the plain backup's data directory, Barman 3.17's `recover` of the same two
//! backups, and pgBackRest's `restore` (process-max=2) of its own backups of the same cluster,
//! interleaved, each timed up to a `sync` that follows it. (b) and (c), in `recover_pitr.rs`: a
//! point-in-time recovery that replays about 1 GiB of WAL through the restore_command, and the
//! restore_commands alone.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cluster_tests::pg::{PgCluster, conf_quote};
use cluster_tests::util::{self, as_pg_user, chown_to_pg_user, is_root, pg_os_user, unique_subdir, wait_until};

use crate::Ctx;
use crate::fixture::tree_bytes;
use crate::measure::{Sample, median, sync_all};
use crate::recover_pitr;
use crate::report::{Table, fmt_mib, fmt_ratio, fmt_secs, verdict};

/// The pgBackRest stanza.
pub const STANZA: &str = "bench";

/// Which of the two backups of each tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Ours and Barman's: plain (the default); pgBackRest: compress-type=none.
    Plain,
    /// Ours and Barman's: tar, `backup_compression = zstd`; pgBackRest: compress-type=zst.
    Zstd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    /// `cp -a` of the backup's data directory; with `Plain`, the 1.0× of every ratio.
    Cp(Kind),
    /// `tar --zstd -xf base.tar.zst`: the command-line tools alone on our zstd backup.
    Untar,
    /// Our `barman recover pg ID DEST --get-wal`.
    Ours(Kind),
    /// Barman 3.17's `barman recover pg ID DEST --get-wal` on the same Barman home.
    Barman(Kind),
    /// `pgbackrest restore --process-max=2` of its own backup.
    PgBackRest(Kind),
}

/// The 1.0× of the ratios of (a).
const REFERENCE: Tool = Tool::Cp(Kind::Plain);

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::Cp(Kind::Plain) => "reference: `cp -a` of the plain backup's data directory",
            Tool::Cp(Kind::Zstd) => "`cp -a` of the zstd backup's data directory (its stored bytes only)",
            Tool::Untar => "`tar --zstd -xf base.tar.zst` of our zstd backup (the CLI tools alone)",
            Tool::Ours(Kind::Plain) => "ours: `barman recover`, plain backup",
            Tool::Ours(Kind::Zstd) => "ours: `barman recover`, zstd backup (tar)",
            Tool::Barman(Kind::Plain) => "Barman 3.17 `barman recover`, the same plain backup",
            Tool::Barman(Kind::Zstd) => "Barman 3.17 `barman recover`, the same zstd backup",
            Tool::PgBackRest(Kind::Plain) => "pgBackRest `restore --process-max=2`, compress-type=none backup",
            Tool::PgBackRest(Kind::Zstd) => "pgBackRest `restore --process-max=2`, compress-type=zst backup",
        }
    }
}

const TOOLS: [Tool; 9] = [
    Tool::Cp(Kind::Plain),
    Tool::Ours(Kind::Plain),
    Tool::Barman(Kind::Plain),
    Tool::PgBackRest(Kind::Plain),
    Tool::Cp(Kind::Zstd),
    Tool::Untar,
    Tool::Ours(Kind::Zstd),
    Tool::Barman(Kind::Zstd),
    Tool::PgBackRest(Kind::Zstd),
];

/// One timed restore: the command, then the `sync` after it.
#[derive(Debug, Clone, Copy)]
struct Run {
    sample: Sample,
    sync: Duration,
    restored_bytes: u64,
}

impl Run {
    fn total(&self) -> f64 {
        (self.sample.wall + self.sync).as_secs_f64()
    }
}

pub fn run(ctx: &Ctx) -> Result<Vec<Table>> {
    let pgbackrest = util::run(Command::new("pgbackrest").arg("version"), "pgbackrest version")
        .context("pgBackRest is needed for the recover benchmark (Debian: apt-get install -y pgbackrest)")?;
    let base = unique_subdir(&ctx.scratch, "recover")?;
    // Barman (ours and 3.17) runs as the PostgreSQL OS user here, which writes its log there.
    chown_to_pg_user(&base)?;
    // The WAL of the point-in-time recovery is written sooner; its records are the same.
    let mut pg = crate::fixture::backup_source(&ctx.scratch, &[("synchronous_commit", "off")])?;
    let result = measure(ctx, &mut pg, &base, pgbackrest.trim());
    if pg.is_running() && pg.stop().is_ok() {
        let _ = fs::remove_dir_all(pg.socket_dir());
    }
    let _ = fs::remove_dir_all(&base);
    result
}

fn measure(ctx: &Ctx, pg: &mut PgCluster, base: &Path, pgbackrest_version: &str) -> Result<Vec<Table>> {
    let (scale, reps) = (ctx.counts.recover_scale, ctx.counts.recover_reps);
    progress!("recover: pgbench -i -s {scale} ...");
    pg.pgbench_init(scale)?;
    let bench = Bench::new(ctx, base, pg)?;
    util::run(&mut bench.pgbackrest(&["stanza-create"])?, "pgbackrest stanza-create")?;
    // The WAL of the load is in neither archive: both start with the switch below.
    let archive = format!(
        "cp %p {}/%f && pgbackrest --config={} --stanza={STANZA} archive-push %p",
        bench.server.join("incoming").display(),
        bench.pgbackrest_config.display()
    );
    pg.set_conf("archive_command", &conf_quote(&archive))?;
    pg.switch_wal()?;
    let cluster_bytes: u64 = pg.psql("SELECT sum(pg_database_size(oid))::bigint FROM pg_database")?.parse()?;

    // The two backups the point-in-time recoveries start from are taken last, pgBackRest's
    // after ours: its recovery has, if anything, less WAL to replay.
    progress!("recover: the four backups ...");
    let ours_zstd = bench.ours_backup(pg, "backup_compression = zstd\nbackup_compression_format = tar\n")?;
    let pgbr_zst = bench.pgbackrest_backup(pg, "zst")?;
    let ours_plain = bench.ours_backup(pg, "")?;
    let pgbr_none = bench.pgbackrest_backup(pg, "none")?;
    bench.settle(pg)?;
    let backups = Backups { ours_plain, ours_zstd, pgbr_none, pgbr_zst };

    let cold = is_root() && drop_caches();
    let mut runs: Vec<Vec<Run>> = TOOLS.iter().map(|_| Vec::new()).collect();
    for rep in 0..reps {
        // Each repetition starts elsewhere in the list, and every other one goes backwards.
        let offset = rep * TOOLS.len() / reps.max(1);
        let mut order: Vec<usize> = (0..TOOLS.len()).map(|k| (k + offset) % TOOLS.len()).collect();
        if rep % 2 == 1 {
            order.reverse();
        }
        for i in order {
            progress!("recover: {} (run {}) ...", TOOLS[i].label(), rep + 1);
            runs[i].push(bench.restore(&backups, TOOLS[i], cold)?);
        }
    }
    let stored: Vec<u64> = TOOLS.iter().map(|t| tree_bytes(&bench.stored_dir(&backups, *t))).collect();
    let mut tables = vec![restore_table(&runs, &stored, scale, cluster_bytes, reps, cold, pgbackrest_version)];
    tables.extend(recover_pitr::measure(&bench, pg, &backups, cold)?);
    Ok(tables)
}

/// The backups every run restores: our ids and pgBackRest's labels.
pub struct Backups {
    pub ours_plain: String,
    pub ours_zstd: String,
    pub pgbr_none: String,
    pub pgbr_zst: String,
}

/// The Barman home and the pgBackRest repository shared by every run.
pub struct Bench<'a> {
    pub ctx: &'a Ctx,
    pub base: PathBuf,
    /// `<barman_home>/pg`.
    pub server: PathBuf,
    pub config: PathBuf,
    pub pgbackrest_config: PathBuf,
    pub pgbackrest_repo: PathBuf,
    /// Where each run restores to, removed after it.
    pub runs: PathBuf,
}

impl<'a> Bench<'a> {
    fn new(ctx: &'a Ctx, base: &Path, pg: &PgCluster) -> Result<Bench<'a>> {
        let server = base.join("home").join("pg");
        let b = Bench {
            ctx,
            base: base.to_path_buf(),
            config: base.join("barman.conf"),
            pgbackrest_config: base.join("pgbackrest.conf"),
            pgbackrest_repo: base.join("pgbackrest-repo"),
            runs: base.join("runs"),
            server,
        };
        // Everything below belongs to the PostgreSQL OS user: Barman runs as that user (its
        // `barman_user`), so that the recovered cluster's `get-wal` can read the archive.
        for d in [
            base.join("home"),
            b.server.clone(),
            b.server.join("incoming"),
            b.runs.clone(),
            b.pgbackrest_repo.clone(),
            base.join("pgbackrest-lock"),
            base.join("pgbackrest-log"),
        ] {
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            chown_to_pg_user(&d)?;
        }
        b.write_barman_config(pg, "")?;
        b.write_pgbackrest_config(pg)?;
        Ok(b)
    }

    fn write_barman_config(&self, pg: &PgCluster, extra: &str) -> Result<()> {
        let ci = pg.conninfo();
        let text = format!(
            "[barman]\nbarman_home = {}\nbarman_user = {}\nlog_file = {}\n\n\
             [pg]\ndescription = bench\nconninfo = {ci}\nstreaming_conninfo = {ci}\nbackup_method = postgres\n\
             archiver = on\nimmediate_checkpoint = true\n{extra}",
            self.base.join("home").display(),
            pg_os_user()?.name,
            self.base.join("barman.log").display(),
        );
        fs::write(&self.config, text).with_context(|| format!("writing {}", self.config.display()))
    }

    /// Archive compression none (the WAL both recoveries fetch is stored as is, as in our
    /// archive); each backup names its own compress-type.
    fn write_pgbackrest_config(&self, pg: &PgCluster) -> Result<()> {
        let text = format!(
            "[global]\nrepo1-path={}\nrepo1-retention-full=9999999\nlock-path={}\nlog-path={}\n\
             log-level-console=off\nlog-level-stderr=warn\nlog-level-file=off\nstart-fast=y\ncompress-type=none\n\n\
             [{STANZA}]\npg1-path={}\npg1-port={}\npg1-socket-path={}\npg1-user=postgres\n",
            self.pgbackrest_repo.display(),
            self.base.join("pgbackrest-lock").display(),
            self.base.join("pgbackrest-log").display(),
            pg.data_dir().display(),
            pg.port(),
            pg.socket_dir().display(),
        );
        fs::write(&self.pgbackrest_config, text)
            .with_context(|| format!("writing {}", self.pgbackrest_config.display()))
    }

    /// Our `barman -c CONFIG ARGS`, as the PostgreSQL OS user.
    pub fn barman(&self, barman: &Path, args: &[&str]) -> Result<Command> {
        let mut cmd = Command::new(barman);
        cmd.arg("-c").arg(&self.config).args(args).stdin(Stdio::null());
        as_pg_user(&mut cmd)?;
        Ok(cmd)
    }

    pub fn pgbackrest(&self, args: &[&str]) -> Result<Command> {
        let mut cmd = Command::new("pgbackrest");
        cmd.arg(format!("--config={}", self.pgbackrest_config.display()))
            .arg(format!("--stanza={STANZA}"))
            .args(args)
            .stdin(Stdio::null());
        as_pg_user(&mut cmd)?;
        Ok(cmd)
    }

    pub fn archive_wal(&self) -> Result<()> {
        util::run(&mut self.barman(&self.ctx.ours.barman, &["archive-wal", "pg"])?, "barman archive-wal")?;
        Ok(())
    }

    /// PostgreSQL has archived every finished segment (into both archives), our archive-wal
    /// has filed them, a checkpoint, and no dirty page is left for the kernel.
    pub fn settle(&self, pg: &PgCluster) -> Result<()> {
        let status = pg.data_dir().join("pg_wal").join("archive_status");
        let pending = || {
            fs::read_dir(&status)
                .map(|rd| {
                    rd.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().ends_with(".ready")).count()
                })
                .unwrap_or(0)
        };
        wait_until(Duration::from_secs(900), "PostgreSQL's archiver to catch up", || pending() == 0)?;
        self.archive_wal()?;
        pg.psql("CHECKPOINT")?;
        sync_all();
        Ok(())
    }

    /// `barman backup pg` with `extra` in the configuration, untimed: the new backup's id.
    fn ours_backup(&self, pg: &PgCluster, extra: &str) -> Result<String> {
        self.settle(pg)?;
        // Backup ids are local times to the second.
        std::thread::sleep(Duration::from_millis(1100));
        let before = dir_names(&self.server.join("base"));
        self.write_barman_config(pg, extra)?;
        let taken = util::run(&mut self.barman(&self.ctx.ours.barman, &["backup", "pg", "--wait"])?, "barman backup");
        self.write_barman_config(pg, "")?;
        taken?;
        let new: Vec<String> =
            dir_names(&self.server.join("base")).into_iter().filter(|id| !before.contains(id)).collect();
        let [id] = new.as_slice() else {
            bail!("barman backup with {extra:?}: expected one new backup, found {new:?}")
        };
        let info = fs::read_to_string(self.info_path(id))?;
        if !info.lines().any(|l| l == "status=DONE") {
            bail!("barman backup with {extra:?}: backup {id} is not DONE:\n{info}");
        }
        Ok(id.clone())
    }

    pub fn info_path(&self, id: &str) -> PathBuf {
        self.server.join("meta").join(format!("{id}-backup.info"))
    }

    /// A full pgBackRest backup with `compress` (process-max=2), untimed: its label.
    fn pgbackrest_backup(&self, pg: &PgCluster, compress: &str) -> Result<String> {
        self.settle(pg)?;
        let sets = self.pgbackrest_repo.join("backup").join(STANZA);
        let before = dir_names(&sets);
        let compress_type = format!("--compress-type={compress}");
        let mut cmd = self.pgbackrest(&["--type=full", &compress_type, "--process-max=2", "backup"])?;
        util::run(&mut cmd, "pgbackrest backup")?;
        let new: Vec<String> =
            dir_names(&sets).into_iter().filter(|l| l.ends_with('F') && !before.contains(l)).collect();
        let [label] = new.as_slice() else { bail!("pgbackrest backup: expected one new full set, found {new:?}") };
        Ok(label.clone())
    }

    /// What a restore of `tool` reads: the backup's directory.
    fn stored_dir(&self, b: &Backups, tool: Tool) -> PathBuf {
        let ours = |id: &str| self.server.join("base").join(id);
        let pgbr = |label: &str| self.pgbackrest_repo.join("backup").join(STANZA).join(label);
        match tool {
            Tool::Cp(Kind::Plain) | Tool::Ours(Kind::Plain) | Tool::Barman(Kind::Plain) => ours(&b.ours_plain),
            Tool::Cp(Kind::Zstd) | Tool::Untar | Tool::Ours(Kind::Zstd) | Tool::Barman(Kind::Zstd) => {
                ours(&b.ours_zstd)
            }
            Tool::PgBackRest(Kind::Plain) => pgbr(&b.pgbr_none),
            Tool::PgBackRest(Kind::Zstd) => pgbr(&b.pgbr_zst),
        }
    }

    /// A fresh `runs/runN/` owned by the PostgreSQL OS user; the data directory goes in `data`.
    pub fn run_dir(&self) -> Result<PathBuf> {
        let dir = unique_subdir(&self.runs, "run")?;
        chown_to_pg_user(&dir)?;
        Ok(dir)
    }

    /// An empty data directory made beforehand, untimed, for the tools that want one.
    pub fn empty_dest(dest: &Path) -> Result<()> {
        fs::create_dir(dest).with_context(|| format!("creating {}", dest.display()))?;
        fs::set_permissions(dest, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 0700 {}", dest.display()))?;
        chown_to_pg_user(dest)
    }

    /// One timed restore of (a) into a new directory, then a timed `sync`; the directory is
    /// removed afterwards, untimed.
    fn restore(&self, b: &Backups, tool: Tool, cold: bool) -> Result<Run> {
        let dir = self.run_dir()?;
        let dest = dir.join("data");
        let dest_s = dest.display().to_string();
        let stored = self.stored_dir(b, tool);
        let mut cmd = match tool {
            Tool::Cp(_) => {
                let mut c = Command::new("cp");
                c.arg("-a").arg(stored.join("data")).arg(&dest).stdin(Stdio::null());
                as_pg_user(&mut c)?;
                c
            }
            Tool::Untar => {
                Self::empty_dest(&dest)?;
                let mut c = Command::new("tar");
                c.args(["--zstd", "-xf"]).arg(stored.join("data").join("base.tar.zst")).arg("-C").arg(&dest);
                c.stdin(Stdio::null());
                as_pg_user(&mut c)?;
                c
            }
            Tool::Ours(_) | Tool::Barman(_) => {
                let id = stored.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let barman =
                    if matches!(tool, Tool::Ours(_)) { &self.ctx.ours.barman } else { &self.ctx.reference.barman };
                self.barman(barman, &["recover", "pg", &id, &dest_s, "--get-wal"])?
            }
            Tool::PgBackRest(_) => {
                Self::empty_dest(&dest)?;
                let label = stored.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                self.pgbackrest(&[
                    &format!("--pg1-path={dest_s}"),
                    &format!("--set={label}"),
                    "--process-max=2",
                    "restore",
                ])?
            }
        };
        if cold {
            drop_caches();
        } else {
            sync_all();
        }
        let sample = self.ctx.runner.timed_quiet(&mut cmd, tool.label())?;
        let started_sync = Instant::now();
        sync_all();
        let sync = started_sync.elapsed();
        // A copy of the zstd backup's directory holds the archive, not a data directory.
        if tool != Tool::Cp(Kind::Zstd) && !dest.join("PG_VERSION").is_file() {
            bail!("{}: no PG_VERSION in {} afterwards", tool.label(), dest.display());
        }
        let restored_bytes = tree_bytes(&dest);
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        sync_all();
        Ok(Run { sample, sync, restored_bytes })
    }
}

/// Names of the entries of `dir` (none if it does not exist).
pub fn dir_names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect()).unwrap_or_default()
}

/// `X/Y` as a byte position.
pub fn parse_lsn(s: &str) -> Result<u64> {
    let (hi, lo) = s.trim().split_once('/').with_context(|| format!("{s:?} is not an LSN"))?;
    let hi = u64::from_str_radix(hi, 16).with_context(|| format!("{s:?} is not an LSN"))?;
    let lo = u64::from_str_radix(lo, 16).with_context(|| format!("{s:?} is not an LSN"))?;
    Ok((hi << 32) | lo)
}

/// `sync`, then the kernel drops its clean page cache, dentries and inodes (root only).
pub fn drop_caches() -> bool {
    sync_all();
    fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn restore_table(
    runs: &[Vec<Run>],
    stored: &[u64],
    scale: u32,
    cluster_bytes: u64,
    reps: usize,
    cold: bool,
    pgbackrest_version: &str,
) -> Table {
    let mb = |b: f64| b / 1e6;
    let fmt_mb = |b: f64| if mb(b) >= 100.0 { format!("{:.0}", mb(b)) } else { format!("{:.1}", mb(b)) };
    let cache = if cold { "cold cache" } else { "warm cache" };
    let mut t = Table::new(
        &format!(
            "Recovery of a {:.0} MB cluster (`pgbench -i -s {scale}`) into an empty directory, each followed by \
             `sync`, {cache} (median of {reps} runs)",
            mb(cluster_bytes as f64)
        ),
        &[
            "variant",
            "stored MB",
            "restored MB",
            "median s (incl. sync)",
            "min–max s",
            "× `cp -a` + sync",
            "of which sync s",
            "CPU s",
            "peak RSS (MiB)",
        ],
    );
    let totals = |i: usize| runs[i].iter().map(Run::total).collect::<Vec<_>>();
    let reference = TOOLS.iter().position(|t| *t == REFERENCE).unwrap_or(0);
    let ref_secs = median(totals(reference));
    let ratio_of = |tool: Tool| TOOLS.iter().position(|t| *t == tool).map(|i| median(totals(i)) / ref_secs);
    for (i, tool) in TOOLS.iter().enumerate() {
        let secs = totals(i);
        let (lo, hi) = secs.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        let wall = median(secs);
        t.row(vec![
            tool.label().to_string(),
            fmt_mb(stored[i] as f64),
            fmt_mb(median(runs[i].iter().map(|r| r.restored_bytes as f64).collect())),
            fmt_secs(wall),
            format!("{}–{}", fmt_secs(lo), fmt_secs(hi)),
            fmt_ratio(wall / ref_secs),
            fmt_secs(median(runs[i].iter().map(|r| r.sync.as_secs_f64()).collect())),
            fmt_secs(median(runs[i].iter().map(|r| r.sample.cpu.as_secs_f64()).collect())),
            fmt_mib(runs[i].iter().map(|r| r.sample.maxrss_kib).max().unwrap_or(0) as f64 / 1024.0),
        ]);
    }
    for (kind, goal, what) in [(Kind::Plain, 1.1, "an uncompressed (plain)"), (Kind::Zstd, 1.3, "a zstd")] {
        let ours = ratio_of(Tool::Ours(kind)).unwrap_or(f64::NAN);
        t.note(format!(
            "Goal ≤ {goal}× `cp -a` + sync for {what} backup — ours {} → {}.",
            fmt_ratio(ours),
            verdict(ours <= goal)
        ));
    }
    t.note(format!(
        "Every run restores into a directory that does not exist yet (pgBackRest and `tar -C` get an empty one, \
         made untimed) and is timed from spawn to reaping (wait4); the `sync` after it is timed in the same span \
         (its column shows its share). Before each run: {}. The variants are interleaved, each repetition in \
         another order; everything runs as the PostgreSQL OS user. MB are 10⁶ bytes; restored MB is what the \
         destination holds afterwards.",
        if cold {
            "`sync`, then `echo 3 > /proc/sys/vm/drop_caches` (cold: the backup is read from disk)"
        } else {
            "`sync` only (not root: the page cache cannot be dropped, so the backup may be read from memory)"
        }
    ));
    t.note(
        "Ours and Barman 3.17: `barman -c CONFIG recover pg ID DEST --get-wal`, the same Barman home and \
         configuration (`barman_user` = the PostgreSQL OS user): `--get-wal` writes a restore_command instead of \
         copying WAL, so the work is the data directory alone, as for `cp -a`. Barman 3.17 copies a plain backup \
         with rsync and unpacks a compressed one with `tar --use-compress-program zstd`. CPU and peak RSS are the \
         process and the children it reaped (wait4 reports the largest RSS, not the sum).",
    );
    t.note(format!(
        "{pgbackrest_version}: `pgbackrest --stanza=bench --pg1-path=DEST --set=LABEL --process-max=2 restore` \
         of its own full backups of the same cluster (taken with process-max=2, compress-type none and zst at \
         its default level 3), in a repository on the same disk."
    ));
    t
}
