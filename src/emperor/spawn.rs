//! Starting vassal processes: the one place where the emperor forks.
//!
//! The mechanics (fork, fd placement, `LISTEN_PID`, exec errors) are `crate::sys::fork`'s; this file
//! decides what a vassal gets: its program, found in the vassal's `PATH`, its environment, and its
//! fd layout. Everything is built before the fork, so the child has nothing left to allocate. The
//! emperor's runtime is current-thread, so the forking thread lives as long as the emperor, which is
//! what `PR_SET_PDEATHSIG` keys on.
//!
//! Ownership of the wait status: each child gets a pidfd; the actor awaits it becoming readable and then
//! reaps exactly that pid with `waitpid(pid)`. Nothing in the emperor calls `waitpid(-1)`.
//!
//! CLOEXEC discipline: every fd the emperor owns is CLOEXEC (std, tokio and nix with `SOCK_CLOEXEC` all
//! create them so, and `sys::fd::mark_inherited_fds_cloexec` fixes what the emperor inherited). The
//! child clears the flag only on the exact fds it places at 0..N.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

use crate::sys::{fd, fork};

/// Everything needed to start one vassal process.
#[derive(Debug)]
pub struct SpawnRequest<'a> {
    /// argv; `argv[0]` is looked up in `PATH` unless it contains a `/`, or unless `program` is set.
    pub argv: &'a [String],
    /// The program to execute instead of resolving `argv[0]` (a bridge is `/proc/self/exe`).
    pub program: Option<&'a Path>,
    /// Extra environment on top of the emperor's (cleaned) environment, later entries win.
    pub env: Vec<(String, String)>,
    /// Working directory of the vassal.
    pub cwd: &'a Path,
    /// Listening sockets, placed at fd 3, 4, ... and announced with `LISTEN_FDS`/`LISTEN_FDNAMES` and `NGINX`
    /// ([`fork::socket_env`]).
    pub sockets: Vec<(BorrowedFd<'a>, String)>,
    /// Further fds placed right after the sockets, each announced in the named variable
    /// (`UWSGI_EMPEROR_FD`, `UWSGI_EMPEROR_FD_CONFIG`).
    pub extra_fds: Vec<(BorrowedFd<'a>, &'static str)>,
    /// Becomes the vassal's stdin; `/dev/null` when `None`. uWSGI's convention for a socket the
    /// emperor owns (its on-demand vassals get theirs there), and the only one that survives a
    /// uWSGI 2.0 graceful reload, which forgets `LISTEN_FDS` sockets.
    pub stdin: Option<BorrowedFd<'a>>,
    /// Becomes the vassal's stdout, and its stderr unless `stderr` is set.
    pub output: BorrowedFd<'a>,
    /// A separate stderr (a bridge logs straight to the emperor's own stderr).
    pub stderr: Option<BorrowedFd<'a>>,
    /// Sent to the vassal when the emperor's thread dies.
    pub pdeathsig: Signal,
    /// The user the vassal runs as (tyrant mode); `None`: the emperor's own.
    pub creds: Option<&'a crate::sys::fork::Creds>,
}

/// A running vassal process that this emperor forked and must reap.
#[derive(Debug)]
pub struct Child {
    pid: Pid,
    pidfd: AsyncFd<OwnedFd>,
}

/// How a vassal process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(Signal),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "with code {c}"),
            Exit::Signal(s) => write!(f, "by signal {}", s.as_str()),
        }
    }
}

fn cstring(bytes: &[u8], what: &str) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} contains a NUL byte")))
}

