//! `barman-wal-restore BARMAN_HOST SERVER_NAME WAL_NAME WAL_DEST`: fetches a WAL
//! file with `barman get-wal` over ssh. With `-p J` it prefetches the next
//! segments into a spool directory: in one ssh round trip (`get-wal --bundle`)
//! when the server offers it, else as Barman does (peek, then one ssh per file).

use super::super::wire::{Hasher, SumAlgo, copy_hashing, parse_sums};
use super::{Target, code_of, fail, runtime, ssh_command, ssh_test, targets};
use crate::archive::rpc::{get_from, is_unreachable};
use crate::catalog::durable::DurableFile;
use crate::transport::grpc;
use crate::wal::compression::{Codecs, Head, MAGIC_PROBE_LEN};
use barman_proto::v1::GetWalRequest;
use clap::{ArgGroup, Parser};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, SystemTime};

const DEFAULT_SPOOL: &str = "/var/tmp/walrestore";
/// How long a server found without `--bundle` is remembered as such.
const PLAIN_SERVER_MEMORY: Duration = Duration::from_secs(3600);

#[derive(Debug, Parser)]
#[command(
    name = "barman-wal-restore",
    about = "Fetches a WAL file from a Barman server (for PostgreSQL's restore_command).",
    disable_version_flag = true,
    group(ArgGroup::new("compression").args(["gzip", "bzip2", "keep_compression"]))
)]
pub struct Args {
    /// Print the version and exit
    #[arg(short = 'V', long = "version")]
    pub version: bool,
    #[command(flatten)]
    pub remote: super::Remote,
    /// Seconds to sleep after a failure
    #[arg(short = 's', long = "sleep", default_value_t = 0, value_name = "SECONDS")]
    pub sleep: u64,
    /// Files to peek and fetch in parallel (0: off)
    #[arg(short = 'p', long = "parallel", default_value_t = 0, value_name = "JOBS")]
    pub parallel: u32,
    /// Spool directory of prefetched files
    #[arg(long = "spool-dir", default_value = DEFAULT_SPOOL)]
    pub spool_dir: PathBuf,
    /// Also retrieve .partial files
    #[arg(short = 'P', long = "partial")]
    pub partial: bool,
    /// Transfer compressed with gzip (deprecated)
    #[arg(short = 'z', long = "gzip")]
    pub gzip: bool,
    /// Transfer compressed with bzip2 (deprecated)
    #[arg(short = 'j', long = "bzip2")]
    pub bzip2: bool,
    /// Transfer files as stored, decompress here
    #[arg(long = "keep-compression")]
    pub keep_compression: bool,
    #[arg(value_name = "BARMAN_HOST", required_unless_present = "version")]
    pub barman_host: Option<String>,
    #[arg(value_name = "SERVER_NAME", required_unless_present = "version")]
    pub server_name: Option<String>,
    /// The value of %f in restore_command
    #[arg(value_name = "WAL_NAME", required_unless_present = "version")]
    pub wal_name: Option<String>,
    /// The value of %p in restore_command
    #[arg(value_name = "WAL_DEST", required_unless_present = "version")]
    pub wal_dest: Option<PathBuf>,
}

struct Ctx<'a> {
    a: &'a Args,
    host: String,
    server: String,
}

impl Ctx<'_> {
    fn compression_flag(&self) -> Option<&'static str> {
        if self.a.gzip {
            Some("gzip")
        } else if self.a.bzip2 {
            Some("bzip2")
        } else {
            None
        }
    }

    /// `ssh ... barman [--config C] "get-wal [options] 'SERVER' 'WAL'"`.
    fn get_wal(&self, wal: &str, extra: &[String]) -> Command {
        let mut c = ssh_command(self.a.remote.port.as_deref(), &self.a.remote.user, &self.host);
        if let Some(cfg) = &self.a.remote.config {
            c.arg(format!("--config {cfg}"));
        }
        let mut options: Vec<String> = extra.to_vec();
        if let Some(f) = self.compression_flag() {
            options.push(format!("--{f}"));
        }
        if self.a.keep_compression {
            options.push("--keep-compression".into());
        }
        if self.a.partial {
            options.push("--partial".into());
        }
        let cmd = if options.is_empty() {
            format!("get-wal '{}' '{wal}'", self.server)
        } else {
            format!("get-wal {} '{}' '{wal}'", options.join(" "), self.server)
        };
        c.arg(cmd);
        c
    }

    fn marker(&self) -> PathBuf {
        let who =
            format!("{}@{}:{}", self.a.remote.user, self.host, self.a.remote.port.as_deref().unwrap_or("default"));
        let safe: String =
            who.chars().map(|c| if c.is_ascii_alphanumeric() || "@.:-_".contains(c) { c } else { '_' }).collect();
        self.a.spool_dir.join(format!(".plain-barman-{safe}"))
    }
}

