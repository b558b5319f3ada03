//! Seeing from the kernel that a new instance waits for connections on the vassal's sockets, so an
//! overlapping reload retires the old instance as soon as the new one can serve, and a prewarmed
//! instance is paused as soon as it could serve, also for an app that does not speak the uWSGI protocol.
//!
//! Both instances accept from the same listening socket, so connections cannot tell them apart; but a
//! process that waits for connections is blocked in a system call whose arguments name the listener,
//! and /proc shows both the call (`/proc/<pid>/task/<tid>/syscall`: number and arguments) and what an
//! fd is (`/proc/<pid>/fd/<n>` → `socket:[<inode>]`). A thread of the new instance counts as waiting
//! on the vassal's sockets when it is blocked in
//! - `accept`/`accept4` on one of them;
//! - `epoll_wait`/`epoll_pwait`/`epoll_pwait2` on an epoll set watching one (`/proc/<pid>/fdinfo/<epfd>`
//!   lists each watched file's inode as `ino:`) — nginx, Go, Node, asyncio, Java NIO;
//! - `poll`/`ppoll` or `select`/`pselect6` with one among its fds (the pollfd array or fd set is read
//!   from `/proc/<pid>/mem`) — Python's socketserver, gunicorn's sync workers.
//!
//! The new instance is the process the emperor spawned and its descendants (`/proc/<pid>/task/<tid>/
//! children`), or for a Docker vassal the container's init process (the bridge's record) and its
//! descendants. An app that waits otherwise (io_uring, a busy loop) is not seen; it counts as ready after
//! `ready-delay`, as before. Reading another process's syscall and memory needs ptrace access: root, or
//! the same user for its own descendants. Syscall numbers are x86_64's; elsewhere nothing is seen.

use std::collections::HashSet;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::FileExt;

/// The vassal's listening sockets as /proc names them: their inodes (`socket:[<inode>]`), and the
/// device of the socket filesystem, since an epoll set's `ino:` is only unique with its `sdev:`.
#[derive(Debug, Clone, Default)]
pub struct Listeners {
    inodes: HashSet<u64>,
    /// (major, minor) of sockfs.
    dev: Option<(u64, u64)>,
}

impl Listeners {
    pub fn of<'a>(fds: impl Iterator<Item = BorrowedFd<'a>>) -> Listeners {
        let mut l = Listeners::default();
        for st in fds.filter_map(|fd| nix::sys::stat::fstat(fd).ok()) {
            l.inodes.insert(st.st_ino);
            let dev = st.st_dev;
            l.dev = Some((nix::sys::stat::major(dev), nix::sys::stat::minor(dev)));
        }
        l
    }

    fn contains(&self, ino: u64) -> bool {
        self.inodes.contains(&ino)
    }

    /// An epoll set's entry: its inode, on a device given as the kernel prints it (`MAJOR << 20 | MINOR`).
    fn watched(&self, ino: u64, sdev: Option<u64>) -> bool {
        let same_dev = match (self.dev, sdev) {
            (Some(d), Some(s)) => d == (s >> 20, s & 0xf_ffff),
            _ => true,
        };
        same_dev && self.inodes.contains(&ino)
    }
}

/// Whether any thread of `root` or its descendants is blocked waiting for a connection on one of
/// `listeners`.
pub fn waiting(root: i32, listeners: &Listeners) -> bool {
    if listeners.inodes.is_empty() || root <= 0 {
        return false;
    }
    tree(root)
        .into_iter()
        .any(|pid| tasks(pid).into_iter().any(|tid| task_waits(pid, tid, listeners)))
}

/// Whether `root` or a descendant holds one of `sockets` (by inode) among its fds: it took a connection from the
/// vassal's listeners, so it serves.
pub fn holds_any(root: i32, sockets: &HashSet<u64>) -> bool {
    if sockets.is_empty() || root <= 0 {
        return false;
    }
    tree(root).into_iter().any(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
                .any(|fd| fd_inode(pid, fd).is_some_and(|i| sockets.contains(&i)))
        })
    })
}

