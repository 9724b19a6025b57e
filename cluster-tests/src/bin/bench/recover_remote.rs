//! Remote recovery: our `recover --remote-ssh-command` (our SSH client, one and two streams,
//! plain and zstd backups) against Barman 3.17's (rsync over OpenSSH) and a bare
//! `tar | ssh tar -x` of the same data directory, into an account on a loopback sshd. Every
//! contender's time includes a `sync -f` of the destination on the remote side.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use cluster_tests::pg::{PgCluster, PgOptions, conf_quote};
use cluster_tests::ssh::Sshd;
use cluster_tests::util::{self, as_pg_user, chown_to_pg_user, is_root, pg_os_user, unique_subdir};

use crate::Ctx;
use crate::fixture::tree_bytes;
use crate::measure::{Sample, Series, sync_all};
use crate::report::{Table, fmt_mib, fmt_ratio, fmt_secs};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    /// `tar -cf - . | ssh acct@host 'tar -xf -'` of the plain backup's data directory.
    TarSsh,
    /// Barman 3.17's remote recover of the plain backup (rsync over OpenSSH).
    Barman,
    /// Ours, plain backup, this many streams.
    Ours { zstd: bool, jobs: u32 },
}

const TOOLS: [Tool; 5] = [
    Tool::TarSsh,
    Tool::Barman,
    Tool::Ours { zstd: false, jobs: 1 },
    Tool::Ours { zstd: false, jobs: 2 },
    Tool::Ours { zstd: true, jobs: 2 },
];

impl Tool {
    fn label(self) -> String {
        match self {
            Tool::TarSsh => "reference: `tar -c` of the plain backup piped into OpenSSH `ssh host tar -x`".into(),
            Tool::Barman => "Barman 3.17 `recover --remote-ssh-command` (rsync over OpenSSH), plain backup".into(),
            Tool::Ours { zstd, jobs } => format!(
                "ours: `recover --remote-ssh-command --jobs {jobs}`, {} backup",
                if zstd { "zstd (tar)" } else { "plain" }
            ),
        }
    }
}

pub fn run(ctx: &Ctx) -> Result<Vec<Table>> {
    let base = unique_subdir(&ctx.scratch, "recover-remote")?;
    chown_to_pg_user(&base)?;
    let home = base.join("home");
    let incoming = home.join("pg").join("incoming");
    let runs = base.join("runs");
    for d in [&home, &home.join("pg"), &incoming, &runs] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        chown_to_pg_user(d)?;
    }
    let mut pg = PgCluster::start(
        &ctx.scratch,
        PgOptions {
            conf: vec![
                ("archive_mode".into(), "on".into()),
                ("archive_command".into(), conf_quote(&format!("cp %p {}/%f", incoming.display()))),
                ("max_wal_size".into(), "'4GB'".into()),
            ],
            ..Default::default()
        },
    )?;
    let result = measure(ctx, &mut pg, &base, &home, &runs);
    if pg.is_running() && pg.stop().is_ok() {
        let _ = fs::remove_dir_all(pg.socket_dir());
    }
    let _ = fs::remove_dir_all(&base);
    result
}

