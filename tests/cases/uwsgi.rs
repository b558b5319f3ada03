//! Real uWSGI (Debian's `uwsgi` + `uwsgi-plugin-python3`) as a vassal through `--emperor-wrapper`.

use crate::util::*;
use std::fs;
use std::path::Path;
use std::time::Duration;

const UWSGI: &str = "/usr/bin/uwsgi";
const PY3_PLUGIN: &str = "/usr/lib/uwsgi/plugins/python3_plugin.so";

fn require_uwsgi() {
    assert!(
        Path::new(UWSGI).exists() && Path::new(PY3_PLUGIN).exists(),
        "{UWSGI} or {PY3_PLUGIN} is missing: run scripts/setup (installs Debian's uwsgi and uwsgi-plugin-python3)"
    );
}

const APP: &str = r#"import os
def application(env, start_response):
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [('hello from uwsgi pid=%d\n' % os.getpid()).encode()]
"#;

/// Write app.py and u.ini; return the socket path.
fn setup(h: &Harness) -> std::path::PathBuf {
    let app = h.root.join("app.py");
    fs::write(&app, APP).unwrap();
    let sock = h.sock("u.sock");
    h.write_vassal(
        "u.ini",
        &format!(
            "[emperor]\nsocket = {}\n\n[uwsgi]\nplugins = python3\nwsgi-file = {}\nmaster = true\nprocesses = 1\nprotocol = http\n",
            sock.display(),
            app.display()
        ),
    );
    sock
}

/// The master pid, from the emperor's `[u.ini] spawned pid N` line.
fn master_pid(h: &Harness) -> i32 {
    h.wait_log("[u.ini] spawned pid ", LONG);
    let err = h.stderr();
    let i = err.find("[u.ini] spawned pid ").unwrap() + "[u.ini] spawned pid ".len();
    let pid: i32 = err[i..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap();
    h.extra_pids.lock().unwrap().push(pid);
    pid
}

#[test]
fn uwsgi_vassal_serves_reloads_and_stops() {
    require_uwsgi();
    let mut h = Harness::new("uwsgi_vassal");
    let sock = setup(&h);
    h.start(&["--emperor-wrapper", UWSGI]);
    let master = master_pid(&h);
    let r = h.wait_http_unix(&sock, Duration::from_secs(30));
    h.check(
        r.starts_with("HTTP/1.1 200") && r.contains("hello from uwsgi"),
        format!("uWSGI answer: {r:?}"),
    );
    h.wait_vlog("u.ini", "ready", LONG);
    h.wait_vlog("u.ini", "accepting", LONG);
    h.wait_vlog("u.ini", "loyal", LONG);

    // Graceful reload in place: same master pid, still serving.
    let off = h.stderr().len();
    h.touch_vassal("u.ini");
    h.wait_vlog_after(off, "u.ini", "reloading", LONG);
    // The reloaded uWSGI says "accepting" again once it is back.
    h.wait_vlog_after(off, "u.ini", "accepting", Duration::from_secs(30));
    let r = h.wait_http_unix(&sock, Duration::from_secs(30));
    h.check(r.contains("hello from uwsgi"), format!("answer after reload: {r:?}"));
    h.check(
        alive(master),
        format!("uWSGI master {master} must survive a graceful reload"),
    );
    h.check(
        !h.vlog_after(off, "u.ini", "spawned pid"),
        "a touch of an unchanged uWSGI vassal must not spawn a new process",
    );

    // Delete: every process of the vassal (its process group) goes, the socket file is unlinked.
    let group = group_members(master);
    h.extra_pids.lock().unwrap().extend(&group);
    h.check(
        group.len() >= 2,
        format!("expected master + worker in process group {master}: {group:?}"),
    );
    h.remove_vassal("u.ini");
    h.wait_for(
        || group_members(master).is_empty(),
        Duration::from_secs(20),
        "all uWSGI processes of u.ini to be gone",
    );
    h.wait_for(|| !sock.exists(), LONG, "u.sock to be unlinked");
}

#[test]
fn uwsgi_vassal_stops_with_emperor() {
    require_uwsgi();
    let mut h = Harness::new("uwsgi_stops_with_emperor");
    let sock = setup(&h);
    h.start(&["--emperor-wrapper", UWSGI]);
    let master = master_pid(&h);
    h.wait_http_unix(&sock, Duration::from_secs(30));
    h.wait_vlog("u.ini", "accepting", LONG);
    let group = group_members(master);
    h.extra_pids.lock().unwrap().extend(&group);
    h.signal(libc::SIGTERM);
    let st = h.wait_exit(Duration::from_secs(20));
    h.check(
        st.code() == Some(0),
        format!("emperor must exit 0 on SIGTERM, got {st:?}"),
    );
    h.wait_for(
        || group_members(master).is_empty() && group.iter().all(|&p| !alive(p)),
        Duration::from_secs(5),
        "no uWSGI process of this test left",
    );
    h.check(!sock.exists(), "u.sock unlinked on shutdown");
}
