#!/usr/bin/env python3
"""Data path: requests/s through nginx → unix socket → app in a Docker vassal, against the same app on the host.

One emperor runs, per app mode, two vassals of the same testapp binary with one unix socket each (bound by the
emperor): a Docker vassal (emperor-test/testapp, network none) and a **process vassal** (the host's testapp). One
private nginx (Debian's, one worker, `upstream { keepalive 32; }`, proxy_http_version 1.1, access log off) listens on
127.0.0.1 with one port per vassal, plus one port that answers `return 200` itself (nginx alone, for scale). wrk
(Debian's `wrk`, `apt-get install -y wrk`) loads one port at a time for `--seconds` (default 5) with `--connections`
(default 16) on 1 thread; the Docker and native targets alternate (order swapped every round) for `--rounds`
(default 5). Everything shares the machine's cores (wrk, nginx, app): the ratio matters, not the absolute numbers.

App modes (`--modes`, default both):
- keepalive: `testapp --keep-alive` (HTTP/1.1 keep-alive, a thread per connection), so nginx's upstream keepalive
  pool is used: the steady state of a real app;
- close: testapp's default: one connection at a time per socket, `Connection: close` after each answer, so every
  request costs nginx a new unix connection and the app a serialized accept.

Prints req/s per round and the docker/native ratio (median of the per-round ratios; goal >= 0.97).

    python3 bench/docker_datapath.py [--rounds 5] [--seconds 5] [--connections 16] [--modes keepalive,close]
"""

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

import common
import docker_common as dc

NGINX = "/usr/sbin/nginx"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Nginx:
    """A private nginx under `d`: one worker, one server per (port, upstream socket or None for `return 200`)."""

    def __init__(self, d, servers):
        os.makedirs(os.path.join(d, "logs"), exist_ok=True)
        blocks = []
        for i, (port, sock) in enumerate(servers):
            if sock is None:
                blocks.append(f"  server {{ listen 127.0.0.1:{port}; location / {{ return 200 'nginx\\n'; }} }}\n")
            else:
                blocks.append(
                    f"  upstream app{i} {{ server unix:{sock}; keepalive 32; }}\n"
                    f"  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app{i}; "
                    'proxy_http_version 1.1; proxy_set_header Connection ""; } }\n'
                )
        conf = (
            f"daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\npid {d}/nginx.pid;\n"
            f"error_log {d}/logs/error.log warn;\nevents {{ worker_connections 1024; }}\n"
            f"http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n"
            f"  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n"
            + "".join(blocks)
            + "}\n"
        )
        self.conf = os.path.join(d, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        self.proc = subprocess.Popen(
            [NGINX, "-p", d, "-c", self.conf],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(d, "logs", "stderr.log"), "wb"),
            start_new_session=True,
        )

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


def wait_port(port, timeout=10):
    def up():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    common.wait_for(up, timeout, f"nginx on 127.0.0.1:{port}", interval=0.02)


