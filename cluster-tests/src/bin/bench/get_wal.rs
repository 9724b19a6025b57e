//! `barman get-wal` of one 16 MiB segment, to stdout and with `-o DIR`, for each way it can be
//! stored, against `cp` of the raw segment and Barman 3.17's get-wal on the same archive.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Result, bail};
use barman::wal::compression::{Codec, Codecs};

use crate::Ctx;
use crate::fixture::{Home, ServerOptions, stored_blobs, synthetic_name};
use crate::measure::{Series, median, ms};
use crate::report::{Table, fmt_mib, fmt_ms, fmt_ratio, verdict};

pub const CODECS: [Option<Codec>; 4] = [None, Some(Codec::Gzip), Some(Codec::Lz4), Some(Codec::Zstd)];

pub fn codec_label(c: Option<Codec>) -> &'static str {
    c.map(Codec::name).unwrap_or("none")
}

struct Row {
    codec: Option<Codec>,
    cp: Series,
    cp_fsync: Series,
    /// The codec's command-line tool decompressing to a file (`zstd -dc`...).
    cli: Series,
    ours_stdout: Series,
    ours_dir: Series,
    barman_stdout: Series,
    barman_dir: Series,
    decode_ms: f64,
    stored_pct: f64,
}

pub fn run(ctx: &Ctx) -> Result<Vec<Table>> {
    let out_dir = ctx.scratch.join("get-wal-out");
    fs::create_dir_all(&out_dir)?;
    let mut rows = Vec::new();
    let mut startup = None;
    for codec in CODECS {
        progress!("get-wal, stored {} ...", codec_label(codec));
        let opts = ServerOptions { compression: codec.map(|c| c.name().to_string()), ..Default::default() };
        let home = Home::create(&ctx.scratch, "getwal", &ctx.conninfo, ctx.wal.systemid, &opts)?;
        let n = ctx.counts.get_wal_reps;
        let real = &ctx.wal.segments;
        let blobs = stored_blobs(real, codec, &home.dir.join("blobs"))?;
        for i in 0..n {
            home.store(&synthetic_name(i), &blobs[i % blobs.len()])?;
        }
        crate::measure::sync_all();
        let mut row = Row {
            codec,
            cp: Series::default(),
            cp_fsync: Series::default(),
            cli: Series::default(),
            ours_stdout: Series::default(),
            ours_dir: Series::default(),
            barman_stdout: Series::default(),
            barman_dir: Series::default(),
            decode_ms: decode_ms(codec, &blobs)?,
            stored_pct: 100.0 * total_len(&blobs) / total_len(&real.iter().map(|s| s.path.clone()).collect::<Vec<_>>()),
        };
        let to_file = out_dir.join("stdout");
        let cp_dest = out_dir.join("cp-dest");
        let r = &ctx.runner;
        let get = |barman: &std::path::Path, name: &str, dir: bool| -> Command {
            if dir {
                home.command(barman, &["get-wal", "-o", &out_dir.to_string_lossy(), "pg", name])
            } else {
                home.command(barman, &["get-wal", "pg", name])
            }
        };
        // Warm-up (page cache, dynamic loader, Python's bytecode cache): not timed.
        r.timed_to(&mut get(&ctx.ours.barman, &synthetic_name(0), false), &to_file, "warm-up get-wal")?;
        r.timed_to(&mut get(&ctx.reference.barman, &synthetic_name(0), false), &to_file, "warm-up Barman get-wal")?;
        for i in 0..n {
            let name = synthetic_name(i);
            let raw = &real[i % real.len()].path;
            remove(&cp_dest);
            row.cp.push(r.timed_quiet(Command::new("cp").arg(raw).arg(&cp_dest), "cp")?);
            remove(&cp_dest);
            let mut dd = Command::new("dd");
            dd.arg(format!("if={}", raw.display())).arg(format!("of={}", cp_dest.display())).args([
                "bs=1M",
                "conv=fsync",
                "status=none",
            ]);
            row.cp_fsync.push(r.timed_quiet(&mut dd, "dd conv=fsync")?);
            if let Some(tool) = codec.and_then(cli_tool) {
                let mut c = Command::new(tool);
                c.arg("-dc").arg(&blobs[i % blobs.len()]);
                row.cli.push(r.timed_to(&mut c, &cp_dest, "codec CLI")?);
            }
            row.ours_stdout.push(r.timed_to(&mut get(&ctx.ours.barman, &name, false), &to_file, "get-wal")?);
            check_len(&name, &to_file)?;
            remove(&out_dir.join(&name));
            row.ours_dir.push(r.timed_quiet(&mut get(&ctx.ours.barman, &name, true), "get-wal -o")?);
            check_len(&name, &out_dir.join(&name))?;
            if i < ctx.counts.barman_get_wal_reps {
                row.barman_stdout.push(r.timed_to(
                    &mut get(&ctx.reference.barman, &name, false),
                    &to_file,
                    "Barman get-wal",
                )?);
                check_len(&name, &to_file)?;
                remove(&out_dir.join(&name));
                row.barman_dir.push(r.timed_quiet(&mut get(&ctx.reference.barman, &name, true), "Barman get-wal -o")?);
                check_len(&name, &out_dir.join(&name))?;
            }
        }
        if startup.is_none() {
            startup = Some(measure_startup(ctx, &home)?);
        }
        rows.push(row);
        home.remove();
    }
    let _ = fs::remove_dir_all(&out_dir);
    let mut tables = vec![table(&rows, ctx)];
    if let Some(t) = startup {
        tables.push(t);
    }
    Ok(tables)
}

