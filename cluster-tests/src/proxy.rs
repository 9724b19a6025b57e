//! A TCP proxy inside the test process, for WAN latency and one-way cuts between nodes that
//! run on loopback: nodes are told to reach a peer at the proxy's address.
//!
//! Each connection has, per direction, a reader thread that timestamps what it reads and a
//! writer thread that forwards it in order once `delay` has passed and the direction is not
//! cut. Between them at most [`QUEUE_CHUNKS`] chunks of [`CHUNK`] bytes wait, so memory is
//! bounded and a slow or cut direction pushes back on the sender as TCP would.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Largest read forwarded as one piece.
pub const CHUNK: usize = 64 * 1024;
/// Chunks that may wait in one direction of one connection (4 MiB).
pub const QUEUE_CHUNKS: usize = 64;

/// Which way bytes stop flowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Both ways: a partition. New connections are accepted and held silent.
    Both,
    /// From the connecting side to the target. New connections are held silent too
    /// (connecting is the first thing the client sends).
    ToTarget,
    /// From the target back to the connecting side.
    FromTarget,
}

/// A running proxy; stops accepting and closes every connection on drop.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    /// Chunks that may wait per direction of a connection.
    queue_chunks: usize,
    state: Mutex<State>,
    changed: Condvar,
    conns: Mutex<Vec<Weak<Conn>>>,
}

#[derive(Debug, Default)]
struct State {
    delay: Duration,
    cut_to_target: bool,
    cut_from_target: bool,
    closed: bool,
}

/// Both sockets of one proxied connection; closed when the last thread using them ends.
#[derive(Debug)]
struct Conn {
    client: TcpStream,
    server: OnceLock<TcpStream>,
}

impl Conn {
    fn shutdown(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(server) = self.server.get() {
            let _ = server.shutdown(Shutdown::Both);
        }
    }
}

