//! The accept role: `emperor accept --max-connections <N> -- <command>...`, the process of a vassal with
//! `accept = true`. It accepts connections on the sockets it got as `LISTEN_FDS` and runs the command once
//! per connection, with the connection as stdin and stdout: inetd's `nowait`, systemd's `Accept=yes`.
//! OpenSSH's `sshd -i` is the program this is for; any inetd-style program works.
//!
//! One implementation for both kinds of vassal: the emperor runs its own binary in this role as a process
//! vassal's process (`emperor/vassal/launch.rs`), and a Docker vassal's shim runs the bind-mounted binary
//! in this role as its payload (`docker/plan.rs`), so the accepting and forking happen inside the
//! container and one container serves every connection. Either way the role gets exactly what any vassal
//! gets (the sockets from fd 3, `LISTEN_PID`, the control channel), and the emperor sees one process.
//!
//! # What each per-connection child gets
//! - fd 0 and 1: the connection; fd 2: the role's own stderr, i.e. the vassal's log (the emperor's output
//!   pipe, or the container's tty the bridge forwards), never the connection, so `sshd -i -e` logs there
//!   and nothing but the protocol reaches the client;
//! - fd 3: the connection again, with `LISTEN_FDS=1`, `LISTEN_PID` (the child's pid) and
//!   `LISTEN_FDNAMES=connection`, as systemd passes an `Accept=yes` connection;
//! - `REMOTE_ADDR` and `REMOTE_PORT` (systemd's and CGI's names) for a TCP peer, the address without
//!   brackets and an IPv4-mapped IPv6 address as IPv4; neither for a unix socket;
//! - the role's environment without the emperor's hand-over variables (`protocol::SCRUBBED_ENV`);
//! - the role's process group (so the emperor's kill of the vassal's group reaches every child),
//!   default signal handling, and `PR_SET_PDEATHSIG=SIGKILL`: no child outlives the role.
//!
//! # The loop
//! Single-threaded, so it may fork freely (`sys::fork`). Every asynchronous signal is blocked and read
//! from a signalfd, which `poll` watches with the listening sockets:
//! - the listeners are watched only while fewer than `N` children run: beyond that, connections wait in
//!   the kernel's backlog (the socket's `listen`, 1024 by default) and are taken as children exit. None is
//!   refused (systemd's `MaxConnections` refuses them);
//! - SIGCHLD reaps every exited child, also orphans of children (the role is a child subreaper, or PID 1);
//! - SIGTERM, SIGINT or SIGQUIT (the vassal's stop signal) stops accepting and is sent on to every child;
//!   the role exits 0 once the last one is gone. What is still queued stays in the backlog for whoever
//!   accepts next. The emperor's `stop-timeout` bounds the wait: it kills the vassal's group after it
//!   (Docker: `docker stop -t`);
//! - any other signal (SIGHUP, SIGUSR1, ...) is sent on to every child.
//!
//! # Why `accept` runs under a timer
//! The listening sockets stay blocking: their file description is the emperor's and every later instance's
//! (systemd's convention), so setting `O_NONBLOCK` would change the socket under them. But `poll` saying
//! "readable" does not mean `accept` will find the connection: another process on the same socket (the
//! other instance of an overlapping reload, the emperor closing a failed vassal's queue) may take it first,
//! and a blocking `accept` then waits for the next client with every signal blocked (a stop would have to
//! wait for the SIGKILL). So each `accept` runs under an interval timer whose SIGALRM (caught, not
//! blocked, no `SA_RESTART`) makes it return `EINTR` within [`ACCEPT_PATIENCE`]; the loop then polls again.
//!
//! # Exit codes
//! 0 after a stop; 125 when the role cannot get going (no sockets, bad `LISTEN_*`), 127 when the command
//! does not exist and 126 when it cannot be executed (checked at start, so a typo in `exec` fails the
//! vassal instead of every connection); 1 when a listening socket becomes unusable.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{SockFlag, getsockopt, sockopt};

use crate::cli::AcceptArgs;
use crate::shim::{EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EXIT_SETUP};
use crate::sys::supervise::{blocked_signals, exit_code, forward, reap_one, signal_name};
use crate::sys::{fd, fork};

/// The subcommand's name, as the emperor and the shim put it on a command line.
const SUBCOMMAND: &str = "accept";

/// The longest a single `accept` may block when another process took the connection `poll` announced.
const ACCEPT_PATIENCE: Duration = Duration::from_millis(100);

/// How long the listeners rest after `accept` failed for want of fds or memory (a busy loop otherwise).
const RESOURCE_PAUSE: Duration = Duration::from_millis(200);

/// Signals that stop the role: the stop signals the emperor and Docker send.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT];

