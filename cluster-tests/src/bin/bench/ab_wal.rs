//! A/B of two builds of our WAL clients and servers, for a change that must not slow them down:
//! `barman-wal-archive` → put-wal and `barman-wal-restore` → get-wal, over ssh (with and
//! without a ControlMaster) and over gRPC to a running node. Old and new run in one process,
//! interleaved call by call, each build against its own server set up the same way: its own
//! sshd (whose sessions find that build's `barman`), its own node, its own Barman homes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cluster_tests::ssh::Sshd;
use cluster_tests::util::{install_binaries, unique_subdir};

use crate::fixture::{Home, SEGMENT_SIZE, ServerOptions, renamed_segment, synthetic_name, visible_files};
use crate::measure::{Series, median, ms, sync_all};
use crate::put_wal::{NodeProcess, start_node};
use crate::report::{Table, fmt_ms, fmt_ratio, verdict};
use crate::{Bins, Ctx};

/// The two builds: directories holding `barman`, `barman-wal-archive` and `barman-wal-restore`,
/// and how to name them in the report (a commit, say).
#[derive(Debug, Clone)]
pub struct AbBuilds {
    pub old_dir: PathBuf,
    pub new_dir: PathBuf,
    pub old_label: String,
    pub new_label: String,
}

/// The slowdown the acceptance allows: new median ≤ 1.03 × old median.
const LIMIT: f64 = 1.03;

/// What is measured, in the order of one round.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Route {
    PutSsh,
    PutSshCm,
    PutGrpc,
    GetSsh,
    GetSshCm,
    GetGrpc,
}

const ROUTES: [Route; 6] =
    [Route::PutSsh, Route::PutSshCm, Route::PutGrpc, Route::GetSsh, Route::GetSshCm, Route::GetGrpc];

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::PutSsh => "put-wal over ssh: `barman-wal-archive HOST` → `barman put-wal` (no ControlMaster)",
            Route::PutSshCm => "put-wal over ssh, ControlMaster",
            Route::PutGrpc => "put-wal over gRPC: `barman-wal-archive grpcs://` → `barman node run`",
            Route::GetSsh => "get-wal over ssh: `barman-wal-restore HOST` → `barman get-wal` (no ControlMaster)",
            Route::GetSshCm => "get-wal over ssh, ControlMaster",
            Route::GetGrpc => "get-wal over gRPC: `barman-wal-restore grpcs://` → `barman node run`",
        }
    }

    fn is_put(self) -> bool {
        matches!(self, Route::PutSsh | Route::PutSshCm | Route::PutGrpc)
    }
}

/// One build with everything it serves from.
struct Side {
    label: String,
    bins: Bins,
    sshd: Sshd,
    cm: PathBuf,
    /// put-wal over ssh lands here (one home per ssh setting: each segment is put once).
    put_ssh: Home,
    put_ssh_cm: Home,
    /// get-wal over ssh reads the segments stored here.
    get_ssh: Home,
    /// The node's home: put-wal over gRPC lands here, get-wal over gRPC reads from it.
    node_home: Home,
    port: u16,
    tls: PathBuf,
    node: NodeProcess,
}

/// CPU time of all threads of process `pid` so far (`/proc/PID/task/*/schedstat`, ns resolution).
fn process_cpu(pid: u32) -> Duration {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return Duration::ZERO };
    let ns: u64 = tasks
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

