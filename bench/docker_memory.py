#!/usr/bin/env python3
"""Memory and idle cost of Docker vassals: the bridges (one `emperor bridge` process per Docker vassal).

Phase 1 (`--vassals`, default 50): an emperor starts with that many Docker vassals (emperor-test/testapp, network
none, one unix socket each); once every one answers on its socket, the bench reads the PSS and RSS
(/proc/<pid>/smaps_rollup) of each bridge (the emperor's children named `bridge:<vassal>`) and prints median and max
(goal: PSS <= 900 KiB per bridge; uwsgi-docker's bridges, forks of its emperor, had 934 KiB), the emperor's own
PSS/RSS, the shims' (PID 1 in each container, the same binary) and, for the median bridge, what its memory is made of
(/proc/<pid>/smaps grouped: the binary's text/rodata/data, heap, stack, anonymous maps, vdso).

Phase 2 (`--idle-vassals`, default 200): a new emperor starts with that many; the bench prints the time until all
answer (converge), waits `--settle` (12 s: past the loyalty timers), then samples the CPU time of the emperor and of
every bridge over `--seconds` (default 60), as bench/idle.py does for process vassals, with their context switches
(~wake-ups) and dockerd's/containerd's CPU for scale. It also times the emperor's SIGTERM shutdown of all of them.

    python3 bench/docker_memory.py [--vassals 50] [--idle-vassals 200] [--seconds 60] [--no-build] [--keep]
"""

import os
import statistics
import time

import common
import docker_common as dc


def smaps_breakdown(pid):
    """{category: {Rss, Pss, Private_Dirty, Private_Clean, Shared_Clean, Size}} (KiB) from /proc/<pid>/smaps."""
    exe = os.path.realpath(f"/proc/{pid}/exe")
    cats = {}
    cur = None
    keys = ("Size", "Rss", "Pss", "Private_Clean", "Private_Dirty", "Shared_Clean", "Shared_Dirty")
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if "-" in parts[0] and not parts[0].endswith(":"):
                perms = parts[1]
                path = parts[5] if len(parts) > 5 else ""
                if path == exe or (path and path.endswith("/emperor")):
                    kind = {"r-xp": "binary text (r-x)", "r--p": "binary rodata (r--)", "rw-p": "binary data+bss (rw-)"}
                    cur = kind.get(perms, f"binary {perms}")
                elif path == "[heap]":
                    cur = "heap ([heap], brk)"
                elif path == "[stack]":
                    cur = "main thread stack ([stack])"
                elif path in ("[vdso]", "[vvar]", "[vsyscall]") or path.startswith("[vvar"):
                    cur = "vdso/vvar"
                elif path == "":
                    cur = "anonymous mmap (" + ("guard" if perms == "---p" else perms) + ")"
                else:
                    cur = f"file {path}"
                cats.setdefault(cur, {k: 0 for k in keys + ("maps",)})["maps"] += 1
                continue
            key = parts[0].rstrip(":")
            if cur is not None and key in keys and len(parts) >= 2:
                cats[cur][key] += int(parts[1])
    return cats


def write_vassals(run, n, tag):
    names, socks = [], []
    for i in range(n):
        name = f"m{os.getpid()}-{tag}{i:03d}.ini"
        sock = os.path.join(run.vassals, f"{tag}{i:03d}.sock")
        with open(os.path.join(run.vassals, name), "w") as f:
            f.write(dc.docker_vassal(sock, ["--name", f"{tag}{i:03d}"]))
        names.append(name)
        socks.append(sock)
    return names, socks


def start_all(run, args, n, tag, phase):
    """Starts the emperor with `n` Docker vassals and blocks until every one answered; returns the emperor's Popen and
    the answer times (s after the start, sorted)."""
    _, socks = write_vassals(run, n, tag)
    t0 = time.monotonic()
    proc = run.start(run.emperor_argv(args.emperor_arg), log="warn")
    print(f"{phase}: emperor pid {proc.pid} with {n} Docker vassals", flush=True)
    last = time.monotonic()

    def progress(done):
        nonlocal last
        run.check_alive()
        if time.monotonic() - last > 2:
            print(f"\r  {done}/{n} answering", end="", flush=True)
            last = time.monotonic()

    answers, errors = dc.wait_answers(socks, args.timeout, interval=0.05, appear_interval=0.05, tick=progress)
    missing = answers.count(None)
    print(f"\r  {n - missing}/{n} answering", flush=True)
    if missing:
        raise RuntimeError(f"{missing} vassal(s) never answered, e.g. {errors[:3]}")
    return proc, sorted(a - t0 for a in answers)


