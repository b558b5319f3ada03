//! Replicas: the instances of a vassal beyond its first (`replicas = N | MIN..MAX`), all on the vassal's
//! listening sockets, so the kernel spreads connections among whoever waits in `accept` on the one queue:
//! no balancer, no new hop, and a connection that comes while one replica restarts is taken by another.
//!
//! Why the extra instances are not more state machines: everything the FSM does (on demand, idle, pause,
//! prewarm, overlapping reloads, heartbeats, a bridge that dies) is about *the vassal*, and replica 0 (the
//! FSM's instance, container `<name>`) keeps doing it as before. The others follow the vassal: they run while
//! it is active ([`Want::active`]: it has an instance, or is restarting one), each under a small
//! supervisor task that restarts it when it dies (throttled as the vassal is) and stops it gracefully when
//! asked; they stop when the vassal stops, idles, pauses or is held. Replica K's container is `<name>.r<K>`,
//! and its output lines are tagged `#K`.
//!
//! A reload (a changed file, SIGHUP, `emperor restart`) starts a new generation. Replica 0 reloads as the FSM
//! says; the others are replaced one at a time, stop first then start (a container name is free only then),
//! and only while replica 0 serves and no other replica is starting or being replaced: some replica always
//! accepts on the shared queue, so nothing fails and a reload costs at most one replica's capacity.
//!
//! Scaling (`MIN..MAX`) looks at the accept queue every [`LOOK`] (one sock_diag dump per address family, no
//! `/proc/net` table): connections waiting at every look for `replicas-up` seconds, with every replica ready,
//! add one; none waiting, and fewer connections open than replicas (one had nothing to do), for
//! `replicas-down` seconds remove the highest. An inactive vassal starts again at MIN.

use std::time::{Duration, Instant};

use log::{debug, info, warn};
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::launch::{self, Proc, read_control, write_all_now};
use super::retire;
use crate::config::{Replicas as Range, VassalConfig};
use crate::emperor::conns;
use crate::emperor::listening;
use crate::emperor::sockets::BoundSocket;
use crate::emperor::spawn::Exit;
use crate::emperor::wait::sleep_until;
use crate::protocol::VassalMsg;

/// How often a scaling vassal's accept queue is looked at.
pub const LOOK: Duration = Duration::from_millis(250);
/// How often a new silent replica is looked at until the kernel shows it waiting for connections.
const READY_LOOK: Duration = Duration::from_millis(50);

/// What a replica's supervisor tells the actor.
#[derive(Debug)]
pub enum Report {
    /// Replica `k` can serve: it said so (uWSGI), waits in `accept`, or its `ready-delay` passed.
    Ready { k: u32, pid: i32 },
    /// Replica `k` exited (asked to stop, or on its own: the slot says which).
    Exited {
        k: u32,
        pid: i32,
        exit: std::io::Result<Exit>,
    },
}

/// One replica's place (K = index + 1).
#[derive(Debug)]
enum Slot {
    /// Nothing runs; start at once, or after `retry_at` (it died before it was loyal).
    Empty { retry_at: Option<Instant> },
    Live {
        generation: u64,
        pid: i32,
        started: Instant,
        ready: bool,
        stop: Option<oneshot::Sender<()>>,
    },
    /// Asked to stop; the slot is free once it has exited.
    Stopping { pid: i32 },
}

#[derive(Debug)]
struct Place {
    slot: Slot,
    /// Deaths in a row before loyalty, for the throttle.
    attempts: u32,
}

/// One row of the stats document and `emperor status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStat {
    pub index: u32,
    pub pid: i32,
    /// `starting`, `running`, `stopping`, `waiting` (to be started) or `throttled`.
    pub state: &'static str,
    /// Runs the vassal's previous config (a rolling reload has not reached it yet).
    pub outdated: bool,
}

/// What the actor knows when it syncs the replicas.
pub struct Want<'a> {
    pub cfg: &'a VassalConfig,
    /// The vassal has an instance, or is about to: replicas may run.
    pub active: bool,
    /// Replica 0 serves (running, no reload pending): the others may be replaced.
    pub serving: bool,
    pub sockets: &'a [BoundSocket],
}

/// How a replica is started and stopped: the actor's launcher and knobs.
pub struct Start<'a> {
    pub launcher: &'a mut dyn launch::Launcher,
    pub opts: &'a crate::cli::EmperorOptions,
    pub log: &'a crate::emperor::output::Log,
    pub params: &'a crate::emperor::fsm::Params,
}

