//! A physical replication connection: PostgreSQL's walsender protocol spoken
//! directly, so that we decide which write/flush positions the server is told.
//!
//! Message framing and SCRAM come from `postgres-protocol`. Its backend parser
//! does not know `CopyBothResponse` ('W'), so messages are split by tag and
//! length here and only the tags it knows are handed to it.
//!
//! The session has two modes: commands (`IDENTIFY_SYSTEM`, `SHOW`, slots,
//! `TIMELINE_HISTORY`) and, after [`ReplicationConnection::start`], the CopyBoth
//! stream read with [`ReplicationConnection::next_event`].

use super::error::{PgError, one_line, strip_os_error};
use super::params::{ChannelBinding, ConnParams, DEFAULT_PORT, Host, SslMode};
use super::tls;
use crate::wal::{Lsn, SystemId, TimelineId};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;
/// Most bytes asked of the socket at once while streaming.
const READ_CHUNK: usize = 256 * 1024;

/// `IDENTIFY_SYSTEM`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    pub system_id: SystemId,
    pub timeline: TimelineId,
    pub xlogpos: Lsn,
}

/// `READ_REPLICATION_SLOT`'s answer for an existing physical slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotPosition {
    pub restart_lsn: Option<Lsn>,
    pub timeline: Option<TimelineId>,
}

/// What the server sent while streaming.
#[derive(Debug)]
pub enum StreamEvent {
    /// WAL bytes starting at `start`; `server_end` is the server's own end of WAL.
    XLogData { start: Lsn, server_end: Lsn, data: Bytes },
    /// A keepalive; `reply` asks for a status update now.
    Keepalive { server_end: Lsn, reply: bool },
    /// The timeline streamed has ended; the next one starts at `next_start`.
    EndOfTimeline { next_timeline: TimelineId, next_start: Lsn },
    /// The server stopped streaming without a next timeline (shutting down).
    Ended,
}

/// A result row of a command: each column as raw bytes (text format).
type Row = Vec<Option<Bytes>>;

pub struct ReplicationConnection {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    target: String,
    server_version: u32,
    streaming: bool,
}

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection").field("target", &self.target).finish()
    }
}

/// A message split off the read buffer.
enum Frame {
    CopyBoth,
    Other(backend::Message),
}

fn server_error(fields: &backend::ErrorResponseBody) -> (String, Option<String>) {
    use fallible_iterator::FallibleIterator;
    let (mut severity, mut message, mut code, mut detail) = (None, None, None, None);
    let mut it = fields.fields();
    while let Ok(Some(f)) = it.next() {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'V' => severity = Some(v),
            b'S' if severity.is_none() => severity = Some(v),
            b'M' => message = Some(v),
            b'C' => code = Some(v),
            b'D' => detail = Some(v),
            _ => {}
        }
    }
    let mut text = format!("{}: {}", severity.unwrap_or_else(|| "ERROR".into()), message.unwrap_or_default());
    if let Some(d) = detail {
        text.push_str(&format!(" ({d})"));
    }
    (one_line(&text), code)
}

fn now_pg_micros() -> i64 {
    let us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    us - PG_EPOCH_OFFSET_US
}

/// Quotes a slot name for a replication command (our names are `[0-9a-z_]+`,
/// quoting keeps anything else from being read as syntax).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn text(col: &Option<Bytes>) -> Option<String> {
    col.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
}

