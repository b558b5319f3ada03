//! The bridge's side of the hand-over and what follows: the fds the emperor placed, the one connection on
//! the proxy socket that receives them, then waiting for the container's exit or the emperor's stop.

use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::ContainerWaitResponse;
use bollard::query_parameters::WaitContainerOptions;
use futures_util::{Stream, StreamExt};
use log::{debug, info, warn};
use tokio::net::UnixListener;

use super::container::rename;
use super::outage::After;
use super::stop::{Request, Signals};
use super::{Bridge, Fail, Target};
use crate::cli::ENV_LIFELINE_FD;
use crate::docker::{daemon, record, short};
use crate::{exit, proxy_socket};

/// The fds the emperor placed for this bridge.
pub(super) struct Fds {
    sockets: Vec<OwnedFd>,
    control: OwnedFd,
    pub config: Option<OwnedFd>,
    lifeline: Option<OwnedFd>,
}

impl Fds {
    /// Takes ownership of the fds the emperor placed: sockets from fd 3 (`LISTEN_FDS`), then the control
    /// and config channels and the lifeline, each named by its variable.
    pub fn adopt() -> Result<Fds, Fail> {
        let pid_ok = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
        let n: RawFd = match std::env::var("LISTEN_FDS") {
            Ok(v) if pid_ok => v.parse().map_err(|_| Fail::Fds(format!("bad LISTEN_FDS {v:?}")))?,
            _ => 0,
        };
        let sockets = (3..3 + n)
            .map(proxy_socket::adopt_inherited)
            .collect::<Result<Vec<_>, _>>()
            .map_err(Fail::Fds)?;
        let control = inherited("UWSGI_EMPEROR_FD")?.ok_or_else(|| Fail::Fds("UWSGI_EMPEROR_FD is not set".into()))?;
        Ok(Fds {
            sockets,
            control,
            config: inherited("UWSGI_EMPEROR_FD_CONFIG")?,
            lifeline: lifeline()?,
        })
    }

    /// The lifeline's read end, for [`super::stop::Stop::watch_lifeline`].
    pub fn take_lifeline(&mut self) -> Option<OwnedFd> {
        self.lifeline.take()
    }

    /// The fds to send, in the proxy socket's order (control, config, sockets).
    pub fn into_sent(self) -> Vec<OwnedFd> {
        let mut to_send = vec![self.control];
        to_send.extend(self.config);
        to_send.extend(self.sockets);
        to_send
    }
}

/// The fd the variable `var` names, if it is set.
fn inherited(var: &str) -> Result<Option<OwnedFd>, Fail> {
    match std::env::var(var) {
        Ok(v) => {
            let fd: RawFd = v.parse().map_err(|_| Fail::Fds(format!("bad {var} {v:?}")))?;
            proxy_socket::adopt_inherited(fd).map(Some).map_err(Fail::Fds)
        }
        Err(_) => Ok(None),
    }
}

/// The lifeline's read end: all a bridge that carries on with a running container gets.
pub(super) fn lifeline() -> Result<Option<OwnedFd>, Fail> {
    inherited(ENV_LIFELINE_FD)
}

/// The container's exit, as the daemon reports it; renewed after the daemon came back.
pub(super) struct Watch<'a> {
    docker: &'a Docker,
    id: &'a str,
    pub exit: Pin<Box<dyn Stream<Item = Result<ContainerWaitResponse, DockerError>> + 'a>>,
}

impl<'a> Watch<'a> {
    pub fn new(docker: &'a Docker, id: &'a str) -> Watch<'a> {
        Watch {
            docker,
            id,
            exit: Box::pin(docker.wait_container(id, None::<WaitContainerOptions>)),
        }
    }

    /// A new wait, after the old one broke with the daemon.
    pub fn renew(&mut self) {
        self.exit = Box::pin(self.docker.wait_container(self.id, None::<WaitContainerOptions>));
    }
}

/// How the container's wait ended: with its exit code, or without a verdict (the daemon went away).
pub(super) enum Ended {
    Exited(i64),
    NoVerdict,
}

pub(super) fn ended(res: Option<Result<ContainerWaitResponse, DockerError>>) -> Ended {
    match res {
        Some(Ok(r)) => Ended::Exited(r.status_code),
        Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Ended::Exited(code),
        Some(Err(_)) | None => Ended::NoVerdict,
    }
}