pub fn run(ctx: &Ctx, builds: &AbBuilds) -> Result<Vec<Table>> {
    let n = ctx.counts.ab_calls;
    let work = unique_subdir(&ctx.scratch, "ab-wal")?;
    // n + 1 distinct segments to put (the last is the warm-up), first page header rewritten to
    // match their names; the same n + 1 names stored in every get-wal home.
    let real = &ctx.wal.segments;
    let mut sources = Vec::new();
    for i in 0..=n {
        let name = synthetic_name(1000 + i);
        let p = work.join(&name);
        fs::write(&p, renamed_segment(&real[i % real.len()], &name)?)?;
        sources.push(p);
    }
    let get_names: Vec<String> = (0..=n).map(synthetic_name).collect();
    // The client certificate is made by the new build: only it takes `--server`, and the old
    // node ignores the SAN URIs that name the server.
    let new_barman = builds.new_dir.join("barman");
    let sides = [
        side(ctx, &work, "old", &builds.old_label, &builds.old_dir, &new_barman, &get_names)?,
        side(ctx, &work, "new", &builds.new_label, &builds.new_dir, &new_barman, &get_names)?,
    ];
    sync_all();

    let r = &ctx.runner;
    let dest = work.join("RECOVERYXLOG");
    let (warm_src, measured) = sources.split_last().context("no segment")?;
    let warm_name = &get_names[n];
    // Warm every path of both builds (page cache, loader, the ControlMasters), then empty the
    // incoming directories so that every measured put is a first one.
    for s in &sides {
        for p in ROUTES {
            let what = format!("warm-up {} {}", s.label, p.label());
            if p.is_put() {
                r.timed_quiet(&mut put_command(ctx, s, p, warm_src), &what)?;
            } else {
                let _ = fs::remove_file(&dest);
                r.timed_quiet(&mut get_command(ctx, s, p, warm_name, &dest), &what)?;
                check_len(&dest, warm_name)?;
            }
        }
        for h in [&s.put_ssh, &s.put_ssh_cm, &s.node_home] {
            for f in visible_files(&h.incoming()) {
                fs::remove_file(f)?;
            }
        }
    }
    sync_all();

    progress!("ab-wal: {n} rounds, old and new interleaved ...");
    // series[path][side]
    let mut series: Vec<[Series; 2]> = ROUTES.iter().map(|_| [Series::default(), Series::default()]).collect();
    // The node's CPU during each gRPC call (its threads' run time before and after; the node's
    // background work in that window included), per route and build, in ms.
    let mut node_cpu: Vec<[Vec<f64>; 2]> = ROUTES.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    for (i, src) in measured.iter().enumerate() {
        let name = &get_names[i];
        // Which build goes first alternates: neither always finds the other's leftovers.
        let order: [usize; 2] = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for (k, p) in ROUTES.iter().enumerate() {
            for &b in &order {
                let s = &sides[b];
                let what = format!("{} {}", s.label, p.label());
                let node_before = process_cpu(s.node.0.id());
                let sample = if p.is_put() {
                    r.timed_quiet(&mut put_command(ctx, s, *p, src), &what)?
                } else {
                    let _ = fs::remove_file(&dest);
                    let t = r.timed_quiet(&mut get_command(ctx, s, *p, name, &dest), &what)?;
                    check_len(&dest, name)?;
                    t
                };
                if matches!(p, Route::PutGrpc | Route::GetGrpc) {
                    node_cpu[k][b].push(ms(process_cpu(s.node.0.id()).saturating_sub(node_before)));
                }
                series[k][b].push(sample);
            }
        }
    }
    // Every put segment is held: in incoming/, or already archived by the node's own archiver.
    for s in &sides {
        for (h, what) in [(&s.put_ssh, "ssh"), (&s.put_ssh_cm, "ssh ControlMaster"), (&s.node_home, "gRPC")] {
            for src in measured {
                let name = src.file_name().context("a source name")?.to_string_lossy().into_owned();
                if !h.incoming().join(&name).is_file() && !h.wal_path(&name).is_file() {
                    bail!("{} put-wal over {what}: {name} is neither in incoming nor archived", s.label);
                }
            }
        }
    }

    let t = table(&sides, &series, &node_cpu, n);
    drop(sides);
    let _ = fs::remove_dir_all(&work);
    Ok(vec![t])
}

fn table(sides: &[Side; 2], series: &[[Series; 2]], node_cpu: &[[Vec<f64>; 2]], n: usize) -> Table {
    let mut t = Table::new(
        &format!("A/B: put-wal and get-wal, one 16 MiB segment per call, {n} calls each, interleaved (median ms)"),
        &[
            "path",
            &format!("old {} median (min–max)", sides[0].label),
            &format!("new {} median (min–max)", sides[1].label),
            "new/old (medians)",
            "median of paired new/old",
            "client CPU ms old → new",
            "node CPU ms old → new",
            &format!("≤ {LIMIT:.2}× old"),
        ],
    );
    let span = |s: &Series| {
        let v: Vec<f64> = s.samples.iter().map(|x| ms(x.wall)).collect();
        let min = v.iter().copied().fold(f64::NAN, f64::min);
        format!("{} ({}–{})", fmt_ms(s.median_ms()), fmt_ms(min), fmt_ms(s.max_ms()))
    };
    let cpu = |s: &Series| median(s.samples.iter().map(|x| ms(x.cpu)).collect());
    for ((p, [old, new]), [node_old, node_new]) in ROUTES.iter().zip(series).zip(node_cpu) {
        let ratio = new.median_ms() / old.median_ms();
        let paired = median(old.samples.iter().zip(&new.samples).map(|(a, b)| ms(b.wall) / ms(a.wall)).collect());
        t.row(vec![
            p.label().to_string(),
            span(old),
            span(new),
            fmt_ratio(ratio),
            fmt_ratio(paired),
            format!("{} → {}", fmt_ms(cpu(old)), fmt_ms(cpu(new))),
            if node_old.is_empty() {
                "–".into()
            } else {
                format!("{} → {}", fmt_ms(median(node_old.clone())), fmt_ms(median(node_new.clone())))
            },
            verdict(ratio <= LIMIT).to_string(),
        ]);
    }
    for s in sides {
        t.note(format!("{}: {}", s.label, s.bins.barman.parent().map(|p| p.display().to_string()).unwrap_or_default()));
    }
    t.note(
        "Each call is a new client process timed from spawn to exit. In each round every path runs once \
         per build, old then new in even rounds and new then old in odd ones; every put-wal puts a segment \
         its home does not hold yet (the same sources for both builds, each build into its own homes); \
         get-wal fetches a different name each round, stored uncompressed (hard links to the real \
         segments). Client CPU (median) is user + system of the client and its `ssh`, not the server's; node CPU \
         (median) is the run time of the node's threads during the call, its background work included. \
         The node archives what put-wal leaves in incoming/ on its own, during the run, in both builds.",
    );
    t
}

