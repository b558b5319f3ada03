//! One actor per vassal: a tokio task that owns the vassal's sockets, process and control channel.
//!
//! The actor is the thin, effectful shell around the pure state machine in `fsm.rs`: it turns the
//! world (commands from the main loop, bytes on the control channel, the process's exit, the
//! state's deadline) into [`Event`]s and carries out the [`Action`]s that come back. A failure here
//! (a socket that cannot be bound, a command that cannot be executed) is logged with the vassal's
//! name and becomes an event for this vassal only; it never reaches the emperor or another vassal.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, log, warn};
use nix::sys::signal::Signal;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::fsm::{Action, Event, Fsm, Params, State};
use super::output;
use super::sockets::{self, BoundSocket, SocketOptions};
use super::spawn::{self, Child, Exit, SpawnRequest};
use crate::cli::EmperorOptions;
use crate::config::{ConfigError, VassalConfig};
use crate::protocol::{EmperorMsg, VassalMsg};

/// Extra time a bridge gets to stop and remove its container before the emperor kills it.
const BRIDGE_GRACE: Duration = Duration::from_secs(10);

/// What the main loop tells an actor.
#[derive(Debug)]
pub enum Command {
    /// The file was added or changed; parsed once by the main loop.
    Update(Result<Arc<VassalConfig>, Arc<ConfigError>>),
    /// The file is gone.
    Remove,
    /// The emperor is stopping.
    Shutdown,
    /// SIGHUP.
    Reload,
    /// SIGURG.
    ClearThrottle,
    /// SIGUSR1: log one status line.
    Status,
}

/// The main loop's end of an actor.
#[derive(Debug)]
pub struct VassalHandle {
    pub tx: mpsc::UnboundedSender<Command>,
    /// Identifies the actor's task in the emperor's `JoinSet`, also when it panicked.
    pub task: tokio::task::Id,
}

/// Starts the actor for `name` in `set`; the task returns the name once it has released everything.
pub fn start(name: String, opts: Arc<EmperorOptions>, set: &mut JoinSet<String>) -> VassalHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let params = params_for(&opts, None);
    let actor = Actor {
        name,
        opts,
        config: None,
        fsm: Fsm::new(params),
        sockets: Vec::new(),
        proc: None,
    };
    let task = set.spawn_local(actor.run(rx));
    VassalHandle { tx, task: task.id() }
}

fn params_for(opts: &EmperorOptions, cfg: Option<&VassalConfig>) -> Params {
    // A bridge needs time to `docker stop` (which itself escalates to SIGKILL) and remove the container.
    let bridge_grace = if cfg.is_some_and(|c| c.docker.is_some()) {
        BRIDGE_GRACE
    } else {
        Duration::ZERO
    };
    Params {
        throttle: opts.throttle,
        max_throttle: opts.max_throttle,
        heartbeat: opts.heartbeat,
        loyalty_time: opts.loyalty_time,
        stop_timeout: cfg.and_then(|c| c.stop_timeout).unwrap_or(opts.reload_mercy) + bridge_grace,
        // A bridge always gets SIGTERM: it hands the vassal's own stop signal to `docker stop`.
        stop_signal: match cfg {
            Some(c) if c.docker.is_none() => c.stop_signal.unwrap_or(Signal::SIGTERM),
            _ => Signal::SIGTERM,
        },
    }
}

/// A live vassal process and the emperor's ends of its channels.
#[derive(Debug)]
struct Proc {
    child: Child,
    /// `None` once the vassal closed its end (it may still be alive).
    control: Option<UnixStream>,
    /// The config channel of a Docker `[uwsgi]` vassal.
    config: Option<UnixStream>,
    /// A bridge's lifeline: the bridge sees EOF on the other end when the emperor is gone.
    _lifeline: Option<OwnedFd>,
    /// A Docker vassal, run by a bridge.
    bridged: bool,
}

#[derive(Debug)]
struct Actor {
    name: String,
    opts: Arc<EmperorOptions>,
    /// The last config that parsed; a later broken edit does not replace it.
    config: Option<Arc<VassalConfig>>,
    fsm: Fsm,
    /// Bound once, kept across restarts and reloads, released on Finish.
    sockets: Vec<BoundSocket>,
    proc: Option<Proc>,
}

