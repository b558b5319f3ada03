//! `emperor shell`: exec into a Docker vassal's container, piped and under a real pty.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::util::docker::{DockerSweep, unique_name, wait_container_status};
use crate::util::{EMPEROR, Harness, LONG};

/// A running busybox Docker vassal named `<name>.ini`; returns its file name.
fn busybox_vassal(h: &mut Harness, sweep: &DockerSweep, prefix: &str) -> String {
    let name = unique_name(prefix);
    let file = format!("{name}.ini");
    h.write_vassal(
        &file,
        "[emperor]\ndocker-image = emperor-test/busybox\ndocker-network-mode = none\nexec = /bin/sleep 3600\n",
    );
    let args = sweep.emperor_args();
    h.start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    h.wait_vlog(&file, "started", LONG);
    h.check(
        wait_container_status(&file, "running", LONG),
        "the vassal's container runs",
    );
    file
}

/// Runs `emperor shell <args>` with `input` piped to it; returns (exit code, stdout, stderr).
fn shell_piped(args: &[&str], input: &[u8]) -> (Option<i32>, String, String) {
    let mut child = Command::new(EMPEROR)
        .arg("shell")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(LONG)
        .expect("emperor shell did not finish in time")
        .unwrap();
    let _ = writer.join();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn shell_runs_a_command_passes_the_exit_code_and_streams_stdin() {
    let sweep = DockerSweep::new();
    let mut h = Harness::new("shell_cmd");
    let file = busybox_vassal(&mut h, &sweep, "sh");

    let (code, out, err) = shell_piped(&[&file, "/bin/sh", "-c", "echo hi; echo oops >&2; exit 7"], b"");
    h.check(code == Some(7), format!("exit code {code:?} (stderr {err:?})"));
    h.check(out == "hi\n", format!("stdout {out:?}"));
    h.check(err == "oops\n", format!("stderr kept apart: {err:?}"));

    // The name without `.ini` works too, and piped stdin reaches the command, EOF included.
    let short = file.trim_end_matches(".ini");
    let input: Vec<u8> = (0..20_000).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
    let (code, out, err) = shell_piped(&[short, "cat"], &input);
    h.check(code == Some(0), format!("cat's exit code {code:?} (stderr {err:?})"));
    h.check(
        out.as_bytes() == input.as_slice(),
        format!("cat echoed {} of {} bytes", out.len(), input.len()),
    );
}

#[test]
fn shell_reports_an_unknown_vassal_with_exit_2() {
    let _sweep = DockerSweep::new();
    let missing = unique_name("nosuch");
    let (code, _, err) = shell_piped(&[&missing, "true"], b"");
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(
        err.contains(&format!("no vassal \"{missing}\"")) && err.contains("process vassal"),
        "message: {err}"
    );
    // An unreachable daemon is a different failure.
    let (code, _, err) = shell_piped(&["--docker-daemon-socket", "/nonexistent/d.sock", &missing], b"");
    assert_eq!(code, Some(125), "stderr: {err}");
    assert!(err.contains("cannot reach the Docker daemon"), "message: {err}");
}

fn set_winsize(fd: &OwnedFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ only reads a `struct winsize` through the pointer, which points to a live local of
    // that type, and the fd is an open pty held by `fd`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws as *const libc::winsize) };
    assert_eq!(r, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
}

#[test]
fn shell_under_a_pty_gets_a_tty_of_the_terminal_size_and_follows_resizes() {
    let sweep = DockerSweep::new();
    let mut h = Harness::new("shell_tty");
    let file = busybox_vassal(&mut h, &sweep, "tty");

    let ws = nix::pty::Winsize {
        ws_row: 33,
        ws_col: 97,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None).unwrap();
    let slave = std::fs::File::from(pty.slave);
    let mut child = Command::new(EMPEROR)
        .args(["shell", &file])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let master = pty.master;
    let mut reader = std::fs::File::from(master.try_clone().unwrap());
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // EIO once the last slave fd is closed.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let wait_for = |needle: &str, seen: &mut String| {
        let start = Instant::now();
        while !seen.contains(needle) {
            let left = LONG.checked_sub(start.elapsed()).unwrap_or_default();
            match rx.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(b) => seen.push_str(&String::from_utf8_lossy(&b)),
                Err(_) => panic!("no {needle:?} on the pty; got {seen:?}"),
            }
        }
    };
    let mut writer = std::fs::File::from(master.try_clone().unwrap());
    writer.write_all(b"tty; stty size; echo ma''rk1\n").unwrap();
    wait_for("mark1", &mut seen);
    h.check(seen.contains("/dev/pts/"), format!("a tty inside: {seen:?}"));
    h.check(seen.contains("33 97"), format!("the terminal's size inside: {seen:?}"));

    // A resize of the local terminal (the kernel sends SIGWINCH to its foreground group; we have no
    // controlling terminal here, so send it ourselves) reaches the exec.
    set_winsize(&master, 41, 120);
    crate::util::kill(pid, libc::SIGWINCH);
    thread::sleep(Duration::from_millis(300));
    writer.write_all(b"stty size; echo ma''rk2\n").unwrap();
    wait_for("mark2", &mut seen);
    let after = seen.rsplit("mark1").next().unwrap_or("").to_string();
    h.check(after.contains("41 120"), format!("the new size inside: {after:?}"));

    writer.write_all(b"exit 5\n").unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > LONG {
            let _ = child.kill();
            panic!("emperor shell did not exit; pty said {seen:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    h.check(status.code() == Some(5), format!("exit status {status:?}"));
    // The local terminal is back in cooked mode (echo and canonical input on).
    let t = nix::sys::termios::tcgetattr(&master).unwrap();
    h.check(
        t.local_flags
            .contains(nix::sys::termios::LocalFlags::ICANON | nix::sys::termios::LocalFlags::ECHO),
        format!("terminal restored: {:?}", t.local_flags),
    );
}
