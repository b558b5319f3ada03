//! On-demand start, idle stop and idle pause, for process vassals and Docker vassals.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::docker::{DockerSweep, inspect, testapp_vassal, unique_name};
use crate::util::{EMPEROR, Harness, LONG, alive, http_get_unix, kill, now_ns, proc_state};

/// The `[emperor]` lines of a prewarmed vassal.
const PREWARM: &str = "on-demand = true\nidle = 1\nidle-action = pause\nprewarm = true\n";

/// A testapp process vassal `<name>.ini` with `extra` `[emperor]` lines and testapp `args`.
fn app_vassal(h: &Harness, name: &str, args: &str, extra: &str) {
    h.write_vassal(
        &format!("{name}.ini"),
        &h.app_ini(name, args)
            .replace("[emperor]\n", &format!("[emperor]\n{extra}")),
    );
}

/// A Docker testapp vassal (a unique name from `prefix`) with `extra` `[emperor]` lines, on an emperor
/// started for it: the sweep (kept until the end of the test), the harness, the vassal's name, its file
/// and its socket.
fn docker_vassal(test: &str, prefix: &str, extra: &str) -> (DockerSweep, Harness, String, String, PathBuf) {
    let sweep = DockerSweep::new();
    let mut h = Harness::new(test);
    let name = unique_name(prefix);
    let file = format!("{name}.ini");
    let sock = h.sock(&format!("{name}.sock"));
    h.write_vassal(&file, &testapp_vassal(&h, &name, extra));
    let args = sweep.emperor_args();
    h.start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    (sweep, h, name, file, sock)
}

/// One GET on `sock`, which the process `pid` must answer (20 s at most: it may have to start first).
fn check_served_by(h: &Harness, sock: &Path, pid: i32, what: &str) {
    let r = http_get_unix(sock, Duration::from_secs(20));
    h.check(
        r.as_ref().is_ok_and(|r| r.contains(&format!("pid={pid}\n"))),
        format!("{what}: {r:?}"),
    );
}

/// Waits until the process `pid` is stopped (SIGSTOP: every thread of it, as a pause does).
fn wait_stopped(h: &Harness, pid: i32, what: &str) {
    h.wait_for(|| proc_state(pid) == Some('T'), LONG, what);
}

/// Proves a negative: nothing happened during `d` (a bounded wait, on purpose).
fn quiet(d: Duration) {
    thread::sleep(d);
}

#[test]
fn on_demand_process_starts_on_the_first_connection_and_stops_when_idle() {
    let mut h = Harness::new("od_process");
    app_vassal(&h, "od", "", "on-demand = true\nidle = 1\n");
    h.start(&[]);
    h.wait_vlog("od.ini", "waiting for a connection", LONG);
    let sock = h.sock("od.sock");
    h.check(sock.exists(), "the socket is bound before anything runs");
    quiet(Duration::from_millis(300));
    h.check(h.starts("od").is_empty(), "nothing starts without a connection");

    // 20 clients at once: all served, one process.
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let s = sock.clone();
            thread::spawn(move || http_get_unix(&s, Duration::from_secs(10)))
        })
        .collect();
    for c in clients {
        let r = c.join().unwrap();
        h.check(
            r.as_ref().is_ok_and(|r| r.contains("hello from od")),
            format!("a client of the cold start: {r:?}"),
        );
    }
    h.check(
        h.starts("od").len() == 1,
        format!("exactly one process for 20 connections: {:?}", h.starts("od")),
    );

    // Idle: stopped about `idle` after the last connection closed, then waiting again.
    let pid = h.starts("od")[0].pid();
    h.wait_dead(pid, LONG, "the idle vassal");
    h.wait_vlog("od.ini", "idle: stopping", LONG);
    h.check(sock.exists(), "the socket stays while the vassal waits");
    let r = h.wait_http_unix(&sock, LONG);
    h.check(r.contains("hello from od"), "the next connection starts it again");
    h.check(h.starts("od").len() == 2, "a second process");
}

#[test]
fn an_open_connection_keeps_an_idle_vassal_alive() {
    let mut h = Harness::new("od_open");
    app_vassal(&h, "ws", "--keep-alive", "idle = 1\n");
    h.start(&[]);
    let pid = h.wait_starts("ws", 1, LONG)[0].pid();
    // A long-lived connection (like a websocket): connected and kept open, nothing sent.
    let held = UnixStream::connect(h.sock("ws.sock")).unwrap();
    quiet(Duration::from_secs(3));
    h.check(alive(pid), "a vassal with an open connection is not idle");
    drop(held);
    h.wait_dead(pid, LONG, "the vassal, idle once the connection closed");
    h.check(
        h.starts("ws").len() == 1,
        "an idle vassal that is not on demand is just stopped",
    );
}

