//! `accept = true`: a process vassal whose program runs once per connection (the emperor's accept role), with the
//! test app in `--inetd` mode as the program: the connection on stdin and stdout, its stderr in the vassal's log.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{EMPEROR, Harness, LONG, alive, free_port, kill};

/// One client of an inetd-style vassal: lines out, lines in, each read bounded.
struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    /// Connects; the emperor owns the socket, so this succeeds at once whether or not anything accepts.
    fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to {port}: {e}"));
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    fn port(&self) -> u16 {
        self.stream.local_addr().unwrap().port()
    }

    /// The next line (without its newline); `Ok(None)` at EOF; an error of kind WouldBlock/TimedOut when
    /// nothing came within `within`.
    fn line(&mut self, within: Duration) -> std::io::Result<Option<String>> {
        self.stream.set_read_timeout(Some(within))?;
        let mut line = String::new();
        match self.reader.read_line(&mut line)? {
            0 => Ok(None),
            _ => Ok(Some(line.trim_end().to_string())),
        }
    }

    /// The next line, which must come within [`LONG`].
    #[track_caller]
    fn expect_line(&mut self, h: &Harness) -> String {
        match self.line(LONG) {
            Ok(Some(l)) => l,
            other => {
                h.check(
                    false,
                    format!("a line from the server on port {}: {other:?}", self.port()),
                );
                unreachable!()
            }
        }
    }

    fn send(&mut self, text: &str) {
        self.stream.write_all(format!("{text}\n").as_bytes()).unwrap();
    }
}

/// The pid in a greeting `hello from <name> pid=<pid>`.
fn greeting_pid(h: &Harness, line: &str, name: &str) -> i32 {
    let pid = line
        .strip_prefix(&format!("hello from {name} pid="))
        .and_then(|p| p.parse().ok());
    h.check(pid.is_some(), format!("a greeting from {name}: {line:?}"));
    pid.unwrap_or_default()
}

/// A vassal running the test app once per connection on 127.0.0.1:`port`.
fn inetd_vassal(h: &Harness, name: &str, port: u16, args: &str, extra: &str) -> String {
    format!(
        "[emperor]\nsocket = 127.0.0.1:{port}\naccept = true\n{extra}{}",
        h.exec_line(name, &format!("--inetd {args}"))
    )
}

/// Proves a negative: nothing happened during `d` (a bounded wait, on purpose).
fn quiet(d: Duration) {
    thread::sleep(d);
}

#[test]
fn accept_runs_the_program_once_per_connection_and_at_most_max_connections_at_once() {
    let mut h = Harness::new("accept_max");
    let port = free_port();
    let show = "--show-env REMOTE_ADDR --show-env REMOTE_PORT";
    h.write_vassal(
        "inetd.ini",
        &inetd_vassal(&h, "inetd", port, show, "max-connections = 2\n"),
    );
    h.start(&[]);
    h.wait_for(
        || {
            h.stdout()
                .contains("[inetd.ini] accept: serving 1 socket(s), at most 2")
        },
        LONG,
        "the accept role to serve",
    );

    let (mut c1, mut c2) = (Client::connect(port), Client::connect(port));
    let p1 = greeting_pid(&h, &c1.expect_line(&h), "inetd");
    let p2 = greeting_pid(&h, &c2.expect_line(&h), "inetd");
    h.check(p1 != p2, "one process per connection");

    // The environment and fds of each instance, as systemd gives an Accept=yes connection.
    let starts = h.starts("inetd");
    for (pid, client) in [(p1, &c1), (p2, &c2)] {
        let r = starts.iter().find(|r| r.pid() == pid);
        h.check(r.is_some(), format!("a start record of pid {pid}: {starts:?}"));
        let r = r.unwrap();
        let want = [
            ("listen_fds", "1".to_string()),
            ("listen_pid_ok", "1".into()),
            ("names", "connection".into()),
            ("emperor_fd", "-".into()),
            ("stdin", "-".into()),
            ("env_REMOTE_ADDR", "127.0.0.1".into()),
            ("env_REMOTE_PORT", client.port().to_string()),
        ];
        for (k, v) in want {
            h.check(r.get(k) == v, format!("pid {pid}: {k} = {v}: {r:?}"));
        }
    }

    // A third connection waits in the backlog: connected, not refused, not served.
    let mut c3 = Client::connect(port);
    let t0 = Instant::now();
    match c3.line(Duration::from_millis(1500)) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => h.check(false, format!("the third connection must wait, not {other:?}")),
    }
    h.check(t0.elapsed() >= Duration::from_millis(1400), "it waited the whole time");

    // The first one talks and ends; the third is served then.
    c1.send("ping");
    h.check(c1.expect_line(&h) == "echo ping", "an echo");
    c1.send("quit");
    h.check(c1.expect_line(&h) == "bye", "bye");
    h.check(
        matches!(c1.line(LONG), Ok(None)),
        "the connection ends with its program",
    );
    let p3 = greeting_pid(&h, &c3.expect_line(&h), "inetd");
    h.check(![p1, p2].contains(&p3), "a new process for the waiting connection");

    // stderr goes to the vassal's log, not to the connection (the greeting was the first line above).
    h.wait_for(
        || {
            h.stdout()
                .contains(&format!("[inetd.ini] testapp inetd pid={p1} started"))
        },
        LONG,
        "the program's stderr in the vassal's log",
    );
    h.check(h.spawned().len() == 1, format!("one vassal process: {:?}", h.spawned()));
    h.check(
        h.stdout().contains("(2/2)") && !h.stdout().contains("(3/2)"),
        "the accept role's own log counts the open connections",
    );
}

