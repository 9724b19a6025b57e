//! Where an `ssh ...` command line (Barman's `--remote-ssh-command`, `ssh_command`) leads:
//! the user, host, port, keys and known-hosts files OpenSSH would use, read from the
//! command's options and the ssh_config files, so our client reaches the same account.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::SshError;

/// One SSH destination as OpenSSH would resolve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// The host as written on the command line (shown in messages).
    pub alias: String,
    /// The address to connect to (`HostName`, else the alias).
    pub hostname: String,
    pub port: u16,
    pub user: String,
    /// Private keys to offer, in order; missing files are skipped.
    pub identity_files: Vec<PathBuf>,
    /// Known-hosts files checked for the server's key (user files, then global ones).
    pub known_hosts: Vec<PathBuf>,
    /// Where `accept-new` records a new host's key: the first `UserKnownHostsFile`
    /// (None when that is `none`).
    pub user_known_hosts: Option<PathBuf>,
    /// The host's name in known_hosts, lowercased as OpenSSH has it: `HostKeyAlias`,
    /// else the host name, as `[host]:port` off port 22.
    pub known_hosts_name: String,
    pub strict: StrictHostKeyChecking,
    pub connect_timeout: Option<Duration>,
    /// `-C` / `Compression yes`.
    pub compression: bool,
}

/// `StrictHostKeyChecking`: `yes` and `ask` (no one can answer) refuse an unknown host;
/// `accept-new` and `no` accept it. A changed key is always refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrictHostKeyChecking {
    Yes,
    AcceptNew,
}

/// Options read from the command line or a config file; the first value given wins.
#[derive(Debug, Default)]
struct Settings {
    hostname: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    identity_files: Vec<String>,
    user_known_hosts: Option<Vec<String>>,
    global_known_hosts: Option<Vec<String>>,
    host_key_alias: Option<String>,
    strict: Option<StrictHostKeyChecking>,
    connect_timeout: Option<u64>,
    compression: Option<bool>,
}

/// ssh options that take an argument (OpenSSH 9).
const WITH_ARGUMENT: &str = "BbcDEeFIiJLlmOoPpQRSWw";
/// Options that would change where or how we connect and that we cannot honour.
const UNSUPPORTED: &[&str] = &["proxycommand", "proxyjump"];

