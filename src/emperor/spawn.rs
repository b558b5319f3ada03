//! Starting vassal processes: the one place where the emperor forks.
//!
//! Why not `std::process::Command`: the systemd convention wants `LISTEN_PID` to be the *vassal's* pid,
//! which only exists after `fork`, while `Command` fixes the environment before it forks. So the emperor
//! forks itself and, in the child, writes the pid's digits into an environment slot it allocated
//! beforehand. Everything the child touches is built in the parent first (paths, argv, envp, the fd
//! plan), because between `fork` and `execve` only async-signal-safe calls are allowed: no allocation,
//! no locks, no logging (style guide §5). The emperor's runtime is current-thread, so the forking thread
//! lives as long as the emperor, which is what `PR_SET_PDEATHSIG` keys on.
//!
//! Ownership of the wait status: each child gets a pidfd; the actor awaits it becoming readable and then
//! reaps exactly that pid with `waitpid(pid)`. Nothing in the emperor calls `waitpid(-1)`.
//!
//! CLOEXEC discipline: every fd the emperor owns is CLOEXEC (std, tokio and nix with `SOCK_CLOEXEC` all
//! create them so, and [`mark_inherited_fds_cloexec`] fixes what the emperor inherited). The child clears
//! the flag only on the exact fds it places at 0..N, by `dup2`.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

/// Marks every fd above 2 that the emperor inherited as close-on-exec, so that nothing its parent
/// leaked (a shell's fd, a systemd socket) reaches vassals. Call first thing in `main`.
pub fn mark_inherited_fds_cloexec() {
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC only sets a flag on fds of this process; it reads
    // no memory of ours. It runs before any other thread exists, so no fd is being opened concurrently.
    // On kernels older than 5.11 it fails with ENOSYS and we carry on: fds we open ourselves are CLOEXEC.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
    }
}

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
    /// Listening sockets, placed at fd 3, 4, ... and announced with `LISTEN_FDS`/`LISTEN_FDNAMES`.
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

use crate::child::PID_SLOT;

fn cstring(bytes: &[u8], what: &str) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} contains a NUL byte")))
}

