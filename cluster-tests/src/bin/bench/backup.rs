//! Base backups: our `barman backup` (backup_method = postgres) against `pg_basebackup -Ft -X
//! fetch` and pgBackRest full backups, all of the same PostgreSQL 15 cluster in the same run,
//! repetitions interleaved: wall time, stored size, CPU and peak RSS of the backup process.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cluster_tests::pg::{PgCluster, conf_quote};
use cluster_tests::util::{self, as_pg_user, chown_to_pg_user, current_os_user, pg_bin, unique_subdir, wait_until};

use crate::Ctx;
use crate::fixture::tree_bytes;
use crate::measure::{Sample, Series, median, sync_all};
use crate::report::{Table, fmt_mib, fmt_ratio, fmt_secs};

/// The pgBackRest stanza.
const STANZA: &str = "bench";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    /// `barman backup pg`, these lines added to the server's section.
    Ours(&'static str),
    /// `pg_basebackup -Ft -X fetch -c fast`, with `--compress=` this.
    PgBasebackup(Option<&'static str>),
    /// `pgbackrest backup --type=full` with this compress-type and process-max.
    PgBackRest { compress: &'static str, processes: u32 },
}

/// The 1.0× of every ratio.
const REFERENCE: Tool = Tool::PgBasebackup(None);

struct Variant {
    label: String,
    tool: Tool,
}

/// Every variant, grouped by compression so that rows that do the same work sit together.
fn variants() -> Vec<Variant> {
    let basebackup = |c: Option<&'static str>| Variant {
        label: match c {
            None => "reference: `pg_basebackup -Ft -X fetch`".into(),
            Some(c) => format!("`pg_basebackup -Ft -X fetch --compress={c}`"),
        },
        tool: Tool::PgBasebackup(c),
    };
    let ours = |what: &str, extra: &'static str| Variant { label: format!("ours: {what}"), tool: Tool::Ours(extra) };
    let pgbackrest = |compress: &'static str, processes: u32| Variant {
        label: format!("pgBackRest full, compress-type={compress}, process-max={processes}"),
        tool: Tool::PgBackRest { compress, processes },
    };
    vec![
        basebackup(None),
        ours("plain (the default)", ""),
        ours("tar, `backup_compression = none`", "backup_compression = none\nbackup_compression_format = tar\n"),
        pgbackrest("none", 1),
        pgbackrest("none", 2),
        basebackup(Some("server-lz4")),
        basebackup(Some("client-lz4")),
        ours(
            "lz4, server",
            "backup_compression = lz4\nbackup_compression_format = tar\nbackup_compression_location = server\n",
        ),
        ours(
            "lz4, client",
            "backup_compression = lz4\nbackup_compression_format = tar\nbackup_compression_location = client\n",
        ),
        pgbackrest("lz4", 1),
        pgbackrest("lz4", 2),
        basebackup(Some("server-zstd")),
        basebackup(Some("client-zstd")),
        ours(
            "zstd, server",
            "backup_compression = zstd\nbackup_compression_format = tar\nbackup_compression_location = server\n",
        ),
        ours(
            "zstd, client",
            "backup_compression = zstd\nbackup_compression_format = tar\nbackup_compression_location = client\n",
        ),
        ours(
            "zstd, client, `backup_compression_workers = 2`",
            "backup_compression = zstd\nbackup_compression_format = tar\nbackup_compression_location = client\n\
             backup_compression_workers = 2\n",
        ),
        pgbackrest("zst", 1),
        pgbackrest("zst", 2),
    ]
}

pub fn run(ctx: &Ctx) -> Result<Vec<Table>> {
    let pgbackrest = util::run(Command::new("pgbackrest").arg("version"), "pgbackrest version")
        .context("pgBackRest is needed for the backup benchmark (Debian: apt-get install -y pgbackrest)")?;
    let base = unique_subdir(&ctx.scratch, "backup")?;
    // Archiving into incoming/ once the data is loaded (see `measure`).
    let mut pg = crate::fixture::backup_source(&ctx.scratch, &[])?;
    let result = measure(ctx, &pg, &base, pgbackrest.trim());
    if pg.stop().is_ok() {
        let _ = fs::remove_dir_all(pg.socket_dir());
    }
    let _ = fs::remove_dir_all(&base);
    result
}

