//! The fault suite (issue 11 item 6): the real emperor and real containers on a throw-away Docker daemon the tests
//! start, stop, restart and kill themselves (tests/util/dockerd.rs), never the machine's main one.
//!
//! Faults: the daemon stopped and started again with and without `--live-restore`, a bridge killed with SIGKILL,
//! the emperor killed with SIGKILL while an overlapping reload is in flight, two emperors with same-named vassals on
//! one daemon, the vassals directory on a full filesystem while `logto` writes, and an unwritable run directory.
//! Each ends by checking that no container is left that no vassal owns and that no vassal is lost (it serves);
//! the live-restore and bridge cases also run a client loop through the vassal's socket and allow no failed request.
//!
//! Tests that stop or restart a daemon have their own; the others share one ([`shared`]). Every wait has a
//! deadline; the fixed windows below are observation periods in which something must *not* happen (a container
//! replaced), or the length of an outage.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::util::docker::{ContainerRow, testapp_vassal as vassal, unique_name};
use crate::util::dockerd::{CaseSweep, Dockerd, Opts, Tmpfs, shared};
use crate::util::{Harness, LONG, alive, http_get_unix, kill, testapp};

/// Client timeout of the request loops (the figure).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

fn start(h: &mut Harness, case: &CaseSweep, extra: &[&str]) {
    let mut args = case.emperor_args();
    args.extend(["--reload-mercy", "5"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    h.start(&refs);
}

/// A testapp Docker vassal like [`vassal`], with more arguments for the app.
fn vassal_args(h: &Harness, name: &str, app_args: &str, extra: &str) -> String {
    vassal(h, name, extra).replacen(
        &format!("--record /rec/{name}.rec\n"),
        &format!("--record /rec/{name}.rec {app_args}\n"),
        1,
    )
}

/// A busybox Docker vassal that prints `tick <n>` every 0.2 s and serves with the host's (static) testapp,
/// mounted read-only: its output shows whether the same container carries on.
fn ticker_vassal(h: &Harness, name: &str) -> String {
    format!(
        "[emperor]\ndocker-image = emperor-test/busybox\ndocker-network-mode = none\nsocket = {sock}\n\
         docker-mount = {rec}:/rec\ndocker-mount = {bin}:/t:ro\n\
         exec = sh -c 'i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.2; done & \
         exec /t/testapp --name {name} --record /rec/{name}.rec'\n",
        sock = h.sock(&format!("{name}.sock")).display(),
        rec = h.root.join("rec").display(),
        bin = testapp().parent().unwrap().display(),
    )
}

/// The `tick <n>` numbers the vassal `file` printed (the emperor's stdout), from byte offset `from`.
fn ticks(h: &Harness, file: &str, from: usize) -> Vec<u64> {
    let tag = format!("[{file}] tick ");
    h.stdout()
        .get(from..)
        .unwrap_or("")
        .lines()
        .filter_map(|l| l.split(&tag).nth(1)?.trim().parse().ok())
        .collect()
}

/// A client loop of short requests through a vassal's socket, each with a [`CLIENT_TIMEOUT`].
struct Client {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Client {
    fn start(sock: &Path) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let (s, o, f, sock) = (stop.clone(), ok.clone(), failed.clone(), sock.to_path_buf());
        let thread = thread::spawn(move || {
            let t0 = Instant::now();
            while !s.load(Ordering::SeqCst) {
                let t = Instant::now();
                match http_get_unix(&sock, CLIENT_TIMEOUT) {
                    Ok(r) if r.contains("hello from") => {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    other => f.lock().unwrap().push(format!(
                        "at {:.2} s, after {:.2} s: {other:?}",
                        (t - t0).as_secs_f64(),
                        t.elapsed().as_secs_f64()
                    )),
                }
                thread::sleep(Duration::from_millis(10));
            }
        });
        Client {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    /// Waits until `n` more requests have been answered.
    fn wait_more(&self, h: &Harness, n: usize, what: &str) {
        let want = self.ok() + n;
        h.wait_for(|| self.ok() >= want, LONG, &format!("{n} answered requests {what}"));
    }

    /// Stops the loop; (answered, failed).
    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (self.ok(), self.failed.lock().unwrap().clone())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// For `window`, `cond` must hold at every look (every 100 ms or so); panics with what it saw otherwise.
fn observe(h: &Harness, window: Duration, what: &str, mut cond: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    while start.elapsed() < window {
        if let Err(e) = cond() {
            panic!("{what}: after {:.2} s: {e}{}", start.elapsed().as_secs_f64(), h.tail());
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Is exactly one container of the case left, running, named `name`? Its id if so.
fn only_one(rows: &[ContainerRow], name: &str) -> Option<String> {
    match rows {
        [(id, n, state)] if n == name && state == "running" => Some(id.clone()),
        _ => None,
    }
}

/// Waits until the case has exactly one container, running, named `name` (no orphan, nothing left over), and
/// returns its id.
fn settle_one(h: &Harness, case: &CaseSweep, name: &str, deadline: Duration) -> String {
    let start = Instant::now();
    loop {
        let last = case.containers();
        if let Some(id) = only_one(&last, name) {
            return id;
        }
        if start.elapsed() > deadline {
            panic!(
                "after {deadline:?}, the containers are {last:?}, not one running {name}{}",
                h.tail()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The emperor's log lines about `file` that contain `needle`.
fn count_lines(h: &Harness, file: &str, needle: &str) -> usize {
    let tag = format!("[{file}] ");
    h.stderr()
        .lines()
        .filter(|l| l.contains(&tag) && l.contains(needle))
        .count()
}

/// Waits until `sock` answers, failing at once (with the log) if the emperor exits meanwhile.
fn wait_serving(h: &Harness, sock: &Path, deadline: Duration) {
    h.wait_for(
        || !alive(h.emperor_pid) || http_get_unix(sock, Duration::from_secs(5)).is_ok_and(|r| r.contains("hello from")),
        deadline,
        &format!("an answer on {}", sock.display()),
    );
    h.check(
        alive(h.emperor_pid),
        format!("the emperor exited instead of serving {}", sock.display()),
    );
}

/// A vassal made by `text` (from the harness and the vassal name), started by a new emperor on daemon `d`,
/// answering on its socket; with the container's id.
struct Serving {
    case: CaseSweep,
    h: Harness,
    name: String,
    file: String,
    sock: PathBuf,
    id: String,
}

fn serving(d: &Arc<Dockerd>, tag: &str, text: impl Fn(&Harness, &str) -> String) -> Serving {
    let case = d.case();
    let mut h = Harness::new(&format!("fault_{tag}"));
    let name = unique_name(tag);
    let file = format!("{name}.ini");
    h.write_vassal(&file, &text(&h, &name));
    start(&mut h, &case, &[]);
    h.wait_starts(&name, 1, LONG);
    let sock = h.sock(&format!("{name}.sock"));
    h.wait_http_unix(&sock, LONG);
    let id = d.inspect(&file, "{{.Id}}").unwrap_or_default();
    Serving {
        case,
        h,
        name,
        file,
        sock,
        id,
    }
}

#[test]
fn live_restore_daemon_restart_keeps_the_container_and_fails_no_request() {
    let d = Dockerd::start(Opts { live_restore: true });
    let Serving {
        case,
        h,
        name,
        file,
        sock,
        id,
    } = serving(&d, "live", |h, name| vassal(h, name, ""));
    let app = d
        .inspect(&file, "{{.State.Pid}}")
        .and_then(|p| p.parse::<i32>().ok())
        .unwrap_or(0);
    let bridge = h.bridge_pid();
    let client = Client::start(&sock);
    client.wait_more(&h, 5, "before the daemon stops");

    let took = d.stop();
    eprintln!("live-restore: dockerd took {took:?} to stop");
    h.check(alive(app), "with --live-restore the container outlives its daemon");
    client.wait_more(&h, 5, "while the daemon is down");
    let back = d.restart(Opts { live_restore: true });
    client.wait_more(&h, 5, "after the daemon is back");
    // Whatever the emperor does about the daemon's return, it does it now: the container must stay.
    observe(
        &h,
        Duration::from_secs(3),
        "the container survives the daemon's return",
        || {
            let rows = case.containers();
            match only_one(&rows, &file) {
                Some(now) if now == id => Ok(()),
                _ => Err(format!("container {id} was replaced: {rows:?}")),
            }
        },
    );
    eprintln!("live-restore: {:?} since the daemon answered again", back.elapsed());
    let (ok, failed) = client.finish();
    h.check(
        failed.is_empty(),
        format!("{} of {} requests failed: {failed:?}", failed.len(), ok + failed.len()),
    );
    h.check(h.starts(&name).len() == 1, "the app was started once, never again");
    h.check(
        alive(bridge),
        format!("the bridge (pid {bridge}) kept its vassal while the daemon was away"),
    );
    // The emperor says it once each way, not once per vassal or per attempt.
    h.wait_log("answers again, after", LONG);
    let (gone, back) = (
        h.stderr().matches("went away;").count(),
        h.stderr().matches("answers again").count(),
    );
    h.check(
        gone == 1 && back == 1,
        format!("one line each way ({gone} gone, {back} back)"),
    );
}

#[test]
fn an_on_demand_start_while_the_daemon_is_away_is_served_when_it_is_back() {
    let d = Dockerd::start(Opts::default());
    let case = d.case();
    let mut h = Harness::new("fault_ondemand");
    let name = unique_name("lazy");
    let file = format!("{name}.ini");
    h.write_vassal(&file, &vassal(&h, &name, "on-demand = true\n"));
    start(&mut h, &case, &[]);
    h.wait_log(&format!("[{file}] on demand: waiting"), LONG);
    let sock = h.sock(&format!("{name}.sock"));
    d.stop();
    // A client connects while there is no daemon: the start it triggers waits for the daemon; the connection
    // waits in the backlog of the emperor's socket, and is answered once the container runs.
    let client = {
        let sock = sock.clone();
        thread::spawn(move || http_get_unix(&sock, Duration::from_secs(60)))
    };
    h.wait_for(
        || count_lines(&h, &file, "spawned bridge") == 1,
        LONG,
        "the start on demand",
    );
    thread::sleep(Duration::from_secs(1));
    d.restart(Opts::default());
    let answer = client.join().expect("client thread");
    h.check(
        answer.as_ref().is_ok_and(|r| r.contains("hello from")),
        format!("the waiting client is served: {answer:?}"),
    );
    h.check(
        count_lines(&h, &file, "spawned bridge") == 1,
        "one bridge, which waited for the daemon",
    );
    let id = settle_one(&h, &case, &file, LONG);
    h.check(!id.is_empty(), "one container, no orphan");
}

#[test]
fn daemon_restart_without_live_restore_serves_again_promptly() {
    let d = Dockerd::start(Opts::default());
    let Serving {
        case,
        h,
        name,
        file,
        sock,
        id,
    } = serving(&d, "nolive", |h, name| vassal(h, name, ""));
    let bridge = h.bridge_pid();

    let took = d.stop();
    eprintln!("no live-restore: dockerd took {took:?} to stop (its containers too)");
    // The outage: long enough for a few failed attempts, were each one counted against the vassal.
    thread::sleep(Duration::from_secs(3));
    // A daemon that went away is not the app's failure: the bridge waits for it (and then finds the container
    // gone), rather than exiting and having bridge after bridge fail, throttled, while the daemon is away.
    let bridge_waited = alive(bridge);
    let attempts = count_lines(&h, &file, "spawned bridge");
    let back = d.restart(Opts::default());
    h.wait_for(
        || http_get_unix(&sock, Duration::from_secs(5)).is_ok_and(|r| r.contains("hello from")),
        Duration::from_secs(30),
        "the vassal to answer again",
    );
    let gap = back.elapsed();
    eprintln!("no live-restore: the vassal answered {gap:?} after the daemon did");
    // How soon is for bench/faults.py to measure; here: restarted at once, never throttled for it.
    h.check(
        count_lines(&h, &file, "throttled") == 0,
        "a container the daemon lost is restarted unthrottled",
    );
    h.check(
        bridge_waited && attempts == 1,
        format!(
            "the bridge (pid {bridge}) waits for the daemon (alive through the outage: {bridge_waited}; bridges \
             spawned by then: {attempts}, 1 wanted; the vassal answered {gap:?} after the daemon)"
        ),
    );
    let now = settle_one(&h, &case, &file, LONG);
    h.check(now != id, "a new container (the daemon lost the old one)");
    observe(&h, Duration::from_secs(1), "one container, no orphan", || {
        let rows = case.containers();
        only_one(&rows, &file)
            .filter(|i| *i == now)
            .map(|_| ())
            .ok_or(format!("{rows:?}"))
    });
    h.check(
        h.starts(&name).len() == 2,
        format!("the app started twice, no more: {}", h.starts(&name).len()),
    );
}

#[test]
fn bridge_kill_9_is_adopted_by_the_next_bridge() {
    let d = shared();
    let Serving {
        case,
        h,
        name,
        file,
        sock,
        id,
    } = serving(&d, "adopt", ticker_vassal);
    h.wait_for(|| ticks(&h, &file, 0).len() >= 2, LONG, "tick lines in the log");
    let client = Client::start(&sock);
    client.wait_more(&h, 5, "before the kill");

    let bridge = h.bridge_pid();
    let at = h.stdout().len();
    let before = ticks(&h, &file, 0).into_iter().max().unwrap_or(0);
    kill(bridge, libc::SIGKILL);
    h.wait_dead(bridge, LONG, "the killed bridge");
    h.wait_for(
        || count_lines(&h, &file, "spawned bridge") >= 2,
        LONG,
        "the next bridge",
    );
    h.wait_for(
        || ticks(&h, &file, at).iter().filter(|&&n| n > before).count() >= 3,
        LONG,
        "the container's output to carry on in the log",
    );
    observe(&h, Duration::from_secs(2), "the same container carries on", || {
        let rows = case.containers();
        match only_one(&rows, &file) {
            Some(now) if now == id => Ok(()),
            _ => Err(format!("container {id} was replaced: {rows:?}")),
        }
    });
    client.wait_more(&h, 3, "after the adoption");
    let (ok, failed) = client.finish();
    h.check(
        failed.is_empty(),
        format!("{} of {} requests failed: {failed:?}", failed.len(), ok + failed.len()),
    );
    h.check(h.starts(&name).len() == 1, "the app was started once, never again");
}

#[test]
fn emperor_kill_9_during_an_overlapping_reload_then_a_new_emperor_converges() {
    let d = shared();
    let case = d.case();
    let mut h = Harness::new("fault_overlap");
    let name = unique_name("overlap");
    let file = format!("{name}.ini");
    h.write_vassal(&file, &vassal(&h, &name, ""));
    start(&mut h, &case, &[]);
    h.wait_starts(&name, 1, LONG);
    let sock = h.sock(&format!("{name}.sock"));
    h.wait_http_unix(&sock, LONG);

    // A new definition whose app takes 3 s to serve: the reload overlaps (the old container serves meanwhile).
    h.write_vassal(&file, &vassal_args(&h, &name, "--accept-delay 3000", ""));
    let next = format!("{file}.next-");
    h.wait_for(
        || {
            case.containers()
                .iter()
                .any(|(_, n, s)| n.starts_with(&next) && s == "running")
        },
        LONG,
        "the reload's new container beside the old one",
    );
    h.signal(libc::SIGKILL);
    h.wait_exit(LONG);
    h.clear_exited();
    start(&mut h, &case, &[]);
    wait_serving(&h, &sock, Duration::from_secs(30));
    let id = settle_one(&h, &case, &file, Duration::from_secs(30));
    observe(&h, Duration::from_secs(1), "one container, no orphan", || {
        let rows = case.containers();
        only_one(&rows, &file)
            .filter(|i| *i == id)
            .map(|_| ())
            .ok_or(format!("{rows:?}"))
    });
    let r = h.wait_http_unix(&sock, LONG);
    h.check(r.contains("hello from"), format!("the vassal serves: {r:?}"));
}

#[test]
fn two_emperors_with_same_named_vassals_share_one_daemon() {
    let d = shared();
    let case = d.case();
    let name = unique_name("twin");
    let file = format!("{name}.ini");
    let mut a = Harness::new("fault_twin_a");
    a.write_vassal(&file, &vassal(&a, &name, ""));
    start(&mut a, &case, &[]);
    a.wait_starts(&name, 1, LONG);
    let sock_a = a.sock(&format!("{name}.sock"));
    a.wait_http_unix(&sock_a, LONG);
    let id_a = d.inspect(&file, "{{.Id}}").unwrap_or_default();
    let a_keeps = |b: &Harness| {
        let rows = case.containers();
        let now = rows.iter().find(|(_, n, _)| *n == file).map(|(i, _, _)| i.clone());
        b.check(
            now.as_deref() == Some(id_a.as_str()),
            format!("the first emperor's container {id_a} is untouched: {rows:?}"),
        );
        a.check(
            a.starts(&name).len() == 1,
            "the first emperor's app was never restarted",
        );
        let r = http_get_unix(&sock_a, Duration::from_secs(5));
        a.check(
            r.as_ref().is_ok_and(|r| r.contains("hello from")),
            format!("the first emperor's vassal serves: {r:?}"),
        );
    };

    // Without a prefix the names clash: the second emperor is refused, and retries, without touching it.
    let mut b = Harness::new("fault_twin_b");
    b.write_vassal(&file, &vassal(&b, &name, ""));
    start(&mut b, &case, &["--emperor-throttle", "300"]);
    b.wait_for(
        || count_lines(&b, &file, "spawned bridge") >= 3,
        LONG,
        "three attempts of the second emperor",
    );
    a_keeps(&b);
    b.signal(libc::SIGTERM);
    b.wait_exit(LONG);
    b.clear_exited();
    a_keeps(&b);

    // With --docker-name-prefix both run.
    start(&mut b, &case, &["--docker-name-prefix", "fb-"]);
    let sock_b = b.sock(&format!("{name}.sock"));
    wait_serving(&b, &sock_b, LONG);
    let id_b = d.inspect(&format!("fb-{file}"), "{{.Id}}");
    b.check(id_b.is_some(), format!("the second emperor's container is fb-{file}"));
    a_keeps(&b);
    let mut names: Vec<String> = case.containers().into_iter().map(|(_, n, _)| n).collect();
    names.sort();
    b.check(
        names == [format!("fb-{file}"), file.clone()],
        format!("exactly the two vassals' containers: {names:?}"),
    );
}

#[test]
fn a_full_filesystem_under_logto_leaves_the_emperor_and_other_vassals_running() {
    let d = shared();
    let case = d.case();
    let mut h = Harness::new("fault_full");
    let _fs = Tmpfs::mount(&h.vassals(), "1m", false);
    // 20,000 lines of ~100 bytes: about 2 MB for a 1 MiB filesystem, then silence.
    h.write_vassal(
        "flood.ini",
        "[emperor]\nlogto = flood.log\nexec = sh -c 'seq -f \"flood %g ..........................................\
         ..........................................\" 1 20000; exec sleep 600'\n",
    );
    h.write_vassal("calm.ini", &h.app_ini("calm", ""));
    let name = unique_name("full");
    let file = format!("{name}.ini");
    h.write_vassal(&file, &vassal(&h, &name, ""));
    start(&mut h, &case, &[]);
    h.wait_vlog("flood.ini", "cannot write logto", LONG);
    let line = h
        .stderr()
        .lines()
        .find(|l| l.contains("cannot write logto"))
        .unwrap_or_default()
        .to_string();
    h.check(
        line.contains("No space left on device"),
        format!("the line says why: {line}"),
    );
    let sock = h.sock(&format!("{name}.sock"));
    wait_serving(&h, &sock, LONG);
    wait_serving(&h, &h.sock("calm.sock"), LONG);
    // The emperor still acts on its (full) directory.
    h.touch_vassal("calm.ini");
    h.wait_starts("calm", 2, LONG);
    wait_serving(&h, &h.sock("calm.sock"), LONG);
    h.check(alive(h.emperor_pid), "the emperor keeps running");
    h.check(
        count_lines(&h, "flood.ini", "cannot write logto") == 1,
        "the error is logged once",
    );
    h.check(
        fs::metadata(h.vassal("flood.log")).is_ok_and(|m| m.len() > 0),
        "the log got what fitted",
    );
    h.check(h.starts(&name).len() == 1, "the Docker vassal was never restarted");
    settle_one(&h, &case, &file, LONG);
}

#[test]
fn an_unwritable_run_directory_is_reported_and_recovered_from() {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = shared();
    let case = d.case();
    let mut h = Harness::new("fault_rundir");
    let run_dir = PathBuf::from(format!(
        "/tmp/efr-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let ro = Tmpfs::mount(&run_dir, "1m", true);
    let name = unique_name("rundir");
    let file = format!("{name}.ini");
    h.write_vassal(&file, &vassal(&h, &name, ""));
    h.write_vassal("calm.ini", &h.app_ini("calm", ""));
    let rd = run_dir.display().to_string();
    start(
        &mut h,
        &case,
        &[
            "--emperor-run-dir",
            &rd,
            "--emperor-throttle",
            "300",
            "--emperor-max-throttle",
            "1000",
        ],
    );
    wait_serving(&h, &h.sock("calm.sock"), LONG);
    h.wait_for(
        || {
            h.stderr()
                .lines()
                .any(|l| l.contains(&format!("[{file}]")) && l.contains("Read-only file system"))
        },
        LONG,
        "a line saying the vassal's run directory is read-only",
    );
    h.wait_for(
        || count_lines(&h, &file, "spawned bridge") >= 2,
        LONG,
        "a retry of the Docker vassal",
    );
    let rows = case.containers();
    h.check(
        rows.is_empty(),
        format!("no container left behind by the failed attempts: {rows:?}"),
    );
    h.check(alive(h.emperor_pid), "the emperor keeps running");

    // Writable again: the vassal runs, with no throttle to speak of.
    ro.remount(false);
    let sock = h.sock(&format!("{name}.sock"));
    wait_serving(&h, &sock, LONG);
    settle_one(&h, &case, &file, LONG);
    wait_serving(&h, &h.sock("calm.sock"), LONG);
    h.check(h.starts("calm").len() == 1, "the process vassal was never restarted");
}