/// Finds `prog` like `execvp` would, but in the parent, where searching may allocate.
fn resolve_program(prog: &str, cwd: &Path, path_var: Option<&OsStr>) -> io::Result<PathBuf> {
    if prog.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
    }
    if prog.contains('/') {
        let p = Path::new(prog);
        return Ok(if p.is_absolute() { p.to_path_buf() } else { cwd.join(p) });
    }
    let path_var = path_var.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    for dir in std::env::split_paths(path_var) {
        let dir = if dir.is_absolute() { dir } else { cwd.join(dir) };
        let candidate = dir.join(prog);
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok() && candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{prog:?} not found in PATH"),
    ))
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
        None => resolve_program(&req.argv[0], req.cwd, vassal_path.or(inherited_path.as_deref()))?,
    };
    let program_c = cstring(program.as_os_str().as_bytes(), "program path")?;
    let argv_c: Vec<CString> = req
        .argv
        .iter()
        .map(|a| cstring(a.as_bytes(), "argument"))
        .collect::<io::Result<_>>()?;
    let mut argv_p: Vec<*const libc::c_char> = argv_c.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let cwd_c = cstring(req.cwd.as_os_str().as_bytes(), "working directory")?;

    // The fd plan: targets 0, 1, 2, then sockets from 3, then the extra fds.
    let devnull = OwnedFd::from(std::fs::File::open("/dev/null")?);
    let stdin = req.stdin.map_or(devnull.as_raw_fd(), |fd| fd.as_raw_fd());
    let stderr = req.stderr.unwrap_or(req.output).as_raw_fd();
    let mut sources: Vec<RawFd> = vec![stdin, req.output.as_raw_fd(), stderr];
    sources.extend(req.sockets.iter().map(|(fd, _)| fd.as_raw_fd()));
    let first_extra = sources.len();
    sources.extend(req.extra_fds.iter().map(|(fd, _)| fd.as_raw_fd()));
    let targets: Vec<RawFd> = (0..sources.len() as RawFd).collect();
    let mut parked: Vec<RawFd> = vec![-1; sources.len()];
    let park_floor = sources.len() as RawFd + 16;

    // The environment: the emperor's, scrubbed, then ours, then the vassal's own `env =` lines.
    let mut env: Vec<(Vec<u8>, Vec<u8>)> = std::env::vars_os()
        .filter(|(k, _)| !crate::protocol::SCRUBBED_ENV.iter().any(|s| OsStr::new(s) == k))
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    let mut set = |k: &str, v: String| {
        env.retain(|(ek, _)| ek != k.as_bytes());
        env.push((k.as_bytes().to_vec(), v.into_bytes()));
    };
    if !req.sockets.is_empty() {
        set("LISTEN_FDS", req.sockets.len().to_string());
        set(
            "LISTEN_FDNAMES",
            req.sockets
                .iter()
                .map(|(_, n)| n.as_str())
                .collect::<Vec<_>>()
                .join(":"),
        );
        set("LISTEN_PID", " ".repeat(PID_SLOT));
    }
    for (i, (_, var)) in req.extra_fds.iter().enumerate() {
        set(var, (first_extra + i).to_string());
    }
    for (k, v) in &req.env {
        set(k, v.clone());
    }
    // NUL-terminated "K=V" buffers. Pointers are all derived from `as_mut_ptr`, because the child
    // writes the LISTEN_PID digits through one of them.
    let mut envp_bufs: Vec<Vec<u8>> = Vec::with_capacity(env.len());
    for (k, v) in &env {
        let entry = [k.as_slice(), b"=", v.as_slice()].concat();
        envp_bufs.push(cstring(&entry, "environment")?.into_bytes_with_nul());
    }
    let mut envp_p: Vec<*const libc::c_char> = envp_bufs
        .iter_mut()
        .map(|b| b.as_mut_ptr().cast_const().cast())
        .collect();
    let pid_slot: *mut u8 = match envp_bufs.iter().position(|e| e.starts_with(b"LISTEN_PID=")) {
        // SAFETY: that buffer is "LISTEN_PID=" + PID_SLOT spaces + NUL, so the offset stays inside it,
        // and the buffer is neither moved nor freed before the child execs.
        Some(i) => unsafe { envp_p[i].cast_mut().cast::<u8>().add("LISTEN_PID=".len()) },
        None => std::ptr::null_mut(),
    };
    envp_p.push(std::ptr::null());

    // Reports a failed execve's errno to the parent; CLOEXEC, so a successful exec closes it (EOF).
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let parent = nix::unistd::getpid();
    let pdeathsig = req.pdeathsig as libc::c_int;

    // SAFETY: fork(2) in a process whose other threads (tokio's blocking pool, if any) may hold locks.
    // The child below only calls async-signal-safe functions (setpgid, prctl, getppid, fcntl, dup2,
    // sigaction, sigprocmask, chdir, execve, write, _exit) on memory prepared before the fork, and never
    // returns into Rust code that could allocate or unwind.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: we are the freshly forked child; see `child_exec` for the invariants it relies on.
        unsafe {
            child_exec(ChildPlan {
                program: program_c.as_ptr(),
                argv: argv_p.as_ptr(),
                envp: envp_p.as_ptr(),
                cwd: cwd_c.as_ptr(),
                sources: &sources,
                targets: &targets,
                parked: parked.as_mut_ptr(),
                park_floor,
                pid_slot,
                parent: parent.as_raw(),
                pdeathsig,
                err_w: err_w.as_raw_fd(),
            })
        }
    }
    drop(err_w);
    let pid = Pid::from_raw(pid);
    // Wait for exec: EOF means success, 4 bytes are the child's errno.
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match nix::unistd::read(&err_r, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    if got == 4 {
        let _ = waitpid(pid, None);
        let err = io::Error::from_raw_os_error(i32::from_ne_bytes(buf));
        return Err(io::Error::new(
            err.kind(),
            format!("cannot execute {}: {err}", program.display()),
        ));
    }
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1; it touches no memory.
    // The child is not reaped yet (only we reap it), so the pid cannot have been reused.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if raw < 0 {
        let err = io::Error::last_os_error();
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        return Err(io::Error::new(
            err.kind(),
            format!("pidfd_open: {err} (Linux 5.3 or later is needed)"),
        ));
    }
    // SAFETY: `raw` is a fresh fd returned by pidfd_open that nothing else owns; it is CLOEXEC by kernel default.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
    // SAFETY: an OwnedFd's as_raw_fd always returns the same open fd until it is dropped, and the
    // AsyncFd owns it for its whole life.
    let pidfd = unsafe { AsyncFd::register(pidfd) }.map_err(|e| io::Error::other(e.to_string()))?;
    Ok(Child { pid, pidfd })
}

