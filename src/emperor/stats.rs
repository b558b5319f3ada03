//! `--emperor-stats`: the stats server, uWSGI style. A client that connects receives one JSON document
//! and the connection is closed; nothing is read from it.
//!
//! Each actor owns its vassal's state, so the document is assembled from snapshots: the serving task
//! sends every actor [`Command::Snapshot`] and waits for the answers with one short deadline
//! ([`SNAPSHOT_TIMEOUT`]), so a stuck actor cannot hold the document back (it is listed with
//! `"state": "unresponsive"`). Socket loads are measured once per document from the kernel's tables
//! (`conns.rs`). The document is built with `serde_json` (already compiled in as bollard's dependency),
//! so every string is escaped and the output is valid JSON whatever a vassal is called; uWSGI 2.1's
//! `attrs` list of `key: value` pairs is exactly the kind of invalid output this avoids.
//!
//! Memory and CPU time are read once per document too (`usage.rs`): one pass over /proc for the
//! process vassals, a few cgroup files per Docker vassal.
//!
//! `--emperor-metrics` (`metrics.rs`) shows the same figures to Prometheus: it collects the snapshots
//! the same way and measures them through the same [`Sources::measure`], so the two never disagree.

pub mod exposition;
pub mod metrics;
mod usage;

use std::collections::HashSet;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, warn};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::conns;
use super::fsm::{Fsm, State};
use super::spawn::Exit;
use super::vassal::Command;
use crate::config::SocketSpec;

/// How long the document waits for all actors' snapshots together.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a client gets to take the document.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What one actor reports about its vassal.
#[derive(Debug, Clone)]
pub struct VassalStats {
    pub id: String,
    pub pid: i32,
    pub loyal: bool,
    pub ready: bool,
    pub accepting: bool,
    pub last_heartbeat: u64,
    pub last_mod: u64,
    pub on_demand: String,
    pub respawns: u32,
    pub state: &'static str,
    pub kind: &'static str,
    pub container: Option<String>,
    pub sockets: Vec<SocketStat>,
    /// Where the current bridge writes its container's id, init pid and hand-over time (Docker).
    pub bridge_info: Option<PathBuf>,
    pub attempts: u32,
    /// The throttle delay of the current attempt and when it ends.
    pub throttle: Option<(Duration, u64)>,
    pub error: Option<String>,
    pub track: Track,
    /// A vassal with `replicas` (max > 1): its range, how many run now, and instances 1.. (0 is the above).
    pub replicas: Option<ReplicaSet>,
}

/// The `replicas` of a vassal.
#[derive(Debug, Clone)]
pub struct ReplicaSet {
    pub min: u32,
    pub max: u32,
    pub count: u32,
    /// Instances 1.., each with its bridge's record (Docker).
    pub others: Vec<(crate::emperor::vassal::ReplicaStat, Option<PathBuf>)>,
}

/// One of the vassal's listening sockets.
#[derive(Debug, Clone)]
pub struct SocketStat {
    pub spec: SocketSpec,
    /// The socket's inode (`st_ino` of its fd), by which sock_diag reports its accept queue.
    pub inode: Option<u64>,
}

impl SocketStat {
    pub fn of(spec: &SocketSpec, fd: BorrowedFd<'_>) -> SocketStat {
        SocketStat {
            spec: spec.clone(),
            inode: nix::sys::stat::fstat(fd).ok().map(|st| st.st_ino),
        }
    }
}

