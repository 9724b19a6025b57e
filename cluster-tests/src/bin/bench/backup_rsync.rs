//! The rsync backup method over SSH (our client into a real sshd on loopback, barman-agent on
//! the far side) against `pg_basebackup -Ft -X fetch`, same cluster, same run: a full backup
//! with `--jobs 2`, a second one after 4,000 pgbench transactions (`reuse_backup = link`,
//! block delta), a third with nothing changed. Wall time, bytes sent, peak RSS.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cluster_tests::pg::{PgCluster, conf_quote};
use cluster_tests::ssh::Sshd;
use cluster_tests::util::{self, chown_to_pg_user, current_os_user, is_root, pg_bin, pg_os_user, unique_subdir};

use crate::Ctx;
use crate::measure::{Sample, Series, median, sync_all};
use crate::report::{Table, fmt_mib, fmt_ratio, fmt_secs};

const ROWS: [&str; 4] = [
    "reference: `pg_basebackup -Ft -X fetch`",
    "ours: full, `--jobs 2`",
    "ours: after 4,000 pgbench transactions (`reuse_backup = link`)",
    "ours: nothing changed (`reuse_backup = link`)",
];

pub fn run(ctx: &Ctx, bin: &Path) -> Result<Vec<Table>> {
    let base = unique_subdir(&ctx.scratch, "backup-rsync")?;
    let mut pg = crate::fixture::backup_source(&ctx.scratch, &[])?;
    let sshd = Sshd::start_with(&base, &[bin.to_path_buf()], &[], is_root())?;
    let result = measure(ctx, &pg, &base, &sshd);
    drop(sshd);
    if pg.stop().is_ok() {
        let _ = fs::remove_dir_all(pg.socket_dir());
    }
    let _ = fs::remove_dir_all(&base);
    result
}

struct Bench<'a> {
    ctx: &'a Ctx,
    pg: &'a PgCluster,
    base: PathBuf,
    server: PathBuf,
    config: PathBuf,
}

impl Bench<'_> {
    fn settle(&self) -> Result<()> {
        let mut archive = Command::new(&self.ctx.ours.barman);
        archive.arg("-c").arg(&self.config).args(["archive-wal", "pg"]);
        util::run(&mut archive, "barman archive-wal")?;
        self.pg.psql("CHECKPOINT")?;
        sync_all();
        Ok(())
    }

    /// A timed `barman backup pg` with these arguments: the sample, the backup's id, the
    /// bytes it sent.
    fn ours(&self, args: &[&str]) -> Result<(Sample, String, u64)> {
        self.settle()?;
        let before = self.ids()?;
        let mut cmd = Command::new(&self.ctx.ours.barman);
        cmd.arg("-c").arg(&self.config).args(["backup", "pg"]).args(args);
        let sample = self.ctx.runner.timed_quiet(&mut cmd, "barman backup (rsync)")?;
        let id = self.ids()?.into_iter().find(|i| !before.contains(i)).context("no new backup")?;
        let info = fs::read_to_string(self.server.join("meta").join(format!("{id}-backup.info")))?;
        let field = |key: &str| info.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or("");
        if !matches!(field("status"), "DONE" | "WAITING_FOR_WALS") {
            bail!("backup {id} is {} ({})", field("status"), field("error"));
        }
        let stats = field("copy_stats");
        let sent = stats
            .split("'transferred_bytes': ")
            .nth(1)
            .and_then(|r| r.split([',', '}']).next())
            .and_then(|n| n.trim().parse().ok())
            .context("transferred_bytes in copy_stats")?;
        // Ids are seconds: the next backup must not wait for a free one.
        std::thread::sleep(Duration::from_millis(1100));
        Ok((sample, id, sent))
    }

    fn ids(&self) -> Result<Vec<String>> {
        let dir = self.server.join("base");
        Ok(match fs::read_dir(&dir) {
            Ok(rd) => rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect(),
            Err(_) => Vec::new(),
        })
    }

    fn remove(&self, id: &str) -> Result<()> {
        fs::remove_dir_all(self.server.join("base").join(id))?;
        for what in ["backup.info", "blocks"] {
            let _ = fs::remove_file(self.server.join("meta").join(format!("{id}-{what}")));
        }
        Ok(())
    }

    fn pg_basebackup(&self) -> Result<Sample> {
        let out = self.base.join("pg_basebackup");
        self.settle()?;
        let mut cmd = Command::new(pg_bin("pg_basebackup"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.pg.port().to_string(), "-U", "postgres"])
            .args(["-Ft", "-X", "fetch", "-c", "fast", "-D"])
            .arg(&out);
        let sample = self.ctx.runner.timed_quiet(&mut cmd, "pg_basebackup")?;
        fs::remove_dir_all(&out)?;
        Ok(sample)
    }
}

