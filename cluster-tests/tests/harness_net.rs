//! Tests of the multi-node harness: the TCP proxy, sites as network namespaces, node
//! processes, and the WAL gap check.

use std::ffi::OsString;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use barman::wal::WalFileName;
use cluster_tests::netns::Sites;
use cluster_tests::nodes::{self, Node, NodeSpec};
use cluster_tests::pg::{PgCluster, PgOptions};
use cluster_tests::proxy::{Direction, Proxy};
use cluster_tests::util::{self, TestDir, pg_bin, wait_until};

/// An echo server on 127.0.0.1 counting connections and bytes; it lives as long as the test process.
struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
}

impl Echo {
    fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the echo server");
        let addr = listener.local_addr().expect("the echo server's address");
        let (accepted, received) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, r) = (Arc::clone(&accepted), Arc::clone(&received));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                let r = Arc::clone(&r);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            return;
                        }
                        r.fetch_add(n, Ordering::SeqCst);
                        if stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Echo { addr, accepted, received }
    }
}

fn loopback_any() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn read_exact_timeout(stream: &mut TcpStream, n: usize, timeout: Duration) -> std::io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(timeout))?;
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf)?;
    Ok(buf)
}

/// Asserts nothing arrives on `stream` within `wait`.
fn assert_silent(stream: &mut TcpStream, wait: Duration) {
    stream.set_read_timeout(Some(wait)).expect("setting a read timeout");
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected silence, got {other:?}"),
    }
}

#[test]
fn proxy_delays_each_direction_in_order() {
    let echo = Echo::start();
    let proxy = Proxy::start(loopback_any(), echo.addr).unwrap();
    let mut client = TcpStream::connect(proxy.addr()).unwrap();
    client.write_all(b"warm").unwrap();
    assert_eq!(read_exact_timeout(&mut client, 4, Duration::from_secs(5)).unwrap(), b"warm");

    let delay = Duration::from_millis(150);
    proxy.set_delay(delay);
    let start = Instant::now();
    client.write_all(b"ping").unwrap();
    assert_eq!(read_exact_timeout(&mut client, 4, Duration::from_secs(5)).unwrap(), b"ping");
    let rtt = start.elapsed();
    assert!(rtt >= 2 * delay, "a round trip through a {delay:?} proxy took {rtt:?}");

    // 16 MiB of numbered bytes come back whole and in order, at a reasonable rate.
    proxy.set_delay(Duration::from_millis(20));
    let data: Vec<u8> = (0..16 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let mut writer = client.try_clone().unwrap();
    let start = Instant::now();
    let writing = std::thread::spawn(move || writer.write_all(&sent));
    let back = read_exact_timeout(&mut client, data.len(), Duration::from_secs(30)).unwrap();
    writing.join().unwrap().unwrap();
    assert!(back == data, "the proxy reordered or changed bytes");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(20), "16 MiB echoed through the proxy in {took:?}");
    eprintln!("16 MiB echoed through a 20 ms proxy in {took:?}");
}

#[test]
fn proxy_cut_holds_bytes_and_heal_delivers_them() {
    let echo = Echo::start();
    let proxy = Proxy::start(loopback_any(), echo.addr).unwrap();
    let mut client = TcpStream::connect(proxy.addr()).unwrap();
    client.write_all(b"one").unwrap();
    assert_eq!(read_exact_timeout(&mut client, 3, Duration::from_secs(5)).unwrap(), b"one");
    let quiet = Duration::from_millis(400);

    // Both ways: nothing reaches the target, nothing comes back.
    proxy.cut(Direction::Both);
    client.write_all(b"two").unwrap();
    assert_silent(&mut client, quiet);
    assert_eq!(echo.received.load(Ordering::SeqCst), 3);
    proxy.heal();
    assert_eq!(read_exact_timeout(&mut client, 3, Duration::from_secs(5)).unwrap(), b"two");

    // To the target only.
    proxy.cut(Direction::ToTarget);
    client.write_all(b"three").unwrap();
    assert_silent(&mut client, quiet);
    assert_eq!(echo.received.load(Ordering::SeqCst), 6);
    proxy.heal();
    assert_eq!(read_exact_timeout(&mut client, 5, Duration::from_secs(5)).unwrap(), b"three");

    // From the target only: the target gets the bytes, their echo is held.
    proxy.cut(Direction::FromTarget);
    client.write_all(b"four").unwrap();
    wait_until(Duration::from_secs(5), "the target to receive through a one-way cut", || {
        echo.received.load(Ordering::SeqCst) == 15
    })
    .unwrap();
    assert_silent(&mut client, quiet);
    proxy.heal();
    assert_eq!(read_exact_timeout(&mut client, 4, Duration::from_secs(5)).unwrap(), b"four");

    // A partition accepts new connections and holds them silent; the target sees none.
    proxy.cut(Direction::Both);
    let mut late = TcpStream::connect_timeout(&proxy.addr(), Duration::from_secs(5)).unwrap();
    late.write_all(b"late").unwrap();
    assert_silent(&mut late, quiet);
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1, "the target saw a connection through a partition");
    proxy.heal();
    assert_eq!(read_exact_timeout(&mut late, 4, Duration::from_secs(5)).unwrap(), b"late");
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 2);

    // Dropping the proxy closes its connections.
    drop(proxy);
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 8];
    assert!(matches!(client.read(&mut buf), Ok(0) | Err(_)), "a connection outlived its proxy");
}

