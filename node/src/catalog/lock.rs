//! Barman's lock files: BSD `flock` on `<lockdir>/.<server>-<task>.lock`, mode
//! 0600, holding the owner's pid. Barman and we exclude each other through them.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The tasks Barman locks, by lock file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockKind {
    Cron,
    Backup,
    ArchiveWal,
    ReceiveWal,
    Xlogdb,
    SyncWal,
    BackupId(String),
    SyncBackup(String),
}

impl LockKind {
    pub fn file_name(&self, server: &str) -> String {
        match self {
            LockKind::Cron => format!(".{server}-cron.lock"),
            LockKind::Backup => format!(".{server}-backup.lock"),
            LockKind::ArchiveWal => format!(".{server}-archive-wal.lock"),
            LockKind::ReceiveWal => format!(".{server}-receive-wal.lock"),
            LockKind::Xlogdb => format!(".{server}-xlogdb.lock"),
            LockKind::SyncWal => format!(".{server}-sync-wal.lock"),
            LockKind::BackupId(id) => format!(".{server}-{id}.lock"),
            LockKind::SyncBackup(id) => format!(".{server}-{id}-sync-backup.lock"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another process holds {0}")]
    Busy(PathBuf),
    #[error("permission denied on lock file {0}")]
    PermissionDenied(PathBuf),
    #[error("lock file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// A held lock; released when dropped (the file stays, as Barman leaves it).
#[derive(Debug)]
pub struct Lock {
    file: File,
    path: PathBuf,
}

impl Lock {
    /// Takes the lock; `wait` blocks until it is free, else a held lock is `Busy`.
    pub fn acquire(path: &Path, wait: bool) -> Result<Lock, LockError> {
        let io_err = |source: io::Error| {
            if source.kind() == io::ErrorKind::PermissionDenied {
                LockError::PermissionDenied(path.to_path_buf())
            } else {
                LockError::Io { path: path.to_path_buf(), source }
            }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io_err)?;
        let mut op = libc::LOCK_EX;
        if !wait {
            op |= libc::LOCK_NB;
        }
        loop {
            // SAFETY: flock on a descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
            if rc == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => return Err(LockError::Busy(path.to_path_buf())),
                _ => return Err(io_err(e)),
            }
        }
        let pid = format!("{}\n", std::process::id());
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        file.write_all(pid.as_bytes()).map_err(io_err)?;
        file.set_len(pid.len() as u64).map_err(io_err)?;
        Ok(Lock { file, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: unlocking our own descriptor.
        unsafe {
            libc::flock(self.file.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// The pid recorded in a lock file if some process holds the lock now.
pub fn holder(path: &Path) -> Option<u32> {
    let mut file = OpenOptions::new().read(true).open(path).ok()?;
    // SAFETY: a non-blocking probe on our own descriptor.
    let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
    if free {
        // SAFETY: as above.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        return None;
    }
    let mut s = String::new();
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_and_released_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(LockKind::ArchiveWal.file_name("pg"));
        assert!(p.ends_with(".pg-archive-wal.lock"));
        let l = Lock::acquire(&p, false).unwrap();
        assert!(matches!(Lock::acquire(&p, false), Err(LockError::Busy(_))));
        assert_eq!(holder(&p), Some(std::process::id()));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("{}\n", std::process::id()));
        drop(l);
        assert_eq!(holder(&p), None);
        let _again = Lock::acquire(&p, false).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
