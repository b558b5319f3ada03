#!/usr/bin/env python3
"""Faults under load (issue 11, "Measure"): what clients of a Docker vassal see when the Docker daemon restarts, when
its bridge is killed, and when its container is killed again and again.

Everything runs against a throw-away dockerd this bench starts itself (own socket, --data-root, --exec-root under
/tmp/efb-<pid>/, `--bridge=none --iptables=false --ip6tables=false`), never the machine's main daemon, which only
lends the test image (`docker save | docker load`). One vassal: emperor-test/testapp, network none, one unix socket
bound by the emperor, start records in a mounted directory (so restarts are counted). Client loops make short
requests (a new unix connection each, `GET /`, 10 ms apart) through the vassal's socket.

1. live-restore: dockerd runs with --live-restore and is stopped (SIGTERM), kept down --outage s, started again;
   then --settle s. Then the bridge is killed with SIGKILL; then --settle s. For each: failed requests (10 s client
   timeout) and container restarts (container ids before/after, start records).
2. no live-restore: dockerd without --live-restore is stopped (it stops the container), kept down --outage s and
   started again. Time from "the daemon answers again" (GET /_ping) to "the vassal answers again" (the first request
   that completes afterwards), and failed requests of two loops running side by side, with 10 s and 60 s client
   timeouts.
3. churn: as many connections per second as the machine gives (--workers processes, each one request at a time),
   for --churn-seconds (60) at most, while the vassal's container is killed (`docker kill`, SIGKILL) as soon as it
   has served for 1.5 s, in a loop; the emperor runs with --emperor-loyalty-time 1, so each killed app was loyal and
   is restarted at once (unthrottled). Refused connections, other failures, p50/p99/max latency.

    python3 bench/faults.py [--outage 5] [--settle 5] [--churn-seconds 60] [--workers 3] [--no-build] [--keep]
"""

import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import common
import docker_common as dc

MAIN_SOCK = dc.DOCKER_SOCK


def main_docker_argv():
    host = os.environ.get("DOCKER_HOST")
    return ["docker"] + (["-H", host] if host else ["-H", "unix://" + MAIN_SOCK])


def ping(sock, timeout=2.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(sock)
        s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        buf = b""
        while chunk := s.recv(4096):
            buf += chunk
        return buf.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))
    except OSError:
        return False
    finally:
        s.close()