#[derive(Debug)]
pub struct Replicas {
    name: String,
    places: Vec<Place>,
    generation: u64,
    /// How many instances run (replica 0 included) while the vassal is active.
    count: u32,
    /// The range last seen, to notice a new one.
    range: Range,
    scaling: Scaling,
    next_look: Option<Instant>,
    /// A failed look was logged (once, until one works again).
    look_failed: bool,
    reports: (mpsc::UnboundedSender<Report>, mpsc::UnboundedReceiver<Report>),
    tasks: Vec<JoinHandle<()>>,
}

impl Replicas {
    pub fn new(name: &str) -> Replicas {
        Replicas {
            name: name.to_owned(),
            places: Vec::new(),
            generation: 0,
            count: 1,
            range: Range::default(),
            scaling: Scaling::default(),
            next_look: None,
            look_failed: false,
            reports: mpsc::unbounded_channel(),
            tasks: Vec::new(),
        }
    }

    /// The vassal reloads: every replica is to be replaced, one at a time.
    pub fn reload(&mut self) {
        self.generation += 1;
    }

    /// The next report of a supervisor. Cancel-safe.
    pub async fn report(&mut self) -> Report {
        match self.reports.1.recv().await {
            Some(r) => r,
            // Never: we hold a sender.
            None => std::future::pending().await,
        }
    }

    /// When [`Replicas::sync`] has something to do without a report: a look at the queue, a throttled start.
    pub fn deadline(&self) -> Option<Instant> {
        let retries = self.places.iter().filter_map(|p| match p.slot {
            Slot::Empty { retry_at } => retry_at,
            _ => None,
        });
        retries.chain(self.next_look).min()
    }

    /// How many instances the vassal runs now, replica 0 included (for the stats).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Takes a supervisor's report into account; the actor syncs afterwards.
    pub fn on_report(&mut self, report: Report, params: &crate::emperor::fsm::Params, now: Instant) {
        let k = match &report {
            Report::Ready { k, .. } | Report::Exited { k, .. } => *k,
        };
        let Some(place) = (k as usize).checked_sub(1).and_then(|i| self.places.get_mut(i)) else {
            return;
        };
        let tag = format!("{}#{k}", self.name);
        match (report, &mut place.slot) {
            (Report::Ready { pid, .. }, Slot::Live { pid: live, ready, .. }) if pid == *live => {
                debug!("[{tag}] ready");
                *ready = true;
            }
            (Report::Exited { pid, exit, .. }, Slot::Stopping { pid: stopping }) if pid == *stopping => {
                match exit {
                    Ok(e) => info!("[{tag}] exited {e}"),
                    Err(e) => warn!("[{tag}] cannot wait for it: {e}"),
                }
                place.slot = Slot::Empty { retry_at: None };
            }
            (Report::Exited { pid, exit, .. }, Slot::Live { pid: live, started, .. }) if pid == *live => {
                let exit = exit.map_or_else(|e| format!("(cannot wait: {e})"), |e| e.to_string());
                if now.duration_since(*started) >= params.loyalty_time {
                    place.attempts = 0;
                    warn!("[{tag}] exited {exit}; restarting");
                    place.slot = Slot::Empty { retry_at: None };
                } else {
                    place.attempts += 1;
                    let delay = params.throttle_delay(place.attempts);
                    warn!(
                        "[{tag}] exited {exit} before it was loyal; throttled: next start in {:.1}s (attempt {})",
                        delay.as_secs_f64(),
                        place.attempts
                    );
                    place.slot = Slot::Empty {
                        retry_at: Some(now + delay),
                    };
                }
            }
            _ => {}
        }
    }

