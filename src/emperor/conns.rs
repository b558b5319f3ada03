//! Counting a vassal's open connections from the kernel, for idle detection.
//!
//! The emperor owns the listening sockets, so the connections the app accepted from them are visible
//! to it without asking the app: an accepted unix socket carries its listener's path (Linux copies the
//! address at connect time, so even connections still waiting in the backlog are listed), and an
//! accepted TCP socket carries the listener's local port. Both are in the emperor's network namespace
//! even when the app runs in a container with network `none`, because the listener was created there.
//! `/proc/net/{unix,tcp,tcp6}` is read for counting: one read per check, and a check only happens for
//! vassals with `idle` set, at most a few times per idle period.
//!
//! The stats document also wants each listener's accept queue and backlog, which `/proc/net/unix`
//! cannot give (a queued connection and an accepted one look alike there); those come from sock_diag
//! netlink ([`diag`]), one dump per document, matched to the emperor's listeners by socket inode.

mod diag;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use crate::config::SocketAddrSpec;

/// Listener flag in /proc/net/unix (`__SO_ACCEPTCON`).
const SO_ACCEPTCON: u32 = 0x0001_0000;

/// How many connections are open (or queued) on the given listening sockets right now.
pub fn open_connections(sockets: &[&SocketAddrSpec]) -> std::io::Result<usize> {
    let mut unix_paths = HashSet::new();
    let mut tcp = Vec::new();
    for s in sockets {
        match s {
            SocketAddrSpec::Unix(p) => {
                unix_paths.insert(p.to_string_lossy().into_owned());
            }
            SocketAddrSpec::Abstract(name) => {
                unix_paths.insert(format!("@{name}"));
            }
            SocketAddrSpec::Tcp(addr) => tcp.push(*addr),
        }
    }
    let mut n = 0;
    if !unix_paths.is_empty() {
        n += count_unix(&std::fs::read_to_string("/proc/net/unix")?, &unix_paths);
    }
    if !tcp.is_empty() {
        for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
            // tcp6 is missing when IPv6 is disabled.
            if let Ok(text) = std::fs::read_to_string(file) {
                n += count_tcp(&text, &tcp);
            }
        }
    }
    Ok(n)
}

/// How many connections wait in the accept queues of the given listeners (each with the inode of its fd),
/// from one sock_diag dump per address family present: what auto-scaling replicas look at several times a
/// second, so it reads no `/proc/net` table.
pub fn queued(listeners: &[(&SocketAddrSpec, u64)]) -> Result<usize, String> {
    let mut unix = None;
    let mut tcp = None;
    let mut n = 0;
    for (addr, inode) in listeners {
        let table = match addr {
            SocketAddrSpec::Tcp(_) => tcp.get_or_insert_with(diag::tcp_listeners),
            SocketAddrSpec::Unix(_) | SocketAddrSpec::Abstract(_) => unix.get_or_insert_with(diag::unix_listeners),
        };
        match table {
            Ok(m) => n += m.get(inode).map_or(0, |l| l.queued as usize),
            Err(e) => return Err(e.clone()),
        }
    }
    Ok(n)
}

/// The inodes of the connections open on the given listening sockets (accepted or still queued): a process
/// holding one of them serves the vassal (`vassal/replicas.rs` takes that as "ready" for a replica that is
/// never seen waiting in `accept` because the queue always has a connection for it).
pub fn connection_inodes(sockets: &[SocketAddrSpec]) -> std::io::Result<HashSet<u64>> {
    let mut out = HashSet::new();
    let paths: HashSet<String> = sockets
        .iter()
        .filter_map(|s| match s {
            SocketAddrSpec::Unix(p) => Some(p.to_string_lossy().into_owned()),
            SocketAddrSpec::Abstract(name) => Some(format!("@{name}")),
            SocketAddrSpec::Tcp(_) => None,
        })
        .collect();
    if !paths.is_empty() {
        for line in std::fs::read_to_string("/proc/net/unix")?.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(flags), Some(inode), Some(path)) = (cols.get(3), cols.get(6), cols.get(7)) else {
                continue;
            };
            let listener = u32::from_str_radix(flags, 16).is_ok_and(|f| f & SO_ACCEPTCON != 0);
            if !listener && paths.contains(*path) {
                out.extend(inode.parse::<u64>().ok());
            }
        }
    }
    let tcp: Vec<SocketAddr> = sockets
        .iter()
        .filter_map(|s| match s {
            SocketAddrSpec::Tcp(a) => Some(*a),
            _ => None,
        })
        .collect();
    if !tcp.is_empty() {
        for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let Ok(text) = std::fs::read_to_string(file) else {
                continue;
            };
            for (port, row) in tcp_rows(&text) {
                if row.inode != 0 && tcp.iter().any(|l| l.port() == port && row.holds_connection_of(l)) {
                    out.insert(row.inode);
                }
            }
        }
    }
    Ok(out)
}

