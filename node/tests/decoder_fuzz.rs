//! Every decoder of bytes from another host, fed mutated and random inputs: the Raft and
//! Forward messages, the cluster state of a snapshot, a put-wal tar stream, barman-agent
//! frames, names in listings, xlog.db lines, backup.info and the INI reader. None may
//! panic, abort or hold more heap at once than its cap (a counting allocator measures the
//! peak on the test's thread).
//!
//! `FUZZ_ITERATIONS` (default 10,000 per decoder) and `FUZZ_SEED` (default: from the
//! clock, printed) set a run; a longer soak:
//! `FUZZ_ITERATIONS=1000000 cargo test --release -p barman --test decoder_fuzz -- --nocapture`.
//! An input that fails is written to `target/fuzz-failures/` and the test names it;
//! copied into `node/tests/fuzz-corpus/<decoder>/` it is replayed by every run.

#![allow(clippy::unwrap_used)]

use barman::archive::put_wal::PutWal;
use barman::catalog::backup_info::BackupInfo;
use barman::catalog::confine::RelPath;
use barman::catalog::xlogdb::XlogEntry;
use barman::cluster::ownership::Command;
use barman::cluster::rpc::ForwardRequest;
use barman::cluster::types::{ClusterState, Member, Request, Response, ServerRecord, node_id};
use barman::transport::agent::{self, AgentConn, Entry, Kind, Reply};
use barman::transport::grpc;
use barman::wal::compression::Codecs;
use barman::wal::header::Expected;
use std::path::{Path, PathBuf};

mod counting;

#[global_allocator]
static ALLOC: counting::Counting = counting::Counting;

const MIB: usize = 1 << 20;

/// xorshift64*: small, seeded, the same sequence for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One input: a seed mutated a few times (bits, bytes worth trying in length fields,
/// insertions, deletions, truncations, repeats), or, one time in ten, random bytes.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    if rng.below(10) == 0 {
        let n = rng.below(512);
        return (0..n).map(|_| rng.next() as u8).collect();
    }
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                const WORTH: [u8; 8] = [0, 1, 0x7f, 0x80, 0xfb, 0xfc, 0xfd, 0xff];
                let i = at.min(v.len() - 1);
                v[i] = WORTH[rng.below(WORTH.len())];
            }
            2 => {
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(at..at, bytes);
            }
            3 if at < v.len() => {
                let end = (at + 1 + rng.below(32)).min(v.len());
                v.drain(at..end);
            }
            4 => v.truncate(at),
            5 if at < v.len() => {
                let end = (at + 1 + rng.below(64)).min(v.len());
                let part = v[at..end].to_vec();
                v.splice(at..at, part);
            }
            _ => {
                // A large little-endian number where a length may be.
                let n = (rng.next() | (1 << 40)).to_le_bytes();
                let end = (at + 8).min(v.len());
                v.splice(at..end, n);
            }
        }
    }
    v
}

fn iterations() -> usize {
    std::env::var("FUZZ_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}

fn base_seed() -> u64 {
    std::env::var("FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
    })
}

/// Feeds `decode` the corpus of `name` (inputs saved from earlier failures), then
/// [`iterations`] inputs made from `seeds`; each must return without panicking and
/// hold at most `cap` bytes of heap at once.
fn fuzz(name: &str, seeds: &[Vec<u8>], cap: usize, decode: impl Fn(&[u8])) {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus").join(name);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&corpus)
        .map(|rd| rd.flatten().filter_map(|e| std::fs::read(e.path()).ok()).collect())
        .unwrap_or_default();
    inputs.extend(seeds.iter().cloned());
    let seed = base_seed() ^ name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    eprintln!("{name}: FUZZ_SEED base {} ({} iterations)", base_seed(), iterations());
    let mut rng = Rng(seed | 1);
    let mut worst = 0usize;
    for i in 0..inputs.len() + iterations() {
        let input = match inputs.get(i) {
            Some(v) => v.clone(),
            None => {
                let s = &seeds[rng.below(seeds.len())];
                mutate(&mut rng, s)
            }
        };
        let (outcome, peak) =
            counting::peak_of(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode(&input))));
        worst = worst.max(peak);
        if outcome.is_err() || peak > cap {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{name}-{:016x}.bin", rng.next()));
            std::fs::write(&path, &input).unwrap();
            panic!(
                "{name}: input {i} {} (peak {peak} bytes, cap {cap}); saved to {}: copy it into {} to replay it",
                if outcome.is_err() { "panicked" } else { "held too much heap" },
                path.display(),
                corpus.display()
            );
        }
    }
    eprintln!("{name}: worst peak heap {worst} bytes");
}

