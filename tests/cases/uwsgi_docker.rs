//! Real uWSGI in Docker: Debian's uWSGI 2.0.21 with the python3 plugin in `emperor-test/uwsgi` (a `FROM scratch`
//! copy of the host's packages, tests/images/uwsgi, built by scripts/build-images), run as `[uwsgi]` Docker vassals
//! through `--emperor-wrapper /usr/bin/uwsgi` (the path inside the image).
//!
//! The image's app (/app/app.py) answers `hello from uwsgi-in-docker pid=<worker pid> cfg=<cfgver> [file=<line>]`,
//! `cfgver` being a custom option of the vassal's `[uwsgi]` section, so a test sees which config uWSGI runs on.
//!
//! Also runs equivalents of uwsgi-docker's README examples (docker-socket, docker-mount, docker-proxy, the psgi
//! vassal with docker-port) with this python image, and `docker-shim = false` (uWSGI connects to the proxy
//! socket itself through `UWSGI_EMPEROR_PROXY`, uwsgi-docker's way). Network rule: every container has network
//! none; traffic goes over unix sockets only.
//!
//! Differences from uwsgi-docker these tests pin down (uwsgi-docker ran the same vassal files):
//! - the socket reaches uWSGI 2.0 as fd 0 through the shim; uwsgi-docker needed uWSGI 2.1 in the container for
//!   `docker-socket` (a third proxy fd), which 2.0 refuses;
//! - the proxy socket is `/.emperor/proxy/vassal.sock` in the container (uwsgi-docker: `/<name>.sock`) and its
//!   host *directory* is mounted (uwsgi-docker mounted the socket file itself); with `docker-proxy`, the host
//!   path's directory is mounted at the container path's directory;
//! - a change of `[emperor]` makes a new container (uwsgi-docker re-exec'd uWSGI in the old one and never
//!   re-read `[emperor]`); a change of `[uwsgi]` only is reloaded in place, in the same container, with the
//!   new config pushed on uWSGI's byte-2 request (2.0's emperor pushed a stale one);
//! - `docker-port` bindings are in `HostConfig` at create time (uwsgi-docker sent them to `/start`, which
//!   Docker ignores since API 1.24) and carry `/tcp`.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::docker::{DockerSweep, container_exists, docker, docker_ok, inspect, unique_name, wait_no_container};
use crate::util::{Harness, LONG, http_get_unix};

const IMAGE: &str = "emperor-test/uwsgi";
/// uWSGI inside the image (the emperor's `--emperor-wrapper`).
const WRAPPER: &str = "/usr/bin/uwsgi";
/// uWSGI's own start-up is ~1 s in the container; a whole cold start (create, start, hand-over, Python) a few.
const START: Duration = Duration::from_secs(20);

/// Panics unless emperor-test/uwsgi exists (DockerSweep checks the daemon and the other test images).
fn require_image() {
    match docker(&["image", "inspect", "--format", "{{.Id}}", IMAGE]) {
        Ok(o) if o.success => {}
        Ok(o) => panic!(
            "the test image {IMAGE} is missing ({}): run scripts/build-images (scripts/setup installs Debian's uwsgi \
             and uwsgi-plugin-python3, which it copies)",
            o.stderr.trim()
        ),
        Err(e) => panic!("{e}"),
    }
}

/// A DockerSweep plus the image check.
pub(crate) fn sweep() -> DockerSweep {
    let s = DockerSweep::new();
    require_image();
    s
}

