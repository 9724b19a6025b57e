//! Benchmarks of our `barman`, `barman-wal-archive` and `barman-wal-restore` on real WAL,
//! each against references timed in the same run on the same data (`cp`, bare `ssh`, the
//! codec alone, Barman 3.17, `pg_receivewal` for WAL streaming, `pg_basebackup` and pgBackRest for
//! base backups, `cp -a` and pgBackRest for recovery). Prints Markdown tables; see docs/benchmarks.md.
//!
//! Usage: `bench [--quick] [--out FILE] [--only get-wal,restore,archive,put-wal,stream,backup,recover,geo-sync,...]`; our
//! release binaries are taken from the directory of this executable. `--only ab-wal --old-bin DIR
//! --new-bin DIR [--old-label L] [--new-label L]` compares two builds of ours instead (see
//! `scripts/bench-ab.sh`).

/// When the run started, for the progress lines on stderr.
static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// A progress line on stderr, stamped with the seconds since the start.
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!(
            "bench [{:>4.0} s] {}",
            crate::START.get().map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0),
            format!($($arg)*)
        )
    };
}

#[path = "bench/ab_wal.rs"]
mod ab_wal;
#[path = "bench/archive.rs"]
mod archive;
#[path = "bench/backup.rs"]
mod backup;
#[path = "bench/backup_rsync.rs"]
mod backup_rsync;
#[path = "bench/cluster.rs"]
mod cluster;
#[path = "bench/fixture.rs"]
mod fixture;
#[path = "bench/geo_sync.rs"]
mod geo_sync;
#[path = "bench/get_wal.rs"]
mod get_wal;
#[path = "bench/measure.rs"]
mod measure;
#[path = "bench/put_wal.rs"]
mod put_wal;
#[path = "bench/recover.rs"]
mod recover;
#[path = "bench/recover_pitr.rs"]
mod recover_pitr;
#[path = "bench/recover_remote.rs"]
mod recover_remote;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/restore.rs"]
mod restore;
#[path = "bench/stream.rs"]
mod stream;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cluster_tests::reference;
use cluster_tests::ssh::Sshd;
use cluster_tests::util::{TestDir, install_binaries, is_root, pg_bin};

use crate::fixture::RealWal;
use crate::measure::Runner;
use crate::report::Table;

/// How many of everything: the full run, or `--quick`.
#[derive(Debug, Clone)]
pub struct Counts {
    pub real_segments: usize,
    pub real_tx_segments: usize,
    pub get_wal_reps: usize,
    pub barman_get_wal_reps: usize,
    pub restore_single: usize,
    pub barman_restore_single: usize,
    pub restore_prefetch: usize,
    pub prefetch_reps: usize,
    pub barman_restore_prefetch: usize,
    pub archive_segments: usize,
    pub archive_reps: usize,
    /// Runs of archive-wal with gzip (each takes a while).
    pub archive_gzip_reps: usize,
    pub archive_slow_segments: usize,
    pub barman_archive_segments: usize,
    /// Repetitions of each step of the restore and put-wal breakdowns.
    pub breakdown_reps: usize,
    pub put_wal: usize,
    pub barman_put_wal: usize,
    /// Backlog streamed by each catch-up run, in segments.
    pub stream_segments: usize,
    pub stream_reps: usize,
    /// Length of each synchronous pgbench run.
    pub sync_seconds: u64,
    pub sync_reps: usize,
    /// `pgbench -i` scale of the cluster the base backups copy (100: about 1.5 GB).
    pub backup_scale: u32,
    /// Runs of each base backup variant.
    pub backup_reps: usize,
    /// `pgbench -i` scale of the cluster the recoveries restore (100: about 1.5 GB).
    pub recover_scale: u32,
    /// Runs of each recovery variant.
    pub recover_reps: usize,
    /// WAL written after the backups and replayed by each point-in-time recovery, in MiB.
    pub pitr_wal_mib: u64,
    /// Runs of each point-in-time recovery.
    pub pitr_reps: usize,
    /// Segments fetched by hand by each restore_command of the point-in-time recoveries.
    pub restore_command_calls: usize,
    /// Failovers per lease in the cluster benchmark.
    pub failover_runs: usize,
    /// The cluster benchmark's steady periods and measurement windows, in seconds.
    pub cluster_steady_secs: u64,
    /// Files of 128 MiB in the geo-sync benchmark's backup, and its runs.
    pub geo_sync_big_files: usize,
    pub geo_sync_reps: usize,
    /// Calls of each build on each path in the A/B of two builds (`ab-wal`).
    pub ab_calls: usize,
}

