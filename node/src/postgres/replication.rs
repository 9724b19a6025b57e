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
use super::params::{ChannelBinding, ConnParams, Host, SslMode};
use super::tls;
use crate::wal::{Lsn, SegmentSize, SystemId, TimelineId};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

mod base_backup;
pub use base_backup::{BackupEvent, BackupStart, BackupTablespace, BaseBackupOptions};

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
    target: String,
    server_version: u32,
    /// The walsender's process id (BackendKeyData), to find it in `pg_stat_replication`.
    backend_pid: Option<i32>,
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

/// One message of a COPY stream, or its end.
enum CopyMsg {
    Data(u8, Bytes),
    Done,
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

/// Column `i` of a result row parsed as `T`; `None` when NULL or absent.
fn column<T: std::str::FromStr>(row: &Row, i: usize, what: &'static str) -> Result<Option<T>, PgError> {
    match row.get(i).and_then(text) {
        Some(t) => t.parse().map(Some).map_err(|_| PgError::bad_value(what, &t)),
        None => Ok(None),
    }
}

impl ReplicationConnection {
    /// Opens a physical replication session as libpq would for `params` (each
    /// host in turn, `connect_timeout` per host, `sslmode`, the password or
    /// `.pgpass`). `application_name` applies unless the conninfo names one.
    pub async fn connect(params: &ConnParams, application_name: Option<&str>) -> Result<Self, PgError> {
        let plan = tls::plan(params)?;
        let mut last = None;
        for i in 0..params.hosts.len() {
            let target = params.host_target(i);
            let attempt = Self::connect_one(params, &plan, i, application_name, target.clone());
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
        application_name: Option<&str>,
        target: String,
    ) -> Result<Self, PgError> {
        let fail = |reason: String| PgError::Connect { target: target.clone(), reason: one_line(&reason) };
        let io_fail = |e: std::io::Error| fail(strip_os_error(&e.to_string()));
        let port = params.port_for(index);
        let (io, tls_cert): (Box<dyn Io>, Option<Vec<u8>>) = match &params.hosts[index] {
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
                    Some(config) => negotiate_tls(tcp, params, config, name).await.map_err(fail)?,
                }
            }
        };
        let mut conn = ReplicationConnection {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            target: target.clone(),
            server_version: 0,
            backend_pid: None,
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
        let app = p.session_application_name(application_name);
        let mut startup: Vec<(&str, &str)> =
            vec![("user", p.user.as_str()), ("database", p.dbname.as_str()), ("replication", "true")];
        if let Some(a) = &app {
            startup.push(("application_name", a));
        }
        if let Some(o) = &p.options {
            startup.push(("options", o));
        }
        self.send_msg(|b| frontend::startup_message(startup.iter().copied(), b)).await?;

        let target = self.target.clone();
        let fail = |reason: String| PgError::Connect { target: target.clone(), reason: one_line(&reason) };
        let no_password = || fail("fe_sendauth: no password supplied".into());
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.read_frame().await? {
                Frame::Other(backend::Message::AuthenticationOk) => break,
                Frame::Other(backend::Message::AuthenticationCleartextPassword) => {
                    let pw = p.password().ok_or_else(no_password)?;
                    self.send_msg(|b| frontend::password_message(pw.expose().as_bytes(), b)).await?;
                }
                Frame::Other(backend::Message::AuthenticationMd5Password(body)) => {
                    let pw = p.password().ok_or_else(no_password)?;
                    let hash = md5_hash(p.user.as_bytes(), pw.expose().as_bytes(), body.salt());
                    self.send_msg(|b| frontend::password_message(hash.as_bytes(), b)).await?;
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
                        // "n": no binding from us, which the server accepts whatever it offered.
                        None if plain => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported()),
                        None => {
                            return Err(fail(
                                "none of the server's SASL authentication mechanisms are supported".into(),
                            ));
                        }
                    };
                    let s = ScramSha256::new(pw.expose().as_bytes(), cb);
                    self.send_msg(|b| frontend::sasl_initial_response(mechanism, s.message(), b)).await?;
                    scram = Some(s);
                }
                Frame::Other(backend::Message::AuthenticationSaslContinue(body)) => {
                    let s = scram.as_mut().ok_or_else(|| fail("unexpected SASL message".into()))?;
                    s.update(body.data()).map_err(|e| fail(format!("SCRAM: {e}")))?;
                    let msg = s.message().to_vec();
                    self.send_msg(|b| frontend::sasl_response(&msg, b)).await?;
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
                Frame::Other(backend::Message::BackendKeyData(k)) => self.backend_pid = Some(k.process_id()),
                Frame::Other(backend::Message::ReadyForQuery(_)) => return Ok(()),
                Frame::Other(backend::Message::ErrorResponse(body)) => return Err(fail(server_error(&body).0)),
                _ => {}
            }
        }
    }

    /// The walsender serving this connection, as `pg_stat_replication.pid` shows it.
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_pid
    }

    /// `server_version_num` computed from the `server_version` parameter.
    pub fn server_version(&self) -> u32 {
        self.server_version
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

    /// Builds one frontend message with `build` and sends it.
    async fn send_msg(&mut self, build: impl FnOnce(&mut BytesMut) -> std::io::Result<()>) -> Result<(), PgError> {
        let mut b = BytesMut::new();
        build(&mut b).map_err(|e| self.lost(e))?;
        self.send(&b).await
    }

    /// The length (after the tag) of the message at the head of the buffer.
    fn buffered_len(&self) -> Option<usize> {
        let h = self.rbuf.get(..5)?;
        Some(u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize)
    }

    /// One message from the buffer, if a whole one is there.
    fn buffered_frame(&mut self) -> Result<Option<Frame>, PgError> {
        let Some(len) = self.buffered_len() else { return Ok(None) };
        let tag = self.rbuf[0];
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
        self.send_msg(|b| frontend::query(sql, b)).await?;
        self.read_result(what).await
    }

    /// The rows of a result up to ReadyForQuery (or the start of CopyBoth), or
    /// the server's error.
    async fn read_result(&mut self, what: &'static str) -> Result<Vec<Row>, PgError> {
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
        let missing = || PgError::bad_value(W, "missing column");
        Ok(SystemInfo {
            system_id: SystemId(column(&row, 0, W)?.ok_or_else(missing)?),
            timeline: TimelineId(column(&row, 1, W)?.ok_or_else(missing)?),
            xlogpos: column(&row, 2, W)?.ok_or_else(missing)?,
        })
    }

    /// `SHOW name` on the walsender.
    pub async fn show(&mut self, name: &str) -> Result<String, PgError> {
        const W: &str = "SHOW";
        let row = Self::one_row(W, self.command(W, &format!("SHOW {name}")).await?)?;
        row.first().and_then(text).ok_or_else(|| PgError::bad_value(W, "no value"))
    }

    /// `wal_segment_size` as the walsender shows it ("16MB").
    pub async fn wal_segment_size(&mut self) -> Result<SegmentSize, PgError> {
        const W: &str = "wal_segment_size";
        let v = self.show(W).await?;
        parse_size_setting(&v).and_then(|b| SegmentSize::new(b).ok()).ok_or_else(|| PgError::bad_value(W, &v))
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
        Ok(Some(SlotPosition { restart_lsn: column(&row, 1, W)?, timeline: column(&row, 2, W)?.map(TimelineId) }))
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
        self.buffered_len().is_some_and(|len| self.rbuf.len() > len)
    }

    /// The next message of a COPY stream, split into its type byte and body
    /// (empty ones skipped), or the stream's end; a server error as `what`'s.
    async fn next_copy(&mut self, what: &'static str) -> Result<CopyMsg, PgError> {
        loop {
            match self.read_frame().await? {
                Frame::Other(backend::Message::CopyData(body)) => {
                    let mut d = body.into_bytes();
                    if d.is_empty() {
                        continue;
                    }
                    let tag = d.get_u8();
                    return Ok(CopyMsg::Data(tag, d));
                }
                Frame::Other(backend::Message::CopyDone) => return Ok(CopyMsg::Done),
                Frame::Other(backend::Message::ErrorResponse(body)) => {
                    let (reason, sqlstate) = server_error(&body);
                    return Err(PgError::Query { what, reason, sqlstate });
                }
                _ => {}
            }
        }
    }

    /// The next thing the server sends while streaming.
    pub async fn next_event(&mut self) -> Result<StreamEvent, PgError> {
        let (tag, mut d) = match self.next_copy("START_REPLICATION").await {
            Ok(CopyMsg::Data(tag, d)) => (tag, d),
            Ok(CopyMsg::Done) => return self.finish_stream().await,
            Err(e) => {
                if matches!(e, PgError::Query { .. }) {
                    self.streaming = false;
                }
                return Err(e);
            }
        };
        match tag {
            b'w' if d.len() >= 24 => {
                let start = Lsn(d.get_u64());
                let server_end = Lsn(d.get_u64());
                let _clock = d.get_i64();
                Ok(StreamEvent::XLogData { start, server_end, data: d })
            }
            b'k' if d.len() >= 17 => {
                let server_end = Lsn(d.get_u64());
                let _clock = d.get_i64();
                Ok(StreamEvent::Keepalive { server_end, reply: d.get_u8() != 0 })
            }
            other => Err(self.lost(format!("unexpected streaming message type {:?}", other as char))),
        }
    }

    /// The server left CopyBoth: answer CopyDone, then read the next timeline, if any.
    async fn finish_stream(&mut self) -> Result<StreamEvent, PgError> {
        const W: &str = "START_REPLICATION";
        self.send_msg(|b| {
            frontend::copy_done(b);
            Ok(())
        })
        .await?;
        self.streaming = false;
        let Some(row) = self.read_result(W).await?.into_iter().next() else { return Ok(StreamEvent::Ended) };
        match (column::<u32>(&row, 0, W)?, column::<Lsn>(&row, 1, W)?) {
            (Some(t), Some(next_start)) => Ok(StreamEvent::EndOfTimeline { next_timeline: TimelineId(t), next_start }),
            _ => Err(PgError::bad_value(W, "end of timeline without the next timeline")),
        }
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
        self.send_msg(|b| {
            frontend::CopyData::new(&msg[..])?.write(b);
            Ok(())
        })
        .await
    }

    /// Leaves the stream from our side (CopyDone) and closes the session.
    pub async fn close(mut self) {
        let streaming = self.streaming;
        let bye = self.send_msg(|b| {
            if streaming {
                frontend::copy_done(b);
            }
            frontend::terminate(b);
            Ok(())
        });
        let _ = tokio::time::timeout(Duration::from_secs(1), bye).await;
    }
}

