//! The shim: PID 1 inside a Docker vassal's container (`emperor shim -- <command> [args...]`).
//!
//! The bridge creates the container with Entrypoint `["/.emperor/emperor", "shim", "--"]` and the vassal's
//! command as Cmd, with this binary bind-mounted read-only at `/.emperor/emperor` (it is static, so it runs
//! in a `FROM scratch` image) and the proxy socket's directory bind-mounted. The shim then:
//!
//! 1. connects to the proxy socket named by [`ENV_PROXY`], retrying every 50 ms for up to 30 s, and
//!    receives one frame (`crate::proxy_socket`): control fd, config fd if [`ENV_CONFIG`] is `1`, then
//!    [`ENV_SOCKETS`] listening sockets. It connects from PID 1 itself, before anything forks, so the
//!    bridge's `SO_PEERCRED` check sees the container's init pid (`.State.Pid` in `docker inspect`);
//! 2. places the fds the way the emperor places them for process vassals (`emperor::spawn`), and sets
//!    the environment conventions the payload may read (below);
//! 3. forks and execs the payload and stays PID 1 with tini's semantics: forwards signals, reaps every
//!    zombie, exits with the payload's status.
//!
//! # The environment contract (bridge → shim)
//! | variable | value |
//! |---|---|
//! | [`ENV_PROXY`] `EMPEROR_PROXY` | path of the proxy socket inside the container |
//! | [`ENV_SOCKETS`] `EMPEROR_SOCKETS` | number of listening sockets in the frame (after control and config); default 0 |
//! | [`ENV_CONFIG`] `EMPEROR_CONFIG` | `1` if a config fd follows the control fd, else `0` (default) |
//! | [`ENV_FDNAMES`] `EMPEROR_FDNAMES` | the sockets' names joined by `:` (each `unknown` when unset) |
//! | [`ENV_STDIN_SOCKET`] `EMPEROR_STDIN_SOCKET` | `1` (uWSGI vassals): the first socket becomes fd 0; else `0` (default) |
//!
//! Every `EMPEROR_*` variable is removed from the payload's environment.
//!
//! # The fd layout and environment the payload gets (shim → payload)
//! Exactly as a process vassal of the emperor: with `n` sockets in `LISTEN_FDS`,
//! - the sockets at fd 3..3+n: `LISTEN_FDS=n`, `LISTEN_FDNAMES`, `LISTEN_PID` (the payload's own pid, as
//!   systemd's `sd_listen_fds` checks it) and `NGINX=3;4;` (nginx's inherited-socket convention: each fd
//!   followed by `;`). None of these is set when `n` is 0;
//! - with [`ENV_STDIN_SOCKET`] `=1`, the *first* socket goes to fd 0 instead (uWSGI's convention for a
//!   socket the emperor owns, and the only one a uWSGI 2.0 graceful reload does not forget), and the
//!   others to 3.. as above. Otherwise fd 0 stays what Docker gave (the tty with `Tty`, else `/dev/null`
//!   or the attach stream);
//! - the control channel at 3+n (`UWSGI_EMPEROR_FD`), then the config channel at 4+n
//!   (`UWSGI_EMPEROR_FD_CONFIG`, only when there is one).
//!
//! Fixed places because that is what every consumer expects: systemd-style apps count from 3, uWSGI
//! reads fd numbers from its two variables and takes fd 0 as an inherited socket.
//!
//! # Why tini semantics
//! A container's PID 1 gets no default signal actions from the kernel: a signal it has no handler for is
//! dropped, so `docker stop` would wait its full timeout and then SIGKILL (measured: 3 s instead of
//! 47 ms). And every orphan in the container is reparented to PID 1, which must reap it or it stays a
//! zombie. So, like tini (`src/tini.c`): every catchable asynchronous signal is blocked in the shim
//! before anything else, and waited for with `sigwaitinfo`; SIGCHLD reaps *all* children with
//! `waitpid(-1, WNOHANG)`, everything else is forwarded to the payload. The payload gets an empty signal
//! mask and default dispositions, its own process group, and the terminal's foreground if there is one
//! (so a tty's ^C reaches it). When the payload exits, the shim exits with its code, or 128+signal.
//! Synchronous signals (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP, SIGSYS) are not blocked: they
//! are about the shim's own bugs and must stay fatal.
//!
//! Outside a container (tests on the host) the shim is not PID 1; it then makes itself a child
//! subreaper (tini's `-s`), so orphans of the payload are still its to reap.
//!
//! # Why CLOEXEC
//! Received fds are close-on-exec (`MSG_CMSG_CLOEXEC`), and fds inherited from whoever started the shim
//! are marked so at start-up. Only the fds placed at their final numbers, by `dup2` right before the
//! fork, cross the `exec`, so the payload gets exactly the layout above and nothing else. The shim
//! closes its own copies after the fork: the emperor sees EOF on the control channel as soon as the
//! payload closes it or dies, not when the shim exits.
//!
//! # Exit codes
//! - the payload's exit code, or 128+signal when a signal killed it;
//! - [`EXIT_SETUP`] (125) when the shim could not get going: bad environment, proxy socket unreachable
//!   after 30 s, bad frame, fd placement or fork failed (the message on stderr starts with `shim:`);
//! - [`EXIT_NOT_FOUND`] (127) when the command does not exist, [`EXIT_CANNOT_EXECUTE`] (126) when it
//!   cannot be executed for another reason (`shim: cannot execute <cmd>: <error>` on stderr);
//! - 128+signal when SIGTERM, SIGINT or SIGQUIT arrives before the payload started (a `docker stop` while
//!   the proxy socket is not there yet); other early signals wait and are forwarded to the payload.
//!
//! # Fork discipline
//! The shim is single-threaded (nothing in it starts a thread, and `main` builds no runtime for this
//! role), so it may fork freely, and may let `execvpe` search `PATH` in the child. The fork itself is
//! `crate::sys::fork`'s, shared with the emperor: all memory the child uses is prepared before the
//! fork, and a failed `exec` comes back as its errno, from which the shim builds the message.

