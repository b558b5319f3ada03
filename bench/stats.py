#!/usr/bin/env python3
"""Stats latency: how long one `--emperor-stats` request takes with N (default 200) running vassals.

Starts one emperor with N testapp vassals (one unix socket each) and `--emperor-stats <tmp>/stats.sock`,
waits until every vassal recorded its start, then connects R times (default 200), one after the other,
timing connect → last byte (EOF) of the JSON document, and checks each document parses with N vassals.

    python3 bench/stats.py [--vassals 200] [--requests 200] [--no-build]
"""

import json
import os
import socket
import time

import common


def fetch(path):
    t0 = time.perf_counter_ns()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    chunks = []
    while True:
        b = s.recv(65536)
        if not b:
            break
        chunks.append(b)
    s.close()
    return time.perf_counter_ns() - t0, b"".join(chunks)


def main():
    p = common.arg_parser(__doc__)
    p.add_argument("--vassals", type=int, default=200)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--start-timeout", type=float, default=120)
    args = common.parse_args(p)
    common.prepare(args)
    with common.Run("stats", keep=args.keep) as run:
        common.write_app_vassals(run, args.vassals)
        stats = os.path.join(run.dir, "stats.sock")
        run.start(run.emperor_argv(["--emperor-stats", stats, *args.emperor_arg]), log="warn")
        run.wait_starts(args.vassals, args.start_timeout)
        common.wait_for(lambda: os.path.exists(stats), 10, "stats socket")
        times, size = [], 0
        for _ in range(args.requests):
            ns, body = fetch(stats)
            doc = json.loads(body)
            assert len(doc["vassals"]) == args.vassals, len(doc["vassals"])
            times.append(ns)
            size = len(body)
    print(f"stats request with {args.vassals} vassals, {args.requests} requests, document {size / 1024:.0f} KiB")
    print(f"  {common.summary_ms(times)}")


if __name__ == "__main__":
    common.run_main(main)
