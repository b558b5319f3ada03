//! Fork and exec with an exact fd layout, a `LISTEN_PID` that is the child's own pid, and exec
//! errors reported to the parent.
//!
//! Why not `std::process::Command`: the systemd convention wants `LISTEN_PID` to be the *child's*
//! pid, which only exists after `fork`, while `Command` fixes the environment before it forks. So the
//! environment gets a blank slot ([`blank_pid`]) that the child fills in. Everything the child touches
//! is built here, in the parent, because between `fork` and `exec` only async-signal-safe calls are
//! allowed: no allocation, no locks, no logging (style guide §5).
//!
//! Why a pipe: a child that cannot exec (no such program, a bad working directory, an fd that cannot
//! be placed) writes its errno to a CLOEXEC pipe and exits 127; a successful exec closes the pipe.
//! So the parent learns, before it returns, whether the program runs, and can say why not.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::unistd::Pid;

use super::child::{self, PID_SLOT};

/// What the child becomes; every byte of it is prepared by the caller before the fork.
pub struct Exec<'a> {
    /// A path for `execve`, or, with `search_path`, a name `execvpe` looks up in this process's `PATH`.
    pub program: &'a CStr,
    /// Only for a single-threaded caller (the shim): `execvpe` reads `PATH` with `getenv`, which is
    /// not async-signal-safe, though safe when no other thread can hold the environment's lock.
    pub search_path: bool,
    pub argv: &'a [CString],
    /// `K=V` entries, each ending with its only NUL. A `LISTEN_PID` entry whose value is [`blank_pid`]
    /// gets the child's pid.
    pub env: &'a mut [Vec<u8>],
    /// Fds the child places at 0, 1, 2, ..., in this order, and that alone cross the exec. Empty:
    /// the child keeps this process's fds as they are (the caller placed them already).
    pub fds: &'a [RawFd],
    /// The child's working directory; `None` keeps ours.
    pub cwd: Option<&'a CStr>,
    /// Sent to the child when the forking thread dies; a child whose parent died before it could ask
    /// for that exits 1 instead of running unsupervised.
    pub pdeathsig: Option<libc::c_int>,
    /// Put the child in a process group of its own (a vassal, the shim's payload), so that the caller
    /// can signal or kill it with everything it forks; `false` keeps it in the caller's group (the
    /// accept role's per-connection children, whom the emperor kills with the vassal's group).
    pub own_group: bool,
    /// Make the child's process group the foreground of its terminal (on fd 0, 1 or 2), if it has one,
    /// so that a tty's ^C reaches it. SIGTTOU must be blocked in the caller.
    pub foreground: bool,
    /// Who the child becomes before anything else it does (tyrant mode); `None` keeps ours.
    pub creds: Option<&'a Creds>,
}

/// A user to run as: supplementary groups, then gid, then uid are set (the only order in which a root
/// process can set all three), and `no_new_privs`, so that no set-uid program gets root back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// The supplementary groups; at least `gid`.
    pub groups: Vec<libc::gid_t>,
}