impl Counts {
    fn full() -> Counts {
        Counts {
            real_segments: 16,
            real_tx_segments: 8,
            get_wal_reps: 32,
            barman_get_wal_reps: 8,
            restore_single: 20,
            barman_restore_single: 10,
            restore_prefetch: 200,
            prefetch_reps: 1,
            barman_restore_prefetch: 32,
            archive_segments: 32,
            archive_reps: 3,
            archive_gzip_reps: 1,
            archive_slow_segments: 4,
            barman_archive_segments: 32,
            breakdown_reps: 6,
            put_wal: 20,
            barman_put_wal: 10,
            stream_segments: 64,
            stream_reps: 4,
            sync_seconds: 20,
            sync_reps: 3,
            backup_scale: 100,
            backup_reps: 3,
            recover_scale: 100,
            recover_reps: 3,
            pitr_wal_mib: 1024,
            pitr_reps: 3,
            restore_command_calls: 24,
            failover_runs: 20,
            cluster_steady_secs: 60,
            geo_sync_big_files: 8,
            geo_sync_reps: 3,
            ab_calls: 20,
        }
    }

    fn quick() -> Counts {
        Counts {
            real_segments: 8,
            real_tx_segments: 3,
            get_wal_reps: 5,
            barman_get_wal_reps: 3,
            restore_single: 5,
            barman_restore_single: 3,
            restore_prefetch: 40,
            prefetch_reps: 1,
            barman_restore_prefetch: 16,
            archive_segments: 8,
            archive_reps: 1,
            archive_gzip_reps: 1,
            archive_slow_segments: 2,
            barman_archive_segments: 8,
            breakdown_reps: 3,
            put_wal: 5,
            barman_put_wal: 3,
            stream_segments: 12,
            stream_reps: 1,
            sync_seconds: 5,
            sync_reps: 1,
            backup_scale: 10,
            backup_reps: 2,
            recover_scale: 10,
            recover_reps: 1,
            pitr_wal_mib: 128,
            pitr_reps: 1,
            restore_command_calls: 4,
            failover_runs: 4,
            cluster_steady_secs: 10,
            geo_sync_big_files: 2,
            geo_sync_reps: 1,
            ab_calls: 5,
        }
    }
}

/// The three executables of one implementation.
#[derive(Debug, Clone)]
pub struct Bins {
    pub barman: PathBuf,
    pub wal_archive: PathBuf,
    pub wal_restore: PathBuf,
}

/// What every benchmark needs.
pub struct Ctx {
    pub scratch: PathBuf,
    pub runner: Runner,
    pub ours: Bins,
    pub reference: Bins,
    pub wal: RealWal,
    /// conninfo of the (stopped) cluster that wrote the WAL, for the configuration files.
    pub conninfo: String,
    pub counts: Counts,
    /// PATH this program was started with (the ssh wrappers go in front of it).
    pub path_env: String,
    /// The user ssh logs in as.
    pub login_user: String,
}

/// Two sshds on 127.0.0.1: remote sessions find our `barman` first, or Barman 3.17's.
pub struct Servers {
    pub ours: Sshd,
    pub barman: Sshd,
}

struct Args {
    quick: bool,
    out: Option<PathBuf>,
    only: Option<Vec<String>>,
    /// The two builds of `ab-wal`: directories and labels.
    old_bin: Option<PathBuf>,
    new_bin: Option<PathBuf>,
    old_label: Option<String>,
    new_label: Option<String>,
}

const BENCHMARKS: [&str; 13] = [
    "get-wal",
    "restore",
    "archive",
    "put-wal",
    "stream",
    "backup",
    "backup-rsync",
    "recover",
    "recover-remote",
    "cluster",
    "cluster-idle",
    "geo-sync",
    "ab-wal",
];

