//! Whether the WAL held by several nodes together has no gap: the union of their segments is
//! gathered in one directory and `pg_waldump` reads every record from one LSN to another.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use barman::wal::compression::ALL;
use barman::wal::{SegmentId, TimelineId, WalFileName, WalKind};

use crate::util::tail;

/// One segment file found under a node's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    id: SegmentId,
    partial: bool,
    path: PathBuf,
}

/// Runs `pg_waldump --path DIR --start FROM --end TO` over the union of the WAL segments
/// (uncompressed, and `.partial` files) found anywhere under `wal_dirs` — for each node, say,
/// `barman_home/<server>`, whose `wals/<hash>/` and `streaming/` hold them.
///
/// For each position the newest timeline wins, and a complete segment beats a `.partial`;
/// all are then named on the newest timeline, which pg_waldump reads (a segment carries the
/// older timelines' WAL up to the switch). Fails with pg_waldump's last lines when a record
/// between `from_lsn` and `to_lsn` (`X/Y`) is missing or broken, and on a compressed segment.
pub fn waldump_gap_check(pg_waldump: &Path, wal_dirs: &[PathBuf], from_lsn: &str, to_lsn: &str) -> Result<()> {
    let mut found = Vec::new();
    for dir in wal_dirs {
        collect(dir, &mut found)?;
    }
    let (tli, chosen) = choose(found);
    if chosen.is_empty() {
        bail!("no WAL segment under {wal_dirs:?}");
    }
    let gathered = tempfile::Builder::new().prefix("ct-waldump-").tempdir().context("creating a temp dir for WAL")?;
    for f in &chosen {
        refuse_compressed(&f.path)?;
        let name = WalFileName::segment(SegmentId::new(tli, f.id.log, f.id.seg));
        let dest = gathered.path().join(name.as_str());
        fs::copy(&f.path, &dest).with_context(|| format!("copying {} to {}", f.path.display(), dest.display()))?;
    }
    let out = Command::new(pg_waldump)
        .arg("--path")
        .arg(gathered.path())
        .args(["--start", from_lsn, "--end", to_lsn, "--timeline", &tli.0.to_string(), "--quiet"])
        .output()
        .with_context(|| format!("running {}", pg_waldump.display()))?;
    if !out.status.success() {
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let names: Vec<String> =
            chosen.iter().map(|f| format!("{}{}", f.id, if f.partial { " (partial)" } else { "" })).collect();
        bail!(
            "WAL from {from_lsn} to {to_lsn} is not whole ({}), over the segments {}:\n{}",
            out.status,
            names.join(", "),
            tail(text.trim(), 10)
        );
    }
    Ok(())
}

/// Every segment and `.partial` file under `dir`, recursively.
fn collect(dir: &Path, found: &mut Vec<Found>) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        let kind = entry.file_type().with_context(|| format!("reading the type of {}", path.display()))?;
        if kind.is_dir() {
            collect(&path, found)?;
            continue;
        }
        let Some(name) = entry.file_name().to_str().and_then(|n| n.parse::<WalFileName>().ok()) else { continue };
        match name.kind() {
            WalKind::Segment(id) => found.push(Found { id, partial: false, path }),
            // A `.partial` opened ahead of its first byte holds no WAL: not a candidate.
            WalKind::Partial(id) if !starts_with_zeros(&path)? => found.push(Found { id, partial: true, path }),
            WalKind::Partial(_) => {}
            WalKind::Backup(..) | WalKind::History(_) => {}
        }
    }
    Ok(())
}

/// For each position (log, seg) the file to use, in order, and the newest timeline of all.
fn choose(found: Vec<Found>) -> (TimelineId, Vec<Found>) {
    let mut best: std::collections::BTreeMap<(u32, u32), Found> = std::collections::BTreeMap::new();
    for f in found {
        let better = |old: &Found| (f.id.tli, !f.partial) > (old.id.tli, !old.partial);
        match best.get(&(f.id.log, f.id.seg)) {
            Some(old) if !better(old) => {}
            _ => {
                best.insert((f.id.log, f.id.seg), f);
            }
        }
    }
    let tli = best.values().map(|f| f.id.tli).max().unwrap_or(TimelineId(1));
    (tli, best.into_values().collect())
}

/// Whether the file's first page header is all zeros (nothing was ever written there).
fn starts_with_zeros(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 40];
    let mut file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let n = file.read(&mut head).with_context(|| format!("reading {}", path.display()))?;
    Ok(head[..n].iter().all(|b| *b == 0))
}

fn refuse_compressed(path: &Path) -> Result<()> {
    let mut head = [0u8; 16];
    let n = {
        use std::io::Read;
        let mut file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        file.read(&mut head).with_context(|| format!("reading {}", path.display()))?
    };
    if let Some(codec) = ALL.iter().find(|c| c.magic().is_some_and(|m| head[..n].starts_with(m))) {
        bail!("{} is compressed ({}): the gap check reads uncompressed WAL only", path.display(), codec.name());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str, dir: &str) -> Found {
        let parsed: WalFileName = name.parse().unwrap();
        let id = parsed.segment_id().unwrap();
        Found { id, partial: parsed.is_partial(), path: PathBuf::from(dir).join(name) }
    }

    #[test]
    fn newest_timeline_then_complete_segments_win() {
        let found = vec![
            f("000000010000000000000002", "a"),
            f("000000010000000000000003.partial", "a"),
            f("000000010000000000000003", "b"),
            f("000000010000000000000004", "a"),
            f("000000020000000000000004.partial", "b"),
            f("000000020000000000000005.partial", "b"),
            f("000000010000000000000005", "a"),
        ];
        let (tli, chosen) = choose(found);
        assert_eq!(tli, TimelineId(2));
        let picked: Vec<String> = chosen.iter().map(|c| c.path.display().to_string()).collect();
        assert_eq!(
            picked,
            [
                "a/000000010000000000000002",
                "b/000000010000000000000003",
                "b/000000020000000000000004.partial",
                "b/000000020000000000000005.partial",
            ]
        );
    }
}