/// What woke the actor.
enum Wake {
    Command(Option<Command>),
    Exited(std::io::Result<Exit>),
    Control(Vec<u8>),
    Timer,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) -> String {
        while self.fsm.state != State::Done {
            let deadline = self.fsm.deadline();
            let wake = {
                let (child, control) = match &mut self.proc {
                    Some(p) => (Some(&mut p.child), p.control.as_mut()),
                    None => (None, None),
                };
                tokio::select! {
                    cmd = rx.recv() => Wake::Command(cmd),
                    res = wait_child(child) => Wake::Exited(res),
                    bytes = read_control(control) => Wake::Control(bytes),
                    _ = sleep_until(deadline), if deadline.is_some() => Wake::Timer,
                }
            };
            let events = match wake {
                Wake::Command(Some(cmd)) => self.command(cmd),
                // The main loop is gone: behave as on shutdown.
                Wake::Command(None) => vec![Event::Shutdown],
                Wake::Exited(res) => {
                    let bridged = self.proc.take().is_some_and(|p| p.bridged);
                    match res {
                        Ok(Exit::Code(c)) if bridged && c == i32::from(crate::exit::BAD_CONFIG) => {
                            vec![Event::Rejected]
                        }
                        Ok(exit) => {
                            if bridged
                                && let Exit::Code(c) = exit
                                && let Some(what) = crate::exit::describe(c)
                            {
                                warn!("[{}] bridge: {what}", self.name);
                            }
                            vec![Event::Exited(exit)]
                        }
                        Err(e) => {
                            error!("[{}] cannot wait for the vassal: {e}", self.name);
                            vec![Event::Exited(Exit::Code(-1))]
                        }
                    }
                }
                Wake::Control(bytes) if bytes.is_empty() => {
                    debug!("[{}] closed its emperor channel", self.name);
                    if let Some(p) = &mut self.proc {
                        p.control = None;
                    }
                    vec![]
                }
                Wake::Control(bytes) => bytes.into_iter().map(|b| Event::Msg(VassalMsg::from(b))).collect(),
                Wake::Timer => vec![Event::Timer],
            };
            for ev in events {
                self.feed(ev);
            }
        }
        for s in self.sockets.drain(..) {
            s.release();
        }
        self.name
    }

    /// Feeds an event and runs the resulting actions, which may produce further events (a spawn's outcome).
    fn feed(&mut self, ev: Event) {
        let mut queue = vec![ev];
        while let Some(ev) = queue.pop() {
            for act in self.fsm.on_event(ev, Instant::now()) {
                if let Some(next) = self.act(act) {
                    queue.push(next);
                }
            }
        }
    }

    fn command(&mut self, cmd: Command) -> Vec<Event> {
        match cmd {
            Command::Update(Ok(cfg)) => {
                self.fsm.params = params_for(&self.opts, Some(&cfg));
                let restart = self
                    .config
                    .as_ref()
                    .is_none_or(|old| old.emperor_hash != cfg.emperor_hash);
                let first = self.config.is_none();
                self.config = Some(cfg);
                if first {
                    vec![Event::Start]
                } else {
                    vec![Event::Reload { restart }]
                }
            }
            Command::Update(Err(e)) => {
                for line in e.to_string().lines() {
                    error!("[{}] {line}", self.name);
                }
                if self.config.is_some() {
                    warn!(
                        "[{}] keeping the current instance on its last good config until the file is fixed",
                        self.name
                    );
                } else if self.fsm.state.instance().is_none() {
                    self.fsm.state = State::Invalid { error: e.to_string() };
                }
                vec![]
            }
            Command::Remove => vec![Event::Remove],
            Command::Shutdown => vec![Event::Shutdown],
            Command::Reload => match &self.config {
                Some(cfg) => vec![Event::Reload {
                    restart: !survives_in_place_reload(cfg),
                }],
                None => vec![],
            },
            Command::ClearThrottle => vec![Event::ClearThrottle],
            Command::Status => {
                self.log_status();
                vec![]
            }
        }
    }

    fn log_status(&self) {
        let inst = self.fsm.state.instance();
        let pid = inst.map_or("-".to_string(), |i| i.pid.to_string());
        let next = match &self.fsm.state {
            State::Throttled { until } => {
                format!(
                    " next_start_in={:.1}s",
                    until.saturating_duration_since(Instant::now()).as_secs_f64()
                )
            }
            State::Invalid { error } => format!(" error={:?}", error.lines().next().unwrap_or("")),
            _ => String::new(),
        };
        info!(
            "[{}] status: state={} pid={pid} loyal={} restarts={} throttle_attempts={}{next}",
            self.name,
            self.fsm.state.name(),
            u8::from(inst.is_some_and(|i| i.loyal)),
            self.fsm.restarts,
            self.fsm.attempts,
        );
    }

    fn act(&mut self, act: Action) -> Option<Event> {
        match act {
            Action::Spawn => Some(match self.spawn() {
                Ok(ev) => ev,
                Err(e) => {
                    error!("[{}] cannot start: {e}", self.name);
                    Event::SpawnFailed
                }
            }),
            Action::Send(msg) => {
                self.send(msg);
                None
            }
            Action::Signal(sig) => {
                if let Some(p) = &self.proc {
                    p.child.signal(sig);
                }
                None
            }
            Action::KillGroup => {
                if let Some(p) = &self.proc {
                    p.child.kill_group();
                }
                None
            }
            Action::PushConfig => {
                self.push_config();
                None
            }
            Action::Finish => {
                info!("[{}] removed", self.name);
                None
            }
            Action::Log(level, msg) => {
                log!(level, "[{}] {msg}", self.name);
                None
            }
        }
    }

    fn send(&mut self, msg: EmperorMsg) {
        let Some(control) = self.proc.as_mut().and_then(|p| p.control.as_mut()) else {
            return;
        };
        if let Err(e) = control.try_write(&[msg.byte()]) {
            debug!("[{}] cannot send {msg:?}: {e}", self.name);
        }
    }

    /// Binds what is missing, releases what is no longer declared, then forks the vassal (or, for a
    /// Docker vassal, its bridge).
    fn spawn(&mut self) -> Result<Event, String> {
        let cfg = self.config.clone().ok_or("no valid config")?;
        self.reconcile_sockets(&cfg)?;

        let (ours, theirs) = channel().map_err(|e| format!("cannot create the control channel: {e}"))?;
        let control = control_stream(ours).map_err(|e| format!("cannot set up the control channel: {e}"))?;
        let (out_rx, out_w) = output::pipe().map_err(|e| format!("cannot create the output pipe: {e}"))?;
        let default_name = fd_name(&self.name);
        let names = |socks: &[BoundSocket]| -> Vec<String> {
            socks
                .iter()
                .map(|s| s.spec.name.clone().unwrap_or_else(|| default_name.clone()))
                .collect()
        };

        let bridged = cfg.docker.is_some();
        let speaks;
        let argv;
        let mut env = Vec::new();
        let mut extra_fds = vec![(theirs.as_fd(), "UWSGI_EMPEROR_FD")];
        let mut config_chan = None;
        let mut lifeline = None;
        let lifeline_r;
        let config_theirs;
        let (stdin, listen): (Option<_>, &[BoundSocket]) = if bridged {
            // The bridge gets every socket as LISTEN_FDS; the shim places them inside the container.
            speaks = crate::bridge::docker::is_uwsgi(&cfg);
            argv = self.bridge_argv(&cfg);
            env.push((crate::bridge::ENV_VASSAL_TEXT.to_string(), cfg.text.clone()));
            if let Some(sock) = &self.opts.docker_daemon_socket {
                env.push(("DOCKER_HOST".into(), format!("unix://{}", sock.display())));
            }
            if speaks {
                let (ours, t) = channel().map_err(|e| format!("cannot create the config channel: {e}"))?;
                config_chan = Some(control_stream(ours).map_err(|e| format!("cannot set up the config channel: {e}"))?);
                config_theirs = Some(t);
            } else {
                config_theirs = None;
            }
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| format!("cannot create the bridge's lifeline: {e}"))?;
            lifeline = Some(w);
            lifeline_r = Some(r);
            (None, &self.sockets[..])
        } else {
            config_theirs = None;
            lifeline_r = None;
            match &cfg.exec {
                Some(a) => {
                    argv = a.clone();
                    speaks = false;
                }
                None => {
                    argv = vec![
                        self.opts.wrapper.to_string_lossy().into_owned(),
                        "--ini".into(),
                        cfg.name.clone(),
                    ];
                    speaks = true;
                }
            }
            env = cfg.env.clone();
            // A uWSGI vassal (run through the wrapper) gets its first socket as fd 0, uWSGI's own
            // convention for emperor-owned sockets and the only place a socket survives its reload.
            match self.sockets.split_first() {
                Some((first, rest)) if cfg.exec.is_none() => (Some(first.fd()), rest),
                _ => (None, &self.sockets[..]),
            }
        };
        if let Some(fd) = &config_theirs {
            extra_fds.push((fd.as_fd(), "UWSGI_EMPEROR_FD_CONFIG"));
        }
        if let Some(fd) = &lifeline_r {
            extra_fds.push((fd.as_fd(), crate::bridge::ENV_LIFELINE_FD));
        }
        let cwd = cfg.chdir.clone().unwrap_or_else(|| self.opts.vassals_dir.clone());
        let stderr = std::io::stderr();
        let req = SpawnRequest {
            argv: &argv,
            env,
            cwd: &cwd,
            sockets: listen.iter().map(|s| s.fd()).zip(names(listen)).collect(),
            extra_fds,
            stdin,
            output: out_w.as_fd(),
            stderr: bridged.then(|| stderr.as_fd()),
            pdeathsig: if bridged { Signal::SIGTERM } else { Signal::SIGKILL },
        };
        let child = spawn::spawn(req).map_err(|e| e.to_string())?;
        drop((out_w, theirs, config_theirs, lifeline_r));
        tokio::task::spawn_local(output::forward(self.name.clone(), out_rx));
        let pid = child.pid().as_raw();
        if bridged {
            info!(
                "[{}] spawned bridge pid {pid} for image {}",
                self.name,
                cfg.docker.as_ref().map_or("", |d| &d.image)
            );
        } else {
            info!("[{}] spawned pid {pid}: {}", self.name, argv.join(" "));
        }
        self.proc = Some(Proc {
            child,
            control: Some(control),
            config: config_chan,
            _lifeline: lifeline,
            bridged,
        });
        self.push_config();
        Ok(Event::Spawned { pid, speaks })
    }

    fn bridge_argv(&self, cfg: &VassalConfig) -> Vec<String> {
        let exe =
            std::env::current_exe().map_or_else(|_| "/proc/self/exe".into(), |p| p.to_string_lossy().into_owned());
        let mut argv = vec![
            exe,
            "bridge".into(),
            "--name".into(),
            cfg.name.clone(),
            "--file".into(),
            cfg.path.to_string_lossy().into_owned(),
            "--vassals-dir".into(),
            self.opts.vassals_dir.to_string_lossy().into_owned(),
            "--instance".into(),
            self.opts.instance.clone(),
            "--run-dir".into(),
            self.opts.run_dir.to_string_lossy().into_owned(),
            "--wrapper".into(),
            self.opts.wrapper.to_string_lossy().into_owned(),
            "--stop-timeout".into(),
            docker_stop_secs(cfg, &self.opts).to_string(),
            "--handshake-timeout".into(),
            self.opts.docker_connect_timeout.to_string(),
        ];
        if self.opts.docker_debug {
            argv.push("--docker-debug".into());
        }
        for (k, v) in &self.opts.docker_labels {
            argv.push("--label".into());
            argv.push(format!("{k}={v}"));
        }
        argv
    }

    /// Sends the vassal file over the config channel, if the vassal has one.
    fn push_config(&mut self) {
        let Some(cfg) = self.config.clone() else { return };
        let Some(chan) = self.proc.as_ref().and_then(|p| p.config.as_ref()) else {
            debug!("[{}] asked for its config, but it has no config channel", self.name);
            return;
        };
        match crate::protocol::config_frame(cfg.text.as_bytes()) {
            Ok(frame) => {
                if let Err(e) = write_all_now(chan, &frame) {
                    warn!("[{}] cannot push its config: {e}", self.name);
                }
            }
            Err(e) => error!("[{}] cannot push its config: {e}", self.name),
        }
    }

    fn reconcile_sockets(&mut self, cfg: &VassalConfig) -> Result<(), String> {
        let mut old = std::mem::take(&mut self.sockets);
        let mut result = Ok(());
        for spec in &cfg.sockets {
            if let Some(i) = old.iter().position(|s| s.spec.addr == spec.addr) {
                let mut s = old.swap_remove(i);
                s.spec = spec.clone();
                self.sockets.push(s);
                continue;
            }
            let opts = SocketOptions {
                backlog: cfg.listen.unwrap_or(sockets::DEFAULT_BACKLOG),
                mode: cfg.chmod_socket.or(self.opts.chmod_socket),
                owner: cfg.chown_socket.as_ref().or(self.opts.chown_socket.as_ref()),
            };
            match sockets::bind(spec, opts) {
                Ok(s) => {
                    debug!("[{}] bound {}", self.name, spec.addr);
                    self.sockets.push(s);
                }
                Err(e) => {
                    result = Err(e.to_string());
                    break;
                }
            }
        }
        for s in old {
            debug!("[{}] releasing {}", self.name, s.spec.addr);
            s.release();
        }
        result
    }
}

