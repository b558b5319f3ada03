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
//!    It records the container's id, init pid and hand-over time for the emperor's stats
//!    ([`crate::docker::record`]);
//! 6. forward the container's output to stdout (the emperor prefixes each line with the vassal name);
//! 7. on the container's exit, remove it and exit with its code ([`crate::exit`]). SIGTERM (the
//!    emperor stopping the vassal, or `PR_SET_PDEATHSIG` when the emperor dies) and EOF on the
//!    lifeline stop the container with the vassal's stop signal and timeout first.
//!
//! A container that never connects times out with a message saying what to check, instead of the
//! bridge hanging forever as uwsgi-docker's did. Each step is a method that fails with its own
//! [`Fail`] variant, which carries the exit code; what the bridge shares with the emperor (labels, the
//! container plan, its record file, the daemon client) is in [`crate::docker`].

mod attach;
mod container;
mod error;
mod handover;
mod outage;
mod stop;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bollard::Docker;
use bollard::models::ImageInspect;
use bollard::query_parameters::InspectContainerOptions;
use log::{debug, error, info, warn};
use tokio::net::UnixListener;

use crate::cli::{BridgeArgs, ENV_VASSAL_TEXT};
use crate::config::{self, DockerConfig, VassalConfig};
use crate::docker::{self, ProxyPaths, daemon, record, short};
use crate::exit;

use error::Fail;
use handover::{Fds, Watch};
use stop::Signals;

/// How long a bridge that is done waits for a daemon that is away to remove its container.
const CLEANUP_PATIENCE: Duration = Duration::from_secs(5);

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

/// The vassal as this bridge runs it.
struct Target {
    cfg: VassalConfig,
    /// The file's Docker keys.
    d: DockerConfig,
    /// The name the container is created under: the vassal's, or a temporary one beside the old
    /// container of an overlapping reload.
    create_name: String,
}

struct Bridge {
    args: BridgeArgs,
    /// The container's id once created, so every exit path removes it.
    container: Option<String>,
    /// The proxy directory we created, removed on exit.
    proxy_dir: Option<PathBuf>,
    /// A copy of the binary mounted as the shim when the original was replaced on disk.
    shim_copy: Option<PathBuf>,
    /// The `docker-cidfile` this bridge wrote, and the id in it; removed with the container.
    cidfile: Option<(PathBuf, String)>,
    /// The container's stop signal as it was created (the vassal's `stop-signal`, else the image's
    /// STOPSIGNAL; `None`: Docker's SIGTERM), for the log line of a stop.
    stop_signal: Option<String>,
    /// Where the container's id, init pid and hand-over time are written for the stats ([`record`]).
    info_path: PathBuf,
    /// The task copying the container's output to stdout.
    output: Option<tokio::task::JoinHandle<()>>,
}

impl Bridge {
    fn new(args: BridgeArgs) -> Self {
        let info_path = record::path(&args.run_dir, &args.instance, std::process::id() as i32);
        Bridge {
            args,
            container: None,
            proxy_dir: None,
            shim_copy: None,
            cidfile: None,
            stop_signal: None,
            info_path,
            output: None,
        }
    }