def shim_pids(label):
    out = []
    for c in dc.containers(label):
        status, body = dc.docker_api("GET", f"/containers/{c['Id']}/json")
        if status == 200 and body and body.get("State", {}).get("Pid"):
            out.append(body["State"]["Pid"])
    return out


def timed_stop(run, timeout):
    """Stops the emperor; returns how long that took, then waits until its containers are gone."""
    t = time.monotonic()
    run.stop()
    took = time.monotonic() - t
    dc.wait_containers_gone(run.label, timeout)
    return took


def main():
    p = common.arg_parser(__doc__)
    p.add_argument("--vassals", type=int, default=50, help="Docker vassals for the memory reading (default 50)")
    p.add_argument("--idle-vassals", type=int, default=200, help="Docker vassals for the idle phase (default 200; 0 skips)")
    p.add_argument("--seconds", type=float, default=60, help="idle sampling window (default 60)")
    p.add_argument("--settle", type=float, default=12, help="seconds between all answering and the window (default 12)")
    p.add_argument("--timeout", type=float, default=300, help="seconds allowed for all vassals to answer (default 300)")
    args = common.parse_args(p, docker=True)
    dc.prepare(args)
    out = []

    # --- phase 1: memory with --vassals ---
    with dc.DockerRun("docker_memory", keep=args.keep) as run:
        proc, lat = start_all(run, args, args.vassals, "a", "phase 1")
        time.sleep(2)
        bridges = dc.bridges_of(proc.pid)
        if len(bridges) != args.vassals:
            raise RuntimeError(f"expected {args.vassals} bridges, found {len(bridges)}")
        mem = {pid: common.rollup_kib(pid) for pid in bridges}
        pss = sorted(m["Pss"] for m in mem.values())
        rss = sorted(m["Rss"] for m in mem.values())
        priv = sorted(m.get("Private_Clean", 0) + m.get("Private_Dirty", 0) for m in mem.values())
        thr = sorted(common.nthreads(p) for p in bridges)
        median_pid = sorted(bridges, key=lambda p: mem[p]["Pss"])[len(bridges) // 2]
        breakdown = smaps_breakdown(median_pid)
        emp = common.rollup_kib(proc.pid)
        shims = shim_pids(run.label)
        shim_pss = sorted(common.rollup_kib(p)["Pss"] for p in shims if os.path.exists(f"/proc/{p}"))
        exe_size = os.path.getsize(common.EMPEROR)
        stop1 = timed_stop(run, args.timeout)

    out.append(f"phase 1: {args.vassals} Docker vassals, all answering {lat[-1]:.1f} s after the emperor started "
               f"(first {lat[0]:.2f} s, median {statistics.median(lat):.1f} s)")
    out.append(f"  bridge PSS: median {statistics.median(pss):.0f} KiB, max {pss[-1]} KiB, min {pss[0]} KiB "
               f"(goal <= 900 KiB; uwsgi-docker 934 KiB)")
    out.append(f"  bridge RSS: median {statistics.median(rss):.0f} KiB, max {rss[-1]} KiB; private (clean+dirty): "
               f"median {statistics.median(priv):.0f} KiB; threads per bridge: {thr[0]}-{thr[-1]}")
    out.append(f"  emperor: PSS {emp['Pss']} KiB, RSS {emp['Rss']} KiB")
    if shim_pss:
        out.append(f"  shims (PID 1 in each container, same binary): PSS median {statistics.median(shim_pss):.0f} KiB, "
                   f"max {shim_pss[-1]} KiB")
    out.append(f"  SIGTERM -> emperor exited (all {args.vassals} containers stopped and removed): {stop1:.1f} s")
    out.append(f"  median bridge (pid {median_pid}) by mapping, KiB (binary {common.EMPEROR}, {exe_size / 1024:.0f} KiB on disk):")
    out.append(f"    {'mapping':<36} {'maps':>4} {'Size':>7} {'Rss':>6} {'Pss':>6} {'PrivDirty':>9} {'PrivClean':>9} {'ShClean':>7}")
    tot = {k: 0 for k in ("maps", "Size", "Rss", "Pss", "Private_Dirty", "Private_Clean", "Shared_Clean")}
    for cat, v in sorted(breakdown.items(), key=lambda kv: -kv[1]["Pss"]):
        for k in tot:
            tot[k] += v[k]
        out.append(f"    {cat[:36]:<36} {v['maps']:>4} {v['Size']:>7} {v['Rss']:>6} {v['Pss']:>6} {v['Private_Dirty']:>9} "
                   f"{v['Private_Clean']:>9} {v['Shared_Clean']:>7}")
    out.append(f"    {'total':<36} {tot['maps']:>4} {tot['Size']:>7} {tot['Rss']:>6} {tot['Pss']:>6} {tot['Private_Dirty']:>9} "
               f"{tot['Private_Clean']:>9} {tot['Shared_Clean']:>7}")
    print("\n".join(out), flush=True)

    # --- phase 2: converge and idle CPU with --idle-vassals ---
    if args.idle_vassals > 0:
        with dc.DockerRun("docker_idle", keep=args.keep) as run:
            proc, lat = start_all(run, args, args.idle_vassals, "i", "phase 2")
            time.sleep(args.settle)
            run.check_alive()
            bridges = dc.bridges_of(proc.pid)
            parties = [proc.pid] + bridges
            daemons = dc.pids_named("dockerd") + dc.pids_named("containerd")
            cpu0 = {p: common.cpu_seconds(p) for p in daemons}
            cpu0.update({p: dc.cpu_ns_threads(p) / 1e9 for p in parties})
            ctx0 = {p: common.ctx_switches(p) for p in parties}
            w0 = time.monotonic()
            for left in common.countdown(run, w0 + args.seconds, 5):
                print(f"\r  sampling: {left:4.0f} s left", end="", flush=True)
            print()
            window = time.monotonic() - w0
            cpu1 = {p: common.cpu_seconds(p) for p in daemons}
            cpu1.update({p: (None if (ns := dc.cpu_ns_threads(p)) is None else ns / 1e9) for p in parties})
            ctx1 = {p: common.ctx_switches(p) for p in parties}
            gone = [p for p in bridges if cpu1[p] is None]
            still = set(dc.bridges_of(proc.pid))
            emp_cpu = cpu1[proc.pid] - cpu0[proc.pid]
            br_cpu = sum(cpu1[p] - cpu0[p] for p in bridges if cpu1[p] is not None)
            dm_cpu = sum(cpu1[p] - cpu0[p] for p in daemons if cpu1[p] is not None and cpu0[p] is not None)
            emp_ctx = ctx1[proc.pid] - ctx0[proc.pid]
            br_ctx = sum(ctx1[p] - ctx0[p] for p in bridges if cpu1[p] is not None)
            pss2 = sorted(common.rollup_kib(p)["Pss"] for p in still)
            emp2 = common.rollup_kib(proc.pid)
            stop2 = timed_stop(run, args.timeout)

        out2 = [
            f"phase 2: {args.idle_vassals} Docker vassals: converged (all answering) {lat[-1]:.1f} s after the emperor "
            f"started (first {lat[0]:.2f} s, median {statistics.median(lat):.1f} s; {args.idle_vassals / lat[-1]:.1f}/s)",
            f"  idle window {window:.0f} s ({args.settle:.0f} s after converging): CPU emperor {100 * emp_cpu / window:.3f} %, "
            f"all {len(bridges)} bridges {100 * br_cpu / window:.3f} % together ({(emp_cpu + br_cpu) * 1000:.0f} ms of CPU "
            f"in all; from schedstat, ns resolution); dockerd+containerd {100 * dm_cpu / window:.2f} %",
            f"  context switches (~wake-ups): emperor {emp_ctx / window:.2f}/s, bridges {br_ctx / window:.2f}/s together",
            f"  memory at {args.idle_vassals}: bridge PSS median {statistics.median(pss2):.0f} KiB, max {pss2[-1]} KiB; "
            f"emperor PSS {emp2['Pss']} KiB, RSS {emp2['Rss']} KiB",
            f"  SIGTERM -> emperor exited (all {args.idle_vassals} containers stopped and removed): {stop2:.1f} s",
        ]
        if gone or len(still) != len(bridges):
            out2.append(f"  WARNING: bridges changed during the window ({len(gone)} gone): not idle")
        print()
        print("\n".join(out))
        print("\n".join(out2))


if __name__ == "__main__":
    common.run_main(main)