/// Why [`fork_exec`] failed.
#[derive(Debug)]
pub enum Error {
    /// A step in this process failed: which one, and the error.
    Parent(&'static str, io::Error),
    /// The child could not get to its program: `exec`, or a step before it, failed with this error.
    /// The child is reaped.
    Exec(io::Error),
}

/// Finds `prog` as `execvp` would, but in the parent, where searching may allocate: a name with a `/` is
/// taken relative to `cwd`, a bare name is looked up in `path_var` (default `/usr/local/bin:/usr/bin:/bin`,
/// its relative entries relative to `cwd`). So a program that is missing is an error before anything
/// forks, with the name in it.
pub fn resolve_program(prog: &str, cwd: &Path, path_var: Option<&OsStr>) -> io::Result<PathBuf> {
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

/// The value of a `LISTEN_PID` entry the child fills in with its pid.
pub fn blank_pid() -> String {
    " ".repeat(PID_SLOT)
}

/// The variables that announce listening sockets placed at fd 3, 4, ..., one per name, in every convention
/// a vassal may read: systemd's (`LISTEN_FDS`, `LISTEN_FDNAMES`, and `LISTEN_PID` as a [`blank_pid`] slot the
/// child fills in) and nginx's (`NGINX=3;4;`). nginx reads `NGINX` as fd numbers each *followed* by `;` or
/// `:` (its binary upgrade writes `3;4;`), and ignores a last number without one, with a notice: hence the
/// trailing `;`. The emperor (process vassals) and the shim (containers) both announce sockets with this, so
/// a vassal cannot tell them apart. Nothing when there is no socket.
pub fn socket_env(names: &[&str]) -> Vec<(&'static str, String)> {
    if names.is_empty() {
        return Vec::new();
    }
    let nginx = (3..3 + names.len()).map(|fd| format!("{fd};")).collect();
    vec![
        ("LISTEN_FDS", names.len().to_string()),
        ("LISTEN_FDNAMES", names.join(":")),
        ("LISTEN_PID", blank_pid()),
        ("NGINX", nginx),
    ]
}

const LISTEN_PID: &[u8] = b"LISTEN_PID=";

/// Forks; the child gets its own process group (see [`Exec::own_group`]), places its fds, gets default signal handling and an
/// empty mask, fills in `LISTEN_PID` and execs. Returns once the exec succeeded, or with why not.
/// The child's other fds must all be CLOEXEC (see `fd.rs`).
pub fn fork_exec(exec: Exec<'_>) -> Result<Pid, Error> {
    let invalid = |what: &str| Error::Parent("invalid input", io::Error::new(io::ErrorKind::InvalidInput, what));
    if exec.argv.is_empty() {
        return Err(invalid("empty argv"));
    }
    if !exec.env.iter().all(|e| {
        e.split_last()
            .is_some_and(|(last, rest)| *last == 0 && !rest.contains(&0))
    }) {
        return Err(invalid("an environment entry is not one NUL-terminated string"));
    }
    let mut argv_p: Vec<*const libc::c_char> = exec.argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    // The slot: exactly "LISTEN_PID=" + PID_SLOT blanks + NUL, so the child's digits fit.
    let slot = exec.env.iter().position(|e| {
        e.len() == LISTEN_PID.len() + PID_SLOT + 1
            && e.starts_with(LISTEN_PID)
            && e[LISTEN_PID.len()..e.len() - 1].iter().all(|b| *b == b' ')
    });
    // Pointers all derived from `as_mut_ptr`, because the child writes the digits through one of them.
    let mut envp_p: Vec<*const libc::c_char> = exec
        .env
        .iter_mut()
        .map(|e| e.as_mut_ptr().cast_const().cast())
        .collect();
    let pid_slot: *mut u8 = match slot {
        // SAFETY: that entry is "LISTEN_PID=" + PID_SLOT blanks + NUL (checked above), so the offset
        // stays inside it, and `exec.env` is borrowed, so neither moved nor freed, until we return.
        Some(i) => unsafe { envp_p[i].cast_mut().cast::<u8>().add(LISTEN_PID.len()) },
        None => std::ptr::null_mut(),
    };
    envp_p.push(std::ptr::null());
    let mut parked: Vec<RawFd> = vec![-1; exec.fds.len()];

    // CLOEXEC, so a successful exec closes it (EOF).
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::Parent("cannot create a pipe", e.into()))?;
    let plan = ChildPlan {
        program: exec.program.as_ptr(),
        search_path: exec.search_path,
        argv: argv_p.as_ptr(),
        envp: envp_p.as_ptr(),
        sources: exec.fds,
        parked: &mut parked,
        park_floor: RawFd::try_from(exec.fds.len()).unwrap_or(RawFd::MAX - 16) + 16,
        cwd: exec.cwd.map_or(std::ptr::null(), CStr::as_ptr),
        pid_slot,
        parent: nix::unistd::getpid().as_raw(),
        pdeathsig: exec.pdeathsig,
        own_group: exec.own_group,
        foreground: exec.foreground,
        creds: exec.creds.map(|c| (c.uid, c.gid, c.groups.as_ptr(), c.groups.len())),
        err_w: err_w.as_raw_fd(),
    };

    // SAFETY: fork(2) in a process whose other threads (if any) may hold locks. The child only runs
    // `child_exec`, which makes async-signal-safe calls on memory prepared above (see `search_path`
    // for the one exception and when it is allowed) and never returns into Rust code that could
    // allocate or unwind.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::Parent("cannot fork", io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: we are the freshly forked child, and `plan` points into the buffers built above,
        // which the child's copy of the address space still holds.
        unsafe { child_exec(plan) }
    }
    drop(err_w);
    let pid = Pid::from_raw(pid);
    // EOF means the exec succeeded; 4 bytes are the child's errno.
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(&err_r, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::Parent("reading the exec status", e.into())),
        }
    }
    if got < buf.len() {
        return Ok(pid);
    }
    // The child has exited or is about to: it _exits right after writing.
    let _ = nix::sys::wait::waitpid(pid, None);
    Err(Error::Exec(io::Error::from_raw_os_error(i32::from_ne_bytes(buf))))
}