/// Times and outcomes the state machine does not keep, recorded by the actor as they happen.
#[derive(Debug, Clone, Default)]
pub struct Track {
    pub state: &'static str,
    pub state_since: u64,
    pub first_run: u64,
    pub last_run: u64,
    pub last_loyal: u64,
    pub last_ready: u64,
    pub last_accepting: u64,
    /// `{code|signal, reason}` of the last process that ended (or failed to start).
    pub last_exit: Option<Value>,
    /// The file's current error, while a running vassal keeps its last good config.
    pub config_error: Option<String>,
    loyal: bool,
    ready: bool,
    accepting: bool,
    /// The last spawn, to time its start.
    spawn: Option<Spawn>,
    /// Milliseconds from the last spawn until the process said `ready` or `accepting`, and which.
    start: Option<(u64, &'static str)>,
    /// Every start's time, for `--emperor-metrics`.
    pub starts: StartTimes,
}

/// How long starts took, per milestone: each spawn is counted once in each milestone it reached.
#[derive(Debug, Clone, Default)]
pub struct StartTimes {
    /// Until the process said `ready` (byte 1).
    pub ready: exposition::Histogram,
    /// Until it said `accepting` (byte 5).
    pub accepting: exposition::Histogram,
    /// Until a bridge handed the container its sockets (Docker).
    pub handover: exposition::Histogram,
}

#[derive(Debug, Clone, Copy)]
struct Spawn {
    pid: i32,
    at: Instant,
    unix_ms: u64,
    /// It said `ready`.
    ready: bool,
    /// It said `accepting`: nothing later moves the figure.
    settled: bool,
    /// Its hand-over was counted.
    handover: bool,
}

/// UNIX seconds now.
pub fn unix_now() -> u64 {
    to_unix(SystemTime::now())
}

fn to_unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A monotonic instant as UNIX seconds.
pub fn instant_to_unix(t: Instant) -> u64 {
    let now = Instant::now();
    let sys = if t <= now {
        SystemTime::now() - (now - t)
    } else {
        SystemTime::now() + (t - now)
    };
    to_unix(sys)
}

impl Track {
    /// Notes what changed since the last look; returns the new state's name if it changed.
    pub fn observe(&mut self, fsm: &Fsm) -> Option<&'static str> {
        let now = unix_now();
        let inst = fsm.state().instance();
        let flags = inst.map_or((false, false, false), |i| (i.loyal, i.ready, i.accepting));
        if flags.0 && !self.loyal {
            self.last_loyal = now;
        }
        if flags.1 && !self.ready {
            self.last_ready = now;
        }
        if flags.2 && !self.accepting {
            self.last_accepting = now;
        }
        (self.loyal, self.ready, self.accepting) = flags;
        self.time_start(inst);
        let name = fsm.state().name();
        if name != self.state {
            self.state = name;
            self.state_since = now;
            return Some(name);
        }
        None
    }

    /// A process was spawned (for an on-demand vassal, on the connection that activated it); `at`
    /// is taken before the fork, so that the start time never misses what the child did before the
    /// emperor got back to recording it.
    pub fn spawned(&mut self, pid: i32, at: Instant) {
        let now = unix_now();
        if self.first_run == 0 {
            self.first_run = now;
        }
        self.last_run = now;
        self.spawn = Some(Spawn {
            pid,
            at,
            unix_ms: crate::docker::record::unix_ms().saturating_sub(at.elapsed().as_millis() as u64),
            ready: false,
            settled: false,
            handover: false,
        });
        self.start = None;
    }

    /// Times the last spawn until its process first says `ready`, then until it says `accepting`
    /// (uWSGI sends both; `accepting` means a worker takes connections, so it wins). Only the process
    /// that was spawned counts: after a failed overlapping reload the old one is current again, and
    /// its flags are not this start's.
    /// Each milestone is counted once per spawn in [`Track::starts`].
    fn time_start(&mut self, inst: Option<&super::fsm::Instance>) {
        let (Some(sp), Some(i)) = (self.spawn.as_mut(), inst) else {
            return;
        };
        if i.pid != sp.pid {
            return;
        }
        let took = sp.at.elapsed();
        let ms = took.as_millis() as u64;
        if i.ready && !sp.ready {
            sp.ready = true;
            self.starts.ready.observe(took);
            if !sp.settled {
                self.start = Some((ms, "ready"));
            }
        }
        if i.accepting && !sp.settled {
            sp.settled = true;
            self.starts.accepting.observe(took);
            self.start = Some((ms, "accepting"));
        }
    }

    /// The last spawn's hand-over is not counted yet.
    pub fn awaits_handover(&self) -> bool {
        self.spawn.is_some_and(|s| !s.handover)
    }

    /// The last spawned bridge handed its container the sockets at `handover_ms` (UNIX milliseconds,
    /// from its record): counted once per spawn.
    pub fn handed_over(&mut self, handover_ms: u64) {
        let Some(sp) = self.spawn.as_mut() else { return };
        if sp.handover || handover_ms < sp.unix_ms {
            return;
        }
        sp.handover = true;
        self.starts
            .handover
            .observe(Duration::from_millis(handover_ms - sp.unix_ms));
    }

    /// When the last process was spawned (UNIX milliseconds).
    pub fn spawned_ms(&self) -> Option<u64> {
        self.spawn.map(|s| s.unix_ms)
    }

    /// How long the last start took, and until what: `accepting` or `ready` when the process said
    /// so, else `handover` when a bridge handed the container its sockets at `handover_ms`.
    pub fn last_start(&self, handover_ms: Option<u64>) -> Option<(u64, &'static str)> {
        self.start.or_else(|| {
            let sp = self.spawn?;
            let h = handover_ms.filter(|h| *h >= sp.unix_ms)?;
            Some((h - sp.unix_ms, "handover"))
        })
    }

