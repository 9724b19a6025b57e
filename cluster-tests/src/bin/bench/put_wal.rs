//! `barman-wal-archive` → `barman put-wal` over ssh, one segment per call as archive_command
//! runs it, against `ssh HOST 'cat > /dev/null' < segment` in the same run.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cluster_tests::util::{free_port, unique_subdir, wait_until};

use crate::fixture::{Home, ServerOptions, renamed_segment, visible_files};
use crate::measure::{Series, sync_all};
use crate::report::{Table, fmt_mib, fmt_ms, fmt_ratio, verdict};
use crate::{Ctx, Servers};

struct Variant {
    label: String,
    client: PathBuf,
    wrapper: PathBuf,
    home: Home,
    control_master: bool,
    limit: usize,
    series: Series,
}

pub fn run(ctx: &Ctx, servers: &Servers) -> Result<Vec<Table>> {
    let c = &ctx.counts;
    let work = unique_subdir(&ctx.scratch, "put-wal")?;
    // Distinct real segments under distinct names (first page header rewritten to match).
    let real = &ctx.wal.segments;
    let mut sources = Vec::new();
    for i in 0..c.put_wal + 1 {
        let name = crate::fixture::synthetic_name(1000 + i);
        let p = work.join(&name);
        fs::write(&p, renamed_segment(&real[i % real.len()], &name)?)?;
        sources.push(p);
    }
    sync_all();
    let ours_cm = servers.ours.with_control_master()?;
    let barman_cm = servers.barman.with_control_master()?;
    let opts = ServerOptions::default();
    let home = |label: &str| Home::create(&ctx.scratch, label, &ctx.conninfo, ctx.wal.systemid, &opts);
    let mut variants = vec![
        Variant {
            label: "ours → ours, no ControlMaster".into(),
            client: ctx.ours.wal_archive.clone(),
            wrapper: servers.ours.wrapper_dir(),
            home: home("put-ours")?,
            control_master: false,
            limit: c.put_wal,
            series: Series::default(),
        },
        Variant {
            label: "ours → ours, ControlMaster".into(),
            client: ctx.ours.wal_archive.clone(),
            wrapper: ours_cm.clone(),
            home: home("put-ours-cm")?,
            control_master: true,
            limit: c.put_wal,
            series: Series::default(),
        },
        Variant {
            label: "Barman 3.17 → Barman 3.17, no ControlMaster".into(),
            client: ctx.reference.wal_archive.clone(),
            wrapper: servers.barman.wrapper_dir(),
            home: home("put-barman")?,
            control_master: false,
            limit: c.barman_put_wal,
            series: Series::default(),
        },
        Variant {
            label: "Barman 3.17 → Barman 3.17, ControlMaster".into(),
            client: ctx.reference.wal_archive.clone(),
            wrapper: barman_cm,
            home: home("put-barman-cm")?,
            control_master: true,
            limit: c.barman_put_wal,
            series: Series::default(),
        },
    ];
    let r = &ctx.runner;
    let command = |v: &Variant, src: &Path| -> Command {
        let mut cmd = Command::new(&v.client);
        cmd.env("PATH", format!("{}:{}", v.wrapper.display(), ctx.path_env))
            .arg("-U")
            .arg(&ctx.login_user)
            .arg("-c")
            .arg(&v.home.config)
            .args(["127.0.0.1", "pg"])
            .arg(src);
        cmd
    };
    // The last source is the warm-up (and opens the masters); then incoming is emptied.
    let warm = &sources[c.put_wal];
    for v in &variants {
        r.timed_quiet(&mut command(v, warm), "warm-up barman-wal-archive")?;
        for f in visible_files(&v.home.incoming()) {
            fs::remove_file(f)?;
        }
    }
    progress!("barman-wal-archive → put-wal ...");
    let wrappers = [servers.ours.wrapper_dir(), ours_cm];
    let mut cat = [Series::default(), Series::default()];
    let mut dd = [Series::default(), Series::default()];
    let sink = work.join("dd-sink");
    for (i, src) in sources[..c.put_wal].iter().enumerate() {
        for (k, w) in wrappers.iter().enumerate() {
            let mut ssh = Command::new(w.join("ssh"));
            ssh.args(["127.0.0.1", "cat > /dev/null"]).stdin(File::open(src)?);
            cat[k].push(r.timed_quiet(&mut ssh, "ssh cat")?);
            let mut ssh = Command::new(w.join("ssh"));
            ssh.args(["127.0.0.1", &format!("dd of={} bs=1M conv=fsync status=none", sink.display())])
                .stdin(File::open(src)?);
            dd[k].push(r.timed_quiet(&mut ssh, "ssh dd conv=fsync")?);
        }
        for v in &mut variants {
            if i < v.limit {
                let s = r.timed_quiet(&mut command(v, src), &v.label)?;
                v.series.push(s);
            }
        }
    }
    for v in &variants {
        let got = visible_files(&v.home.incoming()).len();
        if got != v.series.len() {
            bail!("{}: {got} files in incoming after {} calls", v.label, v.series.len());
        }
    }

    let mut t = Table::new(
        "barman-wal-archive → put-wal over ssh, one 16 MiB segment per call (median ms)",
        &[
            "variant",
            "calls",
            "median ms",
            "× `ssh HOST 'cat > /dev/null'` (same ssh setting)",
            "peak RSS client (MiB)",
        ],
    );
    for (k, label) in ["no ControlMaster", "ControlMaster"].iter().enumerate() {
        t.row(vec![
            format!("reference: `ssh HOST 'cat > /dev/null' < SEGMENT`, {label}"),
            cat[k].len().to_string(),
            fmt_ms(cat[k].median_ms()),
            "1.00×".into(),
            fmt_mib(cat[k].peak_rss_mib()),
        ]);
        t.row(vec![
            format!("floor with durability: `ssh HOST 'dd of=FILE conv=fsync' < SEGMENT`, {label}"),
            dd[k].len().to_string(),
            fmt_ms(dd[k].median_ms()),
            fmt_ratio(dd[k].median_ms() / cat[k].median_ms()),
            fmt_mib(dd[k].peak_rss_mib()),
        ]);
    }
    for v in &variants {
        let reference = cat[usize::from(v.control_master)].median_ms();
        t.row(vec![
            v.label.clone(),
            v.series.len().to_string(),
            fmt_ms(v.series.median_ms()),
            fmt_ratio(v.series.median_ms() / reference),
            fmt_mib(v.series.peak_rss_mib()),
        ]);
    }
    for v in variants.iter().filter(|v| v.client == ctx.ours.wal_archive) {
        let ratio = v.series.median_ms() / cat[usize::from(v.control_master)].median_ms();
        t.note(format!("Goal ≤ 1.2× ssh cat — {}: {} → {}.", v.label, fmt_ratio(ratio), verdict(ratio <= 1.2)));
    }
    t.note("Peak RSS is the client's process tree (barman-wal-archive and its ssh).");
    let ours_cm_series = variants.iter().find(|v| v.client == ctx.ours.wal_archive && v.control_master);
    let whole = ours_cm_series.map(|v| v.series.median_ms()).unwrap_or(f64::NAN);
    let breakdown = breakdown(ctx, &wrappers[1], &sources[..c.breakdown_reps.min(c.put_wal)], &work, whole, &cat[1])?;
    for v in variants {
        v.home.remove();
    }
    let grpc = over_grpc(ctx, &sources[..=c.put_wal], &work)?;
    let _ = fs::remove_dir_all(&work);
    Ok(vec![t, breakdown, grpc])
}