/// nginx talks to an upstream with one short connection per request: the app, already blocked in
/// `accept`, takes each at once, so neither counting open connections nor the listener's readiness
/// sees them. They must keep the vassal alive all the same.
#[test]
fn short_connections_accepted_at_once_keep_an_idle_vassal_alive() {
    let mut h = Harness::new("od_short");
    app_vassal(&h, "short", "", "idle = 2\n");
    h.start(&[]);
    let pid = h.wait_starts("short", 1, LONG)[0].pid();
    let sock = h.sock("short.sock");
    let _ = h.wait_http_unix(&sock, LONG);
    // Three times `idle`, one short request every 300 ms.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let r = http_get_unix(&sock, Duration::from_secs(5));
        h.check(
            r.as_ref().is_ok_and(|r| r.contains("hello from short")),
            format!("a request to the busy vassal: {r:?}"),
        );
        thread::sleep(Duration::from_millis(300));
    }
    h.check(
        alive(pid),
        "a vassal serving a request every 300 ms is not idle (idle = 2)",
    );
    h.check(h.starts("short").len() == 1, "it was never stopped meanwhile");
    h.wait_dead(pid, LONG, "the vassal, idle once the requests stopped");
}

#[test]
fn a_failing_on_demand_vassal_closes_its_queued_clients_and_deleting_it_unlinks_the_socket() {
    let mut h = Harness::new("od_fail");
    app_vassal(&h, "bad", "--crash", "on-demand = true\n");
    h.start(&["--emperor-throttle", "5000"]);
    h.wait_vlog("bad.ini", "waiting for a connection", LONG);
    let mut c = UnixStream::connect(h.sock("bad.sock")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let res = c.read_to_end(&mut buf);
    h.check(
        t0.elapsed() < Duration::from_secs(5),
        format!(
            "the queued client is closed, not left hanging until the throttle ends: {res:?} after {:?}",
            t0.elapsed()
        ),
    );
    h.wait_vlog("bad.ini", "throttled", LONG);
    h.remove_vassal("bad.ini");
    h.wait_for(
        || !h.sock("bad.sock").exists(),
        LONG,
        "the deleted vassal's socket to be unlinked",
    );
}

#[test]
fn idle_pause_freezes_a_process_vassal_and_a_connection_thaws_it() {
    let mut h = Harness::new("od_pause");
    app_vassal(&h, "pz", "", "idle = 1\nidle-action = pause\n");
    h.start(&[]);
    let pid = h.wait_starts("pz", 1, LONG)[0].pid();
    h.wait_for(
        || proc_state(pid) == Some('T'),
        LONG,
        "the idle vassal to be stopped (SIGSTOP)",
    );
    let r = h.wait_http_unix(h.sock("pz.sock"), LONG);
    h.check(
        r.contains(&format!("pid={pid}")),
        format!("the same process answers after the thaw: {r:?}"),
    );
    h.check(h.starts("pz").len() == 1, "no new process");
}

#[test]
fn on_demand_docker_vassal_starts_one_container_for_20_connections_and_pauses_when_idle() {
    let (_sweep, h, name, file, sock) =
        docker_vassal("od_docker", "odd", "on-demand = true\nidle = 1\nidle-action = pause\n");
    h.wait_vlog(&file, "waiting for a connection", LONG);
    // Created ahead of time, not started: the first connection waits for `docker start` only.
    h.wait_for(
        || inspect(&file, "{{.State.Status}}").is_some_and(|s| s.trim() == "created"),
        LONG,
        "the container to be created ahead of time",
    );
    let precreated = inspect(&file, "{{.Id}}").unwrap_or_default();
    h.check(h.starts(&name).is_empty(), "nothing runs before the first connection");
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let s = sock.clone();
            thread::spawn(move || http_get_unix(&s, Duration::from_secs(20)))
        })
        .collect();
    for c in clients {
        let r = c.join().unwrap();
        h.check(
            r.as_ref().is_ok_and(|r| r.contains("hello from")),
            format!("a client of the cold start: {r:?}"),
        );
    }
    h.check(
        h.starts(&name).len() == 1,
        format!("exactly one container start: {:?}", h.starts(&name)),
    );
    h.check(
        inspect(&file, "{{.Id}}").unwrap_or_default() == precreated,
        "the container created ahead of time is the one that runs",
    );
    h.wait_for(
        || inspect(&file, "{{.State.Paused}}").is_some_and(|s| s.trim() == "true"),
        LONG,
        "the idle container to be paused",
    );
    let r = h.wait_http_unix(&sock, LONG);
    h.check(
        r.contains("hello from"),
        format!("the paused container answers once thawed: {r:?}"),
    );
    h.check(h.starts(&name).len() == 1, "thawed, not restarted");
}

