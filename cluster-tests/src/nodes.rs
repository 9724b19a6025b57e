//! Running `barman node run` processes, and what tests check afterwards: their logs
//! ([`unexpected_lines`], [`streaming_intervals`], [`check_intervals`]) and the WAL they
//! hold together ([`waldump_gap_check`]).
//!
//! A node's stdout and stderr go to `dir/<name>.log`, appended across restarts; the harness
//! adds its own lines there (`cluster_tests: node killed by the harness ...` and the like), in
//! the node's format, so the log tells the whole story of that node. Declare a `Node` after
//! the `TestDir` and `Sites` it uses: it is killed on drop, before they go.

mod logs;
mod waldump;

pub use logs::{Interval, check_intervals, mono_ms, streaming_intervals, unexpected_lines};
pub use waldump::waldump_gap_check;

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::util::tail;

/// The `barman` binary of this workspace's target dir (beside `deps/`, where test executables are).
pub fn barman_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    let deps = exe.parent().context("the directory of the test executable")?;
    let profile = if deps.ends_with("deps") { deps.parent().unwrap_or(deps) } else { deps };
    let bin = profile.join("barman");
    if !bin.is_file() {
        bail!("{} is missing: build it with cargo build --workspace", bin.display());
    }
    Ok(bin)
}

/// What a test knows about one node; the node itself reads its settings from its config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// The node's name (`node_name`), also the name of its log file.
    pub name: String,
    /// The site it belongs to.
    pub site: String,
    /// Where it listens for peers, `host:port`.
    pub listen: String,
    /// Where peers reach it, `host:port` (a proxy's address, say).
    pub advertise: String,
    /// Where it serves metrics, `host:port`.
    pub metrics: Option<String>,
    /// The network namespace it runs in (see `netns::Sites::ns`).
    pub netns: Option<String>,
}

/// One `barman node run` process (restartable); killed and reaped on drop, even on panic.
#[derive(Debug)]
pub struct Node {
    spec: NodeSpec,
    program: PathBuf,
    args: Vec<OsString>,
    log_path: PathBuf,
    child: Option<Child>,
    /// The current process's exit was seen (and noted in the log).
    exited: Option<ExitStatus>,
}

impl Node {
    /// Starts `[ip netns exec NS] barman -c CONFIG node run` as the current user, logging to
    /// `dir/<name>.log`.
    pub fn start(dir: &Path, spec: NodeSpec, config: &Path) -> Result<Node> {
        let args = ["-c".into(), config.as_os_str().to_owned(), "node".into(), "run".into()];
        Node::start_program(dir, spec, &barman_bin()?, &args)
    }

