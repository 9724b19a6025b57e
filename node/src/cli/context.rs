//! What every command starts from: the configuration read as the right user,
//! logging, the output writer, and Barman's rules for picking servers.

use super::output::Output;
use crate::config::{Config, ServerConfig};
use std::ffi::CString;
use std::path::Path;

/// How a command treats inactive and disabled servers (Barman's `get_server`).
#[derive(Debug, Clone, Copy)]
pub struct Pick {
    pub skip_inactive: bool,
    pub skip_disabled: bool,
    pub inactive_is_error: bool,
    pub disabled_is_error: bool,
}

impl Pick {
    /// The default of single-server commands: inactive skipped, disabled an error.
    pub const DEFAULT: Pick =
        Pick { skip_inactive: true, skip_disabled: false, inactive_is_error: false, disabled_is_error: true };
    /// Every server, whatever its state, no errors.
    pub const ALL: Pick =
        Pick { skip_inactive: false, skip_disabled: false, inactive_is_error: false, disabled_is_error: false };
}

pub struct Ctx {
    pub cfg: Config,
    pub out: Output,
    /// `barman_user`: the user commands run as (named in recovery settings).
    pub user: String,
}

/// Switches to `barman_user` when running as root; as anyone else the user must
/// already be that user (Barman's rule).
pub fn drop_privileges(user: &str) -> Result<(), String> {
    let cname = CString::new(user).map_err(|_| format!("ERROR: the configured user '{user}' does not exists"))?;
    // SAFETY: getpwnam returns a pointer into static storage or null; it is read
    // before any other call that could overwrite it.
    let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
    if pw.is_null() {
        return Err(format!("ERROR: the configured user '{user}' does not exists"));
    }
    // SAFETY: pw is non-null and points at a valid passwd record.
    let (uid, gid, home) = unsafe {
        let p = &*pw;
        (p.pw_uid, p.pw_gid, std::ffi::CStr::from_ptr(p.pw_dir).to_string_lossy().into_owned())
    };
    // SAFETY: plain syscalls.
    if unsafe { libc::getuid() } == uid {
        return Ok(());
    }
    // SAFETY: initgroups/setgid/setuid on this single-threaded process before any
    // thread is started; failures are checked.
    let ok = unsafe { libc::initgroups(cname.as_ptr(), gid) == 0 && libc::setgid(gid) == 0 && libc::setuid(uid) == 0 };
    if !ok {
        return Err(format!("ERROR: please run barman as '{user}' user"));
    }
    // SAFETY: single-threaded at this point.
    unsafe { std::env::set_var("HOME", home) };
    Ok(())
}

/// Logs go to `log_file`; without one, warnings and errors go to stderr.
pub fn init_logging(log_file: Option<&Path>, level: &str, debug: bool) {
    use tracing_subscriber::EnvFilter;
    let lvl = match level.to_ascii_uppercase().as_str() {
        "DEBUG" => "debug",
        "WARNING" | "WARN" => "warn",
        "ERROR" | "CRITICAL" => "error",
        _ => "info",
    };
    let file = log_file.and_then(|p| {
        // As Barman: the log directory is made if missing; a file that cannot be
        // opened is said once, and standard error is used instead.
        let opened = p
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::OpenOptions::new().create(true).append(true).open(p));
        match opened {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!(
                    "WARNING: Failed opening the requested log file {} ({e}). Using standard error instead.",
                    p.display()
                );
                None
            }
        }
    });
    // Libraries log at warning and above only; our own events at the configured level.
    let builder = tracing_subscriber::fmt().with_ansi(false).with_target(false);
    match file {
        Some(f) => {
            let _ = builder
                .with_env_filter(EnvFilter::new(format!("warn,barman={lvl},barman_output={lvl}")))
                .with_writer(std::sync::Mutex::new(f))
                .try_init();
        }
        None => {
            let lvl = if debug {
                "debug"
            } else if lvl == "error" {
                "error"
            } else {
                "warn"
            };
            let _ = builder
                // What the output writer prints is not repeated by the log on stderr.
                .with_env_filter(EnvFilter::new(format!("warn,barman={lvl},barman_output=off")))
                .with_writer(std::io::stderr)
                .try_init();
        }
    }
}

