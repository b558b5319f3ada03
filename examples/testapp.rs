//! `testapp`: a small vassal used by the integration tests and the benchmark.
//!
//! It uses only `std` and `libc`, opens no file except the record file and needs no DNS, so it also runs as a
//! static binary in a `FROM scratch` container.
//!
//! Flags:
//! - `--record <file>`: append one line at start:
//!   `start pid=<pid> t_ns=<CLOCK_REALTIME ns> listen_fds=<n|-> listen_pid_ok=<0|1> names=<LISTEN_FDNAMES|->
//!   emperor_fd=<n|-> cwd=<cwd> stdin=<socket|-> uid=<uid> gid=<gid> nnp=<0|1> [env_FOO=<value|->]... [ini=<file>]`
//!   (`nnp`: `no_new_privs` is set).
//!   Later events append `reload pid=<pid> t_ns=<ns>` (byte 1 from the emperor) and
//!   `child pid=<pid> parent=<pid>` (`--spawn-child`). Each line is one `write()` on an `O_APPEND` fd, so lines
//!   of concurrent processes never interleave.
//!   Without `--record`, the env var `TESTAPP_RECORD` names the record file (for runs through `--emperor-wrapper`).
//! - `--ini <file>`: accepted so the app can stand in for uWSGI as `--emperor-wrapper`; adds `ini=<file>` at the end
//!   of the start line.
//! - `--show-env <NAME>` (repeatable): add `env_<NAME>=<value or ->` to the start line.
//! - `--name <s>`: text used in HTTP responses (default `testapp`).
//! - `--exit-after <ms>`: exit after that many milliseconds with `--exit-code <N>` (default 0).
//! - `--crash`: exit with code 1 right after recording.
//! - `--ignore-term`: ignore SIGTERM. Without it SIGTERM is graceful: the app stops taking connections, finishes the ones
//!   it took (queued ones stay in the shared backlog for the next process) and exits 0.
//! - `--speak`: talk the uWSGI emperor protocol on `UWSGI_EMPEROR_FD`: write byte 1 (ready) then 5 (accepting) at
//!   start, 17 (loyal) after the first served request. Reading byte 0 or 2 exits 0; byte 1 records a `reload` line
//!   and keeps running; EOF exits 1.
//! - `--speak-delay <ms>`: with `--speak`, wait that long before byte 1 and again before byte 5 (a slow start).
//! - `--accept-delay <ms>`: wait that long before serving its sockets (a slow start of an app that does not speak the
//!   protocol), then record `serving pid=<pid> t_ns=<ns>`.
//! - `--heartbeat <s>`: write byte 26 every `s` seconds (first one right away) on `UWSGI_EMPEROR_FD`.
//! - `--heartbeat-once`: write byte 26 once at start, then never again.
//! - `--spawn-child`: fork a grandchild (same process group) that closes its inherited fds and sleeps forever;
//!   record `child pid=<pid>`.
//!
//! - `--bind-unix <path>` (repeatable): bind and listen on that unix socket itself (a stale file is replaced, mode
//!   0666) and serve it like a `LISTEN_FDS` socket; for running the app without an emperor (benchmarks).
//! - `--inetd`: serve one connection on stdin and stdout, as a program run per connection (an emperor vassal with
//!   `accept = true`, inetd, systemd's `Accept=yes`): write `hello from <name> pid=<pid>\n`, then answer each line
//!   `<text>` with `echo <text>\n` until the line `quit` (answered `bye\n`) or EOF, and record `end pid=<pid>`; a
//!   SIGTERM (unless `--ignore-term`) makes it write `bye: stopping\n`, record `term pid=<pid>` and exit 0.
//!   `--show-env` shows what it got (`REMOTE_ADDR`, `LISTEN_FDNAMES`, ...); `stdin=` in the start line is `-`.
//! - `--work <ms>`: take that long over each answer (a sleep after the request head, before the answer): with one
//!   connection at a time per socket, a slow single-threaded app (the replicas tests and benchmark).
//! - `--keep-alive`: HTTP/1.1 keep-alive: each accepted connection gets its own thread, which answers request after
//!   request on it (`Connection: keep-alive`) until the client closes it, sends `Connection: close`, speaks HTTP/1.0
//!   without `Connection: keep-alive`, or stays idle for 60 s. Without it: one connection at a time per socket,
//!   closed after each answer.
//!
//! The start line ends with `stdin=socket` when fd 0 is a listening socket (uWSGI's convention for a socket owned
//! by the emperor), else `stdin=-`; such an fd 0 is served too.
//!
//! The app validates `LISTEN_PID == getpid()` (`listen_pid_ok`) and serves every socket of `LISTEN_FDS` (fds 3..,
//! unix or TCP, told apart by `getsockname`), one thread per socket: accept, read the request head (up to
//! `\r\n\r\n` or 8 KiB), answer `hello from <name> pid=<pid>\n` with HTTP/1.1 200, close.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::thread::JoinHandleExt;
use std::process::exit;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

