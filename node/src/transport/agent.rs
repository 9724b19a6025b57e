//! `barman-agent`: the far end of the copy engine's pulls. It runs on the PostgreSQL host
//! (over an SSH channel, from the client package) or beside the node (local-rsync), lists
//! directory trees and sends files as the 8 KiB blocks that differ from the hashes of the
//! previous backup's copy, so a changed relation file crosses the wire as its changed pages.
//!
//! Frames both ways: a little-endian u32 length, a kind byte, then the body: a bincode
//! (serde) message, or a file's bytes as they are (kind 1) or zstd-compressed (kind 2),
//! so that data is never encoded byte by byte.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The unit of the block delta: PostgreSQL's page.
pub const BLOCK: usize = 8192;
/// The protocol both ends must speak.
pub const VERSION: u32 = 1;
/// Bytes of changed data gathered into one `Data` reply.
const DATA_RUN: usize = 256 * 1024;
/// The most a data frame may carry, as sent or once unpacked. The sender puts less than
/// `DATA_RUN + BLOCK` bytes (264 KiB) in one, a little more once zstd fails to shrink them;
/// the headroom lets `DATA_RUN` grow without a new protocol version.
pub const MAX_DATA_FRAME: usize = 4 << 20;
const _: () = assert!(2 * (DATA_RUN + BLOCK) <= MAX_DATA_FRAME);
/// The most a message frame may carry: a listing of a whole data directory is one message
/// (some 60 bytes a file: millions of files), as is a basis (16 bytes per 8 KiB block).
const MAX_MESSAGE_FRAME: usize = 256 << 20;
/// Message bodies up to this size (all but listings and large bases) are decoded with a
/// small limit.
const SMALL_MESSAGE: usize = 1 << 20;
/// Frame bodies are read in steps of this size, so memory follows the bytes that arrive,
/// not the length a header announces.
const READ_STEP: usize = 1 << 20;
/// The zstd window (log2) a data frame may ask for: it unpacks to `MAX_DATA_FRAME` at
/// most, so needs no more; unchecked, a frame header alone reserves up to 128 MiB.
const WINDOW_LOG_MAX: u32 = 22;
const _: () = assert!(1 << WINDOW_LOG_MAX == MAX_DATA_FRAME);
/// Unpacked bytes looked at in one step when a zstd data frame is checked.
const UNPACK_STEP: usize = 128 << 10;

/// One block's hash: BLAKE3 truncated to 128 bits.
pub type BlockHash = [u8; 16];

pub fn block_hash(data: &[u8]) -> BlockHash {
    let mut h = [0u8; 16];
    h.copy_from_slice(&blake3::hash(data).as_bytes()[..16]);
    h
}

/// What both ends compute of a whole file: BLAKE3 over its block hashes and its size.
#[derive(Default)]
pub struct FileDigest(blake3::Hasher);

impl FileDigest {
    pub fn add(&mut self, h: &BlockHash) {
        self.0.update(h);
    }

    pub fn finish(mut self, size: u64) -> [u8; 32] {
        self.0.update(&size.to_le_bytes());
        *self.0.finalize().as_bytes()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Dir,
    File,
}

/// One entry of a listing, relative to the listed root (links followed, except into the
/// directories whose contents were skipped).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    pub size: u64,
    /// Nanoseconds since the epoch.
    pub mtime_ns: i64,
    pub mode: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Hello {
        version: u32,
    },
    /// Every entry under `root`; the directories named in `skip` (relative) are listed but
    /// not entered; names in `skip_names` (anywhere) and starting with `skip_prefix` are left
    /// out, and with `temp_relations` the files of temporary relations (`t<n>_<n>`).
    List {
        root: String,
        skip: Vec<String>,
        skip_names: Vec<String>,
        skip_prefix: Vec<String>,
        temp_relations: bool,
    },
    /// A file, as blocks against `basis` (the hashes of the copy the receiver holds).
    Send {
        path: String,
        basis: Vec<BlockHash>,
        compress: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Hello {
        version: u32,
    },
    Entries(Vec<Entry>),
    /// The next `blocks` blocks equal the basis's.
    Same {
        blocks: u64,
    },
    /// The next bytes of the file (zstd-compressed when asked).
    Data {
        bytes: Vec<u8>,
        compressed: bool,
    },
    /// The file ended: its size and [`FileDigest`].
    End {
        size: u64,
        digest: [u8; 32],
    },
    /// The file was not there any more (PostgreSQL dropped it).
    Vanished,
    Failed {
        why: String,
    },
}

const MESSAGE: u8 = 0;
const RAW: u8 = 1;
const ZSTD: u8 = 2;

/// A frame refused by its reader.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("a frame of {len} bytes, over the limit of {limit} for its kind")]
    TooLarge { len: usize, limit: usize },
    #[error("a zstd data frame that unpacks to more than {limit} bytes")]
    UnpacksTooLarge { limit: usize },
    #[error("a zstd data frame that ends in the middle")]
    Truncated,
    #[error("a zstd data frame that cannot be unpacked: {why}")]
    Damaged { why: String },
}

