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
fn copy_member(entry: &mut impl Read, f: &mut File, path: &Path, buf: &mut [u8]) -> Result<u64, ExtractError> {
    use std::io::Write;
    let mut total = 0u64;
    let mut kicked = 0u64;
    loop {
        let n = match entry.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ExtractError::Stream(e)),
        };
        f.write_all(&buf[..n]).map_err(io_at(path))?;
        total += n as u64;
        if total - kicked >= WRITEBACK_CHUNK {
            start_writeback(f, kicked, total - kicked);
            kicked = total;
        }
    }
    start_writeback(f, kicked, 0);
    Ok(total)
}

type Syncer = (std::sync::mpsc::SyncSender<(File, PathBuf)>, std::thread::JoinHandle<Result<(), ExtractError>>);

/// A thread that fsyncs the files it is given; the first failure ends it (and
/// with it the extraction, whose next send fails).
fn spawn_syncer() -> Syncer {
    let (tx, rx) = std::sync::mpsc::sync_channel::<(File, PathBuf)>(256);
    let t = std::thread::spawn(move || {
        for (f, path) in rx {
            f.sync_all().map_err(io_at(&path))?;
        }
        Ok(())
    });
    (tx, t)
}

/// Written bytes handed to the kernel's writeback as we go, so the fsyncs at
/// the end find little left to write (PostgreSQL's own pre-sync does the same).
const WRITEBACK_CHUNK: u64 = 32 << 20;

/// Starts writing `len` bytes at `from` (0: to the end) to disk, without waiting.
pub fn start_writeback(f: &File, from: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor; failure only loses the hint.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), from as libc::off64_t, len as libc::off64_t, libc::SYNC_FILE_RANGE_WRITE);
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
    // Files are fsynced by a second thread as soon as they are written, while
    // the next ones arrive; the extraction ends when the last one is durable.
    let (to_sync, syncer) = spawn_syncer();
    let mut dirs = vec![dest.to_path_buf()];
    let mut buf = vec![0u8; 256 * 1024];
    for entry in archive.entries().map_err(ExtractError::Stream)? {
        let mut entry = entry.map_err(ExtractError::Stream)?;
        let name = entry.path().map_err(ExtractError::Stream)?.into_owned();
        let path = target(dest, &name)?;
        let mode = entry.header().mode().unwrap_or(0o600) & 0o7777;
        let kind = entry.header().entry_type();
        // Directories come before their files in a base backup: a parent is
        // made here only when the archive did not list it.
        if let Some(parent) = path.parent()
            && dirs.last().map(PathBuf::as_path) != Some(parent)
            && !dirs.iter().any(|d| d == parent)
        {
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
            written.bytes += copy_member(&mut entry, &mut f, &path, &mut buf)?;
            written.files += 1;
            if to_sync.send((f, path)).is_err() {
                break;
            }
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
    drop(to_sync);
    match syncer.join() {
        Ok(r) => r?,
        Err(_) => return Err(ExtractError::Stream(io::Error::other("the fsync thread panicked"))),
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