fn measure(ctx: &Ctx, pg: &PgCluster, base: &Path, sshd: &Sshd) -> Result<Vec<Table>> {
    let (scale, reps) = (ctx.counts.backup_scale, ctx.counts.backup_reps);
    progress!("backup-rsync: pgbench -i -s {scale} ...");
    pg.pgbench_init(scale)?;
    let server = base.join("home").join("pg");
    let incoming = server.join("incoming");
    fs::create_dir_all(&incoming)?;
    chown_to_pg_user(&incoming)?;
    pg.set_conf("archive_command", &conf_quote(&format!("cp %p {}/%f", incoming.display())))?;
    pg.switch_wal()?;
    let cluster_bytes: u64 = pg.psql("SELECT sum(pg_database_size(oid))::bigint FROM pg_database")?.parse()?;
    let account = if is_root() { pg_os_user()?.name } else { sshd.login_user() };
    let config = base.join("barman.conf");
    let ci = pg.conninfo();
    fs::write(
        &config,
        format!(
            "[barman]\nbarman_home = {}\nbarman_user = {}\nlog_file = {}\n\n[pg]\ndescription = bench\n\
             conninfo = {ci}\nbackup_method = rsync\nssh_command = ssh -F {} {account}@127.0.0.1\n\
             reuse_backup = link\narchiver = on\nimmediate_checkpoint = true\n",
            base.join("home").display(),
            current_os_user()?.name,
            base.join("barman.log").display(),
            sshd.ssh_config().display(),
        ),
    )?;
    let b = Bench { ctx, pg, base: base.to_path_buf(), server, config };
    progress!("backup-rsync: warm-up (pg_basebackup, then our first backup, kept) ...");
    b.pg_basebackup()?;
    let (_, keep, _) = b.ours(&["--jobs", "2", "--reuse-backup", "off"])?;
    let mut runs: Vec<Series> = ROWS.iter().map(|_| Series::default()).collect();
    let mut sent: Vec<Vec<f64>> = ROWS.iter().map(|_| Vec::new()).collect();
    for rep in 0..reps {
        progress!("backup-rsync: run {} ...", rep + 1);
        runs[0].push(b.pg_basebackup()?);
        let (s, full, n) = b.ours(&["--jobs", "2", "--reuse-backup", "off"])?;
        runs[1].push(s);
        sent[1].push(n as f64);
        pg.pgbench(&["-n", "-t", "4000"])?;
        let (s, delta, n) = b.ours(&["--jobs", "2"])?;
        runs[2].push(s);
        sent[2].push(n as f64);
        let (s, same, n) = b.ours(&["--jobs", "2"])?;
        runs[3].push(s);
        sent[3].push(n as f64);
        for id in [full, delta, same] {
            b.remove(&id)?;
        }
    }
    b.remove(&keep)?;
    Ok(vec![table(&runs, &sent, scale, cluster_bytes, reps)])
}

fn table(runs: &[Series], sent: &[Vec<f64>], scale: u32, cluster_bytes: u64, reps: usize) -> Table {
    let mut t = Table::new(
        &format!(
            "rsync backup method over SSH, a {:.0} MB cluster (`pgbench -i -s {scale}`), warm cache (median of {reps} runs)",
            cluster_bytes as f64 / 1e6
        ),
        &[
            "variant",
            "median s",
            "min–max s",
            "× pg_basebackup",
            "sent MB",
            "sent ÷ cluster",
            "CPU s",
            "peak RSS (MiB)",
        ],
    );
    let secs = |s: &Series| s.samples.iter().map(|x| x.wall.as_secs_f64()).collect::<Vec<_>>();
    let reference = median(secs(&runs[0]));
    for (i, label) in ROWS.iter().enumerate() {
        let s = secs(&runs[i]);
        let (lo, hi) = s.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        let wall = median(s);
        let (mb, share) = if sent[i].is_empty() {
            ("–".to_string(), "–".to_string())
        } else {
            let m = median(sent[i].clone());
            (format!("{:.1}", m / 1e6), format!("{:.2}%", 100.0 * m / cluster_bytes as f64))
        };
        t.row(vec![
            label.to_string(),
            fmt_secs(wall),
            format!("{}–{}", fmt_secs(lo), fmt_secs(hi)),
            fmt_ratio(wall / reference),
            mb,
            share,
            fmt_secs(median(runs[i].samples.iter().map(|x| x.cpu.as_secs_f64()).collect())),
            fmt_mib(runs[i].peak_rss_mib()),
        ]);
    }
    t.note(
        "Each repetition, in order: pg_basebackup; our full backup (`--reuse-backup off --jobs 2`); `pgbench -n \
         -t 4000` (untimed); our backup with `reuse_backup = link` (unchanged files hard-linked, changed files \
         as their changed 8 KiB blocks from barman-agent, the rest copied from the previous backup on this \
         host); the same again with nothing changed. Before each run, untimed: archive-wal, CHECKPOINT, sync. \
         Ours: `barman backup pg` with `backup_method = rsync`, `ssh_command = ssh -F … user@127.0.0.1` to an \
         sshd on loopback whose sessions find barman-agent in PATH; the process is timed from spawn to \
         reaping, checks, pg_backup_start/stop, the restore point and the final syncfs included. The agent \
         runs under sshd on the same two cores: its CPU is not in the CPU column, nor sshd's encryption. \
         sent = bytes of file data received from the agent (copy_stats transferred_bytes).",
    );
    t
}
