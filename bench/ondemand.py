#!/usr/bin/env python3
"""On-demand Docker vassals: cold start, wake from pause, zero-downtime reload, idle detection.

One emperor (EMPEROR_LOG=debug, so its log splits each cold start into phases) and one private nginx (Debian's, one
worker, 127.0.0.1, `upstream { server unix:<vassal socket>; }` with no upstream keepalive, so every request is a new
unix connection and the vassal can go idle between requests). Every vassal runs `emperor-test/testapp` (network
none) in its default mode (one connection at a time, closed after each answer). Phases (`--phases`, default all),
each with its own vassal file, written when the phase starts and deleted when it ends:

cold    on-demand = true, idle = 1, two vassals side by side, alternating cycle by cycle: the default (the container
        is created ahead of time while the vassal waits) and `docker-precreate = false` (created on the first
        connection). `--cycles` (30) times each: wait until the bridge has exited and the container is gone (or only
        the fresh pre-created one waits), then one GET through nginx (the first answer's latency, the client's clock),
        then `--warm` (10) GETs while it runs (warm latency). The daemon log splits each cold start (connection
        waiting -> bridge spawned -> Docker connect -> image inspect + stale check -> create (unless pre-created) +
        attach -> start -> hand-over + first answer); `--bare-runs` (5) bare_docker runs give bollard's own create
        and start times. Goal: p50 <= 300 ms.
pause   idle = 1, idle-action = pause: `--pause-cycles` (30) times: wait until docker inspect says .State.Paused,
        then one GET through nginx, then `--warm` GETs. Goal: p50 <= 30 ms.
reload  two vassals, reload-overlap = true (default) and false, one after the other: each gets a 5 s wrk baseline
        (no swap), then `wrk -t1 -c8 --latency` (bounded: at most `--wrk-cap` s, SIGINT when done) while the bench
        swaps docker-image between emperor-test/testapp and emperor-test/testapp:v2 `--swaps` (10) times, waiting
        after each until exactly one container is left and it runs the new image. Failures = non-2xx + socket errors
        (wrk's Lua summary), plus nginx's error.log lines. Goal: 0 failed (both).
idle    on-demand = true, docker-precreate = false, idle = each of `--idles` (2,5), concurrently: `--idle-cycles`
        (10) times: one GET straight to the unix socket (no nginx), then the time from the client's close until (a) the emperor logs "idle:
        stopping", (b) the bridge logs "container .. exited", (c) the container is gone from Docker; minus idle.

    python3 bench/ondemand.py [--phases cold,pause,reload,idle] [--cycles 30] [--pause-cycles 30] [--swaps 10]
                              [--idle-cycles 10] [--idles 2,5] [--no-build] [--keep]

Network rule: only unix sockets and 127.0.0.1; containers run with network none. Every container carries the run's
unique --docker-label and is swept at the end, on an error and on Ctrl-C.
"""

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

import common
import docker_common as dc

VARIANTS = ("wake", "short", "held")
IMAGES = ("emperor-test/testapp", "emperor-test/testapp:v2")

WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("LUA requests=%d status=%d connect=%d read=%d write=%d timeout=%d "
    .. "p50=%d p90=%d p99=%d p999=%d max=%d\n",
    summary.requests, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""


def nginx_blocks(servers):
    """nginx's http-level blocks: one 127.0.0.1 port per (port, unix upstream), no upstream keepalive."""
    return "".join(
        f"  upstream app{i} {{ server unix:{sock}; }}\n"
        f"  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app{i}; }} }}\n"
        for i, (port, sock) in enumerate(servers)
    )


def vassal_text(sock, name, image=IMAGES[0], extra=""):
    return dc.docker_vassal(sock, ["--name", name], image, extra)


def idle_stop_line(name):
    """Matches the emperor's log line for its decision to stop the idle vassal `name`."""
    return lambda s: f"[{name}] idle: stopping" in s


def exit_line(name):
    """Matches the bridge's log line for the end of the vassal's container."""
    return lambda s: f"[{name}] bridge: container" in s and "exited with code" in s


def pct(values, p):
    return common.percentile(values, p) if values else float("nan")


def fmt_ms(values):
    if not values:
        return "n/a"
    return (f"p50 {pct(values, 50):7.1f}  p95 {pct(values, 95):7.1f}  min {min(values):6.1f}  "
            f"max {max(values):7.1f}  (n={len(values)})")


class Bench:
    def __init__(self, args, run, proc):
        self.args = args
        self.run = run
        self.proc = proc
        self.tag = os.getpid()
        self.results = {}

    # --- helpers ---
    def path(self, short):
        return os.path.join(self.run.vassals, f"od{self.tag}-{short}.ini"), f"od{self.tag}-{short}.ini"

    def sock(self, short):
        return os.path.join(self.run.vassals, f"{short}.sock")

    def containers_of(self, name):
        return dc.containers(self.run.label, [f"emperor.vassal={name}"])

    def bridges(self):
        return dc.bridges_of(self.proc.pid)

    def wait_stopped(self, name, timeout=60):
        """Until the vassal's container is gone and no bridge runs (the vassal waits again)."""
        common.wait_for(lambda: self.run.check_alive() or (not self.containers_of(name) and not self.bridges()),
                        timeout, f"{name}'s container to be gone", interval=0.02)

    def inspect(self, name):
        status, body = dc.docker_api("GET", f"/containers/{name}/json")
        return body if status == 200 else None

    def remove_vassal(self, ini, name):
        if os.path.exists(ini):
            os.remove(ini)
        common.wait_for(lambda: not self.containers_of(name) and not self.bridges(), 120,
                        f"{name} to be removed", interval=0.05)

    def lines_since(self, t_wall):
        return dc.parse_log(self.run.log_path, t_wall)

    # --- cold ---
    def wait_cold(self, name, precreated, timeout=60):
        """Until no bridge runs and the vassal's container is gone (or, pre-created, only a fresh one waits)."""
        def ready():
            if self.run.check_alive() or self.bridges():
                return False
            cs = self.containers_of(name)
            if precreated:
                return len(cs) == 1 and cs[0].get("State") == "created"
            return not cs
        common.wait_for(ready, timeout, f"{name} to wait for a connection", interval=0.02)

    def cold(self, ports):
        variants = []
        for short, precreated in (("cold", True), ("lazy", False)):
            ini, name = self.path(short)
            sock = self.sock(short)
            extra = "on-demand = true\nidle = 1\n" + ("" if precreated else "docker-precreate = false\n")
            dc.drop(ini, vassal_text(sock, short, extra=extra))
            common.wait_for(lambda: os.path.exists(sock), 30, f"the {short} vassal's socket")
            variants.append(dict(short=short, ini=ini, name=name, port=ports[short], precreated=precreated,
                                 firsts=[], warms=[], phases=[], fails=0, closes=[]))
        print(f"cold: {self.args.cycles} cycles of each variant, alternating (idle = 1; pre-created and "
              "docker-precreate = false)", flush=True)
        for i in range(self.args.cycles):
            for v in (variants if i % 2 == 0 else variants[::-1]):
                self.run.check_alive()
                self.wait_cold(v["name"], v["precreated"])
                time.sleep(0.2)  # the emperor re-arms its watch once the bridge is reaped
                t_wall = time.time()
                ok, dt = dc.get_port(v["port"])
                if not ok:
                    v["fails"] += 1
                v["firsts"].append(dt * 1000)
                for _ in range(self.args.warm):
                    ok, dtw = dc.get_port(v["port"])
                    if not ok:
                        v["fails"] += 1
                    v["warms"].append(dtw * 1000)
                t_close = time.time()
                v["phases"].append(dc.bridge_phases(self.lines_since(t_wall), v["name"], t_wall,
                                                    "a connection is waiting: starting", t_wall + dt,
                                                    "connect -> emperor notices", "hand-over + app + answer via nginx"))
                v["closes"].append((t_close, t_close - t_wall))
                print(f"  cycle {i + 1}/{self.args.cycles} {v['short']}: first {dt * 1000:.0f} ms", flush=True)
        for v in variants:
            self.remove_vassal(v["ini"], v["name"])
        v = variants[0]
        name = v["name"]
        lines = self.lines_since(v["closes"][0][0] - 1) if v["closes"] else []
        idle1 = []
        for t_close, since_start in v["closes"]:
            idle1.append(dict(decide=dc.delay(lines, idle_stop_line(name), t_close),
                              exited=dc.delay(lines, exit_line(name), t_close), since_start=since_start))
        bare = []
        if self.args.bare_runs:
            print(f"cold: {self.args.bare_runs} bare_docker runs for create_ms", flush=True)
            for _ in range(self.args.bare_runs):
                bare.append(dc.run_bare(os.path.join(self.run.dir, "bare"), self.run.label, f"bare{self.tag}"))
        self.results["cold"] = dict(variants=variants, bare=bare, idle1=idle1)

    # --- pause ---
    def pause(self, port):
        ini, name = self.path("pause")
        sock = self.sock("pause")
        dc.drop(ini, vassal_text(sock, "pause", extra="idle = 1\nidle-action = pause\n"))
        dc.wait_answer(sock, 60, interval=0.01)
        firsts, warms, fails, pause_wait = [], [], 0, []
        print(f"pause: {self.args.pause_cycles} cycles (idle = 1, idle-action = pause)", flush=True)
        for i in range(self.args.pause_cycles):
            self.run.check_alive()
            t0 = time.monotonic()
            common.wait_for(lambda: self.run.check_alive() or
                            ((self.inspect(name) or {}).get("State", {}).get("Paused") is True),
                            30, f"{name} to be paused", interval=0.02)
            pause_wait.append(time.monotonic() - t0)
            time.sleep(0.05)
            ok, dt = dc.get_port(port)
            if not ok:
                fails += 1
            firsts.append(dt * 1000)
            for _ in range(self.args.warm):
                ok, dtw = dc.get_port(port)
                if not ok:
                    fails += 1
                warms.append(dtw * 1000)
            print(f"  cycle {i + 1}/{self.args.pause_cycles}: first {dt * 1000:.1f} ms", flush=True)
        restarts = len([1 for _, s in self.lines_since(0) if f"[{name}] a connection is waiting: starting" in s
                        or f"[{name}] spawned bridge" in s])
        self.remove_vassal(ini, name)
        self.results["pause"] = dict(firsts=firsts, warms=warms, fails=fails, spawns=restarts)

    # --- reload ---
    def wrk(self, port, seconds, lua):
        return subprocess.Popen(["wrk", "-t1", "-c8", f"-d{seconds}s", "--timeout", "10s", "--latency", "-s", lua,
                                 f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)

    @staticmethod
    def wrk_result(p, cap):
        out, err = p.communicate(timeout=cap + 30)
        m = re.search(r"LUA (.*)", out)
        if p.returncode != 0 or not m:
            raise RuntimeError(f"wrk failed ({p.returncode}): {err.strip()}\n{out}")
        r = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
        r["failed"] = r["status"] + r["connect"] + r["read"] + r["write"] + r["timeout"]
        return r

    def reload(self, ports, nginx):
        lua = os.path.join(self.run.dir, "summary.lua")
        with open(lua, "w") as f:
            f.write(WRK_LUA)
        out = {}
        for overlap in (True, False):
            short = "ovl" if overlap else "seq"
            ini, name = self.path(short)
            sock = self.sock(short)
            extra = "" if overlap else "reload-overlap = false\n"
            dc.drop(ini, vassal_text(sock, short, IMAGES[0], extra))
            dc.wait_answer(sock, 60, interval=0.01)
            port = ports[short]
            common.wait_for(lambda: dc.get_port(port)[0], 30, "nginx to answer", interval=0.05)
            err0 = len(nginx.error_lines())
            print(f"reload (reload-overlap = {str(overlap).lower()}): 5 s baseline without swaps", flush=True)
            base = self.wrk_result(self.wrk(port, 5, lua), 5)
            p = self.wrk(port, self.args.wrk_cap, lua)
            swaps = []
            try:
                time.sleep(1)
                for i in range(self.args.swaps):
                    self.run.check_alive()
                    if p.poll() is not None:
                        raise RuntimeError("wrk ended before the swaps did: raise --wrk-cap")
                    image = IMAGES[(i + 1) % 2]
                    t0 = time.monotonic()
                    dc.drop(ini, vassal_text(sock, short, image, extra))

                    def done():
                        cs = self.containers_of(name)
                        return (len(cs) == 1 and cs[0]["Image"] == image and cs[0]["Names"] == [f"/{name}"]
                                and cs[0]["State"] == "running")

                    common.wait_for(done, 60, f"swap {i + 1} to {image}", interval=0.02)
                    swaps.append((time.monotonic() - t0) * 1000)
                    print(f"  swap {i + 1}/{self.args.swaps} to {image}: one container left after {swaps[-1]:.0f} ms",
                          flush=True)
                    time.sleep(0.5)
            finally:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
            r = self.wrk_result(p, self.args.wrk_cap)
            r["swaps"] = swaps
            r["base"] = base
            r["nginx_errors"] = nginx.error_lines()[err0:]
            out[short] = r
            self.remove_vassal(ini, name)
        self.results["reload"] = out

    # --- idle ---
    def idle(self):
        idles = [float(x) for x in self.args.idles.split(",") if x.strip()]
        out = {}
        errors = []

        def worker(idle):
            short = f"idle{idle:g}".replace(".", "_")
            ini, name = self.path(short)
            sock = self.sock(short)
            try:
                # Not pre-created: "container gone" then marks the idle stop (a pre-created one would reappear).
                dc.drop(ini, vassal_text(sock, short,
                                         extra=f"on-demand = true\nidle = {idle:g}\ndocker-precreate = false\n"))
                common.wait_for(lambda: os.path.exists(sock), 30, f"{name}'s socket")
                rows = []
                for i in range(3 * self.args.idle_cycles):
                    variant = VARIANTS[i % 3]
                    self.wait_stopped_one(name)
                    time.sleep(0.3)
                    if variant == "held":
                        # The waking connection itself stays open `idle` s before its request.
                        ok = dc.get_unix(sock, timeout=60, hold=idle)
                    else:
                        ok = dc.get_unix(sock, timeout=60)
                        if ok and variant == "short":
                            time.sleep(idle / 2)
                            ok = dc.get_unix(sock, timeout=60)
                    if not ok:
                        raise RuntimeError(f"{name}: no 200 answer ({variant})")
                    t_close_wall, t_close = time.time(), time.monotonic()  # the client has closed
                    common.wait_for(lambda: not self.containers_of(name), idle + 60, f"{name} to stop",
                                    interval=0.01)
                    gone = time.monotonic() - t_close
                    rows.append((t_close_wall, gone, variant))
                    print(f"  idle = {idle:g}: cycle {i + 1}/{3 * self.args.idle_cycles} ({variant}): container gone "
                          f"{gone:.2f} s after the close", flush=True)
                self.remove_vassal_one(ini, name)
                lines = self.lines_since(rows[0][0] - 1) if rows else []
                res = []
                for t_close_wall, gone, variant in rows:
                    decide = dc.delay(lines, idle_stop_line(name), t_close_wall)
                    exited = dc.delay(lines, exit_line(name), t_close_wall)
                    res.append(dict(decide=decide, exited=exited, gone=gone, variant=variant))
                out[idle] = res
            except Exception as e:  # noqa: BLE001 - reported by the main thread
                errors.append(f"idle = {idle:g}: {e!r}")

        print(f"idle: idle = {', '.join(f'{i:g}' for i in idles)} concurrently, {self.args.idle_cycles} cycles each",
              flush=True)
        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in idles]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.5)
                self.run.check_alive()
        if errors:
            raise RuntimeError("; ".join(errors))
        self.results["idle"] = out

    def wait_stopped_one(self, name, timeout=60):
        """Like wait_stopped, for one vassal among several: its container is gone and its bridge exited."""
        def stopped():
            if self.containers_of(name):
                return False
            # A bridge's command line is `emperor bridge --name <vassal> ...`.
            return not any(f" --name {name} " in (common.cmdline(p) or "") for p in self.bridges())
        common.wait_for(stopped, timeout, f"{name} to stop", interval=0.02)

    def remove_vassal_one(self, ini, name):
        os.remove(ini)
        self.wait_stopped_one(name, 120)


