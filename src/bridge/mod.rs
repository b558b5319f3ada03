//! The bridge role: one process per Docker vassal, between the emperor and the vassal's container.
//!
//! Docker cannot hand a host fd to a container, so the bridge does it the way uwsgi-docker did
//! (`docker.c::docker_run`), with today's Engine API:
//!
//! 1. adopt the fds the emperor placed (sockets from fd 3 as `LISTEN_FDS`, the vassal's ends of its
//!    control and config channels, a lifeline pipe whose EOF means the emperor is gone);
//! 2. check the image (no registry is ever asked) and remove a stale container with the vassal's name,
//!    but only one an emperor created (label `emperor.vassal`); a foreign one is never touched;
//! 3. bind the proxy socket in a private directory and bind-mount **the directory** (a mounted socket
//!    file would pin a dead inode when re-created);
//! 4. create the container with everything in `HostConfig`, attach to its tty *before* starting it so
//!    no output is lost, then start it;
//! 5. accept exactly one connection on the proxy socket, check that the peer is a process of that
//!    container (its pid namespace is the container's), send the fds (`proxy_socket.rs`), close our
//!    copies and unlink the socket — from then on the emperor talks to the vassal directly;
//!    It records the container's id, init pid and hand-over time for the emperor's stats ([`info`]);
//! 6. forward the container's output to stdout (the emperor prefixes each line with the vassal name);
//! 7. on the container's exit, remove it and exit with its code ([`crate::exit`]). SIGTERM (the
//!    emperor stopping the vassal, or `PR_SET_PDEATHSIG` when the emperor dies) and EOF on the
//!    lifeline stop the container with the vassal's stop signal and timeout first.
//!
//! A container that never connects times out with a message saying what to check, instead of the
//! bridge hanging forever as uwsgi-docker's did.

mod attach;
pub mod docker;
pub mod info;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, InspectContainerOptions, StopContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use log::{debug, error, info, warn};
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::BridgeArgs;
use crate::config::{self, VassalConfig};
use crate::exit;
use crate::proxy_socket;

/// Environment the emperor gives a bridge, besides the systemd-style sockets.
pub const ENV_VASSAL_TEXT: &str = "EMPEROR_VASSAL_TEXT";
pub const ENV_LIFELINE_FD: &str = "EMPEROR_LIFELINE_FD";

/// The bridge's entry point.
pub fn main(args: BridgeArgs) -> ExitCode {
    let title = format!("bridge:{}", args.name);
    let short: String = title.chars().take(15).collect();
    if let Ok(c) = std::ffi::CString::new(short) {
        let _ = nix::sys::prctl::set_name(&c);
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!("[{}] bridge: cannot start its runtime: {e}", args.name);
            return ExitCode::from(exit::START_FAILED);
        }
    };
    let name = args.name.clone();
    let code = rt.block_on(Bridge::new(args).run());
    debug!("[{name}] bridge: exiting with {code}");
    ExitCode::from(code)
}

/// The signals a bridge acts on: TERM/INT stop the container, USR1 (after an overlapping reload)
/// gives it the vassal's name.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }
}

/// A failed step: the exit code and the message for the log.
type Fail = (u8, String);

struct Fds {
    sockets: Vec<OwnedFd>,
    control: OwnedFd,
    config: Option<OwnedFd>,
    lifeline: Option<OwnedFd>,
}

struct Bridge {
    args: BridgeArgs,
    /// The container's id once created, so every exit path removes it.
    container: Option<String>,
    /// The proxy directory we created, removed on exit.
    proxy_dir: Option<PathBuf>,
    /// A copy of the binary mounted as the shim when the original was replaced on disk.
    shim_copy: Option<PathBuf>,
    /// Where the container's id, init pid and hand-over time are written for the stats ([`info`]).
    info_path: PathBuf,
    /// The task copying the container's output to stdout.
    output: Option<tokio::task::JoinHandle<()>>,
}

