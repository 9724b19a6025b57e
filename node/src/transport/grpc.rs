//! Node-to-node gRPC over mutual TLS. The server runs its own accept loop, so every refused
//! handshake (no client certificate, another CA, expired...) is seen and logged once with
//! the peer's address; accepted streams go to tonic, carrying the peer's verified node name
//! ([`Peer`], read with [`peer`]). Channels to peers connect lazily.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;
use tonic::transport::server::Connected;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server};
use tracing::Instrument;

use super::tls::{self, ClientTls};

/// How long a peer may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TCP connect plus handshake to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 pings after this long without a frame from the peer (Raft's heartbeats keep a
/// live link busier than that), so a dead peer or a connection a partition left behind is
/// dropped within a few seconds and the next call connects afresh: after a partition
/// heals, the old connection's TCP retransmissions would be backed off for many seconds.
const KEEPALIVE: Duration = Duration::from_secs(1);
/// How long a ping may go unanswered.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 flow-control windows, each way: what may be in flight unacknowledged on one
/// stream and on a whole connection. Across sites (tens of ms) the defaults (a few MiB)
/// would cap a file transfer at a few tens of MB/s. What a slower reader would leave in
/// them is kept small by the sender pacing itself to the reader's bandwidth_limit.
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;
/// The largest message either way (batches of log entries, snapshot chunks).
pub const MAX_MESSAGE: usize = 64 << 20;
/// Connections served at once (a cluster has a handful of nodes, each with one connection
/// to us, plus the WAL clients of its PostgreSQL hosts).
pub const MAX_CONNECTIONS: usize = 256;
/// TLS handshakes under way at once, and from one address: silent peers can hold these
/// only for [`HANDSHAKE_TIMEOUT`], and one address cannot hold them all.
pub const MAX_HANDSHAKES: usize = 64;
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 8;
/// Streams (calls) at once on one connection.
pub const MAX_STREAMS: u32 = 128;

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("the gRPC server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
    #[error("cannot set up a channel to {peer} at {addr}: {why}")]
    Channel { peer: String, addr: String, why: String },
    #[error("cannot encode a message: {0}")]
    Encode(String),
    #[error("cannot decode a message: {0}")]
    Decode(String),
}

/// Who is at the other end of an accepted connection, as its verified certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The node name of its certificate ([`tls::peer_name`]).
    pub name: Option<String>,
    /// What its certificate is ([`tls::peer_role`]).
    pub role: Option<tls::Role>,
    /// Its certificate's ids on the deny list ([`tls::revocation_ids`]).
    pub ids: Vec<String>,
}

/// The revoked certificates (fingerprints, serials), as the cluster's state has them now.
static REVOKED: std::sync::RwLock<std::collections::BTreeSet<String>> =
    std::sync::RwLock::new(std::collections::BTreeSet::new());

/// Replaces the deny list (the node does, at each change of the replicated state).
pub fn set_revoked(ids: std::collections::BTreeSet<String>) {
    if let Ok(mut g) = REVOKED.write() {
        *g = ids;
    }
}

fn is_revoked(ids: &[String]) -> bool {
    REVOKED.read().map(|g| ids.iter().any(|i| g.contains(i))).unwrap_or(true)
}

/// The verified peer of a request, unless its certificate has been revoked since the
/// connection was made (then refused, and said once per call at WARN).
pub fn admitted_peer<T>(request: &tonic::Request<T>) -> Result<&Peer, tonic::Status> {
    let peer = peer(request).ok_or_else(|| tonic::Status::unauthenticated("no verified peer certificate"))?;
    if is_revoked(&peer.ids) {
        let name = crate::catalog::confine::shown(peer.name.as_deref().unwrap_or_default());
        tracing::warn!(peer = %peer.addr, "refused a call from '{name}' at {}: its certificate is revoked", peer.addr);
        return Err(tonic::Status::permission_denied("this certificate is revoked"));
    }
    Ok(peer)
}

/// The peer of a request served by [`serve`] (None for a request that did not come
/// through it).
pub fn peer<T>(request: &tonic::Request<T>) -> Option<&Peer> {
    request.extensions().get::<Peer>()
}

