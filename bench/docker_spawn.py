#!/usr/bin/env python3
"""Docker vassal spawn time: `.ini` dropped → first HTTP answer through the vassal's unix socket, against bare bollard.

(a) emperor: a Docker vassal (emperor-test/testapp, network none, one unix socket bound by the emperor) is renamed
    into the vassals dir; the clock runs from the rename to the first 200 answer on its socket. Then the file is
    deleted and the bench waits until the container is gone. The emperor runs with EMPEROR_LOG=debug so that its log
    (ms timestamps) splits each run into phases.
(b) bare: examples/bare_docker (bollard only) creates + starts a container of the same image with network none and a
    bind-mounted temp dir, where testapp binds /s/app.sock itself (`--bind-unix`), and polls it until it answers.
    Its own figure (create + start + first answer) is compared; its whole process (exec, Docker connect, remove) is
    shown too. (b') the same with `--like-bridge`: Tty on and attached before start, as the bridge does.
The variants are interleaved (rotating order), N runs each; medians are compared.

Then bursts: 10 and 100 (`--bursts`) vassal files dropped at once, time until every one answers, with the CPU each
party used meanwhile (emperor, bridges, dockerd, containerd, containerd shims, whole machine) and the latency of each
start_container call (from the log), next to the same number of bare_docker processes started at once.

    python3 bench/docker_spawn.py [--runs 10] [--bursts 10,100] [--no-build] [--keep]
"""

import os
import re
import statistics
import subprocess
import time

import common
import docker_common as dc


def med(values):
    return statistics.median(values) if values else float("nan")


class CpuWatch:
    """CPU seconds used by the parties of a spawn, between start() and stop()."""

    def __init__(self, emperor_pid):
        self.emperor = emperor_pid

    def start(self):
        self.names = {n: dc.pids_named(n) for n in ("dockerd", "containerd")}
        self.c0 = {n: sum(common.cpu_seconds(p) or 0 for p in pids) for n, pids in self.names.items()}
        self.e0 = dc.cpu_ns_threads(self.emperor)
        self.shims0 = {p: common.cpu_seconds(p, children=True) or 0 for p in dc.pids_named("containerd-shim")}
        self.s0 = dc.system_cpu()
        self.w0 = time.monotonic()

    def stop(self):
        """Bridges and shims are counted whole if they started in the window (alive at the end)."""
        out = {n: sum(common.cpu_seconds(p) or 0 for p in pids) - self.c0[n] for n, pids in self.names.items()}
        out["emperor"] = ((dc.cpu_ns_threads(self.emperor) or 0) - self.e0) / 1e9
        out["bridges"] = sum(dc.cpu_ns_threads(p) or 0 for p in dc.bridges_of(self.emperor)) / 1e9
        shims = dc.pids_named("containerd-shim")
        out["containerd-shims+runc"] = sum(
            (common.cpu_seconds(p, children=True) or 0) - self.shims0.get(p, 0) for p in shims
        )
        s1 = dc.system_cpu()
        out["machine (all CPUs)"] = (s1[0] - self.s0[0]) / common.CLK_TCK
        out["rest (kernel work of the others, this bench)"] = out["machine (all CPUs)"] - sum(
            v for k, v in out.items() if not k.startswith("machine")
        )
        out["_window"] = time.monotonic() - self.w0
        return out


