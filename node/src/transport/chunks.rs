//! A blocking writer that hands what it is given, in chunks of a fixed size, to an async
//! task through a channel: tar streams made on a thread and sent by a task (the SSH copy
//! engine, put-wal and get-wal over gRPC). A closed receiver is a broken pipe.

use std::io::{self, Write};

use tokio::sync::mpsc;

pub struct ChunkSender<T> {
    tx: mpsc::Sender<T>,
    wrap: fn(Vec<u8>) -> T,
    size: usize,
    buf: Vec<u8>,
}

impl<T> ChunkSender<T> {
    /// Chunks of `size` bytes (the last one shorter), each made into a message by `wrap`.
    pub fn new(tx: mpsc::Sender<T>, size: usize, wrap: fn(Vec<u8>) -> T) -> ChunkSender<T> {
        ChunkSender { tx, wrap, size, buf: Vec::with_capacity(size) }
    }
}

impl<T> Write for ChunkSender<T> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.size - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.size {
            self.flush()?;
        }
        Ok(n)
    }

    /// Sends what is buffered (call it once the stream is complete).
    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(self.size));
        self.tx
            .blocking_send((self.wrap)(data))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the receiving side stopped"))
    }
}
