//! The emperor role: watch a directory of vassal files and keep one vassal running per valid file.
//!
//! # Theory of operation
//! * **One thread, many actors.** The emperor runs a current-thread tokio runtime. Each vassal is an
//!   actor task (`vassal/`) that owns the vassal's sockets, process and control channel and drives a
//!   pure state machine (`fsm/`). Single-threaded on purpose: forking happens only on this thread,
//!   which lives as long as the emperor, so `PR_SET_PDEATHSIG` means "the emperor died" (style guide
//!   §2), and no per-vassal locking exists.
//! * **The main loop** (this file) only routes: inotify events and a slow rescan feed `scan.rs`, whose
//!   diff becomes `Update`/`Remove` commands; signals become broadcast commands. Its one `select!`
//!   hands each event to one `on_*` method. It parses a vassal file once per change, so a broken file
//!   is reported exactly once per change.
//! * **Nothing polls per vassal.** An idle vassal's actor sleeps on its channels and on a deadline
//!   derived from its state; with a loyal vassal and no heartbeat there is no deadline at all. The
//!   only periodic work is the directory rescan every `--emperor-freq` seconds.
//! * **Isolation.** Errors inside an actor are logged with the vassal's name and handled there; only
//!   start-up failures (a missing vassals directory, failing signal or inotify setup, a control or
//!   stats socket that cannot be bound) and the loss of the inotify stream stop the emperor: they
//!   are the [`Fatal`] type (`fatal.rs`).
//! * **Shutdown** (SIGTERM/SIGINT/SIGQUIT): every actor gets `Shutdown`, stops its vassal gracefully
//!   (then SIGKILL after its stop timeout), releases its sockets and reports done; the emperor exits
//!   0 when the last one has.
//! * **Emperor-wide facts** about vassals live here, not in the actors: `good` holds each vassal's
//!   latest valid config (a file that became invalid keeps its last good one, as its actor does),
//!   and `--nginx-map` (`routes.rs`) is rendered from it after every scan and emptied at shutdown;
//!   `--mail-auth` (`mail_auth/`) answers nginx's mail logins from it, through a `watch` channel its
//!   server task reads.
//! * **Stats and systemd.** `--emperor-stats` (`stats.rs`): the main loop accepts a client and hands it,
//!   with a copy of every actor's sender, to a task that asks each actor for a snapshot (bounded by a
//!   short deadline) and writes the document. Actors report each state change on one channel; the main
//!   loop keeps the state names for the systemd `STATUS=` line (`notify.rs`), sent at most once a second.
//!   `--emperor-metrics` (`stats/metrics.rs`) is served the same way from the same snapshots, over HTTP,
//!   with a bounded number of clients at once.
//! * **Manual control.** `--emperor-control` (`control.rs`) is served the same way: the main loop accepts,
//!   a task checks the client (SO_PEERCRED), reads its one line and asks the named actor.

mod arrivals;
mod build;
mod conns;
pub mod control;
mod daemon_watch;
mod fatal;
mod fleet;
pub mod fsm;
mod http;
mod listening;
pub(crate) mod mail_auth;
mod notify;
mod output;
mod prepare;
mod reap;
pub mod routes;
mod scan;
pub use scan::is_vassal_name;
mod sockets;
pub mod spawn;
pub(crate) mod stats;
pub use stats::unix_now;
mod vassal;
mod wait;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use inotify::{Inotify, WatchMask};
use log::{error, info, warn};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::EmperorOptions;
use crate::config;
use fatal::Fatal;
use scan::{Change, Snapshot};
use vassal::{Command, StateReport, VassalHandle};

/// How long the main loop waits after the first inotify event before scanning, to coalesce a burst.
const DEBOUNCE: Duration = Duration::from_millis(10);

/// Runs the emperor until it is told to stop. Returns the process exit code.
pub fn run(opts: EmperorOptions) -> ExitCode {
    let fatal = |e: Fatal| {
        error!("{e}");
        ExitCode::FAILURE
    };
    let opts = match prepare(opts) {
        Ok(opts) => opts,
        Err(e) => return fatal(e),
    };
    let policy = match policy_of(&opts) {
        Ok(p) => p,
        Err(e) => return fatal(e),
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fatal(Fatal::Runtime(e)),
    };
    let local = tokio::task::LocalSet::new();
    // Logged while the runtime and its actors still exist, as it always was.
    match local.block_on(&rt, Emperor::new(opts, policy).run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fatal(e),
    }
}

/// The policy every vassal is checked against: `--emperor-policy`'s, else the built-in one in tyrant mode,
/// else none (a vassal file can do what root can, README "Trust model").
fn policy_of(opts: &EmperorOptions) -> Result<Option<Arc<crate::policy::Policy>>, Fatal> {
    let policy = match &opts.policy {
        Some(path) => crate::policy::load(path).map_err(|e| Fatal::Policy(e.to_string()))?,
        None if opts.tyrant => crate::policy::Policy::built_in(),
        None => return Ok(None),
    };
    let socket = crate::docker::daemon::socket_path(opts.docker_daemon_socket.as_deref());
    Ok(Some(Arc::new(policy.with_docker_socket(&socket))))
}