def burst_emperor(run, proc, n, timeout, tag):
    names = [f"b{os.getpid()}-{tag}{i:03d}.ini" for i in range(n)]
    socks = [os.path.join(run.vassals, f"b{tag}{i:03d}.sock") for i in range(n)]
    for name, sock in zip(names, socks):
        with open(os.path.join(run.vassals, "." + name), "w") as f:
            f.write(dc.docker_vassal(sock, ["--name", name]))
    cpu = CpuWatch(proc.pid)
    cpu.start()
    t_wall = time.time()
    t0 = time.monotonic()
    for name in names:
        os.rename(os.path.join(run.vassals, "." + name), os.path.join(run.vassals, name))
    answers, errors = dc.wait_answers(socks, timeout, interval=0.01, appear_interval=0.005,
                                      tick=lambda _: run.check_alive())
    used = cpu.stop()
    if errors or any(a is None for a in answers):
        raise RuntimeError(f"burst of {n}: {len(errors)} failed, e.g. {errors[:3]}")
    lat = sorted((a - t0) * 1000 for a in answers)
    # start_container latency per container, from the log: "/containers/<id>/start" → "container <id12> started".
    lines = dc.parse_log(run.log_path, t_wall)
    start_req = {}
    starts = []
    for t, text in lines:
        m = re.search(r"/containers/([0-9a-f]{64})/start$", text)
        if m:
            start_req[m.group(1)[:12]] = t
        m = re.search(r"bridge: container ([0-9a-f]{12}) started", text)
        if m and m.group(1) in start_req:
            starts.append((t - start_req[m.group(1)]) * 1000)
    # Tear down and time it.
    t1 = time.monotonic()
    for name in names:
        os.remove(os.path.join(run.vassals, name))
    dc.wait_containers_gone(run.label, timeout)
    common.wait_for(lambda: not dc.bridges_of(proc.pid), timeout, "bridges to exit", interval=0.02)
    teardown = time.monotonic() - t1
    return {"lat": lat, "starts": starts, "cpu": used, "teardown_s": teardown}


def burst_bare(label, base, n, timeout, tag):
    procs = []
    t0 = time.monotonic()
    for i in range(n):
        d = os.path.join(base, f"bare-burst-{tag}{i:03d}")
        argv = dc.bare_argv(d, label, f"bare{os.getpid()}-{tag}{i:03d}", timeout=timeout)
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    totals, fails = [], []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout + 60)
            if p.returncode != 0:
                fails.append(err.strip())
                continue
            totals.append(dc.bare_fields(out)["total_ms"])
        wall = (time.monotonic() - t0) * 1000
    finally:
        for p in procs:  # only on an error or Ctrl-C: the run's label sweep removes their containers
            if p.poll() is None:
                p.kill()
                p.wait()
    if fails:
        raise RuntimeError(f"bare burst of {n}: {len(fails)} failed, e.g. {fails[:2]}")
    return {"totals": sorted(totals), "wall_ms": wall}