#[test]
fn forward_and_raft_messages() {
    let (a, b) = (node_id("n1"), node_id("n2"));
    let own = |cmd| Request::Ownership { server: "pg".into(), cmd, report: None };
    let requests = [
        ForwardRequest::Write(own(Command::Renew { node: a, epoch: 7 })),
        ForwardRequest::Write(Request::Batch(vec![
            own(Command::Renew { node: a, epoch: 7 }),
            Request::Site { node: a, site: "dc1".into() },
        ])),
        ForwardRequest::Write(Request::Deleted {
            server: "pg".into(),
            backup: "20260101T000000".into(),
            node: a,
            epoch: 7,
            reason: "retention policy".into(),
        }),
        ForwardRequest::AddNode { id: b, member: Member { name: "n2".into(), site: "dc2".into(), addr: "h:1".into() } },
        ForwardRequest::Write(Request::Revoke { id: format!("sha256:{}", "ab".repeat(32)) }),
    ];
    let seeds: Vec<Vec<u8>> = requests.iter().map(|r| grpc::encode(r).unwrap()).collect();
    fuzz("forward", &seeds, 4 * MIB, |bytes| {
        let _ = grpc::decode::<ForwardRequest>(bytes);
        let _ = grpc::decode::<Response>(bytes);
    });
}

#[test]
fn cluster_state_of_a_snapshot() {
    let mut s = ClusterState::default();
    s.servers.insert("pg".into(), ServerRecord { candidates: vec![node_id("n1")], ..Default::default() });
    s.sites.insert(node_id("n1"), "dc1".into());
    s.deleted.entry("pg".into()).or_default().insert("20260101T000000".into(), Default::default());
    s.revoked.insert("serial:ab".into());
    fuzz("cluster-state", &[grpc::encode(&s).unwrap()], 4 * MIB, |bytes| {
        let _ = grpc::decode::<ClusterState>(bytes);
    });
}

