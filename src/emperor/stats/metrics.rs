//! `--emperor-metrics`: the stats as Prometheus metrics, served over HTTP at `GET /metrics`.
//!
//! **The same figures as the stats document.** A scrape asks every actor for its snapshot with the same
//! deadline ([`super::collect`]) and measures sockets, memory and CPU through the same [`super::Sources`]
//! (`Sources::measure`), so a vassal's figures here and in `emperor status` come from one code path and
//! cost the emperor's thread the same: one read of the kernel's socket tables, one pass over /proc, a
//! few cgroup files per Docker vassal.
//!
//! **States are one-hot gauges** (`emperor_vassal_state{vassal,state}`, 1 for the current state and 0
//! for every other): Prometheus's pattern for an enum (OpenMetrics' StateSet). An info-style series
//! whose `state` label changes would end one series and start another at every transition, so a
//! range query over a vassal would see gaps and `changes()` nothing; with every state present, each
//! series is continuous, `== 1` selects the vassals in a state and `sum by (state)` counts them. It
//! costs one series per state per vassal (11), which is bounded and small.
//!
//! **Cold starts are histograms per vassal** with fixed buckets (`exposition::BUCKETS`), kept in the
//! actor's [`super::Track`] as the starts happen, so a start between two scrapes is still counted. The
//! label `until` says which milestone was timed from the spawn: `ready` and `accepting` (bytes 1 and 5
//! of the uWSGI protocol, counted when the process says them) and `handover` (a Docker vassal's
//! container received its sockets, counted when the actor next reads the bridge's record: at a scrape
//! or stats request while that container runs). A series appears once its first start is counted.
//!
//! **HTTP** is the minimum a scraper needs, through the head reader `--mail-auth` uses
//! ([`crate::emperor::http`]): one request per connection, answered `HTTP/1.1` with
//! `Connection: close`; `GET` and `HEAD` of `/metrics` (a query string is ignored), 404 elsewhere, 405
//! for other methods, 400 for what is not HTTP/1.x (or an HTTP/1.1 request without `Host`), 431 for a
//! head over [`http::MAX_HEAD`] bytes or [`http::MAX_HEADERS`] lines. A client has [`READ_TIMEOUT`] to
//! send its head and [`WRITE_TIMEOUT`] to take the answer; at most [`MAX_CLIENTS`] are served at once,
//! the next ones wait in the listen backlog.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use log::debug;
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

use super::exposition::{Def, Exposition, Kind, Labels};
use super::{Conn, Listener, Measured, ReplicaSet, Sources, VassalStats, usage};
use crate::emperor::http;
use crate::emperor::vassal::Command;

/// Clients served at once.
pub const MAX_CLIENTS: usize = 8;
/// How long a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to take the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client's leftover bytes are read after the answer before the connection is closed.
const LINGER: Duration = Duration::from_secs(2);
/// How long accepting pauses after a failed accept (out of fds): it would fail again at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every state a vassal is listed in: the state machine's (`fsm::State::name`), then `unresponsive`
/// (its actor did not answer in time).
pub const STATES: [&str; 11] = [
    "waiting",
    "starting",
    "running",
    "reloading",
    "stopping",
    "throttled",
    "paused",
    "held",
    "invalid",
    "done",
    "unresponsive",
];

/// The states an instance of a running vassal can be in (replica 0 has the vassal's; replicas 1.. use
/// a few of them).
const INSTANCE_STATES: &[&str] = STATES.split_last().expect("STATES is not empty").1;

macro_rules! defs {
    ($($id:ident: $name:literal $kind:ident $help:literal;)*) => {
        $(const $id: Def = Def { name: $name, kind: Kind::$kind, help: $help };)*
        /// Every family, in the order written.
        pub const ALL: &[&Def] = &[$(&$id),*];
    };
}