def http_ok(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        buf = b""
        while chunk := s.recv(4096):
            buf += chunk
        s.close()
        return buf.split(b"\r\n", 1)[0].endswith(b"200 OK") and (b"hello from" in buf or b"nginx" in buf)
    except OSError:
        return False


def wrk(port, seconds, connections):
    """req/s, and the error counts wrk reports."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "2s", f"http://127.0.0.1:{port}/"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    if r.returncode != 0:
        raise RuntimeError(f"wrk failed: {r.stderr.strip()}")
    m = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
    if not m:
        raise RuntimeError(f"cannot parse wrk output:\n{r.stdout}")
    errors = 0
    m2 = re.search(r"Non-2xx or 3xx responses: (\d+)", r.stdout)
    if m2:
        errors += int(m2.group(1))
    m3 = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", r.stdout)
    if m3:
        errors += sum(int(x) for x in m3.groups())
    return float(m.group(1)), errors


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="rounds; each loads every target once (default 5)")
    p.add_argument("--seconds", type=float, default=5, help="wrk duration per measurement (default 5)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    p.add_argument("--modes", default="keepalive,close", help="app modes: keepalive, close (default both)")
    common.add_run_args(p, docker=True)
    args = p.parse_args()
    common.stop_on_sigterm()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk (Debian's package)")
    if not os.path.exists(NGINX):
        sys.exit(f"{NGINX} is missing: scripts/setup installs nginx-light")
    if not args.no_build:
        dc.build()
    if not dc.image_present():
        sys.exit(f"image {dc.IMAGE} is missing: run scripts/build-images")
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in ("keepalive", "close"):
            sys.exit(f"unknown mode {m!r}")
    seconds = max(1, int(round(args.seconds)))

    results = {}  # (mode, target) -> [req/s per round]
    errors = {}
    nginx_alone = []
    nginx = None
    with dc.DockerRun("docker_datapath", keep=args.keep) as run:
        try:
            ports = {}
            servers = []
            tag = os.getpid()
            for mode in modes:
                flags = ["--keep-alive"] if mode == "keepalive" else []
                for target in ("docker", "native"):
                    short = f"{target[0]}{mode[0]}"
                    sock = os.path.join(run.vassals, f"{short}.sock")
                    name = f"dp{tag}-{short}.ini"
                    if target == "docker":
                        text = dc.docker_vassal(sock, ["--name", short, *flags])
                    else:
                        text = (
                            "[emperor]\n"
                            f"socket = {sock}\n"
                            f"exec = {common.quote(common.TESTAPP, '--name', short, *flags)}\n"
                        )
                    with open(os.path.join(run.vassals, name), "w") as f:
                        f.write(text)
                    ports[(mode, target)] = free_port()
                    servers.append((ports[(mode, target)], sock))
            alone_port = free_port()
            servers.append((alone_port, None))
            proc = run.start(run.emperor_argv(args.emperor_arg), env={"EMPEROR_LOG": os.environ.get("EMPEROR_LOG", "info")})
            print(f"emperor pid {proc.pid}: {len(ports)} vassals ({', '.join(f'{m}/{t}' for m, t in ports)})", flush=True)
            for (mode, target), port in ports.items():
                sock = dict(servers)[port]
                dc.wait_answer(sock, 120, interval=0.01)
            nginx = Nginx(os.path.join(run.dir, "nginx"), servers)
            for port in [*ports.values(), alone_port]:
                wait_port(port)
                if not http_ok(port):
                    raise RuntimeError(f"no 200 through nginx on port {port}")
            print(f"nginx pid {nginx.proc.pid}; wrk -t1 -c{args.connections} -d{seconds}s, {args.rounds} rounds", flush=True)
            # Warm-up: one short load per target.
            for port in ports.values():
                wrk(port, 1, args.connections)
            for r in range(args.rounds):
                run.check_alive()
                line = []
                for mode in modes:
                    order = ["docker", "native"] if (r % 2 == 0) else ["native", "docker"]
                    for target in order:
                        rps, err = wrk(ports[(mode, target)], seconds, args.connections)
                        results.setdefault((mode, target), []).append(rps)
                        errors[(mode, target)] = errors.get((mode, target), 0) + err
                        line.append(f"{mode}/{target} {rps:.0f}")
                rps, _ = wrk(alone_port, seconds, args.connections)
                nginx_alone.append(rps)
                line.append(f"nginx-alone {rps:.0f}")
                print(f"  round {r + 1}/{args.rounds}: " + ", ".join(line), flush=True)
        finally:
            if nginx is not None:
                nginx.stop()

    print()
    print(f"nginx (1 worker, upstream keepalive) -> unix socket -> testapp; wrk -t1 -c{args.connections}, "
          f"{args.rounds} rounds x {seconds} s, alternating (req/s)")
    for mode in modes:
        d, n = results[(mode, "docker")], results[(mode, "native")]
        ratios = [a / b for a, b in zip(d, n)]
        print(f"  {mode:<9} docker vassal (network none) median {statistics.median(d):8.0f}  [{min(d):.0f}-{max(d):.0f}]")
        print(f"  {mode:<9} native process vassal       median {statistics.median(n):8.0f}  [{min(n):.0f}-{max(n):.0f}]")
        print(f"  {mode:<9} RATIO docker/native = {statistics.median(ratios):.3f} (median of per-round ratios; "
              f"range {min(ratios):.3f}-{max(ratios):.3f}; ratio of medians {statistics.median(d) / statistics.median(n):.3f}; "
              f"goal >= 0.97)")
        err = errors[(mode, 'docker')] + errors[(mode, 'native')]
        if err:
            print(f"  {mode:<9} WARNING: wrk reported {err} errors (docker {errors[(mode, 'docker')]}, native {errors[(mode, 'native')]})")
    print(f"  nginx alone (return 200): median {statistics.median(nginx_alone):.0f}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted")
    except (TimeoutError, RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        sys.exit(f"bench failed: {e}")
