//! One actor per vassal: a tokio task that owns the vassal's sockets, instances and control channel.
//!
//! The actor is the thin, effectful driver around the pure state machine in `fsm/`: it turns the
//! world (commands from the main loop, bytes on the control channel, an instance's exit, the state's
//! deadline) into [`Event`]s and carries out the [`Action`]s that come back. A failure here (a socket
//! that cannot be bound, a command that cannot be executed) is logged with the vassal's name and
//! becomes an event for this vassal only; it never reaches the emperor or another vassal.
//!
//! Beside the FSM's state, four small components keep state of their own. Each is synced from the
//! FSM's state after every wake-up, and each can wake the actor:
//!
//! | component | file | state | active while | wakes the actor with |
//! |---|---|---|---|---|
//! | connection watch | `watch.rs` | readiness watches, arrival signals, `IdleCheck` | `Waiting` on demand, `Paused` (activation); `Starting`/`Running` with `idle` (idle looks; a prewarmed instance not ready yet counts busy) | `Activated` (also for a prewarmed instance not ready yet); `Idle` after a look |
//! | readiness looks | `ready.rs` | next look, look in flight, count | an overlapping reload is pending or a prewarmed instance is not ready yet, the instance is silent and no `ready-delay` is set | `Listening` |
//! | freezer | `freeze.rs` | Docker pause/unpause in flight, a pause to confirm | a pause was asked for | once it took effect: `Activated` if a connection is open or queued after all |
//! | creation ahead of time | `precreate.rs` | generation, creation in flight, ready container, tried, activation pending | `Waiting` on demand with `docker-image` and `docker-precreate` | `Activated` once a creation a connection waited for ends |
//! | retiring instances | `retire.rs` | background stops | an old instance is stopping (overlap, rollback) | SIGUSR1 to the bridge when the old container's name is free |
//! | replicas | `replicas.rs` | instances 1.. of `replicas`, their supervisors, the scaling count | the vassal has an instance (not prewarmed, not paused) or is restarting one | a supervisor's report; a look at the accept queue or a throttled start is due |
//!
//! How instances start is behind the [`launch::Launcher`] seam, so the actor's timing is tested with a
//! fake launcher and paused time (tests below).

mod error;
mod freeze;
mod launch;
mod messages;
mod precreate;
mod ready;
mod replicas;
mod report;
mod retire;
mod watch;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, log, warn};
use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

pub use messages::{Command, StateReport, VassalHandle};
pub use replicas::ReplicaStat;

use super::arrivals::{self, Arrivals};
use super::conns;
use super::fsm::{Action, AfterStop, Event, Fsm, Params, State};
use super::listening;
use super::output;
use super::prepare;
use super::sockets::{self, BoundSocket, SocketOptions};
use super::spawn::Exit;
use super::stats::Track;
use super::wait::sleep_until;
use crate::cli::EmperorOptions;
use crate::config::VassalConfig;
use crate::protocol::{EmperorMsg, VassalMsg};
use error::VassalError;
use launch::{Launcher, Proc, read_control, wait_child, write_all_now};

/// Extra time a bridge gets to stop and remove its container before the emperor kills it.
const BRIDGE_GRACE: Duration = Duration::from_secs(10);
/// How long the same reason for a bridge giving up stays quiet after it was logged.
const REPEAT_QUIET: Duration = Duration::from_secs(60);

/// Starts the actor for `name` in `set`; the task returns the name once it has released everything.
pub fn start(
    name: String,
    opts: Arc<EmperorOptions>,
    set: &mut JoinSet<String>,
    reports: mpsc::UnboundedSender<StateReport>,
    arrivals: Option<Arrivals>,
) -> VassalHandle {
    start_with(name, opts, set, reports, arrivals, Box::new(launch::System))
}

