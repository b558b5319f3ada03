//! Seeing every connection that arrives on a running vassal's listening sockets, for idle detection.
//!
//! Counting open connections (`conns.rs`) misses a short one that opened and closed between two idle
//! checks, and nginx talks to a uwsgi or HTTP upstream with one short connection per request by
//! default, so a busy vassal could look idle. The emperor cannot see such a connection through
//! readiness either: the app is already blocked in `accept`, takes the connection at once, and when
//! epoll gets round to reporting the listener it polls it again, finds the queue empty and drops the
//! event. io_uring's multishot `POLL_ADD` keeps the wake-up's mask, but coalesced wake-ups are polled
//! again too; measured here (kernel 6.18), a burst of 5 connections to an accepting listener left no
//! completion in 8 of 300 rounds, and in 51 of 300 while the emperor's thread was busy.
//!
//! What does not lose them is the kernel's asynchronous I/O signal. With `O_ASYNC` on the listener's
//! open file, every wake-up of the listener (one per arriving connection) sends its owner a signal;
//! with `F_SETSIG` it is a realtime signal, queued one per event and carrying the fd (`si_fd`). The
//! emperor blocks that signal in every thread and reads it from a signalfd, so nothing runs in signal
//! context and the tokio runtime stays in charge. Should the realtime queue be full, the kernel sends
//! plain `SIGIO` instead; that is read too and taken as an arrival on every watched socket.
//!
//! Arming and disarming only set the owner (`F_SETOWN_EX` to the emperor's main thread, which reads
//! the signalfd and lives as long as the emperor; or 0, which makes the kernel skip the signal). `O_ASYNC` itself is a flag of the open file that the app shares (also
//! inside a container), and changing it races with an app that changes its own flags at the same
//! moment (read, or, write back), so it is set once, when the socket is bound and no app has it yet,
//! and only for vassals with `idle` set. An app that clears it (`F_SETFL` without reading the flags
//! first) turns the signals off; `still_armed` notices and the actor falls back to epoll readiness.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::rc::Rc;

use log::{debug, warn};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// The realtime signal the listeners send; glibc keeps the first two for itself, `SIGRTMIN()` is past them.
fn arrival_signal() -> libc::c_int {
    libc::SIGRTMIN() + 4
}

/// The set of the arrival signal and `SIGIO` (its overflow fallback).
fn signal_set() -> SigSet {
    let mut raw = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the sigset_t it is given; sigaddset then only sets a bit in the
    // initialised set, and both signal numbers are valid (SIGRTMIN()+4 is below SIGRTMAX on Linux).
    unsafe {
        libc::sigemptyset(raw.as_mut_ptr());
        libc::sigaddset(raw.as_mut_ptr(), arrival_signal());
        libc::sigaddset(raw.as_mut_ptr(), libc::SIGIO);
        SigSet::from_sigset_t_unchecked(raw.assume_init())
    }
}

/// Blocks the arrival signals in the calling thread, so that threads started after it inherit the
/// mask and neither signal ever kills the emperor (both default to terminating it). Must run before
/// the runtime starts any thread. Children get an empty mask again (`spawn.rs`, std's Command).
pub fn block_signals() -> io::Result<()> {
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&signal_set()), None).map_err(io::Error::from)
}

/// Prepares a freshly bound listener, before any app has it: turns on `O_ASYNC` and chooses the
/// signal, with no owner yet (so nothing is sent until [`Arrivals::watch`]).
pub fn prepare(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_owner(fd, 0)?;
    set_sig(fd)?;
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_ASYNC))?;
    Ok(())
}

/// Whether the socket still has `O_ASYNC` (an app may have cleared it).
fn has_async(fd: BorrowedFd<'_>) -> bool {
    fcntl(fd, FcntlArg::F_GETFL).is_ok_and(|f| OFlag::from_bits_retain(f).contains(OFlag::O_ASYNC))
}

/// `F_SETOWN_EX`, `F_OWNER_TID` and `F_SETSIG` from <fcntl.h> (the same on every Linux architecture we build
/// for); the libc crate has them only for some targets.
const F_SETOWN_EX: libc::c_int = 15;
const F_OWNER_TID: libc::c_int = 0;
const F_SETSIG: libc::c_int = 10;