    /// The process ended; `requested`: the emperor had asked it to stop.
    pub fn exited(&mut self, exit: &std::io::Result<Exit>, requested: bool) {
        let mut v = serde_json::Map::new();
        match exit {
            Ok(Exit::Code(c)) => {
                v.insert("code".into(), json!(c));
            }
            Ok(Exit::Signal(s)) => {
                v.insert("signal".into(), json!(s.as_str()));
            }
            Err(_) => {}
        }
        let reason = match exit {
            _ if requested => "stopped",
            Ok(Exit::Code(0)) => "exited",
            Ok(_) => "crashed",
            Err(_) => "unknown",
        };
        v.insert("reason".into(), json!(reason));
        self.last_exit = Some(Value::Object(v));
    }

    pub fn spawn_failed(&mut self, why: &str) {
        self.last_exit = Some(json!({ "reason": format!("cannot start: {why}") }));
    }
}

/// Asks every actor for its snapshot; those that do not answer by the deadline get `Err(name)`.
pub async fn collect(actors: Vec<(String, mpsc::UnboundedSender<Command>)>) -> Vec<Result<VassalStats, String>> {
    let deadline = tokio::time::Instant::now() + SNAPSHOT_TIMEOUT;
    let pending: Vec<_> = actors
        .into_iter()
        .map(|(name, tx)| {
            let (stx, srx) = oneshot::channel();
            let _ = tx.send(Command::Snapshot(stx));
            (name, srx)
        })
        .collect();
    let mut out = Vec::with_capacity(pending.len());
    for (name, rx) in pending {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(s)) => out.push(Ok(s)),
            // An actor that just ended drops the sender: it is gone, not stuck.
            Ok(Err(_)) => {}
            Err(_) => out.push(Err(name)),
        }
    }
    out.sort_by(|a, b| id_of(a).cmp(id_of(b)));
    out
}

fn id_of(r: &Result<VassalStats, String>) -> &str {
    match r {
        Ok(s) => &s.id,
        Err(n) => n,
    }
}

/// The whole document.
pub fn document(vassals_dir: &std::path::Path, vassals: &[Result<VassalStats, String>]) -> Value {
    let mut sources = Sources::load(vassals_dir, vassals);
    let mut list = Vec::new();
    let mut blacklist = Vec::new();
    for v in vassals {
        match v {
            Ok(v) => {
                blacklist.extend(blacklist_entry(v));
                let m = sources.measure(v);
                list.push(sources.entry(v, &m));
            }
            Err(name) => list.push(json!({ "id": name, "state": "unresponsive" })),
        }
    }
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uid": sources.uid,
        "gid": sources.gid,
        "cwd": std::env::current_dir().map(|d| d.to_string_lossy().into_owned()).unwrap_or_default(),
        "emperor": [sources.dir],
        "emperor_tyrant": 0,
        "throttle_level": 0,
        "vassals": list,
        "blacklist": blacklist,
    })
}

/// What every vassal's entry is measured against, read once per document (the JSON document and the
/// metrics alike, so that both show the same figures).
struct Sources {
    uid: u32,
    gid: u32,
    /// The vassals directory, as `monitor` and `emperor` show it.
    dir: String,
    /// The kernel's socket tables, for the sockets' loads (`None` if they could not be read).
    tables: Option<conns::Tables>,
    /// Memory and CPU time of the process vassals' groups.
    groups: usage::Groups,
    /// The cgroups of Docker vassals, read when the first one needs them.
    cgroups: Option<usage::Cgroups>,
}

/// What a document measured about one vassal, beyond its snapshot.
struct Measured {
    /// The current bridge's record (Docker), if it is this spawn's.
    bridge: Option<crate::docker::record::Info>,
    /// Of the current process or container.
    usage: Option<usage::Usage>,
    /// How long the last start took, and until what ([`Track::last_start`]).
    last_start: Option<(u64, &'static str)>,
    /// Each of `sockets`' loads; `None` when the kernel's tables could not be read.
    sockets: Vec<Option<conns::SocketLoad>>,
    /// The usage of each of `replicas.others`.
    replicas: Vec<Option<usage::Usage>>,
}

impl Sources {
    fn load(vassals_dir: &std::path::Path, vassals: &[Result<VassalStats, String>]) -> Sources {
        let tables = conns::Tables::load().map_err(|e| warn!("stats: cannot read the kernel's socket tables: {e}"));
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let dir = vassals_dir.to_string_lossy().into_owned();
        let leaders: HashSet<i32> = vassals
            .iter()
            .filter_map(|v| v.as_ref().ok())
            .filter(|v| v.kind == "process")
            .flat_map(|v| {
                let others = v.replicas.iter().flat_map(|r| r.others.iter().map(|(o, _)| o.pid));
                std::iter::once(v.pid).chain(others).filter(|p| *p > 0)
            })
            .collect();
        Sources {
            uid,
            gid,
            dir,
            tables: tables.ok(),
            groups: usage::Groups::load(&leaders),
            cgroups: None,
        }
    }

