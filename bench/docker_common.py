"""Shared helpers for the Docker benchmarks (bench/docker_*.py, bench/ondemand.py): build, a tiny Docker Engine API
client over the unix socket, a label that marks every container a bench run creates (swept at the end, on an error and
on Ctrl-C), the daemon's debug log split into phases, bare_docker runs, HTTP over unix sockets and 127.0.0.1, a private
nginx, /proc readings of the bridges and the Docker daemons.

Network rule: nothing here talks to anything but unix sockets and 127.0.0.1; containers run with network `none`.
"""

import datetime
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import common

BARE = os.path.join(common.OUT, "examples", "bare_docker")
IMAGE = "emperor-test/testapp"
DOCKER_SOCK = "/var/run/docker.sock"
NGINX = "/usr/sbin/nginx"


def build():
    """Release emperor, testapp and bare_docker, then the test images (so the image's testapp has the new flags)."""
    cmd = ["cargo", "build", "--release", "--bin", "emperor", "--example", "testapp", "--example", "bare_docker"]
    print("building:", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=common.REPO, check=True)
    print("building images: scripts/build-images", flush=True)
    subprocess.run([os.path.join(common.REPO, "scripts", "build-images")], cwd=common.REPO, check=True)


def prepare(args, images=(IMAGE,)):
    """Builds unless --no-build; exits if one of `images` is missing."""
    if not args.no_build:
        build()
    for image in images:
        if not image_present(image):
            sys.exit(f"image {image} is missing: run scripts/build-images")