defs! {
    BUILD_INFO: "emperor_build_info" Gauge "The emperor's version (label version); always 1.";
    VASSALS: "emperor_vassals" Gauge "Vassals per state (the state machine's, and unresponsive: its actor did not answer within 500 ms).";
    START_TIME: "process_start_time_seconds" Gauge "When the emperor started, in seconds since the UNIX epoch.";
    CPU_SECONDS: "process_cpu_seconds_total" Counter "User and system CPU time of the emperor itself (not of its vassals), in seconds.";
    RESIDENT: "process_resident_memory_bytes" Gauge "Resident memory of the emperor, in bytes.";
    VIRTUAL: "process_virtual_memory_bytes" Gauge "Virtual memory size of the emperor, in bytes.";
    OPEN_FDS: "process_open_fds" Gauge "File descriptors the emperor has open.";
    MAX_FDS: "process_max_fds" Gauge "The emperor's limit on open file descriptors (soft RLIMIT_NOFILE).";
    INFO: "emperor_vassal_info" Gauge "A vassal's kind (process or docker) and container name (labels); always 1.";
    STATE: "emperor_vassal_state" Gauge "1 for the vassal's current state, 0 for every other.";
    RESTARTS: "emperor_vassal_restarts_total" Counter "Processes started for the vassal after its first one.";
    ATTEMPTS: "emperor_vassal_throttle_attempts" Gauge "Deaths in a row before the vassal became loyal; they drive the throttle.";
    DELAY: "emperor_vassal_throttle_delay_seconds" Gauge "The current throttle delay while the vassal is throttled, else 0.";
    NEXT_START: "emperor_vassal_next_start_time_seconds" Gauge "When a throttled vassal starts again, in seconds since the UNIX epoch (only while throttled).";
    CONFIG_ERROR: "emperor_vassal_config_error" Gauge "1 while the vassal's file has an error (the vassal is invalid, or runs its last good config), else 0.";
    START: "emperor_vassal_start_seconds" Histogram "Time from a spawn until the process said ready or accepting (uWSGI protocol), or its container received its sockets (label until).";
    MEMORY: "emperor_vassal_memory_bytes" Gauge "Memory of the vassal's current process or container: its process group's resident memory, or its container's cgroup charge.";
    CPU: "emperor_vassal_cpu_seconds_total" Counter "CPU time of the vassal's current process group or container, in seconds (starts over with a new process).";
    CONNECTIONS: "emperor_vassal_socket_connections" Gauge "Connections open on one of the vassal's listening sockets (accepted or waiting).";
    QUEUE: "emperor_vassal_socket_accept_queue" Gauge "Connections waiting to be accepted on one of the vassal's listening sockets.";
    BACKLOG: "emperor_vassal_socket_backlog" Gauge "How many connections may wait on the socket (its listen backlog as the kernel applied it).";
    REPLICAS: "emperor_vassal_replicas" Gauge "Instances a vassal with replicas runs now, replica 0 included.";
    REPLICAS_MIN: "emperor_vassal_replicas_min" Gauge "The lower bound of the vassal's replicas.";
    REPLICAS_MAX: "emperor_vassal_replicas_max" Gauge "The upper bound of the vassal's replicas.";
    REPLICA_STATE: "emperor_vassal_replica_state" Gauge "1 for the current state of one instance of a vassal with replicas, 0 for every other.";
    REPLICA_MEMORY: "emperor_vassal_replica_memory_bytes" Gauge "Memory of one instance of a vassal with replicas, measured as emperor_vassal_memory_bytes.";
    REPLICA_CPU: "emperor_vassal_replica_cpu_seconds_total" Counter "CPU time of one instance of a vassal with replicas, in seconds.";
}

/// The document for these snapshots (as [`super::collect`] returns them).
pub fn document(vassals_dir: &Path, vassals: &[Result<VassalStats, String>]) -> String {
    let mut sources = Sources::load(vassals_dir, vassals);
    let mut e = Exposition::new(ALL);
    emperor(&mut e, &usage::Own::read(), vassals);
    for v in vassals {
        match v {
            Ok(v) => {
                let m = sources.measure(v);
                vassal(&mut e, v, &m);
            }
            Err(name) => one_hot(&mut e, &STATE, &[("vassal", name)], "unresponsive", &STATES),
        }
    }
    e.render()
}