pub fn run(a: Args) -> i32 {
    if a.version {
        println!("barman-wal-restore {}", crate::hooks::BARMAN_COMPAT_VERSION);
        return 0;
    }
    let (Some(host), Some(server), Some(wal_name), Some(dest)) =
        (a.barman_host.clone(), a.server_name.clone(), a.wal_name.clone(), a.wal_dest.clone())
    else {
        return fail("BARMAN_HOST, SERVER_NAME, WAL_NAME and WAL_DEST are required", 2, 0);
    };
    let targets = match targets(&host) {
        Ok(t) => t,
        Err(e) => return fail(&e, 2, 0),
    };
    if a.remote.test {
        let mut code = 2;
        for t in &targets {
            let ctx = Ctx { a: &a, host: t.to_string(), server: server.clone() };
            code = match t {
                Target::Ssh(_) => test_ssh(&ctx),
                Target::Grpc { host, addr } => {
                    grpc_get(&ctx, host, addr, "000000010000000000000001", 1, |_| Ok(()), true)
                }
            };
            if code == 0 {
                return 0;
            }
        }
        return code;
    }
    if let Some(f) = (Ctx { a: &a, host: String::new(), server: server.clone() }).compression_flag() {
        println!(
            "WARNING: `{f}` option is deprecated and will be removed in future versions. For WAL compression, please make sure to enable it directly on the Barman server via the `compression` configuration option"
        );
    }
    if dest.is_dir() {
        return fail(&format!("WAL_DEST cannot be a directory: {}", dest.display()), 3, 0);
    }
    let mut out = match OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&dest) {
        Ok(f) => f,
        Err(e) => return fail(&format!("Cannot open '{}' (WAL_DEST) for writing: {e}", dest.display()), 3, 0),
    };
    // A file prefetched by an earlier call: no ssh at all.
    let spooled = a.spool_dir.join(&wal_name);
    if spooled.exists() {
        drop(out);
        return match move_file(&spooled, &dest) {
            Ok(()) => 0,
            Err(e) => fail(&format!("Failure moving {} to {}: {e}", spooled.display(), dest.display()), 2, 0),
        };
    }
    if a.parallel > 0 {
        if let Err(e) = fs::create_dir_all(&a.spool_dir) {
            return fail(&format!("Cannot create '{}' directory: {e}", a.spool_dir.display()), 2, 0);
        }
        // Partial downloads of killed calls never stand under a WAL name, but take space.
        crate::catalog::durable::remove_stale_temps(&a.spool_dir);
    }
    // The hosts in order, until one gives the file.
    let mut code = 2;
    for (i, t) in targets.iter().enumerate() {
        let ctx = Ctx { a: &a, host: t.to_string(), server: server.clone() };
        code = match t {
            Target::Ssh(_) => from_ssh(&ctx, &wal_name, &mut out),
            Target::Grpc { host, addr } => {
                let bundle = a.parallel.max(1);
                grpc_get(
                    &ctx,
                    host,
                    addr,
                    &wal_name,
                    bundle,
                    |input| receive_bundle(&ctx, &wal_name, input, &mut out),
                    false,
                )
            }
        };
        if code == 0 {
            return 0;
        }
        if let Some(next) = targets.get(i + 1) {
            eprintln!("WARNING: {t} did not give {wal_name}; trying {next}");
        }
    }
    code
}