/// [`Exec`] as raw pointers into the parent's buffers.
struct ChildPlan<'a> {
    program: *const libc::c_char,
    search_path: bool,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    sources: &'a [RawFd],
    /// Room for one fd per source.
    parked: &'a mut [RawFd],
    park_floor: RawFd,
    cwd: *const libc::c_char,
    pid_slot: *mut u8,
    parent: libc::pid_t,
    pdeathsig: Option<libc::c_int>,
    own_group: bool,
    foreground: bool,
    /// uid, gid, and the supplementary groups as a pointer and a length.
    creds: Option<(libc::uid_t, libc::gid_t, *const libc::gid_t, usize)>,
    err_w: RawFd,
}

/// The child's half of [`fork_exec`]. Never returns.
///
/// # Safety
/// Must run in a freshly forked child. Every pointer in `plan` points into memory the parent prepared
/// before forking: `program` and `cwd` (unless null) are NUL-terminated strings, `argv` and `envp`
/// NULL-terminated arrays of them, `pid_slot` is null or has [`PID_SLOT`] writable bytes, and the
/// groups of `creds` point at as many `gid_t`s as its length says.
unsafe fn child_exec(plan: ChildPlan<'_>) -> ! {
    // SAFETY: every call below is async-signal-safe (setpgid, getpgrp, tcsetpgrp, setgroups, setgid,
    // setuid, prctl, getppid, fcntl, dup2, signal, sigemptyset, sigprocmask, chdir, getpid, execve,
    // write, _exit; execvpe see `Exec::search_path`) and takes plain integers or the pointers this
    // function's contract describes.
    unsafe {
        let mut err_w = plan.err_w;
        let fail = |err_w: RawFd| -> ! {
            let errno = (*libc::__errno_location()).to_ne_bytes();
            libc::write(err_w, errno.as_ptr().cast(), errno.len());
            libc::_exit(127)
        };
        // Own process group: a terminal's ^C reaches only the parent, and the parent can kill the
        // child together with everything it forks.
        if plan.own_group {
            libc::setpgid(0, 0);
        }
        if plan.foreground {
            for fd in 0..3 {
                if libc::tcsetpgrp(fd, libc::getpgrp()) == 0 {
                    break;
                }
            }
        }
        // Before the death signal: the kernel clears it when the credentials change.
        if let Some((uid, gid, groups, n)) = plan.creds
            && (libc::setgroups(n, groups) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
                || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        {
            fail(err_w);
        }
        if let Some(sig) = plan.pdeathsig {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) != 0 {
                fail(err_w);
            }
            // The parent may have died between fork and prctl; then nobody would ever signal us.
            if libc::getppid() != plan.parent {
                libc::_exit(1);
            }
        }
        if !plan.sources.is_empty() {
            // The pipe may sit on a target number: move it out of the way first.
            let moved = libc::fcntl(err_w, libc::F_DUPFD_CLOEXEC, plan.park_floor);
            if moved < 0 {
                fail(err_w);
            }
            err_w = moved;
            // Park every source above all targets, so that placing fd i never clobbers a source j.
            for (&src, parked) in plan.sources.iter().zip(plan.parked.iter_mut()) {
                *parked = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, plan.park_floor);
                if *parked < 0 {
                    fail(err_w);
                }
            }
            for (target, &parked) in plan.parked.iter().enumerate() {
                // dup2 leaves the new fd without FD_CLOEXEC: exactly these fds cross the exec.
                if libc::dup2(parked, target as RawFd) < 0 {
                    fail(err_w);
                }
            }
        }
        child::reset_signals();
        if !plan.cwd.is_null() && libc::chdir(plan.cwd) != 0 {
            fail(err_w);
        }
        if !plan.pid_slot.is_null() {
            child::write_pid(plan.pid_slot, libc::getpid());
        }
        if plan.search_path {
            libc::execvpe(plan.program, plan.argv, plan.envp);
        } else {
            libc::execve(plan.program, plan.argv, plan.envp);
        }
        fail(err_w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{WaitStatus, waitpid};

    #[test]
    fn sockets_are_announced_to_systemd_apps_and_to_nginx() {
        assert!(socket_env(&[]).is_empty());
        let env = socket_env(&["web", "admin"]);
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("LISTEN_FDS"), Some("2"));
        assert_eq!(get("LISTEN_FDNAMES"), Some("web:admin"));
        assert_eq!(get("LISTEN_PID"), Some(blank_pid().as_str()));
        assert_eq!(get("NGINX"), Some("3;4;"), "each fd followed by ';', the last one too");
    }

    fn run(program: &str, argv: &[&str], env: &[String], fds: &[RawFd]) -> Result<i32, Error> {
        let program = CString::new(program).unwrap();
        let argv: Vec<CString> = argv.iter().map(|a| CString::new(*a).unwrap()).collect();
        let mut env: Vec<Vec<u8>> = env
            .iter()
            .map(|e| CString::new(e.as_str()).unwrap().into_bytes_with_nul())
            .collect();
        let pid = fork_exec(Exec {
            program: &program,
            search_path: false,
            argv: &argv,
            env: &mut env,
            fds,
            cwd: None,
            pdeathsig: None,
            own_group: true,
            foreground: false,
            creds: None,
        })?;
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => Ok(code),
            other => panic!("unexpected wait status {other:?}"),
        }
    }

    #[test]
    fn the_child_fills_in_its_own_pid() {
        let script = r#"test "$LISTEN_PID" = "$$" && test "$OTHER" = x"#;
        let env = [format!("LISTEN_PID={}", blank_pid()), "OTHER=x".to_string()];
        assert_eq!(run("/bin/sh", &["sh", "-c", script], &env, &[]).unwrap(), 0);
    }

    #[test]
    fn exec_errors_come_back_with_their_errno() {
        match run("/nonexistent/program", &["program"], &[], &[]) {
            Err(Error::Exec(e)) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT)),
            other => panic!("expected an exec error, got {other:?}"),
        }
    }

    #[test]
    fn fds_are_placed_in_order() {
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let (r, _w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let fds = [devnull.as_raw_fd(), 1, 2, r.as_raw_fd()];
        // fd 0 is /dev/null, fd 3 the pipe's read end (a fifo), which was CLOEXEC in the parent.
        let script = "test -c /dev/fd/0 && test -p /dev/fd/3";
        assert_eq!(run("/bin/sh", &["sh", "-c", script], &[], &fds).unwrap(), 0);
    }
}