struct Opts {
    record: Option<String>,
    show_env: Vec<String>,
    name: String,
    exit_after: Option<u64>,
    exit_code: i32,
    crash: bool,
    ignore_term: bool,
    speak: bool,
    speak_delay: u64,
    accept_delay: Option<u64>,
    heartbeat: Option<u64>,
    heartbeat_once: bool,
    spawn_child: bool,
    ini: Option<String>,
    bind_unix: Vec<String>,
    keep_alive: bool,
    inetd: bool,
}

/// `--work`: milliseconds each answer takes.
static WORK_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn usage(msg: &str) -> ! {
    eprintln!("testapp: {msg}");
    exit(2);
}

fn parse_args() -> Opts {
    let mut o = Opts {
        record: None,
        show_env: Vec::new(),
        name: "testapp".to_string(),
        exit_after: None,
        exit_code: 0,
        crash: false,
        ignore_term: false,
        speak: false,
        speak_delay: 0,
        accept_delay: None,
        heartbeat: None,
        heartbeat_once: false,
        spawn_child: false,
        ini: None,
        bind_unix: Vec::new(),
        keep_alive: false,
        inetd: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |flag: &str| args.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match a.as_str() {
            "--record" => o.record = Some(val("--record")),
            "--ini" => o.ini = Some(val("--ini")),
            "--show-env" => o.show_env.push(val("--show-env")),
            "--name" => o.name = val("--name"),
            "--exit-after" => {
                o.exit_after = Some(
                    val("--exit-after")
                        .parse()
                        .unwrap_or_else(|_| usage("bad --exit-after")),
                )
            }
            "--exit-code" => o.exit_code = val("--exit-code").parse().unwrap_or_else(|_| usage("bad --exit-code")),
            "--heartbeat" => {
                o.heartbeat = Some(val("--heartbeat").parse().unwrap_or_else(|_| usage("bad --heartbeat")))
            }
            "--crash" => o.crash = true,
            "--ignore-term" => o.ignore_term = true,
            "--speak" => o.speak = true,
            "--speak-delay" => {
                o.speak_delay = val("--speak-delay")
                    .parse()
                    .unwrap_or_else(|_| usage("bad --speak-delay"))
            }
            "--accept-delay" => {
                o.accept_delay = Some(
                    val("--accept-delay")
                        .parse()
                        .unwrap_or_else(|_| usage("bad --accept-delay")),
                )
            }
            "--heartbeat-once" => o.heartbeat_once = true,
            "--spawn-child" => o.spawn_child = true,
            "--bind-unix" => o.bind_unix.push(val("--bind-unix")),
            "--keep-alive" => o.keep_alive = true,
            "--work" => WORK_MS.store(
                val("--work").parse().unwrap_or_else(|_| usage("bad --work")),
                Ordering::Relaxed,
            ),
            "--inetd" => o.inetd = true,
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if o.record.is_none() {
        o.record = std::env::var("TESTAPP_RECORD").ok().filter(|v| !v.is_empty());
    }
    o
}

static RECORD_FD: AtomicI32 = AtomicI32::new(-1);

/// Append one line to the record file with a single `write()`.
fn record(line: &str) {
    let fd = RECORD_FD.load(Ordering::SeqCst);
    if fd < 0 {
        return;
    }
    let mut buf = line.as_bytes().to_vec();
    buf.push(b'\n');
    // SAFETY: fd is an open O_APPEND fd owned by this process; buf is valid for its length.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n != buf.len() as isize {
        eprintln!("testapp: short write to record file");
    }
}

fn now_ns() -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

fn pid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// Set by SIGTERM: stop taking connections, finish the ones taken, exit 0. Connections still queued
/// stay in the (shared) listening socket's backlog for the next process, so a restart loses none.
static STOPPING: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    STOPPING.store(true, Ordering::SeqCst);
}

