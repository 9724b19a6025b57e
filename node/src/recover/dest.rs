//! Where a recovery writes: this host's file system, or another host's through SSH. The
//! checks before the copy and the configuration edits after it go through [`Dest`], so the
//! recovery steps read the same for both.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::transport::ssh::{Remote, SshError, quote};

#[derive(Debug, thiserror::Error)]
pub enum DestError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("{what} on {who} failed: {why}")]
    Remote { what: String, who: String, why: String },
}

/// The file operations a recovery needs at its destination.
pub trait Dest {
    fn exists(&self, p: &Path) -> Result<bool, DestError>;
    /// True for a missing path or a directory where `ls` shows nothing (Barman's test:
    /// hidden entries are not seen).
    fn is_empty_dir(&self, p: &Path) -> Result<bool, DestError>;
    /// Bytes an unprivileged writer may still use where `p` is (or would be) created.
    fn free_bytes(&self, p: &Path) -> Result<Option<u64>, DestError>;
    fn read(&self, p: &Path) -> Result<Option<Vec<u8>>, DestError>;
    /// Keeps `p` as `p.origin` and puts `content` at `p` with the original's mode.
    fn replace_keeping_origin(&self, p: &Path, content: &[u8]) -> Result<(), DestError>;
    /// Writes a new file (mode `mode`) at `p`.
    fn write_new(&self, p: &Path, content: &[u8], mode: u32) -> Result<(), DestError>;
    /// Flushes what was written under these directories to disk.
    fn sync(&self, dirs: &[&Path]) -> Result<(), DestError>;
}

/// This host.
pub struct Local;

impl Dest for Local {
    fn exists(&self, p: &Path) -> Result<bool, DestError> {
        Ok(p.symlink_metadata().is_ok())
    }

    fn is_empty_dir(&self, p: &Path) -> Result<bool, DestError> {
        match fs::read_dir(p) {
            Ok(entries) => Ok(entries.flatten().all(|e| e.file_name().as_encoded_bytes().starts_with(b"."))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn free_bytes(&self, p: &Path) -> Result<Option<u64>, DestError> {
        let mut dir = p;
        while !dir.exists() {
            let Some(parent) = dir.parent() else { return Ok(None) };
            dir = parent;
        }
        let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return Ok(None) };
        // SAFETY: statvfs fills the zeroed struct for a NUL-terminated path.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        Ok((rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64))
    }

    fn read(&self, p: &Path) -> Result<Option<Vec<u8>>, DestError> {
        match fs::read(p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn replace_keeping_origin(&self, p: &Path, content: &[u8]) -> Result<(), DestError> {
        let origin = origin_of(p);
        let mode = fs::metadata(p)?.permissions().mode() & 0o7777;
        fs::rename(p, &origin)?;
        crate::catalog::durable::write_file(p, content, mode)?;
        Ok(())
    }

    fn write_new(&self, p: &Path, content: &[u8], mode: u32) -> Result<(), DestError> {
        Ok(crate::catalog::durable::write_file(p, content, mode)?)
    }

    fn sync(&self, dirs: &[&Path]) -> Result<(), DestError> {
        for d in dirs {
            sync_tree(d)?;
        }
        Ok(())
    }
}

/// fsync of every file and directory under `dir` (symbolic links are not followed).
fn sync_tree(dir: &Path) -> io::Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                fs::File::open(e.path())?.sync_all()?;
            }
        }
        crate::catalog::durable::fsync_dir(&d)?;
    }
    Ok(())
}

fn origin_of(p: &Path) -> std::path::PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".origin");
    s.into()
}

/// Another host, reached through SSH; every step is a POSIX shell command there.
pub struct RemoteDest<'a> {
    pub remote: &'a Remote,
}

