//! Reading the container's tty as a raw byte stream.
//!
//! Containers run with a tty (so apps line-buffer their output as on a terminal), and Docker's attach
//! endpoint then sends the tty's bytes as they come, without frames. bollard's attach decoder holds
//! such a stream back until it sees a newline — without bound, so a container that prints without
//! newlines (a progress bar, binary data) grows the bridge's memory — and takes output that starts
//! with a byte 0–2 for a multiplexed frame header. So the bridge does the attach itself: one HTTP/1.1
//! request over the daemon's unix socket, upgraded to a raw stream (as `docker attach` does), and a
//! plain bounded copy to stdout, where the emperor splits lines with its own bound. A daemon reached
//! over TCP (`DOCKER_HOST=tcp://...`) keeps bollard's attach.

use std::io;
use std::path::PathBuf;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::AttachContainerOptions;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The container's output as bollard decodes it (a daemon over TCP).
pub type Output = std::pin::Pin<Box<dyn Stream<Item = Result<LogOutput, DockerError>> + Send>>;

/// The longest response head accepted before the raw stream.
const MAX_HEAD: usize = 16 * 1024;

/// The daemon's unix socket, from `DOCKER_HOST` as bollard reads it; `None` for a TCP daemon.
pub fn daemon_socket() -> Option<PathBuf> {
    match std::env::var("DOCKER_HOST") {
        Ok(h) => h.strip_prefix("unix://").map(PathBuf::from),
        Err(_) => Some(PathBuf::from("/var/run/docker.sock")),
    }
}

/// How long the daemon gets to answer the attach (bollard's own requests time out too).
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Attaches to the container's output (with what it printed before if `logs`) and returns the raw
/// stream plus the bytes that came with the response head.
pub async fn attach(socket: &std::path::Path, id: &str, logs: bool) -> io::Result<(UnixStream, Vec<u8>)> {
    tokio::time::timeout(ANSWER_TIMEOUT, attach_now(socket, id, logs))
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the daemon did not answer the attach",
            ))
        })
}

async fn attach_now(socket: &std::path::Path, id: &str, logs: bool) -> io::Result<(UnixStream, Vec<u8>)> {
    let mut s = UnixStream::connect(socket).await?;
    let logs = u8::from(logs);
    let target = format!("/containers/{id}/attach?stream=1&logs={logs}&stdout=1&stderr=1");
    // Logged like bollard's own requests, so a debug log shows every step of a start (bench/ reads it).
    log::debug!("raw attach: POST {target}");
    let req = format!(
        "POST {target} HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the daemon closed the attach",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(rest) = split_head(&buf)? {
            return Ok((s, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::other("the daemon's attach answer has no end of headers"));
        }
    }
}

/// Once `buf` holds the whole response head: `Ok(Some(bytes after it))` if the daemon switched to the
/// raw stream (101, or 200 from daemons that answer so), an error with the daemon's message
/// otherwise; `Ok(None)` while the head is incomplete.
fn split_head(buf: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status == "101" || status == "200" {
        return Ok(Some(buf[end + 4..].to_vec()));
    }
    let body = String::from_utf8_lossy(&buf[end + 4..]);
    Err(io::Error::other(format!(
        "the daemon refused the attach: {} {}",
        head.lines().next().unwrap_or(""),
        body.trim()
    )))
}

/// Copies the stream to stdout until it ends (the container exited) or stdout is gone.
pub async fn forward(mut stream: impl AsyncRead + Unpin, first: Vec<u8>) {
    let mut out = tokio::io::stdout();
    if out.write_all(&first).await.is_err() {
        return;
    }
    let _ = out.flush().await;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.write_all(&buf[..n]).await.is_err() || out.flush().await.is_err() {
                    break;
                }
            }
        }
    }
}

/// bollard's attach, for a daemon reached over TCP.
pub async fn attach_bollard(docker: &Docker, id: &str, logs: bool) -> Result<Output, DockerError> {
    let opts = AttachContainerOptions {
        stream: true,
        logs,
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    Ok(docker.attach_container(id, Some(opts)).await?.output)
}

/// Copies bollard's decoded output to stdout.
pub async fn forward_output(mut output: Output) {
    use std::io::Write;
    while let Some(Ok(chunk)) = output.next().await {
        let bytes = chunk.into_bytes();
        let mut out = std::io::stdout().lock();
        if out.write_all(&bytes).and_then(|()| out.flush()).is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raw_stream_starts_after_the_head() {
        let ok = b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\nConnection: Upgrade\r\n\r\n\x01hi";
        assert_eq!(split_head(ok).unwrap(), Some(b"\x01hi".to_vec()));
        assert_eq!(split_head(b"HTTP/1.1 101 UPGRADED\r\nConnection: Up").unwrap(), None);
        let refused = b"HTTP/1.1 404 Not Found\r\nContent-Length: 30\r\n\r\n{\"message\":\"No such container\"}";
        let e = split_head(refused).unwrap_err().to_string();
        assert!(e.contains("404") && e.contains("No such container"), "{e}");
    }
}