/// What a reader hands its writer: bytes, or the end of the stream, with when it was read.
struct Chunk {
    read_at: Instant,
    data: Option<Vec<u8>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Proxy {
    /// Listens on `listen` (port 0 picks one, see [`Proxy::addr`]) and forwards to `target`.
    pub fn start(listen: SocketAddr, target: SocketAddr) -> Result<Proxy> {
        Proxy::start_with_queue(listen, target, QUEUE_CHUNKS * CHUNK)
    }

    /// As [`Proxy::start`], holding up to `queue_bytes` per direction of a connection: with
    /// a delay, it bounds what is in flight as a TCP socket's buffers do (the default 4 MiB
    /// is about Linux's default maximum; a link tuned for its bandwidth-delay product holds
    /// more).
    pub fn start_with_queue(listen: SocketAddr, target: SocketAddr, queue_bytes: usize) -> Result<Proxy> {
        let listener = TcpListener::bind(listen).with_context(|| format!("proxy: binding {listen}"))?;
        let addr = listener.local_addr().context("proxy: reading the bound address")?;
        let shared = Arc::new(Shared {
            target,
            queue_chunks: (queue_bytes / CHUNK).max(1),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            conns: Mutex::new(Vec::new()),
        });
        let accepting = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name(format!("proxy {addr}"))
            .spawn(move || accept_loop(&listener, &accepting))
            .context("proxy: starting the accept thread")?;
        Ok(Proxy { addr, shared, acceptor: Some(acceptor) })
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Forwards bytes, each way, no earlier than `delay` after they were read (in order).
    pub fn set_delay(&self, delay: Duration) {
        self.shared.update(|s| s.delay = delay);
    }

    /// Stops forwarding in `direction`; what is read meanwhile is held back, not delivered.
    pub fn cut(&self, direction: Direction) {
        self.shared.update(|s| match direction {
            Direction::Both => (s.cut_to_target, s.cut_from_target) = (true, true),
            Direction::ToTarget => s.cut_to_target = true,
            Direction::FromTarget => s.cut_from_target = true,
        });
    }

    /// Forwards both ways again, starting with what was held back.
    pub fn heal(&self) {
        self.shared.update(|s| (s.cut_to_target, s.cut_from_target) = (false, false));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.update(|s| s.closed = true);
        // Wake the acceptor with a connection of our own.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for conn in lock(&self.shared.conns).drain(..).filter_map(|c| c.upgrade()) {
            conn.shutdown();
        }
    }
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut lock(&self.state));
        self.changed.notify_all();
    }

    fn is_cut(state: &State, direction: Direction) -> bool {
        match direction {
            Direction::Both => state.cut_to_target || state.cut_from_target,
            Direction::ToTarget => state.cut_to_target,
            Direction::FromTarget => state.cut_from_target,
        }
    }

    /// Waits until bytes read at `read_at` may go `direction` (anything, without `read_at`);
    /// false when the proxy closed.
    fn wait_sendable(&self, direction: Direction, read_at: Option<Instant>) -> bool {
        let mut state = lock(&self.state);
        loop {
            if state.closed {
                return false;
            }
            if Shared::is_cut(&state, direction) {
                state = self.changed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            }
            let Some(due) = read_at.map(|t| t + state.delay) else { return true };
            let now = Instant::now();
            if now >= due {
                return true;
            }
            state = self.changed.wait_timeout(state, due - now).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if lock(&shared.state).closed {
            return;
        }
        let Ok(client) = client else {
            // Out of descriptors, say: do not spin.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let _ = client.set_nodelay(true);
        let conn = Arc::new(Conn { client, server: OnceLock::new() });
        {
            let mut conns = lock(&shared.conns);
            conns.retain(|c| c.strong_count() > 0);
            conns.push(Arc::downgrade(&conn));
        }
        let shared = Arc::clone(shared);
        if std::thread::Builder::new().name("proxy conn".into()).spawn(move || serve(&shared, conn)).is_err() {
            eprintln!("proxy: could not start a connection thread");
        }
    }
}

fn serve(shared: &Arc<Shared>, conn: Arc<Conn>) {
    // Held silent while the way to the target is cut: the target sees no connection yet.
    if !shared.wait_sendable(Direction::ToTarget, None) {
        return;
    }
    let server = match TcpStream::connect_timeout(&shared.target, Duration::from_secs(10)) {
        Ok(server) => server,
        Err(_) => {
            conn.shutdown();
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let _ = conn.server.set(server);
    let back = (Arc::clone(shared), Arc::clone(&conn));
    let spawned = std::thread::Builder::new()
        .name("proxy from target".into())
        .spawn(move || pump(&back.0, &back.1, Direction::FromTarget));
    if spawned.is_err() {
        conn.shutdown();
        return;
    }
    pump(shared, &conn, Direction::ToTarget);
}

/// Reads one direction of `conn` on this thread; a writer thread forwards what was read.
fn pump(shared: &Arc<Shared>, conn: &Arc<Conn>, direction: Direction) {
    let (tx, rx) = sync_channel::<Chunk>(shared.queue_chunks);
    let writing = (Arc::clone(shared), Arc::clone(conn));
    let writer = std::thread::Builder::new()
        .name("proxy writer".into())
        .spawn(move || forward(&writing.0, &writing.1, direction, &rx));
    if writer.is_err() {
        conn.shutdown();
        return;
    }
    read_into(conn, direction, &tx);
}

fn read_into(conn: &Conn, direction: Direction, tx: &SyncSender<Chunk>) {
    let Some(server) = conn.server.get() else { return conn.shutdown() };
    let mut src = if direction == Direction::ToTarget { &conn.client } else { server };
    let mut buf = vec![0u8; CHUNK];
    loop {
        match src.read(&mut buf) {
            Ok(0) => {
                let _ = tx.send(Chunk { read_at: Instant::now(), data: None });
                return;
            }
            Ok(n) => {
                if tx.send(Chunk { read_at: Instant::now(), data: Some(buf[..n].to_vec()) }).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return conn.shutdown(),
        }
    }
}

fn forward(shared: &Shared, conn: &Conn, direction: Direction, rx: &Receiver<Chunk>) {
    let Some(server) = conn.server.get() else { return conn.shutdown() };
    let mut dst = if direction == Direction::ToTarget { server } else { &conn.client };
    for chunk in rx {
        if !shared.wait_sendable(direction, Some(chunk.read_at)) {
            return;
        }
        let sent = match chunk.data {
            Some(bytes) => dst.write_all(&bytes),
            None => dst.shutdown(Shutdown::Write),
        };
        if sent.is_err() {
            return conn.shutdown();
        }
    }
}
