//! Names that arrive from another host (agent and SFTP listings, sync listings, tar
//! members) and the files made from them. A name passes [`RelPath::parse`] — plain
//! relative components only — before it touches the filesystem, and files and directories
//! are created beneath their root without following a link at any component
//! (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), so that neither a crafted
//! name nor a link planted in the tree can make us write outside it.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Longest relative path taken (PostgreSQL's MAXPGPATH is 1024).
pub const MAX_PATH: usize = 4096;
/// Longest component (NAME_MAX).
pub const MAX_COMPONENT: usize = 255;
/// Deepest nesting taken.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{shown}' is not a plain relative path ({why})")]
pub struct NotConfined {
    /// The name as received, escaped and cut for one log line.
    pub shown: String,
    pub why: &'static str,
}

/// A relative path of plain components: no empty, `.` or `..` component, no leading
/// `/`, no NUL or control character, bounded in length and depth.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(String);

impl RelPath {
    pub fn parse(name: &str) -> Result<RelPath, NotConfined> {
        let refuse = |why| Err(NotConfined { shown: shown(name), why });
        if name.is_empty() {
            return refuse("empty");
        }
        if name.len() > MAX_PATH {
            return refuse("too long");
        }
        if name.starts_with('/') {
            return refuse("absolute");
        }
        if name.chars().any(char::is_control) {
            return refuse("a control character");
        }
        let mut depth = 0;
        for c in name.split('/') {
            match c {
                "" => return refuse("an empty component"),
                "." | ".." => return refuse("a '.' or '..' component"),
                c if c.len() > MAX_COMPONENT => return refuse("a component too long"),
                _ => depth += 1,
            }
        }
        if depth > MAX_DEPTH {
            return refuse("too deep");
        }
        Ok(RelPath(name.to_string()))
    }

    /// One plain component (a file name, a backup id): no `/` at all.
    pub fn component(name: &str) -> Result<RelPath, NotConfined> {
        if name.contains('/') {
            return Err(NotConfined { shown: shown(name), why: "a '/' in a single name" });
        }
        RelPath::parse(name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where it stands under `root` (for messages and reads; create through the
    /// functions below).
    pub fn under(&self, root: &Path) -> PathBuf {
        root.join(&self.0)
    }

    /// The parent directory (None for a single component) and the last component.
    fn split(&self) -> (Option<&str>, &str) {
        match self.0.rsplit_once('/') {
            Some((dir, name)) => (Some(dir), name),
            None => (None, &self.0),
        }
    }
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Text from another host, fit for one log line: control characters escaped, at most
/// 256 characters.
pub fn shown(text: &str) -> String {
    const MAX: usize = 256;
    let mut out: String = text.chars().take(MAX).flat_map(char::escape_debug).collect();
    if text.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a path"))
}

/// `openat2(dir, rel, flags, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`.
fn open_beneath(dir: &impl AsRawFd, rel: &str, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let path = cstr(rel)?;
    // struct open_how of openat2(2) (libc's is non-exhaustive).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: u64::from(mode),
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS,
    };
    // SAFETY: a valid descriptor, a NUL-terminated path and a filled open_how of the
    // size passed; the returned descriptor is owned here.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn open_root(root: &Path) -> io::Result<File> {
    File::options().read(true).custom_flags_dir().open(root)
}

/// `O_DIRECTORY | O_NOFOLLOW` for opening a root directory.
trait DirFlags {
    fn custom_flags_dir(&mut self) -> &mut Self;
}

impl DirFlags for std::fs::OpenOptions {
    fn custom_flags_dir(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::custom_flags(self, libc::O_DIRECTORY | libc::O_NOFOLLOW)
    }
}

/// The directory `rel` (None: `root` itself) beneath `root`, opened without following
/// links; the directories on the way created with `mode` when `create`.
fn dir_beneath(root: &Path, rel: Option<&str>, create: Option<u32>) -> io::Result<OwnedFd> {
    let top = open_root(root)?;
    let mut fd: OwnedFd = top.into();
    let Some(rel) = rel else { return Ok(fd) };
    for c in rel.split('/') {
        let next = match open_beneath(&fd, c, libc::O_DIRECTORY | libc::O_PATH, 0) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && create.is_some() => {
                let name = cstr(c)?;
                // SAFETY: a valid descriptor and a NUL-terminated single component; mkdirat
                // never follows a link in its last component.
                let rc = unsafe { libc::mkdirat(fd.as_raw_fd(), name.as_ptr(), create.unwrap_or(0o700)) };
                if rc != 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::AlreadyExists {
                        return Err(e);
                    }
                }
                open_beneath(&fd, c, libc::O_DIRECTORY | libc::O_PATH, 0)?
            }
            other => other?,
        };
        fd = next;
    }
    Ok(fd)
}

/// Creates the directory `rel` beneath `root` (and those on the way) with `mode`,
/// following no link; an existing directory is fine, anything else there is an error.
pub fn create_dir(root: &Path, rel: &RelPath, mode: u32) -> io::Result<()> {
    dir_beneath(root, Some(rel.as_str()), Some(mode)).map(drop)
}

/// Opens `rel` beneath `root` for writing, created (mode 0600) or truncated, its
/// directories created on the way (mode 0700); no link followed at any component.
pub fn create_file(root: &Path, rel: &RelPath) -> io::Result<File> {
    let (dir, name) = rel.split();
    let parent = dir_beneath(root, dir, Some(0o700))?;
    let fd = open_beneath(&parent, name, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o600)?;
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_names_pass() {
        for ok in ["a", "base/1/2619", "pg_tblspc/16385/PG_15_202209061/5/16386", ".hidden", "a..b"] {
            assert_eq!(RelPath::parse(ok).unwrap().as_str(), ok);
        }
        for (bad, why) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../x", "'.' or '..'"),
            ("a/../../x", "'.' or '..'"),
            ("a/./b", "'.' or '..'"),
            ("a//b", "empty component"),
            ("a/", "empty component"),
            ("a\nb", "control"),
            ("a\0b", "control"),
        ] {
            let e = RelPath::parse(bad).unwrap_err();
            assert!(e.why.contains(why), "{bad:?}: {e}");
        }
        assert!(RelPath::parse("a/".repeat(65).trim_end_matches('/')).is_err());
        assert!(RelPath::parse(&"x".repeat(256)).is_err());
        assert!(RelPath::parse(&"x".repeat(5000)).unwrap_err().shown.chars().count() <= 257);
        assert!(RelPath::component("a/b").is_err());
        assert!(RelPath::component("20240101T000000").is_ok());
    }

    #[test]
    fn files_are_made_beneath_the_root_and_never_through_a_link() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        use std::io::Write;
        create_file(&root, &RelPath::parse("a/b/c").unwrap()).unwrap().write_all(b"x").unwrap();
        assert_eq!(std::fs::read(root.join("a/b/c")).unwrap(), b"x");
        create_dir(&root, &RelPath::parse("d/e").unwrap(), 0o750).unwrap();
        assert!(root.join("d/e").is_dir());

        // A link in the middle, and a link as the last component: refused, nothing outside.
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), root.join("last")).unwrap();
        assert!(create_file(&root, &RelPath::parse("link/f").unwrap()).is_err());
        assert!(create_dir(&root, &RelPath::parse("link/g").unwrap(), 0o700).is_err());
        assert!(create_file(&root, &RelPath::parse("last").unwrap()).is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "written outside the root");
        // The root itself may not be a link either.
        std::os::unix::fs::symlink(&outside, d.path().join("rootlink")).unwrap();
        assert!(create_file(&d.path().join("rootlink"), &RelPath::parse("f").unwrap()).is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }
}
