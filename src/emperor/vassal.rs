//! One actor per vassal: a tokio task that owns the vassal's sockets, process and control channel.
//!
//! The actor is the thin, effectful shell around the pure state machine in `fsm.rs`: it turns the
//! world (commands from the main loop, bytes on the control channel, the process's exit, the
//! state's deadline) into [`Event`]s and carries out the [`Action`]s that come back. A failure here
//! (a socket that cannot be bound, a command that cannot be executed) is logged with the vassal's
//! name and becomes an event for this vassal only; it never reaches the emperor or another vassal.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, log, warn};
use nix::sys::signal::Signal;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::arrivals::{self, Arrivals};
use super::conns;
use super::fsm::{Action, Event, Fsm, Params, State};
use super::listening;
use super::output;
use super::prepare;
use super::sockets::{self, BoundSocket, SocketOptions};
use super::spawn::{self, Child, Exit, SpawnRequest};
use super::stats::{self, Track, VassalStats};
use crate::cli::EmperorOptions;
use crate::config::{ConfigError, VassalConfig};
use crate::protocol::{EmperorMsg, VassalMsg};

/// Extra time a bridge gets to stop and remove its container before the emperor kills it.
const BRIDGE_GRACE: Duration = Duration::from_secs(10);
/// How long the same reason for a bridge giving up stays quiet after it was logged.
const REPEAT_QUIET: Duration = Duration::from_secs(60);

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
    /// The stats server wants the vassal's state.
    Snapshot(tokio::sync::oneshot::Sender<super::stats::VassalStats>),
    /// `emperor restart|stop|start` from the control socket; answered with the reply line's text.
    Control(super::control::Op, tokio::sync::oneshot::Sender<Result<String, String>>),
}