impl Bridge {
    fn new(args: BridgeArgs) -> Self {
        let info_path = info::path(&args.run_dir, &args.instance, std::process::id() as i32);
        Bridge {
            args,
            container: None,
            proxy_dir: None,
            shim_copy: None,
            info_path,
            output: None,
        }
    }

    /// The emperor logs the reason (once, however often the same attempt fails); only if it cannot be handed
    /// over does the bridge log it itself.
    fn log_fail(&self, (code, msg): &Fail) {
        let verdict = info::verdict_path(&self.args.run_dir, &self.args.instance, std::process::id() as i32);
        if exit::describe(i32::from(*code)).is_some() && info::write_verdict(&verdict, msg) {
            debug!("[{}] bridge: exit {code}: {msg}", self.args.name);
        } else {
            error!("[{}] bridge: {msg}", self.args.name);
        }
    }

    async fn run(mut self) -> u8 {
        // Before anything else: a stop (SIGTERM) or a rename request (SIGUSR1) may come at any time,
        // and SIGUSR1's default action would kill the bridge.
        let mut sigs = match Signals::new() {
            Ok(s) => s,
            Err(e) => {
                error!("[{}] bridge: cannot install signal handlers: {e}", self.args.name);
                return exit::START_FAILED;
            }
        };
        // Left by an earlier bridge that had this pid and was killed: it is not about our container.
        let _ = std::fs::remove_file(&self.info_path);
        let docker = match connect().await {
            Ok(d) => d,
            Err(f) => {
                self.log_fail(&f);
                return f.0;
            }
        };
        let code = match self.run_with(&docker, &mut sigs).await {
            Ok(code) => {
                // The last of the container's output may still be on its way once it exited (the
                // daemon closes the stream right after): let it through.
                if let Some(output) = self.output.take() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), output).await;
                }
                code
            }
            Err(f) => {
                self.log_fail(&f);
                f.0
            }
        };
        self.cleanup(&docker).await;
        code
    }

    async fn cleanup(&mut self, docker: &Docker) {
        if let Some(id) = self.container.take() {
            match docker::remove(docker, &id).await {
                Ok(()) => debug!("[{}] bridge: removed container {}", self.args.name, short(&id)),
                Err(e) => warn!(
                    "[{}] bridge: cannot remove container {}: {e}",
                    self.args.name,
                    short(&id)
                ),
            }
        }
        let _ = std::fs::remove_file(&self.info_path);
        let _ = std::fs::remove_file(info::temp_path(&self.info_path));
        if let Some(dir) = self.proxy_dir.take() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        // The instance directory too, once its last vassal is gone (remove_dir refuses a non-empty one).
        if let Some(parent) = self.info_path.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        if let Some(copy) = self.shim_copy.take() {
            let _ = std::fs::remove_file(copy);
        }
    }

    async fn run_with(&mut self, docker: &Docker, sigs: &mut Signals) -> Result<u8, Fail> {
        let Signals { term, int, usr1 } = sigs;
        let name = self.args.name.clone();
        let text =
            std::env::var(ENV_VASSAL_TEXT).map_err(|_| (exit::BAD_CONFIG, format!("{ENV_VASSAL_TEXT} is not set")))?;
        let cfg = config::parse(&name, &self.args.file, &text, &self.args.vassals_dir)
            .map_err(|e| (exit::BAD_CONFIG, e.to_string()))?;
        let d = cfg
            .docker
            .clone()
            .ok_or((exit::BAD_CONFIG, "the vassal has no docker-image".to_string()))?;
        let fds = adopt_fds()?;

        let image = docker.inspect_image(&d.image).await.map_err(|e| match status(&e) {
            Some(404) => (exit::IMAGE_MISSING, image_missing(&d.image)),
            _ => docker_fail("inspect image", &e),
        })?;

        // The name this container is created under: the vassal's, or a temporary one beside the old
        // container of an overlapping reload.
        let create_name = if self.args.overlap {
            format!("{}.next-{}", d.container_name, std::process::id())
        } else {
            d.container_name.clone()
        };
        let shim_host = std::env::current_exe().map_err(|e| {
            (
                exit::START_FAILED,
                format!("cannot find the emperor binary for the shim: {e}"),
            )
        })?;
        // Replaced on disk since the emperor started (an upgrade in place): the file to bind-mount is
        // gone, and runc cannot mount a /proc/<pid>/exe link, so mount a private copy of the binary
        // this process still runs (removed with the container).
        let shim_host = if shim_host.to_string_lossy().ends_with(" (deleted)") {
            let copy = self
                .args
                .run_dir
                .join(&self.args.instance)
                .join(format!("{create_name}.shim"));
            std::fs::copy("/proc/self/exe", &copy)
                .and_then(|_| std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)))
                .map_err(|e| {
                    (
                        exit::START_FAILED,
                        format!("cannot copy the running binary for the shim: {e}"),
                    )
                })?;
            self.shim_copy = Some(copy.clone());
            copy
        } else {
            shim_host
        };
        let socket_names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .unwrap_or_default()
            .split(':')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let inputs = docker::Inputs {
            instance: &self.args.instance,
            extra_labels: &self.args.labels,
            shim_host: &shim_host,
            run_dir: &self.args.run_dir,
            create_name: &create_name,
            wrapper: &self.args.wrapper,
            socket_names,
            has_config: fds.config.is_some(),
        };
        let docker::Plan {
            proxy,
            body,
            fingerprint,
        } = docker::plan(&cfg, &d, &image, inputs).ok_or_else(|| {
            (
                exit::BAD_CONFIG,
                format!("image {:?} has no Entrypoint or Cmd; set exec", d.image),
            )
        })?;

        // Only a bridge that starts alone removes the vassal's stale containers (all of this emperor's,
        // whatever their name); in an overlap the others are the instances still serving. A container
        // the emperor created ahead of time for an on-demand vassal is kept and started if it is
        // exactly this one.
        let ready_made = if self.args.overlap {
            None
        } else {
            let existing = self.existing(docker, &d.container_name).await?;
            let found = existing
                .as_ref()
                .filter(|c| docker::reusable(c, &cfg.name, &self.args.instance, &fingerprint))
                .and_then(|c| c.id.clone());
            if let Some(stale) = existing.filter(|_| found.is_none()) {
                self.remove_stale(docker, &d.container_name, stale).await?;
            }
            self.remove_stale_labelled(docker, &cfg.name, found.as_deref()).await?;
            found
        };

        // The proxy socket, in a directory of its own.
        let (host_sock, host_dir) = (proxy.host_sock.clone(), proxy.host_dir.clone());
        docker::make_proxy_dir(&host_dir).map_err(|e| {
            (
                exit::START_FAILED,
                format!("cannot create the proxy directory {}: {e}", host_dir.display()),
            )
        })?;
        if proxy.private {
            self.proxy_dir = Some(host_dir.clone());
        }
        let _ = std::fs::remove_file(&host_sock);
        let listener = UnixListener::bind(&host_sock).map_err(|e| {
            (
                exit::START_FAILED,
                format!("cannot bind the proxy socket {}: {e}", host_sock.display()),
            )
        })?;
        // Any container user must be able to connect; the peer is verified before anything is sent. A
        // `docker-proxy` directory is the user's: its mode is left alone.
        if proxy.private {
            let _ = std::fs::set_permissions(&host_dir, std::fs::Permissions::from_mode(0o755));
        }
        let _ = std::fs::set_permissions(&host_sock, std::fs::Permissions::from_mode(0o666));

        if self.args.docker_debug {
            info!("[{name}] bridge: create {create_name} with {body:?}");
        }
        let opts = CreateContainerOptions {
            name: Some(create_name.clone()),
            ..Default::default()
        };
        let id = match ready_made {
            Some(id) => {
                debug!(
                    "[{name}] bridge: starting container {}, created ahead of time",
                    short(&id)
                );
                id
            }
            None => match docker.create_container(Some(opts), body).await {
                Ok(created) => created.id,
                // The emperor's creation ahead of time finished just after we looked: use it if it fits.
                Err(e) if status(&e) == Some(409) && !self.args.overlap => self
                    .ready_made(docker, &d.container_name, &cfg.name, &fingerprint)
                    .await
                    .ok_or_else(|| {
                        (
                            exit::START_FAILED,
                            format!("cannot create container {}: {}", d.container_name, message(&e)),
                        )
                    })?,
                Err(e) => {
                    return Err((
                        exit::START_FAILED,
                        format!("cannot create container {}: {}", d.container_name, message(&e)),
                    ));
                }
            },
        };
        self.container = Some(id.clone());
        if let Some(cid) = &d.cidfile
            && let Err(e) = std::fs::write(cid, format!("{id}\n"))
        {
            warn!("[{name}] bridge: cannot write docker-cidfile {}: {e}", cid.display());
        }

        // Attach before start: with logs=true nothing the container prints is lost. Raw, over the
        // daemon's unix socket (attach.rs says why); bollard's attach for a daemon over TCP.
        match attach::daemon_socket() {
            Some(sock) => {
                let (stream, first) = attach::attach(&sock, &id).await.map_err(|e| {
                    (
                        exit::START_FAILED,
                        format!("cannot attach to container {}: {e}", short(&id)),
                    )
                })?;
                self.output = Some(tokio::spawn(attach::forward(stream, first)));
            }
            None => {
                let attached = docker
                    .attach_container(
                        &id,
                        Some(AttachContainerOptions {
                            stream: true,
                            logs: true,
                            stdout: true,
                            stderr: true,
                            ..Default::default()
                        }),
                    )
                    .await
                    .map_err(|e| docker_fail("attach to the container", &e))?;
                self.output = Some(tokio::spawn(forward_output(attached.output)));
            }
        }

        docker.start_container(&id, None).await.map_err(|e| {
            (
                exit::START_FAILED,
                format!("cannot start container {}: {}", d.container_name, message(&e)),
            )
        })?;
        let inspect = docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| docker_fail("inspect the container", &e))?;
        let init_pid = inspect.state.and_then(|s| s.pid).unwrap_or(0);
        info!("[{name}] bridge: container {} started (pid {init_pid})", short(&id));
        let mut record = info::Info {
            id: id.clone(),
            init_pid,
            started_ms: info::unix_ms(),
            handover_ms: None,
        };
        if let Err(e) = record.write(&self.info_path) {
            warn!(
                "[{name}] bridge: cannot write {} (the stats will lack its memory and CPU): {e}",
                self.info_path.display()
            );
        }

        let mut wait = Box::pin(docker.wait_container(&id, None::<WaitContainerOptions>));
        let lifeline = fds
            .lifeline
            .and_then(|fd| tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok());
        let mut lifeline_eof = Box::pin(async move {
            match lifeline {
                Some(rx) => {
                    let _ = rx.readable().await;
                }
                None => std::future::pending().await,
            }
        });

        // The hand-over, racing the container's early death and the emperor's stop.
        let mut to_send: Vec<OwnedFd> = vec![fds.control];
        to_send.extend(fds.config);
        to_send.extend(fds.sockets);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.args.handshake_timeout);
        let mut stopping = false;
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
                        Ok((pid, _, _)) if same_pid_ns(pid, init_pid) => {}
                        Ok((pid, _, _)) => {
                            warn!("[{name}] bridge: refusing a proxy connection from pid {pid}, which is not in container {}", short(&id));
                            continue;
                        }
                        Err(e) => { warn!("[{name}] bridge: proxy connection without credentials: {e}"); continue; }
                    }
                    let borrowed: Vec<_> = to_send.iter().map(|fd| fd.as_fd()).collect();
                    proxy_socket::send_fds(&stream, &borrowed)
                        .map_err(|e| (exit::START_FAILED, format!("cannot send the sockets over the proxy socket: {e}")))?;
                    debug!("[{name}] bridge: handed {} fds to the container", to_send.len());
                    record.handover_ms = Some(info::unix_ms());
                    let _ = record.write(&self.info_path);
                    break;
                }
                res = wait.next() => {
                    let code = wait_code(res);
                    return Err((exit::from_app(code), format!("container {} exited with code {code} before it connected to the proxy socket", short(&id))));
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err((exit::NO_HANDSHAKE, format!(
                        "container {} did not connect to its proxy socket within {} s; its entrypoint must be the shim \
                         (docker-shim = true) or a uWSGI that honours UWSGI_EMPEROR_PROXY",
                        short(&id), self.args.handshake_timeout)));
                }
                _ = term.recv() => { stopping = true; break; }
                _ = int.recv() => { stopping = true; break; }
                _ = &mut lifeline_eof => { stopping = true; break; }
            }
        }
        // Our copies must go: the vassal's control channel reports EOF to the emperor only when the
        // vassal closes it, and the proxy socket is single-use.
        drop(to_send);
        drop(listener);
        let _ = std::fs::remove_file(&host_sock);

        let mut named = !self.args.overlap;
        loop {
            if stopping {
                self.stop(docker, &id, &cfg).await;
            }
            tokio::select! {
                res = wait.next() => {
                    let code = wait_code(res);
                    info!("[{name}] bridge: container {} exited with code {code}", short(&id));
                    return Ok(exit::from_app(code));
                }
                _ = term.recv(), if !stopping => stopping = true,
                _ = int.recv(), if !stopping => stopping = true,
                _ = usr1.recv(), if !named => {
                    named = rename(docker, &id, &d.container_name, &name).await;
                }
                _ = &mut lifeline_eof, if !stopping => {
                    info!("[{name}] bridge: the emperor is gone; stopping the container");
                    stopping = true;
                }
            }
        }
    }

    /// `docker stop` with the vassal's stop signal and timeout (Docker SIGKILLs after it).
    async fn stop(&self, docker: &Docker, id: &str, cfg: &VassalConfig) {
        let t = i32::try_from(self.args.stop_timeout).unwrap_or(i32::MAX);
        let opts = StopContainerOptions {
            t: Some(t),
            signal: cfg.stop_signal.map(|s| s.as_str().to_string()),
        };
        match docker.stop_container(id, Some(opts)).await {
            Ok(()) => {}
            Err(e) if matches!(status(&e), Some(304 | 404)) => {}
            Err(e) => warn!("[{}] bridge: cannot stop container {}: {e}", self.args.name, short(id)),
        }
    }

    /// Removes every container of this emperor for this vassal (left by a bridge that could not clean
    /// up, e.g. one killed during an overlapping reload).
    async fn remove_stale_labelled(&self, docker: &Docker, vassal: &str, keep: Option<&str>) -> Result<(), Fail> {
        use bollard::query_parameters::ListContainersOptions;
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{}={vassal}", docker::LABEL_VASSAL),
                format!("{}={}", docker::LABEL_INSTANCE, self.args.instance),
            ],
        )]);
        let list = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let found = docker
            .list_containers(Some(list))
            .await
            .map_err(|e| docker_fail("list stale containers", &e))?;
        for c in found {
            let Some(id) = c.id else { continue };
            if keep == Some(id.as_str()) {
                continue;
            }
            info!("[{}] bridge: removing stale container {}", self.args.name, short(&id));
            docker::remove(docker, &id)
                .await
                .map_err(|e| docker_fail("remove a stale container", &e))?;
        }
        Ok(())
    }

    /// The id of a container the emperor created ahead of time (on-demand vassals) under the vassal's
    /// name, if it is exactly the one this bridge would create and was never started.
    async fn ready_made(
        &self,
        docker: &Docker,
        container_name: &str,
        vassal: &str,
        fingerprint: &str,
    ) -> Option<String> {
        let c = self.existing(docker, container_name).await.ok()??;
        if docker::reusable(&c, vassal, &self.args.instance, fingerprint) {
            c.id
        } else {
            None
        }
    }

    /// The container that holds the vassal's name, if any.
    async fn existing(
        &self,
        docker: &Docker,
        container_name: &str,
    ) -> Result<Option<bollard::models::ContainerInspectResponse>, Fail> {
        match docker
            .inspect_container(container_name, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(Some(c)),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(docker_fail("look for a stale container", &e)),
        }
    }

    /// Removes a container left with the vassal's name by an earlier emperor; refuses a foreign one.
    async fn remove_stale(
        &self,
        docker: &Docker,
        container_name: &str,
        existing: bollard::models::ContainerInspectResponse,
    ) -> Result<(), Fail> {
        let labels: HashMap<String, String> = existing.config.and_then(|c| c.labels).unwrap_or_default();
        if !labels.contains_key(docker::LABEL_VASSAL) {
            return Err((
                exit::START_FAILED,
                format!(
                    "a container named {container_name:?} exists and was not created by an emperor; it is left alone — \
                     remove or rename it, or rename the vassal file"
                ),
            ));
        }
        let id = existing.id.unwrap_or_else(|| container_name.to_string());
        info!("[{}] bridge: removing stale container {}", self.args.name, short(&id));
        docker::remove(docker, &id)
            .await
            .map_err(|e| docker_fail("remove the stale container", &e))
    }
}

