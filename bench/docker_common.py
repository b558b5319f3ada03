"""Shared helpers for the Docker benchmarks (bench/docker_*.py): build, a tiny Docker Engine API client over the unix
socket, a label that marks every container a bench run creates (swept at the end, on an error and on Ctrl-C), HTTP over
unix sockets, /proc readings.

Network rule: nothing here talks to anything but unix sockets and 127.0.0.1; containers run with network `none`.
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse

import common

BARE = os.path.join(common.OUT, "examples", "bare_docker")
IMAGE = "emperor-test/testapp"
DOCKER_SOCK = "/var/run/docker.sock"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def build():
    """Release emperor, testapp and bare_docker, then the test images (so the image's testapp has the new flags)."""
    cmd = ["cargo", "build", "--release", "--bin", "emperor", "--example", "testapp", "--example", "bare_docker"]
    print("building:", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=common.REPO, check=True)
    print("building images: scripts/build-images", flush=True)
    subprocess.run([os.path.join(common.REPO, "scripts", "build-images")], cwd=common.REPO, check=True)


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


def image_present():
    status, _ = docker_api("GET", f"/images/{IMAGE}/json")
    return status == 200


# --- vassals -------------------------------------------------------------------------------------------------------


def docker_vassal(sock, app_args=()):
    """Text of a Docker vassal file: the testapp image, network none, one unix socket."""
    return (
        "[emperor]\n"
        f"docker-image = {IMAGE}\n"
        "docker-network-mode = none\n"
        f"socket = {sock}\n"
        f"exec = {common.quote('/testapp', *app_args)}\n"
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


# --- HTTP over unix sockets ----------------------------------------------------------------------------------------


def get_unix(path, timeout=30):
    """One GET over a unix socket; True on a 200 answer, False when the socket is missing or refuses."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
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


# --- /proc ---------------------------------------------------------------------------------------------------------


def cpu_seconds(pid, children=False):
    """utime+stime of a process (all its threads), plus its waited-for children's with `children`, in seconds;
    None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def bridges_of(emperor_pid):
    """Pids of the emperor's children whose process name starts with `bridge:`."""
    return [p for p in common.children_of(emperor_pid) if (comm(p) or "").startswith("bridge:")]


def rollup_kib(pid):
    """{'Rss': KiB, 'Pss': KiB, ...} from /proc/<pid>/smaps_rollup."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0])
    return out


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
