//! The block hashes of a backup's files, kept in `meta/<id>-blocks` beside its backup.info
//! (never inside it): what the next backup sends the agent so that only changed blocks
//! come back. A file of records — path, size, block count, hashes — read through an index
//! of its headers, so a large backup's hashes are never all in memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::agent::BlockHash;
use crate::catalog::durable;

const MAGIC: &[u8; 8] = b"BMBLK01\n";

/// Where a backup's block hashes are kept.
pub fn blocks_path(meta_dir: &Path, id: &str) -> PathBuf {
    meta_dir.join(format!("{id}-blocks"))
}

/// A backup's hashes, by the file's path in the backup (`data/base/1/1259`, `16385/PG_15_.../1`).
pub struct BlockIndex {
    file: File,
    index: HashMap<String, (u64, u32, u64)>,
}

impl BlockIndex {
    /// None when the backup has no hashes (taken by another method, or before they existed).
    pub fn open(path: &Path) -> io::Result<Option<BlockIndex>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        let mut r = io::BufReader::new(&file);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a block hash file", path.display()),
            ));
        }
        let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("{} is truncated", path.display()));
        let mut index = HashMap::new();
        let mut at = 8u64;
        while at < len {
            let mut head = [0u8; 2];
            r.read_exact(&mut head).map_err(|_| bad())?;
            let mut name = vec![0u8; u16::from_le_bytes(head) as usize];
            r.read_exact(&mut name).map_err(|_| bad())?;
            let mut nums = [0u8; 12];
            r.read_exact(&mut nums).map_err(|_| bad())?;
            let size = u64::from_le_bytes(nums[..8].try_into().map_err(|_| bad())?);
            let count = u32::from_le_bytes(nums[8..].try_into().map_err(|_| bad())?);
            let hashes_at = at + 2 + name.len() as u64 + 12;
            let skip = u64::from(count) * 16;
            if hashes_at + skip > len {
                return Err(bad());
            }
            r.seek_relative(skip as i64)?;
            index.insert(String::from_utf8_lossy(&name).into_owned(), (hashes_at, count, size));
            at = hashes_at + skip;
        }
        Ok(Some(BlockIndex { file, index }))
    }

    /// The hashes of `rel` and the size they describe, if recorded.
    pub fn get(&self, rel: &str) -> io::Result<Option<(Vec<BlockHash>, u64)>> {
        let Some(&(at, count, size)) = self.index.get(rel) else { return Ok(None) };
        let mut raw = vec![0u8; count as usize * 16];
        self.file.read_exact_at(&mut raw, at)?;
        Ok(Some((raw.chunks_exact(16).map(|c| c.try_into().unwrap_or([0; 16])).collect(), size)))
    }
}

/// Writes a new backup's hashes to a part file; `finish` puts it in place durably.
pub struct BlockWriter {
    out: BufWriter<File>,
    part: PathBuf,
    dst: PathBuf,
}

impl BlockWriter {
    pub fn create(dst: &Path) -> io::Result<BlockWriter> {
        let part = dst.with_extension("part");
        let mut out = BufWriter::new(File::create(&part)?);
        out.write_all(MAGIC)?;
        Ok(BlockWriter { out, part, dst: dst.to_path_buf() })
    }

    pub fn add(&mut self, rel: &str, size: u64, hashes: &[BlockHash]) -> io::Result<()> {
        let name = rel.as_bytes();
        let len = u16::try_from(name.len()).map_err(|_| io::Error::other(format!("a path too long: {rel}")))?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(name)?;
        self.out.write_all(&size.to_le_bytes())?;
        self.out.write_all(&(hashes.len() as u32).to_le_bytes())?;
        for h in hashes {
            self.out.write_all(h)?;
        }
        Ok(())
    }

    pub fn finish(self) -> io::Result<()> {
        let f = self.out.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&self.part, &self.dst)?;
        if let Some(dir) = self.dst.parent() {
            durable::fsync_dir(dir)?;
        }
        Ok(())
    }

    /// Drops the part file (the backup failed).
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.part);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_hashes_read_back_by_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dst = blocks_path(dir.path(), "20260101T000000");
        let mut w = BlockWriter::create(&dst).expect("create");
        w.add("data/base/1/1259", 16384, &[[1; 16], [2; 16]]).expect("add");
        w.add("data/PG_VERSION", 3, &[[3; 16]]).expect("add");
        w.add("data/empty", 0, &[]).expect("add");
        w.finish().expect("finish");
        let idx = BlockIndex::open(&dst).expect("open").expect("present");
        assert_eq!(idx.get("data/base/1/1259").expect("get"), Some((vec![[1; 16], [2; 16]], 16384)));
        assert_eq!(idx.get("data/PG_VERSION").expect("get"), Some((vec![[3; 16]], 3)));
        assert_eq!(idx.get("data/empty").expect("get"), Some((vec![], 0)));
        assert_eq!(idx.get("data/other").expect("get"), None);
        assert!(BlockIndex::open(&dir.path().join("none")).expect("open").is_none());
    }
}