def main():
    p = common.arg_parser(__doc__)
    p.add_argument("--runs", type=int, default=10, help="runs of each variant (default 10)")
    p.add_argument("--bursts", default="10,100", help="vassals dropped at once, comma-separated ('' for none)")
    p.add_argument("--no-bare-burst", action="store_true", help="skip the bare_docker bursts")
    p.add_argument("--no-like-bridge", action="store_true", help="skip the bare --like-bridge variant")
    p.add_argument("--timeout", type=float, default=180, help="seconds allowed per spawn or burst (default 180)")
    args = common.parse_args(p, docker=True)
    dc.prepare(args)
    bursts = [int(x) for x in args.bursts.split(",") if x.strip()]

    results = {"emperor": [], "bare": [], "bare-like-bridge": []}
    ph = []
    burst_results = []
    with dc.DockerRun("docker_spawn", keep=args.keep) as run:
        proc = run.start(run.emperor_argv(args.emperor_arg), log="debug")
        run.wait_log("watching", 10, "the emperor")
        name = f"sp{os.getpid()}.ini"
        ini = os.path.join(run.vassals, name)
        sock = os.path.join(run.vassals, "sp.sock")
        bare_dir = os.path.join(run.dir, "bare")
        variants = ["emperor", "bare"] + ([] if args.no_like_bridge else ["bare-like-bridge"])
        print(f"emperor pid {proc.pid}; {args.runs} runs of {', '.join(variants)}, interleaved", flush=True)

        for i in range(args.runs):
            order = variants[i % len(variants):] + variants[: i % len(variants)]
            for v in order:
                run.check_alive()
                if v == "emperor":
                    t_wall, t0 = dc.drop(ini, dc.docker_vassal(sock, ["--name", "sp"]))
                    t1 = dc.wait_answer(sock, args.timeout)
                    t_ans_wall = t_wall + (t1 - t0)
                    results[v].append((t1 - t0) * 1000)
                    os.remove(ini)
                    dc.wait_containers_gone(run.label, args.timeout, [f"emperor.vassal={name}"])
                    common.wait_for(lambda: not dc.bridges_of(proc.pid) and not os.path.exists(sock),
                                    args.timeout, "the bridge to exit", interval=0.01)
                    ph.append(dc.bridge_phases(dc.parse_log(run.log_path, t_wall), name, t_wall, "bound", t_ans_wall,
                                               "notice+bind", "hand-over+app+answer"))
                else:
                    r = dc.run_bare(bare_dir, run.label, f"bare{os.getpid()}", like_bridge=v == "bare-like-bridge",
                                    timeout=args.timeout + 30)
                    results[v].append(r)
            e = results["emperor"][-1]
            b = results["bare"][-1]["total_ms"]
            print(f"  run {i + 1}/{args.runs}: emperor {e:.0f} ms, bare {b:.0f} ms", flush=True)
            time.sleep(0.2)

        for k, n in enumerate(bursts):
            run.check_alive()
            print(f"burst of {n}: emperor ...", flush=True)
            r = burst_emperor(run, proc, n, args.timeout, tag=chr(ord("a") + k))
            if not args.no_bare_burst:
                print(f"burst of {n}: bare_docker ...", flush=True)
                r["bare"] = burst_bare(run.label, run.dir, n, args.timeout, tag=chr(ord("a") + k))
                dc.wait_containers_gone(run.label, args.timeout)
            burst_results.append((n, r))

    # --- summary ---
    em = results["emperor"]
    bare_total = [r["total_ms"] for r in results["bare"]]
    print()
    print(f"Docker vassal spawn, {args.runs} runs each, interleaved (ms; median [min-max])")

    def row(label, vals, note=""):
        print(f"  {label:<44} {med(vals):7.1f}  [{min(vals):.0f}-{max(vals):.0f}]{note}")

    row("emperor: drop .ini -> first answer", em)
    row("bare bollard: create+start+first answer", bare_total)
    row("  bare: start_container alone", [r["start_ms"] for r in results["bare"]])
    row("  bare: create_container alone", [r["create_ms"] for r in results["bare"]])
    row("  bare: whole process (exec..remove)", [r["process_ms"] for r in results["bare"]])
    if results["bare-like-bridge"]:
        row("bare --like-bridge (tty+attach): create..answer", [r["total_ms"] for r in results["bare-like-bridge"]])
    print("  emperor phases (medians, from its debug log, ±1 ms each):")
    keys = [k for k in ph[0]] if ph else []
    for k in keys:
        vals = [x[k] for x in ph if k in x]
        print(f"    {k:<40} {med(vals):7.1f}")
    ratio = med(em) / med(bare_total)
    print(f"  RATIO emperor/bare = {ratio:.3f} (goal <= 1.15)")
    if results["bare-like-bridge"]:
        print(f"  ratio emperor/bare-like-bridge = {med(em) / med([r['total_ms'] for r in results['bare-like-bridge']]):.3f}")
    for n, r in burst_results:
        lat = r["lat"]
        cpu = r["cpu"]
        print(f"burst of {n} dropped at once: first answer {lat[0]:.0f} ms, median {med(lat):.0f} ms, "
              f"all {lat[-1]:.0f} ms ({n / (lat[-1] / 1000):.1f} containers/s); teardown {r['teardown_s']:.1f} s")
        if r["starts"]:
            print(f"  start_container call under load: median {med(r['starts']):.0f} ms, max {max(r['starts']):.0f} ms "
                  f"(alone: {med([x['start_ms'] for x in results['bare']]):.0f} ms)")
        window = cpu.pop("_window")
        parts = ", ".join(f"{k} {v:.3f}" for k, v in cpu.items())
        print(f"  CPU seconds during the {window:.1f} s burst: {parts}")
        if "bare" in r:
            b = r["bare"]
            print(f"  {n} bare_docker at once: all answered after {b['wall_ms']:.0f} ms (process wall), "
                  f"median create..answer {med(b['totals']):.0f} ms; ratio emperor/bare {lat[-1] / b['wall_ms']:.2f}")


if __name__ == "__main__":
    common.run_main(main)