#[test]
fn a_stop_sends_sigterm_to_every_connection_and_the_stop_timeout_ends_one_that_ignores_it() {
    let mut h = Harness::new("accept_stop");
    let (port, stubborn_port) = (free_port(), free_port());
    h.write_vassal("graceful.ini", &inetd_vassal(&h, "graceful", port, "", ""));
    h.write_vassal(
        "stubborn.ini",
        &inetd_vassal(&h, "stubborn", stubborn_port, "--ignore-term", "stop-timeout = 1\n"),
    );
    h.start(&[]);
    for name in ["graceful", "stubborn"] {
        h.wait_for(
            || h.stdout().contains(&format!("[{name}.ini] accept: serving")),
            LONG,
            "the accept roles to serve",
        );
    }
    let mut clients = [Client::connect(port), Client::connect(port)];
    let pids: Vec<i32> = clients
        .iter_mut()
        .map(|c| greeting_pid(&h, &c.expect_line(&h), "graceful"))
        .collect();
    let mut stubborn = Client::connect(stubborn_port);
    let stubborn_pid = greeting_pid(&h, &stubborn.expect_line(&h), "stubborn");

    h.remove_vassal("graceful.ini");
    for c in &mut clients {
        h.check(
            c.expect_line(&h) == "bye: stopping",
            "SIGTERM reached the connection's program",
        );
        h.check(matches!(c.line(LONG), Ok(None)), "and the connection ended");
    }
    h.wait_for(
        || h.records("graceful").iter().filter(|r| r.kind == "term").count() == 2,
        LONG,
        "both programs to record their SIGTERM",
    );
    for pid in pids {
        h.wait_dead(pid, LONG, "a program of the stopped vassal");
    }
    h.wait_for(
        || h.stdout().contains("[graceful.ini] accept: stopped"),
        LONG,
        "the accept role to end",
    );

    // --ignore-term: only the stop timeout's SIGKILL of the vassal's group ends it.
    let t0 = Instant::now();
    h.remove_vassal("stubborn.ini");
    h.check(matches!(stubborn.line(LONG), Ok(None)), "the connection ends");
    h.check(
        t0.elapsed() >= Duration::from_millis(900),
        format!("not before the 1 s stop timeout: {:?}", t0.elapsed()),
    );
    h.wait_dead(stubborn_pid, LONG, "the program that ignored SIGTERM");
}