/// Does nothing: its only purpose is to make a worker's blocking `accept` return `EINTR` once the app is
/// stopping (installed without `SA_RESTART`).
extern "C" fn on_wake(_: libc::c_int) {}

/// Signal the main thread sends to each worker while stopping. Two instances share the listening socket, so
/// `poll` can say "acceptable" and the other instance takes the connection first: the worker then sits in a
/// blocking `accept` (the socket must stay blocking: its file description is shared with the emperor) that a
/// SIGTERM delivered to another thread would never interrupt.
const WAKE_SIGNAL: libc::c_int = libc::SIGUSR2;

/// Installs `handler` for `sig` without `SA_RESTART`, so a blocking call in the thread that receives it
/// returns `EINTR` instead of being restarted (what `libc::signal` would do).
fn install_handler(sig: libc::c_int, handler: extern "C" fn(libc::c_int)) {
    // SAFETY: a zeroed sigaction is a valid value (empty mask, no flags); the handler is async-signal-safe
    // (an atomic store, or nothing); both pointers are valid for the call.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

/// Waits until `fd` has a connection to accept, or the app is stopping (checked every 50 ms).
/// Never sets O_NONBLOCK: the listening socket's file description is shared with the emperor.
fn wait_acceptable(fd: i32) -> bool {
    while !STOPPING.load(Ordering::SeqCst) {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut p, 1, 50) } > 0 && !STOPPING.load(Ordering::SeqCst) {
            return true;
        }
    }
    false
}

/// The control fd (UWSGI_EMPEROR_FD), if any.
static EMPEROR_FD: OnceLock<Option<i32>> = OnceLock::new();

fn send_byte(b: u8) {
    if let Some(Some(fd)) = EMPEROR_FD.get() {
        // SAFETY: writing one byte from a valid buffer to an fd we inherited.
        let n = unsafe { libc::write(*fd, [b].as_ptr().cast(), 1) };
        if n != 1 {
            eprintln!("testapp: write of byte {b} to emperor fd {fd} failed");
        }
    }
}

fn env_or_dash(name: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "-".to_string())
}

