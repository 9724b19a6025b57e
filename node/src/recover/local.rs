//! A recovery on this host: the backup copied (plain) or unpacked (tar, any compression),
//! tablespaces placed and linked, the metadata, the WAL and its status files, the signal file.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::archive::get_wal::{Delivery, GetWalError, WalSource as ArchiveSource};
use crate::backup::extract::{extract_tar_relinked, start_writeback};
use crate::backup::store::Algorithm;
use crate::catalog::durable::{self, DurableFile};

use super::copy::BackupCopy;
use super::plan::{excluded, tar_archive};

#[derive(Debug, thiserror::Error)]
pub enum LocalCopyError {
    #[error("Failure copying base backup: {0}")]
    Base(#[source] io::Error),
    #[error("unable to prepare '{name}' tablespace (destination '{location}'): {source}")]
    Tablespace { name: String, location: String, source: io::Error },
    #[error("Failure copying WAL files: {0}")]
    Wal(#[source] GetWalError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl BackupCopy<'_> {
    /// Everything, written under `dest` and the tablespaces' locations on this host.
    pub fn to_local(&self) -> Result<(), LocalCopyError> {
        let backup_dir = self.l.base_dir.join(&self.b.id);
        let codec = self.b.info.compression.as_deref().and_then(Algorithm::from_name);
        copy_base(&backup_dir.join("data"), codec, self.dest).map_err(LocalCopyError::Base)?;
        for p in self.placements {
            place_tablespace(&backup_dir, codec, self.dest, p.oid, &p.location).map_err(|source| {
                LocalCopyError::Tablespace { name: p.name.clone(), location: p.location.display().to_string(), source }
            })?;
        }
        self.b.info.save(&self.dest.join(".barman-recover.info")).map_err(io::Error::other)?;
        let manifest = self.dest.join("backup_manifest");
        if manifest.exists() {
            fs::rename(&manifest, self.dest.join(format!("backup_manifest.{}", self.b.id)))?;
        }
        let status = self.wal_dest.join("archive_status");
        durable::create_dir_all(&status)?;
        let src =
            ArchiveSource { layout: self.l, codecs: &self.codecs, custom_decompression: self.custom_decompression };
        for e in self.needed {
            // Under its name only once complete: a failed read leaves no empty segment.
            let mut f = DurableFile::create(&self.wal_dest.join(e.name.as_str()))?;
            src.send(&e.name, Delivery::default(), &mut f).map_err(LocalCopyError::Wal)?;
            f.commit()?;
            if self.archive_status {
                fs::write(status.join(format!("{}.done", e.name)), b"")?;
            }
        }
        if let Some(signal) = self.signal {
            fs::OpenOptions::new().create(true).append(true).open(self.dest.join(signal))?;
        }
        Ok(())
    }
}

/// The data directory into `dest`: a plain copy, or the main tar archive unpacked.
fn copy_base(data: &Path, codec: Option<Algorithm>, dest: &Path) -> io::Result<()> {
    fs::create_dir_all(dest)?;
    fs::set_permissions(dest, fs::Permissions::from_mode(0o700))?;
    if let Some(archive) = tar_archive(data, "base") {
        unpack(&archive, codec, dest)?;
        for rel in ["postmaster.pid", "recovery.conf", "tablespace_map"] {
            let _ = fs::remove_file(dest.join(rel));
        }
        fs::create_dir_all(dest.join("pg_wal"))?;
        return Ok(());
    }
    copy_tree(data, dest, Path::new(""))
}

fn unpack(archive: &Path, codec: Option<Algorithm>, dest: &Path) -> io::Result<()> {
    let f = io::BufReader::new(fs::File::open(archive)?);
    extract_tar_relinked(Algorithm::decoded(codec, f)?, dest, &|_| None).map_err(io::Error::other)?;
    Ok(())
}

fn copy_tree(from: &Path, to: &Path, rel: &Path) -> io::Result<()> {
    for e in fs::read_dir(from)? {
        let e = e?;
        let r = rel.join(e.file_name());
        if excluded(&r) {
            continue;
        }
        let src = e.path();
        let dst = to.join(e.file_name());
        let m = src.symlink_metadata()?;
        if m.file_type().is_symlink() {
            // pg_tblspc links are made again for the tablespaces' destinations.
            if r.starts_with("pg_tblspc") {
                continue;
            }
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else if m.is_dir() {
            fs::create_dir_all(&dst)?;
            fs::set_permissions(&dst, fs::Permissions::from_mode(m.permissions().mode() & 0o7777))?;
            copy_tree(&src, &dst, &r)?;
        } else {
            fs::copy(&src, &dst)?;
            // Writeback starts now, so the fsync pass at the end finds little left to write.
            start_writeback(&fs::File::open(&dst)?, 0, 0);
        }
    }
    Ok(())
}

/// A tablespace into `location`, linked from `pg_tblspc/<oid>`.
fn place_tablespace(backup_dir: &Path, codec: Option<Algorithm>, dest: &Path, oid: u32, loc: &Path) -> io::Result<()> {
    fs::create_dir_all(loc)?;
    match tar_archive(&backup_dir.join("data"), &oid.to_string()) {
        Some(archive) => unpack(&archive, codec, loc)?,
        None => copy_tree(&backup_dir.join(oid.to_string()), loc, Path::new(""))?,
    }
    let link = dest.join("pg_tblspc").join(oid.to_string());
    fs::create_dir_all(dest.join("pg_tblspc"))?;
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(loc, &link)
}
