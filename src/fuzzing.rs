//! The fuzz targets' entry points: one function per input an attacker or a broken peer controls, each
//! taking arbitrary bytes and panicking only when the code under test is wrong.
//!
//! They live in the crate, not in `fuzz/`, so that two callers share them: the cargo-fuzz targets
//! (nightly, `fuzz/fuzz_targets/*.rs`, one line each) and `tests/fuzz_corpora.rs`, which replays the
//! committed corpora on stable, so CI keeps every input the fuzzer found interesting without nightly.
//! Each entry calls the function the socket or file code itself calls (factored out of it for this),
//! and checks what must hold whatever the input: a message that reaches a log or a terminal has no raw
//! control character, and what the emperor writes into nginx's configuration is only what its grammar
//! allows.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{self, ConfigError, VassalConfig};
use crate::emperor::fsm::{Action, Event, Fsm, Params};
use crate::emperor::spawn::Exit;
use crate::protocol::{self, VassalMsg};
use crate::proxy_socket;

/// The vassals directory the parsed files pretend to live in.
const DIR: &str = "/srv/vassals";

/// A vassal file, as the emperor reads one from its directory.
pub fn config(data: &[u8]) {
    let path = Path::new(DIR).join("fuzz.ini");
    match config::from_bytes("fuzz.ini", &path, data.to_vec(), Path::new(DIR)) {
        Ok(cfg) => {
            assert_eq!(
                cfg.text.as_bytes(),
                data,
                "the vassal's own sections are passed on untouched"
            );
            check_routes(&cfg);
        }
        Err(e) => check_error(&e),
    }
}

/// `domains` and `domain` lines, in two vassals, up to the nginx include file they end up in. Each
/// input line is one line of `a.ini`, or of `b.ini` if it starts with `2`; then `+` makes it a
/// `domain` line instead of a `domains` one.
pub fn domains(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    const HEAD: &str = "[emperor]\nexec = /bin/true\nsocket = /run/x.sock\nsocket = name=admin,127.0.0.1:9001\n\
                        socket = name=abs,@x-abstract\n";
    let mut files = [HEAD.to_owned(), HEAD.to_owned()];
    for line in text.lines() {
        let (file, line) = match line.strip_prefix('2') {
            Some(rest) => (&mut files[1], rest),
            None => (&mut files[0], line),
        };
        let (key, value) = match line.strip_prefix('+') {
            Some(rest) => ("domain", rest),
            None => ("domains", line),
        };
        file.push_str(&format!("{key} = {value}\n"));
    }
    let mut valid: Vec<(String, Arc<VassalConfig>)> = Vec::new();
    for (name, file) in ["a.ini", "b.ini"].into_iter().zip(files) {
        match config::parse(name, &Path::new(DIR).join(name), &file, Path::new(DIR)) {
            Ok(cfg) => {
                check_routes(&cfg);
                valid.push((name.to_owned(), Arc::new(cfg)));
            }
            Err(e) => check_error(&e),
        }
    }
    let table = crate::emperor::routes::table(valid.iter().map(|(n, c)| (n, c)));
    let include = crate::emperor::routes::render(Path::new(DIR), Path::new("/etc/nginx/emperor.conf"), &table);
    assert!(
        !include.chars().any(|c| c.is_control() && c != '\n'),
        "a control character in the nginx include: {include:?}"
    );
}

/// What a Redis server hands `emperor front`: the keys under the prefix and their values, up to the
/// include file. Records are split at 0x1e; a record is `key` 0x1f `value`, or a value alone under a
/// made-up key.
pub fn front(data: &[u8]) {
    use crate::fleet::front_map;
    let values: Vec<(String, Vec<u8>)> = data
        .split(|b| *b == 0x1e)
        .enumerate()
        .map(|(i, record)| match record.iter().position(|b| *b == 0x1f) {
            Some(at) => (
                String::from_utf8_lossy(&record[..at]).into_owned(),
                record[at + 1..].to_vec(),
            ),
            None => (format!("/beachhead/k{i}"), record.to_vec()),
        })
        .collect();
    let plan = front_map::plan(&values);
    for said in plan
        .skipped
        .iter()
        .flat_map(|s| [&s.key, &s.why])
        .chain(plan.contests.iter().flat_map(|c| &c.ids))
    {
        assert!(
            !said.chars().any(char::is_control),
            "a control character in a log line: {said:?}"
        );
    }
    let include = front_map::render(
        &plan,
        Path::new("/etc/nginx/fleet.conf"),
        "redis://127.0.0.1:6379/0",
        "/beachhead/",
    );
    assert!(
        !include.chars().any(|c| c.is_control() && c != '\n'),
        "a control character in the nginx include: {include:?}"
    );
    // Outside comments, only what nginx's grammar allows: host names, upstream names, addresses.
    for line in include
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        assert!(
            line.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b" .-_*:[]{};\\$\"".contains(&b)),
            "an unexpected character in the include's line {line:?}"
        );
    }
}

