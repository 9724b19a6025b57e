//! `barman-wal-restore` over ssh, called once per segment as PostgreSQL's restore_command
//! would: one at a time, and with `-p 8` over a long sequence; with and without an OpenSSH
//! ControlMaster; against `cp`, a bare `ssh HOST true` and Barman 3.17's client and server.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};
use barman::wal::compression::Codec;
use cluster_tests::util::unique_subdir;

use crate::fixture::{Home, SEGMENT_SIZE, ServerOptions, stored_blobs, synthetic_name};
use crate::get_wal::codec_label;
use crate::measure::{Series, median, ms};
use crate::report::{Table, fmt_mib, fmt_ms, fmt_ratio, verdict};
use crate::{Ctx, Servers};

/// Which client talks to which server.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Ours,
    Barman,
}

struct Archive {
    home: Home,
    codec: Option<Codec>,
}

/// One client + server + ssh setting.
struct Variant<'a> {
    side: Side,
    archive: &'a Archive,
    /// The directory whose `ssh` wrapper the client finds first in PATH.
    wrapper: PathBuf,
    control_master: bool,
}

impl Variant<'_> {
    fn label(&self) -> String {
        let who = match self.side {
            Side::Ours => "ours → ours",
            Side::Barman => "Barman 3.17 → Barman 3.17",
        };
        let cm = if self.control_master { "ControlMaster" } else { "no ControlMaster" };
        format!("{who}, stored {}, {cm}", codec_label(self.archive.codec))
    }

    fn command(&self, ctx: &Ctx, name: &str, dest: &Path, prefetch: Option<&Path>) -> Command {
        let client = match self.side {
            Side::Ours => &ctx.ours.wal_restore,
            Side::Barman => &ctx.reference.wal_restore,
        };
        let mut c = Command::new(client);
        c.env("PATH", format!("{}:{}", self.wrapper.display(), ctx.path_env))
            .arg("-U")
            .arg(&ctx.login_user)
            .arg("-c")
            .arg(&self.archive.home.config);
        if let Some(spool) = prefetch {
            c.args(["-p", "8", "--spool-dir"]).arg(spool);
        }
        c.args(["127.0.0.1", "pg", name]).arg(dest);
        c
    }
}