use std::ffi::CString;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};

use crate::proxy_socket;
use crate::sys::supervise::{blocked_signals, exit_code, forward, reap_one, signal_name, status_byte};
use crate::sys::{fd, fork};

/// Path of the proxy socket inside the container.
pub const ENV_PROXY: &str = "EMPEROR_PROXY";
/// Number of listening sockets in the frame, after control and config.
pub const ENV_SOCKETS: &str = "EMPEROR_SOCKETS";
/// `1` if the frame carries a config fd right after the control fd, `0` if not.
pub const ENV_CONFIG: &str = "EMPEROR_CONFIG";
/// The sockets' names, in frame order, joined by `:`; they become `LISTEN_FDNAMES`.
pub const ENV_FDNAMES: &str = "EMPEROR_FDNAMES";
/// `1` puts the first socket at fd 0 (uWSGI vassals), `0` puts every socket in `LISTEN_FDS`.
pub const ENV_STDIN_SOCKET: &str = "EMPEROR_STDIN_SOCKET";

/// The shim could not set the payload up (see the module doc).
pub const EXIT_SETUP: u8 = 125;
/// The payload's command exists but cannot be executed.
pub const EXIT_CANNOT_EXECUTE: u8 = 126;
/// The payload's command does not exist.
pub const EXIT_NOT_FOUND: u8 = 127;

/// How long the shim waits for the proxy socket to appear and answer, and then for the frame.
const PROXY_PATIENCE: Duration = Duration::from_secs(30);
/// Pause between two connection attempts.
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// Signals that stop the shim while it is still waiting for the proxy socket.
const EARLY_STOP: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT];