/// The frame a container's process sends on the proxy socket: the header checks alone, then the real
/// receiver over a socketpair. Byte 0 is the most fds the receiver accepts, byte 1 how many fds go
/// with the payload (0 to 3), the rest is the payload.
pub fn proxy_frame(data: &[u8]) {
    use std::io::IoSlice;
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::net::UnixStream;

    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

    let [max, nfds, payload @ ..] = data else { return };
    let (max, nfds) = (usize::from(*max), usize::from(*nfds % 4));
    let valid = payload.len() >= proxy_socket::FRAME_LEN
        && payload.starts_with(proxy_socket::MAGIC)
        && u32::from_ne_bytes(payload[13..17].try_into().expect("4 bytes")) as usize == nfds
        && nfds <= max;
    if let Some(frame) = payload.first_chunk::<{ proxy_socket::FRAME_LEN }>() {
        assert_eq!(proxy_socket::check_frame(frame, nfds, max).is_ok(), valid);
    }

    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    ours.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    if !payload.is_empty() {
        // Not `theirs` itself: in flight, it would keep the connection open and the receiver from
        // seeing the end of a short frame until its read timeout.
        static NULL: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
        let null = NULL.get_or_init(|| std::fs::File::open("/dev/null").expect("/dev/null"));
        let sent = [null.as_fd(); 3].map(|fd| fd.as_raw_fd());
        let rights = [ControlMessage::ScmRights(&sent[..nfds])];
        let cmsgs: &[ControlMessage] = if nfds == 0 { &[] } else { &rights };
        sendmsg::<()>(
            theirs.as_raw_fd(),
            &[IoSlice::new(payload)],
            cmsgs,
            MsgFlags::empty(),
            None,
        )
        .expect("sendmsg");
    }
    drop(theirs);
    match proxy_socket::recv_fds(&ours, max) {
        Ok(fds) => {
            assert!(valid, "a frame that breaks the format was accepted");
            assert_eq!(fds.len(), nfds);
        }
        Err(e) => assert!(!valid, "a valid frame was refused: {e}"),
    }
}