/// TLS as `sslmode` asks: SSLRequest (or direct TLS), then the handshake; a
/// plain session when the server declines and `prefer` allows it. Returns the
/// stream and the server's certificate (for SCRAM channel binding).
async fn negotiate_tls(
    mut tcp: tokio::net::TcpStream,
    params: &ConnParams,
    config: &rustls::ClientConfig,
    name: &str,
) -> Result<(Box<dyn Io>, Option<Vec<u8>>), String> {
    let io_text = |e: std::io::Error| strip_os_error(&e.to_string());
    if !params.ssl_direct {
        let mut req = BytesMut::new();
        frontend::ssl_request(&mut req);
        tcp.write_all(&req).await.map_err(io_text)?;
        match tcp.read_u8().await.map_err(io_text)? {
            b'S' => {}
            b'N' if params.sslmode == SslMode::Prefer => return Ok((Box::new(tcp), None)),
            b'N' => return Err("server does not support SSL, but SSL was required".into()),
            other => return Err(format!("received invalid response to SSL negotiation: {}", other as char)),
        }
    }
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config.clone()));
    let sni = rustls::pki_types::ServerName::try_from(name.to_string())
        .map_err(|e| format!("invalid host name \"{name}\": {e}"))?;
    let stream = connector.connect(sni, tcp).await.map_err(|e| format!("SSL error: {e}"))?;
    let cert = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
    Ok((Box::new(stream), cert))
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

/// `SHOW` size values: "16MB", "1GB", "1024kB".
fn parse_size_setting(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let n: u64 = v[..split].parse().ok()?;
    let mult = match v[split..].trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
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
    fn sizes() {
        assert_eq!(parse_size_setting("16MB"), Some(16 << 20));
        assert_eq!(parse_size_setting("1GB"), Some(1 << 30));
        assert_eq!(parse_size_setting("1024kB"), Some(1 << 20));
        assert_eq!(parse_size_setting("16 MB"), Some(16 << 20));
        assert_eq!(parse_size_setting("MB"), None);
        assert_eq!(parse_size_setting("16XB"), None);
    }

    #[test]
    fn slot_names_are_quoted() {
        assert_eq!(ident("barman"), "\"barman\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }
}
