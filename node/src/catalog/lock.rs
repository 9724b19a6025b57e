//! Barman's lock files: BSD `flock` on `<lockdir>/.<server>-<task>.lock`, mode
//! 0600, holding the owner's pid. Barman and we exclude each other through them.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
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
        let mut op = libc::LOCK_EX;
        if !wait {
            op |= libc::LOCK_NB;
        }
        let mut file = loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(io_err)?;
            flock(&file, op).map_err(|e| match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => LockError::Busy(path.to_path_buf()),
                _ => io_err(e),
            })?;
            // A lock cleanup may have removed the file between our open and our
            // flock: the lock then guards nothing. Only a lock on the file that is
            // still at `path` counts; otherwise start again.
            let ours = file.metadata().map_err(io_err)?;
            match std::fs::metadata(path) {
                Ok(now) if (now.dev(), now.ino()) == (ours.dev(), ours.ino()) => break file,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(e)),
            }
        };
        let pid = format!("{}\n", std::process::id());
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        file.write_all(pid.as_bytes()).map_err(io_err)?;
        file.set_len(pid.len() as u64).map_err(io_err)?;
        Ok(Lock { file })
    }
}

impl Lock {
    /// Takes server `server`'s lock `kind` in `lock_dir`, creating the directory first (a
    /// passive or a fresh home may not have it yet).
    pub fn take(lock_dir: &Path, server: &str, kind: &LockKind, wait: bool) -> Result<Lock, LockError> {
        crate::catalog::durable::create_dir_all(lock_dir)
            .map_err(|source| LockError::Io { path: lock_dir.to_path_buf(), source })?;
        Lock::acquire(&lock_dir.join(kind.file_name(server)), wait)
    }
}

/// `flock`, retried when a signal interrupts it.
fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
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

    #[test]
    fn a_waiter_whose_file_was_cleaned_up_locks_the_new_one() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(LockKind::Xlogdb.file_name("pg"));
        let first = Lock::acquire(&p, false).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || {
                let l = Lock::acquire(&p, true).unwrap();
                tx.send(()).unwrap();
                l
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        // What a lock cleanup does once the holder has gone: the waiter is left
        // blocked on the removed file's inode.
        std::fs::remove_file(&p).unwrap();
        drop(first);
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        let held = waiter.join().unwrap();
        // The waiter holds the file now at the path, so a newcomer is excluded.
        assert!(matches!(Lock::acquire(&p, false), Err(LockError::Busy(_))));
        drop(held);
    }
}
