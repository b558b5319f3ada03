#!/usr/bin/env python3
"""The first request after boot: a prewarmed on-demand vassal (`prewarm = true`, started at once and paused once it
waits for connections) against a cold one (on-demand without prewarm), for process and Docker vassals, side by side.

Each of `--boots` (20) boots starts a fresh emperor (its own temp dir, default log level) with four vassals, all
`on-demand = true`, `idle = 30`, `idle-action = pause`, one unix socket each, running testapp (one connection at a
time, closed after each answer):

proc-cold        the host's testapp; starts on the first connection
proc-prewarm     the same with prewarm = true
docker-cold      emperor-test/testapp (network none); its container is created ahead of time (docker-precreate,
                 the default), so the first connection waits for `docker start` and the app
docker-prewarm   the same with prewarm = true

The bench waits until every vassal is ready for its first client: the cold ones waiting (the log says so; the Docker
one's container exists as `created`), the prewarmed ones paused (the process stopped in /proc, `docker inspect` says
.State.Paused) plus 0.3 s. Then it makes one GET on each socket, in an order that rotates boot by boot, timing connect
to the end of the answer on the client's clock, and checks the answer; the emperor is then stopped (SIGTERM), which
removes its containers. It prints median and p95 of each variant, the ratio cold/prewarm of the medians, and how long
after the emperor's start each prewarmed vassal was paused. Goal: prewarm p50 <= 20 ms.

    python3 bench/prewarm.py [--boots 20] [--no-build] [--keep]

Network rule: only unix sockets; containers run with network none. Every container carries the run's unique
--docker-label and is swept after each boot, on an error and on Ctrl-C.
"""

import os
import statistics
import time

import common
import docker_common as dc

VARIANTS = ("proc-cold", "proc-prewarm", "docker-cold", "docker-prewarm")
BASE = "on-demand = true\nidle = 30\nidle-action = pause\n"


def vassal_text(run, variant):
    sock = os.path.join(run.vassals, f"{variant}.sock")
    extra = BASE + ("prewarm = true\n" if variant.endswith("prewarm") else "")
    if variant.startswith("proc"):
        return common.app_vassal(sock, "--name", variant) + extra
    return dc.docker_vassal(sock, ["--name", variant], extra=extra)


def app_pid(emperor_pid, variant):
    """The process vassal's pid: the emperor's child running testapp with its name."""
    for pid in common.children_of(emperor_pid):
        if f"--name {variant}" in (common.cmdline(pid) or ""):
            return pid
    return None


def proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def container(run, variant):
    """The vassal's container as /containers/json lists it, or None."""
    cs = dc.containers(run.label, [f"emperor.vassal={variant}.ini"])
    return cs[0] if cs else None


def paused(variant, run):
    """Whether the prewarmed vassal is frozen."""
    if variant.startswith("proc"):
        pid = app_pid(run.proc.pid, variant)
        return pid is not None and proc_state(pid) == "T"
    c = container(run, variant)
    return c is not None and c.get("State") == "paused"


def log_has(run, text):
    with open(run.log_path, errors="replace") as f:
        return text in f.read()


def ready(run, variant):
    """Whether `variant` is as a first client after boot would find it."""
    run.check_alive()
    if variant.endswith("prewarm"):
        return paused(variant, run)
    if not log_has(run, f"[{variant}.ini] on demand: waiting for a connection"):
        return False
    return variant.startswith("proc") or (container(run, variant) or {}).get("State") == "created"


def first_request(sock):
    t0 = time.monotonic()
    ok = dc.get_unix(sock, timeout=60)
    return ok, (time.monotonic() - t0) * 1000


def boot(args, i, results):
    with dc.DockerRun("prewarm", keep=args.keep) as run:
        for v in VARIANTS:
            dc.drop(os.path.join(run.vassals, f"{v}.ini"), vassal_text(run, v))
        t_start = time.monotonic()
        run.start(run.emperor_argv(args.emperor_arg), log="info")
        waits = {}  # variant -> ms from the emperor's start until it was first seen ready

        def all_ready():
            for v in VARIANTS:
                if v not in waits and ready(run, v):
                    waits[v] = (time.monotonic() - t_start) * 1000
            return len(waits) == len(VARIANTS)

        common.wait_for(all_ready, 60, "every vassal to be ready for its first client", interval=0.002)
        time.sleep(0.3)  # the pause's own check (any connection after all?) and the machine settle
        order = VARIANTS[i % len(VARIANTS):] + VARIANTS[:i % len(VARIANTS)]
        line = []
        for v in order:
            ok, ms = first_request(os.path.join(run.vassals, f"{v}.sock"))
            if not ok:
                raise RuntimeError(f"boot {i + 1}: {v} did not answer 200")
            results[v].append(ms)
            line.append(f"{v} {ms:.1f}")
            time.sleep(0.2)
        for v in VARIANTS:
            if v.endswith("prewarm"):
                results[f"{v} boot->paused"].append(waits[v])
        print(f"  boot {i + 1}/{args.boots}: " + ", ".join(line) + " ms", flush=True)


def fmt(values):
    return (f"p50 {common.percentile(values, 50):7.1f}  p95 {common.percentile(values, 95):7.1f}  "
            f"min {min(values):6.1f}  max {max(values):7.1f}  (n={len(values)})")


def summary(results):
    print()
    print("=" * 100)
    print("FIRST REQUEST AFTER BOOT (ms, connect to the end of the answer, client clock, unix socket):")
    for v in VARIANTS:
        if results[v]:
            print(f"  {v:<15} {fmt(results[v])}")
    for kind in ("proc", "docker"):
        cold, warm = results[f"{kind}-cold"], results[f"{kind}-prewarm"]
        if cold and warm:
            print(f"  {kind}: cold/prewarm ratio of the medians {statistics.median(cold) / statistics.median(warm):.1f}")
    print("  goal: prewarm p50 <= 20 ms")
    for v in VARIANTS:
        key = f"{v} boot->paused"
        if results.get(key):
            print(f"  {v}: paused {statistics.median(results[key]):.0f} ms after the emperor's start (median; "
                  f"{min(results[key]):.0f}-{max(results[key]):.0f})")


def main():
    p = common.arg_parser(__doc__)
    p.add_argument("--boots", type=int, default=20, help="emperor boots, one first request per variant each (20)")
    args = common.parse_args(p, docker=True)
    dc.prepare(args)
    results = {v: [] for v in VARIANTS}
    results.update({f"{v} boot->paused": [] for v in VARIANTS if v.endswith("prewarm")})
    print(f"{args.boots} boots, four vassals each ({', '.join(VARIANTS)})", flush=True)
    try:
        for i in range(args.boots):
            boot(args, i, results)
    finally:
        if results[VARIANTS[0]]:
            summary(results)


if __name__ == "__main__":
    common.run_main(main)
