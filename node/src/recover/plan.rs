//! What a restore copies out of a backup directory, and where each piece lands: the rules
//! shared by local and remote recovery, and the remote copy as units for the copy engine.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backup::store::Algorithm;
use crate::transport::copy::{MemberFilter, Unit};

/// Files a restore leaves out of the data directory (Barman's rsync exclusions).
pub fn excluded(rel: &Path) -> bool {
    let s = rel.to_string_lossy();
    let top = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
    matches!(s.as_ref(), "postmaster.pid" | "recovery.conf" | "tablespace_map")
        || (["pg_log", "log", "pg_xlog", "pg_wal"].contains(&top.as_str()) && rel.components().count() > 1)
}

/// `pg_tblspc/<oid>` links: made again for the tablespaces' destinations.
fn is_tablespace_link(rel: &Path) -> bool {
    rel.starts_with("pg_tblspc") && rel.components().count() == 2
}

/// `data/<stem>.tar[.ext]` when the backup is stored as tar.
pub fn tar_archive(data: &Path, stem: &str) -> Option<PathBuf> {
    ["", ".gz", ".lz4", ".zst"].iter().map(|ext| data.join(format!("{stem}.tar{ext}"))).find(|p| p.is_file())
}

/// A tablespace and where it goes.
#[derive(Debug, Clone)]
pub struct Placement {
    pub oid: u32,
    pub name: String,
    pub location: PathBuf,
}

/// The backup's files for a remote destination: the data directory (without Barman's
/// exclusions, `backup_manifest` renamed `backup_manifest.<id>`), each tablespace at its
/// location with its `pg_tblspc` link, and an empty `pg_wal` (as Barman's rsync leaves it).
pub fn backup_units(
    backup_dir: &Path,
    id: &str,
    compression: Option<&str>,
    dest: &Path,
    tablespaces: &[Placement],
) -> io::Result<Vec<Unit>> {
    let data = backup_dir.join("data");
    let mut units = vec![Unit::Dir { dest: dest.to_path_buf(), mode: 0o700 }];
    let codec = compression.and_then(Algorithm::from_name);
    let keep: MemberFilter = Arc::new(|rel: &Path| !excluded(rel) && !is_tablespace_link(rel));
    match tar_archive(&data, "base") {
        Some(archive) => {
            units.push(archive_unit(archive, codec, dest, keep.clone())?);
            let manifest = data.join("backup_manifest");
            if manifest.is_file() {
                let size = fs::metadata(&manifest)?.len();
                units.push(Unit::File { dest: dest.join(format!("backup_manifest.{id}")), source: manifest, size });
            }
        }
        None => tree_units(&data, dest, Path::new(""), &|rel| keep(rel), id, &mut units)?,
    }
    units.push(Unit::Dir { dest: dest.join("pg_wal"), mode: 0o700 });
    units.push(Unit::Dir { dest: dest.join("pg_tblspc"), mode: 0o700 });
    for t in tablespaces {
        units.push(Unit::Dir { dest: t.location.clone(), mode: 0o700 });
        let oid = t.oid.to_string();
        match tar_archive(&data, &oid) {
            Some(archive) => units.push(archive_unit(archive, codec, &t.location, Arc::new(|_: &Path| true))?),
            None => tree_units(&backup_dir.join(&oid), &t.location, Path::new(""), &|_| true, id, &mut units)?,
        }
        units.push(Unit::Symlink { dest: dest.join("pg_tblspc").join(&oid), target: t.location.clone() });
    }
    Ok(units)
}

fn archive_unit(archive: PathBuf, codec: Option<Algorithm>, dest: &Path, keep: MemberFilter) -> io::Result<Unit> {
    // Scheduling weight: the stored size (compressed archives unpack larger, and go first anyway).
    let size = fs::metadata(&archive)?.len();
    Ok(Unit::Archive {
        dest: dest.to_path_buf(),
        size,
        open: Box::new(move || {
            let f = io::BufReader::with_capacity(1 << 20, fs::File::open(&archive)?);
            Algorithm::decoded(codec, f)
        }),
        keep,
    })
}

/// A plain directory tree as units, `keep` deciding on paths relative to the top.
fn tree_units(
    from: &Path,
    to: &Path,
    rel: &Path,
    keep: &dyn Fn(&Path) -> bool,
    id: &str,
    units: &mut Vec<Unit>,
) -> io::Result<()> {
    for e in fs::read_dir(from)? {
        let e = e?;
        let r = rel.join(e.file_name());
        if !keep(&r) {
            continue;
        }
        let src = e.path();
        let m = src.symlink_metadata()?;
        let dst = if r == Path::new("backup_manifest") {
            to.join(format!("backup_manifest.{id}"))
        } else {
            to.join(e.file_name())
        };
        if m.file_type().is_symlink() {
            units.push(Unit::Symlink { dest: dst, target: fs::read_link(&src)? });
        } else if m.is_dir() {
            units.push(Unit::Dir { dest: dst.clone(), mode: m.permissions().mode() & 0o7777 });
            tree_units(&src, &dst, &r, keep, id, units)?;
        } else {
            units.push(Unit::File { dest: dst, source: src, size: m.len() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusions_are_barmans() {
        for p in ["postmaster.pid", "recovery.conf", "tablespace_map", "pg_wal/000000010000000000000001", "log/x"] {
            assert!(excluded(Path::new(p)), "{p}");
        }
        for p in ["pg_wal", "base/1/1234", "postgresql.conf", "global/pg_control"] {
            assert!(!excluded(Path::new(p)), "{p}");
        }
        assert!(is_tablespace_link(Path::new("pg_tblspc/16384")));
        assert!(!is_tablespace_link(Path::new("pg_tblspc")));
    }

    #[test]
    fn a_plain_backup_becomes_units_with_the_manifest_renamed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = dir.path();
        fs::create_dir_all(b.join("data/base/1")).expect("mkdir");
        fs::create_dir_all(b.join("data/pg_wal")).expect("mkdir");
        fs::create_dir_all(b.join("data/pg_tblspc")).expect("mkdir");
        fs::write(b.join("data/base/1/1234"), b"x").expect("write");
        fs::write(b.join("data/backup_manifest"), b"{}").expect("write");
        fs::write(b.join("data/pg_wal/000000010000000000000001"), b"w").expect("write");
        fs::create_dir_all(b.join("16400/PG_15")).expect("mkdir");
        fs::write(b.join("16400/PG_15/f"), b"t").expect("write");
        std::os::unix::fs::symlink(b.join("16400"), b.join("data/pg_tblspc/16400")).expect("symlink");
        let places = [Placement { oid: 16400, name: "ts".into(), location: PathBuf::from("/ts/new") }];
        let units = backup_units(b, "20260101T000000", None, Path::new("/pg/data"), &places).expect("units");
        let files: Vec<String> = units
            .iter()
            .filter_map(|u| match u {
                Unit::File { dest, .. } => Some(dest.display().to_string()),
                Unit::Symlink { dest, target } => Some(format!("{} -> {}", dest.display(), target.display())),
                _ => None,
            })
            .collect();
        let mut sorted = files.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            [
                "/pg/data/backup_manifest.20260101T000000",
                "/pg/data/base/1/1234",
                "/pg/data/pg_tblspc/16400 -> /ts/new",
                "/ts/new/PG_15/f",
            ]
        );
    }
}
