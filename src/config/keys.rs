//! The values of the `[emperor]` keys that are not about Docker or routes: `exec`, `env`, `chdir`,
//! `stop-*`, the socket options, `on-demand`, `idle`, `logto`, ... Each parser takes a trimmed,
//! non-empty value and gives the typed value or the message of the problem; the Docker keys reuse the
//! shared ones (`env`, sizes, booleans, host paths).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::IdleAction;

/// `chown-socket = user:group`, resolved to ids. `None` leaves that id unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// `base/rel` with `.` components dropped (no filesystem access, `..` kept: symlinks make
/// lexical `..` removal wrong).
pub(super) fn resolve(base: &Path, rel: &Path) -> PathBuf {
    base.join(rel).components().collect()
}

pub(super) fn parse_exec(value: &str) -> Result<Vec<String>, String> {
    if value.contains('\0') {
        return Err("command contains a nul byte".to_owned());
    }
    match shlex::split(value) {
        None => Err("unbalanced quotes or trailing backslash".to_owned()),
        Some(argv) if argv.first().is_none_or(String::is_empty) => Err("empty command".to_owned()),
        Some(argv) => Ok(argv),
    }
}

pub(super) fn parse_env(value: &str) -> Result<(String, String), String> {
    let Some((k, v)) = value.split_once('=') else {
        return Err("expected NAME=VALUE".to_owned());
    };
    if k.is_empty() {
        return Err("variable name is empty".to_owned());
    }
    if k.chars().any(char::is_whitespace) {
        return Err(format!("variable name \"{k}\" contains whitespace"));
    }
    if value.contains('\0') {
        return Err("contains a nul byte".to_owned());
    }
    Ok((k.to_owned(), v.to_owned()))
}

pub(super) fn parse_chdir(value: &str, vassals_dir: &Path) -> Result<PathBuf, String> {
    if value.contains('\0') {
        return Err("path contains a nul byte".to_owned());
    }
    let path = Path::new(value);
    Ok(if path.is_relative() {
        resolve(vassals_dir, path)
    } else {
        path.to_path_buf()
    })
}

/// `SIGTERM`, `TERM`, `term` or a number such as `15`.
pub(super) fn parse_signal(value: &str) -> Result<Signal, String> {
    if value.bytes().all(|b| b.is_ascii_digit()) {
        let n: i32 = value.parse().map_err(|_| "not a signal number".to_owned())?;
        return Signal::try_from(n).map_err(|_| format!("{n} is not a signal number"));
    }
    let upper = value.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&full).map_err(|_| "unknown signal".to_owned())
}

/// Seconds, integer or decimal (`2`, `0.5`); no sign, exponent, `inf` or `nan`.
pub(super) fn parse_timeout(value: &str) -> Result<Duration, String> {
    parse_seconds(value, "timeout")
}

/// Seconds as for [`parse_timeout`]; `what` names the value in messages.
pub(super) fn parse_seconds(value: &str, what: &str) -> Result<Duration, String> {
    let digits = value.bytes().filter(u8::is_ascii_digit).count();
    let dots = value.bytes().filter(|b| *b == b'.').count();
    if digits == 0 || dots > 1 || digits + dots != value.len() {
        return Err("expected seconds, such as 10 or 0.5".to_owned());
    }
    let secs: f64 = value
        .parse()
        .map_err(|_| "expected seconds, such as 10 or 0.5".to_owned())?;
    let timeout = Duration::try_from_secs_f64(secs).map_err(|_| format!("{what} is too large"))?;
    if timeout.is_zero() {
        return Err(format!("{what} must be greater than 0"));
    }
    Ok(timeout)
}

/// Octal `660` or `0660`, at most `7777`.
pub(super) fn parse_mode(value: &str) -> Result<u32, String> {
    if !value.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err("expected an octal mode such as 660".to_owned());
    }
    match u32::from_str_radix(value, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err("mode is above 7777".to_owned()),
    }
}

