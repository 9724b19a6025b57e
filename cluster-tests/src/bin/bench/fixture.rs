//! The data every benchmark uses: real 16 MiB WAL segments from a pgbench run, copies of them
//! under other names (their first page header rewritten to match), and Barman homes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use barman::catalog::identity::Identity;
use barman::wal::SystemId;
use barman::wal::compression::{Codec, Codecs, Level};
use cluster_tests::pg::{PgCluster, PgOptions, conf_quote};
use cluster_tests::util::{chown_to_pg_user, current_os_user, unique_subdir, wait_until};

pub const SEGMENT_SIZE: usize = 16 << 20;

/// A real WAL segment as PostgreSQL archived it, kept on disk: this process stays small, so
/// that the peak RSS its children inherit at spawn time stays small too.
#[derive(Debug, Clone)]
pub struct Segment {
    pub name: String,
    pub path: PathBuf,
}

impl Segment {
    pub fn read(&self) -> Result<Vec<u8>> {
        fs::read(&self.path).with_context(|| format!("reading {}", self.path.display()))
    }
}

/// Real segments and the identity of the cluster that wrote them.
#[derive(Debug)]
pub struct RealWal {
    /// The segments, first and second halves alternating (see [`real_wal`]).
    pub segments: Vec<Segment>,
    /// The same segments in WAL order.
    pub natural: Vec<Segment>,
    pub systemid: u64,
    /// What pgbench did, for the report.
    pub pgbench_summary: String,
    /// The cluster's conninfo (it is stopped once the segments are taken).
    pub conninfo: String,
}

/// Runs pgbench (scale 10, then transactions) on a fresh cluster archiving with `cp` until at
/// least `want` full segments were archived, `want_tx` of them written by the transactions
/// (the ones written by `pgbench -i` hold COPY data that compresses far better). The last,
/// switched segment is left out (its tail was not written by pgbench). The cluster is stopped
/// afterwards so that it does not compete with the measurements.
pub fn real_wal(base: &Path, want: usize, want_tx: usize) -> Result<RealWal> {
    let raw = base.join("raw");
    fs::create_dir_all(&raw).with_context(|| format!("creating {}", raw.display()))?;
    let archive = base.join("pg-archive");
    fs::create_dir_all(&archive).with_context(|| format!("creating {}", archive.display()))?;
    chown_to_pg_user(&archive)?;
    let mut pg = PgCluster::start(
        base,
        PgOptions {
            conf: vec![
                ("archive_mode".into(), "on".into()),
                ("archive_command".into(), conf_quote(&format!("test ! -f {0}/%f && cp %p {0}/%f", archive.display()))),
                // Commits need not wait for their WAL flush: the same WAL records, sooner.
                ("synchronous_commit".into(), "off".into()),
            ],
            ..Default::default()
        },
    )?;
    let systemid = pg.system_identifier()?;
    let first = current_segno(&pg)?;
    progress!("pgbench -i -s 10 ...");
    pg.pgbench_init(10)?;
    let after_init = current_segno(&pg)?;
    let (mut transactions, mut tps, mut rounds) = (0u64, Vec::new(), 0);
    // One more than wanted: the last one is closed by a switch.
    while current_segno(&pg)? - first < want as u64 + 1 || current_segno(&pg)? - after_init < want_tx as u64 + 1 {
        rounds += 1;
        if rounds > 60 {
            bail!("pgbench produced fewer than {want} WAL segments after 60 rounds");
        }
        progress!("pgbench -c 2 -j 2 -t 5000 (round {rounds}) ...");
        let out = pg.pgbench(&["-n", "-c", "2", "-j", "2", "-t", "5000"])?;
        transactions += 10_000;
        if let Some(t) = out.lines().find(|l| l.starts_with("tps")).and_then(|l| l.split_whitespace().nth(2)) {
            tps.push(t.to_string());
        }
    }
    let init_segments = (after_init - first) as usize;
    let summary = format!(
        "about {init_segments} segments from `pgbench -i -s 10`, the rest from {transactions} TPC-B-like transactions \
         (2 clients, synchronous_commit off, {} tps)",
        tps.first().map(String::as_str).unwrap_or("?")
    );
    let switched = pg.switch_wal()?;
    wait_until(Duration::from_secs(120), "the archiver to copy every segment", || archive.join(&switched).exists())?;
    pg.stop()?;
    // The switched segment's tail is not WAL written by pgbench: left out.
    let names: Vec<String> = segment_files(&archive)?.into_iter().filter(|n| *n != switched).collect();
    let mut segments = Vec::new();
    for name in names {
        // Copied to files of our own (the archived ones belong to PostgreSQL's OS user).
        let path = raw.join(&name);
        let len = fs::copy(archive.join(&name), &path).with_context(|| format!("copying archived {name}"))?;
        if len != SEGMENT_SIZE as u64 {
            bail!("archived {name} is {len} bytes, not 16 MiB");
        }
        segments.push(Segment { name, path });
    }
    let natural = segments.clone();
    // Alternate the first and second halves (mostly `pgbench -i` and mostly transactions), so
    // that any benchmark using the first k segments gets both kinds.
    let second = segments.split_off(segments.len().div_ceil(2));
    let mut mixed = Vec::with_capacity(segments.len() + second.len());
    let mut second = second.into_iter();
    for s in segments {
        mixed.push(s);
        mixed.extend(second.next());
    }
    Ok(RealWal { segments: mixed, natural, systemid, pgbench_summary: summary, conninfo: pg.conninfo() })
}

