//! The listening sockets the emperor binds for its vassals.
//!
//! The emperor, not the app, owns every vassal socket. That is what lets a socket path stay put across
//! crashes, restarts and reloads: while no process is accepting, clients wait in the kernel's backlog
//! instead of being refused, and nginx never sees a missing socket. A socket is bound once and kept
//! until its vassal no longer declares it (or is deleted); only then is a unix socket file unlinked,
//! and only if the file is still the one we bound (a newer emperor may have re-created it).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
use std::path::Path;

use nix::sys::socket::{Backlog, listen};

use crate::config::{Owner, SocketAddrSpec, SocketSpec};

/// Backlog when the vassal sets no `listen`: deep enough to hold a burst of clients across a restart.
pub const DEFAULT_BACKLOG: u32 = 1024;

/// A bound, listening socket that outlives vassal processes.
#[derive(Debug)]
pub struct BoundSocket {
    pub spec: SocketSpec,
    fd: OwnedFd,
    /// (device, inode) of the unix socket file we created, to unlink only our own file.
    file_id: Option<(u64, u64)>,
}

impl BoundSocket {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Closes the socket and removes its file if it is still ours.
    pub fn release(self) {
        if let (SocketAddrSpec::Unix(path), Some(id)) = (&self.spec.addr, self.file_id)
            && let Ok(meta) = std::fs::symlink_metadata(path)
            && (meta.dev(), meta.ino()) == id
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Socket settings that do not change the socket's identity.
#[derive(Debug, Clone, Copy)]
pub struct SocketOptions<'a> {
    pub backlog: u32,
    pub mode: Option<u32>,
    pub owner: Option<&'a Owner>,
    /// Tyrant mode: a unix socket file is made as its tenant could (no symlink on the way, in a directory the
    /// tenant may write) and belongs to the tenant, unless `owner` names one.
    pub tenant: Option<&'a crate::sys::tenant::Tenant>,
}

/// Binds and listens. Errors name the socket and what failed.
pub fn bind(spec: &SocketSpec, opts: SocketOptions<'_>) -> io::Result<BoundSocket> {
    let ctx = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("socket {}: {what}: {e}", spec.addr));
    let backlog = Backlog::new(opts.backlog.min(i32::MAX as u32) as i32).unwrap_or(Backlog::MAXCONN);
    let (fd, file_id): (OwnedFd, _) = match &spec.addr {
        SocketAddrSpec::Tcp(addr) => {
            // std sets SO_REUSEADDR and CLOEXEC; listen() again to apply our backlog.
            let l = std::net::TcpListener::bind(addr).map_err(|e| ctx("cannot bind", e))?;
            (l.into(), None)
        }
        SocketAddrSpec::Abstract(name) => {
            let addr = UnixAddr::from_abstract_name(name.as_bytes()).map_err(|e| ctx("bad abstract name", e))?;
            let l = UnixListener::bind_addr(&addr).map_err(|e| ctx("cannot bind", e))?;
            (l.into(), None)
        }
        SocketAddrSpec::Unix(given) => {
            // In tyrant mode every step goes through the directory opened without symlinks.
            let place = match opts.tenant {
                Some(t) => Some(tenant_place(given, t).map_err(|e| ctx("cannot bind", e))?),
                None => None,
            };
            let via = place.as_ref().map(crate::sys::tenant::Place::fd_path);
            let path = via.as_deref().unwrap_or(given);
            remove_stale(path).map_err(|e| ctx("cannot bind", e))?;
            let l = UnixListener::bind(path).map_err(|e| ctx("cannot bind", e))?;
            let meta = std::fs::symlink_metadata(path).map_err(|e| ctx("cannot stat", e))?;
            let id = (meta.dev(), meta.ino());
            let sock = BoundSocket {
                spec: spec.clone(),
                fd: l.into(),
                file_id: Some(id),
            };
            if let Err(e) = apply_perms(path, opts) {
                sock.release();
                return Err(ctx("cannot set permissions", e));
            }
            return finish(sock, backlog).map_err(|e| ctx("cannot listen", e));
        }
    };
    finish(
        BoundSocket {
            spec: spec.clone(),
            fd,
            file_id,
        },
        backlog,
    )
    .map_err(|e| ctx("cannot listen", e))
}

fn finish(sock: BoundSocket, backlog: Backlog) -> io::Result<BoundSocket> {
    listen(&sock.fd, backlog)?;
    Ok(sock)
}

/// Sets or clears `O_NONBLOCK` on the vassal's sockets before an instance gets them (`socket-nonblocking`). The
/// flag belongs to the socket, which every instance of the vassal shares (also the old one of an overlapping
/// reload): the latest start decides.
pub fn set_nonblocking(sockets: &[BoundSocket], on: bool) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    for s in sockets {
        let ctx = |e: nix::errno::Errno| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("socket {}: cannot set socket-nonblocking: {e}", s.spec.addr),
            )
        };
        let flags = OFlag::from_bits_retain(fcntl(s.fd(), FcntlArg::F_GETFL).map_err(ctx)?);
        let want = if on {
            flags | OFlag::O_NONBLOCK
        } else {
            flags - OFlag::O_NONBLOCK
        };
        if want != flags {
            fcntl(s.fd(), FcntlArg::F_SETFL(want)).map_err(ctx)?;
        }
    }
    Ok(())
}

/// Removes the socket file at `path`, live or not, so that the emperor's own servers (control, stats)
/// take their path over from a previous emperor. Anything that is not a socket stays, and binding then
/// fails with a clear error.
pub fn replace_socket_file(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// Removes a leftover socket file from a previous run, but never a live socket (someone accepts on
/// it) and never a file that is not a socket.
fn remove_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        ));
    }
    // A non-blocking probe: a blocking connect would hang on a live listener whose backlog is full.
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr as NixUnixAddr, connect, socket};
    let probe = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = NixUnixAddr::new(path)?;
    match connect(probe.as_raw_fd(), &addr) {
        Ok(()) | Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINPROGRESS) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process is listening on it",
        )),
        Err(nix::errno::Errno::ECONNREFUSED) => std::fs::remove_file(path),
        Err(e) => Err(e.into()),
    }
}

fn apply_perms(path: &Path, opts: SocketOptions<'_>) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(mode) = opts.mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    match (opts.owner, opts.tenant) {
        (Some(owner), _) => std::os::unix::fs::lchown(path, owner.uid, owner.gid)?,
        (None, Some(t)) => std::os::unix::fs::lchown(path, Some(t.uid), Some(t.gid))?,
        (None, None) => {}
    }
    Ok(())
}

/// Tyrant mode: the socket's directory, reached without symlinks, and one the tenant may create files in.
fn tenant_place(path: &Path, t: &crate::sys::tenant::Tenant) -> io::Result<crate::sys::tenant::Place> {
    let place = crate::sys::tenant::Place::of(path)?;
    if !place.tenant_may_create(t)? {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the vassal's owner may not create files in this directory",
        ));
    }
    Ok(place)
}
