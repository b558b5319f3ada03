//! A throw-away Redis server for a test (routes published in beachhead's layout), from Debian's `redis-server`
//! package (scripts/setup installs it and `redis-tools`; the package's own service is never started or used).
//!
//! [`Redis::start`] runs `redis-server --port <free port> --bind 127.0.0.1 --save "" --appendonly no --dir <root>
//! --daemonize no --notify-keyspace-events KEA` as a child process, stdout and stderr appended to
//! `/tmp/emperor-redis-<pid>-<n>/redis.log`, and returns once it answers PING. [`Redis::start_with`] takes other
//! arguments than the keyspace notifications (`&[]` for none). Nothing is persisted: a [`Redis::stop`] and
//! [`Redis::start_again`] (same port) is an outage that loses every key, as a Redis restart without persistence
//! does. Drop (also when the test panics, printing the log then) stops it (SIGTERM, SIGKILL after 10 s) and
//! removes the directory; what a killed test process leaves is handled as [`super::server`] says.
//!
//! [`Redis::psubscribe`] gives a subscriber speaking RESP over a plain TcpStream, for waiting on keyspace events.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use super::server::{NotReady, Server, make_root, remove_root, tail};
use super::{free_port, run_timeout};

/// How long a starting server gets to answer PING.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a shutdown may take before the server is SIGKILLed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Timeout of one redis-cli run.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

const SETUP_HINT: &str = "run `scripts/setup` as root: it installs Debian's redis-server and redis-tools";

pub struct Redis {
    /// `/tmp/emperor-redis-<pid>-<n>`: the server's `--dir`, `redis.log`, `owner`.
    root: PathBuf,
    port: u16,
    /// The arguments after the fixed ones (`--notify-keyspace-events KEA` for [`Redis::start`]).
    extra: Vec<String>,
    /// The running server; None while stopped.
    server: Option<Server>,
}

/// `/usr/bin/<name>`; panics with what to do when it is missing.
fn program(name: &str) -> PathBuf {
    let p = PathBuf::from("/usr/bin").join(name);
    assert!(p.is_file(), "{} is missing: {SETUP_HINT}", p.display());
    p
}

/// Does a Redis on 127.0.0.1:`port` answer PING with PONG?
fn ping(port: u16) -> bool {
    let answer = || -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.write_all(b"*1\r\n$4\r\nPING\r\n")?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf)?;
        Ok(&buf == b"+PONG\r\n")
    };
    answer().unwrap_or(false)
}

impl Redis {
    /// Starts a fresh server with keyspace notifications for every event (`--notify-keyspace-events KEA`).
    #[track_caller]
    pub fn start() -> Redis {
        Redis::start_with(&["--notify-keyspace-events", "KEA"])
    }

    /// Starts a fresh server with `extra` arguments after the fixed ones (which they may override), on a free port;
    /// returns once it answers PING.
    #[track_caller]
    pub fn start_with(extra: &[&str]) -> Redis {
        program("redis-server");
        let mut r = Redis {
            root: make_root("redis"),
            port: 0,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            server: None,
        };
        for attempt in 1.. {
            r.port = free_port();
            match r.launch() {
                Ok(()) => break,
                // Something took the free port before the server bound it: another one.
                Err(e) if e.port_taken() && attempt < 5 => continue,
                Err(e) => r.not_ready(e),
            }
        }
        r
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("redis.log")
    }

    fn launch(&mut self) -> Result<(), NotReady> {
        let mut cmd = Command::new(program("redis-server"));
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .arg("--dir")
            .arg(&self.root)
            .args(&self.extra)
            .current_dir(&self.root);
        let mut server = Server::spawn(&mut cmd, &self.log_path(), libc::SIGKILL);
        let port = self.port;
        match server.wait_ready(READY_DEADLINE, || ping(port)) {
            Ok(()) => {
                self.server = Some(server);
                Ok(())
            }
            Err(e) => {
                server.stop(libc::SIGKILL, STOP_DEADLINE);
                Err(e)
            }
        }
    }

    #[track_caller]
    fn not_ready(&self, e: NotReady) -> ! {
        match e {
            NotReady::Exited(status, logged) => panic!(
                "redis-server on 127.0.0.1:{} exited ({status}) before answering PING:\n{logged}",
                self.port
            ),
            NotReady::Timeout => panic!(
                "redis-server on 127.0.0.1:{} did not answer PING within {READY_DEADLINE:?}; its log:\n{}",
                self.port,
                self.log_tail()
            ),
        }
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The last lines of the server's log (every run of it), for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log_path(), 40)
    }

