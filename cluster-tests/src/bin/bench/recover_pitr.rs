//! Point-in-time recovery, part of the recover benchmark (see `recover.rs` for the cluster, the
//! archives and the backups). (b) WAL written after the backups, replayed by a recovery to an
//! LSN through the restore_command (ours: `get-wal`; pgBackRest: `archive-get`), timed from the
//! restore's start until PostgreSQL has promoted. (c) The two restore_commands alone, on
//! segments of the same range, against `cp`.

use std::fs;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cluster_tests::pg::{PgCluster, conf_quote};
use cluster_tests::util::{self, as_pg_user, is_root, wait_until};

use crate::fixture::SEGMENT_SIZE;
use crate::measure::{Sample, median, ms, sync_all};
use crate::recover::{Backups, Bench, STANZA, dir_names, drop_caches, parse_lsn};
use crate::report::{Table, fmt_mib, fmt_ms, fmt_ratio, fmt_secs, verdict};

/// One point-in-time recovery: the restore command, then until PostgreSQL has promoted.
#[derive(Debug, Clone, Copy)]
struct Pitr {
    restore: Sample,
    /// From the restore's spawn until `pg_ctl start -w` returned (consistent, read-only).
    started: Duration,
    total: Duration,
    /// The replay as PostgreSQL's log reports it ("redo done at ... elapsed: N s").
    redo: f64,
    /// Segments the restore_command delivered ("restored log file" lines).
    segments: usize,
}

const PITR_LABELS: [&str; 2] = [
    "ours: `barman recover --get-wal --target-lsn`, restore_command `barman get-wal`",
    "pgBackRest `restore --process-max=2 --type=lsn`, restore_command `pgbackrest archive-get`",
];

/// A restore_command run by hand, as PostgreSQL runs it: `sh -c` with %f and %p replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetcher {
    /// `cp` of our stored segment: the 1.0×.
    Cp,
    /// `barman -c CONFIG get-wal -P pg %f > %p`.
    GetWal,
    /// `pgbackrest --config=CONF --stanza=bench archive-get %f "%p"`.
    ArchiveGet,
}

const FETCHERS: [Fetcher; 3] = [Fetcher::Cp, Fetcher::GetWal, Fetcher::ArchiveGet];

impl Fetcher {
    fn label(self) -> &'static str {
        match self {
            Fetcher::Cp => "reference: `cp` of our stored segment",
            Fetcher::GetWal => "ours: `barman -c CONFIG get-wal -P pg %f > %p`",
            Fetcher::ArchiveGet => "pgBackRest: `pgbackrest --config=CONF --stanza=bench archive-get %f \"%p\"`",
        }
    }
}

/// (b) and (c) on the cluster and backups of the recover benchmark; the cluster is stopped
/// once its WAL is archived.
pub fn measure(bench: &Bench<'_>, pg: &mut PgCluster, backups: &Backups, cold: bool) -> Result<Vec<Table>> {
    let mut tables = Vec::new();
    // (b) WAL after the backups, into both archives; then the source stops.
    let want = bench.ctx.counts.pitr_wal_mib << 20;
    let start = parse_lsn(&pg.current_lsn()?)?;
    let mut rounds = 0;
    while parse_lsn(&pg.current_lsn()?)? - start < want {
        rounds += 1;
        if rounds > 200 {
            bail!("pgbench wrote less than {} MiB of WAL in 200 rounds", bench.ctx.counts.pitr_wal_mib);
        }
        progress!(
            "recover: pgbench -c 2 -j 2 -T 5 for the WAL to replay ({} of {} MiB) ...",
            (parse_lsn(&pg.current_lsn()?)? - start) >> 20,
            bench.ctx.counts.pitr_wal_mib
        );
        pg.pgbench(&["-n", "-c", "2", "-j", "2", "-T", "5"])?;
    }
    let target = pg.current_lsn()?;
    pg.switch_wal()?;
    bench.settle(pg)?;
    pg.stop()?;
    // The shutdown checkpoint may have archived one more segment: filed now, untimed.
    bench.archive_wal()?;
    sync_all();

    let pitr_reps = bench.ctx.counts.pitr_reps;
    let mut pitr: [Vec<Pitr>; 2] = [Vec::new(), Vec::new()];
    for rep in 0..pitr_reps {
        let order = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            progress!("recover: point-in-time recovery, {} (run {}) ...", PITR_LABELS[i], rep + 1);
            pitr[i].push(bench.pitr(backups, i == 0, &target, cold)?);
        }
    }
    let target_lsn = parse_lsn(&target)?;
    let replayed = [
        target_lsn.saturating_sub(bench.ours_begin_lsn(&backups.ours_plain)?),
        target_lsn.saturating_sub(bench.pgbackrest_begin_lsn(&backups.pgbr_none)?),
    ];
    tables.push(pitr_table(&pitr, replayed, &target, pitr_reps, cold));

    // (c) The two restore_commands alone, on segments of the range both recoveries fetched.
    let names = bench.common_segments(bench.ctx.counts.restore_command_calls)?;
    let cold_calls = is_root() && drop_caches();
    let mut calls: Vec<Vec<Sample>> = FETCHERS.iter().map(|_| Vec::new()).collect();
    progress!("recover: the restore_commands alone, {} segments each ...", names.len());
    for (k, name) in names.iter().enumerate() {
        // Each segment is read once per fetcher; the first one alternates.
        let mut order: Vec<usize> = (0..FETCHERS.len()).collect();
        order.rotate_left(k % FETCHERS.len());
        for i in order {
            calls[i].push(bench.fetch(FETCHERS[i], name)?);
        }
    }
    tables.push(fetch_table(&calls, cold_calls));
    Ok(tables)
}

