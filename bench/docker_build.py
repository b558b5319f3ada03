#!/usr/bin/env python3
"""docker-build: touch → the new container serving, for a vassal built from a context directory (unchanged context:
no build; one file changed: a build on cached layers), side by side with a plain `docker-image` vassal's touch.

One emperor runs three Docker vassals, each testapp with network none, one unix socket and a record file (mounted):
  image    `docker-image = emperor-test/testapp` (the same static testapp binary);
  same     `docker-build = <dir>`, whose context (Dockerfile `FROM scratch`, COPY testapp, COPY version.txt) is left
           as it is: each touch hashes the context, finds its image and starts a container of it;
  changed  `docker-build = <dir2>`, the same context, whose version.txt is rewritten before each touch: each touch
           hashes, builds (the testapp layer from the cache, version.txt's layer and the image label anew) and starts
           a container of the new image; the old tag is pruned once the new container serves.
Each run touches one vassal file and waits for the new container's app to record its start (it records once it holds
its sockets, right before it serves); the clock runs from just before the touch to the record's CLOCK_REALTIME stamp,
and the run ends once the old container is gone. The three are interleaved (rotating order), --runs each (10);
medians, p90 and the ratio to the plain touch are printed, with the build's own time and the context hash's time as
the emperor logged them.

    python3 bench/docker_build.py [--runs 10] [--no-build] [--keep]

Network rule: unix sockets only; containers and builds run with network none. Every container and image the run
makes carries its unique --docker-label and is removed at the end, on an error and on Ctrl-C.
"""

import json
import os
import re
import shutil
import statistics
import time
import urllib.parse

import common
import docker_common as dc

DOCKERFILE = "FROM scratch\nCOPY testapp /testapp\nCOPY version.txt /version.txt\n"


def context(path):
    os.makedirs(path)
    with open(os.path.join(path, "Dockerfile"), "w") as f:
        f.write(DOCKERFILE)
    shutil.copy(common.TESTAPP, os.path.join(path, "testapp"))
    with open(os.path.join(path, "version.txt"), "w") as f:
        f.write("0\n")


def vassal(run, name, source):
    sock = os.path.join(run.vassals, f"{name}.sock")
    rec = f"/rec/{name}.log"
    return (
        "[emperor]\n"
        f"{source}\n"
        "docker-network-mode = none\n"
        f"socket = {sock}\n"
        f"docker-mount = {run.dir}:/rec\n"
        f"exec = /testapp --name {name} --record {rec}\n"
    )


def sweep_images(label):
    """Force-removes every image carrying `label` (built by this run's emperor)."""
    q = urllib.parse.urlencode({"filters": json.dumps({"label": [label]})})
    status, body = dc.docker_api("GET", f"/images/json?{q}")
    for image in (body or []) if status == 200 else []:
        dc.docker_api("DELETE", f"/images/{image['Id']}?force=1")


def one_run(run, name, change, n):
    """Touches `name`'s file (rewriting its context's version.txt first when `change`); returns ms to the new start."""
    rec = os.path.join(run.dir, f"{name}.log")
    before = len(common.read_records(rec))
    if change:
        with open(os.path.join(run.dir, name, "version.txt"), "w") as f:
            f.write(f"{n}\n")
    t0 = time.time_ns()
    os.utime(os.path.join(run.vassals, f"{name}.ini"))
    recs = common.wait_for(lambda: common.read_records(rec)[before:], 120, f"{name}'s new start", interval=0.002)
    ms = (recs[0]["t_ns"] - t0) / 1e6
    # Steady state before the next run: the old container gone (one container of the vassal left).
    common.wait_for(
        lambda: len(dc.containers(run.label, [f"emperor.vassal={name}.ini"])) == 1,
        60,
        f"{name}'s old container to go",
        interval=0.02,
    )
    return ms


def logged(run, pattern):
    """Floats captured by `pattern` in the daemon log, in order."""
    with open(run.log_path, errors="replace") as f:
        return [float(m.group(1)) for m in re.finditer(pattern, f.read())]


def main():
    p = common.arg_parser(__doc__)
    p.add_argument("--runs", type=int, default=10, help="touches per vassal (10)")
    args = common.parse_args(p, docker=True)
    dc.prepare(args)
    names = ("image", "same", "changed")
    results = {n: [] for n in names}
    with dc.DockerRun("build", keep=args.keep) as run:
        try:
            for name in ("same", "changed"):
                context(os.path.join(run.dir, name))
            sources = {
                "image": f"docker-image = {dc.IMAGE}",
                "same": f"docker-build = {os.path.join(run.dir, 'same')}",
                "changed": f"docker-build = {os.path.join(run.dir, 'changed')}",
            }
            for name in names:
                dc.drop(os.path.join(run.vassals, f"{name}.ini"), vassal(run, name, sources[name]))
            run.start(run.emperor_argv(args.emperor_arg), log="info")
            for name in names:
                common.wait_for(
                    lambda n=name: common.read_records(os.path.join(run.dir, f"{n}.log")), 180, f"{name} to start",
                    interval=0.05,
                )
            # One touch each first, so that every run below starts from a warm cache and one container.
            for name in names:
                one_run(run, name, name == "changed", "warm")
            first_build = len(logged(run, r"\[changed\.ini\] build: built \S+ \(image \w+\) in ([\d.]+) s"))
            for i in range(args.runs):
                order = names[i % 3:] + names[:i % 3]
                for name in order:
                    results[name].append(one_run(run, name, name == "changed", i + 1))
                print(f"\r  run {i + 1}/{args.runs}", end="", flush=True)
            print()
            builds = logged(run, r"\[changed\.ini\] build: built \S+ \(image \w+\) in ([\d.]+) s")[first_build:]
            hashes = logged(run, r"\[same\.ini\] build: context \S+ unchanged \(\d+ entries, \d+ bytes, hashed in "
                                 r"(\d+) ms\)")
            for name in names:
                os.remove(os.path.join(run.vassals, f"{name}.ini"))
            dc.wait_containers_gone(run.label, 60)
            run.stop()
        finally:
            # The containers first: an image a container uses cannot be removed.
            run.stop()
            dc.sweep(run.label, quiet=True)
            sweep_images(run.label)
    base = statistics.median(results["image"])
    print()
    print(f"touch → new container serving, {args.runs} touches each (median / p90 / min, ms):")
    labels = {
        "image": "docker-image (no build)",
        "same": "docker-build, context unchanged",
        "changed": "docker-build, one file changed",
    }
    for name in names:
        v = results[name]
        med = statistics.median(v)
        print(f"  {labels[name]:<34} {med:7.0f} {common.percentile(v, 90):7.0f} {min(v):7.0f}   x{med / base:4.2f}")
    if builds:
        print(f"  the build itself (emperor's log, cached testapp layer): median {statistics.median(builds):.2f} s")
    if hashes:
        print(f"  hashing the unchanged context ({os.path.getsize(common.TESTAPP) / 1e6:.1f} MB): "
              f"median {statistics.median(hashes):.0f} ms")


if __name__ == "__main__":
    common.run_main(main)