fn start_with(
    name: String,
    opts: Arc<EmperorOptions>,
    set: &mut JoinSet<String>,
    reports: mpsc::UnboundedSender<StateReport>,
    arrivals: Option<Arrivals>,
    launcher: Box<dyn Launcher>,
) -> VassalHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let params = params_for(&opts, None);
    let actor = Actor {
        replicas: replicas::Replicas::new(&name),
        log: output::Log::new(&name),
        watch: watch::Watch::new(&name, arrivals),
        name,
        finish_reason: "removed",
        last_verdict: None,
        opts,
        config: None,
        fsm: Fsm::new(params),
        sockets: Vec::new(),
        proc: None,
        previous: None,
        launcher,
        ready: ready::ReadyLook::default(),
        precreate: precreate::Precreate::default(),
        freezer: freeze::Freezer::default(),
        retiring: retire::Retiring::default(),
        builds: Default::default(),
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
        prewarm: cfg.is_some_and(|c| c.prewarm),
        overlap: cfg.is_some_and(|c| c.reload_overlap),
        ready_delay: cfg
            .and_then(|c| c.ready_delay)
            .unwrap_or(crate::config::DEFAULT_READY_DELAY),
    }
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
    /// The current instance.
    proc: Option<Proc>,
    /// The old instance of an overlapping reload, still serving until the new one is ready.
    previous: Option<Proc>,
    launcher: Box<dyn Launcher>,
    watch: watch::Watch,
    ready: ready::ReadyLook,
    precreate: precreate::Precreate,
    /// Pauses and resumes, in order, and the confirmation that a pause took effect.
    freezer: freeze::Freezer,
    retiring: retire::Retiring,
    /// `docker-build`: the image of a new config, built before the config applies (`emperor/build.rs`).
    builds: super::build::Builds,
    /// Instances 1.. of a vassal with `replicas`.
    replicas: replicas::Replicas,
    /// Times and outcomes for the stats document.
    track: Track,
    /// Where state changes are reported.
    reports: mpsc::UnboundedSender<StateReport>,
    /// Where the output of every instance goes (stdout or `logto`).
    log: output::Log,
}