def summary(args, res):
    print()
    print("=" * 100)
    if "cold" in res and res["cold"].get("variants"):
        c = res["cold"]
        print("COLD START through nginx to a stopped on-demand Docker vassal (idle = 1), first answer (ms, client clock),")
        print("the two variants alternating cycle by cycle:")
        firsts = {}
        for v in c["variants"]:
            label = "pre-created (default)" if v["precreated"] else "docker-precreate = false"
            firsts[v["precreated"]] = v["firsts"]
            print(f"  {label}:")
            print(f"    first answer (cold)   {fmt_ms(v['firsts'])}   goal p50 <= 300 ms")
            print(f"    warm (while running)  {fmt_ms(v['warms'])}")
            print(f"    failed requests: {v['fails']}")
            if v["phases"]:
                print("    cold path phases, medians from the daemon's debug log (ms timestamps, +-1 ms each):")
                for k in v["phases"][0]:
                    vals = [p[k] for p in v["phases"] if k in p]
                    print(f"      {k:<38} {statistics.median(vals):7.1f}  [{min(vals):.0f}-{max(vals):.0f}]")
        if firsts.get(True) and firsts.get(False):
            print(f"  ratio of p50s, pre-created / not: {pct(firsts[True], 50) / pct(firsts[False], 50):.3f}")
        if c["bare"]:
            print(f"  bare_docker (bollard alone), {len(c['bare'])} runs, medians: create {statistics.median(b['create_ms'] for b in c['bare']):.1f} ms, "
                  f"start {statistics.median(b['start_ms'] for b in c['bare']):.1f} ms, "
                  f"create+start+answer {statistics.median(b['total_ms'] for b in c['bare']):.1f} ms")
    if "pause" in res:
        p = res["pause"]
        print("WAKE FROM PAUSE through nginx (idle = 1, idle-action = pause; request sent once .State.Paused == true):")
        print(f"  first answer (paused) {fmt_ms(p['firsts'])}   goal p50 <= 30 ms")
        print(f"  warm (while running)  {fmt_ms(p['warms'])}")
        print(f"  failed requests: {p['fails']}; container starts logged for the vassal: {p['spawns']} (1 expected)")
    if "reload" in res:
        print(f"ZERO-DOWNTIME RELOAD: {args.swaps} image swaps ({IMAGES[0]} <-> {IMAGES[1]}) under wrk -t1 -c8 "
              "through nginx (latency in ms):")
        for short, label in (("ovl", "reload-overlap = true "), ("seq", "reload-overlap = false")):
            r = res["reload"].get(short)
            if not r:
                continue
            b = r["base"]
            print(f"  {label}: {r['requests']} requests, FAILED {r['failed']} (non-2xx {r['status']}, connect "
                  f"{r['connect']}, read {r['read']}, write {r['write']}, timeout {r['timeout']}); "
                  f"p50 {r['p50'] / 1000:.2f} p90 {r['p90'] / 1000:.2f} p99 {r['p99'] / 1000:.2f} "
                  f"p99.9 {r['p999'] / 1000:.2f} max {r['max'] / 1000:.2f}")
            print(f"    {'':<22}  swap time (file -> one container left) median {statistics.median(r['swaps']):.0f} ms "
                  f"[{min(r['swaps']):.0f}-{max(r['swaps']):.0f}]; nginx error.log lines: {len(r['nginx_errors'])}")
            print(f"    {'':<22}  baseline 5 s without swaps: {b['requests']} requests, failed {b['failed']}, "
                  f"p50 {b['p50'] / 1000:.2f} p99 {b['p99'] / 1000:.2f} max {b['max'] / 1000:.2f}")
            for line in r["nginx_errors"][:3]:
                print(f"      nginx: {line}")
        print("  goal: 0 failed")
    if "idle" in res:
        print("IDLE DETECTION: seconds from the client's close of the last connection, MINUS the configured idle:")
        print("  (wake: only the connection that started the vassal; short: one more 1 ms request idle/2 later;")
        print("   held: the waking connection held open `idle` s before its request; the checks look every idle/4)")
        for idle, rows in sorted(res["idle"].items()):
            for variant in VARIANTS:
                for key, label in (("decide", "emperor logs 'idle: stopping'"),
                                   ("exited", "bridge logs 'container .. exited'"),
                                   ("gone", "container gone from Docker")):
                    vals = [r[key] - idle for r in rows if r[key] is not None and r["variant"] == variant]
                    if vals:
                        print(f"  idle = {idle:g} s, {variant:<5} {label:<36} median {statistics.median(vals):+.3f}  "
                              f"min {min(vals):+.3f}  max {max(vals):+.3f}  (n={len(vals)})")
    if "cold" in res and res["cold"].get("idle1"):
        vals = res["cold"]["idle1"]
        for key, label in (("decide", "emperor logs 'idle: stopping'"), ("exited", "bridge logs 'container .. exited'")):
            v = [r[key] - 1 for r in vals if r[key] is not None]
            if v:
                print(f"  idle = 1 s (cold phase, last warm request ~{statistics.median(r['since_start'] for r in vals):.2f} s "
                      f"after the waking one) {label}: median {statistics.median(v):+.3f} min {min(v):+.3f} "
                      f"max {max(v):+.3f} (n={len(v)})")