/// `root` and its descendants, breadth first, at most [`MAX_PROCS`] (also what `vassal/freeze.rs` checks
/// for a stopped process group).
pub(crate) fn tree(root: i32) -> Vec<i32> {
    const MAX_PROCS: usize = 4096;
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() && out.len() < MAX_PROCS {
        let pid = out[i];
        for tid in tasks(pid) {
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children")).unwrap_or_default();
            out.extend(children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
        }
        i += 1;
    }
    out.truncate(MAX_PROCS);
    out
}

/// The thread ids of `pid` (none once it is gone).
pub(crate) fn tasks(pid: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const POLL: u64 = 7;
    pub const SELECT: u64 = 23;
    pub const ACCEPT: u64 = 43;
    pub const EPOLL_WAIT: u64 = 232;
    pub const PSELECT6: u64 = 270;
    pub const PPOLL: u64 = 271;
    pub const EPOLL_PWAIT: u64 = 281;
    pub const ACCEPT4: u64 = 288;
    pub const EPOLL_PWAIT2: u64 = 441;
}

#[cfg(not(target_arch = "x86_64"))]
mod nr {
    // Nothing matches: on other architectures no instance is seen waiting (ready-delay applies).
    pub const POLL: u64 = u64::MAX;
    pub const SELECT: u64 = u64::MAX;
    pub const ACCEPT: u64 = u64::MAX;
    pub const EPOLL_WAIT: u64 = u64::MAX;
    pub const PSELECT6: u64 = u64::MAX;
    pub const PPOLL: u64 = u64::MAX;
    pub const EPOLL_PWAIT: u64 = u64::MAX;
    pub const ACCEPT4: u64 = u64::MAX;
    pub const EPOLL_PWAIT2: u64 = u64::MAX;
}

/// The most fds looked at in one poll array or select set.
const MAX_FDS: u64 = 65_536;

fn task_waits(pid: i32, tid: i32, listeners: &Listeners) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")) else {
        return false;
    };
    let Some((call, args)) = parse_syscall(&text) else {
        return false;
    };
    let is_listener = |fd: u64| fd_inode(pid, fd).is_some_and(|ino| listeners.contains(ino));
    match call {
        nr::ACCEPT | nr::ACCEPT4 => is_listener(args[0]),
        nr::EPOLL_WAIT | nr::EPOLL_PWAIT | nr::EPOLL_PWAIT2 => {
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", args[0])).is_ok_and(|info| {
                epoll_inodes(&info)
                    .into_iter()
                    .any(|(ino, sdev)| listeners.watched(ino, sdev))
            })
        }
        nr::POLL | nr::PPOLL => read_mem(pid, args[0], args[1].min(MAX_FDS) * 8)
            .is_some_and(|bytes| polled_fds(&bytes).into_iter().any(is_listener)),
        nr::SELECT | nr::PSELECT6 => {
            let n = args[0].min(MAX_FDS);
            read_mem(pid, args[1], n.div_ceil(8))
                .is_some_and(|bytes| selected_fds(&bytes, n).into_iter().any(is_listener))
        }
        _ => false,
    }
}

/// `<nr> <arg1> ... <arg6> <sp> <pc>` (hex) for a task blocked in a system call; `running` or `-1 ...`
/// otherwise.
fn parse_syscall(text: &str) -> Option<(u64, [u64; 6])> {
    let mut it = text.split_whitespace();
    let call: u64 = it.next()?.parse().ok()?;
    let mut args = [0u64; 6];
    for a in &mut args {
        *a = u64::from_str_radix(it.next()?.trim_start_matches("0x"), 16).ok()?;
    }
    Some((call, args))
}

/// The inode of the socket that `pid`'s fd `fd` is (`/proc/<pid>/fd/<fd>` → `socket:[<inode>]`);
/// `pid` may be `"self"`.
pub fn fd_inode(pid: impl std::fmt::Display, fd: u64) -> Option<u64> {
    let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The files an epoll set watches, from its fdinfo: `tfd: <fd> events: <hex> data: <hex> pos:0
/// ino:<hex> sdev:<hex>`, as (inode, device).
fn epoll_inodes(fdinfo: &str) -> Vec<(u64, Option<u64>)> {
    let hex = |l: &str, key: &str| {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v, 16).ok())
    };
    fdinfo
        .lines()
        .filter(|l| l.starts_with("tfd:"))
        .filter_map(|l| Some((hex(l, "ino:")?, hex(l, "sdev:"))))
        .collect()
}

/// The fds of a `struct pollfd` array (fd: i32, events: i16, revents: i16) that wait for input.
fn polled_fds(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .filter_map(|p| {
            let fd = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
            let events = i16::from_ne_bytes([p[4], p[5]]);
            (fd >= 0 && events & libc::POLLIN != 0).then_some(fd as u64)
        })
        .collect()
}

