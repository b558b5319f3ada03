//! The shim (`emperor shim -- <cmd>`) on the host, no Docker: the test plays the bridge. It binds the proxy
//! socket, accepts the shim's one connection and sends a frame in the proxy-socket wire format (written
//! out here, since the test crate cannot import the binary's modules: 13 bytes `uwsgi-emperor`, a
//! native-endian u32 fd count, one SCM_RIGHTS message with control, config, sockets). The payload is the
//! test app, whose record shows the fd layout and environment it got.
//!
//! On the host the shim is not PID 1; it makes itself a child subreaper instead, so orphans of the
//! payload are reparented to it, as they would be to PID 1 in a container.

use crate::util::*;
use std::io::{IoSlice, Read};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

/// How fast a forwarded SIGTERM must end everything (the app's handler exits at once).
const QUICK: Duration = Duration::from_secs(2);

/// The 17-byte payload of a frame announcing `count` fds.
fn frame(count: u32) -> Vec<u8> {
    [&b"uwsgi-emperor"[..], &count.to_ne_bytes()].concat()
}

/// Sends `payload` with `fds` as one SCM_RIGHTS message, in one sendmsg.
fn send_frame(sock: &UnixStream, payload: &[u8], fds: &[BorrowedFd<'_>]) {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let n = sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(payload)],
        &rights,
        MsgFlags::empty(),
        None,
    )
    .expect("sendmsg of the frame");
    assert_eq!(n, payload.len());
}

/// `socket:[inode]`, the identity of an open socket as /proc shows it.
fn socket_id(pid: u32, fd: RawFd) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("<fd {fd} of {pid}: {e}>"))
}

/// What the test gives the shim: the proxy socket it listens on and the environment it announces.
struct Bridge {
    proxy: PathBuf,
    listener: Option<UnixListener>,
    env: Vec<(&'static str, String)>,
}

impl Bridge {
    /// Binds the proxy socket at `run/proxy.sock` and announces `sockets` (names) and a config fd.
    fn new(h: &Harness, names: &[&str], config: bool, stdin_socket: bool) -> Bridge {
        let proxy = h.sock("proxy.sock");
        let listener = UnixListener::bind(&proxy).unwrap();
        Bridge {
            env: vec![
                ("EMPEROR_PROXY", proxy.display().to_string()),
                ("EMPEROR_SOCKETS", names.len().to_string()),
                ("EMPEROR_CONFIG", u8::from(config).to_string()),
                ("EMPEROR_FDNAMES", names.join(":")),
                ("EMPEROR_STDIN_SOCKET", u8::from(stdin_socket).to_string()),
            ],
            proxy,
            listener: Some(listener),
        }
    }