fn measure(ctx: &Ctx, pg: &mut PgCluster, base: &Path, home: &Path, runs: &Path) -> Result<Vec<Table>> {
    let (scale, reps) = (ctx.counts.recover_scale, ctx.counts.recover_reps);
    progress!("recover-remote: pgbench -i -s {scale} ...");
    pg.pgbench_init(scale)?;
    let config = base.join("barman.conf");
    let ci = pg.conninfo();
    let barman_conf = |extra: &str| {
        format!(
            "[barman]\nbarman_home = {}\nbarman_user = {}\nlog_file = {}\n\n[pg]\ndescription = bench\nconninfo = {ci}\n\
             streaming_conninfo = {ci}\nbackup_method = postgres\narchiver = on\nimmediate_checkpoint = true\n{extra}",
            home.display(),
            pg_os_user().map(|u| u.name).unwrap_or_default(),
            base.join("barman.log").display(),
        )
    };
    let barman = |program: &Path, args: &[&str], path: Option<&str>| -> Result<Command> {
        let mut cmd = Command::new(program);
        cmd.arg("-c").arg(&config).args(args).stdin(Stdio::null());
        if let Some(p) = path {
            cmd.env("PATH", p);
        }
        as_pg_user(&mut cmd)?;
        Ok(cmd)
    };
    let backup = |extra: &str| -> Result<String> {
        fs::write(&config, barman_conf(extra)).with_context(|| format!("writing {}", config.display()))?;
        pg.switch_wal()?;
        util::run(&mut barman(&ctx.ours.barman, &["backup", "pg", "--wait"], None)?, "barman backup")?;
        let list = util::run(&mut barman(&ctx.ours.barman, &["list-backups", "--minimal", "pg"], None)?, "list")?;
        list.lines().next().map(str::to_string).context("no backup listed")
    };
    progress!("recover-remote: a plain and a zstd backup ...");
    let plain = backup("")?;
    let zstd = backup("backup_compression = zstd\nbackup_compression_format = tar\n")?;
    fs::write(&config, barman_conf("")).with_context(|| format!("writing {}", config.display()))?;
    let data_dir = home.join("pg/base").join(&plain).join("data");
    let cluster_bytes = tree_bytes(&data_dir);

    // The account recoveries log in as: the PostgreSQL OS user when root (Barman and ours
    // run as that user here), else this user.
    let sshd = Sshd::start_with(base, &[], &[], is_root())?;
    let account = if is_root() { pg_os_user()?.name } else { sshd.login_user() };
    let ssh = format!("ssh -F {} {account}@127.0.0.1", sshd.ssh_config().display());
    let path = format!("{}:{}", sshd.wrapper_dir().display(), ctx.path_env);
    let remote_sync = |dest: &Path| -> Result<Command> {
        let mut cmd = Command::new("/usr/bin/ssh");
        cmd.arg("-F").arg(sshd.ssh_config()).arg(format!("{account}@127.0.0.1"));
        cmd.arg(format!("sync -f {}", dest.display())).stdin(Stdio::null());
        as_pg_user(&mut cmd)?;
        Ok(cmd)
    };

    let mut series: Vec<Series> = TOOLS.iter().map(|_| Series::default()).collect();
    let mut n = 0;
    for rep in 0..reps {
        let mut order: Vec<usize> = (0..TOOLS.len()).collect();
        if rep % 2 == 1 {
            order.reverse();
        }
        for i in order {
            n += 1;
            let dest = runs.join(format!("r{n}")).join("data");
            progress!("recover-remote: {} (run {}) ...", TOOLS[i].label(), rep + 1);
            sync_all();
            let mut cmd = match TOOLS[i] {
                Tool::TarSsh => {
                    let script = format!(
                        "tar -C {} -cf - . | ssh -F {} {account}@127.0.0.1 'mkdir -p {d} && tar -C {d} -xpf -'",
                        data_dir.display(),
                        sshd.ssh_config().display(),
                        d = dest.display()
                    );
                    let mut c = Command::new("/bin/sh");
                    c.args(["-c", &script]).stdin(Stdio::null());
                    as_pg_user(&mut c)?;
                    c
                }
                Tool::Barman => {
                    let reference = ctx.reference.barman.clone();
                    let d = dest.display().to_string();
                    let args = [
                        "recover",
                        "--remote-ssh-command",
                        &ssh,
                        "--target-immediate",
                        "--no-get-wal",
                        "pg",
                        &plain,
                        &d,
                    ];
                    barman(&reference, &args, Some(&path))?
                }
                Tool::Ours { zstd: z, jobs } => {
                    let id = if z { &zstd } else { &plain };
                    let d = dest.display().to_string();
                    let j = jobs.to_string();
                    let args = [
                        "recover",
                        "--remote-ssh-command",
                        &ssh,
                        "--jobs",
                        &j,
                        "--target-immediate",
                        "--no-get-wal",
                        "pg",
                        id,
                        &d,
                    ];
                    barman(&ctx.ours.barman, &args, None)?
                }
            };
            let s = ctx.runner.timed(&mut cmd, &TOOLS[i].label())?;
            let flushed = ctx.runner.timed(&mut remote_sync(&dest)?, "remote sync")?;
            series[i].push(Sample { wall: s.wall + flushed.wall, ..s });
            let parent = dest.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(&dest));
            fs::remove_dir_all(&parent).with_context(|| format!("removing {}", parent.display()))?;
        }
    }
    drop(sshd);

    let reference = series[0].median_ms() / 1000.0;
    let mut t = Table::new(
        "Remote recovery over SSH on loopback (wall time, with a remote `sync -f`)",
        &["what", "median", "× reference", "MiB/s (data dir)", "peak RSS (recovering process)"],
    );
    for (tool, s) in TOOLS.iter().zip(&series) {
        let secs = s.median_ms() / 1000.0;
        t.row(vec![
            tool.label(),
            fmt_secs(secs),
            fmt_ratio(secs / reference),
            format!("{:.0}", cluster_bytes as f64 / (1 << 20) as f64 / secs),
            fmt_mib(s.peak_rss_mib()),
        ]);
    }
    t.note(format!(
        "pgbench scale {scale}: a {:.0} MiB data directory; {reps} run(s) each, interleaved, median shown. All \
         recoveries are `--target-immediate --no-get-wal` (the backup's own WAL is copied too). Barman's and ours \
         run as the PostgreSQL OS user and log in to the same account through a loopback sshd (OpenSSH 9.2); the \
         destination's filesystem is this machine's, so every byte crosses SSH encryption on the same two cores \
         that send it.",
        cluster_bytes as f64 / (1 << 20) as f64
    ));
    Ok(vec![t])
}
