#!/usr/bin/env python3
"""Policy checking costs nothing a user can see (issue 12, "Measure"): `.ini` dropped -> first answer of a Docker vassal,
with and without `--emperor-policy`, side by side in one run.

Two emperors run at once on the same daemon, each with its own vassals directory: one plain, one with a policy file
(`image`, `network`, ceilings: every rule the vassal meets is checked, and the decision is applied to the container).
The same Docker vassal (emperor-test/testapp, network none, one unix socket) is dropped into one, then the other,
alternating which goes first; the clock runs from the rename to the first answer on its socket; the file is then
deleted and the bench waits until the container is gone. Medians and their ratio are printed (goal: <= 1.02).

    python3 bench/policy.py [--runs 20] [--no-build] [--keep]
"""

import os
import statistics

import common
import docker_common as dc

POLICY = """[policy]
image = emperor-test/*
network = none
memory-max = 512m
memory-default = 128m
pids-default = 128
"""


def main():
    p = common.arg_parser(__doc__)
    p.add_argument("--runs", type=int, default=20, help="runs of each variant (default 20)")
    p.add_argument("--timeout", type=float, default=120, help="seconds allowed per spawn (default 120)")
    args = common.parse_args(p, docker=True)
    dc.prepare(args)
    times = {"plain": [], "policy": []}
    with dc.DockerRun("policy_plain", keep=args.keep) as plain, dc.DockerRun("policy_checked", keep=args.keep) as checked:
        policy = os.path.join(checked.dir, "policy.ini")
        with open(policy, "w") as f:
            f.write(POLICY)
        runs = {"plain": plain, "policy": checked}
        procs = {
            "plain": plain.start(plain.emperor_argv(args.emperor_arg)),
            "policy": checked.start(checked.emperor_argv(["--emperor-policy", policy, *args.emperor_arg])),
        }
        for r in runs.values():
            r.wait_log("watching", 10, "the emperor")
        for i in range(args.runs):
            order = ["plain", "policy"] if i % 2 == 0 else ["policy", "plain"]
            for v in order:
                run = runs[v]
                run.check_alive()
                name = f"pol{os.getpid()}{v}.ini"
                ini = os.path.join(run.vassals, name)
                sock = os.path.join(run.vassals, f"{v}.sock")
                _, t0 = dc.drop(ini, dc.docker_vassal(sock, ["--name", v]))
                t1 = dc.wait_answer(sock, args.timeout)
                times[v].append((t1 - t0) * 1000)
                os.remove(ini)
                dc.wait_containers_gone(run.label, args.timeout, [f"emperor.vassal={name}"])
                common.wait_for(lambda: not dc.bridges_of(procs[v].pid) and not os.path.exists(sock),
                                args.timeout, "the bridge to exit", interval=0.01)
            print(f"  run {i + 1}/{args.runs}: plain {times['plain'][-1]:.0f} ms, "
                  f"policy {times['policy'][-1]:.0f} ms", flush=True)
    a, b = statistics.median(times["plain"]), statistics.median(times["policy"])
    print()
    print(f"drop .ini -> first answer, {args.runs} runs each, alternating (median ms)")
    print(f"  without --emperor-policy  {a:7.1f}")
    print(f"  with --emperor-policy     {b:7.1f}")
    print(f"  ratio policy/plain        {b / a:7.3f}  (goal <= 1.02)")


if __name__ == "__main__":
    common.run_main(main)