/// The node daemon's log: every event at the configured level (INFO unless set), to
/// `log_file` or standard error, one line each with its fields (`node`, `server`, `epoch`).
pub fn init_node_logging(log_file: Option<&Path>, level: &str) {
    use tracing_subscriber::EnvFilter;
    let lvl = match level.to_ascii_uppercase().as_str() {
        "DEBUG" => "debug",
        "WARNING" | "WARN" => "warn",
        "ERROR" | "CRITICAL" => "error",
        _ => "info",
    };
    // openraft warns about routine races (late vote responses), h2 about the streams of
    // RPCs given up on a slow peer; their errors still show.
    let filter = EnvFilter::new(format!("warn,openraft=error,h2=error,barman={lvl}"));
    let builder = tracing_subscriber::fmt().with_ansi(false).with_target(false).with_env_filter(filter);
    let file = log_file.and_then(|p| {
        p.parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::OpenOptions::new().create(true).append(true).open(p))
            .map_err(|e| {
                eprintln!(
                    "WARNING: Failed opening the requested log file {} ({e}). Using standard error instead.",
                    p.display()
                )
            })
            .ok()
    });
    let _ = match file {
        Some(f) => builder.with_writer(std::sync::Mutex::new(f)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

impl Ctx {
    /// Servers named on the command line (`all` = every server), by Barman's rules.
    /// Unknown names are reported as errors and left out.
    pub fn servers(&mut self, names: &[String], pick: Pick) -> Vec<ServerConfig> {
        if !self.cfg.global_errors.is_empty() {
            for e in self.cfg.global_errors.clone() {
                self.out.error(e);
            }
            return Vec::new();
        }
        let wanted: Vec<String> = if names.iter().any(|n| n == "all") {
            if names.len() != 1 {
                self.out.error("You cannot use 'all' with other server names");
            }
            self.cfg.servers.keys().cloned().collect()
        } else {
            let mut v = names.to_vec();
            v.sort();
            v.dedup();
            v
        };
        let mut out = Vec::new();
        for n in wanted {
            let Some(s) = self.cfg.servers.get(&n).cloned() else {
                self.out.error(format!("Unknown server '{n}'"));
                continue;
            };
            if let Some(s) = self.admit(s, pick) {
                out.push(s);
            }
        }
        out
    }

    /// Applies the inactive/disabled rules to one server.
    fn admit(&mut self, s: ServerConfig, pick: Pick) -> Option<ServerConfig> {
        if !s.active() {
            if pick.inactive_is_error {
                self.out.error(format!("Inactive server: {}", s.name));
                return None;
            }
            if pick.skip_inactive {
                self.out.info(format!("Skipping inactive server '{}'", s.name));
                return None;
            }
        }
        if s.disabled() {
            if pick.disabled_is_error {
                for m in &s.msg_list {
                    self.out.error(m);
                }
                return None;
            }
            if pick.skip_disabled {
                self.out.info(format!("Skipping temporarily disabled server '{}'", s.name));
                return None;
            }
        }
        Some(s)
    }

    /// One server by name, for single-server commands.
    pub fn server(&mut self, name: &str, pick: Pick) -> Option<ServerConfig> {
        if name == "all" {
            self.out.error("You cannot use 'all' in a single server context");
            return None;
        }
        let mut v = self.servers(&[name.to_string()], pick);
        v.pop()
    }
}

/// Resolves when SIGINT or SIGTERM arrives, naming it; never when the handlers
/// cannot be installed. Long-running commands stop on it and say why.
pub async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// A runtime for the PostgreSQL calls of a command.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}