fn test_ssh(ctx: &Ctx<'_>) -> i32 {
    ssh_test(&mut ctx.get_wal("dummy_wal_name", &["--test".into()]), "get-wal")
}

/// Barman's way, through ssh: one file, or with `-p` our bundle (Barman's peek and
/// parallel fetches from a Barman without it).
fn from_ssh(ctx: &Ctx<'_>, wal_name: &str, out: &mut File) -> i32 {
    if ctx.a.parallel > 0 {
        let plain = fs::metadata(ctx.marker())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < PLAIN_SERVER_MEMORY);
        if !plain {
            match bundle(ctx, wal_name, out) {
                Bundle::Done(code) => return code,
                Bundle::Unsupported => {
                    let _ = fs::write(ctx.marker(), b"");
                }
            }
        }
        return barman_parallel(ctx, wal_name, out);
    }
    fetch_into(ctx, wal_name, out)
}

/// `get-wal --bundle` from a node's Archive service: the tar stream goes to `receive`.
/// With `test`, only whether the node answers for the server (a missing file is fine).
fn grpc_get(
    ctx: &Ctx<'_>,
    host: &str,
    addr: &str,
    wal: &str,
    bundle: u32,
    receive: impl FnOnce(Box<dyn Read>) -> Result<(), String>,
    test: bool,
) -> i32 {
    let sleep = ctx.a.sleep;
    let tls = match ctx.a.remote.client_tls() {
        Ok(t) => t,
        Err(e) => return fail(&e, 2, 0),
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(e) => return fail(&e, 2, sleep),
    };
    let req = GetWalRequest {
        server: ctx.server.clone(),
        name: wal.to_string(),
        bundle,
        partial: ctx.a.partial,
        keep_compression: false,
    };
    let channel = {
        let _guard = rt.enter();
        grpc::channel(addr, host, &tls)
    };
    let got = channel.map_err(|e| tonic::Status::unavailable(e.to_string())).and_then(|c| get_from(&rt, c, req));
    let input = match got {
        Ok(_) if test => {
            println!("Ready to retrieve WAL files from the server {}", ctx.server);
            return 0;
        }
        Ok(i) => i,
        Err(s) if test && s.code() == tonic::Code::NotFound && s.message().contains("WAL") => {
            println!("Ready to retrieve WAL files from the server {}", ctx.server);
            return 0;
        }
        Err(s) if is_unreachable(&s) => {
            return fail(&format!("Connection problem with grpcs://{addr}: {}", grpc::status_text(&s)), 2, sleep);
        }
        Err(s) if s.code() == tonic::Code::NotFound => {
            return fail(&format!("The required file is not available: {wal} ({})", s.message()), 1, sleep);
        }
        Err(s) => return fail(&format!("get-wal on grpcs://{addr} has failed: {}", s.message()), 2, sleep),
    };
    let received = receive(Box::new(input));
    drop(rt);
    match received {
        Ok(()) => 0,
        Err(e) => fail(&format!("Bad WAL bundle from grpcs://{addr}: {e}"), 2, sleep),
    }
}

/// Puts a prefetched file under its name in the spool. Its content is fsynced
/// first (a torn file must never be handed to PostgreSQL after a crash); the
/// rename is not: if it is lost, the file is fetched again.
fn spool(mut f: DurableFile) -> io::Result<()> {
    f.seal(0o600, None)?;
    f.publish_unsynced()
}

fn move_file(src: &Path, dst: &Path) -> io::Result<()> {
    match fs::rename(src, dst) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            io::copy(&mut File::open(src)?, &mut File::create(dst)?)?;
            fs::remove_file(src)
        }
        Err(e) => Err(e),
    }
}

