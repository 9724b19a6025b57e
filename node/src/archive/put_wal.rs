//! `put-wal`: receives WAL files from `barman-wal-archive` as a tar stream on
//! stdin, verifies their checksums and content, and stores them durably in
//! `incoming/`. Exit 0 only once every file is safe on disk.

use super::validate::{self, ValidateError};
use super::wire::{SumAlgo, TarGuard, TarGuardError, copy_hashing, digest_of, parse_sums, shown};
use crate::catalog::durable::{self, DurableFile};
use crate::catalog::rejects::{RejectReason, move_to_errors};
use crate::wal::WalFileName;
use crate::wal::compression::Codecs;
use crate::wal::header::Expected;
use crate::wal::segment::SegmentSize;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The most checksum text a stream may carry, all checksum members together: a line of
/// about 100 bytes per WAL file, and barman-wal-archive sends one file at a time.
pub const MAX_CHECKSUMS: u64 = 1 << 20;
/// The largest WAL member: PostgreSQL's largest segment size.
pub const MAX_WAL_MEMBER: u64 = SegmentSize::MAX;
/// Bad checksum lines logged one by one; the rest are counted in one line.
const BAD_LINES_LOGGED: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum PutWalError {
    #[error("Unsupported file type '{kind}' for file '{name}' in put-wal for server '{server}'")]
    FileType { kind: String, name: String, server: String },
    #[error("Unsupported filename '{name}' in put-wal for server '{server}'")]
    FileName { name: String, server: String },
    #[error("'{name}' is not a valid wal file name in put-wal for server '{server}'")]
    NotWal { name: String, server: String },
    #[error("Checksum without corresponding file '{name}' in put-wal for server '{server}'")]
    OrphanChecksum { name: String, server: String },
    #[error("Bad file checksum '{got}' (should be {want}) for file '{name}' in put-wal for server '{server}'")]
    BadChecksum { got: String, want: String, name: String, server: String },
    #[error("Missing checksum for file '{name}' in put-wal for server '{server}'")]
    MissingChecksum { name: String, server: String },
    #[error("rejected '{name}' in put-wal for server '{server}': {why}")]
    Invalid { name: String, server: String, why: String },
    #[error(
        "refused {what} of {size} bytes in put-wal for server '{server}': the limit is {limit} bytes (is the sender barman-wal-archive?)"
    )]
    TooLarge { what: String, size: u64, limit: u64, server: String },
    #[error("malformed tar stream in put-wal for server '{server}': {why}")]
    BadStream { server: String, why: String },
    #[error("cannot store '{name}' in {dir} for server '{server}': {source}")]
    Io { name: String, dir: String, server: String, source: io::Error },
}

/// What put-wal did with each file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    New(String),
    /// Same name and checksum already in incoming/: nothing to do.
    SameAsIncoming(String),
    /// Same name, other content: set aside in errors/ (Barman still exits 0).
    Duplicate {
        name: String,
        kept: PathBuf,
        incoming_sum: String,
        new_sum: String,
    },
}

pub struct PutWal<'a> {
    pub server: &'a str,
    pub incoming_dir: &'a Path,
    pub errors_dir: &'a Path,
    pub codecs: &'a Codecs,
    /// What is known of the cluster (identity.json); may be empty.
    pub expected: Expected,
}

impl<'a> PutWal<'a> {
    /// The receiver of server `server` laid out in `layout`, checking what its identity.json
    /// knows of the cluster (the segment size is taken from each file's own header).
    pub fn for_server(
        server: &'a str,
        layout: &'a crate::catalog::ServerLayout,
        codecs: &'a Codecs,
    ) -> Result<PutWal<'a>, String> {
        let expected = super::server::expected_from_identity(layout)?.unwrap_or_default();
        Ok(PutWal {
            server,
            incoming_dir: &layout.incoming_dir,
            errors_dir: &layout.errors_dir,
            codecs,
            expected: Expected { seg_size: None, ..expected },
        })
    }
}

