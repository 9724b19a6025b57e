//! A stand-in `barman-agent` that plays a compromised PostgreSQL host, for the trust
//! tests: it runs the real agent (`barman-agent.real` beside it) and passes every frame
//! through, except that each listing gets the entries named in `HOSTILE_EXTRA`
//! (comma-separated paths, listed as 6-byte files), and a request for one of those is
//! answered with the bytes `owned\n` — everything a node would need to write them, if
//! it took the names.

use std::io::{self, Read, Write};
use std::process::{Command, Stdio};

use barman::transport::agent::{BLOCK, Entry, FileDigest, Kind, Reply, Request, block_hash};

const MESSAGE: u8 = 0;
const PAYLOAD: &[u8] = b"owned\n";

fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)?;
    Ok(Some((head[4], body)))
}

fn write_frame(w: &mut impl Write, kind: u8, body: &[u8]) -> io::Result<()> {
    w.write_all(&(body.len() as u32).to_le_bytes())?;
    w.write_all(&[kind])?;
    w.write_all(body)?;
    w.flush()
}

fn encode<T: serde::Serialize>(msg: &T) -> io::Result<Vec<u8>> {
    bincode::serde::encode_to_vec(msg, bincode::config::standard()).map_err(io::Error::other)
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> io::Result<T> {
    bincode::serde::decode_from_slice(body, bincode::config::standard()).map(|(m, _)| m).map_err(io::Error::other)
}

fn main() -> io::Result<()> {
    let extra: Vec<String> = std::env::var("HOSTILE_EXTRA")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let me = std::env::current_exe()?;
    let real = me.with_file_name("barman-agent.real");
    let mut child =
        Command::new(real).args(std::env::args().skip(1)).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
    let (Some(mut to_real), Some(mut from_real)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(io::Error::other("no pipes to the real agent"));
    };
    let (mut input, mut output) = (io::stdin().lock(), io::stdout().lock());
    while let Some((kind, body)) = read_frame(&mut input)? {
        let req: Request = decode(&body)?;
        if let Request::Send { path, .. } = &req
            && extra.iter().any(|x| path.ends_with(x.as_str()))
        {
            let mut digest = FileDigest::default();
            for block in PAYLOAD.chunks(BLOCK) {
                digest.add(&block_hash(block));
            }
            let data = Reply::Data { bytes: PAYLOAD.to_vec(), compressed: false };
            write_frame(&mut output, MESSAGE, &encode(&data)?)?;
            let end = Reply::End { size: PAYLOAD.len() as u64, digest: digest.finish(PAYLOAD.len() as u64) };
            write_frame(&mut output, MESSAGE, &encode(&end)?)?;
            continue;
        }
        write_frame(&mut to_real, kind, &body)?;
        // The real agent's answer, up to its last frame.
        loop {
            let Some((kind, body)) = read_frame(&mut from_real)? else { return Ok(()) };
            if kind != MESSAGE {
                write_frame(&mut output, kind, &body)?;
                continue;
            }
            let reply: Reply = decode(&body)?;
            let last = !matches!(reply, Reply::Same { .. } | Reply::Data { .. });
            let reply = match reply {
                Reply::Entries(mut entries) => {
                    for path in &extra {
                        entries.push(Entry {
                            path: path.clone(),
                            kind: Kind::File,
                            size: PAYLOAD.len() as u64,
                            mtime_ns: 0,
                            mode: 0o600,
                        });
                    }
                    Reply::Entries(entries)
                }
                other => other,
            };
            write_frame(&mut output, MESSAGE, &encode(&reply)?)?;
            if last {
                break;
            }
        }
    }
    drop(to_real);
    child.wait()?;
    Ok(())
}