impl From<FrameError> for io::Error {
    fn from(e: FrameError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

fn head(kind: u8, len: usize) -> [u8; 5] {
    let mut h = [kind; 5];
    h[..4].copy_from_slice(&(len as u32).to_le_bytes());
    h
}

fn encode<T: Serialize>(msg: &T) -> io::Result<Vec<u8>> {
    let body = bincode::serde::encode_to_vec(msg, bincode::config::standard()).map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(body.len() + 5);
    frame.extend_from_slice(&head(MESSAGE, body.len()));
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// A data frame: the bytes follow their header as they are.
fn write_data(w: &mut impl Write, bytes: &[u8], compressed: bool) -> io::Result<()> {
    w.write_all(&head(if compressed { ZSTD } else { RAW }, bytes.len()))?;
    w.write_all(bytes)
}

/// A frame's body as a reply or request.
fn parse<T: for<'de> Deserialize<'de>>(kind: u8, body: Vec<u8>, data: fn(Vec<u8>, bool) -> Option<T>) -> io::Result<T> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("a frame of unknown kind {kind}"));
    match kind {
        MESSAGE => decode(&body),
        RAW | ZSTD => data(body, kind == ZSTD).ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn data_reply(bytes: Vec<u8>, compressed: bool) -> Option<Reply> {
    Some(Reply::Data { bytes, compressed })
}

fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> io::Result<T> {
    use bincode::config::standard;
    // bincode sets aside a string's announced length before reading it: a limit a few times
    // the body's size (bincode counts decoded values, up to ~6 times their encoding in a
    // listing) stops a lie.
    if body.len() <= SMALL_MESSAGE {
        decode_within(body, standard().with_limit::<{ 8 * SMALL_MESSAGE }>())
    } else {
        decode_within(body, standard().with_limit::<{ 8 * MAX_MESSAGE_FRAME }>())
    }
}

fn decode_within<T: for<'de> Deserialize<'de>>(body: &[u8], config: impl bincode::config::Config) -> io::Result<T> {
    bincode::serde::decode_from_slice(body, config)
        .map(|(m, _)| m)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The body's length and kind.
fn frame_len(head: [u8; 5]) -> io::Result<(usize, u8)> {
    let n = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let limit = if head[4] == MESSAGE { MAX_MESSAGE_FRAME } else { MAX_DATA_FRAME };
    if n > limit {
        return Err(FrameError::TooLarge { len: n, limit }.into());
    }
    Ok((n, head[4]))
}

/// Makes room in `body` for the next step of a `len`-byte frame body; where that step
/// starts, or None once the body is whole.
fn next_step(body: &mut Vec<u8>, len: usize) -> Option<usize> {
    let at = body.len();
    if at >= len {
        return None;
    }
    body.resize(at + (len - at).min(READ_STEP), 0);
    Some(at)
}

/// Measures what zstd data frames unpack to, with one decoder kept for a connection.
struct UnpackCheck {
    decoder: zstd::stream::raw::Decoder<'static>,
    out: Vec<u8>,
}

impl UnpackCheck {
    fn new() -> io::Result<UnpackCheck> {
        let mut decoder = zstd::stream::raw::Decoder::new()?;
        decoder.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(WINDOW_LOG_MAX))?;
        Ok(UnpackCheck { decoder, out: vec![0u8; UNPACK_STEP] })
    }

    /// The bytes `body` unpacks to, refused as soon as they pass `MAX_DATA_FRAME`: the
    /// output is looked at a step at a time and dropped.
    fn unpacked_len(&mut self, body: &[u8]) -> io::Result<usize> {
        use zstd::stream::raw::Operation;
        self.decoder.reinit()?;
        let (mut read, mut total) = (0usize, 0usize);
        // Whether the last step that did anything ended a frame.
        let mut ended = false;
        loop {
            let st = self
                .decoder
                .run_on_buffers(&body[read..], &mut self.out)
                .map_err(|e| FrameError::Damaged { why: e.to_string() })?;
            read += st.bytes_read;
            total += st.bytes_written;
            if total > MAX_DATA_FRAME {
                return Err(FrameError::UnpacksTooLarge { limit: MAX_DATA_FRAME }.into());
            }
            let stuck = st.bytes_read == 0 && st.bytes_written == 0;
            if !stuck {
                ended = st.remaining == 0;
            }
            // All input taken and the output not filled: the decoder has given all it can.
            let drained = read == body.len() && st.bytes_written < self.out.len();
            if drained || stuck {
                return if ended && read == body.len() { Ok(total) } else { Err(FrameError::Truncated.into()) };
            }
        }
    }
}

/// Reads one message; None at a clean end of the stream.
fn read_msg<T: for<'de> Deserialize<'de>>(
    r: &mut impl Read,
    data: fn(Vec<u8>, bool) -> Option<T>,
) -> io::Result<Option<T>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (len, kind) = frame_len(head)?;
    let mut body = Vec::new();
    while let Some(at) = next_step(&mut body, len) {
        r.read_exact(&mut body[at..])?;
    }
    parse(kind, body, data).map(Some)
}

fn write_msg<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    w.write_all(&encode(msg)?)
}

/// The agent's loop: answers requests until its input ends.
pub fn serve(input: impl Read, output: impl Write) -> io::Result<()> {
    let mut input = io::BufReader::with_capacity(1 << 20, input);
    let mut out = io::BufWriter::with_capacity(1 << 20, output);
    while let Some(req) = read_msg::<Request>(&mut input, |_, _| None)? {
        match req {
            Request::Hello { .. } => write_msg(&mut out, &Reply::Hello { version: VERSION })?,
            Request::List { root, skip, skip_names, skip_prefix, temp_relations } => {
                let rules = Skip { dirs: &skip, names: &skip_names, prefixes: &skip_prefix, temp_relations };
                let reply = match list(Path::new(&root), &rules) {
                    Ok(entries) => Reply::Entries(entries),
                    Err(e) => Reply::Failed { why: format!("listing {root}: {e}") },
                };
                write_msg(&mut out, &reply)?;
            }
            Request::Send { path, basis, compress } => send(&mut out, &path, &basis, compress)?,
        }
        out.flush()?;
    }
    out.flush()
}

fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    m.mtime().saturating_mul(1_000_000_000).saturating_add(m.mtime_nsec())
}

