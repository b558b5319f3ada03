#!/usr/bin/env python3
"""Output flood: the emperor's memory while one vassal prints as fast as it can.

Starts one emperor with one vassal that writes without pause to its stdout: short lines (`yes
<temp dir>`: about 40-byte lines) or, with --no-newlines, zero bytes from /dev/zero (one
endless line, which the emperor cuts at 16 KiB). The lines go to the emperor's stdout (sent to
/dev/null here, so the disk does not fill) or, with --logto, to a `logto` file rotated at
`log-maxsize = 10m`. Samples the emperor process (not the vassal) every 0.5 s over the window: RSS
and PSS (/proc/<pid>/smaps_rollup) and CPU time; the throughput is what the vassal wrote
(/proc/<vassal>/io wchar), all of which passed through the emperor (but for one pipe buffer).

    python3 bench/flood.py [--seconds 60] [--no-newlines] [--logto] [--no-build]
"""

import os
import signal
import subprocess
import time

import common


def wchar(pid):
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def main():
    p = common.arg_parser(__doc__)
    p.add_argument("--seconds", type=float, default=60, help="length of the flood window (default 60)")
    p.add_argument("--no-newlines", action="store_true", help="flood zero bytes without a newline")
    p.add_argument("--logto", action="store_true", help="lines to a logto file (log-maxsize = 10m)")
    args = common.parse_args(p)
    common.prepare(args)

    with common.Run("flood", keep=args.keep) as run:
        # The vassal's command line names the temp dir: that is how Run recognises leftovers.
        if args.no_newlines:
            zero = os.path.join(run.dir, "zero")
            os.symlink("/dev/zero", zero)
            cmd = common.quote("cat", zero)
        else:
            cmd = common.quote("yes", run.dir)
        with open(os.path.join(run.vassals, "flood.ini"), "w") as f:
            f.write("[emperor]\n")
            if args.logto:
                f.write("logto = flood.log\nlog-maxsize = 10m\n")
            f.write(f"exec = {cmd}\n")
        # Not run.start: that keeps the daemon's stdout in a file, which the flood would fill.
        run.log = log = open(run.log_path, "ab")
        run.proc = proc = subprocess.Popen(
            [common.EMPEROR, *args.emperor_arg, run.vassals],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=run.dir,
            env=dict(os.environ, EMPEROR_LOG=os.environ.get("EMPEROR_LOG", "warn")),
            start_new_session=True,
        )
        pid = proc.pid

        def vassal():
            run.check_alive()
            kids = common.children_of(pid)
            return kids[0] if kids else None

        common.wait_for(lambda: vassal() is not None, 10, "the flooding vassal")
        vpid = vassal()
        time.sleep(1)
        rss0, pss0 = common.rss_pss(pid)
        cpu0, w0, b0 = common.cpu_seconds(pid), time.monotonic(), wchar(vpid)
        rss_max, pss_max = rss0, pss0
        for left in common.countdown(run, w0 + args.seconds, 0.5):
            rss, pss = common.rss_pss(pid)
            rss_max, pss_max = max(rss_max, rss), max(pss_max, pss)
            print(f"\r  flooding: {left:4.0f} s left, RSS {rss / 1024:.1f} MiB", end="", flush=True)
        cpu1, w1, b1 = common.cpu_seconds(pid), time.monotonic(), wchar(vpid)
        rss1, pss1 = common.rss_pss(pid)
        os.kill(vpid, signal.SIGKILL)
        time.sleep(1)
        rss2, pss2 = common.rss_pss(pid)
        print()
        window = w1 - w0
        files = sorted(f for f in os.listdir(run.vassals) if f.startswith("flood.log"))
        sizes = {f: os.path.getsize(os.path.join(run.vassals, f)) for f in files}

    kind = "zero bytes, no newline" if args.no_newlines else "short lines (yes)"
    target = "a logto file (log-maxsize 10m)" if args.logto else "the emperor's stdout (/dev/null)"
    print()
    print(f"emperor with one vassal flooding {kind} to {target}")
    print(
        f"  window {window:.0f} s: {(b1 - b0) / window / 1e6:.0f} MB/s through the emperor "
        f"({(b1 - b0) / 1e9:.2f} GB), emperor CPU {100 * (cpu1 - cpu0) / window:.0f} % "
        f"(/proc resolution {1000 / common.CLK_TCK:.0f} ms)"
    )
    print(f"  memory before: RSS {rss0 / 1024:.1f} MiB, PSS {pss0 / 1024:.1f} MiB")
    print(f"  memory during: RSS max {rss_max / 1024:.1f} MiB, PSS max {pss_max / 1024:.1f} MiB")
    print(f"  memory at end: RSS {rss1 / 1024:.1f} MiB, PSS {pss1 / 1024:.1f} MiB")
    print(f"  1 s after the vassal died: RSS {rss2 / 1024:.1f} MiB, PSS {pss2 / 1024:.1f} MiB")
    if sizes:
        print("  log files: " + ", ".join(f"{f} {n / 1e6:.1f} MB" for f, n in sizes.items()))


if __name__ == "__main__":
    common.run_main(main)