fn main() {
    let o = parse_args();
    let me = pid();

    if let Some(path) = &o.record {
        let c = CString::new(path.as_str()).unwrap_or_else(|_| usage("bad --record path"));
        // SAFETY: c is a valid NUL-terminated path.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
                0o644,
            )
        };
        if fd < 0 {
            eprintln!(
                "testapp: cannot open record file {path}: {}",
                std::io::Error::last_os_error()
            );
            exit(2);
        }
        RECORD_FD.store(fd, Ordering::SeqCst);
    }

    if o.ignore_term {
        // SAFETY: setting a signal disposition.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    } else {
        install_handler(libc::SIGTERM, on_term);
    }
    install_handler(WAKE_SIGNAL, on_wake);

    let listen_fds: Option<i32> = std::env::var("LISTEN_FDS").ok().and_then(|v| v.parse().ok());
    let listen_pid_ok = std::env::var("LISTEN_PID").ok().and_then(|v| v.parse::<i32>().ok()) == Some(me);
    let emperor_fd: Option<i32> = std::env::var("UWSGI_EMPEROR_FD").ok().and_then(|v| v.parse().ok());
    EMPEROR_FD.set(emperor_fd).ok();
    let cwd = std::env::current_dir()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "-".to_string());

    let stdin_is_listener = is_listening_socket(0);
    let mut line = format!(
        "start pid={me} t_ns={} listen_fds={} listen_pid_ok={} names={} emperor_fd={} cwd={cwd} stdin={}",
        now_ns(),
        listen_fds.map_or("-".to_string(), |n| n.to_string()),
        listen_pid_ok as u8,
        env_or_dash("LISTEN_FDNAMES"),
        emperor_fd.map_or("-".to_string(), |n| n.to_string()),
        if stdin_is_listener { "socket" } else { "-" },
    );
    // SAFETY: getuid, getgid and prctl(PR_GET_NO_NEW_PRIVS) only read this process's credentials.
    let (uid, gid, nnp) = unsafe {
        (
            libc::getuid(),
            libc::getgid(),
            libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0),
        )
    };
    line.push_str(&format!(" uid={uid} gid={gid} nnp={nnp}"));
    for name in &o.show_env {
        line.push_str(&format!(" env_{name}={}", env_or_dash(name)));
    }
    if let Some(ini) = &o.ini {
        line.push_str(&format!(" ini={ini}"));
    }
    record(&line);
    // One write: a program run per connection shares its stderr (the vassal's log) with its siblings.
    let _ = std::io::stderr().write_all(format!("testapp {} pid={me} started\n", o.name).as_bytes());

    if o.crash {
        eprintln!("testapp {} crashing on purpose", o.name);
        exit(1);
    }
    if o.inetd {
        serve_inetd(&o.name, me);
    }

    // Fork before any thread exists, so the child is a plain single-threaded copy.
    if o.spawn_child {
        // SAFETY: no other thread exists yet; the child only calls async-signal-safe functions.
        let child = unsafe { libc::fork() };
        if child < 0 {
            eprintln!("testapp: fork failed: {}", std::io::Error::last_os_error());
            exit(2);
        }
        if child == 0 {
            // Grandchild: drop every inherited fd but stdio, then sleep forever.
            for fd in 3..4096 {
                // SAFETY: closing fds we may or may not hold is harmless in this process.
                unsafe { libc::close(fd) };
            }
            loop {
                // SAFETY: pause has no preconditions.
                unsafe { libc::pause() };
            }
        }
        record(&format!("child pid={child} parent={me}"));
    }

    if let Some(ms) = o.exit_after {
        let code = o.exit_code;
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(ms));
            eprintln!("testapp exiting after {ms} ms with code {code}");
            exit(code);
        });
    }

    if o.speak {
        let Some(fd) = emperor_fd else {
            eprintln!("testapp: --speak without UWSGI_EMPEROR_FD");
            exit(2);
        };
        thread::sleep(Duration::from_millis(o.speak_delay));
        send_byte(1);
        thread::sleep(Duration::from_millis(o.speak_delay));
        send_byte(5);
        thread::spawn(move || {
            loop {
                let mut b = [0u8; 1];
                // SAFETY: reading one byte into a valid buffer.
                let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
                if n == 0 {
                    eprintln!("testapp: EOF on emperor fd, exiting 1");
                    exit(1);
                }
                if n < 0 {
                    if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    eprintln!(
                        "testapp: read on emperor fd failed: {}",
                        std::io::Error::last_os_error()
                    );
                    exit(1);
                }
                match b[0] {
                    0 | 2 => {
                        eprintln!("testapp: emperor asked to stop (byte {})", b[0]);
                        exit(0);
                    }
                    1 => {
                        eprintln!("testapp: emperor asked to reload");
                        record(&format!("reload pid={} t_ns={}", pid(), now_ns()));
                    }
                    other => eprintln!("testapp: ignoring byte {other} from emperor"),
                }
            }
        });
    }

    if o.heartbeat_once {
        send_byte(26);
    }
    if let Some(s) = o.heartbeat {
        thread::spawn(move || {
            loop {
                send_byte(26);
                thread::sleep(Duration::from_secs(s.max(1)));
            }
        });
    }

    let loyal_sent = Arc::new(AtomicBool::new(false));
    let speak = o.speak;
    let body = format!("hello from {} pid={me}\n", o.name);
    // uWSGI's convention for an emperor-owned socket is fd 0; serve it too when it is a listening socket.
    let mut fds: Vec<i32> = stdin_is_listener
        .then_some(0)
        .into_iter()
        .chain(3..3 + listen_fds.unwrap_or(0))
        .collect();
    for path in &o.bind_unix {
        fds.push(bind_unix(path));
    }
    let keep_alive = o.keep_alive;
    if let Some(ms) = o.accept_delay {
        thread::sleep(Duration::from_millis(ms));
        record(&format!("serving pid={me} t_ns={}", now_ns()));
    }
    let mut workers = Vec::new();
    for fd in fds {
        let body: Arc<str> = Arc::from(body.as_str());
        let loyal_sent = Arc::clone(&loyal_sent);
        let on_served: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if speak && !loyal_sent.swap(true, Ordering::SeqCst) {
                send_byte(17);
            }
        });
        let serve = move |conn: std::os::fd::OwnedFd, unix: bool| {
            if unix {
                handle(
                    std::os::unix::net::UnixStream::from(conn),
                    &body,
                    &on_served,
                    keep_alive,
                )
            } else {
                handle(std::net::TcpStream::from(conn), &body, &on_served, keep_alive)
            }
        };
        match socket_family(fd) {
            Some(fam @ (libc::AF_UNIX | libc::AF_INET | libc::AF_INET6)) => {
                let busy = Arc::new(AtomicBool::new(false));
                let serving = Arc::clone(&busy);
                let thread = thread::spawn(move || {
                    while wait_acceptable(fd) {
                        match accept_interruptible(fd) {
                            Ok(conn) => {
                                serving.store(true, Ordering::SeqCst);
                                serve(conn, fam == libc::AF_UNIX);
                                serving.store(false, Ordering::SeqCst);
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => eprintln!("testapp: accept on fd {fd}: {e}"),
                        }
                    }
                });
                workers.push((thread, busy));
            }
            other => eprintln!("testapp: fd {fd} is not a unix/inet socket (family {other:?}), not serving it"),
        }
    }

    while !STOPPING.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(10));
    }
    // Workers serving a connection finish it (left alone: a signal would restart their read timeout); one
    // blocked in `accept` is woken (repeatedly, in case the signal lands just before it enters `accept`) and
    // sees STOPPING.
    while workers.iter().any(|(w, _)| !w.is_finished()) {
        for (w, _) in workers
            .iter()
            .filter(|(w, busy)| !w.is_finished() && !busy.load(Ordering::SeqCst))
        {
            // SAFETY: the thread has not been joined, so its pthread_t is valid; WAKE_SIGNAL has a handler.
            unsafe { libc::pthread_kill(w.as_pthread_t() as libc::pthread_t, WAKE_SIGNAL) };
        }
        thread::sleep(Duration::from_millis(20));
    }
    for (w, _) in workers {
        let _ = w.join();
    }
    std::process::exit(0);
}

