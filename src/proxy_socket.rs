//! The proxy socket: how a Docker vassal's bridge hands the vassal's fds to the process inside the
//! container. Both ends live here; this doc is the protocol spec.
//!
//! # Why this format
//! It is uWSGI's emperor proxy (`uwsgi_master_manage_emperor_proxy` sends, `uwsgi_check_emperor` with
//! `UWSGI_EMPEROR_PROXY` receives; see `reference/uwsgi-protocol.md` §4), byte for byte, so that a real
//! uWSGI can connect to our bridge directly, without the shim.
//!
//! # The frame
//! Exactly one `sendmsg(2)` on a connected `AF_UNIX`/`SOCK_STREAM` socket:
//!
//! ```text
//! payload (17 bytes):  "uwsgi-emperor" (13 bytes, no NUL) | fd count (u32, host byte order: little-endian on x86_64)
//! ancillary data:      one SOL_SOCKET/SCM_RIGHTS control message carrying exactly `count` fds
//! ```
//!
//! The fds come in this order, and the receiver learns each one's role from its position alone:
//!
//! 1. the vassal's end of the **control channel** (uWSGI's `UWSGI_EMPEROR_FD`), always present;
//! 2. the vassal's end of the **config channel** (`UWSGI_EMPEROR_FD_CONFIG`), only if the vassal gets its
//!    config over the channel (a Docker vassal with a `[uwsgi]` section and no `exec`);
//! 3. the **listening sockets**, in the order the vassal file declares them.
//!
//! How many of 2 and 3 there are does not travel in the frame (uWSGI's format has no room for it): the
//! bridge tells the shim through the container's environment, set when the container is created
//! (`EMPEROR_CONFIG`, `EMPEROR_SOCKETS`, `EMPEROR_FDNAMES`, `EMPEROR_STDIN_SOCKET`, `EMPEROR_PROXY`; the
//! names are constants in `crate::shim`, which documents them). The shim, not the bridge, then sets the
//! conventions the payload reads (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`, `UWSGI_EMPEROR_FD`,
//! `UWSGI_EMPEROR_FD_CONFIG`, `NGINX`) and unsets every `EMPEROR_*` variable.
//!
//! # What the receiver ([`recv_fds`]) validates
//! - the payload starts with [`MAGIC`] and is 17 bytes long (it reads until it has 17 bytes, every read
//!   a `recvmsg`, so ancillary data is never consumed by a plain read);
//! - the announced count is at most the caller's `max` (the shim passes exactly the number the
//!   environment announced);
//! - the announced count equals the number of fds that actually arrived.
//!
//! Fds are received with `MSG_CMSG_CLOEXEC` and wrapped in [`OwnedFd`] as soon as `recvmsg` returns, so
//! they are close-on-exec until someone deliberately places them for an `exec`, and any rejected frame
//! closes every fd it brought.
//!
//! # Single use
//! The bridge binds the proxy socket in a private directory before it creates the container, accepts
//! **exactly one** connection, checks with [`peer_cred`] that the peer is a process of its container,
//! sends the frame, closes the connection and unlinks the socket. A second connection attempt therefore
//! fails with `ENOENT`/`ECONNREFUSED`; the shim never reconnects after it got a frame.
//!
//! # Compatibility with real uWSGI
//! uWSGI 2.0.x (Debian ships 2.0.21) accepts at most **2** fds (control, config) and treats a frame with a
//! larger count as an error: it then retries the connect forever, against a socket that is already
//! unlinked. Sockets in the frame need uWSGI 2.1 (master), which `dup2`s any named socket among
//! `fds[1..]` to fd 0. So a Docker vassal with `docker-shim = false` (uWSGI itself as PID 1, using
//! `UWSGI_EMPEROR_PROXY`) and a socket needs uWSGI 2.1; with the shim (the default) any uWSGI works,
//! because the shim speaks this format and hands uWSGI plain inherited fds.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// The 13 bytes every frame starts with (uWSGI's, without a NUL).
pub const MAGIC: &[u8; 13] = b"uwsgi-emperor";

