//! Sockets the emperor binds and hands over (LISTEN_FDS convention), and their survival across restarts.

use crate::util::*;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::time::Duration;

#[test]
fn start_passes_one_unix_socket() {
    let mut h = Harness::new("start_passes_one_unix_socket");
    h.write_vassal("app.ini", &h.app_ini("app.ini", ""));
    h.start(&[]);
    let s = &h.wait_starts("app.ini", 1, LONG)[0];
    h.check(s.get("listen_fds") == "1", format!("listen_fds=1 expected: {s:?}"));
    h.check(
        s.get("listen_pid_ok") == "1",
        format!("LISTEN_PID must equal the vassal pid: {s:?}"),
    );
    h.check(
        s.get("emperor_fd") == "4",
        format!("UWSGI_EMPEROR_FD must be 3+n = 4: {s:?}"),
    );
    let sock = h.sock("app.ini.sock");
    h.check(
        fs::metadata(&sock).map(|m| m.file_type().is_socket()).unwrap_or(false),
        format!("{} should be a socket file", sock.display()),
    );
    let resp = h.wait_http_unix(&sock, LONG);
    h.check(
        resp.starts_with("HTTP/1.1 200") && resp.contains(&format!("hello from app.ini pid={}", s.pid())),
        format!("unexpected answer {resp:?}"),
    );
    // stdin is /dev/null.
    let stdin = fs::read_link(format!("/proc/{}/fd/0", s.pid())).unwrap();
    h.check(
        stdin.to_str() == Some("/dev/null"),
        format!("vassal stdin is {stdin:?}, not /dev/null"),
    );
    // Vassal output goes to the emperor's stdout, prefixed with the vassal name.
    let line = format!("[app.ini] testapp app.ini pid={} started", s.pid());
    h.wait_for(
        || h.stdout().contains(&line),
        LONG,
        &format!("emperor stdout line {line:?}"),
    );
    // The emperor logs the spawn.
    h.wait_log(&format!("[app.ini] spawned pid {}", s.pid()), LONG);
}

#[test]
fn named_unix_and_tcp_sockets() {
    let mut h = Harness::new("named_unix_and_tcp_sockets");
    let port = free_port();
    let sock = h.sock("n.sock");
    h.write_vassal(
        "named.ini",
        &format!(
            "[emperor]\nsocket = name=web,{}\nsocket = name=api,127.0.0.1:{port}\n{}",
            sock.display(),
            h.exec_line("named.ini", "")
        ),
    );
    h.start(&[]);
    let s = &h.wait_starts("named.ini", 1, LONG)[0];
    h.check(s.get("listen_fds") == "2", format!("listen_fds=2 expected: {s:?}"));
    h.check(s.get("listen_pid_ok") == "1", format!("listen_pid_ok: {s:?}"));
    h.check(
        s.get("names") == "web:api",
        format!("LISTEN_FDNAMES=web:api expected: {s:?}"),
    );
    h.check(
        s.get("emperor_fd") == "5",
        format!("UWSGI_EMPEROR_FD must be 3+n = 5: {s:?}"),
    );
    let r1 = h.wait_http_unix(&sock, LONG);
    h.check(r1.contains(&format!("pid={}", s.pid())), format!("unix answer {r1:?}"));
    let r2 = http_get_tcp(port, Duration::from_secs(5));
    h.check(
        matches!(&r2, Ok(r) if r.contains(&format!("hello from named.ini pid={}", s.pid()))),
        format!("tcp answer on 127.0.0.1:{port}: {r2:?}"),
    );
}

#[test]
fn abstract_socket() {
    let mut h = Harness::new("abstract_socket");
    let name = format!("@emperor-test-{}-{}", std::process::id(), now_ns() % 1_000_000_000);
    h.write_vassal(
        "abs.ini",
        &format!("[emperor]\nsocket = {name}\n{}", h.exec_line("abs.ini", "")),
    );
    h.start(&[]);
    let s = &h.wait_starts("abs.ini", 1, LONG)[0];
    h.check(s.get("listen_fds") == "1", format!("{s:?}"));
    let r = h.wait_http_unix(&name, LONG);
    h.check(r.contains(&format!("pid={}", s.pid())), format!("answer {r:?}"));
}

#[test]
fn env_and_chdir() {
    let mut h = Harness::new("env_and_chdir");
    let wd = h.root.join("elsewhere");
    h.write_vassal(
        "e.ini",
        &format!(
            "[emperor]\nsocket = {}\nenv = FOO=bar baz\nenv = EMPTYISH=x=y\nchdir = {}\n{}",
            h.sock("e.sock").display(),
            wd.display(),
            h.exec_line("e.ini", "--show-env FOO --show-env EMPTYISH")
        ),
    );
    h.start(&[]);
    let s = &h.wait_starts("e.ini", 1, LONG)[0];
    h.check(
        s.get("cwd") == wd.to_str().unwrap(),
        format!("cwd should be {}: {s:?}", wd.display()),
    );
    // The record line is space separated, so "bar baz" shows up as env_FOO=bar followed by a bare "baz".
    let raw = fs::read_to_string(h.rec_path("e.ini")).unwrap();
    h.check(
        raw.contains("env_FOO=bar baz "),
        format!("env FOO should be 'bar baz': {raw}"),
    );
    h.check(
        s.get("env_EMPTYISH") == "x=y",
        format!("env EMPTYISH should be 'x=y' (split at first '='): {s:?}"),
    );
}