/// What a listing leaves out.
pub struct Skip<'a> {
    pub dirs: &'a [String],
    pub names: &'a [String],
    pub prefixes: &'a [String],
    pub temp_relations: bool,
}

impl Skip<'_> {
    pub fn name(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
            || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
            || (self.temp_relations && is_temp_relation(name))
    }

    /// A listed entry of `kind` (None: neither a directory nor a regular file, left out);
    /// a directory is queued in `dirs` to be entered unless its contents are skipped.
    pub fn entry(
        &self,
        path: String,
        kind: Option<Kind>,
        size: u64,
        mtime_ns: i64,
        mode: u32,
        dirs: &mut Vec<String>,
    ) -> Option<Entry> {
        let kind = kind?;
        if kind == Kind::Dir && !self.dirs.contains(&path) {
            dirs.push(path.clone());
        }
        Some(Entry { path, kind, size: if kind == Kind::File { size } else { 0 }, mtime_ns, mode: mode & 0o7777 })
    }
}

/// `t<digits>_<digits>` (with a fork or segment suffix): a temporary relation's file.
pub fn is_temp_relation(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else { return false };
    let Some((backend, rel)) = rest.split_once('_') else { return false };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let rel = rel.split(['_', '.']).next().unwrap_or("");
    digits(backend) && digits(rel)
}

