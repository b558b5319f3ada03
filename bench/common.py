"""Shared helpers for the benchmarks: options, build, run an emperor in a temp dir, read records, /proc readings,
clean up."""

import argparse
import math
import os
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
# .cargo/config.toml builds for an explicit target (static binaries), so artifacts live under its triple.
OUT = os.path.join(TARGET, "x86_64-unknown-linux-gnu", "release")
EMPEROR = os.path.join(OUT, "emperor")
TESTAPP = os.path.join(OUT, "examples", "testapp")


def build():
    """Builds the release emperor and testapp (quick when nothing changed)."""
    cmd = ["cargo", "build", "--release", "--bin", "emperor", "--example", "testapp"]
    print("building:", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def arg_parser(doc):
    """The argument parser of a bench script, its docstring as the help."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_run_args(p, docker=False):
    """The options every benchmark shares: extra emperor arguments, skipping the build, keeping the temp dir."""
    p.add_argument("--emperor-arg", action="append", default=[], help="extra emperor argument (repeatable)")
    built = "the binaries and images already built" if docker else "the binaries already built"
    p.add_argument("--no-build", action="store_true", help=f"use {built}")
    p.add_argument("--keep", action="store_true", help="keep the temp dir(s) (logs, records)")


def parse_args(p, docker=False):
    """Adds the shared options to `p`, parses the command line and makes SIGTERM behave like Ctrl-C."""
    add_run_args(p, docker)
    args = p.parse_args()
    stop_on_sigterm()
    return args


def prepare(args):
    """Builds the binaries unless --no-build."""
    if not args.no_build:
        build()


def run_main(main):
    """Runs a bench's main(): Ctrl-C (or SIGTERM) and the usual failures end it with a one-line message, after the
    `finally` clean-ups ran."""
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted")
    except (TimeoutError, RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        sys.exit(f"bench failed: {e}")


def app_vassal(sock, *app_args):
    """Text of a process vassal file: the host's testapp with `app_args`, one unix socket."""
    return f"[emperor]\nsocket = {sock}\nexec = {quote(TESTAPP, *app_args)}\n"


def write_app_vassals(run, count):
    """`count` idle test-app vassals v0000.ini... in the run's vassals dir, each with one unix socket."""
    for i in range(count):
        name = f"v{i:04d}"
        with open(os.path.join(run.vassals, f"{name}.ini"), "w") as f:
            f.write(app_vassal(f"{name}.sock", "--record", run.record, "--name", name))


def stop_on_sigterm():
    """Makes SIGTERM behave like Ctrl-C, so that the `finally` clean-ups run."""

    def handler(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def raise_nofile():
    """preexec_fn: soft open-files limit up to the hard one (hundreds of sockets and pipes)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def recv_all(s):
    """Reads a connected socket to EOF."""
    chunks = []
    while True:
        b = s.recv(65536)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def quote(*args):
    return " ".join(shlex.quote(str(a)) for a in args)


def read_records(path, kinds=("start",)):
    """Returns the record lines of the given kinds as dicts: {"kind": ..., "pid": int, "t_ns": int, ...}."""
    out = []
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        kind, _, rest = line.partition(" ")
        if kind not in kinds:
            continue
        rec = {"kind": kind}
        for field in rest.split():
            k, _, v = field.partition("=")
            rec[k] = v
        if "pid" in rec and "t_ns" in rec:
            rec["pid"], rec["t_ns"] = int(rec["pid"]), int(rec["t_ns"])
            out.append(rec)
    return out


def wait_for(predicate, timeout, what, interval=0.002):
    """Polls predicate() until it returns something true; raises TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def children_of(pid):
    """Pids whose parent is `pid` (scans /proc; works without CONFIG_PROC_CHILDREN)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # Field 4 (ppid) comes after the ")" that closes the command name.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry))
    return kids


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


# --- /proc ---------------------------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid, children=False):
    """utime+stime of a process (all its threads), plus its waited-for children's with `children`, in seconds
    (/proc/<pid>/stat, in ticks of 1/CLK_TCK s); None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime and stime are fields 14 and 15 of the whole line, 12 and 13 after "pid (comm)"; cutime, cstime follow.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def ctx_switches(pid):
    """Voluntary + involuntary context switches, summed over the process's threads (0 if it is gone)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except OSError:
            pass  # the thread ended meanwhile
    return total


def nthreads(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def rollup_kib(pid):
    """{'Rss': KiB, 'Pss': KiB, ...} from /proc/<pid>/smaps_rollup."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0])
    return out


def rss_pss(pid):
    """(RSS, PSS) in KiB from smaps_rollup."""
    m = rollup_kib(pid)
    return m["Rss"], m["Pss"]


def countdown(run, deadline, step):
    """Sleeps until `deadline` (time.monotonic()) in steps of at most `step` s, checking after each that the daemon
    still runs; yields the seconds left after each step."""
    while time.monotonic() < deadline:
        time.sleep(min(step, max(0, deadline - time.monotonic())))
        run.check_alive()
        yield max(0, deadline - time.monotonic())


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def summary_ms(values_ns):
    ms = [v / 1e6 for v in values_ns]
    return {
        "median": statistics.median(ms),
        "p90": percentile(ms, 90),
        "max": max(ms),
        "min": min(ms),
    }


class Run:
    """A temp dir with a vassals dir, a record file and a log; runs one daemon and cleans up everything.

    Every vassal we start carries the temp dir's path on its command line (the record file), which is how
    leftovers are recognised, never by name alone.
    """

    def __init__(self, label, keep=False):
        self.dir = tempfile.mkdtemp(prefix=f"emperor-bench-{label}-")
        self.vassals = os.path.join(self.dir, "vassals")
        os.mkdir(self.vassals)
        self.record = os.path.join(self.dir, "records.log")
        self.log_path = os.path.join(self.dir, "daemon.log")
        self.keep = keep
        self.proc = None
        self.failed = False

    def __enter__(self):
        return self

    def emperor_argv(self, extra=()):
        return [EMPEROR, "--reload-mercy", "5", *extra, self.vassals]

    def start(self, argv, env=None, log=None):
        """Starts the daemon (argv[0] = binary), output to daemon.log, in its own session; `log`: its EMPEROR_LOG
        unless the environment sets one."""
        if log is not None:
            env = dict(env or {}, EMPEROR_LOG=os.environ.get("EMPEROR_LOG", log))
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            env=dict(os.environ, **(env or {})),
            preexec_fn=raise_nofile,
            start_new_session=True,
        )
        return self.proc

    def check_alive(self):
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"daemon exited with status {self.proc.returncode}; see {self.log_path}")

    def records(self, kinds=("start",)):
        return read_records(self.record, kinds)

    def wait_starts(self, count, timeout, progress=False):
        """Until `count` different pids recorded a start; with `progress`, counts them on one line meanwhile."""

        def all_started():
            self.check_alive()
            n = len({r["pid"] for r in self.records()})
            if progress:
                print(f"\r  {n}/{count} started", end="", flush=True)
            return n >= count

        wait_for(all_started, timeout, f"{count} start records", interval=0.2)
        if progress:
            print()

    def wait_log(self, text, timeout, what):
        """Until the daemon log contains `text`."""

        def found():
            self.check_alive()
            with open(self.log_path, errors="replace") as f:
                return text in f.read()

        wait_for(found, timeout, what)

    def ours(self, pid):
        line = cmdline(pid)
        return line is not None and self.dir in line

    def stop(self, grace=20):
        """SIGTERM the daemon (which stops its vassals), SIGKILL it after `grace` s, then SIGKILL leftovers."""
        if self.proc is None:
            return
        suspects = set(children_of(self.proc.pid))
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                print(f"daemon still running {grace} s after SIGTERM; killing it", file=sys.stderr)
                self.proc.kill()
                self.proc.wait()
        suspects |= {r["pid"] for r in self.records(("start", "reload", "child"))}
        leftovers = [p for p in suspects if self.ours(p)]
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if leftovers:
            print(f"killed {len(leftovers)} leftover vassal process(es)", file=sys.stderr)
        self.proc = None

    def __exit__(self, exc_type, exc, tb):
        try:
            self.stop()
        finally:
            if hasattr(self, "log"):
                self.log.close()
            if exc_type is not None or self.keep or self.failed:
                print(f"kept {self.dir} (daemon.log, records.log)", file=sys.stderr)
                if exc_type is not None and exc_type is not KeyboardInterrupt:
                    self.tail_log()
            else:
                subprocess.run(["rm", "-rf", self.dir], check=False)
        return False

    def tail_log(self, lines=20):
        try:
            with open(self.log_path, errors="replace") as f:
                tail = f.read().splitlines()[-lines:]
        except OSError:
            return
        print(f"--- last {len(tail)} lines of {self.log_path}", file=sys.stderr)
        for line in tail:
            print(line, file=sys.stderr)