struct ChildPlan<'a> {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    sources: &'a [RawFd],
    targets: &'a [RawFd],
    parked: *mut RawFd,
    park_floor: RawFd,
    pid_slot: *mut u8,
    parent: libc::pid_t,
    pdeathsig: libc::c_int,
    err_w: RawFd,
}

/// The child's half of [`spawn`]: place fds, detach from the emperor's process group, arm the parent
/// death signal, exec. Never returns.
///
/// # Safety
/// Must run in a freshly forked child. Every pointer in `plan` points into memory the parent prepared
/// before forking (and which the child's copy of the address space still holds); `parked` has room for
/// `sources.len()` entries and `pid_slot`, if not null, for [`PID_SLOT`] bytes.
unsafe fn child_exec(plan: ChildPlan<'_>) -> ! {
    // SAFETY: every call below is async-signal-safe and takes either plain integers or pointers into
    // the buffers described in this function's contract.
    unsafe {
        let fail = |err_w: RawFd| -> ! {
            let errno = *libc::__errno_location();
            let bytes = errno.to_ne_bytes();
            libc::write(err_w, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127);
        };
        // Own process group: a terminal's ^C reaches only the emperor, and the emperor can kill the
        // vassal together with everything it forked.
        libc::setpgid(0, 0);
        if libc::prctl(libc::PR_SET_PDEATHSIG, plan.pdeathsig as libc::c_ulong, 0, 0, 0) != 0 {
            fail(plan.err_w);
        }
        // The emperor may have died between fork and prctl; then nobody would ever signal us.
        if libc::getppid() != plan.parent {
            libc::_exit(1);
        }
        // Park every source above all targets first, so that placing fd i never clobbers a source j.
        for (i, &src) in plan.sources.iter().enumerate() {
            let fd = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, plan.park_floor);
            if fd < 0 {
                fail(plan.err_w);
            }
            *plan.parked.add(i) = fd;
        }
        for (i, &target) in plan.targets.iter().enumerate() {
            // dup2 leaves the new fd without FD_CLOEXEC: exactly these fds cross the exec.
            if libc::dup2(*plan.parked.add(i), target) < 0 {
                fail(plan.err_w);
            }
        }
        crate::child::reset_signals();
        if libc::chdir(plan.cwd) != 0 {
            fail(plan.err_w);
        }
        if !plan.pid_slot.is_null() {
            crate::child::write_pid(plan.pid_slot, libc::getpid());
        }
        libc::execve(plan.program, plan.argv, plan.envp);
        fail(plan.err_w)
    }
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

    /// SIGKILLs the vassal's whole process group (it is the group leader, see `child_exec`).
    pub fn kill_group(&self) {
        if self.pid.as_raw() > 1 {
            let _ = nix::sys::signal::killpg(self.pid, Signal::SIGKILL);
        }
    }
}

/// Registers a (duplicated) listening socket with the runtime to learn when a connection is waiting on
/// it, without ever accepting it: the emperor watches a vassal's sockets while the vassal waits on
/// demand, is paused, or is checked for idleness. Dropping the result deregisters it.
pub fn watch_readable(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd's as_raw_fd always returns the same open fd until it is dropped, and the
    // AsyncFd owns it for its whole life.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| io::Error::other(e.to_string()))
}