fn list(root: &Path, skip: &Skip) -> io::Result<Vec<Entry>> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut dirs = vec![String::new()];
    while let Some(rel) = dirs.pop() {
        let at = if rel.is_empty() { root.to_path_buf() } else { root.join(&rel) };
        let read = match std::fs::read_dir(&at) {
            Ok(r) => r,
            // A directory removed since it was listed (a dropped database).
            Err(e) if e.kind() == io::ErrorKind::NotFound && !rel.is_empty() => continue,
            Err(e) => return Err(e),
        };
        for e in read {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if skip.name(&name) {
                continue;
            }
            let child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            // Links are followed (a pg_wal elsewhere is a directory here).
            let meta = match std::fs::metadata(e.path()) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let kind = if meta.is_dir() { Some(Kind::Dir) } else { meta.is_file().then_some(Kind::File) };
            let mode = meta.permissions().mode();
            out.extend(skip.entry(child, kind, meta.len(), mtime_ns(&meta), mode, &mut dirs));
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Runs of equal and of changed blocks, as they are found.
struct Runs<'a, W: Write> {
    out: &'a mut W,
    same: u64,
    data: Vec<u8>,
    compress: bool,
}

impl<W: Write> Runs<'_, W> {
    fn flush_same(&mut self) -> io::Result<()> {
        if self.same > 0 {
            write_msg(self.out, &Reply::Same { blocks: self.same })?;
            self.same = 0;
        }
        Ok(())
    }

    fn flush_data(&mut self) -> io::Result<()> {
        if self.data.is_empty() {
            return Ok(());
        }
        if self.compress {
            let packed = zstd::bulk::compress(&self.data, 1)?;
            write_data(self.out, &packed, true)?;
        } else {
            write_data(self.out, &self.data, false)?;
        }
        self.data.clear();
        Ok(())
    }

    fn block(&mut self, block: &[u8], same: bool) -> io::Result<()> {
        if same {
            self.flush_data()?;
            self.same += 1;
        } else {
            self.flush_same()?;
            self.data.extend_from_slice(block);
            if self.data.len() >= DATA_RUN {
                self.flush_data()?;
            }
        }
        Ok(())
    }
}

fn send(out: &mut impl Write, path: &str, basis: &[BlockHash], compress: bool) -> io::Result<()> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return write_msg(out, &Reply::Vanished),
        Err(e) => return write_msg(out, &Reply::Failed { why: format!("opening {path}: {e}") }),
    };
    let mut runs = Runs { out, same: 0, data: Vec::with_capacity(DATA_RUN + BLOCK), compress };
    let mut digest = FileDigest::default();
    let mut buf = vec![0u8; 128 * BLOCK];
    let (mut size, mut index) = (0u64, 0usize);
    loop {
        let n = match read_full(&mut f, &mut buf) {
            Ok(n) => n,
            Err(e) => {
                runs.flush_data()?;
                return write_msg(runs.out, &Reply::Failed { why: format!("reading {path}: {e}") });
            }
        };
        for block in buf[..n].chunks(BLOCK) {
            let h = block_hash(block);
            digest.add(&h);
            runs.block(block, basis.get(index) == Some(&h))?;
            index += 1;
        }
        size += n as u64;
        if n < buf.len() {
            break;
        }
    }
    runs.flush_same()?;
    runs.flush_data()?;
    write_msg(runs.out, &Reply::End { size, digest: digest.finish(size) })
}

/// The block hashes of what `f` holds from where it stands.
pub fn hash_blocks(f: &mut File) -> io::Result<Vec<BlockHash>> {
    let mut list = Vec::new();
    let mut buf = vec![0u8; 128 * BLOCK];
    loop {
        let n = read_full(f, &mut buf)?;
        list.extend(buf[..n].chunks(BLOCK).map(block_hash));
        if n < buf.len() {
            return Ok(list);
        }
    }
}

/// Fills `buf` unless the file ends first; the bytes read.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Anything the client can talk to an agent through: an SSH channel, a child's pipes.
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// The client's end of one agent.
pub struct AgentConn {
    io: tokio::io::BufReader<Box<dyn Duplex>>,
    who: String,
    unpack: UnpackCheck,
}

