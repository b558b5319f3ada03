//! The steps of a freshly forked child before `exec` that are not plain syscalls (`fork.rs` makes
//! the rest). They have their own file because they must keep rules the compiler does not check: the
//! child may be a copy of a process with other threads, so between fork and exec only
//! async-signal-safe calls are allowed: no allocation, no locks, no formatting, no panics.

/// Width of the `LISTEN_PID=` slot; pids fit in 10 digits (pid_max ≤ 2^22 on Linux).
pub const PID_SLOT: usize = 10;

/// Writes `pid` as left-aligned decimal digits into `slot`, NUL-terminating early when it is shorter
/// than the slot (right-aligned digits would leave leading blanks, which strtol skips but stricter
/// parsers do not).
///
/// # Safety
/// `slot` has [`PID_SLOT`] writable bytes.
pub unsafe fn write_pid(slot: *mut u8, pid: libc::pid_t) {
    let mut pid = pid.unsigned_abs();
    let mut digits = [0u8; PID_SLOT];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (pid % 10) as u8;
        n += 1;
        pid /= 10;
        if pid == 0 || n == PID_SLOT {
            break;
        }
    }
    for (k, d) in digits[..n].iter().rev().enumerate() {
        // SAFETY: k < n <= PID_SLOT, inside the slot by the contract.
        unsafe { *slot.add(k) = *d };
    }
    if n < PID_SLOT {
        // SAFETY: n < PID_SLOT, inside the slot.
        unsafe { *slot.add(n) = 0 };
    }
}

/// Gives the program about to be executed a clean slate of signals: handlers reset on exec by
/// themselves, but ignored signals do not (Rust's runtime ignores SIGPIPE), and the mask is inherited
/// (the emperor blocks its arrival signals). A signal that arrived since the fork is delivered once
/// unblocked, with its default action, as it would be after exec.
///
/// # Safety
/// Only async-signal-safe calls (signal, sigemptyset, sigprocmask); call it in the child, after fork.
pub unsafe fn reset_signals() {
    for sig in 1..=libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: signal(2) with SIG_DFL for a valid signal number is async-signal-safe.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set it is given; sigprocmask then only reads it.
    unsafe {
        libc::sigemptyset(empty.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(pid: libc::pid_t) -> Vec<u8> {
        let mut slot = [b' '; PID_SLOT];
        // SAFETY: the slot has PID_SLOT bytes.
        unsafe { write_pid(slot.as_mut_ptr(), pid) };
        slot.to_vec()
    }

    #[test]
    fn pids_are_left_aligned_and_terminated() {
        assert_eq!(&written(7)[..2], b"7\0");
        assert_eq!(&written(4_194_304)[..8], b"4194304\0");
        assert_eq!(
            written(1_234_567_890),
            b"1234567890".to_vec(),
            "a full slot needs no NUL"
        );
    }
}