impl RemoteDest<'_> {
    /// Runs `script` with `sh` (whatever the account's login shell is).
    fn sh(&self, what: &str, script: &str, stdin: Option<Vec<u8>>) -> Result<crate::transport::ssh::Output, DestError> {
        let out = self.remote.run(&format!("sh -c {}", quote(script)), stdin)?;
        if out.code.is_none() {
            return Err(self.failed(what, out.why()));
        }
        Ok(out)
    }

    fn failed(&self, what: &str, why: String) -> DestError {
        DestError::Remote { what: what.to_string(), who: self.remote.target().display(), why }
    }
}

fn q(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

impl Dest for RemoteDest<'_> {
    fn exists(&self, p: &Path) -> Result<bool, DestError> {
        let out = self.sh("checking a path", &format!("test -e {0} || test -L {0}", q(p)), None)?;
        Ok(out.success())
    }

    fn is_empty_dir(&self, p: &Path) -> Result<bool, DestError> {
        let script = format!(
            "if [ ! -e {0} ]; then echo empty; elif [ ! -d {0} ]; then echo file; \
             elif [ -z \"$(ls {0})\" ]; then echo empty; else echo full; fi",
            q(p)
        );
        let out = self.sh("listing a directory", &script, None)?;
        match String::from_utf8_lossy(&out.stdout).trim() {
            "empty" => Ok(true),
            "full" | "file" => Ok(false),
            _ => Err(self.failed(&format!("listing {}", p.display()), out.why())),
        }
    }

    fn free_bytes(&self, p: &Path) -> Result<Option<u64>, DestError> {
        let script =
            format!("p={}; while [ ! -e \"$p\" ]; do p=$(dirname \"$p\"); done; df -Pk \"$p\" | tail -n 1", q(p));
        let out = self.sh("reading the free space", &script, None)?;
        // Filesystem 1024-blocks Used Available Capacity Mounted-on
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text.split_whitespace().nth(3).and_then(|kb| kb.parse::<u64>().ok()).map(|kb| kb * 1024))
    }

    fn read(&self, p: &Path) -> Result<Option<Vec<u8>>, DestError> {
        let out = self.sh("reading a file", &format!("test -e {0} || exit 3; cat {0}", q(p)), None)?;
        match out.code {
            Some(0) => Ok(Some(out.stdout)),
            Some(3) => Ok(None),
            _ => Err(self.failed(&format!("reading {}", p.display()), out.why())),
        }
    }

    fn replace_keeping_origin(&self, p: &Path, content: &[u8]) -> Result<(), DestError> {
        let origin = origin_of(p);
        let temp = crate::catalog::durable::temp_path_for(p);
        let script = format!(
            "set -e; mode=$(stat -c %a {p}); mv -f {p} {o}; cat > {t}; chmod \"$mode\" {t}; mv -f {t} {p}",
            p = q(p),
            o = q(&origin),
            t = q(&temp)
        );
        let out = self.sh("rewriting a file", &script, Some(content.to_vec()))?;
        if !out.success() {
            return Err(self.failed(&format!("rewriting {}", p.display()), out.why()));
        }
        Ok(())
    }

    fn write_new(&self, p: &Path, content: &[u8], mode: u32) -> Result<(), DestError> {
        let temp = crate::catalog::durable::temp_path_for(p);
        let script = format!("set -e; cat > {t}; chmod {mode:o} {t}; mv -f {t} {p}", t = q(&temp), p = q(p));
        let out = self.sh("writing a file", &script, Some(content.to_vec()))?;
        if !out.success() {
            return Err(self.failed(&format!("writing {}", p.display()), out.why()));
        }
        Ok(())
    }

    fn sync(&self, dirs: &[&Path]) -> Result<(), DestError> {
        let paths: Vec<String> = dirs.iter().map(|d| q(d)).collect();
        // sync -f (coreutils 8.24+) flushes just these file systems; plain sync otherwise.
        let out = self.sh("syncing", &format!("sync -f {} 2>/dev/null || sync", paths.join(" ")), None)?;
        if !out.success() {
            return Err(self.failed("sync", out.why()));
        }
        Ok(())
    }
}