/// Why the shim ends before the payload runs.
enum Failure {
    /// Exit [`EXIT_SETUP`] with this message.
    Setup(String),
    /// A stop signal arrived first: exit 128+signal.
    Stopped(libc::c_int),
}

impl From<String> for Failure {
    fn from(msg: String) -> Failure {
        Failure::Setup(msg)
    }
}

/// Entry point of the `shim` role.
pub fn main(args: crate::cli::ShimArgs) -> ExitCode {
    match run(&args.command) {
        Ok(code) => code,
        Err(Failure::Setup(msg)) => {
            eprintln!("shim: {msg}");
            ExitCode::from(EXIT_SETUP)
        }
        Err(Failure::Stopped(sig)) => {
            eprintln!("shim: stopped by {} before the command started", signal_name(sig));
            ExitCode::from(status_byte(128 + sig))
        }
    }
}

fn run(command: &[String]) -> Result<ExitCode, Failure> {
    fd::mark_inherited_fds_cloexec();
    // Before anything else, so that no signal is lost (or, for PID 1, silently dropped) from here on.
    let signals = blocked_signals();
    signals
        .thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    if nix::unistd::getpid().as_raw() != 1 {
        // Not in a container (or under another init): adopt the payload's orphans like PID 1 would.
        let _ = nix::sys::prctl::set_child_subreaper(true);
    }

    let setup = Setup::from_env()?;
    let stream = connect(&setup.proxy)?;
    stream
        .set_read_timeout(Some(PROXY_PATIENCE))
        .map_err(|e| format!("proxy socket: {e}"))?;
    let expected = 1 + usize::from(setup.config) + setup.sockets;
    let fds = proxy_socket::recv_fds(&stream, expected)
        .map_err(|e| format!("bad frame on the proxy socket {}: {e}", setup.proxy.display()))?;
    if fds.len() != expected {
        return Err(Failure::Setup(format!(
            "the frame on {} carries {} fds, but the environment announces {expected} (control{} + {} socket(s))",
            setup.proxy.display(),
            fds.len(),
            if setup.config { " + config" } else { "" },
            setup.sockets
        )));
    }
    drop(stream);

    let plan = Plan::new(&setup, fds, command)?;
    match plan.spawn()? {
        Spawned::Running(pid) => Ok(supervise(pid, &signals)),
        Spawned::ExecFailed(code) => Ok(ExitCode::from(code)),
    }
}

/// What the bridge told the shim through the container's environment.
#[derive(Debug)]
struct Setup {
    proxy: PathBuf,
    config: bool,
    sockets: usize,
    names: Vec<String>,
    stdin_socket: bool,
}

impl Setup {
    fn from_env() -> Result<Setup, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let flag = |name: &str| match var(name).as_deref() {
            None | Some("0") => Ok(false),
            Some("1") => Ok(true),
            Some(other) => Err(format!("{name}={other:?}: expected 0 or 1")),
        };
        let proxy = var(ENV_PROXY).map(PathBuf::from).ok_or_else(|| {
            format!("{ENV_PROXY} is not set: the shim only runs in a container started by the emperor")
        })?;
        let sockets = match var(ENV_SOCKETS) {
            None => 0,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= 250)
                .ok_or_else(|| format!("{ENV_SOCKETS}={v:?}: expected a number of sockets (0 to 250)"))?,
        };
        let names = match var(ENV_FDNAMES) {
            None => vec!["unknown".to_string(); sockets],
            Some(v) => v.split(':').map(str::to_string).collect(),
        };
        if names.len() != sockets {
            return Err(format!(
                "{ENV_FDNAMES} names {} socket(s), but {ENV_SOCKETS} is {sockets}",
                names.len()
            ));
        }
        Ok(Setup {
            proxy,
            config: flag(ENV_CONFIG)?,
            sockets,
            names,
            stdin_socket: flag(ENV_STDIN_SOCKET)?,
        })
    }
}