/// Installs a build, starts its sshd and node, makes its homes.
fn side(
    ctx: &Ctx,
    work: &Path,
    tag: &str,
    label: &str,
    dir: &Path,
    client_cert_barman: &Path,
    get_names: &[String],
) -> Result<Side> {
    progress!("ab-wal: setting up the {tag} build ({label}) from {} ...", dir.display());
    let names = ["barman", "barman-wal-archive", "barman-wal-restore"];
    let src: Vec<(&str, PathBuf)> = names.iter().map(|n| (*n, dir.join(n))).collect();
    for (n, p) in &src {
        if !p.is_file() {
            bail!("{n} is not in {}", dir.display());
        }
    }
    let refs: Vec<(&str, &Path)> = src.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let bin = install_binaries(&work.join(format!("install-{tag}")), &refs)?;
    let bins = Bins {
        barman: bin.join("barman"),
        wal_archive: bin.join("barman-wal-archive"),
        wal_restore: bin.join("barman-wal-restore"),
    };
    let sshd = Sshd::start(work, std::slice::from_ref(&bin), &[])?;
    let cm = sshd.with_control_master()?;
    let home =
        |l: &str| Home::create(work, &format!("{tag}-{l}"), &ctx.conninfo, ctx.wal.systemid, &ServerOptions::default());
    let (put_ssh, put_ssh_cm, get_ssh, node_home) =
        (home("put-ssh")?, home("put-ssh-cm")?, home("get-ssh")?, home("node")?);
    for (i, name) in get_names.iter().enumerate() {
        let raw = &ctx.wal.segments[i % ctx.wal.segments.len()].path;
        get_ssh.store(name, raw)?;
        node_home.store(name, raw)?;
    }
    let tls = work.join(format!("tls-{tag}"));
    let (port, node) = start_node(&node_home, &bins.barman, client_cert_barman, &tls)?;
    Ok(Side { label: label.to_string(), bins, sshd, cm, put_ssh, put_ssh_cm, get_ssh, node_home, port, tls, node })
}

fn tls_args(cmd: &mut Command, s: &Side) {
    cmd.arg("--tls-ca-file")
        .arg(s.tls.join("ca.crt"))
        .arg("--tls-cert-file")
        .arg(s.tls.join("bench.crt"))
        .arg("--tls-key-file")
        .arg(s.tls.join("bench.key"));
}

/// `barman-wal-archive` of `src` to the side's server over path `p`.
fn put_command(ctx: &Ctx, s: &Side, p: Route, src: &Path) -> Command {
    let mut cmd = Command::new(&s.bins.wal_archive);
    match p {
        Route::PutGrpc => {
            tls_args(&mut cmd, s);
            cmd.args([&format!("grpcs://127.0.0.1:{}", s.port), "pg"]);
        }
        _ => {
            let (wrapper, home) =
                if p == Route::PutSshCm { (s.cm.clone(), &s.put_ssh_cm) } else { (s.sshd.wrapper_dir(), &s.put_ssh) };
            cmd.env("PATH", format!("{}:{}", wrapper.display(), ctx.path_env))
                .arg("-U")
                .arg(&ctx.login_user)
                .arg("-c")
                .arg(&home.config)
                .args(["127.0.0.1", "pg"]);
        }
    }
    cmd.arg(src);
    cmd
}

/// `barman-wal-restore` of `name` into `dest` from the side's server over path `p` (no prefetch).
fn get_command(ctx: &Ctx, s: &Side, p: Route, name: &str, dest: &Path) -> Command {
    let mut cmd = Command::new(&s.bins.wal_restore);
    match p {
        Route::GetGrpc => {
            tls_args(&mut cmd, s);
            cmd.args([&format!("grpcs://127.0.0.1:{}", s.port), "pg"]);
        }
        _ => {
            let wrapper = if p == Route::GetSshCm { s.cm.clone() } else { s.sshd.wrapper_dir() };
            cmd.env("PATH", format!("{}:{}", wrapper.display(), ctx.path_env))
                .arg("-U")
                .arg(&ctx.login_user)
                .arg("-c")
                .arg(&s.get_ssh.config)
                .args(["127.0.0.1", "pg"]);
        }
    }
    cmd.arg(name).arg(dest);
    cmd
}

fn check_len(p: &Path, name: &str) -> Result<()> {
    let len = fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    if len != SEGMENT_SIZE as u64 {
        bail!("barman-wal-restore of {name} left {len} bytes in {}, not 16 MiB", p.display());
    }
    Ok(())
}
