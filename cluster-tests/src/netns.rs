//! Sites as Linux network namespaces (root only), so that a test can cut one site off the others.
//!
//! Site `i` is the namespace `bt<pid>-<seq>s<i>` with two links:
//!
//! - a point-to-point "database" veth pair to the root namespace, `10.231.<k>.<4i+1>/30` on the
//!   root side and `.<4i+2>` in the site, never cut: PostgreSQL runs in the root namespace and
//!   listens on the root-side addresses ([`Sites::pg_listen`]), so every site always reaches it;
//! - a "cluster" veth pair whose root side is a port of this test's bridge: the site's address
//!   is `10.232.<k>.<i+1>/24`. Node-to-node traffic goes only over this link, and
//!   [`Sites::partition`] takes the bridge port down.
//!
//! `k` is picked free (no address of the root namespace in either /24) while holding a lock
//! file, so concurrent test processes and tests get disjoint blocks. Sites have no default
//! route, so nothing is forwarded through the root namespace. Namespaces, veths and the bridge
//! go on drop, even on panic; leftovers of dead test processes go at the next creation.

use std::fs;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

use crate::util::{is_root, run};

/// Most sites one [`Sites`] can hold: the database /30s of one /24.
pub const MAX_SITES: usize = 63;

const LOCK_FILE: &str = "barman-cluster-tests-netns.lock";

/// Network namespaces, one per site, with their links; all removed on drop.
#[derive(Debug)]
pub struct Sites {
    prefix: String,
    block: u8,
    names: Vec<String>,
    bridge: Option<String>,
    /// Root-side interfaces made so far (each deletes its veth pair).
    links: Vec<String>,
}

impl Sites {
    /// Creates `n` sites (root only; an error says so otherwise).
    pub fn create(n: usize) -> Result<Sites> {
        static SEQ: AtomicU32 = AtomicU32::new(1);
        if !is_root() {
            bail!("network namespaces for {n} sites: creating them needs root");
        }
        if n == 0 || n > MAX_SITES {
            bail!("{n} sites asked for: between 1 and {MAX_SITES} are possible");
        }
        let pid = std::process::id();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("bt{pid}-{seq}");
        // Interface names are at most 15 bytes: the longest is the root side of the last veth.
        if format!("{prefix}c{}", n - 1).len() > 15 {
            bail!("too many site sets in this process ({seq}): interface names would pass 15 bytes");
        }
        let _lock = lock_creation()?;
        remove_stale();
        let block = free_block(pid.wrapping_mul(31).wrapping_add(seq.wrapping_mul(7)))?;
        let mut sites = Sites { prefix, block, names: Vec::new(), bridge: None, links: Vec::new() };
        sites.build(n)?;
        Ok(sites)
    }

    fn build(&mut self, n: usize) -> Result<()> {
        let bridge = format!("{}b", self.prefix);
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        self.bridge = Some(bridge.clone());
        ip(&["addr", "add", &format!("{}/24", self.root_cluster_addr()), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..n {
            let ns = format!("{}s{i}", self.prefix);
            ip(&["netns", "add", &ns])?;
            self.names.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;

            let db = format!("{}d{i}", self.prefix);
            ip(&["link", "add", &db, "type", "veth", "peer", "name", "db", "netns", &ns])?;
            self.links.push(db.clone());
            ip(&["addr", "add", &format!("{}/30", self.db_addr_root(i)), "dev", &db])?;
            ip(&["link", "set", &db, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/30", self.db_addr_site(i)), "dev", "db"])?;
            ip(&["-n", &ns, "link", "set", "db", "up"])?;

            let cluster = self.cluster_port(i);
            ip(&["link", "add", &cluster, "type", "veth", "peer", "name", "cluster", "netns", &ns])?;
            self.links.push(cluster.clone());
            ip(&["link", "set", &cluster, "master", &bridge])?;
            ip(&["link", "set", &cluster, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.cluster_addr(i)), "dev", "cluster"])?;
            ip(&["-n", &ns, "link", "set", "cluster", "up"])?;
        }
        Ok(())
    }

    /// How many sites there are.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Always false: a set holds at least one site.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The namespace name of site `i`.
    pub fn ns(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// The address PostgreSQL listens on for site `i` (root side of its database link).
    pub fn db_addr_root(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.block, (4 * i + 1) as u8)
    }

    /// The address site `i` has on its database link (what PostgreSQL sees as the client).
    pub fn db_addr_site(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.block, (4 * i + 2) as u8)
    }

    /// The `ADDRESS/30` of every site's database link, root side: for `PgOptions::listen`.
    pub fn pg_listen(&self) -> Vec<String> {
        (0..self.len()).map(|i| format!("{}/30", self.db_addr_root(i))).collect()
    }

    /// The node address of site `i`, on the cluster network.
    pub fn cluster_addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 232, self.block, (i + 1) as u8)
    }