/// An actor's state changed (its name, see [`State::name`]); the main loop keeps counts for systemd.
pub type StateReport = (String, &'static str);

/// The main loop's end of an actor.
#[derive(Debug)]
pub struct VassalHandle {
    pub tx: mpsc::UnboundedSender<Command>,
    /// Identifies the actor's task in the emperor's `JoinSet`, also when it panicked.
    pub task: tokio::task::Id,
}

/// Starts the actor for `name` in `set`; the task returns the name once it has released everything.
pub fn start(
    name: String,
    opts: Arc<EmperorOptions>,
    set: &mut JoinSet<String>,
    reports: mpsc::UnboundedSender<StateReport>,
    arrivals: Option<Arrivals>,
) -> VassalHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let params = params_for(&opts, None);
    let actor = Actor {
        log: output::Log::new(&name),
        name,
        finish_reason: "removed",
        last_verdict: None,
        opts,
        config: None,
        fsm: Fsm::new(params),
        sockets: Vec::new(),
        proc: None,
        watch: Vec::new(),
        arrivals,
        arrival: None,
        listen_check: None,
        listen_task: None,
        listen_polls: 0,
        prepare_gen: 0,
        prepare: None,
        prepared: None,
        prepare_tried: false,
        activation_pending: false,
        idle: None,
        freezer: None,
        previous: None,
        retiring: Vec::new(),
        retired: mpsc::unbounded_channel(),
        track: Track::default(),
        reports,
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
        on_demand: cfg.is_some_and(|c| c.on_demand),
        bridged: cfg.is_some_and(|c| c.docker.is_some()),
        idle_pause: cfg.is_some_and(|c| c.idle_action == crate::config::IdleAction::Pause),
        overlap: cfg.is_some_and(|c| c.reload_overlap),
        ready_delay: cfg
            .and_then(|c| c.ready_delay)
            .unwrap_or(crate::config::DEFAULT_READY_DELAY),
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
    /// It runs uWSGI or has sent a byte: it is stopped with byte 2 rather than a signal.
    speaks: bool,
}

#[derive(Debug)]
struct Actor {
    name: String,
    /// What the log says when the actor ends: its file went, or the emperor is stopping.
    finish_reason: &'static str,
    /// The last reason a bridge gave up with (ids blanked), and when it was logged at error level.
    last_verdict: Option<(String, Instant)>,
    opts: Arc<EmperorOptions>,
    /// The last config that parsed; a later broken edit does not replace it.
    config: Option<Arc<VassalConfig>>,
    fsm: Fsm,
    /// Bound once, kept across restarts and reloads, released on Finish.
    sockets: Vec<BoundSocket>,
    proc: Option<Proc>,
    /// Duplicates of the listening sockets registered for readiness, while the actor must learn that
    /// a connection is waiting: to start an on-demand vassal, to thaw a paused one, or to see
    /// activity between idle checks.
    watch: Vec<AsyncFd<OwnedFd>>,
    /// The emperor's reader of arrival signals (`arrivals.rs`); `None` if it could not start.
    arrivals: Option<Arrivals>,
    /// Arrival signals of a running vassal's listeners, between two idle checks: unlike `watch`,
    /// they also report connections the app accepted before the emperor looked.
    arrival: Option<arrivals::Watch>,
    /// When to look next whether the new instance of an overlapping reload waits for connections
    /// (`listening.rs`); only while one is pending and does not speak the protocol.
    listen_check: Option<Instant>,
    /// A look in progress, on the blocking pool: reading another process's /proc can block (its
    /// memory may be behind userfaultfd or FUSE), and this thread runs every vassal.
    listen_task: Option<tokio::task::JoinHandle<bool>>,
    /// Looks so far for the pending reload: every 25 ms for the first second, then every 100 ms.
    listen_polls: u32,
    /// Bumped when the file changes or a bridge starts: a creation ahead of time begun before is stale.
    prepare_gen: u64,
    /// Creating an on-demand Docker vassal's container ahead of time (`prepare.rs`), with the
    /// generation it was started in.
    prepare: Option<Creation>,
    /// The container created ahead of time and not yet handed to a bridge.
    prepared: Option<String>,
    /// A creation ran since the vassal entered `waiting` (it is not retried before the next time).
    prepare_tried: bool,
    /// A connection arrived while the container was being created: start once it is.
    activation_pending: bool,
    /// Idle detection of a running vassal with `idle` set.
    idle: Option<IdleCheck>,
    /// The last pause/resume still in flight, so the next one runs after it.
    freezer: Option<tokio::task::JoinHandle<()>>,
    /// The old process of an overlapping reload, still serving until the new one is ready.
    previous: Option<Proc>,
    /// Old processes being stopped in the background; the actor waits for them before it ends.
    retiring: Vec<tokio::task::JoinHandle<()>>,
    /// A retiring bridge has exited: the current bridge may take the container name (SIGUSR1).
    retired: (mpsc::UnboundedSender<bool>, mpsc::UnboundedReceiver<bool>),
    /// Times and outcomes for the stats document.
    track: Track,
    /// Where state changes are reported.
    reports: mpsc::UnboundedSender<StateReport>,
    /// Where the output of every instance goes (stdout or `logto`).
    log: output::Log,
}

/// When the vassal was last seen busy, and when to look again.
#[derive(Debug, Clone, Copy)]
struct IdleCheck {
    last_busy: Instant,
    next: Instant,
    /// The last look saw connections open (or the vassal was just started by one): when the next
    /// look sees none, they closed in between, so the idle countdown starts then, never earlier.
    was_open: bool,
}

/// What woke the actor.
enum Wake {
    Command(Option<Command>),
    Exited(std::io::Result<Exit>),
    Control(Vec<u8>),
    Timer,
    /// A connection is waiting on a watched socket.
    Readable,
    /// Time to count the vassal's connections.
    IdleCheck,
    /// The previous process of an overlapping reload exited on its own.
    PreviousExited,
    /// A retired process has exited (true: it was a bridge).
    Retired(bool),
    /// The creation of a container ahead of time (started in that generation) has finished.
    Prepared(u64, Result<Option<String>, String>),
    /// Time to look whether the new instance waits for connections.
    ListenCheck,
    /// A look has finished: whether the new instance waits for connections.
    Listened(bool),
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) -> String {
        self.observe();
        while self.fsm.state != State::Done {
            let deadline = self.fsm.deadline();
            let wake = {
                let (child, control) = match &mut self.proc {
                    Some(p) => (Some(&mut p.child), p.control.as_mut()),
                    None => (None, None),
                };
                let idle_at = self.idle.map(|i| i.next);
                let listen_at = self.listen_check;
                let previous = self.previous.as_mut().map(|p| &mut p.child);
                tokio::select! {
                    _ = wait_child(previous) => Wake::PreviousExited,
                    Some(bridged) = self.retired.1.recv() => Wake::Retired(bridged),
                    cmd = rx.recv() => Wake::Command(cmd),
                    res = wait_child(child) => Wake::Exited(res),
                    bytes = read_control(control) => Wake::Control(bytes),
                    _ = sleep_until(deadline), if deadline.is_some() => Wake::Timer,
                    _ = any_readable(&self.watch) => Wake::Readable,
                    _ = arrived(self.arrival.as_ref()) => Wake::Readable,
                    (generation, res) = join_prepare(&mut self.prepare) => Wake::Prepared(generation, res),
                    _ = sleep_until(listen_at), if listen_at.is_some() => Wake::ListenCheck,
                    seen = join_listen(&mut self.listen_task) => Wake::Listened(seen),
                    _ = sleep_until(idle_at), if idle_at.is_some() => Wake::IdleCheck,
                }
            };
            let events = match wake {
                Wake::Command(Some(cmd)) => self.command(cmd),
                // The main loop is gone: behave as on shutdown.
                Wake::Command(None) => vec![Event::Shutdown],
                Wake::Exited(res) => {
                    let requested = matches!(self.fsm.state, State::Stopping { .. });
                    self.track.exited(&res, requested);
                    let bridge = self.proc.take().filter(|p| p.bridged).map(|p| p.child.pid());
                    match res {
                        Ok(Exit::Code(c)) if bridge.is_some() && crate::exit::describe(c).is_some() => {
                            self.bridge_gave_up(bridge.map_or(0, |p| p.as_raw()), c);
                            if c == i32::from(crate::exit::BAD_CONFIG) {
                                vec![Event::Rejected]
                            } else {
                                vec![Event::Exited(Exit::Code(c))]
                            }
                        }
                        Ok(exit) => vec![Event::Exited(exit)],
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
                Wake::Control(bytes) => {
                    if let Some(p) = &mut self.proc {
                        p.speaks = true;
                    }
                    bytes.into_iter().map(|b| Event::Msg(VassalMsg::from(b))).collect()
                }
                Wake::Timer => vec![Event::Timer],
                Wake::Readable => {
                    self.watch.clear();
                    self.arrival = None;
                    match (&self.fsm.state, &mut self.idle) {
                        (State::Waiting, _) if self.prepare.is_some() => {
                            self.activation_pending = true;
                            vec![]
                        }
                        (State::Waiting | State::Paused(_), _) => vec![Event::Activated],
                        (_, Some(idle)) => {
                            // Unwatched until the next look, which counts it busy up to then: more
                            // connections may come and go meanwhile.
                            idle.last_busy = Instant::now();
                            idle.was_open = true;
                            vec![]
                        }
                        _ => vec![],
                    }
                }
                Wake::IdleCheck => self.idle_check(),
                Wake::ListenCheck => self.listen_check(),
                Wake::Listened(seen) => {
                    self.listen_task = None;
                    if seen {
                        debug!("[{}] the new instance waits for connections", self.name);
                        vec![Event::Listening]
                    } else {
                        self.listen_polls += 1;
                        let pause = if self.listen_polls < 40 {
                            LISTEN_POLL
                        } else {
                            LISTEN_POLL * 4
                        };
                        self.listen_check = Some(Instant::now() + pause);
                        vec![]
                    }
                }
                Wake::Prepared(generation, res) => {
                    self.prepare = None;
                    match res {
                        // Begun for an older file, or a bridge has started since: not ours to keep.
                        Ok(Some(_)) if generation != self.prepare_gen => self.prepare_tried = false,
                        Ok(Some(id)) => {
                            debug!(
                                "[{}] container {} created ahead of time",
                                self.name,
                                crate::bridge::short(&id)
                            );
                            self.prepared = Some(id);
                        }
                        Ok(None) => {}
                        Err(e) => debug!("[{}] cannot create the container ahead of time: {e}", self.name),
                    }
                    if std::mem::take(&mut self.activation_pending) && self.fsm.state == State::Waiting {
                        vec![Event::Activated]
                    } else {
                        vec![]
                    }
                }
                Wake::PreviousExited => {
                    warn!("[{}] the old instance exited during the reload", self.name);
                    self.previous = None;
                    vec![Event::PreviousExited]
                }
                Wake::Retired(bridged) => {
                    // The old container is gone: the new one may take the vassal's name.
                    if bridged && let Some(p) = self.proc.as_ref().filter(|p| p.bridged) {
                        p.child.signal(Signal::SIGUSR1);
                    }
                    vec![]
                }
            };
            for ev in events {
                self.feed(ev);
            }
            self.sync_watch();
            self.sync_prepare();
            self.sync_listen_check();
            self.observe();
        }
        // Every process has ended: whatever a creation made (or found) is no bridge's any more.
        if let Some((_, task)) = self.prepare.take()
            && let Ok(Ok(Some(id))) = task.await
        {
            self.prepared = Some(id);
        }
        if let Some(id) = self.prepared.take() {
            self.discard(id);
        }
        for task in self.retiring.drain(..) {
            let _ = task.await;
        }
        for s in self.sockets.drain(..) {
            s.release();
        }
        self.name
    }

    /// Keeps the socket watch and the idle check in line with the state: watch for a connection while
    /// waiting on demand or paused; check idleness while running with `idle` set; nothing otherwise.
    fn sync_watch(&mut self) {
        let on_demand = self.fsm.params.on_demand && self.config.is_some();
        let activation = matches!(self.fsm.state, State::Paused(_)) || (on_demand && self.fsm.state == State::Waiting);
        let idle = self.config.as_ref().and_then(|c| c.idle);
        let checking = idle.is_some() && matches!(self.fsm.state, State::Starting(_) | State::Running(_));
        if checking {
            if self.idle.is_none() {
                let now = Instant::now();
                self.idle = Some(IdleCheck {
                    last_busy: now,
                    next: now + idle_step(idle),
                    was_open: true,
                });
                self.arm_idle_watch();
            }
        } else {
            self.idle = None;
            self.arrival = None;
        }
        if activation && !self.activation_pending {
            if self.watch.is_empty() {
                self.arm_watch();
            }
        } else if !checking {
            self.watch.clear();
        }
    }

    /// Looks for the new instance of an overlapping reload waiting for connections while the old one
    /// still serves, unless it speaks the protocol (then it says when it is ready).
    fn sync_listen_check(&mut self) {
        // An explicit ready-delay is the user's word for when the app is ready: nothing is looked for.
        let pending = self.fsm.previous.is_some()
            && self.proc.is_some()
            && self.config.as_ref().is_some_and(|c| c.ready_delay.is_none())
            && self.fsm.state.instance().is_some_and(|i| !i.speaks);
        if !pending {
            // A look still running finishes on its own; its answer is dropped with the handle.
            self.listen_check = None;
            self.listen_task = None;
            self.listen_polls = 0;
        } else if self.listen_check.is_none() && self.listen_task.is_none() {
            self.listen_check = Some(Instant::now() + LISTEN_POLL);
        }
    }

    fn listen_check(&mut self) -> Vec<Event> {
        self.listen_check = None;
        let Some(p) = &self.proc else { return vec![] };
        // A container's processes: its init process (from the bridge's record, read with the rest
        // off this thread) and its descendants.
        let pid = p.child.pid().as_raw();
        let record = p
            .bridged
            .then(|| crate::bridge::info::path(&self.opts.run_dir, &self.opts.instance, pid));
        let listeners = listening::Listeners::of(self.sockets.iter().map(|s| s.fd()));
        self.listen_task = Some(tokio::task::spawn_blocking(move || {
            let root = match record {
                Some(r) => crate::bridge::info::Info::read(&r).map_or(0, |i| i32::try_from(i.init_pid).unwrap_or(0)),
                None => pid,
            };
            listening::waiting(root, &listeners)
        }));
        vec![]
    }

    /// Creates an on-demand Docker vassal's container ahead of time once it waits (`prepare.rs`).
    fn sync_prepare(&mut self) {
        let cfg = match &self.config {
            Some(c) if c.precreate && c.on_demand && c.docker.is_some() && self.fsm.state == State::Waiting => {
                c.clone()
            }
            _ => {
                self.prepare_tried = false;
                return;
            }
        };
        if self.prepare.is_some() || self.prepared.is_some() || self.prepare_tried {
            return;
        }
        self.prepare_tried = true;
        let names = self.socket_names();
        let opts = self.opts.clone();
        let generation = self.prepare_gen;
        self.prepare = Some((
            generation,
            tokio::task::spawn_local(async move {
                // A busy daemon must not hold back a connection waiting for this shortcut for long.
                tokio::time::timeout(prepare::TIMEOUT, prepare::prepare(&opts, &cfg, names))
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()))
            }),
        ));
    }

    /// Removes a container created ahead of time that no bridge will start, in the background.
    fn discard(&mut self, id: String) {
        let socket = self.opts.docker_daemon_socket.clone();
        let name = self.name.clone();
        self.retiring.push(tokio::task::spawn_local(async move {
            match prepare::discard(socket.as_deref(), &id).await {
                Ok(()) => debug!(
                    "[{name}] removed container {}, created ahead of time",
                    crate::bridge::short(&id)
                ),
                Err(e) => warn!("[{name}] cannot remove container {}: {e}", crate::bridge::short(&id)),
            }
        }));
    }

    /// The names the vassal's sockets get in `LISTEN_FDNAMES`, in fd order.
    fn socket_names(&self) -> Vec<String> {
        let default_name = fd_name(&self.name);
        self.sockets
            .iter()
            .map(|s| s.spec.name.clone().unwrap_or_else(|| default_name.clone()))
            .collect()
    }

    /// Watches a running vassal's sockets for the next connection: by arrival signals where they
    /// work, else by readiness (which misses connections the app accepts before the emperor looks).
    fn arm_idle_watch(&mut self) {
        self.watch.clear();
        self.arrival = None;
        if let Some(arrivals) = &self.arrivals {
            let fds: Vec<_> = self.sockets.iter().map(|s| s.fd()).collect();
            match arrivals.watch(&fds) {
                Ok(w) => {
                    self.arrival = Some(w);
                    return;
                }
                Err(e) => debug!("[{}] no arrival signals ({e}): watching readiness", self.name),
            }
        }
        self.arm_watch();
    }

    fn arm_watch(&mut self) {
        self.watch.clear();
        for s in &self.sockets {
            match s.fd().try_clone_to_owned().and_then(spawn::watch_readable) {
                Ok(w) => self.watch.push(w),
                Err(e) => warn!("[{}] cannot watch {}: {e}", self.name, s.spec.addr),
            }
        }
    }

    /// Counts the vassal's connections in the kernel; idle once none was open, and none arrived, for
    /// `idle` seconds.
    fn idle_check(&mut self) -> Vec<Event> {
        let (Some(check), Some(idle)) = (self.idle, self.config.as_ref().and_then(|c| c.idle)) else {
            return vec![];
        };
        let now = Instant::now();
        let specs: Vec<_> = self.sockets.iter().map(|s| &s.spec.addr).collect();
        let open = match conns::open_connections(&specs) {
            Ok(n) => n,
            Err(e) => {
                warn!("[{}] cannot count its connections: {e}", self.name);
                1
            }
        };
        let last_busy = if open > 0 || check.was_open {
            now
        } else {
            check.last_busy
        };
        if now.duration_since(last_busy) >= idle {
            debug!(
                "[{}] idle for {:.1}s",
                self.name,
                now.duration_since(last_busy).as_secs_f64()
            );
            self.idle = None;
            self.watch.clear();
            self.arrival = None;
            return vec![Event::Idle];
        }
        let next = (last_busy + idle).min(now + idle_step(Some(idle)));
        self.idle = Some(IdleCheck {
            last_busy,
            next,
            was_open: open > 0,
        });
        let armed = self.arrival.as_ref().is_some_and(|w| w.still_armed()) || !self.watch.is_empty();
        if !armed {
            self.arm_idle_watch();
        }
        vec![]
    }

    /// Stops a process that is no longer the vassal's current one, in the background: byte 2 to a
    /// speaker, SIGTERM to a bridge, the stop signal otherwise; its process group is killed when the
    /// stop timeout runs out.
    fn retire(&mut self, mut old: Proc) {
        let stop_timeout = self.fsm.params.stop_timeout;
        let stop_signal = self.fsm.params.stop_signal;
        let name = self.name.clone();
        let done = self.retired.0.clone();
        self.retiring.retain(|t| !t.is_finished());
        self.retiring.push(tokio::task::spawn_local(async move {
            // The whole Proc lives until the end: a bridge reads EOF on its lifeline as "the emperor is gone".
            let old = &mut old;
            match &old.control {
                Some(c) if old.speaks && !old.bridged => {
                    let _ = write_all_now(c, &[EmperorMsg::GracefulStop.byte()]);
                }
                _ => old
                    .child
                    .signal(if old.bridged { Signal::SIGTERM } else { stop_signal }),
            }
            let exit = match tokio::time::timeout(stop_timeout, old.child.wait()).await {
                Ok(r) => r,
                Err(_) => {
                    warn!(
                        "[{name}] the old instance did not stop within {:.1}s; killing it",
                        stop_timeout.as_secs_f64()
                    );
                    old.child.kill_group();
                    old.child.wait().await
                }
            };
            match exit {
                Ok(e) => info!("[{name}] the old instance (pid {}) exited {e}", old.child.pid()),
                Err(e) => warn!("[{name}] cannot wait for the old instance: {e}"),
            }
            let _ = done.send(old.bridged);
        }));
    }

    /// Accepts and closes whatever waits on the vassal's sockets (nobody will serve it soon).
    fn drain_queue(&self) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut closed = 0;
        for s in &self.sockets {
            for _ in 0..10_000 {
                let mut fds = [PollFd::new(s.fd(), PollFlags::POLLIN)];
                if !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0) {
                    break;
                }
                match nix::sys::socket::accept4(s.fd().as_raw_fd(), nix::sys::socket::SockFlag::SOCK_CLOEXEC) {
                    Ok(fd) => {
                        let _ = nix::unistd::close(fd);
                        closed += 1;
                    }
                    Err(_) => break,
                }
            }
        }
        if closed > 0 {
            warn!(
                "[{}] closed {closed} waiting connection(s): the vassal could not start",
                self.name
            );
        }
    }

    /// Freezes or thaws the vassal: `docker pause` for a container, SIGSTOP/SIGCONT of the process group
    /// otherwise. Docker calls run in order, one after the other.
    fn freeze(&mut self, pause: bool) {
        let Some(p) = &self.proc else { return };
        let docker_name = self
            .config
            .as_ref()
            .and_then(|c| c.docker.as_ref())
            .map(|d| d.container_name.clone());
        match docker_name {
            None => {
                let sig = if pause { Signal::SIGSTOP } else { Signal::SIGCONT };
                let _ = nix::sys::signal::killpg(p.child.pid(), sig);
            }
            Some(container) => {
                let prev = self.freezer.take();
                let name = self.name.clone();
                let socket = self.opts.docker_daemon_socket.clone();
                self.freezer = Some(tokio::task::spawn_local(async move {
                    if let Some(prev) = prev {
                        let _ = prev.await;
                    }
                    if let Err(e) = docker_freeze(socket.as_deref(), &container, pause).await {
                        warn!(
                            "[{name}] cannot {} container {container}: {e}",
                            if pause { "pause" } else { "unpause" }
                        );
                    }
                }));
            }
        }
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
                self.track.config_error = None;
                self.fsm.params = params_for(&self.opts, Some(&cfg));
                let restart = self
                    .config
                    .as_ref()
                    .is_none_or(|old| old.emperor_hash != cfg.emperor_hash);
                let first = self.config.is_none();
                // An on-demand vassal's sockets must exist before anything runs: they are what starts it.
                if cfg.on_demand && self.fsm.state.instance().is_none() {
                    if let Err(e) = self.reconcile_sockets(&cfg) {
                        error!("[{}] {e}", self.name);
                    }
                    info!("[{}] on demand: waiting for a connection", self.name);
                }
                self.log.configure(cfg.logto.as_deref(), cfg.log_maxsize);
                // Made for the old file. A Docker vassal's next creation ahead of time, or its bridge, starts it
                // if it still fits and replaces it otherwise (discarding it here could race a bridge spawned
                // for this very change); nothing else will, so it goes if the vassal is no Docker one now.
                if let Some(id) = self.prepared.take()
                    && cfg.docker.is_none()
                {
                    self.discard(id);
                }
                // A creation still running is for the old file: its result is dropped (`prepare_gen`).
                self.prepare_gen += 1;
                self.prepare_tried = false;
                self.config = Some(cfg);
                if first {
                    vec![Event::Start]
                } else {
                    vec![Event::Reload { restart }]
                }
            }
            Command::Update(Err(e)) => {
                self.track.config_error = Some(e.to_string());
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
            Command::Remove => {
                self.finish_reason = "removed (its file is gone)";
                vec![Event::Remove]
            }
            Command::Shutdown => {
                self.finish_reason = "done (the emperor is stopping)";
                vec![Event::Shutdown]
            }
            // A held vassal stays stopped through SIGHUP; only `emperor start` or its file releases it.
            Command::Reload if self.fsm.state == State::Held => vec![],
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
            Command::Snapshot(tx) => {
                let _ = tx.send(self.snapshot());
                vec![]
            }
            Command::Control(op, tx) => {
                let (reply, events) = self.control(op);
                let _ = tx.send(reply);
                events
            }
        }
    }

    /// `emperor restart|stop|start`: the reply, and the event that carries it out.
    fn control(&mut self, op: super::control::Op) -> (Result<String, String>, Vec<Event>) {
        use super::control::Op;
        let name = &self.name;
        let state = self.fsm.state.name();
        match op {
            _ if self.config.is_none() => (Err(format!("{name} has no valid config ({state})")), vec![]),
            Op::Restart => {
                info!("[{name}] restart requested on the control socket");
                (Ok(format!("restarting {name}")), vec![Event::Restart])
            }
            Op::Stop if self.fsm.state == State::Held => (Ok(format!("{name} is already stopped")), vec![]),
            Op::Stop => {
                info!("[{name}] stop requested on the control socket");
                (
                    Ok(format!(
                        "stopping {name}; it stays stopped until `emperor start` or its file changes"
                    )),
                    vec![Event::Hold],
                )
            }
            Op::Start if self.fsm.state == State::Held => {
                info!("[{name}] start requested on the control socket");
                (Ok(format!("starting {name}")), vec![Event::Release])
            }
            Op::Start
                if matches!(
                    self.fsm.state,
                    State::Stopping {
                        then: super::fsm::AfterStop::Hold,
                        ..
                    }
                ) =>
            {
                info!("[{name}] start requested on the control socket");
                (Ok(format!("starting {name} once it has stopped")), vec![Event::Release])
            }
            Op::Start => (Ok(format!("{name} is not stopped ({state})")), vec![]),
        }
    }

    /// Records what changed for the stats and reports a new state to the main loop.
    fn observe(&mut self) {
        if let Some(state) = self.track.observe(&self.fsm) {
            let _ = self.reports.send((self.name.clone(), state));
        }
    }

    fn snapshot(&self) -> VassalStats {
        let inst = self.fsm.state.instance();
        let cfg = self.config.as_deref();
        let last_mod = cfg
            .and_then(|c| std::fs::metadata(&c.path).ok())
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let on_demand = match cfg {
            Some(c) if c.on_demand => c.sockets.first().map(|s| s.addr.to_string()).unwrap_or_default(),
            _ => String::new(),
        };
        VassalStats {
            id: self.name.clone(),
            pid: inst.map_or(-1, |i| i.pid),
            loyal: inst.is_some_and(|i| i.loyal),
            ready: inst.is_some_and(|i| i.ready),
            accepting: inst.is_some_and(|i| i.accepting),
            last_heartbeat: inst.and_then(|i| i.last_heartbeat).map_or(0, stats::instant_to_unix),
            last_mod,
            on_demand,
            respawns: self.fsm.restarts,
            state: self.fsm.state.name(),
            kind: if cfg.is_some_and(|c| c.docker.is_some()) {
                "docker"
            } else {
                "process"
            },
            container: cfg.and_then(|c| c.docker.as_ref()).map(|d| d.container_name.clone()),
            sockets: self
                .sockets
                .iter()
                .map(|s| stats::SocketStat::of(&s.spec, s.fd()))
                .collect(),
            bridge_info: inst
                .filter(|_| cfg.is_some_and(|c| c.docker.is_some()))
                .map(|i| crate::bridge::info::path(&self.opts.run_dir, &self.opts.instance, i.pid)),
            attempts: self.fsm.attempts,
            throttle: stats::throttle_of(&self.fsm),
            error: match &self.fsm.state {
                State::Invalid { error } => Some(error.clone()),
                _ => self.track.config_error.clone(),
            },
            track: self.track.clone(),
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
                    self.track.spawn_failed(&e);
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
            Action::DrainQueue => {
                self.drain_queue();
                None
            }
            Action::Pause => {
                self.freeze(true);
                None
            }
            Action::Overlap => {
                self.previous = self.proc.take();
                self.act(Action::Spawn)
            }
            Action::RetirePrevious => {
                if let Some(old) = self.previous.take() {
                    self.retire(old);
                }
                None
            }
            Action::RestorePrevious => {
                if let Some(new) = self.proc.take() {
                    new.child.kill_group();
                    self.retire(new);
                }
                self.proc = self.previous.take();
                None
            }
            Action::Resume => {
                self.freeze(false);
                None
            }
            Action::Finish => {
                info!("[{}] {}", self.name, self.finish_reason);
                None
            }
            Action::Log(level, msg) => {
                log!(level, "[{}] {msg}", self.name);
                None
            }
        }
    }

    /// Logs why a bridge gave up (its verdict file, else what its exit code means). The same reason within
    /// [`REPEAT_QUIET`] is logged at debug level only: a missing image or a daemon without a default bridge
    /// fails every retry the same way, and one line saying what to change is what helps.
    fn bridge_gave_up(&mut self, bridge_pid: i32, code: i32) {
        let path = crate::bridge::info::verdict_path(&self.opts.run_dir, &self.opts.instance, bridge_pid);
        let reason = crate::bridge::info::take_verdict(&path)
            .or_else(|| crate::exit::describe(code).map(String::from))
            .unwrap_or_default();
        let now = Instant::now();
        let key = without_ids(&reason);
        match &self.last_verdict {
            Some((last, at)) if *last == key && now.duration_since(*at) < REPEAT_QUIET => {
                debug!("[{}] bridge: {reason} (again)", self.name);
            }
            _ => {
                let retry = if code == i32::from(crate::exit::BAD_CONFIG) {
                    "; not retried until the file changes"
                } else {
                    "; retrying (this line repeats at most once a minute)"
                };
                error!("[{}] bridge: {}{retry}", self.name, crate::config::printable(&reason));
                self.last_verdict = Some((key, now));
            }
        }
    }

    fn send(&mut self, msg: EmperorMsg) {
        let Some(control) = self.proc.as_mut().and_then(|p| p.control.as_mut()) else {
            return;
        };
        if let Err(e) = write_all_now(control, &[msg.byte()]) {
            debug!("[{}] cannot send {msg:?}: {e}", self.name);
        }
    }

    /// Binds what is missing, releases what is no longer declared, then forks the vassal (or, for a
    /// Docker vassal, its bridge).
    fn spawn(&mut self) -> Result<Event, String> {
        let forked_at = Instant::now();
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
        // The bridge starts the container created ahead of time, or replaces it; a creation still
        // running is stopped and its result dropped, so it cannot take the bridge's container for a
        // stale one of its own.
        self.prepared = None;
        self.prepare_gen += 1;
        if let Some((_, task)) = self.prepare.take() {
            task.abort();
        }
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
            // A bridge is this very binary, also after it was replaced on disk.
            program: bridged.then_some(std::path::Path::new("/proc/self/exe")),
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
        self.log.reopen();
        tokio::task::spawn_local(output::forward(self.log.clone(), out_rx));
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
            speaks,
        });
        self.push_config();
        self.track.spawned(pid, forked_at);
        Ok(Event::Spawned { pid, speaks })
    }

    fn bridge_argv(&self, cfg: &VassalConfig) -> Vec<String> {
        // argv[0] is what `ps` shows; the program itself is /proc/self/exe (see `spawn`), which still
        // works after the binary was replaced on disk (an upgrade in place, a rebuild).
        let exe = std::env::current_exe().map_or_else(|_| "emperor".into(), |p| p.to_string_lossy().into_owned());
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
        if self.previous.as_ref().is_some_and(|p| p.bridged) {
            // The old container still holds the vassal's name.
            argv.push("--overlap".into());
        }
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
        let before = old.len();
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
                    // Before any app has the socket: see arrivals.rs for why only now.
                    if cfg.idle.is_some()
                        && self.arrivals.is_some()
                        && let Err(e) = arrivals::prepare(s.fd())
                    {
                        warn!("[{}] {}: cannot turn on arrival signals: {e}", self.name, spec.addr);
                    }
                    self.sockets.push(s);
                }
                Err(e) => {
                    result = Err(e.to_string());
                    break;
                }
            }
        }
        let changed = !old.is_empty() || self.sockets.len() != before;
        for s in old {
            debug!("[{}] releasing {}", self.name, s.spec.addr);
            s.release();
        }
        if changed {
            // The watches hold duplicates of the old set (which would keep a released listener open
            // and miss the new one's arrivals): start over on the current set.
            self.watch.clear();
            self.arrival = None;
            if self.idle.is_some() {
                self.arm_idle_watch();
            }
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

/// How often a pending overlapping reload looks whether the new instance waits for connections.
/// `reason` with container ids (runs of 12 or more hex digits) blanked: each attempt has a new container, and the
/// same reason with another id is still the same reason.
fn without_ids(reason: &str) -> String {
    reason
        .split(' ')
        .map(|w| {
            let hex = w.chars().take_while(char::is_ascii_hexdigit).count();
            if hex >= 12 { "<id>" } else { w }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

const LISTEN_POLL: Duration = Duration::from_millis(25);

/// How often an idle check looks again while the vassal is busy: a quarter of `idle`, 0.25–5 s.
fn idle_step(idle: Option<Duration>) -> Duration {
    (idle.unwrap_or(Duration::from_secs(20)) / 4).clamp(Duration::from_millis(250), Duration::from_secs(5))
}

/// The answer of the look in progress; never, without one.
async fn join_listen(task: &mut Option<tokio::task::JoinHandle<bool>>) -> bool {
    match task {
        Some(t) => t.await.unwrap_or(false),
        None => std::future::pending().await,
    }
}

/// A creation ahead of time: the generation it began in, and its task (the container id, if any).
type Creation = (u64, tokio::task::JoinHandle<Result<Option<String>, String>>);

/// The outcome of the running creation ahead of time; never, without one.
async fn join_prepare(task: &mut Option<Creation>) -> (u64, Result<Option<String>, String>) {
    match task {
        Some((generation, t)) => (*generation, t.await.unwrap_or_else(|e| Err(e.to_string()))),
        None => std::future::pending().await,
    }
}

/// Completes when a watched listener reports an arrival; never, without a watch.
async fn arrived(watch: Option<&arrivals::Watch>) {
    match watch {
        Some(w) => w.arrived().await,
        None => std::future::pending().await,
    }
}

/// Completes when a connection waits on any watched socket; never, without one.
async fn any_readable(watch: &[AsyncFd<OwnedFd>]) {
    if watch.is_empty() {
        return std::future::pending().await;
    }
    let futs = watch.iter().map(|w| Box::pin(w.readable()));
    let _ = futures_util::future::select_all(futs).await;
}

async fn docker_freeze(socket: Option<&std::path::Path>, container: &str, pause: bool) -> Result<(), String> {
    let docker = prepare::client(socket)?;
    let r = if pause {
        docker.pause_container(container).await
    } else {
        docker.unpause_container(container).await
    };
    r.map_err(|e| e.to_string())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
