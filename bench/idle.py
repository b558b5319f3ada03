#!/usr/bin/env python3
"""Idle cost: what the emperor itself costs while it watches many vassals that do nothing.

Starts one emperor with N (default 500) testapp vassals, each with one unix socket, waits until every one
recorded its start (and prints how long that took), lets things settle (12 s: past the
loyalty timers, which fire once 10 s after each start), then samples the emperor process
(not its vassals) over a window: CPU time (utime+stime, /proc/<pid>/stat, all threads), context switches
(voluntary and not, summed over its threads: roughly its wakeups), RSS and PSS (/proc/<pid>/smaps_rollup).

    python3 bench/idle.py [--vassals 500] [--seconds 60] [--no-build]
"""

import time

import common


def main():
    p = common.arg_parser(__doc__)
    p.add_argument("--vassals", type=int, default=500, help="number of idle vassals (default 500)")
    p.add_argument("--seconds", type=float, default=60, help="length of the sampling window (default 60)")
    # The emperor's one-off loyalty timers fire --emperor-loyalty-time (10 s) after each start: not idle.
    p.add_argument("--settle", type=float, default=12, help="seconds to wait after the last start (default 12)")
    p.add_argument("--start-timeout", type=float, default=120, help="seconds allowed for all vassals to start")
    args = common.parse_args(p)
    common.prepare(args)

    with common.Run("idle", keep=args.keep) as run:
        common.write_app_vassals(run, args.vassals)
        t0 = time.time_ns()
        proc = run.start(run.emperor_argv(args.emperor_arg), log="warn")
        print(f"emperor pid {proc.pid}: starting {args.vassals} vassals", flush=True)
        run.wait_starts(args.vassals, args.start_timeout, progress=True)
        starts = run.records()
        all_up_s = (max(r["t_ns"] for r in starts) - t0) / 1e9
        first_s = (min(r["t_ns"] for r in starts) - t0) / 1e9

        time.sleep(args.settle)
        run.check_alive()
        pid = proc.pid
        rss0, pss0 = common.rss_pss(pid)
        cpu0, ctx0, w0 = common.cpu_seconds(pid), common.ctx_switches(pid), time.monotonic()
        rss_max = rss0
        for left in common.countdown(run, w0 + args.seconds, 5):
            rss_max = max(rss_max, common.rss_pss(pid)[0])
            print(f"\r  sampling: {left:4.0f} s left", end="", flush=True)
        cpu1, ctx1, w1 = common.cpu_seconds(pid), common.ctx_switches(pid), time.monotonic()
        rss1, pss1 = common.rss_pss(pid)
        nthreads = common.nthreads(pid)
        print()
        restarts = len(run.records()) - len(starts)
        window = w1 - w0

    print()
    print(f"emperor with {args.vassals} idle vassals")
    print(f"  start: first vassal up after {first_s:.2f} s, all {args.vassals} after {all_up_s:.2f} s")
    print(
        f"  idle window {window:.0f} s: CPU {100 * (cpu1 - cpu0) / window:.3f} % "
        f"({(cpu1 - cpu0) * 1000:.0f} ms of CPU; /proc resolution {1000 / common.CLK_TCK:.0f} ms)"
    )
    print(f"  context switches (~wakeups): {(ctx1 - ctx0) / window:.2f}/s ({ctx1 - ctx0} in all, {nthreads} thread(s))")
    print(f"  memory: RSS {rss1 / 1024:.1f} MiB (max {rss_max / 1024:.1f}), PSS {pss1 / 1024:.1f} MiB")
    print(f"  per vassal: RSS {rss1 / args.vassals:.1f} KiB")
    if restarts:
        print(f"  WARNING: {restarts} vassal (re)start(s) during the window: not idle")


if __name__ == "__main__":
    common.run_main(main)