pub fn run(ctx: &Ctx, servers: &Servers) -> Result<Vec<Table>> {
    let c = &ctx.counts;
    let total = c.restore_single.max(c.restore_prefetch).max(c.barman_restore_prefetch) + 1;
    let zstd = archive(ctx, Some(Codec::Zstd), total)?;
    let plain = archive(ctx, None, total)?;
    let ours_cm = servers.ours.with_control_master()?;
    let barman_cm = servers.barman.with_control_master()?;
    let variants = |side: Side| -> Vec<Variant<'_>> {
        let (sshd, cm) = match side {
            Side::Ours => (&servers.ours, &ours_cm),
            Side::Barman => (&servers.barman, &barman_cm),
        };
        let archives: Vec<&Archive> = if side == Side::Ours { vec![&zstd, &plain] } else { vec![&zstd] };
        let mut v = Vec::new();
        for a in archives {
            v.push(Variant { side, archive: a, wrapper: sshd.wrapper_dir(), control_master: false });
            v.push(Variant { side, archive: a, wrapper: cm.clone(), control_master: true });
        }
        v
    };
    let ours = variants(Side::Ours);
    let theirs = variants(Side::Barman);

    let work = unique_subdir(&ctx.scratch, "restore")?;
    let dest = work.join("RECOVERYXLOG");
    let r = &ctx.runner;
    // Open both masters (and warm every path) before anything is timed.
    for v in ours.iter().chain(&theirs) {
        r.timed_quiet(&mut v.command(ctx, &synthetic_name(0), &dest, None), "warm-up barman-wal-restore")?;
    }

    // References, interleaved with (a) so that they see the same machine state.
    let mut cp = Series::default();
    let mut ssh_true = [Series::default(), Series::default()];
    let mut ssh_cat = [Series::default(), Series::default()];
    let mut single: Vec<Series> = vec![Series::default(); ours.len() + theirs.len()];
    progress!("barman-wal-restore, one segment per call ...");
    let cat_dest = work.join("cat-dest");
    for i in 0..c.restore_single {
        let name = synthetic_name(i);
        let raw = &ctx.wal.segments[i % ctx.wal.segments.len()].path;
        remove(&dest);
        cp.push(r.timed_quiet(Command::new("cp").arg(raw).arg(&dest), "cp")?);
        for (k, wrapper) in [servers.ours.wrapper_dir(), ours_cm.clone()].iter().enumerate() {
            ssh_true[k].push(r.timed_quiet(Command::new(wrapper.join("ssh")).args(["127.0.0.1", "true"]), "ssh true")?);
            let mut cat = Command::new(wrapper.join("ssh"));
            cat.args(["127.0.0.1", &format!("cat {}", raw.display())]);
            ssh_cat[k].push(r.timed_to(&mut cat, &cat_dest, "ssh cat")?);
        }
        for (k, v) in ours.iter().chain(&theirs).enumerate() {
            if v.side == Side::Barman && i >= c.barman_restore_single {
                continue;
            }
            remove(&dest);
            single[k].push(r.timed_quiet(&mut v.command(ctx, &name, &dest, None), "barman-wal-restore")?);
            check_segment(&dest, &name)?;
        }
    }

    // (b): a sequence of calls as a recovering PostgreSQL makes them, a fresh spool per run.
    let mut runs: Vec<Vec<Series>> = Vec::new();
    for (k, v) in ours.iter().chain(&theirs).enumerate() {
        let (count, reps) = match v.side {
            Side::Ours => (c.restore_prefetch, c.prefetch_reps),
            Side::Barman => (c.barman_restore_prefetch, 1),
        };
        progress!("barman-wal-restore -p 8, {count} segments × {reps}: {} ...", v.label());
        let mut per_run = Vec::new();
        for _ in 0..reps {
            let spool = unique_subdir(&work, "spool")?;
            let mut s = Series::default();
            for i in 0..count {
                let name = synthetic_name(i);
                remove(&dest);
                s.push(r.timed_quiet(&mut v.command(ctx, &name, &dest, Some(&spool)), "barman-wal-restore -p 8")?);
                check_segment(&dest, &name)?;
            }
            let _ = fs::remove_dir_all(&spool);
            per_run.push(s);
        }
        debug_assert_eq!(runs.len(), k);
        runs.push(per_run);
    }
    let breakdown =
        bundle_breakdown(ctx, &ours_cm, &servers.ours.wrapper_dir(), &[&zstd, &plain], &ours, &runs, &work)?;
    let _ = fs::remove_dir_all(&work);

    let all: Vec<&Variant> = ours.iter().chain(&theirs).collect();
    let cp_ms = cp.median_ms();
    let mut a = Table::new(
        "barman-wal-restore, one segment per call (no prefetch): median ms per segment",
        &["variant", "calls", "median ms", "× cp", "× bare ssh (same ssh setting)", "peak RSS client (MiB)"],
    );
    a.row(vec![
        "reference: `cp` of the raw segment".into(),
        cp.len().to_string(),
        fmt_ms(cp_ms),
        "1.00×".into(),
        "—".into(),
        fmt_mib(cp.peak_rss_mib()),
    ]);
    for (k, label) in ["no ControlMaster", "ControlMaster"].iter().enumerate() {
        let t = ssh_true[k].median_ms();
        a.row(vec![
            format!("reference: `ssh HOST true`, {label}"),
            ssh_true[k].len().to_string(),
            fmt_ms(t),
            fmt_ratio(t / cp_ms),
            "1.00×".into(),
            fmt_mib(ssh_true[k].peak_rss_mib()),
        ]);
        let m = ssh_cat[k].median_ms();
        a.row(vec![
            format!("floor: `ssh HOST cat SEGMENT > FILE`, {label}"),
            ssh_cat[k].len().to_string(),
            fmt_ms(m),
            fmt_ratio(m / cp_ms),
            fmt_ratio(m / t),
            fmt_mib(ssh_cat[k].peak_rss_mib()),
        ]);
    }
    for (k, v) in all.iter().enumerate() {
        let t = ssh_true[usize::from(v.control_master)].median_ms();
        let m = single[k].median_ms();
        a.row(vec![
            v.label(),
            single[k].len().to_string(),
            fmt_ms(m),
            fmt_ratio(m / cp_ms),
            fmt_ratio(m / t),
            fmt_mib(single[k].peak_rss_mib()),
        ]);
    }
    a.note("Peak RSS is the client's process tree as wait4 reports it (barman-wal-restore and its ssh); the server side runs under sshd.");

    let mut b = Table::new(
        "barman-wal-restore -p 8: a sequence of calls in WAL order, fresh spool (ms per segment)",
        &[
            "variant",
            "calls",
            "amortised: total ÷ calls",
            "× cp",
            "median 8-call batch ÷ 8",
            "× cp",
            "median call",
            "slowest call",
            "peak RSS client (MiB)",
        ],
    );
    b.row(vec![
        "reference: `cp` of the raw segment".into(),
        cp.len().to_string(),
        fmt_ms(cp_ms),
        "1.00×".into(),
        "—".into(),
        "—".into(),
        fmt_ms(cp_ms),
        fmt_ms(cp.max_ms()),
        fmt_mib(cp.peak_rss_mib()),
    ]);
    let mut goal = Vec::new();
    for (k, v) in all.iter().enumerate() {
        let mut pooled = Series::default();
        let mut batches = Vec::new();
        for s in &runs[k] {
            pooled.samples.extend(s.samples.iter().copied());
            batches.extend(s.samples.chunks_exact(8).map(|c| c.iter().map(|x| ms(x.wall)).sum::<f64>() / 8.0));
        }
        let amortised = pooled.mean_ms();
        let batch = median(batches);
        b.row(vec![
            v.label(),
            format!("{} × {}", runs[k].first().map(Series::len).unwrap_or(0), runs[k].len()),
            fmt_ms(amortised),
            fmt_ratio(amortised / cp_ms),
            fmt_ms(batch),
            fmt_ratio(batch / cp_ms),
            fmt_ms(pooled.median_ms()),
            fmt_ms(pooled.max_ms()),
            fmt_mib(pooled.peak_rss_mib()),
        ]);
        if v.side == Side::Ours {
            goal.push((v.label(), amortised / cp_ms));
        }
    }
    for (label, ratio) in goal {
        b.note(format!("Goal ≤ 6× cp amortised — {label}: {} → {}.", fmt_ratio(ratio), verdict(ratio <= 6.0)));
    }
    b.note("Ours fetches 8 segments per ssh round trip (`get-wal --bundle 8`) and serves the next 7 calls from the spool; Barman's client peeks, then runs one ssh per prefetched file in parallel.");
    Ok(vec![a, b, breakdown])
}