impl ReplicationConnection {
    /// Opens a physical replication session as libpq would for `params` (each
    /// host in turn, `connect_timeout` per host, `sslmode`, the password or
    /// `.pgpass`). `application_name` applies unless the conninfo names one.
    pub async fn connect(params: &ConnParams, application_name: Option<&str>) -> Result<Self, PgError> {
        let plan = tls::plan(params)?;
        let mut last = None;
        for (i, host) in params.hosts.iter().enumerate() {
            let port = params.ports.get(i).or(params.ports.first()).copied().unwrap_or(DEFAULT_PORT);
            let target = match host {
                Host::Tcp(name) => format!("at \"{name}\", port {port}"),
                Host::Socket(dir) => format!("on socket \"{}/.s.PGSQL.{port}\"", dir.display()),
            };
            let attempt = Self::connect_one(params, &plan, i, host, port, application_name, target.clone());
            let result = match params.connect_timeout {
                Some(t) => tokio::time::timeout(t, attempt).await.unwrap_or_else(|_| {
                    Err(PgError::Connect { target: target.clone(), reason: "timeout expired".into() })
                }),
                None => attempt.await,
            };
            match result {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .unwrap_or_else(|| PgError::Connect { target: "(no host)".into(), reason: "no host to connect to".into() }))
    }

    async fn connect_one(
        params: &ConnParams,
        plan: &tls::TlsPlan,
        index: usize,
        host: &Host,
        port: u16,
        application_name: Option<&str>,
        target: String,
    ) -> Result<Self, PgError> {
        let fail = |reason: String| PgError::Connect { target: target.clone(), reason: one_line(&reason) };
        let io_fail = |e: std::io::Error| fail(strip_os_error(&e.to_string()));
        let (io, tls_cert): (Box<dyn Io>, Option<Vec<u8>>) = match host {
            Host::Socket(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                (Box::new(tokio::net::UnixStream::connect(&path).await.map_err(io_fail)?), None)
            }
            Host::Tcp(name) => {
                let tcp = match params.hostaddrs.get(index) {
                    Some(addr) => tokio::net::TcpStream::connect((*addr, port)).await,
                    None => tokio::net::TcpStream::connect((name.as_str(), port)).await,
                }
                .map_err(io_fail)?;
                // Status updates are small and must leave at once (synchronous commits wait on them).
                tcp.set_nodelay(true).map_err(io_fail)?;
                match &plan.config {
                    None => (Box::new(tcp), None),
                    Some(config) => {
                        let mut tcp = tcp;
                        let wanted = if params.ssl_direct {
                            true
                        } else {
                            let mut req = BytesMut::new();
                            frontend::ssl_request(&mut req);
                            tcp.write_all(&req).await.map_err(io_fail)?;
                            let answer = tcp.read_u8().await.map_err(io_fail)?;
                            match answer {
                                b'S' => true,
                                b'N' if params.sslmode == SslMode::Prefer => false,
                                b'N' => return Err(fail("server does not support SSL, but SSL was required".into())),
                                other => {
                                    return Err(fail(format!(
                                        "received invalid response to SSL negotiation: {}",
                                        other as char
                                    )));
                                }
                            }
                        };
                        if wanted {
                            let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config.clone()));
                            let sni = rustls::pki_types::ServerName::try_from(name.clone())
                                .map_err(|e| fail(format!("invalid host name \"{name}\": {e}")))?;
                            let stream =
                                connector.connect(sni, tcp).await.map_err(|e| fail(format!("SSL error: {e}")))?;
                            let cert =
                                stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
                            (Box::new(stream), cert)
                        } else {
                            (Box::new(tcp), None)
                        }
                    }
                }
            }
        };
        let mut conn = ReplicationConnection {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::new(),
            target: target.clone(),
            server_version: 0,
            streaming: false,
        };
        conn.startup(params, application_name, tls_cert).await.map_err(|e| match e {
            PgError::Connect { .. } => e,
            other => fail(other.to_string()),
        })?;
        Ok(conn)
    }

    async fn startup(
        &mut self,
        p: &ConnParams,
        application_name: Option<&str>,
        tls_cert: Option<Vec<u8>>,
    ) -> Result<(), PgError> {
        let app = if p.conninfo_sets_application_name {
            p.application_name.clone()
        } else {
            application_name.map(str::to_string).or_else(|| p.application_name.clone())
        }
        .or_else(|| p.fallback_application_name.clone());
        let mut startup: Vec<(&str, &str)> =
            vec![("user", p.user.as_str()), ("database", p.dbname.as_str()), ("replication", "true")];
        if let Some(a) = &app {
            startup.push(("application_name", a));
        }
        if let Some(o) = &p.options {
            startup.push(("options", o));
        }
        let mut buf = BytesMut::new();
        frontend::startup_message(startup.iter().copied(), &mut buf).map_err(|e| self.lost(e))?;
        self.send(&buf).await?;

        let target = self.target.clone();
        let fail = |reason: String| PgError::Connect { target: target.clone(), reason: one_line(&reason) };
        let no_password = || fail("fe_sendauth: no password supplied".into());
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.read_frame().await? {
                Frame::Other(backend::Message::AuthenticationOk) => break,
                Frame::Other(backend::Message::AuthenticationCleartextPassword) => {
                    let pw = p.password().ok_or_else(no_password)?;
                    let mut b = BytesMut::new();
                    frontend::password_message(pw.expose().as_bytes(), &mut b).map_err(|e| self.lost(e))?;
                    self.send(&b).await?;
                }
                Frame::Other(backend::Message::AuthenticationMd5Password(body)) => {
                    let pw = p.password().ok_or_else(no_password)?;
                    let hash = md5_hash(p.user.as_bytes(), pw.expose().as_bytes(), body.salt());
                    let mut b = BytesMut::new();
                    frontend::password_message(hash.as_bytes(), &mut b).map_err(|e| self.lost(e))?;
                    self.send(&b).await?;
                }
                Frame::Other(backend::Message::AuthenticationSasl(body)) => {
                    use fallible_iterator::FallibleIterator;
                    let pw = p.password().ok_or_else(no_password)?;
                    let mut plain = false;
                    let mut plus = false;
                    let mut mechs = body.mechanisms();
                    while let Ok(Some(m)) = mechs.next() {
                        plain |= m == sasl::SCRAM_SHA_256;
                        plus |= m == sasl::SCRAM_SHA_256_PLUS;
                    }
                    let binding = match (&tls_cert, p.channel_binding) {
                        (Some(cert), ChannelBinding::Prefer | ChannelBinding::Require) if plus => {
                            Some(sasl::ChannelBinding::tls_server_end_point(end_point_hash(cert)))
                        }
                        (_, ChannelBinding::Require) => {
                            return Err(fail("channel binding is required, but server did not offer an authentication method that supports channel binding".into()));
                        }
                        _ => None,
                    };
                    let (mechanism, cb) = match binding {
                        Some(cb) => (sasl::SCRAM_SHA_256_PLUS, cb),
                        None if plain => (
                            sasl::SCRAM_SHA_256,
                            if tls_cert.is_some() {
                                sasl::ChannelBinding::unsupported()
                            } else {
                                sasl::ChannelBinding::unrequested()
                            },
                        ),
                        None => {
                            return Err(fail(
                                "none of the server's SASL authentication mechanisms are supported".into(),
                            ));
                        }
                    };
                    let s = ScramSha256::new(pw.expose().as_bytes(), cb);
                    let mut b = BytesMut::new();
                    frontend::sasl_initial_response(mechanism, s.message(), &mut b).map_err(|e| self.lost(e))?;
                    self.send(&b).await?;
                    scram = Some(s);
                }
                Frame::Other(backend::Message::AuthenticationSaslContinue(body)) => {
                    let s = scram.as_mut().ok_or_else(|| fail("unexpected SASL message".into()))?;
                    s.update(body.data()).map_err(|e| fail(format!("SCRAM: {e}")))?;
                    let mut b = BytesMut::new();
                    frontend::sasl_response(s.message(), &mut b).map_err(|e| self.lost(e))?;
                    self.send(&b).await?;
                }
                Frame::Other(backend::Message::AuthenticationSaslFinal(body)) => {
                    let s = scram.as_mut().ok_or_else(|| fail("unexpected SASL message".into()))?;
                    s.finish(body.data()).map_err(|e| fail(format!("SCRAM: {e}")))?;
                }
                Frame::Other(backend::Message::ErrorResponse(body)) => {
                    let (mut reason, code) = server_error(&body);
                    if let (Some(file), Some("28P01")) = (&p.password_file, code.as_deref()) {
                        reason.push_str(&format!(" (password retrieved from file \"{}\")", file.display()));
                    }
                    return Err(fail(reason));
                }
                Frame::Other(backend::Message::NoticeResponse(_)) => {}
                _ => return Err(fail("unsupported authentication method requested by the server".into())),
            }
        }
        // Parameters, key data, then ready.
        loop {
            match self.read_frame().await? {
                Frame::Other(backend::Message::ParameterStatus(ps)) if ps.name().ok() == Some("server_version") => {
                    self.server_version = ps.value().ok().map_or(0, version_num);
                }
                Frame::Other(backend::Message::ReadyForQuery(_)) => return Ok(()),
                Frame::Other(backend::Message::ErrorResponse(body)) => return Err(fail(server_error(&body).0)),
                _ => {}
            }
        }
    }

    /// `server_version_num` computed from the `server_version` parameter.
    pub fn server_version(&self) -> u32 {
        self.server_version
    }

    /// `at "host", port N`, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    fn lost(&self, e: impl std::fmt::Display) -> PgError {
        PgError::Lost { target: self.target.clone(), reason: one_line(&strip_os_error(&e.to_string())) }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), PgError> {
        match self.io.write_all(bytes).await {
            Ok(()) => self.io.flush().await.map_err(|e| self.lost(e)),
            Err(e) => Err(self.lost(e)),
        }
    }

    /// One message from the buffer, if a whole one is there.
    fn buffered_frame(&mut self) -> Result<Option<Frame>, PgError> {
        if self.rbuf.len() < 5 {
            return Ok(None);
        }
        let tag = self.rbuf[0];
        let len = u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]) as usize;
        if len < 4 {
            return Err(self.lost(format!("invalid message length {len}")));
        }
        if self.rbuf.len() < len + 1 {
            self.rbuf.reserve(len + 1 - self.rbuf.len());
            return Ok(None);
        }
        if tag == b'W' {
            self.rbuf.advance(len + 1);
            return Ok(Some(Frame::CopyBoth));
        }
        match backend::Message::parse(&mut self.rbuf) {
            Ok(Some(m)) => Ok(Some(Frame::Other(m))),
            Ok(None) => Ok(None),
            Err(e) => Err(self.lost(format!("bad message from the server: {e}"))),
        }
    }

    async fn fill(&mut self) -> Result<(), PgError> {
        if self.rbuf.capacity() - self.rbuf.len() < 8192 {
            self.rbuf.reserve(READ_CHUNK);
        }
        match self.io.read_buf(&mut self.rbuf).await {
            Ok(0) => Err(self.lost("server closed the connection unexpectedly")),
            Ok(_) => Ok(()),
            Err(e) => Err(self.lost(e)),
        }
    }

    async fn read_frame(&mut self) -> Result<Frame, PgError> {
        loop {
            if let Some(f) = self.buffered_frame()? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    /// Runs one replication command; its rows (text format), or the server's error.
    async fn command(&mut self, what: &'static str, sql: &str) -> Result<Vec<Row>, PgError> {
        if self.streaming {
            return Err(PgError::BadValue { what, value: "the connection is streaming".into() });
        }
        let mut b = BytesMut::new();
        frontend::query(sql, &mut b).map_err(|e| self.lost(e))?;
        self.send(&b).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.read_frame().await? {
                Frame::Other(backend::Message::DataRow(row)) => rows.push(split_row(&row).map_err(|e| self.lost(e))?),
                Frame::Other(backend::Message::ErrorResponse(body)) => {
                    let (reason, sqlstate) = server_error(&body);
                    error = Some(PgError::Query { what, reason, sqlstate });
                }
                Frame::Other(backend::Message::ReadyForQuery(_)) => break,
                Frame::CopyBoth => {
                    self.streaming = true;
                    return Ok(rows);
                }
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    fn one_row(what: &'static str, rows: Vec<Row>) -> Result<Row, PgError> {
        rows.into_iter().next().ok_or_else(|| PgError::bad_value(what, "no row"))
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, PgError> {
        const W: &str = "IDENTIFY_SYSTEM";
        let row = Self::one_row(W, self.command(W, W).await?)?;
        let col = |i: usize| row.get(i).and_then(text).ok_or_else(|| PgError::bad_value(W, "missing column"));
        let sysid = col(0)?;
        let system_id = SystemId(sysid.parse().map_err(|_| PgError::bad_value(W, &sysid))?);
        let tli = col(1)?;
        let timeline = TimelineId(tli.parse().map_err(|_| PgError::bad_value(W, &tli))?);
        let pos = col(2)?;
        let xlogpos = pos.parse().map_err(|_| PgError::bad_value(W, &pos))?;
        Ok(SystemInfo { system_id, timeline, xlogpos })
    }

    /// `SHOW name` on the walsender.
    pub async fn show(&mut self, name: &str) -> Result<String, PgError> {
        const W: &str = "SHOW";
        let row = Self::one_row(W, self.command(W, &format!("SHOW {name}")).await?)?;
        row.first().and_then(text).ok_or_else(|| PgError::bad_value(W, "no value"))
    }

    /// `TIMELINE_HISTORY tli`: the history file's name and bytes.
    pub async fn timeline_history(&mut self, tli: TimelineId) -> Result<(String, Bytes), PgError> {
        const W: &str = "TIMELINE_HISTORY";
        let row = Self::one_row(W, self.command(W, &format!("TIMELINE_HISTORY {}", tli.0)).await?)?;
        let name = row.first().and_then(text).ok_or_else(|| PgError::bad_value(W, "no file name"))?;
        let content = row.get(1).cloned().flatten().ok_or_else(|| PgError::bad_value(W, "no content"))?;
        Ok((name, content))
    }

    /// `CREATE_REPLICATION_SLOT name PHYSICAL` (no RESERVE_WAL, as Barman).
    pub async fn create_physical_slot(&mut self, slot: &str) -> Result<(), PgError> {
        self.command("CREATE_REPLICATION_SLOT", &format!("CREATE_REPLICATION_SLOT {} PHYSICAL", ident(slot))).await?;
        Ok(())
    }

    /// `DROP_REPLICATION_SLOT name`.
    pub async fn drop_slot(&mut self, slot: &str) -> Result<(), PgError> {
        self.command("DROP_REPLICATION_SLOT", &format!("DROP_REPLICATION_SLOT {}", ident(slot))).await?;
        Ok(())
    }

    /// `READ_REPLICATION_SLOT name` (PostgreSQL 15+): `None` when there is no such slot.
    pub async fn read_slot(&mut self, slot: &str) -> Result<Option<SlotPosition>, PgError> {
        const W: &str = "READ_REPLICATION_SLOT";
        let row = Self::one_row(W, self.command(W, &format!("READ_REPLICATION_SLOT {}", ident(slot))).await?)?;
        if row.first().cloned().flatten().is_none() {
            return Ok(None);
        }
        let restart_lsn = match row.get(1).and_then(text) {
            Some(t) => Some(t.parse().map_err(|_| PgError::bad_value(W, &t))?),
            None => None,
        };
        let timeline = match row.get(2).and_then(text) {
            Some(t) => Some(TimelineId(t.parse().map_err(|_| PgError::bad_value(W, &t))?)),
            None => None,
        };
        Ok(Some(SlotPosition { restart_lsn, timeline }))
    }

    /// `START_REPLICATION [SLOT s] PHYSICAL X/Y TIMELINE n`; the stream is then
    /// read with [`Self::next_event`].
    pub async fn start(&mut self, slot: Option<&str>, from: Lsn, tli: TimelineId) -> Result<(), PgError> {
        let slot = slot.map(|s| format!("SLOT {} ", ident(s))).unwrap_or_default();
        let sql = format!("START_REPLICATION {slot}PHYSICAL {from} TIMELINE {}", tli.0);
        self.command("START_REPLICATION", &sql).await?;
        if !self.streaming {
            return Err(PgError::bad_value("START_REPLICATION", "the server did not start streaming"));
        }
        Ok(())
    }

    /// Whether a whole message is already buffered (so that a caller can drain
    /// everything received before it makes the data durable and reports it).
    pub fn has_buffered_message(&self) -> bool {
        self.rbuf.len() >= 5 && {
            let len = u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]) as usize;
            self.rbuf.len() > len
        }
    }

    /// The next thing the server sends while streaming.
    pub async fn next_event(&mut self) -> Result<StreamEvent, PgError> {
        loop {
            match self.read_frame().await? {
                Frame::Other(backend::Message::CopyData(body)) => {
                    let mut d = body.into_bytes();
                    if d.is_empty() {
                        continue;
                    }
                    match d.get_u8() {
                        b'w' if d.len() >= 24 => {
                            let start = Lsn(d.get_u64());
                            let server_end = Lsn(d.get_u64());
                            let _clock = d.get_i64();
                            return Ok(StreamEvent::XLogData { start, server_end, data: d });
                        }
                        b'k' if d.len() >= 17 => {
                            let server_end = Lsn(d.get_u64());
                            let _clock = d.get_i64();
                            return Ok(StreamEvent::Keepalive { server_end, reply: d.get_u8() != 0 });
                        }
                        other => {
                            return Err(self.lost(format!("unexpected streaming message type {:?}", other as char)));
                        }
                    }
                }
                Frame::Other(backend::Message::CopyDone) => return self.finish_stream().await,
                Frame::Other(backend::Message::ErrorResponse(body)) => {
                    let (reason, sqlstate) = server_error(&body);
                    self.streaming = false;
                    return Err(PgError::Query { what: "START_REPLICATION", reason, sqlstate });
                }
                _ => {}
            }
        }
    }

    /// The server left CopyBoth: answer CopyDone, then read the next timeline, if any.
    async fn finish_stream(&mut self) -> Result<StreamEvent, PgError> {
        let mut b = BytesMut::new();
        frontend::copy_done(&mut b);
        self.send(&b).await?;
        self.streaming = false;
        let mut next = None;
        let mut error = None;
        loop {
            match self.read_frame().await? {
                Frame::Other(backend::Message::DataRow(row)) => {
                    let row = split_row(&row).map_err(|e| self.lost(e))?;
                    let tli = row.first().and_then(text).and_then(|t| t.parse().ok());
                    let pos = row.get(1).and_then(text).and_then(|t| t.parse().ok());
                    if let (Some(t), Some(p)) = (tli, pos) {
                        next = Some((TimelineId(t), p));
                    }
                }
                Frame::Other(backend::Message::ErrorResponse(body)) => {
                    let (reason, sqlstate) = server_error(&body);
                    error = Some(PgError::Query { what: "START_REPLICATION", reason, sqlstate });
                }
                Frame::Other(backend::Message::ReadyForQuery(_)) => break,
                _ => {}
            }
        }
        if let Some(e) = error {
            return Err(e);
        }
        Ok(match next {
            Some((next_timeline, next_start)) => StreamEvent::EndOfTimeline { next_timeline, next_start },
            None => StreamEvent::Ended,
        })
    }

    /// A standby status update. `apply` is what the receiver has applied:
    /// nothing, for an archive (as pg_receivewal: invalid, 0).
    pub async fn send_status(&mut self, write: Lsn, flush: Lsn, reply: bool) -> Result<(), PgError> {
        let mut msg = BytesMut::with_capacity(34);
        msg.put_u8(b'r');
        msg.put_u64(write.0);
        msg.put_u64(flush.0);
        msg.put_u64(0);
        msg.put_i64(now_pg_micros());
        msg.put_u8(u8::from(reply));
        self.wbuf.clear();
        frontend::CopyData::new(&msg[..]).map_err(|e| self.lost(e))?.write(&mut self.wbuf);
        let out = std::mem::take(&mut self.wbuf);
        let r = self.send(&out).await;
        self.wbuf = out;
        r
    }

    /// Leaves the stream from our side (CopyDone) and closes the session.
    pub async fn close(mut self) {
        let mut b = BytesMut::new();
        if self.streaming {
            frontend::copy_done(&mut b);
        }
        frontend::terminate(&mut b);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.send(&b)).await;
    }
}

fn split_row(row: &backend::DataRowBody) -> std::io::Result<Row> {
    use fallible_iterator::FallibleIterator;
    let buf = row.buffer_bytes();
    row.ranges().map(|r| Ok(r.map(|r| buf.slice(r)))).collect()
}

/// `tls-server-end-point` data: the certificate's hash. SHA-256 is what RFC 5929
/// prescribes for SHA-1/SHA-256 signatures, the certificates PostgreSQL sees in practice.
fn end_point_hash(cert: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(cert).to_vec()
}

/// "15.4" → 150004, "9.6.24" → 90624, "16beta1" → 160000.
fn version_num(v: &str) -> u32 {
    let nums: Vec<u32> =
        v.split(|c: char| !c.is_ascii_digit()).take_while(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect();
    match nums.as_slice() {
        [major, rest @ ..] if *major >= 10 => major * 10000 + rest.first().copied().unwrap_or(0),
        [major, minor, rest @ ..] => major * 10000 + minor * 100 + rest.first().copied().unwrap_or(0),
        [major] => major * 10000,
        [] => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(version_num("15.4"), 150004);
        assert_eq!(version_num("15.20 (Debian 15.20-1)"), 150020);
        assert_eq!(version_num("9.6.24"), 90624);
        assert_eq!(version_num("16beta1"), 160000);
    }

    #[test]
    fn slot_names_are_quoted() {
        assert_eq!(ident("barman"), "\"barman\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }
}