/// Decompresses `f` in place when it holds compressed data.
fn decompress_in_place(f: &mut File) -> io::Result<()> {
    f.seek(SeekFrom::Start(0))?;
    let head = Head::read(f)?;
    let codecs = Codecs::default();
    let Some(codec) = codecs.identify(head.bytes()) else { return Ok(()) };
    f.seek(SeekFrom::Start(0))?;
    let mut packed = Vec::new();
    f.read_to_end(&mut packed)?;
    let mut plain = Vec::new();
    codecs.decompress(codec, &mut &packed[..], &mut plain).map_err(|e| io::Error::other(e.to_string()))?;
    f.set_len(0)?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&plain)?;
    Ok(())
}

/// The plain Barman way for one file: `get-wal` to the destination.
fn fetch_into(ctx: &Ctx<'_>, wal: &str, out: &mut File) -> i32 {
    let stdout = match out.try_clone() {
        Ok(f) => f,
        Err(e) => return fail(&format!("Cannot open WAL_DEST: {e}"), 3, 0),
    };
    let status = match ctx.get_wal(wal, &[]).stdin(Stdio::null()).stdout(stdout).status() {
        Ok(s) => s,
        Err(e) => return fail(&format!("Error executing \"ssh\": {e}"), 2, ctx.a.sleep),
    };
    finish(ctx, code_of(status), out)
}

fn finish(ctx: &Ctx<'_>, code: i32, out: &mut File) -> i32 {
    match code {
        0 => match decompress_in_place(out) {
            Ok(()) => 0,
            Err(e) => fail(&format!("Cannot decompress the WAL file: {e}"), 2, ctx.a.sleep),
        },
        255 => fail("Connection problem with ssh", 2, ctx.a.sleep),
        c => fail("Remote 'barman get-wal' command has failed!", c, ctx.a.sleep),
    }
}

/// Barman's `-p`: peek, fetch the others into the spool in parallel, fetch ours.
fn barman_parallel(ctx: &Ctx<'_>, wal: &str, out: &mut File) -> i32 {
    let peek = match ctx
        .get_wal(wal, &[format!("--peek '{}'", ctx.a.parallel)])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
    {
        Ok(o) => o,
        Err(e) => return fail(&format!("Impossible to invoke remote get-wal --peek: {e}"), 2, 0),
    };
    let names: Vec<String> = String::from_utf8_lossy(&peek.stdout).lines().map(str::to_string).collect();
    if names.first().map(String::as_str) != Some(wal) {
        return fail(&format!("The required file is not available: {wal}"), 2, 0);
    }
    let extra = &names[1..];
    std::thread::scope(|s| {
        let workers: Vec<_> = extra
            .iter()
            .map(|n| {
                s.spawn(move || {
                    // A name from the server becomes a path: only WAL names.
                    if n.parse::<crate::wal::WalFileName>().is_err() {
                        return;
                    }
                    // Spooled under its name only once complete; a file that fails
                    // is simply fetched again when PostgreSQL asks for it.
                    let _ = (|| -> io::Result<()> {
                        let mut tmp = DurableFile::create(&ctx.a.spool_dir.join(n))?;
                        let stdout = tmp.file()?.try_clone()?;
                        let st = ctx.get_wal(n, &[]).stdin(Stdio::null()).stdout(stdout).status()?;
                        if !st.success() {
                            return Err(io::Error::other("get-wal failed"));
                        }
                        decompress_in_place(tmp.file()?)?;
                        spool(tmp)
                    })();
                })
            })
            .collect();
        let code = fetch_into(ctx, wal, out);
        for w in workers {
            let _ = w.join();
        }
        code
    })
}

enum Bundle {
    Done(i32),
    /// The server is a Barman without `--bundle`.
    Unsupported,
}

