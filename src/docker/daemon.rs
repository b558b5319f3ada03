//! Talking to the Docker daemon: the one way to get a client, and what a refusal means.
//!
//! The emperor (creation ahead of time, pause, reaping), every bridge and `emperor shell` all reach the same
//! daemon, named the same way (`--docker-daemon-socket`, else `DOCKER_HOST`, else the default socket); one
//! constructor keeps them agreeing on it and on the address their messages name. bollard reports a
//! daemon's refusal as an HTTP status inside its error, which every caller matched by hand; [`status`]
//! and its predicates say "gone" and "taken" once.

use std::path::Path;

use bollard::Docker;
use bollard::errors::Error;

/// Seconds a request may take on the emperor's own client (an explicit socket; `DOCKER_HOST` clients keep
/// bollard's default): it serves pause, resume and creation ahead of time, where a hung daemon must not
/// hold a vassal for long.
pub const EMPEROR_TIMEOUT: u64 = 30;
/// Seconds a request may take on `emperor shell`'s client (bollard's default).
pub const SHELL_TIMEOUT: u64 = 120;

/// The daemon's address as messages name it.
pub fn address(socket: Option<&Path>) -> String {
    match socket {
        Some(p) => format!("unix://{}", p.to_string_lossy()),
        None => std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into()),
    }
}

/// The daemon's unix socket on the host (what a policy never lets a vassal mount): `socket`, else
/// `DOCKER_HOST`'s `unix://` path, else the default socket.
pub fn socket_path(socket: Option<&Path>) -> std::path::PathBuf {
    match socket {
        Some(p) => p.to_path_buf(),
        None => std::path::PathBuf::from(address(None).strip_prefix("unix://").unwrap_or("/var/run/docker.sock")),
    }
}

/// A client for the daemon at `socket` (with `timeout` seconds per request), else the one `DOCKER_HOST`
/// names (the emperor sets it for its bridges from `--docker-daemon-socket`), else the default socket.
/// No request is made: see [`connect`].
pub fn client(socket: Option<&Path>, timeout: u64) -> Result<Docker, Error> {
    match socket {
        Some(s) => Docker::connect_with_unix(&s.to_string_lossy(), timeout, bollard::API_DEFAULT_VERSION),
        None => Docker::connect_with_local_defaults(),
    }
}

/// bollard's refusal to make a client for a unix socket that does not exist: the daemon is not there (yet).
pub fn is_missing_socket(e: &Error) -> bool {
    matches!(e, Error::SocketNotFoundError(_))
}

/// The daemon did not answer the first request.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the Docker daemon at {address}: {source}")]
pub struct Unreachable {
    pub address: String,
    pub source: Error,
}

/// A [`client`] that has agreed on an API version with the daemon, which proves the daemon answers.
pub async fn connect(socket: Option<&Path>, timeout: u64) -> Result<Docker, Unreachable> {
    let unreachable = |source| Unreachable {
        address: address(socket),
        source,
    };
    client(socket, timeout)
        .map_err(unreachable)?
        .negotiate_version()
        .await
        .map_err(unreachable)
}

/// How often a daemon that went away is asked again: a failed unix connect costs microseconds, so a daemon
/// that comes back is seen within this.
pub const POLL: std::time::Duration = std::time::Duration::from_millis(50);
/// How long one ping may take: a starting daemon accepts connections before it answers them.
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the daemon answers a ping now.
pub async fn answers(docker: &Docker) -> bool {
    matches!(tokio::time::timeout(PING_TIMEOUT, docker.ping()).await, Ok(Ok(_)))
}

/// The HTTP status the daemon refused a request with; `None` when it did not answer at all.
pub fn status(e: &Error) -> Option<u16> {
    match e {
        Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// No such container or image (404).
pub fn is_not_found(e: &Error) -> bool {
    status(e) == Some(404)
}

/// The name is taken, or the container is already being removed (409).
pub fn is_conflict(e: &Error) -> bool {
    status(e) == Some(409)
}

/// The daemon's own words for a refusal, without bollard's wrapping; any other error as it displays.
pub fn message(e: &Error) -> String {
    match e {
        Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Force-removes a container with its anonymous volumes. Already gone (404) or already being removed
/// (409) count as done.
pub async fn remove(docker: &Docker, id: &str) -> Result<(), Error> {
    let opts = bollard::query_parameters::RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(opts)).await {
        Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(()),
        other => other,
    }
}

/// A container id as `docker ps` shows it.
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_from_silence() {
        let refused = |status_code| Error::DockerResponseServerError {
            status_code,
            message: "no such container: x".into(),
        };
        assert!(is_not_found(&refused(404)) && !is_conflict(&refused(404)));
        assert!(is_conflict(&refused(409)) && !is_not_found(&refused(409)));
        assert_eq!(message(&refused(500)), "no such container: x");
        let silent = Error::DockerContainerWaitError {
            error: "gone".into(),
            code: 1,
        };
        assert_eq!(status(&silent), None);
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
        assert_eq!(address(Some(Path::new("/run/d.sock"))), "unix:///run/d.sock");
    }
}