def require_wrk_nginx():
    """Exits unless Debian's wrk and nginx are installed."""
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk (Debian's package)")
    if not os.path.exists(NGINX):
        sys.exit(f"{NGINX} is missing: scripts/setup installs nginx-light")


# --- Docker Engine API over its unix socket (stdlib only) ---------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=60):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def docker_api(method, path, timeout=60):
    """One request to the Docker daemon; returns (status, decoded JSON or None)."""
    sock = os.environ.get("DOCKER_HOST", "unix://" + DOCKER_SOCK)
    sock = sock[len("unix://"):] if sock.startswith("unix://") else DOCKER_SOCK
    c = _UnixHTTPConnection(sock, timeout)
    try:
        c.request(method, path, headers={"Host": "docker"})
        r = c.getresponse()
        data = r.read()
        try:
            return r.status, json.loads(data) if data else None
        except ValueError:
            return r.status, None
    finally:
        c.close()


def containers(label, extra_filters=None):
    """Containers (running or not) carrying `label` (KEY=VALUE): list of dicts from /containers/json."""
    filters = {"label": [label] + list(extra_filters or [])}
    q = urllib.parse.urlencode({"all": "1", "filters": json.dumps(filters)})
    status, body = docker_api("GET", f"/containers/json?{q}")
    if status != 200:
        raise RuntimeError(f"docker: GET /containers/json answered {status}")
    return body or []


def sweep(label, quiet=False):
    """Force-removes every container carrying `label`; returns how many there were."""
    try:
        found = containers(label)
    except (OSError, RuntimeError) as e:
        print(f"sweep: cannot list containers: {e}", file=sys.stderr)
        return 0
    for c in found:
        try:
            docker_api("DELETE", f"/containers/{c['Id']}?force=1&v=1")
        except OSError as e:
            print(f"sweep: cannot remove {c['Id'][:12]}: {e}", file=sys.stderr)
    if found and not quiet:
        print(f"sweep: removed {len(found)} leftover container(s) labelled {label}", file=sys.stderr)
    return len(found)


def bench_label():
    """The unique label of this bench run: every container it creates carries it."""
    return f"emperor.bench={os.getpid()}"


def image_present(image=IMAGE):
    status, _ = docker_api("GET", f"/images/{image}/json")
    return status == 200


# --- vassals -------------------------------------------------------------------------------------------------------


def docker_vassal(sock, app_args=(), image=IMAGE, extra=""):
    """Text of a Docker vassal file: the testapp image, network none, one unix socket, then the lines `extra`."""
    return (
        "[emperor]\n"
        f"docker-image = {image}\n"
        "docker-network-mode = none\n"
        f"socket = {sock}\n"
        f"exec = {common.quote('/testapp', *app_args)}\n" + extra
    )


def drop(path, text):
    """Writes a dotfile, renames it into place (atomic); returns the wall-clock and monotonic time of the rename."""
    d, base = os.path.split(path)
    tmp = os.path.join(d, "." + base)
    with open(tmp, "w") as f:
        f.write(text)
    t_wall, t_mono = time.time(), time.monotonic()
    os.rename(tmp, path)
    return t_wall, t_mono


class DockerRun(common.Run):
    """common.Run whose emperor gets a unique --docker-label and its own run dir; sweeps that label on exit."""

    def __init__(self, label, keep=False):
        super().__init__(label, keep)
        self.label = bench_label()
        self.run_dir = os.path.join(self.dir, "run")
        os.mkdir(self.run_dir)
        self.stop_grace = 120

    def emperor_argv(self, extra=()):
        return [
            common.EMPEROR,
            "--docker-label",
            self.label,
            "--emperor-run-dir",
            self.run_dir,
            "--reload-mercy",
            "10",
            *extra,
            self.vassals,
        ]

    def stop(self, grace=None):
        super().stop(self.stop_grace if grace is None else grace)

    def __exit__(self, exc_type, exc, tb):
        try:
            return super().__exit__(exc_type, exc, tb)
        finally:
            sweep(self.label)


def wait_containers_gone(label, timeout, extra_filters=None):
    common.wait_for(
        lambda: not containers(label, extra_filters), timeout, f"containers {label} to be gone", interval=0.02
    )


# --- the daemon's log ----------------------------------------------------------------------------------------------

TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z ")


def parse_log(path, since_wall):
    """[(wall time, text)] of the daemon log lines stamped at or after since_wall (ms resolution)."""
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            m = TS.match(line)
            if not m:
                continue
            t = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f")
            t = t.replace(tzinfo=datetime.timezone.utc).timestamp()
            if t >= since_wall - 0.001:
                out.append((t, line[m.end():].rstrip("\n")))
    return out


def first_line(lines, pred, after=0.0):
    """Wall time of the first (time, text) of `lines` stamped at or after `after` (less 0.5 ms: the stamps have ms)
    whose text satisfies pred; None if there is none."""
    for t, text in lines:
        if t >= after - 0.0005 and pred(text):
            return t
    return None


def delay(lines, pred, t0):
    """Seconds from wall time t0 to first_line(lines, pred, t0); None if there is none."""
    t = first_line(lines, pred, t0)
    return None if t is None else t - t0


def bridge_phases(lines, name, t0, noticed, t_answer, first_label, last_label):
    """Splits the start of Docker vassal `name` into phases (ms) from the emperor's debug log `lines`: from wall time
    t0 until the emperor logs `[name] <noticed>` (`first_label`), fork/exec of the bridge, its Docker connection,
    image inspect + stale-container check, create (none if the container was pre-created) + attach, start_container,
    then hand-over and the app's answer at wall time t_answer (`last_label`). A phase whose line is missing is left
    out."""

    def first(pred, after=0.0):
        return first_line(lines, pred, after)

    notice = first(lambda s: f"[{name}] {noticed}" in s)
    spawned = first(lambda s: f"[{name}] spawned bridge" in s, notice or 0)
    version = first(lambda s: s.endswith("/version"), spawned or 0)
    # Pre-created: no create request; the step before start ends at the attach request.
    create = first(lambda s: "/containers/create?" in s or "/attach?" in s, spawned or 0)
    start = first(lambda s: s.endswith("/start"), create or 0)
    started = first(lambda s: f"[{name}] bridge: container" in s and "started" in s, spawned or 0)
    marks = [(first_label, t0, notice), ("fork/exec bridge", notice, spawned),
             ("bridge init + Docker connect", spawned, version), ("version + inspect + stale check", version, create),
             ("create (unless pre-created) + attach", create, start), ("start_container + inspect", start, started),
             (last_label, started, t_answer)]
    return {label: (b - a) * 1000 for label, a, b in marks if a is not None and b is not None}


# --- bare_docker (bollard alone) -----------------------------------------------------------------------------------


def bare_argv(d, label, name, like_bridge=False, timeout=None):
    argv = [BARE, "--dir", d, "--label", label, "--name", name]
    if like_bridge:
        argv.append("--like-bridge")
    if timeout is not None:
        argv += ["--timeout", str(timeout)]
    return argv


def bare_fields(stdout):
    """bare_docker's figures: its output line `ok key=ms key=ms ...` as {key: float}."""
    return {k: float(v) for k, v in (kv.split("=") for kv in stdout.split()[1:])}


def run_bare(d, label, name, like_bridge=False, timeout=120):
    """One bare_docker run (container in `d`, labelled `label`); its figures plus process_ms, its whole process."""
    t0 = time.monotonic()
    r = subprocess.run(bare_argv(d, label, name, like_bridge), capture_output=True, text=True, timeout=timeout)
    wall = (time.monotonic() - t0) * 1000
    if r.returncode != 0:
        raise RuntimeError(f"bare_docker failed ({r.returncode}): {r.stderr.strip()}")
    fields = bare_fields(r.stdout)
    fields["process_ms"] = wall
    return fields


# --- HTTP over unix sockets ----------------------------------------------------------------------------------------


def get_unix(path, timeout=30, hold=0):
    """One GET over a unix socket, sent `hold` s after the connect; True on a 200 answer, False when the socket is
    missing or refuses."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        if hold:
            time.sleep(hold)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        buf = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        return buf.startswith(b"HTTP/1.1 200")
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    except OSError:
        return False
    finally:
        s.close()


def wait_answer(path, timeout, interval=0.0005):
    """Polls `path` until a GET answers 200; returns time.monotonic() of the answer."""
    deadline = time.monotonic() + timeout
    while True:
        if os.path.exists(path) and get_unix(path, timeout=max(0.1, deadline - time.monotonic())):
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer on {path} within {timeout} s")
        time.sleep(interval)


def wait_answers(socks, timeout, interval, appear_interval, tick=None):
    """Waits, a thread per socket, until each socket file appears (polled every `appear_interval` s) and then answers
    a GET with 200 (every `interval` s), each within `timeout` s; calls tick(number answered so far) every 0.2 s or
    less meanwhile. Returns the times of the answers (time.monotonic(), None where there was none) and the errors."""
    answers = [None] * len(socks)
    errors = []

    def waiter(i):
        try:
            deadline = time.monotonic() + timeout
            while not os.path.exists(socks[i]):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{socks[i]} never appeared")
                time.sleep(appear_interval)
            answers[i] = wait_answer(socks[i], max(1, deadline - time.monotonic()), interval=interval)
        except Exception as e:  # noqa: BLE001 - returned to the caller
            errors.append(str(e))

    threads = [threading.Thread(target=waiter, args=(i,), daemon=True) for i in range(len(socks))]
    for t in threads:
        t.start()
    end = time.monotonic() + timeout + 5
    for t in threads:
        while t.is_alive() and time.monotonic() < end:
            t.join(0.2)
            if tick is not None:
                tick(len(socks) - answers.count(None))
    return answers, errors


# --- 127.0.0.1 and a private nginx ---------------------------------------------------------------------------------


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10):
    def up():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    common.wait_for(up, timeout, f"nginx on 127.0.0.1:{port}", interval=0.02)


def get_port(port, timeout=60, bodies=(b"hello from",)):
    """One GET to 127.0.0.1:port (new TCP connection, HTTP/1.0): (ok, seconds on the client's clock); ok = a 200
    answer whose body contains one of `bodies` (testapp's answers "hello from ...")."""
    t0 = time.perf_counter()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        try:
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            buf = b""
            while chunk := s.recv(4096):
                buf += chunk
        finally:
            s.close()
        ok = buf.split(b"\r\n", 1)[0].endswith(b"200 OK") and any(b in buf for b in bodies)
    except OSError:
        ok = False
    return ok, time.perf_counter() - t0


class Nginx:
    """A private nginx under `d` (Debian's): one worker, no access log, the http-level `blocks` (upstreams and
    servers); or, with `body`, that instead of the http block (a `mail {}` block, with `top` before `events`:
    its load_module)."""

    def __init__(self, d, blocks, top="", body=None):
        os.makedirs(os.path.join(d, "logs"), exist_ok=True)
        self.error_log = os.path.join(d, "logs", "error.log")
        if body is None:
            body = (
                f"http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n"
                f"  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n"
                + blocks
                + "}\n"
            )
        conf = (
            f"daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\npid {d}/nginx.pid;\n"
            f"error_log {self.error_log} warn;\n{top}events {{ worker_connections 1024; }}\n" + body
        )
        self.conf = os.path.join(d, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        with open(os.path.join(d, "logs", "stderr.log"), "wb") as stderr:
            self.proc = subprocess.Popen(
                [NGINX, "-p", d, "-c", self.conf],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )

    def error_lines(self):
        try:
            with open(self.error_log, errors="replace") as f:
                return f.read().splitlines()
        except OSError:
            return []

    def stop(self):
        """SIGTERM the master (it stops its workers); SIGKILL master and workers if that takes over 5 s."""
        if self.proc is None:
            return
        workers = common.children_of(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for w in workers:
            try:
                os.kill(w, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None


# --- /proc ---------------------------------------------------------------------------------------------------------


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def bridges_of(emperor_pid):
    """Pids of the emperor's children whose process name starts with `bridge:`."""
    return [p for p in common.children_of(emperor_pid) if (comm(p) or "").startswith("bridge:")]


def pids_named(name):
    """Pids whose /proc/<pid>/comm is exactly `name` (dockerd, containerd, ...)."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and comm(int(p)) == name]


def system_cpu():
    """(busy, total) jiffies from /proc/stat's first line."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def cpu_ns_threads(pid):
    """CPU time of a process's live threads in ns (/proc/<pid>/task/*/schedstat: ns resolution, unlike the 10 ms
    ticks of /proc/<pid>/stat); None if it is gone."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total