/// Our one-round-trip prefetch: a tar of the requested file and the next ones.
fn bundle(ctx: &Ctx<'_>, wal: &str, out: &mut File) -> Bundle {
    let mut child = match ctx
        .get_wal(wal, &[format!("--bundle '{}'", ctx.a.parallel)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Bundle::Done(fail(&format!("Error executing \"ssh\": {e}"), 2, ctx.a.sleep)),
    };
    let mut stderr = child.stderr.take();
    let err_thread = std::thread::spawn(move || {
        let mut t = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut t);
        }
        t
    });
    let received = child.stdout.take().map(|so| receive_bundle(ctx, wal, so, out));
    let status = child.wait();
    let err_text = err_thread.join().unwrap_or_default();
    let code = match status {
        Ok(s) => code_of(s),
        Err(e) => return Bundle::Done(fail(&format!("Error executing \"ssh\": {e}"), 2, ctx.a.sleep)),
    };
    if code == 2 && (err_text.contains("unrecognized arguments") || err_text.contains("unexpected argument")) {
        return Bundle::Unsupported;
    }
    eprint!("{err_text}");
    match (code, received) {
        (0, Some(Ok(()))) => Bundle::Done(0),
        (0, Some(Err(e))) => Bundle::Done(fail(&format!("Bad WAL bundle from the Barman server: {e}"), 2, ctx.a.sleep)),
        (0, None) => Bundle::Done(fail("Bad WAL bundle from the Barman server: no output", 2, ctx.a.sleep)),
        (255, _) => Bundle::Done(fail("Connection problem with ssh", 2, ctx.a.sleep)),
        // The requested file is missing: Barman's parallel client says it this way.
        (1, _) => Bundle::Done(fail(&format!("The required file is not available: {wal}"), 2, ctx.a.sleep)),
        (c, _) => Bundle::Done(fail("Remote 'barman get-wal' command has failed!", c, ctx.a.sleep)),
    }
}

/// Writes one member, decoded by its magic bytes when it travelled compressed.
fn decode_into(bytes: &[u8], w: &mut dyn Write) -> io::Result<()> {
    let codecs = Codecs::default();
    match codecs.identify(&bytes[..bytes.len().min(MAGIC_PROBE_LEN)]) {
        Some(codec) => {
            let mut bw = io::BufWriter::with_capacity(1 << 20, w);
            codecs.decompress(codec, &mut &bytes[..], &mut bw).map_err(|e| io::Error::other(e.to_string()))?;
            bw.flush()
        }
        None => w.write_all(bytes),
    }
}

/// A decoded member: the requested file (written to WAL_DEST) or a spool file
/// waiting for its checksum to be confirmed.
enum Decoded {
    Dest,
    Spool(DurableFile),
}

/// Work for the decoding threads.
enum Job {
    /// A compressed member, whole in memory (a fraction of a segment).
    Decode(usize, String, Vec<u8>),
    /// A plain member already written to its spool file: sync it.
    Sync(usize, String, DurableFile),
}

fn decode_member(spool: &Path, first: bool, name: &str, bytes: &[u8], dest: &File) -> io::Result<Decoded> {
    if first {
        let mut f = dest.try_clone()?;
        f.set_len(0)?;
        f.seek(SeekFrom::Start(0))?;
        decode_into(bytes, &mut f)?;
        return Ok(Decoded::Dest);
    }
    let mut f = DurableFile::create(&spool.join(name))?;
    decode_into(bytes, f.file()?)?;
    // Synced here, in parallel with the download; the rename waits for the checksums.
    f.seal(0o600, None)?;
    Ok(Decoded::Spool(f))
}

fn run_job(job: Job, spool: &Path, dest: &File) -> (usize, String, io::Result<Decoded>) {
    match job {
        Job::Decode(i, name, bytes) => {
            let r = decode_member(spool, i == 0, &name, &bytes, dest);
            (i, name, r)
        }
        Job::Sync(i, name, mut f) => {
            let r = f.seal(0o600, None).map(|()| Decoded::Spool(f));
            (i, name, r)
        }
    }
}

