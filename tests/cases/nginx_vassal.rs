//! nginx as a vassal (Debian's nginx 1.22): as a process (the example `vassals.d/nginx.ini` with
//! `examples/nginx/nginx.conf`) and in a container (`emperor-test/nginx`, built by scripts/build-images, whose
//! image says `STOPSIGNAL SIGQUIT`), each serving on the sockets the emperor binds, which it adopts through
//! `NGINX=3;4;`.
//!
//! A reload (a `touch`) runs under a request loop: short requests all along, plus downloads that the old instance
//! is serving when it is told to stop (slowed down by nginx's `limit_rate`, started before the touch, so they can
//! only be the old instance's). Every request must succeed: with nginx's graceful stop (SIGQUIT) the old instance
//! finishes what it serves; SIGTERM, its fast stop, would cut those downloads (bench/nginx_reload.py measures
//! both). Clients talk to nginx's unix socket directly: no network, no front.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::docker::{DockerSweep, docker, inspect, unique_name};
use crate::util::{Harness, LONG, free_port};

const NGINX_IMAGE: &str = "emperor-test/nginx";
/// The slow downloads: this many bytes at `limit_rate` [`RATE`] take ~6 s, far longer than a new instance takes to
/// be ready, so the old instance is told to stop while it still sends them.
const BLOB_LEN: usize = 384 << 10;
const RATE: &str = "64k";
const DOWNLOADS: usize = 3;

/// One HTTP/1.0 GET of `path` on the unix socket; the body, checked against Content-Length. `started` is
/// called once the status line and headers are in (the request is then the serving instance's).
fn get(sock: &Path, path: &str, started: impl FnOnce()) -> Result<Vec<u8>, String> {
    let mut s = UnixStream::connect(sock).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err(format!("closed before the headers ({} bytes)", buf.len())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("status: {}", head.lines().next().unwrap_or("")));
    }
    started();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no Content-Length in {head:?}"))?;
    let mut body = buf.split_off(head_end);
    s.read_to_end(&mut body)
        .map_err(|e| format!("read after {} of {len} bytes: {e}", body.len()))?;
    if body.len() != len {
        return Err(format!("{} of {len} bytes, then the connection closed", body.len()));
    }
    Ok(body)
}

/// Short requests in a loop from a few threads, until stopped (at most 2 minutes).
struct Loop {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Loop {
    fn start(sock: &Path, clients: usize) -> Loop {
        let (stop, ok) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failures, sock) = (stop.clone(), ok.clone(), failures.clone(), sock.to_path_buf());
                thread::spawn(move || {
                    let t0 = Instant::now();
                    while !stop.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(120) {
                        match get(&sock, "/", || {}) {
                            Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                            Err(e) => {
                                failures.lock().unwrap().push(e);
                                0
                            }
                        };
                    }
                })
            })
            .collect();
        Loop {
            stop,
            ok,
            failures,
            threads,
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    /// Stops the clients; (requests served, failures).
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::SeqCst), failures)
    }
}

/// Downloads of `/blob` started (headers in) before this returns; their results once joined.
fn slow_downloads(h: &Harness, sock: &Path) -> (Arc<AtomicUsize>, Vec<thread::JoinHandle<Result<usize, String>>>) {
    let started = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let threads = (0..DOWNLOADS)
        .map(|_| {
            let (started, running, sock) = (started.clone(), running.clone(), sock.to_path_buf());
            thread::spawn(move || {
                running.fetch_add(1, Ordering::SeqCst);
                let r = get(&sock, "/blob", || {
                    started.fetch_add(1, Ordering::SeqCst);
                })
                .map(|b| b.len());
                running.fetch_sub(1, Ordering::SeqCst);
                r
            })
        })
        .collect();
    h.wait_for(
        || started.load(Ordering::SeqCst) == DOWNLOADS,
        LONG,
        "the slow downloads to start",
    );
    (running, threads)
}

