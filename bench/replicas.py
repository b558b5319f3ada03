#!/usr/bin/env python3
"""Replicas on one socket: throughput and latency of a slow single-threaded app with 1, 2 and 4 fixed replicas
against `replicas = 1..4` scaled by the emperor on the accept queue, and how long the scaling takes to reach 4.

Each variant runs in a fresh emperor (its own temp dir) with one vassal: testapp with `--work 100` (100 ms per
answer, one connection at a time), one unix socket; process vassals, and with --docker the same as Docker vassals
(emperor-test/testapp, network none). 20 client threads send GET after GET (a new connection each) for
`--seconds` (10) each; every answer is checked (200) and timed from connect to the end of the answer on the
client's clock. Printed per variant: answers per second, p50 and p99 latency, failed requests, and the ratio of its
throughput to 1 replica's, measured side by side in this run. For the auto-scaled run: the time from the start of
the load until the log says "scaling up to 4 replicas" (`replicas-up = 1`), and until it is back at 1 once the
load stops (`replicas-down = 2`).

    python3 bench/replicas.py [--seconds 10] [--clients 20] [--docker] [--no-build] [--keep]

Network rule: unix sockets only; containers run with network none and the run's unique --docker-label, swept at the
end, on an error and on Ctrl-C. The load stops by itself after --seconds.
"""

import os
import re
import threading
import time

import common
import docker_common as dc

WORK_MS = 100
VARIANTS = (("1", "replicas = 1\n"), ("2", "replicas = 2\n"), ("4", "replicas = 4\n"),
            ("auto 1..4", "replicas = 1..4\nreplicas-up = 1\nreplicas-down = 2\n"))


def load(sock, clients, seconds):
    """`clients` threads, GET after GET, for `seconds`; returns [(end time, ok, ms)]."""
    out, lock = [], threading.Lock()
    stop_at = time.monotonic() + seconds

    def client():
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            ok = dc.get_unix(sock, timeout=60)
            t1 = time.monotonic()
            with lock:
                out.append((t1, ok, (t1 - t0) * 1000))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def log_time(run, pattern, t0_wall):
    """Seconds from `t0_wall` to the first log line matching `pattern` (the log's own UTC timestamps)."""
    with open(run.log_path, errors="replace") as f:
        for line in f:
            if re.search(pattern, line):
                m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z", line)
                if m:
                    t = time.mktime(time.strptime(m.group(1)[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
                    t += float("0." + m.group(1)[20:])
                    return t - t0_wall
    return None


def one(args, kind, label, extra):
    with dc.DockerRun("replicas", keep=args.keep) as run:
        sock = os.path.join(run.vassals, "app.sock")
        app = ["--name", "app", "--work", str(WORK_MS)]
        if kind == "process":
            text = common.app_vassal(sock, *app) + extra
        else:
            text = dc.docker_vassal(sock, app, extra=extra)
        dc.drop(os.path.join(run.vassals, "app.ini"), text)
        run.start(run.emperor_argv(args.emperor_arg), log="info")
        common.wait_for(lambda: dc.get_unix(sock, timeout=5), 60, "the first answer", interval=0.05)
        if not label.startswith("auto"):
            n = int(label)
            # Every fixed replica up before the load: count the spawn lines.
            common.wait_for(lambda: open(run.log_path, errors="replace").read().count("spawned") >= n, 60,
                            f"{n} replicas spawned", interval=0.05)
            time.sleep(1)
        t0_wall, t0 = time.time(), time.monotonic()
        answers = load(sock, args.clients, args.seconds)
        t_end_wall = time.time()
        res = {"answers": answers, "t0": t0}
        if label.startswith("auto"):
            res["to4"] = log_time(run, r"scaling up to 4 replicas", t0_wall)
            try:
                run.wait_log("scaling down to 1 replica", 60, "scaling back to 1")
                res["back1"] = log_time(run, r"scaling down to 1 replica", t_end_wall)
            except TimeoutError:
                res["back1"] = None
        run.stop()
        return res


def summary(kind, results):
    print()
    print(f"{kind.upper()} VASSALS, {WORK_MS} ms per answer, one connection at a time per replica:")
    base = None
    for label, r in results:
        a = r["answers"]
        ok = [ms for _, good, ms in a if good]
        failed = len(a) - len(ok)
        # Over the time the answers took: requests still in flight when the load stopped end later.
        span = max(t for t, _, _ in a) - r["t0"]
        rate = len(ok) / span
        base = base or rate
        line = (f"  replicas {label:<10} {rate:6.1f} answers/s  x{rate / base:4.2f}  p50 {common.percentile(ok, 50):7.1f} ms"
                f"  p99 {common.percentile(ok, 99):7.1f} ms  failed {failed}")
        if "to4" in r:
            to4 = "never" if r["to4"] is None else f"{r['to4']:.1f} s"
            back = "never" if r.get("back1") is None else f"{r['back1']:.1f} s"
            line += f"  (4 replicas after {to4}; back to 1 {back} after the load)"
        print(line, flush=True)


def main():
    p = common.arg_parser(__doc__)
    p.add_argument("--seconds", type=float, default=10, help="load per variant (10)")
    p.add_argument("--clients", type=int, default=20, help="client threads (20)")
    p.add_argument("--docker", action="store_true", help="Docker vassals too")
    args = common.parse_args(p, docker=True)
    dc.prepare(args) if args.docker else common.prepare(args)
    kinds = ("process", "docker") if args.docker else ("process",)
    for kind in kinds:
        results = []
        for label, extra in VARIANTS:
            print(f"{kind}: replicas {label} under {args.clients} clients for {args.seconds:.0f} s", flush=True)
            results.append((label, one(args, kind, label, extra)))
        summary(kind, results)


if __name__ == "__main__":
    common.run_main(main)