fn parse_args() -> Result<Args> {
    let mut a =
        Args { quick: false, out: None, only: None, old_bin: None, new_bin: None, old_label: None, new_label: None };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--out" => a.out = Some(it.next().context("--out needs a file name")?.into()),
            "--old-bin" => a.old_bin = Some(it.next().context("--old-bin needs a directory")?.into()),
            "--new-bin" => a.new_bin = Some(it.next().context("--new-bin needs a directory")?.into()),
            "--old-label" => a.old_label = Some(it.next().context("--old-label needs a text")?),
            "--new-label" => a.new_label = Some(it.next().context("--new-label needs a text")?),
            "--only" => {
                let list: Vec<String> =
                    it.next().context("--only needs a list")?.split(',').map(|s| s.trim().to_string()).collect();
                if let Some(bad) = list.iter().find(|b| !BENCHMARKS.contains(&b.as_str())) {
                    bail!("--only: unknown benchmark {bad:?}; known: {}", BENCHMARKS.join(", "));
                }
                a.only = Some(list);
            }
            "-h" | "--help" => {
                println!(
                    "usage: bench [--quick] [--out FILE] [--only {}] [--old-bin DIR --new-bin DIR \
                     [--old-label L] [--new-label L]]\n\
                     Benchmarks our release binaries (next to this executable) against cp, ssh, Barman 3.17, \
                     pg_receivewal, pg_basebackup and pgBackRest; ab-wal compares the builds in --old-bin and \
                     --new-bin.",
                    BENCHMARKS.join(",")
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(a)
}

fn main() {
    if let Err(e) = real_main() {
        progress!("{e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    measure::keep_small();
    let args = parse_args()?;
    let started = *START.get_or_init(Instant::now);
    let load_at_start = loadavg();
    let counts = if args.quick { Counts::quick() } else { Counts::full() };
    let wanted = |b: &str| args.only.as_ref().is_none_or(|l| l.iter().any(|x| x == b));
    // ab-wal runs only when named: it needs two builds.
    let ab = if args.only.as_ref().is_some_and(|l| l.iter().any(|x| x == "ab-wal")) {
        Some(ab_builds(&args)?)
    } else {
        None
    };

    let exe = std::env::current_exe().context("locating this executable")?;
    let exe_dir = exe.parent().context("the directory of this executable")?;
    let dir = TestDir::new()?;
    let scratch = dir.path().to_path_buf();
    let ours_src: Vec<(&str, PathBuf)> = ["barman", "barman-wal-archive", "barman-wal-restore", "barman-agent"]
        .iter()
        .map(|n| (*n, exe_dir.join(n)))
        .collect();
    for (n, p) in &ours_src {
        if !p.is_file() {
            bail!("{n} is not next to the bench executable ({}): build the workspace in release", p.display());
        }
    }
    let refs: Vec<(&str, &Path)> = ours_src.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let bin = install_binaries(&scratch.join("install"), &refs)?;
    let ours = Bins {
        barman: bin.join("barman"),
        wal_archive: bin.join("barman-wal-archive"),
        wal_restore: bin.join("barman-wal-restore"),
    };
    // The A/B of two builds alone needs no Barman 3.17: ours stands in for it, unused.
    let ab_only = args.only.as_ref().is_some_and(|l| l.iter().all(|x| x == "ab-wal"));
    let reference = if ab_only {
        ours.clone()
    } else {
        Bins {
            barman: reference::barman()?,
            wal_archive: reference::barman_wal_archive()?,
            wal_restore: reference::barman_wal_restore()?,
        }
    };

    progress!("generating real WAL in {} ...", scratch.display());
    let wal = fixture::real_wal(&scratch, counts.real_segments, counts.real_tx_segments)?;
    measure::sync_all();
    let conninfo = wal.conninfo.clone();
    let login_user = if is_root() { "root".to_string() } else { cluster_tests::util::current_os_user()?.name };
    let venv_bin = reference.barman.parent().context("the venv's bin directory")?.to_path_buf();
    let ctx = Ctx {
        runner: Runner::new(&scratch),
        scratch: scratch.clone(),
        ours,
        reference,
        conninfo,
        counts,
        path_env: std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        login_user,
        wal,
    };

    let mut tables: Vec<Table> = Vec::new();
    if wanted("get-wal") {
        tables.extend(get_wal::run(&ctx)?);
    }
    if wanted("restore") || wanted("put-wal") {
        let servers = Servers {
            ours: Sshd::start(&scratch, std::slice::from_ref(&bin), &[])?,
            barman: Sshd::start(&scratch, &[venv_bin], &[])?,
        };
        if wanted("restore") {
            tables.extend(restore::run(&ctx, &servers)?);
        }
        if wanted("put-wal") {
            tables.extend(put_wal::run(&ctx, &servers)?);
        }
    }
    if wanted("archive") {
        tables.extend(archive::run(&ctx)?);
    }
    if wanted("stream") {
        tables.extend(stream::run(&ctx)?);
    }
    if wanted("backup") {
        tables.extend(backup::run(&ctx)?);
    }
    if wanted("backup-rsync") {
        tables.extend(backup_rsync::run(&ctx, &bin)?);
    }
    if wanted("recover") {
        tables.extend(recover::run(&ctx)?);
    }
    if wanted("recover-remote") {
        tables.extend(recover_remote::run(&ctx)?);
    }
    if wanted("geo-sync") {
        tables.extend(geo_sync::run(&ctx)?);
    }
    if let Some(builds) = &ab {
        tables.extend(ab_wal::run(&ctx, builds)?);
    }
    if wanted("cluster") {
        tables.extend(cluster::run(&ctx)?);
    } else if wanted("cluster-idle") {
        tables.extend(cluster::run_idle(&ctx)?);
    }

    let mut text = header(&ctx, args.quick);
    text.push_str(&format!("- Load average (1/5/15 min) at start: {load_at_start}; at end: {}\n", loadavg()));
    for t in &tables {
        text.push('\n');
        text.push_str(&t.to_markdown());
    }
    text.push_str(&format!("\nWhole run: {:.0} s.\n", started.elapsed().as_secs_f64()));
    print!("{text}");
    if let Some(out) = &args.out {
        fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// The two builds `ab-wal` compares; the labels default to the directories.
fn ab_builds(args: &Args) -> Result<ab_wal::AbBuilds> {
    let (Some(old_dir), Some(new_dir)) = (&args.old_bin, &args.new_bin) else {
        bail!("ab-wal needs --old-bin DIR and --new-bin DIR (the release directories of the two builds)");
    };
    let label = |l: &Option<String>, d: &Path| l.clone().unwrap_or_else(|| d.display().to_string());
    Ok(ab_wal::AbBuilds {
        old_dir: old_dir.clone(),
        new_dir: new_dir.clone(),
        old_label: label(&args.old_label, old_dir),
        new_label: label(&args.new_label, new_dir),
    })
}

/// The machine and the data, as a Markdown list.
fn header(ctx: &Ctx, quick: bool) -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|kib| format!("{:.1} GiB", kib as f64 / (1 << 20) as f64))
        .unwrap_or_else(|| "unknown".into());
    let first_line = |cmd: &mut Command| -> String {
        cmd.output()
            .ok()
            .map(|o| {
                let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
                s.push_str(&String::from_utf8_lossy(&o.stderr));
                s.lines().next().unwrap_or("").trim().to_string()
            })
            .unwrap_or_default()
    };
    let kernel = first_line(Command::new("uname").arg("-r"));
    let pg = first_line(Command::new(pg_bin("postgres")).arg("--version"));
    let ssh = first_line(Command::new("ssh").arg("-V"));
    // With ab-wal alone ours stands in for the reference, which no table uses.
    let barman = if ctx.reference.barman == ctx.ours.barman {
        "Barman 3.17 not used".to_string()
    } else {
        format!("Barman {} (reference venv)", first_line(Command::new(&ctx.reference.barman).arg("--version")))
    };
    let fs_line = filesystem_of(&ctx.scratch);
    let commit = Command::new("git")
        .arg("-C")
        .arg(reference::workspace_root())
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown (git describe failed)".into());
    let segs = &ctx.wal.segments;
    format!(
        "## Results{}\n\n\
         - CPU: {model}, {cores} cores; memory {mem}; kernel {kernel}\n\
         - Disk: scratch directory {} on {fs_line}\n\
         - {pg}; {ssh}; {barman}\n\
         - Code measured: {commit}\n\
         - WAL: {} real 16 MiB segments ({} … {}) archived by PostgreSQL: {}\n\
         - User: {}\n",
        if quick { " (--quick)" } else { "" },
        ctx.scratch.display(),
        segs.len(),
        segs.iter().map(|s| s.name.as_str()).min().unwrap_or("-"),
        segs.iter().map(|s| s.name.as_str()).max().unwrap_or("-"),
        ctx.wal.pgbench_summary,
        if is_root() { "root (PostgreSQL ran as postgres)" } else { "an ordinary user" },
    )
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// "device, fstype" of the mount holding `path` (longest mount point prefix).
fn filesystem_of(path: &Path) -> String {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 3 || !path.starts_with(f[1]) {
            continue;
        }
        if best.as_ref().is_none_or(|(len, _)| f[1].len() >= *len) {
            best = Some((f[1].len(), format!("{} ({}, mounted at {})", f[0], f[2], f[1])));
        }
    }
    best.map(|(_, s)| s).unwrap_or_else(|| "unknown".into())
}
