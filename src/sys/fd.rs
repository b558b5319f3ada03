//! File descriptors that cross, or must not cross, an `exec`.
//!
//! The rule both roles keep: every fd a process owns is close-on-exec, and only the fds placed at
//! their final numbers for a child lose the flag. That way a child gets exactly the layout it was
//! promised and nothing a parent leaked (a shell's fd, a systemd socket, another vassal's socket).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;

/// Marks every fd above 2 that this process inherited as close-on-exec. Call it first thing in a
/// role, before any other thread exists.
pub fn mark_inherited_fds_cloexec() {
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC only sets a flag on fds of this process and reads
    // no memory of ours. It runs before any other thread exists, so no fd is being opened concurrently.
    // Kernels before 5.11 fail with ENOSYS and we carry on: fds we open ourselves are CLOEXEC, and
    // Docker gives a container's PID 1 only fds 0 to 2 anyway.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
    }
}

/// Moves each fd to its target number in this process, without FD_CLOEXEC, so it crosses the next
/// exec. Returns the placed fds: the caller owns them until it has forked, then drops its copies.
///
/// Whatever sat at a target number is closed, so no object of the caller may own such an fd.
pub fn place(plan: Vec<(OwnedFd, RawFd)>) -> io::Result<Vec<OwnedFd>> {
    let floor = plan.iter().map(|(_, t)| *t).max().unwrap_or(2) + 1;
    // Park every fd above all targets first, so that placing one never overwrites another that still
    // waits for its turn. The originals close as they go; the parked copies are CLOEXEC.
    let parked: Vec<(OwnedFd, RawFd)> = plan
        .into_iter()
        .map(|(fd, target)| {
            let copy = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(floor))?;
            // SAFETY: F_DUPFD_CLOEXEC just returned this new fd; nothing else owns it.
            Ok((unsafe { OwnedFd::from_raw_fd(copy) }, target))
        })
        .collect::<io::Result<_>>()?;
    parked
        .iter()
        .map(|(fd, target)| {
            // SAFETY: dup2 takes two integers. Whatever sat at `target` is closed by it; by this
            // function's contract no Rust object owns such an fd (the originals were closed above).
            let fd = unsafe { libc::dup2(fd.as_raw_fd(), *target) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `target` now refers to the duplicate we just made, and (see above) it has no
            // other owner in this process.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .collect()
}

/// A pidfd for our own child `pid`, which must not be reaped yet (so the pid cannot have been reused).
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1; it touches no memory.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd returned by pidfd_open that nothing else owns; it is CLOEXEC by kernel
    // default.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as RawFd) })
}

/// Registers `fd` with the runtime to learn when it becomes readable, without reading it: a listening
/// socket with a connection waiting, a pidfd whose process exited. Dropping the result deregisters it.
pub fn watch_readable(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd's as_raw_fd always returns the same open fd until it is dropped, and the
    // AsyncFd owns it for its whole life.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| io::Error::other(e.to_string()))
}
