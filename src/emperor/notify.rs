//! systemd's notify protocol (`sd_notify(3)`), without libsystemd: one datagram per message to the
//! unix socket named by `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
//!
//! The emperor sends `READY=1` once the first scan's vassals have all been started (every actor has
//! handled its first config, so each valid vassal's process or bridge was spawned), `STATUS=` with the
//! vassal counts when they change (at most once per [`STATUS_INTERVAL`]), and `STOPPING=1` when it
//! begins to shut down. Vassals never see `NOTIFY_SOCKET` (`protocol::SCRUBBED_ENV`).

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use log::{debug, warn};

/// The shortest time between two `STATUS=` messages.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
    shown: String,
}

impl Notifier {
    /// `None` when not run under systemd (no `NOTIFY_SOCKET`) or when the variable is unusable.
    pub fn from_env() -> Option<Notifier> {
        let var = std::env::var_os("NOTIFY_SOCKET")?;
        let shown = var.to_string_lossy().into_owned();
        let addr = {
            use std::os::unix::ffi::OsStrExt;
            let bytes = var.as_bytes();
            match bytes.strip_prefix(b"@") {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    SocketAddr::from_abstract_name(name)
                }
                None => SocketAddr::from_pathname(std::path::Path::new(&var)),
            }
        };
        let made = addr.and_then(|a| Ok((UnixDatagram::unbound()?, a)));
        match made {
            Ok((sock, addr)) => {
                let _ = sock.set_nonblocking(true);
                Some(Notifier { sock, addr, shown })
            }
            Err(e) => {
                warn!("NOTIFY_SOCKET={shown}: {e}; not notifying systemd");
                None
            }
        }
    }

    /// Sends one message (`KEY=VALUE` lines); a failure is logged, never fatal.
    pub fn send(&self, msg: &str) {
        debug!("notify: {msg}");
        if let Err(e) = self.sock.send_to_addr(msg.as_bytes(), &self.addr) {
            warn!("cannot notify systemd at {}: {e}", self.shown);
        }
    }
}

/// The `STATUS=` text for the given state names.
pub fn status_line<'a>(states: impl Iterator<Item = &'a str>) -> String {
    let (mut n, mut running, mut waiting, mut throttled, mut invalid) = (0, 0, 0, 0, 0);
    for s in states {
        n += 1;
        match s {
            "waiting" | "held" => waiting += 1,
            "throttled" => throttled += 1,
            "invalid" => invalid += 1,
            "done" => n -= 1,
            _ => running += 1,
        }
    }
    format!("{n} vassals: {running} running, {waiting} waiting, {throttled} throttled, {invalid} invalid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        let s = [
            "running",
            "starting",
            "waiting",
            "throttled",
            "invalid",
            "paused",
            "done",
        ];
        assert_eq!(
            status_line(s.into_iter()),
            "6 vassals: 3 running, 1 waiting, 1 throttled, 1 invalid"
        );
    }
}
