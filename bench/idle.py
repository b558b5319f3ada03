#!/usr/bin/env python3
"""Idle cost: what the emperor itself costs while it watches many vassals that do nothing.

Starts one emperor with N (default 500) testapp vassals, each with one unix socket, waits until every one
recorded its start (and prints how long that took), lets things settle (12 s: past the
loyalty timers, which fire once 10 s after each start), then samples the emperor process
(not its vassals) over a window: CPU time (utime+stime, /proc/<pid>/stat, all threads), context switches
(voluntary and not, summed over its threads: roughly its wakeups), RSS and PSS (/proc/<pid>/smaps_rollup).

    python3 bench/idle.py [--vassals 500] [--seconds 60] [--no-build]
"""

import argparse
import os
import subprocess
import sys
import time

import common

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the whole line, 12 and 13 after "pid (comm)".
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def ctx_switches(pid):
    """Voluntary + involuntary context switches, summed over the process's threads."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except OSError:
            pass  # the thread ended meanwhile
    return total


def memory_kib(pid):
    """(RSS, PSS) in KiB from smaps_rollup."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                values[key] = int(rest.split()[0])
    return values["Rss"], values["Pss"]


def threads(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vassals", type=int, default=500, help="number of idle vassals (default 500)")
    p.add_argument("--seconds", type=float, default=60, help="length of the sampling window (default 60)")
    # The emperor's one-off loyalty timers fire --emperor-loyalty-time (10 s) after each start: not idle.
    p.add_argument("--settle", type=float, default=12, help="seconds to wait after the last start (default 12)")
    p.add_argument("--start-timeout", type=float, default=120, help="seconds allowed for all vassals to start")
    common.add_run_args(p)
    args = p.parse_args()
    common.stop_on_sigterm()
    if not args.no_build:
        common.build()

    with common.Run("idle", keep=args.keep) as run:
        common.write_app_vassals(run, args.vassals)
        t0 = time.time_ns()
        proc = run.start(
            [common.EMPEROR, "--reload-mercy", "5", *args.emperor_arg, run.vassals],
            env={"EMPEROR_LOG": os.environ.get("EMPEROR_LOG", "warn")},
        )
        print(f"emperor pid {proc.pid}: starting {args.vassals} vassals", flush=True)

        def all_started():
            run.check_alive()
            n = len({r["pid"] for r in run.records()})
            print(f"\r  {n}/{args.vassals} started", end="", flush=True)
            return n >= args.vassals

        common.wait_for(all_started, args.start_timeout, f"{args.vassals} start records", interval=0.2)
        print()
        starts = run.records()
        all_up_s = (max(r["t_ns"] for r in starts) - t0) / 1e9
        first_s = (min(r["t_ns"] for r in starts) - t0) / 1e9

        time.sleep(args.settle)
        run.check_alive()
        pid = proc.pid
        rss0, pss0 = memory_kib(pid)
        cpu0, ctx0, w0 = cpu_seconds(pid), ctx_switches(pid), time.monotonic()
        rss_max = rss0
        deadline = w0 + args.seconds
        while time.monotonic() < deadline:
            time.sleep(min(5, max(0, deadline - time.monotonic())))
            run.check_alive()
            rss_max = max(rss_max, memory_kib(pid)[0])
            left = deadline - time.monotonic()
            print(f"\r  sampling: {max(0, left):4.0f} s left", end="", flush=True)
        cpu1, ctx1, w1 = cpu_seconds(pid), ctx_switches(pid), time.monotonic()
        rss1, pss1 = memory_kib(pid)
        nthreads = threads(pid)
        print()
        restarts = len(run.records()) - len(starts)
        window = w1 - w0

    print()
    print(f"emperor with {args.vassals} idle vassals")
    print(f"  start: first vassal up after {first_s:.2f} s, all {args.vassals} after {all_up_s:.2f} s")
    print(
        f"  idle window {window:.0f} s: CPU {100 * (cpu1 - cpu0) / window:.3f} % "
        f"({(cpu1 - cpu0) * 1000:.0f} ms of CPU; /proc resolution {1000 / CLK_TCK:.0f} ms)"
    )
    print(f"  context switches (~wakeups): {(ctx1 - ctx0) / window:.2f}/s ({ctx1 - ctx0} in all, {nthreads} thread(s))")
    print(f"  memory: RSS {rss1 / 1024:.1f} MiB (max {rss_max / 1024:.1f}), PSS {pss1 / 1024:.1f} MiB")
    print(f"  per vassal: RSS {rss1 / args.vassals:.1f} KiB")
    if restarts:
        print(f"  WARNING: {restarts} vassal (re)start(s) during the window: not idle")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted")
    except (TimeoutError, RuntimeError, subprocess.CalledProcessError) as e:
        sys.exit(f"bench failed: {e}")