    /// Brings the replicas in line with what the vassal wants: starts, stops, replaces, scales.
    pub fn sync(&mut self, want: Want<'_>, start: Start<'_>, now: Instant) {
        self.follow_range(want.cfg.replicas, want.active);
        if want.active && self.range.scales() {
            if self.next_look.is_none_or(|t| now >= t) {
                self.look(want.sockets, want.serving, now);
                self.next_look = Some(now + LOOK);
            }
        } else {
            self.next_look = None;
        }
        let extras = if want.active { self.count as usize - 1 } else { 0 };
        // Beyond the count: stop what runs, forget what does not.
        for place in self.places.iter_mut().skip(extras) {
            stop(&mut place.slot);
        }
        while self.places.len() > extras && matches!(self.places.last().map(|p| &p.slot), Some(Slot::Empty { .. })) {
            self.places.pop();
        }
        while self.places.len() < extras {
            self.places.push(Place {
                slot: Slot::Empty { retry_at: None },
                attempts: 0,
            });
        }
        let mut start = start;
        for i in 0..extras {
            if matches!(self.places[i].slot, Slot::Empty { retry_at } if retry_at.is_none_or(|t| now >= t)) {
                self.launch(i, &want, &mut start, now);
            }
        }
        // A rolling reload: one replica at a time, while replica 0 serves and no other is on its way.
        let settling = self.places.iter().take(extras).any(|p| match p.slot {
            Slot::Live { ready, .. } => !ready,
            Slot::Stopping { .. } => true,
            Slot::Empty { .. } => false,
        });
        if want.serving && !settling {
            let generation = self.generation;
            if let Some((i, place)) = self
                .places
                .iter_mut()
                .take(extras)
                .enumerate()
                .find(|(_, p)| matches!(p.slot, Slot::Live { generation: g, .. } if g < generation))
            {
                info!("[{}#{}] replacing it with the new config", self.name, i + 1);
                stop(&mut place.slot);
            }
        }
    }

    /// A new range from the file, or the vassal went inactive: the count starts again within it.
    fn follow_range(&mut self, range: Range, active: bool) {
        if range != self.range {
            self.range = range;
            self.scaling = Scaling::default();
        }
        if !active {
            self.count = range.min;
            self.scaling = Scaling::default();
        }
        self.count = self.count.clamp(range.min, range.max);
    }

    /// One look at the queue, and what it means for the count.
    fn look(&mut self, sockets: &[BoundSocket], serving: bool, now: Instant) {
        let listeners: Vec<_> = sockets
            .iter()
            .filter_map(|s| Some((&s.spec.addr, nix::sys::stat::fstat(s.fd()).ok()?.st_ino)))
            .collect();
        let queued = match conns::queued(&listeners) {
            Ok(n) => {
                self.look_failed = false;
                n
            }
            Err(e) => {
                if !std::mem::replace(&mut self.look_failed, true) {
                    warn!("[{}] cannot see its accept queue, so it does not scale: {e}", self.name);
                }
                return;
            }
        };
        let all_ready = serving
            && self
                .places
                .iter()
                .take(self.count as usize - 1)
                .all(|p| matches!(p.slot, Slot::Live { ready: true, .. }));
        // Open connections matter only when scaling down is possible (a /proc/net read).
        let open = || {
            let addrs: Vec<_> = sockets.iter().map(|s| &s.spec.addr).collect();
            conns::open_connections(&addrs).unwrap_or(usize::MAX)
        };
        let seen = Seen {
            queued,
            open: if queued == 0 && self.count > self.range.min {
                open()
            } else {
                0
            },
            all_ready,
        };
        let before = self.count;
        self.count = self.scaling.step(self.range, self.count, seen, now);
        if self.count > before {
            info!(
                "[{}] connections kept waiting ({queued} now) for {:.1}s: scaling up to {}",
                self.name,
                self.range.up.as_secs_f64(),
                instances(self.count)
            );
        } else if self.count < before {
            info!(
                "[{}] no connection waited and a replica had nothing to do for {:.1}s: scaling down to {}",
                self.name,
                self.range.down.as_secs_f64(),
                instances(self.count)
            );
        }
    }

