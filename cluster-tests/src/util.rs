//! Small helpers shared by the harness: ports, temp dirs, the OS user PostgreSQL runs as,
//! installing our binaries where that user can run them, polling, and a small filesystem.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// splitmix64: small, fast, and the same sequence for a seed everywhere (a test prints its
/// seed, so that a failing run can be replayed).
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from the clock.
    pub fn from_time() -> Rng {
        Rng(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A duration between `lo` and `hi` seconds, to the millisecond.
    pub fn secs(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo * 1000 + self.below((hi - lo) * 1000 + 1))
    }

    pub fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago and was never handed out before by this process.
pub fn free_port() -> Result<u16> {
    static HANDED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed = HANDED.get_or_init(|| Mutex::new(HashSet::new()));
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 to find a free port")?;
        let port = listener.local_addr().context("reading the address of a bound socket")?.port();
        let mut handed = handed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if handed.insert(port) {
            return Ok(port);
        }
    }
    bail!("no new free port on 127.0.0.1 after 100 tries")
}

/// A fresh directory under the system temp dir, traversable by the PostgreSQL OS user, removed on drop.
#[derive(Debug)]
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// Creates the directory (mode 0755); set `KEEP_TEST_DIRS=1` to keep it after the test.
    pub fn new() -> Result<TestDir> {
        let dir = tempfile::Builder::new()
            .prefix("ct-")
            .tempdir_in(std::env::temp_dir())
            .context("creating a test directory under the temp dir")?;
        let path = dir.path().to_path_buf();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod 0755 {}", path.display()))?;
        Ok(TestDir { dir: Some(dir), path })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        if std::env::var("KEEP_TEST_DIRS").is_ok_and(|v| v == "1") {
            eprintln!("KEEP_TEST_DIRS=1: keeping {}", dir.keep().display());
        } else if let Err(e) = dir.close() {
            eprintln!("could not remove test dir {}: {e}", self.path.display());
        }
    }
}

/// True when this process runs as root (then PostgreSQL runs as the `postgres` OS user).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// An OS account as read from the password database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsUser {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: PathBuf,
}

/// The OS user PostgreSQL processes run as: `postgres` when root, else the current user.
pub fn pg_os_user() -> Result<OsUser> {
    static USER: OnceLock<Result<OsUser, String>> = OnceLock::new();
    let found = USER.get_or_init(|| {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let lookup =
            if is_root() { lookup_user_by_name("postgres") } else { lookup_user_by_uid(unsafe { libc::geteuid() }) };
        lookup.map_err(|e| format!("{e:#}"))
    });
    found.clone().map_err(|e| anyhow!(e))
}

/// The current OS user (root in CI).
pub fn current_os_user() -> Result<OsUser> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    lookup_user_by_uid(unsafe { libc::geteuid() })
}

fn lookup_user_by_name(name: &str) -> Result<OsUser> {
    let cname = CString::new(name).context("user name with a NUL byte")?;
    // SAFETY: cname is a valid C string; the result is copied out before the next getpw* call.
    // The harness looks users up once (cached), so the static buffer is not raced in practice.
    let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
    passwd_to_user(pw).with_context(|| format!("looking up OS user {name:?} (it must exist to run PostgreSQL as root)"))
}

fn lookup_user_by_uid(uid: u32) -> Result<OsUser> {
    // SAFETY: see lookup_user_by_name.
    let pw = unsafe { libc::getpwuid(uid) };
    passwd_to_user(pw).with_context(|| format!("looking up OS user with uid {uid}"))
}

fn passwd_to_user(pw: *const libc::passwd) -> Result<OsUser> {
    if pw.is_null() {
        bail!("no such user in the password database");
    }
    // SAFETY: pw is non-null and points to the libc static passwd entry whose strings are valid C strings.
    let (name, home, uid, gid) = unsafe {
        let pw = &*pw;
        (CStr::from_ptr(pw.pw_name), CStr::from_ptr(pw.pw_dir), pw.pw_uid, pw.pw_gid)
    };
    Ok(OsUser {
        name: name.to_string_lossy().into_owned(),
        uid,
        gid,
        home: PathBuf::from(home.to_string_lossy().into_owned()),
    })
}