/// `struct f_owner_ex`.
#[repr(C)]
struct OwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}

/// Directs the listener's signals to one thread (`tid`), or nowhere (0). A thread, not the process:
/// the signal then cannot be delivered to some thread that does not block it (a library's, or a
/// test harness's), where it would terminate the process.
fn set_owner(fd: BorrowedFd<'_>, tid: libc::pid_t) -> io::Result<()> {
    let owner = OwnerEx {
        kind: F_OWNER_TID,
        pid: tid,
    };
    // SAFETY: F_SETOWN_EX reads one `struct f_owner_ex` (two ints, as OwnerEx is laid out) from the
    // pointer, which points to a live local; the fd is borrowed, so it is open for the whole call.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), F_SETOWN_EX, &owner as *const OwnerEx) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn set_sig(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_SETSIG takes an int signal number; the fd is borrowed, so it is open for the whole call.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), F_SETSIG, arrival_signal()) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Which actor waits for which listener: by the emperor's fd number (what the kernel reports), with
/// the socket's inode to check that the number still means that socket (fds are reused).
type Registry = RefCell<HashMap<RawFd, (Rc<Notify>, u64)>>;

/// The emperor's one reader of arrival signals; cheap to clone, one per actor.
#[derive(Clone, Debug)]
pub struct Arrivals {
    watched: Rc<Registry>,
    /// The reader task still runs; once it stopped, watches report nothing and say so.
    alive: Rc<std::cell::Cell<bool>>,
}

impl Arrivals {
    /// Opens the signalfd and starts the task that reads it. The signals must already be blocked
    /// ([`block_signals`]). Must be called inside a `LocalSet`.
    pub fn start() -> io::Result<Arrivals> {
        let sfd = SignalFd::with_flags(&signal_set(), SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        // SAFETY: a SignalFd returns the same open fd from as_raw_fd until it is dropped, and the
        // AsyncFd owns it for its whole life.
        let sfd = unsafe { AsyncFd::register_with_interest(sfd, tokio::io::Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        let watched: Rc<Registry> = Rc::default();
        let alive = Rc::new(std::cell::Cell::new(true));
        tokio::task::spawn_local(read_signals(sfd, watched.clone(), alive.clone()));
        Ok(Arrivals { watched, alive })
    }

    /// Starts reporting arrivals on these listeners, until the returned [`Watch`] is dropped. Fails
    /// if a listener lacks `O_ASYNC` (not prepared, or the app cleared it).
    pub fn watch(&self, fds: &[BorrowedFd<'_>]) -> io::Result<Watch> {
        if !self.alive.get() {
            return Err(io::Error::other("the arrival signals are no longer read"));
        }
        let notify = Rc::new(Notify::new());
        let mut w = Watch {
            watched: self.watched.clone(),
            fds: Vec::with_capacity(fds.len()),
            notify: notify.clone(),
            alive: self.alive.clone(),
        };
        let me = nix::unistd::gettid().as_raw();
        for fd in fds {
            if !has_async(*fd) {
                return Err(io::Error::other("O_ASYNC is off on the listener"));
            }
            let ino = nix::sys::stat::fstat(*fd)?.st_ino;
            // The duplicate first: once it is in `w`, dropping `w` disowns the socket again.
            w.fds.push((fd.as_raw_fd(), fd.try_clone_to_owned()?));
            set_owner(*fd, me)?;
            self.watched.borrow_mut().insert(fd.as_raw_fd(), (notify.clone(), ino));
        }
        Ok(w)
    }
}

/// Arrivals on one vassal's listeners.
#[derive(Debug)]
pub struct Watch {
    watched: Rc<Registry>,
    /// Each listener's fd number and a duplicate, so that the watch can disown it even after the
    /// actor closed its own fd (the owner belongs to the open file, which the duplicate keeps reachable).
    fds: Vec<(RawFd, std::os::fd::OwnedFd)>,
    notify: Rc<Notify>,
    alive: Rc<std::cell::Cell<bool>>,
}

impl Watch {
    /// Completes at the first connection that arrives after the watch was made (or after the last
    /// time this completed).
    pub async fn arrived(&self) {
        self.notify.notified().await;
    }

    /// Whether arrivals are still reported: the signals are read, and every listener still has `O_ASYNC`.
    pub fn still_armed(&self) -> bool {
        self.alive.get() && self.fds.iter().all(|(_, fd)| has_async(fd.as_fd()))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut map = self.watched.borrow_mut();
        for (raw, fd) in &self.fds {
            if let Err(e) = set_owner(fd.as_fd(), 0) {
                debug!("cannot disown listener {raw}: {e}");
            }
            if map.get(raw).is_some_and(|(n, _)| Rc::ptr_eq(n, &self.notify)) {
                map.remove(raw);
            }
        }
    }
}

/// Reads queued arrival signals and wakes the actor that watches the signalled listener.
async fn read_signals(sfd: AsyncFd<SignalFd>, watched: Rc<Registry>, alive: Rc<std::cell::Cell<bool>>) {
    let overflow = libc::SIGIO as u32;
    loop {
        let mut guard = match sfd.readable().await {
            Ok(g) => g,
            Err(e) => {
                warn!("arrival signals: {e}; idle detection falls back to watching readiness");
                alive.set(false);
                return;
            }
        };
        loop {
            match sfd.get_ref().read_signal() {
                Ok(Some(info)) if info.ssi_signo == overflow => {
                    debug!("arrival signal queue overflowed: every watched vassal counts as busy");
                    for (n, _) in watched.borrow().values() {
                        n.notify_one();
                    }
                }
                Ok(Some(info)) => {
                    if let Some((n, ino)) = watched.borrow().get(&info.ssi_fd)
                        && u64::try_from(info.ssi_fd)
                            .ok()
                            .and_then(|fd| super::listening::fd_inode("self", fd))
                            == Some(*ino)
                    {
                        n.notify_one();
                    }
                }
                Ok(None) => {
                    guard.clear_ready();
                    break;
                }
                Err(e) => {
                    warn!("arrival signals: cannot read: {e}");
                    guard.clear_ready();
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::time::Duration;

    /// The point of the module: a connection that an app accepted before the emperor looked is
    /// still reported, once per connection, also for a burst.
    #[test]
    fn reports_connections_an_app_accepted_at_once() {
        block_signals().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let dir = std::env::temp_dir().join(format!("emperor-arrivals-{}", std::process::id()));
            let _ = std::fs::create_dir(&dir);
            let path = dir.join("s");
            let _ = std::fs::remove_file(&path);
            let l = UnixListener::bind(&path).unwrap();
            prepare(l.as_fd()).unwrap();
            let arrivals = Arrivals::start().unwrap();
            let w = arrivals.watch(&[l.as_fd()]).unwrap();
            let app = l.try_clone().unwrap();
            let acceptor = std::thread::spawn(move || {
                for _ in 0..5 {
                    drop(app.accept().unwrap());
                }
            });
            std::thread::sleep(Duration::from_millis(50));
            for _ in 0..5 {
                drop(UnixStream::connect(&path).unwrap());
            }
            acceptor.join().unwrap();
            tokio::time::timeout(Duration::from_secs(5), w.arrived())
                .await
                .expect("an accepted connection was reported");
            assert!(w.still_armed());
            drop(w);
            // Disowned: a new connection sends nothing, so a new watch sees no stale arrival.
            let app = l.try_clone().unwrap();
            let acceptor = std::thread::spawn(move || drop(app.accept().unwrap()));
            drop(UnixStream::connect(&path).unwrap());
            acceptor.join().unwrap();
            let w2 = arrivals.watch(&[l.as_fd()]).unwrap();
            assert!(
                tokio::time::timeout(Duration::from_millis(200), w2.arrived())
                    .await
                    .is_err(),
                "no arrival while disowned"
            );
            let _ = std::fs::remove_dir_all(&dir);
        });
    }
}