/// One read of the kernel's socket tables, for the stats document: many sockets are measured from it
/// without reading `/proc/net/*` or asking sock_diag once per socket.
pub struct Tables {
    /// Non-listener rows of /proc/net/unix per path, counted in one pass.
    unix: HashMap<String, usize>,
    /// Rows of /proc/net/tcp and tcp6 by local port, parsed once: measuring a socket looks at its port's rows
    /// only (a document once re-read every row for every TCP socket: 7.7 s with 334 TCP vassals and 55k rows).
    tcp: HashMap<u16, Vec<TcpRow>>,
    /// Queue and backlog of every listening unix socket, by inode; `None` if sock_diag failed.
    unix_listen: Option<HashMap<u64, diag::Listen>>,
    /// The same for TCP listeners.
    tcp_listen: Option<HashMap<u64, diag::Listen>>,
}

/// What the kernel says about one listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketLoad {
    /// Connections open on it: accepted by the app, or still waiting to be.
    pub connections: usize,
    /// Connections waiting to be accepted; `None` when the kernel could not be asked.
    pub queue: Option<usize>,
    /// How many may wait (`listen`'s backlog as the kernel applied it); `None` when not known.
    pub backlog: Option<usize>,
}

impl Tables {
    /// Reads /proc/net/{unix,tcp,tcp6} and makes the sock_diag dumps. A failed dump is logged and
    /// leaves only the queue and backlog unknown.
    pub fn load() -> std::io::Result<Tables> {
        let known = |what: &str, r: Result<HashMap<u64, diag::Listen>, String>| {
            r.map_err(|e| {
                // Once: a kernel without sock_diag would say the same for every document.
                static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
                if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    log::warn!("stats: no {what} accept queues or backlogs: {e}");
                }
            })
            .ok()
        };
        Ok(Tables {
            unix: unix_counts(&std::fs::read_to_string("/proc/net/unix")?),
            tcp: ["/proc/net/tcp", "/proc/net/tcp6"]
                .iter()
                .filter_map(|f| std::fs::read_to_string(f).ok())
                .fold(HashMap::new(), |mut by_port, text| {
                    for (port, row) in tcp_rows(&text) {
                        by_port.entry(port).or_insert_with(Vec::new).push(row);
                    }
                    by_port
                }),
            unix_listen: known("unix", diag::unix_listeners()),
            tcp_listen: known("TCP", diag::tcp_listeners()),
        })
    }

    /// Measures one listening socket; `inode` is the listener's (`st_ino` of its fd), by which
    /// sock_diag knows it. A TCP listener whose inode is unknown falls back to its row's `rx_queue`
    /// in /proc/net/tcp (the kernel prints `sk_ack_backlog` there for a listener).
    pub fn measure(&self, addr: &SocketAddrSpec, inode: Option<u64>) -> SocketLoad {
        let listen =
            |m: &Option<HashMap<u64, diag::Listen>>| m.as_ref().zip(inode).and_then(|(m, i)| m.get(&i)).copied();
        let (connections, listen) = match addr {
            SocketAddrSpec::Tcp(a) => {
                let rows = self.tcp.get(&a.port()).map_or(&[][..], Vec::as_slice);
                let connections = rows.iter().filter(|r| r.holds_connection_of(a)).count();
                return match listen(&self.tcp_listen) {
                    Some(l) => SocketLoad {
                        connections,
                        queue: Some(l.queued as usize),
                        backlog: Some(l.backlog as usize),
                    },
                    None => SocketLoad {
                        connections,
                        queue: Some(rows.iter().filter(|r| r.is_listener(a)).map(|r| r.rx_queue).sum()),
                        backlog: None,
                    },
                };
            }
            SocketAddrSpec::Unix(p) => (
                self.unix.get(p.to_string_lossy().as_ref()).copied().unwrap_or(0),
                listen(&self.unix_listen),
            ),
            SocketAddrSpec::Abstract(name) => (
                self.unix.get(&format!("@{name}")).copied().unwrap_or(0),
                listen(&self.unix_listen),
            ),
        };
        SocketLoad {
            connections,
            queue: listen.map(|l| l.queued as usize),
            backlog: listen.map(|l| l.backlog as usize),
        }
    }
}

