//! The copy engine's other direction: trees of another host (or of this one) into local
//! directories, as the rsync backup method takes them. The far side is `barman-agent`
//! (over an SSH channel, or as a child process for local files), which sends a changed
//! file as its blocks that differ from the previous backup's copy; without the agent on
//! the host, whole files come over SFTP. Files the previous backup holds unchanged (same
//! size and mtime, modified before that backup started) are hard-linked or copied from it
//! without crossing the wire. As in [`super::push`]: largest files first, shared among
//! `jobs` streams each on its own connection, under shared rate limits.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;

use super::RateLimit;
use crate::catalog::confine::RelPath;
use crate::transport::agent::{self, AgentConn, BLOCK, BlockHash, Entry, FileDigest, Kind, Reply, Request};
use crate::transport::blocks::{BlockIndex, BlockWriter};
use crate::transport::lock;
use crate::transport::ssh::{Remote, Session, SshError};

/// How the agent is started on the PostgreSQL host.
pub const AGENT_COMMAND: &str = "barman-agent serve";

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("{who}: {why}")]
    Far { who: String, why: String },
    #[error("writing {path}: {source}")]
    Write { path: String, source: io::Error },
    #[error("{path} did not arrive intact ({why})")]
    Corrupt { path: String, why: String },
    #[error("the copy stopped: {0}")]
    Stopped(String),
    /// The far side listed something no copy may write: nothing of the copy is kept.
    #[error("{who} listed {what}: refused, nothing written for it")]
    Refused { who: String, what: String },
}

fn far(who: &str) -> impl Fn(io::Error) -> PullError + '_ {
    move |e| PullError::Far { who: who.to_string(), why: e.to_string() }
}

fn write_err(path: &Path) -> impl Fn(io::Error) -> PullError + '_ {
    move |source| PullError::Write { path: path.display().to_string(), source }
}

/// Which top-level names of a tree are copied.
pub type TopFilter = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// Where the files are.
pub enum Far<'a> {
    /// A host reached by our SSH client.
    Ssh(&'a Remote),
    /// This host: the agent runs as a child process.
    Local,
}

/// One tree to copy: `src` (absolute on the far side) into `dst`, its files named
/// `<label>/<path>` in the block hashes.
pub struct Root {
    pub label: String,
    pub src: String,
    pub dst: PathBuf,
    /// Directories (relative) copied empty.
    pub skip: Vec<String>,
    /// Names left out wherever they are, name prefixes, temporary relations' files.
    pub skip_names: Vec<String>,
    pub skip_prefix: Vec<String>,
    pub temp_relations: bool,
    /// Only the top-level entries this accepts (a tablespace's `PG_<major>_*` directory,
    /// a configuration file outside PGDATA).
    pub keep: Option<TopFilter>,
    /// Files (relative) left out.
    pub exclude: Vec<String>,
    /// The limit this tree's transfers share (a tablespace's own, or the global one).
    pub limit: Option<Arc<RateLimit>>,
}

/// The previous backup, which unchanged files and blocks are taken from.
pub struct Basis {
    /// Its directory: the roots' labels are its subdirectories.
    pub dir: PathBuf,
    pub hashes: Option<Arc<BlockIndex>>,
    /// Files modified before this (ns since the epoch, the previous backup's start) with
    /// its size and mtime are taken as unchanged; younger ones are compared by content.
    pub horizon_ns: i64,
    /// Hard links (else copies) of unchanged files.
    pub link: bool,
}

#[derive(Clone, Default)]
pub struct PullOptions {
    pub jobs: usize,
    /// zstd on the agent's data.
    pub compress: bool,
}

/// What a pull did.
#[derive(Debug, Default, Clone)]
pub struct PullReport {
    /// Bytes received over the wire (compressed, when compressed).
    pub transferred: u64,
    /// Bytes of files hard-linked from the previous backup.
    pub linked: u64,
    /// Bytes copied locally from the previous backup (whole files and unchanged blocks).
    pub copied: u64,
    /// Files that were listed but gone when their turn came (PostgreSQL dropped them).
    pub vanished: Vec<String>,
    pub analysis_secs: f64,
}

