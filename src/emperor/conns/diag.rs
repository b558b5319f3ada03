//! Accept-queue depth and backlog of listening sockets, from the kernel's sock_diag netlink interface.
//!
//! `/proc/net/unix` lists a queued connection and an accepted one alike, so it cannot say how many
//! clients wait for a unix listener's `accept`; `/proc/net/tcp` shows a TCP listener's queue but not
//! its backlog. sock_diag answers both for every listener in one dump per address family: for a
//! listening socket the kernel reports the accept queue as `rqueue` and the backlog (`listen`'s
//! argument, capped at `somaxconn`) as `wqueue`, keyed by the socket's inode, which is what `fstat` on
//! the emperor's listening fd returns as `st_ino`. The stats document makes one unix dump and one
//! TCP dump per address family, however many vassals there are; nothing here needs privileges.
//!
//! The request and reply layouts (`linux/netlink.h`, `linux/sock_diag.h`, `linux/unix_diag.h`,
//! `linux/inet_diag.h`) are encoded and parsed by hand on plain byte buffers, in native byte order
//! as netlink is, so the parsing is pure and unit-tested, and no unsafe code is needed.

use std::collections::HashMap;
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, setsockopt, socket, sockopt,
};

/// `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_ROOT | NLM_F_MATCH`.
const NLM_F_DUMP: u16 = 0x300;
/// `SOCK_DIAG_BY_FAMILY`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `TCP_LISTEN` in the kernel's socket states; unix sockets use the same numbers.
const TCP_LISTEN: u32 = 10;

/// `struct unix_diag_req`.
const UNIX_REQ_LEN: usize = 24;
/// `struct unix_diag_msg`.
const UNIX_MSG_LEN: usize = 16;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_RQLEN: u16 = 4;

/// `struct inet_diag_req_v2`.
const INET_REQ_LEN: usize = 56;
/// `struct inet_diag_msg`: family, state, timer, retrans, a 48-byte `inet_diag_sockid`, then
/// expires, rqueue, wqueue, uid, inode (u32 each).
const INET_MSG_LEN: usize = 72;
const IPPROTO_TCP: u8 = 6;

/// What the kernel says about one listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    /// Connections waiting to be accepted.
    pub queued: u32,
    /// The most that can wait (the backlog given to `listen`, capped at `net.core.somaxconn`).
    pub backlog: u32,
}

/// The dump request for every listening unix socket, with its queue lengths.
pub fn unix_request(seq: u32) -> Vec<u8> {
    let mut b = header(NLMSG_HDRLEN + UNIX_REQ_LEN, seq);
    b.push(libc::AF_UNIX as u8); // sdiag_family
    b.push(0); // sdiag_protocol
    b.extend_from_slice(&0u16.to_ne_bytes()); // pad
    b.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes()); // udiag_states
    b.extend_from_slice(&0u32.to_ne_bytes()); // udiag_ino: a dump ignores it
    b.extend_from_slice(&UDIAG_SHOW_RQLEN.to_ne_bytes()); // udiag_show
    b.extend_from_slice(&[0xff; 8]); // udiag_cookie: INET_DIAG_NOCOOKIE
    b
}

/// The dump request for every listening TCP socket of `family` (`AF_INET` or `AF_INET6`); the queue
/// lengths are in the fixed part of each reply, so no extension is asked for.
pub fn tcp_request(family: u8, seq: u32) -> Vec<u8> {
    let mut b = header(NLMSG_HDRLEN + INET_REQ_LEN, seq);
    b.push(family); // sdiag_family
    b.push(IPPROTO_TCP); // sdiag_protocol
    b.push(0); // idiag_ext
    b.push(0); // pad
    b.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes()); // idiag_states
    b.extend_from_slice(&[0; 40]); // id: ports, addresses, interface: all wildcards in a dump
    b.extend_from_slice(&[0xff; 8]); // id.idiag_cookie: INET_DIAG_NOCOOKIE
    b
}

fn header(len: usize, seq: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel fills it in
    b
}