/// Starts the emperor with the sweep's labels, the wrapper inside the image, a short reload mercy and a long
/// loyalty time (so `loyal` in the log can only come from uWSGI's byte 17).
fn start(h: &mut Harness, sweep: &DockerSweep, extra: &[&str]) {
    let mut args = sweep.emperor_args();
    for a in [
        "--emperor-wrapper",
        WRAPPER,
        "--reload-mercy",
        "8",
        "--emperor-loyalty-time",
        "600",
    ] {
        args.push(a.to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    h.start(&refs);
}

/// The app's `[uwsgi]` section plus `extra` lines.
fn uwsgi_section(extra: &str) -> String {
    format!(
        "[uwsgi]\nplugins = python3\nwsgi-file = /app/app.py\nmaster = true\nprocesses = 1\nprotocol = http\n{extra}"
    )
}

/// `[emperor]` with the image and network none, then `emperor_extra`, then the `[uwsgi]` section.
fn vassal(emperor_extra: &str, uwsgi_extra: &str) -> String {
    format!(
        "[emperor]\ndocker-image = {IMAGE}\ndocker-network-mode = none\n{emperor_extra}\n{}",
        uwsgi_section(uwsgi_extra)
    )
}

/// GETs over the unix socket until the answer is the app's and contains `want`; panics with the tail after
/// `deadline`. Returns the answer.
pub(crate) fn wait_answer(h: &Harness, sock: &Path, want: &str, deadline: Duration) -> String {
    let start = Instant::now();
    loop {
        let last = match http_get_unix(sock, Duration::from_secs(5)) {
            Ok(r) if r.starts_with("HTTP/1.1 200") && r.contains("hello from uwsgi-in-docker") && r.contains(want) => {
                return r;
            }
            Ok(r) => format!("answer {r:?}"),
            // A read timeout (EAGAIN) means the emperor's socket queued the request and nothing accepted it.
            Err(e) => format!("error {e}"),
        };
        if start.elapsed() > deadline {
            h.check(
                false,
                format!(
                    "no answer containing {want:?} on {} within {deadline:?}; last: {last}",
                    sock.display()
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Waits until `count` lines of the vassal's output contain `needle`.
fn wait_output(h: &Harness, file: &str, needle: &str, count: usize, deadline: Duration) {
    h.wait_for(
        || h.vassal_output(file).iter().filter(|l| l.contains(needle)).count() >= count,
        deadline,
        &format!("{count} line(s) of [{file}] output containing {needle:?}"),
    );
}

/// The pids in uWSGI's `spawned uWSGI master process (pid: N)` lines, in order.
fn master_pids(h: &Harness, file: &str) -> Vec<String> {
    h.vassal_output(file)
        .iter()
        .filter_map(|l| l.split_once("spawned uWSGI master process (pid: "))
        .map(|(_, rest)| rest.trim_end_matches(')').to_string())
        .collect()
}

/// Does a log line on the emperor's stderr, after byte `from`, about `[file]`, end with the protocol word `word`
/// (`ready`, `accepting`, `loyal`)? Stricter than `vlog_after`: vassal output never reaches stderr, but a bridge
/// line might mention such a word in passing.
fn said(h: &Harness, from: usize, file: &str, word: &str) -> bool {
    let tag = format!("[{file}]");
    h.stderr().get(from..).unwrap_or("").lines().any(|l| {
        l.contains(&tag)
            && l.split_whitespace()
                .any(|w| w.trim_matches(|c: char| !c.is_alphanumeric()) == word)
    })
}

fn wait_said(h: &Harness, from: usize, file: &str, word: &str, deadline: Duration) {
    h.wait_for(
        || said(h, from, file, word),
        deadline,
        &format!("the emperor to log {word:?} for [{file}]"),
    );
}

fn container_id(name: &str) -> String {
    inspect(name, "{{.Id}}").unwrap_or_default()
}

/// a. A `[uwsgi]` Docker vassal gets its file over the config pipe and speaks the protocol through the passed
/// control fd.
#[test]
fn uwsgi_in_docker_reads_its_config_from_the_pipe_and_speaks_the_protocol() {
    let sweep = sweep();
    let mut h = Harness::new("uwsgi_docker_pipe");
    let name = unique_name("uwd");
    let file = format!("{name}.ini");
    let sock = h.sock("x.sock");
    h.write_vassal(&file, &vassal(&format!("socket = {}", sock.display()), "cfgver = 1\n"));
    start(&mut h, &sweep, &[]);
    let r = wait_answer(&h, &sock, "cfg=1", START);
    h.check(
        r.contains("hello from uwsgi-in-docker pid=") && r.contains("cfg=1"),
        format!("answer: {r:?}"),
    );
    wait_said(&h, 0, &file, "ready", LONG);
    wait_said(&h, 0, &file, "accepting", LONG);
    // uWSGI sends 17 once its workers served a request (checked on a master cycle, about 1 s); the emperor's
    // loyalty time is 600 s here, so only the byte can make it loyal.
    wait_said(&h, 0, &file, "loyal", LONG);

    // uWSGI's own output reaches the emperor's stdout with the vassal's prefix (through the container's tty,
    // dockerd and the bridge, so a little behind the protocol bytes), and shows where it read its config, that
    // it adopted the emperor's socket on fd 0, and that the loyalty was its own.
    wait_output(&h, &file, "getting INI configuration from emperor://", 1, LONG);
    wait_output(&h, &file, "spawned uWSGI worker 1", 1, LONG);
    wait_output(&h, &file, "announcing my loyalty to the Emperor", 1, LONG);
    let out = h.vassal_output(&file).join("\n");
    h.check(
        out.contains(&format!("emperor://{file}")),
        format!("uWSGI read emperor://{file}:\n{out}"),
    );
    h.check(
        out.contains("inherited UNIX address") && out.contains(&sock.display().to_string()),
        format!("uWSGI adopted the emperor's socket (fd 0):\n{out}"),
    );
    h.check(
        out.contains("spawned uWSGI master process"),
        format!("uWSGI runs with a master:\n{out}"),
    );
    // The container: named after the vassal, network none, the wrapper in the image behind the shim.
    let cmd = inspect(&file, "{{json .Config.Cmd}}").unwrap_or_default();
    h.check(
        cmd == format!("[\"{WRAPPER}\",\"--ini\",\"emperor://{file}\"]"),
        format!("container Cmd: {cmd}"),
    );
    let net = inspect(&file, "{{.HostConfig.NetworkMode}}").unwrap_or_default();
    h.check(net == "none", format!("network mode {net}"));
}

/// b. Only `[uwsgi]` changed: byte 1, graceful reload of the same master in the same container, the new config
/// pushed on uWSGI's request. Then `[emperor]` changed: a new container.
#[test]
fn uwsgi_section_change_reloads_in_the_same_container_emperor_change_replaces_it() {
    let sweep = sweep();
    let mut h = Harness::new("uwsgi_docker_reload");
    let name = unique_name("uwr");
    let file = format!("{name}.ini");
    let sock = h.sock("x.sock");
    let emperor = format!("socket = {}", sock.display());
    h.write_vassal(&file, &vassal(&emperor, "cfgver = 1\n"));
    start(&mut h, &sweep, &[]);
    wait_answer(&h, &sock, "cfg=1", START);
    wait_said(&h, 0, &file, "accepting", LONG);
    let id1 = container_id(&file);
    h.check(!id1.is_empty(), "the container exists");
    let masters = master_pids(&h, &file);
    h.check(masters.len() == 1, format!("one master spawned: {masters:?}"));

    // [uwsgi] only: in place, twice (uWSGI 2.0's own emperor pushed the config on the reload as well as on
    // the vassal's request, so the second reload ran on the first one's config: cfg=2 instead of 3).
    for (n, cfgver) in [(2, "2"), (3, "3")] {
        let off = h.stderr().len();
        h.write_vassal(&file, &vassal(&emperor, &format!("cfgver = {cfgver}\n")));
        wait_said(&h, off, &file, "reloading", LONG);
        wait_answer(&h, &sock, &format!("cfg={cfgver}"), START);
        wait_said(&h, off, &file, "accepting", LONG);
        // uWSGI re-execs itself in place: the same master pid (inside the container) announces itself again.
        wait_output(&h, &file, "spawned uWSGI master process", n, LONG);
        let masters = master_pids(&h, &file);
        h.check(
            masters.len() == n && masters.iter().all(|m| *m == masters[0]),
            format!("the same uWSGI master before and after the reload: {masters:?}"),
        );
        h.check(
            !h.vlog_after(off, &file, "started"),
            "no new container is started for a [uwsgi] change",
        );
    }
    let r = wait_answer(&h, &sock, "cfg=3", LONG);
    let out = h.vassal_output(&file).join("\n");
    h.check(
        out.contains("gracefully") && out.contains("binary reloading uWSGI"),
        format!("uWSGI's log shows a graceful reload:\n{out}"),
    );
    h.check(
        container_id(&file) == id1,
        format!("the same container after a [uwsgi] change ({id1}): {r:?}"),
    );

    // [emperor] changed: a new container with the new environment, the socket still answers.
    let off = h.stderr().len();
    h.write_vassal(&file, &vassal(&format!("{emperor}\ndocker-env = X=1"), "cfgver = 4\n"));
    h.wait_for(
        || {
            let id = container_id(&file);
            !id.is_empty() && id != id1
        },
        START,
        "a new container after an [emperor] change",
    );
    wait_answer(&h, &sock, "cfg=4", START);
    wait_said(&h, off, &file, "accepting", LONG);
    let env = inspect(&file, "{{json .Config.Env}}").unwrap_or_default();
    h.check(
        env.contains("\"X=1\""),
        format!("docker-env in the new container: {env}"),
    );
    h.check(
        sweep.containers().len() == 1,
        format!("the old container is gone: {:?}", sweep.containers()),
    );
}

/// c. Delete removes the container and unlinks the socket; SIGTERM stops the rest and exits 0.
#[test]
fn uwsgi_in_docker_delete_and_sigterm_leave_nothing() {
    let sweep = sweep();
    let mut h = Harness::new("uwsgi_docker_stop");
    let a = unique_name("uwda");
    let b = unique_name("uwdb");
    let (fa, fb) = (format!("{a}.ini"), format!("{b}.ini"));
    let (sa, sb) = (h.sock("a.sock"), h.sock("b.sock"));
    h.write_vassal(&fa, &vassal(&format!("socket = {}", sa.display()), ""));
    h.write_vassal(&fb, &vassal(&format!("socket = {}", sb.display()), ""));
    start(&mut h, &sweep, &[]);
    wait_answer(&h, &sa, "cfg=", START);
    wait_answer(&h, &sb, "cfg=", START);
    wait_said(&h, 0, &fa, "accepting", LONG);

    let off = h.stderr().len();
    h.remove_vassal(&fa);
    h.check(
        wait_no_container(&fa, LONG),
        "the deleted vassal's container is removed",
    );
    h.wait_for(|| !sa.exists(), LONG, "the deleted vassal's socket to be unlinked");
    // uWSGI stopped on the emperor's byte 2 (graceful shutdown, exit 0), not killed after the mercy.
    h.wait_vlog_after(off, &fa, "exited with code 0", LONG);
    wait_output(&h, &fa, "received message 2 from emperor", 1, LONG);
    h.check(
        !h.vlog_after(off, &fa, "killing") && !h.vlog_after(off, &fa, "SIGKILL"),
        "the deleted uWSGI vassal stops gracefully",
    );
    h.check(container_exists(&fb), "the other vassal's container is untouched");
    wait_answer(&h, &sb, "cfg=", LONG);

    h.signal(libc::SIGTERM);
    let st = h.wait_exit(Duration::from_secs(20));
    h.check(st.code() == Some(0), format!("emperor exit status {st:?}"));
    h.check(
        sweep.containers().is_empty(),
        format!("no container of the test left: {:?}", sweep.containers()),
    );
    h.check(!sb.exists(), "the socket is unlinked on shutdown");
}

/// d1. uwsgi-docker's `docker-socket` example: the host binds the socket and passes it to the container.
/// (Example: `docker-image = psgi001`, `docker-socket = /var/run/example.com.socket`, `[uwsgi] psgi = ...`,
/// `processes = 4`, `uid`/`gid = www-data`; here the python app, and no www-data user in the image.)
#[test]
fn uwsgi_docker_readme_docker_socket_example() {
    let sweep = sweep();
    let mut h = Harness::new("uwsgi_docker_socket");
    let name = unique_name("example.com");
    let file = format!("{name}.ini");
    let sock = h.sock("example.com.socket");
    h.write_vassal(
        &file,
        &format!(
            "; the [emperor] section is parsed ONLY by the Emperor\n[emperor]\n; use psgi001 as the docker image\n\
             docker-image = {IMAGE}\ndocker-network-mode = none\n; bind to address /var/run/example.com.socket\n\
             docker-socket = {}\n\n[uwsgi]\nplugins = python3\nwsgi-file = /app/app.py\nprotocol = http\nprocesses = 4\n",
            sock.display()
        ),
    );
    start(&mut h, &sweep, &[]);
    let r = wait_answer(&h, &sock, "cfg=", START);
    h.check(r.contains("hello from uwsgi-in-docker"), format!("answer: {r:?}"));
    wait_said(&h, 0, &file, "accepting", LONG);
    // processes = 4 without master: uWSGI still forks 4 workers.
    wait_output(&h, &file, "spawned uWSGI worker 4", 1, LONG);
}

/// d2. uwsgi-docker's `docker-mount` attribute (`/host:/docker`): a host directory visible in the container;
/// the app reads a file from it (`[uwsgi] readfile = /data/msg.txt`).
#[test]
fn uwsgi_docker_readme_docker_mount_example() {
    let sweep = sweep();
    let mut h = Harness::new("uwsgi_docker_mount");
    let name = unique_name("uwm");
    let file = format!("{name}.ini");
    let sock = h.sock("m.sock");
    let data = h.root.join("elsewhere");
    let token = format!("mounted-{}", name);
    fs::write(data.join("msg.txt"), format!("{token}\n")).unwrap();
    h.write_vassal(
        &file,
        &vassal(
            &format!("socket = {}\ndocker-mount = {}:/data", sock.display(), data.display()),
            "readfile = /data/msg.txt\n",
        ),
    );
    start(&mut h, &sweep, &[]);
    let r = wait_answer(&h, &sock, &format!("file={token}"), START);
    h.check(r.contains(&format!("file={token}")), format!("answer: {r:?}"));
    // A change on the host is seen through the mount (a bind mount, not a copy).
    fs::write(data.join("msg.txt"), "changed\n").unwrap();
    wait_answer(&h, &sock, "file=changed", LONG);
}

/// d3. uwsgi-docker's `docker-proxy` attribute (`hostpath:dockerpath`): the proxy socket at custom paths, in a
/// directory of its own on the host; the hand-over still works and the socket is gone afterwards.
#[test]
fn uwsgi_docker_readme_docker_proxy_example() {
    let sweep = sweep();
    let mut h = Harness::new("uwsgi_docker_proxy");
    let name = unique_name("uwp");
    let file = format!("{name}.ini");
    let sock = h.sock("p.sock");
    let proxy_dir = h.root.join("proxy");
    fs::create_dir(&proxy_dir).unwrap();
    let proxy = proxy_dir.join("emperor.sock");
    h.write_vassal(
        &file,
        &vassal(
            &format!(
                "socket = {}\ndocker-proxy = {}:/uwsgi-proxy/emperor.sock",
                sock.display(),
                proxy.display()
            ),
            "cfgver = proxy\n",
        ),
    );
    start(&mut h, &sweep, &[]);
    wait_answer(&h, &sock, "cfg=proxy", START);
    wait_said(&h, 0, &file, "accepting", LONG);
    let mounts = inspect(&file, "{{range .Mounts}}{{.Source}}:{{.Destination}} {{end}}").unwrap_or_default();
    h.check(
        // Docker lists mounts in no fixed order, and the output is trimmed: compare whole entries.
        mounts
            .split_whitespace()
            .any(|m| m == format!("{}:/uwsgi-proxy", proxy_dir.display())),
        format!("the proxy directory is mounted at the container path's directory: {mounts}"),
    );
    let env = inspect(&file, "{{json .Config.Env}}").unwrap_or_default();
    h.check(
        env.contains("/uwsgi-proxy/emperor.sock"),
        format!("the container is told the custom proxy path: {env}"),
    );
    h.check(
        !proxy.exists(),
        "the one-shot proxy socket is unlinked after the hand-over",
    );
}

/// d4. uwsgi-docker's quickstart psgi vassal, with `docker-port = 9001:3031` and
/// `docker-port = 127.0.0.1:5001:5000` and `stats = :5000`. With network none nothing can be published and no
/// test may talk to a bridge address, so: the container has the port definitions (free host ports instead of
/// 9001/5001), and it serves over an emperor socket instead of uwsgi-docker's `socket = 172.*:3031`.
#[test]
fn uwsgi_docker_readme_psgi_example_with_docker_port() {
    let sweep = sweep();
    let mut h = Harness::new("uwsgi_docker_port");
    let name = unique_name("psgi001");
    let file = format!("{name}.ini");
    let sock = h.sock("psgi.sock");
    let (p1, p2) = (crate::util::free_port(), crate::util::free_port());
    h.write_vassal(
        &file,
        &format!(
            "; the [emperor] section is parsed ONLY by the Emperor\n[emperor]\ndocker-image = {IMAGE}\n\
             docker-network-mode = none\n; map host port 9001 to container port 3031/tcp\ndocker-port = {p1}:3031\n\
             ; map host port 127.0.0.1:5001 to container port 5000/tcp\ndocker-port = 127.0.0.1:{p2}:5000\n\
             socket = {}\n\n[uwsgi]\nplugins = python3\nwsgi-file = /app/app.py\nprotocol = http\nprocesses = 4\n\
             ; we are free to bind the stats server to all of the address\n; docker will protect it\nstats = :5000\n",
            sock.display()
        ),
    );
    start(&mut h, &sweep, &[]);
    wait_answer(&h, &sock, "cfg=", START);
    wait_output(&h, &file, "Stats server enabled on :5000", 1, LONG);
    let bindings = inspect(&file, "{{json .HostConfig.PortBindings}}").unwrap_or_default();
    for want in [
        format!("\"3031/tcp\":[{{\"HostIp\":\"\",\"HostPort\":\"{p1}\"}}]"),
        format!("\"5000/tcp\":[{{\"HostIp\":\"127.0.0.1\",\"HostPort\":\"{p2}\"}}]"),
    ] {
        h.check(bindings.contains(&want), format!("PortBindings {bindings} has {want}"));
    }
    let exposed = inspect(&file, "{{json .Config.ExposedPorts}}").unwrap_or_default();
    h.check(
        exposed.contains("\"3031/tcp\":{}") && exposed.contains("\"5000/tcp\":{}"),
        format!("ExposedPorts: {exposed}"),
    );
    let net = inspect(&file, "{{.HostConfig.NetworkMode}}").unwrap_or_default();
    h.check(net == "none", format!("network mode {net}"));
    // Nothing is published with network none: the ports stay free on the host.
    let published = docker_ok(&["port", &file]);
    h.check(
        published.is_empty(),
        format!("no published port with network none: {published:?}"),
    );
}

/// e. `docker-shim = false`: the image's uWSGI is the container's command and connects to the proxy socket
/// itself (`UWSGI_EMPEROR_PROXY`), getting the control and config fds (uWSGI 2.0 takes two). It has no emperor
/// socket, so it binds its own `http-socket` in a mounted directory, which the test reaches from the host.
#[test]
fn uwsgi_docker_without_shim_connects_to_the_proxy_itself() {
    let sweep = sweep();
    let mut h = Harness::new("uwsgi_docker_noshim");
    let name = unique_name("uwn");
    let file = format!("{name}.ini");
    let shared = h.root.join("elsewhere");
    let sock = shared.join("app.sock");
    h.write_vassal(
        &file,
        &format!(
            "[emperor]\ndocker-image = {IMAGE}\ndocker-network-mode = none\ndocker-shim = false\n\
             docker-mount = {}:/shared\n\n[uwsgi]\nplugins = python3\nwsgi-file = /app/app.py\nmaster = true\n\
             processes = 1\nhttp-socket = /shared/app.sock\nchmod-socket = 666\ncfgver = noshim\n",
            shared.display()
        ),
    );
    start(&mut h, &sweep, &[]);
    let r = wait_answer(&h, &sock, "cfg=noshim", START);
    h.check(r.contains("cfg=noshim"), format!("answer: {r:?}"));
    wait_said(&h, 0, &file, "ready", LONG);
    wait_said(&h, 0, &file, "accepting", LONG);
    wait_said(&h, 0, &file, "loyal", LONG);
    // No shim: uWSGI itself is the container's command (as Entrypoint or as Cmd), PID 1 in the container.
    let ep = inspect(&file, "{{json .Config.Entrypoint}} {{json .Config.Cmd}}").unwrap_or_default();
    let argv = format!("[\"{WRAPPER}\",\"--ini\",\"emperor://{file}\"]");
    h.check(
        ep == format!("null {argv}") || ep == format!("{argv} null"),
        format!("no shim, uWSGI is the command: {ep}"),
    );
    wait_output(&h, &file, "spawned uWSGI master process (pid: 1)", 1, LONG);
    let out = h.vassal_output(&file).join("\n");
    h.check(
        out.contains(&format!("emperor://{file}")),
        format!("uWSGI read its config from the pipe:\n{out}"),
    );

    // Graceful reload in place and stop work without the shim too.
    let off = h.stderr().len();
    let id = container_id(&file);
    h.write_vassal(
        &file,
        &fs::read_to_string(h.vassal(&file))
            .unwrap()
            .replace("cfgver = noshim", "cfgver = noshim2"),
    );
    wait_answer(&h, &sock, "cfg=noshim2", START);
    wait_said(&h, off, &file, "accepting", LONG);
    h.check(container_id(&file) == id, "the same container after a [uwsgi] change");
    h.remove_vassal(&file);
    h.check(wait_no_container(&file, LONG), "the container is removed on delete");
}