fn measure(ctx: &Ctx, pg: &PgCluster, base: &Path, pgbackrest_version: &str) -> Result<Vec<Table>> {
    let (scale, reps) = (ctx.counts.backup_scale, ctx.counts.backup_reps);
    progress!("backup: pgbench -i -s {scale} ...");
    pg.pgbench_init(scale)?;
    let mut bench = Bench::new(ctx, pg, base)?;
    // The WAL of the load is not archived: our archive starts with the switch below, as it
    // would for a server added to Barman after its data.
    pg.set_conf("archive_command", &conf_quote(&format!("cp %p {}/%f", bench.incoming.display())))?;
    pg.switch_wal()?;
    let cluster_bytes: u64 = pg.psql("SELECT sum(pg_database_size(oid))::bigint FROM pg_database")?.parse()?;

    // Untimed: a pg_basebackup brings the cluster into the page cache; our first backup stays,
    // so that no timed one is a first backup (which purges older WAL).
    progress!("backup: warm-up (pg_basebackup, then our first backup, kept) ...");
    bench.pg_basebackup(None)?;
    let first = bench.ours_backup("")?.1;
    bench.first = Some(first);
    // Backup ids are local times to the second: no timed backup may wait for a free one.
    std::thread::sleep(Duration::from_millis(1100));

    let vs = variants();
    let mut runs: Vec<(Series, Vec<u64>)> = vs.iter().map(|_| Default::default()).collect();
    for rep in 0..reps {
        // Each repetition starts elsewhere in the list, and every other one goes backwards.
        let offset = rep * vs.len() / reps.max(1);
        let mut order: Vec<usize> = (0..vs.len()).map(|k| (k + offset) % vs.len()).collect();
        if rep % 2 == 1 {
            order.reverse();
        }
        for i in order {
            progress!("backup: {} (run {}) ...", vs[i].label, rep + 1);
            let (sample, bytes) = bench.one(vs[i].tool)?;
            runs[i].0.push(sample);
            runs[i].1.push(bytes);
        }
    }
    Ok(vec![table(&vs, &runs, scale, cluster_bytes, reps, pgbackrest_version)])
}

/// The cluster, the Barman home and the pgBackRest configuration shared by every run.
struct Bench<'a> {
    ctx: &'a Ctx,
    pg: &'a PgCluster,
    base: PathBuf,
    /// `<barman_home>/pg`.
    server: PathBuf,
    incoming: PathBuf,
    /// The configuration without backup options, for archive-wal.
    plain_config: PathBuf,
    /// Our untimed first backup, kept to the end.
    first: Option<String>,
    pgbackrest_config: PathBuf,
    pgbackrest_repo: PathBuf,
}