    /// Starts replica `i + 1` under a supervisor; a failure throttles its place like a death.
    fn launch(&mut self, i: usize, want: &Want<'_>, start: &mut Start<'_>, now: Instant) {
        let k = i as u32 + 1;
        let log = start.log.replica(k);
        let launched = start.launcher.launch(launch::Launch {
            name: &self.name,
            cfg: want.cfg,
            opts: start.opts,
            sockets: want.sockets,
            overlap: false,
            log: &log,
            replica: Some(k),
        });
        let place = &mut self.places[i];
        let proc = match launched {
            Ok(p) => p,
            Err(e) => {
                place.attempts += 1;
                let delay = start.params.throttle_delay(place.attempts);
                warn!(
                    "[{}#{k}] cannot start: {e}; next try in {:.1}s",
                    self.name,
                    delay.as_secs_f64()
                );
                place.slot = Slot::Empty {
                    retry_at: Some(now + delay),
                };
                return;
            }
        };
        let pid = proc.child.pid().as_raw();
        let (stop_tx, stop_rx) = oneshot::channel();
        place.slot = Slot::Live {
            generation: self.generation,
            pid,
            started: now,
            ready: false,
            stop: Some(stop_tx),
        };
        let cfg = want.cfg;
        let readiness = if proc.speaks {
            Readiness::Says
        } else if let Some(d) = cfg.ready_delay {
            Readiness::After(d)
        } else {
            Readiness::Look {
                listeners: listening::Listeners::of(want.sockets.iter().map(|s| s.fd())),
                addrs: want.sockets.iter().map(|s| s.spec.addr.clone()).collect(),
                record: proc
                    .bridged
                    .then(|| crate::docker::record::path(&start.opts.run_dir, &start.opts.instance, pid)),
            }
        };
        let supervisor = Supervisor {
            k,
            tag: format!("{}#{k}", self.name),
            proc,
            stop: stop_rx,
            reports: self.reports.0.clone(),
            readiness,
            ready_by: now + cfg.ready_delay.unwrap_or(crate::config::DEFAULT_READY_DELAY),
            config_frame: crate::protocol::config_frame(cfg.text.as_bytes()).ok(),
            stop_timeout: start.params.stop_timeout,
            stop_signal: start.params.stop_signal,
        };
        supervisor.push_config();
        self.tasks.retain(|t| !t.is_finished());
        self.tasks.push(tokio::task::spawn_local(supervisor.run()));
    }

    /// For the stats document and `emperor status`.
    pub fn stats(&self, now: Instant) -> Vec<ReplicaStat> {
        self.places
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (pid, state, outdated) = match &p.slot {
                    Slot::Empty { retry_at: Some(t) } if *t > now => (-1, "throttled", false),
                    Slot::Empty { .. } => (-1, "waiting", false),
                    Slot::Live {
                        pid, ready, generation, ..
                    } => (
                        *pid,
                        if *ready { "running" } else { "starting" },
                        *generation < self.generation,
                    ),
                    Slot::Stopping { pid } => (*pid, "stopping", false),
                };
                ReplicaStat {
                    index: i as u32 + 1,
                    pid,
                    state,
                    outdated,
                }
            })
            .collect()
    }

    /// Stops every replica and waits for all of them: the vassal is gone only when everything it started is.
    pub async fn finish(&mut self) {
        for place in &mut self.places {
            stop(&mut place.slot);
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

/// What one look at a scaling vassal saw.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Connections waiting in the accept queues.
    queued: usize,
    /// Connections open or queued on the sockets (looked at only when nothing waited and the count may go down).
    open: usize,
    /// Every replica of the count runs and is ready (replica 0 serves).
    all_ready: bool,
}

/// The scaling decision, as a pure function of what each look saw: the windows of `replicas-up` and
/// `replicas-down`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Scaling {
    /// Since when connections have waited at every look, with every replica ready.
    busy_since: Option<Instant>,
    /// Since when none has waited and fewer connections than replicas were open, at every look.
    spare_since: Option<Instant>,
}

impl Scaling {
    /// The count after a look that saw `seen` at `now`: one more after `range.up` of waiting connections (a
    /// replica still starting is capacity on its way: the window waits for it), one fewer after `range.down`
    /// with nothing waiting and a replica to spare; each change starts the windows over.
    fn step(&mut self, range: Range, count: u32, seen: Seen, now: Instant) -> u32 {
        if seen.queued > 0 {
            self.spare_since = None;
            if !seen.all_ready || count >= range.max {
                self.busy_since = None;
                return count;
            }
            let since = *self.busy_since.get_or_insert(now);
            if now.duration_since(since) >= range.up {
                self.busy_since = None;
                return count + 1;
            }
            return count;
        }
        self.busy_since = None;
        if count <= range.min || seen.open >= count as usize {
            self.spare_since = None;
            return count;
        }
        let since = *self.spare_since.get_or_insert(now);
        if now.duration_since(since) >= range.down {
            self.spare_since = None;
            return count - 1;
        }
        count
    }
}

/// "1 replica", "3 replicas".
fn instances(n: u32) -> String {
    if n == 1 {
        "1 replica".into()
    } else {
        format!("{n} replicas")
    }
}