    /// Accepts the shim's connection (bounded), sends one frame, closes the connection and unlinks the
    /// proxy socket, as the real bridge does.
    fn hand_over(&mut self, shim: &Shim, payload: &[u8], fds: &[BorrowedFd<'_>]) {
        let listener = self.listener.take().expect("one hand-over per bridge");
        listener.set_nonblocking(true).unwrap();
        let start = Instant::now();
        let conn = loop {
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && start.elapsed() < LONG => {
                    thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("the shim never connected to the proxy socket: {e}{}", shim.tail()),
            }
        };
        conn.set_nonblocking(false).unwrap();
        send_frame(&conn, payload, fds);
        drop(conn);
        std::fs::remove_file(&self.proxy).unwrap();
    }
}

/// A running `emperor shim`, killed with everything it started when dropped.
struct Shim {
    child: Child,
    stderr: Arc<Mutex<String>>,
    status: Option<ExitStatus>,
}

impl Shim {
    fn start(env: &[(&str, String)], command: &[&str]) -> Shim {
        let mut cmd = Command::new(EMPEROR);
        cmd.arg("shim").arg("--").args(command);
        for var in [
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "NGINX",
            "UWSGI_EMPEROR_FD",
            "UWSGI_EMPEROR_FD_CONFIG",
        ] {
            cmd.env_remove(var);
        }
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("EMPEROR_")) {
            cmd.env_remove(k);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {EMPEROR} shim: {e}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let buf = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.lock().unwrap().push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Shim {
            child,
            stderr,
            status: None,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn tail(&self) -> String {
        format!("\n--- shim (pid {}) stderr:\n{}", self.pid(), self.stderr())
    }

    /// Waits for the shim to exit within `deadline`; panics with its stderr otherwise.
    fn wait(&mut self, deadline: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                self.status = Some(st);
                // Let the capture thread drain the pipe (bounded).
                let t = Instant::now();
                while t.elapsed() < Duration::from_millis(300) && Arc::strong_count(&self.stderr) > 1 {
                    thread::sleep(Duration::from_millis(10));
                }
                return st;
            }
            if start.elapsed() > deadline {
                panic!("the shim did not exit within {deadline:?}{}", self.tail());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Exit code of the shim, which must exit within `deadline`.
    fn exit_code(&mut self, deadline: Duration) -> i32 {
        let st = self.wait(deadline);
        st.code()
            .unwrap_or_else(|| panic!("the shim was killed ({st:?}) instead of exiting{}", self.tail()))
    }

    /// Is the shim still running?
    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn signal(&self, sig: i32) {
        kill(self.pid() as i32, sig);
    }

    #[track_caller]
    fn check(&self, cond: bool, what: impl std::fmt::Display) {
        if !cond {
            panic!("check failed: {what}{}", self.tail());
        }
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        if self.status.is_none() {
            if thread::panicking() {
                eprintln!("{}", self.tail());
            }
            for p in descendants(self.pid() as i32) {
                if let Some((_, g)) = ppid_pgid(p)
                    && g == p
                {
                    kill(-g, libc::SIGKILL);
                }
                kill(p, libc::SIGKILL);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `<testapp> --record <rec/NAME.rec> --name NAME <extra...>`.
fn testapp_cmd(h: &Harness, name: &str, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        testapp().display().to_string(),
        "--record".into(),
        h.rec_path(name).display().to_string(),
        "--name".into(),
        name.into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A TCP listener on 127.0.0.1 and its port.
fn tcp_listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

fn read_bytes(sock: &UnixStream, n: usize) -> std::io::Result<Vec<u8>> {
    sock.set_read_timeout(Some(LONG))?;
    let mut buf = vec![0u8; n];
    (&*sock).read_exact(&mut buf)?;
    Ok(buf)
}

#[test]
fn shim_places_sockets_control_and_env_like_the_emperor() {
    let h = Harness::new("shim_places_sockets");
    let mut bridge = Bridge::new(&h, &["web", "api"], false, false);
    let unix_path = h.sock("web.sock");
    let unix = UnixListener::bind(&unix_path).unwrap();
    let (tcp, port) = tcp_listener();
    let (control_ours, control_theirs) = UnixStream::pair().unwrap();
    let cmd = testapp_cmd(
        &h,
        "app",
        &[
            "--speak",
            "--show-env",
            "NGINX",
            "--show-env",
            "UWSGI_EMPEROR_FD_CONFIG",
            "--show-env",
            "EMPEROR_PROXY",
            "--show-env",
            "EMPEROR_SOCKETS",
        ],
    );
    let mut shim = Shim::start(&bridge.env, &strs(&cmd));
    bridge.hand_over(&shim, &frame(3), &[control_theirs.as_fd(), unix.as_fd(), tcp.as_fd()]);
    let control_id = socket_id(std::process::id(), control_theirs.as_raw_fd());
    drop((control_theirs, unix, tcp));

    let s = &h.wait_starts("app", 1, LONG)[0];
    shim.check(s.get("listen_fds") == "2", format!("listen_fds=2 expected: {s:?}"));
    shim.check(
        s.get("listen_pid_ok") == "1",
        format!("LISTEN_PID must be the app's pid: {s:?}"),
    );
    shim.check(
        s.get("names") == "web:api",
        format!("LISTEN_FDNAMES=web:api expected: {s:?}"),
    );
    shim.check(
        s.get("emperor_fd") == "5",
        format!("UWSGI_EMPEROR_FD = 3+2 expected: {s:?}"),
    );
    shim.check(s.get("env_NGINX") == "3;4;", format!("NGINX=3;4; expected: {s:?}"));
    shim.check(
        s.get("env_UWSGI_EMPEROR_FD_CONFIG") == "-",
        format!("no config fd: {s:?}"),
    );
    shim.check(
        s.get("env_EMPEROR_PROXY") == "-" && s.get("env_EMPEROR_SOCKETS") == "-",
        format!("EMPEROR_* must not reach the payload: {s:?}"),
    );
    shim.check(s.get("stdin") == "-", format!("stdin must not be a socket: {s:?}"));
    let app = s.pid();
    shim.check(
        socket_id(app as u32, 5) == control_id,
        format!("fd 5 of the app must be the control end we sent ({control_id})"),
    );
    // The payload is the shim's child, in its own process group.
    shim.check(
        ppid_pgid(app) == Some((shim.pid() as i32, app)),
        format!(
            "app {app}: (ppid, pgid) = {:?}, expected ({}, {app})",
            ppid_pgid(app),
            shim.pid()
        ),
    );

    // The uWSGI protocol goes straight from the app to our control end: ready, then accepting.
    let bytes = read_bytes(&control_ours, 2).unwrap_or_else(|e| panic!("control channel: {e}{}", shim.tail()));
    shim.check(bytes == [1, 5], format!("bytes 1 then 5 expected, got {bytes:?}"));

    let r1 = h.wait_http_unix(&unix_path, LONG);
    shim.check(r1.contains(&format!("pid={app}")), format!("unix answer {r1:?}"));
    let r2 = http_get_tcp(port, Duration::from_secs(5)).unwrap_or_else(|e| panic!("tcp: {e}{}", shim.tail()));
    shim.check(r2.contains(&format!("pid={app}")), format!("tcp answer {r2:?}"));

    // The shim holds no copy of the app's fds: the app's exit alone gives the emperor its EOF.
    let shim_fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", shim.pid()))
        .unwrap()
        .flatten()
        .map(|e| socket_id(shim.pid(), e.file_name().to_string_lossy().parse().unwrap()))
        .collect();
    shim.check(
        !shim_fds.contains(&control_id),
        format!("the shim still holds the control fd: {shim_fds:?}"),
    );

    shim.signal(libc::SIGTERM);
    let code = shim.exit_code(QUICK);
    shim.check(
        code == 0,
        format!("SIGTERM: the app exits 0, so must the shim; got {code}"),
    );
    h.wait_dead(app, QUICK, "app");
    // The rest of the conversation (17, loyal, after the first request), then EOF: nobody else holds
    // the app's end.
    let mut rest = Vec::new();
    let eof = (&control_ours).read_to_end(&mut rest);
    shim.check(
        eof.is_ok() && rest == [17],
        format!("byte 17 then EOF on the control channel expected: {eof:?} {rest:?}"),
    );
}

#[test]
fn shim_uwsgi_layout_stdin_socket_and_config() {
    let h = Harness::new("shim_uwsgi_layout");
    let mut bridge = Bridge::new(&h, &["main", "extra"], true, true);
    let first_path = h.sock("first.sock");
    let first = UnixListener::bind(&first_path).unwrap();
    let (second, port) = tcp_listener();
    let (_control_ours, control_theirs) = UnixStream::pair().unwrap();
    let (_config_ours, config_theirs) = UnixStream::pair().unwrap();
    let cmd = testapp_cmd(
        &h,
        "uw",
        &["--show-env", "UWSGI_EMPEROR_FD_CONFIG", "--show-env", "NGINX"],
    );
    let mut shim = Shim::start(&bridge.env, &strs(&cmd));
    bridge.hand_over(
        &shim,
        &frame(4),
        &[
            control_theirs.as_fd(),
            config_theirs.as_fd(),
            first.as_fd(),
            second.as_fd(),
        ],
    );
    let me = std::process::id();
    let ids = [
        socket_id(me, first.as_raw_fd()),
        socket_id(me, second.as_raw_fd()),
        socket_id(me, control_theirs.as_raw_fd()),
        socket_id(me, config_theirs.as_raw_fd()),
    ];
    drop((control_theirs, config_theirs, first, second));

    let s = &h.wait_starts("uw", 1, LONG)[0];
    let app = s.pid();
    shim.check(
        s.get("stdin") == "socket",
        format!("the first socket must be fd 0: {s:?}"),
    );
    shim.check(
        s.get("listen_fds") == "1",
        format!("the other socket in LISTEN_FDS: {s:?}"),
    );
    shim.check(s.get("listen_pid_ok") == "1", format!("listen_pid_ok: {s:?}"));
    shim.check(
        s.get("names") == "extra",
        format!("LISTEN_FDNAMES names only LISTEN_FDS sockets: {s:?}"),
    );
    shim.check(s.get("env_NGINX") == "3;", format!("NGINX=3; expected: {s:?}"));
    shim.check(s.get("emperor_fd") == "4", format!("control at 3+1: {s:?}"));
    shim.check(
        s.get("env_UWSGI_EMPEROR_FD_CONFIG") == "5",
        format!("config right after control: {s:?}"),
    );
    for (fd, id) in [0, 3, 4, 5].into_iter().zip(&ids) {
        let got = socket_id(app as u32, fd);
        shim.check(&got == id, format!("fd {fd} of the app is {got}, expected {id}"));
    }
    let r1 = h.wait_http_unix(&first_path, LONG);
    shim.check(r1.contains(&format!("pid={app}")), format!("answer on fd 0: {r1:?}"));
    let r2 = http_get_tcp(port, Duration::from_secs(5)).unwrap_or_else(|e| panic!("tcp: {e}{}", shim.tail()));
    shim.check(r2.contains(&format!("pid={app}")), format!("answer on fd 3: {r2:?}"));
    shim.signal(libc::SIGTERM);
    assert_eq!(shim.exit_code(QUICK), 0);
}

#[test]
fn shim_control_only_sets_no_listen_vars() {
    let h = Harness::new("shim_control_only");
    let mut bridge = Bridge::new(&h, &[], false, true);
    let (_control_ours, control_theirs) = UnixStream::pair().unwrap();
    let cmd = testapp_cmd(&h, "bare", &["--show-env", "NGINX", "--show-env", "LISTEN_PID"]);
    let mut shim = Shim::start(&bridge.env, &strs(&cmd));
    bridge.hand_over(&shim, &frame(1), &[control_theirs.as_fd()]);
    drop(control_theirs);
    let s = &h.wait_starts("bare", 1, LONG)[0];
    shim.check(
        s.get("listen_fds") == "-" && s.get("names") == "-" && s.get("env_LISTEN_PID") == "-",
        format!("no LISTEN_* without sockets: {s:?}"),
    );
    shim.check(s.get("env_NGINX") == "-", format!("no NGINX without sockets: {s:?}"));
    shim.check(s.get("emperor_fd") == "3", format!("control at 3: {s:?}"));
    shim.check(s.get("stdin") == "-", format!("stdin stays what we gave: {s:?}"));
    let stdin = std::fs::read_link(format!("/proc/{}/fd/0", s.pid())).unwrap();
    shim.check(
        stdin == Path::new("/dev/null"),
        format!("stdin of the app is {stdin:?}"),
    );
    shim.signal(libc::SIGTERM);
    assert_eq!(shim.exit_code(QUICK), 0);
}

/// Runs the app with `extra` behind a one-socket-less frame (control only) and returns the shim.
fn run_control_only(h: &Harness, name: &str, extra: &[&str]) -> (Shim, UnixStream) {
    let mut bridge = Bridge::new(h, &[], false, false);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let cmd = testapp_cmd(h, name, extra);
    let shim = Shim::start(&bridge.env, &strs(&cmd));
    bridge.hand_over(&shim, &frame(1), &[theirs.as_fd()]);
    (shim, ours)
}

#[test]
fn shim_exits_with_the_payloads_code() {
    let h = Harness::new("shim_exit_code");
    let (mut shim, _control) = run_control_only(&h, "seven", &["--exit-after", "100", "--exit-code", "7"]);
    let code = shim.exit_code(LONG);
    shim.check(code == 7, format!("exit code 7 expected, got {code}"));
}

#[test]
fn shim_forwards_signals_and_reports_a_signal_death() {
    let h = Harness::new("shim_signal_death");
    let (mut shim, _control) = run_control_only(&h, "stubborn", &["--ignore-term"]);
    let app = h.wait_starts("stubborn", 1, LONG)[0].pid();
    // The app ignores SIGTERM: the shim forwards it and keeps waiting.
    shim.signal(libc::SIGTERM);
    thread::sleep(Duration::from_millis(300));
    let running = shim.running();
    shim.check(alive(app) && running, "both still up after an ignored SIGTERM");
    // SIGINT has its default action in the app (the shim restored it): the app dies of it.
    shim.signal(libc::SIGINT);
    let code = shim.exit_code(QUICK);
    shim.check(
        code == 128 + libc::SIGINT,
        format!("128+SIGINT = 130 expected, got {code}"),
    );
}

#[test]
fn shim_sigterm_reaches_the_app_quickly() {
    let h = Harness::new("shim_sigterm");
    let (mut shim, _control) = run_control_only(&h, "term", &[]);
    let app = h.wait_starts("term", 1, LONG)[0].pid();
    let t = Instant::now();
    shim.signal(libc::SIGTERM);
    let code = shim.exit_code(QUICK);
    shim.check(
        code == 0,
        format!("the app exits 0 on SIGTERM, the shim must too; got {code}"),
    );
    shim.check(!alive(app), "the app is gone");
    eprintln!("SIGTERM to shim exit: {:?}", t.elapsed());
}

#[test]
fn shim_missing_program_exits_127_and_unexecutable_126() {
    let h = Harness::new("shim_exec_fail");
    let missing = h.root.join("no-such-program");
    let missing = missing.display().to_string();
    let (mut shim, _c) = {
        let mut bridge = Bridge::new(&h, &[], false, false);
        let (ours, theirs) = UnixStream::pair().unwrap();
        let shim = Shim::start(&bridge.env, &[&missing, "--flag"]);
        bridge.hand_over(&shim, &frame(1), &[theirs.as_fd()]);
        (shim, ours)
    };
    let code = shim.exit_code(LONG);
    shim.check(code == 127, format!("127 expected for a missing program, got {code}"));
    let err = shim.stderr();
    shim.check(
        err.contains(&format!("shim: cannot execute {missing}: No such file or directory")),
        format!("message expected on stderr, got {err:?}"),
    );

    // A file without the execute bit: 126. Searched in PATH too.
    let h2 = Harness::new("shim_exec_fail_126");
    let plain = h2.root.join("elsewhere").join("not-executable");
    std::fs::write(&plain, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bridge = Bridge::new(&h2, &[], false, false);
    let (_ours, theirs) = UnixStream::pair().unwrap();
    let mut env = bridge.env.clone();
    env.push(("PATH", h2.root.join("elsewhere").display().to_string()));
    let mut shim2 = Shim::start(&env, &["not-executable"]);
    bridge.hand_over(&shim2, &frame(1), &[theirs.as_fd()]);
    let code = shim2.exit_code(LONG);
    shim2.check(
        code == 126,
        format!("126 expected for a non-executable file, got {code}"),
    );
    shim2.check(
        shim2
            .stderr()
            .contains("shim: cannot execute not-executable: Permission denied"),
        "Permission denied message",
    );
}

#[test]
fn shim_rejects_a_bad_frame_with_125() {
    let h = Harness::new("shim_bad_magic");
    let mut bridge = Bridge::new(&h, &[], false, false);
    let (_ours, theirs) = UnixStream::pair().unwrap();
    let cmd = testapp_cmd(&h, "never", &[]);
    let mut shim = Shim::start(&bridge.env, &strs(&cmd));
    let mut payload = frame(1);
    payload[0] = b'U';
    bridge.hand_over(&shim, &payload, &[theirs.as_fd()]);
    let code = shim.exit_code(LONG);
    shim.check(code == 125, format!("125 expected for a bad frame, got {code}"));
    let err = shim.stderr();
    shim.check(
        err.starts_with("shim: ") && err.contains("not an emperor frame"),
        format!("clear message expected, got {err:?}"),
    );
    shim.check(h.starts("never").is_empty(), "the payload must not run");
}

#[test]
fn shim_rejects_a_frame_that_contradicts_the_environment() {
    let h = Harness::new("shim_fd_mismatch");
    // The environment announces two sockets; the frame carries one.
    let mut bridge = Bridge::new(&h, &["a", "b"], false, false);
    let (_ours, theirs) = UnixStream::pair().unwrap();
    let (l, _) = tcp_listener();
    let cmd = testapp_cmd(&h, "never", &[]);
    let mut shim = Shim::start(&bridge.env, &strs(&cmd));
    bridge.hand_over(&shim, &frame(2), &[theirs.as_fd(), l.as_fd()]);
    let code = shim.exit_code(LONG);
    shim.check(code == 125, format!("125 expected, got {code}"));
    let err = shim.stderr();
    shim.check(
        err.contains("carries 2 fds, but the environment announces 3"),
        format!("message naming both counts expected, got {err:?}"),
    );
    shim.check(h.starts("never").is_empty(), "the payload must not run");
}

#[test]
fn shim_without_proxy_env_exits_125() {
    let mut shim = Shim::start(&[], &["/bin/true"]);
    let code = shim.exit_code(LONG);
    shim.check(code == 125, format!("125 expected, got {code}"));
    shim.check(shim.stderr().contains("shim: EMPEROR_PROXY is not set"), "message");
}

#[test]
fn shim_waits_for_the_proxy_socket_and_stops_on_sigterm_meanwhile() {
    // The socket appears late: the shim keeps trying.
    let h = Harness::new("shim_late_proxy");
    let proxy = h.sock("proxy.sock");
    let env = vec![("EMPEROR_PROXY", proxy.display().to_string())];
    let cmd = testapp_cmd(&h, "late", &[]);
    let mut shim = Shim::start(&env, &strs(&cmd));
    thread::sleep(Duration::from_millis(400));
    let running = shim.running();
    shim.check(running, "the shim must wait for the socket");
    let mut bridge = Bridge::new(&h, &[], false, false);
    let (_ours, theirs) = UnixStream::pair().unwrap();
    bridge.hand_over(&shim, &frame(1), &[theirs.as_fd()]);
    h.wait_starts("late", 1, LONG);
    shim.signal(libc::SIGTERM);
    assert_eq!(shim.exit_code(QUICK), 0);

    // The socket never appears and a stop comes: the shim does not sit out its 30 s.
    let h2 = Harness::new("shim_no_proxy");
    let env = vec![("EMPEROR_PROXY", h2.sock("proxy.sock").display().to_string())];
    let mut shim2 = Shim::start(&env, &["/bin/true"]);
    thread::sleep(Duration::from_millis(200));
    shim2.signal(libc::SIGTERM);
    let code = shim2.exit_code(QUICK);
    shim2.check(code == 128 + libc::SIGTERM, format!("143 expected, got {code}"));
    shim2.check(shim2.stderr().contains("shim: stopped by SIGTERM"), "message");
}

#[test]
fn shim_reaps_orphans_it_adopts() {
    // `(sleep 1 &)`: the subshell exits at once, its `sleep 1` is orphaned and reparented to the shim
    // (a child subreaper on the host, PID 1 in a container); when it exits, the shim must reap it.
    let h = Harness::new("shim_reaps");
    let (mut shim, _c) = {
        let mut bridge = Bridge::new(&h, &[], false, false);
        let (ours, theirs) = UnixStream::pair().unwrap();
        let shim = Shim::start(&bridge.env, &["/bin/sh", "-c", "(sleep 1 &); exec sleep 30"]);
        bridge.hand_over(&shim, &frame(1), &[theirs.as_fd()]);
        (shim, ours)
    };
    let spid = shim.pid() as i32;
    let children = || -> Vec<(i32, Option<char>)> {
        all_pids()
            .into_iter()
            .filter(|&p| ppid_pgid(p).map(|(pp, _)| pp) == Some(spid))
            .map(|p| (p, proc_state(p)))
            .collect()
    };
    let start = Instant::now();
    let mut adopted = None;
    while adopted.is_none() && start.elapsed() < Duration::from_millis(900) {
        adopted = children()
            .into_iter()
            .map(|(p, _)| p)
            .find(|&p| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep\x001\x00")));
        thread::sleep(Duration::from_millis(10));
    }
    let adopted = adopted.unwrap_or_else(|| panic!("the orphaned sleep was not adopted by the shim{}", shim.tail()));
    h.wait_for(
        || children().iter().all(|&(p, _)| p != adopted),
        LONG,
        "the adopted orphan to be reaped (not left a zombie)",
    );
    shim.check(
        children().iter().all(|(_, st)| *st != Some('Z')),
        format!("no zombie among the shim's children: {:?}", children()),
    );
    let running = shim.running();
    shim.check(running, "reaping an orphan must not end the shim");
    shim.signal(libc::SIGTERM);
    let code = shim.exit_code(QUICK);
    shim.check(
        code == 128 + libc::SIGTERM,
        format!("sleep dies of SIGTERM: 143 expected, got {code}"),
    );
}

#[test]
fn shim_exits_with_the_payload_even_if_a_grandchild_lives_on() {
    let h = Harness::new("shim_grandchild");
    let (mut shim, _c) = run_control_only(&h, "gc", &["--spawn-child"]);
    h.wait_for(
        || h.records("gc").iter().any(|r| r.kind == "child"),
        LONG,
        "the child record",
    );
    let app = h.starts("gc")[0].pid();
    let grandchild = h.records("gc").into_iter().find(|r| r.kind == "child").unwrap().pid();
    shim.check(
        ppid_pgid(grandchild).map(|(pp, _)| pp) == Some(app),
        "the grandchild is the app's child",
    );
    shim.signal(libc::SIGTERM);
    let code = shim.exit_code(QUICK);
    shim.check(code == 0, format!("the app's code 0 expected, got {code}"));
    // On the host the grandchild outlives the shim (reparented upwards); in a container, PID 1's exit
    // ends the whole pid namespace. The Harness kills it.
    shim.check(
        alive(grandchild),
        "the grandchild is not the shim's business on the host",
    );
}
