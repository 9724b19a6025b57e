//! A throwaway sshd on 127.0.0.1 with its own keys, plus client configs and `ssh` wrappers that
//! make a program running plain `ssh` (barman-wal-archive, rsync) use them.

use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::util::{
    as_pg_user, chown_to_pg_user, current_os_user, free_port, is_root, run, tail, unique_subdir, wait_until,
};

/// A running sshd accepting the harness's client key for [`Sshd::login_user`]; killed on drop.
#[derive(Debug)]
pub struct Sshd {
    dir: PathBuf,
    port: u16,
    child: Child,
    login_user: String,
    ssh_config: PathBuf,
    wrapper_dir: PathBuf,
    log_path: PathBuf,
    control_master: Mutex<Option<PathBuf>>,
}

impl Sshd {
    /// Generates keys and configs in `base/sshN` and starts sshd; remote sessions get
    /// `PATH=<session_path>:/usr/local/bin:/usr/bin:/bin` and the `session_env` variables.
    pub fn start(base: &Path, session_path: &[PathBuf], session_env: &[(String, String)]) -> Result<Sshd> {
        Sshd::start_with(base, session_path, session_env, false)
    }

    /// As [`Sshd::start`]; with `pam`, sshd leaves account checks to PAM, so that system
    /// accounts without a password (locked, as Debian's `postgres`) can log in with the key.
    pub fn start_with(
        base: &Path,
        session_path: &[PathBuf],
        session_env: &[(String, String)],
        pam: bool,
    ) -> Result<Sshd> {
        if is_root() && !Path::new("/run/sshd").exists() {
            // sshd's privilege separation needs it when started as root.
            fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
            fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755)).context("chmod /run/sshd")?;
        }
        let dir = unique_subdir(base, "ssh")?;
        let login_user = if is_root() { "root".to_string() } else { current_os_user()?.name };
        let host_key = dir.join("host_ed25519");
        let client_key = dir.join("id_ed25519");
        keygen(&host_key, "cluster-tests-host")?;
        keygen(&client_key, "cluster-tests-client")?;
        // The PostgreSQL OS user runs archive_command with this key; root can read it anyway.
        chown_to_pg_user(&client_key)?;
        chown_to_pg_user(&client_key.with_extension("pub"))?;

        let port = free_port()?;
        let read = |p: &Path| fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
        let authorized_keys = dir.join("authorized_keys");
        write_public(&authorized_keys, &read(&client_key.with_extension("pub"))?)?;
        let known_hosts = dir.join("known_hosts");
        let host_pub = read(&host_key.with_extension("pub"))?;
        write_public(&known_hosts, &format!("[127.0.0.1]:{port},[localhost]:{port} {}\n", host_pub.trim()))?;

        let mut path: Vec<String> = session_path.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        path.push("/usr/local/bin:/usr/bin:/bin".into());
        // sshd keeps only the first SetEnv line, so every variable goes on one.
        // SHLVL=1: Debian's bash sources ~/.bashrc for `ssh host cmd` only at shell level 1, and a
        // developer's .bashrc (root's adds cargo and pyenv dirs) must not reorder the session PATH.
        let mut set_env = format!("\"PATH={}\" SHLVL=1", path.join(":"));
        for (key, value) in session_env {
            if key.contains(['"', '=', ' ']) || value.contains('"') {
                bail!("session variable {key}={value:?} cannot be written in sshd_config");
            }
            set_env.push_str(&format!(" \"{key}={value}\""));
        }
        let sshd_config = dir.join("sshd_config");
        let log_path = dir.join("sshd.log");
        write_public(
            &sshd_config,
            &format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
                 StrictModes no\nUsePAM {pam}\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nSetEnv {set_env}\n\
                 Subsystem sftp internal-sftp\nLogLevel VERBOSE\nPrintMotd no\nPrintLastLog no\nUseDNS no\n\
                 MaxStartups 200\nMaxSessions 200\n",
                quoted(&host_key),
                quoted(&dir.join("sshd.pid")),
                quoted(&authorized_keys),
                pam = if pam { "yes" } else { "no" },
            ),
        )?;
        let log = fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&sshd_config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting /usr/sbin/sshd")?;

        let ssh_config = dir.join("ssh_config");
        write_public(
            &ssh_config,
            &format!(
                "Host 127.0.0.1 localhost\n  Port {port}\n  User {login_user}\n  IdentityFile {}\n  IdentitiesOnly yes\n  \
                 UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  \
                 BatchMode yes\n  LogLevel ERROR\n  ConnectTimeout 10\n",
                quoted(&client_key),
                quoted(&known_hosts)
            ),
        )?;
        let wrapper_dir = dir.join("bin");
        write_wrappers(&wrapper_dir, &ssh_config)?;

        let mut sshd =
            Sshd { dir, port, child, login_user, ssh_config, wrapper_dir, log_path, control_master: Mutex::new(None) };
        let mut exited = None;
        let listening = wait_until(Duration::from_secs(20), &format!("sshd to listen on 127.0.0.1:{port}"), || {
            if let Ok(Some(status)) = sshd.child.try_wait() {
                exited = Some(status);
                return true;
            }
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if let Some(status) = exited {
            bail!("sshd exited ({status}) at start; log:\n{}", tail(&sshd.log(), 30));
        }
        listening.with_context(|| format!("sshd log:\n{}", tail(&sshd.log(), 30)))?;
        Ok(sshd)
    }

    /// The user sessions log in as: root when root, else the current user.
    pub fn login_user(&self) -> String {
        self.login_user.clone()
    }

    /// The TCP port sshd listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host to connect to: "127.0.0.1".
    pub fn host(&self) -> String {
        "127.0.0.1".to_string()
    }

    /// A client config (`ssh -F`) for host 127.0.0.1: port, user, key, pinned host key, batch mode.
    pub fn ssh_config(&self) -> PathBuf {
        self.ssh_config.clone()
    }

    /// A directory with `ssh` and `scp` scripts that use [`Sshd::ssh_config`]; put it first in PATH.
    pub fn wrapper_dir(&self) -> PathBuf {
        self.wrapper_dir.clone()
    }

    /// Like [`Sshd::wrapper_dir`], but connections share a ControlMaster (persisting 60 s, closed on drop).
    pub fn with_control_master(&self) -> Result<PathBuf> {
        let mut slot = self.control_master.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let cm = self.dir.join("cm");
        let bin = cm.join("bin");
        if slot.is_some() {
            return Ok(bin);
        }
        // Sticky and world-writable: root and the PostgreSQL OS user each create their own master
        // socket there (%i, the local uid, keeps them apart).
        fs::create_dir_all(&cm).with_context(|| format!("creating {}", cm.display()))?;
        fs::set_permissions(&cm, fs::Permissions::from_mode(0o1777))
            .with_context(|| format!("chmod {}", cm.display()))?;
        let base = fs::read_to_string(&self.ssh_config).context("reading the ssh client config")?;
        let config = cm.join("ssh_config");
        write_public(
            &config,
            &format!("{base}  ControlMaster auto\n  ControlPath {}\n  ControlPersist 60\n", quoted(&cm.join("%i-%C"))),
        )?;
        write_wrappers(&bin, &config)?;
        *slot = Some(config);
        Ok(bin)
    }

    /// The sshd log so far (empty if unreadable).
    pub fn log(&self) -> String {
        fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    fn close_control_masters(&self) {
        let slot = self.control_master.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(config) = slot.as_ref() else { return };
        let exit = |as_pg: bool| {
            let mut cmd = Command::new("/usr/bin/ssh");
            cmd.arg("-F").arg(config).args(["-O", "exit", "127.0.0.1"]).stdout(Stdio::null()).stderr(Stdio::null());
            if as_pg && as_pg_user(&mut cmd).is_err() {
                return;
            }
            let _ = cmd.status();
        };
        exit(false);
        if is_root() {
            exit(true);
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Connection handlers and the commands they run outlive a killed listener (each command
        // runs in its own session): note the whole tree before closing masters orphans part of it.
        let tree = descendants(self.child.id());
        self.close_control_masters();
        signal_all(&tree, libc::SIGTERM);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let alive = |pid: &i32| Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(*pid);
        if wait_until(Duration::from_secs(2), "sshd sessions to end", || !tree.iter().any(alive)).is_err() {
            signal_all(&tree.iter().copied().filter(alive).collect::<Vec<_>>(), libc::SIGKILL);
        }
    }
}

fn signal_all(pids: &[i32], signal: i32) {
    for &pid in pids {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, signal) };
    }
}

/// The fields after "pid (comm)" in /proc/<pid>/stat: state, ppid, ... (comm may contain spaces or ')').
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat[stat.rfind(')')? + 1..].split_whitespace().map(str::to_string).collect())
}

