//! Timing one child process: wall time from spawn to reaping, and the peak RSS the kernel
//! reports for it (and the descendants it reaped) through wait4.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// One timed run.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub wall: Duration,
    /// ru_maxrss of the child and the descendants it waited for, in KiB.
    pub maxrss_kib: u64,
    /// User + system CPU time of the child and the descendants it waited for.
    pub cpu: Duration,
}

/// Runs commands with their stderr kept in a scratch file, shown when they fail.
#[derive(Debug)]
pub struct Runner {
    stderr_path: PathBuf,
}

impl Runner {
    pub fn new(scratch: &Path) -> Runner {
        Runner { stderr_path: scratch.join("last-stderr") }
    }

    /// Spawns `cmd` (stdin /dev/null unless set by the caller), waits with wait4 and fails
    /// unless it exits 0. Set stdout on `cmd` before calling; it defaults to /dev/null here.
    pub fn timed(&self, cmd: &mut Command, what: &str) -> Result<Sample> {
        let err = File::create(&self.stderr_path).context("creating the stderr scratch file")?;
        cmd.stderr(err);
        reset_peak_rss();
        let start = Instant::now();
        let child = cmd.spawn().with_context(|| format!("{what}: spawning {:?}", cmd.get_program()))?;
        let pid = child.id() as libc::pid_t;
        // The Child handle never waits (dropping it only closes our ends of any pipes).
        drop(child);
        let (status, usage) = wait4(pid)?;
        let wall = start.elapsed();
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            let text = fs::read_to_string(&self.stderr_path).unwrap_or_default();
            bail!(
                "{what}: {cmd:?} failed (wait status {status:#x})\nstderr:\n{}",
                cluster_tests::util::tail(&text, 30)
            );
        }
        Ok(Sample { wall, maxrss_kib: usage.ru_maxrss.max(0) as u64, cpu: cpu_time(&usage) })
    }

    /// [`Runner::timed`] with stdout into `out` (created or truncated before the clock starts).
    pub fn timed_to(&self, cmd: &mut Command, out: &Path, what: &str) -> Result<Sample> {
        let f = File::create(out).with_context(|| format!("creating {}", out.display()))?;
        self.timed(cmd.stdout(f), what)
    }

    /// [`Runner::timed`] with stdout discarded.
    pub fn timed_quiet(&self, cmd: &mut Command, what: &str) -> Result<Sample> {
        self.timed(cmd.stdout(Stdio::null()), what)
    }
}

fn wait4(pid: libc::pid_t) -> Result<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain old data; an all-zero value is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own unreaped child; status and usage point to valid memory.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return Ok((status, usage));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("wait4");
        }
    }
}

fn cpu_time(usage: &libc::rusage) -> Duration {
    let tv = |t: libc::timeval| Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.clamp(0, 999_999) * 1000) as u32);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The samples of one measured variant.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub samples: Vec<Sample>,
}

impl Series {
    pub fn push(&mut self, s: Sample) {
        self.samples.push(s);
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Median wall time in milliseconds.
    pub fn median_ms(&self) -> f64 {
        median(self.samples.iter().map(|s| ms(s.wall)).collect())
    }

    /// Mean wall time in milliseconds (total / count: the amortised cost).
    pub fn mean_ms(&self) -> f64 {
        if self.samples.is_empty() {
            return f64::NAN;
        }
        self.total_ms() / self.samples.len() as f64
    }

    pub fn total_ms(&self) -> f64 {
        self.samples.iter().map(|s| ms(s.wall)).sum()
    }

    pub fn max_ms(&self) -> f64 {
        self.samples.iter().map(|s| ms(s.wall)).fold(f64::NAN, f64::max)
    }

    /// Peak RSS over all samples, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.samples.iter().map(|s| s.maxrss_kib).max().unwrap_or(0) as f64 / 1024.0
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median of `v` (mean of the middle two for an even count); NaN when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Keeps this process small while it spawns children: a child's ru_maxrss starts from what it
/// inherits at exec time (the parent's peak RSS after posix_spawn, its current RSS after fork).
/// Large buffers are given back to the kernel when freed, and then the peak is reset.
pub fn keep_small() {
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
    }
}

/// Resets this process's peak RSS to its current RSS (Linux ≥ 4.0: `5` into clear_refs).
fn reset_peak_rss() {
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe { libc::malloc_trim(0) };
    let _ = fs::write("/proc/self/clear_refs", "5");
}

/// Flushes dirty pages so that writeback left by a setup step is not charged to the next
/// measurement.
pub fn sync_all() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}
