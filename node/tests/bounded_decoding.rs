//! Bytes from another host are decoded within bounds: a put-wal stream's checksum member
//! and PAX records, and barman-agent's frames, are refused on what their headers announce
//! or as soon as they unpack too far, never after being held whole. A counting allocator
//! measures the peak of this thread's heap around each call.

#![allow(clippy::unwrap_used)]

use barman::archive::put_wal::{PutWal, PutWalError};
use barman::transport::agent::{self, AgentConn, FrameError, Reply};
use barman::wal::compression::Codecs;
use barman::wal::header::Expected;
use std::io::{self, Read, Write};

/// Counts this thread's live heap bytes and their peak (other tests run on other threads).
mod counting;

#[global_allocator]
static ALLOC: counting::Counting = counting::Counting;

use counting::peak_of;

const MIB: usize = 1 << 20;

/// A reader that counts the bytes taken from it.
struct Counted<R> {
    inner: R,
    taken: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.taken += n as u64;
        Ok(n)
    }
}

/// A ustar header of `kind` announcing `size` bytes.
fn tar_header(name: &str, kind: tar::EntryType, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).unwrap();
    h.set_entry_type(kind);
    h.set_mode(0o600);
    h.set_size(size);
    h.set_cksum();
    h.as_bytes().to_vec()
}

fn put_wal(input: &mut dyn Read) -> Result<(), PutWalError> {
    let dir = tempfile::tempdir().unwrap();
    let (incoming, errors) = (dir.path().join("incoming"), dir.path().join("errors"));
    let codecs = Codecs::default();
    let receiver = PutWal {
        server: "pg",
        incoming_dir: &incoming,
        errors_dir: &errors,
        codecs: &codecs,
        expected: Expected::default(),
    };
    let (result, peak) = peak_of(|| receiver.receive(input).map(|_| ()));
    eprintln!("put-wal peak heap: {peak} bytes");
    assert!(peak < MIB, "put-wal held {peak} bytes at once");
    assert!(std::fs::read_dir(&incoming).unwrap().next().is_none(), "a file was left in incoming/");
    result
}

#[test]
fn a_checksum_member_over_1_mib_is_refused_before_it_is_read() {
    let line = format!("{} *000000010000000000000001\n", "ab".repeat(32));
    let body = line.repeat(2 * MIB / line.len() + 1).into_bytes();
    let mut stream = tar_header("SHA256SUMS", tar::EntryType::Regular, body.len() as u64);
    stream.extend_from_slice(&body);
    stream.resize(stream.len().next_multiple_of(512) + 1024, 0);
    let mut input = Counted { inner: &stream[..], taken: 0 };
    let err = put_wal(&mut input).unwrap_err();
    assert!(matches!(err, PutWalError::TooLarge { size, limit: 1048576, .. } if size == body.len() as u64), "{err}");
    let text = err.to_string();
    assert!(text.contains("checksum member 'SHA256SUMS'") && !text.contains('\n'), "{text}");
    assert!(input.taken < 64 << 10, "{} bytes of the stream were read", input.taken);
}

#[test]
fn a_pax_header_announcing_100_mib_is_refused_at_its_header() {
    let size = 100 << 20;
    let head = tar_header("././@PaxHeader", tar::EntryType::XHeader, size);
    let mut input = Counted { inner: head.as_slice().chain(io::repeat(b'9').take(size)), taken: 0 };
    let err = put_wal(&mut input).unwrap_err();
    assert!(matches!(err, PutWalError::TooLarge { size: 104857600, limit: 4096, .. }), "{err}");
    assert!(err.to_string().contains("PAX extended header"), "{err}");
    assert_eq!(input.taken, 512, "only the header is read");
}

#[test]
fn a_gnu_long_name_announcing_100_mib_is_refused_at_its_header() {
    let size = 100 << 20;
    let mut head = tar::Header::new_gnu();
    head.set_path("././@LongLink").unwrap();
    head.set_entry_type(tar::EntryType::GNULongName);
    head.set_size(size);
    head.set_cksum();
    let mut input = Counted { inner: head.as_bytes().chain(io::repeat(b'a').take(size)), taken: 0 };
    let err = put_wal(&mut input).unwrap_err();
    assert!(matches!(err, PutWalError::TooLarge { size: 104857600, limit: 4096, .. }), "{err}");
    assert_eq!(input.taken, 512, "only the header is read");
}