    /// The root namespace's address on the cluster network (the bridge), to reach nodes from the test.
    pub fn root_cluster_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 232, self.block, 254)
    }

    /// Takes site `i`'s cluster link down: it reaches no other site (packets are dropped, so
    /// connections time out), and still reaches PostgreSQL.
    pub fn partition(&self, i: usize) -> Result<()> {
        ip(&["link", "set", &self.cluster_port(i), "down"])
    }

    /// Brings site `i`'s cluster link back up.
    pub fn heal(&self, i: usize) -> Result<()> {
        ip(&["link", "set", &self.cluster_port(i), "up"])
    }

    /// `ip netns exec <ns(i)> program`: add arguments, then run it.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns(i)]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that entered site `i`'s network namespace: sockets it makes
    /// (listeners, connections) belong to the site, from whichever thread uses them later.
    pub fn in_ns<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = Path::new("/run/netns").join(self.ns(i));
        let file = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns takes an fd we own for the call; it changes only this thread's
                    // network namespace, and this thread ends with the scope.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        let e = std::io::Error::last_os_error();
                        return Err(anyhow::anyhow!("entering network namespace {}: {e}", self.ns(i)));
                    }
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("a thread in network namespace {} panicked", self.ns(i)))?
        })
    }

    fn cluster_port(&self, i: usize) -> String {
        format!("{}c{i}", self.prefix)
    }
}

impl Drop for Sites {
    fn drop(&mut self) {
        // Deleting the root side deletes the pair, even if a process still holds the namespace.
        for link in &self.links {
            quietly(&["link", "del", link]);
        }
        for ns in &self.names {
            quietly(&["netns", "del", ns]);
        }
        if let Some(bridge) = &self.bridge {
            quietly(&["link", "del", bridge]);
        }
    }
}

/// Runs `ip ARGS`, failing with the command line and its stderr.
fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args), &format!("ip {}", args.join(" "))).map(|_| ())
}

/// Runs `ip ARGS` for cleanup: a failure is printed, not returned.
fn quietly(args: &[&str]) {
    if let Err(e) = ip(args) {
        eprintln!("cleanup: {e:#}");
    }
}

/// An exclusive lock on a file in the temp dir, held while choosing and creating a block.
fn lock_creation() -> Result<fs::File> {
    let path = std::env::temp_dir().join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on an fd we own; the lock goes when the file is closed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("locking {}", path.display()));
    }
    Ok(file)
}

/// The pid in a name of ours (`bt<pid>-<seq>` then `s<i>`, `d<i>`, `c<i>` or `b`).
fn owner_pid(name: &str) -> Option<u32> {
    let (pid, rest) = name.strip_prefix("bt")?.split_once('-')?;
    let seq_end = rest.find(|c: char| !c.is_ascii_digit())?;
    let (seq, kind) = rest.split_at(seq_end);
    let site = |i: &str| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit());
    let ours = !seq.is_empty() && (kind == "b" || kind.strip_prefix(['s', 'd', 'c']).is_some_and(site));
    if ours { pid.parse().ok() } else { None }
}

fn is_dead(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces and links left by test processes that no longer run.
fn remove_stale() {
    let stale = |name: &str| owner_pid(name).is_some_and(is_dead);
    if let Ok(out) = run(Command::new("ip").args(["netns", "list"]), "ip netns list") {
        for ns in out.lines().filter_map(|l| l.split_whitespace().next()).filter(|n| stale(n)) {
            quietly(&["netns", "del", ns]);
        }
    }
    if let Ok(out) = run(Command::new("ip").args(["-o", "link", "show"]), "ip -o link show") {
        // "7: bt123-1d0@if2: <...>": the name is the second field, before any '@'.
        let names = out.lines().filter_map(|l| l.split(": ").nth(1)).map(|n| n.split('@').next().unwrap_or(n));
        for link in names.filter(|n| stale(n)) {
            quietly(&["link", "del", link]);
        }
    }
}

/// A third octet with no root-namespace address in 10.231.k.0/24 or 10.232.k.0/24, starting at `hint`.
fn free_block(hint: u32) -> Result<u8> {
    let out = run(Command::new("ip").args(["-o", "-4", "addr", "show"]), "ip -o -4 addr show")?;
    let used: Vec<u8> = out
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            let addr: Ipv4Addr = words.next()?.split('/').next()?.parse().ok()?;
            let [a, b, c, _] = addr.octets();
            (a == 10 && (b == 231 || b == 232)).then_some(c)
        })
        .collect();
    (0..256u32)
        .map(|step| ((hint + step) % 256) as u8)
        .find(|k| !used.contains(k))
        .context("no free 10.231.k.0/24 and 10.232.k.0/24 block left in the root namespace")
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn names_of_ours_carry_the_pid() {
        assert_eq!(owner_pid("bt123-4s0"), Some(123));
        assert_eq!(owner_pid("bt123-4s12"), Some(123));
        assert_eq!(owner_pid("bt123-4d3"), Some(123));
        assert_eq!(owner_pid("bt123-4c3"), Some(123));
        assert_eq!(owner_pid("bt123-4b"), Some(123));
        for other in ["bt123-4", "bt123-s0", "bt123-4x0", "bt123-4b1", "bt123-4s", "btx-4s0", "eth0", "bt-4s0"] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }
}
