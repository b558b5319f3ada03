//! The emperor role: watch a directory of vassal files and keep one vassal running per valid file.
//!
//! # Theory of operation
//! * **One thread, many actors.** The emperor runs a current-thread tokio runtime. Each vassal is an
//!   actor task (`vassal/`) that owns the vassal's sockets, process and control channel and drives a
//!   pure state machine (`fsm/`). Single-threaded on purpose: forking happens only on this thread,
//!   which lives as long as the emperor, so `PR_SET_PDEATHSIG` means "the emperor died" (style guide
//!   §2), and no per-vassal locking exists.
//! * **The main loop** (this file) only routes: inotify events and a slow rescan feed `scan.rs`, whose
//!   diff becomes `Update`/`Remove` commands; signals become broadcast commands. It parses a vassal
//!   file once per change, so a broken file is reported exactly once per change.
//! * **Nothing polls per vassal.** An idle vassal's actor sleeps on its channels and on a deadline
//!   derived from its state; with a loyal vassal and no heartbeat there is no deadline at all. The
//!   only periodic work is the directory rescan every `--emperor-freq` seconds.
//! * **Isolation.** Errors inside an actor are logged with the vassal's name and handled there; only
//!   a missing vassals directory or failing signal setup stops the emperor.
//! * **Shutdown** (SIGTERM/SIGINT/SIGQUIT): every actor gets `Shutdown`, stops its vassal gracefully
//!   (then SIGKILL after its stop timeout), releases its sockets and reports done; the emperor exits
//!   0 when the last one has.
//! * **Emperor-wide facts** about vassals live here, not in the actors: `good` holds each vassal's
//!   latest valid config (a file that became invalid keeps its last good one, as its actor does),
//!   and `--nginx-map` (`routes.rs`) is rendered from it after every scan and emptied at shutdown.
//! * **Stats and systemd.** `--emperor-stats` (`stats.rs`): the main loop accepts a client and hands it,
//!   with a copy of every actor's sender, to a task that asks each actor for a snapshot (bounded by a
//!   short deadline) and writes the document. Actors report each state change on one channel; the main
//!   loop keeps the state names for the systemd `STATUS=` line (`notify.rs`), sent at most once a second.
//! * **Manual control.** `--emperor-control` (`control.rs`) is served the same way: the main loop accepts,
//!   a task checks the client (SO_PEERCRED), reads its one line and asks the named actor.

mod arrivals;
mod conns;
mod control;
pub mod fsm;
mod listening;
mod notify;
mod output;
mod prepare;
mod reap;
mod routes;
mod scan;
mod sockets;
pub mod spawn;
mod stats;
pub use stats::unix_now;
mod vassal;
mod wait;

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use inotify::{Inotify, WatchMask};
use log::{error, info, warn};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::EmperorOptions;
use crate::config;
use scan::{Change, Snapshot};
use vassal::{Command, StateReport, VassalHandle};

/// How long the main loop waits after the first inotify event before scanning, to coalesce a burst.
const DEBOUNCE: Duration = Duration::from_millis(10);

/// Runs the emperor until it is told to stop. Returns the process exit code.
pub fn run(mut opts: EmperorOptions) -> ExitCode {
    crate::sys::fd::mark_inherited_fds_cloexec();
    opts.vassals_dir = match std::fs::canonicalize(&opts.vassals_dir) {
        Ok(d) if d.is_dir() => d,
        Ok(d) => return fatal(&format!("{} is not a directory", d.display())),
        Err(e) => {
            return fatal(&format!(
                "cannot open the vassals directory {}: {e}",
                opts.vassals_dir.display()
            ));
        }
    };
    opts.instance = instance_id(&opts.vassals_dir);
    // Bridges run in the vassal's directory (or its chdir): every path they are given must be absolute,
    // and so must the emperor's own, to mean the same files.
    if let Some(path) = &opts.nginx_map {
        match std::path::absolute(path) {
            Ok(p) => opts.nginx_map = Some(p),
            Err(e) => return fatal(&format!("--nginx-map {}: {e}", path.display())),
        }
    }
    if let Some(path) = &opts.docker_daemon_socket {
        match std::path::absolute(path) {
            Ok(p) => opts.docker_daemon_socket = Some(p),
            Err(e) => return fatal(&format!("--docker-daemon-socket {}: {e}", path.display())),
        }
    }
    match std::path::absolute(&opts.run_dir) {
        Ok(p) => opts.run_dir = p,
        Err(e) => return fatal(&format!("--emperor-run-dir {}: {e}", opts.run_dir.display())),
    }
    // Before the runtime starts any thread, so that every thread inherits the mask.
    if let Err(e) = arrivals::block_signals() {
        return fatal(&format!("cannot block the arrival signals: {e}"));
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fatal(&format!("cannot start the runtime: {e}")),
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&rt, Emperor::new(opts).run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fatal(&e),
    }
}

