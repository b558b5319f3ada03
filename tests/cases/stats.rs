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
    h.start(&[
        "--emperor-stats",
        &stats_s,
        "--emperor-throttle",
        "5000",
        "--chmod-socket",
        "660",
    ]);
    let a = h.wait_starts("a.ini", 1, LONG)[0].pid();
    h.wait_for(|| stats.exists() && h.sock("a.ini.sock").exists(), LONG, "stats socket");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&stats).map(|m| m.permissions().mode() & 0o777);
    h.check(
        mode.as_ref().is_ok_and(|m| *m == 0o660),
        format!(
            "the stats socket gets --chmod-socket, as uWSGI's: {:?}",
            mode.as_ref().map(|m| format!("{m:o}"))
        ),
    );
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

fn socket_of<'a>(v: &'a Value, addr: &str) -> &'a Value {
    v["sockets"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["addr"] == addr))
        .unwrap_or_else(|| panic!("no socket {addr} in {v:#}"))
}

/// Clients wait on a held vassal's unix and TCP sockets: the kernel's accept queue counts them (sock_diag),
/// the backlog is the vassal's `listen`, and the queues empty once the vassal runs and serves them.
#[test]
fn accept_queues_of_a_held_vassal() {
    let mut h = Harness::new("stats_queue");
    let port = free_port();
    let unix = h.sock("q.sock");
    let tcp = format!("127.0.0.1:{port}");
    h.write_vassal(
        "q.ini",
        &format!(
            "[emperor]\nsocket = {}\nsocket = {tcp}\nlisten = 64\n{}",
            unix.display(),
            h.exec_line("q", "")
        ),
    );
    let stats = h.root.join("stats.sock");
    let control = h.root.join("control.sock");
    h.start(&[
        "--emperor-stats",
        stats.to_str().unwrap(),
        "--emperor-control",
        control.to_str().unwrap(),
    ]);
    h.wait_starts("q", 1, LONG);
    h.wait_for(|| stats.exists(), LONG, "stats socket");
    ctl_ok(&h, &control, &["stop", "q.ini"]);
    wait_doc(
        &h,
        || fetch_unix(&stats),
        |d| vassal(d, "q.ini")["state"] == "held",
        "q.ini held",
    );

    // Nothing accepts while it is held: every client waits in the backlog, each with its request sent.
    let request = b"GET / HTTP/1.0\r\n\r\n";
    let mut clients: Vec<Box<dyn std::io::Read>> = Vec::new();
    for _ in 0..3 {
        let mut c = UnixStream::connect(&unix).unwrap();
        std::io::Write::write_all(&mut c, request).unwrap();
        c.set_read_timeout(Some(LONG)).unwrap();
        clients.push(Box::new(c));
    }
    for _ in 0..2 {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        std::io::Write::write_all(&mut c, request).unwrap();
        c.set_read_timeout(Some(LONG)).unwrap();
        clients.push(Box::new(c));
    }
    let doc = wait_doc(
        &h,
        || fetch_unix(&stats),
        |d| {
            let q = vassal(d, "q.ini");
            socket_of(q, unix.to_str().unwrap())["queue"] == 3 && socket_of(q, &tcp)["queue"] == 2
        },
        "3 queued on the unix socket and 2 on the TCP socket",
    );
    let q = vassal(&doc, "q.ini");
    let (u, t) = (socket_of(q, unix.to_str().unwrap()), socket_of(q, &tcp));
    h.check(
        u["backlog"] == 64 && t["backlog"] == 64,
        format!("backlog = listen: {u} {t}"),
    );
    h.check(
        u["connections"] == 3,
        format!("queued connections are open ones too: {u}"),
    );

    // Released, the app serves them all: the queues empty and every client gets its answer.
    ctl_ok(&h, &control, &["start", "q.ini"]);
    for c in &mut clients {
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        h.check(answer.contains("hello from q"), format!("answer: {answer:?}"));
    }
    wait_doc(
        &h,
        || fetch_unix(&stats),
        |d| {
            let q = vassal(d, "q.ini");
            socket_of(q, unix.to_str().unwrap())["queue"] == 0 && socket_of(q, &tcp)["queue"] == 0
        },
        "empty queues once the vassal served its clients",
    );
}

/// Sum of the resident memory of a process group's live members, as the test reads it.
fn group_rss(pgid: i32) -> u64 {
    let page = 4096; // x86_64
    group_members(pgid)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/statm")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum::<u64>()
        * page
}