/// Which of `names` the system still has as namespaces or interfaces.
fn leftovers(names: &[String]) -> Vec<String> {
    let ip = |args: &[&str]| {
        String::from_utf8_lossy(&Command::new("ip").args(args).output().expect("running ip").stdout).into_owned()
    };
    let namespaces = ip(&["netns", "list"]);
    let links = ip(&["-o", "link", "show"]);
    let existing: Vec<&str> = namespaces
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .chain(links.lines().filter_map(|l| l.split(": ").nth(1)?.split('@').next()))
        .collect();
    names.iter().filter(|n| existing.contains(&n.as_str())).cloned().collect()
}

fn psql_from_site(sites: &Sites, i: usize, host: Ipv4Addr, pg: &PgCluster) -> Result<String, String> {
    let out = sites
        .command(i, pg_bin("psql"))
        .args(["-X", "-A", "-t", "-w", "-U", "postgres", "-d", "postgres", "-c", "SELECT 1"])
        .arg("-h")
        .arg(host.to_string())
        .arg("-p")
        .arg(pg.port().to_string())
        .env("PGCONNECT_TIMEOUT", "3")
        .output()
        .expect("running psql in a site");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn connect_from_site(sites: &Sites, i: usize, to: SocketAddr) -> std::io::Result<TcpStream> {
    sites.in_ns(i, || TcpStream::connect_timeout(&to, Duration::from_secs(2))).expect("entering a site")
}

#[test]
fn sites_reach_postgres_and_a_partition_cuts_only_the_cluster_link() {
    if !util::is_root() {
        util::skip("network namespaces need root");
        return;
    }
    let dir = TestDir::new().unwrap();
    let sites = Sites::create(3).unwrap();
    let prefix = sites.ns(0).trim_end_matches("s0").to_string();
    let mut names: Vec<String> = (0..3).map(|i| sites.ns(i).to_string()).collect();
    names.push(format!("{prefix}b"));
    names.extend((0..3).flat_map(|i| [format!("{prefix}d{i}"), format!("{prefix}c{i}")]));
    assert_eq!(leftovers(&names).len(), names.len(), "{names:?} not all made");
    let pg = PgCluster::start(dir.path(), PgOptions { listen: sites.pg_listen(), ..PgOptions::default() }).unwrap();
    assert_eq!(psql_from_site(&sites, 2, sites.db_addr_root(2), &pg).unwrap(), "1");
    // A site reaches PostgreSQL only through its own link.
    assert!(psql_from_site(&sites, 2, sites.db_addr_root(1), &pg).is_err());

    let listener = sites.in_ns(1, || TcpListener::bind((sites.cluster_addr(1), 0))).unwrap().unwrap();
    let at = listener.local_addr().unwrap();
    let accepting = std::thread::spawn(move || while listener.accept().is_ok() {});
    connect_from_site(&sites, 2, at).unwrap();
    connect_from_site(&sites, 0, at).unwrap();

    sites.partition(2).unwrap();
    let cut = connect_from_site(&sites, 2, at);
    assert!(cut.is_err(), "site 2 reached site 1 through a partition");
    connect_from_site(&sites, 0, at).unwrap();
    assert_eq!(psql_from_site(&sites, 2, sites.db_addr_root(2), &pg).unwrap(), "1", "the partition cut PostgreSQL");

    sites.heal(2).unwrap();
    wait_until(Duration::from_secs(10), "site 2 to reach site 1 after healing", || {
        connect_from_site(&sites, 2, at).is_ok()
    })
    .unwrap();

    drop(pg);
    drop(sites);
    assert_eq!(leftovers(&names), Vec::<String>::new(), "left behind by Sites");
    drop(accepting);
}

#[test]
fn sites_of_dead_test_processes_are_removed() {
    if !util::is_root() {
        util::skip("network namespaces need root");
        return;
    }
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let prefix = format!("bt{pid}-1");
    let ip = |args: &[&str]| assert!(Command::new("ip").args(args).status().unwrap().success(), "ip {args:?}");
    ip(&["netns", "add", &format!("{prefix}s0")]);
    ip(&["link", "add", &format!("{prefix}b"), "type", "bridge"]);
    let sites = Sites::create(1).unwrap();
    assert_eq!(leftovers(&[format!("{prefix}s0"), format!("{prefix}b")]), Vec::<String>::new());
    drop(sites);
}

fn spec(name: &str) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        site: "a".into(),
        listen: "127.0.0.1:1".into(),
        advertise: "127.0.0.1:1".into(),
        metrics: None,
        netns: None,
    }
}

fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

#[test]
fn node_processes_are_signalled_restarted_and_killed_on_drop() {
    let dir = TestDir::new().unwrap();
    // Said once the trap is set: computed, so that the command line the harness notes does not match.
    let script = "trap 'echo got TERM; exit 0' TERM; echo $((6 * 7)) ready; while :; do sleep 0.05; done";
    let args: Vec<OsString> = ["-c", script].iter().map(OsString::from).collect();
    let mut node = Node::start_program(dir.path(), spec("n1"), Path::new("/bin/sh"), &args).unwrap();
    node.wait_log("42 ready", Duration::from_secs(10)).unwrap();
    let first = node.pid().unwrap();

    node.stop().unwrap();
    wait_until(Duration::from_secs(5), "SIGSTOP", || proc_state(first) == Some('T')).unwrap();
    node.cont().unwrap();
    wait_until(Duration::from_secs(5), "SIGCONT", || proc_state(first) != Some('T')).unwrap();
    let status = node.terminate().unwrap();
    assert!(status.success(), "{status:?}\n{}", node.log());
    assert!(!node.is_running());
    assert!(node.log().contains("got TERM"), "{}", node.log());

    node.restart().unwrap();
    let second = node.pid().unwrap();
    assert_ne!(first, second);
    assert!(node.is_running());
    node.kill().unwrap();
    assert!(!node.is_running() && proc_state(second).is_none(), "killed, not reaped");
    node.restart().unwrap();
    let third = node.pid().unwrap();
    drop(node);
    assert!(proc_state(third).is_none(), "the node outlived its drop");

    // One log across restarts, with the harness's notes in the node's format.
    let log = fs::read_to_string(dir.path().join("n1.log")).unwrap();
    assert_eq!(log.matches("node process started by the harness").count(), 3, "{log}");
    assert_eq!(log.matches("node killed by the harness").count(), 2, "{log}");
    assert!(log.contains("node asked to stop (SIGTERM)") && log.contains("node exit seen by the harness"), "{log}");
    assert_eq!(nodes::unexpected_lines(&log, &[]), Vec::<String>::new());
    for line in log.lines().filter(|l| l.contains("cluster_tests:")) {
        assert!(
            line.contains("  INFO cluster_tests: ") && line.contains(" node=n1") && line.contains(" mono_ms="),
            "{line}"
        );
    }
}

#[test]
fn a_node_in_a_site_runs_in_its_namespace() {
    if !util::is_root() {
        util::skip("network namespaces need root");
        return;
    }
    let dir = TestDir::new().unwrap();
    let sites = Sites::create(1).unwrap();
    let spec = NodeSpec { netns: Some(sites.ns(0).to_string()), ..spec("n1") };
    let args: Vec<OsString> =
        ["-c", "ip -o -4 addr show dev cluster; exec sleep 30"].iter().map(OsString::from).collect();
    let mut node = Node::start_program(dir.path(), spec, Path::new("/bin/sh"), &args).unwrap();
    node.wait_log(&sites.cluster_addr(0).to_string(), Duration::from_secs(10)).unwrap();
    let pid = node.pid().unwrap();
    // `ip netns exec` execs the node: the pid is the node's own.
    wait_until(Duration::from_secs(5), "the node to exec sleep", || {
        fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    })
    .unwrap();
}

#[test]
fn barman_binary_is_found_and_its_node_logs_to_a_file() {
    let barman = nodes::barman_bin().unwrap();
    assert!(barman.ends_with("barman") && barman.is_file(), "{}", barman.display());
    let dir = TestDir::new().unwrap();
    // Without a config, barman fails at once; what it said is in the node's log.
    let mut node = Node::start(dir.path(), spec("n9"), &dir.path().join("missing.conf")).unwrap();
    wait_until(Duration::from_secs(20), "barman to exit without a config", || !node.is_running()).unwrap();
    let log = node.log();
    assert!(log.lines().count() >= 3, "{log}");
    assert!(!nodes::unexpected_lines(&log, &[]).is_empty(), "barman's failure is not flagged:\n{log}");
}