    fn measure(&mut self, v: &VassalStats) -> Measured {
        let t = &v.track;
        // A bridge's record from before the last spawn belongs to an earlier bridge with the same pid.
        let bridge = v
            .bridge_info
            .as_deref()
            .and_then(crate::docker::record::Info::read)
            .filter(|i| t.spawned_ms().is_some_and(|s| i.started_ms >= s));
        let usage = match &bridge {
            Some(b) => self.container_usage(b.init_pid),
            None if v.kind == "process" && v.pid > 0 => self.groups.usage_of(v.pid),
            None => None,
        };
        let others = v.replicas.iter().flat_map(|r| r.others.iter());
        let replicas = others
            .map(|(o, record)| match record {
                _ if o.pid <= 0 => None,
                Some(record) => {
                    crate::docker::record::Info::read(record).and_then(|b| self.container_usage(b.init_pid))
                }
                None => self.groups.usage_of(o.pid),
            })
            .collect();
        Measured {
            last_start: t.last_start(bridge.as_ref().and_then(|b| b.handover_ms)),
            bridge,
            usage,
            sockets: v
                .sockets
                .iter()
                .map(|s| self.tables.as_ref().map(|t| t.measure(&s.spec.addr, s.inode)))
                .collect(),
            replicas,
        }
    }

    fn container_usage(&mut self, init_pid: i64) -> Option<usage::Usage> {
        self.cgroups.get_or_insert_with(usage::Cgroups::load).usage_of(init_pid)
    }