/// Length of a frame's payload: the magic and a 32-bit fd count.
pub const FRAME_LEN: usize = MAGIC.len() + 4;

/// The kernel's limit on fds in one SCM_RIGHTS message (`SCM_MAX_FD`).
const SCM_MAX_FD: usize = 253;

/// Sends `fds` in one frame (see the module doc), with one `sendmsg`. Retries on `EINTR`, and on
/// `EAGAIN` after a short poll, so it also works on a non-blocking socket.
pub fn send_fds(sock: &UnixStream, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.is_empty() || fds.len() > SCM_MAX_FD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a frame carries 1 to {SCM_MAX_FD} fds, not {}", fds.len()),
        ));
    }
    let count = u32::try_from(fds.len()).expect("checked above");
    let frame = [&MAGIC[..], &count.to_ne_bytes()].concat();
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let mut sent = 0;
    while sent < FRAME_LEN {
        let iov = [IoSlice::new(&frame[sent..])];
        // The fds travel with the first byte; should the kernel take only part of the 17 bytes
        // (it does not on a unix stream socket, but the API allows it), the rest goes without them.
        let rights = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage] = if sent == 0 { &rights } else { &[] };
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => sent += n,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => wait_ready(sock.as_fd(), PollFlags::POLLOUT, PollTimeout::from(100u16))?,
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("sendmsg on the proxy socket: {e}"),
                ));
            }
        }
    }
    Ok(())
}

/// Receives one frame and returns its fds in frame order, each close-on-exec.
///
/// `max` is the most fds the caller accepts; a frame announcing more, a frame whose count differs from
/// the fds that arrived, a wrong magic or a connection closed early is an error, and every fd that did
/// arrive is closed. On a socket with a read timeout, running out of time is an error
/// ([`io::ErrorKind::TimedOut`]).
pub fn recv_fds(sock: &UnixStream, max: usize) -> io::Result<Vec<OwnedFd>> {
    let mut frame = [0u8; FRAME_LEN];
    let mut got = 0;
    let mut fds: Vec<OwnedFd> = Vec::new();
    // Room for the kernel's maximum, so the control data is never truncated (a truncated message would
    // leave fds we could not see, hence not close).
    let mut cmsg_buf = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    while got < FRAME_LEN {
        let mut iov = [IoSliceMut::new(&mut frame[got..])];
        let msg = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_buf),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) if sock.read_timeout()?.is_some() => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("timed out waiting for the frame ({got} of {FRAME_LEN} bytes received)"),
                ));
            }
            Err(Errno::EAGAIN) => {
                wait_ready(sock.as_fd(), PollFlags::POLLIN, PollTimeout::NONE)?;
                continue;
            }
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("recvmsg on the proxy socket: {e}"),
                ));
            }
        };
        for cmsg in msg.cmsgs().map_err(|_| io::Error::other("control data truncated"))? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                // SAFETY: the kernel just installed these fds in our table for us (SCM_RIGHTS); nothing
                // else knows their numbers, so each OwnedFd is the only owner and closes it on drop.
                fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        if msg.bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed after {got} of {FRAME_LEN} bytes of the frame"),
            ));
        }
        got += msg.bytes;
    }
    check_frame(&frame, fds.len(), max)?;
    Ok(fds)
}

/// Checks a received frame (see the module doc): the magic, the announced count against `max`, and
/// against `arrived`, the number of fds that came with it. Apart from the socket, so that the fuzz
/// target (`fuzz/`) runs exactly the checks a peer's bytes meet.
pub fn check_frame(frame: &[u8; FRAME_LEN], arrived: usize, max: usize) -> io::Result<()> {
    if &frame[..MAGIC.len()] != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "not an emperor frame: it starts with \"{}\", not \"uwsgi-emperor\"",
                frame[..MAGIC.len()].escape_ascii()
            ),
        ));
    }
    let count = u32::from_ne_bytes(frame[MAGIC.len()..].try_into().expect("4 bytes")) as usize;
    if count > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the header announces {count} fds, more than the {max} expected"),
        ));
    }
    if count != arrived {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("received {arrived} fds, but the header says {count}"),
        ));
    }
    Ok(())
}