/// Gives the container of an overlapping reload the vassal's own name, once the old container is gone
/// (it may still be being removed: retried for a few seconds).
/// Returns whether the container now has the name.
async fn rename(docker: &Docker, id: &str, to: &str, vassal: &str) -> bool {
    use bollard::query_parameters::RenameContainerOptions;
    for _ in 0..20 {
        match docker
            .rename_container(id, RenameContainerOptions { name: to.to_string() })
            .await
        {
            Ok(()) => {
                debug!("[{vassal}] bridge: container {} is now {to}", short(id));
                return true;
            }
            Err(e) if status(&e) == Some(409) => tokio::time::sleep(Duration::from_millis(250)).await,
            Err(e) => {
                warn!("[{vassal}] bridge: cannot rename container {} to {to}: {e}", short(id));
                return false;
            }
        }
    }
    warn!(
        "[{vassal}] bridge: container {} keeps its temporary name; {to} is still taken",
        short(id)
    );
    false
}

/// Connects to the daemon named by `DOCKER_HOST` (the emperor sets it from `--docker-daemon-socket`)
/// or the default socket, and agrees on an API version.
async fn connect() -> Result<Docker, Fail> {
    let where_ = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let unreachable = |e: &dyn std::fmt::Display| {
        (
            exit::DOCKER_UNAVAILABLE,
            format!(
                "cannot reach the Docker daemon at {where_}: {e}; start dockerd (or point --docker-daemon-socket / \
                 DOCKER_HOST at it)"
            ),
        )
    };
    let docker = Docker::connect_with_local_defaults().map_err(|e| unreachable(&e))?;
    docker.negotiate_version().await.map_err(|e| unreachable(&e))
}