/// The command line that runs `per_connection` under this role: `<exe> accept --max-connections <max> --
/// <per_connection>...`. `exe` is the emperor's binary as the process that execs it sees it (the
/// emperor's `/proc/self/exe`, or the shim's path inside a container).
pub fn command(exe: &str, max: u32, per_connection: &[String]) -> Vec<String> {
    [exe, SUBCOMMAND, "--max-connections", &max.to_string(), "--"]
        .into_iter()
        .map(str::to_owned)
        .chain(per_connection.iter().cloned())
        .collect()
}

/// Writes `accept: <message>` to stderr in one `write`: the children share the pipe (the vassal's log),
/// and a line written in pieces (as `eprintln!` does) could be cut by one of theirs.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let line = format!("accept: {}\n", format_args!($($arg)*));
        let _ = std::io::stderr().write_all(line.as_bytes());
    }};
}

/// Entry point of the `accept` role.
pub fn main(args: AcceptArgs) -> ExitCode {
    match run(&args) {
        Ok(code) => code,
        Err((code, msg)) => {
            say!("{msg}");
            ExitCode::from(code)
        }
    }
}

/// Why the role ends before or instead of serving: its exit code and the message.
type Failure = (u8, String);

fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Failure + '_ {
    move |e| (EXIT_SETUP, format!("{what}: {e}"))
}

fn run(args: &AcceptArgs) -> Result<ExitCode, Failure> {
    fd::mark_inherited_fds_cloexec();
    let mut signals = blocked_signals();
    signals.remove(Signal::SIGALRM);
    signals.thread_block().map_err(setup("cannot block signals"))?;
    if nix::unistd::getpid().as_raw() != 1 {
        // Orphans of the children (a program that forks and exits) are ours to reap, as PID 1's would be.
        let _ = nix::sys::prctl::set_child_subreaper(true);
    }
    let sfd = SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(setup("cannot open a signalfd"))?;
    catch_alarm().map_err(setup("cannot catch SIGALRM"))?;
    let listeners = adopt_listeners().map_err(|e| (EXIT_SETUP, e))?;

    let cwd = std::env::current_dir().map_err(setup("no working directory"))?;
    let path_var = std::env::var_os("PATH");
    let program = fork::resolve_program(&args.command[0], &cwd, path_var.as_deref())
        .and_then(|p| {
            nix::unistd::access(&p, nix::unistd::AccessFlags::X_OK)
                .map(|()| p)
                .map_err(io::Error::from)
        })
        .map_err(|e| {
            let code = if e.kind() == io::ErrorKind::NotFound {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_EXECUTE
            };
            (code, format!("cannot execute {}: {e}", args.command[0]))
        })?;
    let server = Server {
        listeners,
        max: args.max_connections as usize,
        program: cstring(program.as_os_str().as_bytes()).map_err(setup("the program's path"))?,
        argv: args
            .command
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(setup("the command line"))?,
        env: child_env().map_err(setup("the environment"))?,
        children: HashSet::new(),
        stopping: false,
        resting_until: None,
    };
    say!(
        "serving {} socket(s), at most {} connection(s) at once, each by {}",
        server.listeners.len(),
        server.max,
        args.command.join(" ")
    );
    server.serve(&sfd)
}

/// Takes the sockets the emperor (or the shim) placed from fd 3, after checking `LISTEN_PID` and that
/// each one is a listening socket.
fn adopt_listeners() -> Result<Vec<OwnedFd>, String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let me = std::process::id().to_string();
    match var("LISTEN_PID") {
        Some(pid) if pid == me => {}
        other => {
            return Err(format!(
                "LISTEN_PID is {other:?}, not this process ({me}): no sockets were passed"
            ));
        }
    }
    let n: i32 = var("LISTEN_FDS")
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=250).contains(n))
        .ok_or("LISTEN_FDS does not name 1 to 250 sockets: a vassal with accept = true needs a socket")?;
    (3..3 + n)
        .map(|fd| {
            let owned = crate::proxy_socket::adopt_inherited(fd)?;
            match getsockopt(&owned, sockopt::AcceptConn) {
                Ok(true) => Ok(owned),
                Ok(false) => Err(format!("fd {fd} is not a listening socket")),
                Err(e) => Err(format!("fd {fd} is not a socket: {e}")),
            }
        })
        .collect()
}

/// The environment every child starts from: ours without the hand-over variables, with the connection
/// announced as systemd announces an `Accept=yes` connection. NUL-terminated `K=V` entries.
fn child_env() -> Result<Vec<Vec<u8>>, String> {
    let dropped = |k: &OsStr| {
        crate::protocol::SCRUBBED_ENV
            .iter()
            .chain(&["REMOTE_ADDR", "REMOTE_PORT"])
            .any(|s| OsStr::new(s) == k)
    };
    let mut env: Vec<Vec<u8>> = std::env::vars_os()
        .filter(|(k, _)| !dropped(k))
        .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat())
        .collect();
    env.push(b"LISTEN_FDS=1".to_vec());
    env.push(b"LISTEN_FDNAMES=connection".to_vec());
    env.push(format!("LISTEN_PID={}", fork::blank_pid()).into_bytes());
    env.into_iter()
        .map(|e| cstring(&e).map(CString::into_bytes_with_nul))
        .collect()
}

