//! `--emperor-stats` (the JSON document), `emperor status`, and systemd's notify protocol.

use crate::util::*;
use std::io::Read;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// One running vassal (`a.ini`) and one that crashes at once and is throttled (`c.ini`).
fn two_vassals(h: &Harness) {
    h.write_vassal("a.ini", &h.app_ini("a.ini", ""));
    h.write_vassal("c.ini", &h.app_ini("c.ini", "--crash"));
}

fn fetch_unix(path: &std::path::Path) -> Value {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    serde_json::from_str(&buf).unwrap_or_else(|e| panic!("invalid JSON ({e}):\n{buf}"))
}

fn fetch_tcp(port: u16) -> Value {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    serde_json::from_str(&buf).unwrap_or_else(|e| panic!("invalid JSON ({e}):\n{buf}"))
}

fn vassal<'a>(doc: &'a Value, id: &str) -> &'a Value {
    doc["vassals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("no vassal {id} in {doc:#}"))
}

/// Waits until the document satisfies `ok`, fetching it again and again.
fn wait_doc(h: &Harness, fetch: impl Fn() -> Value, ok: impl Fn(&Value) -> bool, what: &str) -> Value {
    let start = Instant::now();
    loop {
        let doc = fetch();
        if ok(&doc) {
            return doc;
        }
        if start.elapsed() > LONG {
            h.check(false, format!("stats never showed {what}: {doc:#}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn check_document(h: &Harness, doc: &Value, pid_a: i32) {
    for k in [
        "version",
        "pid",
        "uid",
        "gid",
        "cwd",
        "emperor",
        "emperor_tyrant",
        "throttle_level",
        "vassals",
        "blacklist",
    ] {
        h.check(doc.get(k).is_some(), format!("document lacks {k}: {doc:#}"));
    }
    h.check(doc["pid"] == h.emperor_pid, "pid is the emperor's");
    let dir = std::fs::canonicalize(h.vassals()).unwrap();
    h.check(
        doc["emperor"][0] == dir.to_str().unwrap(),
        format!("emperor: {}", doc["emperor"]),
    );
    let a = vassal(doc, "a.ini");
    for k in [
        "id",
        "pid",
        "born",
        "last_mod",
        "loyal",
        "ready",
        "accepting",
        "last_loyal",
        "cursed",
        "zerg",
        "on_demand",
        "uid",
        "gid",
        "monitor",
        "respawns",
        "state",
        "state_since",
        "kind",
        "container",
        "sockets",
        "restarts",
        "last_exit",
        "throttle",
        "error",
    ] {
        h.check(a.get(k).is_some(), format!("vassal lacks {k}: {a:#}"));
    }
    h.check(a["pid"] == pid_a, format!("a.ini pid {} != {pid_a}", a["pid"]));
    h.check(
        a["state"] == "running" && a["kind"] == "process",
        format!("a.ini: {a:#}"),
    );
    h.check(
        a["container"].is_null() && a["throttle"].is_null(),
        format!("a.ini: {a:#}"),
    );
    h.check(
        a["state_since"].as_u64().is_some_and(|t| t > 1_600_000_000),
        "state_since is UNIX seconds",
    );
    let sock = &a["sockets"][0];
    h.check(
        sock["addr"] == h.sock("a.ini.sock").to_str().unwrap(),
        format!("a.ini socket: {sock}"),
    );
    h.check(
        sock["connections"].as_u64().is_some_and(|c| c >= 1),
        format!("the held connection must be counted: {sock}"),
    );
    let c = vassal(doc, "c.ini");
    h.check(c["pid"] == -1, format!("a throttled vassal has pid -1: {c:#}"));
    h.check(
        c["throttle"]["attempts"].as_u64().is_some_and(|n| n >= 1) && c["throttle"]["next_start"].as_u64().is_some(),
        format!("c.ini throttle: {c:#}"),
    );
    h.check(c["last_exit"]["reason"] == "crashed", format!("c.ini last_exit: {c:#}"));
    let bl = doc["blacklist"].as_array().unwrap();
    h.check(
        bl.iter().any(|b| {
            b["id"] == "c.ini"
                && b["attempt"].as_u64().is_some_and(|n| n >= 1)
                && b["throttle_level"].as_u64().is_some()
        }),
        format!("c.ini must be in the blacklist: {bl:?}"),
    );
    h.check(!bl.iter().any(|b| b["id"] == "a.ini"), "a.ini is not throttled");
}

fn status(args: &[&str]) -> std::process::Output {
    Command::new(EMPEROR).arg("status").args(args).output().unwrap()
}

#[test]
fn stats_over_a_unix_socket_and_emperor_status() {
    let mut h = Harness::new("stats_unix");
    two_vassals(&h);
    let stats = h.root.join("stats.sock");
    let stats_s = stats.to_str().unwrap().to_string();
    // A long throttle keeps c.ini throttled while the test looks.
    h.start(&["--emperor-stats", &stats_s, "--emperor-throttle", "5000"]);
    let a = h.wait_starts("a.ini", 1, LONG)[0].pid();
    h.wait_for(|| stats.exists() && h.sock("a.ini.sock").exists(), LONG, "stats socket");
    let _held = UnixStream::connect(h.sock("a.ini.sock")).unwrap();
    let doc = wait_doc(
        &h,
        || fetch_unix(&stats),
        |d| vassal(d, "c.ini")["state"] == "throttled" && vassal(d, "a.ini")["state"] == "running",
        "a.ini running and c.ini throttled",
    );
    check_document(&h, &doc, a);

    let out = status(&["--stats", &stats_s]);
    let text = String::from_utf8_lossy(&out.stdout);
    h.check(out.status.success(), format!("emperor status failed: {out:?}"));
    let row = |id: &str| text.lines().find(|l| l.starts_with(id)).map(str::to_owned);
    h.check(
        row("a.ini").is_some_and(|l| l.contains("running") && l.contains(&a.to_string())),
        format!("status table:\n{text}"),
    );
    h.check(
        row("c.ini").is_some_and(|l| l.contains("throttled") && l.contains("attempt")),
        format!("status table:\n{text}"),
    );
    let out = status(&["--stats", &stats_s, "--json"]);
    h.check(out.status.success(), format!("emperor status --json failed: {out:?}"));
    let v: Value = serde_json::from_slice(&out.stdout).expect("--json prints valid JSON");
    h.check(
        v["vassals"].as_array().is_some_and(|l| l.len() == 2),
        "two vassals in --json",
    );

    h.signal(libc::SIGTERM);
    h.wait_exit(LONG);
    h.check(!stats.exists(), "the stats socket is unlinked on exit");
}

#[test]
fn stats_over_tcp() {
    let mut h = Harness::new("stats_tcp");
    two_vassals(&h);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    h.start(&["--emperor-stats", &addr, "--emperor-throttle", "5000"]);
    let a = h.wait_starts("a.ini", 1, LONG)[0].pid();
    h.wait_for(|| h.sock("a.ini.sock").exists(), LONG, "a.ini socket");
    let _held = UnixStream::connect(h.sock("a.ini.sock")).unwrap();
    h.wait_for(
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        LONG,
        "stats port",
    );
    let doc = wait_doc(
        &h,
        || fetch_tcp(port),
        |d| vassal(d, "c.ini")["state"] == "throttled" && vassal(d, "a.ini")["state"] == "running",
        "a.ini running and c.ini throttled",
    );
    check_document(&h, &doc, a);
    let out = status(&["--stats", &addr]);
    h.check(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("c.ini"),
        format!("emperor status over TCP: {out:?}"),
    );
}

#[test]
fn status_without_an_emperor_says_so() {
    let h = Harness::new("status_unreachable");
    let missing = h.root.join("nothing.sock");
    for addr in [
        missing.to_str().unwrap().to_string(),
        format!("127.0.0.1:{}", free_port()),
    ] {
        let out = status(&["--stats", &addr]);
        let err = String::from_utf8_lossy(&out.stderr);
        h.check(!out.status.success(), format!("must fail: {out:?}"));
        h.check(
            err.contains(&format!("is the emperor running with --emperor-stats {addr}?")),
            format!("unclear error: {err}"),
        );
    }
}

#[test]
fn systemd_notify() {
    let h = Harness::new("systemd_notify");
    two_vassals(&h);
    let path = h.root.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let _ = testapp();
    // Started here rather than by the harness, to give it NOTIFY_SOCKET; the harness still kills it
    // (and the vassals it recorded) if the test fails.
    let log_path = h.root.join("emperor.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(EMPEROR)
        .args(["--emperor-throttle", "5000"])
        .arg(h.vassals())
        .env("NOTIFY_SOCKET", &path)
        .env("EMPEROR_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    h.extra_pids.lock().unwrap().push(child.id() as i32);
    let logged = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut msgs: Vec<String> = Vec::new();
    let recv_until = |msgs: &mut Vec<String>, pred: &dyn Fn(&str) -> bool, what: &str| {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        while start.elapsed() < LONG {
            if let Ok(n) = sock.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                msgs.push(m.clone());
                if pred(&m) {
                    return;
                }
            }
        }
        panic!("no {what}; got {msgs:?}; log:\n{}", logged());
    };
    recv_until(&mut msgs, &|m| m == "READY=1", "READY=1");
    // Both vassals were spawned before READY=1 was sent (and their log lines written).
    let log_at_ready = logged();
    assert!(
        log_at_ready.contains("[a.ini] spawned pid") && log_at_ready.contains("[c.ini] spawned pid"),
        "READY=1 before the vassals were spawned:\n{log_at_ready}"
    );
    recv_until(
        &mut msgs,
        &|m| m == "STATUS=2 vassals: 1 running, 0 waiting, 1 throttled, 0 invalid",
        "STATUS= with one running and one throttled vassal",
    );
    kill(child.id() as i32, libc::SIGTERM);
    recv_until(&mut msgs, &|m| m == "STOPPING=1", "STOPPING=1");
    let st = child.wait().unwrap();
    assert!(st.success(), "emperor exit: {st:?}\n{}", logged());
}