def procs_under(root):
    """Pids of dockerd/containerd/containerd-shim processes whose command line names `root`."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        c = dc.comm(int(p)) or ""
        if not (c.startswith("dockerd") or c.startswith("containerd")):
            continue
        line = common.cmdline(int(p)) or ""
        if root + "/" in line or line.endswith(root):
            out.append(int(p))
    return out


def descendants(pid):
    kids = common.children_of(pid)
    out = list(kids)
    for k in kids:
        out += descendants(k)
    return out


class Dockerd:
    """A throw-away dockerd under /tmp/efb-<pid>/: start, stop, restart; close() removes every trace."""

    def __init__(self):
        self.root = f"/tmp/efb-{os.getpid()}"
        shutil.rmtree(self.root, ignore_errors=True)
        os.makedirs(os.path.join(self.root, "data"))
        os.makedirs(os.path.join(self.root, "x"))
        with open(os.path.join(self.root, "daemon.json"), "w") as f:
            f.write("{}\n")
        self.sock = os.path.join(self.root, "d.sock")
        self.log_path = os.path.join(self.root, "dockerd.log")
        self.proc = None
        self.exe = shutil.which("dockerd") or "/usr/sbin/dockerd"
        if not os.path.exists(self.exe):
            sys.exit("dockerd is not installed: run scripts/setup as root")

    def start(self, live_restore):
        """Starts dockerd; returns time.monotonic() of its first answer."""
        argv = [self.exe, "--bridge=none", "--iptables=false", "--ip6tables=false", "-H", "unix://" + self.sock,
                "--data-root", os.path.join(self.root, "data"), "--exec-root", os.path.join(self.root, "x"),
                "--pidfile", os.path.join(self.root, "d.pid"), "--config-file", os.path.join(self.root, "daemon.json")]
        if live_restore:
            argv.append("--live-restore")
        env = dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin:/sbin:/bin")
        env.pop("DOCKER_HOST", None)
        self.spawned_at = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        deadline = time.monotonic() + 60
        while not ping(self.sock, 1):
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited ({self.proc.returncode}); see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not answer within 60 s; see {self.log_path}")
            time.sleep(0.005)
        return time.monotonic()

    def stop(self):
        """SIGTERM, wait until dockerd and its containerd are gone; returns the seconds it took."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        common.wait_for(lambda: not [p for p in procs_under(self.root) if dc.comm(p) == "containerd"], 30,
                        "containerd to exit", interval=0.01)
        self.proc = None
        return time.monotonic() - t0

    def load_image(self, image=dc.IMAGE):
        save = subprocess.Popen(main_docker_argv() + ["save", image], stdout=subprocess.PIPE)
        load = subprocess.run(["docker", "-H", "unix://" + self.sock, "load", "-q"], stdin=save.stdout,
                              capture_output=True, text=True)
        save.stdout.close()
        if save.wait() != 0 or load.returncode != 0:
            raise RuntimeError(f"docker save | docker load of {image} failed: {load.stderr.strip()}")

    def close(self):
        if self.proc is not None and ping(self.sock):
            try:
                os.environ["DOCKER_HOST"] = "unix://" + self.sock
                for c in dc.containers("emperor.vassal"):
                    dc.docker_api("DELETE", f"/containers/{c['Id']}?force=1&v=1")
            except (OSError, RuntimeError):
                pass
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for _ in range(50):
            pids = procs_under(self.root)
            if not pids:
                break
            victims = []
            for p in pids:
                if (dc.comm(p) or "").startswith("containerd-shim"):
                    victims += descendants(p)
            for p in victims + pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
        for _ in range(5):
            with open("/proc/self/mountinfo") as f:
                mounts = [line.split()[4] for line in f if line.split()[4].startswith(self.root)]
            if not mounts:
                break
            for m in sorted(mounts, key=len, reverse=True):
                subprocess.run(["umount", "-l", m], stderr=subprocess.DEVNULL, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


class Loop:
    """A client loop in a thread: a GET through `sock` every 10 ms (a new connection each), `timeout` s each."""

    def __init__(self, sock, timeout):
        self.sock, self.timeout = sock, timeout
        self.results = []  # (t_start, t_end, ok, error)
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop_flag.is_set():
            t0 = time.monotonic()
            err = None
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            try:
                s.connect(self.sock)
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                buf = b""
                while chunk := s.recv(4096):
                    buf += chunk
                ok = buf.startswith(b"HTTP/1.1 200")
                if not ok:
                    err = f"answer {buf[:40]!r}"
            except OSError as e:
                ok, err = False, type(e).__name__
            finally:
                s.close()
            self.results.append((t0, time.monotonic(), ok, err))
            time.sleep(0.01)

    def mark(self):
        return len(self.results)

    def stop(self):
        self.stop_flag.set()
        self.thread.join(self.timeout + 5)

    def summary(self, since=0):
        r = self.results[since:]
        failed = [x for x in r if not x[2]]
        kinds = {}
        for x in failed:
            kinds[x[3]] = kinds.get(x[3], 0) + 1
        return len(r), len(failed), kinds


def container_id(name):
    status, body = dc.docker_api("GET", f"/containers/{name}/json")
    return body["Id"] if status == 200 else None


def starts(rec):
    return len(common.read_records(rec))


# --- churn workers (processes, so that the GIL does not bound the rate) -------------------------------------------


def churn_worker(sock, seconds, timeout, q):
    lat = []
    refused = other = 0
    kinds = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(sock)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            buf = b""
            while chunk := s.recv(4096):
                buf += chunk
            if buf.startswith(b"HTTP/1.1 200"):
                lat.append(time.perf_counter() - t0)
            else:
                other += 1
                kinds["bad answer"] = kinds.get("bad answer", 0) + 1
        except (ConnectionRefusedError, FileNotFoundError) as e:
            refused += 1
            kinds[type(e).__name__] = kinds.get(type(e).__name__, 0) + 1
        except OSError as e:
            other += 1
            kinds[type(e).__name__] = kinds.get(type(e).__name__, 0) + 1
        finally:
            s.close()
    q.put((lat, refused, other, kinds))


def main():
    p = common.arg_parser(__doc__)
    p.add_argument("--outage", type=float, default=5, help="seconds the daemon stays down (default 5)")
    p.add_argument("--settle", type=float, default=5, help="seconds watched after each fault (default 5)")
    p.add_argument("--churn-seconds", type=float, default=60, help="length of the churn phase (default 60, max 60)")
    p.add_argument("--workers", type=int, default=3, help="client processes of the churn phase (default 3)")
    p.add_argument("--phases", default="live,nolive,churn", help="subset of live,nolive,churn")
    args = common.parse_args(p, docker=True)
    phases = set(args.phases.split(","))
    dc.prepare(args)

    d = Dockerd()
    try:
        t0 = time.monotonic()
        d.start(live_restore="live" in phases)
        print(f"throw-away dockerd on {d.sock}: answered {time.monotonic() - t0:.2f} s after its start", flush=True)
        t0 = time.monotonic()
        d.load_image()
        print(f"image loaded (docker save | docker load) in {time.monotonic() - t0:.2f} s", flush=True)
        os.environ["DOCKER_HOST"] = "unix://" + d.sock
        with dc.DockerRun("faults", keep=args.keep) as run:
            run_phases(run, d, args, phases)
    finally:
        d.close()


def run_phases(run, d, args, phases):
    name = f"flt{os.getpid()}"
    file = f"{name}.ini"
    rec_dir = os.path.join(run.dir, "rec")
    os.mkdir(rec_dir)
    rec = os.path.join(rec_dir, f"{name}.rec")
    sock = os.path.join(run.dir, "app.sock")
    extra = ["--docker-daemon-socket", d.sock, "--emperor-loyalty-time", "1", *args.emperor_arg]
    run.start(run.emperor_argv(extra), log="info")
    run.wait_log("watching", 10, "the emperor")
    with open(os.path.join(run.vassals, file), "w") as f:
        f.write(dc.docker_vassal(sock, ["--name", name, "--record", f"/rec/{name}.rec"],
                                 extra=f"docker-mount = {rec_dir}:/rec\n"))
    dc.wait_answer(sock, 60)
    print(f"vassal {file} answers; emperor pid {run.proc.pid}", flush=True)

    if "live" in phases:
        loop = Loop(sock, 10)
        time.sleep(1)
        id0, s0, m = container_id(file), starts(rec), loop.mark()
        took = d.stop()
        time.sleep(args.outage)
        t_back = d.start(live_restore=True)
        time.sleep(args.settle)
        id1, s1 = container_id(file), starts(rec)
        n, failed, kinds = loop.summary(m)
        print(f"\n[live-restore restart] dockerd stop took {took:.2f} s, down {args.outage:.0f} s, answered again "
              f"{t_back - d.spawned_at:.2f} s after its start")
        print(f"  requests {n}, failed {failed} {kinds or ''}; same container: {id0 == id1} "
              f"({(id0 or '-')[:12]} -> {(id1 or '-')[:12]}); app starts during the phase: {s1 - s0}")

        id0, s0, m = container_id(file), starts(rec), loop.mark()
        bridges = dc.bridges_of(run.proc.pid)
        for b in bridges:
            os.kill(b, signal.SIGKILL)
        time.sleep(args.settle)
        id1, s1 = container_id(file), starts(rec)
        n, failed, kinds = loop.summary(m)
        loop.stop()
        print(f"\n[bridge kill -9] killed {bridges}; requests {n}, failed {failed} {kinds or ''}; same container: "
              f"{id0 == id1} ({(id0 or '-')[:12]} -> {(id1 or '-')[:12]}); app starts during the phase: {s1 - s0}")
        # The next phase needs a daemon without live-restore.
        d.stop()
        d.start(live_restore=False)
        dc.wait_answer(sock, 60)

    if "nolive" in phases:
        l10, l60 = Loop(sock, 10), Loop(sock, 60)
        time.sleep(1)
        s0 = starts(rec)
        took = d.stop()
        time.sleep(args.outage)
        t_back = d.start(live_restore=False)
        common.wait_for(lambda: any(r[2] and r[1] > t_back for r in l10.results + l60.results), 120,
                        "the vassal to answer again", interval=0.01)
        t_ans = min(r[1] for r in l10.results + l60.results if r[2] and r[1] > t_back)
        time.sleep(args.settle)
        l10.stop()
        l60.stop()
        n10, f10, k10 = l10.summary()
        n60, f60, k60 = l60.summary()
        left = dc.containers(run.label)
        print(f"\n[restart without live-restore] dockerd stop (and its container) took {took:.2f} s, down "
              f"{args.outage:.0f} s")
        print(f"  daemon answers again -> vassal answers again: {t_ans - t_back:.2f} s; app starts: {starts(rec) - s0}")
        print(f"  10 s client timeout: requests {n10}, failed {f10} {k10 or ''}")
        print(f"  60 s client timeout: requests {n60}, failed {f60} {k60 or ''}")
        print(f"  containers of the run afterwards: {[(c['Names'][0], c['State']) for c in left]}")

    if "churn" in phases:
        churn(run, sock, file, rec, args)


def churn(run, sock, file, rec, args):
    seconds = min(60, args.churn_seconds)
    q = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=churn_worker, args=(sock, seconds, 10, q), daemon=True)
               for _ in range(args.workers)]
    s0 = starts(rec)
    t0 = time.monotonic()
    for w in workers:
        w.start()
    kills = 0
    gaps = []
    end = t0 + seconds
    while time.monotonic() < end - 3:
        time.sleep(1.5)
        cid = container_id(file)
        if cid is None:
            continue
        tk = time.monotonic()
        dc.docker_api("POST", f"/containers/{cid}/kill?signal=KILL")
        kills += 1
        try:
            common.wait_for(lambda: (c := container_id(file)) is not None and c != cid and starts(rec) >= s0 + kills,
                            30, "the next container", interval=0.01)
            gaps.append(time.monotonic() - tk)
        except TimeoutError:
            print("  no new container within 30 s of a kill", flush=True)
    results = [q.get(timeout=seconds + 30) for _ in workers]
    for w in workers:
        w.join(5)
    elapsed = time.monotonic() - t0
    lat = sorted(x for r in results for x in r[0])
    refused = sum(r[1] for r in results)
    other = sum(r[2] for r in results)
    kinds = {}
    for r in results:
        for k, v in r[3].items():
            kinds[k] = kinds.get(k, 0) + v
    total = len(lat) + refused + other
    print(f"\n[churn] {elapsed:.0f} s, {args.workers} client processes, container killed {kills} times "
          f"(app starts {starts(rec) - s0}; kill -> new container running: median "
          f"{sorted(gaps)[len(gaps) // 2] if gaps else float('nan'):.2f} s)")
    print(f"  connections {total} ({total / elapsed:.0f}/s), answered {len(lat)}, refused {refused}, other failures "
          f"{other} {kinds or ''}")
    if lat:
        print(f"  latency p50 {common.percentile(lat, 50) * 1000:.2f} ms, p99 {common.percentile(lat, 99) * 1000:.1f} ms, "
              f"p99.9 {common.percentile(lat, 99.9) * 1000:.1f} ms, max {lat[-1] * 1000:.0f} ms")


if __name__ == "__main__":
    common.run_main(main)