fn segment_files(dir: &Path) -> Result<Vec<String>> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    v.sort();
    Ok(v)
}

/// The number of the segment PostgreSQL writes to now.
pub fn current_segno(pg: &PgCluster) -> Result<u64> {
    let out = pg.psql("SELECT floor((pg_current_wal_lsn() - '0/0'::pg_lsn) / 16777216)::bigint")?;
    out.parse().with_context(|| format!("parsing a segment number from {out:?}"))
}

/// Name of segment `n` (0, 1, ...) of a synthetic range on timeline 1, far past the real ones.
pub fn synthetic_name(n: usize) -> String {
    let segno = (0x40u64 << 8) + n as u64; // log 0x40: no real segment of the pgbench run is there
    format!("{:08X}{:08X}{:08X}", 1, segno >> 8, segno & 0xFF)
}

/// A real segment's bytes under another name: the first page's xlp_pageaddr rewritten to the
/// start of that segment, which is all the archive-side validation reads of a segment.
pub fn renamed_segment(real: &Segment, name: &str) -> Result<Vec<u8>> {
    let tli = u32::from_str_radix(&name[0..8], 16).context("timeline of the name")?;
    let log = u64::from_str_radix(&name[8..16], 16).context("log of the name")?;
    let seg = u64::from_str_radix(&name[16..24], 16).context("segment of the name")?;
    let mut bytes = real.read()?;
    let real_tli = u32::from_le_bytes(bytes[4..8].try_into().context("xlp_tli")?);
    if tli != real_tli {
        bail!("{name}: timeline {tli} differs from the real segment's {real_tli}");
    }
    let pageaddr = (log << 32) | (seg * SEGMENT_SIZE as u64);
    bytes[8..16].copy_from_slice(&pageaddr.to_le_bytes());
    Ok(bytes)
}

/// A real segment compressed with `codec` at the default (medium) level, or as is.
pub fn stored_form(real: &Segment, codec: Option<Codec>) -> Result<Vec<u8>> {
    let bytes = real.read()?;
    let Some(codec) = codec else { return Ok(bytes) };
    let mut out = Vec::new();
    Codecs::default()
        .compress(codec, Level::Medium, &mut &bytes[..], &mut out)
        .with_context(|| format!("compressing {} with {codec}", real.name))?;
    Ok(out)
}

/// Each real segment in its stored form (see [`stored_form`]), written once under `dir/<i>`.
pub fn stored_blobs(segments: &[Segment], codec: Option<Codec>, dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut blobs = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        let p = dir.join(i.to_string());
        fs::write(&p, stored_form(s, codec)?).with_context(|| format!("writing {}", p.display()))?;
        blobs.push(p);
    }
    Ok(blobs)
}