/// uWSGI's config framing, and the bytes a vassal writes on its control channel driving the state
/// machine as its actor would. Byte 0 picks the knobs; then each pair of bytes is one event (the first
/// says which, the second is its argument: the byte a vassal sent, an exit code, a pid) and how far the
/// clock moves before it.
pub fn protocol(data: &[u8]) {
    match protocol::config_frame(data) {
        Ok(frame) => {
            assert!(!data.is_empty() && data.len() <= usize::from(u16::MAX));
            assert_eq!(frame[0], 115, "modifier1");
            assert_eq!(usize::from(u16::from_le_bytes([frame[1], frame[2]])), data.len());
            assert_eq!(frame[3], 0, "modifier2");
            assert_eq!(&frame[4..], data);
        }
        Err(_) => assert!(data.is_empty() || data.len() > usize::from(u16::MAX)),
    }

    let Some((&knobs, script)) = data.split_first() else {
        return;
    };
    let bit = |n: u8| knobs & (1 << n) != 0;
    let mut fsm = Fsm::new(Params {
        throttle: Duration::from_millis(100),
        max_throttle: Duration::from_secs(3),
        heartbeat: Duration::from_secs(if bit(5) { 1 } else { 30 }),
        loyalty_time: Duration::from_secs(2),
        stop_timeout: Duration::from_secs(1),
        stop_signal: nix::sys::signal::Signal::SIGTERM,
        on_demand: bit(0),
        bridged: bit(1),
        idle_pause: bit(2),
        overlap: bit(3),
        ready_delay: Duration::from_millis(if bit(4) { 0 } else { 500 }),
        prewarm: bit(6),
    });
    let mut now = Instant::now();
    // Spawns asked for and not answered yet: the actor answers each with Spawned or SpawnFailed.
    let mut spawning = 0usize;
    for pair in script.chunks_exact(2) {
        let (op, arg) = (pair[0], pair[1]);
        now += Duration::from_millis(u64::from(op >> 5) * 100);
        let has_process = fsm.state().instance().is_some();
        let event = match op % 20 {
            0 => Event::Start,
            1..=5 if has_process => Event::Msg(VassalMsg::from(arg)),
            6 if spawning > 0 => Event::Spawned {
                pid: 100 + i32::from(arg),
                speaks: arg & 1 == 1,
            },
            7 if spawning > 0 => Event::SpawnFailed,
            8 if has_process => Event::Exited(Exit::Code(i32::from(arg))),
            9 if has_process => Event::Exited(Exit::Signal(nix::sys::signal::Signal::SIGKILL)),
            10 if has_process => Event::Rejected,
            11 => match fsm.deadline() {
                Some(at) => {
                    now = now.max(at);
                    Event::Timer
                }
                None => continue,
            },
            12 => Event::Reload { restart: arg & 1 == 1 },
            13 => Event::Remove,
            14 => Event::Shutdown,
            15 => Event::ClearThrottle,
            16 => Event::Activated,
            17 if has_process => Event::Idle,
            18 if fsm.previous().is_some() => Event::PreviousExited,
            19 => match arg % 4 {
                0 => Event::Hold,
                1 => Event::Release,
                2 => Event::Restart,
                _ if has_process => Event::Listening,
                _ => continue,
            },
            _ => continue,
        };
        if matches!(event, Event::Spawned { .. } | Event::SpawnFailed) {
            spawning -= 1;
        }
        let done = fsm.state().name() == "done";
        let actions = fsm.on_event(event, now);
        if done {
            assert_eq!(fsm.state().name(), "done", "done is final");
        }
        spawning += actions
            .iter()
            .filter(|a| matches!(a, Action::Spawn | Action::Overlap))
            .count();
        if actions.contains(&Action::Finish) {
            return;
        }
        // The actor answers a look for quiet at once: nothing open (Quiet), or nothing (busy).
        if actions.contains(&Action::CheckQuiet) && arg & 2 == 0 {
            fsm.on_event(Event::Quiet, now);
        }
    }
}

/// A request line on `--emperor-control`: as the server's reader cuts it (at most `MAX_LINE` bytes,
/// up to the first newline), then parsed.
pub fn control(data: &[u8]) {
    use crate::emperor::control::{MAX_LINE, parse_request, request_line};
    let sent = &data[..data.len().min(MAX_LINE as usize)];
    let sent = sent.iter().position(|&b| b == b'\n').map_or(sent, |at| &sent[..=at]);
    let Ok(line) = request_line(sent) else { return };
    assert!(!line.contains('\n'));
    match parse_request(&line) {
        Ok((verb, _, name)) => assert!(!name.is_empty() && ["restart", "stop", "start"].contains(&verb)),
        Err(message) => assert!(!message.contains('\n'), "one answer is one line: {message:?}"),
    }
}

/// What a client of `--mail-auth` sends (nginx, or whoever can connect), up to the answer and the log
/// line, with the logins routed against two fixed tenants and against none (the emperor starting).
pub fn mail_auth(data: &[u8]) {
    use crate::emperor::mail_auth::{Answer, Tenants, respond};
    static TENANTS: std::sync::OnceLock<Tenants> = std::sync::OnceLock::new();
    let tenants = TENANTS.get_or_init(|| {
        let files = [
            (
                "foo.ini",
                "socket = /run/foo.sock\nsocket = name=smtp,127.0.0.1:2525\nsocket = name=pop3,:1110\n\
                 domains = foo.test .sub.foo.test\n",
            ),
            ("bar.ini", "socket = [::]:2526\ndomains = *.bar.test bar.test\n"),
        ];
        let good = files
            .iter()
            .map(|(name, body)| {
                let text = format!("[emperor]\nexec = /bin/true\n{body}");
                let path = Path::new(DIR).join(name);
                let cfg = config::parse(name, &path, &text, Path::new(DIR)).expect("the fuzz tenants parse");
                (name.to_string(), Arc::new(cfg))
            })
            .collect();
        Tenants::new(&good)
    });
    for current in [None, Some(tenants)] {
        let (answer, log) = respond(current, data);
        let text = answer.render();
        assert!(text.len() < 1024, "nginx reads at most 1 KiB of answer: {text:?}");
        let head = text.strip_suffix("\r\n\r\n").expect("an answer ends its head");
        assert!(
            head.split("\r\n")
                .all(|line| !line.is_empty() && !line.chars().any(char::is_control)),
            "a header line split or smuggled: {text:?}"
        );
        assert!(
            !log.text().chars().any(char::is_control),
            "a control character in the log: {:?}",
            log.text()
        );
        if let Answer::Server(addr) = answer {
            assert!(current.is_some() && addr.ip().is_loopback(), "{addr} for {data:?}");
        }
    }
}

