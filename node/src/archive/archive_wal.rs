//! `archive-wal`: files from `streaming/` and `incoming/` are checked, compressed
//! and filed under `wals/`, one `xlog.db` line each, in name order. Compression
//! may run on several files at once; everything that makes a file visible runs
//! in order, and the source is removed only once the archived copy and its
//! catalogue line are durable (a crash at any point is finished by the next run).

use super::validate::{self, Checked, Invalid, ValidateError};
use crate::catalog::ServerLayout;
use crate::catalog::durable::{self, DurableFile};
use crate::catalog::lock::{Lock, LockError, LockKind};
use crate::catalog::rejects::{RejectReason, move_to_errors};
use crate::catalog::xlogdb::{XlogDb, XlogDbError, XlogEntry, entry_for, mtime_float};
use crate::config::ServerConfig;
use crate::hooks::{AbortStop, Event, Hooks, Phase};
use crate::wal::WalFileName;
use crate::wal::compression::{Codec, Codecs, Level};
use crate::wal::header::{Expected, HeaderError};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, SystemTime};

/// A truncated file modified this recently may still be arriving (scp writes in
/// place): it waits in `incoming/` instead of being rejected.
const STILL_ARRIVING: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Streaming,
    Incoming,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Streaming => "streaming",
            Source::Incoming => "file archival",
        }
    }
}

/// What happened, in the order it happened (the CLI prints these as they come).
#[derive(Debug, Clone, PartialEq)]
pub enum ArchiveEvent {
    Header {
        source: Source,
        batch: Option<usize>,
    },
    Processing {
        name: String,
    },
    Archived {
        name: String,
        entry: XlogEntry,
    },
    /// Already archived with the same content: the extra copy is dropped.
    AlreadyArchived {
        name: String,
    },
    Duplicate {
        name: String,
        kept: PathBuf,
        offset: Option<u64>,
    },
    Invalid {
        name: String,
        kept: PathBuf,
        why: String,
    },
    Waiting {
        name: String,
        why: String,
    },
    Unknown {
        names: Vec<String>,
    },
    NoFile,
    Stopped {
        name: String,
        why: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("Another archive-wal process is already running on server {0}. Skipping to the next server")]
    Busy(String),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Xlogdb(#[from] XlogDbError),
    #[error("archiving {name} of server {server}: {source}")]
    Io { name: String, server: String, source: io::Error },
}

pub struct Archiver<'a> {
    pub layout: &'a ServerLayout,
    pub codecs: &'a Codecs,
    pub hooks: &'a Hooks<'a>,
    pub compression: Option<Codec>,
    pub level: Level,
    pub streaming: bool,
    pub incoming: bool,
    pub streaming_batch: usize,
    pub incoming_batch: usize,
    /// Compression workers (`parallel_jobs`); hooks force one.
    pub jobs: usize,
    has_hooks: bool,
    /// Archive directories already cleaned of stale temporary files this run.
    cleaned: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
}

impl<'a> Archiver<'a> {
    /// The archiver of server `s`, as its options say.
    pub fn for_server(s: &ServerConfig, layout: &'a ServerLayout, codecs: &'a Codecs, hooks: &'a Hooks<'a>) -> Self {
        Archiver {
            layout,
            codecs,
            hooks,
            compression: s.opts.compression,
            level: s.opts.compression_level.unwrap_or(Level::Medium),
            streaming: s.opts.streaming_archiver,
            incoming: s.opts.archiver,
            streaming_batch: s.opts.streaming_archiver_batch_size.max(0) as usize,
            incoming_batch: s.opts.archiver_batch_size.max(0) as usize,
            jobs: s.opts.parallel_jobs.max(1) as usize,
            has_hooks: hooks.any(Event::Archive),
            cleaned: Default::default(),
        }
    }
}

/// A file picked for this run.
struct Candidate {
    name: WalFileName,
    path: PathBuf,
}