/// An accepted, verified TLS stream; tonic puts its [`Peer`] in every request's extensions.
struct PeerStream {
    inner: TlsStream<TcpStream>,
    peer: Peer,
    /// One of [`MAX_CONNECTIONS`], given back when tonic drops the connection.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Connected for PeerStream {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Serves `routes` on `listener` with mutual TLS until `shutdown` completes, then lets the
/// open connections finish. Logs run in the caller's span.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    routes: Routes,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GrpcError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (tx, rx) = mpsc::channel(16);
    let accepting = tokio::spawn(accept_loop(listener, TlsAcceptor::from(tls), tx, stop_rx).in_current_span());
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    // Handlers log in the caller's span too (tonic runs them in tasks of its own).
    let span = tracing::Span::current();
    let served = Server::builder()
        .trace_fn(move |_| span.clone())
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(Some(MAX_STREAMS))
        .add_routes(routes)
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), signal)
        .await;
    accepting.abort();
    served.map_err(GrpcError::Serve)
}

/// Accepts connections until told to stop; each handshake runs in its own task, so a slow
/// or silent peer holds up no one.
async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<io::Result<PeerStream>>,
    mut stop: watch::Receiver<bool>,
) {
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let per_address: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>> = Arc::default();
    let mut refused = 0u64;
    let mut told = tokio::time::Instant::now() - Duration::from_secs(60);
    loop {
        let (tcp, addr) = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, mostly: wait rather than spin.
                    tracing::warn!("cannot accept a gRPC connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Over a limit the connection is closed at once, unread; told once in 10 s.
        let ip = addr.ip();
        let slots = (
            connections.clone().try_acquire_owned(),
            handshakes.clone().try_acquire_owned(),
            AddressSlot::take(&per_address, ip),
        );
        let (Ok(slot), Ok(pending), Some(from_address)) = slots else {
            refused += 1;
            if told.elapsed() >= Duration::from_secs(10) {
                tracing::warn!(peer = %addr, "refused {refused} connection(s) over the limits ({MAX_CONNECTIONS} connections, {MAX_HANDSHAKES} handshakes, {MAX_HANDSHAKES_PER_ADDRESS} handshakes from one address), the last from {addr}");
                told = tokio::time::Instant::now();
                refused = 0;
            }
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        let handshake = async move {
            let done = handshake(&acceptor, tcp, addr, slot).await;
            drop((pending, from_address));
            match done {
                Ok(stream) => {
                    let _ = tx.send(Ok(stream)).await;
                }
                // A peer that went away before finishing (a port probe, a node stopped or
                // cut off mid-connect) is not a refusal worth a warning.
                Err(Refused::Abandoned(reason)) => {
                    tracing::info!(peer = %addr, "connection from {addr} ended before its TLS handshake: {reason}")
                }
                Err(Refused::Refused(reason)) => {
                    tracing::warn!(peer = %addr, "refused a connection from {addr}: {reason}")
                }
            }
        };
        tokio::spawn(handshake.in_current_span());
    }
}

/// Why an incoming connection was not served.
enum Refused {
    /// The peer left (or went silent) before its handshake completed.
    Abandoned(String),
    /// The handshake failed: no certificate, another CA, a bad name...
    Refused(String),
}

/// One of [`MAX_HANDSHAKES_PER_ADDRESS`] for an address, given back on drop.
struct AddressSlot {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    ip: std::net::IpAddr,
}

impl AddressSlot {
    fn take(
        counts: &Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
        ip: std::net::IpAddr,
    ) -> Option<AddressSlot> {
        let mut c = super::lock(counts);
        let n = c.entry(ip).or_insert(0);
        if *n >= MAX_HANDSHAKES_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(AddressSlot { counts: counts.clone(), ip })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut c = super::lock(&self.counts);
        if let Some(n) = c.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.ip);
            }
        }
    }
}

async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    addr: SocketAddr,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Result<PeerStream, Refused> {
    let inner = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Err(_) => return Err(Refused::Abandoned(format!("no TLS handshake within {}s", HANDSHAKE_TIMEOUT.as_secs()))),
        Ok(Err(e)) if matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset) => {
            return Err(Refused::Abandoned(e.to_string()));
        }
        Ok(Err(e)) => return Err(Refused::Refused(e.to_string())),
        Ok(Ok(s)) => s,
    };
    let cert = inner.get_ref().1.peer_certificates().and_then(|c| c.first());
    let (name, role) = (cert.and_then(tls::peer_name), cert.and_then(tls::peer_role));
    let ids = cert.map(tls::revocation_ids).unwrap_or_default();
    if is_revoked(&ids) {
        let name = crate::catalog::confine::shown(name.as_deref().unwrap_or_default());
        return Err(Refused::Refused(format!("the certificate of '{name}' is revoked")));
    }
    Ok(PeerStream { inner, peer: Peer { addr, name, role, ids }, _slot: slot })
}