/// Forks and execs a vassal. Returns once `execve` succeeded (or failed, with its error).
pub fn spawn(req: SpawnRequest<'_>) -> io::Result<Child> {
    let vassal_path = req
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| OsStr::new(v.as_str()));
    let inherited_path = std::env::var_os("PATH");
    let program = match req.program {
        Some(p) => p.to_path_buf(),
        None => fork::resolve_program(&req.argv[0], req.cwd, vassal_path.or(inherited_path.as_deref()))?,
    };
    let program_c = cstring(program.as_os_str().as_bytes(), "program path")?;
    let argv_c: Vec<CString> = req
        .argv
        .iter()
        .map(|a| cstring(a.as_bytes(), "argument"))
        .collect::<io::Result<_>>()?;
    let cwd_c = cstring(req.cwd.as_os_str().as_bytes(), "working directory")?;

    // The fd plan: targets 0, 1, 2, then sockets from 3, then the extra fds.
    let devnull = OwnedFd::from(std::fs::File::open("/dev/null")?);
    let stdin = req.stdin.map_or(devnull.as_raw_fd(), |fd| fd.as_raw_fd());
    let stderr = req.stderr.unwrap_or(req.output).as_raw_fd();
    let mut sources: Vec<RawFd> = vec![stdin, req.output.as_raw_fd(), stderr];
    sources.extend(req.sockets.iter().map(|(fd, _)| fd.as_raw_fd()));
    let first_extra = sources.len();
    sources.extend(req.extra_fds.iter().map(|(fd, _)| fd.as_raw_fd()));

    // The environment: the emperor's, scrubbed, then ours, then the vassal's own `env =` lines.
    let mut env: Vec<(Vec<u8>, Vec<u8>)> = std::env::vars_os()
        .filter(|(k, _)| !crate::protocol::SCRUBBED_ENV.iter().any(|s| OsStr::new(s) == k))
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    let mut set = |k: &str, v: String| {
        env.retain(|(ek, _)| ek != k.as_bytes());
        env.push((k.as_bytes().to_vec(), v.into_bytes()));
    };
    let names: Vec<&str> = req.sockets.iter().map(|(_, n)| n.as_str()).collect();
    for (k, v) in fork::socket_env(&names) {
        set(k, v);
    }
    for (i, (_, var)) in req.extra_fds.iter().enumerate() {
        set(var, (first_extra + i).to_string());
    }
    for (k, v) in &req.env {
        set(k, v.clone());
    }
    let mut envp: Vec<Vec<u8>> = Vec::with_capacity(env.len());
    for (k, v) in &env {
        let entry = [k.as_slice(), b"=", v.as_slice()].concat();
        envp.push(cstring(&entry, "environment")?.into_bytes_with_nul());
    }

    let pid = fork::fork_exec(fork::Exec {
        program: &program_c,
        search_path: false,
        argv: &argv_c,
        env: &mut envp,
        fds: &sources,
        cwd: Some(&cwd_c),
        pdeathsig: Some(req.pdeathsig as libc::c_int),
        own_group: true,
        foreground: false,
        creds: req.creds,
    })
    .map_err(|e| match e {
        fork::Error::Parent(_, err) => err,
        fork::Error::Exec(err) => io::Error::new(err.kind(), format!("cannot execute {}: {err}", program.display())),
    })?;
    let pidfd = match fd::pidfd_open(pid.as_raw()) {
        Ok(fd) => fd,
        Err(err) => {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            return Err(io::Error::new(
                err.kind(),
                format!("pidfd_open: {err} (Linux 5.3 or later is needed)"),
            ));
        }
    };
    Ok(Child {
        pid,
        pidfd: fd::watch_readable(pidfd)?,
    })
}

impl Child {
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Waits until the process exits and reaps it. Cancel-safe: dropping the future reaps nothing.
    ///
    /// Before reaping, it SIGKILLs the rest of the vassal's process group: the leader is a zombie at
    /// that moment, so its pid (the group id) cannot have been reused, and nothing the vassal forked
    /// outlives it.
    pub async fn wait(&mut self) -> io::Result<Exit> {
        loop {
            let mut guard = self.pidfd.readable().await?;
            guard.clear_ready();
            drop(guard);
            let _ = nix::sys::signal::killpg(self.pid, Signal::SIGKILL);
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(Exit::Code(code)),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(Exit::Signal(sig)),
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends `sig` to the vassal's main process. A process that is already gone is not an error.
    pub fn signal(&self, sig: Signal) {
        let _ = nix::sys::signal::kill(self.pid, sig);
    }

    /// SIGKILLs the vassal's whole process group (it is the group leader, see `sys::fork`).
    pub fn kill_group(&self) {
        if self.pid.as_raw() > 1 {
            let _ = nix::sys::signal::killpg(self.pid, Signal::SIGKILL);
        }
    }
}

/// Registers a (duplicated) listening socket with the runtime to learn when a connection is waiting on
/// it, without ever accepting it: the emperor watches a vassal's sockets while the vassal waits on
/// demand, is paused, or is checked for idleness.
pub use crate::sys::fd::watch_readable;
