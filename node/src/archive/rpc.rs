//! The Archive gRPC service: `put-wal` and `get-wal --bundle` for `barman-wal-archive` and
//! `barman-wal-restore` that reach a node directly over mutual TLS instead of through ssh.
//! The payloads are the tar streams of the ssh commands, checked by the same code
//! ([`PutWal`], [`WalSource::send_bundle`]). Any certificate of the cluster CA is served: a
//! node's, or a WAL client's (`barman cluster cert client`).
//!
//! In a cluster, a node that does not own the server acknowledges a put-wal once the files
//! are durable in its own `incoming/` and a forward marker for each is durable too; its
//! forwarder ([`forward_pending`]) then puts them to the owner, so `archive_command` may
//! name any node.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use barman_proto::v1::archive_client::ArchiveClient;
use barman_proto::v1::archive_server::{Archive, ArchiveServer};
use barman_proto::v1::{GetWalRequest, PutWalChunk, PutWalReply, TarChunk};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::get_wal::{Delivery, GetWalError, WalSource};
use super::put_wal::{PutWal, PutWalError, Stored};
use super::server::codecs_for;
use super::wire::{MemberInfo, SumAlgo, TarWriter};
use crate::catalog::ServerLayout;
use crate::catalog::durable;
use crate::catalog::xlogdb::mtime_float;
use crate::config::types::UnboundClients;
use crate::config::{Config, ServerConfig};
use crate::transport::chunks::ChunkSender;
use crate::transport::grpc;
use crate::transport::tls::Role;
use crate::wal::WalFileName;

/// Bytes per streamed chunk.
pub const CHUNK: usize = 1 << 20;

/// Whether another node owns a server now: what is put here is passed on to it. A server
/// no node owns (not streamed: the cluster gives owners to streamed servers) keeps what is
/// put to a node there, as a plain Barman would.
pub type OwnedElsewhere = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The directory of forward markers of a server: one empty file per WAL file a client put
/// to this node while another node owned the server, until the owner has it.
pub fn forward_dir(layout: &ServerLayout) -> PathBuf {
    layout.backup_dir.join("forward")
}

pub struct ArchiveService {
    cfg: Arc<Config>,
    owned_elsewhere: Option<OwnedElsewhere>,
    /// Woken when markers were written.
    kick: Arc<tokio::sync::Notify>,
    /// Whether a node name is a member of the cluster now.
    is_member: IsMember,
}

/// Whether a node name is a member of the cluster now.
pub type IsMember = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Who called, as far as the WAL services care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A member node (forwarding WAL to the owner, or a node's own client).
    Member(String),
    /// A WAL client certificate, allowed the server asked for.
    WalClient(String),
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Member(n) => write!(f, "node '{n}'"),
            Caller::WalClient(n) => write!(f, "'{n}'"),
        }
    }
}

/// Whether the certificate `name` of `role` may put and get the WAL of `server`; why not
/// otherwise. A WAL client certificate only for the servers it names; one that names none
/// (made before certificates named servers) only when `wal_client_unbound = allow`.
pub fn authorize(
    name: &str,
    role: Option<&Role>,
    server: &str,
    is_member: &dyn Fn(&str) -> bool,
    unbound: UnboundClients,
) -> Result<Caller, String> {
    let shown = crate::catalog::confine::shown;
    match role {
        Some(Role::Node) if is_member(name) => Ok(Caller::Member(name.to_string())),
        Some(Role::WalClient { servers }) if servers.iter().any(|s| s == server) => {
            Ok(Caller::WalClient(name.to_string()))
        }
        Some(Role::WalClient { servers }) if servers.is_empty() => match unbound {
            UnboundClients::Allow => Ok(Caller::WalClient(name.to_string())),
            UnboundClients::Refuse => Err(format!(
                "the WAL client certificate '{}' names no server: re-issue it with 'barman cluster cert client NAME \
                 --server {}', or set wal_client_unbound = allow in [barman]",
                shown(name),
                shown(server)
            )),
        },
        Some(Role::WalClient { .. }) => {
            Err(format!("the WAL client certificate '{}' is not for server '{}'", shown(name), shown(server)))
        }
        _ => Err(format!("'{}' is neither a member of the cluster nor a WAL client", shown(name))),
    }
}