/// `user`, `user:group` or `:group`; numeric ids are taken as they are, names must exist in
/// /etc/passwd or /etc/group (see `lookup_in_file`).
pub fn parse_owner(value: &str) -> Result<Owner, String> {
    let (user, group) = match value.split_once(':') {
        Some((user, group)) => (user.trim(), Some(group.trim())),
        None => (value, None),
    };
    if group == Some("") {
        return Err("empty group after ':'".to_owned());
    }
    let uid = if user.is_empty() {
        None
    } else {
        Some(lookup_user(user)?)
    };
    let gid = group.map(lookup_group).transpose()?;
    Ok(Owner { uid, gid })
}

fn numeric_id(name: &str, what: &str) -> Option<Result<u32, String>> {
    if !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(name.parse().map_err(|_| format!("{what} id {name} is out of range")))
}

fn lookup_user(name: &str) -> Result<u32, String> {
    if let Some(id) = numeric_id(name, "user") {
        return id;
    }
    match lookup_in_file(Path::new("/etc/passwd"), name)? {
        Some(id) => Ok(id),
        None => Err(format!("unknown user \"{name}\"")),
    }
}

fn lookup_group(name: &str) -> Result<u32, String> {
    if let Some(id) = numeric_id(name, "group") {
        return id;
    }
    match lookup_in_file(Path::new("/etc/group"), name)? {
        Some(id) => Ok(id),
        None => Err(format!("unknown group \"{name}\"")),
    }
}

/// The id of `name` in a passwd- or group-format file (the files, never NSS: see [`crate::sys::users`]).
fn lookup_in_file(file: &Path, name: &str) -> Result<Option<u32>, String> {
    crate::sys::users::id_of(file, name)
}

pub(super) fn parse_backlog(value: &str) -> Result<u32, String> {
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected a number from 1 to 65535".to_owned());
    }
    match value.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n),
        _ => Err("expected a number from 1 to 65535".to_owned()),
    }
}

pub(super) fn check_no_control(value: &str, what: &str) -> Result<(), String> {
    if value.chars().any(char::is_control) {
        return Err(format!("{what} contains a control character"));
    }
    Ok(())
}

/// A path on the host: relative to the vassals dir unless absolute.
pub(super) fn parse_host_path(value: &str, vassals_dir: &Path) -> Result<PathBuf, String> {
    check_no_control(value, "path")?;
    let path = Path::new(value);
    Ok(if path.is_relative() {
        resolve(vassals_dir, path)
    } else {
        path.to_path_buf()
    })
}

/// Bytes: digits with an optional binary `k`/`m`/`g` suffix (either case).
pub(crate) fn parse_size(value: &str) -> Result<i64, String> {
    let (digits, unit) = match value.as_bytes().last() {
        Some(b'k' | b'K') => (&value[..value.len() - 1], 1i64 << 10),
        Some(b'm' | b'M') => (&value[..value.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&value[..value.len() - 1], 1 << 30),
        _ => (value, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "\"{value}\" is not a number of bytes; expected an integer with an optional k, m or g \
             suffix (binary: 1k = 1024), such as 536870912 or 512m"
        ));
    }
    digits
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("{value} is too large"))
}

pub(super) fn parse_log_maxsize(value: &str) -> Result<u64, String> {
    match parse_size(value)? {
        0 => Err("must be more than 0 bytes".to_owned()),
        n => Ok(n as u64),
    }
}

pub(super) fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err("expected true, false, 1, 0, yes or no".to_owned()),
    }
}