/// `--inetd`: the connection is fds 0 and 1. Polls stdin every 50 ms so that a SIGTERM (whose handler
/// only sets STOPPING) is seen whatever moment it lands.
fn serve_inetd(name: &str, me: i32) -> ! {
    let say = |text: &str| {
        // SAFETY: writing a valid buffer to fd 1.
        unsafe { libc::write(1, text.as_ptr().cast(), text.len()) };
    };
    say(&format!("hello from {name} pid={me}\n"));
    let mut pending = Vec::new();
    loop {
        if STOPPING.load(Ordering::SeqCst) {
            say("bye: stopping\n");
            record(&format!("term pid={me}"));
            exit(0);
        }
        let mut p = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut p, 1, 50) } <= 0 {
            continue;
        }
        let mut buf = [0u8; 1024];
        // SAFETY: reading into a valid buffer of its length.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n as usize]);
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let text = String::from_utf8_lossy(&line[..i]).trim_end_matches('\r').to_string();
            if text == "quit" {
                say("bye\n");
                record(&format!("end pid={me}"));
                exit(0);
            }
            say(&format!("echo {text}\n"));
        }
    }
    record(&format!("end pid={me}"));
    exit(0);
}

/// `accept4` on a listening socket, returning `EINTR` to the caller: std's `accept` retries on it, which
/// would leave a stopping worker blocked for good once the other instance took the connection it polled.
fn accept_interruptible(fd: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    // SAFETY: fd is a listening socket we own for the life of the process; null address pointers are allowed.
    let c = unsafe { libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
    if c < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: accept4 returned a new fd that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(c) })
}

