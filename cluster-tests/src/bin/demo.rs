//! The main job on an embedded default: a throwaway PostgreSQL archives its WAL
//! through `barman-wal-archive` over a throwaway sshd into our `barman put-wal`;
//! every archived segment is read back through `get-wal` and compared with
//! PostgreSQL's own copy; a standby then replays from the archive through
//! `barman-wal-restore`. Run with scripts/demo.sh.

use anyhow::{Context, Result, bail};
use cluster_tests::fixture::{ClusterOptions, TestCluster, node_name};
use cluster_tests::pg::{PgCluster, PgOptions, conf_quote};
use cluster_tests::ssh::Sshd;
use cluster_tests::util::{TestDir, chown_to_pg_user, current_os_user, install_binaries, is_root, pg_os_user};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn barman(bin: &Path, config: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin.join("barman")).arg("-c").arg(config).args(args).output().context("running barman")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("barman {} failed:\n{text}", args.join(" "));
    }
    Ok(text)
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

fn main() -> Result<()> {
    let here = std::env::current_exe()?.parent().map(Path::to_path_buf).context("no executable directory")?;
    let find = |name: &str| -> Result<PathBuf> {
        let p = here.join(name);
        if !p.is_file() {
            bail!("{} not found next to the demo: build the workspace first (scripts/demo.sh does)", p.display());
        }
        Ok(p)
    };
    let dir = TestDir::new()?;
    let base = dir.path();
    println!("Working directory: {} (removed at the end; KEEP_TEST_DIRS=1 keeps it)", base.display());
    let bin = install_binaries(
        &base.join("install"),
        &[
            ("barman", &find("barman")?),
            ("barman-wal-archive", &find("barman-wal-archive")?),
            ("barman-wal-restore", &find("barman-wal-restore")?),
        ],
    )?;

    println!("1. Starting a throwaway PostgreSQL 15 and sshd on 127.0.0.1");
    let copies = base.join("postgres-copies");
    std::fs::create_dir_all(&copies)?;
    chown_to_pg_user(&copies)?;
    let pg =
        PgCluster::start(base, PgOptions { conf: vec![("archive_mode".into(), "on".into())], ..Default::default() })?;
    // With PAM when root, so that step 8 can log in as the (password-locked) postgres account.
    let sshd = Sshd::start_with(base, std::slice::from_ref(&bin), &[], is_root())?;
    let home = base.join("barman-home");
    let config = base.join("barman.conf");
    std::fs::write(
        &config,
        format!(
            "[barman]\nbarman_home = {}\nbarman_user = {}\nlog_file = {}/barman.log\n\n\
             [pg]\ndescription = \"throwaway demo server\"\nconninfo = {}\nbackup_method = postgres\narchiver = on\ncompression = zstd\n",
            home.display(),
            current_os_user()?.name,
            base.display(),
            pg.conninfo()
        ),
    )?;
    std::fs::create_dir_all(&home)?;
    // PostgreSQL keeps its own copy too, only so the demo can compare.
    let archive_command = format!(
        "cp %p {copies}/%f && PATH={wrap}:$PATH {bin}/barman-wal-archive -c {cfg} -U {user} 127.0.0.1 pg %p",
        copies = copies.display(),
        wrap = sshd.wrapper_dir().display(),
        bin = bin.display(),
        cfg = config.display(),
        user = sshd.login_user()
    );
    pg.set_conf("archive_command", &conf_quote(&archive_command))?;
    println!("   archive_command = {archive_command}");

    println!("2. barman check pg");
    print!("{}", indent(&barman(&bin, &config, &["check", "pg"]).unwrap_or_else(|e| e.to_string())));

    println!("3. pgbench writes; barman switch-wal --force --archive");
    pg.pgbench_init(5)?;
    pg.pgbench(&["-n", "-c", "2", "-T", "5"])?;
    print!(
        "{}",
        indent(&barman(&bin, &config, &["switch-wal", "--force", "--archive", "--archive-timeout", "60", "pg"])?)
    );
    barman(&bin, &config, &["archive-wal", "pg"])?;
    cluster_tests::util::wait_until(Duration::from_secs(30), "PostgreSQL's archiver", || {
        pg.psql("SELECT last_archived_wal FROM pg_stat_archiver").is_ok_and(|w| copies.join(w.trim()).exists())
    })?;

    println!("4. The archive (wals/ and pg-xlog.db)");
    let xlogdb = std::fs::read_to_string(home.join("pg/wals/pg-xlog.db"))?;
    let total: u64 = xlogdb.lines().filter_map(|l| l.split('\t').nth(1)?.parse::<u64>().ok()).sum();
    println!("    {} files catalogued, {:.1} MiB stored (zstd)", xlogdb.lines().count(), total as f64 / 1048576.0);
    print!("{}", indent(&barman(&bin, &config, &["status", "pg"])?));

    println!("5. Reading every archived segment back with barman get-wal");
    let mut names: Vec<String> =
        std::fs::read_dir(&copies)?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for n in &names {
        let got = Command::new(bin.join("barman")).arg("-c").arg(&config).args(["-q", "get-wal", "pg", n]).output()?;
        if !got.status.success() || got.stdout != std::fs::read(copies.join(n))? {
            bail!("{n} did not come back byte-identical: {}", String::from_utf8_lossy(&got.stderr));
        }
    }
    println!("    {} segments archived by PostgreSQL, all {} read back byte-identical", names.len(), names.len());

    println!("6. A standby restoring from the archive with barman-wal-restore -p 4");
    let spool = base.join("spool");
    std::fs::create_dir_all(&spool)?;
    chown_to_pg_user(&spool)?;
    let restore = format!(
        "PATH={}:$PATH {}/barman-wal-restore -U {} -c {} -p 4 --spool-dir {} 127.0.0.1 pg %f %p",
        sshd.wrapper_dir().display(),
        bin.display(),
        sshd.login_user(),
        config.display(),
        spool.display()
    );
    let standby = pg.make_standby(base, &restore, false)?;
    pg.pgbench(&["-n", "-c", "2", "-t", "500"])?;
    barman(&bin, &config, &["switch-wal", "--force", "--archive", "--archive-timeout", "60", "pg"])?;
    let target = pg.current_lsn()?;
    standby.wait_replay(&target, Duration::from_secs(120))?;
    let q = "SELECT count(*) FROM pgbench_history";
    println!(
        "    standby replayed to {target}: pgbench_history has {} rows on the primary, {} on the standby",
        pg.psql(q)?,
        standby.psql(q)?
    );
    println!("7. A base backup over the replication protocol: barman backup pg --wait");
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)? + "immediate_checkpoint = true\nbackup_compression = zstd\n",
    )?;
    print!("{}", indent(&barman(&bin, &config, &["backup", "--wait", "--wait-timeout", "120", "pg"])?));
    print!("{}", indent(&barman(&bin, &config, &["list-backups", "pg"])?));
    let id =
        barman(&bin, &config, &["list-backups", "--minimal", "pg"])?.lines().next().unwrap_or_default().to_string();
    let stored = home.join("pg/base").join(&id).join("data");
    let mut files: Vec<String> =
        std::fs::read_dir(&stored)?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    println!("    stored in {}: {}", stored.display(), files.join(", "));

    let account = if is_root() { pg_os_user()?.name } else { sshd.login_user() };
    println!("8. Remote recovery over SSH (our own client, 2 streams) into the account {account}@127.0.0.1");
    let want = pg.psql("SELECT count(*) FROM pgbench_history")?;
    let remote = base.join("remote");
    std::fs::create_dir_all(&remote)?;
    chown_to_pg_user(&remote)?;
    let dest = remote.join("restored").join("data");
    let ssh = format!("ssh -F {} {account}@127.0.0.1", sshd.ssh_config().display());
    let args = [
        "recover",
        "--remote-ssh-command",
        &ssh,
        "--jobs",
        "2",
        "--target-immediate",
        "--target-action",
        "promote",
        "--no-get-wal",
        "pg",
        &id,
    ];
    let dest_s = dest.display().to_string();
    let out = barman(&bin, &config, &[&args[..], &[dest_s.as_str()]].concat())?;
    let shown = ["Starting remote restore", "Destination directory", "Remote command", "Your PostgreSQL server"];
    let summary: Vec<&str> = out.lines().filter(|l| shown.iter().any(|p| l.starts_with(p))).collect();
    print!("{}", indent(&summary.join("\n")));
    let restored = PgCluster::adopt(&remote.join("restored"), &[], "")?;
    cluster_tests::util::wait_until(Duration::from_secs(120), "the recovered cluster to promote", || {
        restored.psql("SELECT pg_is_in_recovery()").is_ok_and(|v| v == "f")
    })?;
    println!(
        "    PostgreSQL started on it: pgbench_history has {} rows (the backup was taken with {want})",
        restored.psql("SELECT count(*) FROM pgbench_history")?
    );

    println!("9. A cluster of three nodes on 127.0.0.1 streaming one PostgreSQL (its synchronous standby)");
    let cdir = base.join("cluster");
    std::fs::create_dir_all(&cdir)?;
    let mut c = TestCluster::start(&cdir, ClusterOptions { synchronous: true, ..ClusterOptions::default() })?;
    c.pg.pgbench_init(1)?;
    let (owner, epoch) = c.owner().context("no owner")?;
    let status = c.barman(0, &["cluster", "status"])?;
    print!("{}", indent(status.trim_end()));
    println!("    SIGKILL of the owner {} (epoch {epoch}) while pgbench commits", node_name(owner));
    let port = c.pg.port().to_string();
    let bench = std::thread::spawn(move || {
        std::process::Command::new(cluster_tests::util::pg_bin("pgbench"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p", &port, "-n", "-T", "10", "postgres"])
            .output()
    });
    std::thread::sleep(Duration::from_secs(2));
    let t0 = std::time::Instant::now();
    c.nodes[owner].kill()?;
    c.wait(Duration::from_secs(20), "another node streaming", |c| {
        c.owner().is_some_and(|(o, e)| o != owner && e > epoch) && c.walsenders().unwrap_or(0) == 1
    })?;
    let (now, e) = c.owner().context("no owner")?;
    println!("    {} streams in epoch {e} after {} ms", node_name(now), t0.elapsed().as_millis());
    let out = bench.join().map_err(|_| anyhow::anyhow!("pgbench thread panicked"))??;
    let failed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("number of failed transactions"))
        .unwrap_or("pgbench printed no failure count")
        .to_string();
    println!("    pgbench: {failed}");
    println!("Done.");
    Ok(())
}