#[test]
fn a_wal_member_over_1_gib_is_refused_before_it_is_read() {
    let size = (1 << 30) + 512;
    let head = tar_header("000000010000000000000002", tar::EntryType::Regular, size);
    let mut input = Counted { inner: head.as_slice().chain(io::repeat(0).take(size)), taken: 0 };
    let err = put_wal(&mut input).unwrap_err();
    assert!(matches!(err, PutWalError::TooLarge { limit: 1073741824, .. }), "{err}");
    assert!(err.to_string().contains("WAL member '000000010000000000000002'"), "{err}");
    assert!(input.taken < 64 << 10, "{} bytes of the stream were read", input.taken);
}

/// An agent's end that says `script`, then nothing; what it is told goes nowhere.
fn scripted_agent(script: Vec<u8>) -> Box<dyn agent::Duplex> {
    Box::new(tokio::io::join(io::Cursor::new(script), tokio::io::sink()))
}

fn frame(kind: u8, announced: usize, body: &[u8]) -> Vec<u8> {
    let mut f = (announced as u32).to_le_bytes().to_vec();
    f.push(kind);
    f.extend_from_slice(body);
    f
}

/// The agent's greeting, then `then`; the error of the first reply after it.
fn agent_error(then: Vec<u8>) -> (io::Error, usize) {
    let hello =
        bincode::serde::encode_to_vec(Reply::Hello { version: agent::VERSION }, bincode::config::standard()).unwrap();
    let mut script = frame(0, hello.len(), &hello);
    script.extend_from_slice(&then);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut conn = rt.block_on(AgentConn::start(scripted_agent(script), "pg-host")).unwrap();
    let (reply, peak) = peak_of(|| rt.block_on(conn.recv()));
    eprintln!("agent recv peak heap: {peak} bytes");
    (reply.unwrap_err(), peak)
}

fn frame_error(e: &io::Error) -> Option<&FrameError> {
    e.get_ref().and_then(|i| i.downcast_ref::<FrameError>())
}

#[test]
fn an_agent_message_announcing_256_mib_is_not_allocated_up_front() {
    let (err, peak) = agent_error(frame(0, 256 << 20, b"a few bytes"));
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    assert!(peak < 2 * MIB, "{peak} bytes held for a frame of a few bytes");
}

#[test]
fn a_string_length_inside_an_agent_message_is_not_allocated_up_front() {
    // Reply::Failed (variant 6), then a string announcing `len` bytes, then three of them.
    for len in [512u64 << 20, 1 << 62] {
        let mut body = vec![6u8, 0xFD];
        body.extend_from_slice(&len.to_le_bytes());
        body.extend_from_slice(b"why");
        let (err, peak) = agent_error(frame(0, body.len(), &body));
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(peak < MIB, "{peak} bytes held for a message of {} bytes", body.len());
    }
}

#[test]
fn an_agent_data_frame_over_the_cap_is_refused_on_its_header() {
    let (err, peak) = agent_error(frame(1, 256 << 20, b"a few bytes"));
    assert!(matches!(frame_error(&err), Some(FrameError::TooLarge { len: 268435456, .. })), "{err}");
    assert!(peak < MIB, "{peak} bytes held");
}

#[test]
fn a_zstd_bomb_from_the_agent_is_refused_while_unpacking() {
    // 1 GiB of zeros, compressed a MiB at a time.
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    let zeros = vec![0u8; MIB];
    for _ in 0..1024 {
        enc.write_all(&zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() <= agent::MAX_DATA_FRAME, "a bomb of {} bytes is refused by the frame cap", bomb.len());
    let (err, peak) = agent_error(frame(2, bomb.len(), &bomb));
    assert!(matches!(frame_error(&err), Some(FrameError::UnpacksTooLarge { .. })), "{err}");
    assert!(peak < bomb.len() + 2 * MIB, "{peak} bytes held for a bomb of {} bytes", bomb.len());
}
