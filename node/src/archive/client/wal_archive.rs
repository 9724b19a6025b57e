//! `barman-wal-archive BARMAN_HOST SERVER_NAME WAL_PATH`: sends one WAL file to
//! `barman put-wal` over ssh as a tar stream with its checksum.

use super::super::wire::{MemberInfo, SumAlgo, TarWriter};
use super::{Target, code_of, fail, runtime, ssh_command, ssh_test, targets};
use crate::archive::rpc::{is_unreachable, put_chunks, put_stream, put_test};
use crate::catalog::xlogdb::mtime_float;
use crate::transport::grpc;
use crate::wal::compression::{Codec, Codecs, Level};
use clap::{ArgGroup, Parser};
use std::ffi::CStr;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

#[derive(Debug, Parser)]
#[command(
    name = "barman-wal-archive",
    about = "Sends a WAL file to a Barman server (for PostgreSQL's archive_command).",
    disable_version_flag = true,
    group(ArgGroup::new("compression").args(["gzip", "bzip2", "xz", "snappy", "zstd", "lz4"]))
)]
pub struct Args {
    /// Print the version and exit
    #[arg(short = 'V', long = "version")]
    pub version: bool,
    #[command(flatten)]
    pub remote: super::Remote,
    /// Use MD5 checksums (for old Barman servers)
    #[arg(long = "md5")]
    pub md5: bool,
    /// gzip-compress the WAL file before sending it
    #[arg(short = 'z', long = "gzip")]
    pub gzip: bool,
    /// bzip2-compress the WAL file before sending it
    #[arg(short = 'j', long = "bzip2")]
    pub bzip2: bool,
    /// xz-compress the WAL file before sending it
    #[arg(long = "xz")]
    pub xz: bool,
    /// snappy-compress the WAL file before sending it
    #[arg(long = "snappy")]
    pub snappy: bool,
    /// zstd-compress the WAL file before sending it
    #[arg(long = "zstd")]
    pub zstd: bool,
    /// lz4-compress the WAL file before sending it
    #[arg(long = "lz4")]
    pub lz4: bool,
    /// Compression level: low, medium, high or an integer
    #[arg(long = "compression-level")]
    pub compression_level: Option<Level>,
    #[arg(value_name = "BARMAN_HOST", required_unless_present = "version")]
    pub barman_host: Option<String>,
    #[arg(value_name = "SERVER_NAME", required_unless_present = "version")]
    pub server_name: Option<String>,
    /// The value of %p in archive_command
    #[arg(value_name = "WAL_PATH", required_unless_present = "version")]
    pub wal_path: Option<PathBuf>,
}

impl Args {
    fn codec(&self) -> Option<Codec> {
        [
            (self.gzip, Codec::Gzip),
            (self.bzip2, Codec::Bzip2),
            (self.xz, Codec::Xz),
            (self.snappy, Codec::Snappy),
            (self.zstd, Codec::Zstd),
            (self.lz4, Codec::Lz4),
        ]
        .into_iter()
        .find_map(|(on, c)| on.then_some(c))
    }
}

fn user_name(uid: u32) -> String {
    // SAFETY: getpwuid returns static storage or null; read at once.
    unsafe {
        let p = libc::getpwuid(uid);
        if p.is_null() { String::new() } else { CStr::from_ptr((*p).pw_name).to_string_lossy().into_owned() }
    }
}

fn group_name(gid: u32) -> String {
    // SAFETY: as above.
    unsafe {
        let g = libc::getgrgid(gid);
        if g.is_null() { String::new() } else { CStr::from_ptr((*g).gr_name).to_string_lossy().into_owned() }
    }
}

/// Runs the client; returns the exit code. The hosts of BARMAN_HOST are tried in order
/// until one takes the file.
pub fn run(a: Args) -> i32 {
    if a.version {
        println!("barman-wal-archive {}", crate::hooks::BARMAN_COMPAT_VERSION);
        return 0;
    }
    let (Some(host), Some(server), Some(wal_path)) = (a.barman_host.clone(), a.server_name.clone(), a.wal_path.clone())
    else {
        return fail("BARMAN_HOST, SERVER_NAME and WAL_PATH are required", 2, 0);
    };
    let targets = match targets(&host) {
        Ok(t) => t,
        Err(e) => return fail(&e, 2, 0),
    };
    if !a.remote.test && wal_path.is_dir() {
        return fail(&format!("WAL_PATH cannot be a directory: {}", wal_path.display()), 2, 0);
    }
    let mut code = 2;
    for (i, t) in targets.iter().enumerate() {
        code = match t {
            Target::Ssh(h) => over_ssh(&a, h, &server, &wal_path),
            Target::Grpc { host, addr } => over_grpc(&a, host, addr, &server, &wal_path),
        };
        if code == 0 {
            return 0;
        }
        if let Some(next) = targets.get(i + 1) {
            eprintln!("WARNING: {t} did not take {}; trying {next}", wal_path.display());
        }
    }
    code
}