    /// Runs one command through `redis-cli -e` and returns its output (raw: a nil or empty string is an empty
    /// line, an array one element a line). Panics when the command fails, an error reply included.
    #[track_caller]
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(program("redis-cli"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-e"])
            .args(args);
        match run_timeout(&mut cmd, "redis-cli", b"", CLI_TIMEOUT) {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
            Ok(out) => panic!(
                "redis-cli {} on port {} failed ({}): {}{}",
                args.join(" "),
                self.port,
                out.status,
                String::from_utf8_lossy(&out.stdout).trim_end(),
                String::from_utf8_lossy(&out.stderr).trim_end()
            ),
            Err(e) => panic!("redis-cli {} on port {}: {e}", args.join(" "), self.port),
        }
    }

    /// Stops the server (SIGTERM; nothing is saved) and waits until the process is gone; SIGKILLs it after 10 s.
    /// Panics when it is not running.
    #[track_caller]
    pub fn stop(&mut self) {
        let server = self.server.take().expect("Redis::stop: the server is not running");
        server.stop(libc::SIGTERM, STOP_DEADLINE);
    }

    /// Starts the stopped server again on the same port, empty; returns once it answers PING. Panics when it is
    /// running, or when the port was taken meanwhile.
    #[track_caller]
    pub fn start_again(&mut self) {
        assert!(self.server.is_none(), "Redis::start_again: the server is running");
        if let Err(e) = self.launch() {
            self.not_ready(e);
        }
    }

    /// A connection of its own PSUBSCRIBEd to `pattern` (e.g. `__keyspace@0__:*`); returns once the subscription
    /// is confirmed, so that every later event is received.
    #[track_caller]
    pub fn psubscribe(&self, pattern: &str) -> Subscription {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("connecting to redis on port {}: {e}", self.port));
        stream.write_all(&encode(&["PSUBSCRIBE", pattern])).unwrap();
        let mut sub = Subscription {
            stream,
            buf: Vec::new(),
        };
        match sub.next(Duration::from_secs(10)) {
            Some(Resp::Array(items)) if items.first() == Some(&Resp::bulk("psubscribe")) => sub,
            other => panic!("PSUBSCRIBE {pattern}: unexpected answer {other:?}"),
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- redis-server on port {} ({}), last lines of its log:\n{}",
                self.port,
                self.root.display(),
                self.log_tail()
            );
        }
        if let Some(server) = self.server.take() {
            server.stop(libc::SIGTERM, STOP_DEADLINE);
        }
        remove_root(&self.root);
    }
}

/// A RESP value, as much of RESP2 as a subscriber meets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

impl Resp {
    fn bulk(s: &str) -> Resp {
        Resp::Bulk(Some(s.as_bytes().to_vec()))
    }

    fn text(&self) -> Option<String> {
        match self {
            Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Resp::Simple(s) => Some(s.clone()),
            _ => None,
        }
    }
}

/// A command as a RESP array of bulk strings.
fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n", a.len()).bytes());
        out.extend(a.bytes());
        out.extend(b"\r\n");
    }
    out
}

/// Parses one value from the start of `b`: the value and how many bytes it took, or None when `b` holds only part
/// of one.
fn parse(b: &[u8]) -> Option<(Resp, usize)> {
    let end = b.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&b[1..end]).into_owned();
    let at = end + 2;
    let number = |line: &str| -> i64 {
        line.parse()
            .unwrap_or_else(|_| panic!("RESP: bad length or number {line:?}"))
    };
    match b[0] {
        b'+' => Some((Resp::Simple(line), at)),
        b'-' => Some((Resp::Error(line), at)),
        b':' => Some((Resp::Int(number(&line)), at)),
        b'$' => match usize::try_from(number(&line)) {
            Err(_) => Some((Resp::Bulk(None), at)),
            Ok(n) if b.len() >= at + n + 2 => Some((Resp::Bulk(Some(b[at..at + n].to_vec())), at + n + 2)),
            Ok(_) => None,
        },
        b'*' => {
            let n = usize::try_from(number(&line)).unwrap_or(0);
            let mut items = Vec::with_capacity(n);
            let mut used = at;
            for _ in 0..n {
                let (item, len) = parse(&b[used..])?;
                items.push(item);
                used += len;
            }
            Some((Resp::Array(items), used))
        }
        other => panic!(
            "RESP: unexpected type byte {:?} in {:?}",
            other as char,
            String::from_utf8_lossy(b)
        ),
    }
}

/// A subscribed connection ([`Redis::psubscribe`]).
pub struct Subscription {
    stream: TcpStream,
    /// Bytes read but not parsed yet (a value may arrive in pieces).
    buf: Vec<u8>,
}