#[test]
fn on_demand_accept_serves_the_connection_that_started_it_and_open_connections_keep_it_from_idling() {
    let mut h = Harness::new("accept_od");
    let port = free_port();
    h.write_vassal(
        "od.ini",
        &inetd_vassal(&h, "od", port, "", "on-demand = true\nidle = 1\n"),
    );
    h.start(&[]);
    h.wait_vlog("od.ini", "waiting for a connection", LONG);
    h.check(h.spawned().is_empty(), "nothing runs before the first connection");

    let mut c = Client::connect(port);
    let pid = greeting_pid(&h, &c.expect_line(&h), "od");
    // The emperor logs the spawn after its fork returned, which can be after the greeting.
    h.wait_for(
        || h.spawned().len() == 1,
        LONG,
        "the connection to have started the vassal, which served it",
    );
    // Open for three times `idle`: the emperor counts the program's connection, so the vassal is not idle.
    quiet(Duration::from_secs(3));
    h.check(
        !h.stderr().contains("idle: stopping"),
        "a vassal with an open connection is not idle",
    );
    c.send("still here");
    h.check(c.expect_line(&h) == "echo still here", "the session goes on");
    c.send("quit");
    h.check(c.expect_line(&h) == "bye", "bye");
    // Closed on our side too: a half-closed connection still counts.
    drop(c);
    h.wait_vlog("od.ini", "idle: stopping", LONG);
    h.wait_dead(pid, LONG, "the program");
    // Once it is down: a connection the role accepts between the emperor's idle decision and its SIGTERM gets the
    // SIGTERM too (README, "Per-connection vassals").
    h.wait_vlog("od.ini", "exited with code 0", LONG);

    let mut again = Client::connect(port);
    greeting_pid(&h, &again.expect_line(&h), "od");
    h.wait_for(|| h.spawned().len() == 2, LONG, "the next connection to start it again");
}

/// Runs `emperor accept -- <command>` with `listener` as its only `LISTEN_FDS` socket, its stderr to `log`.
fn accept_role(listener: &std::net::TcpListener, command: &[&str], log: &std::path::Path) -> std::process::Child {
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$@\"",
        "sh",
        EMPEROR,
        "accept",
        "--max-connections",
        "4",
        "--",
    ])
    .args(command)
    .stdin(Stdio::null())
    .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap());
    // SAFETY: dup2 and fcntl are async-signal-safe; the listener stays open in the parent for the call. The
    // flag is cleared explicitly because dup2 onto the same number (the listener may be fd 3) leaves it set.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawning the accept role")
}

/// Two instances on one socket (an overlapping reload): both see the connection, one takes it, the other must not
/// sit in a blocking `accept` with its signals blocked. Both stop at once on SIGTERM. And a missing program is
/// exit 127 at start, as a shell says it.
#[test]
fn an_accept_instance_that_lost_a_connection_to_another_still_stops_at_once() {
    let h = Harness::new("accept_race");
    let log = h.root.join("roles.log");
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut roles = [
        accept_role(&listener, &["cat"], &log),
        accept_role(&listener, &["cat"], &log),
    ];
    let pids: Vec<i32> = roles.iter().map(|r| r.id() as i32).collect();
    let _guard = KillOnDrop(pids.clone());
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = Client::connect(port);
        c.send(&format!("line {i}"));
        match c.line(LONG) {
            Ok(Some(l)) if l == format!("line {i}") => {}
            other => panic!("cat echoes line {i}: {other:?}\n{}", logged()),
        }
        clients.push(c);
    }
    let t0 = Instant::now();
    for pid in &pids {
        kill(*pid, libc::SIGTERM);
    }
    for r in &mut roles {
        loop {
            match r.try_wait().unwrap() {
                Some(st) => {
                    assert_eq!(st.code(), Some(0), "a stopped accept role exits 0\n{}", logged());
                    break;
                }
                None if t0.elapsed() > Duration::from_secs(5) => {
                    panic!(
                        "an accept role did not stop within 5 s of SIGTERM (stuck in accept?)\n{}",
                        logged()
                    )
                }
                None => thread::sleep(Duration::from_millis(10)),
            }
        }
    }
    for c in &mut clients {
        assert!(matches!(c.line(LONG), Ok(None)), "cat got SIGTERM too");
    }

    let mut missing = accept_role(&listener, &["/nonexistent/program"], &log);
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = missing.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < LONG,
            "the accept role with a missing program did not exit"
        );
        thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(st.code(), Some(127), "{}", logged());
    assert!(
        logged().contains("accept: cannot execute /nonexistent/program"),
        "{}",
        logged()
    );
}

/// SIGKILLs the pids (and their children) when the test ends, passed or not.
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &p in self.0.iter().filter(|p| alive(**p)) {
            for c in crate::util::descendants(p) {
                kill(c, libc::SIGKILL);
            }
            kill(p, libc::SIGKILL);
        }
    }
}