impl SshTarget {
    /// Reads `ssh [options] [user@]host` (or `ssh://user@host:port`) and the config files
    /// (`-F file`, else `~/.ssh/config` then `/etc/ssh/ssh_config`).
    pub fn from_command(command: &str) -> Result<SshTarget, SshError> {
        let bad = |why: String| SshError::Command { command: command.to_string(), why };
        let words = shlex::split(command).ok_or_else(|| bad("unbalanced quotes".into()))?;
        let mut words = words.into_iter();
        let program = words.next().ok_or_else(|| bad("it is empty".into()))?;
        if Path::new(&program).file_name().is_none_or(|n| n != "ssh") {
            return Err(bad(format!("it must start with ssh, not {program:?}")));
        }
        let mut cli = Settings::default();
        let mut config_file: Option<String> = None;
        let mut destination: Option<String> = None;
        let rest: Vec<String> = words.collect();
        let mut i = 0;
        while i < rest.len() {
            let w = &rest[i];
            i += 1;
            if destination.is_some() {
                return Err(bad(format!(
                    "it must end with the host, but {w:?} follows it (a remote command cannot be given)"
                )));
            }
            let Some(flags) = w.strip_prefix('-').filter(|f| !f.is_empty()) else {
                destination = Some(w.clone());
                continue;
            };
            for (at, flag) in flags.char_indices() {
                if !WITH_ARGUMENT.contains(flag) {
                    if flag == 'C' {
                        cli.compression.get_or_insert(true);
                    } else if !"46AaCfGgKkMNnqsTtVvXxYy".contains(flag) {
                        return Err(bad(format!("unknown option -{flag}")));
                    }
                    continue;
                }
                let attached = &flags[at + flag.len_utf8()..];
                let value = if attached.is_empty() {
                    let v = rest.get(i).ok_or_else(|| bad(format!("option -{flag} needs a value")))?;
                    i += 1;
                    v.clone()
                } else {
                    attached.to_string()
                };
                match flag {
                    'p' => set_once(&mut cli.port, parse_port(&value).map_err(bad)?),
                    'l' => set_once(&mut cli.user, value),
                    'i' => cli.identity_files.push(value),
                    'F' => config_file = Some(value),
                    'o' => {
                        let (key, v) = split_option(&value).ok_or_else(|| bad(format!("bad -o {value:?}")))?;
                        apply(&mut cli, &key, &v).map_err(bad)?;
                    }
                    'J' => return Err(bad("jump hosts (-J) are not supported by the built-in SSH client".into())),
                    // Logging, forwarding, control sockets, ciphers: they do not change the account.
                    _ => {}
                }
                break;
            }
        }
        let destination = destination.ok_or_else(|| bad("it names no host".into()))?;
        let (dest_user, host, dest_port) = parse_destination(&destination).map_err(bad)?;
        let mut s = cli;
        if let Some(u) = dest_user {
            // user@host beats -l, as in OpenSSH.
            s.user = Some(u);
        }
        if let Some(p) = dest_port {
            s.port.get_or_insert(p);
        }
        let (os_user, pw_home) = crate::config::os_user::passwd_entry();
        // OpenSSH takes the home directory from the passwd entry, not $HOME.
        let home = pw_home.unwrap_or_else(home_dir);
        let files: Vec<PathBuf> = match &config_file {
            Some(f) => vec![expand_tilde(f, &home)],
            None => vec![home.join(".ssh/config"), PathBuf::from("/etc/ssh/ssh_config")],
        };
        for f in &files {
            match std::fs::read_to_string(f) {
                Ok(text) => read_config(&text, &host, &mut s).map_err(|why| bad(format!("{}: {why}", f.display())))?,
                Err(e) if config_file.is_some() => {
                    return Err(bad(format!("cannot read the config file {}: {e}", f.display())));
                }
                Err(_) => {}
            }
        }
        let local_user = os_user.unwrap_or_default();
        let user = s.user.clone().unwrap_or_else(|| local_user.clone());
        let hostname = s.hostname.clone().map_or_else(|| host.clone(), |h| h.replace("%h", &host));
        let expand = |p: &str| {
            let p = p
                .replace("%d", &home.to_string_lossy())
                .replace("%u", &local_user)
                .replace("%r", &user)
                .replace("%h", &hostname)
                .replace("%%", "%");
            expand_tilde(&p, &home)
        };
        let identity_files = if s.identity_files.is_empty() {
            ["id_ed25519", "id_ecdsa", "id_rsa"].iter().map(|k| home.join(".ssh").join(k)).collect()
        } else {
            s.identity_files.iter().map(|p| expand(p)).collect()
        };
        let user_known = s
            .user_known_hosts
            .clone()
            .unwrap_or_else(|| vec!["~/.ssh/known_hosts".into(), "~/.ssh/known_hosts2".into()]);
        let global_known = s
            .global_known_hosts
            .clone()
            .unwrap_or_else(|| vec!["/etc/ssh/ssh_known_hosts".into(), "/etc/ssh/ssh_known_hosts2".into()]);
        // `none` names no file.
        let files = |list: &[String]| -> Vec<PathBuf> {
            list.iter().filter(|p| !p.eq_ignore_ascii_case("none")).map(|p| expand(p)).collect()
        };
        let user_known = files(&user_known);
        let known_hosts = user_known.iter().cloned().chain(files(&global_known)).collect();
        let port = s.port.unwrap_or(22);
        // OpenSSH lowercases both, and takes an alias as it is, without the port.
        let known_hosts_name = match &s.host_key_alias {
            Some(alias) => alias.to_lowercase(),
            None => super::known_hosts::host_port(&hostname.to_lowercase(), port),
        };
        Ok(SshTarget {
            alias: host,
            known_hosts_name,
            user_known_hosts: user_known.into_iter().next(),
            hostname,
            port,
            user,
            identity_files,
            known_hosts,
            strict: s.strict.unwrap_or(StrictHostKeyChecking::Yes),
            connect_timeout: s.connect_timeout.map(Duration::from_secs),
            compression: s.compression.unwrap_or(false),
        })
    }