impl ArchiveService {
    pub fn new(
        cfg: Arc<Config>,
        owned_elsewhere: Option<OwnedElsewhere>,
        kick: Arc<tokio::sync::Notify>,
        is_member: IsMember,
    ) -> ArchiveService {
        ArchiveService { cfg, owned_elsewhere, kick, is_member }
    }

    /// The caller of `rpc` for `server`, checked before anything else is done for it: a
    /// refusal is one WARN line naming the peer and what it asked.
    fn admit<T>(&self, request: &Request<T>, rpc: &str, server: &str) -> Result<Caller, Status> {
        let peer = grpc::admitted_peer(request)?;
        let name = peer.name.as_deref().unwrap_or_default();
        authorize(name, peer.role.as_ref(), server, &*self.is_member, self.cfg.global.wal_client_unbound).map_err(
            |why| {
                let shown = crate::catalog::confine::shown;
                tracing::warn!(peer = %peer.addr, "refused {rpc} of server '{}' from '{}' at {}: {why}", shown(server), shown(name), peer.addr);
                Status::permission_denied(why)
            },
        )
    }

    pub fn server(self) -> ArchiveServer<ArchiveService> {
        ArchiveServer::new(self)
            .max_decoding_message_size(grpc::MAX_MESSAGE)
            .max_encoding_message_size(grpc::MAX_MESSAGE)
    }

    fn server_cfg(&self, name: &str) -> Result<ServerConfig, Status> {
        let s = self
            .cfg
            .servers
            .get(name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("server '{name}' is not configured on this node")))?;
        if !s.active() {
            return Err(Status::failed_precondition(format!("server '{name}' is not active on this node")));
        }
        Ok(s)
    }
}