impl Subscription {
    /// The next value from the server, or None when none is complete within `timeout`.
    fn next(&mut self, timeout: Duration) -> Option<Resp> {
        let end = Instant::now() + timeout;
        loop {
            if let Some((value, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Some(value);
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("redis closed the subscribed connection"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return None;
                }
                Err(e) => panic!("reading the subscribed connection: {e}"),
            }
        }
    }

    /// The next published message as (channel, payload), or None when none arrives within `timeout`. For keyspace
    /// notifications the channel is `__keyspace@0__:<key>` and the payload the event (`set`, `expire`, `expired`,
    /// `del`, ...).
    #[track_caller]
    pub fn recv(&mut self, timeout: Duration) -> Option<(String, String)> {
        let end = Instant::now() + timeout;
        loop {
            let value = self.next(end.saturating_duration_since(Instant::now()))?;
            let Resp::Array(items) = &value else {
                panic!("subscribed connection: unexpected {value:?}")
            };
            let texts: Vec<Option<String>> = items.iter().map(Resp::text).collect();
            match texts.as_slice() {
                [Some(kind), _pattern, Some(channel), Some(payload)] if kind == "pmessage" => {
                    return Some((channel.clone(), payload.clone()));
                }
                [Some(kind), Some(channel), Some(payload)] if kind == "message" => {
                    return Some((channel.clone(), payload.clone()));
                }
                // Confirmations of (un)subscriptions.
                _ => continue,
            }
        }
    }
}

#[test]
fn resp_parses_whole_values_only() {
    let frame = b"*4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$3\r\nk:x\r\n$3\r\nset\r\n";
    let (v, used) = parse(frame).unwrap();
    assert_eq!(used, frame.len());
    assert_eq!(
        v,
        Resp::Array(vec![
            Resp::bulk("pmessage"),
            Resp::bulk("*"),
            Resp::bulk("k:x"),
            Resp::bulk("set")
        ])
    );
    for cut in 0..frame.len() {
        assert_eq!(parse(&frame[..cut]), None, "a value cut at {cut} must not parse");
    }
    assert_eq!(parse(b"$-1\r\n"), Some((Resp::Bulk(None), 5)));
    assert_eq!(parse(b":42\r\n+OK\r\n"), Some((Resp::Int(42), 5)));
    assert_eq!(encode(&["GET", "k"]), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
}

#[test]
fn redis_keyspace_notifications_arrive() {
    let r = Redis::start();
    assert_eq!(
        r.cli(&["CONFIG", "GET", "notify-keyspace-events"]),
        "notify-keyspace-events\nAKE\n"
    );
    let mut sub = r.psubscribe("__keyspace@0__:*");
    r.cli(&["SET", "/beachhead/a.ini", "[]", "PX", "300"]);
    let event = |sub: &mut Subscription| sub.recv(Duration::from_secs(10)).expect("a keyspace event within 10 s");
    assert_eq!(
        event(&mut sub),
        ("__keyspace@0__:/beachhead/a.ini".into(), "set".into())
    );
    assert_eq!(
        event(&mut sub),
        ("__keyspace@0__:/beachhead/a.ini".into(), "expire".into())
    );
    // Redis expires keys lazily and in a 10 Hz background cycle: within a second or so of the TTL.
    assert_eq!(
        event(&mut sub),
        ("__keyspace@0__:/beachhead/a.ini".into(), "expired".into())
    );
    assert_eq!(r.cli(&["EXISTS", "/beachhead/a.ini"]), "0\n");
}

#[test]
fn redis_without_notifications_stops_and_starts_again() {
    let mut r = Redis::start_with(&[]);
    assert_eq!(
        r.cli(&["CONFIG", "GET", "notify-keyspace-events"]),
        "notify-keyspace-events\n\n"
    );
    assert_eq!(r.url(), format!("redis://127.0.0.1:{}/0", r.port()));
    r.cli(&["SET", "k", "v"]);
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.cli(&["INCR", "k"])))
        .expect_err("an error reply must panic");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("ERR value is not an integer"), "{msg}");

    let (port, pid) = (r.port(), r.server.as_ref().unwrap().pid());
    r.stop();
    assert!(!super::alive(pid), "redis-server (pid {pid}) still runs after stop()");
    assert!(!ping(port));
    r.start_again();
    assert_eq!(r.port(), port);
    assert_eq!(r.cli(&["GET", "k"]), "\n", "nothing is persisted across a restart");

    let (root, pid) = (r.root.clone(), r.server.as_ref().unwrap().pid());
    drop(r);
    assert!(!super::alive(pid), "redis-server (pid {pid}) still runs after drop");
    assert!(!root.exists(), "{} is left after drop", root.display());
}
