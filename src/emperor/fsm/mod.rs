//! The per-vassal state machine, as a pure function: `(state, event, now) → (state, actions)`.
//!
//! It does no I/O and reads no clock, so every transition is unit-tested without processes; the actor
//! in `vassal/` feeds it events and carries out the actions. The deadline the actor sleeps until is
//! derived from the state ([`Fsm::deadline`]), so an idle vassal costs no wake-ups at all.
//!
//! # States
//! | state        | meaning |
//! |--------------|---------|
//! | `Waiting`    | sockets bound, no process (before the first start, after a voluntary shutdown) |
//! | `Starting`   | process spawned, has not announced itself yet (only vassals expected to speak, i.e. uWSGI) |
//! | `Running`    | process up; `loyal` once it sent byte 17 or stayed up `loyalty_time` |
//! | `Reloading`  | byte 1 sent (in-place reload), waiting for the vassal to accept again |
//! | `Stopping`   | stop requested; `then` says what follows the exit (restart, wait, finish) |
//! | `Throttled`  | died before it was loyal; restarts at `until` (an on-demand vassal then waits) |
//! | `Paused`     | frozen while idle (`idle-action = pause`), or prewarmed and ready (`prewarm`); a connection thaws it |
//! | `Held`       | stopped by `emperor stop`: sockets bound (clients queue), nothing starts it, not even a connection, until `emperor start` or a file change |
//! | `Invalid`    | the file has never been valid, or Docker rejected it; nothing runs until it changes |
//! | `Done`       | final; the actor releases its sockets and ends |
//!
//! # Transitions
//! | from                      | event                          | to                         | actions |
//! |---------------------------|--------------------------------|----------------------------|---------|
//! | Done                      | any                            | Done                       | |
//! | Waiting, Invalid          | Start, Reload                  | Waiting                    | Spawn, or nothing if on demand (unless prewarm) |
//! | Waiting                   | Activated (a connection waits) | (same)                     | Spawn |
//! | Waiting, Invalid          | Spawned{speaks}                | Starting if speaks, else Running | (prewarm: an instance no connection started) |
//! | Waiting, Throttled, Held, Invalid | [`Fsm::invalid`] (the actor: the file is not valid) | Invalid | |
//! | Waiting, Invalid          | SpawnFailed                    | Throttled(attempt+1)       | DrainQueue if on demand; an overlap's old instance stays `previous`, retired once a later start is ready |
//! | Starting, Running         | Idle                           | Stopping{then: Wait}, or Paused | stop, or Pause |
//! | Paused                    | Activated                      | Running                    | Resume |
//! | Paused                    | Reload, Remove, Shutdown       | as Running                 | Resume, then as Running |
//! | Paused                    | Exited                         | as Running, without restoring a previous | |
//! | Paused                    | Rejected                       | (same): ignored            | |
//! | Starting                  | Msg ready/accepting/loyal      | Running                    | |
//! | Starting, Running         | Msg loyal                      | Running{loyal}             | attempts = 0 |
//! | any with a process        | Msg (any)                      | (same), it speaks from now on | |
//! | any with a process        | Msg heartbeat                  | (same, heartbeat armed)    | |
//! | any with a process        | Msg config request             | (same)                     | PushConfig |
//! | Starting, Running         | Msg voluntary shutdown         | Stopping{then: Wait}       | stop |
//! | Starting, Running         | Timer: heartbeat overdue       | Running (any Timer ends Starting) | KillGroup |
//! | Starting, Running         | Timer: loyalty time reached    | Running{loyal}             | attempts = 0 |
//! | Starting, Running, Reloading | Reload{in place}, speaks    | Reloading (prewarm, on a prewarm vassal) | Send(1) |
//! | Starting, Running, Reloading | Reload{restart} or silent, overlap | Waiting, previous = old | Overlap (spawn beside) |
//! | Starting, Running, Reloading | Reload{restart} or silent, no overlap | Stopping{then: Restart} | stop |
//! | Starting, Running (new)   | ready (byte 1/5/17, Listening, or ready-delay) with a previous | (same) | RetirePrevious |
//! | Starting, Running, Reloading (prewarm) | ready (byte 1/5/17, Listening, ready-delay; a reload's timer) | Running, prewarm over | (after any RetirePrevious) CheckQuiet |
//! | Starting, Running, Reloading (prewarm) | Activated (a connection came first) | (same), prewarm over | |
//! | Starting, Running         | Quiet (the answer to CheckQuiet) | Paused                   | Pause |
//! | Starting, Running, Reloading (new) | Exited with a previous | Running(previous)        | RestorePrevious |
//! | any                       | PreviousExited                 | (same), `previous` = none (nothing to restore) | |
//! | Reloading                 | Msg ready/accepting/loyal      | Running                    | |
//! | Reloading                 | Timer                          | Running                    | (warn) |
//! | Starting, Running, Reloading | Exited, loyal               | Waiting                    | Spawn (at once; on demand: wait, unless prewarm) |
//! | Starting, Running, Reloading | Exited, not loyal           | Throttled(attempt+1)       | DrainQueue if on demand |
//! | Stopping                  | Exited                         | per `then`: Waiting+Spawn, Waiting, Done | |
//! | Stopping                  | Rejected                       | as Exited                  | |
//! | Starting, Running, Reloading | Rejected (bridge: bad config) | Invalid; with a previous: Running(previous) | RestorePrevious (with a previous) |
//! | Stopping                  | Timer (not yet killed)         | Stopping{killed}           | KillGroup |
//! | Stopping                  | Reload, Start                  | Stopping{then: Restart}    | |
//! | Throttled                 | Timer                          | Waiting                    | Spawn (on demand: wait, unless prewarm) |
//! | Throttled                 | ClearThrottle, Reload, Start   | Waiting                    | attempts = 0; Spawn (on demand: wait, unless prewarm) |
//! | any other                 | ClearThrottle                  | (same)                     | attempts = 0 |
//! | any with a process        | Remove, Shutdown               | Stopping{then: Finish}     | stop |
//! | Waiting, Throttled, Invalid | Remove, Shutdown             | Done                       | Finish |
//! | Starting, Running, Reloading | Hold (`emperor stop`)       | Stopping{then: Hold}       | stop (an overlap's old instance retires) |
//! | Paused                    | Hold, Restart                  | as Running                 | Resume, then as Running |
//! | Stopping{then: Restart, Wait} | Hold                       | Stopping{then: Hold}       | |
//! | Waiting, Throttled, Invalid | Hold                         | Held                       | |
//! | Stopping                  | Exited, then: Hold             | Held                       | |
//! | Held                      | Release (`emperor start`), Start, Reload (file changed) | Waiting | Spawn (on demand: wait, unless prewarm) |
//! | Stopping{then: Hold}      | Release                        | Stopping{then: Restart}    | |
//! | Held                      | Activated, Timer, ClearThrottle | Held                      | (a connection queues; nothing starts) |
//! | Held                      | Remove, Shutdown               | Done                       | Finish |
//! | Held, Waiting, Invalid, Throttled | Restart (`emperor restart`) | Waiting            | attempts = 0; Spawn now, also on demand |
//! | Starting, Running, Reloading | Restart                     | as Reload{restart}         | attempts = 0 |
//! | Stopping                  | Restart                        | Stopping{then: Restart}    | attempts = 0 |
//!
//! SIGHUP (the actor's `Command::Reload`) skips a held vassal: only `emperor start` or a change of its
//! file releases it.
//!
//! Prewarm: every instance a connection did not start (at start-up, after a crash or its throttle, on a
//! reload, on `emperor start` or `restart`) is spawned with `prewarm` set, and an in-place reload sets it
//! again; the first of "ready" and "a connection came" clears it. Ready, it is frozen if the actor finds
//! nothing open or queued on the sockets; otherwise it just runs and `idle` pauses it later. Only a
//! voluntary shutdown (byte 22) leaves a prewarm vassal waiting: the app asked to stop.
//!
//! "stop" means: byte 2 (graceful stop) to a vassal that speaks the uWSGI protocol, the vassal's
//! stop signal to one that does not; `KillGroup` follows when `stop_timeout` runs out.
//! Throttle delay after the n-th death in a row without loyalty: `min(n × throttle, max_throttle)`,
//! uWSGI's linear growth without its 1 ms first step and its halving past the maximum.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::emperor::spawn::Exit;
use crate::protocol::{EmperorMsg, VassalMsg};

