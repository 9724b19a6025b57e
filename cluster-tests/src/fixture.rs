//! A running cluster for multi-node tests and benchmarks: one PostgreSQL (optionally under
//! pgbench, with the nodes as its synchronous standby), N `barman node run` processes, each
//! optionally in its own network namespace (a site), certificates from our own CA.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Sites;
use crate::nodes::{Node, NodeSpec, barman_bin};
use crate::pg::{PgCluster, PgOptions};
use crate::util::{current_os_user, free_port, run};

/// How to build the cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    /// Each node in its own network namespace (needs root); else all on 127.0.0.1.
    pub sites: bool,
    /// `ownership_lease`, seconds.
    pub lease: f64,
    /// PostgreSQL waits for the owner's flush at every commit.
    pub synchronous: bool,
    /// Extra servers (besides `pg`) declared on every node, all pointing at the same
    /// PostgreSQL with their own slot (benchmarks of idle nodes).
    pub extra_servers: usize,
    /// Start a metrics endpoint per node.
    pub metrics: bool,
    /// PostgreSQL with `archive_mode = on` (its archive_command is the test's to set), and
    /// the servers with `archiver = on` besides streaming.
    pub archiving: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            sites: false,
            lease: 2.0,
            synchronous: false,
            extra_servers: 0,
            metrics: false,
            archiving: false,
        }
    }
}

/// A cluster under test; everything is torn down on drop (nodes first).
pub struct TestCluster {
    pub nodes: Vec<Node>,
    pub confs: Vec<PathBuf>,
    pub homes: Vec<PathBuf>,
    pub pg: PgCluster,
    pub sites: Option<Sites>,
    pub dir: PathBuf,
}

/// Node names: n1, n2, ...
pub fn node_name(i: usize) -> String {
    format!("n{}", i + 1)
}