impl<'a> Bench<'a> {
    fn new(ctx: &'a Ctx, pg: &'a PgCluster, base: &Path) -> Result<Bench<'a>> {
        let server = base.join("home").join("pg");
        let incoming = server.join("incoming");
        fs::create_dir_all(&incoming).with_context(|| format!("creating {}", incoming.display()))?;
        // PostgreSQL's archive_command writes there.
        chown_to_pg_user(&incoming)?;
        let b = Bench {
            ctx,
            pg,
            base: base.to_path_buf(),
            server,
            incoming,
            plain_config: base.join("barman.conf"),
            first: None,
            pgbackrest_config: base.join("pgbackrest.conf"),
            pgbackrest_repo: base.join("pgbackrest-repo"),
        };
        b.write_barman_config(&b.plain_config, "")?;
        b.write_pgbackrest_config()?;
        Ok(b)
    }

    fn one(&self, tool: Tool) -> Result<(Sample, u64)> {
        match tool {
            Tool::Ours(extra) => {
                let (sample, id) = self.ours_backup(extra)?;
                let bytes = tree_bytes(&self.server.join("base").join(&id));
                self.remove_ours(&id)?;
                Ok((sample, bytes))
            }
            Tool::PgBasebackup(compress) => self.pg_basebackup(compress),
            Tool::PgBackRest { compress, processes } => self.pgbackrest(compress, processes),
        }
    }

    /// The same starting point for every run, untimed: the previous backup is gone (the
    /// callers remove it), PostgreSQL has archived every finished segment, our archive-wal has
    /// filed them, a checkpoint leaves the fast checkpoint of the backup little to do, and no
    /// dirty page is left for the kernel to write during the next run.
    fn settle(&self) -> Result<()> {
        let status = self.pg.data_dir().join("pg_wal").join("archive_status");
        let pending = || {
            fs::read_dir(&status)
                .map(|rd| {
                    rd.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().ends_with(".ready")).count()
                })
                .unwrap_or(0)
        };
        wait_until(Duration::from_secs(300), "PostgreSQL's archiver to catch up", || pending() == 0)?;
        let mut archive = Command::new(&self.ctx.ours.barman);
        archive.arg("-c").arg(&self.plain_config).args(["archive-wal", "pg"]);
        util::run(&mut archive, "barman archive-wal")?;
        self.pg.psql("CHECKPOINT")?;
        sync_all();
        Ok(())
    }

    fn write_barman_config(&self, path: &Path, extra: &str) -> Result<()> {
        let ci = self.pg.conninfo();
        let text = format!(
            "[barman]\nbarman_home = {}\nbarman_user = {}\nlog_file = {}\n\n\
             [pg]\ndescription = bench\nconninfo = {ci}\nstreaming_conninfo = {ci}\nbackup_method = postgres\n\
             archiver = on\nimmediate_checkpoint = true\n{extra}",
            self.server.parent().context("the Barman home")?.display(),
            current_os_user()?.name,
            self.base.join("barman.log").display(),
        );
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// `barman backup pg` with `extra` in the configuration: the sample and the new backup's id.
    fn ours_backup(&self, extra: &str) -> Result<(Sample, String)> {
        let config = self.base.join("barman-variant.conf");
        self.write_barman_config(&config, extra)?;
        self.settle()?;
        let mut cmd = Command::new(&self.ctx.ours.barman);
        cmd.arg("-c").arg(&config).args(["backup", "pg"]);
        let sample = self.ctx.runner.timed_quiet(&mut cmd, "barman backup")?;
        let base = self.server.join("base");
        let ids: Vec<String> = fs::read_dir(&base)
            .with_context(|| format!("listing {}", base.display()))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|id| Some(id) != self.first.as_ref())
            .collect();
        let [id] = ids.as_slice() else {
            bail!("barman backup with {extra:?}: expected one new backup under {}, found {ids:?}", base.display())
        };
        let info_path = self.server.join("meta").join(format!("{id}-backup.info"));
        let info = fs::read_to_string(&info_path).with_context(|| format!("reading {}", info_path.display()))?;
        let field = |key: &str| info.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or("");
        let status = field("status");
        if status != "DONE" && status != "WAITING_FOR_WALS" {
            bail!("barman backup with {extra:?}: backup {id} is {status} ({})", field("error"));
        }
        Ok((sample, id.clone()))
    }

    /// The backup's directory and its backup.info, removed by hand (untimed, and without `barman delete`'s WAL cleanup, which would change what the next run archives).
    fn remove_ours(&self, id: &str) -> Result<()> {
        let dir = self.server.join("base").join(id);
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        let info = self.server.join("meta").join(format!("{id}-backup.info"));
        fs::remove_file(&info).with_context(|| format!("removing {}", info.display()))
    }

    fn pg_basebackup(&self, compress: Option<&str>) -> Result<(Sample, u64)> {
        let out = self.base.join("pg_basebackup");
        self.settle()?;
        let mut cmd = Command::new(pg_bin("pg_basebackup"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.pg.port().to_string(), "-U", "postgres"])
            .args(["-Ft", "-X", "fetch", "-c", "fast", "-D"])
            .arg(&out);
        if let Some(c) = compress {
            cmd.arg(format!("--compress={c}"));
        }
        let sample = self.ctx.runner.timed_quiet(&mut cmd, "pg_basebackup")?;
        let bytes = tree_bytes(&out);
        fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
        Ok((sample, bytes))
    }

    /// pgBackRest reads the data directory itself: it runs as the PostgreSQL OS user, with its
    /// configuration readable and its directories owned by that user.
    fn write_pgbackrest_config(&self) -> Result<()> {
        let mut dirs = Vec::new();
        for d in ["pgbackrest-lock", "pgbackrest-log"] {
            let p = self.base.join(d);
            fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
            chown_to_pg_user(&p)?;
            dirs.push(p);
        }
        let text = format!(
            "[global]\nrepo1-path={}\nrepo1-retention-full=9999999\nlock-path={}\nlog-path={}\n\
             log-level-console=off\nlog-level-stderr=warn\nlog-level-file=off\nstart-fast=y\narchive-check=n\n\n\
             [{STANZA}]\npg1-path={}\npg1-port={}\npg1-socket-path={}\npg1-user=postgres\n",
            self.pgbackrest_repo.display(),
            dirs[0].display(),
            dirs[1].display(),
            self.pg.data_dir().display(),
            self.pg.port(),
            self.pg.socket_dir().display(),
        );
        fs::write(&self.pgbackrest_config, text)
            .with_context(|| format!("writing {}", self.pgbackrest_config.display()))
    }

    fn pgbackrest_command(&self, args: &[&str]) -> Result<Command> {
        let mut cmd = Command::new("pgbackrest");
        cmd.arg(format!("--config={}", self.pgbackrest_config.display())).arg(format!("--stanza={STANZA}")).args(args);
        as_pg_user(&mut cmd)?;
        Ok(cmd)
    }

    /// A full backup into a fresh repository (stanza-create untimed): nothing to resume or expire.
    fn pgbackrest(&self, compress: &str, processes: u32) -> Result<(Sample, u64)> {
        let repo = &self.pgbackrest_repo;
        fs::create_dir_all(repo).with_context(|| format!("creating {}", repo.display()))?;
        chown_to_pg_user(repo)?;
        util::run(&mut self.pgbackrest_command(&["stanza-create"])?, "pgbackrest stanza-create")?;
        self.settle()?;
        let compress_type = format!("--compress-type={compress}");
        let process_max = format!("--process-max={processes}");
        let mut cmd = self.pgbackrest_command(&["--type=full", &compress_type, &process_max, "backup"])?;
        let sample = self.ctx.runner.timed_quiet(&mut cmd, "pgbackrest backup")?;
        let sets = repo.join("backup").join(STANZA);
        let labels: Vec<PathBuf> = fs::read_dir(&sets)
            .with_context(|| format!("listing {}", sets.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with('F') && e.path().is_dir())
            .map(|e| e.path())
            .collect();
        let [set] = labels.as_slice() else {
            bail!("expected one full backup set in {}, found {labels:?}", sets.display())
        };
        let bytes = tree_bytes(set);
        fs::remove_dir_all(repo).with_context(|| format!("removing {}", repo.display()))?;
        Ok((sample, bytes))
    }
}

