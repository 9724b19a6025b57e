//! `<server>-xlog.db`: one line per archived file, exactly as Barman writes it
//! (`name\tsize\ttime\tcompression\tencryption`), appended under the xlogdb lock.

use super::durable;
use super::layout::ServerLayout;
use super::lock::{Lock, LockError, LockKind};
use super::pyjson::py_float;
use crate::wal::WalFileName;
use crate::wal::compression::{Codecs, Head};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub struct XlogEntry {
    pub name: WalFileName,
    /// Bytes as stored (after compression).
    pub size: u64,
    /// Modification time of the source file, seconds since the epoch.
    pub time: f64,
    /// Registry name of the compression, or none.
    pub compression: Option<String>,
    pub encryption: Option<String>,
}

/// A file's mtime as Python's `os.stat().st_mtime` computes it.
pub fn mtime_float(meta: &fs::Metadata) -> f64 {
    meta.mtime() as f64 + meta.mtime_nsec() as f64 * 1e-9
}

impl XlogEntry {
    pub fn to_line(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}\n",
            self.name,
            self.size,
            py_float(self.time),
            self.compression.as_deref().unwrap_or("None"),
            self.encryption.as_deref().unwrap_or("None")
        )
    }

    /// Reads a line in any of the three historical forms (3, 4 or 5 columns).
    pub fn parse_line(line: &str) -> Result<XlogEntry, String> {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if !(3..=5).contains(&parts.len()) {
            return Err(format!("expected 3 to 5 columns, found {}", parts.len()));
        }
        let name = parts[0].parse::<WalFileName>().map_err(|e| e.to_string())?;
        let size = parts[1].parse::<u64>().map_err(|_| format!("size '{}' is not a number", parts[1]))?;
        let time = parts[2].parse::<f64>().map_err(|_| format!("time '{}' is not a number", parts[2]))?;
        let opt = |i: usize| parts.get(i).filter(|v| **v != "None").map(|v| v.to_string());
        Ok(XlogEntry { name, size, time, compression: opt(3), encryption: opt(4) })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum XlogDbError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path}:{line}: cannot read the line ({why}); run 'barman rebuild-xlogdb' to recreate the file from the archive"
    )]
    BadLine { path: PathBuf, line: usize, why: String },
    #[error(
        "{path}: byte {offset}: cannot read the line ({why}); run 'barman rebuild-xlogdb' to recreate the file from the archive"
    )]
    BadEntry { path: PathBuf, offset: u64, why: String },
    #[error(transparent)]
    Lock(#[from] LockError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> XlogDbError + '_ {
    move |source| XlogDbError::Io { path: path.to_path_buf(), source }
}

/// What a rebuild found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RebuildStats {
    pub history: usize,
    pub backup_labels: usize,
    pub wal_files: usize,
}

/// Files a rebuild skipped (they are not catalogued by Barman either).
#[derive(Debug, Clone, Default)]
pub struct RebuildReport {
    pub stats: RebuildStats,
    pub skipped: Vec<PathBuf>,
}

pub struct XlogDb<'a> {
    layout: &'a ServerLayout,
}

impl<'a> XlogDb<'a> {
    pub fn new(layout: &'a ServerLayout) -> Self {
        XlogDb { layout }
    }

    pub fn path(&self) -> PathBuf {
        self.layout.xlogdb_path()
    }

    /// The xlogdb lock: every read and write of the file holds it (blocking, as Barman).
    pub fn lock(&self) -> Result<Lock, XlogDbError> {
        durable::create_dir_all(&self.layout.lock_dir).map_err(io_err(&self.layout.lock_dir))?;
        Ok(Lock::acquire(&self.layout.lock_dir.join(LockKind::Xlogdb.file_name(&self.layout.server)), true)?)
    }