/// A channel to the node `peer_name` at `addr` (`host:port`), connecting on first use:
/// the server's certificate must be of the cluster CA and name `peer_name`. Call it inside
/// a Tokio runtime.
pub fn channel(addr: &str, peer_name: &str, tls: &ClientTls) -> Result<Channel, GrpcError> {
    let bad = |why: String| GrpcError::Channel { peer: peer_name.into(), addr: addr.into(), why };
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(tls.ca_pem()))
        .identity(Identity::from_pem(tls.cert_pem(), tls.key_pem()))
        .domain_name(peer_name)
        .timeout(CONNECT_TIMEOUT);
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| bad(e.to_string()))?
        .tls_config(config)
        .map_err(|e| bad(error_chain(&e)))?
        .connect_timeout(CONNECT_TIMEOUT)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

/// A status in one line, with the transport error behind it ("transport error" alone
/// says nothing).
pub fn status_text(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    append_sources(&mut text, std::error::Error::source(status));
    text
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    append_sources(&mut text, e.source());
    text
}

/// Appends each cause not already said (tonic and hyper repeat their sources in their
/// messages).
fn append_sources(text: &mut String, mut source: Option<&dyn std::error::Error>) {
    while let Some(s) = source {
        let said = s.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = s.source();
    }
}

/// bincode, with a bound on what a message may make us allocate.
fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 4 * MAX_MESSAGE }>()
}

/// The bytes of a message's `data` field.
pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, GrpcError> {
    bincode::serde::encode_to_vec(value, bincode_config()).map_err(|e| GrpcError::Encode(e.to_string()))
}

/// Reads a message's `data` field back; trailing bytes are an error. bincode sets aside
/// what a length announces before reading it: the limit grows with the message (8 times
/// its size, in steps), so that a small message from a peer cannot make us allocate much.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, GrpcError> {
    use bincode::config::standard;
    const SMALL: usize = 64 << 10;
    const MEDIUM: usize = 1 << 20;
    const LARGE: usize = 8 << 20;
    let decoded = match bytes.len() {
        n if n <= SMALL => bincode::serde::decode_from_slice(bytes, standard().with_limit::<{ 8 * SMALL }>()),
        n if n <= MEDIUM => bincode::serde::decode_from_slice(bytes, standard().with_limit::<{ 8 * MEDIUM }>()),
        n if n <= LARGE => bincode::serde::decode_from_slice(bytes, standard().with_limit::<{ 8 * LARGE }>()),
        _ => bincode::serde::decode_from_slice(bytes, bincode_config()),
    };
    let (value, used) = decoded.map_err(|e| GrpcError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(GrpcError::Decode(format!("{} bytes left over", bytes.len() - used)));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let v: (u64, String, Option<Vec<u8>>) = (7, "n1".into(), Some(vec![1, 2, 3]));
        let bytes = encode(&v).unwrap();
        assert_eq!(decode::<(u64, String, Option<Vec<u8>>)>(&bytes).unwrap(), v);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode::<(u64, String, Option<Vec<u8>>)>(&longer).unwrap_err().to_string().contains("left over"));
        assert!(decode::<(u64, String)>(&bytes[..2]).is_err());
        // A length prefix claiming 2^60 bytes must not be believed.
        let huge = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0x10];
        assert!(decode::<Vec<u8>>(&huge).is_err());
    }

    #[tokio::test]
    async fn a_channel_needs_a_usable_address_and_name() {
        let ca = tls::new_ca("c").unwrap();
        let node = tls::new_node_cert(&ca, "n1", &[]).unwrap();
        let client = ClientTls::from_pem(&ca.cert, &node);
        channel("127.0.0.1:1", "n1", &client).unwrap();
        let e = channel("127.0.0.1:1", "not a name", &client).unwrap_err().to_string();
        assert!(e.starts_with("cannot set up a channel to not a name at 127.0.0.1:1"), "{e}");
        assert!(channel("bad host:x", "n1", &client).is_err());
    }
}
