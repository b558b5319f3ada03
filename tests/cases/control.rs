//! `--emperor-control` and `emperor restart|stop|start`.

use crate::util::*;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

fn control_path(h: &Harness) -> PathBuf {
    h.root.join("control.sock")
}

fn ok(h: &Harness, out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    h.check(
        out.status.success(),
        format!(
            "{what}: {:?} stdout {stdout:?} stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    );
    stdout
}

fn state_of(stats: &Path, id: &str) -> String {
    let mut s = UnixStream::connect(stats).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let doc: Value = serde_json::from_str(&buf).unwrap();
    doc["vassals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == id)
        .map(|v| v["state"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

#[test]
fn restart_bypasses_a_long_throttle() {
    let mut h = Harness::new("ctl_restart");
    let control = control_path(&h);
    h.write_vassal("c.ini", &h.app_ini("c.ini", "--crash"));
    h.start(&[
        "--emperor-control",
        control.to_str().unwrap(),
        "--emperor-throttle",
        "60000",
        "--emperor-max-throttle",
        "600000",
    ]);
    let pid = h.wait_starts("c.ini", 1, LONG)[0].pid();
    h.wait_for(
        || h.vlog_after(0, "c.ini", "throttled") && !alive(pid),
        LONG,
        "the crashed vassal throttled for 60 s",
    );
    let mode = std::fs::metadata(&control).unwrap().permissions().mode() & 0o777;
    h.check(mode == 0o600, format!("the control socket is 0600, not {mode:o}"));

    let t = Instant::now();
    let out = ctl(&control, &["restart", "c.ini"]);
    let said = ok(&h, &out, "emperor restart");
    h.check(said.contains("restarting c.ini"), format!("reply: {said:?}"));
    h.wait_starts("c.ini", 2, Duration::from_secs(5));
    h.check(
        t.elapsed() < Duration::from_secs(5),
        format!("restarted at once, not after the throttle: {:?}", t.elapsed()),
    );

    // Unknown vassals and bad requests are errors, and the client says so.
    let out = ctl(&control, &["restart", "nope.ini"]);
    h.check(!out.status.success(), "an unknown vassal fails");
    let err = String::from_utf8_lossy(&out.stderr);
    h.check(err.contains("no vassal named nope.ini"), format!("stderr: {err:?}"));
}

#[test]
fn stop_holds_the_sockets_and_start_serves_the_queued_client() {
    let mut h = Harness::new("ctl_stop_start");
    let control = control_path(&h);
    let stats = h.root.join("stats.sock");
    h.write_vassal("a.ini", &h.app_ini("a.ini", ""));
    h.start(&[
        "--emperor-control",
        control.to_str().unwrap(),
        "--emperor-stats",
        stats.to_str().unwrap(),
        "--emperor-freq",
        "1",
    ]);
    let sock = h.sock("a.ini.sock");
    let r = h.wait_http_unix(&sock, LONG);
    h.check(r.contains("hello from a.ini"), format!("served before: {r:?}"));
    let pid = h.starts("a.ini")[0].pid();

    // `a` means `a.ini`.
    let said = ok(&h, &ctl(&control, &["stop", "a"]), "emperor stop");
    h.check(said.contains("stopping a.ini"), format!("reply: {said:?}"));
    h.wait_dead(pid, LONG, "the stopped vassal");
    h.wait_for(|| state_of(&stats, "a.ini") == "held", LONG, "state held in the stats");
    h.check(sock.exists(), "the socket stays bound");

    // A client queues on the bound socket and waits; nothing starts, also past a rescan (1 s).
    let s = sock.clone();
    let queued = thread::spawn(move || http_get_unix(&s, Duration::from_secs(30)));
    thread::sleep(Duration::from_millis(2500));
    h.check(
        h.starts("a.ini").len() == 1,
        "a held vassal is not started by a connection or a rescan",
    );
    h.check(!queued.is_finished(), "the queued client is still waiting");
    h.check(state_of(&stats, "a.ini") == "held", "still held");
    let again = ok(&h, &ctl(&control, &["stop", "a.ini"]), "second stop");
    h.check(again.contains("already stopped"), format!("reply: {again:?}"));

    let said = ok(&h, &ctl(&control, &["start", "a.ini"]), "emperor start");
    h.check(said.contains("starting a.ini"), format!("reply: {said:?}"));
    let r = queued.join().unwrap();
    h.check(
        r.as_ref().is_ok_and(|r| r.contains("hello from a.ini")),
        format!("the queued client gets its answer: {r:?}"),
    );
    h.check(h.starts("a.ini").len() == 2, "one new process");
    let said = ok(&h, &ctl(&control, &["start", "a.ini"]), "start while running");
    h.check(said.contains("is not stopped"), format!("reply: {said:?}"));

    // A change of the file releases a held vassal too.
    let pid = h.starts("a.ini")[1].pid();
    ok(&h, &ctl(&control, &["stop", "a.ini"]), "stop again");
    h.wait_dead(pid, LONG, "the stopped vassal");
    h.wait_for(|| state_of(&stats, "a.ini") == "held", LONG, "held again");
    h.touch_vassal("a.ini");
    h.wait_starts("a.ini", 3, LONG);
}

#[test]
fn a_client_of_another_user_is_refused() {
    // The suite runs as root (scripts/setup needs it too); without root this test cannot run a client
    // as another uid, and it fails rather than passing without testing anything.
    assert_eq!(
        nix::unistd::getuid().as_raw(),
        0,
        "this test must run as root: it runs a client as uid 65534"
    );
    let mut h = Harness::new("ctl_refused");
    let control = control_path(&h);
    h.write_vassal("a.ini", &h.app_ini("a.ini", ""));
    h.start(&["--emperor-control", control.to_str().unwrap()]);
    let pid = h.wait_starts("a.ini", 1, LONG)[0].pid();
    h.wait_for(|| control.exists(), LONG, "the control socket");
    // Open the file mode wide: the SO_PEERCRED check, not the mode, must refuse the client.
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut cmd = Command::new(EMPEROR);
    cmd.args(["stop", "a.ini", "--control"])
        .arg(&control)
        .env_remove("EMPEROR_CONTROL");
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    h.check(!out.status.success(), "the client fails");
    h.check(err.contains("permission denied"), format!("stderr: {err:?}"));
    h.wait_log("refused a client with uid 65534", LONG);
    thread::sleep(Duration::from_millis(300));
    h.check(alive(pid), "the vassal was not stopped");
    // Root still may.
    ok(&h, &ctl(&control, &["stop", "a.ini"]), "root's stop");
    h.wait_dead(pid, LONG, "the vassal stopped by root");
}