/// An idle stop leaves a fresh container created ahead of time for the next connection; deleting the
/// file removes it, and `docker-precreate = false` creates nothing before a connection.
#[test]
fn containers_created_ahead_of_time_are_renewed_after_an_idle_stop_and_removed_with_the_file() {
    let sweep = DockerSweep::new();
    let mut h = Harness::new("od_precreate");
    let vassal =
        |h: &Harness, name: &str, extra: &str| testapp_vassal(h, name, &format!("on-demand = true\nidle = 1\n{extra}"));
    let (pre, lazy) = (unique_name("pre"), unique_name("lazy"));
    let (pre_file, lazy_file) = (format!("{pre}.ini"), format!("{lazy}.ini"));
    h.write_vassal(&pre_file, &vassal(&h, &pre, ""));
    h.write_vassal(&lazy_file, &vassal(&h, &lazy, "docker-precreate = false\n"));
    let args = sweep.emperor_args();
    h.start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let created = || inspect(&pre_file, "{{.State.Status}} {{.Id}}").filter(|s| s.starts_with("created "));
    h.wait_for(
        || created().is_some(),
        LONG,
        "the container to be created ahead of time",
    );
    let first = created().unwrap_or_default();

    let r = h.wait_http_unix(h.sock(&format!("{pre}.sock")), LONG);
    h.check(r.contains(&format!("hello from {pre}")), format!("served: {r:?}"));
    h.wait_vlog(&pre_file, "idle: stopping", LONG);
    h.wait_for(
        || created().is_some_and(|c| c != first),
        LONG,
        "a new container created ahead of time after the idle stop",
    );

    h.check(
        !crate::util::docker::container_exists(&lazy_file),
        "docker-precreate = false: no container before a connection",
    );
    let r = h.wait_http_unix(h.sock(&format!("{lazy}.sock")), LONG);
    h.check(r.contains(&format!("hello from {lazy}")), format!("served: {r:?}"));

    h.remove_vassal(&pre_file);
    h.check(
        crate::util::docker::wait_no_container(&pre_file, LONG),
        "deleting the file removes the container created ahead of time",
    );

    // A SIGTERM of the emperor leaves no container behind, created ahead of time or not.
    h.write_vassal(&pre_file, &vassal(&h, &pre, ""));
    h.wait_for(|| created().is_some(), LONG, "a container created ahead of time again");
    h.signal(libc::SIGTERM);
    h.wait_exit(LONG);
    h.check(
        sweep.containers().is_empty(),
        format!("no container left after SIGTERM: {:?}", sweep.containers()),
    );
}

/// The first request after boot is a wake from pause: the prewarmed vassal starts with the emperor, is
/// stopped (SIGSTOP) as soon as it waits for connections, before any client came, and the first request
/// is served by that same process; idle again, it is paused again.
#[test]
fn prewarm_process_vassal_is_paused_at_boot_and_the_first_request_wakes_that_same_process() {
    let mut h = Harness::new("od_prewarm");
    app_vassal(&h, "pw", "", PREWARM);
    let stats = h.root.join("stats.sock");
    let stats_s = stats.to_str().unwrap().to_owned();
    h.start(&["--emperor-stats", &stats_s]);
    let pid = h.wait_starts("pw", 1, LONG)[0].pid();
    wait_stopped(&h, pid, "the prewarmed process to be stopped before any connection");
    h.wait_vlog("pw.ini", "prewarmed: pausing", LONG);
    let out = std::process::Command::new(EMPEROR)
        .args(["status", "--stats", &stats_s])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    h.check(
        table
            .lines()
            .any(|l| l.starts_with("pw.ini") && l.contains("paused") && l.contains(&pid.to_string())),
        format!("emperor status shows it paused:\n{table}"),
    );

    let from = h.stderr().len();
    check_served_by(
        &h,
        &h.sock("pw.sock"),
        pid,
        "the first request is served by the prewarmed process",
    );
    h.wait_vlog_after(from, "pw.ini", "resuming", LONG);
    h.wait_vlog_after(from, "pw.ini", "idle: pausing", LONG);
    wait_stopped(&h, pid, "the idle vassal to be paused again");
    h.check(h.starts("pw").len() == 1, "one process all along");
}

