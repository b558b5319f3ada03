#!/usr/bin/env python3
"""Reaction time: `touch` of a vassal file -> the reloaded vassal's start record.

One vassal runs testapp with --record. We touch its file N times; each time we note the wall clock just
before the touch and wait for the next record line (a new process's `start`, or a `reload` line if the
app was reloaded in place), whose t_ns is CLOCK_REALTIME in the app. The difference is what a user waits
between saving a config and running the new code.

Side by side, if Debian's uwsgi with its python3 plugin is installed, the same measurement against a real
uWSGI emperor (its glob scanner looks every --emperor-freq = 3 s) with a uWSGI python vassal.

    python3 bench/reaction.py [--touches 50] [--uwsgi-touches 10] [--no-build]
"""

import os
import random
import shutil
import subprocess
import time

import common

UWSGI_FREQ = 3  # seconds: uWSGI's default --emperor-freq


def measure(run, ini, touches, timeout, pause, kinds):
    """Touches `ini` `touches` times; returns the list of latencies in ns and the record kinds seen."""
    latencies, seen = [], []
    for i in range(touches):
        time.sleep(pause())
        run.check_alive()
        before = len(run.records(kinds))
        t0 = time.time_ns()
        os.utime(ini)  # what `touch` does: mtime and atime = now
        new = common.wait_for(
            lambda: run.records(kinds)[before:], timeout, f"a new record after touch #{i + 1}"
        )
        latencies.append(new[0]["t_ns"] - t0)
        seen.append(new[0]["kind"])
        print(f"\r  {i + 1}/{touches}: {latencies[-1] / 1e6:8.1f} ms", end="", flush=True)
    print()
    return latencies, seen


def bench_emperor(args):
    with common.Run("reaction", keep=args.keep) as run:
        ini = os.path.join(run.vassals, "app.ini")
        with open(ini, "w") as f:
            f.write(common.app_vassal("app.sock", "--record", run.record, "--name", "app"))
        run.start(run.emperor_argv(args.emperor_arg))
        common.wait_for(lambda: run.check_alive() or run.records(), 30, "the first start record")
        lat, kinds = measure(
            run, ini, args.touches, args.timeout, lambda: args.pause, ("start", "reload")
        )
        reloads = kinds.count("reload")
        if reloads:
            print(f"  ({reloads} of {len(kinds)} reactions were in-place reloads, not new processes)")
        return lat


UWSGI_APP = """\
import os, time
with open({record!r}, "a") as f:
    f.write(f"start pid={{os.getpid()}} t_ns={{time.time_ns()}}\\n")

def application(env, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello from uwsgi\\n"]
"""


def bench_uwsgi(args):
    with common.Run("reaction-uwsgi", keep=args.keep) as run:
        app = os.path.join(run.dir, "app.py")
        with open(app, "w") as f:
            f.write(UWSGI_APP.format(record=run.record))
        ini = os.path.join(run.vassals, "app.ini")
        with open(ini, "w") as f:
            f.write(
                "[uwsgi]\nplugins = python3\nmaster = true\nprocesses = 1\nworker-reload-mercy = 2\n"
                f"http-socket = {os.path.join(run.dir, 'app.sock')}\nwsgi-file = {app}\n"
            )
        run.start(["uwsgi", "--emperor", run.vassals, "--emperor-freq", str(UWSGI_FREQ)])
        common.wait_for(lambda: run.check_alive() or run.records(), 30, "uWSGI's first start record")
        # uWSGI compares mtimes in whole seconds: touch at least a second apart, at random phases
        # of its scan period.
        lat, _ = measure(
            run, ini, args.uwsgi_touches, UWSGI_FREQ + 10, lambda: random.uniform(1.1, 2.1), ("start",)
        )
        return lat


def uwsgi_available():
    if not shutil.which("uwsgi"):
        return False
    probe = subprocess.run(
        ["uwsgi", "--plugins", "python3", "--version"], capture_output=True, text=True
    )
    return probe.returncode == 0


def show(label, s):
    print(f"{label}: median {s['median']:.1f} ms, p90 {s['p90']:.1f} ms, max {s['max']:.1f} ms, min {s['min']:.1f} ms")


def main():
    p = common.arg_parser(__doc__)
    p.add_argument("--touches", type=int, default=50, help="touches of the emperor's vassal (default 50)")
    p.add_argument("--pause", type=float, default=0.1, help="seconds between a reaction and the next touch")
    p.add_argument("--timeout", type=float, default=10, help="seconds to wait for each reaction")
    p.add_argument("--uwsgi-touches", type=int, default=10, help="touches for the uWSGI run; 0 skips it")
    args = common.parse_args(p)
    common.prepare(args)

    print(f"emperor: {args.touches} touches")
    ours = common.summary_ms(bench_emperor(args))
    theirs = None
    if args.uwsgi_touches > 0:
        if uwsgi_available():
            print(f"uWSGI emperor (--emperor-freq {UWSGI_FREQ}): {args.uwsgi_touches} touches")
            theirs = common.summary_ms(bench_uwsgi(args))
        else:
            print("uWSGI with the python3 plugin is not installed (scripts/setup installs it): no side-by-side run")

    print()
    print("touch -> new vassal start")
    show("  emperor", ours)
    if theirs:
        show("  uWSGI  ", theirs)
        print(f"  uWSGI / emperor, medians: {theirs['median'] / ours['median']:.0f}x")
    print(
        f"  uWSGI's {UWSGI_FREQ} s scan period / emperor median: {UWSGI_FREQ * 1000 / ours['median']:.0f}x "
        f"(a uWSGI touch waits {UWSGI_FREQ / 2:.1f} s on average for the next scan)"
    )
    goal = 50
    print(f"  goal median <= {goal} ms: {'met' if ours['median'] <= goal else 'NOT met'}")


if __name__ == "__main__":
    common.run_main(main)