impl AgentConn {
    /// Greets the agent on `io`; `who` names it in errors.
    pub async fn start(io: Box<dyn Duplex>, who: &str) -> io::Result<AgentConn> {
        let mut c = AgentConn {
            io: tokio::io::BufReader::with_capacity(1 << 20, io),
            who: who.to_string(),
            unpack: UnpackCheck::new()?,
        };
        c.send(&Request::Hello { version: VERSION }).await?;
        match c.recv().await? {
            Reply::Hello { version } if version == VERSION => Ok(c),
            Reply::Hello { version } => Err(io::Error::other(format!(
                "barman-agent on {who} speaks version {version}, this node {VERSION}: install the same release on both"
            ))),
            other => Err(io::Error::other(format!("barman-agent on {who} answered {other:?} to a greeting"))),
        }
    }

    pub fn who(&self) -> &str {
        &self.who
    }

    pub async fn send(&mut self, req: &Request) -> io::Result<()> {
        let frame = encode(req)?;
        let w = self.io.get_mut();
        w.write_all(&frame).await?;
        w.flush().await
    }

    pub async fn recv(&mut self) -> io::Result<Reply> {
        let mut head = [0u8; 5];
        self.io.read_exact(&mut head).await.map_err(|e| self.ended(e))?;
        let (len, kind) = frame_len(head)?;
        let mut body = Vec::new();
        while let Some(at) = next_step(&mut body, len) {
            self.io.read_exact(&mut body[at..]).await.map_err(|e| self.ended(e))?;
        }
        // The bytes go on packed (the copy unpacks them); checked here, so that they
        // cannot unpack to more than a data frame holds.
        if kind == ZSTD {
            self.unpack.unpacked_len(&body)?;
        }
        parse(kind, body, data_reply)
    }

