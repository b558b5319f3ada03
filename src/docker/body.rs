//! A request body written by a thread: an archive for `docker import` (`emperor pack`) or a build context
//! (`docker-build`) is made by blocking file I/O, and must reach the daemon without being held in memory.
//!
//! The writer fills chunks into a bounded channel that is the request's body, so memory stays small however
//! big the archive. A failure while writing ends the body with an error: the daemon then drops what it was
//! making, and the writer's error (returned by its thread) is the one worth reporting, since the daemon can
//! only say that the stream broke. A daemon that stops reading shows up in the writer as
//! [`io::ErrorKind::BrokenPipe`]; the daemon's answer then says why.

use std::io::{self, Write};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;

/// Bytes per body chunk.
const CHUNK: usize = 256 * 1024;
/// Chunks buffered between the writer and the request.
const DEPTH: usize = 8;

/// Runs `write` on a thread of its own, with a writer whose bytes become the returned body (for
/// `bollard::body_try_stream`).
pub fn from_writer<T: Send + 'static>(
    write: impl FnOnce(&mut ChunkWriter) -> io::Result<T> + Send + 'static,
) -> (
    impl Stream<Item = io::Result<Bytes>> + Send + 'static,
    std::thread::JoinHandle<io::Result<T>>,
) {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(DEPTH);
    let writer = std::thread::spawn(move || {
        let mut out = ChunkWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        let written = write(&mut out).and_then(|t| out.flush().map(|()| t));
        if let Err(e) = &written {
            // The request sees the stream fail; the daemon then drops what it was making.
            let _ = out.tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
        }
        written
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    (body, writer)
}

/// The writer's end of the body: fills chunks and sends each full one.
pub struct ChunkWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the Docker daemon stopped reading"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}