/// Reads the tar: the first member into `out`, the others into the spool. Plain
/// members stream straight to their file; compressed ones (small) are decoded by
/// two workers while the stream keeps arriving; nothing is put in the spool
/// before the SHA256SUMS member confirms it.
fn receive_bundle(ctx: &Ctx<'_>, wal: &str, input: impl Read, out: &mut File) -> Result<(), String> {
    let mut archive = tar::Archive::new(io::BufReader::with_capacity(1 << 20, input));
    let spool = ctx.a.spool_dir.clone();
    let dest = out.try_clone().map_err(|e| e.to_string())?;
    let mut sums = Vec::new();
    let mut digests: Vec<(String, String)> = Vec::new();
    let mut own: Vec<(usize, String, io::Result<Decoded>)> = Vec::new();
    let (tx, rx) = mpsc::sync_channel::<Job>(2);
    let rx = Mutex::new(rx);
    let (mut decoded, read_result) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (rx, spool, dest) = (&rx, &spool, &dest);
                s.spawn(move || {
                    let mut done = Vec::new();
                    loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => break,
                        };
                        let Ok(job) = job else { break };
                        done.push(run_job(job, spool, dest));
                    }
                    done
                })
            })
            .collect();
        let read_result = (|| -> Result<(), String> {
            for (i, entry) in archive.entries().map_err(|e| e.to_string())?.enumerate() {
                let mut entry = entry.map_err(|e| e.to_string())?;
                let name = entry.path().map_err(|e| e.to_string())?.to_string_lossy().into_owned();
                if name == "SHA256SUMS" {
                    let mut body = String::new();
                    entry.read_to_string(&mut body).map_err(|e| e.to_string())?;
                    sums = parse_sums(&body).0;
                    continue;
                }
                if name.contains('/') || name.parse::<crate::wal::WalFileName>().is_err() {
                    return Err(format!("unexpected member '{name}'"));
                }
                if i == 0 && name != wal {
                    return Err(format!("first member is '{name}', expected '{wal}'"));
                }
                let head = Head::read(&mut entry).map_err(|e| e.to_string())?;
                let mut src = io::Cursor::new(head.bytes().to_vec()).chain(&mut entry);
                if Codecs::default().identify(head.bytes()).is_some() {
                    let mut bytes = Vec::new();
                    src.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
                    let mut h = Hasher::new(SumAlgo::Sha256);
                    h.update(&bytes);
                    digests.push((name.clone(), h.hex()));
                    tx.send(Job::Decode(i, name, bytes)).map_err(|_| "decoding workers stopped".to_string())?;
                } else if i == 0 {
                    let mut f = dest.try_clone().map_err(|e| e.to_string())?;
                    f.set_len(0).map_err(|e| e.to_string())?;
                    let (_, digest) =
                        copy_hashing(SumAlgo::Sha256, &mut src, &mut f, None).map_err(|e| e.to_string())?;
                    digests.push((name.clone(), digest));
                    own.push((i, name, Ok(Decoded::Dest)));
                } else {
                    let mut f = DurableFile::create(&spool.join(&name)).map_err(|e| e.to_string())?;
                    let (_, digest) =
                        copy_hashing(SumAlgo::Sha256, &mut src, &mut f, None).map_err(|e| e.to_string())?;
                    digests.push((name.clone(), digest));
                    tx.send(Job::Sync(i, name, f)).map_err(|_| "decoding workers stopped".to_string())?;
                }
            }
            Ok(())
        })();
        drop(tx);
        let decoded: Vec<(usize, String, io::Result<Decoded>)> =
            workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect();
        (decoded, read_result)
    });
    read_result?;
    decoded.append(&mut own);
    let confirmed = |n: &str| {
        let got = digests.iter().find(|(m, _)| m == n).map(|(_, d)| d);
        got.is_some() && sums.iter().any(|(m, d)| m == n && Some(d) == got)
    };
    if !confirmed(wal) {
        return Err(format!("checksum mismatch for {wal}"));
    }
    let mut first_ok = false;
    for (i, name, r) in decoded {
        match r {
            Ok(Decoded::Dest) => first_ok = true,
            // Sealed by a worker already; losing the rename only costs a refetch.
            Ok(Decoded::Spool(f)) if confirmed(&name) => {
                let _ = f.publish_unsynced();
            }
            // Unconfirmed or undecodable prefetches are dropped: the next call fetches them.
            Ok(Decoded::Spool(_)) => {}
            Err(e) if i == 0 => return Err(format!("{wal}: {e}")),
            Err(_) => {}
        }
    }
    if !first_ok {
        return Err(format!("{wal} was not received"));
    }
    Ok(())
}