fn cstring(bytes: &[u8]) -> Result<CString, String> {
    CString::new(bytes).map_err(|_| "contains a NUL byte".to_owned())
}

/// The accepting loop's state.
struct Server {
    listeners: Vec<OwnedFd>,
    max: usize,
    program: CString,
    argv: Vec<CString>,
    env: Vec<Vec<u8>>,
    /// The per-connection children that run (orphans the role adopted are reaped, not counted).
    children: HashSet<libc::pid_t>,
    /// A stop signal arrived: nothing more is accepted, and the role ends with its last child.
    stopping: bool,
    /// `accept` ran out of fds or memory: the listeners rest until then.
    resting_until: Option<Instant>,
}

impl Server {
    fn serve(mut self, sfd: &SignalFd) -> Result<ExitCode, Failure> {
        loop {
            if self.stopping && self.children.is_empty() {
                say!("stopped");
                return Ok(ExitCode::SUCCESS);
            }
            let resting = self.resting_until.filter(|t| *t > Instant::now());
            let accepting = !self.stopping && self.children.len() < self.max && resting.is_none();
            let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
            if accepting {
                fds.extend(self.listeners.iter().map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN)));
            }
            let timeout = resting.map_or(PollTimeout::NONE, |t| {
                PollTimeout::try_from(t.saturating_duration_since(Instant::now())).unwrap_or(PollTimeout::MAX)
            });
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err((EXIT_SETUP, format!("poll: {e}"))),
            }
            let ready = |p: &PollFd<'_>| p.revents().is_some_and(|r| !r.is_empty());
            let signalled = ready(&fds[0]);
            let acceptable: Vec<usize> = fds[1..]
                .iter()
                .enumerate()
                .filter(|(_, p)| ready(p))
                .map(|(i, _)| i)
                .collect();
            drop(fds);
            if signalled {
                self.take_signals(sfd);
            }
            for i in acceptable {
                if self.stopping || self.children.len() >= self.max {
                    break;
                }
                self.accept_on(i)?;
            }
        }
    }

    /// Handles every pending signal.
    fn take_signals(&mut self, sfd: &SignalFd) {
        while let Ok(Some(info)) = sfd.read_signal() {
            let sig = info.ssi_signo as libc::c_int;
            if sig == libc::SIGCHLD {
                self.reap();
                continue;
            }
            if STOP_SIGNALS.contains(&sig) && !self.stopping {
                self.stopping = true;
                let name = signal_name(sig);
                match self.children.len() {
                    0 => say!("{name}: no more connections are accepted; none is open"),
                    n => say!("{name}: no more connections are accepted; {name} sent to the {n} still open"),
                }
            }
            for pid in &self.children {
                forward(*pid, sig);
            }
        }
    }

    fn reap(&mut self) {
        while let Some((pid, status)) = reap_one() {
            if self.children.remove(&pid) && status != 0 {
                let code = exit_code(status);
                let how = if libc::WIFSIGNALED(status) {
                    format!("by {}", signal_name(libc::WTERMSIG(status)))
                } else {
                    format!("with code {code}")
                };
                say!("pid {pid} exited {how}");
            }
        }
    }

    /// Accepts one connection on listener `i`, if one is still there, and starts its child.
    fn accept_on(&mut self, i: usize) -> Result<(), Failure> {
        let listener = &self.listeners[i];
        let conn = match accept_within(listener.as_fd()) {
            Ok(conn) => conn,
            // Another process took it, or the peer gave up (Linux reports pending network errors here).
            Err(
                Errno::EINTR
                | Errno::EAGAIN
                | Errno::ECONNABORTED
                | Errno::EPROTO
                | Errno::EPERM
                | Errno::ENETDOWN
                | Errno::ENOPROTOOPT
                | Errno::EHOSTDOWN
                | Errno::ENONET
                | Errno::EHOSTUNREACH
                | Errno::EOPNOTSUPP
                | Errno::ENETUNREACH,
            ) => return Ok(()),
            Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
                say!(
                    "cannot accept on fd {}: {e}; connections wait {} ms",
                    listener.as_raw_fd(),
                    RESOURCE_PAUSE.as_millis()
                );
                self.resting_until = Some(Instant::now() + RESOURCE_PAUSE);
                return Ok(());
            }
            Err(e) => {
                return Err((
                    1,
                    format!("the listening socket at fd {} is unusable: {e}", listener.as_raw_fd()),
                ));
            }
        };
        let peer = remote(&conn);
        let mut env = self.env.clone();
        if let Some(addr) = peer {
            let ip = match addr.ip() {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
                v4 => v4,
            };
            env.push(format!("REMOTE_ADDR={ip}\0").into_bytes());
            env.push(format!("REMOTE_PORT={}\0", addr.port()).into_bytes());
        }
        let c = conn.as_raw_fd();
        let forked = fork::fork_exec(fork::Exec {
            program: &self.program,
            search_path: false,
            argv: &self.argv,
            env: &mut env,
            fds: &[c, c, libc::STDERR_FILENO, c],
            cwd: None,
            pdeathsig: Some(libc::SIGKILL),
            own_group: false,
            foreground: false,
            creds: None,
        });
        // The child has its copies (or none); ours closes, so the connection ends with the child.
        drop(conn);
        let from = peer.map_or_else(|| format!("fd {}", listener.as_raw_fd()), |a| a.to_string());
        match forked {
            Ok(pid) => {
                self.children.insert(pid.as_raw());
                say!("pid {pid} serves {from} ({}/{})", self.children.len(), self.max);
            }
            Err(fork::Error::Parent(what, e)) => say!("connection from {from} closed: {what}: {e}"),
            Err(fork::Error::Exec(e)) => say!(
                "connection from {from} closed: cannot execute {}: {e}",
                self.program.to_string_lossy()
            ),
        }
        Ok(())
    }
}

