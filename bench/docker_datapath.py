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

import os
import re
import statistics
import subprocess
import sys

import common
import docker_common as dc


def nginx_blocks(servers):
    """nginx's http-level blocks: a server per (port, upstream unix socket, or None for `return 200`), the upstreams
    with `keepalive 32` and HTTP/1.1."""
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
    return "".join(blocks)


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
    p = common.arg_parser(__doc__)
    p.add_argument("--rounds", type=int, default=5, help="rounds; each loads every target once (default 5)")
    p.add_argument("--seconds", type=float, default=5, help="wrk duration per measurement (default 5)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    p.add_argument("--modes", default="keepalive,close", help="app modes: keepalive, close (default both)")
    args = common.parse_args(p, docker=True)
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in ("keepalive", "close"):
            sys.exit(f"unknown mode {m!r}")
    dc.require_wrk_nginx()
    dc.prepare(args)
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
                        text = common.app_vassal(sock, "--name", short, *flags)
                    with open(os.path.join(run.vassals, name), "w") as f:
                        f.write(text)
                    ports[(mode, target)] = dc.free_port()
                    servers.append((ports[(mode, target)], sock))
            alone_port = dc.free_port()
            servers.append((alone_port, None))
            proc = run.start(run.emperor_argv(args.emperor_arg), log="info")
            print(f"emperor pid {proc.pid}: {len(ports)} vassals ({', '.join(f'{m}/{t}' for m, t in ports)})", flush=True)
            for (mode, target), port in ports.items():
                sock = dict(servers)[port]
                dc.wait_answer(sock, 120, interval=0.01)
            nginx = dc.Nginx(os.path.join(run.dir, "nginx"), nginx_blocks(servers))
            for port in [*ports.values(), alone_port]:
                dc.wait_port(port)
                if not dc.get_port(port, 10, bodies=(b"hello from", b"nginx"))[0]:
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
    common.run_main(main)
