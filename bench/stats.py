#!/usr/bin/env python3
"""Stats latency: how long one `--emperor-stats` request takes with N (default 200) running vassals, and
one `--emperor-metrics` scrape beside it.

Starts one emperor with N testapp vassals (one unix socket each), `--emperor-stats <tmp>/stats.sock` and
`--emperor-metrics <tmp>/metrics.sock`, waits until every vassal recorded its start, then makes R stats
requests and R scrapes (default 200 each), alternating, one after the other: a stats request is timed from
connect to the last byte (EOF) of the JSON document, which must parse with N vassals; a scrape from connect
to the last byte of the answer to `GET /metrics`, which must be a 200 listing N vassals. Both do the same
work on the emperor's one thread (the snapshots, the socket tables, the pass over /proc), so their ratio
shows what the text format adds.

    python3 bench/stats.py [--vassals 200] [--requests 200] [--no-build]
"""

import json
import os
import socket
import time

import common


def fetch(path, request=b""):
    """Connects, sends `request` (none for the stats socket), reads to EOF; returns (ns, bytes)."""
    t0 = time.perf_counter_ns()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    if request:
        s.sendall(request)
    data = common.recv_all(s)
    s.close()
    return time.perf_counter_ns() - t0, data


def scrape(path):
    return fetch(path, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")


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
        metrics = os.path.join(run.dir, "metrics.sock")
        argv = ["--emperor-stats", stats, "--emperor-metrics", metrics, *args.emperor_arg]
        run.start(run.emperor_argv(argv), log="warn")
        run.wait_starts(args.vassals, args.start_timeout)
        common.wait_for(lambda: os.path.exists(stats) and os.path.exists(metrics), 10, "stats and metrics sockets")
        times, size, mtimes, msize = [], 0, [], 0
        for _ in range(args.requests):
            ns, body = fetch(stats)
            doc = json.loads(body)
            assert len(doc["vassals"]) == args.vassals, len(doc["vassals"])
            times.append(ns)
            size = len(body)
            ns, answer = scrape(metrics)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:200]
            listed = answer.count(b"\nemperor_vassal_info{")
            assert listed == args.vassals, listed
            mtimes.append(ns)
            msize = len(answer)
    print(f"stats request with {args.vassals} vassals, {args.requests} requests, document {size / 1024:.0f} KiB")
    print(f"  {common.summary_ms(times)}")
    print(f"metrics scrape with {args.vassals} vassals, {args.requests} requests, answer {msize / 1024:.0f} KiB")
    print(f"  {common.summary_ms(mtimes)}")
    ratio = common.summary_ms(mtimes)["median"] / common.summary_ms(times)["median"]
    print(f"  median scrape / median stats request: {ratio:.2f}")


if __name__ == "__main__":
    common.run_main(main)
