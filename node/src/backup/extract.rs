//! A tar stream written out as a plain directory, as pg_basebackup's plain
//! format does: directories, files (with their mode) and symbolic links; any
//! path leaving the destination is refused. Everything written is fsynced,
//! files then directories, before the extraction returns.

use crate::catalog::durable::fsync_dir;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("tar member {name:?} would be written outside {dest}: refusing the archive")]
    UnsafePath { name: String, dest: String },
    #[error("tar member {name:?} is a {kind}, which a base backup never holds")]
    Unsupported { name: String, kind: String },
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("reading the tar stream: {0}")]
    Stream(io::Error),
}

/// What an extraction wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Extracted {
    pub files: u64,
    pub bytes: u64,
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> ExtractError + '_ {
    move |source| ExtractError::Io { path: path.display().to_string(), source }
}

/// The member's path under `dest`, or an error if it is absolute or climbs out.
fn target(dest: &Path, name: &Path) -> Result<PathBuf, ExtractError> {
    let mut out = dest.to_path_buf();
    for c in name.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => {
                return Err(ExtractError::UnsafePath {
                    name: name.display().to_string(),
                    dest: dest.display().to_string(),
                });
            }
        }
    }
    Ok(out)
}

/// Extracts the tar stream `input` into `dest` (created if missing).
pub fn extract_tar(input: impl Read, dest: &Path) -> Result<Extracted, ExtractError> {
    extract_tar_relinked(input, dest, &|_| None)
}

/// Copies a member into its file: a failed read is the stream's fault, a
/// failed write the destination's (a full disk names the file).
fn copy_member(entry: &mut impl Read, f: &mut File, path: &Path) -> Result<u64, ExtractError> {
    use std::io::Write;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ExtractError::Stream(e)),
        };
        f.write_all(&buf[..n]).map_err(io_at(path))?;
        total += n as u64;
    }
}

/// As [`extract_tar`]; a symbolic link whose target `relink` maps is written
/// pointing at the new target (pg_basebackup's tablespace mapping).
pub fn extract_tar_relinked(
    input: impl Read,
    dest: &Path,
    relink: &dyn Fn(&Path) -> Option<PathBuf>,
) -> Result<Extracted, ExtractError> {
    fs::create_dir_all(dest).map_err(io_at(dest))?;
    let mut archive = tar::Archive::new(input);
    let mut written = Extracted::default();
    let mut files = Vec::new();
    let mut dirs = vec![dest.to_path_buf()];
    for entry in archive.entries().map_err(ExtractError::Stream)? {
        let mut entry = entry.map_err(ExtractError::Stream)?;
        let name = entry.path().map_err(ExtractError::Stream)?.into_owned();
        let path = target(dest, &name)?;
        let mode = entry.header().mode().unwrap_or(0o600) & 0o7777;
        let kind = entry.header().entry_type();
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_at(parent))?;
        }
        if kind.is_dir() {
            fs::create_dir_all(&path).map_err(io_at(&path))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_at(&path))?;
            dirs.push(path);
        } else if kind.is_file() {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&path)
                .map_err(io_at(&path))?;
            written.bytes += copy_member(&mut entry, &mut f, &path)?;
            written.files += 1;
            files.push(path);
        } else if kind.is_symlink() {
            let link = entry.link_name().map_err(ExtractError::Stream)?.ok_or_else(|| ExtractError::Unsupported {
                name: name.display().to_string(),
                kind: "symbolic link without a target".into(),
            })?;
            let link = relink(&link).unwrap_or_else(|| link.into_owned());
            std::os::unix::fs::symlink(&link, &path).map_err(io_at(&path))?;
        } else if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() || kind.is_gnu_longname() {
            // Read by the tar crate itself.
        } else {
            return Err(ExtractError::Unsupported { name: name.display().to_string(), kind: format!("{kind:?}") });
        }
    }
    for f in &files {
        File::open(f).and_then(|f| f.sync_all()).map_err(io_at(f))?;
    }
    // Deepest directories first, the destination's parent last.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs.dedup();
    for d in dirs.iter().map(PathBuf::as_path).chain(dest.parent()) {
        fsync_dir(d).map_err(io_at(d))?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h
    }

    #[test]
    fn writes_dirs_files_modes_and_links() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Directory, 0o700, 0);
        b.append_data(&mut h, "base/1", &[][..]).unwrap();
        let mut h = header(tar::EntryType::Regular, 0o600, 5);
        b.append_data(&mut h, "base/1/1259", &b"hello"[..]).unwrap();
        let mut h = header(tar::EntryType::Regular, 0o640, 3);
        b.append_data(&mut h, "global/pg_control", &b"abc"[..]).unwrap();
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, "pg_wal", "/somewhere/else").unwrap();
        let bytes = b.into_inner().unwrap();
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("data");
        let got = extract_tar(&bytes[..], &dest).unwrap();
        assert_eq!(got, Extracted { files: 2, bytes: 8 });
        assert_eq!(fs::read(dest.join("base/1/1259")).unwrap(), b"hello");
        assert_eq!(fs::metadata(dest.join("base/1/1259")).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(dest.join("base/1")).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::read_link(dest.join("pg_wal")).unwrap(), Path::new("/somewhere/else"));
    }

    #[test]
    fn a_path_out_of_the_destination_is_refused() {
        let mut h = header(tar::EntryType::Regular, 0o600, 1);
        // Written by hand: the builder itself refuses such names.
        h.as_old_mut().name[..7].copy_from_slice(b"../evil");
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(&[b'x'; 512]);
        bytes.extend_from_slice(&[0; 1024]);
        let d = tempfile::tempdir().unwrap();
        let e = extract_tar(&bytes[..], &d.path().join("data")).unwrap_err();
        assert!(matches!(e, ExtractError::UnsafePath { .. }), "{e}");
        assert!(!d.path().join("evil").exists());
    }
}