/// Timing knobs, from the command line and the vassal file.
#[derive(Debug, Clone)]
pub struct Params {
    pub throttle: Duration,
    pub max_throttle: Duration,
    pub heartbeat: Duration,
    pub loyalty_time: Duration,
    pub stop_timeout: Duration,
    pub stop_signal: Signal,
    /// Start on the first connection instead of at once (`on-demand`).
    pub on_demand: bool,
    /// A Docker vassal: its process is a bridge, whose own exit codes say why it gave up.
    pub bridged: bool,
    /// On idle, freeze the vassal instead of stopping it (`idle-action = pause`).
    pub idle_pause: bool,
    /// Start instances without waiting for a connection and freeze each as soon as it is ready
    /// (`prewarm`; the config allows it only with `on_demand` and `idle_pause`).
    pub prewarm: bool,
    /// Start the new instance beside the old one on a reload (`reload-overlap`).
    pub overlap: bool,
    /// How long a new silent instance must be up to count as ready (`ready-delay`).
    pub ready_delay: Duration,
}

impl Params {
    /// The throttle delay after the n-th death in a row before loyalty: `min(n × throttle, max_throttle)`
    /// (a vassal's, or one of its replicas').
    pub fn throttle_delay(&self, attempts: u32) -> Duration {
        self.throttle.saturating_mul(attempts.max(1)).min(self.max_throttle)
    }
}