    fn ended(&self, e: io::Error) -> io::Error {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(e.kind(), format!("barman-agent on {} stopped answering", self.who))
        } else {
            e
        }
    }

    /// A listing (see [`Request::List`]).
    pub async fn list(&mut self, req: Request) -> io::Result<Vec<Entry>> {
        self.send(&req).await?;
        match self.recv().await? {
            Reply::Entries(e) => Ok(e),
            Reply::Failed { why } => Err(io::Error::other(why)),
            other => Err(io::Error::other(format!("barman-agent answered {other:?} to a listing"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_sent_as_its_changed_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rel");
        let mut data: Vec<u8> = (0..BLOCK * 5 + 100).map(|i| (i % 251) as u8).collect();
        let basis: Vec<BlockHash> = data.chunks(BLOCK).map(block_hash).collect();
        data[BLOCK * 2 + 7] ^= 0xff;
        std::fs::write(&path, &data).expect("write");
        let req = encode(&Request::Send { path: path.display().to_string(), basis, compress: false }).expect("encode");
        let mut out = Vec::new();
        serve(req.as_slice(), &mut out).expect("serve");
        let mut r = out.as_slice();
        let mut replies = Vec::new();
        while let Some(m) = read_msg::<Reply>(&mut r, data_reply).expect("read") {
            replies.push(m);
        }
        assert!(matches!(replies[0], Reply::Same { blocks: 2 }), "{replies:?}");
        assert!(matches!(&replies[1], Reply::Data { bytes, .. } if bytes.len() == BLOCK), "{replies:?}");
        assert!(matches!(replies[2], Reply::Same { blocks: 3 }), "{replies:?}");
        let mut d = FileDigest::default();
        data.chunks(BLOCK).for_each(|b| d.add(&block_hash(b)));
        let want = d.finish(data.len() as u64);
        assert!(matches!(replies[3], Reply::End { size, digest } if size == data.len() as u64 && digest == want));
    }

    #[test]
    fn temporary_relations_are_recognised() {
        for n in ["t3_16384", "t12_5_fsm", "t3_16384.1"] {
            assert!(is_temp_relation(n), "{n}");
        }
        for n in ["16384", "t_1", "tx3_4", "t3_", "pg_internal.init"] {
            assert!(!is_temp_relation(n), "{n}");
        }
    }

    /// What a client reads from an agent end that says `script`.
    fn replies_to_client(script: Vec<u8>) -> Vec<io::Result<Reply>> {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(async {
            let io = Box::new(tokio::io::join(io::Cursor::new(script), tokio::io::sink()));
            let mut conn = AgentConn::start(io, "test").await.expect("greeting");
            let mut out = Vec::new();
            loop {
                let r = conn.recv().await;
                let last = !matches!(r, Ok(Reply::Same { .. } | Reply::Data { .. }));
                out.push(r);
                if last {
                    return out;
                }
            }
        })
    }

    fn greeting_then(frame: Vec<u8>) -> Vec<u8> {
        let mut script = encode(&Reply::Hello { version: VERSION }).expect("encode");
        script.extend(frame);
        script
    }

    #[test]
    fn the_largest_data_frames_the_agent_sends_are_taken() {
        // Bytes zstd cannot shrink: two full data frames, then a block.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let data: Vec<u8> = (0..2 * DATA_RUN + BLOCK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rel");
        std::fs::write(&path, &data).expect("write");
        let mut req = encode(&Request::Hello { version: VERSION }).expect("encode");
        req.extend(
            encode(&Request::Send { path: path.display().to_string(), basis: vec![], compress: true }).expect("e"),
        );
        let mut script = Vec::new();
        serve(req.as_slice(), &mut script).expect("serve");
        let mut got = Vec::new();
        for r in replies_to_client(script) {
            match r.expect("reply") {
                Reply::Data { bytes, compressed: true } => {
                    got.extend(zstd::decode_all(bytes.as_slice()).expect("unpack"))
                }
                Reply::End { size, .. } => assert_eq!(size, data.len() as u64),
                other => panic!("{other:?}"),
            }
        }
        assert!(got == data, "the data came back different");
    }

    #[test]
    fn zstd_frames_that_are_cut_or_want_a_large_window_are_refused() {
        let packed = zstd::bulk::compress(&[7u8; 100_000], 1).expect("compress");
        let cut = &packed[..packed.len() / 2];
        let mut big_window = zstd::stream::write::Encoder::new(Vec::new(), 1).expect("encoder");
        big_window.window_log(WINDOW_LOG_MAX + 2).expect("window");
        big_window.write_all(b"small").expect("write");
        let big_window = big_window.finish().expect("finish");
        for body in [cut, &big_window] {
            let mut frame = head(ZSTD, body.len()).to_vec();
            frame.extend_from_slice(body);
            let replies = replies_to_client(greeting_then(frame));
            let e = replies.last().expect("a reply").as_ref().expect_err("refused");
            let why = e.get_ref().and_then(|i| i.downcast_ref::<FrameError>());
            assert!(matches!(why, Some(FrameError::Truncated | FrameError::Damaged { .. })), "{e}");
        }
    }

    #[test]
    fn listings_decode_within_the_limits() {
        // Entries as small as they come (bincode counts each as ~6 times its encoding),
        // and as a large data directory lists them.
        let tiny = |i: usize| Entry { path: "x".into(), kind: Kind::File, size: i as u64 % 2, mtime_ns: 0, mode: 0 };
        let real = |i: usize| Entry {
            path: format!("base/16384/{}_fsm", 100_000 + i),
            kind: Kind::File,
            size: 1 << 30,
            mtime_ns: 1_700_000_000_000_000_000 + i as i64,
            mode: 0o600,
        };
        for (entries, n) in [(&tiny as &dyn Fn(usize) -> Entry, 170_000), (&real, 1_000_000)] {
            let frame = encode(&Reply::Entries((0..n).map(entries).collect())).expect("encode");
            match read_msg::<Reply>(&mut frame.as_slice(), data_reply) {
                Ok(Some(Reply::Entries(e))) => assert_eq!(e.len(), n),
                other => panic!("{n} entries of {} bytes: {other:?}", frame.len()),
            }
        }
    }

    #[test]
    fn a_missing_file_is_vanished() {
        let req = encode(&Request::Send { path: "/nonexistent/x".into(), basis: vec![], compress: true }).expect("e");
        let mut out = Vec::new();
        serve(req.as_slice(), &mut out).expect("serve");
        assert!(matches!(read_msg::<Reply>(&mut out.as_slice(), data_reply), Ok(Some(Reply::Vanished))));
    }
}