/// A small put-wal stream: a member (not a valid segment: the checks past the tar are
/// not what is fuzzed here) and its SHA256SUMS.
fn put_wal_seed() -> Vec<u8> {
    use sha2::Digest;
    let body: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(body.len() as u64);
    h.set_mode(0o600);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    b.append_data(&mut h, "000000010000000000000001", &body[..]).unwrap();
    let hex: String = sha2::Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
    let sums = format!("{hex} *000000010000000000000001\n");
    let mut h = tar::Header::new_ustar();
    h.set_size(sums.len() as u64);
    h.set_mode(0o600);
    h.set_cksum();
    b.append_data(&mut h, "SHA256SUMS", sums.as_bytes()).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn put_wal_tar_streams() {
    // In memory where the machine has it: put-wal fsyncs what it keeps.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm).unwrap() } else { tempfile::tempdir().unwrap() };
    let codecs = Codecs::default();
    let n = std::sync::atomic::AtomicU64::new(0);
    fuzz("put-wal", &[put_wal_seed()], 8 * MIB, |bytes| {
        let k = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (incoming, errors): (PathBuf, PathBuf) =
            (dir.path().join(format!("i{k}")), dir.path().join(format!("e{k}")));
        let receiver = PutWal {
            server: "pg",
            incoming_dir: &incoming,
            errors_dir: &errors,
            codecs: &codecs,
            expected: Expected::default(),
        };
        let _ = receiver.receive(&mut &bytes[..]);
        let _ = std::fs::remove_dir_all(&incoming);
        let _ = std::fs::remove_dir_all(&errors);
    });
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_le_bytes().to_vec();
    f.push(kind);
    f.extend_from_slice(body);
    f
}

#[test]
fn agent_frames() {
    let msg = |r: &Reply| frame(0, &bincode::serde::encode_to_vec(r, bincode::config::standard()).unwrap());
    let hello = msg(&Reply::Hello { version: agent::VERSION });
    let entries = Reply::Entries(vec![
        Entry { path: "base/1/1259".into(), kind: Kind::File, size: 8192, mtime_ns: 1, mode: 0o600 },
        Entry { path: "global".into(), kind: Kind::Dir, size: 0, mtime_ns: 1, mode: 0o700 },
    ]);
    let zstd = zstd::encode_all(&[7u8; 20_000][..], 3).unwrap();
    let seeds = vec![
        msg(&entries),
        msg(&Reply::Same { blocks: 3 }),
        frame(1, &[1u8; 300]),
        frame(2, &zstd),
        msg(&Reply::End { size: 8192, digest: [1; 32] }),
        msg(&Reply::Failed { why: "x".into() }),
    ];
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    fuzz("agent", &seeds, 16 * MIB, |bytes| {
        let mut script = hello.clone();
        script.extend_from_slice(bytes);
        let io: Box<dyn agent::Duplex> = Box::new(tokio::io::join(std::io::Cursor::new(script), tokio::io::sink()));
        rt.block_on(async {
            if let Ok(mut conn) = AgentConn::start(io, "pg-host").await {
                for _ in 0..4 {
                    if conn.recv().await.is_err() {
                        break;
                    }
                }
            }
        });
    });
}

#[test]
fn names_from_listings() {
    let seeds: Vec<Vec<u8>> = ["base/1/1259", "pg_tblspc/16385/PG_15_202209061/5/16386", "global/pg_control"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    fuzz("names", &seeds, MIB, |bytes| {
        if let Ok(name) = RelPath::parse(&String::from_utf8_lossy(bytes)) {
            // What passes stays beneath any root.
            assert!(!name.as_str().starts_with('/') && !name.as_str().split('/').any(|c| c == ".." || c.is_empty()));
        }
    });
}

#[test]
fn xlogdb_lines() {
    let seeds: Vec<Vec<u8>> = [
        "000000010000000000000001\t16777216\t1700000000.0\tNone\n",
        "000000010000000000000002\t1234\t1700000001.5\tgzip\tgpg\n",
        "00000002.history\t42\t1700000002\tNone\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    fuzz("xlogdb", &seeds, MIB, |bytes| {
        let _ = XlogEntry::parse_line(&String::from_utf8_lossy(bytes));
    });
}

#[test]
fn backup_info_files() {
    let seed = b"backup_id=20260101T000000\nstatus=DONE\nbegin_time=2026-01-01 00:00:00.000000+00:00\n\
                 tablespaces=[('ts', 16385, '/t')]\nsize=42\nversion=150000\n"
        .to_vec();
    fuzz("backup-info", &[seed], 4 * MIB, |bytes| {
        let _ = BackupInfo::parse(&String::from_utf8_lossy(bytes), "backup.info");
    });
}

#[test]
fn ini_files() {
    let seed = b"[barman]\nbarman_home = /var/lib/barman\nlog_level = INFO\n\n[pg]\nconninfo = host=pg\n\
                 retention_policy = RECOVERY WINDOW OF 7 DAYS\n"
        .to_vec();
    fuzz("ini", &[seed], 4 * MIB, |bytes| {
        let mut ini = barman::config::ini::Ini::default();
        let _ = ini.read_str(&String::from_utf8_lossy(bytes), Path::new("barman.conf"));
    });
}