/// A Barman home with one server `pg` and its configuration file.
#[derive(Debug)]
pub struct Home {
    pub dir: PathBuf,
    pub home: PathBuf,
    pub config: PathBuf,
}

/// Options of server `pg` beyond the fixed ones.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    pub compression: Option<String>,
    pub parallel_jobs: Option<usize>,
}

impl Home {
    /// `base/<label>N/` holding `barman.conf` and `home/pg/{base,errors,incoming,streaming,wals,meta}`,
    /// with identity.json naming `systemid` (PostgreSQL 15).
    pub fn create(base: &Path, label: &str, conninfo: &str, systemid: u64, opts: &ServerOptions) -> Result<Home> {
        let dir = unique_subdir(base, label)?;
        let home = dir.join("home");
        let server = home.join("pg");
        for sub in ["base", "errors", "incoming", "streaming", "wals", "meta"] {
            fs::create_dir_all(server.join(sub)).with_context(|| format!("creating {}/{sub}", server.display()))?;
        }
        Identity { systemid: SystemId(systemid), version: "15".into() }
            .write_once(&server.join("identity.json"))
            .context("writing identity.json")?;
        let mut text = format!(
            "[barman]\nbarman_home = {}\nbarman_user = {}\nlog_file = {}\n\n\
             [pg]\ndescription = bench\nconninfo = {conninfo}\nbackup_method = postgres\narchiver = on\n",
            home.display(),
            current_os_user()?.name,
            dir.join("barman.log").display(),
        );
        if let Some(c) = &opts.compression {
            text.push_str(&format!("compression = {c}\n"));
        }
        if let Some(j) = opts.parallel_jobs {
            text.push_str(&format!("parallel_jobs = {j}\n"));
        }
        let config = dir.join("barman.conf");
        fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        Ok(Home { dir, home, config })
    }

    pub fn server_dir(&self) -> PathBuf {
        self.home.join("pg")
    }

    pub fn incoming(&self) -> PathBuf {
        self.server_dir().join("incoming")
    }

    /// `wals/<16 hex>/<name>` of server `pg`.
    pub fn wal_path(&self, name: &str) -> PathBuf {
        self.server_dir().join("wals").join(&name[..16]).join(name)
    }

    /// Hard-links (else copies) `blob` as the archived file `name`. No catalogue entry and
    /// no header check: get-wal reads neither.
    pub fn store(&self, name: &str, blob: &Path) -> Result<()> {
        let path = self.wal_path(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        if fs::hard_link(blob, &path).is_err() {
            fs::copy(blob, &path).with_context(|| format!("copying {} to {}", blob.display(), path.display()))?;
        }
        Ok(())
    }

    /// `barman -c <config> <args>` with the given barman executable.
    pub fn command(&self, barman: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(barman);
        c.arg("-c").arg(&self.config).args(args);
        c
    }

    /// Removes the directory (best effort: the disk is shared by all benchmarks).
    pub fn remove(self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Files directly in `dir` whose names do not start with a dot.
pub fn visible_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every regular file under `dir`, recursively.
pub fn count_files(dir: &Path) -> usize {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.filter_map(|e| e.ok())
        .map(|e| {
            let p = e.path();
            if p.is_dir() { count_files(&p) } else { 1 }
        })
        .sum()
}

/// Total size of the regular files under `dir`, recursively; symbolic links are not followed.
pub fn tree_bytes(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.path().symlink_metadata() {
            Ok(m) if m.is_dir() => tree_bytes(&e.path()),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .sum()
}

/// The PostgreSQL of the backup and recovery benchmarks: archiving on but to `/bin/true`
/// until the data is loaded (the caller points it at an archive then), and no checkpoint
/// but the ones a run asks for; `extra` settings added.
pub fn backup_source(scratch: &Path, extra: &[(&str, &str)]) -> Result<PgCluster> {
    let mut conf: Vec<(String, String)> = vec![
        ("archive_mode".into(), "on".into()),
        ("archive_command".into(), conf_quote("/bin/true")),
        ("max_wal_size".into(), "'8GB'".into()),
        ("checkpoint_timeout".into(), "'1h'".into()),
    ];
    conf.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    PgCluster::start(scratch, PgOptions { conf, ..Default::default() })
}
