//! The put-wal wire format: a POSIX tar stream (PAX headers carry float mtimes)
//! holding WAL files and then a `SHA256SUMS` or `MD5SUMS` member. Written the way
//! Barman's client writes it (Python's tarfile, PAX format); read with the `tar`
//! crate, which accepts every PAX/GNU variant.

use crate::catalog::pyjson::py_float;
use md5::Md5;
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};

const BLOCK: usize = 512;
const RECORD: usize = 20 * BLOCK;

/// The checksum algorithm of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SumAlgo {
    Sha256,
    Md5,
}

impl SumAlgo {
    pub fn file_name(self) -> &'static str {
        match self {
            SumAlgo::Sha256 => "SHA256SUMS",
            SumAlgo::Md5 => "MD5SUMS",
        }
    }
}

/// A running digest of either algorithm.
pub enum Hasher {
    Sha256(Box<Sha256>),
    Md5(Box<Md5>),
}

impl Hasher {
    pub fn new(a: SumAlgo) -> Self {
        match a {
            SumAlgo::Sha256 => Hasher::Sha256(Box::default()),
            SumAlgo::Md5 => Hasher::Md5(Box::default()),
        }
    }
    pub fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::Md5(h) => h.update(b),
        }
    }
    pub fn hex(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Md5(h) => hex::encode(h.finalize()),
        }
    }
}

/// Copies exactly `len` bytes (or, with `None`, up to end of input) from `src` to
/// `dst` while another thread hashes them, so hashing overlaps the I/O. Returns
/// the bytes copied and the hex digest.
pub fn copy_hashing(
    algo: SumAlgo,
    src: &mut dyn Read,
    dst: &mut dyn Write,
    len: Option<u64>,
) -> io::Result<(u64, String)> {
    use std::sync::mpsc;
    const CHUNK: usize = 1 << 20;
    // Buffers go back and forth at full length with the count of valid bytes, so
    // nothing is refilled between chunks.
    let (to_hasher, hasher_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(2);
    let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..3 {
        let _ = back_tx.send(vec![0u8; CHUNK]);
    }
    std::thread::scope(|s| {
        let hasher = s.spawn(move || {
            let mut h = Hasher::new(algo);
            for (buf, n) in hasher_rx {
                h.update(&buf[..n]);
                // The reader may have finished; a closed channel is fine.
                let _ = back_tx.send(buf);
            }
            h.hex()
        });
        let mut copied: u64 = 0;
        let result = (|| -> io::Result<()> {
            loop {
                let want = match len {
                    Some(l) if l == copied => break,
                    Some(l) => CHUNK.min((l - copied) as usize),
                    None => CHUNK,
                };
                let mut buf = back_rx.recv().map_err(|_| io::Error::other("hashing thread stopped"))?;
                let n = loop {
                    match src.read(&mut buf[..want]) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        r => break r?,
                    }
                };
                if n == 0 {
                    if len.is_some() {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "input ended early"));
                    }
                    break;
                }
                dst.write_all(&buf[..n])?;
                copied += n as u64;
                to_hasher.send((buf, n)).map_err(|_| io::Error::other("hashing thread stopped"))?;
            }
            Ok(())
        })();
        drop(to_hasher);
        let digest = hasher.join().map_err(|_| io::Error::other("hashing thread panicked"))?;
        result.map(|()| (copied, digest))
    })
}

/// Hex digest of a whole reader.
pub fn digest_of(a: SumAlgo, r: &mut dyn Read) -> io::Result<String> {
    let mut h = Hasher::new(a);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(h.hex());
        }
        h.update(&buf[..n]);
    }
}

/// Metadata of a member, as Python's `gettarinfo` records it.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    pub name: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub uname: String,
    pub gname: String,
    /// Seconds since the epoch; a fractional value goes into a PAX header.
    pub mtime: f64,
    pub size: u64,
}

impl MemberInfo {
    /// A member with no owner to report (root ids, empty names, 0600), as the
    /// server side writes them: only name, size and mtime matter to the reader.
    pub fn anonymous(name: impl Into<String>, size: u64, mtime: f64) -> Self {
        MemberInfo {
            name: name.into(),
            mode: 0o600,
            uid: 0,
            gid: 0,
            uname: String::new(),
            gname: String::new(),
            mtime,
            size,
        }
    }
}

fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    let b = s.as_bytes();
    let start = b.len().saturating_sub(digits);
    field[..digits].copy_from_slice(&b[start..]);
    field[digits] = 0;
}

fn text(field: &mut [u8], s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(field.len());
    field[..n].copy_from_slice(&b[..n]);
}

/// A ustar header block as Python's `_create_header` builds it (one argument per field).
#[allow(clippy::too_many_arguments)]
fn header(
    name: &str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: u64,
    kind: u8,
    uname: &str,
    gname: &str,
) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    text(&mut h[0..100], name);
    octal(&mut h[100..108], u64::from(mode & 0o7777));
    octal(&mut h[108..116], u64::from(uid));
    octal(&mut h[116..124], u64::from(gid));
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime);
    h[148..156].copy_from_slice(b"        ");
    h[156] = kind;
    h[257..265].copy_from_slice(b"ustar\x0000");
    text(&mut h[265..297], uname);
    text(&mut h[297..329], gname);
    // devmajor/devminor stay NUL for regular files, as Python writes them.
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    let s = format!("{sum:06o}\0");
    h[148..155].copy_from_slice(s.as_bytes());
    h
}

/// A PAX record `"<len> key=value\n"`, the length counting itself.
fn pax_record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}").len() + body.len() != len {
        len = format!("{len}").len() + body.len();
    }
    format!("{len}{body}")
}