/// Asks a live replica to stop.
fn stop(slot: &mut Slot) {
    if let Slot::Live { pid, stop, .. } = slot {
        if let Some(tx) = stop.take() {
            let _ = tx.send(());
        }
        *slot = Slot::Stopping { pid: *pid };
    }
}

/// How a new replica is known to serve.
enum Readiness {
    /// It speaks the uWSGI protocol: byte 1, 5 or 17.
    Says,
    /// `ready-delay` after its start.
    After(Duration),
    /// The kernel shows it (or, for a container, the container's init and its descendants) waiting for
    /// connections on the vassal's sockets (`listening.rs`).
    Look {
        listeners: listening::Listeners,
        /// The sockets' addresses: a replica that holds a connection from them serves (under load it is
        /// rarely caught in `accept`, since the queue always has a connection for it).
        addrs: Vec<crate::config::SocketAddrSpec>,
        /// A bridge's record, which names the container's init process.
        record: Option<std::path::PathBuf>,
    },
}

/// Watches one replica: its exit, its control channel, its readiness, and the actor's request to stop.
struct Supervisor {
    k: u32,
    tag: String,
    proc: Proc,
    stop: oneshot::Receiver<()>,
    reports: mpsc::UnboundedSender<Report>,
    readiness: Readiness,
    /// Ready at the latest by then, whatever it says or shows (as replica 0 is, `fsm::ready_at`).
    ready_by: Instant,
    config_frame: Option<Vec<u8>>,
    stop_timeout: Duration,
    stop_signal: Signal,
}

impl Supervisor {
    /// Sends the vassal file over the config channel of a Docker `[uwsgi]` replica.
    fn push_config(&self) {
        if let (Some(chan), Some(frame)) = (&self.proc.config, &self.config_frame)
            && let Err(e) = write_all_now(chan, frame)
        {
            warn!("[{}] cannot push its config: {e}", self.tag);
        }
    }

    async fn run(mut self) {
        let pid = self.proc.child.pid().as_raw();
        let started = tokio::time::Instant::now();
        let mut ready = false;
        let mut next_look = started + READY_LOOK;
        loop {
            let wake = match (&self.readiness, ready) {
                (_, true) => None,
                (Readiness::Says, _) => Some(tokio::time::Instant::from_std(self.ready_by)),
                (Readiness::After(d), _) => Some(started + *d),
                (Readiness::Look { .. }, _) => Some(next_look.min(tokio::time::Instant::from_std(self.ready_by))),
            };
            let mut now_ready = false;
            tokio::select! {
                exit = self.proc.child.wait() => {
                    let _ = self.reports.send(Report::Exited { k: self.k, pid, exit });
                    return;
                }
                _ = &mut self.stop => {
                    let exit = retire::stop(&self.tag, "it", &mut self.proc, self.stop_timeout, self.stop_signal).await;
                    let _ = self.reports.send(Report::Exited { k: self.k, pid, exit });
                    return;
                }
                bytes = read_control(self.proc.control.as_mut()) => {
                    if bytes.is_empty() {
                        self.proc.control = None;
                    }
                    for b in bytes {
                        self.proc.speaks = true;
                        match VassalMsg::from(b) {
                            VassalMsg::Ready | VassalMsg::Accepting | VassalMsg::Loyal => now_ready = true,
                            VassalMsg::ConfigRequest => self.push_config(),
                            _ => {}
                        }
                    }
                }
                _ = sleep_until(wake) => {
                    let now = tokio::time::Instant::now();
                    now_ready = now >= tokio::time::Instant::from_std(self.ready_by);
                    if let Readiness::Look { listeners, addrs, record } = &self.readiness {
                        let look = (listeners.clone(), addrs.clone(), record.clone());
                        now_ready = now_ready || self.serves(look, pid).await;
                        next_look = tokio::time::Instant::now() + READY_LOOK;
                    } else if matches!(self.readiness, Readiness::After(_)) {
                        now_ready = true;
                    }
                }
            }
            if now_ready && !ready {
                ready = true;
                let _ = self.reports.send(Report::Ready { k: self.k, pid });
            }
        }
    }