/// Sanitises the process and makes the options' paths canonical or absolute, before any thread exists.
fn prepare(mut opts: EmperorOptions) -> Result<EmperorOptions, Fatal> {
    crate::sys::fd::mark_inherited_fds_cloexec();
    opts.vassals_dir = match std::fs::canonicalize(&opts.vassals_dir) {
        Ok(d) if d.is_dir() => d,
        Ok(d) => return Err(Fatal::NotADirectory(d)),
        Err(source) => {
            return Err(Fatal::VassalsDir {
                path: opts.vassals_dir,
                source,
            });
        }
    };
    opts.instance = match &opts.pg {
        Some(pg) => crate::sys::hash::fnv1a_hex(pg.identity.as_bytes()),
        None => instance_id(&opts.vassals_dir),
    };
    // Bridges run in the vassal's directory (or its chdir): every path they are given must be absolute,
    // and so must the emperor's own, to mean the same files.
    let absolute = |flag: &'static str, path: &std::path::Path| {
        std::path::absolute(path).map_err(|source| Fatal::Flag {
            flag,
            value: path.display().to_string(),
            source,
        })
    };
    if let Some(path) = &opts.nginx_map {
        opts.nginx_map = Some(absolute("--nginx-map", path)?);
    }
    if let Some(path) = &opts.docker_daemon_socket {
        opts.docker_daemon_socket = Some(absolute("--docker-daemon-socket", path)?);
    }
    opts.run_dir = absolute("--emperor-run-dir", &opts.run_dir)?;
    if let Some(path) = &opts.policy {
        opts.policy = Some(absolute("--emperor-policy", path)?);
    }
    // Before the runtime starts any thread, so that every thread inherits the mask.
    arrivals::block_signals().map_err(Fatal::BlockSignals)?;
    Ok(opts)
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
    fn new(mut watches: inotify::Watches, dir: &std::path::Path) -> Result<DirWatch, Fatal> {
        watches.add(dir, DIR_MASK).map_err(|source| Fatal::Watch {
            dir: dir.to_path_buf(),
            source,
        })?;
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

/// The signals the emperor acts on.
#[derive(Debug, Clone, Copy)]
enum Sig {
    Term,
    Int,
    Quit,
    Hup,
    Usr1,
    Urg,
}

/// The handlers of [`Sig`]'s signals, installed once at start-up.
struct Signals {
    term: Signal,
    int: Signal,
    quit: Signal,
    hup: Signal,
    usr1: Signal,
    urg: Signal,
}

impl Signals {
    fn install() -> Result<Signals, Fatal> {
        let sig = |kind: SignalKind| signal(kind).map_err(Fatal::Signals);
        Ok(Signals {
            term: sig(SignalKind::terminate())?,
            int: sig(SignalKind::interrupt())?,
            quit: sig(SignalKind::quit())?,
            hup: sig(SignalKind::hangup())?,
            usr1: sig(SignalKind::user_defined1())?,
            urg: sig(SignalKind::from_raw(libc::SIGURG))?,
        })
    }

    /// The next signal. SIGHUP (reload every vassal) waits while the emperor is shutting down.
    async fn recv(&mut self, shutting_down: bool) -> Sig {
        tokio::select! {
            _ = self.term.recv() => Sig::Term,
            _ = self.int.recv() => Sig::Int,
            _ = self.quit.recv() => Sig::Quit,
            _ = self.hup.recv(), if !shutting_down => Sig::Hup,
            _ = self.usr1.recv() => Sig::Usr1,
            _ = self.urg.recv() => Sig::Urg,
        }
    }
}

/// What the main loop waits on besides its actors, opened by [`Emperor::open`].
struct Inputs {
    signals: Signals,
    /// The vassals directory's events; `None` with a `pg://` source.
    events: Option<(inotify::EventStream<[u8; 4096]>, DirWatch)>,
    /// Each full read of a `pg://` source.
    rows: Option<mpsc::UnboundedReceiver<crate::fleet::pg::Rows>>,
    control: Option<control::Listener>,
    stats: Option<stats::Listener>,
    metrics: Option<stats::metrics::Server>,
}

/// The systemd `STATUS=` line: sent when a state changes, at most once per [`notify::STATUS_INTERVAL`].
struct StatusLine {
    /// When the next line is due, once a state has changed.
    due: Option<Instant>,
    /// The last line sent, and when.
    sent: String,
    sent_at: Instant,
}

struct Emperor {
    opts: Arc<EmperorOptions>,
    /// This emperor's claim on its instance, which tells other emperors on the daemon that it runs.
    owner: Option<crate::docker::owner::Held>,
    snapshot: Snapshot,
    vassals: HashMap<String, VassalHandle>,
    /// Every actor task; a finished (or, by a bug, panicked) actor is noticed here.
    actors: JoinSet<String>,
    /// The last scan error, so that a vanished directory is reported once, not every rescan.
    scan_error: Option<String>,
    /// When the debounced scan after inotify events is due.
    scan_due: Option<Instant>,
    /// Vassals whose current config is a Docker one: their containers are not orphans.
    docker_vassals: std::collections::HashSet<String>,
    /// Each vassal's latest valid config (kept while its file is invalid, dropped when it is gone).
    good: BTreeMap<String, Arc<config::VassalConfig>>,
    /// `--nginx-map`: the include file kept in step with `good`'s routes.
    nginx_map: Option<routes::NginxMap>,
    /// `--mail-auth`: nginx's mail logins answered from `good`'s routes.
    mail: Option<mail_auth::MailAuth>,
    /// Every actor's state changes, for the systemd status line.
    reports: (mpsc::UnboundedSender<StateReport>, mpsc::UnboundedReceiver<StateReport>),
    /// Each vassal's state name, as last reported.
    states: BTreeMap<String, &'static str>,
    /// `NOTIFY_SOCKET`, when run by systemd.
    notify: Option<std::rc::Rc<notify::Notifier>>,
    status: StatusLine,
    /// The reader of arrival signals, for idle detection; `None` if it could not start.
    arrivals: Option<arrivals::Arrivals>,
    /// A stop signal came: the loop waits only for the actors to finish.
    shutting_down: bool,
    /// What every vassal is checked against before anything is created for it (`--emperor-policy`, or the
    /// built-in one in tyrant mode).
    policy: Option<Arc<crate::policy::Policy>>,
    /// The policy file as last read (see [`policy_stamp`]).
    policy_stamp: Option<(i64, i64, u64, u64)>,
    /// Once Docker is in use: a message each time the daemon answers (at first and after an absence).
    daemon: Option<mpsc::UnboundedReceiver<()>>,
    /// A `pg://` source's rows as last read.
    rows: crate::fleet::pg::Rows,
    /// Route publication and hand-overs (`fleet.rs`).
    fleet: fleet::Fleet,
}

impl Emperor {
    fn new(opts: EmperorOptions, policy: Option<Arc<crate::policy::Policy>>) -> Self {
        Emperor {
            policy_stamp: opts.policy.as_deref().and_then(policy_stamp),
            opts: Arc::new(opts),
            policy,
            owner: None,
            snapshot: Snapshot::new(),
            vassals: HashMap::new(),
            actors: JoinSet::new(),
            scan_error: None,
            scan_due: None,
            docker_vassals: Default::default(),
            good: BTreeMap::new(),
            nginx_map: None,
            mail: None,
            reports: mpsc::unbounded_channel(),
            states: BTreeMap::new(),
            notify: notify::Notifier::from_env().map(std::rc::Rc::new),
            status: StatusLine {
                due: None,
                sent: String::new(),
                // Long enough ago that the first line goes out at once.
                sent_at: Instant::now()
                    .checked_sub(notify::STATUS_INTERVAL)
                    .unwrap_or_else(Instant::now),
            },
            arrivals: None,
            shutting_down: false,
            daemon: None,
            rows: Default::default(),
            fleet: fleet::Fleet::new(None),
        }
    }

    /// The main loop: each branch hands its event to one method.
    async fn run(mut self) -> Result<(), Fatal> {
        let mut inputs = self.open()?;
        self.start();
        let is_dir = inputs.events.is_some();
        let mut rescan = tokio::time::interval_at(Instant::now() + self.opts.freq, self.opts.freq);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        use futures_util::StreamExt;
        loop {
            let up = !self.shutting_down;
            tokio::select! {
                ev = wait::or_never(inputs.events.as_mut().map(|(e, _)| e.next())), if up && is_dir => {
                    if let Some((_, dir)) = inputs.events.as_mut() {
                        self.on_inotify(ev, dir)?;
                    }
                }
                _ = wait::sleep_until(self.scan_due), if self.scan_due.is_some() && up => self.on_scan_due(),
                _ = rescan.tick(), if up => self.on_rescan_tick(inputs.events.as_mut().map(|(_, d)| d)),
                Some(rows) = wait::or_never(inputs.rows.as_mut().map(|r| r.recv())), if up => self.on_rows(rows),
                Some(step) = self.fleet.next_step(), if up => self.on_handoff_step(step),
                conn = wait::or_never(inputs.control.as_ref().map(control::Listener::accept)), if up => {
                    self.on_control_client(conn);
                }
                conn = wait::or_never(inputs.stats.as_ref().map(stats::Listener::accept)), if up => {
                    self.on_stats_client(conn);
                }
                (slot, conn) = wait::or_never(inputs.metrics.as_ref().map(stats::metrics::Server::accept)), if up => {
                    self.on_metrics_client(slot, conn);
                }
                Some(report) = self.reports.1.recv() => self.on_report(report),
                _ = wait::sleep_until(self.status.due), if self.status.due.is_some() => self.on_status_due(),
                sig = inputs.signals.recv(self.shutting_down) => self.on_signal(sig),
                Some(res) = self.actors.join_next_with_id() => self.on_actor_done(res),
                Some(()) = wait::or_never(self.daemon.as_mut().map(|d| d.recv())) => self.on_daemon_answers(),
            }
            if self.shutting_down && self.vassals.is_empty() {
                self.finish().await;
                return Ok(());
            }
        }
    }

    /// Installs the signal handlers, watches the vassals directory, prepares `--nginx-map` and binds
    /// the control and stats sockets, in that order.
    fn open(&mut self) -> Result<Inputs, Fatal> {
        let signals = Signals::install()?;
        let dir = self.opts.vassals_dir.clone();
        let (events, rows) = match &self.opts.pg {
            None => {
                let inotify = Inotify::init().map_err(Fatal::Inotify)?;
                let events = inotify.into_event_stream([0u8; 4096]).map_err(Fatal::InotifyEvents)?;
                let dir_watch = DirWatch::new(events.watches(), &dir)?;
                (Some((events, dir_watch)), None)
            }
            Some(pg) => {
                info!(
                    "vassals from {} ({}); relative paths are under {}",
                    pg.shown,
                    pg.query,
                    dir.display()
                );
                (None, Some(crate::fleet::pg::follow(pg.clone(), self.opts.freq)))
            }
        };
        if let Some(routes) = &self.opts.routes {
            let publisher = crate::fleet::publish::Publisher::start(routes.clone()).map_err(Fatal::Routes)?;
            info!(
                "publishing routes to {} as {} (keys {}*, TTL {} s)",
                routes.redis,
                routes.address,
                routes.prefix,
                routes.ttl.as_secs()
            );
            self.fleet = fleet::Fleet::new(Some(publisher));
        }
        if let Some(path) = &self.opts.nginx_map {
            self.nginx_map = Some(routes::NginxMap::new(path.clone(), dir, self.opts.nginx_reload.clone()));
        }
        let flag =
            |flag: &'static str, value: String| move |source: std::io::Error| Fatal::Flag { flag, value, source };
        let control = match &self.opts.control {
            Some(path) => {
                let l = control::Listener::bind(path).map_err(flag("--emperor-control", path.display().to_string()))?;
                info!("control socket on {}", path.display());
                Some(l)
            }
            None => None,
        };
        if let Some(addr) = &self.opts.mail_auth {
            let l = stats::Listener::bind(addr, self.opts.chmod_socket).map_err(flag("--mail-auth", addr.clone()))?;
            info!("mail-auth on {addr}");
            self.mail = Some(mail_auth::MailAuth::start(l, self.nginx_map.is_none()));
        }
        let stats = match &self.opts.stats {
            Some(addr) => {
                let l = stats::Listener::bind(addr, self.opts.chmod_socket)
                    .map_err(flag("--emperor-stats", addr.clone()))?;
                info!("stats server on {addr}");
                Some(l)
            }
            None => None,
        };
        let metrics = match &self.opts.metrics {
            Some(addr) => {
                let l = stats::Listener::bind(addr, self.opts.chmod_socket)
                    .map_err(flag("--emperor-metrics", addr.clone()))?;
                info!("metrics on {addr} (GET /metrics)");
                Some(stats::metrics::Server::new(l))
            }
            None => None,
        };
        Ok(Inputs {
            signals,
            events,
            rows,
            control,
            stats,
            metrics,
        })
    }

    /// Starts the arrivals reader, cleans the run directory, starts every vassal and tells systemd
    /// once they have all handled their first config.
    fn start(&mut self) {
        self.arrivals = match arrivals::Arrivals::start() {
            Ok(a) => Some(a),
            Err(e) => {
                warn!("cannot read arrival signals ({e}): idle detection may miss short connections");
                None
            }
        };
        // Before any bridge of ours exists: other emperors on this daemon see from now on that we run.
        match crate::docker::owner::hold(&self.opts.run_dir, &self.opts.instance, &self.opts.vassals_dir) {
            Ok(held) => self.owner = Some(held),
            Err(e) => warn!(
                "cannot take {} ({e}): another emperor on {} may be running, or the run directory is not \
                 writable; other emperors on this Docker daemon will not see this one as alive",
                crate::docker::owner::lock_path(&self.opts.run_dir, &self.opts.instance).display(),
                self.opts.vassals_dir.display()
            ),
        }
        reap::run_dir_leftovers(&self.opts);
        if self.opts.pg.is_none() {
            self.rescan();
            info!(
                "watching {} ({} vassals)",
                self.opts.vassals_dir.display(),
                self.vassals.len()
            );
        }
        if let Some(n) = self.notify.clone() {
            // Commands are handled in order: once every actor has answered, each has handled its first
            // config, so every valid vassal was started.
            let first = stats::collect(self.senders());
            tokio::task::spawn_local(async move {
                first.await;
                n.send("READY=1");
            });
        }
        self.follow_docker();
    }

    /// Starts following the Docker daemon once Docker is in use (`--emperor-docker`, or a Docker vassal).
    fn follow_docker(&mut self) {
        if self.daemon.is_none() && (self.opts.docker || !self.docker_vassals.is_empty()) {
            self.daemon = Some(daemon_watch::start(
                self.opts.docker_daemon_socket.clone(),
                self.opts.instance.clone(),
            ));
        }
    }

    /// The daemon answers (at first, or after an absence): reap the containers no vassal owns, such as those
    /// of vassals removed while it was away.
    fn on_daemon_answers(&mut self) {
        tokio::task::spawn_local(reap::orphans(self.opts.clone(), self.docker_vassals.clone()));
    }

    /// An event on the vassals directory (or its parent): a scan soon, coalescing a burst.
    fn on_inotify(
        &mut self,
        ev: Option<std::io::Result<inotify::Event<OsString>>>,
        dir: &mut DirWatch,
    ) -> Result<(), Fatal> {
        match ev {
            Some(Ok(ev)) if dir.is_parent(&ev.wd) => {
                // The vassals directory was created again (or renamed into place): watch the new one.
                if dir.names_dir(ev.name.as_deref()) && dir.rewatch() {
                    self.scan_soon();
                }
            }
            Some(Ok(ev)) => {
                if ev.name.as_deref().is_none_or(scan::is_vassal_name) {
                    self.scan_soon();
                }
            }
            Some(Err(e)) => {
                warn!("inotify: {e}; rescanning");
                self.scan_due = Some(Instant::now());
            }
            None => return Err(Fatal::InotifyEnded),
        }
        Ok(())
    }

    /// The debounced scan after inotify events.
    fn on_scan_due(&mut self) {
        self.scan_due = None;
        self.rescan();
    }

    /// The periodic rescan, the backstop for events inotify did not give.
    fn on_rescan_tick(&mut self, dir: Option<&mut DirWatch>) {
        // A directory replaced while no parent event told us is watched again here.
        if let Some(dir) = dir {
            dir.rewatch();
            self.rescan();
        }
        self.recheck_policy();
    }

    /// `--emperor-policy`'s file changed (looked at every rescan tick): read it again and check every vassal
    /// against it. A broken file keeps the old policy (one line); a vassal that became illegal is stopped
    /// with its refusal; a legal one whose forced settings changed is restarted with them; others are left
    /// alone. A vassal stopped this way is checked again at the next change of its file or of the policy.
    fn recheck_policy(&mut self) {
        let Some(path) = self.opts.policy.clone() else { return };
        let stamp = policy_stamp(&path);
        if stamp == self.policy_stamp {
            return;
        }
        self.policy_stamp = stamp;
        let policy = match crate::policy::load(&path) {
            Ok(p) => p.with_docker_socket(&crate::docker::daemon::socket_path(
                self.opts.docker_daemon_socket.as_deref(),
            )),
            Err(e) => return error!("{e}; the policy in force stays as it was"),
        };
        info!("{} changed: checking every vassal against it", path.display());
        self.policy = Some(Arc::new(policy));
        let names: Vec<String> = match &self.opts.pg {
            None => self
                .snapshot
                .iter()
                .filter(|(_, e)| e.unusable.is_none())
                .map(|(n, _)| n.clone())
                .collect(),
            Some(_) => self
                .rows
                .iter()
                .filter(|(n, r)| r.problem.is_none() && !r.handoff && !self.fleet.handing_over(n))
                .map(|(n, _)| n.clone())
                .collect(),
        };
        for name in names {
            let cfg = self.load(&name);
            match (cfg, self.good.get(&name).cloned()) {
                (Ok(c), Some(old)) if *old == c => {}
                (Ok(c), _) => {
                    let c = Arc::new(c);
                    if c.docker.is_some() {
                        self.docker_vassals.insert(name.clone());
                    }
                    self.good.insert(name.clone(), c.clone());
                    self.send(name, Command::Update(Ok(c)));
                }
                (Err(e), Some(_)) => {
                    error!("{e}");
                    self.good.remove(&name);
                    if let Some(h) = self.vassals.get(&name) {
                        let _ = h.tx.send(Command::Remove);
                    }
                }
                (Err(_), None) => {}
            }
        }
        self.synced();
    }

    /// Schedules a scan after [`DEBOUNCE`], unless one is already due.
    fn scan_soon(&mut self) {
        if self.scan_due.is_none() {
            self.scan_due = Some(Instant::now() + DEBOUNCE);
        }
    }

    fn on_control_client(&mut self, conn: std::io::Result<tokio::net::UnixStream>) {
        match conn {
            Ok(conn) => {
                tokio::task::spawn_local(control::serve(conn, self.senders()));
            }
            Err(e) => warn!("control: cannot accept: {e}"),
        }
    }

    fn on_stats_client(&mut self, conn: std::io::Result<stats::Conn>) {
        match conn {
            Ok(conn) => {
                tokio::task::spawn_local(stats::serve(conn, self.opts.vassals_dir.clone(), self.senders()));
            }
            Err(e) => warn!("stats: cannot accept: {e}"),
        }
    }

    fn on_metrics_client(&mut self, slot: tokio::sync::OwnedSemaphorePermit, conn: std::io::Result<stats::Conn>) {
        match conn {
            Ok(conn) => {
                let dir = self.opts.vassals_dir.clone();
                tokio::task::spawn_local(stats::metrics::serve(conn, slot, dir, self.senders()));
            }
            Err(e) => warn!("metrics: cannot accept: {e}"),
        }
    }

    /// An actor's state changed: the status line is due, no sooner than [`notify::STATUS_INTERVAL`]
    /// after the last one.
    fn on_report(&mut self, (name, state): StateReport) {
        let was = self.states.insert(name, state);
        // The routes follow only whether a vassal is published: most reports (starting → running, a pause) leave
        // that alone, and rebuilding the route table for each made a fleet's start quadratic.
        if was.is_none_or(|w| fleet::publishable(w) != fleet::publishable(state)) {
            self.fleet.sync(&self.good, &self.states);
        }
        if self.notify.is_some() && self.status.due.is_none() {
            self.status.due = Some(Instant::now().max(self.status.sent_at + notify::STATUS_INTERVAL));
        }
    }

    /// Sends the status line, if it changed.
    fn on_status_due(&mut self) {
        self.status.due = None;
        let line = notify::status_line(self.states.values().copied());
        if let Some(n) = &self.notify
            && line != self.status.sent
        {
            n.send(&format!("STATUS={line}"));
            self.status.sent = line;
            self.status.sent_at = Instant::now();
        }
    }

    fn on_signal(&mut self, sig: Sig) {
        match sig {
            Sig::Term => self.begin_shutdown("SIGTERM"),
            Sig::Int => self.begin_shutdown("SIGINT"),
            Sig::Quit => self.begin_shutdown("SIGQUIT"),
            Sig::Hup => {
                info!("SIGHUP: reloading every vassal");
                // A vassal whose file changed is already reloading by the rescan; don't reload it twice.
                let updated = self.rescan();
                for (name, h) in &self.vassals {
                    if !updated.contains(name) {
                        let _ = h.tx.send(Command::Reload);
                    }
                }
            }
            Sig::Usr1 => {
                info!(
                    "status: {} vassals, watching {}",
                    self.vassals.len(),
                    self.opts.vassals_dir.display()
                );
                self.broadcast(|| Command::Status);
            }
            Sig::Urg => {
                info!("SIGURG: clearing the throttle of every vassal");
                self.broadcast(|| Command::ClearThrottle);
            }
        }
    }

    /// An actor task ended (its vassal is gone, or it panicked): its handle and state go with it.
    fn on_actor_done(&mut self, res: Result<(tokio::task::Id, String), tokio::task::JoinError>) {
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

    fn begin_shutdown(&mut self, signame: &str) {
        info!("{signame}: stopping {} vassals", self.vassals.len());
        if let Some(n) = &self.notify {
            n.send("STOPPING=1");
        }
        // nginx stops routing to the vassals first: unknown host (404), not a dying socket (502); so does a
        // front on another host (routes withdrawn from Redis, waited for in `finish`).
        if let Some(map) = &mut self.nginx_map {
            map.clear();
        }
        if let Some(mail) = &self.mail {
            mail.close();
        }
        self.fleet.withdraw_all_soon();
        self.broadcast(|| Command::Shutdown);
        self.shutting_down = true;
    }

    /// Every actor has finished after a stop signal.
    async fn finish(&mut self) {
        self.fleet.withdraw_all().await;
        if let Some(map) = &mut self.nginx_map {
            map.settle().await;
        }
        info!("every vassal has stopped; bye");
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
        if self.opts.pg.is_some() {
            // The directory is only where relative paths start; the rows are read by `fleet::pg`.
            return Vec::new();
        }
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
                Change::Changed { name, meta_only: true }
                    if self.good.contains_key(&name) && !self.owner_changed(&name) => {}
                Change::Added(name) | Change::Changed { name, .. } => {
                    let entry = &new[&name];
                    if let Some(bad) = &entry.unusable {
                        self.unusable(name.clone(), bad);
                        updated.push(name);
                        continue;
                    }
                    let cfg = self.load(&name);
                    self.apply(name.clone(), cfg);
                    updated.push(name);
                }
                Change::Removed(name) => self.remove(&name),
            }
        }
        self.snapshot = new;
        self.synced();
        updated
    }

    /// After vassals came, changed or went: the nginx map, the published routes and the daemon's watch follow.
    fn synced(&mut self) {
        if let Some(map) = &mut self.nginx_map {
            map.sync(&self.good);
        }
        if let Some(mail) = &mut self.mail {
            mail.sync(&self.good);
        }
        self.fleet.sync(&self.good, &self.states);
        self.follow_docker();
    }

    /// A vassal's new config (or why it has none) goes to its actor.
    fn apply(&mut self, name: String, cfg: Result<config::VassalConfig, config::ConfigError>) {
        match &cfg {
            Ok(c) if c.docker.is_some() => self.docker_vassals.insert(name.clone()),
            _ => self.docker_vassals.remove(&name),
        };
        let cfg = cfg.map(Arc::new).map_err(Arc::new);
        if let Ok(c) = &cfg {
            self.good.insert(name.clone(), c.clone());
        }
        self.send(name, Command::Update(cfg));
    }

    /// Where the vassal `name` comes from, as errors name it: its file, or `pg:<name>` for a row.
    fn vassal_path(&self, name: &str) -> std::path::PathBuf {
        match &self.opts.pg {
            None => self.opts.vassals_dir.join(name),
            Some(_) => std::path::PathBuf::from(format!("pg:{name}")),
        }
    }

    /// Reads, parses and admits the vassal `name` from its source: its file, or its row as last read.
    fn load(&self, name: &str) -> Result<config::VassalConfig, config::ConfigError> {
        let dir = &self.opts.vassals_dir;
        if self.opts.pg.is_none() {
            return config::load(&dir.join(name), dir).and_then(|c| self.admit(c, None));
        }
        let path = self.vassal_path(name);
        let row = self
            .rows
            .get(name)
            .ok_or_else(|| config::ConfigError::file(&path, "its row is gone"))?;
        if let Some(why) = &row.problem {
            return Err(config::ConfigError::file(&path, why.clone()));
        }
        config::parse(name, &path, &row.config, dir).and_then(|c| self.admit(c, Some(row)))
    }

    /// A full read of the `pg://` source: new rows start, changed ones (ts, config, uid, gid) reload, vanished
    /// ones stop; a row handed over to another host goes through [`fleet::Fleet::hand_over`].
    fn on_rows(&mut self, rows: crate::fleet::pg::Rows) {
        let old = std::mem::replace(&mut self.rows, rows);
        let names: std::collections::BTreeSet<String> = old.keys().chain(self.rows.keys()).cloned().collect();
        for name in names {
            let (prev, row) = (old.get(&name), self.rows.get(&name).cloned());
            match row {
                None => {
                    self.fleet.keep(&name);
                    self.remove(&name);
                }
                Some(row) if row.handoff => {
                    let Some(cfg) = self.good.get(&name).cloned() else {
                        // Not running here (in error, or already handed over): nothing to hand over.
                        if self.vassals.contains_key(&name) && !self.fleet.handing_over(&name) {
                            self.remove(&name);
                        }
                        continue;
                    };
                    if !self.fleet.handing_over(&name) && self.fleet.hand_over(&name, &cfg) {
                        self.remove(&name);
                    }
                }
                Some(row) => {
                    let was_handing_over = self.fleet.handing_over(&name);
                    self.fleet.keep(&name);
                    let returned = prev.is_some_and(|p| p.handoff) && !self.good.contains_key(&name);
                    if was_handing_over || returned || prev.is_none_or(|p| !p.same_vassal(&row)) {
                        if let Some(why) = &row.problem {
                            self.unusable(name, why);
                            continue;
                        }
                        let unchanged = was_handing_over && prev.is_some_and(|p| p.same_vassal(&row));
                        if !unchanged {
                            let cfg = self.load(&name);
                            self.apply(name, cfg);
                        }
                    }
                }
            }
        }
        self.synced();
    }

    /// A hand-over moved on: its route is withdrawn, or it has drained and the vassal stops.
    fn on_handoff_step(&mut self, step: fleet::Step) {
        if !self.fleet.current(&step) {
            return;
        }
        self.fleet.step(&step);
        if let fleet::Step::Stop(name) = &step {
            info!("[{name}] handed over to another host: stopping it");
            self.remove(name);
        }
        self.synced();
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
    fn unusable(&mut self, name: String, why: &str) {
        if self.good.contains_key(&name) {
            let path = self.vassal_path(&name);
            warn!(
                "[{name}] {}: {}; stopping the vassal as if its file were deleted",
                config::printable(&path.display().to_string()),
                why
            );
            self.remove(&name);
            return;
        }
        let e = config::ConfigError::file(&self.vassal_path(&name), why);
        self.docker_vassals.remove(&name);
        self.send(name, Command::Update(Err(Arc::new(e))));
    }

    /// Applies emperor-wide rules to a parsed vassal file.
    /// `row`: the vassal's `pg://` row, whose uid and gid stand for a file's owner.
    fn admit(
        &self,
        cfg: config::VassalConfig,
        row: Option<&crate::fleet::pg::Row>,
    ) -> Result<config::VassalConfig, config::ConfigError> {
        if self.opts.docker_required && cfg.docker.is_none() {
            return Err(config::ConfigError {
                path: cfg.path.clone(),
                problems: vec![config::Problem {
                    line: None,
                    column: None,
                    key: None,
                    value: None,
                    message:
                        "refused: --emperor-docker-required is set and the file has no docker-image (or docker-build)"
                            .into(),
                }],
            });
        }
        // A row's owner is its uid and gid; root when they are NULL (whoever can write the table decides).
        let row_owner = row.map(|r| config::RunAs {
            uid: r.uid.unwrap_or(0),
            gid: r.gid.unwrap_or(0),
        });
        let run_as = if self.opts.tyrant {
            let owner = match row {
                None => file_owner(&cfg, self.opts.tyrant_nofollow)?,
                Some(r) if r.uid.is_none() || r.gid.is_none() => {
                    return Err(config::ConfigError::file(
                        &cfg.path,
                        "refused: in tyrant mode a row needs its uid and gid (the query's 4th and 5th columns)",
                    ));
                }
                Some(r) if r.uid == Some(0) || r.gid == Some(0) => {
                    return Err(config::ConfigError::file(
                        &cfg.path,
                        "refused: in tyrant mode a row of uid 0 or gid 0 never runs; set its uid and gid to the user \
                         it should run as",
                    ));
                }
                Some(_) => row_owner.unwrap_or(config::RunAs { uid: 0, gid: 0 }),
            };
            Some(tyrant_owner(&cfg, owner)?)
        } else {
            None
        };
        let mut cfg = match &self.policy {
            Some(policy) => check_policy(policy, cfg, !self.opts.tyrant_nofollow, row_owner)?,
            None => cfg,
        };
        cfg.owner = row_owner;
        Ok(cfg.with_name_prefix(&self.opts.docker_name_prefix).running_as(run_as))
    }

    /// Tyrant mode: whether the owner of a running vassal's file changed (a chown does not change its
    /// mtime, so the scan sees a change of metadata only): then it restarts as the new owner.
    fn owner_changed(&self, name: &str) -> bool {
        let Some(good) = self.good.get(name).filter(|_| self.opts.tyrant) else {
            return false;
        };
        file_owner(good, self.opts.tyrant_nofollow)
            .and_then(|owner| tyrant_owner(good, owner))
            .ok()
            != good.run_as
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

/// Tyrant mode: the owner of the vassal file of `cfg` (the symlink's own with `nofollow`, as uWSGI's
/// `emperor-tyrant-nofollow`).
fn file_owner(cfg: &config::VassalConfig, nofollow: bool) -> Result<config::RunAs, config::ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let meta = if nofollow {
        std::fs::symlink_metadata(&cfg.path)
    } else {
        std::fs::metadata(&cfg.path)
    }
    .map_err(|e| config::ConfigError::file(&cfg.path, format!("cannot read its owner: {e}")))?;
    Ok(config::RunAs {
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// Tyrant mode: whether the vassal of `cfg` may run as `owner` (its file's, or its row's). An owner of uid 0
/// or gid 0 is refused: it would run as root, and anyone who can make root own a file is root already. A
/// Docker vassal's `docker-user` may only name the owner (the container's user is forced to it anyway).
fn tyrant_owner(cfg: &config::VassalConfig, owner: config::RunAs) -> Result<config::RunAs, config::ConfigError> {
    let refuse = |key: Option<&str>, value: Option<String>, message: String| config::ConfigError {
        path: cfg.path.clone(),
        problems: vec![config::Problem {
            line: None,
            column: None,
            key: key.map(String::from),
            value,
            message,
        }],
    };
    // The same words as `emperor check --tyrant`.
    if let Some(r) = crate::policy::refuse_root_owner(&cfg.path, &crate::policy::Owner::of_ids(owner.uid, owner.gid)) {
        return Err(config::ConfigError {
            path: cfg.path.clone(),
            problems: vec![r.to_problem()],
        });
    }
    // The vassal's sockets belong to its owner; it may hand one to a group of its own, never to someone else.
    if let Some(chown) = &cfg.chown_socket {
        let groups = crate::sys::tenant::Tenant::of(owner.uid, owner.gid).groups;
        let user_ok = chown.uid.is_none_or(|u| u == owner.uid);
        let group_ok = chown.gid.is_none_or(|g| g == owner.gid || groups.contains(&g));
        if !(user_ok && group_ok) {
            let line = cfg.lines.iter().find(|l| l.key == "chown-socket");
            return Err(config::ConfigError {
                path: cfg.path.clone(),
                problems: vec![config::Problem {
                    line: line.and_then(|l| l.line),
                    column: None,
                    key: Some("chown-socket".into()),
                    value: line.map(|l| l.value.clone()),
                    message: format!(
                        "refused: in tyrant mode a vassal's sockets belong to its file's owner ({owner}); chown-socket \
                         may only name that user and its groups"
                    ),
                }],
            });
        }
    }
    if let Some(user) = cfg.docker.as_ref().and_then(|d| d.user.as_deref()) {
        let own_name = crate::sys::users::by_uid(owner.uid).map(|u| u.name);
        let who = user.split(':').next().unwrap_or(user);
        let same = user == owner.to_string() || who == owner.uid.to_string() || Some(who) == own_name.as_deref();
        let group_ok = user.split_once(':').is_none_or(|(_, g)| g == owner.gid.to_string());
        if !(same && group_ok) {
            return Err(refuse(
                Some("docker-user"),
                Some(user.to_string()),
                format!(
                    "refused: in tyrant mode the container runs as the file's owner ({owner}); docker-user may \
                     only name that user"
                ),
            ));
        }
    }
    Ok(owner)
}

/// Checks a vassal against the policy before anything is created for it: every refusal becomes one problem
/// of the file, in the policy's words (`shop.ini:5: [emperor] docker-mount = "/:/host": refused by
/// policy.ini:3 (mount-root = /srv/tenants/%U)`).
fn check_policy(
    policy: &crate::policy::Policy,
    cfg: config::VassalConfig,
    follow: bool,
    row_owner: Option<config::RunAs>,
) -> Result<config::VassalConfig, config::ConfigError> {
    let path = cfg.path.clone();
    let owner = match row_owner {
        Some(o) => Ok(crate::policy::Owner::of_ids(o.uid, o.gid)),
        None => crate::policy::Owner::of_file(&path, follow),
    };
    let owner = owner.map_err(|e| config::ConfigError {
        path: path.clone(),
        problems: vec![config::Problem {
            line: None,
            column: None,
            key: None,
            value: None,
            message: format!("cannot read its owner: {e}"),
        }],
    })?;
    crate::policy::admit(policy, cfg, &owner).map_err(|refusals| config::ConfigError {
        path,
        problems: refusals.iter().map(crate::policy::Refusal::to_problem).collect(),
    })
}

/// What tells a changed policy file: its mtime, ctime, size and inode (a file replaced by a rename too).
fn policy_stamp(path: &std::path::Path) -> Option<(i64, i64, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| {
        (
            m.mtime_nsec() + m.mtime() * 1_000_000_000,
            m.ctime_nsec() + m.ctime() * 1_000_000_000,
            m.size(),
            m.ino(),
        )
    })
}