/// Process vassals: memory and CPU of the process group from /proc; the start time of one that speaks the
/// uWSGI protocol runs until it says `accepting`, and a silent one has none.
#[test]
fn process_vassal_memory_cpu_and_start_time() {
    let mut h = Harness::new("stats_usage");
    // Ready after 200 ms and accepting after 400 ms; a child in its process group.
    h.write_vassal("p.ini", &h.app_ini("p", "--speak --speak-delay 200 --spawn-child"));
    h.write_vassal("s.ini", &h.app_ini("s", ""));
    let stats = h.root.join("stats.sock");
    h.start(&["--emperor-stats", stats.to_str().unwrap()]);
    let p = h.wait_starts("p", 1, LONG)[0].pid();
    h.wait_for(|| h.records("p").iter().any(|r| r.kind == "child"), LONG, "p's child");
    h.wait_for(|| stats.exists(), LONG, "stats socket");
    let doc = wait_doc(
        &h,
        || fetch_unix(&stats),
        |d| vassal(d, "p.ini")["last_start_until"] == "accepting" && !vassal(d, "s.ini")["memory"].is_null(),
        "p.ini accepting and s.ini measured",
    );
    let v = vassal(&doc, "p.ini");
    let ms = v["last_start_ms"].as_u64();
    h.check(
        ms.is_some_and(|ms| (400..60_000).contains(&ms)),
        format!("p.ini took 400 ms and more to accept: {v:#}"),
    );
    h.check(v["memory"]["source"] == "proc", format!("memory: {}", v["memory"]));
    let mem = v["memory"]["bytes"].as_u64().unwrap_or(0);
    let seen = group_rss(p);
    h.check(
        mem > 0 && mem >= seen / 2 && mem <= seen * 2,
        format!("p.ini memory {mem} vs the group's resident memory {seen}"),
    );
    h.check(v["cpu_usec"].is_u64(), format!("cpu_usec: {v:#}"));

    let s = vassal(&doc, "s.ini");
    h.check(
        s["last_start_ms"].is_null() && s["last_start_until"].is_null(),
        format!("a silent process vassal has no start time: {s:#}"),
    );
    h.check(
        s["memory"]["bytes"].as_u64().is_some_and(|m| m > 0),
        format!("s.ini memory: {s:#}"),
    );

    let out = status(&["--stats", stats.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    // VASSAL KIND STATE SINCE PID RESTARTS MEM CPU ...: one word each up to the sockets.
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("p.ini"))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    h.check(
        text.lines()
            .next()
            .is_some_and(|l| l.contains(" MEM ") && l.contains(" CPU "))
            && row.get(6).is_some_and(|m| m.ends_with(['K', 'M', 'G']))
            && row.get(7).is_some_and(|c| c.ends_with('s')),
        format!("status shows memory and CPU:\n{text}"),
    );
}

/// A Docker vassal: memory and CPU from its container's cgroup (CPU grows as it serves), and its start time
/// runs until the container received its sockets. The bridge's record for the stats goes with it.
#[test]
fn docker_vassal_memory_cpu_and_start_time() {
    use crate::util::docker::{DockerSweep, unique_name, wait_no_container};
    let sweep = DockerSweep::new();
    let mut h = Harness::new("stats_docker");
    let name = unique_name("stats");
    let file = format!("{name}.ini");
    let sock = h.sock(&format!("{name}.sock"));
    h.write_vassal(&file, &crate::util::docker::testapp_vassal(&h, &name, ""));
    let stats = h.root.join("stats.sock");
    let mut args = sweep.emperor_args();
    args.extend(["--emperor-stats".to_string(), stats.to_str().unwrap().to_string()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    h.start(&refs);
    h.wait_starts(&name, 1, LONG);
    h.wait_for(|| stats.exists(), LONG, "stats socket");
    let measured = |d: &Value| {
        let v = vassal(d, &file);
        v["memory"]["source"] == "cgroup" && v["cpu_usec"].as_u64().is_some_and(|c| c > 0)
    };
    let doc = wait_doc(&h, || fetch_unix(&stats), measured, "the container's cgroup figures");
    let v = vassal(&doc, &file);
    let mem = v["memory"]["bytes"].as_u64().unwrap_or(0);
    h.check(mem > 0 && mem < 1 << 30, format!("container memory {mem}: {v:#}"));
    h.check(
        v["last_start_until"] == "handover" && v["last_start_ms"].as_u64().is_some_and(|ms| ms > 0 && ms < 60_000),
        format!("start time until the hand-over: {v:#}"),
    );
    let id = crate::util::docker::inspect(&file, "{{.Id}}").unwrap_or_default();
    h.check(
        v["container_id"].as_str() == Some(id.trim()),
        format!("container_id is the running container's ({id}): {v:#}"),
    );
    let cpu0 = v["cpu_usec"].as_u64().unwrap();
    for _ in 0..30 {
        let r = http_get_unix(&sock, LONG).unwrap();
        h.check(r.contains("hello from"), format!("answer: {r:?}"));
    }
    wait_doc(
        &h,
        || fetch_unix(&stats),
        |d| vassal(d, &file)["cpu_usec"].as_u64().is_some_and(|c| c > cpu0),
        "the container's CPU time growing while it serves",
    );

    let bridge = v["pid"].as_i64().unwrap();
    let records = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir("/run/emperor")
            .into_iter()
            .flatten()
            .flatten()
            .map(|d| d.path().join(format!("bridge-{bridge}.json")))
            .filter(|p| p.exists())
            .collect()
    };
    h.check(records().len() == 1, format!("the bridge's record: {:?}", records()));
    h.remove_vassal(&file);
    h.check(wait_no_container(&file, LONG), "container removed");
    h.wait_dead(bridge as i32, LONG, "the bridge");
    h.check(records().is_empty(), format!("records left behind: {:?}", records()));
}