/// What the vassals directory's watch reports.
const DIR_MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR);

/// The inotify watch on the vassals directory, which follows the directory when it is deleted and
/// created again or replaced by a rename (a deploy that swaps it): an inotify watch belongs to an
/// inode, so a new directory under the same path needs a new watch. Its parent is watched for entries
/// created or moved in under the directory's name; the periodic rescan checks the inode as a backstop.
struct DirWatch {
    watches: inotify::Watches,
    dir: std::path::PathBuf,
    /// (device, inode) of the directory the watch is on.
    watched: Option<(u64, u64)>,
    parent: Option<inotify::WatchDescriptor>,
}

impl DirWatch {
    fn new(mut watches: inotify::Watches, dir: &std::path::Path) -> Result<DirWatch, String> {
        watches
            .add(dir, DIR_MASK)
            .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        let parent = dir.parent().and_then(|p| {
            watches
                .add(p, WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::ONLYDIR)
                .ok()
        });
        Ok(DirWatch {
            watched: dir_id(dir),
            watches,
            dir: dir.to_path_buf(),
            parent,
        })
    }

    fn is_parent(&self, wd: &inotify::WatchDescriptor) -> bool {
        self.parent.as_ref() == Some(wd)
    }

    fn names_dir(&self, name: Option<&std::ffi::OsStr>) -> bool {
        name.is_some() && name == self.dir.file_name()
    }

    /// Watches the directory again if the path now holds another one; true if it did.
    fn rewatch(&mut self) -> bool {
        let now = dir_id(&self.dir);
        if now.is_none() || now == self.watched {
            return false;
        }
        match self.watches.add(&self.dir, DIR_MASK) {
            Ok(_) => {
                info!("{} is a new directory; watching it", self.dir.display());
                self.watched = now;
                true
            }
            Err(e) => {
                warn!("cannot watch {} again: {e}", self.dir.display());
                false
            }
        }
    }
}