/// Where the time of a prefetching call goes, with a ControlMaster: the server alone, the
/// server behind ssh, ssh alone carrying the 8 plain segments and the 8 files as stored (what
/// the bundle carries), and the whole client call.
fn bundle_breakdown(
    ctx: &Ctx,
    cm: &Path,
    no_cm: &Path,
    archives: &[&Archive],
    ours: &[Variant],
    runs: &[Vec<Series>],
    work: &Path,
) -> Result<Table> {
    progress!("barman-wal-restore -p 8, breakdown of a bundle call ...");
    let r = &ctx.runner;
    let reps = ctx.counts.breakdown_reps;
    let segs = &ctx.wal.segments;
    let mut t = Table::new(
        "Breakdown of one prefetching call (ControlMaster; one bundle = the requested segment + 7 more)",
        &["step", "stored zstd: ms per bundle", "÷ 8", "stored none: ms per bundle", "÷ 8"],
    );
    let mut rows: Vec<(String, Vec<f64>)> = vec![
        ("`barman get-wal --bundle 8 pg NAME > /dev/null` on the server host (no ssh)".into(), vec![]),
        ("`ssh HOST barman get-wal --bundle 8 ...` > /dev/null (server + ssh, no client)".into(), vec![]),
        ("`ssh HOST cat SEG1 … SEG8` > /dev/null (ssh alone carrying 128 MiB)".into(), vec![]),
        ("the same, new connection (no ControlMaster), default cipher".into(), vec![]),
        ("the same, new connection, `-c aes128-gcm@openssh.com`".into(), vec![]),
        (
            "`ssh HOST cat` of the same 8 files as stored > /dev/null (the bytes a bundle carries, ControlMaster)"
                .into(),
            vec![],
        ),
        ("whole client call that fetched a bundle (calls 1, 9, 17, … of the sequence)".into(), vec![]),
        ("client call served from the spool (the other calls)".into(), vec![]),
    ];
    // MiB per bundle as stored, per archive.
    let mut carried: Vec<f64> = Vec::new();
    for a in archives {
        let (mut local, mut remote, mut cat) = (Series::default(), Series::default(), Series::default());
        let (mut cat_new, mut cat_aes, mut cat_stored) = (Series::default(), Series::default(), Series::default());
        let mut stored_bytes = 0u64;
        let sink = work.join("bundle-sink");
        for k in 0..reps {
            let name = synthetic_name(8 * k);
            local.push(r.timed_to(
                &mut a.home.command(&ctx.ours.barman, &["get-wal", "--bundle", "8", "pg", &name]),
                &sink,
                "get-wal --bundle",
            )?);
            let mut ssh = Command::new(cm.join("ssh"));
            ssh.args(["-q", "-T", "127.0.0.1", "barman"])
                .arg(format!("--config {}", a.home.config.display()))
                .arg(format!("get-wal --bundle 8 'pg' '{name}'"));
            remote.push(r.timed_to(&mut ssh, &sink, "ssh get-wal --bundle")?);
            let files: Vec<String> =
                (0..8).map(|j| segs[(8 * k + j) % segs.len()].path.display().to_string()).collect();
            let mut ssh = Command::new(cm.join("ssh"));
            ssh.args(["127.0.0.1", &format!("cat {}", files.join(" "))]);
            cat.push(r.timed_to(&mut ssh, &sink, "ssh cat 8 segments")?);
            let mut ssh = Command::new(no_cm.join("ssh"));
            ssh.args(["127.0.0.1", &format!("cat {}", files.join(" "))]);
            cat_new.push(r.timed_to(&mut ssh, &sink, "ssh cat 8 segments, new connection")?);
            let mut ssh = Command::new(no_cm.join("ssh"));
            ssh.args(["-c", "aes128-gcm@openssh.com", "127.0.0.1", &format!("cat {}", files.join(" "))]);
            cat_aes.push(r.timed_to(&mut ssh, &sink, "ssh -c aes128-gcm cat 8 segments")?);
            // The archive's own files for the 8 names: what the bundle carries (members as stored).
            let stored: Vec<PathBuf> = (0..8).map(|j| a.home.wal_path(&synthetic_name(8 * k + j))).collect();
            stored_bytes += stored.iter().map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum::<u64>();
            let list: Vec<String> = stored.iter().map(|p| p.display().to_string()).collect();
            let mut ssh = Command::new(cm.join("ssh"));
            ssh.args(["127.0.0.1", &format!("cat {}", list.join(" "))]);
            cat_stored.push(r.timed_to(&mut ssh, &sink, "ssh cat 8 stored files")?);
        }
        carried.push(stored_bytes as f64 / reps.max(1) as f64 / (1u64 << 20) as f64);
        let _ = fs::remove_file(&sink);
        let k = ours
            .iter()
            .position(|v| v.control_master && std::ptr::eq(v.archive, *a))
            .ok_or_else(|| anyhow::anyhow!("no ControlMaster variant for an archive"))?;
        let (mut fetch, mut hit) = (Vec::new(), Vec::new());
        for s in &runs[k] {
            for (i, x) in s.samples.iter().enumerate() {
                if i % 8 == 0 { fetch.push(ms(x.wall)) } else { hit.push(ms(x.wall)) }
            }
        }
        for (row, v) in rows.iter_mut().zip([
            local.median_ms(),
            remote.median_ms(),
            cat.median_ms(),
            cat_new.median_ms(),
            cat_aes.median_ms(),
            cat_stored.median_ms(),
            median(fetch),
            median(hit) * 8.0,
        ]) {
            row.1.push(v);
        }
    }
    for (label, v) in rows {
        let mut cells = vec![label];
        for x in v {
            cells.push(fmt_ms(x));
            cells.push(fmt_ms(x / 8.0));
        }
        t.row(cells);
    }
    let carried: Vec<String> = archives
        .iter()
        .zip(&carried)
        .map(|(a, mib)| format!("{:.1} MiB stored {}", mib, codec_label(a.codec)))
        .collect();
    t.note(format!(
        "Medians of {reps} bundles (the first six rows) and of the calls of the -p 8 sequence above; the last row is \
         8 × the median spool hit. The `ssh HOST cat SEG1 … SEG8` rows carry the 8 raw segments (128 MiB of plain WAL) in \
         both columns; the two \"new connection\" rows only compare ssh ciphers (they include ssh's connection set-up). \
         Bundle members travel as stored and the client decodes them: a bundle carries {} (the row `ssh HOST cat` of the files as stored).",
        carried.join(", ")
    ));
    Ok(t)
}

/// A home whose archive holds `count` segments stored with `codec`: the real segments,
/// compressed once, hard-linked under successive names (get-wal does not read their headers).
fn archive(ctx: &Ctx, codec: Option<Codec>, count: usize) -> Result<Archive> {
    let opts = ServerOptions { compression: codec.map(|c| c.name().to_string()), ..Default::default() };
    let home = Home::create(&ctx.scratch, "restore-home", &ctx.conninfo, ctx.wal.systemid, &opts)?;
    let blobs = stored_blobs(&ctx.wal.segments, codec, &home.dir.join("blobs"))?;
    for i in 0..count {
        home.store(&synthetic_name(i), &blobs[i % blobs.len()])?;
    }
    crate::measure::sync_all();
    Ok(Archive { home, codec })
}

fn remove(p: &Path) {
    let _ = fs::remove_file(p);
}

fn check_segment(p: &Path, name: &str) -> Result<()> {
    let len = fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    if len != SEGMENT_SIZE as u64 {
        bail!("barman-wal-restore of {name} left {len} bytes in {}, not 16 MiB", p.display());
    }
    Ok(())
}