    /// As [`Node::start`], running `program args` instead (the harness's own tests use this).
    pub fn start_program(dir: &Path, spec: NodeSpec, program: &Path, args: &[OsString]) -> Result<Node> {
        let log_path = dir.join(format!("{}.log", spec.name));
        let (program, args) = (program.to_path_buf(), args.to_vec());
        let mut node = Node { spec, program, args, log_path, child: None, exited: None };
        node.spawn()?;
        Ok(node)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let stderr = log.try_clone().with_context(|| format!("duplicating {}", self.log_path.display()))?;
        let mut cmd = match &self.spec.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(&self.program);
                cmd
            }
            None => Command::new(&self.program),
        };
        cmd.args(&self.args);
        cmd.env("RUST_BACKTRACE", "1").stdin(Stdio::null()).stdout(log).stderr(stderr);
        self.note(&format!("starting node by the harness: {cmd:?}"), "");
        let child = spawn_tied(cmd).with_context(|| format!("starting node {}", self.spec.name))?;
        self.note("node process started by the harness", &format!(" pid={}", child.id()));
        self.child = Some(child);
        self.exited = None;
        Ok(())
    }

    /// The exit status once the process has ended (reaping it, and noting it in the log once).
    fn exit_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_some() {
            return Ok(self.exited);
        }
        let Some(child) = self.child.as_mut() else { return Ok(None) };
        let pid = child.id();
        let status = child.try_wait().with_context(|| format!("checking node {} (pid {pid})", self.spec.name))?;
        if let Some(status) = status {
            self.exited = Some(status);
            self.note("node exit seen by the harness", &format!(" pid={pid} status={status:?}"));
        }
        Ok(status)
    }

    /// The spec it was started with.
    pub fn spec(&self) -> &NodeSpec {
        &self.spec
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The pid of the current process (also after it exited, until a restart).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process runs (a stopped one counts as running).
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && matches!(self.exit_status(), Ok(None))
    }

    /// SIGKILL, then reaps it; noted in the log so that an open streaming interval ends there.
    pub fn kill(&mut self) -> Result<()> {
        if self.child.is_none() || self.exit_status()?.is_some() {
            return Ok(());
        }
        let Some(child) = self.child.as_mut() else { return Ok(()) };
        let pid = child.id();
        child.kill().with_context(|| format!("killing node {} (pid {pid})", self.spec.name))?;
        let status = child.wait().with_context(|| format!("reaping node {} (pid {pid})", self.spec.name))?;
        self.exited = Some(status);
        self.note("node killed by the harness", &format!(" pid={pid}"));
        Ok(())
    }

    /// SIGSTOP: the process freezes, sockets stay open.
    pub fn stop(&mut self) -> Result<()> {
        self.signal(libc::SIGSTOP, "node frozen (SIGSTOP) by the harness")
    }

    /// SIGCONT after [`Node::stop`].
    pub fn cont(&mut self) -> Result<()> {
        self.signal(libc::SIGCONT, "node thawed (SIGCONT) by the harness")
    }

    /// SIGTERM, and waits up to 20 s for it to exit; past that it is killed and this fails.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        if self.child.is_none() {
            bail!("node {} was never started", self.spec.name);
        }
        if let Some(status) = self.exit_status()? {
            return Ok(status);
        }
        self.signal(libc::SIGTERM, "node asked to stop (SIGTERM) by the harness")?;
        // A frozen node must run to handle it.
        self.signal(libc::SIGCONT, "node thawed (SIGCONT) by the harness")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.exit_status()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill()?;
        bail!("node {} still ran 20 s after SIGTERM (killed); log tail:\n{}", self.spec.name, tail(&self.log(), 30))
    }

    /// Starts the node again with the same spec and config; a running one is first terminated.
    pub fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            self.terminate()?;
        }
        self.spawn()
    }

    /// Everything the node (and the harness about it) wrote to its log, across restarts.
    pub fn log(&self) -> String {
        fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Waits until the log contains `needle`; fails early if the process exits.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return Ok(());
            }
            if !self.is_running() {
                bail!("node {} exited before logging {needle:?}; log tail:\n{}", self.spec.name, tail(&self.log(), 30));
            }
            if Instant::now() >= deadline {
                bail!(
                    "node {} did not log {needle:?} within {:.1}s; log tail:\n{}",
                    self.spec.name,
                    timeout.as_secs_f64(),
                    tail(&self.log(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&mut self, signal: i32, what: &str) -> Result<()> {
        let name = self.spec.name.clone();
        let Some(pid) = self.pid() else { bail!("node {name} was never started") };
        if self.exit_status()?.is_some() {
            bail!("node {name} is not running (log tail:\n{})", tail(&self.log(), 30));
        }
        // SAFETY: kill has no memory-safety preconditions; the child is not reaped, so the pid is still its.
        if unsafe { libc::kill(pid as i32, signal) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("signal {signal} to node {name}"));
        }
        self.note(what, &format!(" pid={pid}"));
        Ok(())
    }

    /// Appends a line in the node's log format: `<time>  INFO cluster_tests: <what> node=... mono_ms=...`.
    fn note(&self, what: &str, fields: &str) {
        let line = format!(
            "{}  INFO cluster_tests: {what} node={}{fields} mono_ms={}\n",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            self.spec.name,
            mono_ms()
        );
        let written = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!("could not write to {}: {e}", self.log_path.display());
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!("{e:#}");
        }
    }
}

/// Fails (returns the offending lines) when any node's log has an unexpected ERROR or WARN line.
pub fn assert_clean_logs(nodes: &[&Node], allowed: &[&str]) -> Result<()> {
    let mut report = String::new();
    for node in nodes {
        let bad = unexpected_lines(&node.log(), allowed);
        if !bad.is_empty() {
            report.push_str(&format!("\nnode {} ({}):\n{}", node.name(), node.log_path.display(), bad.join("\n")));
        }
    }
    if report.is_empty() { Ok(()) } else { Err(anyhow!("unexpected ERROR/WARN lines in node logs:{report}")) }
}

/// Spawns `cmd` so that it is killed when the test process dies, however it dies.
///
/// PR_SET_PDEATHSIG fires when the spawning *thread* ends, so spawns happen on one thread
/// that lives as long as the process, never on a test's thread.
fn spawn_tied(mut cmd: Command) -> std::io::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let parent = std::process::id() as i32;
    // SAFETY: prctl and getppid are async-signal-safe; nothing is allocated between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The test process may have died before the call above.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let started = std::thread::Builder::new().name("node spawner".into()).spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
        });
        if let Err(e) = started {
            eprintln!("could not start the node spawner thread: {e}");
        }
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    let sent = spawner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).send((cmd, reply));
    sent.map_err(|_| std::io::Error::other("the node spawner thread is gone"))?;
    answer.recv().map_err(|_| std::io::Error::other("the node spawner thread is gone"))?
}
