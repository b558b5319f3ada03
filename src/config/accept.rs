//! `accept` and `max-connections`: a vassal whose program runs once per connection (inetd's `nowait`,
//! systemd's `Accept=yes` and `MaxConnections=`; the role is `crate::accept`). Each line is parsed as it
//! comes; what `accept = true` needs (a socket, a program, the shim) is checked once every line is read.

use super::keys::{parse_backlog, parse_bool};
use super::raw::RawEntry;
use super::{Problem, VassalConfig};

/// Connections served at once when the file sets no `max-connections` (systemd's default is 64; an
/// `sshd -i` costs a few MiB each, and more clients simply wait in the backlog).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 32;

/// The two keys as read so far, with their lines.
#[derive(Default)]
pub(super) struct AcceptKeys<'a> {
    accept: Option<(&'a RawEntry, bool)>,
    max: Option<(&'a RawEntry, Option<u32>)>,
}

impl<'a> AcceptKeys<'a> {
    /// Reads an `accept` or `max-connections` line.
    pub fn add(&mut self, entry: &'a RawEntry) -> Result<(), String> {
        if entry.key == "accept" {
            let on = parse_bool(&entry.value)?;
            self.accept = Some((entry, on));
        } else {
            // Kept even when invalid, so that its own problem is the only one.
            let n = parse_backlog(&entry.value);
            self.max = Some((entry, n.as_ref().ok().copied()));
            n?;
        }
        Ok(())
    }

    /// Sets [`VassalConfig::accept`] once every line is in (`docker` decided), or says why it cannot be.
    /// `socket_invalid`: a socket line had its own problem, so a missing socket is not one more.
    pub fn finish(self, config: &mut VassalConfig, socket_invalid: bool, problems: &mut Vec<Problem>) {
        if let Some((entry, _)) = self.max
            && self.accept.is_none()
        {
            problems.push(Problem::for_entry(
                entry,
                "needs accept = true: it limits how many connections are served at once, one program each",
            ));
        }
        let Some((entry, true)) = self.accept else { return };
        let mut needs = |what: &str| problems.push(Problem::for_entry(entry, format!("needs {what}")));
        if config.sockets.is_empty() && !socket_invalid {
            needs("a socket: the connections to accept come from the vassal's sockets");
        }
        let image_command = config.docker.is_some() && !config.uwsgi_section;
        if config.exec.is_none() && !image_command {
            needs(
                "exec: the program run once per connection (without exec the vassal runs uWSGI, which accepts by itself)",
            );
        }
        if config.docker.as_ref().is_some_and(|d| !d.shim) {
            needs("the shim (docker-shim = true): it runs the program once per connection inside the container");
        }
        if config.socket_nonblocking {
            needs(
                "blocking sockets (no socket-nonblocking = true): the accept role waits in accept for the next client",
            );
        }
        config.accept = Some(self.max.and_then(|(_, n)| n).unwrap_or(DEFAULT_MAX_CONNECTIONS));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{err, ok, problems, with_image};

    #[test]
    fn accept_and_max_connections() {
        let base = "[emperor]\nsocket = 127.0.0.1:2222\nexec = /usr/sbin/sshd -i -e\n";
        assert_eq!(ok(base).accept, None);
        assert_eq!(ok(&format!("{base}accept = false\n")).accept, None);
        assert_eq!(
            ok(&format!("{base}accept = yes\n")).accept,
            Some(DEFAULT_MAX_CONNECTIONS)
        );
        assert_eq!(
            ok(&format!("{base}max-connections = 3\naccept = true\n")).accept,
            Some(3)
        );
        // A Docker vassal may run its image's own command per connection.
        let c = ok(&with_image(
            "socket = 127.0.0.1:2222\naccept = 1\nmax-connections = 65535",
        ));
        assert_eq!(c.accept, Some(65535));
        // Both change the process, so both change the [emperor] hash (a restart, not an in-place reload).
        assert_ne!(
            ok(base).emperor_hash,
            ok(&format!("{base}accept = true\n")).emperor_hash
        );
        assert_ne!(
            ok(&format!("{base}accept = true\nmax-connections = 1\n")).emperor_hash,
            ok(&format!("{base}accept = true\nmax-connections = 2\n")).emperor_hash
        );
    }

    /// The one problem of `text`: (line, key, message).
    fn only_problem(text: &str) -> (Option<usize>, String, String) {
        let e = err(text);
        let p = problems(&e);
        assert_eq!(p.len(), 1, "{text:?}: {e}");
        (p[0].0, p[0].1.unwrap_or_default().to_owned(), p[0].2.to_owned())
    }

    #[test]
    fn what_accept_needs() {
        let sock = "socket = /run/a.sock\n";
        let cases: &[(&str, usize, &str, &str)] = &[
            (
                "[emperor]\nexec = cat\naccept = true\n",
                3,
                "accept",
                "needs a socket: the connections to accept come from the vassal's sockets",
            ),
            (
                &format!("[emperor]\n{sock}accept = true\n[uwsgi]\nmaster = 1\n"),
                3,
                "accept",
                "needs exec: the program run once per connection (without exec the vassal runs uWSGI, which accepts \
                 by itself)",
            ),
            (
                &with_image(&format!("{sock}accept = true\n[uwsgi]\nmaster = 1")),
                4,
                "accept",
                "needs exec: the program run once per connection (without exec the vassal runs uWSGI, which accepts \
                 by itself)",
            ),
            (
                &with_image(&format!("{sock}accept = true\ndocker-shim = false")),
                4,
                "accept",
                "needs the shim (docker-shim = true): it runs the program once per connection inside the container",
            ),
            (
                &format!("[emperor]\n{sock}exec = cat\nsocket-nonblocking = true\naccept = true\n"),
                5,
                "accept",
                "needs blocking sockets (no socket-nonblocking = true): the accept role waits in accept for the next \
                 client",
            ),
            (
                &format!("[emperor]\n{sock}exec = cat\nmax-connections = 4\n"),
                4,
                "max-connections",
                "needs accept = true: it limits how many connections are served at once, one program each",
            ),
            // A bad value is its own one problem; so is a bad socket line.
            (
                &format!("[emperor]\n{sock}exec = cat\naccept = maybe\n"),
                4,
                "accept",
                "expected true, false, 1, 0, yes or no",
            ),
            (
                &format!("[emperor]\n{sock}exec = cat\naccept = true\nmax-connections = 0\n"),
                5,
                "max-connections",
                "expected a number from 1 to 65535",
            ),
            (
                "[emperor]\nsocket = nowhere\nexec = cat\naccept = true\n",
                2,
                "socket",
                "not a unix socket path (containing '/' or ending in .sock), @abstract name or host:port",
            ),
        ];
        for (text, line, key, message) in cases {
            assert_eq!(
                only_problem(text),
                (Some(*line), key.to_string(), message.to_string()),
                "{text:?}"
            );
        }
    }
}