/// `barman put-wal` through ssh, as Barman's client.
fn over_ssh(a: &Args, host: &str, server: &str, wal_path: &Path) -> i32 {
    let mut cmd = ssh_command(a.remote.port.as_deref(), &a.remote.user, host);
    if let Some(c) = &a.remote.config {
        cmd.arg(format!("--config='{c}'"));
    }
    cmd.arg("put-wal").arg(server);
    if a.remote.test {
        return ssh_test(cmd.arg("--test"), "put-wal");
    }
    let mut child = match cmd.stdin(Stdio::piped()).spawn() {
        Ok(c) => c,
        Err(e) => return fail(&format!("Error executing ssh: {e}"), 2, 0),
    };
    let sent = match child.stdin.take() {
        Some(stdin) => send(a, wal_path, BufWriter::with_capacity(1 << 18, stdin)),
        None => Err("ssh has no standard input".to_string()),
    };
    let status = match child.wait() {
        Ok(s) => s,
        Err(e) => return fail(&format!("Error executing ssh: {e}"), 2, 0),
    };
    match code_of(status) {
        0 => match sent {
            Ok(()) => 0,
            // The remote side accepted an incomplete stream: never report success.
            Err(e) => fail(&format!("Failure sending the WAL file: {e}"), 2, 0),
        },
        255 => fail("Connection problem with ssh", 3, 0),
        code => {
            if let Err(e) = sent {
                eprintln!("WARNING: {e}");
            }
            fail("Remote 'barman put-wal' command has failed!", code, 0)
        }
    }
}

/// The same tar stream to a node's Archive service: exit 0 once the node holds the file
/// durably; 3 when the node cannot be reached, 1 when it refuses the file.
fn over_grpc(a: &Args, host: &str, addr: &str, server: &str, wal_path: &Path) -> i32 {
    let tls = match a.remote.client_tls() {
        Ok(t) => t,
        Err(e) => return fail(&e, 2, 0),
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(e) => return fail(&e, 2, 0),
    };
    // The tar stream is made (read, hashed) by a thread while what is ready is sent.
    let (put, made) = if a.remote.test {
        let put = rt.block_on(async {
            let channel = grpc::channel(addr, host, &tls).map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            put_test(channel, server).await.map(|()| Vec::new())
        });
        (put, Ok(()))
    } else {
        let (mut sender, chunks) = put_stream();
        std::thread::scope(|scope| {
            let maker = scope.spawn(move || {
                let r = send(a, wal_path, &mut sender);
                r.and_then(|()| sender.flush().map_err(|e| e.to_string()))
            });
            let put = rt.block_on(async {
                let channel = grpc::channel(addr, host, &tls).map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                put_chunks(channel, server, false, chunks).await
            });
            (put, maker.join().unwrap_or_else(|_| Err("the reading thread failed".into())))
        })
    };
    if let (Ok(_), Err(e)) = (&put, made) {
        // Whatever the node said of an incomplete stream: never report success.
        return fail(&format!("Failure reading the WAL file: {e}"), 2, 0);
    }
    match put {
        Ok(_) if a.remote.test => {
            println!("Ready to accept WAL files for the server {server}");
            0
        }
        Ok(_) => 0,
        Err(s) if is_unreachable(&s) => {
            fail(&format!("Connection problem with grpcs://{addr}: {}", grpc::status_text(&s)), 3, 0)
        }
        Err(s) => fail(&format!("put-wal on grpcs://{addr} has failed: {}", s.message()), 1, 0),
    }
}

/// Writes the tar stream: the WAL file (compressed if asked) and its checksum.
fn send(a: &Args, wal_path: &Path, out: impl std::io::Write) -> Result<(), String> {
    let name = wal_path.file_name().map(|n| n.to_string_lossy().into_owned()).ok_or("WAL_PATH has no file name")?;
    let mut file = File::open(wal_path).map_err(|e| format!("{}: {e}", wal_path.display()))?;
    let meta = file.metadata().map_err(|e| format!("{}: {e}", wal_path.display()))?;
    let algo = if a.md5 { SumAlgo::Md5 } else { SumAlgo::Sha256 };
    let mut w = TarWriter::new(out, algo);
    let mut info = MemberInfo {
        name,
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        uname: user_name(meta.uid()),
        gname: group_name(meta.gid()),
        mtime: mtime_float(&meta),
        size: meta.len(),
    };
    match a.codec() {
        None => {
            w.append(&info, &mut file).map_err(|e| e.to_string())?;
        }
        Some(codec) => {
            let mut packed = Vec::new();
            let mut src = (&mut file).take(meta.len());
            Codecs::default()
                .compress(codec, a.compression_level.unwrap_or_default(), &mut src, &mut packed)
                .map_err(|e| e.to_string())?;
            info.size = packed.len() as u64;
            w.append(&info, &mut &packed[..]).map_err(|e| e.to_string())?;
        }
    }
    w.finish().map_err(|e| e.to_string())?;
    Ok(())
}