/// The result of the parallel part for one file.
enum Prepared {
    /// `staged` is sealed (fsynced); without it the source itself is fsynced.
    Ready {
        cand: Candidate,
        staged: Option<DurableFile>,
        entry: XlogEntry,
        mtime: Option<SystemTime>,
    },
    Identical {
        cand: Candidate,
    },
    Done(ArchiveEvent),
}

/// Sorted entries of a directory, without dot-files (Barman globs `*`).
pub(super) fn listing(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    v.sort();
    Ok(v)
}

/// Whether an archive-wal pass would find work: anything in `incoming`, or a completed
/// file in `streaming` (the `.partial` one being written stays there).
pub fn has_waiting(layout: &ServerLayout) -> io::Result<bool> {
    if !listing(&layout.incoming_dir)?.is_empty() {
        return Ok(true);
    }
    Ok(listing(&layout.streaming_dir)?.iter().any(|p| !file_name(p).ends_with(".partial")))
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

impl Archiver<'_> {
    fn io(&self, name: &str) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
        let name = name.to_string();
        move |source| ArchiveError::Io { name, server: self.layout.server.clone(), source }
    }

    /// Runs one archive-wal pass. `expected` is asked for once, when there is
    /// something to check; an error there leaves every file waiting.
    pub fn run(
        &self,
        expected: &mut dyn FnMut() -> Result<Expected, String>,
        emit: &mut dyn FnMut(ArchiveEvent),
        verbose: bool,
    ) -> Result<(), ArchiveError> {
        durable::create_dir_all(&self.layout.lock_dir).map_err(self.io("lock directory"))?;
        let lock_path = self.layout.lock_dir.join(LockKind::ArchiveWal.file_name(&self.layout.server));
        let _lock = match Lock::acquire(&lock_path, false) {
            Ok(l) => l,
            Err(LockError::Busy(_)) => return Err(ArchiveError::Busy(self.layout.server.clone())),
            Err(e) => return Err(e.into()),
        };
        {
            let db = XlogDb::new(self.layout);
            let held = db.lock()?;
            db.ensure(&held, self.codecs)?;
        }
        // Leftovers of killed runs: temporary files are never under a final name,
        // but they take space (the archive's directories are cleaned as they are used).
        durable::remove_stale_temps(&self.layout.incoming_dir);
        let mut exp: Option<Result<Expected, String>> = None;
        for (enabled, source) in [(self.streaming, Source::Streaming), (self.incoming, Source::Incoming)] {
            if !enabled {
                continue;
            }
            let (cands, unknown, total) = self.batch(source).map_err(self.io(source.label()))?;
            // Barman shows a batch size whenever it takes fewer files than it listed.
            let batch = (total > cands.len()).then_some(cands.len());
            if verbose || !cands.is_empty() {
                emit(ArchiveEvent::Header { source, batch });
            }
            if cands.is_empty() && verbose {
                emit(ArchiveEvent::NoFile);
            }
            if !cands.is_empty() {
                let e = exp.get_or_insert_with(&mut *expected).clone();
                match e {
                    Ok(e) => {
                        if !self.archive_batch(cands, &e, emit)? {
                            // As Barman: this source stops here, the next one still runs.
                            continue;
                        }
                    }
                    Err(why) => {
                        for c in cands {
                            emit(ArchiveEvent::Waiting { name: c.name.to_string(), why: why.clone() });
                        }
                    }
                }
            }
            if !unknown.is_empty() {
                let mut names = Vec::new();
                for p in unknown {
                    let n = file_name(&p);
                    tracing::info!(server = %self.layout.server, "Moving unexpected file for {} from {}: {n}", self.layout.server, source.label());
                    move_to_errors(&self.layout.errors_dir, &p, &n, RejectReason::Unknown).map_err(self.io(&n))?;
                    names.push(n);
                }
                emit(ArchiveEvent::Unknown { names });
            }
        }
        Ok(())
    }

    /// The files of one source to archive this run, the unknown objects, and the
    /// number of entries found (before the batch limit).
    fn batch(&self, source: Source) -> io::Result<(Vec<Candidate>, Vec<PathBuf>, usize)> {
        let (dir, limit) = match source {
            Source::Streaming => (&self.layout.streaming_dir, self.streaming_batch),
            Source::Incoming => (&self.layout.incoming_dir, self.incoming_batch),
        };
        let mut all = listing(dir)?;
        let total = all.len();
        if source == Source::Streaming {
            // The streamer resumes from its newest file: hold back the newest
            // .partial, or the newest other WAL file when there is none. Chosen
            // over the whole directory, before the batch limit: Barman chooses
            // within the batch, so with a batch size of 1 it never archives.
            let wal_file = |p: &PathBuf, partial: bool| {
                file_name(p).parse::<WalFileName>().is_ok_and(|w| w.is_partial() == partial)
                    && fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
            };
            let held =
                all.iter().rposition(|p| wal_file(p, true)).or_else(|| all.iter().rposition(|p| wal_file(p, false)));
            if let Some(i) = held {
                all.remove(i);
            }
        }
        if limit > 0 {
            all.truncate(limit);
        }
        let mut files = Vec::new();
        let mut unknown = Vec::new();
        for p in all {
            let n = file_name(&p);
            if n.ends_with(".tmp") {
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(&p) else { continue };
            match n.parse::<WalFileName>() {
                Ok(w) if meta.is_file() => files.push(Candidate { name: w, path: p }),
                _ => unknown.push(p),
            }
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((files, unknown, total))
    }

    /// Archives candidates in name order; false when a hook asked to stop.
    fn archive_batch(
        &self,
        cands: Vec<Candidate>,
        exp: &Expected,
        emit: &mut dyn FnMut(ArchiveEvent),
    ) -> Result<bool, ArchiveError> {
        let jobs = self.jobs.max(1);
        if self.has_hooks || jobs == 1 || cands.len() == 1 {
            for c in cands {
                // Pre hooks run before the file is touched.
                if let Err(stop) = self.run_hooks(Phase::Pre, &c.name, &c.path, &c.path, None, None) {
                    tracing::warn!(server = %self.layout.server, "Archiving of {}/{} aborted by pre_archive_retry_script. Reason: {stop}", self.layout.server, c.name);
                    emit(ArchiveEvent::Stopped { name: c.name.to_string(), why: stop.to_string() });
                    return Ok(false);
                }
                self.finish(self.prepare(c, exp)?, emit)?;
            }
            return Ok(true);
        }
        self.pipeline(cands, exp, jobs, emit)?;
        Ok(true)
    }

    /// `jobs` workers check and compress files ahead; this thread makes them
    /// visible strictly in name order. A few files at most wait prepared.
    fn pipeline(
        &self,
        cands: Vec<Candidate>,
        exp: &Expected,
        jobs: usize,
        emit: &mut dyn FnMut(ArchiveEvent),
    ) -> Result<(), ArchiveError> {
        let (job_tx, job_rx) = mpsc::channel::<(usize, Candidate)>();
        let job_rx = Mutex::new(job_rx);
        let (res_tx, res_rx) = mpsc::channel::<(usize, Result<Prepared, ArchiveError>)>();
        let mut queue = cands.into_iter().enumerate();
        std::thread::scope(|s| {
            for _ in 0..jobs {
                let (res_tx, job_rx) = (res_tx.clone(), &job_rx);
                s.spawn(move || {
                    loop {
                        let job = match job_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => break,
                        };
                        let Ok((i, c)) = job else { break };
                        if res_tx.send((i, self.prepare(c, exp))).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(res_tx);
            let mut sent = 0;
            for j in queue.by_ref().take(jobs * 2) {
                let _ = job_tx.send(j);
                sent += 1;
            }
            let mut pending = std::collections::BTreeMap::new();
            let mut next = 0;
            let mut outcome = Ok(());
            'commit: while next < sent {
                let Ok((i, r)) = res_rx.recv() else { break };
                pending.insert(i, r);
                while let Some(r) = pending.remove(&next) {
                    next += 1;
                    if let Err(e) = r.and_then(|p| self.finish(p, emit)) {
                        outcome = Err(e);
                        break 'commit;
                    }
                    if let Some(j) = queue.next() {
                        let _ = job_tx.send(j);
                        sent += 1;
                    }
                }
            }
            // Workers stop after their current file; what they prepared is dropped
            // (temporary files removed), and a later run takes those files again.
            drop(job_tx);
            outcome
        })
    }

    /// The archive hooks of `phase` with Barman's environment; nothing at all
    /// (not even a stat) when no archive hook is configured.
    fn run_hooks(
        &self,
        phase: Phase,
        name: &WalFileName,
        file: &Path,
        meta_of: &Path,
        compression: Option<&str>,
        error: Option<&str>,
    ) -> Result<(), AbortStop> {
        if !self.has_hooks {
            return Ok(());
        }
        let meta = fs::metadata(meta_of).ok();
        let env = vec![
            ("BARMAN_SEGMENT", name.to_string()),
            ("BARMAN_FILE", file.display().to_string()),
            ("BARMAN_SIZE", meta.as_ref().map(|m| m.len().to_string()).unwrap_or_default()),
            (
                "BARMAN_TIMESTAMP",
                meta.as_ref().map(|m| crate::catalog::pyjson::py_float(mtime_float(m))).unwrap_or_default(),
            ),
            ("BARMAN_COMPRESSION", compression.unwrap_or("").to_string()),
        ];
        self.hooks.run(Event::Archive, phase, &env, error)
    }

    /// Checks, compares and compresses one file; nothing under a final name changes.
    fn prepare(&self, c: Candidate, exp: &Expected) -> Result<Prepared, ArchiveError> {
        let name = c.name.to_string();
        let checked: Checked = match validate::check_file(&c.path, &c.name, self.codecs, exp) {
            Ok(ch) => ch,
            Err(ValidateError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Prepared::Done(ArchiveEvent::Waiting {
                    name,
                    why: "the file vanished while being archived".into(),
                }));
            }
            Err(ValidateError::Io(e)) => return Err(self.io(&name)(e)),
            Err(ValidateError::Invalid(why)) => {
                if still_arriving(&c.path, &why) {
                    return Ok(Prepared::Done(ArchiveEvent::Waiting {
                        name,
                        why: format!("{why}; it may still be arriving"),
                    }));
                }
                tracing::error!(server = %self.layout.server, "rejected {name}: {why}");
                let kept = move_to_errors(&self.layout.errors_dir, &c.path, &name, RejectReason::Invalid)
                    .map_err(self.io(&name))?;
                return Ok(Prepared::Done(ArchiveEvent::Invalid { name, kept, why: why.to_string() }));
            }
        };
        let dst = self.layout.wal_path(&c.name);
        if dst.exists() {
            return match validate::first_difference(&dst, &c.path, checked.compression, self.codecs) {
                Ok(None) => Ok(Prepared::Identical { cand: c }),
                Ok(Some(offset)) => {
                    tracing::error!(server = %self.layout.server, "{name} is already archived with different content (first difference at byte {offset})");
                    let kept = move_to_errors(&self.layout.errors_dir, &c.path, &name, RejectReason::Duplicate)
                        .map_err(self.io(&name))?;
                    Ok(Prepared::Done(ArchiveEvent::Duplicate { name, kept, offset: Some(offset) }))
                }
                Err(ValidateError::Io(e)) => Err(self.io(&name)(e)),
                Err(ValidateError::Invalid(_)) => {
                    // The archived copy cannot be read back: never replace it.
                    let kept = move_to_errors(&self.layout.errors_dir, &c.path, &name, RejectReason::Duplicate)
                        .map_err(self.io(&name))?;
                    Ok(Prepared::Done(ArchiveEvent::Duplicate { name, kept, offset: None }))
                }
            };
        }
        let dir = dst.parent().unwrap_or(&self.layout.wals_dir).to_path_buf();
        durable::create_dir_all(&dir).map_err(self.io(&name))?;
        if let Ok(mut seen) = self.cleaned.lock()
            && seen.insert(dir.clone())
        {
            durable::remove_stale_temps(&dir);
        }
        let mut src = fs::File::open(&c.path).map_err(self.io(&name))?;
        let src_meta = src.metadata().map_err(self.io(&name))?;
        let mtime = src_meta.modified().ok();
        // The slow, durable half happens here, in parallel and outside the
        // xlog.db lock: compressed output sealed, or the source fsynced before
        // it is linked into the archive.
        let (staged, compression, size) = match (self.compression, checked.compression) {
            (Some(codec), None) => {
                let mut tmp = DurableFile::create(&dst).map_err(self.io(&name))?;
                let mut w = io::BufWriter::with_capacity(1 << 20, &mut tmp);
                self.codecs
                    .compress(codec, self.level, &mut src, &mut w)
                    .map_err(|e| self.io(&name)(io::Error::other(e.to_string())))?;
                io::Write::flush(&mut w).map_err(self.io(&name))?;
                drop(w);
                tmp.seal(0o600, mtime).map_err(self.io(&name))?;
                let size = tmp.file().and_then(|f| f.metadata()).map_err(self.io(&name))?.len();
                (Some(tmp), Some(codec.name().to_string()), size)
            }
            // Kept as it came (client-side compression is not redone).
            (_, detected) => {
                src.sync_all().map_err(self.io(&name))?;
                (None, detected.map(|c| c.name().to_string()), src_meta.len())
            }
        };
        let entry =
            XlogEntry { name: c.name.clone(), size, time: mtime_float(&src_meta), compression, encryption: None };
        Ok(Prepared::Ready { cand: c, staged, entry, mtime })
    }

    /// Makes a prepared file visible, catalogues it, then removes the source.
    fn finish(&self, p: Prepared, emit: &mut dyn FnMut(ArchiveEvent)) -> Result<(), ArchiveError> {
        match p {
            Prepared::Done(ev) => emit(ev),
            Prepared::Identical { cand } => {
                let name = cand.name.to_string();
                emit(ArchiveEvent::Processing { name: name.clone() });
                // The same bytes: maybe a previous run stopped after placing the
                // file. Make sure the catalogue has it before dropping the copy.
                let db = XlogDb::new(self.layout);
                let held = db.lock()?;
                if !db.read(&held)?.iter().any(|e| e.name == cand.name) {
                    let dst = self.layout.wal_path(&cand.name);
                    db.append(&held, &[entry_for(&dst, cand.name.clone(), self.codecs)?])?;
                }
                drop(held);
                durable::remove(&cand.path).map_err(self.io(&name))?;
                emit(ArchiveEvent::AlreadyArchived { name });
            }
            Prepared::Ready { cand, staged, entry, mtime } => {
                let name = cand.name.to_string();
                emit(ArchiveEvent::Processing { name: name.clone() });
                let dst = self.layout.wal_path(&cand.name);
                let db = XlogDb::new(self.layout);
                let mut error = None;
                {
                    let held = db.lock()?;
                    let placed = match staged {
                        Some(tmp) => tmp.publish(),
                        // A hard link keeps the source until the catalogue line is durable.
                        None => durable::link_new(&cand.path, &dst, mtime).and_then(|new| {
                            if new { Ok(()) } else { Err(io::Error::from(io::ErrorKind::AlreadyExists)) }
                        }),
                    };
                    match placed {
                        Ok(()) => db.append(&held, std::slice::from_ref(&entry))?,
                        Err(e) => error = Some(e),
                    }
                }
                if let Some(e) = error {
                    let why = e.to_string();
                    let _ = self.run_hooks(
                        Phase::Post,
                        &cand.name,
                        &dst,
                        &cand.path,
                        entry.compression.as_deref(),
                        Some(&why),
                    );
                    return Err(self.io(&name)(e));
                }
                durable::remove(&cand.path).map_err(self.io(&name))?;
                let _ = self.run_hooks(Phase::Post, &cand.name, &dst, &dst, entry.compression.as_deref(), None);
                emit(ArchiveEvent::Archived { name, entry });
            }
        }
        Ok(())
    }
}

/// A short file written to within the last minute may still be arriving.
fn still_arriving(path: &Path, why: &Invalid) -> bool {
    let short = matches!(why, Invalid::Header(HeaderError::WrongLength { len, expected }) if len < expected)
        || matches!(why, Invalid::Header(HeaderError::TooShort { .. }));
    short
        && fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < STILL_ARRIVING)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::wal::SystemId;

    const SYS: u64 = 7;

    fn seg(n: u32) -> Vec<u8> {
        let mut v = crate::wal::header::synthetic_header(0xD110, 1, u64::from(n) * (16 << 20), SYS, 16 << 20);
        v.resize(16 << 20, 0);
        v[100] = n as u8;
        v
    }

    fn name(n: u32) -> String {
        format!("0000000100000000{n:08X}")
    }

    struct T {
        _d: tempfile::TempDir,
        cfg: Config,
        layout: ServerLayout,
    }

    fn setup(extra: &str) -> T {
        let d = tempfile::tempdir().unwrap();
        let text = format!(
            "[barman]\nbarman_home = {}\n[pg]\nconninfo = host=x\nbackup_method = postgres\narchiver = on\nstreaming_archiver = on\nslot_name = s\n{extra}",
            d.path().display()
        );
        let cfg = Config::from_text(&text, Path::new("/etc/barman.conf")).unwrap();
        let layout = ServerLayout::new(&cfg.global, &cfg.servers["pg"]);
        for dir in [&layout.incoming_dir, &layout.streaming_dir] {
            fs::create_dir_all(dir).unwrap();
        }
        T { _d: d, cfg, layout }
    }

    impl T {
        /// An archiver of this server's settings.
        fn archiver<'a>(
            &'a self,
            codecs: &'a Codecs,
            hooks: &'a Hooks<'a>,
            jobs: usize,
            streaming: bool,
        ) -> Archiver<'a> {
            let a = Archiver::for_server(&self.cfg.servers["pg"], &self.layout, codecs, hooks);
            Archiver { level: Level::Low, streaming, incoming: true, jobs, ..a }
        }

        fn run(&self, jobs: usize) -> Vec<ArchiveEvent> {
            let codecs = Codecs::default();
            let hooks = Hooks::new(&self.cfg.servers["pg"], Path::new("/etc/barman.conf"));
            let a = self.archiver(&codecs, &hooks, jobs, true);
            let mut events = Vec::new();
            let mut exp = || Ok(Expected { sysid: Some(SystemId(SYS)), major: Some(15), seg_size: None });
            a.run(&mut exp, &mut |e| events.push(e), true).unwrap();
            events
        }
        fn xlog(&self) -> Vec<XlogEntry> {
            let db = XlogDb::new(&self.layout);
            let h = db.lock().unwrap();
            db.read(&h).unwrap()
        }
    }

    #[test]
    fn archives_in_order_with_compression_and_parallel_jobs() {
        let t = setup("compression = zstd\n");
        for n in (1..=5).rev() {
            fs::write(t.layout.incoming_dir.join(name(n)), seg(n)).unwrap();
        }
        let ev = t.run(2);
        let archived: Vec<String> = ev
            .iter()
            .filter_map(|e| if let ArchiveEvent::Archived { name, .. } = e { Some(name.clone()) } else { None })
            .collect();
        assert_eq!(archived, (1..=5).map(name).collect::<Vec<_>>());
        let x = t.xlog();
        assert_eq!(x.iter().map(|e| e.name.to_string()).collect::<Vec<_>>(), archived, "xlog.db in name order");
        assert!(x.iter().all(|e| e.compression.as_deref() == Some("zstd")));
        let stored = t.layout.wal_path(&name(3).parse().unwrap());
        assert_eq!(x[2].size, fs::metadata(&stored).unwrap().len());
        let mut back = Vec::new();
        Codecs::default().decompress(Codec::Zstd, &mut fs::File::open(&stored).unwrap(), &mut back).unwrap();
        assert!(back == seg(3));
        assert_eq!(fs::read_dir(&t.layout.incoming_dir).unwrap().count(), 0);
    }

    #[test]
    fn rejects_invalid_unknown_and_different_duplicates_keeps_identical_ones() {
        let t = setup("");
        fs::write(t.layout.incoming_dir.join(name(1)), seg(1)).unwrap();
        t.run(1);
        // Same content again, a changed copy, a renamed segment, junk.
        fs::write(t.layout.incoming_dir.join(name(1)), seg(1)).unwrap();
        let ev = t.run(1);
        assert!(ev.contains(&ArchiveEvent::AlreadyArchived { name: name(1) }));
        let mut changed = seg(1);
        changed[9000] = 9;
        fs::write(t.layout.incoming_dir.join(name(1)), &changed).unwrap();
        fs::write(t.layout.incoming_dir.join(name(2)), seg(7)).unwrap();
        fs::write(t.layout.incoming_dir.join("notes.txt"), b"x").unwrap();
        let ev = t.run(1);
        assert!(ev.iter().any(|e| matches!(e, ArchiveEvent::Duplicate { offset: Some(9000), .. })), "{ev:#?}");
        assert!(
            ev.iter().any(|e| matches!(e, ArchiveEvent::Invalid { why, .. } if why.contains("xlp_pageaddr"))),
            "{ev:#?}"
        );
        assert!(ev.contains(&ArchiveEvent::Unknown { names: vec!["notes.txt".into()] }));
        assert_eq!(t.xlog().len(), 1);
        let errs = crate::catalog::rejects::summarise(&t.layout.errors_dir);
        assert_eq!(errs, vec![("duplicates", 1), ("invalid", 1), ("unknown", 1)]);
        assert_eq!(fs::read(t.layout.wal_path(&name(1).parse().unwrap())).unwrap(), seg(1), "archive untouched");
    }

    #[test]
    fn work_waits_when_a_file_is_in_incoming_or_a_complete_one_in_streaming() {
        let t = setup("");
        assert!(!has_waiting(&t.layout).unwrap(), "empty directories");
        fs::write(t.layout.streaming_dir.join(format!("{}.partial", name(2))), seg(2)).unwrap();
        assert!(!has_waiting(&t.layout).unwrap(), "the .partial being written is not work");
        fs::write(t.layout.streaming_dir.join(name(1)), seg(1)).unwrap();
        assert!(has_waiting(&t.layout).unwrap());
        fs::remove_file(t.layout.streaming_dir.join(name(1))).unwrap();
        fs::write(t.layout.incoming_dir.join(name(3)), seg(3)).unwrap();
        assert!(has_waiting(&t.layout).unwrap());
    }

    #[test]
    fn streaming_keeps_the_newest_file_for_the_streamer() {
        let t = setup("");
        fs::write(t.layout.streaming_dir.join(name(1)), seg(1)).unwrap();
        fs::write(t.layout.streaming_dir.join(name(2)), seg(2)).unwrap();
        t.run(1);
        assert_eq!(t.xlog().len(), 1);
        assert!(t.layout.streaming_dir.join(name(2)).exists());
        fs::write(t.layout.streaming_dir.join(format!("{}.partial", name(3))), seg(3)).unwrap();
        t.run(1);
        assert_eq!(t.xlog().len(), 2);
        assert!(t.layout.streaming_dir.join(format!("{}.partial", name(3))).exists());
    }

    #[test]
    fn a_streaming_batch_of_one_still_archives() {
        let t = setup("streaming_archiver_batch_size = 1\narchiver = off\n");
        for n in 1..=3 {
            fs::write(t.layout.streaming_dir.join(name(n)), seg(n)).unwrap();
        }
        fs::write(t.layout.streaming_dir.join(format!("{}.partial", name(4))), seg(4)).unwrap();
        for run in 1..=3 {
            t.run(1);
            assert_eq!(t.xlog().len(), run, "run {run} archives one file");
        }
        t.run(1);
        assert_eq!(t.xlog().len(), 3, "the .partial stays for the streamer");
    }

    #[test]
    fn a_run_finishes_what_a_killed_run_left() {
        let t = setup("");
        fs::write(t.layout.incoming_dir.join(name(4)), seg(4)).unwrap();
        // As if killed after placing the file but before the catalogue line.
        let dst = t.layout.wal_path(&name(4).parse().unwrap());
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::hard_link(t.layout.incoming_dir.join(name(4)), &dst).unwrap();
        t.run(1);
        assert_eq!(t.xlog().iter().map(|e| e.name.to_string()).collect::<Vec<_>>(), [name(4)]);
        assert!(!t.layout.incoming_dir.join(name(4)).exists());
    }

    #[test]
    fn hooks_see_barmans_environment_and_63_stops_the_run() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("hooks.log");
        let l = log.display();
        let t = setup(&format!(
            "compression = gzip\n\
             pre_archive_script = echo \"pre $BARMAN_SEGMENT $BARMAN_FILE $BARMAN_SIZE $BARMAN_COMPRESSION\" >> {l}\n\
             pre_archive_retry_script = test $BARMAN_SEGMENT != {stop} || exit 63\n\
             post_archive_script = echo \"post $BARMAN_SEGMENT $BARMAN_FILE $BARMAN_COMPRESSION [$BARMAN_ERROR] $BARMAN_PHASE\" >> {l}\n",
            stop = name(2)
        ));
        for n in 1..=3 {
            fs::write(t.layout.incoming_dir.join(name(n)), seg(n)).unwrap();
        }
        let codecs = Codecs::default();
        let hooks = Hooks::new(&t.cfg.servers["pg"], Path::new("/etc/barman.conf"));
        let a = t.archiver(&codecs, &hooks, 2, false);
        let mut events = Vec::new();
        let mut exp = || Ok(Expected { sysid: Some(SystemId(SYS)), major: Some(15), seg_size: None });
        a.run(&mut exp, &mut |e| events.push(e), false).unwrap();
        assert!(
            events.iter().any(|e| matches!(e, ArchiveEvent::Stopped { name, .. } if *name == self::name(2))),
            "{events:#?}"
        );
        // The first was archived; the run stopped before the second; the third waits.
        assert_eq!(t.xlog().len(), 1);
        assert!(t.layout.incoming_dir.join(name(2)).exists() && t.layout.incoming_dir.join(name(3)).exists());
        let got = fs::read_to_string(&log).unwrap();
        let incoming = t.layout.incoming_dir.join(name(1));
        let archived = t.layout.wal_path(&name(1).parse().unwrap());
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines[0], format!("pre {} {} {} ", name(1), incoming.display(), 16 << 20));
        assert_eq!(lines[1], format!("post {} {} gzip [] post", name(1), archived.display()));
        assert!(lines[2].starts_with(&format!("pre {}", name(2))), "{got}");
    }

    #[test]
    fn unknown_identity_leaves_files_waiting() {
        let t = setup("");
        fs::write(t.layout.incoming_dir.join(name(1)), seg(1)).unwrap();
        let codecs = Codecs::default();
        let hooks = Hooks::new(&t.cfg.servers["pg"], Path::new("/etc/barman.conf"));
        let a = t.archiver(&codecs, &hooks, 1, false);
        let mut events = Vec::new();
        let mut exp = || Err("PostgreSQL unreachable".to_string());
        a.run(&mut exp, &mut |e| events.push(e), false).unwrap();
        assert!(events.iter().any(|e| matches!(e, ArchiveEvent::Waiting { .. })));
        assert!(t.layout.incoming_dir.join(name(1)).exists());
        assert!(t.xlog().is_empty());
    }
}