/// [`count_unix`] for every path at once.
fn unix_counts(text: &str) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for line in text.lines().skip(1) {
        let mut cols = line.split_whitespace();
        let (Some(flags), Some(path)) = (cols.nth(3), cols.nth(3)) else {
            continue;
        };
        if u32::from_str_radix(flags, 16).is_ok_and(|f| f & SO_ACCEPTCON == 0) {
            *m.entry(path.to_owned()).or_insert(0) += 1;
        }
    }
    m
}

/// One row of /proc/net/tcp or tcp6 (`sl local rem st tx_queue:rx_queue ...`), as far as measuring needs.
#[derive(Debug, Clone)]
struct TcpRow {
    /// The local address as the kernel prints it (see [`ip_matches`]).
    ip_hex: String,
    state: u8,
    /// For a listener, its accept queue (the kernel prints `sk_ack_backlog` there).
    rx_queue: usize,
    /// The socket's inode (0 for a connection no process holds any more).
    inode: u64,
}

/// LISTEN, TIME_WAIT and CLOSE: states in which no connection is held.
const TCP_LISTEN: u8 = 0x0A;
const TCP_NOT_HELD: [u8; 3] = [TCP_LISTEN, 0x06, 0x07];

impl TcpRow {
    /// A connection on listener `l`'s port and address (any address for a wildcard listener), still held.
    fn holds_connection_of(&self, l: &SocketAddr) -> bool {
        !TCP_NOT_HELD.contains(&self.state) && (l.ip().is_unspecified() || ip_matches(&self.ip_hex, l))
    }

    /// The LISTEN row of `l` itself.
    fn is_listener(&self, l: &SocketAddr) -> bool {
        self.state == TCP_LISTEN
            && (ip_matches(&self.ip_hex, l) || (l.ip().is_unspecified() && self.ip_hex.bytes().all(|b| b == b'0')))
    }
}

/// The rows of one /proc/net/tcp{,6} text with their local port.
fn tcp_rows(text: &str) -> impl Iterator<Item = (u16, TcpRow)> + '_ {
    text.lines().skip(1).filter_map(|line| {
        let mut cols = line.split_whitespace();
        let local = cols.nth(1)?;
        let state = u8::from_str_radix(cols.nth(1)?, 16).ok()?;
        let rx_queue = cols
            .next()
            .and_then(|q| usize::from_str_radix(q.split_once(':')?.1, 16).ok())
            .unwrap_or(0);
        // tr:tm->when retrnsmt uid timeout inode
        let inode = cols.nth(4).and_then(|i| i.parse().ok()).unwrap_or(0);
        let (ip_hex, port_hex) = local.split_once(':')?;
        let port = u16::from_str_radix(port_hex, 16).ok()?;
        Some((
            port,
            TcpRow {
                ip_hex: ip_hex.to_owned(),
                state,
                rx_queue,
                inode,
            },
        ))
    })
}

/// `Num RefCount Protocol Flags Type St Inode Path`: rows with our path that are not the listener.
fn count_unix(text: &str, paths: &HashSet<String>) -> usize {
    text.lines()
        .skip(1)
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(flags), Some(path)) = (cols.get(3), cols.get(7)) else {
                return false;
            };
            let listener = u32::from_str_radix(flags, 16).is_ok_and(|f| f & SO_ACCEPTCON != 0);
            !listener && paths.contains(*path)
        })
        .count()
}