    /// Appends entries and fsyncs before returning.
    pub fn append(&self, _held: &Lock, entries: &[XlogEntry]) -> Result<(), XlogDbError> {
        if entries.is_empty() {
            return Ok(());
        }
        let path = self.path();
        let created = !path.exists();
        durable::create_dir_all(&self.layout.xlogdb_dir).map_err(io_err(&self.layout.xlogdb_dir))?;
        let mut f = OpenOptions::new().create(true).append(true).mode(0o600).open(&path).map_err(io_err(&path))?;
        let text: String = entries.iter().map(XlogEntry::to_line).collect();
        f.write_all(text.as_bytes()).map_err(io_err(&path))?;
        f.sync_all().map_err(io_err(&path))?;
        if created {
            durable::fsync_dir(&self.layout.xlogdb_dir).map_err(io_err(&self.layout.xlogdb_dir))?;
        }
        Ok(())
    }

    /// All entries, in file order. A missing file reads as empty.
    pub fn read(&self, _held: &Lock) -> Result<Vec<XlogEntry>, XlogDbError> {
        let path = self.path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let e = XlogEntry::parse_line(line).map_err(|why| XlogDbError::BadLine {
                path: path.clone(),
                line: i + 1,
                why,
            })?;
            out.push(e);
        }
        Ok(out)
    }

    /// The entries from byte `from` on, each with the offset where its line starts: how
    /// sync-info's cursors address the file. A line that does not parse (a blank one too, as
    /// Barman's reader) is an error naming its offset; a missing file reads as empty.
    pub fn entries_from(&self, _held: &Lock, from: u64) -> Result<Vec<(u64, XlogEntry)>, XlogDbError> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.path();
        let mut text = Vec::new();
        match fs::File::open(&path) {
            Ok(mut f) => {
                f.seek(SeekFrom::Start(from)).map_err(io_err(&path))?;
                f.read_to_end(&mut text).map_err(io_err(&path))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        let mut out = Vec::new();
        let mut offset = 0usize;
        while offset < text.len() {
            let end = text[offset..].iter().position(|b| *b == b'\n').map_or(text.len(), |i| offset + i + 1);
            let at = from + offset as u64;
            let e = XlogEntry::parse_line(&String::from_utf8_lossy(&text[offset..end]))
                .map_err(|why| XlogDbError::BadEntry { path: path.clone(), offset: at, why })?;
            out.push((at, e));
            offset = end;
        }
        Ok(out)
    }

    /// Up to `n` bytes at byte `at` (fewer at the end of the file, none past it): what a
    /// cursor's line starts with.
    pub fn peek(&self, _held: &Lock, at: u64, n: usize) -> Result<Vec<u8>, XlogDbError> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.path();
        let mut f = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut buf = Vec::with_capacity(n);
        f.seek(SeekFrom::Start(at)).map_err(io_err(&path))?;
        f.take(n as u64).read_to_end(&mut buf).map_err(io_err(&path))?;
        Ok(buf)
    }

    /// Keeps the entries `keep` accepts and rewrites the file durably; the
    /// entries left out are returned (their files are the caller's to remove).
    pub fn retain(&self, held: &Lock, keep: &dyn Fn(&XlogEntry) -> bool) -> Result<Vec<XlogEntry>, XlogDbError> {
        let (kept, dropped): (Vec<XlogEntry>, Vec<XlogEntry>) = self.read(held)?.into_iter().partition(|e| keep(e));
        if !dropped.is_empty() {
            let path = self.path();
            let text: String = kept.iter().map(XlogEntry::to_line).collect();
            durable::write_file(&path, text.as_bytes(), 0o600).map_err(io_err(&path))?;
        }
        Ok(dropped)
    }

    /// All entries, read under the lock taken here.
    pub fn read_locked(&self) -> Result<Vec<XlogEntry>, XlogDbError> {
        let held = self.lock()?;
        self.read(&held)
    }

    /// Whether the catalogue holds no line (a missing file counts as empty).
    pub fn is_empty(&self, _held: &Lock) -> Result<bool, XlogDbError> {
        match fs::metadata(self.path()) {
            Ok(m) => Ok(m.len() == 0),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(io_err(&self.path())(e)),
        }
    }

    /// Rebuilds the file when it is missing (Barman does so silently, and drops a
    /// pre-3.13 `wals/xlog.db`).
    pub fn ensure(&self, held: &Lock, codecs: &Codecs) -> Result<Option<RebuildReport>, XlogDbError> {
        if self.path().exists() {
            return Ok(None);
        }
        self.rebuild(held, codecs).map(Some)
    }

    /// Recreates the catalogue from the files under `wals/`.
    pub fn rebuild(&self, _held: &Lock, codecs: &Codecs) -> Result<RebuildReport, XlogDbError> {
        let wals = &self.layout.wals_dir;
        durable::create_dir_all(&self.layout.xlogdb_dir).map_err(io_err(&self.layout.xlogdb_dir))?;
        let mut report = RebuildReport::default();
        let mut lines = String::new();
        let mut top: Vec<PathBuf> = match fs::read_dir(wals) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(wals)(e)),
        };
        top.sort();
        for p in top {
            let fname = p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            if p.is_dir() {
                let mut files: Vec<PathBuf> =
                    fs::read_dir(&p).map_err(io_err(&p))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
                files.sort();
                for f in files {
                    let n = f.file_name().map(|x| x.to_string_lossy().into_owned()).unwrap_or_default();
                    if n.ends_with(".tmp") {
                        continue;
                    }
                    match n.parse::<WalFileName>() {
                        Ok(w) if f.is_file() && (w.is_segment() || w.is_backup_label()) => {
                            if w.is_segment() {
                                report.stats.wal_files += 1;
                            } else {
                                report.stats.backup_labels += 1;
                            }
                            lines.push_str(&entry_for(&f, w, codecs)?.to_line());
                        }
                        _ => report.skipped.push(f),
                    }
                }
            } else if let Ok(w) = fname.parse::<WalFileName>()
                && w.is_history()
            {
                report.stats.history += 1;
                lines.push_str(&entry_for(&p, w, codecs)?.to_line());
            }
        }
        let path = self.path();
        durable::write_file(&path, lines.as_bytes(), 0o600).map_err(io_err(&path))?;
        let legacy = self.layout.legacy_xlogdb_path();
        if legacy != path && legacy.exists() {
            fs::remove_file(&legacy).map_err(io_err(&legacy))?;
        }
        Ok(report)
    }
}