fn is_listening_socket(fd: i32) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid out-pointers of the right size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0 && v != 0
}

fn socket_family(fd: i32) -> Option<i32> {
    // SAFETY: sockaddr_storage is plain data; getsockname writes at most len bytes.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid out-pointers of the right size.
    let r = unsafe { libc::getsockname(fd, (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len) };
    (r == 0).then_some(ss.ss_family as i32)
}

fn serve<S: Read + Write>(mut s: S, body: &str, on_served: &dyn Fn()) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    match WORK_MS.load(Ordering::Relaxed) {
        0 => {}
        ms => thread::sleep(Duration::from_millis(ms)),
    }
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(resp.as_bytes()).is_ok() {
        let _ = s.flush();
    }
    on_served();
}

/// A stream `handle` can serve: a unix or TCP connection.
trait Conn: Read + Write + Send + 'static {
    fn set_timeout(&self, d: Duration);
}

impl Conn for std::os::unix::net::UnixStream {
    fn set_timeout(&self, d: Duration) {
        let _ = self.set_read_timeout(Some(d));
    }
}

impl Conn for std::net::TcpStream {
    fn set_timeout(&self, d: Duration) {
        let _ = self.set_read_timeout(Some(d));
    }
}

/// Serves one accepted connection: inline, one answer then close (the default), or with `--keep-alive` on a
/// thread of its own, answer after answer.
fn handle<S: Conn>(s: S, body: &Arc<str>, on_served: &Arc<dyn Fn() + Send + Sync>, keep_alive: bool) {
    if keep_alive {
        s.set_timeout(Duration::from_secs(60));
        let (body, on_served) = (Arc::clone(body), Arc::clone(on_served));
        thread::spawn(move || serve_keep_alive(s, &body, &*on_served));
    } else {
        s.set_timeout(Duration::from_secs(5));
        serve(s, body, &**on_served);
    }
}

/// `--bind-unix`: binds and listens on `path` (a stale file is replaced; mode 0666), returns the raw fd.
fn bind_unix(path: &str) -> i32 {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).unwrap_or_else(|e| {
        eprintln!("testapp: cannot bind {path}: {e}");
        exit(2);
    });
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666));
    let fd = std::os::fd::IntoRawFd::into_raw_fd(l);
    // SAFETY: fd is the listening socket we own; a deeper backlog than std's default.
    unsafe { libc::listen(fd, 1024) };
    fd
}

/// `--keep-alive`: answers requests on one connection until the client is done with it.
fn serve_keep_alive<S: Read + Write>(mut s: S, body: &str, on_served: &dyn Fn()) {
    let mut pending: Vec<u8> = Vec::with_capacity(4096);
    let mut buf = [0u8; 4096];
    loop {
        // One request head (and its body, if it declares a Content-Length).
        let end = loop {
            if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if pending.len() > 8192 {
                return;
            }
            match s.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        };
        let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
        let mut content_length = 0usize;
        let mut conn_close = head.lines().next().is_some_and(|l| l.ends_with("http/1.0"));
        for line in head.lines().skip(1) {
            if let Some(v) = line.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            } else if let Some(v) = line.strip_prefix("connection:") {
                let v = v.trim();
                if v.contains("close") {
                    conn_close = true;
                } else if v.contains("keep-alive") {
                    conn_close = false;
                }
            }
        }
        while pending.len() < end + content_length {
            match s.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
        pending.drain(..end + content_length);
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
            body.len(),
            if conn_close { "close" } else { "keep-alive" }
        );
        if s.write_all(resp.as_bytes()).is_err() {
            return;
        }
        on_served();
        if conn_close || STOPPING.load(Ordering::SeqCst) {
            let _ = s.flush();
            return;
        }
    }
}
