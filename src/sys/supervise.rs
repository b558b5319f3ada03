//! What a process that supervises its children the way tini does needs: the signals it blocks and takes
//! one by one instead of letting them act, reaping every child that exited, and turning a wait status
//! into an exit code. Two roles are such processes: the shim (PID 1 in a container, one payload) and the
//! accept role (one child per connection, `crate::accept`). Both are single-threaded, so blocking signals
//! in the calling thread blocks them for the whole process.

use std::io;

use nix::sys::signal::{SigSet, Signal};

/// The signals a supervisor blocks and waits for: all but SIGKILL and SIGSTOP (which cannot be
/// blocked) and the synchronous ones (SIGSEGV, SIGBUS, ...), which report the supervisor's own faults
/// and must stay fatal.
pub fn blocked_signals() -> SigSet {
    let mut set = SigSet::all();
    for sig in [
        Signal::SIGFPE,
        Signal::SIGILL,
        Signal::SIGSEGV,
        Signal::SIGBUS,
        Signal::SIGABRT,
        Signal::SIGTRAP,
        Signal::SIGSYS,
    ] {
        set.remove(sig);
    }
    set
}

/// Sends `sig` to `pid`; a process that is already gone is not an error.
pub fn forward(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) takes plain integers. Callers pass their own unreaped children (they stop
    // forwarding to a pid once they reaped it), so the pid cannot belong to another process.
    unsafe { libc::kill(pid, sig) };
}

/// Reaps one exited child, whichever it is: `(pid, wait status)`, or `None` when no child has exited.
pub fn reap_one() -> Option<(libc::pid_t, libc::c_int)> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer; WNOHANG never blocks.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            return Some((pid, status));
        }
        if pid < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return None; // 0: children left but none exited; -1 ECHILD: no child at all.
    }
}

/// A wait status as a shell shows it: the exit code, or 128+signal.
pub fn exit_code(status: libc::c_int) -> libc::c_int {
    if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

/// An exit status as the byte a process can return (a shell shows 128+9 = 137 for SIGKILL).
pub fn status_byte(code: libc::c_int) -> u8 {
    u8::try_from(code & 0xff).expect("masked")
}

/// `SIGTERM`, or `signal 34` for one nix has no name for (a realtime signal).
pub fn signal_name(sig: libc::c_int) -> String {
    Signal::try_from(sig).map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synchronous_signals_stay_unblocked() {
        let set = blocked_signals();
        assert!(set.contains(Signal::SIGTERM) && set.contains(Signal::SIGCHLD) && set.contains(Signal::SIGWINCH));
        assert!(!set.contains(Signal::SIGSEGV) && !set.contains(Signal::SIGBUS));
    }

    #[test]
    fn exit_codes_as_a_shell_shows_them() {
        // Wait statuses as the kernel encodes them: code << 8, or the signal number.
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(libc::SIGKILL), 137);
        assert_eq!(status_byte(128 + 15), 143);
        assert_eq!(signal_name(libc::SIGTERM), "SIGTERM");
    }
}