/// One netlink message: its type and its payload (after the header).
#[derive(Debug, PartialEq, Eq)]
struct Message<'a> {
    kind: u16,
    payload: &'a [u8],
}

/// What one `recv` of a dump held.
#[derive(Debug, PartialEq, Eq)]
pub enum Batch {
    /// More messages follow in the next `recv`.
    More,
    /// `NLMSG_DONE`: the dump is complete.
    Done,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Netlink aligns messages and attributes to 4 bytes.
fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Splits one datagram into its messages.
fn messages(buf: &[u8]) -> Result<Vec<Message<'_>>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, at).unwrap_or(0) as usize;
        let kind = u16_at(buf, at + 4).unwrap_or(0);
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            return Err(format!("malformed netlink message (length {len} at offset {at})"));
        }
        out.push(Message {
            kind,
            payload: &buf[at + NLMSG_HDRLEN..at + len],
        });
        at += align4(len);
    }
    Ok(out)
}

/// The attributes (`struct rtattr`: u16 length, u16 type, data) after a message's fixed part.
fn attributes(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16_at(b, 0)? as usize;
        let kind = u16_at(b, 2)?;
        if len < 4 || len > b.len() {
            return None;
        }
        let data = &b[4..len];
        b = b.get(align4(len)..).unwrap_or(&[]);
        Some((kind, data))
    })
}

/// An `NLMSG_ERROR` payload (a negative errno, 0 for an acknowledgement) as an error.
fn error_of(payload: &[u8]) -> Option<String> {
    let errno = i32::from_ne_bytes(payload.get(..4)?.try_into().ok()?);
    (errno != 0).then(|| format!("sock_diag: {}", std::io::Error::from_raw_os_error(-errno)))
}

/// Adds the listeners of one datagram of a unix dump to `into`, by inode.
pub fn parse_unix(buf: &[u8], into: &mut HashMap<u64, Listen>) -> Result<Batch, String> {
    for m in messages(buf)? {
        match m.kind {
            NLMSG_DONE => return Ok(Batch::Done),
            NLMSG_ERROR => return Err(error_of(m.payload).unwrap_or_else(|| "sock_diag: error".into())),
            SOCK_DIAG_BY_FAMILY if m.payload.len() >= UNIX_MSG_LEN => {
                let Some(ino) = u32_at(m.payload, 4) else { continue };
                let rqlen = attributes(&m.payload[UNIX_MSG_LEN..]).find(|(k, d)| *k == UNIX_DIAG_RQLEN && d.len() >= 8);
                if let Some((_, d)) = rqlen {
                    let (Some(queued), Some(backlog)) = (u32_at(d, 0), u32_at(d, 4)) else {
                        continue;
                    };
                    into.insert(u64::from(ino), Listen { queued, backlog });
                }
            }
            _ => {}
        }
    }
    Ok(Batch::More)
}

/// Adds the listeners of one datagram of a TCP dump to `into`, by inode.
pub fn parse_tcp(buf: &[u8], into: &mut HashMap<u64, Listen>) -> Result<Batch, String> {
    for m in messages(buf)? {
        match m.kind {
            NLMSG_DONE => return Ok(Batch::Done),
            NLMSG_ERROR => return Err(error_of(m.payload).unwrap_or_else(|| "sock_diag: error".into())),
            SOCK_DIAG_BY_FAMILY if m.payload.len() >= INET_MSG_LEN => {
                let p = m.payload;
                let (Some(queued), Some(backlog), Some(ino)) = (u32_at(p, 56), u32_at(p, 60), u32_at(p, 68)) else {
                    continue;
                };
                into.insert(u64::from(ino), Listen { queued, backlog });
            }
            _ => {}
        }
    }
    Ok(Batch::More)
}

/// Listeners by inode.
pub type Listeners = HashMap<u64, Listen>;

/// Parses one datagram of a dump into the map.
type Parser = fn(&[u8], &mut Listeners) -> Result<Batch, String>;