/// Touches the vassal under a request loop with downloads in flight, waits for the old instance to be stopped
/// and gone, and checks that no request failed and that the old instance was stopped while it still served.
/// Returns the emperor's stderr offset from before the touch.
fn reload_under_load(h: &Harness, file: &str, sock: &Path) -> usize {
    let quick = Loop::start(sock, 3);
    h.wait_for(|| quick.ok() > 20, LONG, "requests before the reload");
    let (running, downloads) = slow_downloads(h, sock);
    let off = h.stderr().len();
    h.touch_vassal(file);
    h.wait_vlog_after(off, file, "stopping the old one", Duration::from_secs(30));
    let in_flight = running.load(Ordering::SeqCst);
    h.check(
        in_flight > 0,
        "the old instance was told to stop after every download had ended: the reload tested nothing \
         (the new instance took longer to be ready than a download lasts)",
    );
    h.wait_vlog_after(off, file, "the old instance (pid", Duration::from_secs(30));
    let results: Vec<_> = downloads.into_iter().map(|t| t.join().unwrap()).collect();
    let at_end = quick.ok();
    h.wait_for(|| quick.ok() > at_end + 20, LONG, "requests after the reload");
    let (served, failures) = quick.finish();
    h.check(
        results.iter().all(|r| r.as_ref().is_ok_and(|n| *n == BLOB_LEN)),
        format!("every download the old instance was serving ({in_flight} at its stop) completes: {results:?}"),
    );
    h.check(
        failures.is_empty(),
        format!(
            "{} failed requests of {}: {:?}",
            failures.len(),
            served + failures.len(),
            &failures[..failures.len().min(5)]
        ),
    );
    off
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The slow location, inserted into a server block: `/blob` from `dir`, at [`RATE`].
fn blob_location(dir: &str) -> String {
    format!("location = /blob {{ root {dir}; limit_rate {RATE}; }}\n")
}

/// `vassals.d/nginx.ini` and `examples/nginx/nginx.conf` as published, with the test's socket, port, prefix and pid
/// file, and `/blob` served slowly: a `touch` reloads it with no request failed, and the old nginx got SIGQUIT.
#[test]
fn the_nginx_example_reloads_on_touch_without_failing_a_request() {
    assert!(
        Path::new(crate::util::nginx::NGINX).exists(),
        "{} is missing: run scripts/setup (installs nginx-light)",
        crate::util::nginx::NGINX
    );
    let mut h = Harness::new("nginx_process");
    let prefix = h.root.join("nginx");
    fs::create_dir(&prefix).unwrap();
    fs::write(prefix.join("blob"), vec![b'x'; BLOB_LEN]).unwrap();
    let sock = h.sock("nginx.sock");
    let port = free_port().to_string();
    let sock_s = sock.display().to_string();

    let conf = fs::read_to_string(repo("examples/nginx/nginx.conf")).unwrap();
    let ours = conf
        .replace("127.0.0.1:8003", &format!("127.0.0.1:{port}"))
        .replace("/tmp/emperor-nginx.sock", &sock_s)
        .replace(
            "/tmp/emperor-nginx.pid",
            &prefix.join("nginx.pid").display().to_string(),
        )
        .replace(
            "        location / {",
            &format!(
                "        {}        location / {{",
                blob_location(&prefix.display().to_string())
            ),
        );
    assert!(
        ours.contains(&sock_s) && ours.contains(&port) && ours.contains("/blob"),
        "examples/nginx/nginx.conf changed shape:\n{conf}"
    );
    fs::write(prefix.join("nginx.conf"), ours).unwrap();
    let ini = fs::read_to_string(repo("vassals.d/nginx.ini")).unwrap();
    let ours = ini
        .replace("127.0.0.1:8003", &format!("127.0.0.1:{port}"))
        .replace("/tmp/emperor-nginx.sock", &sock_s)
        .replace("-p ../examples/nginx/", &format!("-p {}/", prefix.display()));
    assert!(
        ours.contains(&sock_s)
            && ours.contains(&prefix.display().to_string())
            && ours.contains("stop-signal = SIGQUIT"),
        "vassals.d/nginx.ini changed shape:\n{ini}"
    );
    h.write_vassal("nginx.ini", &ours);
    h.start(&["--reload-mercy", "20"]);
    let r = h.wait_http_unix(&sock, LONG);
    h.check(r.contains("Hello from nginx"), format!("nginx answers: {r:?}"));
    let master = spawned_pid(&h, "nginx.ini");
    h.check(
        nonblocking(master, 3) == Some(true) && nonblocking(master, 4) == Some(true),
        "nginx holds its sockets at fds 3 and 4 with O_NONBLOCK (socket-nonblocking = true)",
    );
    let tcp = crate::util::http_get_tcp(port.parse().unwrap(), LONG).unwrap_or_default();
    h.check(
        tcp.contains("Hello from nginx"),
        format!("and on its TCP socket: {tcp:?}"),
    );

    let off = reload_under_load(&h, "nginx.ini", &sock);
    h.check(
        h.stderr()[off..].matches("spawned pid").count() == 1,
        "one new nginx for the touch",
    );
    // The old master's own words: the graceful stop, not the fast one.
    h.wait_for(
        || {
            h.vassal_output("nginx.ini")
                .iter()
                .any(|l| l.contains("signal 3 (SIGQUIT) received"))
        },
        LONG,
        "the old nginx to log its SIGQUIT",
    );
    h.check(
        !h.vassal_output("nginx.ini")
            .iter()
            .any(|l| l.contains("signal 15 (SIGTERM)")),
        "no SIGTERM",
    );
    h.check(
        sock.exists(),
        "the socket file stays (nginx does not unlink an inherited socket)",
    );
    h.signal(libc::SIGTERM);
    let st = h.wait_exit(Duration::from_secs(30));
    h.check(st.code() == Some(0), format!("emperor exit status {st:?}"));
}

/// Whether `pid`'s `fd` has `O_NONBLOCK`, from `/proc/<pid>/fdinfo/<fd>` (`flags:` is octal); None if unreadable.
fn nonblocking(pid: i32, fd: i32) -> Option<bool> {
    let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
    let flags = i64::from_str_radix(flags.trim(), 8).ok()?;
    Some(flags & i64::from(libc::O_NONBLOCK) != 0)
}

/// The pid of the first process the emperor logged spawning for `file`.
fn spawned_pid(h: &Harness, file: &str) -> i32 {
    let tag = format!("[{file}] spawned pid ");
    h.stderr()
        .lines()
        .find_map(|l| l.split(&tag).nth(1)?.split(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no spawned pid for {file}{}", h.tail()))
}

/// `socket-nonblocking = true` hands the sockets over with `O_NONBLOCK`; without it they are blocking (systemd's
/// default).
#[test]
fn socket_nonblocking_sets_o_nonblocking_on_the_vassals_sockets() {
    let mut h = Harness::new("nginx_nonblock");
    for (file, extra) in [("nb.ini", "socket-nonblocking = true\n"), ("b.ini", "")] {
        h.write_vassal(
            file,
            &format!(
                "[emperor]\nsocket = {}\nexec = sleep 600\n{extra}",
                h.sock(&format!("{file}.sock")).display()
            ),
        );
    }
    h.start(&[]);
    h.wait_for(|| h.spawned().len() == 2, LONG, "both vassals to start");
    let (nb, b) = (spawned_pid(&h, "nb.ini"), spawned_pid(&h, "b.ini"));
    h.check(
        nonblocking(nb, 3) == Some(true),
        format!("O_NONBLOCK with the key (pid {nb})"),
    );
    h.check(
        nonblocking(b, 3) == Some(false),
        format!("blocking without it (pid {b})"),
    );
}

/// A process vassal gets `NGINX` as a Docker vassal does: one `<fd>;` per socket, the last one too.
#[test]
fn process_vassals_get_their_sockets_in_nginx_too() {
    let mut h = Harness::new("nginx_env");
    let (a, b) = (h.sock("a.sock"), h.sock("b.sock"));
    h.write_vassal(
        "two.ini",
        &format!(
            "[emperor]\nsocket = {}\nsocket = {}\n{}",
            a.display(),
            b.display(),
            h.exec_line("two", "--show-env NGINX --show-env LISTEN_FDS")
        ),
    );
    h.write_vassal(
        "none.ini",
        &format!(
            "[emperor]\n{}",
            h.exec_line("none", "--show-env NGINX --show-env LISTEN_FDS")
        ),
    );
    h.start(&[]);
    let two = &h.wait_starts("two", 1, LONG)[0];
    h.check(
        two.get("env_NGINX") == "3;4;" && two.get("env_LISTEN_FDS") == "2",
        format!("NGINX=3;4; with LISTEN_FDS=2: {two:?}"),
    );
    let none = &h.wait_starts("none", 1, LONG)[0];
    h.check(
        none.get("env_NGINX") == "-" && none.get("env_LISTEN_FDS") == "-",
        format!("no socket, no NGINX: {none:?}"),
    );
}

/// Panics unless emperor-test/nginx exists.
fn require_nginx_image() {
    match docker(&["image", "inspect", "--format", "{{.Config.StopSignal}}", NGINX_IMAGE]) {
        Ok(o) if o.success && o.stdout.trim() == "SIGQUIT" => {}
        Ok(o) if o.success => panic!(
            "{NGINX_IMAGE} says STOPSIGNAL {:?}: run scripts/build-images nginx",
            o.stdout
        ),
        Ok(o) => panic!(
            "the test image {NGINX_IMAGE} is missing ({}): run scripts/build-images nginx (needs nginx-light)",
            o.stderr.trim()
        ),
        Err(e) => panic!("{e}"),
    }
}

/// Starts an emperor with one Docker vassal running emperor-test/nginx's own command on one unix socket, its server
/// block (`site/site.conf`, mounted at /etc/nginx/sites) holding `locations` and answering `/` with
/// `nginx in docker <pid>`, and `extra` lines in `[emperor]`; waits for an answer. The vassal's file and socket.
fn start_docker_nginx(h: &mut Harness, sweep: &DockerSweep, locations: &str, extra: &str) -> (String, PathBuf) {
    require_nginx_image();
    let name = unique_name("ngx");
    let file = format!("{name}.ini");
    let sock = h.sock(&format!("{name}.sock"));
    let site = h.root.join("site");
    fs::create_dir(&site).unwrap();
    fs::write(
        site.join("site.conf"),
        format!(
            "server {{\n    listen unix:{};\n    {locations}    location / {{ return 200 \"nginx in docker $pid\\n\"; }}\n}}\n",
            sock.display(),
        ),
    )
    .unwrap();
    h.write_vassal(
        &file,
        &format!(
            "[emperor]\ndocker-image = {NGINX_IMAGE}\ndocker-network-mode = none\nsocket = {}\n\
             docker-mount = {}:/etc/nginx/sites:ro\n{extra}",
            sock.display(),
            site.display()
        ),
    );
    let mut args = sweep.emperor_args();
    args.extend(["--reload-mercy", "20"].map(String::from));
    h.start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let r = h.wait_http_unix(&sock, LONG);
    h.check(r.contains("nginx in docker"), format!("nginx answers: {r:?}"));
    (file, sock)
}

/// nginx in a container, with the image's own command and no `stop-signal`: the container is stopped with the
/// image's STOPSIGNAL (SIGQUIT), so a `touch` under load fails no request.
#[test]
fn a_docker_nginx_vassal_stops_with_its_images_stopsignal_and_reloads_without_failing_a_request() {
    let sweep = DockerSweep::new();
    let mut h = Harness::new("nginx_docker_vassal");
    let (file, sock) = start_docker_nginx(
        &mut h,
        &sweep,
        &blob_location("/etc/nginx/sites"),
        "socket-nonblocking = true\n",
    );
    fs::write(h.root.join("site").join("blob"), vec![b'x'; BLOB_LEN]).unwrap();
    // The socket reached nginx in the container through the bridge and the shim, non-blocking.
    let pid: i32 = inspect(&file, "{{.State.Pid}}")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let nginx_master = crate::util::descendants(pid).into_iter().next().unwrap_or(0);
    h.check(
        nonblocking(nginx_master, 3) == Some(true),
        format!("nginx (pid {nginx_master}) holds its socket at fd 3 with O_NONBLOCK"),
    );
    let signal = inspect(&file, "{{.Config.StopSignal}}").unwrap_or_default();
    h.check(signal == "SIGQUIT", format!("the container's StopSignal: {signal:?}"));
    let old = inspect(&file, "{{.Id}}").unwrap_or_default();

    let off = reload_under_load(&h, &file, &sock);
    let said = format!(
        "stopping container {} with SIGQUIT (the image's STOPSIGNAL)",
        &old[..12]
    );
    h.check(
        h.vlog_after(off, &file, &said),
        format!("the bridge says how it stops the old container: {said:?}"),
    );
    h.wait_for(
        || {
            h.vassal_output(&file)
                .iter()
                .any(|l| l.contains("signal 3 (SIGQUIT) received"))
        },
        LONG,
        "the old nginx to log its SIGQUIT",
    );
    h.check(
        !h.vassal_output(&file).iter().any(|l| l.contains("signal 15 (SIGTERM)")),
        "no SIGTERM",
    );
    h.wait_for(
        || sweep.containers().len() == 1,
        LONG,
        "the old container to be removed",
    );
}

/// An explicit `stop-signal` still wins over the image's STOPSIGNAL.
#[test]
fn a_docker_vassals_own_stop_signal_wins_over_its_images() {
    let sweep = DockerSweep::new();
    let mut h = Harness::new("nginx_docker_sigterm");
    let (file, _) = start_docker_nginx(&mut h, &sweep, "", "stop-signal = SIGTERM\n");
    let signal = inspect(&file, "{{.Config.StopSignal}}").unwrap_or_default();
    h.check(signal == "SIGTERM", format!("the container's StopSignal: {signal:?}"));
    let off = h.stderr().len();
    h.remove_vassal(&file);
    h.wait_vlog_after(off, &file, "with SIGTERM (stop-signal)", LONG);
    h.wait_for(
        || {
            h.vassal_output(&file)
                .iter()
                .any(|l| l.contains("signal 15 (SIGTERM) received"))
        },
        LONG,
        "nginx to log the SIGTERM",
    );
}
