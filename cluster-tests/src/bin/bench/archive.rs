//! `barman archive-wal` throughput: segments placed in `incoming/`, one run archives them all.
//! References: the codec's in-process speed on the same data, and Barman 3.17's archive-wal.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Result, bail};
use barman::wal::compression::{Codec, Codecs, Level};

use crate::Ctx;
use crate::fixture::{
    Home, Segment, ServerOptions, count_files, renamed_segment, synthetic_name, tree_bytes, visible_files,
};
use crate::get_wal::codec_label;
use crate::measure::{Sample, median, sync_all};
use crate::report::{Table, fmt_mib, fmt_rate, fmt_ratio, verdict};

/// One archive-wal run: its segments per second and peak RSS.
#[derive(Debug, Clone, Copy)]
struct Run {
    rate: f64,
    rss_mib: f64,
    /// Bytes under wals/ (the catalogue excluded) per byte archived, in percent.
    stored_pct: f64,
}

#[derive(Default)]
struct Row {
    segments: usize,
    ours: [Vec<Run>; 2],
    barman: Vec<Run>,
    barman_segments: usize,
    raw_rate: f64,
    stored_pct: f64,
    alternate: bool,
}

pub fn run(ctx: &Ctx) -> Result<Vec<Table>> {
    let c = &ctx.counts;
    // (codec, segments per run, runs, Barman too, alternating order)
    let codecs: Vec<(Option<Codec>, usize, usize, bool, bool)> = vec![
        (None, c.archive_segments, c.archive_reps, true, false),
        (Some(Codec::Lz4), c.archive_segments, c.archive_reps, true, false),
        (Some(Codec::Zstd), c.archive_segments, c.archive_reps, true, false),
        (Some(Codec::Zstd), c.archive_segments, 1, false, true),
        (Some(Codec::Gzip), c.archive_segments, c.archive_gzip_reps, true, false),
        (Some(Codec::Bzip2), c.archive_slow_segments, 1, false, false),
        (Some(Codec::Xz), c.archive_slow_segments, 1, false, false),
    ];
    // Every run hard-links the same files into a fresh incoming/: written (and synced) once.
    // In WAL order the `pgbench -i` segments come as a block, then the transaction ones; the
    // alternating pool interleaves them (every other segment compresses several times faster).
    let most = codecs.iter().map(|x| x.1).max().unwrap_or(0).max(c.barman_archive_segments);
    let natural = ctx.scratch.join("archive-pool");
    make_pool(&ctx.wal.natural, most, &natural)?;
    let alternating = ctx.scratch.join("archive-pool-alternating");
    make_pool(&ctx.wal.segments, c.archive_segments, &alternating)?;
    sync_all();
    let mut rows = Vec::new();
    for (codec, n, reps, with_barman, alternate) in codecs {
        let (pool, order) = if alternate { (&alternating, &ctx.wal.segments) } else { (&natural, &ctx.wal.natural) };
        let (raw_rate, stored_pct) = raw_speed(ctx, order, codec, n)?;
        let mut row = Row { segments: n, raw_rate, stored_pct, alternate, ..Default::default() };
        for rep in 0..reps {
            for (j, jobs) in [1usize, 2].into_iter().enumerate() {
                progress!(
                    "archive-wal {} × {n}{}, parallel_jobs = {jobs} (run {}) ...",
                    codec_label(codec),
                    if alternate { " (alternating)" } else { "" },
                    rep + 1
                );
                row.ours[j].push(one_run(ctx, pool, codec, n, Some(jobs), &ctx.ours.barman)?);
            }
        }
        if with_barman {
            let bn = n.min(c.barman_archive_segments);
            progress!("Barman 3.17 archive-wal {} × {bn} ...", codec_label(codec));
            row.barman.push(one_run(ctx, pool, codec, bn, None, &ctx.reference.barman)?);
            row.barman_segments = bn;
        }
        rows.push((codec, row));
    }
    let _ = fs::remove_dir_all(&natural);
    let _ = fs::remove_dir_all(&alternating);
    Ok(vec![table(&rows)])
}

/// `dir/<synthetic name i>` for i < n: `order[i % len]` with its first page header renamed.
fn make_pool(order: &[Segment], n: usize, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    for i in 0..n {
        let name = synthetic_name(i);
        fs::write(dir.join(&name), renamed_segment(&order[i % order.len()], &name)?)?;
    }
    Ok(())
}

/// A fresh home with the first `n` segments of the pool in incoming (hard links, as already
/// durable as put-wal leaves them); times one `archive-wal` and checks that every segment was
/// archived.
fn one_run(ctx: &Ctx, pool: &Path, codec: Option<Codec>, n: usize, jobs: Option<usize>, barman: &Path) -> Result<Run> {
    let opts = ServerOptions { compression: codec.map(|c| c.name().to_string()), parallel_jobs: jobs };
    let home = Home::create(&ctx.scratch, "archive", &ctx.conninfo, ctx.wal.systemid, &opts)?;
    for i in 0..n {
        let name = synthetic_name(i);
        let (src, dst) = (pool.join(&name), home.incoming().join(&name));
        if fs::hard_link(&src, &dst).is_err() {
            fs::copy(&src, &dst)?;
        }
    }
    sync_all();
    let s: Sample = ctx.runner.timed_quiet(&mut home.command(barman, &["archive-wal", "pg"]), "archive-wal")?;
    let left = visible_files(&home.incoming());
    let errors = count_files(&home.server_dir().join("errors"));
    let wals = home.server_dir().join("wals");
    let archived = count_files(&wals).saturating_sub(1); // minus the xlog.db
    let stored = tree_bytes(&wals) - fs::metadata(wals.join("pg-xlog.db")).map(|m| m.len()).unwrap_or(0);
    if !left.is_empty() || errors != 0 || archived != n {
        bail!(
            "archive-wal with {} left {} files in incoming, {errors} in errors and archived {archived} of {n} (see {})",
            codec_label(codec),
            left.len(),
            home.dir.display()
        );
    }
    home.remove();
    Ok(Run {
        rate: n as f64 / s.wall.as_secs_f64(),
        rss_mib: s.maxrss_kib as f64 / 1024.0,
        stored_pct: 100.0 * stored as f64 / (n * crate::fixture::SEGMENT_SIZE) as f64,
    })
}