/// The fds set in the first `n` bits of an `fd_set`.
fn selected_fds(bytes: &[u8], n: u64) -> Vec<u64> {
    (0..n)
        .filter(|&fd| bytes.get((fd / 8) as usize).is_some_and(|b| b & (1 << (fd % 8)) != 0))
        .collect()
}

fn read_mem(pid: i32, addr: u64, len: u64) -> Option<Vec<u8>> {
    if addr == 0 || len == 0 {
        return None;
    }
    let f = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, addr).ok()?;
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::time::{Duration, Instant};

    #[test]
    fn parses_what_proc_shows() {
        let (call, args) = parse_syscall("43 0x3 0x0 0x0 0x0 0x0 0x0 0x7ffd4f0 0x7f12\n").unwrap();
        assert_eq!((call, args[0]), (43, 3));
        assert_eq!(parse_syscall("running\n"), None);
        assert_eq!(parse_syscall("-1 0x7ffd 0x7f12\n"), None);
        let info = "pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1057\n\
                    tfd:        5 events:       19 data:                5  pos:0 ino:3e8 sdev:8\n\
                    tfd:        7 events:       19 data:                7  pos:0 ino:2a sdev:8\n";
        assert_eq!(epoll_inodes(info), vec![(0x3e8, Some(8)), (0x2a, Some(8))]);
        let l = Listeners {
            inodes: HashSet::from([0x3e8]),
            dev: Some((0, 8)),
        };
        assert!(l.watched(0x3e8, Some(8)) && !l.watched(0x3e8, Some(1 << 20 | 8)) && !l.watched(0x2a, Some(8)));
        let mut arr = Vec::new();
        for (fd, ev) in [(3i32, libc::POLLIN), (4, libc::POLLOUT), (-1, libc::POLLIN)] {
            arr.extend(fd.to_ne_bytes());
            arr.extend(ev.to_ne_bytes());
            arr.extend(0i16.to_ne_bytes());
        }
        assert_eq!(polled_fds(&arr), vec![3]);
        assert_eq!(selected_fds(&[0b0000_1001, 0b1], 9), vec![0, 3, 8]);
        assert_eq!(selected_fds(&[0b0000_1001, 0b1], 8), vec![0, 3]);
    }

    /// Waits until a thread of this process is seen waiting on `l`.
    fn seen(l: &UnixListener) -> bool {
        let ino = Listeners::of(std::iter::once(l.as_fd()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if waiting(std::process::id() as i32, &ino) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    fn listener(tag: &str) -> (UnixListener, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("emperor-listening-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        (UnixListener::bind(&path).unwrap(), path)
    }

    /// A thread blocked in accept, in poll and in epoll_wait on the listener is seen; nothing is seen
    /// on a listener nobody waits on.
    #[test]
    fn sees_a_thread_waiting_in_accept_poll_or_epoll() {
        let (idle, idle_path) = listener("idle");
        let ino = Listeners::of(std::iter::once(idle.as_fd()));
        assert!(!waiting(std::process::id() as i32, &ino), "nobody waits on this one");

        let (l, path) = listener("accept");
        let app = l.try_clone().unwrap();
        let t = std::thread::spawn(move || drop(app.accept()));
        assert!(seen(&l), "accept");
        drop(UnixStream::connect(&path));
        t.join().unwrap();
        let _ = std::fs::remove_file(&path);

        let (l, path) = listener("poll");
        let app = l.try_clone().unwrap();
        let t = std::thread::spawn(move || {
            let mut fds = [nix::poll::PollFd::new(app.as_fd(), nix::poll::PollFlags::POLLIN)];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16));
        });
        assert!(seen(&l), "poll");
        drop(UnixStream::connect(&path));
        t.join().unwrap();
        let _ = std::fs::remove_file(&path);

        let (l, path) = listener("epoll");
        let app = l.try_clone().unwrap();
        let t = std::thread::spawn(move || {
            use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
            let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
            ep.add(&app, EpollEvent::new(EpollFlags::EPOLLIN, 1)).unwrap();
            let mut events = [EpollEvent::empty(); 1];
            let _ = ep.wait(&mut events, 5000u16);
        });
        assert!(seen(&l), "epoll_wait");
        drop(UnixStream::connect(&path));
        t.join().unwrap();

        for p in [idle_path, path] {
            let _ = std::fs::remove_file(p);
        }
    }
}
