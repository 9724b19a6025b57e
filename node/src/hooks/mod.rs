//! Hook scripts (`pre_/post_<event>_script` and their `_retry_` variants) run
//! through `sh -c` with Barman's environment and exit-code rules. Shared by every
//! command that has hooks.

use crate::config::ServerConfig;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The Barman version hook scripts and peers are told we are compatible with.
pub const BARMAN_COMPAT_VERSION: &str = "3.17.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pre,
    Post,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Pre => "pre",
            Phase::Post => "post",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Archive,
    Backup,
    Delete,
    Recovery,
    WalDelete,
}

impl Event {
    fn as_str(self) -> &'static str {
        match self {
            Event::Archive => "archive",
            Event::Backup => "backup",
            Event::Delete => "delete",
            Event::Recovery => "recovery",
            Event::WalDelete => "wal_delete",
        }
    }
}

/// A retry hook exited 63 (ABORT_STOP): the operation must stop.
#[derive(Debug, thiserror::Error)]
#[error("{script} was aborted (got exit status 63, Barman requested to stop)")]
pub struct AbortStop {
    pub script: String,
}

const EXIT_ABORT_CONTINUE: i32 = 62;
const EXIT_ABORT_STOP: i32 = 63;
const ATTEMPTS_BEFORE_NAP: u32 = 5;
const BREAK_TIME: Duration = Duration::from_secs(3);
const NAP_TIME: Duration = Duration::from_secs(60);
/// How long one run of a hook may take before it is killed: an hour, or
/// `BARMAN_HOOK_TIMEOUT` seconds.
const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(3600);

fn hook_timeout() -> Duration {
    std::env::var("BARMAN_HOOK_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|n| *n > 0)
        .map_or(DEFAULT_HOOK_TIMEOUT, Duration::from_secs)
}

/// How one run of a script ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ran {
    Code(i32),
    NotRun,
    TimedOut,
}

/// Runs the hooks of one server.
pub struct Hooks<'a> {
    server: &'a ServerConfig,
    config_file: PathBuf,
    path_env: Option<OsString>,
}

impl<'a> Hooks<'a> {
    pub fn new(server: &'a ServerConfig, config_file: &Path) -> Self {
        Hooks { server, config_file: config_file.to_path_buf(), path_env: server.path_env() }
    }

    fn script(&self, option: &str) -> Option<String> {
        self.server.opts.show(option).filter(|s| s != "None" && !s.is_empty())
    }

    /// Whether any hook of `event` is configured.
    pub fn any(&self, event: Event) -> bool {
        let e = event.as_str();
        ["pre", "post"].iter().any(|phase| {
            self.script(&format!("{phase}_{e}_script")).is_some()
                || self.script(&format!("{phase}_{e}_retry_script")).is_some()
        })
    }

    /// Runs the standard and retry hooks of `phase` in Barman's order (pre:
    /// standard then retry; post: retry then standard). `env` holds the event's
    /// variables; `error` is given to retry hooks and to standard pre hooks.
    pub fn run(
        &self,
        event: Event,
        phase: Phase,
        env: &[(&str, String)],
        error: Option<&str>,
    ) -> Result<(), AbortStop> {
        let std_name = format!("{}_script", event.as_str());
        let retry_name = format!("{}_retry_script", event.as_str());
        let standard = |err: Option<&str>| self.run_standard(&std_name, phase, env, err);
        match phase {
            Phase::Pre => {
                standard(error);
                self.run_retry(&retry_name, phase, env, error)?;
            }
            Phase::Post => {
                if let Err(stop) = self.run_retry(&retry_name, phase, env, error) {
                    // A stop request after the fact can only be reported.
                    tracing::warn!(server = %self.server.name, "ignoring stop request from post hook: {stop}");
                }
                // Barman gives the standard post_archive_script no error.
                let err = if event == Event::Archive { None } else { error };
                standard(err);
            }
        }
        Ok(())
    }

    fn command(
        &self,
        script: &str,
        hook: &str,
        phase: Phase,
        retry: bool,
        env: &[(&str, String)],
        error: Option<&str>,
    ) -> Command {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(script);
        for (k, v) in env {
            c.env(k, v);
        }
        c.env("BARMAN_VERSION", BARMAN_COMPAT_VERSION)
            .env("BARMAN_SERVER", &self.server.name)
            .env("BARMAN_CONFIGURATION", &self.config_file)
            .env("BARMAN_HOOK", hook)
            .env("BARMAN_RETRY", if retry { "1" } else { "0" })
            .env("BARMAN_PHASE", phase.as_str());
        // Barman always sets BARMAN_ERROR, empty when there is no error.
        c.env("BARMAN_ERROR", error.unwrap_or(""));
        if let Some(p) = &self.path_env {
            c.env("PATH", p);
        }
        c
    }