struct Received {
    name: WalFileName,
    file: DurableFile,
    digest_sha256: String,
    mtime: Option<SystemTime>,
}

fn pax_mtime(entry: &mut tar::Entry<'_, impl Read>) -> Option<f64> {
    let exts = entry.pax_extensions().ok()??;
    for e in exts.flatten() {
        if e.key() == Ok("mtime") {
            return e.value().ok()?.parse().ok();
        }
    }
    None
}

fn to_system_time(secs: f64) -> Option<SystemTime> {
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::from_secs_f64(secs))
}

impl PutWal<'_> {
    fn io(&self, name: &str, dir: &Path) -> impl FnOnce(io::Error) -> PutWalError + '_ {
        let (name, dir) = (name.to_string(), dir.display().to_string());
        move |source| PutWalError::Io { name, dir, server: self.server.to_string(), source }
    }

    /// A read error of the tar stream: a record the guard refused, or a malformed stream.
    fn stream_error(&self, e: io::Error) -> PutWalError {
        let server = self.server.to_string();
        match e.get_ref().and_then(|i| i.downcast_ref::<TarGuardError>()) {
            Some(TarGuardError::RecordTooLarge { what, size, limit }) => {
                PutWalError::TooLarge { what: what.to_string(), size: *size, limit: *limit, server }
            }
            _ => PutWalError::BadStream { server, why: shown(&e.to_string()) },
        }
    }

    /// Reads the whole stream and stores what it holds.
    pub fn receive(&self, input: &mut dyn Read) -> Result<Vec<Stored>, PutWalError> {
        let server = self.server.to_string();
        let bad_stream = |why: String| PutWalError::BadStream { server: server.clone(), why: shown(&why) };
        let too_large =
            |what: String, size: u64, limit: u64| PutWalError::TooLarge { what, size, limit, server: server.clone() };
        durable::create_dir_all(self.incoming_dir).map_err(self.io("", self.incoming_dir))?;
        // The guard refuses oversized PAX/long-name records before the crate reads them whole.
        let mut archive = tar::Archive::new(TarGuard::new(input));
        let mut received: BTreeMap<String, Received> = BTreeMap::new();
        let mut sums: Option<(SumAlgo, Vec<(String, String)>)> = None;
        let mut sums_bytes: u64 = 0;
        let mut saw_any = false;
        for entry in archive.entries().map_err(|e| self.stream_error(e))? {
            let mut entry = entry.map_err(|e| self.stream_error(e))?;
            saw_any = true;
            let raw = entry.path_bytes().into_owned();
            let full = String::from_utf8_lossy(&raw).into_owned();
            let name = full.strip_prefix("./").unwrap_or(&full).to_string();
            let kind = entry.header().entry_type();
            if !kind.is_file() {
                let kind = shown(&char::from(kind.as_byte()).to_string());
                return Err(PutWalError::FileType { kind, name: shown(&name), server });
            }
            if name.contains('/') || name.is_empty() || name == "." || name == ".." {
                return Err(PutWalError::FileName { name: shown(&name), server });
            }
            if name == "SHA256SUMS" || name == "MD5SUMS" {
                // Checked before reading: the body is held in memory whole.
                sums_bytes = sums_bytes.saturating_add(entry.size());
                if sums_bytes > MAX_CHECKSUMS {
                    let what = match sums {
                        None => format!("checksum member '{name}'"),
                        Some(_) => format!("checksum members up to '{name}'"),
                    };
                    return Err(too_large(what, sums_bytes, MAX_CHECKSUMS));
                }
                let mut body = String::new();
                entry.read_to_string(&mut body).map_err(|e| bad_stream(e.to_string()))?;
                let (lines, bad) = parse_sums(&body);
                for b in bad.iter().take(BAD_LINES_LOGGED) {
                    tracing::warn!(server = %self.server, "Bad checksum line '{}' found in put-wal for server '{}'", shown(b), self.server);
                }
                if bad.len() > BAD_LINES_LOGGED {
                    let more = bad.len() - BAD_LINES_LOGGED;
                    tracing::warn!(server = %self.server, "{more} more bad checksum lines found in put-wal for server '{}'", self.server);
                }
                let algo = if name == "MD5SUMS" || sums.as_ref().is_some_and(|(a, _)| *a == SumAlgo::Md5) {
                    SumAlgo::Md5
                } else {
                    SumAlgo::Sha256
                };
                let mut all = sums.take().map(|(_, l)| l).unwrap_or_default();
                all.extend(lines);
                sums = Some((algo, all));
                continue;
            }
            let wal: WalFileName =
                name.parse().map_err(|_| PutWalError::NotWal { name: shown(&name), server: server.clone() })?;
            if entry.size() > MAX_WAL_MEMBER {
                return Err(too_large(format!("WAL member '{name}'"), entry.size(), MAX_WAL_MEMBER));
            }
            let mtime = pax_mtime(&mut entry)
                .or_else(|| entry.header().mtime().ok().map(|m| m as f64))
                .and_then(to_system_time);
            let dst = self.incoming_dir.join(&name);
            let mut file = DurableFile::create(&dst).map_err(self.io(&name, self.incoming_dir))?;
            // The default algorithm is computed while the data streams in (on another
            // thread); MD5 (rare, older clients) is computed from the file afterwards.
            let (_, sha) = copy_hashing(SumAlgo::Sha256, &mut entry, &mut file, None).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof || e.kind() == io::ErrorKind::InvalidData {
                    bad_stream(format!("reading '{name}': {e}"))
                } else {
                    self.io(&name, self.incoming_dir)(e)
                }
            })?;
            received.insert(name, Received { name: wal, file, digest_sha256: sha, mtime });
        }
        if !saw_any {
            return Err(bad_stream("empty input (no tar members)".into()));
        }
        let (algo, lines) = sums.unwrap_or((SumAlgo::Sha256, Vec::new()));
        let mut digests: BTreeMap<String, String> = BTreeMap::new();
        for (name, r) in received.iter_mut() {
            let d = match algo {
                SumAlgo::Sha256 => r.digest_sha256.clone(),
                SumAlgo::Md5 => {
                    let f = r.file.file().map_err(self.io(name, self.incoming_dir))?;
                    std::io::Seek::seek(f, io::SeekFrom::Start(0)).map_err(self.io(name, self.incoming_dir))?;
                    digest_of(SumAlgo::Md5, f).map_err(self.io(name, self.incoming_dir))?
                }
            };
            digests.insert(name.clone(), d);
        }
        // Every checksum must match a file before anything is published.
        let mut want: BTreeMap<String, String> = BTreeMap::new();
        for (name, sum) in lines {
            let Some(got) = digests.get(&name) else {
                return Err(PutWalError::OrphanChecksum { name: shown(&name), server });
            };
            if *got != sum {
                return Err(PutWalError::BadChecksum { got: got.clone(), want: shown(&sum), name, server });
            }
            want.insert(name, sum);
        }
        for name in received.keys() {
            if !want.contains_key(name) {
                return Err(PutWalError::MissingChecksum { name: name.clone(), server });
            }
        }
        // Content checks, also before anything is published.
        for (name, r) in received.iter_mut() {
            let tmp = r.file.temp_path().to_path_buf();
            r.file.flush().map_err(self.io(name, self.incoming_dir))?;
            match validate::check_file(&tmp, &r.name, self.codecs, &self.expected) {
                Ok(_) => {}
                Err(ValidateError::Invalid(why)) => {
                    return Err(PutWalError::Invalid { name: name.clone(), server, why: why.to_string() });
                }
                Err(ValidateError::Io(e)) => return Err(self.io(name, self.incoming_dir)(e)),
            }
        }
        let mut out = Vec::new();
        for (name, mut r) in received {
            let dst = self.incoming_dir.join(&name);
            let digest = &digests[&name];
            if dst.exists() {
                let existing = std::fs::File::open(&dst)
                    .and_then(|mut f| digest_of(algo, &mut f))
                    .map_err(self.io(&name, self.incoming_dir))?;
                if existing == *digest {
                    out.push(Stored::SameAsIncoming(name));
                    continue; // dropping the DurableFile removes the temporary file
                }
                // Keep the new bytes, durably, in errors/.
                let tmp = r.file.temp_path().to_path_buf();
                r.file.file().and_then(|f| f.sync_all()).map_err(self.io(&name, self.incoming_dir))?;
                let kept = move_to_errors(self.errors_dir, &tmp, &name, RejectReason::Duplicate)
                    .map_err(self.io(&name, self.errors_dir))?;
                out.push(Stored::Duplicate { name, kept, incoming_sum: existing, new_sum: digest.clone() });
                continue;
            }
            r.file.commit_with(0o600, r.mtime).map_err(self.io(&name, self.incoming_dir))?;
            out.push(Stored::New(name));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::{MemberInfo, TarWriter};
    use super::*;
    use crate::wal::SystemId;

    const SYS: u64 = 99;

    fn seg(pageaddr: u64) -> Vec<u8> {
        let mut v = crate::wal::header::synthetic_header(0xD110, 1, pageaddr, SYS, 16 << 20);
        v.resize(16 << 20, 0);
        v
    }

    fn stream(files: &[(&str, &[u8])], algo: SumAlgo) -> Vec<u8> {
        let mut w = TarWriter::new(Vec::new(), algo);
        for (n, d) in files {
            let info = MemberInfo::anonymous(*n, d.len() as u64, 1700000000.5);
            w.append(&info, &mut &d[..]).unwrap();
        }
        w.finish().unwrap()
    }

    struct Env {
        _d: tempfile::TempDir,
        incoming: PathBuf,
        errors: PathBuf,
        codecs: Codecs,
    }

    fn env() -> Env {
        let d = tempfile::tempdir().unwrap();
        Env { incoming: d.path().join("incoming"), errors: d.path().join("errors"), codecs: Codecs::default(), _d: d }
    }

    impl Env {
        fn put(&self, bytes: &[u8]) -> Result<Vec<Stored>, PutWalError> {
            let p = PutWal {
                server: "pg",
                incoming_dir: &self.incoming,
                errors_dir: &self.errors,
                codecs: &self.codecs,
                expected: Expected { sysid: Some(SystemId(SYS)), major: Some(15), seg_size: None },
            };
            p.receive(&mut &bytes[..])
        }
        fn listing(&self) -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(&self.incoming)
                .map(|r| r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            v.sort();
            v
        }
    }

    #[test]
    fn stores_and_keeps_mtime() {
        let e = env();
        let s = stream(&[("000000010000000000000002", &seg(0x0200_0000))], SumAlgo::Sha256);
        assert_eq!(e.put(&s).unwrap(), vec![Stored::New("000000010000000000000002".into())]);
        assert_eq!(e.listing(), ["000000010000000000000002"]);
        let m = std::fs::metadata(e.incoming.join("000000010000000000000002")).unwrap();
        assert_eq!(crate::catalog::xlogdb::mtime_float(&m), 1700000000.5);
        // Same again: silently skipped.
        assert_eq!(e.put(&s).unwrap(), vec![Stored::SameAsIncoming("000000010000000000000002".into())]);
        assert_eq!(e.listing(), ["000000010000000000000002"], "no temporary file left");
    }

    #[test]
    fn md5_streams_work() {
        let e = env();
        let s = stream(&[("000000010000000000000002", &seg(0x0200_0000))], SumAlgo::Md5);
        assert!(matches!(e.put(&s).unwrap()[0], Stored::New(_)));
    }

    #[test]
    fn different_duplicate_goes_to_errors_and_succeeds() {
        let e = env();
        e.put(&stream(&[("000000010000000000000002", &seg(0x0200_0000))], SumAlgo::Sha256)).unwrap();
        let mut other = seg(0x0200_0000);
        other[5000] = 1;
        let r = e.put(&stream(&[("000000010000000000000002", &other)], SumAlgo::Sha256)).unwrap();
        assert!(matches!(&r[0], Stored::Duplicate { .. }));
        assert_eq!(std::fs::read_dir(&e.errors).unwrap().count(), 1);
        assert_eq!(
            std::fs::read(e.incoming.join("000000010000000000000002")).unwrap(),
            seg(0x0200_0000),
            "first copy untouched"
        );
    }

    /// A stream of `members` as tar writes them (long names as GNU long-name records).
    fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn stream_text_in_errors_is_one_line_and_cut() {
        let e = env();
        let err = e.put(&stream(&[("00000001000000000000\n0002", b"x")], SumAlgo::Sha256)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, PutWalError::NotWal { .. }) && text.contains("\\n") && !text.contains('\n'), "{text}");
        let long = "0".repeat(3000);
        let text = e.put(&tar_of(&[(&long, b"x")])).unwrap_err().to_string();
        assert!(text.len() < 1200 && text.contains("(cut, 3000 bytes in all)"), "{text}");
        let sums = format!("{} *{}\n", "z\n".repeat(2000), "1".repeat(2000));
        let text = e.put(&tar_of(&[("SHA256SUMS", sums.as_bytes())])).unwrap_err().to_string();
        assert!(text.starts_with("Checksum without corresponding file") && text.len() < 1200, "{text}");
        assert!(e.listing().is_empty(), "{:?}", e.listing());
    }

    #[test]
    fn checksum_members_over_1_mib_in_all_are_refused() {
        let e = env();
        let part = vec![b'\n'; 600 << 10];
        let err = e.put(&tar_of(&[("SHA256SUMS", &part), ("SHA256SUMS", &part)])).unwrap_err();
        assert!(matches!(err, PutWalError::TooLarge { size: 1228800, limit: MAX_CHECKSUMS, .. }), "{err}");
        assert!(err.to_string().contains("checksum members up to 'SHA256SUMS'"), "{err}");
    }

    #[test]
    fn every_bad_input_is_refused_without_leaving_files() {
        let e = env();
        let good = seg(0x0200_0000);
        let mut renamed = stream(&[("000000010000000000000003", &good)], SumAlgo::Sha256);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (stream(&[("../000000010000000000000002", &good)], SumAlgo::Sha256), "Unsupported filename"),
            (stream(&[("/etc/000000010000000000000002", &good)], SumAlgo::Sha256), "Unsupported filename"),
            (stream(&[("..", &good)], SumAlgo::Sha256), "Unsupported filename"),
            (stream(&[("backup_label", b"x")], SumAlgo::Sha256), "not a valid wal file name"),
            (stream(&[("000000010000000000000002", &good[..8192])], SumAlgo::Sha256), "truncated"),
            (std::mem::take(&mut renamed), "xlp_pageaddr"),
            (Vec::new(), "empty input"),
            (vec![1u8; 1000], "malformed tar"),
        ];
        for (bytes, want) in cases {
            let err = e.put(&bytes).unwrap_err().to_string();
            assert!(err.contains(want), "{err} lacks {want}");
        }
        // A corrupted byte after the checksum was computed.
        let mut s = stream(&[("000000010000000000000002", &good)], SumAlgo::Sha256);
        s[2048 + 100] ^= 0xFF;
        assert!(e.put(&s).unwrap_err().to_string().starts_with("Bad file checksum"));
        assert!(e.listing().is_empty(), "{:?}", e.listing());
    }
}