    /// One vassal's entry in `vassals`.
    fn entry(&self, v: &VassalStats, m: &Measured) -> Value {
        let t = &v.track;
        let throttle = v
            .throttle
            .map(|(_, next)| json!({ "attempts": v.attempts, "next_start": next }));
        json!({
            "id": v.id,
            "pid": v.pid,
            "born": t.first_run,
            "last_mod": v.last_mod,
            "last_heartbeat": v.last_heartbeat,
            "loyal": u8::from(v.loyal),
            "ready": u8::from(v.ready),
            "accepting": u8::from(v.accepting),
            "last_loyal": t.last_loyal,
            "last_ready": t.last_ready,
            "last_accepting": t.last_accepting,
            "first_run": t.first_run,
            "last_run": t.last_run,
            "cursed": 0,
            "zerg": 0,
            "on_demand": v.on_demand,
            "uid": self.uid,
            "gid": self.gid,
            "monitor": self.dir,
            "respawns": v.respawns,
            "state": v.state,
            "state_since": t.state_since,
            "kind": v.kind,
            "container": v.container,
            "container_id": m.bridge.as_ref().map(|b| b.id.clone()),
            "sockets": sockets_json(v, m),
            "restarts": v.respawns,
            "last_exit": t.last_exit,
            "throttle": throttle,
            "error": v.error,
            "memory": memory_json(m.usage),
            "cpu_usec": m.usage.and_then(|u| u.cpu_usec),
            "last_start_ms": m.last_start.map(|(ms, _)| ms),
            "last_start_until": m.last_start.map(|(_, until)| until),
            "replicas": v.replicas.as_ref().map(|r| replicas_json(v, r, m)),
        })
    }
}

fn memory_json(u: Option<usage::Usage>) -> Value {
    json!(u.and_then(|u| u.memory.map(|m| json!({ "bytes": m, "source": u.source }))))
}

/// `replicas`: the range, the count, and one entry per instance with its own pid, state and usage (replica 0
/// repeats the vassal's own).
fn replicas_json(v: &VassalStats, r: &ReplicaSet, m: &Measured) -> Value {
    let usage_json =
        |u: Option<usage::Usage>| json!({ "memory": memory_json(u), "cpu_usec": u.and_then(|u| u.cpu_usec) });
    let mut list = vec![json!({
        "index": 0,
        "pid": v.pid,
        "state": v.state,
        "container": v.container,
        "outdated": false,
        "usage": usage_json(m.usage),
    })];
    for ((o, _), usage) in r.others.iter().zip(&m.replicas) {
        list.push(json!({
            "index": o.index,
            "pid": o.pid,
            "state": o.state,
            "container": v.container.as_ref().map(|c| format!("{c}.r{}", o.index)),
            "outdated": o.outdated,
            "usage": usage_json(*usage),
        }));
    }
    json!({ "min": r.min, "max": r.max, "count": r.count, "instances": list })
}

/// The vassal's listening sockets, each with its load.
fn sockets_json(v: &VassalStats, m: &Measured) -> Vec<Value> {
    v.sockets
        .iter()
        .zip(&m.sockets)
        .map(|(s, load)| {
            json!({
                "addr": s.spec.addr.to_string(),
                "name": s.spec.name,
                "queue": load.and_then(|l| l.queue),
                "backlog": load.and_then(|l| l.backlog),
                "connections": load.map(|l| l.connections),
            })
        })
        .collect()
}

/// The vassal's entry in `blacklist`, while it is throttled.
fn blacklist_entry(v: &VassalStats) -> Option<Value> {
    let (level, next) = v.throttle?;
    Some(json!({
        "id": v.id,
        "throttle_level": level.as_millis() as u64,
        "attempt": v.attempts,
        "first_attempt": v.track.first_run,
        "last_attempt": v.track.state_since,
        "next_attempt": next,
    }))
}

/// The listening stats socket (and `--mail-auth`'s: the same addresses, the same clean-up).
pub enum Listener {
    /// The path is unlinked on drop (an abstract socket has none).
    Unix(tokio::net::UnixListener, Option<PathBuf>),
    Tcp(tokio::net::TcpListener),
}

/// A connected client (of the stats socket, which only writes to it, or of `--mail-auth`, which
/// binds its socket with this same [`Listener`]).
pub type Conn = Box<dyn Stream>;

/// A unix or TCP connection.
pub trait Stream: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Stream for T {}

impl Listener {
    /// `host:port` (contains `:`, as uWSGI decides) is TCP; `@name` an abstract unix socket; anything
    /// else a unix path. A stale socket file at the path is replaced; `mode` (`--chmod-socket`) is
    /// applied to it, as uWSGI binds its stats socket with its `chmod-socket`.
    pub fn bind(addr: &str, mode: Option<u32>) -> std::io::Result<Listener> {
        if let Some(name) = addr.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let sa = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            let l = std::os::unix::net::UnixListener::bind_addr(&sa)?;
            l.set_nonblocking(true)?;
            return Ok(Listener::Unix(tokio::net::UnixListener::from_std(l)?, None));
        }
        if addr.contains(':') && !addr.contains('/') {
            let sa: std::net::SocketAddr = addr
                .parse()
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a unix path or an IP:port"))?;
            let l = std::net::TcpListener::bind(sa)?;
            l.set_nonblocking(true)?;
            return Ok(Listener::Tcp(tokio::net::TcpListener::from_std(l)?));
        }
        let path = std::path::absolute(addr)?;
        super::sockets::replace_socket_file(&path);
        let l = tokio::net::UnixListener::bind(&path)?;
        if let Some(mode) = mode {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(Listener::Unix(l, Some(path)))
    }

    pub async fn accept(&self) -> std::io::Result<Conn> {
        Ok(match self {
            Listener::Unix(l, _) => Box::new(l.accept().await?.0),
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Box::new(s)
            }
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, Some(path)) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Writes the document to one client and closes the connection.
pub async fn serve(mut conn: Conn, vassals_dir: PathBuf, actors: Vec<(String, mpsc::UnboundedSender<Command>)>) {
    let snaps = collect(actors).await;
    let doc = document(&vassals_dir, &snaps);
    let mut text = match serde_json::to_vec_pretty(&doc) {
        Ok(t) => t,
        Err(e) => {
            warn!("stats: cannot render the document: {e}");
            return;
        }
    };
    text.push(b'\n');
    let write = async {
        conn.write_all(&text).await?;
        conn.shutdown().await
    };
    if let Err(e) = tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    {
        debug!("stats: client went away: {e}");
    }
}

/// The `stats` fields of a vassal that live only in the state machine.
pub fn throttle_of(fsm: &Fsm) -> Option<(Duration, u64)> {
    match fsm.state() {
        State::Throttled { until } => Some((fsm.throttle_delay(), instant_to_unix(*until))),
        _ => None,
    }
}