#[test]
fn wrapper_runs_with_ini_in_vassals_dir() {
    let mut h = Harness::new("wrapper_runs_with_ini");
    h.write_vassal(
        "w.ini",
        &format!(
            "[emperor]\nsocket = {}\nenv = TESTAPP_RECORD={}\n\n[uwsgi]\nmaster = true\n",
            h.sock("w.sock").display(),
            h.rec_path("w.ini").display()
        ),
    );
    let wrapper = testapp().to_str().unwrap().to_string();
    h.start(&["--emperor-wrapper", &wrapper]);
    let s = &h.wait_starts("w.ini", 1, LONG)[0];
    h.check(
        s.get("cwd") == h.vassals().to_str().unwrap(),
        format!("wrapper cwd should be the vassals dir {}: {s:?}", h.vassals().display()),
    );
    h.check(
        s.fields.get("ini").map(String::as_str) == Some("w.ini"),
        format!("wrapper should get --ini w.ini: {s:?}"),
    );
    // The socket may come as LISTEN_FDS (fd 3) or, uWSGI's convention for emperor-owned sockets, as fd 0.
    let via_listen_fds = s.get("listen_fds") == "1" && s.get("listen_pid_ok") == "1";
    let via_stdin = s.get("stdin") == "socket";
    h.check(
        via_listen_fds != via_stdin,
        format!("the socket must arrive exactly once, as fd 3 or fd 0: {s:?}"),
    );
    let r = h.wait_http_unix(h.sock("w.sock"), LONG);
    h.check(
        r.contains(&format!("pid={}", s.pid())),
        format!("wrapper vassal should answer: {r:?}"),
    );
}

#[test]
fn chmod_socket() {
    let mut h = Harness::new("chmod_socket");
    let a = h.sock("a.sock");
    let b = h.sock("b.sock");
    h.write_vassal(
        "a.ini",
        &format!(
            "[emperor]\nsocket = {}\nchmod-socket = 660\n{}",
            a.display(),
            h.exec_line("a.ini", "")
        ),
    );
    h.write_vassal(
        "b.ini",
        &format!("[emperor]\nsocket = {}\n{}", b.display(), h.exec_line("b.ini", "")),
    );
    h.start(&["--chmod-socket", "600"]);
    h.wait_starts("a.ini", 1, LONG);
    h.wait_starts("b.ini", 1, LONG);
    let mode = |p: &std::path::Path| fs::metadata(p).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    h.check(
        mode(&a) == 0o660,
        format!("a.sock mode {:o}, want 660 (vassal chmod-socket)", mode(&a)),
    );
    h.check(
        mode(&b) == 0o600,
        format!("b.sock mode {:o}, want 600 (--chmod-socket default)", mode(&b)),
    );
}

/// Open a connection and send a request while nobody accepts; return the stream.
fn connect_and_send(h: &Harness, sock: &std::path::Path) -> UnixStream {
    let c = UnixStream::connect(sock);
    h.check(
        c.is_ok(),
        format!("connect during the restart gap must not fail: {c:?}"),
    );
    let mut c = c.unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    c
}

fn read_answer(h: &Harness, mut c: UnixStream) -> String {
    let mut out = String::new();
    let r = c.read_to_string(&mut out);
    h.check(
        r.is_ok() && out.starts_with("HTTP/1.1 200"),
        format!("queued request should get a 200: {r:?} {out:?}"),
    );
    out
}

/// The vassal is frozen by its stop-signal (SIGSTOP) for stop-timeout seconds, then killed and restarted.
/// A connection made while it is frozen waits in the backlog of the emperor-held socket and is served by the new
/// process.
#[test]
fn restart_keeps_queued_connection() {
    let mut h = Harness::new("restart_keeps_queued_connection");
    let sock = h.sock("q.sock");
    h.write_vassal(
        "q.ini",
        &format!(
            "[emperor]\nsocket = {}\nstop-signal = SIGSTOP\nstop-timeout = 2\n{}",
            sock.display(),
            h.exec_line("q.ini", "")
        ),
    );
    h.start(&["--reload-mercy", "2"]);
    let old = h.wait_starts("q.ini", 1, LONG)[0].pid();
    h.wait_http_unix(&sock, LONG);
    h.touch_vassal("q.ini");
    h.wait_for(
        || proc_state(old) == Some('T'),
        LONG,
        "old vassal to be stopped by SIGSTOP",
    );
    let c = connect_and_send(&h, &sock);
    let out = read_answer(&h, c);
    let starts = h.starts("q.ini");
    h.check(
        starts.len() == 2,
        format!("expected exactly one restart, got {starts:?}"),
    );
    let new = starts[1].pid();
    h.check(new != old, "restart must give a new pid");
    h.check(
        out.contains(&format!("pid={new}")),
        format!("queued request must be served by the new pid {new}: {out:?}"),
    );
    h.wait_dead(old, LONG, "old vassal");
}

/// A vassal that exits on its own: a connection made after it died and before the (throttled) restart is
/// served by the next instance.
#[test]
fn crash_gap_keeps_queued_connection() {
    let mut h = Harness::new("crash_gap_keeps_queued_connection");
    let sock = h.sock("c.sock");
    h.write_vassal(
        "c.ini",
        &format!(
            "[emperor]\nsocket = {}\n{}",
            sock.display(),
            h.exec_line("c.ini", "--exit-after 300")
        ),
    );
    h.start(&["--emperor-throttle", "1500"]);
    let first = h.wait_starts("c.ini", 1, LONG)[0].pid();
    h.wait_dead(first, LONG, "first instance exiting after 300 ms");
    let c = connect_and_send(&h, &sock);
    let out = read_answer(&h, c);
    let later: Vec<i32> = h.starts("c.ini").iter().skip(1).map(Record::pid).collect();
    h.check(
        later.iter().any(|p| out.contains(&format!("pid={p}\n"))),
        format!("queued request must be served by a later instance {later:?}, not {first}: {out:?}"),
    );
}