/// The xlog.db line for a file in the archive, from its metadata and content.
pub fn entry_for(path: &Path, name: WalFileName, codecs: &Codecs) -> Result<XlogEntry, XlogDbError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    let head = fs::File::open(path).and_then(|mut f| Head::read(&mut f)).map_err(io_err(path))?;
    let encryption = detect_gpg(head.bytes()).then(|| "gpg".to_string());
    let compression =
        if encryption.is_some() { None } else { codecs.identify(head.bytes()).map(|c| c.name().to_string()) };
    Ok(XlogEntry { name, size: meta.len(), time: mtime_float(&meta), compression, encryption })
}

/// An OpenPGP encrypted message (what `file` reports as PGP ... encrypted):
/// armour, or a first packet that is an encrypted session key.
pub fn detect_gpg(head: &[u8]) -> bool {
    if head.starts_with(b"-----BEGIN PGP MESSAGE") {
        return true;
    }
    // A WAL page magic is not a packet tag (9.5's 0xD087 starts with 0x87).
    if let [a, b, ..] = head
        && crate::wal::header::major_for_magic(u16::from_le_bytes([*a, *b])).is_some()
    {
        return false;
    }
    matches!(head.first(), Some(0x84..=0x87 | 0x8C..=0x8F | 0xC1 | 0xC3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgresql_9_5_segment_is_not_taken_for_gpg() {
        let seg = crate::wal::header::synthetic_header(0xD087, 1, 0, 1, 16 << 20);
        assert!(!detect_gpg(&seg));
        assert!(detect_gpg(&[0x85, 0x01, 0x0c]));
        assert!(detect_gpg(b"-----BEGIN PGP MESSAGE-----"));
    }

    #[test]
    fn lines_round_trip_in_every_historical_form() {
        let l = "000000010000000000000002\t16777216\t1406019026.0\tNone\tNone\n";
        let e = XlogEntry::parse_line(l).unwrap();
        assert_eq!(e.to_line(), l);
        let e = XlogEntry::parse_line("00000002.history 42 1406019329.93 gzip").unwrap();
        assert_eq!(e.compression.as_deref(), Some("gzip"));
        assert_eq!(e.to_line(), "00000002.history\t42\t1406019329.93\tgzip\tNone\n");
        assert!(XlogEntry::parse_line("000000010000000000000002 1").is_err());
        assert!(XlogEntry::parse_line("nope 1 1.0").is_err());
    }

    #[test]
    fn entries_carry_their_offsets_and_a_bad_line_is_named_by_its_own() {
        let d = tempfile::tempdir().unwrap();
        let layout = ServerLayout::under("pg", &d.path().join("pg"), d.path());
        let db = XlogDb::new(&layout);
        let held = db.lock().unwrap();
        assert!(db.entries_from(&held, 0).unwrap().is_empty(), "a missing file reads as empty");
        assert!(db.peek(&held, 0, 24).unwrap().is_empty());
        let a = "000000010000000000000001\t16777216\t1.0\tNone\tNone\n";
        let b = "00000002.history\t42\t2.0\tNone\tNone\n";
        fs::create_dir_all(&layout.xlogdb_dir).unwrap();
        fs::write(db.path(), format!("{a}{b}")).unwrap();
        let all = db.entries_from(&held, 0).unwrap();
        let offsets: Vec<u64> = all.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, [0, a.len() as u64]);
        let rest = db.entries_from(&held, a.len() as u64).unwrap();
        assert_eq!((rest[0].0, rest[0].1.name.as_str()), (a.len() as u64, "00000002.history"));
        assert_eq!(db.peek(&held, a.len() as u64, 17).unwrap(), b"00000002.history\t");
        assert_eq!(db.peek(&held, (a.len() + b.len() - 2) as u64, 24).unwrap(), b"e\n", "short at the end");
        fs::write(db.path(), format!("{a}\n{b}")).unwrap();
        let e = db.entries_from(&held, 0).unwrap_err().to_string();
        assert!(e.contains(&format!("byte {}", a.len())), "{e}");
    }

    #[test]
    fn append_read_rebuild() {
        let d = tempfile::tempdir().unwrap();
        let layout = ServerLayout::under("pg", &d.path().join("pg"), d.path());
        let db = XlogDb::new(&layout);
        let codecs = Codecs::default();
        let held = db.lock().unwrap();
        assert!(db.is_empty(&held).unwrap());
        // An archive as Barman leaves it.
        let hd = layout.wals_dir.join("0000000100000000");
        fs::create_dir_all(&hd).unwrap();
        fs::write(hd.join("000000010000000000000001"), vec![0u8; 100]).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&[0u8; 1000]).unwrap();
        fs::write(hd.join("000000010000000000000002"), gz.finish().unwrap()).unwrap();
        fs::write(hd.join("000000010000000000000002.00000028.backup"), b"START WAL").unwrap();
        fs::write(hd.join("000000010000000000000003.partial"), b"x").unwrap();
        fs::write(hd.join("junk.tmp"), b"x").unwrap();
        fs::write(layout.wals_dir.join("00000002.history"), b"1\t0/3000000\tx\n").unwrap();
        fs::write(layout.legacy_xlogdb_path(), b"old").unwrap();
        let r = db.ensure(&held, &codecs).unwrap().unwrap();
        assert_eq!(r.stats, RebuildStats { history: 1, backup_labels: 1, wal_files: 2 });
        assert_eq!(r.skipped.len(), 1, "the .partial is reported, not catalogued");
        assert!(!layout.legacy_xlogdb_path().exists());
        let entries = db.read(&held).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000002.00000028.backup",
                "00000002.history"
            ]
        );
        assert_eq!(entries[1].compression.as_deref(), Some("gzip"));
        assert_eq!(entries[0].compression, None);
        assert!(db.ensure(&held, &codecs).unwrap().is_none(), "no rebuild when the file exists");
        db.append(&held, &entries[..1]).unwrap();
        assert_eq!(db.read(&held).unwrap().len(), 5);
    }
}