    /// Runs a script once; its exit code, or None if it could not run or was
    /// killed for running past the hook timeout.
    fn exec(&self, option: &str, script: &str, mut cmd: Command) -> Ran {
        use std::io::Read;
        use std::os::unix::process::CommandExt;
        use std::process::Stdio;
        // Its own process group, so a timeout kills whatever the script started.
        cmd.process_group(0).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(server = %self.server.name, "cannot run {option} '{script}': {e}");
                return Ran::NotRun;
            }
        };
        let drain = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_string(&mut s);
                }
                s
            })
        };
        let out = drain(child.stdout.take().map(|o| Box::new(o) as Box<dyn Read + Send>));
        let err = drain(child.stderr.take().map(|e| Box::new(e) as Box<dyn Read + Send>));
        let limit = hook_timeout();
        let start = std::time::Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Ok(st),
                Ok(None) if start.elapsed() >= limit => {
                    // SAFETY: signalling the process group the child leads.
                    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                    let _ = child.wait();
                    break Err(Ran::TimedOut);
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    tracing::warn!(server = %self.server.name, "waiting for {option} '{script}': {e}");
                    break Err(Ran::NotRun);
                }
            }
        };
        let (stdout, stderr) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
        let status = match status {
            Ok(st) => st,
            Err(Ran::TimedOut) => {
                tracing::error!(
                    server = %self.server.name,
                    "{option} '{script}' did not end within {} seconds and was killed (BARMAN_HOOK_TIMEOUT sets the limit)",
                    limit.as_secs()
                );
                return Ran::TimedOut;
            }
            Err(r) => return r,
        };
        let code = status.code().unwrap_or(-1);
        if code != 0 {
            tracing::warn!(
                server = %self.server.name,
                "{option} '{script}' returned {code}: {}{}",
                stdout.trim(),
                stderr.trim()
            );
        } else {
            tracing::debug!(server = %self.server.name, "{option} returned 0");
        }
        Ran::Code(code)
    }

    fn run_standard(&self, hook: &str, phase: Phase, env: &[(&str, String)], error: Option<&str>) {
        let option = format!("{}_{hook}", phase.as_str());
        if let Some(script) = self.script(&option) {
            let cmd = self.command(&script, hook, phase, false, env, error);
            self.exec(&option, &script, cmd);
        }
    }

    fn run_retry(
        &self,
        hook: &str,
        phase: Phase,
        env: &[(&str, String)],
        error: Option<&str>,
    ) -> Result<(), AbortStop> {
        let option = format!("{}_{hook}", phase.as_str());
        let Some(script) = self.script(&option) else { return Ok(()) };
        let mut attempts = 1;
        loop {
            let cmd = self.command(&script, hook, phase, true, env, error);
            match self.exec(&option, &script, cmd) {
                // A hang is not retried forever: the operation goes on, as with 62.
                Ran::TimedOut => return Ok(()),
                Ran::Code(0) => return Ok(()),
                Ran::Code(EXIT_ABORT_CONTINUE) => {
                    tracing::warn!(server = %self.server.name, "{script} was aborted (got exit status 62, Barman resumes)");
                    return Ok(());
                }
                Ran::Code(EXIT_ABORT_STOP) => {
                    tracing::error!(server = %self.server.name, "{script} was aborted (got exit status 63, Barman requested to stop)");
                    return Err(AbortStop { script });
                }
                _ => {}
            }
            if attempts <= ATTEMPTS_BEFORE_NAP {
                attempts += 1;
                std::thread::sleep(BREAK_TIME);
            } else {
                attempts = 1;
                std::thread::sleep(NAP_TIME);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn server(extra: &str, dir: &Path) -> Config {
        let text = format!(
            "[barman]\nbarman_home = {}\n[pg]\nconninfo = host=x\nbackup_method = postgres\n{extra}",
            dir.display()
        );
        Config::from_text(&text, Path::new("/etc/barman.conf")).unwrap()
    }

    #[test]
    fn order_environment_and_stop() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log");
        let l = log.display();
        let extra = format!(
            "pre_archive_script = echo \"pre $BARMAN_PHASE $BARMAN_HOOK $BARMAN_RETRY $BARMAN_SEGMENT $BARMAN_SERVER $BARMAN_CONFIGURATION\" >> {l}\n\
             pre_archive_retry_script = echo retry-pre >> {l}; exit 63\n\
             post_archive_retry_script = echo \"retry-post [$BARMAN_ERROR]\" >> {l}\n\
             post_archive_script = echo \"post [$BARMAN_ERROR]\" >> {l}; exit 5\n"
        );
        let cfg = server(&extra, d.path());
        let hooks = Hooks::new(&cfg.servers["pg"], Path::new("/etc/barman.conf"));
        let env = [("BARMAN_SEGMENT", "000000010000000000000001".to_string())];
        let stop = hooks.run(Event::Archive, Phase::Pre, &env, None).unwrap_err();
        assert!(stop.to_string().contains("exit status 63"));
        hooks.run(Event::Archive, Phase::Post, &env, Some("boom")).unwrap();
        let got = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            got,
            "pre pre archive_script 0 000000010000000000000001 pg /etc/barman.conf\nretry-pre\nretry-post [boom]\npost []\n"
        );
    }

    #[test]
    fn abort_continue_and_path_prefix() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let tool = bin.join("mytool");
        std::fs::write(&tool, "#!/bin/sh\nexit 62\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = server(&format!("path_prefix = {}\npre_archive_retry_script = mytool\n", bin.display()), d.path());
        let hooks = Hooks::new(&cfg.servers["pg"], Path::new("/etc/barman.conf"));
        assert!(hooks.run(Event::Archive, Phase::Pre, &[], None).is_ok(), "62 continues");
    }
}