/// The system's command-line tool for `codec`, when installed.
fn cli_tool(codec: Codec) -> Option<PathBuf> {
    let name = match codec {
        Codec::Gzip => "gzip",
        Codec::Lz4 => "lz4",
        Codec::Zstd => "zstd",
        _ => return None,
    };
    ["/usr/bin", "/bin", "/usr/local/bin"].iter().map(|d| PathBuf::from(d).join(name)).find(|p| p.is_file())
}

fn remove(p: &std::path::Path) {
    let _ = fs::remove_file(p);
}

fn check_len(what: &str, p: &std::path::Path) -> Result<()> {
    let len = fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    if len != crate::fixture::SEGMENT_SIZE as u64 {
        bail!("get-wal of {what} wrote {len} bytes to {}, not 16 MiB", p.display());
    }
    Ok(())
}

fn total_len(files: &[PathBuf]) -> f64 {
    files.iter().map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum::<u64>() as f64
}

/// In-process decompression of each stored segment, single thread, into a buffer already
/// touched (the codec alone, no page faults): median ms.
fn decode_ms(codec: Option<Codec>, blobs: &[PathBuf]) -> Result<f64> {
    let Some(codec) = codec else { return Ok(f64::NAN) };
    let codecs = Codecs::default();
    let mut out = Vec::with_capacity(crate::fixture::SEGMENT_SIZE);
    let mut times = Vec::new();
    for (i, path) in blobs.iter().enumerate() {
        let blob = fs::read(path)?;
        out.clear();
        let t = Instant::now();
        codecs.decompress(codec, &mut &blob[..], &mut out)?;
        if i > 0 {
            times.push(ms(t.elapsed()));
        }
    }
    Ok(median(times))
}

fn cell(s: &Series, reference: &Series) -> String {
    if s.is_empty() {
        return "—".into();
    }
    format!("{} ({})", fmt_ms(s.median_ms()), fmt_ratio(s.median_ms() / reference.median_ms()))
}