    /// `user@host` or `user@host:port`, for messages.
    pub fn display(&self) -> String {
        if self.port == 22 {
            format!("{}@{}", self.user, self.alias)
        } else {
            format!("{}@{}:{}", self.user, self.alias, self.port)
        }
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T) {
    if slot.is_none() {
        *slot = Some(value);
    }
}

fn parse_port(v: &str) -> Result<u16, String> {
    v.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("bad port {v:?}"))
}

/// `Key=Value`, `Key Value` or `Key = Value`.
fn split_option(line: &str) -> Option<(String, String)> {
    let line = line.trim();
    let end = line.find(|c: char| c == '=' || c.is_whitespace())?;
    let key = line[..end].to_ascii_lowercase();
    let value = line[end..].trim_start().strip_prefix('=').unwrap_or(&line[end..]).trim();
    let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
    (!key.is_empty()).then(|| (key, value.to_string()))
}

fn words(v: &str) -> Vec<String> {
    shlex::split(v).unwrap_or_else(|| v.split_whitespace().map(str::to_string).collect())
}

/// One option into the settings, unless an earlier source set it.
fn apply(s: &mut Settings, key: &str, value: &str) -> Result<(), String> {
    let yes = |v: &str| matches!(v.to_ascii_lowercase().as_str(), "yes" | "true");
    match key {
        "hostname" => set_once(&mut s.hostname, value.to_string()),
        "port" => set_once(&mut s.port, parse_port(value)?),
        "user" => set_once(&mut s.user, value.to_string()),
        // Every IdentityFile line adds a key to offer.
        "identityfile" => s.identity_files.push(value.to_string()),
        "userknownhostsfile" => set_once(&mut s.user_known_hosts, words(value)),
        "globalknownhostsfile" => set_once(&mut s.global_known_hosts, words(value)),
        "hostkeyalias" => set_once(&mut s.host_key_alias, value.to_string()),
        "stricthostkeychecking" => {
            let v = match value.to_ascii_lowercase().as_str() {
                "no" | "off" | "accept-new" => StrictHostKeyChecking::AcceptNew,
                _ => StrictHostKeyChecking::Yes,
            };
            set_once(&mut s.strict, v);
        }
        "connecttimeout" => {
            set_once(&mut s.connect_timeout, value.parse().map_err(|_| format!("bad ConnectTimeout {value:?}"))?)
        }
        "compression" => set_once(&mut s.compression, yes(value)),
        k if UNSUPPORTED.contains(&k) && !value.eq_ignore_ascii_case("none") => {
            return Err(format!("{k} is not supported by the built-in SSH client"));
        }
        _ => {}
    }
    Ok(())
}

/// The `Host` blocks of an ssh_config that match `host` (`Match` blocks are skipped).
fn read_config(text: &str, host: &str, s: &mut Settings) -> Result<(), String> {
    let mut active = true;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = split_option(line) else { continue };
        match key.as_str() {
            "host" => active = host_matches(&words(&value), host),
            "match" => active = value.trim().eq_ignore_ascii_case("all"),
            _ if active => apply(s, &key, &value)?,
            _ => {}
        }
    }
    Ok(())
}

/// OpenSSH's `Host` patterns: `*` and `?` wildcards, `!` negates.
fn host_matches(patterns: &[String], host: &str) -> bool {
    let mut matched = false;
    for p in patterns {
        if let Some(neg) = p.strip_prefix('!') {
            if glob(neg, host) {
                return false;
            }
        } else if glob(p, host) {
            matched = true;
        }
    }
    matched
}

/// One OpenSSH pattern (`*`, `?`), case-insensitive.
pub(super) fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi].eq_ignore_ascii_case(&t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// `[user@]host` or `ssh://[user@]host[:port]`.
fn parse_destination(d: &str) -> Result<(Option<String>, String, Option<u16>), String> {
    let (rest, uri) = match d.strip_prefix("ssh://") {
        Some(r) => (r, true),
        None => (d, false),
    };
    let (user, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, rest),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if uri => (h, Some(parse_port(p)?)),
        _ => (hostport, None),
    };
    if host.is_empty() {
        return Err(format!("no host in {d:?}"));
    }
    Ok((user, host.to_string(), port))
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"))
}

