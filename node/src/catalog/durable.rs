//! The one durable-write path: temporary name in the same directory, write, fsync
//! the file, rename, fsync the directory. Nothing is acknowledged before that, and
//! nothing half-written ever stands under a final name.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A temporary name next to `final_path`, new for every call in this process:
/// `.<name>.<pid>.<n>.tmp`, hidden (a leading dot) and ending in `.tmp`, so every
/// directory scan of Barman and ours skips it. Unique per call, so that two writers of
/// one name in one process (two put-wal calls of the node for one segment) never share
/// a temporary file; the pid stays in it for [`remove_stale_temps`].
pub fn temp_path_for(final_path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = final_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    final_path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// The process id in one of our temporary names: `.<name>.<pid>.<n>.tmp`, or the
/// `.<name>.<pid>.tmp` of earlier versions.
fn temp_owner(name: &str) -> Option<u32> {
    let stem = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (rest, last) = stem.rsplit_once('.')?;
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match rest.rsplit_once('.') {
        Some((_, pid)) if numeric(pid) && numeric(last) => pid.parse().ok(),
        _ => last.parse().ok(),
    }
}

/// Removes our temporary files left in `dir` by processes that no longer run (a
/// killed put-wal or archive-wal). Returns how many.
pub fn remove_stale_temps(dir: &Path) -> usize {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = temp_owner(&name) else {
            continue;
        };
        if pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
            && fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A file being written under a temporary name; `commit` makes it durable under
/// its final name. Dropped without commit, the temporary file is removed.
pub struct DurableFile {
    file: Option<File>,
    tmp: PathBuf,
    dst: PathBuf,
    sealed: bool,
}

impl DurableFile {
    /// Starts writing `dst` (mode 0600 while in progress; `commit` applies `mode`).
    pub fn create(dst: &Path) -> io::Result<DurableFile> {
        // A new file, never one already there nor through a link planted at the name
        // (a stale one of a dead process that had our pid: the next name).
        let mut tries = 0;
        loop {
            let tmp = temp_path_for(dst);
            let opened = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o600)
                .open(&tmp);
            match opened {
                Ok(file) => return Ok(DurableFile { file: Some(file), tmp, dst: dst.to_path_buf(), sealed: false }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// The open file, e.g. to seek or read back what was written.
    pub fn file(&mut self) -> io::Result<&mut File> {
        self.file.as_mut().ok_or_else(|| io::Error::other("durable file already committed"))
    }

    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// Sets mode and mtime and fsyncs the content, still under the temporary name:
    /// the slow half of a commit, which a worker can do ahead of `publish`.
    pub fn seal(&mut self, mode: u32, mtime: Option<std::time::SystemTime>) -> io::Result<()> {
        let file = self.file()?;
        if let Some(t) = mtime {
            file.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))?;
        }
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        file.sync_all()?;
        self.sealed = true;
        Ok(())
    }

    /// Renames a sealed file into place and fsyncs the directory.
    pub fn publish(mut self) -> io::Result<()> {
        if !self.sealed {
            return Err(io::Error::other("durable file published before it was sealed"));
        }
        let file = self.file.take().ok_or_else(|| io::Error::other("durable file already committed"))?;
        drop(file);
        fs::rename(&self.tmp, &self.dst)?;
        if let Some(dir) = self.dst.parent() {
            fsync_dir(dir)?;
        }
        Ok(())
    }

    /// Like `publish`, but never replaces a file already under the final name:
    /// false (and the temporary file gone) when there is one.
    pub fn publish_new(mut self) -> io::Result<bool> {
        if !self.sealed {
            return Err(io::Error::other("durable file published before it was sealed"));
        }
        let file = self.file.take().ok_or_else(|| io::Error::other("durable file already committed"))?;
        drop(file);
        let linked = fs::hard_link(&self.tmp, &self.dst);
        fs::remove_file(&self.tmp)?;
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e),
        }
        if let Some(dir) = self.dst.parent() {
            fsync_dir(dir)?;
        }
        Ok(true)
    }

    /// seal, then publish.
    pub fn commit_with(mut self, mode: u32, mtime: Option<std::time::SystemTime>) -> io::Result<()> {
        self.seal(mode, mtime)?;
        self.publish()
    }

    /// Renames into place without fsyncing the directory: for copies whose loss
    /// in a crash costs nothing (a WAL file handed to a restore, which asks again).
    /// Never visible half-written; after a crash, only a sealed file is sure to
    /// hold its whole content under the final name.
    pub fn publish_unsynced(mut self) -> io::Result<()> {
        let file = self.file.take().ok_or_else(|| io::Error::other("durable file already committed"))?;
        drop(file);
        fs::rename(&self.tmp, &self.dst)
    }

    pub fn commit(self) -> io::Result<()> {
        self.commit_with(0o600, None)
    }
}

impl Write for DurableFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file()?.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file()?.write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file()?.flush()
    }
}