impl Bridge {
    /// The hand-over, racing the container's early death and the emperor's stop. Returns whether the
    /// container is to be stopped (the emperor asked, or is gone) rather than waited for.
    ///
    /// Our copies of the fds and the listener go when it returns: the vassal's control channel reports EOF
    /// to the emperor only when the vassal closes it, and the proxy socket is single-use.
    pub(super) async fn hand_over(
        &mut self,
        docker: &Docker,
        listener: UnixListener,
        to_send: Vec<OwnedFd>,
        record: &mut record::Info,
        watch: &mut Watch<'_>,
        sigs: &mut Signals,
    ) -> Result<bool, Fail> {
        let name = self.args.name.clone();
        let id = record.id.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.args.handshake_timeout);
        loop {
            tokio::select! {
                conn = listener.accept() => {
                    let Ok((stream, _)) = conn else { continue };
                    let stream = match stream.into_std() {
                        Ok(s) => s,
                        Err(e) => { warn!("[{name}] bridge: proxy connection: {e}"); continue; }
                    };
                    let _ = stream.set_nonblocking(false);
                    match proxy_socket::peer_cred(&stream) {
                        Ok((pid, _, _)) if same_pid_ns(pid, record.init_pid) => {}
                        Ok((pid, _, _)) => {
                            warn!("[{name}] bridge: refusing a proxy connection from pid {pid}, which is not in container {}", short(&id));
                            continue;
                        }
                        Err(e) => { warn!("[{name}] bridge: proxy connection without credentials: {e}"); continue; }
                    }
                    let borrowed: Vec<_> = to_send.iter().map(|fd| fd.as_fd()).collect();
                    proxy_socket::send_fds(&stream, &borrowed).map_err(Fail::Send)?;
                    debug!("[{name}] bridge: handed {} fds to the container", to_send.len());
                    record.handover_ms = Some(record::unix_ms());
                    let _ = record.write(&self.info_path);
                    break;
                }
                res = watch.exit.next() => match ended(res) {
                    Ended::Exited(code) if daemon::answers(docker).await => return Err(Fail::EarlyExit { id, code }),
                    // The daemon went away before the container connected: it may still connect.
                    Ended::Exited(_) | Ended::NoVerdict => match self.after_outage(docker, &id, &mut sigs.stop).await? {
                        After::Running { stop: None } => self.resume(docker, &id, watch).await?,
                        After::Running { stop: Some(_) } => return Ok(true),
                        After::Stopped(_) => return Ok(true),
                    },
                },
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Fail::NoHandshake { id, secs: self.args.handshake_timeout });
                }
                _ = sigs.stop.requested() => return Ok(true),
            }
        }
        Ok(false)
    }

    /// Carries on with a container that survived the daemon's absence: a new wait, and its output from now
    /// on (what it printed meanwhile is in the daemon's log of it, `docker logs`).
    pub(super) async fn resume(&mut self, docker: &Docker, id: &str, watch: &mut Watch<'_>) -> Result<(), Fail> {
        watch.renew();
        if self.output.as_ref().is_none_or(|o| o.is_finished()) {
            self.attach(docker, id, false).await?;
        }
        info!(
            "[{}] bridge: container {} survived the Docker daemon's absence; carrying on",
            self.args.name,
            short(id)
        );
        Ok(())
    }

    /// Waits for the container's exit, stopping it when asked to (or when the emperor is gone), and gives
    /// it the vassal's name once an overlapping reload's old container is gone (SIGUSR1). Returns the
    /// bridge's exit code.
    pub(super) async fn supervise(
        &mut self,
        docker: &Docker,
        t: &Target,
        id: &str,
        mut watch: Watch<'_>,
        sigs: &mut Signals,
        mut stopping: bool,
    ) -> Result<u8, Fail> {
        let name = self.args.name.clone();
        let mut named = !self.args.overlap;
        loop {
            if stopping {
                self.stop(docker, id, &t.cfg).await;
            }
            tokio::select! {
                res = watch.exit.next() => match ended(res) {
                    // A daemon that stops without live-restore closes its API first, then stops its containers,
                    // whose exits still reach their waits: an exit nobody asked for, with the daemon gone, is
                    // the daemon's doing.
                    Ended::Exited(code) if stopping || daemon::answers(docker).await => {
                        info!("[{name}] bridge: container {} exited with code {code}", short(id));
                        return Ok(exit::from_app(code));
                    }
                    Ended::Exited(_) | Ended::NoVerdict => match self.after_outage(docker, id, &mut sigs.stop).await? {
                        After::Running { stop } => {
                            self.resume(docker, id, &mut watch).await?;
                            stopping |= stop.is_some();
                        }
                        After::Stopped(code) => return Ok(exit::from_app(code)),
                    },
                },
                r = sigs.stop.requested(), if !stopping => {
                    if r == Request::EmperorGone {
                        info!("[{name}] bridge: the emperor is gone; stopping the container");
                    }
                    stopping = true;
                }
                _ = sigs.usr1.recv(), if !named => {
                    named = rename(docker, id, &t.d.container_name, &name).await;
                }
            }
        }
    }
}

/// Is `pid` in the pid namespace of the container whose init is `init_pid`?
fn same_pid_ns(pid: i32, init_pid: i64) -> bool {
    if pid <= 0 || init_pid <= 0 {
        return false;
    }
    let ns = |p: i64| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    matches!((ns(i64::from(pid)), ns(init_pid)), (Some(a), Some(b)) if a == b)
}