fn table(
    vs: &[Variant],
    runs: &[(Series, Vec<u64>)],
    scale: u32,
    cluster_bytes: u64,
    reps: usize,
    pgbackrest_version: &str,
) -> Table {
    let mb = |b: f64| b / 1e6;
    let mut t = Table::new(
        &format!(
            "Base backup of a {:.0} MB cluster (`pgbench -i -s {scale}`), warm cache (median of {reps} runs)",
            mb(cluster_bytes as f64)
        ),
        &[
            "variant",
            "median s",
            "min–max s",
            "× pg_basebackup",
            "stored MB",
            "stored ÷ pg_basebackup",
            "CPU s of the backup process",
            "peak RSS (MiB)",
        ],
    );
    let seconds = |s: &Series| s.samples.iter().map(|x| x.wall.as_secs_f64()).collect::<Vec<_>>();
    let stored = |i: usize| median(runs[i].1.iter().map(|b| *b as f64).collect());
    let reference = vs.iter().position(|v| v.tool == REFERENCE).unwrap_or(0);
    let ref_secs = median(seconds(&runs[reference].0));
    let ref_bytes = stored(reference);
    for (i, v) in vs.iter().enumerate() {
        let s = &runs[i].0;
        let secs = seconds(s);
        let (lo, hi) = secs.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        let wall = median(secs);
        let bytes = stored(i);
        t.row(vec![
            v.label.clone(),
            fmt_secs(wall),
            format!("{}–{}", fmt_secs(lo), fmt_secs(hi)),
            fmt_ratio(wall / ref_secs),
            if mb(bytes) >= 100.0 { format!("{:.0}", mb(bytes)) } else { format!("{:.1}", mb(bytes)) },
            format!("{:.1}%", 100.0 * bytes / ref_bytes),
            fmt_secs(median(s.samples.iter().map(|x| x.cpu.as_secs_f64()).collect())),
            fmt_mib(s.peak_rss_mib()),
        ]);
    }
    t.note(
        "Every run is one process started by the bench program and timed from spawn to reaping (wait4), \
         start-up, checks and fsyncs included; the variants are interleaved, each repetition in another order. \
         Before each run, untimed: the previous backup is removed, PostgreSQL's archiver has no segment left, \
         our `barman archive-wal` files what it archived, `CHECKPOINT`, `sync`. MB are 10⁶ bytes; stored is \
         the size of the files the backup left (median).",
    );
    t.note(
        "Ours: `barman -c CONFIG backup pg` with `backup_method = postgres`, `immediate_checkpoint = true`, \
         `archiver = on` (PostgreSQL's archive_command copies into incoming/), one BASE_BACKUP over the \
         replication protocol (WAIT false, manifest with CRC32C checksums), then the restore point and the \
         archiver over incoming/, as Barman does. The copy's writer threads are in the same process: its CPU \
         and peak RSS are all of it. Our untimed first backup stays to the end, so no timed backup purges WAL \
         as a first backup does; the measured ones are removed by hand between runs, untimed.",
    );
    t.note(
        "pg_basebackup: `-h 127.0.0.1 -U postgres -Ft -X fetch -c fast -D DIR`, fsync at the end (its default); \
         its base.tar holds the WAL of the backup, which ours and pgBackRest leave to the WAL archive. \
         Server-side compression (ours and pg_basebackup's) runs in PostgreSQL's walsender: that CPU is not in \
         the backup process's figures, and neither is the server's share of any variant.",
    );
    t.note(format!(
        "{pgbackrest_version}: `pgbackrest --stanza=bench --type=full --compress-type=… --process-max=… backup` \
         run as the PostgreSQL OS user, reading the data directory itself (connected through the Unix socket), \
         into a repository on the same disk, created empty by an untimed `stanza-create` before each run \
         (nothing to resume, nothing to expire), with `start-fast=y` and `archive-check=n`: pgBackRest's \
         default would wait for the backup's last WAL segment to reach its repository through its own \
         `archive-push` as archive_command, which none of the other variants waits for. Default compress \
         levels (lz4 1, zst 3); peak RSS is the largest of the main process and its local workers (wait4 \
         reports the maximum, not the sum); CPU is their sum."
    ));
    t
}