/// Sends one dump request and parses the replies until `NLMSG_DONE`.
fn dump(request: &[u8], parse: Parser, into: &mut Listeners) -> Result<(), String> {
    let io = |what: &str, e: nix::Error| format!("sock_diag: cannot {what}: {e}");
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .map_err(|e| io("open a netlink socket", e))?;
    // The kernel answers at once; the timeout only guards against a kernel that never says DONE.
    let _ = setsockopt(&fd, sockopt::ReceiveTimeout, &nix::sys::time::TimeVal::new(1, 0));
    sendto(fd.as_raw_fd(), request, &NetlinkAddr::new(0, 0), MsgFlags::empty()).map_err(|e| io("send", e))?;
    // A dump datagram is at most 32 KiB: the kernel sizes it to the reader's buffer up to that.
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io("receive", e)),
        };
        if n == 0 {
            return Err("sock_diag: the dump ended without NLMSG_DONE".into());
        }
        if parse(&buf[..n], into)? == Batch::Done {
            return Ok(());
        }
    }
}

/// Every listening unix socket in the emperor's network namespace, by inode.
pub fn unix_listeners() -> Result<HashMap<u64, Listen>, String> {
    let mut m = HashMap::new();
    dump(&unix_request(1), parse_unix, &mut m)?;
    Ok(m)
}