impl Bench<'_> {
    /// One point-in-time recovery to `target`: ours (`get-wal`) or pgBackRest (`archive-get`),
    /// timed from the restore's spawn until `pg_is_in_recovery()` is false.
    fn pitr(&self, b: &Backups, ours: bool, target: &str, cold: bool) -> Result<Pitr> {
        let dir = self.run_dir()?;
        let dest = dir.join("data");
        let dest_s = dest.display().to_string();
        let mut cmd = if ours {
            let args = [
                "recover",
                "pg",
                &b.ours_plain,
                &dest_s,
                "--get-wal",
                "--target-lsn",
                target,
                "--target-action",
                "promote",
            ];
            self.barman(&self.ctx.ours.barman, &args)?
        } else {
            Self::empty_dest(&dest)?;
            self.pgbackrest(&[
                &format!("--pg1-path={dest_s}"),
                &format!("--set={}", b.pgbr_none),
                "--process-max=2",
                "--type=lsn",
                &format!("--target={target}"),
                "--target-action=promote",
                "restore",
            ])?
        };
        if cold {
            drop_caches();
        } else {
            sync_all();
        }
        let started = Instant::now();
        let restore = self.ctx.runner.timed_quiet(&mut cmd, PITR_LABELS[usize::from(!ours)])?;
        let auto = dest.join("postgresql.auto.conf");
        let settings = fs::read_to_string(&auto).with_context(|| format!("reading {}", auto.display()))?;
        if ours {
            // The generated command names `barman` in PATH with its default configuration:
            // the same command, naming our binary and configuration, is appended.
            if !settings.contains("restore_command = 'barman get-wal -P pg %f > %p'") {
                bail!("our recover wrote no get-wal restore_command:\n{settings}");
            }
            let command =
                format!("{} -c {} get-wal -P pg %f > %p", self.ctx.ours.barman.display(), self.config.display());
            let mut f = fs::OpenOptions::new().append(true).open(&auto)?;
            writeln!(f, "restore_command = {}", conf_quote(&command))?;
        } else if !settings.contains(&format!("--config={}", self.pgbackrest_config.display())) {
            bail!("pgBackRest's restore_command does not name its configuration:\n{settings}");
        }
        // The recovered cluster never archives: it would write into both archives.
        let mut pg = PgCluster::adopt(&dir, &[], "archive_mode = off")?;
        let started_pg = started.elapsed();
        wait_until(Duration::from_secs(3600), "the end of the point-in-time recovery", || {
            pg.psql("SELECT pg_is_in_recovery()").is_ok_and(|v| v == "f")
        })
        .with_context(|| format!("PostgreSQL log tail:\n{}", util::tail(&pg.log(), 30)))?;
        let total = started.elapsed();
        let log = pg.log();
        if !log.contains("recovery stopping after WAL location (LSN)") {
            bail!("the recovery did not stop at the target LSN {target}; log tail:\n{}", util::tail(&log, 30));
        }
        let redo = log
            .lines()
            .find(|l| l.contains("redo done at"))
            .and_then(|l| l.split("elapsed: ").nth(1)?.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        pg.stop()?;
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        sync_all();
        let segments = log.lines().filter(|l| l.contains("restored log file")).count();
        Ok(Pitr { restore, started: started_pg, total, redo, segments })
    }

    /// Up to `n` segments archived by both, in WAL order, from the middle of the archive (most
    /// of which is the WAL the point-in-time recoveries fetched).
    fn common_segments(&self, n: usize) -> Result<Vec<String>> {
        let archive = self.pgbackrest_repo.join("archive").join(STANZA);
        let in_pgbackrest = |name: &str| {
            let dir = dir_names(&archive).into_iter().map(|id| archive.join(id).join(&name[..16])).find(|d| d.is_dir());
            dir.is_some_and(|d| dir_names(&d).iter().any(|f| f.starts_with(&format!("{name}-"))))
        };
        let mut names: Vec<String> = dir_names(&self.server.join("wals"))
            .into_iter()
            .flat_map(|d| dir_names(&self.server.join("wals").join(d)))
            .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect();
        names.sort();
        let names: Vec<String> = names.into_iter().filter(|n| in_pgbackrest(n)).collect();
        let skip = names.len().saturating_sub(n) / 2;
        Ok(names.into_iter().skip(skip).take(n).collect())
    }

    /// One restore_command call by hand (see [`Fetcher`]) into a file under runs/, timed.
    fn fetch(&self, f: Fetcher, name: &str) -> Result<Sample> {
        let out = self.runs.join("fetched");
        let _ = fs::remove_file(&out);
        let stored = self.server.join("wals").join(&name[..16]).join(name);
        let command = match f {
            Fetcher::Cp => format!("cp {} {}", stored.display(), out.display()),
            Fetcher::GetWal => format!(
                "{} -c {} get-wal -P pg {name} > {}",
                self.ctx.ours.barman.display(),
                self.config.display(),
                out.display()
            ),
            Fetcher::ArchiveGet => format!(
                "pgbackrest --config={} --stanza={STANZA} archive-get {name} \"{}\"",
                self.pgbackrest_config.display(),
                out.display()
            ),
        };
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(&command).stdin(Stdio::null());
        as_pg_user(&mut cmd)?;
        let sample = self.ctx.runner.timed_quiet(&mut cmd, f.label())?;
        let len = fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        if len != SEGMENT_SIZE as u64 {
            bail!("{}: {name} fetched as {len} bytes", f.label());
        }
        fs::remove_file(&out).with_context(|| format!("removing {}", out.display()))?;
        Ok(sample)
    }

    /// `begin_xlog` of our backup.
    fn ours_begin_lsn(&self, id: &str) -> Result<u64> {
        let info = fs::read_to_string(self.info_path(id))?;
        let v = info.lines().find_map(|l| l.strip_prefix("begin_xlog=")).context("begin_xlog in backup.info")?;
        parse_lsn(v)
    }

    /// `backup-lsn-start` of pgBackRest's backup.manifest.
    fn pgbackrest_begin_lsn(&self, label: &str) -> Result<u64> {
        let path = self.pgbackrest_repo.join("backup").join(STANZA).join(label).join("backup.manifest");
        let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix("backup-lsn-start="))
            .with_context(|| format!("backup-lsn-start in {}", path.display()))?;
        parse_lsn(v.trim_matches('"'))
    }
}