def main():
    p = common.arg_parser(__doc__)
    p.add_argument("--phases", default="cold,pause,reload,idle", help="comma-separated subset (default all)")
    p.add_argument("--cycles", type=int, default=30, help="cold-start cycles (default 30)")
    p.add_argument("--pause-cycles", type=int, default=30, help="wake-from-pause cycles (default 30)")
    p.add_argument("--warm", type=int, default=10, help="warm requests after each first answer (default 10)")
    p.add_argument("--bare-runs", type=int, default=5, help="bare_docker runs for the create cost (default 5)")
    p.add_argument("--swaps", type=int, default=10, help="image swaps per reload mode (default 10)")
    p.add_argument("--wrk-cap", type=int, default=180, help="wrk's -d during the swaps, an upper bound (default 180)")
    p.add_argument("--idle-cycles", type=int, default=10, help="idle-detection cycles per idle value (default 10)")
    p.add_argument("--idles", default="2,5", help="idle values measured concurrently (default 2,5)")
    args = common.parse_args(p, docker=True)
    phases = [x for x in args.phases.split(",") if x]
    for ph in phases:
        if ph not in ("cold", "pause", "reload", "idle"):
            sys.exit(f"unknown phase {ph!r}")
    dc.require_wrk_nginx()
    dc.prepare(args, IMAGES)

    results = {}
    try:
        run_all(args, phases, results)
    finally:
        if results:
            summary(args, results)


