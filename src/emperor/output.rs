//! Forwards a vassal's output to the emperor's stdout, one line at a time, prefixed with its name.
//!
//! Output is data, not log records (style guide §8): it bypasses `log` so no filter can drop it. Lines
//! are cut at [`MAX_LINE`] so a vassal that prints without newlines cannot grow the emperor's memory,
//! and the reader keeps going after the vassal's main process exits until every process that shares
//! the pipe has closed it.

use std::io::Write;
use std::os::fd::OwnedFd;

use tokio::io::AsyncReadExt;

/// Longest line kept in memory; longer ones are forwarded in pieces.
const MAX_LINE: usize = 16 * 1024;

/// Creates the pipe a vassal writes its stdout and stderr to; returns (read end, write end).
pub fn pipe() -> std::io::Result<(tokio::net::unix::pipe::Receiver, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
    // The write end goes to the vassal, which expects a blocking stdout.
    nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()))?;
    Ok((tokio::net::unix::pipe::Receiver::from_owned_fd(r)?, w))
}

/// Copies lines until EOF. Spawned as its own task per vassal process.
pub async fn forward(name: String, mut rx: tokio::net::unix::pipe::Receiver) {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let n = match rx.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
            emit(&name, &buf[start..start + pos]);
            start += pos + 1;
        }
        buf.drain(..start);
        while buf.len() >= MAX_LINE {
            emit(&name, &buf[..MAX_LINE]);
            buf.drain(..MAX_LINE);
        }
    }
    if !buf.is_empty() {
        emit(&name, &buf);
    }
}

fn emit(name: &str, line: &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("[{name}] ").as_bytes());
    let _ = out.write_all(line);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}
