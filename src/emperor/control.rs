//! `--emperor-control`: the control socket behind `emperor restart|stop|start <vassal>`.
//!
//! A unix stream socket, mode 0600, owned by the emperor's user. Protocol: the client sends one line
//! (`restart app.ini\n`), the emperor answers one line (`ok ...` or `error ...`) and closes. The file
//! mode is not the only guard: every client is checked with SO_PEERCRED, and only root or the
//! emperor's own uid is served; anyone else gets `error permission denied` and a warning names them.
//!
//! Served as the stats socket is: the main loop accepts, and a task with a copy of every actor's
//! sender reads the request and asks the named actor ([`Command::Control`]), which answers from its
//! own state and feeds the matching event to its state machine.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use log::{debug, info, warn};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use super::vassal::Command;

/// How long a client gets to send its line and take the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request line accepted.
pub const MAX_LINE: u64 = 4096;

/// What a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A new process now, bypassing the throttle.
    Restart,
    /// Stop and keep stopped (sockets stay bound).
    Stop,
    /// Release a stopped vassal.
    Start,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        match s {
            "restart" => Some(Op::Restart),
            "stop" => Some(Op::Stop),
            "start" => Some(Op::Start),
            _ => None,
        }
    }
}

/// The listening control socket; its path is unlinked on drop.
pub struct Listener {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl Listener {
    /// Binds `path` with mode 0600 (a stale socket file there is replaced).
    pub fn bind(path: &std::path::Path) -> std::io::Result<Listener> {
        let path = std::path::absolute(path)?;
        super::sockets::replace_socket_file(&path);
        // Created 0600 from the start (the emperor forks only on this thread, so the umask change is
        // seen by nothing else), and set again explicitly below.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = tokio::net::UnixListener::bind(&path);
        nix::sys::stat::umask(old);
        let listener = bound?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Listener { listener, path })
    }

    pub async fn accept(&self) -> std::io::Result<UnixStream> {
        Ok(self.listener.accept().await?.0)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Is the peer allowed: root or the emperor's own uid? Returns `(pid, uid)` either way.
fn check_peer(conn: UnixStream) -> std::io::Result<(UnixStream, i32, u32, bool)> {
    let std_conn = conn.into_std()?;
    let (pid, uid, _gid) = crate::proxy_socket::peer_cred(&std_conn)?;
    std_conn.set_nonblocking(true)?;
    let conn = UnixStream::from_std(std_conn)?;
    let ours = nix::unistd::geteuid().as_raw();
    Ok((conn, pid, uid, uid == 0 || uid == ours))
}

/// Serves one client: one request line, one reply line, close.
pub async fn serve(conn: UnixStream, actors: Vec<(String, mpsc::UnboundedSender<Command>)>) {
    let (mut conn, pid, uid, allowed) = match check_peer(conn) {
        Ok(c) => c,
        Err(e) => {
            warn!("control: cannot identify a client: {e}");
            return;
        }
    };
    // The request is read in every case, so that the client's write never meets a closed socket.
    let request = match tokio::time::timeout(CLIENT_TIMEOUT, read_line(&mut conn)).await {
        Ok(Ok(line)) => Ok(line),
        Ok(Err(e)) => {
            debug!("control: client uid {uid} pid {pid}: {e}");
            Err(e.to_string())
        }
        Err(_) => Err("timed out waiting for the request".into()),
    };
    let reply = if !allowed {
        warn!("control: refused a client with uid {uid} (pid {pid}): only root and the emperor's user may control it");
        Err("permission denied".into())
    } else {
        match request {
            Ok(line) => handle(&line, uid, pid, &actors).await,
            Err(e) => Err(e),
        }
    };
    let line = match reply {
        Ok(msg) => format!("ok {msg}\n"),
        Err(msg) => format!("error {msg}\n"),
    };
    let write = async {
        conn.write_all(line.as_bytes()).await?;
        conn.shutdown().await
    };
    if let Err(e) = tokio::time::timeout(CLIENT_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    {
        debug!("control: client went away: {e}");
    }
}

async fn read_line(conn: &mut UnixStream) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut line = Vec::new();
    BufReader::new(AsyncReadExt::take(conn, MAX_LINE))
        .read_until(b'\n', &mut line)
        .await?;
    request_line(&line)
}

/// The request in what a client sent: up to and including the first newline, at most [`MAX_LINE`]
/// bytes (where the reader stopped). Apart from the socket so that the fuzz target (`fuzz/`) reads
/// the same bytes the same way.
pub fn request_line(sent: &[u8]) -> std::io::Result<String> {
    let line = std::str::from_utf8(sent)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "stream did not contain valid UTF-8"))?;
    if !line.ends_with('\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "expected one line ending in a newline",
        ));
    }
    Ok(line.trim().to_string())
}

/// A request line → (verb as sent, what it asks, the vassal named), or the error answer.
pub fn parse_request(line: &str) -> Result<(&str, Op, &str), String> {
    let (verb, name) = line.split_once(' ').map_or((line, ""), |(v, n)| (v, n.trim()));
    let op = Op::parse(verb).ok_or_else(|| format!("unknown command {verb:?} (restart, stop or start)"))?;
    if name.is_empty() {
        return Err(format!("{verb}: which vassal?"));
    }
    Ok((verb, op, name))
}

/// Parses and carries out one request.
async fn handle(
    line: &str,
    uid: u32,
    pid: i32,
    actors: &[(String, mpsc::UnboundedSender<Command>)],
) -> Result<String, String> {
    let (verb, op, name) = parse_request(line)?;
    // `app` means `app.ini` when there is no vassal called just `app`.
    let with_ini = format!("{name}.ini");
    let (id, tx) = actors
        .iter()
        .find(|(n, _)| n == name)
        .or_else(|| actors.iter().find(|(n, _)| *n == with_ini))
        .ok_or_else(|| format!("no vassal named {name}"))?;
    info!("control: {verb} {id} (client uid {uid}, pid {pid})");
    let (rtx, rrx) = oneshot::channel();
    tx.send(Command::Control(op, rtx))
        .map_err(|_| format!("no vassal named {name}"))?;
    match tokio::time::timeout(CLIENT_TIMEOUT, rrx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(format!("no vassal named {name}")),
        Err(_) => Err(format!("{id} did not answer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops() {
        assert_eq!(Op::parse("restart"), Some(Op::Restart));
        assert_eq!(Op::parse("stop"), Some(Op::Stop));
        assert_eq!(Op::parse("start"), Some(Op::Start));
        assert_eq!(Op::parse("kill"), None);
    }
}