/// Connects to the proxy socket, which normally exists already; retries while it does not, watching for
/// a stop signal between attempts.
fn connect(path: &std::path::Path) -> Result<UnixStream, Failure> {
    let deadline = Instant::now() + PROXY_PATIENCE;
    loop {
        let err = match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(Failure::Setup(format!(
                "cannot connect to the proxy socket {}: {err} (gave up after {} s)",
                path.display(),
                PROXY_PATIENCE.as_secs()
            )));
        }
        // Signals are blocked, so the sleep is not cut short and nothing is lost meanwhile.
        std::thread::sleep(RETRY_EVERY);
        if let Some(sig) = pending_stop_signal() {
            return Err(Failure::Stopped(sig));
        }
    }
}

/// Every fd of the payload: the fd to place and its number there.
struct Plan {
    placements: Vec<(OwnedFd, RawFd)>,
    program: CString,
    argv: Vec<CString>,
    /// NUL-terminated `K=V` entries; one of them holds the blank `LISTEN_PID` slot.
    envp: Vec<Vec<u8>>,
}

impl Plan {
    fn new(setup: &Setup, fds: Vec<OwnedFd>, command: &[String]) -> Result<Plan, String> {
        let mut fds = fds.into_iter();
        let control = fds.next().ok_or("the frame carries no control fd")?;
        let config = if setup.config { fds.next() } else { None };
        let mut sockets: Vec<(OwnedFd, &str)> = fds.zip(setup.names.iter().map(String::as_str)).collect();

        let mut placements = Vec::new();
        if setup.stdin_socket && !sockets.is_empty() {
            let (first, _) = sockets.remove(0);
            placements.push((first, 0));
        }
        let n = sockets.len();
        let names: Vec<&str> = sockets.iter().map(|(_, name)| *name).collect();
        for (i, (fd, _)) in sockets.into_iter().enumerate() {
            placements.push((fd, fd_number(3 + i)));
        }
        let control_at = fd_number(3 + n);
        placements.push((control, control_at));
        let config_at = config.map(|fd| {
            placements.push((fd, control_at + 1));
            control_at + 1
        });

        // The container's environment, as bytes (names and values need not be UTF-8), minus ours.
        let mut env: Vec<Vec<u8>> = std::env::vars_os()
            .filter(|(k, _)| {
                let k = k.as_bytes();
                !k.starts_with(b"EMPEROR_") && !crate::protocol::SCRUBBED_ENV.iter().any(|s| s.as_bytes() == k)
            })
            .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat())
            .collect();
        let mut set = |k: &str, v: String| env.push(format!("{k}={v}").into_bytes());
        for (k, v) in fork::socket_env(&names) {
            set(k, v);
        }
        set("UWSGI_EMPEROR_FD", control_at.to_string());
        if let Some(at) = config_at {
            set("UWSGI_EMPEROR_FD_CONFIG", at.to_string());
        }
        let envp: Vec<Vec<u8>> = env
            .into_iter()
            .map(|e| cstring(e, "an environment variable").map(CString::into_bytes_with_nul))
            .collect::<Result<_, _>>()?;