/// `accept4` that gives up with `EINTR` after about [`ACCEPT_PATIENCE`] if the connection is gone
/// (see the module doc). The accepted socket is CLOEXEC: only the child's placed copies cross its exec.
fn accept_within(listener: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    let patience = libc::timeval {
        tv_sec: 0,
        tv_usec: libc::suseconds_t::try_from(ACCEPT_PATIENCE.as_micros()).unwrap_or(100_000),
    };
    let armed = libc::itimerval {
        it_interval: patience,
        it_value: patience,
    };
    // SAFETY: setitimer(2) reads the itimerval we pass and writes nothing (null old value). The interval
    // repeats, so a SIGALRM that fires before `accept` starts is followed by another while it blocks.
    unsafe { libc::setitimer(libc::ITIMER_REAL, &armed, std::ptr::null_mut()) };
    let accepted = nix::sys::socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC);
    let disarmed = libc::itimerval {
        it_interval: libc::timeval { tv_sec: 0, tv_usec: 0 },
        it_value: libc::timeval { tv_sec: 0, tv_usec: 0 },
    };
    // SAFETY: as above; a zero value disarms the timer.
    unsafe { libc::setitimer(libc::ITIMER_REAL, &disarmed, std::ptr::null_mut()) };
    // SAFETY: accept4 just returned this fd, and nothing else in this process refers to it.
    accepted.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Does nothing; being caught without `SA_RESTART` is what makes a blocked `accept` return `EINTR`.
extern "C" fn on_alarm(_: libc::c_int) {}

/// Catches SIGALRM with [`on_alarm`], without `SA_RESTART`.
fn catch_alarm() -> nix::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};
    let action = SigAction::new(SigHandler::Handler(on_alarm), SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler does nothing, so it is async-signal-safe and touches no state of ours; the
    // previous action (the default) needs no restoring.
    unsafe { sigaction(Signal::SIGALRM, &action) }.map(drop)
}

/// The TCP peer of a connection; `None` for a unix socket (std reads only IP addresses) or a peer that is gone.
fn remote(conn: &OwnedFd) -> Option<SocketAddr> {
    std::net::TcpStream::from(conn.try_clone().ok()?).peer_addr().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_parses_back() {
        use clap::Parser;
        let argv = command(
            "/proc/self/exe",
            7,
            &["/usr/sbin/sshd".into(), "-i".into(), "-e".into()],
        );
        assert_eq!(argv[..5], ["/proc/self/exe", "accept", "--max-connections", "7", "--"]);
        let cli = crate::cli::Cli::try_parse_from(&argv).expect("parses");
        match cli.role {
            Some(crate::cli::Role::Accept(a)) => {
                assert_eq!(a.max_connections, 7);
                assert_eq!(a.command, ["/usr/sbin/sshd", "-i", "-e"]);
            }
            other => panic!("not the accept role: {other:?}"),
        }
        assert!(
            crate::cli::Cli::try_parse_from(command("e", 0, &["x".into()])).is_err(),
            "0 connections"
        );
    }

    #[test]
    fn tcp_peers_are_told_and_unix_ones_are_not() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        assert_eq!(remote(&OwnedFd::from(s)), Some(c.local_addr().unwrap()));
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(remote(&OwnedFd::from(a)), None);
    }
}
