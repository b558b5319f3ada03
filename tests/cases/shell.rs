//! `emperor shell`: exec into a Docker vassal's container, piped and under a real pty: streams, exit
//! codes, the tty's size from the first byte, and what it says when the image lacks the command.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::util::docker::{BUSYBOX_IMAGE, DockerSweep, docker_ok, testapp_vassal, unique_name, wait_container_status};
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

/// Runs `emperor shell <args>` on a new pty of `rows`x`cols` (its stdin, stdout and stderr) and nothing
/// typed; returns (exit code, everything written on the pty, seconds taken).
fn shell_pty(args: &[&str], rows: u16, cols: u16) -> (Option<i32>, String, f64) {
    let ws = nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None).unwrap();
    // openpty's fds are inheritable: keep them out of the children other tests spawn meanwhile (a
    // slave held open elsewhere would delay the EIO the loop below also stops on).
    for fd in [pty.master.as_fd(), pty.slave.as_fd()] {
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC)).unwrap();
    }
    let slave = std::fs::File::from(pty.slave);
    let start = Instant::now();
    let mut child = Command::new(EMPEROR)
        .arg("shell")
        .args(args)
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let mut master = std::fs::File::from(pty.master);
    let mut out = Vec::new();
    let mut status = None;
    loop {
        let mut fds = [nix::poll::PollFd::new(master.as_fd(), nix::poll::PollFlags::POLLIN)];
        let ready = nix::poll::poll(&mut fds, 100u16).unwrap_or(0);
        if ready > 0 {
            let mut buf = [0u8; 4096];
            match master.read(&mut buf) {
                Ok(n) if n > 0 => out.extend_from_slice(&buf[..n]),
                // EIO: every slave fd is closed, so the child is gone.
                _ => break,
            }
            continue;
        }
        // 100 ms without output after the exit: all of it has been read.
        if status.is_some() {
            break;
        }
        status = child.try_wait().unwrap();
        if status.is_none() && start.elapsed() > LONG {
            let _ = child.kill();
            panic!(
                "emperor shell {args:?} did not exit; the pty said {:?}",
                String::from_utf8_lossy(&out)
            );
        }
    }
    let status = match status {
        Some(st) => st,
        None => child.wait().unwrap(),
    };
    (
        status.code(),
        String::from_utf8_lossy(&out).into_owned(),
        start.elapsed().as_secs_f64(),
    )
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

    // A command that is not in the image, piped and under a tty: one line that says what to do, 127.
    for tty in [false, true] {
        let (code, out, err) = if tty {
            let (code, out, _) = shell_pty(&[&file, "nosuchcmd", "x"], 24, 80);
            (code, String::new(), out)
        } else {
            shell_piped(&[&file, "nosuchcmd", "x"], b"")
        };
        h.check(code == Some(127), format!("tty {tty}: exit code {code:?} ({err:?})"));
        h.check(
            err.contains(&format!(
                "emperor shell: the image of {file} (emperor-test/busybox) has no \"nosuchcmd\" in its PATH ("
            )) && err.contains(&format!("emperor shell {file} -- COMMAND [ARG]..."))
                && err.contains("(the vassal itself runs /bin/sleep 3600)")
                && !err.contains("OCI runtime")
                && !err.contains('\x1b')
                && out.is_empty(),
            format!("tty {tty}: the message: {err:?}, stdout {out:?}"),
        );
        // One that is there but cannot be run: 126, and why.
        let (code, err) = if tty {
            let (code, out, _) = shell_pty(&[&file, "/etc"], 24, 80);
            (code, out)
        } else {
            let (code, _, err) = shell_piped(&[&file, "/etc"], b"");
            (code, err)
        };
        h.check(
            code == Some(126),
            format!("tty {tty}: /etc's exit code {code:?} ({err:?})"),
        );
        h.check(
            err.contains(&format!("emperor shell: cannot run /etc in {file}: "))
                && err.to_lowercase().contains("permission denied"),
            format!("tty {tty}: /etc's message: {err:?}"),
        );
        // Output that only looks like Docker's report is the command's, and so is its exit code.
        let fake = "OCI runtime exec failed: exec failed: exec: \"x\": executable file not found in $PATH";
        let script = format!("echo '{fake}'; exit 126");
        let (code, out) = if tty {
            let (code, out, _) = shell_pty(&[&file, "sh", "-c", &script], 24, 80);
            (code, out)
        } else {
            let (code, out, err) = shell_piped(&[&file, "sh", "-c", &script], b"");
            (code, out + &err)
        };
        h.check(
            code == Some(126),
            format!("tty {tty}: the fake's exit code {code:?} ({out:?})"),
        );
        h.check(
            out.trim_end() == fake,
            format!("tty {tty}: the command's own output, untouched: {out:?}"),
        );
    }
}