def run_all(args, phases, results):
    nginx = None
    with dc.DockerRun("ondemand", keep=args.keep) as run:
        try:
            ports = {s: dc.free_port() for s in ("cold", "lazy", "pause", "ovl", "seq")}
            servers = [(port, os.path.join(run.vassals, f"{s}.sock")) for s, port in ports.items()]
            nginx = dc.Nginx(os.path.join(run.dir, "nginx"), nginx_blocks(servers))
            for port in ports.values():
                dc.wait_port(port)
            # Private copies: a rebuild of target/ while the bench runs (cargo replaces the file) would leave the
            # emperor unable to re-execute itself for a bridge ("cannot execute .../emperor (deleted)").
            argv = run.emperor_argv(args.emperor_arg)
            argv[0] = os.path.join(run.dir, "emperor")
            shutil.copy2(common.EMPEROR, argv[0])
            shutil.copy2(dc.BARE, os.path.join(run.dir, "bare_docker"))
            dc.BARE = os.path.join(run.dir, "bare_docker")
            proc = run.start(argv, log="debug")
            run.wait_log("watching", 10, "the emperor")
            print(f"emperor pid {proc.pid}, nginx pid {nginx.proc.pid}, temp dir {run.dir}", flush=True)
            b = Bench(args, run, proc)
            b.results = results  # shared with main(), which prints what was measured even after an error
            if "cold" in phases:
                b.cold(ports)
            if "pause" in phases:
                b.pause(ports["pause"])
            if "reload" in phases:
                b.reload(ports, nginx)
            if "idle" in phases:
                b.idle()
        finally:
            if nginx is not None:
                nginx.stop()


if __name__ == "__main__":
    common.run_main(main)