/// Can the vassal's process keep all its sockets through an in-place reload (byte 1)? uWSGI 2.0 keeps
/// the fd-0 socket but forgets `LISTEN_FDS` ones when it re-execs, so a uWSGI vassal with more than
/// one emperor socket is reloaded by starting a new process instead.
fn survives_in_place_reload(cfg: &VassalConfig) -> bool {
    cfg.exec.is_some() || cfg.sockets.len() <= 1
}

/// The default LISTEN_FDNAMES entry: the vassal name without `.ini`, made safe for the ':'-separated list.
fn fd_name(vassal: &str) -> String {
    let stem = vassal.strip_suffix(".ini").unwrap_or(vassal);
    stem.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A `socketpair(AF_UNIX, SOCK_STREAM)`, both ends CLOEXEC; uWSGI's emperor uses the same kind.
fn channel() -> nix::Result<(OwnedFd, OwnedFd)> {
    socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
}

/// Writes a small frame on a non-blocking stream that has room for it (a fresh socket buffer holds
/// far more than a vassal file). A plain write(2): tokio's `try_write` reports WouldBlock on a stream
/// it has not polled yet, which would lose the first push right after spawn.
fn write_all_now(chan: &UnixStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match nix::unistd::write(chan, buf) {
            Ok(n) => buf = &buf[n..],
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Seconds `docker stop` gives a Docker vassal; the emperor itself waits 10 s longer for its bridge.
fn docker_stop_secs(cfg: &VassalConfig, opts: &EmperorOptions) -> u64 {
    cfg.stop_timeout.unwrap_or(opts.reload_mercy).as_secs_f64().ceil() as u64
}

fn control_stream(fd: OwnedFd) -> std::io::Result<UnixStream> {
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    std_stream.set_nonblocking(true)?;
    UnixStream::from_std(std_stream)
}

/// Waits for the process to exit; never completes when there is none.
async fn wait_child(child: Option<&mut Child>) -> std::io::Result<Exit> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

/// Reads whatever bytes the vassal sent; empty means EOF; never completes without a channel.
/// Cancel-safe.
async fn read_control(control: Option<&mut UnixStream>) -> Vec<u8> {
    let Some(control) = control else {
        return std::future::pending().await;
    };
    let mut buf = [0u8; 64];
    loop {
        if control.readable().await.is_err() {
            return Vec::new();
        }
        match control.try_read(&mut buf) {
            Ok(n) => return buf[..n].to_vec(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return Vec::new(),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