impl TestCluster {
    /// Starts PostgreSQL and the nodes, bootstraps the cluster from n1, and waits until
    /// some node streams `pg`.
    pub fn start(dir: &Path, opts: ClusterOptions) -> Result<TestCluster> {
        let sites = if opts.sites { Some(Sites::create(opts.nodes)?) } else { None };
        let listen = sites.as_ref().map(|s| s.pg_listen()).unwrap_or_default();
        let conf = if opts.archiving { vec![("archive_mode".into(), "on".into())] } else { Vec::new() };
        let pg = PgCluster::start(dir, PgOptions { listen, conf, ..PgOptions::default() })?;
        let bin = barman_bin()?;
        let tls = dir.join("tls");
        run(Command::new(&bin).args(["cluster", "cert", "ca", "--dir"]).arg(&tls), "cluster cert ca")?;
        let mut addrs = Vec::new();
        for i in 0..opts.nodes {
            let host = sites.as_ref().map_or("127.0.0.1".to_string(), |s| s.cluster_addr(i).to_string());
            let port = free_port()?;
            addrs.push(format!("{host}:{port}"));
            let mut c = Command::new(&bin);
            c.args(["cluster", "cert", "node", &node_name(i), "--host", &host, "--host", "127.0.0.1", "--ca-dir"])
                .arg(&tls)
                .arg("--dir")
                .arg(&tls);
            run(&mut c, "cluster cert node")?;
        }
        let peers: Vec<String> = (0..opts.nodes).map(|i| format!("{}={}", node_name(i), addrs[i])).collect();
        let user = current_os_user()?.name;
        let mut nodes = Vec::new();
        let mut confs = Vec::new();
        let mut homes = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let name = node_name(i);
            let home = dir.join(format!("home-{name}"));
            std::fs::create_dir_all(&home)?;
            let pg_host = sites.as_ref().map_or("127.0.0.1".to_string(), |s| s.db_addr_root(i).to_string());
            // In a site, the node's loopback is its own: metrics listen on its cluster address.
            let metrics_host = sites.as_ref().map_or("127.0.0.1".to_string(), |s| s.cluster_addr(i).to_string());
            let metrics = if opts.metrics { Some(format!("{metrics_host}:{}", free_port()?)) } else { None };
            let mut conf = format!(
                "[barman]\nbarman_home = {home}\nbarman_user = {user}\nlog_level = INFO\n\
                 node_name = {name}\nnode_site = site{site}\nnode_listen = {addr}\n\
                 cluster_peers = {peers}\ncluster_ca_file = {tls}/ca.crt\n\
                 node_cert_file = {tls}/{name}.crt\nnode_key_file = {tls}/{name}.key\n\
                 ownership_lease = {lease}\n",
                home = home.display(),
                site = i + 1,
                addr = addr,
                peers = peers.join(", "),
                tls = tls.display(),
                lease = opts.lease,
            );
            if let Some(m) = &metrics {
                conf.push_str(&format!("node_metrics_listen = {m}\n"));
            }
            let servers = std::iter::once("pg".to_string()).chain((0..opts.extra_servers).map(|k| format!("pg{k}")));
            for s in servers {
                conf.push_str(&format!(
                    "\n[{s}]\nconninfo = host={pg_host} port={port} user=postgres dbname=postgres\n\
                     streaming_conninfo = host={pg_host} port={port} user=postgres\n\
                     backup_method = postgres\nstreaming_archiver = on\narchiver = {archiver}\n\
                     slot_name = barman_{s}\ncreate_slot = auto\n\
                     streaming_archiver_name = barman_{s}\n",
                    port = pg.port(),
                    archiver = if opts.archiving { "on" } else { "off" },
                ));
            }
            let path = dir.join(format!("{name}.conf"));
            std::fs::write(&path, conf)?;
            let spec = NodeSpec {
                name: name.clone(),
                site: format!("site{}", i + 1),
                listen: addr.clone(),
                advertise: addr.clone(),
                metrics,
                netns: sites.as_ref().map(|s| s.ns(i).to_string()),
            };
            nodes.push(Node::start(dir, spec, &path)?);
            confs.push(path);
            homes.push(home);
        }
        let mut c = TestCluster { nodes, confs, homes, pg, sites, dir: dir.to_path_buf() };
        for n in &mut c.nodes {
            n.wait_log("node started", Duration::from_secs(30))?;
        }
        // Before the first stream starts, so that it is synchronous from its first byte.
        if opts.synchronous {
            c.pg.set_conf("synchronous_standby_names", "'barman_pg'")?;
        }
        c.barman(0, &["cluster", "init"])?;
        c.wait_streaming(Duration::from_secs(30))?;
        Ok(c)
    }

    /// `barman -c <node i's config> ARGS`, its stdout.
    pub fn barman(&self, i: usize, args: &[&str]) -> Result<String> {
        let mut c = Command::new(barman_bin()?);
        c.arg("-c").arg(&self.confs[i]).args(args);
        run(&mut c, &format!("barman {}", args.join(" ")))
    }

    /// `cluster status` as JSON, asked of node i.
    pub fn status(&self, i: usize) -> Result<serde_json::Value> {
        let out = self.barman(i, &["-f", "json", "cluster", "status"])?;
        serde_json::from_str(&out).with_context(|| format!("cluster status JSON: {out}"))
    }

    /// The owner of `pg` and its epoch, asked of any running node.
    pub fn owner(&mut self) -> Option<(usize, u64)> {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].is_running() {
                continue;
            }
            let Ok(v) = self.status(i) else { continue };
            let s = v["servers"].as_array()?.iter().find(|s| s["name"] == "pg")?.clone();
            let owner = s["owner"].as_str()?;
            let idx = (0..self.nodes.len()).find(|k| node_name(*k) == owner)?;
            return Some((idx, s["epoch"].as_u64().unwrap_or(0)));
        }
        None
    }

    /// Waits until PostgreSQL shows exactly one of our walsenders for `pg` streaming, and
    /// returns the owner then.
    pub fn wait_streaming(&mut self, timeout: Duration) -> Result<(usize, u64)> {
        let until = Instant::now() + timeout;
        loop {
            let n = self.walsenders()?;
            if n == 1
                && let Some(o) = self.owner()
            {
                return Ok(o);
            }
            if Instant::now() > until {
                bail!("no node streams pg after {timeout:?} ({n} walsenders)");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Our walsenders for `pg` in pg_stat_replication.
    pub fn walsenders(&self) -> Result<usize> {
        let n = self.pg.psql("SELECT count(*) FROM pg_stat_replication WHERE application_name = 'barman_pg'")?;
        n.parse().with_context(|| format!("count {n:?}"))
    }

    /// Every node's log, with its name.
    pub fn logs(&self) -> Vec<(String, String)> {
        self.nodes.iter().map(|n| (n.name().to_string(), n.log())).collect()
    }

    /// The WAL directories of every node for `pg` (archive and streaming) that exist.
    pub fn wal_dirs(&self) -> Vec<PathBuf> {
        self.homes
            .iter()
            .flat_map(|h| [h.join("pg").join("wals"), h.join("pg").join("streaming")])
            .filter(|d| d.is_dir())
            .collect()
    }

    /// Waits for `what` up to `timeout`.
    pub fn wait(&mut self, timeout: Duration, what: &str, mut f: impl FnMut(&mut TestCluster) -> bool) -> Result<()> {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if f(self) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("timed out after {timeout:?} waiting for {what}")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // Nodes go first: they would otherwise log errors about PostgreSQL going away.
        for n in &mut self.nodes {
            let _ = n.kill();
        }
    }
}