/// Counters the streams share.
#[derive(Default)]
struct Tally {
    transferred: AtomicU64,
    linked: AtomicU64,
    copied: AtomicU64,
    vanished: Mutex<Vec<String>>,
}

enum How {
    /// Unchanged: from the basis, without the wire.
    Reuse(PathBuf),
    /// Over the wire, against the basis's copy (its path and size) when there is one.
    Fetch { basis: Option<(PathBuf, u64)> },
}

struct Unit {
    /// `<label>/<path>`.
    name: String,
    src: String,
    dst: PathBuf,
    /// `dst` as the tree's root and the confined name under it, which files are made by.
    root: Arc<PathBuf>,
    rel: RelPath,
    size: u64,
    mtime_ns: i64,
    mode: u32,
    how: How,
    limit: Option<Arc<RateLimit>>,
    /// The basis's block hashes, read when the unit's turn comes.
    index: Option<Arc<BlockIndex>>,
}

/// A connection to the far side's files.
enum Conn {
    Agent(AgentConn),
    Sftp(russh_sftp::client::SftpSession),
}

/// Copies the roots; the block hashes of every file copied go to `hashes_out`.
pub fn pull(
    from: &Far,
    roots: &[Root],
    basis: Option<&Basis>,
    hashes_out: &Path,
    opts: &PullOptions,
) -> Result<PullReport, PullError> {
    let started = Instant::now();
    let rt_local;
    let rt = match from {
        Far::Ssh(r) => r.runtime(),
        Far::Local => {
            rt_local = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| PullError::Stopped(format!("starting the copy runtime: {e}")))?;
            &rt_local
        }
    };
    rt.block_on(async {
        let (mut first, agent) = connect(from, None).await?;
        // The listing first; the directories are made before any file arrives.
        let mut units = Vec::new();
        for root in roots {
            let entries = list(&mut first, root).await?;
            let made = plan(root, entries, basis, &mut units)?;
            let top = root.dst.clone();
            tokio::task::spawn_blocking(move || {
                made.into_iter().try_for_each(|(d, mode)| make_dir(&top, d.as_ref(), mode))
            })
            .await
            .map_err(|e| PullError::Stopped(e.to_string()))??;
        }
        units.sort_by_key(|u| std::cmp::Reverse(u.size));
        let analysis_secs = started.elapsed().as_secs_f64();
        let jobs = opts.jobs.max(1).min(units.len().max(1));
        let mut conns = vec![first];
        for _ in 1..jobs {
            conns.push(connect(from, Some(agent)).await?.0);
        }
        let writer = Arc::new(Mutex::new(BlockWriter::create(hashes_out).map_err(write_err(hashes_out))?));
        let queue = Arc::new(Mutex::new(VecDeque::from(units)));
        let tally = Arc::new(Tally::default());
        let mut workers = Vec::new();
        for conn in conns {
            let (queue, tally, writer, opts) = (queue.clone(), tally.clone(), writer.clone(), opts.clone());
            let link = basis.is_some_and(|b| b.link);
            workers.push(tokio::spawn(async move { work(conn, queue, tally, writer, link, &opts).await }));
        }
        let mut first_error = None;
        for w in workers {
            let r = w.await.map_err(|e| PullError::Stopped(e.to_string())).and_then(|r| r);
            if let Err(e) = r {
                first_error.get_or_insert(e);
                lock(&queue).clear();
            }
        }
        let writer = Arc::try_unwrap(writer)
            .map_err(|_| PullError::Stopped("a stream still holds the hash file".into()))?
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(e) = first_error {
            writer.discard();
            return Err(e);
        }
        writer.finish().map_err(write_err(hashes_out))?;
        let vanished = std::mem::take(&mut *lock(&tally.vanished));
        Ok(PullReport {
            transferred: tally.transferred.load(Ordering::Relaxed),
            linked: tally.linked.load(Ordering::Relaxed),
            copied: tally.copied.load(Ordering::Relaxed),
            vanished,
            analysis_secs,
        })
    })
}