fn expand_tilde(p: &str, home: &Path) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => home.join(rest),
        None if p == "~" => home.to_path_buf(),
        None => PathBuf::from(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(cmd: &str) -> SshTarget {
        SshTarget::from_command(cmd).expect(cmd)
    }

    #[test]
    fn command_line_options_and_destination() {
        let t = target("ssh -q -p 2222 -o StrictHostKeyChecking=no -i /k/id postgres@db2");
        assert_eq!((t.user.as_str(), t.hostname.as_str(), t.port), ("postgres", "db2", 2222));
        assert_eq!(t.identity_files, vec![PathBuf::from("/k/id")]);
        assert_eq!(t.strict, StrictHostKeyChecking::AcceptNew);
        let t = target("/usr/bin/ssh -Cp2200 ssh://u@h:2201");
        assert_eq!((t.port, t.compression, t.user.as_str()), (2200, true, "u"));
        let t = target("ssh -l me host");
        assert_eq!(t.user, "me");
    }

    #[test]
    fn refusals_name_the_reason() {
        for (cmd, why) in [
            ("", "empty"),
            ("rsh host", "must start with ssh"),
            ("ssh", "names no host"),
            ("ssh host ls", "remote command"),
            ("ssh -J jump host", "jump hosts"),
            ("ssh -o ProxyCommand=nc host", "proxycommand"),
            ("ssh -p x host", "bad port"),
            ("ssh 'host", "quotes"),
            ("ssh -Z host", "unknown option"),
        ] {
            let e = SshTarget::from_command(cmd).expect_err(cmd).to_string();
            assert!(e.contains(why), "{cmd}: {e}");
        }
    }

    #[test]
    fn config_blocks_first_value_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("config");
        std::fs::write(
            &cfg,
            "Host other\n  Port 1\nHost db* !db9\n  HostName 10.0.0.2\n  Port 2022\n  User barman\n  \
             IdentityFile /keys/a\n  UserKnownHostsFile /kh/one /kh/two\nHost *\n  Port 22\n  User nobody\n  \
             IdentityFile /keys/b\n  StrictHostKeyChecking accept-new\n",
        )
        .expect("write");
        let t = target(&format!("ssh -F {} -p 3000 db2", cfg.display()));
        assert_eq!((t.hostname.as_str(), t.port, t.user.as_str()), ("10.0.0.2", 3000, "barman"));
        assert_eq!(t.identity_files, vec![PathBuf::from("/keys/a"), PathBuf::from("/keys/b")]);
        assert_eq!(&t.known_hosts[..2], &[PathBuf::from("/kh/one"), PathBuf::from("/kh/two")]);
        assert_eq!(t.known_hosts_name, "[10.0.0.2]:3000");
        assert_eq!(t.user_known_hosts, Some(PathBuf::from("/kh/one")));
        assert_eq!(t.strict, StrictHostKeyChecking::AcceptNew);
        let t = target(&format!("ssh -F {} root@db9", cfg.display()));
        assert_eq!((t.hostname.as_str(), t.port, t.user.as_str()), ("db9", 22, "root"));
        let missing = SshTarget::from_command("ssh -F /nonexistent/cfg h").expect_err("missing -F file");
        assert!(missing.to_string().contains("cannot read the config file"), "{missing}");
    }

    #[test]
    fn known_hosts_name_and_files_as_openssh_has_them() {
        let t = target("ssh -F /dev/null -p 2222 DB1");
        assert_eq!(t.known_hosts_name, "[db1]:2222");
        assert_eq!(target("ssh -F /dev/null db1").known_hosts_name, "db1");
        assert_eq!(target("ssh -F /dev/null -o HostKeyAlias=Web -p 2222 db1").known_hosts_name, "web");
        let t = target("ssh -F /dev/null -o UserKnownHostsFile=none -o GlobalKnownHostsFile=/g db1");
        assert_eq!((t.user_known_hosts, t.known_hosts), (None, vec![PathBuf::from("/g")]));
    }

    #[test]
    fn globs() {
        assert!(glob("*.example.com", "db.example.com"));
        assert!(glob("db?", "db1"));
        assert!(!glob("db?", "db12"));
        assert!(glob("*", ""));
        assert!(!host_matches(&["*".into(), "!db1".into()], "db1"));
    }
}