/// A blocking reader over chunks sent by an async task.
pub struct ChannelReader {
    rx: mpsc::Receiver<Result<Vec<u8>, Status>>,
    cur: Vec<u8>,
    at: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.cur.len() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(c)) => {
                    self.cur = c;
                    self.at = 0;
                }
                Some(Err(s)) => return Err(io::Error::other(grpc::status_text(&s))),
            }
        }
        let n = buf.len().min(self.cur.len() - self.at);
        buf[..n].copy_from_slice(&self.cur[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn put_wal_status(e: PutWalError) -> Status {
    match e {
        PutWalError::Io { .. } => Status::internal(e.to_string()),
        other => Status::invalid_argument(other.to_string()),
    }
}

/// Stores a put-wal tar stream for `s` as `barman put-wal` does; the names now held.
fn receive(cfg: &Config, s: &ServerConfig, input: &mut dyn Read) -> Result<Vec<String>, Status> {
    let layout = ServerLayout::new(&cfg.global, s);
    let codecs = codecs_for(s);
    let receiver = PutWal::for_server(&s.name, &layout, &codecs).map_err(Status::internal)?;
    let mut held = Vec::new();
    for st in receiver.receive(input).map_err(put_wal_status)? {
        match st {
            Stored::New(n) => {
                tracing::info!(server = %s.name, "Received file '{n}' by put-wal for server '{}'", s.name);
                held.push(n);
            }
            Stored::SameAsIncoming(n) => held.push(n),
            Stored::Duplicate { name, .. } => {
                tracing::error!(server = %s.name, "put-wal received a different copy of {name}; kept in the errors directory")
            }
        }
    }
    Ok(held)
}

/// Durable forward markers for `names`.
fn mark_for_forward(layout: &ServerLayout, names: &[String]) -> io::Result<()> {
    let dir = forward_dir(layout);
    durable::create_dir_all(&dir)?;
    for n in names {
        durable::write_file(&dir.join(n), b"", 0o600)?;
    }
    Ok(())
}

#[tonic::async_trait]
impl Archive for ArchiveService {
    async fn put_wal(&self, request: Request<Streaming<PutWalChunk>>) -> Result<Response<PutWalReply>, Status> {
        let addr = grpc::peer(&request).map(|p| p.addr.to_string()).unwrap_or_default();
        let (metadata, extensions, mut stream) = request.into_parts();
        let first = stream.message().await?.ok_or_else(|| Status::invalid_argument("empty put-wal stream"))?;
        // Authorized on the first chunk, which names the server, before the data is read.
        let caller = self.admit(&Request::from_parts(metadata, extensions, ()), "put-wal", &first.server)?;
        let peer = format!("{caller} at {addr}");
        let s = self.server_cfg(&first.server)?;
        if first.test {
            return Ok(Response::new(PutWalReply { stored: Vec::new() }));
        }
        // Only a node passes WAL on as already forwarded; from a client it means nothing.
        let forwarded = first.forwarded && matches!(caller, Caller::Member(_));
        let (mut input, pump) = pump(&tokio::runtime::Handle::current(), Some(first.data), stream, |c| c.data);
        let cfg = self.cfg.clone();
        let forward = !forwarded && self.owned_elsewhere.as_ref().is_some_and(|elsewhere| elsewhere(&s.name));
        let server = s.name.clone();
        let held = tokio::task::spawn_blocking(move || {
            let held = receive(&cfg, &s, &mut input)?;
            if forward {
                let layout = ServerLayout::new(&cfg.global, &s);
                mark_for_forward(&layout, &held)
                    .map_err(|e| Status::internal(format!("cannot record the forward of {held:?}: {e}")))?;
            }
            Ok::<_, Status>(held)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        pump.abort();
        let held = held.inspect_err(
            |e| tracing::warn!(server = %server, "refused a put-wal from {peer}: {}", grpc::status_text(e)),
        )?;
        if forward {
            self.kick.notify_one();
        }
        Ok(Response::new(PutWalReply { stored: held }))
    }

    type GetWalStream = ReceiverStream<Result<TarChunk, Status>>;

    async fn get_wal(&self, request: Request<GetWalRequest>) -> Result<Response<Self::GetWalStream>, Status> {
        let server = request.get_ref().server.clone();
        self.admit(&request, "get-wal", &server)?;
        let r = request.into_inner();
        let s = self.server_cfg(&r.server)?;
        let name: WalFileName = r
            .name
            .parse()
            .map_err(|e| Status::invalid_argument(format!("'{}' is not a WAL file name: {e}", r.name)))?;
        let layout = ServerLayout::new(&self.cfg.global, &s);
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let codecs = codecs_for(&s);
            let src = WalSource {
                layout: &layout,
                codecs: &codecs,
                custom_decompression: s.opts.custom_decompression_filter.is_some(),
            };
            let how = Delivery { compress: None, keep_compression: r.keep_compression, partial: r.partial };
            let mut out = ChunkSender::new(tx.clone(), CHUNK, |data| Ok(TarChunk { data }));
            let sent = src.send_bundle(&name, r.bundle.max(1), how, &mut out).and_then(|_| Ok(out.flush()?));
            if let Err(e) = sent {
                let status = match e {
                    GetWalError::NotFound { .. } => Status::not_found(e.to_string()),
                    other => Status::internal(other.to_string()),
                };
                let _ = tx.blocking_send(Err(status));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The WAL file `name` of a server as the archive holds it after decompression (the
/// receiver compresses it as its own configuration says), and its mtime. Whole: the tar
/// header of put-wal needs the size first.
fn wal_body(layout: &ServerLayout, s: &ServerConfig, name: &WalFileName) -> Result<(Vec<u8>, f64), String> {
    let codecs = codecs_for(s);
    let src = WalSource { layout, codecs: &codecs, custom_decompression: s.opts.custom_decompression_filter.is_some() };
    let found = src.find(name, false).map_err(|e| e.to_string())?;
    let mtime = std::fs::metadata(&found.path).map(|m| mtime_float(&m)).unwrap_or(0.0);
    let mut body = Vec::new();
    src.deliver(found, Delivery::default(), &mut body).map_err(|e| e.to_string())?;
    Ok((body, mtime))
}

/// Writes the tar stream `barman-wal-archive` would send for `body` under `name`.
fn put_wal_tar(name: &WalFileName, body: &[u8], mtime: f64, out: impl Write) -> io::Result<()> {
    let mut w = TarWriter::new(out, SumAlgo::Sha256);
    w.append(&MemberInfo::anonymous(name.to_string(), body.len() as u64, mtime), &mut &body[..])?;
    w.finish()?.flush()
}

/// Sends a put-wal tar stream, as it is produced, to a node; the names it holds afterwards.
pub async fn put_chunks(
    channel: tonic::transport::Channel,
    server: &str,
    forwarded: bool,
    chunks: impl tokio_stream::Stream<Item = Vec<u8>> + Send + 'static,
) -> Result<Vec<String>, Status> {
    use tokio_stream::StreamExt;
    let server = server.to_string();
    let mut first = true;
    let messages = chunks.map(move |data| {
        let m = PutWalChunk {
            server: if first { server.clone() } else { String::new() },
            forwarded: first && forwarded,
            data,
            test: false,
        };
        first = false;
        m
    });
    let mut client = ArchiveClient::new(channel)
        .max_decoding_message_size(grpc::MAX_MESSAGE)
        .max_encoding_message_size(grpc::MAX_MESSAGE);
    let reply = client.put_wal(messages).await?;
    Ok(reply.into_inner().stored)
}

/// A writer of chunks for [`put_chunks`], and the stream of them: what it is given is sent
/// while the rest is being produced.
pub fn put_stream() -> (ChunkSender<Vec<u8>>, ReceiverStream<Vec<u8>>) {
    let (tx, rx) = mpsc::channel(4);
    (ChunkSender::new(tx, CHUNK, |data| data), ReceiverStream::new(rx))
}

/// `--test`: whether the node takes WAL for `server`.
pub async fn put_test(channel: tonic::transport::Channel, server: &str) -> Result<(), Status> {
    let first = PutWalChunk { server: server.to_string(), test: true, ..Default::default() };
    ArchiveClient::new(channel).put_wal(tokio_stream::iter([first])).await?;
    Ok(())
}

/// Whether a failed call never reached the node's service (worth trying another node;
/// the file was not looked at).
pub fn is_unreachable(s: &Status) -> bool {
    matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown)
}

/// Asks a node for `get-wal --bundle`; a blocking reader of the tar stream. Call it
/// outside the runtime: reading blocks on it.
pub fn get_from(
    rt: &tokio::runtime::Runtime,
    channel: tonic::transport::Channel,
    req: GetWalRequest,
) -> Result<ChannelReader, Status> {
    let mut stream = rt.block_on(async {
        let mut client = ArchiveClient::new(channel)
            .max_decoding_message_size(grpc::MAX_MESSAGE)
            .max_encoding_message_size(grpc::MAX_MESSAGE);
        client.get_wal(req).await.map(|r| r.into_inner())
    })?;
    // The first message tells whether the file is there at all.
    let first = rt.block_on(stream.message())?;
    Ok(pump(rt.handle(), first.map(|c| c.data), stream, |c| c.data).0)
}

/// A blocking reader of `first` and then the payloads of `stream`, fed by a task on `rt`.
fn pump<T: Send + 'static>(
    rt: &tokio::runtime::Handle,
    first: Option<Vec<u8>>,
    mut stream: Streaming<T>,
    data: fn(T) -> Vec<u8>,
) -> (ChannelReader, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(8);
    let task = rt.spawn(async move {
        if let Some(d) = first
            && tx.send(Ok(d)).await.is_err()
        {
            return;
        }
        loop {
            let next = match stream.message().await {
                Ok(Some(c)) => Ok(data(c)),
                Ok(None) => return,
                Err(e) => Err(e),
            };
            let end = next.is_err();
            if tx.send(next).await.is_err() || end {
                return;
            }
        }
    });
    (ChannelReader { rx, cur: Vec::new(), at: 0 }, task)
}

/// One pass of the forwarder for server `s`: every marked WAL file is put to `owner`
/// (a channel to it); markers of files the owner now holds are removed. Returns how many
/// were forwarded; stops at the first failure (the owner is unreachable: the next pass
/// tries again).
pub async fn forward_pending(
    cfg: &Config,
    s: &ServerConfig,
    owner: tonic::transport::Channel,
) -> Result<usize, String> {
    let layout = ServerLayout::new(&cfg.global, s);
    let dir = forward_dir(&layout);
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    names.sort();
    let mut done = 0;
    for n in names {
        let marker = dir.join(&n);
        let Ok(name) = n.parse::<WalFileName>() else {
            // Not ours (a temporary file of a cut write): nothing to forward.
            let _ = std::fs::remove_file(&marker);
            continue;
        };
        let (body, mtime) = {
            let (layout, s, name) = (layout.clone(), s.clone(), name.clone());
            tokio::task::spawn_blocking(move || wal_body(&layout, &s, &name)).await.map_err(|e| e.to_string())?
        }
        .map_err(|e| format!("cannot read {n} to forward it: {e}"))?;
        // The tar is written by a blocking task while what is ready is sent; its only
        // failure is the send stopping, which the put's own error tells.
        let (mut sender, chunks) = put_stream();
        let writer = tokio::task::spawn_blocking(move || put_wal_tar(&name, &body, mtime, &mut sender));
        let put = put_chunks(owner.clone(), &s.name, true, chunks).await;
        let _ = writer.await;
        put.map_err(|e| format!("forwarding {n} to the owner: {}", grpc::status_text(&e)))?;
        durable::remove(&marker).map_err(|e| format!("{}: {e}", marker.display()))?;
        done += 1;
    }
    Ok(done)
}

/// Removes the forward markers of server `s` (this node owns it now: what it holds is
/// the owner's).
pub fn drop_markers(layout: &ServerLayout) {
    let dir = forward_dir(layout);
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        let _ = durable::fsync_dir(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wal_client_is_served_only_the_servers_it_names() {
        let member = |n: &str| n == "n1";
        let client = |servers: &[&str]| Role::WalClient { servers: servers.iter().map(|s| s.to_string()).collect() };
        let refuse = UnboundClients::Refuse;
        assert_eq!(authorize("n1", Some(&Role::Node), "pg", &member, refuse), Ok(Caller::Member("n1".into())));
        let e = authorize("rogue", Some(&Role::Node), "pg", &member, refuse).unwrap_err();
        assert!(e.contains("neither a member"), "{e}");
        let c = "pghost (WAL client)";
        assert!(authorize(c, Some(&client(&["pg", "pg2"])), "pg2", &member, refuse).is_ok());
        let e = authorize(c, Some(&client(&["pg"])), "pg2", &member, refuse).unwrap_err();
        assert!(e.contains("is not for server 'pg2'"), "{e}");
        // Made before certificates named servers: only when allowed.
        let e = authorize(c, Some(&client(&[])), "pg", &member, refuse).unwrap_err();
        assert!(e.contains("--server pg") && e.contains("wal_client_unbound = allow"), "{e}");
        assert!(authorize(c, Some(&client(&[])), "pg", &member, UnboundClients::Allow).is_ok());
        assert!(authorize(c, None, "pg", &member, UnboundClients::Allow).is_err());
    }
}