/// What the emperor knows about one running process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub pid: i32,
    pub started: Instant,
    /// It speaks the uWSGI emperor protocol: it runs through the wrapper (uWSGI) or has sent a byte.
    pub speaks: bool,
    pub loyal: bool,
    pub ready: bool,
    pub accepting: bool,
    /// Armed by the first heartbeat, as in uWSGI.
    pub last_heartbeat: Option<Instant>,
    /// Started (or reloaded in place) with no connection waiting, on a prewarm vassal: frozen as soon as it
    /// is ready, unless a connection comes first. Cleared by either.
    pub prewarm: bool,
}

/// What follows a requested stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStop {
    /// Start a new process (config changed, reload of a silent vassal, restart).
    Restart,
    /// Keep the sockets and wait (voluntary shutdown).
    Wait,
    /// Release everything (file deleted, emperor shutting down).
    Finish,
    /// Keep the sockets and start nothing until released (`emperor stop`).
    Hold,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Waiting,
    Starting(Instance),
    Running(Instance),
    Reloading {
        inst: Instance,
        deadline: Instant,
    },
    Stopping {
        inst: Instance,
        deadline: Option<Instant>,
        then: AfterStop,
    },
    Throttled {
        until: Instant,
    },
    /// Frozen while idle (`idle-action = pause`); thawed by the next connection.
    Paused(Instance),
    /// Stopped by hand (`emperor stop`): sockets bound, nothing starts until released.
    Held,
    Invalid {
        error: String,
    },
    Done,
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::Starting(_) => "starting",
            State::Running(_) => "running",
            State::Reloading { .. } => "reloading",
            State::Stopping { .. } => "stopping",
            State::Throttled { .. } => "throttled",
            State::Paused(_) => "paused",
            State::Held => "held",
            State::Invalid { .. } => "invalid",
            State::Done => "done",
        }
    }

    pub fn instance(&self) -> Option<&Instance> {
        match self {
            State::Starting(i) | State::Running(i) | State::Paused(i) => Some(i),
            State::Reloading { inst, .. } | State::Stopping { inst, .. } => Some(inst),
            _ => None,
        }
    }

    fn instance_mut(&mut self) -> Option<&mut Instance> {
        match self {
            State::Starting(i) | State::Running(i) | State::Paused(i) => Some(i),
            State::Reloading { inst, .. } | State::Stopping { inst, .. } => Some(inst),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A valid config is present; start if nothing runs.
    Start,
    Spawned {
        pid: i32,
        speaks: bool,
    },
    SpawnFailed,
    Msg(VassalMsg),
    Exited(Exit),
    /// The vassal's bridge exited saying the file cannot work as it is (a Docker rejection).
    Rejected,
    /// The deadline from [`Fsm::deadline`] passed.
    Timer,
    /// The file changed (`restart`: its `[emperor]` section changed) or SIGHUP (`restart: false`).
    Reload {
        restart: bool,
    },
    Remove,
    Shutdown,
    ClearThrottle,
    /// A connection is waiting on one of the vassal's sockets (while waiting on demand, or paused).
    Activated,
    /// No connection was open on the vassal's sockets, and none arrived, for `idle` seconds.
    Idle,
    /// The previous instance of an overlapping reload exited on its own.
    PreviousExited,
    /// `emperor stop`: stop the vassal and keep it stopped.
    Hold,
    /// `emperor start`: release a held vassal.
    Release,
    /// `emperor restart`: a new process now, whatever the throttle says.
    Restart,
    /// The kernel shows the current instance waiting for connections on the vassal's sockets
    /// (`listening.rs`); looked for only while an overlapping reload or a prewarmed instance waits for it.
    Listening,
    /// Nothing is open or queued on the vassal's sockets: the actor's answer to [`Action::CheckQuiet`].
    Quiet,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Spawn,
    Send(EmperorMsg),
    Signal(Signal),
    KillGroup,
    PushConfig,
    /// Accept and close the connections queued on the vassal's sockets: it could not start, and its
    /// clients must not hang until the throttle ends.
    DrainQueue,
    /// Freeze the vassal (cgroup freezer through `docker pause`, or SIGSTOP of a process group).
    Pause,
    Resume,
    /// Keep the current process running as the *previous* one and spawn a new one beside it.
    Overlap,
    /// The new instance is ready: stop the previous one gracefully.
    RetirePrevious,
    /// The new instance failed before it was ready: the previous one is current again.
    RestorePrevious,
    /// A prewarmed instance is ready: look whether a connection is open or queued on the vassal's
    /// sockets. None: the actor answers [`Event::Quiet`] and it is frozen; any: it serves, and `idle` applies.
    CheckQuiet,
    Finish,
    Log(log::Level, String),
}

/// One vassal's state machine. Its fields are private: only [`Fsm::on_event`], [`Fsm::set_params`] and
/// [`Fsm::invalid`] change them.
#[derive(Debug)]
pub struct Fsm {
    state: State,
    params: Params,
    /// Deaths in a row before loyalty; drives the throttle.
    attempts: u32,
    /// Processes started after the first one.
    restarts: u32,
    started_once: bool,
    /// The instance still serving while its replacement starts (an overlapping reload).
    previous: Option<Instance>,
    /// The instance being spawned is to be prewarmed ([`Instance::prewarm`]): set with every
    /// [`Action::Spawn`] and [`Action::Overlap`], read by the `Spawned` that answers it.
    spawn_prewarm: bool,
}

impl Fsm {
    pub fn new(params: Params) -> Self {
        Fsm {
            state: State::Waiting,
            params,
            attempts: 0,
            restarts: 0,
            started_once: false,
            previous: None,
            spawn_prewarm: false,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// A new bridge carries on with the container of the bridge `old` (which died): the instance is the same,
    /// its process is now `new`. False (nothing changed) unless the current instance is `old`'s and live
    /// (a stopping one's container is removed instead).
    pub fn rebridged(&mut self, old: i32, new: i32) -> bool {
        let live = matches!(
            self.state,
            State::Starting(_) | State::Running(_) | State::Reloading { .. } | State::Paused(_)
        );
        match self.state.instance_mut() {
            Some(inst) if live && inst.pid == old => {
                inst.pid = new;
                true
            }
            _ => false,
        }
    }

    /// Deaths in a row before loyalty; drives the throttle.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Processes started after the first one.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// The instance still serving while its replacement starts (an overlapping reload).
    pub fn previous(&self) -> Option<&Instance> {
        self.previous.as_ref()
    }

    /// Whether the instance about to be spawned is to be prewarmed (the actor watches its sockets more
    /// closely from the start).
    pub fn spawning_prewarm(&self) -> bool {
        self.spawn_prewarm
    }

    /// A new valid config's knobs; they apply from the next event on.
    pub fn set_params(&mut self, params: Params) {
        self.params = params;
    }

    /// The file is not valid: with no process it is `Invalid` until it changes; a live one keeps going.
    pub fn invalid(&mut self, error: String) {
        if self.state.instance().is_none() {
            self.state = State::Invalid { error };
        }
    }

    /// When the actor must feed [`Event::Timer`], if ever.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Throttled { until } => Some(*until),
            State::Stopping { deadline, .. } => *deadline,
            State::Reloading { deadline, .. } => Some(*deadline),
            State::Starting(i) | State::Running(i) => {
                let hb = i.last_heartbeat.map(|t| t + self.params.heartbeat);
                let loyalty = (!i.loyal).then(|| i.started + self.params.loyalty_time);
                let ready = (self.previous.is_some() || i.prewarm).then(|| self.ready_at(i));
                [hb, loyalty, ready].into_iter().flatten().min()
            }
            _ => None,
        }
    }

    /// When a new instance counts as ready without saying so: `ready-delay` for a silent one; a
    /// uWSGI one gets the stop timeout to announce itself before it is taken as ready anyway.
    fn ready_at(&self, i: &Instance) -> Instant {
        i.started
            + if i.speaks {
                self.params.stop_timeout.max(self.params.ready_delay)
            } else {
                self.params.ready_delay
            }
    }

    /// The new instance is ready: the previous one goes.
    fn retire_previous(&mut self, acts: &mut Vec<Action>) {
        if self.previous.take().is_some() {
            acts.push(Action::Log(
                log::Level::Info,
                "the new instance is ready; stopping the old one".into(),
            ));
            acts.push(Action::RetirePrevious);
        }
    }

    /// The new instance failed before it was ready: the previous one stays.
    fn restore_previous(&mut self, prev: Instance, why: String, acts: &mut Vec<Action>) {
        acts.push(Action::Log(
            log::Level::Error,
            format!(
                "{why}; the old instance keeps serving (set reload-overlap = false if the app cannot run twice at once)"
            ),
        ));
        acts.push(Action::RestorePrevious);
        self.state = State::Running(prev);
    }

    /// The throttle delay for the current attempt count.
    pub fn throttle_delay(&self) -> Duration {
        self.params.throttle_delay(self.attempts)
    }

    fn stop(&mut self, inst: Instance, then: AfterStop, now: Instant, acts: &mut Vec<Action>) {
        acts.push(if inst.speaks {
            Action::Send(EmperorMsg::GracefulStop)
        } else {
            Action::Signal(self.params.stop_signal)
        });
        self.state = State::Stopping {
            inst,
            deadline: Some(now + self.params.stop_timeout),
            then,
        };
    }

    /// Starts an instance that no connection waits for: prewarmed, if the vassal says so.
    fn spawn(&mut self, acts: &mut Vec<Action>) {
        self.spawn_with(self.params.prewarm, acts);
    }

    /// Starts an instance, to be frozen once ready if `prewarm` ([`Instance::prewarm`]).
    fn spawn_with(&mut self, prewarm: bool, acts: &mut Vec<Action>) {
        self.state = State::Waiting;
        self.spawn_prewarm = prewarm;
        acts.push(Action::Spawn);
    }

    /// Start now, or, for an on-demand vassal that is not prewarmed, wait for a connection.
    fn start_or_wait(&mut self, acts: &mut Vec<Action>) {
        if self.params.on_demand && !self.params.prewarm {
            self.state = State::Waiting;
        } else {
            self.spawn(acts);
        }
    }

    /// The current instance is ready: a prewarmed one is frozen now, unless a connection is open or queued
    /// (the actor looks, and answers [`Event::Quiet`] if none is). Call with `self.state` already set.
    fn prewarm_ready(&mut self, acts: &mut Vec<Action>) {
        if let Some(inst) = self.state.instance_mut()
            && std::mem::take(&mut inst.prewarm)
        {
            acts.push(Action::CheckQuiet);
        }
    }

    fn throttle(&mut self, what: String, level: log::Level, now: Instant, acts: &mut Vec<Action>) {
        self.attempts += 1;
        let delay = self.throttle_delay();
        acts.push(Action::Log(
            level,
            format!(
                "{what}throttled: next start in {:.1}s (attempt {})",
                delay.as_secs_f64(),
                self.attempts
            ),
        ));
        if self.params.on_demand {
            acts.push(Action::DrainQueue);
        }
        self.state = State::Throttled { until: now + delay };
    }

    fn died(&mut self, inst: Instance, exit: Exit, now: Instant, acts: &mut Vec<Action>) {
        let loyal = inst.loyal || now.duration_since(inst.started) >= self.params.loyalty_time;
        // The Docker daemon went away and took the container with it: nobody's fault, and the bridge saw
        // the daemon answer again before it said so. Restarted at once, never throttled (the actor has
        // logged the bridge's line).
        let lost = self.params.bridged && exit == Exit::Code(i32::from(crate::exit::CONTAINER_LOST));
        if lost {
            self.attempts = 0;
            acts.push(Action::Log(
                log::Level::Debug,
                "the Docker daemon lost the container; restarting".into(),
            ));
            self.start_or_wait(acts);
        } else if loyal {
            self.attempts = 0;
            acts.push(Action::Log(log::Level::Warn, format!("exited {exit}; restarting")));
            self.start_or_wait(acts);
        } else {
            // A bridge that gave up (a missing image, an unreachable daemon) has had its reason logged by the
            // actor, once for a series of retries; a line per retry would bury it.
            let gave_up = self.params.bridged && matches!(exit, Exit::Code(c) if crate::exit::describe(c).is_some());
            let level = if gave_up { log::Level::Debug } else { log::Level::Warn };
            self.throttle(format!("exited {exit} before it was loyal; "), level, now, acts);
        }
    }

    /// Feeds one event; returns what the actor must do, in order.
    ///
    /// Each family of events has its own method below, which matches on the state it is given. On entry
    /// `self.state` still holds that state, so a method that leaves it alone leaves the state as it was;
    /// anything no method matches (Start while running, a Timer without a deadline) changes nothing.
    pub fn on_event(&mut self, ev: Event, now: Instant) -> Vec<Action> {
        let mut acts = Vec::new();
        if self.state == State::Done {
            return acts;
        }
        let st = self.state.clone();
        let a = &mut acts;
        match ev {
            Event::Start | Event::Reload { .. } | Event::Release => self.on_start(st, ev, now, a),
            Event::Spawned { .. } | Event::SpawnFailed => self.on_spawn(st, ev, now, a),
            Event::Msg(msg) => self.on_msg(st, msg, now, a),
            Event::Timer => self.on_timer(st, now, a),
            Event::Exited(_) | Event::Rejected => self.on_exit(st, ev, now, a),
            Event::Remove | Event::Shutdown | Event::Hold => self.on_stop_like(st, ev, now, a),
            Event::Restart => self.on_restart(st, now, a),
            Event::Activated | Event::Idle | Event::Listening | Event::Quiet => self.on_sockets(st, ev, now, a),
            Event::ClearThrottle => {
                self.attempts = 0;
                if matches!(st, State::Throttled { .. }) {
                    self.start_or_wait(a);
                }
            }
            // The actor has dropped the old process; `previous` stays (see the transition table).
            // The actor has dropped the old process: nothing is left to restore if the new one dies.
            Event::PreviousExited => self.previous = None,
        }
        acts
    }

    /// `Start` (a valid config is present), `Reload` (the file changed, or SIGHUP) and `Release`
    /// (`emperor start`).
    fn on_start(&mut self, st: State, ev: Event, now: Instant, acts: &mut Vec<Action>) {
        match (st, ev) {
            (State::Waiting | State::Invalid { .. }, Event::Start | Event::Reload { .. }) => self.start_or_wait(acts),
            (State::Throttled { .. }, Event::Start | Event::Reload { .. }) => {
                self.attempts = 0;
                self.start_or_wait(acts);
            }
            (State::Held, Event::Release | Event::Start | Event::Reload { .. }) => {
                acts.push(Action::Log(log::Level::Info, "released".into()));
                self.start_or_wait(acts);
            }
            (State::Paused(inst), ev @ Event::Reload { .. }) => self.resume_then(inst, ev, now, acts),
            (
                State::Starting(inst) | State::Running(inst) | State::Reloading { inst, .. },
                Event::Reload { restart },
            ) => self.reload(inst, restart, now, acts),
            (
                State::Stopping {
                    then: AfterStop::Hold, ..
                },
                Event::Release,
            ) => self.after_stop(AfterStop::Restart),
            (
                State::Stopping {
                    then: AfterStop::Wait | AfterStop::Finish | AfterStop::Hold,
                    ..
                },
                Event::Start | Event::Reload { .. },
            ) => self.after_stop(AfterStop::Restart),
            _ => {}
        }
    }

    /// A reload of a live process: in place (byte 1) if it speaks and may, else a new process, beside the
    /// old one (`reload-overlap`) or after it.
    fn reload(&mut self, inst: Instance, restart: bool, now: Instant, acts: &mut Vec<Action>) {
        if inst.speaks && !restart {
            acts.push(Action::Log(log::Level::Info, "reloading (in place)".into()));
            acts.push(Action::Send(EmperorMsg::Reload));
            // After the reload it is ready anew, and a prewarm vassal's is frozen again (no connection waits).
            let inst = Instance {
                ready: false,
                accepting: false,
                prewarm: self.params.prewarm,
                ..inst
            };
            self.state = State::Reloading {
                inst,
                deadline: now + self.params.stop_timeout,
            };
        } else if self.params.overlap {
            // A reload during an overlap: the older one goes now, the current one is replaced.
            self.retire_previous(acts);
            acts.push(Action::Log(
                log::Level::Info,
                "reloading (new instance beside the old one)".into(),
            ));
            self.previous = Some(inst);
            self.state = State::Waiting;
            self.spawn_prewarm = self.params.prewarm;
            acts.push(Action::Overlap);
        } else {
            acts.push(Action::Log(log::Level::Info, "reloading (new process)".into()));
            self.stop(inst, AfterStop::Restart, now, acts);
        }
    }

    /// The outcome of [`Action::Spawn`].
    fn on_spawn(&mut self, st: State, ev: Event, now: Instant, acts: &mut Vec<Action>) {
        if !matches!(st, State::Waiting | State::Invalid { .. }) {
            return;
        }
        match ev {
            Event::Spawned { pid, speaks } => {
                if self.started_once {
                    self.restarts += 1;
                }
                self.started_once = true;
                let inst = Instance {
                    pid,
                    started: now,
                    speaks,
                    loyal: false,
                    ready: false,
                    accepting: false,
                    last_heartbeat: None,
                    prewarm: self.spawn_prewarm,
                };
                self.state = if speaks {
                    State::Starting(inst)
                } else {
                    State::Running(inst)
                };
            }
            Event::SpawnFailed => self.throttle(String::new(), log::Level::Warn, now, acts),
            _ => {}
        }
    }

    /// The deadline from [`Fsm::deadline`] passed.
    fn on_timer(&mut self, st: State, now: Instant, acts: &mut Vec<Action>) {
        match st {
            State::Throttled { .. } => self.start_or_wait(acts),
            State::Starting(inst) | State::Running(inst) => self.on_timer_live(inst, now, acts),
            State::Reloading { inst, .. } => {
                acts.push(Action::Log(
                    log::Level::Warn,
                    "did not confirm its reload in time; treating it as running".into(),
                ));
                self.state = State::Running(inst);
                self.prewarm_ready(acts);
            }
            State::Stopping {
                inst,
                deadline: Some(_),
                then,
            } => {
                acts.push(Action::Log(
                    log::Level::Warn,
                    format!(
                        "did not stop within {:.1}s; killing it",
                        self.params.stop_timeout.as_secs_f64()
                    ),
                ));
                acts.push(Action::KillGroup);
                self.state = State::Stopping {
                    inst,
                    deadline: None,
                    then,
                };
            }
            _ => {}
        }
    }

    /// A timer of a starting or running instance: heartbeat overdue, new instance of an overlap ready,
    /// loyalty time reached. It is `Running` afterwards.
    fn on_timer_live(&mut self, mut inst: Instance, now: Instant, acts: &mut Vec<Action>) {
        if inst.last_heartbeat.is_some_and(|t| now >= t + self.params.heartbeat) {
            acts.push(Action::Log(
                log::Level::Warn,
                format!(
                    "sent no heartbeat in the last {}s; killing it",
                    self.params.heartbeat.as_secs()
                ),
            ));
            acts.push(Action::KillGroup);
            inst.last_heartbeat = None;
        }
        let ready = now >= self.ready_at(&inst);
        if ready {
            self.retire_previous(acts);
        }
        if !inst.loyal && now >= inst.started + self.params.loyalty_time {
            inst.loyal = true;
            self.attempts = 0;
            acts.push(Action::Log(log::Level::Debug, "up long enough: loyal".into()));
        }
        self.state = State::Running(inst);
        if ready {
            self.prewarm_ready(acts);
        }
    }

    /// The process exited (`Exited`), or its bridge did, saying Docker rejected the file (`Rejected`).
    fn on_exit(&mut self, st: State, ev: Event, now: Instant, acts: &mut Vec<Action>) {
        match (st, ev) {
            (State::Starting(inst) | State::Running(inst) | State::Reloading { inst, .. }, Event::Exited(exit)) => {
                let why = format!("the new instance exited {exit} before it was ready");
                match self.previous.take() {
                    Some(prev) => self.restore_previous(prev, why, acts),
                    None => self.died(inst, exit, now, acts),
                }
            }
            (State::Paused(inst), Event::Exited(exit)) => self.died(inst, exit, now, acts),
            (State::Stopping { then, .. }, Event::Exited(exit)) => self.stopped(then, exit, acts),
            // The new instance of an overlapping reload was rejected: the old one keeps serving (it used to be
            // left running unmanaged while the vassal went invalid).
            (State::Starting(_) | State::Running(_) | State::Reloading { .. }, Event::Rejected)
                if self.previous.is_some() =>
            {
                if let Some(prev) = self.previous.take() {
                    let why = "Docker rejected the new instance; waiting for the file to change".to_string();
                    self.restore_previous(prev, why, acts);
                }
            }
            (State::Starting(_) | State::Running(_) | State::Reloading { .. }, Event::Rejected) => {
                let error = "rejected by Docker; waiting for the file to change".to_string();
                acts.push(Action::Log(log::Level::Error, error.clone()));
                self.state = State::Invalid { error };
            }
            // Stopping anyway: the rejection is one more exit code.
            (State::Stopping { then, .. }, Event::Rejected) => {
                self.stopped(then, Exit::Code(i32::from(crate::exit::BAD_CONFIG)), acts)
            }
            _ => {}
        }
    }

    /// A requested stop is over: what follows it.
    fn stopped(&mut self, then: AfterStop, exit: Exit, acts: &mut Vec<Action>) {
        acts.push(Action::Log(log::Level::Info, format!("exited {exit}")));
        match then {
            AfterStop::Restart => self.spawn(acts),
            AfterStop::Wait => self.state = State::Waiting,
            AfterStop::Hold => self.state = State::Held,
            AfterStop::Finish => self.finish(acts),
        }
    }

    /// `Remove` (the file is gone), `Shutdown` (the emperor stops) and `Hold` (`emperor stop`): stop, then
    /// finish or stay stopped.
    fn on_stop_like(&mut self, st: State, ev: Event, now: Instant, acts: &mut Vec<Action>) {
        // The old instance of an overlapping reload goes too: the vassal is gone only when everything it
        // started is (it used to keep running, unmanaged, on the vassal's sockets).
        if matches!(ev, Event::Remove | Event::Shutdown) && self.previous.take().is_some() {
            acts.push(Action::Log(
                log::Level::Info,
                "stopping the old instance of the reload too".into(),
            ));
            acts.push(Action::RetirePrevious);
        }
        match (st, ev) {
            (State::Paused(inst), ev) => self.resume_then(inst, ev, now, acts),
            (
                State::Waiting | State::Throttled { .. } | State::Invalid { .. } | State::Held,
                Event::Remove | Event::Shutdown,
            ) => self.finish(acts),
            (
                State::Starting(inst) | State::Running(inst) | State::Reloading { inst, .. },
                Event::Remove | Event::Shutdown,
            ) => {
                acts.push(Action::Log(log::Level::Info, "stopping".into()));
                self.stop(inst, AfterStop::Finish, now, acts);
            }
            (State::Stopping { .. }, Event::Remove | Event::Shutdown) => self.after_stop(AfterStop::Finish),
            (State::Waiting | State::Throttled { .. } | State::Invalid { .. }, Event::Hold) => {
                acts.push(Action::Log(
                    log::Level::Info,
                    "held: nothing starts until released".into(),
                ));
                self.state = State::Held;
            }
            (State::Starting(inst) | State::Running(inst) | State::Reloading { inst, .. }, Event::Hold) => {
                acts.push(Action::Log(log::Level::Info, "stopping and holding".into()));
                self.retire_previous(acts);
                self.stop(inst, AfterStop::Hold, now, acts);
            }
            (
                State::Stopping {
                    then: AfterStop::Restart | AfterStop::Wait,
                    ..
                },
                Event::Hold,
            ) => self.after_stop(AfterStop::Hold),
            _ => {}
        }
    }

    /// `emperor restart`: a new process now, whatever the throttle says.
    fn on_restart(&mut self, st: State, now: Instant, acts: &mut Vec<Action>) {
        match st {
            State::Paused(inst) => self.resume_then(inst, Event::Restart, now, acts),
            State::Held | State::Waiting | State::Throttled { .. } | State::Invalid { .. } => {
                self.attempts = 0;
                acts.push(Action::Log(log::Level::Info, "restart requested: starting now".into()));
                self.spawn(acts);
            }
            State::Starting(inst) | State::Running(inst) | State::Reloading { inst, .. } => {
                self.attempts = 0;
                self.reload(inst, true, now, acts);
            }
            State::Stopping { .. } => {
                self.attempts = 0;
                self.after_stop(AfterStop::Restart);
            }
            State::Done => {}
        }
    }

    /// What the actor sees on the vassal's sockets: a connection waits or came (`Activated`), none came for
    /// `idle` seconds (`Idle`), the new instance of an overlap or a prewarmed one waits for connections
    /// (`Listening`), nothing is open or queued for a prewarmed instance that is ready (`Quiet`).
    fn on_sockets(&mut self, st: State, ev: Event, now: Instant, acts: &mut Vec<Action>) {
        match (st, ev) {
            (State::Waiting, Event::Activated) => {
                acts.push(Action::Log(
                    log::Level::Info,
                    "a connection is waiting: starting".into(),
                ));
                self.spawn_with(false, acts);
            }
            (State::Paused(inst), Event::Activated) => {
                acts.push(Action::Log(
                    log::Level::Info,
                    "a connection is waiting: resuming".into(),
                ));
                self.resume(inst, now, acts);
            }
            // A connection came before the prewarmed instance was ready: it serves instead of being frozen.
            (State::Starting(_) | State::Running(_) | State::Reloading { .. }, Event::Activated) => {
                if let Some(inst) = self.state.instance_mut()
                    && std::mem::take(&mut inst.prewarm)
                {
                    acts.push(Action::Log(
                        log::Level::Info,
                        "a connection came before it was ready: serving, not pausing".into(),
                    ));
                }
            }
            (State::Starting(inst) | State::Running(inst), Event::Quiet) => {
                acts.push(Action::Log(
                    log::Level::Info,
                    "prewarmed: pausing until the first connection".into(),
                ));
                acts.push(Action::Pause);
                self.state = State::Paused(inst);
            }
            (State::Starting(inst) | State::Running(inst), Event::Idle) => {
                if self.params.idle_pause {
                    acts.push(Action::Log(log::Level::Info, "idle: pausing".into()));
                    acts.push(Action::Pause);
                    self.state = State::Paused(inst);
                } else {
                    acts.push(Action::Log(log::Level::Info, "idle: stopping".into()));
                    self.stop(inst, AfterStop::Wait, now, acts);
                }
            }
            // The new instance is ready, as if it had said so (an app that does not speak the protocol
            // need not wait out ready-delay).
            (State::Starting(_) | State::Running(_), Event::Listening) => {
                self.retire_previous(acts);
                self.prewarm_ready(acts);
            }
            _ => {}
        }
    }

    /// Thaws a paused instance: it is running again.
    fn resume(&mut self, mut inst: Instance, now: Instant, acts: &mut Vec<Action>) {
        acts.push(Action::Resume);
        // Frozen processes send no heartbeats; the check starts over.
        inst.last_heartbeat = inst.last_heartbeat.map(|_| now);
        self.state = State::Running(inst);
    }

    /// Thaws a paused instance, then handles `ev` as for a running one.
    fn resume_then(&mut self, inst: Instance, ev: Event, now: Instant, acts: &mut Vec<Action>) {
        self.resume(inst, now, acts);
        acts.extend(self.on_event(ev, now));
    }

    /// Changes what follows the stop under way (the state is `Stopping`).
    fn after_stop(&mut self, next: AfterStop) {
        if let State::Stopping { then, .. } = &mut self.state {
            *then = next;
        }
    }

    fn finish(&mut self, acts: &mut Vec<Action>) {
        self.state = State::Done;
        acts.push(Action::Finish);
    }

    fn on_msg(&mut self, mut st: State, msg: VassalMsg, now: Instant, acts: &mut Vec<Action>) {
        let Some(inst) = st.instance_mut() else { return };
        inst.speaks = true;
        match msg {
            VassalMsg::Ready => {
                inst.ready = true;
                acts.push(Action::Log(log::Level::Info, "ready".into()));
            }
            VassalMsg::Accepting => {
                inst.accepting = true;
                acts.push(Action::Log(log::Level::Info, "accepting".into()));
            }
            VassalMsg::Loyal => {
                if !inst.loyal {
                    acts.push(Action::Log(log::Level::Info, "loyal".into()));
                }
                inst.loyal = true;
                self.attempts = 0;
            }
            VassalMsg::Heartbeat => inst.last_heartbeat = Some(now),
            VassalMsg::ConfigRequest => acts.push(Action::PushConfig),
            VassalMsg::VoluntaryShutdown => {}
            VassalMsg::Sos | VassalMsg::Unknown(_) => {
                acts.push(Action::Log(log::Level::Debug, format!("ignoring message {msg:?}")));
            }
        }
        let announces = matches!(msg, VassalMsg::Ready | VassalMsg::Accepting | VassalMsg::Loyal);
        match st {
            State::Starting(inst) | State::Running(inst) if msg == VassalMsg::VoluntaryShutdown => {
                acts.push(Action::Log(log::Level::Info, "voluntary shutdown; waiting".into()));
                self.stop(inst, AfterStop::Wait, now, acts);
            }
            State::Starting(inst) | State::Running(inst) if announces => {
                self.state = State::Running(inst);
                self.retire_previous(acts);
                self.prewarm_ready(acts);
            }
            State::Reloading { inst, .. } if announces => {
                self.state = State::Running(inst);
                self.prewarm_ready(acts);
            }
            other => self.state = other,
        }
    }
}

#[cfg(test)]
mod tests;