/// `emperor shell` into a `FROM scratch` image (the test app's, which has no /bin/sh): no raw Docker
/// error, but which image lacks what, how to pass a command, and what the vassal runs; exit 127. A
/// command that is in the image runs.
#[test]
fn shell_into_an_image_without_a_shell_says_to_pass_a_command() {
    let sweep = DockerSweep::new();
    let mut h = Harness::new("shell_noshell");
    let name = unique_name("noshell");
    let file = format!("{name}.ini");
    h.write_vassal(&file, &testapp_vassal(&h, &name, ""));
    let args = sweep.emperor_args();
    h.start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    h.wait_starts(&name, 1, LONG);

    let want = format!(
        "emperor shell: the image of {file} (emperor-test/testapp) has no /bin/sh, so there is no shell to run \
         (a FROM scratch image?); pass a command that exists in the image: emperor shell {file} -- COMMAND \
         [ARG]... (the vassal itself runs /testapp --name {name} --record /rec/{name}.rec)"
    );
    // Piped (the exec runs /bin/sh directly) and under a tty (through the container's emperor binary).
    let (code, out, err) = shell_piped(&[&name], b"");
    h.check(code == Some(127), format!("piped: exit code {code:?} ({err:?})"));
    h.check(
        err.trim_end() == want && out.is_empty(),
        format!("piped: {err:?} {out:?}"),
    );
    let (code, out, _) = shell_pty(&[&name], 24, 80);
    h.check(code == Some(127), format!("tty: exit code {code:?} ({out:?})"));
    h.check(out.trim_end() == want, format!("tty: the pty shows {out:?}"));

    // An explicit command the image lacks, by path.
    for tty in [false, true] {
        let (code, msg) = if tty {
            let (code, out, _) = shell_pty(&[&file, "/bin/ls", "/"], 24, 80);
            (code, out)
        } else {
            let (code, _, err) = shell_piped(&[&file, "/bin/ls", "/"], b"");
            (code, err)
        };
        h.check(
            code == Some(127),
            format!("tty {tty}: /bin/ls's exit code {code:?} ({msg:?})"),
        );
        h.check(
            msg.starts_with(&format!(
                "emperor shell: the image of {file} (emperor-test/testapp) has no /bin/ls; pass a command"
            )) && !msg.contains("OCI runtime"),
            format!("tty {tty}: {msg:?}"),
        );
    }

    // What the message suggests works: a command that is in the image (`--` is optional).
    let (code, _, err) = shell_piped(&[&file, "--", "/testapp", "--no-such-flag"], b"");
    h.check(
        code == Some(2) && err.contains("testapp: unknown argument"),
        format!("the image's own program ran: {code:?} {err:?}"),
    );
}

/// The command sees the terminal's size from its first instruction: `stty size` as the command itself,
/// on ptys of ten different sizes in a row, every one right (the daemon here speaks API 1.41, where the
/// exec's resize can only come after the command started).
#[test]
fn shell_under_a_pty_has_the_terminal_size_from_the_first_byte() {
    let sweep = DockerSweep::new();
    let mut h = Harness::new("shell_size");
    let file = busybox_vassal(&mut h, &sweep, "size");

    let mut times = Vec::new();
    for i in 0..10u16 {
        let (rows, cols) = (20 + i, 70 + 7 * i);
        let (code, out, secs) = shell_pty(&[&file, "stty", "size"], rows, cols);
        times.push(secs);
        h.check(
            code == Some(0) && out == format!("{rows} {cols}\r\n"),
            format!("try {i}: `stty size` on a {rows}x{cols} pty said {out:?} (exit {code:?})"),
        );
    }
    times.sort_by(f64::total_cmp);
    eprintln!(
        "emperor shell <busybox> stty size: median {:.3}s, max {:.3}s",
        times[5], times[9]
    );

    // The variable that carries the size into the container does not reach the command; TERM does.
    let (code, out, _) = shell_pty(
        &[&file, "sh", "-c", "echo \"[$EMPEROR_SHELL_TTY_SIZE] $TERM\"; tty"],
        30,
        100,
    );
    h.check(
        code == Some(0) && out.starts_with("[] ") && out.contains("/dev/pts/"),
        format!("the command's environment and tty: {out:?}"),
    );
}

/// A container whose `/.emperor/emperor` is not one that knows the in-container mode (a container
/// created before an upgrade; here a script that fails like an old binary): its output never shows, the
/// command runs directly instead, with its own output and exit code.
#[test]
fn shell_falls_back_when_the_containers_emperor_binary_is_older() {
    let sweep = DockerSweep::new();
    let h = Harness::new("shell_old");
    let name = format!("{}.ini", unique_name("old"));
    let fake = h.root.join("old-emperor");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho \"error: unrecognized subcommand 'shell'\"\nexit 2\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut run: Vec<String> = ["run", "-d", "--name", &name, "--network", "none", "--label"]
        .map(String::from)
        .to_vec();
    run.push(format!("emperor.vassal={name}"));
    run.extend(sweep.run_args());
    run.extend(["-v".into(), format!("{}:/.emperor/emperor:ro", fake.display())]);
    run.extend([BUSYBOX_IMAGE, "/bin/sleep", "3600"].map(String::from));
    docker_ok(&run.iter().map(String::as_str).collect::<Vec<_>>());
    h.check(wait_container_status(&name, "running", LONG), "the container runs");

    let (code, out, secs) = shell_pty(&[&name, "sh", "-c", "echo hi; exit 3"], 24, 80);
    eprintln!("fallback session: {secs:.3}s");
    h.check(
        code == Some(3) && out == "hi\r\n",
        format!("the command ran directly: exit {code:?}, pty {out:?}"),
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