fn is_zombie(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s == "Z"))
}

/// All live descendants of `root`, read from /proc.
fn descendants(root: u32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    let parents: Vec<(i32, i32)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat_fields(pid)?.get(1)?.parse::<i32>().ok()?)))
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![root as i32];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in &parents {
            if ppid == parent && !found.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
}

fn keygen(path: &Path, comment: &str) -> Result<()> {
    let mut cmd = Command::new("/usr/bin/ssh-keygen");
    cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"]).arg(path);
    run(&mut cmd, "ssh-keygen").map(|_| ())
}

/// Writes a file readable by everyone (the PostgreSQL OS user must read the client configs).
fn write_public(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).with_context(|| format!("chmod {}", path.display()))
}

fn write_wrappers(bin: &Path, config: &Path) -> Result<()> {
    fs::create_dir_all(bin).with_context(|| format!("creating {}", bin.display()))?;
    for tool in ["ssh", "scp"] {
        let script = bin.join(tool);
        write_public(&script, &format!("#!/bin/sh\nexec /usr/bin/{tool} -F {} \"$@\"\n", shell_quote(config)))?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", script.display()))?;
    }
    Ok(())
}

/// A path in double quotes, as ssh/sshd config files accept.
fn quoted(path: &Path) -> String {
    format!("\"{}\"", path.display())
}

/// A path in single quotes for /bin/sh.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', "'\\''"))
}