/// The peer of a connected unix socket, as the kernel recorded it at `connect`/`socketpair` time
/// (`SO_PEERCRED`): `(pid, uid, gid)`, translated into the caller's pid namespace.
pub fn peer_cred(sock: &UnixStream) -> io::Result<(i32, u32, u32)> {
    let cred = nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::PeerCredentials)?;
    Ok((cred.pid(), cred.uid(), cred.gid()))
}

/// Waits (bounded by `timeout`) until `fd` is ready for `events`; an interrupted wait counts as ready.
fn wait_ready(fd: BorrowedFd<'_>, events: PollFlags, timeout: PollTimeout) -> io::Result<()> {
    match poll(&mut [PollFd::new(fd, events)], timeout) {
        Ok(_) | Err(Errno::EINTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Adopts one fd the emperor placed for a bridge (the sockets from fd 3 and the channels named by
/// variables), after checking it is open, and marks it close-on-exec.
pub fn adopt_inherited(fd: std::os::fd::RawFd) -> Result<OwnedFd, String> {
    if fd < 3 {
        return Err(format!("fd {fd} cannot be an inherited socket"));
    }
    // SAFETY: fcntl(F_GETFD/F_SETFD) on an integer only reads or sets a flag; an invalid number yields EBADF.
    let ok = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == 0;
    if !ok {
        return Err(format!(
            "fd {fd} was not passed by the emperor: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the emperor placed this fd for us and nothing else in this process refers to it: each number
    // is adopted exactly once, right after start-up, before any other fd is opened.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    /// Sends an arbitrary payload with arbitrary fds, to build broken frames.
    fn send_raw(sock: &UnixStream, payload: &[u8], fds: &[RawFd]) {
        let iov = [IoSlice::new(payload)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).unwrap();
    }

    fn frame(count: u32) -> Vec<u8> {
        [&MAGIC[..], &count.to_ne_bytes()].concat()
    }

    /// Socketpairs whose far ends we send and then close, so that each near end sees EOF exactly when
    /// the receiver has closed its copy too. Unlike counting /proc/self/fd, this is immune to the
    /// other tests of this process opening fds concurrently.
    struct Probes {
        near: Vec<UnixStream>,
        far: Vec<UnixStream>,
    }

    impl Probes {
        fn new(n: usize) -> Probes {
            let (near, far) = (0..n).map(|_| pair()).unzip();
            Probes { near, far }
        }
        fn far_raw(&self) -> Vec<RawFd> {
            self.far.iter().map(AsRawFd::as_raw_fd).collect()
        }
        fn far_fds(&self) -> Vec<BorrowedFd<'_>> {
            self.far.iter().map(AsFd::as_fd).collect()
        }
        /// Closes our far ends, then checks that nobody holds them any more.
        fn assert_all_closed(mut self) {
            self.far.clear();
            for (i, near) in self.near.iter().enumerate() {
                near.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
                let mut buf = [0u8; 1];
                let n = std::io::Read::read(&mut &*near, &mut buf)
                    .unwrap_or_else(|e| panic!("fd #{i} of the frame was leaked (no EOF: {e})"));
                assert_eq!(n, 0, "fd #{i}: EOF expected");
            }
        }
    }

    fn accepts_connections(fd: BorrowedFd<'_>) -> bool {
        nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::AcceptConn).unwrap()
    }

    fn cloexec(fd: BorrowedFd<'_>) -> bool {
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        nix::fcntl::FdFlag::from_bits_truncate(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC)
    }

    #[test]
    fn control_and_two_listeners_arrive_in_order_and_cloexec() {
        let dir = std::env::temp_dir().join(format!("emperor-proxy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l.sock");
        let _ = std::fs::remove_file(&path);
        let unix = UnixListener::bind(&path).unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (control_ours, control_theirs) = pair();
        let (a, b) = pair();
        send_fds(&a, &[control_theirs.as_fd(), unix.as_fd(), tcp.as_fd()]).unwrap();
        let fds = recv_fds(&b, 3).unwrap();
        assert_eq!(fds.len(), 3);
        assert!(fds.iter().all(|fd| cloexec(fd.as_fd())), "received fds must be CLOEXEC");

        // The control end still talks to the end we kept.
        let control = UnixStream::from(fds[0].try_clone().unwrap());
        assert!(!accepts_connections(control.as_fd()));
        std::io::Write::write_all(&mut &control, &[5]).unwrap();
        let mut byte = [0u8];
        std::io::Read::read_exact(&mut &control_ours, &mut byte).unwrap();
        assert_eq!(byte, [5]);

        // The listeners are still listeners, with their addresses.
        assert!(accepts_connections(fds[1].as_fd()));
        assert!(accepts_connections(fds[2].as_fd()));
        let unix2 = UnixListener::from(fds[1].try_clone().unwrap());
        assert_eq!(unix2.local_addr().unwrap().as_pathname(), Some(path.as_path()));
        let tcp2 = std::net::TcpListener::from(fds[2].try_clone().unwrap());
        assert_eq!(tcp2.local_addr().unwrap(), tcp.local_addr().unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_wire_bytes_are_uwsgis() {
        let (a, b) = pair();
        let (_x, y) = pair();
        send_fds(&a, &[y.as_fd()]).unwrap();
        let mut buf = [0u8; 32];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let msg = recvmsg::<()>(b.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC).unwrap();
        let mut n_fds = 0;
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(raw) = c {
                n_fds += raw.len();
                // SAFETY: fresh fds from SCM_RIGHTS, owned by nobody else; dropped (closed) at once.
                raw.into_iter().for_each(|fd| drop(unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        let bytes = msg.bytes;
        assert_eq!(bytes, 17);
        assert_eq!(&buf[..17], b"uwsgi-emperor\x01\x00\x00\x00");
        assert_eq!(n_fds, 1);
    }

    #[test]
    fn bad_magic_is_rejected_and_fds_closed() {
        let (a, b) = pair();
        let probes = Probes::new(1);
        send_raw(&a, b"uwsgi-emperoX\x01\x00\x00\x00", &probes.far_raw());
        let err = recv_fds(&b, 4).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("not an emperor frame"), "{err}");
        probes.assert_all_closed();
    }

    #[test]
    fn count_mismatch_is_rejected() {
        let (a, b) = pair();
        let probes = Probes::new(2);
        send_raw(&a, &frame(3), &probes.far_raw());
        let err = recv_fds(&b, 4).unwrap_err();
        assert_eq!(err.to_string(), "received 2 fds, but the header says 3");
        probes.assert_all_closed();
    }

    #[test]
    fn more_than_max_is_rejected_without_leaking() {
        let (a, b) = pair();
        let probes = Probes::new(3);
        send_fds(&a, &probes.far_fds()).unwrap();
        let err = recv_fds(&b, 2).unwrap_err();
        assert_eq!(err.to_string(), "the header announces 3 fds, more than the 2 expected");
        probes.assert_all_closed();
    }

    #[test]
    fn early_eof_is_an_error() {
        let (a, b) = pair();
        send_raw(&a, b"uwsgi-em", &[]);
        drop(a);
        let err = recv_fds(&b, 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("8 of 17"), "{err}");
    }

    #[test]
    fn timeout_is_reported() {
        let (_a, b) = pair();
        b.set_read_timeout(Some(std::time::Duration::from_millis(50))).unwrap();
        let err = recv_fds(&b, 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn empty_fd_list_is_refused() {
        let (a, _b) = pair();
        assert_eq!(send_fds(&a, &[]).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn peer_cred_is_our_own_process() {
        let (a, _b) = pair();
        let (pid, uid, gid) = peer_cred(&a).unwrap();
        assert_eq!(pid, std::process::id() as i32);
        assert_eq!(uid, nix::unistd::getuid().as_raw());
        assert_eq!(gid, nix::unistd::getgid().as_raw());
    }
}