fn pitr_table(runs: &[Vec<Pitr>; 2], replayed: [u64; 2], target: &str, reps: usize, cold: bool) -> Table {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let mut t = Table::new(
        &format!(
            "Point-in-time recovery to LSN {target}, about {:.0} MiB of WAL replayed through the restore_command, \
             from the restore's start until PostgreSQL has promoted, {} (median of {reps} runs)",
            mib(replayed[0]),
            if cold { "cold cache" } else { "warm cache" }
        ),
        &[
            "variant",
            "WAL from backup start to target (MiB)",
            "segments restored",
            "restore s",
            "→ `pg_ctl start -w` returned s",
            "→ promoted s",
            "of which redo (PostgreSQL's log) s",
            "total s",
            "min–max total s",
            "× pgBackRest",
            "peak RSS of the restore (MiB)",
        ],
    );
    let totals = |i: usize| runs[i].iter().map(|r| r.total.as_secs_f64()).collect::<Vec<_>>();
    let ref_secs = median(totals(1));
    for (i, label) in PITR_LABELS.iter().enumerate() {
        let secs = totals(i);
        let (lo, hi) = secs.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        let restore = median(runs[i].iter().map(|r| r.restore.wall.as_secs_f64()).collect());
        let start = median(runs[i].iter().map(|r| r.started.saturating_sub(r.restore.wall).as_secs_f64()).collect());
        let after = median(runs[i].iter().map(|r| r.total.saturating_sub(r.started).as_secs_f64()).collect());
        t.row(vec![
            label.to_string(),
            format!("{:.0}", mib(replayed[i])),
            format!("{:.0}", median(runs[i].iter().map(|r| r.segments as f64).collect())),
            fmt_secs(restore),
            fmt_secs(start),
            fmt_secs(after),
            fmt_secs(median(runs[i].iter().map(|r| r.redo).collect())),
            fmt_secs(median(secs.clone())),
            format!("{}–{}", fmt_secs(lo), fmt_secs(hi)),
            fmt_ratio(median(secs) / ref_secs),
            fmt_mib(runs[i].iter().map(|r| r.restore.maxrss_kib).max().unwrap_or(0) as f64 / 1024.0),
        ]);
    }
    let ours = median(totals(0)) / ref_secs;
    t.note(format!("Goal ≤ 1.0× pgBackRest — ours {} → {}.", fmt_ratio(ours), verdict(ours <= 1.0)));
    t.note(
        "The WAL was written by `pgbench -n -c 2 -j 2` after the four backups and reached both archives through \
         one archive_command (`cp` into our incoming/, then `pgbackrest archive-push`), stored uncompressed on \
         both sides; the source was stopped before the runs. Each run: the restore (ours: `barman recover pg ID \
         DEST --get-wal --target-lsn LSN --target-action promote` of the plain backup, its generated \
         `barman get-wal -P pg %f > %p` then appended again naming our binary and configuration; pgBackRest: \
         `restore --set=LABEL --process-max=2 --type=lsn --target=LSN --target-action=promote` of its \
         compress-type=none backup, taken just after ours), then `pg_ctl start -w` with `archive_mode = off` and \
         the harness's port and socket settings, then `SELECT pg_is_in_recovery()` every 50 ms until false; the \
         log must say the recovery stopped at the target LSN. PostgreSQL runs restore_command once per segment, \
         one after the other; pgBackRest's archive-get is not asynchronous here (its default).",
    );
    t.note(
        "The columns split the total: the restore command; then `pg_ctl start -w`, which returns once the \
         recovery is consistent (PostgreSQL first fsyncs the whole data directory, as it does when it starts \
         from a backup: a restore that did not fsync pays its writeback here); then until promoted, the replay \
         through restore_command and the end of recovery. The redo column is PostgreSQL's own \
         \"redo done ... elapsed\" figure, part of the last two.",
    );
    t
}