/// The codec alone, in this process, one thread, over the same sequence of real segments as a
/// run of `n`: segments per second and the stored size in percent. Each distinct segment is
/// timed once and counted as often as the run uses it. For no compression: writing and
/// fsyncing a copy.
fn raw_speed(ctx: &Ctx, segs: &[Segment], codec: Option<Codec>, n: usize) -> Result<(f64, f64)> {
    let codecs = Codecs::default();
    let (mut secs, mut stored, mut plain) = (0.0, 0usize, 0usize);
    let copy = ctx.scratch.join("raw-copy");
    for (k, s) in segs.iter().enumerate().take(n) {
        let uses = (n - k).div_ceil(segs.len());
        let bytes = s.read()?;
        let t = Instant::now();
        let len = match codec {
            Some(c) => {
                let mut out = Vec::new();
                codecs.compress(c, Level::Medium, &mut &bytes[..], &mut out)?;
                out.len()
            }
            None => {
                let mut f = fs::File::create(&copy)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                bytes.len()
            }
        };
        secs += t.elapsed().as_secs_f64() * uses as f64;
        stored += len * uses;
        plain += bytes.len() * uses;
    }
    let _ = fs::remove_file(&copy);
    Ok((n as f64 / secs, 100.0 * stored as f64 / plain as f64))
}

fn med_rate(runs: &[Run]) -> f64 {
    median(runs.iter().map(|r| r.rate).collect())
}

fn max_rss(runs: &[Run]) -> f64 {
    runs.iter().map(|r| r.rss_mib).fold(0.0, f64::max)
}

fn table(rows: &[(Option<Codec>, Row)]) -> Table {
    let mut t = Table::new(
        "archive-wal throughput (segments/s; median of runs, each run archiving the whole incoming/)",
        &[
            "compression",
            "stored size ours / Barman",
            "segments × runs",
            "ours parallel_jobs=1",
            "ours parallel_jobs=2",
            "codec in-process, 1 thread (reference)",
            "ours j=1 ÷ codec",
            "Barman 3.17 (segments)",
            "ours j=1 ÷ Barman",
            "ours j=2 ÷ Barman",
            "peak RSS ours j=1 / j=2 / Barman (MiB)",
        ],
    );
    for (codec, r) in rows {
        let (o1, o2, b) = (med_rate(&r.ours[0]), med_rate(&r.ours[1]), med_rate(&r.barman));
        t.row(vec![
            format!("{}{}", codec_label(*codec), if r.alternate { ", alternating order" } else { "" }),
            match (r.ours[0].first(), r.barman.first()) {
                (Some(o), Some(b)) => format!("{:.1}% / {:.1}%", o.stored_pct, b.stored_pct),
                (Some(o), None) => format!("{:.1}%", o.stored_pct),
                _ => format!("{:.1}%", r.stored_pct),
            },
            format!("{} × {}", r.segments, r.ours[0].len()),
            fmt_rate(o1),
            fmt_rate(o2),
            fmt_rate(r.raw_rate),
            fmt_ratio(o1 / r.raw_rate),
            if r.barman.is_empty() { "—".into() } else { format!("{} ({})", fmt_rate(b), r.barman_segments) },
            fmt_ratio(o1 / b),
            fmt_ratio(o2 / b),
            format!(
                "{} / {} / {}",
                fmt_mib(max_rss(&r.ours[0])),
                fmt_mib(max_rss(&r.ours[1])),
                fmt_mib(max_rss(&r.barman))
            ),
        ]);
    }
    t.note("Segments in WAL order: the `pgbench -i` ones (COPY data, compress several times faster) as a block, then the transaction ones; the \"alternating order\" row interleaves them one by one.");
    t.note("Reference for `none`: writing and fsyncing a 16 MiB copy in-process (archive-wal itself links, it does not copy).");
    t.note("Stored size: bytes under wals/ after the first run, per byte archived. Barman's lz4 at `compression_level = medium` is lz4 level 6 (high-compression mode); ours (lz4_flex) has one fast level, so the two lz4 rows are not the same work.");
    let find = |c: Codec| rows.iter().find(|(k, r)| *k == Some(c) && !r.alternate).map(|(_, r)| r);
    let rate_of = |c: Codec, j: usize| find(c).map(|r| med_rate(&r.ours[j]));
    let barman_of = |c: Codec| find(c).map(|r| med_rate(&r.barman));
    let barman_gzip = barman_of(Codec::Gzip).unwrap_or(f64::NAN);
    for c in [Codec::Zstd, Codec::Lz4] {
        let (Some(o1), Some(o2), Some(b)) = (rate_of(c, 0), rate_of(c, 1), barman_of(c)) else { continue };
        t.note(format!(
            "Goal ≥ 5× Barman with {c}: ours j=1 is {} Barman's {c} and {} Barman's gzip; j=2 is {} and {} → {} (same codec, j=1) / {} (vs Barman's gzip, j=1).",
            fmt_ratio(o1 / b),
            fmt_ratio(o1 / barman_gzip),
            fmt_ratio(o2 / b),
            fmt_ratio(o2 / barman_gzip),
            verdict(o1 >= 5.0 * b),
            verdict(o1 >= 5.0 * barman_gzip),
        ));
    }
    t
}