/// A request on `--emperor-metrics`, up to its answer; and the same bytes as a vassal's name and a
/// socket's address in a sample of the text format, which must read back whole and stay on its line.
pub fn metrics(data: &[u8]) {
    use crate::emperor::stats::exposition::{Def, Exposition, Kind};
    use crate::emperor::stats::metrics::{Reply, respond};
    let reply = respond(data);
    let doc = "# HELP x y\n# TYPE x gauge\nx 1\n";
    let text = String::from_utf8(reply.render(doc)).expect("an answer is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("an answer ends its head");
    assert!(
        head.split("\r\n")
            .all(|line| !line.is_empty() && !line.chars().any(char::is_control)),
        "a header line split or smuggled: {text:?}"
    );
    let length: usize = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|n| n.parse().ok())
        .expect("a Content-Length");
    match reply {
        Reply::Metrics { head: true } => assert!(body.is_empty() && length == doc.len(), "{text:?}"),
        _ => assert_eq!(body.len(), length, "{text:?}"),
    }

    const SAMPLE: Def = Def {
        name: "emperor_fuzz",
        kind: Kind::Gauge,
        help: "A sample.",
    };
    let name = String::from_utf8_lossy(data);
    let mut e = Exposition::new(&[&SAMPLE]);
    e.add(&SAMPLE, &[("vassal", &name), ("socket", &name)], 1.0);
    let text = e.render();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "one sample is one line: {text:?}");
    let mut rest = lines[2]
        .strip_prefix("emperor_fuzz{")
        .and_then(|r| r.strip_suffix("} 1"))
        .unwrap_or_else(|| panic!("a sample's shape: {:?}", lines[2]));
    for key in ["vassal", "socket"] {
        rest = rest
            .strip_prefix(key)
            .and_then(|r| r.strip_prefix("=\""))
            .unwrap_or_else(|| panic!("label {key}: {:?}", lines[2]));
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars
                .next()
                .unwrap_or_else(|| panic!("an unterminated value: {:?}", lines[2]))
            {
                (_, '\\') => match chars.next().map(|(_, c)| c) {
                    Some('n') => value.push('\n'),
                    Some(c @ ('\\' | '"')) => value.push(c),
                    other => panic!("a bad escape {other:?}: {:?}", lines[2]),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        assert_eq!(value, name, "the label reads back whole");
        rest = rest[end + 1..].strip_prefix(',').unwrap_or(&rest[end + 1..]);
    }
    assert!(rest.is_empty(), "{:?}", lines[2]);
}

/// What `emperor status` received from the stats socket, rendered as its table.
pub fn stats(data: &[u8]) {
    for now in [0, 1_700_000_000, u64::MAX] {
        if let Ok(text) = crate::client::status::render(data, now) {
            assert!(
                !text.chars().any(|c| c.is_control() && c != '\n'),
                "a control character reaches the terminal: {text:?}"
            );
        }
    }
}

/// Every parsed host is a name nginx's `map` takes as it is: nothing that could end the map entry or
/// start another directive.
fn check_routes(cfg: &VassalConfig) {
    for route in &cfg.routes {
        assert!(
            !route.host.is_empty()
                && route
                    .host
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.*".contains(&b)),
            "host {:?} is not a plain dns name",
            route.host
        );
    }
}

/// A rejected file is one printable line per problem, and at least one problem.
fn check_error(e: &ConfigError) {
    assert!(!e.problems.is_empty(), "an error without a problem");
    let shown = e.to_string();
    assert_eq!(
        shown.lines().count(),
        e.problems.len(),
        "one line per problem: {shown:?}"
    );
    assert!(
        !shown.chars().any(|c| c.is_control() && c != '\n'),
        "a control character in an error message: {shown:?}"
    );
}