pub(super) fn parse_idle_action(value: &str) -> Result<IdleAction, String> {
    match value.to_ascii_lowercase().as_str() {
        "stop" => Ok(IdleAction::Stop),
        "pause" => Ok(IdleAction::Pause),
        _ => Err("expected stop or pause".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use nix::sys::signal::Signal;

    use super::*;
    use crate::config::tests::{err, ok, one, problems, tcp, with_image};
    use crate::config::{IdleAction, SocketAddrSpec, SocketSpec, VassalConfig};

    #[test]
    fn every_key_valid() {
        let text = "[emperor]\n\
            socket = /run/app.sock\n\
            socket = name=web,127.0.0.1:8000\n\
            exec = /usr/bin/app --flag \"two words\" 'x y'\n\
            env = A=1\n\
            env = EMPTY=\n\
            env = B=x=y\n\
            chdir = app\n\
            stop-signal = INT\n\
            stop-timeout = 2.5\n\
            chmod-socket = 0660\n\
            chown-socket = root:root\n\
            listen = 128\n";
        let c = ok(text);
        assert_eq!(
            c.sockets,
            vec![
                SocketSpec {
                    name: None,
                    addr: SocketAddrSpec::Unix("/run/app.sock".into())
                },
                SocketSpec {
                    name: Some("web".into()),
                    addr: tcp("127.0.0.1:8000")
                },
            ]
        );
        assert_eq!(
            c.exec,
            Some(vec![
                "/usr/bin/app".into(),
                "--flag".into(),
                "two words".into(),
                "x y".into()
            ])
        );
        assert_eq!(
            c.env,
            vec![
                ("A".into(), "1".into()),
                ("EMPTY".into(), "".into()),
                ("B".into(), "x=y".into())
            ]
        );
        assert_eq!(c.chdir, Some(PathBuf::from("/srv/vassals.d/app")));
        assert_eq!(c.stop_signal, Some(Signal::SIGINT));
        assert_eq!(c.stop_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(c.chmod_socket, Some(0o660));
        assert_eq!(
            c.chown_socket,
            Some(Owner {
                uid: Some(0),
                gid: Some(0)
            })
        );
        assert_eq!(c.listen, Some(128));
        assert_eq!(c.text, text);
    }

    #[test]
    fn single_values_valid() {
        type Check = fn(&VassalConfig) -> bool;
        let cases: &[(&str, Check)] = &[
            ("stop-signal = SIGTERM", |c| c.stop_signal == Some(Signal::SIGTERM)),
            ("stop-signal = term", |c| c.stop_signal == Some(Signal::SIGTERM)),
            ("stop-signal = sigquit", |c| c.stop_signal == Some(Signal::SIGQUIT)),
            ("stop-signal = 15", |c| c.stop_signal == Some(Signal::SIGTERM)),
            ("stop-timeout = 2", |c| c.stop_timeout == Some(Duration::from_secs(2))),
            ("stop-timeout = 0.5", |c| {
                c.stop_timeout == Some(Duration::from_millis(500))
            }),
            ("chmod-socket = 660", |c| c.chmod_socket == Some(0o660)),
            ("chmod-socket = 7777", |c| c.chmod_socket == Some(0o7777)),
            ("chown-socket = root", |c| {
                c.chown_socket
                    == Some(Owner {
                        uid: Some(0),
                        gid: None,
                    })
            }),
            ("chown-socket = :root", |c| {
                c.chown_socket
                    == Some(Owner {
                        uid: None,
                        gid: Some(0),
                    })
            }),
            ("chown-socket = 1000:2000", |c| {
                c.chown_socket
                    == Some(Owner {
                        uid: Some(1000),
                        gid: Some(2000),
                    })
            }),
            ("chown-socket = :65534", |c| {
                c.chown_socket
                    == Some(Owner {
                        uid: None,
                        gid: Some(65534),
                    })
            }),
            ("listen = 1", |c| c.listen == Some(1)),
            ("listen = 65535", |c| c.listen == Some(65535)),
            ("socket-nonblocking = true", |c| c.socket_nonblocking),
            ("socket-nonblocking = no", |c| !c.socket_nonblocking),
            ("listen = 10", |c| !c.socket_nonblocking),
            ("chdir = /abs/dir", |c| c.chdir == Some(PathBuf::from("/abs/dir"))),
            ("chdir = ./rel", |c| {
                c.chdir == Some(PathBuf::from("/srv/vassals.d/rel"))
            }),
            ("exec = app", |c| c.exec == Some(vec!["app".to_owned()])),
            ("env = K=", |c| c.env == vec![("K".to_owned(), String::new())]),
            ("   exec   =   spaced   ", |c| c.exec == Some(vec!["spaced".to_owned()])),
            ("exec: colon-separated", |c| {
                c.exec == Some(vec!["colon-separated".to_owned()])
            }),
        ];
        for (line, check) in cases {
            let c = ok(&one(line));
            assert!(check(&c), "{line}: got {c:?}");
        }
    }

    #[test]
    fn single_values_invalid() {
        let cases: &[(&str, &str)] = &[
            ("socket =", "empty value"),
            ("exec =", "empty value"),
            ("exec = \"unbalanced", "unbalanced quotes or trailing backslash"),
            ("exec = ''", "empty command"),
            ("env = NOEQUALS", "expected NAME=VALUE"),
            ("env = =v", "variable name is empty"),
            ("env = A B=v", "variable name \"A B\" contains whitespace"),
            ("chdir =", "empty value"),
            ("stop-signal = SIGNOPE", "unknown signal"),
            ("stop-signal = 999", "999 is not a signal number"),
            ("stop-signal = 0", "0 is not a signal number"),
            ("stop-timeout = 0", "timeout must be greater than 0"),
            ("stop-timeout = 0.0", "timeout must be greater than 0"),
            ("stop-timeout = -1", "expected seconds, such as 10 or 0.5"),
            ("stop-timeout = 1e3", "expected seconds, such as 10 or 0.5"),
            ("stop-timeout = inf", "expected seconds, such as 10 or 0.5"),
            ("stop-timeout = 1.2.3", "expected seconds, such as 10 or 0.5"),
            ("stop-timeout = 10s", "expected seconds, such as 10 or 0.5"),
            ("chmod-socket = 0x1ff", "expected an octal mode such as 660"),
            ("chmod-socket = 680", "expected an octal mode such as 660"),
            ("chmod-socket = 17777", "mode is above 7777"),
            ("chmod-socket = 777777777777777777", "mode is above 7777"),
            ("chown-socket = no-such-user-xyz", "unknown user \"no-such-user-xyz\""),
            (
                "chown-socket = root:no-such-group-xyz",
                "unknown group \"no-such-group-xyz\"",
            ),
            ("chown-socket = root:", "empty group after ':'"),
            ("chown-socket = :", "empty group after ':'"),
            ("chown-socket = 99999999999", "user id 99999999999 is out of range"),
            ("listen = 0", "expected a number from 1 to 65535"),
            ("listen = 65536", "expected a number from 1 to 65535"),
            ("listen = -5", "expected a number from 1 to 65535"),
            ("listen = many", "expected a number from 1 to 65535"),
            ("socket-nonblocking = often", "expected true, false, 1, 0, yes or no"),
            (
                "socket = garbage",
                "not a unix socket path (containing '/' or ending in .sock), @abstract name or host:port",
            ),
        ];
        for (line, message) in cases {
            let e = err(&one(line));
            assert_eq!(e.problems.len(), 1, "{line}: {e}");
            let p = &e.problems[0];
            assert_eq!(p.message, *message, "{line}");
            assert_eq!(p.line, Some(2), "{line}");
            let (key, _) = line.split_once(['=', ':']).unwrap_or((line, ""));
            assert_eq!(p.key.as_deref(), Some(key.trim()), "{line}");
        }
    }

    #[test]
    fn owner_names_come_from_passwd_and_group_files() {
        let dir = std::env::temp_dir().join(format!("emperor-config-owner-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.join("passwd");
        std::fs::write(
            &file,
            "# comment\nroot:x:0:0::/root:/bin/sh\nweb:x:33:33::/:/bin/false\nbad:x:nope:1::/:\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(lookup_in_file(&file, "web"), Ok(Some(33)));
        assert_eq!(lookup_in_file(&file, "root"), Ok(Some(0)));
        assert_eq!(lookup_in_file(&file, "we"), Ok(None));
        assert_eq!(lookup_in_file(&file, "x"), Ok(None));
        let e = lookup_in_file(&file, "bad").err().unwrap_or_default();
        assert!(e.ends_with("\"bad\" has an invalid id \"nope\""), "{e}");
        let e = lookup_in_file(&dir.join("missing"), "web").err().unwrap_or_default();
        assert!(e.starts_with("cannot read "), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
        // The real files: root exists on every system this runs on; an unknown name is an error
        // (through NSS it crashed the static test binary).
        assert_eq!(
            parse_owner("root:root"),
            Ok(Owner {
                uid: Some(0),
                gid: Some(0)
            })
        );
        assert_eq!(
            parse_owner("no-such-user-xyz").err().as_deref(),
            Some("unknown user \"no-such-user-xyz\"")
        );
    }

    #[test]
    fn on_demand_and_idle() {
        let c = ok("[emperor]\nsocket = /run/a.sock\n");
        assert_eq!((c.on_demand, c.idle, c.idle_action), (false, None, IdleAction::Stop));
        assert!(c.routes.is_empty());
        for (value, expected) in [
            ("true", true),
            ("YES", true),
            ("1", true),
            ("no", false),
            ("False", false),
            ("0", false),
        ] {
            assert_eq!(ok(&one(&format!("on-demand = {value}"))).on_demand, expected, "{value}");
        }
        let c = ok("[emperor]\non-demand = yes\nidle = 2.5\nidle-action = pause\n");
        assert!(c.on_demand);
        assert_eq!(c.idle, Some(Duration::from_millis(2500)));
        assert_eq!(c.idle_action, IdleAction::Pause);
        // Order in the file does not matter.
        let c = ok("[emperor]\nidle-action = Stop\nidle = 60\n");
        assert_eq!(
            (c.idle, c.idle_action),
            (Some(Duration::from_secs(60)), IdleAction::Stop)
        );
        // Docker vassals take them too.
        let c = ok(&with_image("on-demand = true\nidle = 1\nidle-action = pause"));
        assert!(c.on_demand && c.docker.is_some());
    }

    #[test]
    fn on_demand_and_idle_invalid() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "on-demand = maybe",
                "on-demand",
                "expected true, false, 1, 0, yes or no",
            ),
            ("idle = 0", "idle", "idle must be greater than 0"),
            ("idle = 0.0", "idle", "idle must be greater than 0"),
            ("idle = -3", "idle", "expected seconds, such as 10 or 0.5"),
            ("idle = 5m", "idle", "expected seconds, such as 10 or 0.5"),
            ("idle = 1e9999", "idle", "expected seconds, such as 10 or 0.5"),
            ("idle-action = freeze", "idle-action", "expected stop or pause"),
        ];
        for (line, key, message) in cases {
            // idle-action is checked with an idle line, so only its own problem shows.
            let text = if *key == "idle-action" {
                format!("[emperor]\n{line}\nidle = 1\n")
            } else {
                one(line)
            };
            let e = err(&text);
            assert_eq!(problems(&e), vec![(Some(2), Some(*key), *message)], "{line}");
        }
        let e = err("[emperor]\nsocket = /run/a.sock\nidle-action = pause\n");
        assert_eq!(
            problems(&e),
            vec![(
                Some(3),
                Some("idle-action"),
                "needs idle: the action is taken after \"idle = <seconds>\" without a connection"
            )]
        );
        // An invalid idle has its own problem; idle-action adds none.
        let e = err("[emperor]\nidle = never\nidle-action = stop\n");
        assert_eq!(
            problems(&e),
            vec![(Some(2), Some("idle"), "expected seconds, such as 10 or 0.5")]
        );
    }

    #[test]
    fn prewarm() {
        const BASE: &str = "[emperor]\non-demand = true\nidle = 1\nidle-action = pause\n";
        assert!(!ok(BASE).prewarm, "off by default");
        let c = ok(&format!("{BASE}prewarm = yes\n"));
        assert!(c.prewarm && c.on_demand);
        assert!(!ok(&format!("{BASE}prewarm = false\n")).prewarm);
        // Order in the file does not matter; Docker vassals take it too.
        assert!(ok("[emperor]\nprewarm = 1\nidle-action = pause\nidle = 3\non-demand = true\n").prewarm);
        assert!(
            ok(&with_image(
                "on-demand = true\nidle = 1\nidle-action = pause\nprewarm = true"
            ))
            .prewarm
        );
        // Off, it needs nothing.
        assert!(!ok("[emperor]\nprewarm = no\n").prewarm);
    }

    #[test]
    fn prewarm_invalid() {
        let why = "a prewarmed vassal is started before its first connection and waits for it paused";
        for (text, line, needs) in [
            ("on-demand = true\nidle = 1\nprewarm = true\n", 4, "idle-action = pause"),
            (
                "on-demand = true\nidle = 1\nidle-action = stop\nprewarm = true\n",
                5,
                "idle-action = pause",
            ),
            ("prewarm = true\nidle = 1\nidle-action = pause\n", 2, "on-demand = true"),
            (
                "on-demand = false\nidle = 1\nidle-action = pause\nprewarm = true\n",
                5,
                "on-demand = true",
            ),
            (
                "socket = /run/a.sock\nprewarm = true\n",
                3,
                "on-demand = true and idle-action = pause",
            ),
        ] {
            let e = err(&format!("[emperor]\n{text}"));
            let message = format!("needs {needs}: {why}");
            assert_eq!(
                problems(&e),
                vec![(Some(line), Some("prewarm"), message.as_str())],
                "{text}"
            );
        }
        let e = err("[emperor]\nprewarm = sometimes\n");
        assert_eq!(
            problems(&e),
            vec![(Some(2), Some("prewarm"), "expected true, false, 1, 0, yes or no")]
        );
        // A key that is there but invalid has its own problem; prewarm adds none for it.
        let e = err("[emperor]\non-demand = maybe\nidle = 1\nidle-action = pause\nprewarm = true\n");
        assert_eq!(
            problems(&e),
            vec![(Some(2), Some("on-demand"), "expected true, false, 1, 0, yes or no")]
        );
        let e = err("[emperor]\non-demand = true\nidle-action = pause\nprewarm = true\n");
        let keys: Vec<_> = problems(&e).into_iter().map(|(_, key, _)| key).collect();
        assert_eq!(keys, vec![Some("idle-action")], "only its \"needs idle\": {e}");
    }

    #[test]
    fn logto_and_log_maxsize() {
        let c = ok("[emperor]\nexec = app\n");
        assert_eq!((c.logto, c.log_maxsize), (None, None));
        let c = ok("[emperor]\nlog-maxsize = 512k\nlogto = logs/app.log\n");
        assert_eq!(c.logto, Some(PathBuf::from("/srv/vassals.d/logs/app.log")));
        assert_eq!(c.log_maxsize, Some(512 * 1024));
        let c = ok("[emperor]\nlogto = /var/log/app.log\nlog-maxsize = 100\n");
        assert_eq!(c.logto, Some(PathBuf::from("/var/log/app.log")));
        assert_eq!(c.log_maxsize, Some(100));
        let c = ok(&with_image("logto = ./a.log\nlog-maxsize = 1G"));
        assert_eq!(c.logto, Some(PathBuf::from("/srv/vassals.d/a.log")));
        assert_eq!(c.log_maxsize, Some(1 << 30));
    }

    #[test]
    fn logto_and_log_maxsize_invalid() {
        let e = err("[emperor]\nlogto = a.log\nlog-maxsize = 0\n");
        assert_eq!(
            problems(&e),
            vec![(Some(3), Some("log-maxsize"), "must be more than 0 bytes")]
        );
        let e = err("[emperor]\nlogto = a.log\nlog-maxsize = 10x\n");
        assert_eq!(problems(&e).len(), 1);
        assert!(problems(&e)[0].2.starts_with("\"10x\" is not a number of bytes"), "{e}");
        let e = err("[emperor]\nexec = app\nlog-maxsize = 1m\n");
        assert_eq!(
            problems(&e),
            vec![(
                Some(3),
                Some("log-maxsize"),
                "needs logto: only a vassal's own log file is rotated (Docker's copy is bounded already)"
            )]
        );
        let e = err("[emperor]\nlogto = a\u{1}b.log\n");
        assert_eq!(problems(&e).len(), 1, "{e}");
        assert_eq!(problems(&e)[0].1, Some("logto"));
    }
}