/// Every listening TCP socket (IPv4 and IPv6) in the emperor's network namespace, by inode. A kernel
/// without IPv6 answers the IPv6 dump with an error, which leaves just the IPv4 listeners.
pub fn tcp_listeners() -> Result<HashMap<u64, Listen>, String> {
    let mut m = HashMap::new();
    dump(&tcp_request(libc::AF_INET as u8, 1), parse_tcp, &mut m)?;
    let _ = dump(&tcp_request(libc::AF_INET6 as u8, 2), parse_tcp, &mut m);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nlmsg(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut b = Vec::new();
        b.extend_from_slice(&(len as u32).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        b.extend_from_slice(&1u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(payload);
        b.resize(align4(b.len()), 0);
        b
    }

    fn attr(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(data);
        b.resize(align4(b.len()), 0);
        b
    }

    fn unix_msg(ino: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut p = vec![libc::AF_UNIX as u8, libc::SOCK_STREAM as u8, TCP_LISTEN as u8, 0];
        p.extend_from_slice(&ino.to_ne_bytes());
        p.extend_from_slice(&[0; 8]);
        for a in attrs {
            p.extend_from_slice(a);
        }
        nlmsg(SOCK_DIAG_BY_FAMILY, &p)
    }

    fn rqlen(rq: u32, wq: u32) -> Vec<u8> {
        attr(UNIX_DIAG_RQLEN, &[rq.to_ne_bytes(), wq.to_ne_bytes()].concat())
    }

    #[test]
    fn unix_request_layout() {
        let r = unix_request(7);
        assert_eq!(r.len(), 40);
        assert_eq!(u32_at(&r, 0), Some(40), "nlmsg_len");
        assert_eq!(u16_at(&r, 4), Some(20), "SOCK_DIAG_BY_FAMILY");
        assert_eq!(u16_at(&r, 6), Some(0x301), "NLM_F_REQUEST | NLM_F_DUMP");
        assert_eq!(u32_at(&r, 8), Some(7), "seq");
        assert_eq!((r[16], r[17]), (1, 0), "AF_UNIX, protocol 0");
        assert_eq!(u32_at(&r, 20), Some(1 << 10), "only TCP_LISTEN");
        assert_eq!(u32_at(&r, 28), Some(0x10), "UDIAG_SHOW_RQLEN");
        assert_eq!(&r[32..], &[0xff; 8], "no cookie");
    }

    #[test]
    fn tcp_request_layout() {
        let r = tcp_request(libc::AF_INET6 as u8, 3);
        assert_eq!(r.len(), 72);
        assert_eq!(u32_at(&r, 0), Some(72));
        assert_eq!(u16_at(&r, 4), Some(20));
        assert_eq!(
            (r[16], r[17], r[18]),
            (10, 6, 0),
            "AF_INET6, IPPROTO_TCP, no extensions"
        );
        assert_eq!(u32_at(&r, 20), Some(1 << 10));
        assert!(r[24..64].iter().all(|&b| b == 0), "wildcard socket id");
        assert_eq!(&r[64..], &[0xff; 8]);
    }

    #[test]
    fn unix_replies_are_indexed_by_inode() {
        let mut buf = unix_msg(100, &[attr(0, b"/run/a.sock\0"), rqlen(3, 128)]);
        buf.extend(unix_msg(101, &[rqlen(0, 1024)]));
        buf.extend(unix_msg(102, &[])); // no RQLEN attribute: not listed
        let mut m = HashMap::new();
        assert_eq!(parse_unix(&buf, &mut m), Ok(Batch::More));
        assert_eq!(
            m.get(&100),
            Some(&Listen {
                queued: 3,
                backlog: 128
            })
        );
        assert_eq!(
            m.get(&101),
            Some(&Listen {
                queued: 0,
                backlog: 1024
            })
        );
        assert_eq!(m.len(), 2);
        assert_eq!(
            parse_unix(&nlmsg(NLMSG_DONE, &0i32.to_ne_bytes()), &mut m),
            Ok(Batch::Done)
        );
    }

    #[test]
    fn tcp_replies_are_indexed_by_inode() {
        let mut p = vec![libc::AF_INET as u8, TCP_LISTEN as u8, 0, 0];
        p.extend_from_slice(&[0; 48]); // id
        for v in [0u32, 2, 511, 1000, 4242] {
            // expires, rqueue, wqueue, uid, inode
            p.extend_from_slice(&v.to_ne_bytes());
        }
        let mut buf = nlmsg(SOCK_DIAG_BY_FAMILY, &p);
        buf.extend(nlmsg(NLMSG_DONE, &0i32.to_ne_bytes()));
        let mut m = HashMap::new();
        assert_eq!(parse_tcp(&buf, &mut m), Ok(Batch::Done));
        assert_eq!(
            m.get(&4242),
            Some(&Listen {
                queued: 2,
                backlog: 511
            })
        );
    }

    #[test]
    fn errors_and_truncation_are_reported() {
        let mut m = HashMap::new();
        let err = parse_unix(&nlmsg(NLMSG_ERROR, &(-libc::EINVAL).to_ne_bytes()), &mut m).unwrap_err();
        assert!(err.contains("Invalid argument"), "{err}");
        let mut buf = unix_msg(1, &[rqlen(0, 1)]);
        buf[0] = 200; // claims more bytes than there are
        assert!(parse_unix(&buf, &mut m).is_err());
        // A truncated attribute is skipped, not read past its end.
        let mut short = attr(UNIX_DIAG_RQLEN, &[0; 8]);
        short[0] = 40;
        assert_eq!(parse_unix(&unix_msg(5, &[short]), &mut m), Ok(Batch::More));
        assert!(!m.contains_key(&5));
    }

    /// The real kernel: a unix listener with two connections waiting and a TCP listener with one.
    #[test]
    fn counts_waiting_connections_on_real_listeners() {
        let dir = std::env::temp_dir().join(format!("emperor-diag-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("q.sock");
        let _ = std::fs::remove_file(&path);
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let ino = nix::sys::stat::fstat(&l).unwrap().st_ino;
        let _c1 = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let _c2 = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let got = unix_listeners().unwrap();
        assert_eq!(got.get(&ino).map(|l| l.queued), Some(2), "inode {ino}");
        assert!(got[&ino].backlog > 0);
        let _a = l.accept().unwrap();
        assert_eq!(unix_listeners().unwrap().get(&ino).map(|l| l.queued), Some(1));

        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tino = nix::sys::stat::fstat(&t).unwrap().st_ino;
        let _tc = std::net::TcpStream::connect(t.local_addr().unwrap()).unwrap();
        let got = tcp_listeners().unwrap();
        assert_eq!(got.get(&tino).map(|l| l.queued), Some(1));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