/// Takes ownership of the fds the emperor placed: sockets from fd 3 (`LISTEN_FDS`), then the control
/// and config channels and the lifeline, each named by its variable.
fn adopt_fds() -> Result<Fds, Fail> {
    let bad = |what: String| (exit::START_FAILED, what);
    let pid_ok = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let n: RawFd = match std::env::var("LISTEN_FDS") {
        Ok(v) if pid_ok => v.parse().map_err(|_| bad(format!("bad LISTEN_FDS {v:?}")))?,
        _ => 0,
    };
    let sockets = (3..3 + n)
        .map(proxy_socket::adopt_inherited)
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    let fd_var = |var: &str| -> Result<Option<OwnedFd>, Fail> {
        match std::env::var(var) {
            Ok(v) => {
                let fd: RawFd = v.parse().map_err(|_| bad(format!("bad {var} {v:?}")))?;
                proxy_socket::adopt_inherited(fd).map(Some).map_err(bad)
            }
            Err(_) => Ok(None),
        }
    };
    let control = fd_var("UWSGI_EMPEROR_FD")?.ok_or_else(|| bad("UWSGI_EMPEROR_FD is not set".into()))?;
    Ok(Fds {
        sockets,
        control,
        config: fd_var("UWSGI_EMPEROR_FD_CONFIG")?,
        lifeline: fd_var(ENV_LIFELINE_FD)?,
    })
}