    /// The emperor logs the reason (once, however often the same attempt fails); only if it cannot be handed
    /// over does the bridge log it itself.
    fn log_fail(&self, fail: &Fail) {
        let code = fail.code();
        let verdict = record::verdict_path(&self.args.run_dir, &self.args.instance, std::process::id() as i32);
        if exit::describe(i32::from(code)).is_some() && record::write_verdict(&verdict, &fail.to_string()) {
            debug!("[{}] bridge: exit {code}: {fail}", self.args.name);
        } else {
            error!("[{}] bridge: {fail}", self.args.name);
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
        let code = match self.run_with(&mut sigs).await {
            Ok((code, docker)) => {
                // The last of the container's output may still be on its way once it exited (the
                // daemon closes the stream right after): let it through.
                if let Some(output) = self.output.take() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), output).await;
                }
                if let Some(docker) = docker {
                    self.cleanup(&docker).await;
                }
                code
            }
            Err((f, docker)) => {
                self.log_fail(&f);
                if let Some(docker) = docker {
                    self.cleanup(&docker).await;
                }
                f.code()
            }
        };
        self.cleanup_files();
        code
    }

    /// The daemon named by `DOCKER_HOST` (which the emperor sets from `--docker-daemon-socket`), once it
    /// answers: a daemon that is away is waited for ([`outage`]). `None` if asked to stop meanwhile.
    async fn connect(&self, sigs: &mut Signals) -> Result<Option<Docker>, Fail> {
        // bollard refuses to make a client for a socket that does not exist (yet, or any more while the
        // daemon restarts): wait for it as for a daemon that does not answer.
        let docker = loop {
            match daemon::client(None, daemon::EMPEROR_TIMEOUT) {
                Ok(d) => break d,
                Err(e) if daemon::is_missing_socket(&e) => {
                    debug!("[{}] bridge: {e}; waiting for it", self.args.name);
                    tokio::select! {
                        _ = tokio::time::sleep(daemon::POLL) => {}
                        _ = sigs.stop.requested() => return Ok(None),
                    }
                }
                Err(source) => {
                    return Err(Fail::Unreachable(daemon::Unreachable {
                        address: daemon::address(None),
                        source,
                    }));
                }
            }
        };
        loop {
            match docker.clone().negotiate_version().await {
                Ok(d) => return Ok(Some(d)),
                Err(e) => debug!("[{}] bridge: {}: {e}", self.args.name, daemon::address(None)),
            }
            if self.daemon_back(&docker, &mut sigs.stop).await.is_err() {
                return Ok(None);
            }
        }
    }

    /// Removes the container, waiting a little for a daemon that is away (a stop requested during an outage):
    /// a container left behind is removed by the next bridge of the vassal, or as an orphan by the
    /// emperor once the daemon answers.
    async fn cleanup(&mut self, docker: &Docker) {
        let Some(id) = self.container.take() else { return };
        let deadline = tokio::time::Instant::now() + CLEANUP_PATIENCE;
        loop {
            match docker::remove(docker, &id).await {
                Ok(()) => return debug!("[{}] bridge: removed container {}", self.args.name, short(&id)),
                Err(e) if docker::status(&e).is_none() && tokio::time::Instant::now() < deadline => {
                    let _ = tokio::time::timeout_at(deadline, daemon::answers(docker)).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    return warn!(
                        "[{}] bridge: cannot remove container {}: {e}",
                        self.args.name,
                        short(&id)
                    );
                }
            }
        }
    }

    /// What the bridge made on the host: its record, the proxy directory, the cidfile, a shim copy.
    fn cleanup_files(&mut self) {
        let _ = std::fs::remove_file(&self.info_path);
        let _ = std::fs::remove_file(record::temp_path(&self.info_path));
        if let Some(dir) = self.proxy_dir.take() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        // The instance directory too, once its last vassal is gone (remove_dir refuses a non-empty one).
        if let Some(parent) = self.info_path.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        self.remove_cidfile();
        if let Some(copy) = self.shim_copy.take() {
            let _ = std::fs::remove_file(copy);
        }
    }

    /// Everything from the vassal file to the container's exit code, step by step; the client is returned
    /// for the clean-up (`None`: stopped before the daemon ever answered).
    async fn run_with(&mut self, sigs: &mut Signals) -> Result<(u8, Option<Docker>), (Fail, Option<Docker>)> {
        let target = self.target().map_err(|f| (f, None))?;
        let mut fds = match self.args.adopt {
            None => Some(Fds::adopt().map_err(|f| (f, None))?),
            Some(_) => None,
        };
        let lifeline = match fds.as_mut() {
            Some(fds) => fds.take_lifeline(),
            None => handover::lifeline().map_err(|f| (f, None))?,
        };
        sigs.stop.watch_lifeline(lifeline);
        let docker = match self.connect(sigs).await {
            Ok(Some(d)) => d,
            Ok(None) => return Ok((0, None)),
            Err(f) => return Err((f, None)),
        };
        let res = match fds {
            Some(fds) => self.run_container(&docker, &target, fds, sigs).await,
            None => {
                let id = self.args.adopt.clone().unwrap_or_default();
                self.carry_on(&docker, &target, &id, sigs).await
            }
        };
        match res {
            Ok(code) => Ok((code, Some(docker))),
            Err(f) => Err((f, Some(docker))),
        }
    }

    /// `--adopt`: the bridge that ran this container died, and the container may run on with the vassal's
    /// sockets and channels. If it is this vassal's and runs, it is watched as if this bridge had started
    /// it (its output from now on); if it exited meanwhile, its exit code is the app's, as ever.
    async fn carry_on(&mut self, docker: &Docker, t: &Target, id: &str, sigs: &mut Signals) -> Result<u8, Fail> {
        let not = |why: &str| Fail::NotAdoptable {
            id: id.to_string(),
            why: why.to_string(),
        };
        let c = match docker.inspect_container(id, None::<InspectContainerOptions>).await {
            Ok(c) => c,
            Err(e) if docker::is_not_found(&e) => return Err(not("it is gone")),
            Err(e) => return Err(Fail::docker("inspect the container", &e)),
        };
        let labels = c.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default();
        let ours = labels.get(docker::LABEL_VASSAL) == Some(&t.cfg.name)
            && labels.get(docker::LABEL_INSTANCE) == Some(&self.args.instance);
        if !ours {
            return Err(not("it is not this vassal's"));
        }
        self.container = Some(id.to_string());
        self.stop_signal = c.config.as_ref().and_then(|c| c.stop_signal.clone());
        if let Some(cid) = &t.d.cidfile
            && crate::sys::cidfile::holds(cid, id)
        {
            self.cidfile = Some((cid.clone(), id.to_string()));
        }
        if t.d.proxy.is_none()
            && let Some(name) = c.name.as_deref().map(|n| n.trim_start_matches('/'))
        {
            self.proxy_dir = Some(self.args.run_dir.join(&self.args.instance).join(name));
        }
        let state = c.state.unwrap_or_default();
        if state.running != Some(true) {
            let code = state.exit_code.unwrap_or(-1);
            info!(
                "[{}] bridge: container {} exited with code {code}",
                self.args.name,
                short(id)
            );
            return Ok(exit::from_app(code));
        }
        let init_pid = state.pid.unwrap_or(0);
        let now = record::unix_ms();
        let info = record::Info {
            id: id.to_string(),
            init_pid,
            started_ms: now,
            handover_ms: Some(now),
        };
        let _ = info.write(&self.info_path);
        self.attach(docker, id, false).await?;
        info!(
            "[{}] bridge: carrying on with container {} (pid {init_pid})",
            self.args.name,
            short(id)
        );
        let watch = Watch::new(docker, id);
        self.supervise(docker, t, id, watch, sigs, false).await
    }

    async fn run_container(
        &mut self,
        docker: &Docker,
        target: &Target,
        fds: Fds,
        sigs: &mut Signals,
    ) -> Result<u8, Fail> {
        let has_config = fds.config.is_some();
        let (listener, mut record, proxy) = loop {
            match self.prepare(docker, target, has_config).await {
                Ok(ready) => break ready,
                Err(f) if f.daemon_gone() => {
                    debug!("[{}] bridge: {f}", self.args.name);
                    if self.daemon_back(docker, &mut sigs.stop).await.is_err() {
                        return Ok(0);
                    }
                    // Start over; a container made before the daemon went away is not trusted.
                    if let Some(output) = self.output.take() {
                        output.abort();
                    }
                    if let Some(id) = self.container.take() {
                        let _ = docker::remove(docker, &id).await;
                    }
                }
                Err(f) => return Err(f),
            }
        };
        let id = record.id.clone();
        let mut watch = Watch::new(docker, &id);
        let stopping = self
            .hand_over(docker, listener, fds.into_sent(), &mut record, &mut watch, sigs)
            .await?;
        let _ = std::fs::remove_file(&proxy.host_sock);
        self.supervise(docker, target, &id, watch, sigs, stopping).await
    }

    /// The container, created (or taken ready-made), attached to and started, with the proxy socket to hand
    /// the fds over on.
    async fn prepare(
        &mut self,
        docker: &Docker,
        target: &Target,
        has_config: bool,
    ) -> Result<(UnixListener, record::Info, ProxyPaths), Fail> {
        let image = self.check_image(docker, &target.d).await?;
        let shim_host = self.shim_binary(&target.create_name)?;
        let docker::Plan {
            proxy,
            body,
            fingerprint,
        } = self.plan(target, &image, &shim_host, has_config)?;
        let ready_made = self.clear_the_name(docker, target, &fingerprint).await?;
        self.stop_signal.clone_from(&body.stop_signal);
        let listener = self.bind_proxy(&proxy)?;
        if self.args.docker_debug {
            info!(
                "[{}] bridge: create {} with {body:?}",
                self.args.name, target.create_name
            );
        }
        let id = self.create(docker, target, ready_made, body, &fingerprint).await?;
        self.container = Some(id.clone());
        self.write_cidfile(&target.d, target.cfg.run_as, &id);
        self.attach(docker, &id, true).await?;
        let record = self.start(docker, target, &id).await?;
        Ok((listener, record, proxy))
    }

    /// The vassal file, as the emperor read it (its text comes in the environment: the file may have
    /// changed on disk since).
    fn target(&self) -> Result<Target, Fail> {
        let text = std::env::var(ENV_VASSAL_TEXT).map_err(|_| Fail::NoVassalText)?;
        let cfg = config::parse(&self.args.name, &self.args.file, &text, &self.args.vassals_dir)?
            .with_name_prefix(&self.args.name_prefix)
            .running_as(self.args.run_as);
        let cfg = match &self.args.policy {
            Some(spec) => self.admit(spec, cfg)?,
            None => cfg,
        };
        let mut cfg = cfg;
        // Replica K of a vassal with `replicas` is a container of its own beside the first; the cidfile
        // holds the first's id only (one file cannot name several containers).
        if let (Some(k), Some(d)) = (self.args.replica, cfg.docker.as_mut()) {
            d.container_name = format!("{}.r{k}", d.container_name);
            d.cidfile = None;
        }
        // `docker-build`: the emperor built the image before it started this bridge, and names it.
        if let Some(d) = cfg.docker.as_mut().filter(|d| d.build.is_some()) {
            d.image = self.args.image.clone().ok_or(Fail::NotBuilt)?;
        }
        let d = cfg.docker.clone().ok_or(Fail::NotDocker)?;
        let create_name = if self.args.overlap {
            format!("{}.next-{}", d.container_name, std::process::id())
        } else {
            d.container_name.clone()
        };
        Ok(Target { cfg, d, create_name })
    }

    /// The vassal checked against the emperor's policy again (the bridge plans the container, so it needs what
    /// the policy forces on it); a refusal here means the file's owner changed since the emperor checked.
    fn admit(&self, spec: &str, cfg: VassalConfig) -> Result<VassalConfig, Fail> {
        let policy = match spec {
            "builtin" => crate::policy::Policy::built_in(),
            path => crate::policy::load(std::path::Path::new(path)).map_err(|e| Fail::Policy(e.to_string()))?,
        }
        .with_docker_socket(&daemon::socket_path(None));
        let owner = match cfg.run_as.or(self.args.owner) {
            Some(r) => crate::policy::Owner::of_ids(r.uid, r.gid),
            None => crate::policy::Owner::of_file(&cfg.path, true).map_err(|e| Fail::Policy(e.to_string()))?,
        };
        let path = cfg.path.clone();
        crate::policy::admit(&policy, cfg, &owner).map_err(|refusals| {
            Fail::Config(config::ConfigError {
                path,
                problems: refusals.iter().map(crate::policy::Refusal::to_problem).collect(),
            })
        })
    }

    /// The image, inspected here; no registry is ever asked for it.
    async fn check_image(&self, docker: &Docker, d: &DockerConfig) -> Result<ImageInspect, Fail> {
        docker.inspect_image(&d.image).await.map_err(|e| {
            if docker::is_not_found(&e) {
                Fail::ImageMissing(d.image.clone())
            } else {
                Fail::docker("inspect image", &e)
            }
        })
    }

    /// The binary to bind-mount as the shim: the emperor's own.
    fn shim_binary(&mut self, create_name: &str) -> Result<PathBuf, Fail> {
        let shim_host = std::env::current_exe().map_err(Fail::NoBinary)?;
        if !shim_host.to_string_lossy().ends_with(" (deleted)") {
            return Ok(shim_host);
        }
        // Replaced on disk since the emperor started (an upgrade in place): the file to bind-mount is
        // gone, and runc cannot mount a /proc/<pid>/exe link, so mount a private copy of the binary
        // this process still runs (removed with the container).
        let copy = self
            .args
            .run_dir
            .join(&self.args.instance)
            .join(format!("{create_name}.shim"));
        std::fs::copy("/proc/self/exe", &copy)
            .and_then(|_| std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)))
            .map_err(Fail::ShimCopy)?;
        self.shim_copy = Some(copy.clone());
        Ok(copy)
    }

    /// The container to create ([`docker::plan`], which the emperor's creation ahead of time uses too).
    fn plan(
        &self,
        t: &Target,
        image: &ImageInspect,
        shim_host: &std::path::Path,
        has_config: bool,
    ) -> Result<docker::Plan, Fail> {
        let socket_names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .unwrap_or_default()
            .split(':')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let inputs = docker::Inputs {
            instance: &self.args.instance,
            extra_labels: &self.args.labels,
            shim_host,
            run_dir: &self.args.run_dir,
            create_name: &t.create_name,
            wrapper: &self.args.wrapper,
            socket_names,
            has_config,
        };
        docker::plan(&t.cfg, &t.d, image, inputs).ok_or_else(|| Fail::NothingToRun(t.d.image.clone()))
    }

    /// The proxy socket, in a directory of its own.
    fn bind_proxy(&mut self, proxy: &ProxyPaths) -> Result<UnixListener, Fail> {
        let (host_sock, host_dir) = (&proxy.host_sock, &proxy.host_dir);
        docker::make_proxy_dir(host_dir).map_err(|source| Fail::ProxyDir {
            dir: host_dir.clone(),
            source,
        })?;
        if proxy.private {
            self.proxy_dir = Some(host_dir.clone());
        }
        let _ = std::fs::remove_file(host_sock);
        let listener = UnixListener::bind(host_sock).map_err(|source| Fail::ProxyBind {
            path: host_sock.clone(),
            source,
        })?;
        // Any container user must be able to connect; the peer is verified before anything is sent. A
        // `docker-proxy` directory is the user's: its mode is left alone.
        if proxy.private {
            let _ = std::fs::set_permissions(host_dir, std::fs::Permissions::from_mode(0o755));
        }
        let _ = std::fs::set_permissions(host_sock, std::fs::Permissions::from_mode(0o666));
        Ok(listener)
    }

    /// Writes the container's id to `docker-cidfile` ([`crate::sys::cidfile`]): never through a symlink,
    /// never over a file that is not a cidfile; in tyrant mode only where the vassal's owner could.
    fn write_cidfile(&mut self, d: &DockerConfig, run_as: Option<config::RunAs>, id: &str) {
        let Some(cid) = &d.cidfile else { return };
        let tenant = run_as.map(|r| crate::sys::tenant::Tenant::of(r.uid, r.gid));
        match crate::sys::cidfile::write(cid, id, tenant.as_ref()) {
            Ok(()) => self.cidfile = Some((cid.clone(), id.to_owned())),
            Err(e) => warn!(
                "[{}] bridge: cannot write docker-cidfile {}: {e}",
                self.args.name,
                cid.display()
            ),
        }
    }

    /// The cidfile goes with its container (as `docker run --cidfile --rm` leaves nothing behind), unless it
    /// names another container by now: the new container of an overlapping reload has written its own id.
    fn remove_cidfile(&mut self) {
        if let Some((path, id)) = self.cidfile.take()
            && let Err(e) = crate::sys::cidfile::remove(&path, &id)
        {
            debug!(
                "[{}] bridge: cannot remove docker-cidfile {}: {e}",
                self.args.name,
                path.display()
            );
        }
    }
}