fn fetch_table(calls: &[Vec<Sample>], cold: bool) -> Table {
    let n = calls.first().map_or(0, Vec::len);
    let mut t = Table::new(
        &format!(
            "The restore_commands alone: one 16 MiB segment per call, {n} segments each, {} (median ms)",
            if cold { "page cache dropped before the series" } else { "warm cache" }
        ),
        &["restore_command", "calls", "median ms", "× cp", "slowest ms", "peak RSS (MiB)"],
    );
    let ms = |i: usize| calls[i].iter().map(|s| ms(s.wall)).collect::<Vec<_>>();
    let reference = median(ms(0));
    for (i, f) in FETCHERS.iter().enumerate() {
        let m = median(ms(i));
        t.row(vec![
            f.label().to_string(),
            calls[i].len().to_string(),
            fmt_ms(m),
            fmt_ratio(m / reference),
            fmt_ms(ms(i).into_iter().fold(f64::NAN, f64::max)),
            fmt_mib(calls[i].iter().map(|s| s.maxrss_kib).max().unwrap_or(0) as f64 / 1024.0),
        ]);
    }
    t.note(
        "Each call is `sh -c COMMAND` as the PostgreSQL OS user, %f and %p replaced, into a file on the same \
         disk (removed between calls, untimed); segments from the middle of the range the point-in-time \
         recoveries fetched, each fetched once by each command, the command that goes first alternating. \
         pgBackRest's command is the one its restore writes, without the `--pg1-path` of the restored \
         directory (its configuration names the stopped source's). Peak RSS: the largest process of the call.",
    );
    t
}