/// Is `pid` in the pid namespace of the container whose init is `init_pid`?
fn same_pid_ns(pid: i32, init_pid: i64) -> bool {
    if pid <= 0 || init_pid <= 0 {
        return false;
    }
    let ns = |p: i64| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    matches!((ns(i64::from(pid)), ns(init_pid)), (Some(a), Some(b)) if a == b)
}

async fn forward_output(
    mut output: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<bollard::container::LogOutput, DockerError>> + Send>,
    >,
) {
    use std::io::Write;
    while let Some(Ok(chunk)) = output.next().await {
        let bytes = chunk.into_bytes();
        let mut out = std::io::stdout().lock();
        if out.write_all(&bytes).and_then(|()| out.flush()).is_err() {
            break;
        }
    }
}

fn wait_code(res: Option<Result<bollard::models::ContainerWaitResponse, DockerError>>) -> i64 {
    match res {
        Some(Ok(r)) => r.status_code,
        Some(Err(DockerError::DockerContainerWaitError { code, .. })) => code,
        Some(Err(_)) | None => i64::from(exit::START_FAILED),
    }
}

fn status(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// What to do about a missing image. No registry is ever asked, so it must be built or loaded on this host; the
/// images of the emperor's own examples and tests have a script of their own.
fn image_missing(image: &str) -> String {
    let repo = image.split(':').next().unwrap_or(image);
    let how = match repo.strip_prefix("emperor-test/") {
        Some(which) => format!("build it from the emperor's source tree with `scripts/build-images {which}`"),
        None => format!("build it (`docker build -t {image} <dir>`) or load it (`docker load -i <file>`)"),
    };
    format!("image {image:?} not found and no registry is consulted: {how}")
}

/// A daemon without a default bridge (`dockerd --bridge=none`, as scripts/setup starts it) refuses every
/// container that asks for the default network, which is what a vassal without `docker-network-mode` does.
fn no_default_bridge(msg: &str) -> bool {
    msg.contains("could not find bridge") || msg.contains("network bridge not found")
}

fn docker_fail(step: &str, e: &DockerError) -> Fail {
    match e {
        DockerError::DockerResponseServerError { .. } if no_default_bridge(&message(e)) => (
            exit::START_FAILED,
            format!(
                "cannot {step}: this Docker daemon has no default bridge network ({}); set `docker-network-mode = \
                 none` in the vassal (the emperor hands its sockets in, so it needs no network) or `host`",
                message(e)
            ),
        ),
        DockerError::DockerResponseServerError { .. } => (exit::START_FAILED, format!("cannot {step}: {}", message(e))),
        other => (
            exit::DOCKER_UNAVAILABLE,
            format!("cannot {step}: the Docker daemon did not answer: {other}"),
        ),
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
    fn host_failures_say_what_to_change() {
        assert!(image_missing("emperor-test/testapp:v2").contains("`scripts/build-images testapp`"));
        assert!(image_missing("shop:1").contains("`docker build -t shop:1 <dir>`"));
        let e = DockerError::DockerResponseServerError {
            status_code: 500,
            message: "could not find bridge docker0: route ip+net: no such network interface".into(),
        };
        let (code, msg) = docker_fail("start container", &e);
        assert_eq!(code, exit::START_FAILED);
        assert!(
            msg.contains("docker-network-mode = none") && msg.contains("docker0"),
            "{msg}"
        );
    }
}