/// What woke the actor.
enum Wake {
    Command(Option<Command>),
    Exited(std::io::Result<Exit>),
    Control(Vec<u8>),
    Timer,
    /// A connection arrived or waits on a watched socket.
    Seen,
    /// Time to count the vassal's connections.
    IdleCheck,
    /// The previous instance of an overlapping reload exited on its own.
    PreviousExited,
    /// A retired instance has exited (true: it was a bridge).
    Retired(bool),
    /// The creation of a container ahead of time (started in that generation) has finished.
    Prepared(u64, precreate::Outcome),
    /// Time to look whether the new instance waits for connections.
    ListenCheck,
    /// A look has finished: whether the new instance waits for connections.
    Listened(bool),
    /// A pause has taken effect.
    Frozen,
    /// A replica's supervisor reported.
    Replica(replicas::Report),
    /// A look at the accept queue, or a throttled replica's start, is due.
    Replicas,
    /// A build or a prune of older images ended, or a prune is due.
    Build(super::build::Woke),
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) -> String {
        self.observe();
        while *self.fsm.state() != State::Done {
            let wake = self.next_wake(&mut rx).await;
            let events = self.on_wake(wake);
            for ev in events {
                self.feed(ev);
            }
            self.sync();
            self.observe();
        }
        // Every instance has ended: whatever a creation made (or found) is no bridge's any more.
        if let Some(id) = self.precreate.leftover().await {
            self.discard(id);
        }
        self.replicas.finish().await;
        self.retiring.finish().await;
        // A vassal whose file is gone takes its built images along (a stopping emperor keeps them for its next start).
        if self.finish_reason.starts_with("removed (")
            && let Some(cfg) = self.config.clone()
        {
            self.builds.removed(&self.name, &cfg, &self.opts).await;
        }
        for s in self.sockets.drain(..) {
            s.release();
        }
        self.name
    }

    async fn next_wake(&mut self, rx: &mut mpsc::UnboundedReceiver<Command>) -> Wake {
        let deadline = self.fsm.deadline();
        let (child, control) = match &mut self.proc {
            Some(p) => (Some(&mut p.child), p.control.as_mut()),
            None => (None, None),
        };
        let idle_at = self.watch.check.map(|i| i.next);
        let listen_at = self.ready.due();
        let previous = self.previous.as_mut().map(|p| &mut p.child);
        let replicas_at = self.replicas.deadline();
        tokio::select! {
            _ = wait_child(previous) => Wake::PreviousExited,
            bridged = self.retiring.exited() => Wake::Retired(bridged),
            cmd = rx.recv() => Wake::Command(cmd),
            res = wait_child(child) => Wake::Exited(res),
            bytes = read_control(control) => Wake::Control(bytes),
            _ = sleep_until(deadline) => Wake::Timer,
            _ = self.watch.seen() => Wake::Seen,
            (generation, res) = self.precreate.outcome() => Wake::Prepared(generation, res),
            _ = sleep_until(listen_at) => Wake::ListenCheck,
            seen = self.ready.answer() => Wake::Listened(seen),
            _ = sleep_until(idle_at) => Wake::IdleCheck,
            _ = self.freezer.frozen() => Wake::Frozen,
            report = self.replicas.report() => Wake::Replica(report),
            _ = sleep_until(replicas_at) => Wake::Replicas,
            woke = self.builds.woke() => Wake::Build(woke),
        }
    }

    fn on_wake(&mut self, wake: Wake) -> Vec<Event> {
        let events = self.on_wake_inner(wake);
        // Whatever reloads the vassal (its file, SIGHUP, `emperor restart`) replaces its other replicas too.
        if events
            .iter()
            .any(|e| matches!(e, Event::Reload { .. } | Event::Restart))
        {
            self.replicas.reload();
        }
        events
    }

    fn on_wake_inner(&mut self, wake: Wake) -> Vec<Event> {
        match wake {
            Wake::Command(Some(cmd)) => self.command(cmd),
            // The main loop is gone: behave as on shutdown.
            Wake::Command(None) => vec![Event::Shutdown],
            Wake::Exited(res) => self.exited(res),
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
            Wake::Replica(report) => {
                // A replica's bridge that gave up left its reason, as replica 0's does (usually the same image and
                // daemon, so replica 0's error line says it too); the file goes.
                if let replicas::Report::Exited { k, pid, .. } = &report
                    && self.config.as_ref().is_some_and(|c| c.docker.is_some())
                {
                    let path = crate::docker::record::verdict_path(&self.opts.run_dir, &self.opts.instance, *pid);
                    if let Some(reason) = crate::docker::record::take_verdict(&path) {
                        info!("[{}#{k}] bridge: {}", self.name, crate::config::printable(&reason));
                    }
                }
                self.replicas.on_report(report, self.fsm.params(), now());
                vec![]
            }
            Wake::Replicas => vec![],
            Wake::Build(woke) => match self.builds.on(&self.name, woke) {
                Some(Ok(cfg)) => {
                    self.builds.applied(&cfg, &self.opts);
                    self.update(cfg)
                }
                Some(Err(e)) => self.config_failed(&e),
                None => vec![],
            },
            Wake::Seen => self.seen(),
            Wake::Frozen => self.frozen(),
            Wake::IdleCheck => self.idle_check(),
            Wake::ListenCheck => self.listen_check(),
            Wake::Listened(seen) => {
                if self.ready.answered(seen, now()) {
                    debug!("[{}] the new instance waits for connections", self.name);
                    vec![Event::Listening]
                } else {
                    vec![]
                }
            }
            Wake::Prepared(generation, res) => {
                let (waited, kept) = self.precreate.finished(generation, res);
                match kept {
                    Some(Ok(id)) => debug!(
                        "[{}] container {} created ahead of time",
                        self.name,
                        crate::docker::short(&id)
                    ),
                    Some(Err(e)) => debug!("[{}] cannot create the container ahead of time: {e}", self.name),
                    None => {}
                }
                if waited && *self.fsm.state() == State::Waiting {
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
        }
    }

    fn exited(&mut self, res: std::io::Result<Exit>) -> Vec<Event> {
        if let Ok(Exit::Signal(sig)) = &res
            && self.rebridge(*sig)
        {
            return vec![];
        }
        let requested = matches!(self.fsm.state(), State::Stopping { .. });
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

    /// The bridge of a running Docker vassal died by a signal (`kill -9`, a crash) after it handed the container
    /// its sockets: the container may well run on. A new bridge carries on with it (the instance, its control
    /// channel and its sockets stay as they are); if the container is gone, that bridge exits and the vassal
    /// restarts as after any death. Returns whether a new bridge was started.
    fn rebridge(&mut self, sig: Signal) -> bool {
        let Some(old) = self.proc.as_ref().filter(|p| p.bridged).map(|p| p.child.pid().as_raw()) else {
            return false;
        };
        let record = crate::docker::record::path(&self.opts.run_dir, &self.opts.instance, old);
        let Some(container) = crate::docker::record::Info::read(&record).filter(|i| i.handover_ms.is_some()) else {
            return false;
        };
        let Some(cfg) = self.config.clone() else { return false };
        let _ = std::fs::remove_file(&record);
        // It was being stopped anyway: the container goes, without a bridge.
        if matches!(self.fsm.state(), State::Stopping { .. }) {
            self.discard_container(container.id, true);
            return false;
        }
        if !matches!(
            self.fsm.state(),
            State::Starting(_) | State::Running(_) | State::Reloading { .. } | State::Paused(_)
        ) {
            return false;
        }
        warn!(
            "[{}] bridge pid {old} died by signal {}; its container {} is carried on by a new bridge",
            self.name,
            sig.as_str(),
            crate::docker::short(&container.id)
        );
        let adopted = self.launcher.adopt(
            launch::Launch {
                name: &self.name,
                cfg: &cfg,
                opts: &self.opts,
                sockets: &self.sockets,
                overlap: false,
                log: &self.first_log(&cfg),
                replica: None,
            },
            &container.id,
        );
        match adopted {
            Ok((child, lifeline)) => {
                let new = child.pid().as_raw();
                if let Some(p) = self.proc.as_mut() {
                    p.child = child;
                    p._lifeline = Some(lifeline);
                }
                self.fsm.rebridged(old, new)
            }
            Err(e) => {
                warn!(
                    "[{}] cannot start a bridge for container {}: {e}",
                    self.name,
                    crate::docker::short(&container.id)
                );
                false
            }
        }
    }

    /// A connection arrived or waits on a watched socket.
    fn seen(&mut self) -> Vec<Event> {
        self.watch.disarm();
        match self.fsm.state() {
            State::Waiting if self.precreate.running() => {
                self.precreate.activation_pending = true;
                vec![]
            }
            State::Waiting | State::Paused(_) => vec![Event::Activated],
            // A prewarmed instance that is not frozen yet is not to be: it serves.
            st if st.instance().is_some_and(|i| i.prewarm) => {
                self.watch.busy_now();
                vec![Event::Activated]
            }
            _ => {
                self.watch.busy_now();
                vec![]
            }
        }
    }

    /// A pause has taken effect: a connection that came between the decision and the freeze (an app in
    /// `accept` takes it at once) thaws the instance again, or its client would wait for the next one.
    fn frozen(&mut self) -> Vec<Event> {
        if !matches!(self.fsm.state(), State::Paused(_)) {
            return vec![];
        }
        match self.open_connections() {
            0 => vec![],
            n => {
                info!("[{}] {n} connection(s) came as it was paused: resuming", self.name);
                vec![Event::Activated]
            }
        }
    }

    /// How many connections are open or queued on the vassal's sockets; an error counts as one (busy).
    fn open_connections(&self) -> usize {
        let specs: Vec<_> = self.sockets.iter().map(|s| &s.spec.addr).collect();
        conns::open_connections(&specs).unwrap_or_else(|e| {
            warn!("[{}] cannot count its connections: {e}", self.name);
            1
        })
    }

    /// Keeps the components in line with the FSM's state after every wake-up.
    fn sync(&mut self) {
        let cfg = self.config.clone();
        let state = self.fsm.state();
        // Watch for a connection while waiting on demand or paused; look for idleness while running with
        // `idle` set.
        let on_demand = self.fsm.params().on_demand && cfg.is_some();
        let activation = matches!(state, State::Paused(_)) || (on_demand && *state == State::Waiting);
        let running = matches!(state, State::Starting(_) | State::Running(_));
        let idle = cfg.as_ref().and_then(|c| c.idle).filter(|_| running);
        self.watch
            .sync(activation && !self.precreate.activation_pending, idle, &self.sockets);

        // Create an on-demand Docker vassal's container ahead of time once it waits.
        let precreate = cfg
            .as_ref()
            .filter(|c| c.precreate && c.on_demand && c.docker.is_some() && *self.fsm.state() == State::Waiting);
        if self.precreate.should_start(precreate.is_some())
            && let Some(cfg) = precreate.cloned()
        {
            let names = self.socket_names();
            let opts = self.opts.clone();
            self.precreate.start(async move {
                // A busy daemon must not hold back a connection waiting for this shortcut for long.
                tokio::time::timeout(prepare::TIMEOUT, prepare::prepare(&opts, &cfg, names))
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()))
            });
        }

        // Look for the new instance of an overlapping reload, or a prewarmed one, waiting for connections,
        // unless it speaks the protocol (then it says when it is ready) or an explicit ready-delay is the
        // user's word for it.
        let inst = self.fsm.state().instance();
        let pending = (self.fsm.previous().is_some() || inst.is_some_and(|i| i.prewarm))
            && self.proc.is_some()
            && cfg.as_ref().is_some_and(|c| c.ready_delay.is_none())
            && inst.is_some_and(|i| !i.speaks);
        self.ready.sync(pending, now());
        // Older built images go once the vassal serves from the new one alone (or waits on demand).
        let state = self.fsm.state();
        let serving = self.fsm.previous().is_none()
            && (matches!(state, State::Running(_)) || (*state == State::Waiting && self.fsm.params().on_demand));
        self.builds.sync(serving);
        self.sync_replicas();
    }

    /// Starts, stops, replaces and scales instances 1.. of a vassal with `replicas`: they run while the vassal
    /// has an instance that serves or is on its way (not a prewarmed one, not paused, held or stopping for good).
    fn sync_replicas(&mut self) {
        let Some(cfg) = self.config.clone() else { return };
        let state = self.fsm.state();
        let active = match state {
            _ if state.instance().is_some_and(|i| i.prewarm) => false,
            State::Starting(_) | State::Running(_) | State::Reloading { .. } | State::Throttled { .. } => true,
            State::Stopping {
                then: AfterStop::Restart,
                ..
            } => true,
            State::Waiting => self.fsm.previous().is_some() || !self.fsm.params().on_demand,
            _ => false,
        };
        let serving = matches!(state, State::Running(_)) && self.fsm.previous().is_none();
        let params = self.fsm.params().clone();
        self.replicas.sync(
            replicas::Want {
                cfg: &cfg,
                active,
                serving,
                sockets: &self.sockets,
            },
            replicas::Start {
                launcher: self.launcher.as_mut(),
                opts: &self.opts,
                log: &self.log,
                params: &params,
            },
            now(),
        );
    }

    /// Starts a look, on the blocking pool, whether the new instance waits for connections.
    fn listen_check(&mut self) -> Vec<Event> {
        let Some(p) = &self.proc else {
            self.ready.skip();
            return vec![];
        };
        // A container's processes: its init process (from the bridge's record, read with the rest
        // off this thread) and its descendants.
        let pid = p.child.pid().as_raw();
        let record = p
            .bridged
            .then(|| crate::docker::record::path(&self.opts.run_dir, &self.opts.instance, pid));
        let listeners = listening::Listeners::of(self.sockets.iter().map(|s| s.fd()));
        self.ready.started(tokio::task::spawn_blocking(move || {
            let root = match record {
                Some(r) => crate::docker::record::Info::read(&r).map_or(0, |i| i32::try_from(i.init_pid).unwrap_or(0)),
                None => pid,
            };
            listening::waiting(root, &listeners)
        }));
        vec![]
    }

    /// Counts the vassal's connections in the kernel; idle once none was open, and none arrived, for
    /// `idle` seconds.
    fn idle_check(&mut self) -> Vec<Event> {
        let Some(idle) = self.config.as_ref().and_then(|c| c.idle) else {
            return vec![];
        };
        // A prewarmed instance still starting counts as busy: frozen mid-start by a short `idle`, its first
        // client would wait for the rest of its start. It is paused once ready instead.
        let open = match self.fsm.state().instance() {
            Some(i) if i.prewarm => 1,
            _ => self.open_connections(),
        };
        if self.watch.look(idle, open, &self.sockets) {
            vec![Event::Idle]
        } else {
            vec![]
        }
    }

    /// Removes a container created ahead of time that no bridge will start, in the background.
    fn discard(&mut self, id: String) {
        self.discard_container(id, false);
    }

    /// Removes a container in the background: one created ahead of time that never started, or (`running`)
    /// the container of a stopping vassal whose bridge died.
    fn discard_container(&mut self, id: String, running: bool) {
        let socket = self.opts.docker_daemon_socket.clone();
        let name = self.name.clone();
        self.retiring.push(tokio::task::spawn_local(async move {
            match prepare::discard(socket.as_deref(), &id, running).await {
                Ok(()) => debug!("[{name}] removed container {}", crate::docker::short(&id)),
                Err(e) => warn!("[{name}] cannot remove container {}: {e}", crate::docker::short(&id)),
            }
        }));
    }

    /// The names the vassal's sockets get in `LISTEN_FDNAMES`, in fd order.
    fn socket_names(&self) -> Vec<String> {
        let default_name = launch::fd_name(&self.name);
        self.sockets
            .iter()
            .map(|s| s.spec.name.clone().unwrap_or_else(|| default_name.clone()))
            .collect()
    }

    /// Stops an instance that is no longer the vassal's current one, in the background.
    fn retire(&mut self, old: Proc) {
        let (timeout, signal) = (self.fsm.params().stop_timeout, self.fsm.params().stop_signal);
        self.retiring.retire(&self.name, old, timeout, signal);
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
        let target = match self.config.as_ref().and_then(|c| c.docker.as_ref()) {
            None => freeze::Target::Group(p.child.as_ref()),
            Some(d) => freeze::Target::Container {
                daemon: self.opts.docker_daemon_socket.clone(),
                container: d.container_name.clone(),
            },
        };
        self.freezer.set(&self.name, target, pause);
    }

    /// Feeds an event and runs the resulting actions, which may produce further events (a spawn's outcome).
    fn feed(&mut self, ev: Event) {
        let mut queue = vec![ev];
        while let Some(ev) = queue.pop() {
            for act in self.fsm.on_event(ev, now()) {
                if let Some(next) = self.act(act) {
                    queue.push(next);
                }
            }
        }
    }

    fn command(&mut self, cmd: Command) -> Vec<Event> {
        match cmd {
            // Its image first: the config applies once the build is done (`emperor/build.rs`).
            Command::Update(Ok(cfg)) if super::build::wanted(&cfg) => {
                self.configure_log(&cfg);
                self.builds.start(&self.name, cfg, &self.opts, self.log.clone());
                vec![]
            }
            Command::Update(Ok(cfg)) => {
                self.builds.cancel();
                if let Some(old) = self.config.clone() {
                    self.builds.unbuilt(&old, &self.opts);
                }
                self.update(cfg)
            }
            Command::Update(Err(e)) => {
                self.builds.cancel();
                self.config_failed(&e)
            }
            Command::Remove => {
                self.finish_reason = if self.opts.pg.is_some() {
                    "removed (its row is gone, or placed on another host)"
                } else {
                    "removed (its file is gone)"
                };
                vec![Event::Remove]
            }
            Command::Shutdown => {
                self.finish_reason = "done (the emperor is stopping)";
                vec![Event::Shutdown]
            }
            // A held vassal stays stopped through SIGHUP; only `emperor start` or its file releases it.
            Command::Reload if *self.fsm.state() == State::Held => vec![],
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
                self.look_for_handover();
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

    /// A new valid config: start, or reload (in place if the `[emperor]` section is unchanged).
    /// The file (or its build) is broken: one error; a running instance keeps its last good config.
    fn config_failed(&mut self, e: &crate::config::ConfigError) -> Vec<Event> {
        self.track.config_error = Some(e.to_string());
        for line in e.to_string().lines() {
            error!("[{}] {line}", self.name);
        }
        if self.config.is_some() {
            warn!(
                "[{}] keeping the current instance on its last good config until the file is fixed",
                self.name
            );
        } else {
            self.fsm.invalid(e.to_string());
        }
        vec![]
    }

    /// Where the vassal's output goes (`logto`, `log-maxsize`).
    fn configure_log(&self, cfg: &VassalConfig) {
        let tenant = cfg.run_as.map(|r| crate::sys::tenant::Tenant::of(r.uid, r.gid));
        self.log.configure(cfg.logto.as_deref(), cfg.log_maxsize, tenant);
    }

    fn update(&mut self, cfg: Arc<VassalConfig>) -> Vec<Event> {
        self.track.config_error = None;
        self.fsm.set_params(params_for(&self.opts, Some(&cfg)));
        // A new owner (tyrant mode) means a new process: a uWSGI reloading in place keeps its uid.
        let restart = self.config.as_ref().is_none_or(|old| {
            old.emperor_hash != cfg.emperor_hash
                || old.run_as != cfg.run_as
                || old.container_policy != cfg.container_policy
                // A new image built from `docker-build`.
                || old.docker.as_ref().map(|d| &d.image) != cfg.docker.as_ref().map(|d| &d.image)
        });
        let first = self.config.is_none();
        // An on-demand vassal's sockets must exist before anything runs: they are what starts it.
        if cfg.on_demand && self.fsm.state().instance().is_none() {
            if let Err(e) = self.reconcile_sockets(&cfg) {
                error!("[{}] {e}", self.name);
            }
            if cfg.prewarm {
                info!(
                    "[{}] on demand, prewarmed: starting now, paused once it waits for connections",
                    self.name
                );
            } else {
                info!("[{}] on demand: waiting for a connection", self.name);
            }
        }
        self.configure_log(&cfg);
        if let Some(id) = self.precreate.file_changed(cfg.docker.is_none()) {
            self.discard(id);
        }
        let rescaled = self
            .config
            .as_ref()
            .is_some_and(|old| old.replicas != cfg.replicas && without_replicas(old) == without_replicas(&cfg));
        self.config = Some(cfg);
        if rescaled {
            // Only the replica count changed: the replicas follow it at the next sync; nothing reloads.
            info!("[{}] only replicas changed: applied without a reload", self.name);
            vec![]
        } else if first {
            vec![Event::Start]
        } else {
            vec![Event::Reload { restart }]
        }
    }

    /// Records what changed for the stats and reports a new state to the main loop.
    fn observe(&mut self) {
        if let Some(state) = self.track.observe(&self.fsm) {
            let _ = self.reports.send((self.name.clone(), state));
        }
    }

    fn act(&mut self, act: Action) -> Option<Event> {
        match act {
            Action::Spawn => Some(match self.spawn() {
                Ok(ev) => ev,
                Err(e) => {
                    error!("[{}] cannot start: {e}", self.name);
                    self.track.spawn_failed(&e.to_string());
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
            Action::CheckQuiet => match self.open_connections() {
                0 => Some(Event::Quiet),
                n => {
                    info!(
                        "[{}] ready with {n} connection(s) open or waiting: serving, not pausing",
                        self.name
                    );
                    None
                }
            },
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
        let path = crate::docker::record::verdict_path(&self.opts.run_dir, &self.opts.instance, bridge_pid);
        let reason = crate::docker::record::take_verdict(&path)
            .or_else(|| crate::exit::describe(code).map(String::from))
            .unwrap_or_default();
        let now = now();
        let key = without_ids(&reason);
        match &self.last_verdict {
            Some((last, at)) if *last == key && now.duration_since(*at) < REPEAT_QUIET => {
                debug!("[{}] bridge: {reason} (again)", self.name);
            }
            _ if code == i32::from(crate::exit::CONTAINER_LOST) => {
                warn!("[{}] bridge: {}", self.name, crate::config::printable(&reason));
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

    /// Binds what is missing, releases what is no longer declared, then launches an instance.
    fn spawn(&mut self) -> Result<Event, VassalError> {
        // Taken before the fork: a child may speak before the emperor records the spawn.
        let forked_at = now();
        let cfg = self.config.clone().ok_or(VassalError::NoConfig)?;
        self.reconcile_sockets(&cfg)?;
        // Watched from before the fork, not from the next sync: a connection that comes while a prewarmed
        // instance starts must be seen, however late this thread runs again.
        if let Some(idle) = cfg.idle {
            self.watch.starting(idle, &self.sockets, self.fsm.spawning_prewarm());
        }
        // A bridge starts or replaces the container created ahead of time; a creation still running must not
        // take the bridge's container for a stale one of its own.
        self.precreate.bridge_starts();
        let proc = self.launcher.launch(launch::Launch {
            name: &self.name,
            cfg: &cfg,
            opts: &self.opts,
            sockets: &self.sockets,
            // The old container still holds the vassal's name.
            overlap: self.previous.as_ref().is_some_and(|p| p.bridged),
            log: &self.first_log(&cfg),
            replica: None,
        })?;
        let (pid, speaks) = (proc.child.pid().as_raw(), proc.speaks);
        self.proc = Some(proc);
        self.push_config();
        self.track.spawned(pid, forked_at);
        Ok(Event::Spawned { pid, speaks })
    }

    /// Where the output of the state machine's instance goes: tagged `#0` when the vassal may run replicas, as
    /// each of the others is tagged with its own number.
    fn first_log(&self, cfg: &VassalConfig) -> output::Log {
        if cfg.replicas.max > 1 {
            self.log.replica(0)
        } else {
            self.log.clone()
        }
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

    fn reconcile_sockets(&mut self, cfg: &VassalConfig) -> Result<(), VassalError> {
        let mut old = std::mem::take(&mut self.sockets);
        let before = old.len();
        let mut result = Ok(());
        let tenant = cfg.run_as.map(|r| crate::sys::tenant::Tenant::of(r.uid, r.gid));
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
                tenant: tenant.as_ref(),
            };
            match sockets::bind(spec, opts) {
                Ok(s) => {
                    debug!("[{}] bound {}", self.name, spec.addr);
                    // Before any app has the socket: see arrivals.rs for why only now.
                    if cfg.idle.is_some()
                        && self.watch.has_arrivals()
                        && let Err(e) = arrivals::prepare(s.fd())
                    {
                        warn!("[{}] {}: cannot turn on arrival signals: {e}", self.name, spec.addr);
                    }
                    self.sockets.push(s);
                }
                Err(e) => {
                    result = Err(VassalError::Socket(e));
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
            self.watch.sockets_changed(&self.sockets);
        }
        result
    }
}

/// The vassal file's text without its `replicas*` lines: equal before and after a change means only the count
/// (or when it scales) changed, which needs no reload.
fn without_replicas(cfg: &VassalConfig) -> Vec<&str> {
    let skip: std::collections::HashSet<usize> = cfg
        .lines
        .iter()
        .filter(|l| l.key.starts_with("replicas"))
        .filter_map(|l| l.line)
        .collect();
    cfg.text
        .lines()
        .enumerate()
        .filter(|(i, _)| !skip.contains(&(i + 1)))
        .map(|(_, l)| l)
        .collect()
}

/// Can the vassal's process keep all its sockets through an in-place reload (byte 1)? uWSGI 2.0 keeps
/// the fd-0 socket but forgets `LISTEN_FDS` ones when it re-execs, so a uWSGI vassal with more than
/// one emperor socket is reloaded by starting a new process instead.
fn survives_in_place_reload(cfg: &VassalConfig) -> bool {
    cfg.exec.is_some() || cfg.sockets.len() <= 1
}

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

/// The actor's clock: tokio's, as a `std` instant for the FSM, so that tests can run the actor on paused time.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests;