    /// Whether the replica waits for connections or holds one, looked at off the actor's thread.
    async fn serves(
        &self,
        (listeners, addrs, record): (
            listening::Listeners,
            Vec<crate::config::SocketAddrSpec>,
            Option<std::path::PathBuf>,
        ),
        pid: i32,
    ) -> bool {
        tokio::task::spawn_blocking(move || {
            let root = match record {
                Some(r) => crate::docker::record::Info::read(&r).map_or(0, |i| i32::try_from(i.init_pid).unwrap_or(0)),
                None => pid,
            };
            listening::waiting(root, &listeners)
                || conns::connection_inodes(&addrs).is_ok_and(|held| listening::holds_any(root, &held))
        })
        .await
        .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(min: u32, max: u32) -> Range {
        Range {
            min,
            max,
            up: Duration::from_secs(1),
            down: Duration::from_secs(3),
        }
    }

    const BUSY: Seen = Seen {
        queued: 5,
        open: 9,
        all_ready: true,
    };
    const QUIET: Seen = Seen {
        queued: 0,
        open: 0,
        all_ready: true,
    };

    /// Feeds one look every 250 ms for `secs`, starting at `t`; returns the count and the time after.
    fn looks(s: &mut Scaling, r: Range, mut count: u32, seen: Seen, t: &mut Instant, secs: f64) -> u32 {
        let end = *t + Duration::from_secs_f64(secs);
        while *t < end {
            count = s.step(r, count, seen, *t);
            *t += LOOK;
        }
        count
    }

    #[test]
    fn waiting_connections_add_one_replica_per_window_up_to_max() {
        let (r, mut s, mut t) = (range(1, 4), Scaling::default(), Instant::now());
        assert_eq!(looks(&mut s, r, 1, BUSY, &mut t, 0.9), 1, "not before replicas-up");
        assert_eq!(looks(&mut s, r, 1, BUSY, &mut t, 0.2), 2, "one more after 1 s");
        assert_eq!(looks(&mut s, r, 2, BUSY, &mut t, 0.9), 2, "the window starts over");
        assert_eq!(looks(&mut s, r, 2, BUSY, &mut t, 10.0), 4, "at most MAX");
    }

    #[test]
    fn a_replica_still_starting_holds_the_window() {
        let (r, mut s, mut t) = (range(1, 4), Scaling::default(), Instant::now());
        let starting = Seen {
            all_ready: false,
            ..BUSY
        };
        assert_eq!(looks(&mut s, r, 2, starting, &mut t, 5.0), 2);
        assert_eq!(
            looks(&mut s, r, 2, BUSY, &mut t, 0.9),
            2,
            "the window starts once all are ready"
        );
        // A look without waiting connections in between starts it over too.
        assert_eq!(s.step(r, 2, QUIET, t), 2);
        assert_eq!(looks(&mut s, r, 2, BUSY, &mut t, 0.9), 2);
    }

    #[test]
    fn quiet_replicas_go_one_per_window_down_to_min() {
        let (r, mut s, mut t) = (range(2, 4), Scaling::default(), Instant::now());
        assert_eq!(looks(&mut s, r, 4, QUIET, &mut t, 2.9), 4, "not before replicas-down");
        assert_eq!(looks(&mut s, r, 4, QUIET, &mut t, 0.2), 3);
        assert_eq!(looks(&mut s, r, 3, QUIET, &mut t, 20.0), 2, "never below MIN");
    }

    #[test]
    fn busy_replicas_are_not_scaled_down() {
        let (r, mut s, mut t) = (range(1, 4), Scaling::default(), Instant::now());
        // Nothing waits, but four connections are open on four replicas: none is spare.
        let full = Seen {
            queued: 0,
            open: 4,
            all_ready: true,
        };
        assert_eq!(looks(&mut s, r, 4, full, &mut t, 20.0), 4);
        // One waiting connection in the window starts it over.
        assert_eq!(looks(&mut s, r, 4, QUIET, &mut t, 2.0), 4);
        assert_eq!(s.step(r, 4, BUSY, t), 4);
        assert_eq!(looks(&mut s, r, 4, QUIET, &mut t, 2.9), 4);
    }

    #[test]
    fn a_fixed_count_never_moves() {
        let (r, mut s, mut t) = (range(3, 3), Scaling::default(), Instant::now());
        assert_eq!(looks(&mut s, r, 3, BUSY, &mut t, 10.0), 3);
        assert_eq!(looks(&mut s, r, 3, QUIET, &mut t, 10.0), 3);
    }
}