/// Makes `cmd` run as the PostgreSQL OS user when root (uid, gid, HOME, USER, cwd `/`); a no-op otherwise.
pub fn as_pg_user(cmd: &mut Command) -> Result<&mut Command> {
    if !is_root() {
        return Ok(cmd);
    }
    let user = pg_os_user()?;
    // std drops supplementary groups when switching uid as root.
    cmd.uid(user.uid)
        .gid(user.gid)
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        // The caller's cwd (e.g. under /root) may not be traversable by that user.
        .current_dir("/");
    Ok(cmd)
}

/// Gives `path` to the PostgreSQL OS user when root (so it can write there); a no-op otherwise.
pub fn chown_to_pg_user(path: &Path) -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let user = pg_os_user()?;
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
        .with_context(|| format!("chown {} to {}", path.display(), user.name))
}

/// Path of a PostgreSQL executable: `$PG_BIN_DIR/<name>`, by default in /usr/lib/postgresql/15/bin.
pub fn pg_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("PG_BIN_DIR").unwrap_or_else(|| "/usr/lib/postgresql/15/bin".into());
    PathBuf::from(dir).join(name)
}

/// Puts each `(name, executable)` at `dir/bin/<name>` (hard link, else copy), mode 0755; returns `dir/bin`.
pub fn install_binaries(dir: &Path, bins: &[(&str, &Path)]) -> Result<PathBuf> {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod 0755 {}", bin.display()))?;
    for (name, src) in bins {
        let dest = bin.join(name);
        match fs::remove_file(&dest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing old {}", dest.display())),
        }
        if fs::hard_link(src, &dest).is_err() {
            fs::copy(src, &dest).with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
        }
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod 0755 {}", dest.display()))?;
    }
    Ok(bin)
}

/// Polls `f` every 50 ms until it returns true; fails naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    loop {
        if f() {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            bail!("timed out after {:.1}s waiting for {what}", timeout.as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tmpfs mounted by [`small_filesystem`]; unmounted on drop.
#[derive(Debug)]
pub struct MountGuard {
    dir: PathBuf,
}

impl MountGuard {
    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.dir).status().is_ok_and(|s| s.success());
        // Still busy (a process has a file open): detach it so the dir can be removed.
        if !ok && !Command::new("umount").arg("-l").arg(&self.dir).status().is_ok_and(|s| s.success()) {
            eprintln!("could not unmount {}", self.dir.display());
        }
    }
}

/// Says why a test part cannot run here. With `BARMAN_TEST_STRICT` set (CI sets
/// it) that is a failure: a machine missing something must not pass by skipping.
pub fn skip(why: &str) {
    if std::env::var_os("BARMAN_TEST_STRICT").is_some() {
        panic!("{why} (BARMAN_TEST_STRICT is set: nothing may be skipped)");
    }
    eprintln!("skipped: {why}");
}

/// Mounts a world-writable tmpfs of `size_mb` MiB at `dir` (created if missing) when root.
/// Returns `Ok(None)`, after printing why, when not root or when mounting is not permitted;
/// callers then skip the test.
pub fn small_filesystem(dir: &Path, size_mb: u32) -> Result<Option<MountGuard>> {
    if !is_root() {
        skip(&format!("small filesystem at {}: mounting a tmpfs needs root", dir.display()));
        return Ok(None);
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m,mode=0777"), "tmpfs"])
        .arg(dir)
        .output()
        .context("running mount")?;
    if !out.status.success() {
        skip(&format!(
            "small filesystem at {}: mount failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
        return Ok(None);
    }
    Ok(Some(MountGuard { dir: dir.to_path_buf() }))
}

/// The last `lines` lines of `text`, for error messages.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `cmd`, failing with its stderr (and `what`) unless it exits 0; returns stdout.
pub fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{what}: could not run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what}: {:?} failed ({})\nstderr: {}\nstdout: {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            tail(&String::from_utf8_lossy(&out.stdout), 20)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates a new directory `base/<prefix><n>` with the first free n (1, 2, ...), mode 0755.
pub fn unique_subdir(base: &Path, prefix: &str) -> Result<PathBuf> {
    fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
    for n in 1..10_000 {
        let dir = base.join(format!("{prefix}{n}"));
        match fs::create_dir(&dir) {
            Ok(()) => {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                    .with_context(|| format!("chmod 0755 {}", dir.display()))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!("no free {prefix}N directory name under {}", base.display())
}