/// Stops the node it holds when dropped.
pub struct NodeProcess(pub std::process::Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `barman-wal-archive grpcs://HOST:PORT`: straight to a node's Archive service over mutual
/// TLS, one segment per call, against `cp` of the same segment (and `cp` + fsync) in the
/// same run. The last source is the warm-up.
fn over_grpc(ctx: &Ctx, sources: &[PathBuf], work: &Path) -> Result<Table> {
    progress!("barman-wal-archive → a node over gRPC ...");
    let r = &ctx.runner;
    let home = Home::create(&ctx.scratch, "put-grpc", &ctx.conninfo, ctx.wal.systemid, &ServerOptions::default())?;
    let tls = work.join("tls");
    let barman = &ctx.ours.barman;
    let (port, _node) = start_node(&home, barman, barman, &tls)?;
    let client = |src: &Path| -> Command {
        let mut cmd = Command::new(&ctx.ours.wal_archive);
        cmd.arg("--tls-ca-file")
            .arg(tls.join("ca.crt"))
            .arg("--tls-cert-file")
            .arg(tls.join("bench.crt"))
            .arg("--tls-key-file")
            .arg(tls.join("bench.key"))
            .args([&format!("grpcs://127.0.0.1:{port}"), "pg"])
            .arg(src);
        cmd
    };
    let (warm, measured) = sources.split_last().context("no segment")?;
    r.timed_quiet(&mut client(warm), "warm-up barman-wal-archive over gRPC")?;
    for f in visible_files(&home.incoming()) {
        fs::remove_file(f)?;
    }
    let (mut cp, mut cp_sync, mut ours) = (Series::default(), Series::default(), Series::default());
    let sink = work.join("cp-sink");
    for src in measured {
        let _ = fs::remove_file(&sink);
        cp.push(r.timed_quiet(Command::new("cp").arg(src).arg(&sink), "cp")?);
        let _ = fs::remove_file(&sink);
        let mut dd = Command::new("dd");
        dd.arg(format!("if={}", src.display())).arg(format!("of={}", sink.display())).args([
            "bs=1M",
            "conv=fsync",
            "status=none",
        ]);
        cp_sync.push(r.timed_quiet(&mut dd, "dd conv=fsync")?);
        ours.push(r.timed_quiet(&mut client(src), "barman-wal-archive over gRPC")?);
    }
    let got = visible_files(&home.incoming()).len();
    if got != measured.len() {
        bail!("gRPC put-wal: {got} files in incoming after {} calls", measured.len());
    }
    let mut t = Table::new(
        "barman-wal-archive → a node over gRPC (mutual TLS), one 16 MiB segment per call (median ms)",
        &["variant", "calls", "median ms", "× `cp SEGMENT FILE`", "peak RSS client (MiB)"],
    );
    let base = cp.median_ms();
    for (label, s) in [
        ("reference: `cp SEGMENT FILE`", &cp),
        ("floor with durability: `dd of=FILE conv=fsync`", &cp_sync),
        ("ours: barman-wal-archive grpcs://127.0.0.1:PORT (fsynced, acknowledged)", &ours),
    ] {
        t.row(vec![
            label.into(),
            s.len().to_string(),
            fmt_ms(s.median_ms()),
            fmt_ratio(s.median_ms() / base),
            fmt_mib(s.peak_rss_mib()),
        ]);
    }
    let ratio = ours.median_ms() / base;
    t.note(format!("Goal ≤ 3× cp — ours over gRPC: {} → {}.", fmt_ratio(ratio), verdict(ratio <= 3.0)));
    t.note(
        "Each call is a new process: TLS handshake with a client certificate, the segment read and \
         hashed, sent as put-wal's tar stream, verified, written and fsynced in the node's incoming/ \
         before the reply.",
    );
    drop(_node);
    home.remove();
    Ok(t)
}

/// Where a put-wal round trip goes (ControlMaster): the client with an `ssh` that only
/// drains its input, the server reading a captured stream, and the server behind ssh.
fn breakdown(ctx: &Ctx, cm: &Path, sources: &[PathBuf], work: &Path, whole: f64, cat: &Series) -> Result<Table> {
    progress!("barman-wal-archive → put-wal, breakdown ...");
    let r = &ctx.runner;
    let stubs = work.join("stubs");
    for (dir, body) in [("discard", "cat > /dev/null"), ("capture", "cat > \"$BENCH_CAPTURE\"")] {
        let d = stubs.join(dir);
        fs::create_dir_all(&d)?;
        let script = d.join("ssh");
        fs::write(&script, format!("#!/bin/sh\n{body}\n"))?;
        fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let home = Home::create(&ctx.scratch, "put-breakdown", &ctx.conninfo, ctx.wal.systemid, &ServerOptions::default())?;
    let client = |stub: &Path, src: &Path| -> Command {
        let mut cmd = Command::new(&ctx.ours.wal_archive);
        cmd.env("PATH", format!("{}:{}", stub.display(), ctx.path_env))
            .arg("-U")
            .arg(&ctx.login_user)
            .arg("-c")
            .arg(&home.config)
            .args(["127.0.0.1", "pg"])
            .arg(src);
        cmd
    };
    let (mut alone, mut server, mut remote) = (Series::default(), Series::default(), Series::default());
    let clear = || -> Result<()> {
        for f in visible_files(&home.incoming()) {
            fs::remove_file(f)?;
        }
        Ok(())
    };
    for src in sources {
        alone.push(r.timed_quiet(&mut client(&stubs.join("discard"), src), "barman-wal-archive, ssh stub")?);
        let stream = work.join("stream.tar");
        r.timed_quiet(client(&stubs.join("capture"), src).env("BENCH_CAPTURE", &stream), "capturing a stream")?;
        let mut put = home.command(&ctx.ours.barman, &["put-wal", "pg"]);
        server.push(r.timed_quiet(put.stdin(File::open(&stream)?), "put-wal < stream")?);
        clear()?;
        let mut ssh = Command::new(cm.join("ssh"));
        ssh.args(["-q", "-T", "127.0.0.1", "barman"])
            .arg(format!("--config='{}'", home.config.display()))
            .args(["put-wal", "pg"])
            .stdin(File::open(&stream)?);
        remote.push(r.timed_quiet(&mut ssh, "ssh put-wal < stream")?);
        clear()?;
    }
    let mut t = Table::new(
        "Breakdown of one barman-wal-archive → put-wal call (ControlMaster, one 16 MiB segment)",
        &["step", "median ms", "× ssh cat"],
    );
    let c = cat.median_ms();
    for (label, v) in [
        ("client alone: barman-wal-archive with an `ssh` that drains stdin (read, SHA-256, tar)", alone.median_ms()),
        (
            "server alone: `barman put-wal pg < captured stream` (parse, verify, check, write, fsync)",
            server.median_ms(),
        ),
        ("server behind ssh: `ssh HOST barman put-wal pg < captured stream`", remote.median_ms()),
        ("reference: `ssh HOST 'cat > /dev/null' < SEGMENT`", c),
        ("whole: barman-wal-archive → ssh → put-wal (table above)", whole),
    ] {
        t.row(vec![label.to_string(), fmt_ms(v), fmt_ratio(v / c)]);
    }
    t.note(format!("Medians of {} calls each.", sources.len()));
    home.remove();
    Ok(t)
}

/// A one-node cluster on 127.0.0.1 serving `home`: its CA and node certificate made by its own
/// `barman`, a WAL client certificate for server `pg` made by `client_cert_barman` under that CA.
pub fn start_node(home: &Home, barman: &Path, client_cert_barman: &Path, tls: &Path) -> Result<(u16, NodeProcess)> {
    let cert = |exe: &Path, args: &[&str]| -> Result<()> {
        let o = Command::new(exe).args(["cluster", "cert"]).args(args).output()?;
        if !o.status.success() {
            bail!("{} cluster cert {args:?}: {}", exe.display(), String::from_utf8_lossy(&o.stderr));
        }
        Ok(())
    };
    let t = tls.to_string_lossy().into_owned();
    cert(barman, &["ca", "--dir", &t])?;
    cert(barman, &["node", "n1", "--host", "127.0.0.1", "--ca-dir", &t, "--dir", &t])?;
    cert(client_cert_barman, &["client", "bench", "--server", "pg", "--ca-dir", &t, "--dir", &t])?;
    let port = free_port()?;
    let text = fs::read_to_string(&home.config)?;
    let node = format!(
        "node_name = n1\nnode_listen = 127.0.0.1:{port}\ncluster_peers = n1=127.0.0.1:{port}\n\
         cluster_ca_file = {t}/ca.crt\nnode_cert_file = {t}/n1.crt\nnode_key_file = {t}/n1.key\n\n[pg]"
    );
    fs::write(&home.config, text.replacen("\n[pg]", &format!("\n{node}"), 1))?;
    let log = File::create(home.dir.join("node.log"))?;
    let process = NodeProcess(
        home.command(barman, &["node", "run"]).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).spawn()?,
    );
    wait_until(Duration::from_secs(30), "the node's cluster init", || {
        home.command(barman, &["cluster", "init"]).output().is_ok_and(|o| o.status.success())
    })?;
    Ok((port, process))
}