fn segments_in(pg_wal: &Path) -> Vec<(WalFileName, PathBuf)> {
    let mut found: Vec<(WalFileName, PathBuf)> = fs::read_dir(pg_wal)
        .expect("listing pg_wal")
        .filter_map(|e| {
            let e = e.expect("listing pg_wal");
            let name: WalFileName = e.file_name().to_str()?.parse().ok()?;
            name.is_segment().then(|| (name, e.path()))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

fn put(src: &Path, dir: &Path, name: &str) {
    fs::create_dir_all(dir).expect("creating a WAL directory");
    fs::copy(src, dir.join(name)).expect("copying a segment");
}

#[test]
fn waldump_gap_check_finds_a_missing_segment() {
    let dir = TestDir::new().unwrap();
    let pg = PgCluster::start(dir.path(), PgOptions { wal_segsize_mb: Some(1), ..PgOptions::default() }).unwrap();
    pg.psql("CREATE TABLE t (i int)").unwrap();
    let from = pg.current_lsn().unwrap();
    for _ in 0..3 {
        pg.psql("INSERT INTO t SELECT generate_series(1, 1000)").unwrap();
        pg.switch_wal().unwrap();
    }
    pg.psql("INSERT INTO t SELECT generate_series(1, 1000)").unwrap();
    let to = pg.current_lsn().unwrap();
    pg.switch_wal().unwrap();
    let first: WalFileName = pg.psql(&format!("SELECT pg_walfile_name('{from}')")).unwrap().parse().unwrap();
    let last: WalFileName = pg.psql(&format!("SELECT pg_walfile_name('{to}')")).unwrap().parse().unwrap();
    let wanted: Vec<(WalFileName, PathBuf)> =
        segments_in(&pg.data_dir().join("pg_wal")).into_iter().filter(|(n, _)| *n >= first && *n <= last).collect();
    assert!(wanted.len() >= 4, "{wanted:?}");

    // Two nodes' server directories, Barman's layout: each holds every other segment; the last
    // one is a complete segment on node b and a .partial with only its first page on node a.
    let node_dirs = [dir.path().join("a/pg"), dir.path().join("b/pg")];
    for (i, (name, path)) in wanted.iter().enumerate() {
        let hash = name.hash_dir().unwrap();
        put(path, &node_dirs[i % 2].join("wals").join(&hash), name.as_str());
    }
    let (last_name, last_path) = wanted.last().unwrap();
    let other = &node_dirs[wanted.len() % 2];
    let mut truncated = fs::read(last_path).unwrap();
    truncated[8192..].fill(0);
    fs::create_dir_all(other.join("streaming")).unwrap();
    fs::write(other.join("streaming").join(format!("{}.partial", last_name.as_str())), &truncated).unwrap();

    let waldump = pg_bin("pg_waldump");
    nodes::waldump_gap_check(&waldump, &node_dirs, &from, &to).unwrap();

    // Without the complete copy, the .partial is used and ends too early.
    let complete =
        node_dirs[(wanted.len() - 1) % 2].join("wals").join(last_name.hash_dir().unwrap()).join(last_name.as_str());
    let saved = fs::read(&complete).unwrap();
    fs::remove_file(&complete).unwrap();
    let err = nodes::waldump_gap_check(&waldump, &node_dirs, &from, &to).unwrap_err();
    assert!(format!("{err:#}").contains("(partial)"), "{err:#}");
    fs::write(&complete, saved).unwrap();

    // A segment missing from every node is a gap.
    let (gap_name, _) = &wanted[1];
    let held = node_dirs[1].join("wals").join(gap_name.hash_dir().unwrap()).join(gap_name.as_str());
    fs::remove_file(&held).unwrap();
    let err = format!("{:#}", nodes::waldump_gap_check(&waldump, &node_dirs, &from, &to).unwrap_err());
    assert!(err.contains("could not find file") || err.contains("invalid record"), "{err}");
    assert!(err.contains(&from) && err.contains(&to), "{err}");

    // Compressed WAL is refused, not mistaken for a gap.
    fs::write(&held, b"\x1f\x8b\x08\x00rest").unwrap();
    let err = format!("{:#}", nodes::waldump_gap_check(&waldump, &node_dirs, &from, &to).unwrap_err());
    assert!(err.contains("compressed (gzip)"), "{err}");
}