/// A connection: the agent when the host has it (`agent`: known from the first one), else SFTP.
async fn connect(from: &Far<'_>, agent: Option<bool>) -> Result<(Conn, bool), PullError> {
    match from {
        Far::Local => {
            let exe = std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("barman-agent")));
            let program = exe.filter(|p| p.exists()).unwrap_or_else(|| PathBuf::from("barman-agent"));
            let mut child = tokio::process::Command::new(&program)
                .arg("serve")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| PullError::Far {
                    who: "this host".into(),
                    why: format!("starting {}: {e}", program.display()),
                })?;
            let (Some(out), Some(inp)) = (child.stdout.take(), child.stdin.take()) else {
                return Err(PullError::Stopped("the agent's pipes are missing".into()));
            };
            // The child ends when its input closes; it is reaped in the background.
            tokio::spawn(async move { child.wait().await });
            let conn =
                AgentConn::start(Box::new(tokio::io::join(out, inp)), "this host").await.map_err(far("this host"))?;
            Ok((Conn::Agent(conn), true))
        }
        Far::Ssh(remote) => {
            let session: Session = if agent.is_none() { remote.control().clone() } else { remote.open().await? };
            let has_agent = match agent {
                Some(a) => a,
                None => session.exec("command -v barman-agent", None).await?.success(),
            };
            if has_agent {
                let stream = session.stream(AGENT_COMMAND).await?;
                let conn = AgentConn::start(Box::new(stream), session.who()).await.map_err(far(session.who()))?;
                Ok((Conn::Agent(conn), true))
            } else {
                if agent.is_none() {
                    tracing::warn!(
                        "barman-agent is not installed on {}: changed files are copied whole over SFTP",
                        session.who()
                    );
                }
                Ok((Conn::Sftp(session.sftp().await?), false))
            }
        }
    }
}

async fn list(conn: &mut Conn, root: &Root) -> Result<Vec<Entry>, PullError> {
    match conn {
        Conn::Agent(a) => {
            let who = a.who().to_string();
            let req = Request::List {
                root: root.src.clone(),
                skip: root.skip.clone(),
                skip_names: root.skip_names.clone(),
                skip_prefix: root.skip_prefix.clone(),
                temp_relations: root.temp_relations,
            };
            a.list(req).await.map_err(far(&who))
        }
        Conn::Sftp(sftp) => list_sftp(sftp, root).await,
    }
}