/// The emperor's own figures.
fn emperor(e: &mut Exposition, own: &usage::Own, vassals: &[Result<VassalStats, String>]) {
    e.add(&BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    for state in STATES {
        let n = vassals
            .iter()
            .filter(|v| v.as_ref().map_or("unresponsive", |v| v.state) == state)
            .count();
        e.add(&VASSALS, &[("state", state)], n as f64);
    }
    let figures = [
        (&START_TIME, own.start_time),
        (&CPU_SECONDS, own.cpu_seconds),
        (&RESIDENT, own.rss_bytes.map(|b| b as f64)),
        (&VIRTUAL, own.vsize_bytes.map(|b| b as f64)),
        (&OPEN_FDS, own.open_fds.map(|n| n as f64)),
        (&MAX_FDS, own.max_fds.map(|n| n as f64)),
    ];
    for (def, value) in figures {
        if let Some(v) = value {
            e.add(def, &[], v);
        }
    }
}

/// One series per state: 1 for `current`, 0 for the others.
fn one_hot(e: &mut Exposition, def: &Def, labels: &Labels<'_>, current: &str, states: &[&str]) {
    for state in states {
        let mut l = labels.to_vec();
        l.push(("state", state));
        e.add(def, &l, f64::from(u8::from(*state == current)));
    }
}

fn vassal(e: &mut Exposition, v: &VassalStats, m: &Measured) {
    let id = v.id.as_str();
    let l = [("vassal", id)];
    let container = v.container.as_deref().unwrap_or("");
    e.add(
        &INFO,
        &[("vassal", id), ("kind", v.kind), ("container", container)],
        1.0,
    );
    one_hot(e, &STATE, &l, v.state, &STATES);
    e.add(&RESTARTS, &l, f64::from(v.respawns));
    e.add(&ATTEMPTS, &l, f64::from(v.attempts));
    e.add(&DELAY, &l, v.throttle.map_or(0.0, |(d, _)| d.as_secs_f64()));
    if let Some((_, next)) = v.throttle {
        e.add(&NEXT_START, &l, next as f64);
    }
    e.add(&CONFIG_ERROR, &l, f64::from(u8::from(v.error.is_some())));
    let starts = &v.track.starts;
    for (until, h) in [
        ("ready", &starts.ready),
        ("accepting", &starts.accepting),
        ("handover", &starts.handover),
    ] {
        if h.count() > 0 {
            e.histogram(&START, &[("vassal", id), ("until", until)], h);
        }
    }
    usage_of(e, (&MEMORY, &CPU), &l, m.usage);
    for (s, load) in v.sockets.iter().zip(&m.sockets) {
        let Some(load) = load else { continue };
        let addr = s.spec.addr.to_string();
        let l = [("vassal", id), ("socket", addr.as_str())];
        e.add(&CONNECTIONS, &l, load.connections as f64);
        if let Some(q) = load.queue {
            e.add(&QUEUE, &l, q as f64);
        }
        if let Some(b) = load.backlog {
            e.add(&BACKLOG, &l, b as f64);
        }
    }
    if let Some(r) = &v.replicas {
        replicas(e, v, r, m);
    }
}

/// Memory and CPU time, each when known.
fn usage_of(e: &mut Exposition, (memory, cpu): (&Def, &Def), labels: &Labels<'_>, u: Option<usage::Usage>) {
    let Some(u) = u else { return };
    if let Some(bytes) = u.memory {
        e.add(memory, labels, bytes as f64);
    }
    if let Some(usec) = u.cpu_usec {
        e.add(cpu, labels, usec as f64 / 1e6);
    }
}

/// A vassal with `replicas`: the range, the count, and each instance (0 is the vassal's own).
fn replicas(e: &mut Exposition, v: &VassalStats, r: &ReplicaSet, m: &Measured) {
    let l = [("vassal", v.id.as_str())];
    e.add(&REPLICAS, &l, f64::from(r.count));
    e.add(&REPLICAS_MIN, &l, f64::from(r.min));
    e.add(&REPLICAS_MAX, &l, f64::from(r.max));
    let first = std::iter::once((0, v.state, m.usage));
    let others = r
        .others
        .iter()
        .zip(&m.replicas)
        .map(|((o, _), u)| (o.index, o.state, *u));
    for (index, state, usage) in first.chain(others) {
        let index = index.to_string();
        let l = [("vassal", v.id.as_str()), ("replica", index.as_str())];
        one_hot(e, &REPLICA_STATE, &l, state, INSTANCE_STATES);
        usage_of(e, (&REPLICA_MEMORY, &REPLICA_CPU), &l, usage);
    }
}

/// What a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// `200` and the document; `head`: without its body.
    Metrics { head: bool },
    /// Anything else: the status and its reason phrase, with a one-line text body.
    Status(u16, &'static str),
}

/// The answer to a request head as a client sent it (at most [`http::MAX_HEAD`] bytes and then some,
/// as [`http::read_head`] returns it). Pure: the server, its tests and the fuzz target call this.
pub fn respond(head: &[u8]) -> Reply {
    const BAD: Reply = Reply::Status(400, "Bad Request");
    const TOO_LARGE: Reply = Reply::Status(431, "Request Header Fields Too Large");
    if head.len() > http::MAX_HEAD {
        return TOO_LARGE;
    }
    let Some(end) = http::head_end(head) else { return BAD };
    let mut lines = http::lines(&head[..end]);
    let Ok(line) = http::request_line(lines.next().unwrap_or_default()) else {
        return BAD;
    };
    let mut hosts = 0;
    for (n, l) in lines.enumerate() {
        if n >= http::MAX_HEADERS {
            return TOO_LARGE;
        }
        match http::header(l) {
            Ok((name, _)) if name.eq_ignore_ascii_case(b"host") => hosts += 1,
            Ok(_) => {}
            Err(_) => return BAD,
        }
    }
    // RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host; HTTP/1.0 may have none.
    if hosts > 1 || (hosts == 0 && line.minor >= 1) {
        return BAD;
    }
    let head_only = match line.method {
        b"GET" => false,
        b"HEAD" => true,
        _ => return Reply::Status(405, "Method Not Allowed"),
    };
    match path(line.target) {
        Some(b"/metrics") => Reply::Metrics { head: head_only },
        Some(_) => Reply::Status(404, "Not Found"),
        None => BAD,
    }
}

/// The path of a request target: origin form (`/metrics?x`) or absolute form (`http://host/metrics`);
/// `None` for the others (`*`, `host:port`).
fn path(target: &[u8]) -> Option<&[u8]> {
    let path = match target
        .strip_prefix(b"http://")
        .or_else(|| target.strip_prefix(b"https://"))
    {
        Some(rest) => rest.iter().position(|b| *b == b'/').map_or(&b"/"[..], |i| &rest[i..]),
        None if target.starts_with(b"/") => target,
        None => return None,
    };
    Some(path.split(|b| *b == b'?').next().unwrap_or(path))
}

impl Reply {
    /// The whole answer: head, and the body unless it is the answer to `HEAD`.
    pub fn render(&self, document: &str) -> Vec<u8> {
        let (status, reason, body, content_type, head_only) = match *self {
            Reply::Metrics { head } => (200, "OK", document.to_owned(), CONTENT_TYPE, head),
            Reply::Status(code, reason) => (
                code,
                reason,
                format!("{code} {reason}: the metrics are at GET /metrics\n"),
                "text/plain; charset=utf-8",
                false,
            ),
        };
        let mut out = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        );
        if status == 405 {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("Cache-Control: no-store\r\nConnection: close\r\n\r\n");
        if !head_only {
            out.push_str(&body);
        }
        out.into_bytes()
    }
}

/// The listening socket and its client slots; the main loop accepts from it.
pub struct Server {
    listener: Listener,
    slots: Arc<Semaphore>,
    /// After a failed accept: not again before this.
    pause: Cell<Option<Instant>>,
}

impl Server {
    pub fn new(listener: Listener) -> Server {
        Server {
            listener,
            slots: Arc::new(Semaphore::new(MAX_CLIENTS)),
            pause: Cell::new(None),
        }
    }

    /// The next client, once a slot is free. Cancel-safe: a slot or connection not yet returned is not
    /// lost when another branch of the main loop's `select!` wins.
    pub async fn accept(&self) -> (OwnedSemaphorePermit, std::io::Result<Conn>) {
        if let Some(at) = self.pause.get() {
            tokio::time::sleep_until(at).await;
            self.pause.set(None);
        }
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let conn = self.listener.accept().await;
        if conn.is_err() {
            self.pause.set(Some(Instant::now() + ACCEPT_BACKOFF));
        }
        (permit, conn)
    }
}

/// One client: one request, one answer, closed. `_slot` is given back when it ends.
pub async fn serve(
    mut conn: Conn,
    _slot: OwnedSemaphorePermit,
    vassals_dir: PathBuf,
    actors: Vec<(String, mpsc::UnboundedSender<Command>)>,
) {
    let head = match tokio::time::timeout(READ_TIMEOUT, http::read_head(&mut conn)).await {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => return debug!("metrics: a client went away: {e}"),
        Err(_) => return debug!("metrics: a client sent no request within {READ_TIMEOUT:?}"),
    };
    let reply = respond(&head);
    let document = match reply {
        Reply::Metrics { .. } => document(&vassals_dir, &super::collect(actors).await),
        Reply::Status(code, _) => {
            // The request line, at most 200 bytes of it: enough to tell what a client asked.
            let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
            debug!("metrics: answered {code} to {:?}", line.trim_end());
            String::new()
        }
    };
    let write = async {
        conn.write_all(&reply.render(&document)).await?;
        conn.flush().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(())) => http::linger(&mut conn, LINGER).await,
        Ok(Err(e)) => debug!("metrics: a client went away before its answer: {e}"),
        Err(_) => debug!("metrics: a client did not take its answer within {WRITE_TIMEOUT:?}"),
    }
}

#[cfg(test)]
mod tests;