/// Writes a put-wal stream, checksumming members as they pass.
pub struct TarWriter<W: Write> {
    out: W,
    written: u64,
    algo: SumAlgo,
    sums: Vec<(String, String)>,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W, algo: SumAlgo) -> Self {
        TarWriter { out, written: 0, algo, sums: Vec::new() }
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (self.written % BLOCK as u64) as usize;
        if rem != 0 {
            self.put(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    /// Appends a member whose content is exactly `info.size` bytes of `data`;
    /// returns its hex digest.
    pub fn append(&mut self, info: &MemberInfo, data: &mut dyn Read) -> io::Result<String> {
        let rounded = info.mtime.round();
        if info.mtime.fract() != 0.0 {
            let rec = pax_record("mtime", &py_float(info.mtime));
            let h = header("././@PaxHeader", 0, 0, 0, rec.len() as u64, 0, b'x', "", "");
            self.put(&h)?;
            self.put(rec.as_bytes())?;
            self.pad()?;
        }
        let h = header(
            &info.name,
            info.mode,
            info.uid,
            info.gid,
            info.size,
            rounded.max(0.0) as u64,
            b'0',
            &info.uname,
            &info.gname,
        );
        self.put(&h)?;
        let (copied, digest) = {
            let out = &mut self.out;
            copy_hashing(self.algo, data, out, Some(info.size)).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    io::Error::new(io::ErrorKind::UnexpectedEof, format!("{} shrank while being sent", info.name))
                } else {
                    e
                }
            })?
        };
        self.written += copied;
        self.pad()?;
        self.sums.push((info.name.clone(), digest.clone()));
        Ok(digest)
    }

    /// Appends the checksum member and the end-of-archive blocks.
    pub fn finish(mut self) -> io::Result<W> {
        let body: String = self.sums.iter().map(|(n, d)| format!("{d} *{n}\n")).collect();
        let h = header(self.algo.file_name(), 0o644, 0, 0, body.len() as u64, 0, b'0', "", "");
        self.put(&h)?;
        self.put(body.as_bytes())?;
        self.pad()?;
        self.put(&[0u8; 2 * BLOCK])?;
        let rem = (self.written % RECORD as u64) as usize;
        if rem != 0 {
            self.put(&vec![0u8; RECORD - rem])?;
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

/// The largest PAX extended header or GNU long-name/long-link record taken: the `tar`
/// crate reads these whole into memory, and a put-wal stream needs a few dozen bytes (an
/// mtime) of them.
pub const MAX_EXTENSION_RECORD: u64 = 4 << 10;

/// Text from a stream shown in a log line or an error: at most this many bytes of it.
pub const SHOWN_TEXT: usize = 1 << 10;

/// `text` fit for one log line: printable ASCII as it is, everything else escaped (no
/// newline can forge another line), cut to [`SHOWN_TEXT`] bytes.
pub fn shown(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let start = out.len();
        match c {
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            _ => out.extend(c.escape_default()),
        }
        if out.len() > SHOWN_TEXT {
            out.truncate(start);
            out.push_str(&format!("... (cut, {} bytes in all)", text.len()));
            break;
        }
    }
    out
}

/// Why [`TarGuard`] stopped a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TarGuardError {
    #[error("{what} of {size} bytes, over the limit of {limit} bytes")]
    RecordTooLarge { what: &'static str, size: u64, limit: u64 },
    #[error("a GNU sparse member, which put-wal does not take")]
    Sparse,
    #[error("a tar header whose size field is not a number")]
    BadSize,
    #[error("a tar member size that runs past the end of any stream")]
    Overflow,
}

/// The body of a PAX extended header as it passes.
struct PaxBody {
    start: u64,
    size: u64,
    bytes: Vec<u8>,
}

/// A reader of a tar stream that refuses a PAX or GNU long-name/long-link record larger
/// than [`MAX_EXTENSION_RECORD`] at its header, before the `tar` crate (which offers no
/// hook) reads its body whole. It follows the stream header by header as the crate does,
/// PAX `size` overrides included, and reads each header whole before handing it out.
pub struct TarGuard<R> {
    inner: R,
    /// Offset of the next byte handed out.
    pos: u64,
    /// Offset of the next header.
    next_header: u64,
    head: [u8; BLOCK],
    /// Bytes of the header read ahead, and how many of them were handed out.
    head_held: usize,
    head_out: usize,
    pax: Option<PaxBody>,
    /// The size the last PAX extended header gives the next member.
    pax_size: Option<u64>,
    refused: Option<TarGuardError>,
}

impl<R: Read> TarGuard<R> {
    pub fn new(inner: R) -> Self {
        TarGuard {
            inner,
            pos: 0,
            next_header: 0,
            head: [0u8; BLOCK],
            head_held: 0,
            head_out: 0,
            pax: None,
            pax_size: None,
            refused: None,
        }
    }

    fn refuse(&mut self, why: TarGuardError) -> io::Error {
        self.refused = Some(why.clone());
        io::Error::new(io::ErrorKind::InvalidData, why)
    }

    /// Reads the header at `pos` whole and works out where the next one starts.
    fn read_header(&mut self) -> io::Result<()> {
        if let Some(p) = self.pax.take() {
            self.pax_size = pax_size(&p.bytes);
        }
        self.head_out = 0;
        self.head_held = 0;
        while self.head_held < BLOCK {
            match self.inner.read(&mut self.head[self.head_held..]) {
                Ok(0) => break,
                Ok(n) => self.head_held += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.head_held < BLOCK {
            // The end of the input, or a short block the crate reports: nothing to follow.
            self.next_header = u64::MAX;
            return Ok(());
        }
        let at = self.pos;
        if self.head.iter().all(|b| *b == 0) {
            // An end-of-archive block, where the crate stops.
            self.next_header = at + BLOCK as u64;
            return Ok(());
        }
        let header = tar::Header::from_byte_slice(&self.head);
        let kind = header.entry_type();
        let extension = kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions();
        // As in the crate: a recognised 'L', 'K' or 'x' is held for the next member; any
        // other header is a member handed out, which the held extensions are spent on.
        let recognised = header.as_ustar().is_some() || header.as_gnu().is_some();
        let held = recognised && (kind.is_gnu_longname() || kind.is_gnu_longlink() || kind.is_pax_local_extensions());
        let size = match (extension, self.pax_size) {
            (false, Some(s)) => Ok(s),
            _ => header.entry_size(),
        };
        let local_pax = held && kind.is_pax_local_extensions();
        if !held {
            self.pax_size = None;
        }
        let size = size.map_err(|_| self.refuse(TarGuardError::BadSize))?;
        if extension && size > MAX_EXTENSION_RECORD {
            let what = match kind.as_byte() {
                b'x' => "a PAX extended header",
                b'g' => "a PAX global header",
                b'L' => "a GNU long name record",
                _ => "a GNU long link record",
            };
            return Err(self.refuse(TarGuardError::RecordTooLarge { what, size, limit: MAX_EXTENSION_RECORD }));
        }
        if kind.is_gnu_sparse() {
            // Its extra header blocks would have to be followed too; put-wal refuses it anyway.
            return Err(self.refuse(TarGuardError::Sparse));
        }
        let body = at + BLOCK as u64;
        self.next_header = size
            .checked_next_multiple_of(BLOCK as u64)
            .and_then(|s| body.checked_add(s))
            .ok_or_else(|| self.refuse(TarGuardError::Overflow))?;
        if local_pax {
            self.pax = Some(PaxBody { start: body, size, bytes: Vec::with_capacity(size as usize) });
        }
        Ok(())
    }

    /// Keeps the bytes of a PAX extended header's body from `data`, read at `pos`.
    fn keep_pax(&mut self, data: &[u8]) {
        let Some(p) = &mut self.pax else { return };
        let end = self.pos + data.len() as u64;
        let (lo, hi) = (self.pos.max(p.start), end.min(p.start + p.size));
        if lo < hi {
            p.bytes.extend_from_slice(&data[(lo - self.pos) as usize..(hi - self.pos) as usize]);
        }
    }
}

/// The `size` a PAX extended header sets, read as the `tar` crate reads it.
fn pax_size(body: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(body) {
        let ext = ext.ok()?;
        if ext.key() == Ok("size") {
            return ext.value().ok()?.parse().ok();
        }
    }
    None
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(why) = &self.refused {
            return Err(io::Error::new(io::ErrorKind::InvalidData, why.clone()));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        if self.head_out == self.head_held && self.pos == self.next_header {
            self.read_header()?;
        }
        if self.head_out < self.head_held {
            let n = buf.len().min(self.head_held - self.head_out);
            buf[..n].copy_from_slice(&self.head[self.head_out..self.head_out + n]);
            self.head_out += n;
            self.pos += n as u64;
            return Ok(n);
        }
        // Never past the next header, so that it is read ahead and looked at first.
        let room = (self.next_header - self.pos).min(buf.len() as u64) as usize;
        let n = self.inner.read(&mut buf[..room])?;
        self.keep_pax(&buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

/// Parses a checksum file: `<hex> *<name>` or `<hex>  <name>` per line; a leading
/// `./` is stripped. Bad lines are returned for a warning.
pub fn parse_sums(body: &str) -> (Vec<(String, String)>, Vec<String>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for line in body.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let split = [" *", "  "].iter().filter_map(|sep| line.find(sep)).min();
        match split {
            Some(i) => {
                let name = &line[i + 2..];
                let name = name.strip_prefix("./").unwrap_or(name);
                ok.push((name.to_string(), line[..i].to_ascii_lowercase()));
            }
            None => bad.push(line.to_string()),
        }
    }
    (ok, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, size: u64, mtime: f64) -> MemberInfo {
        MemberInfo {
            name: name.into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            uname: "root".into(),
            gname: "root".into(),
            mtime,
            size,
        }
    }

    #[test]
    fn pax_records_count_their_own_length() {
        assert_eq!(pax_record("mtime", "1795255200.25"), "23 mtime=1795255200.25\n");
        let r = pax_record("path", &"x".repeat(95));
        assert_eq!(r.len(), r.split(' ').next().unwrap().parse::<usize>().unwrap());
    }

    #[test]
    fn written_streams_read_back_with_checksums() {
        let data = vec![7u8; 100_000];
        let mut w = TarWriter::new(Vec::new(), SumAlgo::Sha256);
        let d = w.append(&info("000000010000000000000001", data.len() as u64, 1795255200.25), &mut &data[..]).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % RECORD, 0);
        let mut a = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mtime = e
                .pax_extensions()
                .unwrap()
                .and_then(|mut p| p.find(|x| x.as_ref().is_ok_and(|x| x.key() == Ok("mtime"))))
                .map(|x| x.unwrap().value().unwrap().to_string());
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            seen.push((name, body.len(), mtime));
            if seen.len() == 2 {
                let (sums, bad) = parse_sums(std::str::from_utf8(&body).unwrap());
                assert!(bad.is_empty());
                assert_eq!(sums, vec![("000000010000000000000001".to_string(), d.clone())]);
            }
        }
        assert_eq!(seen[0], ("000000010000000000000001".to_string(), 100_000, Some("1795255200.25".to_string())));
        assert_eq!(seen[1].0, "SHA256SUMS");
    }

    /// `b` padded to whole blocks.
    fn padded(mut b: Vec<u8>) -> Vec<u8> {
        b.resize(b.len().next_multiple_of(BLOCK), 0);
        b
    }

    /// A member of `kind` with `body`, the size field saying `size`.
    fn member(name: &str, kind: u8, size: u64, body: &[u8]) -> Vec<u8> {
        let mut m = header(name, 0o600, 0, 0, size, 0, kind, "", "").to_vec();
        m.extend_from_slice(&padded(body.to_vec()));
        m
    }

    /// Names and sizes of the members read through the guard, or its refusal.
    fn through_guard(stream: &[u8]) -> Result<Vec<(String, usize)>, TarGuardError> {
        let refused = |e: io::Error| e.get_ref().and_then(|i| i.downcast_ref::<TarGuardError>()).cloned();
        let mut a = tar::Archive::new(TarGuard::new(stream));
        let mut seen = Vec::new();
        for e in a.entries().map_err(|e| refused(e).expect("a refusal"))? {
            let mut e = e.map_err(|e| refused(e).expect("a refusal"))?;
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let mut body = Vec::new();
            e.read_to_end(&mut body).expect("body");
            seen.push((name, body.len()));
        }
        Ok(seen)
    }

    #[test]
    fn the_guard_follows_pax_sizes_and_long_names() {
        let long = "n".repeat(3000);
        let size = pax_record("size", "1000");
        let mut s = member("././@PaxHeader", b'x', size.len() as u64, size.as_bytes());
        s.extend(member("a", b'0', 0, &[b'a'; 1000]));
        let mut name = long.clone().into_bytes();
        name.push(0);
        s.extend(member("././@LongLink", b'L', name.len() as u64, &name));
        s.extend(member("ignored", b'0', 3, b"bbb"));
        s.extend([0u8; 2 * BLOCK]);
        assert_eq!(through_guard(&s).unwrap(), vec![("a".to_string(), 1000), (long, 3)]);
        // What the writer writes reads back through it too.
        let mut w = TarWriter::new(Vec::new(), SumAlgo::Sha256);
        w.append(&info("000000010000000000000001", 5, 1795255200.25), &mut &b"12345"[..]).unwrap();
        let seen = through_guard(&w.finish().unwrap()).unwrap();
        assert_eq!(seen[0], ("000000010000000000000001".to_string(), 5));
    }

    #[test]
    fn the_guard_refuses_extension_records_over_4_kib_at_their_header() {
        let at_limit = pax_record("comment", &"c".repeat(4082));
        assert_eq!(at_limit.len() as u64, MAX_EXTENSION_RECORD);
        let mut s = member("././@PaxHeader", b'x', at_limit.len() as u64, at_limit.as_bytes());
        s.extend(member("a", b'0', 1, b"a"));
        s.extend([0u8; 2 * BLOCK]);
        assert_eq!(through_guard(&s).unwrap(), vec![("a".to_string(), 1)]);
        for (kind, what) in [
            (b'x', "a PAX extended header"),
            (b'g', "a PAX global header"),
            (b'L', "a GNU long name record"),
            (b'K', "a GNU long link record"),
        ] {
            // Only the header is there: the guard must not need the body to refuse.
            let s = header("././@LongLink", 0, 0, 0, MAX_EXTENSION_RECORD + 1, 0, kind, "", "");
            let want =
                TarGuardError::RecordTooLarge { what, size: MAX_EXTENSION_RECORD + 1, limit: MAX_EXTENSION_RECORD };
            assert_eq!(through_guard(&s), Err(want));
        }
    }

    #[test]
    fn shown_text_is_one_line_and_cut() {
        assert_eq!(shown("0000\n\u{1b}[31m\\ ok"), "0000\\n\\u{1b}[31m\\\\ ok");
        assert_eq!(shown("caf\u{e9}"), "caf\\u{e9}");
        let long = shown(&"\n".repeat(5000));
        assert!(long.len() < SHOWN_TEXT + 40 && !long.contains('\n'), "{long}");
        assert!(long.ends_with("... (cut, 5000 bytes in all)"), "{long}");
    }

    #[test]
    fn sums_lines() {
        let (ok, bad) = parse_sums("ABC *./x\ndef  y z\nnonsense\n");
        assert_eq!(ok, vec![("x".into(), "abc".into()), ("y z".into(), "def".into())]);
        assert_eq!(bad, vec!["nonsense".to_string()]);
    }
}