/// Rows held on one of `listeners` (see [`TcpRow::holds_connection_of`]).
fn count_tcp(text: &str, listeners: &[SocketAddr]) -> usize {
    tcp_rows(text)
        .filter(|(port, row)| {
            listeners
                .iter()
                .any(|l| l.port() == *port && row.holds_connection_of(l))
        })
        .count()
}

/// /proc/net/tcp prints IPv4 addresses as one little-endian u32 in hex, IPv6 as four of them.
fn ip_matches(hex: &str, l: &SocketAddr) -> bool {
    let words: Option<Vec<u32>> = hex
        .as_bytes()
        .chunks(8)
        .map(|c| u32::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok())
        .collect();
    let Some(words) = words else { return false };
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    match l {
        SocketAddr::V4(a) => bytes == a.ip().octets() || bytes == a.ip().to_ipv6_mapped().octets(),
        SocketAddr::V6(a) => bytes == a.ip().octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_rows_with_our_path_that_are_not_the_listener() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 100 /run/a.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 101 /run/a.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 102 /run/b.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 103\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 104 @abs\n";
        let paths: HashSet<String> = ["/run/a.sock".to_string(), "@abs".to_string()].into();
        assert_eq!(count_unix(text, &paths), 2);
        let m = unix_counts(text);
        assert_eq!(
            (m.get("/run/a.sock"), m.get("/run/b.sock"), m.get("@abs")),
            (Some(&1), Some(&1), Some(&1))
        );
    }

    #[test]
    fn tcp_rows_carry_the_socket_inode() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4711 1 0000000000000000 20 4 30 10 -1\n";
        let rows: Vec<_> = tcp_rows(text).collect();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].0, rows[0].1.inode, rows[0].1.state), (8080, 4711, 1));
    }

    #[test]
    fn tcp_rows_on_our_port_in_open_states() {
        // 127.0.0.1:8080 listening, one established, one time-wait, one on another port.
        let text = "  sl  local_address rem_address   st\n\
            0: 0100007F:1F90 00000000:0000 0A\n\
            1: 0100007F:1F90 0100007F:D431 01\n\
            2: 0100007F:1F90 0100007F:D432 06\n\
            3: 0100007F:1F91 0100007F:D433 01\n";
        let l: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(count_tcp(text, &[l]), 1);
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(count_tcp(text, &[any]), 1);
        let v6 = "  sl  local_address                         remote_address                        st\n\
            0: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:D431 01\n";
        let l6: SocketAddr = "[::1]:8080".parse().unwrap();
        assert_eq!(count_tcp(v6, &[l6]), 1);
    }

    fn tcp_accept_queue(text: &str, l: &SocketAddr) -> usize {
        tcp_rows(text)
            .filter(|(port, row)| *port == l.port() && row.is_listener(l))
            .map(|(_, row)| row.rx_queue)
            .sum()
    }

    #[test]
    fn tcp_listener_rx_queue_is_the_accept_queue() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue\n\
            0: 0100007F:1F90 00000000:0000 0A 00000000:00000003 00:00000000\n\
            1: 0100007F:1F90 0100007F:D431 01 00000000:00000010 00:00000000\n";
        let l: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(tcp_accept_queue(text, &l), 3);
        let other: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        assert_eq!(tcp_accept_queue(text, &other), 0);
    }

    #[test]
    fn counts_a_real_connection_on_a_unix_socket() {
        let dir = std::env::temp_dir().join(format!("emperor-conns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let _ = std::fs::remove_file(&path);
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let spec = SocketAddrSpec::Unix(path.clone());
        assert_eq!(open_connections(&[&spec]).unwrap(), 0);
        let c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        assert_eq!(open_connections(&[&spec]).unwrap(), 1, "queued, not yet accepted");
        let (a, _) = l.accept().unwrap();
        assert_eq!(open_connections(&[&spec]).unwrap(), 1, "accepted");
        drop((a, c));
        assert_eq!(open_connections(&[&spec]).unwrap(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