impl Drop for DurableFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` durably to `dst`.
pub fn write_file(dst: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut f = DurableFile::create(dst)?;
    f.write_all(bytes)?;
    f.commit_with(mode, None)
}

/// Gives the file at `src` a second name `dst`, never replacing a file already
/// there (false then): a hard link, or across filesystems a durable copy (mode
/// 0600, `mtime`). `src`'s content must already be durable (fsynced): a link
/// makes no new copy of the data. The source stays; the caller removes it.
pub fn link_new(src: &Path, dst: &Path, mtime: Option<std::time::SystemTime>) -> io::Result<bool> {
    match fs::hard_link(src, dst) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) || e.raw_os_error() == Some(libc::EPERM) => {
            let mut out = DurableFile::create(dst)?;
            io::copy(&mut File::open(src)?, &mut out)?;
            out.seal(0o600, mtime)?;
            return out.publish_new();
        }
        Err(e) => return Err(e),
    }
    if let Some(d) = dst.parent() {
        fsync_dir(d)?;
    }
    Ok(true)
}

/// syncfs(2) of the filesystem holding `dir`: everything written there, in one call (a
/// backup of thousands of files, instead of an fsync each).
pub fn sync_filesystem(dir: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let d = File::open(dir)?;
    // SAFETY: syncfs only reads the descriptor, which `d` keeps open for the call.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Removes a file (gone already is fine) and fsyncs its directory.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    match path.parent() {
        Some(d) => fsync_dir(d),
        None => Ok(()),
    }
}

/// Creates a directory and its parents (mode 0700 for the ones we make), fsyncing
/// each parent so the new entries survive a crash.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

use std::os::unix::fs::DirBuilderExt;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_writers_of_one_name_in_one_process_never_share_a_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let dst = d.path().join("000000010000000000000001");
        let mut a = DurableFile::create(&dst).unwrap();
        let mut b = DurableFile::create(&dst).unwrap();
        assert_ne!(a.temp_path(), b.temp_path());
        a.write_all(b"first").unwrap();
        b.write_all(b"second, longer").unwrap();
        a.commit().unwrap();
        assert_eq!(fs::read(&dst).unwrap(), b"first");
        b.commit().unwrap();
        assert_eq!(fs::read(&dst).unwrap(), b"second, longer");
    }

    #[test]
    fn a_link_planted_at_a_temporary_name_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let dst = d.path().join("x");
        // The next name this process will use, guessed as an attacker would.
        let next = temp_path_for(&dst);
        let guess = |k: u64| {
            let n: u64 = next.to_string_lossy().rsplit('.').nth(1).unwrap().parse().unwrap();
            d.path().join(format!(".x.{}.{}.tmp", std::process::id(), n + k))
        };
        for k in 1..5 {
            std::os::unix::fs::symlink(&victim, guess(k)).unwrap();
        }
        match DurableFile::create(&dst) {
            Ok(mut f) => {
                f.write_all(b"new").unwrap();
                f.commit().unwrap();
            }
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}"),
        }
        assert_eq!(fs::read(&victim).unwrap(), b"keep", "written through a planted link");
    }

    #[test]
    fn stale_temporary_names_old_and_new_are_read_for_their_pid() {
        assert_eq!(temp_owner(".000000010000000000000001.1234.7.tmp"), Some(1234));
        assert_eq!(temp_owner(".000000010000000000000001.1234.tmp"), Some(1234));
        assert_eq!(temp_owner(".backup.info.99.0.tmp"), Some(99));
        assert_eq!(temp_owner(".backup.info.99.tmp"), Some(99));
        assert_eq!(temp_owner("000000010000000000000001"), None);
        assert_eq!(temp_owner(".x.tmp"), None);
        let d = tempfile::tempdir().unwrap();
        // pid 0 never names a running process of ours in /proc.
        fs::write(d.path().join(".a.4194304.3.tmp"), b"").unwrap();
        fs::write(d.path().join(format!(".b.{}.3.tmp", std::process::id())), b"").unwrap();
        assert_eq!(remove_stale_temps(d.path()), 1);
    }

    #[test]
    fn commit_publishes_and_drop_cleans_up() {
        let d = tempfile::tempdir().unwrap();
        let dst = d.path().join("000000010000000000000001");
        let mut f = DurableFile::create(&dst).unwrap();
        f.write_all(b"abc").unwrap();
        let tmp = f.temp_path().to_path_buf();
        assert!(tmp.file_name().unwrap().to_string_lossy().starts_with('.'));
        assert!(!dst.exists(), "nothing under the final name before commit");
        f.commit_with(0o640, None).unwrap();
        assert_eq!(fs::read(&dst).unwrap(), b"abc");
        assert!(!tmp.exists());

        let dst2 = d.path().join("x");
        let mut g = DurableFile::create(&dst2).unwrap();
        g.write_all(b"half").unwrap();
        let tmp2 = g.temp_path().to_path_buf();
        drop(g);
        assert!(!tmp2.exists() && !dst2.exists());
    }

    #[test]
    fn publish_new_and_link_new_never_replace() {
        let d = tempfile::tempdir().unwrap();
        let dst = d.path().join("identity.json");
        let mut f = DurableFile::create(&dst).unwrap();
        f.write_all(b"first").unwrap();
        f.seal(0o644, None).unwrap();
        assert!(f.publish_new().unwrap());
        let mut g = DurableFile::create(&dst).unwrap();
        g.write_all(b"second").unwrap();
        let tmp = g.temp_path().to_path_buf();
        g.seal(0o644, None).unwrap();
        assert!(!g.publish_new().unwrap());
        assert_eq!(fs::read(&dst).unwrap(), b"first");
        assert!(!tmp.exists(), "the refused temporary file is removed");
        let src = d.path().join("src");
        fs::write(&src, b"x").unwrap();
        assert!(!link_new(&src, &dst, None).unwrap());
        assert!(link_new(&src, &d.path().join("new"), None).unwrap());
        assert!(src.exists(), "the source stays");
        let unsealed = DurableFile::create(&d.path().join("y")).unwrap();
        assert!(unsealed.publish().is_err(), "publishing unsynced data by mistake is refused");
    }

    #[test]
    fn stale_temporary_files_of_dead_processes_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let dead = d.path().join(".000000010000000000000001.4194300.tmp");
        let mine = temp_path_for(&d.path().join("x"));
        fs::write(&dead, b"x").unwrap();
        fs::write(&mine, b"x").unwrap();
        fs::write(d.path().join("000000010000000000000001"), b"x").unwrap();
        assert_eq!(remove_stale_temps(d.path()), 1);
        assert!(!dead.exists() && mine.exists());
    }

    #[test]
    fn create_dir_all_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/c");
        create_dir_all(&p).unwrap();
        create_dir_all(&p).unwrap();
        assert!(p.is_dir());
    }
}