fn table(rows: &[Row], ctx: &Ctx) -> Table {
    let mut t = Table::new(
        "get-wal: one 16 MiB segment (median ms, ratio to cp of the raw segment measured alongside)",
        &[
            "stored as",
            "size stored",
            "cp (reference)",
            "dd conv=fsync",
            "codec CLI -dc > file",
            "ours → stdout",
            "ours -o DIR",
            "Barman 3.17 → stdout",
            "Barman 3.17 -o DIR",
            "in-process decode",
            "peak RSS ours / Barman (MiB)",
        ],
    );
    for r in rows {
        let ours_rss = r.ours_stdout.peak_rss_mib().max(r.ours_dir.peak_rss_mib());
        let barman_rss = r.barman_stdout.peak_rss_mib().max(r.barman_dir.peak_rss_mib());
        t.row(vec![
            codec_label(r.codec).to_string(),
            format!("{:.1}%", r.stored_pct),
            fmt_ms(r.cp.median_ms()),
            cell(&r.cp_fsync, &r.cp),
            cell(&r.cli, &r.cp),
            cell(&r.ours_stdout, &r.cp),
            cell(&r.ours_dir, &r.cp),
            cell(&r.barman_stdout, &r.cp),
            cell(&r.barman_dir, &r.cp),
            fmt_ms(r.decode_ms),
            format!("{} / {}", fmt_mib(ours_rss), fmt_mib(barman_rss)),
        ]);
    }
    t.note(format!(
        "Ours: {} calls per row, each a different segment name; Barman: {} calls per row. \
         Every call is a new process (`barman -c CONFIG get-wal pg NAME`), timed from spawn to exit. \
         `dd conv=fsync` and the codec's own CLI (`gzip`/`lz4`/`zstd -dc FILE > OUT`) are extra references: \
         a durable copy, and the same decompression done by the reference C tool.",
        ctx.counts.get_wal_reps, ctx.counts.barman_get_wal_reps
    ));
    for (codec, limit) in [(None, 1.5), (Some(Codec::Zstd), 2.0)] {
        if let Some(r) = rows.iter().find(|r| r.codec == codec) {
            let cp = r.cp.median_ms();
            let (out, dir) = (r.ours_stdout.median_ms(), r.ours_dir.median_ms());
            t.note(format!(
                "Goal: stored {} ≤ {limit}× cp — to stdout {} → {}; with -o DIR {} → {} \
                 (-o DIR is {} of `dd conv=fsync`{}).",
                codec_label(codec),
                fmt_ratio(out / cp),
                verdict(out <= limit * cp),
                fmt_ratio(dir / cp),
                verdict(dir <= limit * cp),
                fmt_ratio(dir / r.cp_fsync.median_ms()),
                if r.cli.is_empty() {
                    String::new()
                } else {
                    format!("; to stdout is {} of the codec's CLI", fmt_ratio(out / r.cli.median_ms()))
                },
            ));
        }
    }
    t
}

/// Start-up cost: `get-wal --test` (reads the config, opens nothing big) and `/bin/true`.
fn measure_startup(ctx: &Ctx, home: &Home) -> Result<Table> {
    let r = &ctx.runner;
    let n = ctx.counts.get_wal_reps;
    let (mut truth, mut ours, mut theirs, mut ours_version) =
        (Series::default(), Series::default(), Series::default(), Series::default());
    let name = synthetic_name(0);
    for i in 0..n {
        truth.push(r.timed_quiet(&mut Command::new("/bin/true"), "true")?);
        ours.push(r.timed_quiet(&mut home.command(&ctx.ours.barman, &["get-wal", "--test", "pg", &name]), "--test")?);
        ours_version.push(r.timed_quiet(Command::new(&ctx.ours.barman).arg("--version"), "--version")?);
        if i < ctx.counts.barman_get_wal_reps {
            theirs.push(r.timed_quiet(
                &mut home.command(&ctx.reference.barman, &["get-wal", "--test", "pg", &name]),
                "Barman --test",
            )?);
        }
    }
    let mut t = Table::new("Process start-up (median ms)", &["command", "median ms", "peak RSS (MiB)"]);
    for (label, s) in [
        ("`/bin/true` (fork + exec floor)", &truth),
        ("ours `barman --version`", &ours_version),
        ("ours `barman -c CONFIG get-wal --test pg NAME`", &ours),
        ("Barman 3.17 `barman -c CONFIG get-wal --test pg NAME`", &theirs),
    ] {
        t.row(vec![label.to_string(), fmt_ms(s.median_ms()), fmt_mib(s.peak_rss_mib())]);
    }
    Ok(t)
}