fn dir_id(dir: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

/// FNV-1a of the canonical vassals directory, as 16 hex digits.
fn instance_id(dir: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    crate::sys::hash::fnv1a_hex(dir.as_os_str().as_bytes())
}

fn fatal(msg: &str) -> ExitCode {
    error!("{msg}");
    ExitCode::FAILURE
}

struct Emperor {
    opts: Arc<EmperorOptions>,
    snapshot: Snapshot,
    vassals: HashMap<String, VassalHandle>,
    /// Every actor task; a finished (or, by a bug, panicked) actor is noticed here.
    actors: JoinSet<String>,
    /// The last scan error, so that a vanished directory is reported once, not every rescan.
    scan_error: Option<String>,
    /// Vassals whose current config is a Docker one: their containers are not orphans.
    docker_vassals: std::collections::HashSet<String>,
    /// Each vassal's latest valid config (kept while its file is invalid, dropped when it is gone).
    good: BTreeMap<String, Arc<config::VassalConfig>>,
    /// `--nginx-map`: the include file kept in step with `good`'s routes.
    nginx_map: Option<routes::NginxMap>,
    /// Every actor's state changes, for the systemd status line.
    reports: (mpsc::UnboundedSender<StateReport>, mpsc::UnboundedReceiver<StateReport>),
    /// Each vassal's state name, as last reported.
    states: BTreeMap<String, &'static str>,
    /// `NOTIFY_SOCKET`, when run by systemd.
    notify: Option<std::rc::Rc<notify::Notifier>>,
    /// The reader of arrival signals, for idle detection; `None` if it could not start.
    arrivals: Option<arrivals::Arrivals>,
}

impl Emperor {
    fn new(opts: EmperorOptions) -> Self {
        Emperor {
            opts: Arc::new(opts),
            snapshot: Snapshot::new(),
            vassals: HashMap::new(),
            actors: JoinSet::new(),
            scan_error: None,
            docker_vassals: Default::default(),
            good: BTreeMap::new(),
            nginx_map: None,
            reports: mpsc::unbounded_channel(),
            states: BTreeMap::new(),
            notify: notify::Notifier::from_env().map(std::rc::Rc::new),
            arrivals: None,
        }
    }

    async fn run(mut self) -> Result<(), String> {
        let sig = |kind: SignalKind| signal(kind).map_err(|e| format!("cannot install signal handlers: {e}"));
        let (mut term, mut int, mut quit) = (
            sig(SignalKind::terminate())?,
            sig(SignalKind::interrupt())?,
            sig(SignalKind::quit())?,
        );
        let (mut hup, mut usr1) = (sig(SignalKind::hangup())?, sig(SignalKind::user_defined1())?);
        let mut urg = sig(SignalKind::from_raw(libc::SIGURG))?;

        let dir = self.opts.vassals_dir.clone();
        let inotify = Inotify::init().map_err(|e| format!("cannot start inotify: {e}"))?;
        let mut events = inotify
            .into_event_stream([0u8; 4096])
            .map_err(|e| format!("cannot read inotify events: {e}"))?;
        let mut dir_watch = DirWatch::new(events.watches(), &dir)?;

        if let Some(path) = &self.opts.nginx_map {
            self.nginx_map = Some(routes::NginxMap::new(
                path.clone(),
                dir.clone(),
                self.opts.nginx_reload.clone(),
            ));
        }
        let control = match &self.opts.control {
            Some(path) => {
                let l = control::Listener::bind(path)?;
                info!("control socket on {}", path.display());
                Some(l)
            }
            None => None,
        };
        let stats = match &self.opts.stats {
            Some(addr) => {
                let l = stats::Listener::bind(addr, self.opts.chmod_socket)?;
                info!("stats server on {addr}");
                Some(l)
            }
            None => None,
        };
        self.arrivals = match arrivals::Arrivals::start() {
            Ok(a) => Some(a),
            Err(e) => {
                warn!("cannot read arrival signals ({e}): idle detection may miss short connections");
                None
            }
        };
        reap::run_dir_leftovers(&self.opts);
        self.rescan();
        info!("watching {} ({} vassals)", dir.display(), self.vassals.len());
        if let Some(n) = self.notify.clone() {
            // Commands are handled in order: once every actor has answered, each has handled its first
            // config, so every valid vassal was started.
            let first = stats::collect(self.senders());
            tokio::task::spawn_local(async move {
                first.await;
                n.send("READY=1");
            });
        }
        let mut status_at: Option<Instant> = None;
        let mut status_sent = (
            String::new(),
            Instant::now()
                .checked_sub(notify::STATUS_INTERVAL)
                .unwrap_or_else(Instant::now),
        );
        if self.opts.docker || !self.docker_vassals.is_empty() {
            tokio::task::spawn_local(reap::orphans(self.opts.clone(), self.docker_vassals.clone()));
        }

        let mut rescan = tokio::time::interval_at(Instant::now() + self.opts.freq, self.opts.freq);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut scan_at: Option<Instant> = None;
        let mut shutting_down = false;
        use futures_util::StreamExt;
        loop {
            tokio::select! {
                ev = events.next(), if !shutting_down => match ev {
                    Some(Ok(ev)) if dir_watch.is_parent(&ev.wd) => {
                        // The vassals directory was created again (or renamed into place): watch the new one.
                        if dir_watch.names_dir(ev.name.as_deref()) && dir_watch.rewatch() && scan_at.is_none() {
                            scan_at = Some(Instant::now() + DEBOUNCE);
                        }
                    }
                    Some(Ok(ev)) => {
                        let relevant = ev.name.as_deref().is_none_or(scan::is_vassal_name);
                        if relevant && scan_at.is_none() {
                            scan_at = Some(Instant::now() + DEBOUNCE);
                        }
                    }
                    Some(Err(e)) => {
                        warn!("inotify: {e}; rescanning");
                        scan_at = Some(Instant::now());
                    }
                    None => return Err("the inotify stream ended".into()),
                },
                _ = wait::sleep_until(scan_at), if scan_at.is_some() && !shutting_down => {
                    scan_at = None;
                    self.rescan();
                }
                _ = rescan.tick(), if !shutting_down => {
                    // A directory replaced while no parent event told us is watched again here.
                    dir_watch.rewatch();
                    self.rescan();
                }
                conn = wait::or_never(control.as_ref().map(control::Listener::accept)), if !shutting_down => match conn {
                    Ok(conn) => {
                        tokio::task::spawn_local(control::serve(conn, self.senders()));
                    }
                    Err(e) => warn!("control: cannot accept: {e}"),
                },
                conn = wait::or_never(stats.as_ref().map(stats::Listener::accept)), if !shutting_down => match conn {
                    Ok(conn) => {
                        tokio::task::spawn_local(stats::serve(conn, dir.clone(), self.senders()));
                    }
                    Err(e) => warn!("stats: cannot accept: {e}"),
                },
                Some((name, state)) = self.reports.1.recv() => {
                    self.states.insert(name, state);
                    if self.notify.is_some() && status_at.is_none() {
                        status_at = Some(Instant::now().max(status_sent.1 + notify::STATUS_INTERVAL));
                    }
                }
                _ = wait::sleep_until(status_at), if status_at.is_some() => {
                    status_at = None;
                    let line = notify::status_line(self.states.values().copied());
                    if let Some(n) = &self.notify && line != status_sent.0 {
                        n.send(&format!("STATUS={line}"));
                        status_sent = (line, Instant::now());
                    }
                }
                _ = term.recv() => shutting_down = self.begin_shutdown("SIGTERM"),
                _ = int.recv() => shutting_down = self.begin_shutdown("SIGINT"),
                _ = quit.recv() => shutting_down = self.begin_shutdown("SIGQUIT"),
                _ = hup.recv(), if !shutting_down => {
                    info!("SIGHUP: reloading every vassal");
                    // A vassal whose file changed is already reloading by the rescan; don't reload it twice.
                    let updated = self.rescan();
                    for (name, h) in &self.vassals {
                        if !updated.contains(name) {
                            let _ = h.tx.send(Command::Reload);
                        }
                    }
                }
                _ = usr1.recv() => {
                    info!("status: {} vassals, watching {}", self.vassals.len(), dir.display());
                    self.broadcast(|| Command::Status);
                }
                _ = urg.recv() => {
                    info!("SIGURG: clearing the throttle of every vassal");
                    self.broadcast(|| Command::ClearThrottle);
                }
                Some(res) = self.actors.join_next_with_id() => {
                    let id = match &res {
                        Ok((id, _)) => *id,
                        Err(e) => e.id(),
                    };
                    if let Err(e) = &res {
                        error!("a vassal actor failed (this is a bug): {e}");
                    }
                    let states = &mut self.states;
                    self.vassals.retain(|name, h| {
                        let keep = h.task != id;
                        if !keep {
                            states.remove(name);
                        }
                        keep
                    });
                }
            }
            if shutting_down && self.vassals.is_empty() {
                if let Some(map) = &mut self.nginx_map {
                    map.settle().await;
                }
                info!("every vassal has stopped; bye");
                return Ok(());
            }
        }
    }

    fn begin_shutdown(&mut self, signame: &str) -> bool {
        info!("{signame}: stopping {} vassals", self.vassals.len());
        if let Some(n) = &self.notify {
            n.send("STOPPING=1");
        }
        // nginx stops routing to the vassals first: unknown host (404), not a dying socket (502).
        if let Some(map) = &mut self.nginx_map {
            map.clear();
        }
        self.broadcast(|| Command::Shutdown);
        true
    }

    /// A copy of every actor's sender, for a task that asks them all something.
    fn senders(&self) -> Vec<(String, mpsc::UnboundedSender<Command>)> {
        self.vassals.iter().map(|(n, h)| (n.clone(), h.tx.clone())).collect()
    }

    fn broadcast(&self, cmd: impl Fn() -> Command) {
        for h in self.vassals.values() {
            let _ = h.tx.send(cmd());
        }
    }

    /// Scans the directory and turns the differences into commands. Returns the vassals it updated.
    fn rescan(&mut self) -> Vec<String> {
        let dir = self.opts.vassals_dir.clone();
        let new = match scan::scan(&dir) {
            Ok(s) => {
                if self.scan_error.take().is_some() {
                    info!("{} is readable again", dir.display());
                }
                s
            }
            Err(e) => {
                let msg = format!("cannot scan {}: {e}; vassals keep running as they are", dir.display());
                if self.scan_error.as_deref() != Some(&msg) {
                    error!("{msg}");
                    self.scan_error = Some(msg);
                }
                return Vec::new();
            }
        };
        let mut updated = Vec::new();
        for change in scan::diff(&self.snapshot, &new) {
            match change {
                // Permissions or ownership only: a running vassal is left alone (uWSGI reloads on mtime), a file
                // that could not be read is tried again.
                Change::Changed { name, meta_only: true } if self.good.contains_key(&name) => {}
                Change::Added(name) | Change::Changed { name, .. } => {
                    let entry = &new[&name];
                    if let Some(bad) = &entry.unusable {
                        self.unusable(name.clone(), bad);
                        updated.push(name);
                        continue;
                    }
                    let cfg = config::load(&dir.join(&name), &dir).and_then(|c| self.admit(c));
                    match &cfg {
                        Ok(c) if c.docker.is_some() => self.docker_vassals.insert(name.clone()),
                        _ => self.docker_vassals.remove(&name),
                    };
                    let cfg = cfg.map(Arc::new).map_err(Arc::new);
                    if let Ok(c) = &cfg {
                        self.good.insert(name.clone(), c.clone());
                    }
                    self.send(name.clone(), Command::Update(cfg));
                    updated.push(name);
                }
                Change::Removed(name) => self.remove(&name),
            }
        }
        self.snapshot = new;
        if let Some(map) = &mut self.nginx_map {
            map.sync(&self.good);
        }
        updated
    }

    /// The vassal's file is gone (deleted, moved out).
    fn remove(&mut self, name: &str) {
        self.docker_vassals.remove(name);
        self.good.remove(name);
        if let Some(h) = self.vassals.get(name) {
            let _ = h.tx.send(Command::Remove);
        }
    }

    /// An entry named like a vassal that cannot be one. A new one is shown as a vassal in error (one line in
    /// the log, a row in `emperor status`); a running vassal whose path stopped leading to a file (now a dangling
    /// symlink, a directory) is stopped as if the file were deleted, as uWSGI's emperor does when stat fails.
    fn unusable(&mut self, name: String, bad: &scan::Unusable) {
        if bad.gone && self.good.contains_key(&name) {
            let path = self.opts.vassals_dir.join(&name);
            warn!(
                "[{name}] {}: {}; stopping the vassal as if its file were deleted",
                config::printable(&path.display().to_string()),
                bad.why
            );
            self.remove(&name);
            return;
        }
        let e = config::ConfigError::file(&self.opts.vassals_dir.join(&name), bad.why.clone());
        self.docker_vassals.remove(&name);
        self.send(name, Command::Update(Err(Arc::new(e))));
    }

    /// Applies emperor-wide rules to a parsed vassal file.
    fn admit(&self, cfg: config::VassalConfig) -> Result<config::VassalConfig, config::ConfigError> {
        if self.opts.docker_required && cfg.docker.is_none() {
            return Err(config::ConfigError {
                path: cfg.path.clone(),
                problems: vec![config::Problem {
                    line: None,
                    column: None,
                    key: None,
                    value: None,
                    message: "refused: --emperor-docker-required is set and the file has no docker-image".into(),
                }],
            });
        }
        Ok(cfg)
    }

    /// Sends to the vassal's actor, starting one if there is none (or only a finished one).
    fn send(&mut self, name: String, cmd: Command) {
        let cmd = match self.vassals.get(&name) {
            Some(h) => match h.tx.send(cmd) {
                Ok(()) => return,
                Err(mpsc::error::SendError(cmd)) => cmd,
            },
            None => cmd,
        };
        let h = vassal::start(
            name.clone(),
            self.opts.clone(),
            &mut self.actors,
            self.reports.0.clone(),
            self.arrivals.clone(),
        );
        let _ = h.tx.send(cmd);
        self.vassals.insert(name, h);
    }
}