/// The listing over SFTP: mtimes in whole seconds, links followed.
async fn list_sftp(sftp: &russh_sftp::client::SftpSession, root: &Root) -> Result<Vec<Entry>, PullError> {
    let failed =
        |what: &str, e: &dyn std::fmt::Display| PullError::Far { who: "sftp".into(), why: format!("{what}: {e}") };
    let rules = agent::Skip {
        dirs: &root.skip,
        names: &root.skip_names,
        prefixes: &root.skip_prefix,
        temp_relations: root.temp_relations,
    };
    let mut out = Vec::new();
    let mut dirs = vec![String::new()];
    while let Some(rel) = dirs.pop() {
        let at = if rel.is_empty() { root.src.clone() } else { format!("{}/{rel}", root.src) };
        let entries = match sftp.read_dir(at.as_str()).await {
            Ok(e) => e,
            Err(_) if !rel.is_empty() => continue,
            Err(e) => return Err(failed(&format!("listing {at}"), &e)),
        };
        for e in entries {
            let name = e.file_name();
            if name == "." || name == ".." || rules.name(&name) {
                continue;
            }
            let child = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            let mut meta = e.metadata();
            if meta.is_symlink() {
                match sftp.metadata(format!("{}/{child}", root.src)).await {
                    Ok(m) => meta = m,
                    Err(_) => continue,
                }
            }
            let kind = if meta.is_dir() { Some(Kind::Dir) } else { meta.is_regular().then_some(Kind::File) };
            let (size, mode) = (meta.size.unwrap_or(0), meta.permissions.unwrap_or(0o600));
            let mtime_ns = i64::from(meta.mtime.unwrap_or(0)) * 1_000_000_000;
            out.extend(rules.entry(child, kind, size, mtime_ns, mode, &mut dirs));
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Decides each file's way; the directories to make (with their modes) are returned.
fn plan(
    root: &Root,
    entries: Vec<Entry>,
    basis: Option<&Basis>,
    units: &mut Vec<Unit>,
) -> Result<Vec<(Option<RelPath>, u32)>, PullError> {
    // The tree's root (None), then its directories as listed.
    let mut dirs = vec![(None, 0o700)];
    let refused = |what: String| PullError::Refused { who: format!("the listing of {}", root.label), what };
    let mut seen = std::collections::HashSet::new();
    let dst_root = Arc::new(root.dst.clone());
    for e in entries {
        // The PostgreSQL host names the files: each name plain and relative, once.
        let rel = RelPath::parse(&e.path).map_err(|n| refused(n.to_string()))?;
        if !seen.insert(e.path.clone()) {
            return Err(refused(format!("'{rel}' twice")));
        }
        if let Some(keep) = &root.keep
            && !keep(e.path.split('/').next().unwrap_or(""))
        {
            continue;
        }
        let dst = rel.under(&root.dst);
        match e.kind {
            Kind::Dir => {
                dirs.push((Some(rel), ours(e.mode)));
                continue;
            }
            Kind::File if root.exclude.contains(&e.path) => continue,
            Kind::File => {}
        }
        let name = format!("{}/{}", root.label, e.path);
        let how = match basis {
            None => How::Fetch { basis: None },
            Some(b) => {
                let old = b.dir.join(&root.label).join(&e.path);
                match fs::symlink_metadata(&old) {
                    Ok(m) if m.is_file() => {
                        let old_ns = m.mtime().saturating_mul(1_000_000_000).saturating_add(m.mtime_nsec());
                        // SFTP gives whole seconds: compared at that precision.
                        let same_time = old_ns == e.mtime_ns
                            || (e.mtime_ns % 1_000_000_000 == 0
                                && old_ns / 1_000_000_000 == e.mtime_ns / 1_000_000_000);
                        if m.len() == e.size && same_time && e.mtime_ns < b.horizon_ns {
                            How::Reuse(old)
                        } else {
                            How::Fetch { basis: Some((old, m.len())) }
                        }
                    }
                    _ => How::Fetch { basis: None },
                }
            }
        };
        units.push(Unit {
            name,
            src: format!("{}/{}", root.src.trim_end_matches('/'), e.path),
            dst,
            root: dst_root.clone(),
            rel,
            size: e.size,
            mtime_ns: e.mtime_ns,
            mode: ours(e.mode),
            how,
            limit: root.limit.clone(),
            index: basis.and_then(|b| b.hashes.clone()),
        });
    }
    Ok(dirs)
}

/// The far side's permission bits, as far as we keep them: never for others, never
/// set-id or sticky (PostgreSQL's own are 0700/0750 and 0600/0640).
fn ours(mode: u32) -> u32 {
    mode & 0o750
}

/// The root of the tree (ours), or a listed directory beneath it, made through no link.
fn make_dir(root: &Path, rel: Option<&RelPath>, mode: u32) -> Result<(), PullError> {
    let d = match rel {
        None => {
            fs::create_dir_all(root).map_err(write_err(root))?;
            root.to_path_buf()
        }
        Some(rel) => {
            let d = rel.under(root);
            crate::catalog::confine::create_dir(root, rel, 0o700).map_err(write_err(&d))?;
            d
        }
    };
    // Owner access always: the backup must stay readable and removable.
    fs::set_permissions(&d, fs::Permissions::from_mode(mode | 0o700)).map_err(write_err(&d))
}

/// One stream: units from the queue until it is empty.
async fn work(
    mut conn: Conn,
    queue: Arc<Mutex<VecDeque<Unit>>>,
    tally: Arc<Tally>,
    hashes: Arc<Mutex<BlockWriter>>,
    link: bool,
    opts: &PullOptions,
) -> Result<(), PullError> {
    loop {
        let next = lock(&queue).pop_front();
        let Some(unit) = next else { break };
        match unit.how {
            How::Reuse(ref old) => {
                let (old, dst, name, hashes) = (old.clone(), unit.dst.clone(), unit.name.clone(), hashes.clone());
                let (tally2, index) = (tally.clone(), unit.index.clone());
                tokio::task::spawn_blocking(move || reuse(&old, &dst, &name, link, index.as_deref(), &hashes, &tally2))
                    .await
                    .map_err(|e| PullError::Stopped(e.to_string()))??;
            }
            How::Fetch { .. } => fetch(&mut conn, unit, &tally, &hashes, link, opts).await?,
        }
    }
    if let Conn::Sftp(s) = conn {
        let _ = s.close().await;
    }
    Ok(())
}

/// An unchanged file: a hard link to (or a copy of) the previous backup's; its hashes carried over.
fn reuse(
    old: &Path,
    dst: &Path,
    name: &str,
    link: bool,
    index: Option<&BlockIndex>,
    hashes: &Mutex<BlockWriter>,
    tally: &Tally,
) -> Result<(), PullError> {
    let meta = fs::metadata(old).map_err(write_err(old))?;
    let size = meta.len();
    let known = match index {
        Some(i) => i.get(name).map_err(write_err(old))?.filter(|(_, s)| *s == size),
        None => None,
    };
    if link {
        fs::hard_link(old, dst).map_err(write_err(dst))?;
        tally.linked.fetch_add(size, Ordering::Relaxed);
    } else {
        // fs::copy keeps the mode; copy_file_range underneath.
        fs::copy(old, dst).map_err(write_err(dst))?;
        let t = meta.modified().map_err(write_err(old))?;
        File::options().write(true).open(dst).and_then(|f| f.set_modified(t)).map_err(write_err(dst))?;
        tally.copied.fetch_add(size, Ordering::Relaxed);
    }
    // The previous hashes describe this content too; when it had none, they are made here.
    if let Some((list, _)) = known {
        return lock(hashes).add(name, size, &list).map_err(write_err(dst));
    }
    let list = File::open(dst).and_then(|mut f| agent::hash_blocks(&mut f)).map_err(write_err(dst))?;
    lock(hashes).add(name, size, &list).map_err(write_err(dst))
}

/// What the assembler is told, in order.
enum Op {
    Same(u64),
    Data(Vec<u8>, bool),
    End(u64),
}

/// What an assembled file came to.
struct Assembled {
    hashes: Vec<BlockHash>,
    digest: [u8; 32],
    size: u64,
    copied: u64,
    linked: u64,
}

/// Builds a file from the basis's blocks and received data, off the runtime's threads.
struct Assembler {
    dst: PathBuf,
    root: Arc<PathBuf>,
    rel: RelPath,
    basis: Option<(PathBuf, Vec<BlockHash>, u64)>,
    link: bool,
    file: Option<File>,
    old: Option<File>,
    at: u64,
    pending_same: u64,
    partial: Vec<u8>,
    hashes: Vec<BlockHash>,
    digest: FileDigest,
    copied: u64,
}

impl Assembler {
    fn out(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            // Beneath the tree's root, through no link at any component.
            self.file = Some(crate::catalog::confine::create_file(&self.root, &self.rel)?);
        }
        self.file.as_mut().ok_or_else(|| io::Error::other("no output file"))
    }

    fn same(&mut self, n: u64) -> io::Result<()> {
        if !self.partial.is_empty() {
            return Err(io::Error::other("unchanged blocks after a partial block"));
        }
        let Some((_, basis, _)) = &self.basis else {
            return Err(io::Error::other("unchanged blocks of a file without a previous copy"));
        };
        let first = self.hashes.len();
        let those = basis
            .get(first..first + n as usize)
            .ok_or_else(|| io::Error::other("unchanged blocks past the previous copy's end"))?;
        for h in those {
            self.digest.add(h);
        }
        self.hashes.extend_from_slice(those);
        self.pending_same += n;
        Ok(())
    }

    /// Copies the pending unchanged blocks from the previous copy.
    fn flush_same(&mut self) -> io::Result<()> {
        if self.pending_same == 0 {
            return Ok(());
        }
        let Some((path, _, size)) = &self.basis else { return Ok(()) };
        let len = (self.pending_same * BLOCK as u64).min(size.saturating_sub(self.at));
        let mut old = match self.old.take() {
            Some(f) => f,
            None => File::open(path)?,
        };
        old.seek(io::SeekFrom::Start(self.at))?;
        let n = io::copy(&mut (&old).take(len), self.out()?)?;
        self.old = Some(old);
        if n != len {
            return Err(io::Error::other("the previous copy is shorter than its hashes say"));
        }
        self.at += n;
        self.copied += n;
        self.pending_same = 0;
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.flush_same()?;
        self.out()?.write_all(bytes)?;
        self.at += bytes.len() as u64;
        let mut rest = bytes;
        if !self.partial.is_empty() {
            let take = (BLOCK - self.partial.len()).min(rest.len());
            self.partial.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.partial.len() == BLOCK {
                let h = agent::block_hash(&self.partial);
                self.push(h);
                self.partial.clear();
            }
        }
        let mut blocks = rest.chunks_exact(BLOCK);
        for b in &mut blocks {
            let h = agent::block_hash(b);
            self.push(h);
        }
        self.partial.extend_from_slice(blocks.remainder());
        Ok(())
    }

    fn push(&mut self, h: BlockHash) {
        self.digest.add(&h);
        self.hashes.push(h);
    }

    fn end(mut self, size: u64, mtime_ns: i64, mode: u32) -> io::Result<Assembled> {
        if !self.partial.is_empty() {
            let h = agent::block_hash(&self.partial);
            self.push(h);
        }
        let mut linked = 0;
        let whole_same = self.file.is_none()
            && self.basis.as_ref().is_some_and(|(_, h, s)| *s == size && self.pending_same as usize == h.len());
        if self.link && whole_same && size > 0 {
            // Not one block changed: a link to the previous copy, as an unchanged file.
            if let Some((path, _, _)) = &self.basis {
                fs::hard_link(path, &self.dst)?;
            }
            linked = size;
            self.pending_same = 0;
        } else {
            self.flush_same()?;
            let f = self.out()?;
            f.set_len(size)?;
            let t = std::time::UNIX_EPOCH
                + std::time::Duration::new(
                    mtime_ns.max(0) as u64 / 1_000_000_000,
                    (mtime_ns.max(0) % 1_000_000_000) as u32,
                );
            f.set_modified(t)?;
            f.set_permissions(fs::Permissions::from_mode(mode | 0o600))?;
        }
        Ok(Assembled { hashes: self.hashes, digest: self.digest.finish(size), size, copied: self.copied, linked })
    }
}

fn run_assembler(
    mut a: Assembler,
    mut rx: mpsc::Receiver<Op>,
    mtime_ns: i64,
    mode: u32,
) -> io::Result<Option<Assembled>> {
    let mut scratch = Vec::new();
    while let Some(op) = rx.blocking_recv() {
        match op {
            Op::Same(n) => a.same(n)?,
            Op::Data(bytes, false) => a.data(&bytes)?,
            Op::Data(bytes, true) => {
                scratch.clear();
                zstd::stream::copy_decode(bytes.as_slice(), &mut scratch)?;
                a.data(&scratch)?;
            }
            Op::End(size) => return a.end(size, mtime_ns, mode).map(Some),
        }
    }
    // Stopped before the end: what was written goes.
    if a.file.take().is_some() {
        let _ = fs::remove_file(&a.dst);
    }
    Ok(None)
}

/// One file over the wire into place.
async fn fetch(
    conn: &mut Conn,
    unit: Unit,
    tally: &Tally,
    hashes: &Mutex<BlockWriter>,
    link: bool,
    opts: &PullOptions,
) -> Result<(), PullError> {
    let How::Fetch { basis } = unit.how else { return Ok(()) };
    // The basis's hashes, unless missing or of another size than its file (stale).
    let known = match (&basis, &unit.index) {
        (Some(_), Some(i)) => {
            let (i, name) = (i.clone(), unit.name.clone());
            tokio::task::spawn_blocking(move || i.get(&name))
                .await
                .map_err(|e| PullError::Stopped(e.to_string()))?
                .map_err(write_err(&unit.dst))?
        }
        _ => None,
    };
    let basis = basis.and_then(|(path, size)| known.filter(|(_, s)| *s == size).map(|(h, s)| (path, h, s)));
    let wanted: Vec<BlockHash> = basis.as_ref().map(|(_, h, _)| h.clone()).unwrap_or_default();
    let a = Assembler {
        dst: unit.dst.clone(),
        root: unit.root.clone(),
        rel: unit.rel.clone(),
        basis,
        link,
        file: None,
        old: None,
        at: 0,
        pending_same: 0,
        partial: Vec::new(),
        hashes: Vec::new(),
        digest: FileDigest::default(),
        copied: 0,
    };
    let (tx, rx) = mpsc::channel::<Op>(8);
    let (mtime_ns, mode) = (unit.mtime_ns, unit.mode);
    let task = tokio::task::spawn_blocking(move || run_assembler(a, rx, mtime_ns, mode));
    let dst = unit.dst.clone();
    let finish = |task: tokio::task::JoinHandle<io::Result<Option<Assembled>>>| async move {
        task.await.map_err(|e| PullError::Stopped(e.to_string()))?.map_err(write_err(&dst))
    };
    let stopped = || PullError::Stopped(format!("the writer of {} stopped", unit.name));
    let mut far_digest = None;
    let mut vanished = false;
    let mut far_failed = None;
    match conn {
        Conn::Agent(agent) => {
            let who = agent.who().to_string();
            let req = Request::Send { path: unit.src.clone(), basis: wanted, compress: opts.compress };
            agent.send(&req).await.map_err(far(&who))?;
            loop {
                match agent.recv().await.map_err(far(&who))? {
                    Reply::Same { blocks } => {
                        if tx.send(Op::Same(blocks)).await.is_err() {
                            break;
                        }
                    }
                    Reply::Data { bytes, compressed } => {
                        let n = bytes.len() as u64;
                        if let Some(l) = &unit.limit {
                            l.wait(n).await;
                        }
                        tally.transferred.fetch_add(n, Ordering::Relaxed);
                        if tx.send(Op::Data(bytes, compressed)).await.is_err() {
                            break;
                        }
                    }
                    Reply::End { size, digest } => {
                        far_digest = Some(digest);
                        let _ = tx.send(Op::End(size)).await;
                        break;
                    }
                    Reply::Vanished => {
                        vanished = true;
                        break;
                    }
                    Reply::Failed { why } => {
                        far_failed = Some(PullError::Far { who, why });
                        break;
                    }
                    other => {
                        far_failed = Some(PullError::Far { who, why: format!("unexpected answer {other:?}") });
                        break;
                    }
                }
            }
        }
        Conn::Sftp(sftp) => {
            use tokio::io::AsyncReadExt;
            match sftp.open(unit.src.as_str()).await {
                Err(russh_sftp::client::error::Error::Status(s))
                    if s.status_code == russh_sftp::protocol::StatusCode::NoSuchFile =>
                {
                    vanished = true;
                }
                Err(e) => {
                    return Err(PullError::Far { who: "sftp".into(), why: format!("opening {}: {e}", unit.src) });
                }
                Ok(mut file) => {
                    let mut size = 0u64;
                    loop {
                        let mut buf = vec![0u8; 256 * 1024];
                        let n = file.read(&mut buf).await.map_err(|e| PullError::Far {
                            who: "sftp".into(),
                            why: format!("reading {}: {e}", unit.src),
                        })?;
                        if n == 0 {
                            break;
                        }
                        buf.truncate(n);
                        if let Some(l) = &unit.limit {
                            l.wait(n as u64).await;
                        }
                        tally.transferred.fetch_add(n as u64, Ordering::Relaxed);
                        size += n as u64;
                        if tx.send(Op::Data(buf, false)).await.is_err() {
                            break;
                        }
                    }
                    let _ = tx.send(Op::End(size)).await;
                }
            }
        }
    }
    drop(tx);
    let done = finish(task).await;
    if let Some(e) = far_failed {
        return Err(e);
    }
    let done = done?;
    if vanished {
        lock(&tally.vanished).push(unit.name);
        return Ok(());
    }
    let done = done.ok_or_else(stopped)?;
    if let Some(d) = far_digest
        && d != done.digest
    {
        return Err(PullError::Corrupt {
            path: unit.dst.display().to_string(),
            why: "its block hashes differ from the sender's".into(),
        });
    }
    tally.copied.fetch_add(done.copied, Ordering::Relaxed);
    tally.linked.fetch_add(done.linked, Ordering::Relaxed);
    lock(hashes).add(&unit.name, done.size, &done.hashes).map_err(write_err(&unit.dst))
}