        let argv: Vec<CString> = command
            .iter()
            .map(|a| cstring(a.clone().into_bytes(), "the command line"))
            .collect::<Result<_, _>>()?;
        let program = argv.first().cloned().ok_or("no command given")?;
        Ok(Plan {
            placements,
            program,
            argv,
            envp,
        })
    }

    /// Places the fds, forks, and execs the payload in the child. Returns once the child's `exec`
    /// succeeded or failed.
    fn spawn(mut self) -> Result<Spawned, String> {
        let command = self.program.to_string_lossy().into_owned();
        // Whatever sat at a target number is ours to close: the proxy connection is dropped, and what
        // can remain below the targets is fd 0 (Docker's stdin, owned by no one here) or fds inherited
        // from our parent, which nothing in the shim uses.
        let placed =
            fd::place(std::mem::take(&mut self.placements)).map_err(|e| format!("cannot place the fds: {e}"))?;
        // The fork's exec-status pipe is created after the placement, so it cannot sit on a target.
        let forked = fork::fork_exec(fork::Exec {
            program: &self.program,
            search_path: true,
            argv: &self.argv,
            env: &mut self.envp,
            fds: &[],
            cwd: None,
            pdeathsig: None,
            own_group: true,
            foreground: true,
            creds: None,
        });
        // Our copies of the payload's fds go: the payload alone holds them now.
        drop(placed);
        match forked {
            Ok(pid) => Ok(Spawned::Running(pid.as_raw())),
            Err(fork::Error::Parent(what, e)) => Err(format!("{what}: {e}")),
            Err(fork::Error::Exec(err)) => {
                eprintln!("shim: cannot execute {command}: {err}");
                let code = if err.raw_os_error() == Some(libc::ENOENT) {
                    EXIT_NOT_FOUND
                } else {
                    EXIT_CANNOT_EXECUTE
                };
                Ok(Spawned::ExecFailed(code))
            }
        }
    }
}

/// How [`Plan::spawn`] ended.
enum Spawned {
    /// The payload runs with this pid.
    Running(libc::pid_t),
    /// `exec` failed (the message is printed); exit with this code, as a shell would.
    ExecFailed(u8),
}

/// Waits for signals as PID 1 until the payload exits: SIGCHLD reaps every child that has exited
/// (the payload and any orphan the shim adopted), everything else goes to the payload. Returns the
/// payload's exit code, or 128+signal.
fn supervise(payload: libc::pid_t, signals: &SigSet) -> ExitCode {
    loop {
        let sig = wait_signal(signals);
        if sig != libc::SIGCHLD {
            forward(payload, sig);
            continue;
        }
        let mut payload_status = None;
        while let Some((pid, status)) = reap_one() {
            if pid == payload {
                payload_status = Some(status);
            }
        }
        if let Some(status) = payload_status {
            return ExitCode::from(status_byte(exit_code(status)));
        }
    }
}

/// Blocks until one signal of `set` (all blocked) is pending, and takes it.
fn wait_signal(set: &SigSet) -> libc::c_int {
    loop {
        // SAFETY: `set` is an initialised sigset_t; a null siginfo pointer is allowed.
        let sig = unsafe { libc::sigwaitinfo(set.as_ref(), std::ptr::null_mut()) };
        if sig > 0 {
            return sig;
        }
        // EINTR (a stop/continue of the shim): wait again.
    }
}

/// A pending SIGTERM, SIGINT or SIGQUIT, taken off the pending set. Other pending signals stay pending
/// and reach the payload once it runs.
fn pending_stop_signal() -> Option<libc::c_int> {
    let mut stop = SigSet::empty();
    EARLY_STOP.iter().for_each(|s| stop.add(*s));
    // SAFETY: sigset_t is plain data and sigemptyset initialises it; sigpending writes into it.
    let pending = unsafe {
        let mut pending: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut pending);
        libc::sigpending(&mut pending);
        pending
    };
    for sig in EARLY_STOP {
        // SAFETY: `pending` was initialised above.
        if unsafe { libc::sigismember(&pending, sig as libc::c_int) } == 1 {
            let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: valid set and timespec; the signal is pending, so this returns at once and
            // takes it (and nothing outside `stop`).
            unsafe { libc::sigtimedwait(stop.as_ref(), std::ptr::null_mut(), &zero) };
            return Some(sig as libc::c_int);
        }
    }
    None
}

fn cstring(bytes: Vec<u8>, what: &str) -> Result<CString, String> {
    CString::new(bytes).map_err(|_| format!("{what} contains a NUL byte"))
}

fn fd_number(n: usize) -> RawFd {
    RawFd::try_from(n).expect("at most 253 fds")
}