#[test]
fn prewarm_docker_vassal_is_paused_at_boot_and_the_first_request_wakes_that_same_container() {
    let (_sweep, h, name, file, sock) = docker_vassal("od_prewarm_docker", "pwd", PREWARM);
    let paused = || inspect(&file, "{{.State.Paused}}").is_some_and(|s| s.trim() == "true");
    h.wait_for(
        paused,
        LONG,
        "the prewarmed container to be paused before any connection",
    );
    h.wait_vlog(&file, "prewarmed: pausing", LONG);
    let id = inspect(&file, "{{.Id}}").unwrap_or_default();
    let app = h.wait_starts(&name, 1, LONG)[0].pid();

    let from = h.stderr().len();
    check_served_by(&h, &sock, app, "the first request is served by the prewarmed app");
    h.check(
        inspect(&file, "{{.Id}}").unwrap_or_default() == id,
        "the same container, not a new one",
    );
    h.wait_vlog_after(from, &file, "idle: pausing", LONG);
    h.wait_for(paused, LONG, "the idle container to be paused again");
    h.check(h.starts(&name).len() == 1, "one app start all along");
    h.check(
        h.stderr().matches("spawned bridge pid").count() == 1,
        "one bridge all along",
    );
}

/// A connection that comes while the prewarmed instance is still starting waits in the backlog and is
/// served; the instance is not paused under it (only idle pauses it, afterwards).
#[test]
fn a_connection_while_a_prewarmed_vassal_starts_is_served_and_it_is_not_paused_under_it() {
    let mut h = Harness::new("od_prewarm_early");
    // The app takes 3 s before it waits for connections (it records "serving" then).
    app_vassal(&h, "pwe", "--accept-delay 3000", PREWARM);
    h.start(&[]);
    let pid = h.wait_starts("pwe", 1, LONG)[0].pid();
    let connected = now_ns();
    check_served_by(&h, &h.sock("pwe.sock"), pid, "the early client is served");
    let serving = h.records("pwe").into_iter().find(|r| r.kind == "serving");
    h.check(
        serving.is_some_and(|s| s.t_ns() > connected),
        "the client connected before the app waited for connections (else this test proves nothing)",
    );
    h.wait_vlog("pwe.ini", "not pausing", LONG);
    h.wait_vlog("pwe.ini", "idle: pausing", LONG);
    wait_stopped(&h, pid, "the idle vassal to be paused");
    h.check(
        !h.vlog_after(0, "pwe.ini", "prewarmed: pausing"),
        "never paused as a prewarmed instance: a client came first",
    );
    h.check(h.starts("pwe").len() == 1, "one process");
}

/// A touch replaces the prewarmed instance by a new one that is prewarmed too; a crash of the paused
/// instance (it was not loyal yet: throttled) is followed by a new prewarmed one, with no connection.
#[test]
fn a_prewarmed_vassal_is_prewarmed_again_after_a_touch_and_after_a_crash() {
    let mut h = Harness::new("od_prewarm_again");
    app_vassal(&h, "pwa", "", PREWARM);
    h.start(&[]);
    let first = h.wait_starts("pwa", 1, LONG)[0].pid();
    wait_stopped(&h, first, "the first instance to be paused");

    h.touch_vassal("pwa.ini");
    let second = h.wait_starts("pwa", 2, LONG)[1].pid();
    h.wait_dead(first, LONG, "the old instance, retired by the reload");
    wait_stopped(&h, second, "the new instance to be paused without a connection");

    kill(second, libc::SIGKILL);
    let third = h.wait_starts("pwa", 3, LONG)[2].pid();
    wait_stopped(
        &h,
        third,
        "the instance after the crash to be paused without a connection",
    );
    check_served_by(&h, &h.sock("pwa.sock"), third, "served by the third instance");
    h.check(h.starts("pwa").len() == 3, "three processes: boot, touch, crash");
}
