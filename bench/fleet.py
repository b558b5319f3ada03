#!/usr/bin/env python3
"""Fleet: vassals from PostgreSQL, routes in Redis, `emperor front` rendering a real nginx (about 5 minutes).

1. reaction: commit -> new process, median and p95 over --rounds (30) INSERTs and as many config UPDATEs, for
   (a) the emperor woken by LISTEN (contrib/pg/vassals.sql's trigger), (b) the same emperor on a table without
   the notify trigger, found by `--emperor-freq 3` polling only, (c) uWSGI 2.0's emperor with Debian's
   emperor_pg plugin (its pg monitor polls every --emperor-freq = 3 s). The commit time is taken on the client
   right after the COMMIT returns; the new process's own CLOCK_REALTIME start record ends each measurement.
2. fleet: --rows (1,000) rows in one transaction over three emperors (hosts 127.0.0.2, .3, .4, each its own
   run dir and `WHERE host = 'h<n>' OR prev_host = 'h<n>'`), routes published to one Redis, `emperor front`
   rendering the include file of a real nginx: time to converge, each emperor's RSS, stats latency, the
   front's render time; then every row deleted: time until every vassal stopped and the map is empty.
3. move: a vassal moved h2 -> h3 with `UPDATE ... SET host = 'h3', config = ...` while --threads (3) clients
   GET it through nginx for --load-seconds (10): failed requests and the longest gap between answers; then
   the same across a plain DELETE + INSERT onto h3 (what one would do without the hand-over).

PostgreSQL (initdb -A trust, run as the `postgres` OS user), Redis and nginx are started by the bench itself
on loopback ports with throw-away directories under the temp dir, and stopped at the end, also on Ctrl-C or an
error; no system service is used or started. Debian's uwsgi-plugin-emperor-pg is installed with apt-get if
missing (with a policy-rc.d that keeps package scripts from starting services).

    python3 bench/fleet.py [--rounds 30] [--rows 1000] [--phases reaction,fleet,move] [--no-build] [--keep]
"""

import datetime
import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

import common

UWSGI_FREQ = 3  # seconds: uWSGI's default --emperor-freq, also given to the polling emperor (b)
EMPEROR_PG_PLUGIN = "/usr/lib/uwsgi/plugins/emperor_pg_plugin.so"
NGINX = "/usr/sbin/nginx"


# --- processes -------------------------------------------------------------------------------------------------


def proc_table():
    """{pid: (ppid, starttime)} of every process, from one pass over /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After "pid (comm)": state, ppid, ..., starttime is field 22 of the line, 20 after the command.
        out[int(entry)] = (int(fields[1]), int(fields[19]))
    return out


def descendants(pids, table=None):
    """{(pid, starttime)} of `pids` and everything below them."""
    table = table if table is not None else proc_table()
    kids = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = set(), [p for p in pids if p in table]
    while todo:
        pid = todo.pop()
        out.add((pid, table[pid][1]))
        todo.extend(kids.get(pid, ()))
    return out


def alive(ident, table=None):
    """Whether the process (pid, starttime) still exists (a zombie counts: it is not reaped yet)."""
    pid, start = ident
    table = table if table is not None else proc_table()
    return table.get(pid, (None, None))[1] == start


class Daemon:
    """A server the bench started: its own session, output to a log file; stopped with `term`, SIGKILLed after
    `grace` s, and then everything it left behind (its descendants as seen at the stop) is SIGKILLed too."""

    def __init__(self, what, argv, log_path, cwd, env=None, user=None, term=signal.SIGTERM, grace=20):
        self.what, self.log_path, self.term, self.grace = what, log_path, term, grace
        self.log = open(log_path, "ab")
        kwargs = {}
        if user is not None:
            kwargs = dict(user=user[0], group=user[1], extra_groups=[])
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(os.environ, **(env or {})),
            preexec_fn=common.raise_nofile,
            start_new_session=True,
            **kwargs,
        )
        self.pid = self.proc.pid
        self.seen = set()  # (pid, starttime) of it and its descendants, as last looked at
        self.stopped = False

    def running(self):
        return self.proc.poll() is None

    def check(self):
        if not self.running():
            raise RuntimeError(f"{self.what} exited with status {self.proc.returncode}; see {self.log_path}")

    def signal(self, sig):
        if self.running():
            self.proc.send_signal(sig)

    def snapshot(self, table=None):
        if self.running():
            self.seen |= descendants([self.pid], table)

    def begin_stop(self, table=None):
        self.snapshot(table)
        self.signal(self.term)

    def finish_stop(self):
        """Waits for the daemon after begin_stop(); returns the leftovers that had to be killed."""
        try:
            self.proc.wait(self.grace)
        except subprocess.TimeoutExpired:
            print(f"{self.what} still runs {self.grace} s after {signal.Signals(self.term).name}; killing it",
                  file=sys.stderr)
            self.proc.kill()
            self.proc.wait()
        # Its children (vassals, nginx workers, postgres backends) get a moment to follow it.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            table = proc_table()
            left = [p for p in self.seen if p[0] != self.pid and alive(p, table)]
            if not left:
                break
            time.sleep(0.05)
        for pid, _ in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.stopped = True
        self.log.close()
        return left

    def stop(self):
        self.begin_stop()
        return self.finish_stop()

    def text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_log_count(self, text, count, timeout):
        def found():
            self.check()
            return self.text().count(text) >= count

        common.wait_for(found, timeout, f"{count} x {text!r} in {self.log_path}", interval=0.02)

    def wait_log(self, text, timeout, what=None):
        def found():
            self.check()
            return text in self.text()

        common.wait_for(found, timeout, what or f"{text!r} in {self.log_path}", interval=0.02)


class Stack:
    """Every daemon the bench started, stopped at the end in reverse order of start (also on Ctrl-C or an
    error); daemons started with the same `batch` are signalled together and then waited for. Remembers every
    process it saw under them, for a last look that nothing is left."""

    def __init__(self):
        self.daemons = []  # (daemon, batch), in start order
        self.everything = []

    def add(self, daemon, batch=None):
        self.daemons.append((daemon, batch))
        self.everything.append(daemon)
        return daemon

    def stop(self, daemons):
        """Stops `daemons` together: every one is signalled, then each is waited for."""
        table = proc_table()
        for d in daemons:
            if not d.stopped:
                d.begin_stop(table)
        left = []
        for d in daemons:
            if not d.stopped:
                left += d.finish_stop()
        if left:
            print(f"killed {len(left)} leftover process(es) of {', '.join(d.what for d in daemons)}",
                  file=sys.stderr)
        self.daemons = [(d, b) for d, b in self.daemons if d not in daemons]

    def close(self):
        while self.daemons:
            d, batch = self.daemons[-1]
            group = [x for x, b in self.daemons if x is d or (batch is not None and b == batch)]
            try:
                self.stop(group)
            except Exception as e:  # noqa: BLE001 - clean up the rest anyway
                print(f"stopping {', '.join(x.what for x in group)}: {e}", file=sys.stderr)
                self.daemons = [(x, b) for x, b in self.daemons if x not in group]

    def leftovers(self, dirs):
        """Processes still alive among those seen under the daemons, or whose command line names one of
        `dirs`; each is SIGKILLed. Returns their descriptions."""
        table = proc_table()
        seen = set()
        for d in self.everything:
            seen |= d.seen | {(d.pid, None)}
        found = []
        for pid, start in seen:
            if pid in table and (start is None or table[pid][1] == start) and pid != os.getpid():
                if start is None and not any(d.pid == pid and d.running() for d in self.everything):
                    continue
                found.append(pid)
        for pid in table:
            line = common.cmdline(pid) or ""
            if pid != os.getpid() and any(x in line for x in dirs):
                found.append(pid)
        out = []
        for pid in sorted(set(found)):
            out.append(f"{pid} {common.cmdline(pid)}")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return out


# --- PostgreSQL ------------------------------------------------------------------------------------------------


def pg_bin():
    dirs = sorted(
        (int(os.path.basename(os.path.dirname(d))), d)
        for d in glob.glob("/usr/lib/postgresql/*/bin")
        if os.path.basename(os.path.dirname(d)).isdigit() and os.path.exists(os.path.join(d, "postgres"))
    )
    if not dirs:
        raise RuntimeError("no PostgreSQL server in /usr/lib/postgresql/<version>/bin: run scripts/setup as root")
    return dirs[-1][1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_postgres(stack, root):
    """A throw-away server as tests/util/pg.rs starts one: initdb --auth=trust as the postgres OS user, then
    postgres itself on a free loopback port with durability off. Returns (daemon, port)."""
    import pwd

    bin_ = pg_bin()
    pw = pwd.getpwnam("postgres")
    user = (pw.pw_uid, pw.pw_gid)
    data = os.path.join(root, "pg", "data")
    os.makedirs(data)
    os.chmod(os.path.dirname(data), 0o755)
    os.chown(data, *user)
    os.chmod(data, 0o700)
    subprocess.run(
        [os.path.join(bin_, "initdb"), "-D", data, "--auth=trust", "--username=emperor", "--encoding=UTF8",
         "--no-locale", "--no-sync"],
        user=user[0], group=user[1], extra_groups=[], cwd="/", check=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120,
    )
    port = free_port()
    pg = stack.add(Daemon(
        "postgres",
        [os.path.join(bin_, "postgres"), "-D", data, "-p", str(port), "-k", data,
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
         "-c", "full_page_writes=off", "-c", "max_connections=200"],
        os.path.join(root, "pg", "postgres.log"), "/", user=user, term=signal.SIGINT, grace=10,
    ))

    def ready():
        pg.check()
        try:
            PgConn(port, "postgres").close()
            return True
        except OSError:
            return False

    common.wait_for(ready, 30, "postgres to accept connections", interval=0.1)
    return pg, port


class PgError(Exception):
    pass


class PgConn:
    """A PostgreSQL connection speaking the simple-query protocol itself (trust authentication), so that the
    bench knows to the microsecond when a COMMIT has returned."""

    def __init__(self, port, db, user="emperor"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        body = struct.pack("!I", 196608) + b"user\0" + user.encode() + b"\0database\0" + db.encode() + b"\0\0"
        self.sock.sendall(struct.pack("!I", len(body) + 4) + body)
        self._until_ready()

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("PostgreSQL closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _message(self):
        kind, length = struct.unpack("!cI", self._read(5))
        return kind, self._read(length - 4)

    @staticmethod
    def _error(body):
        fields = {}
        for part in body.split(b"\0"):
            if part:
                fields[chr(part[0])] = part[1:].decode(errors="replace")
        return PgError(f"{fields.get('S', 'ERROR')}: {fields.get('M', '?')}")

    def _until_ready(self):
        rows, error = [], None
        while True:
            kind, body = self._message()
            if kind == b"R":
                code = struct.unpack("!I", body[:4])[0]
                if code != 0:
                    raise PgError(f"the server asks for authentication (method {code}); the bench's server uses trust")
            elif kind == b"E":
                error = error or self._error(body)
            elif kind == b"D":
                n = struct.unpack("!H", body[:2])[0]
                at, row = 2, []
                for _ in range(n):
                    size = struct.unpack("!i", body[at:at + 4])[0]
                    at += 4
                    if size < 0:
                        row.append(None)
                    else:
                        row.append(body[at:at + size].decode())
                        at += size
                rows.append(row)
            elif kind == b"Z":
                if error:
                    raise error
                return rows

    def query(self, sql):
        """Runs `sql` (one or more statements: one implicit transaction); returns the rows of the last result."""
        data = sql.encode() + b"\0"
        self.sent_ns = time.time_ns()
        self.sock.sendall(b"Q" + struct.pack("!I", len(data) + 4) + data)
        return self._until_ready()

    def commit(self, sql):
        """Runs `sql` and returns the wall clock (ns) right after the server said it is done (committed)."""
        self.query(sql)
        return time.time_ns()

    def close(self):
        try:
            self.sock.sendall(b"X\0\0\0\4")
        except OSError:
            pass
        self.sock.close()


def dollar(text):
    """`text` as a dollar-quoted SQL string."""
    assert "$cfg$" not in text
    return f"$cfg${text}$cfg$"


# --- Redis -----------------------------------------------------------------------------------------------------


def start_redis(stack, root):
    """A stock redis-server (keyspace notifications off: the front switches them on) on a free loopback port,
    nothing persisted. Returns (daemon, port)."""
    d = os.path.join(root, "redis")
    os.makedirs(d)
    port = free_port()
    r = stack.add(Daemon(
        "redis-server",
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "no", "--dir", d],
        os.path.join(d, "redis.log"), d, grace=10,
    ))

    def ready():
        r.check()
        try:
            return Resp(port).cmd("PING") == "PONG"
        except OSError:
            return False

    common.wait_for(ready, 30, "redis to answer PING", interval=0.05)
    return r, port


class Resp:
    """A RESP2 client: commands, or a subscribed connection's messages."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")

    def send(self, *args):
        out = [f"*{len(args)}\r\n".encode()]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))

    def read(self):
        line = self.file.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(f"redis: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.file.read(n + 2)[:-2]
            return data.decode(errors="replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError(f"redis: unexpected reply {line!r}")

    def cmd(self, *args):
        self.send(*args)
        return self.read()

    def keys(self, pattern):
        cursor, out = "0", []
        while True:
            cursor, batch = self.cmd("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            out += batch
            if cursor == "0":
                return out

    def close(self):
        self.sock.close()


class KeyWatch:
    """Follows the route keys through keyspace notifications (the same ones the front follows): the set of keys
    present and, for each change of their count, when it happened (bench clock, ns)."""

    def __init__(self, port, prefix="/beachhead/"):
        self.conn = Resp(port)
        self.conn.sock.settimeout(None)
        self.lock = threading.Lock()
        self.present = set(Resp(port).keys(prefix + "*"))
        self.history = [(time.time_ns(), len(self.present))]
        self.appeared = {}  # key: when it last became present
        self.channel = "__keyspace@0__:"
        self.conn.send("PSUBSCRIBE", f"{self.channel}{prefix}*")
        self.conn.read()  # the confirmation
        self.thread = threading.Thread(target=self.follow, daemon=True)
        self.thread.start()

    def follow(self):
        while True:
            try:
                msg = self.conn.read()
            except (OSError, ConnectionError, ValueError):
                return
            now = time.time_ns()
            if not isinstance(msg, list) or len(msg) != 4 or msg[0] != "pmessage":
                continue
            key, event = msg[2][len(self.channel):], msg[3]
            with self.lock:
                before = len(self.present)
                if event == "set":
                    if key not in self.present:
                        self.appeared[key] = now
                    self.present.add(key)
                elif event in ("del", "expired"):
                    self.present.discard(key)
                if len(self.present) != before:
                    self.history.append((now, len(self.present)))

    def count(self):
        with self.lock:
            return len(self.present)

    def when(self, pred, since_ns):
        """The first time after `since_ns` the count satisfied `pred`, or None."""
        with self.lock:
            for t, n in self.history:
                if t >= since_ns and pred(n):
                    return t
        return None

    def last_set(self, suffix):
        """When the last of the keys ending in `suffix` became present."""
        with self.lock:
            return max((t for k, t in self.appeared.items() if k.endswith(suffix)), default=None)

    def close(self):
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.conn.close()


# --- nginx -----------------------------------------------------------------------------------------------------


def readme_fleet_block():
    """The README's server block for a fleet's front (section "A front for a fleet"), as documented."""
    with open(os.path.join(common.REPO, "README.md")) as f:
        readme = f.read()
    section = readme.split("\n### A front for a fleet: `emperor front`\n", 1)
    blocks = section[1].split("\n## ", 1)[0].split("```nginx\n")[1:] if len(section) == 2 else []
    if not blocks:
        raise RuntimeError("README.md has no nginx block in \"A front for a fleet\"")
    # The section's last block is the one with proxy_connect_timeout, meant for a fleet.
    return blocks[-1].split("```", 1)[0]


def configure_nginx(root, map_path):
    """Debian's nginx around the README's fleet block (1 worker, 127.0.0.1, the map included). Returns (argv,
    port, dir); nginx is started once the map exists."""
    d = os.path.join(root, "nginx")
    os.makedirs(os.path.join(d, "logs"))
    port = free_port()
    block = readme_fleet_block()
    ours = block.replace("include /etc/nginx/emperor-routes.conf;", f"include {map_path};").replace(
        "listen 80 default_server;", f"listen 127.0.0.1:{port} default_server;"
    )
    if map_path not in ours or f"127.0.0.1:{port}" not in ours:
        raise RuntimeError(f"the README's nginx block changed shape:\n{block}")
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(
            f"daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\npid {d}/nginx.pid;\n"
            f"error_log {d}/logs/error.log warn;\nevents {{ worker_connections 1024; }}\n"
            f"http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n"
            f"  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n"
            f"{ours}\n}}\n"
        )
    return [NGINX, "-p", d, "-c", conf], port, d


def http_get(port, host, timeout=10):
    """One HTTP/1.0 GET with a Host header through nginx: (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = common.recv_all(s)
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"no status line: {data[:80]!r}")
    return int(parts[1]), body.decode(errors="replace")


# --- helpers ---------------------------------------------------------------------------------------------------


def vm_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def log_time_ns(line):
    """The time of an emperor log line (`2026-12-01T10:00:00.123Z INFO ...`), in ns."""
    stamp = line.split(" ", 1)[0]
    return int(datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000) * 1_000_000


def log_lines(daemon, text, since_ns=0):
    """(time ns, line) of every log line containing `text`, at or after `since_ns` (ms resolution)."""
    out = []
    for line in daemon.text().splitlines():
        if text in line:
            try:
                t = log_time_ns(line)
            except ValueError:
                continue
            if t >= since_ns - 1_000_000:
                out.append((t, line))
    return out


def p(values, q):
    return common.percentile(values, q)


def ms(ns):
    return ns / 1e6


def fmt_s(ns):
    return "-" if ns is None else f"{ns / 1e9:.2f} s"


def psql_file(port, db, path):
    subprocess.run(
        [os.path.join(pg_bin(), "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d",
         f"host=127.0.0.1 port={port} user=emperor dbname={db}", "-f", path],
        env=dict(os.environ, PGOPTIONS="-c client_min_messages=warning"),
        check=True, stdout=subprocess.DEVNULL, timeout=60,
    )


def new_database(port, db):
    """A database with contrib/pg/vassals.sql loaded into it, as a user would load it."""
    admin = PgConn(port, "postgres")
    admin.query(f"CREATE DATABASE {db}")
    admin.close()
    psql_file(port, db, os.path.join(common.REPO, "contrib", "pg", "vassals.sql"))


def pg_source(port, db, query):
    return f"pg://host=127.0.0.1 port={port} user=emperor dbname={db};{query}"


def start_emperor(stack, args, root, name, source, extra=(), batch=None):
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    argv = [common.EMPEROR, "--reload-mercy", "5", *extra, *args.emperor_arg, source]
    return stack.add(Daemon(f"emperor {name}", argv, os.path.join(d, "daemon.log"), d), batch)


def records_by(path, field):
    """{value of `field`: [records in file order]} of the start records in `path`."""
    out = {}
    for r in common.read_records(path):
        out.setdefault(r.get(field), []).append(r)
    return out


def ensure_emperor_pg():
    """Debian's uwsgi-plugin-emperor-pg, installed if missing. Returns None when usable, else why not."""
    if not shutil.which("uwsgi"):
        return "uWSGI is not installed (scripts/setup installs Debian's uwsgi)"
    if not os.path.exists(EMPEROR_PG_PLUGIN):
        if os.geteuid() != 0:
            return f"{EMPEROR_PG_PLUGIN} is missing and installing uwsgi-plugin-emperor-pg needs root"
        print("installing Debian's uwsgi-plugin-emperor-pg (apt-get)", flush=True)
        # As scripts/setup does: a policy-rc.d (if the machine has none) keeps package scripts from starting
        # services while apt runs.
        policy, own = "/usr/sbin/policy-rc.d", False
        if not os.path.exists(policy):
            with open(policy, "w") as f:
                f.write("#!/bin/sh\nexit 101\n")
            os.chmod(policy, 0o755)
            own = True
        try:
            cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "uwsgi-plugin-emperor-pg"]
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
                r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                return f"apt-get install uwsgi-plugin-emperor-pg failed: {r.stderr.strip()[-300:]}"
        finally:
            if own:
                os.unlink(policy)
    probe = subprocess.run(["uwsgi", "--plugin", "emperor_pg,python3", "--version"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"uwsgi --plugin emperor_pg,python3 does not load: {(probe.stdout + probe.stderr).strip()[-300:]}"
    return None


# --- 1. commit -> new process ----------------------------------------------------------------------------------

UWSGI_APP = """\
import os, time
with open({record!r}, "a") as f:
    f.write(f"start pid={{os.getpid()}} t_ns={{time.time_ns()}} vassal={{os.environ['BENCH_VASSAL']}} "
            f"version={{os.environ['BENCH_VERSION']}}\\n")

def application(env, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello from uwsgi\\n"]
"""


def phase_reaction(args, ctx):
    """(a) LISTEN, (b) polling every 3 s, (c) uWSGI's emperor_pg, side by side. Each round: (a) inserts a row
    and, in a second commit, updates the previous round's row; then, after a random pause, one transaction on
    the other database inserts a row for (b) and one for (c) and updates their previous rows. (a) has a
    database of its own: a NOTIFY in (b)'s database would wake (b)."""
    root, port, stack = ctx["root"], ctx["pg_port"], ctx["stack"]
    new_database(port, "listen")
    new_database(port, "poll")
    poll = PgConn(port, "poll")
    # The table without the notify trigger: ts is still bumped by vassals_before_write, as uWSGI needs.
    poll.query("DROP TRIGGER vassals_notify_row ON vassals; DROP TRIGGER vassals_notify_truncate ON vassals")
    listen = PgConn(port, "listen")
    query = "SELECT name, config, EXTRACT(epoch FROM ts) FROM vassals"
    ea = start_emperor(stack, args, root, "a", pg_source(port, "listen", query), batch="reaction")
    eb = start_emperor(stack, args, root, "b", pg_source(port, "poll", f"{query} WHERE host = 'poll'"),
                       ["--emperor-freq", str(UWSGI_FREQ)], batch="reaction")
    why_not = "--no-uwsgi" if args.no_uwsgi else ensure_emperor_pg()
    ec = None
    cdir = os.path.join(root, "c")
    os.makedirs(cdir, exist_ok=True)
    app = os.path.join(cdir, "app.py")
    if why_not is None:
        with open(app, "w") as f:
            f.write(UWSGI_APP.format(record=os.path.join(cdir, "records.log")))
        uquery = "SELECT name,config,EXTRACT(epoch FROM ts) FROM vassals WHERE host = 'uwsgi'"
        ec = stack.add(Daemon(
            "uWSGI emperor",
            ["uwsgi", "--plugin", "emperor_pg", "--emperor", pg_source(port, "poll", uquery),
             "--emperor-freq", str(UWSGI_FREQ)],
            os.path.join(cdir, "daemon.log"), cdir,
        ), batch="reaction")
    for e in (ea, eb):
        e.wait_log("vassals from postgresql://", 30)
    if ec:
        ec.wait_log("enabled emperor PostgreSQL monitor", 30)
    daemons = [d for d in (ea, eb, ec) if d]

    def testapp_cfg(kind, name, version):
        d = os.path.join(root, kind)
        rec = os.path.join(d, "records.log")
        return (f"[emperor]\nsocket = {os.path.join(d, name)}.sock\n"
                f"exec = {common.quote(common.TESTAPP, '--record', rec, '--name', f'{name}-v{version}')}\n")

    def uwsgi_cfg(name, version):
        return ("[uwsgi]\nplugins = python3\nmaster = true\nprocesses = 1\nworker-reload-mercy = 2\n"
                f"http-socket = {os.path.join(cdir, name)}.sock\nwsgi-file = {app}\n"
                f"env = BENCH_VASSAL={name}\nenv = BENCH_VERSION={version}\n")

    rec = {k: os.path.join(root, k, "records.log") for k in "abc"}
    field = {"a": "names", "b": "names", "c": "vassal"}  # testapp records its socket names: the vassal's
    lat = {(k, op): [] for k in "abc" for op in ("insert", "update")}
    lat_sent = {(k, op): [] for k in "abc" for op in ("insert", "update")}  # from the statement's sending
    stale_config = []  # uWSGI vassals that came back from an update without the new config

    def starts(kind, name):
        return records_by(rec[kind], field[kind]).get(name, [])

    def wait_new(waits, t_commit, timeout, t_sent=None):
        """waits: [(kind, name, op, starts seen before the commit)]. Each latency: its vassal's next start
        record's t_ns - t_commit."""
        pending = list(waits)
        deadline = time.monotonic() + timeout
        while pending:
            for d in daemons:
                d.check()
            left = []
            for kind, name, op, seen in pending:
                got = starts(kind, name)
                if len(got) <= seen:
                    left.append((kind, name, op, seen))
                    continue
                r = got[seen]
                lat[(kind, op)].append(r["t_ns"] - t_commit)
                if t_sent is not None:
                    lat_sent[(kind, op)].append(r["t_ns"] - t_sent)
                if kind == "c" and op == "update" and r.get("version") != "2":
                    stale_config.append(name)
            pending = left
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"no new process within {timeout} s for {', '.join(w[1] for w in pending)}")
            time.sleep(0.002 if any(w[0] == "a" for w in pending) else 0.01)

    n = args.rounds
    print(f"1. commit -> new process: {n} inserts and {n} config updates for each of (a), (b)"
          f"{', (c)' if ec else ''}", flush=True)
    last_poll_commit = 0.0
    for i in range(n + 1):
        ins = f"{i:02d}" if i < n else None
        upd = f"{i - 1:02d}" if i > 0 else None
        t_round = time.monotonic()
        # A pause uniform over one whole period, so that the commit for (b) and (c) falls at a random phase
        # of their 3 s scans. (a) is measured in it, once the previous round's vassals have settled.
        pause = random.uniform(0.3, 0.3 + UWSGI_FREQ)
        time.sleep(0.3)
        # (a), alone: each commit waits for its new process.
        if ins:
            seen = len(starts("a", "a" + ins))
            t = listen.commit(f"INSERT INTO vassals (name, config) VALUES ('a{ins}.ini', "
                              f"{dollar(testapp_cfg('a', 'a' + ins, 1))})")
            wait_new([("a", "a" + ins, "insert", seen)], t, 10, listen.sent_ns)
        if upd:
            seen = len(starts("a", "a" + upd))
            t = listen.commit(f"UPDATE vassals SET config = {dollar(testapp_cfg('a', 'a' + upd, 2))} "
                              f"WHERE name = 'a{upd}.ini'")
            wait_new([("a", "a" + upd, "update", seen)], t, 10, listen.sent_ns)
        # (b) and (c), at a random phase of their 3 s periods.
        time.sleep(max(0.0, pause - (time.monotonic() - t_round)))
        # uWSGI's emperor_pg compares whole seconds of ts: a row's update must fall in a later second than its
        # insert (the previous commit here), or uWSGI would not see it.
        if upd and int(time.time()) <= int(last_poll_commit):
            time.sleep(int(last_poll_commit) + 1.005 - time.time())
        stmts, waits = [], []
        for kind, prefix, host in (("b", "p", "poll"), ("c", "u", "uwsgi")):
            if kind == "c" and not ec:
                continue

            def cfg(name, version, kind=kind):
                return testapp_cfg(kind, name, version) if kind == "b" else uwsgi_cfg(name, version)

            if ins:
                stmts.append(f"INSERT INTO vassals (name, config, host) VALUES ('{prefix}{ins}.ini', "
                             f"{dollar(cfg(prefix + ins, 1))}, '{host}')")
                waits.append((kind, prefix + ins, "insert", len(starts(kind, prefix + ins))))
            if upd:
                stmts.append(f"UPDATE vassals SET config = {dollar(cfg(prefix + upd, 2))} "
                             f"WHERE name = '{prefix}{upd}.ini'")
                waits.append((kind, prefix + upd, "update", len(starts(kind, prefix + upd))))
        t = poll.commit("BEGIN; " + "; ".join(stmts) + "; COMMIT")
        last_poll_commit = t / 1e9
        wait_new(waits, t, UWSGI_FREQ + 15)
        print(f"\r  round {i + 1}/{n + 1}", end="", flush=True)
    print()
    listen.close()
    poll.close()
    stack.stop(daemons)
    return lat, stale_config, lat_sent


# --- report --------------------------------------------------------------------------------------------------


def report(args, results, ctx):
    if "reaction" in results:
        lat, stale, lat_sent = results["reaction"]
        print()
        print("1. commit -> new process (ms; the commit's return on the client to the new process's start record)")
        names = {"a": "(a) emperor, LISTEN", "b": f"(b) emperor, polling (--emperor-freq {UWSGI_FREQ})",
                 "c": f"(c) uWSGI 2.0 emperor_pg (--emperor-freq {UWSGI_FREQ})"}
        med = {}
        for op in ("insert", "update"):
            for k in "abc":
                v = lat[(k, op)]
                if not v:
                    continue
                m = [x / 1e6 for x in v]
                med[(k, op)] = statistics.median(m)
                print(f"  {op:6} {names[k]:44} median {statistics.median(m):8.1f}  p95 {p(m, 95):8.1f}  "
                      f"max {max(m):8.1f}  min {min(m):7.1f}  (n={len(m)})")
        for op in ("insert", "update"):
            if (("a", op)) in med:
                parts = [f"{k}/a {med[(k, op)] / med[('a', op)]:.0f}x" for k in "bc" if (k, op) in med]
                print(f"  {op} medians: {', '.join(parts)}")
        for op in ("insert", "update"):
            v = [x / 1e6 for x in lat_sent[("a", op)]]
            if v:
                print(f"  (a) {op}s from the statement's sending instead (the commit lies between): median "
                      f"{statistics.median(v):.1f}, p95 {p(v, 95):.1f}, max {max(v):.1f} ms")
        if ctx.get("uwsgi_why_not"):
            print(f"  (c) was not measured: {ctx['uwsgi_why_not']}")
        if stale:
            print(f"  uWSGI vassals that came back from an update with the old config: {', '.join(stale)}")


def report_fleet(args, results):
    if "fleet" in results:
        c = results["fleet"]
        rows = args.rows
        print()
        print(f"2. {rows} rows in one transaction over 3 emperors (the INSERT took {ms(c['statement']):.0f} ms; "
              "from its return to ...)")
        if c["procs"] is not None:
            print(f"  every vassal process started      {fmt_s(c['procs'])}   (per host: "
                  + ", ".join(f"h{h} {fmt_s(t)}" for h, t in c["host_procs"].items()) + ")")
        print(f"  every route in Redis              {fmt_s(c['keys'])}   (per host: "
              + ", ".join(f"h{h} {fmt_s(t)}" for h, t in c["host_keys"].items()) + ")")
        print(f"  the front's map lists them all    {fmt_s(c['map'])}")
        print(f"  front render: last key written -> map with it: {ms(c['render']):.0f} ms (map mtime); "
              f"{ms(c['front_log_render']):.0f} ms (the front's log line)")
        w = c["front_writes"]
        print(f"  the front wrote the map {len(w)} time(s) and ran nginx's reload {c['front_reloads']} time(s):")
        shown = w if len(w) <= 8 else w[:4] + [None] + w[-3:]
        for x in shown:
            print("    ..." if x is None else f"    +{x[0] / 1e9:6.2f} s  {x[1]}")
        ok, took = c["sweep"]
        retry = c["sweep_retry_failed"]
        print(f"  every domain once through nginx: {ok}/{rows} answered by the right vassal ({took:.1f} s)"
              + (f"; still failing on a second try: {len(retry)}" if rows - ok else ""))
        print("  emperor VmRSS, before -> after: " + ", ".join(
            f"h{h} {c['rss_before'][h] / 1024:.1f} -> {c['rss'][h] / 1024:.1f} MiB" for h in c["rss"]))
        n, kib = c["rss_vassals"]
        print(f"  front VmRSS {c['rss_front'] / 1024:.1f} MiB; {n} vassal processes {kib / 1024:.0f} MiB RSS in all")
        print(f"  stats request (raw read of --emperor-stats, median of 20 / max; {c['tcp_rows']} rows in "
              "/proc/net/tcp): " + ", ".join(
                  f"h{h} {ms(m):.1f} / {ms(mx):.1f} ms ({size / 1024:.0f} KiB, {cnt} vassals)"
                  for h, (m, mx, size, cnt) in c["stats"].items()))
    if "move" in results:
        print()
        print("3. a vassal moved h2 -> h3 under load (times from the commit)")
        for label, m in results["move"].items():
            st = m["steps"]

            def t(v):
                return "-" if v is None else f"{v / 1e9:+.2f} s"

            print(f"  {label}: {m['requests']} requests in {m['seconds']:.0f} s, {m['failed']} failed, "
                  f"longest gap between answers {m['gap_ms']:.0f} ms (at {t(m['gap_at'])}), "
                  f"p50 {m['p50']:.1f} ms, p99 {m['p99']:.1f} ms, max {m['max']:.0f} ms")
            print(f"    answered by: {', '.join(f'{k} {v}' for k, v in sorted(m['by'].items()))}; "
                  f"h3's process started {t(m['h3_start'])}, first answer from h3 {t(m['h3_first_answer'])}, "
                  f"last from h2 {t(m['h2_last_answer'])}")
            if m["failed"]:
                print(f"    failures between {t(m['first_failure'])} and {t(m['last_failure'])}: "
                      + "; ".join(f"{n} x {why}" for why, n in m["reasons"].items()))
            if label == "hand-over":
                print(f"    h2: hand-over begins {t(st['handover_begins'])}, sees h3's route {t(st['successor_seen'])}, "
                      f"stops its vassal {t(st['h2_stops'])}, vassal gone {t(st['h2_removed'])}")
            else:
                print(f"    h2: vassal gone {t(st['h2_removed'])}")
    if "stats_after_load" in results:
        st = results["stats_after_load"]
        print(f"  a stats request on h2 after the loops, with {st['rows']} rows in /proc/net/tcp (mostly TIME_WAIT): "
              f"{ms(st['stats']):.0f} ms ({st['vassals']} vassals); a config UPDATE of a vassal on h2, commit -> "
              f"new process: {ms(st['alone']):.1f} ms alone, {ms(st['during']):.0f} ms when committed 50 ms into "
              "that request")
    if "delete" in results:
        d = results["delete"]
        print()
        print(f"2. every row deleted in one transaction (the DELETE took {ms(d['statement']):.0f} ms; from its "
              "return to ...)")
        gone = fmt_s(d["gone"]) if d["gone"] is not None else f"NOT within 30 s: {len(d['outlived'])} left"
        print(f"  every vassal process gone {gone} (last 'removed' log line {fmt_s(d['removed_log'])}, "
              f"{d['removed_n']} lines); no route in Redis {fmt_s(d['keys'])}; the map empty {fmt_s(d['map'])}")
        for line in d["outlived"][:5]:
            print(f"    still running after its row was deleted: {line}")
        print("  emperor VmRSS after: " + ", ".join(f"h{h} {v / 1024:.1f} MiB" for h, v in d["rss"].items()))


MAP_LINE = re.compile(r"^    (v\d+\.test) \S+;$", re.M)


def listening_ports():
    """TCP ports something listens on, on any address (/proc/net/tcp and tcp6)."""
    ports = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A":
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return ports


def port_base(count):
    """The first of `count` consecutive ports below the ephemeral range that nothing listens on."""
    used = listening_ports()
    for base in range(20000, 32768 - count, 500):
        if not any(base + i in used for i in range(count)):
            return base
    raise RuntimeError(f"no {count} free consecutive ports between 20000 and 32767")


def read_map(path):
    """(mtime ns, set of v<i>.test domains) of the front's map, read through one fd (it is replaced by
    rename, so the mtime and the text are of the same file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None, set()
    try:
        mtime = os.fstat(fd).st_mtime_ns
        with os.fdopen(fd, closefd=False) as f:
            text = f.read()
    finally:
        os.close(fd)
    return mtime, set(MAP_LINE.findall(text))


def tcp_rows():
    """Rows of /proc/net/tcp and tcp6 (every TCP socket of the machine's network namespace, TIME_WAIT too)."""
    n = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                n += sum(1 for _ in f) - 1
        except OSError:
            pass
    return n


def stats_latency(path, requests, timeout=60):
    """`requests` raw reads of an --emperor-stats socket, one after the other: (times ns, size, vassals)."""
    times, size, count = [], 0, 0
    for _ in range(requests):
        t0 = time.perf_counter_ns()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            body = common.recv_all(s)
        times.append(time.perf_counter_ns() - t0)
        size, count = len(body), len(json.loads(body)["vassals"])
    return times, size, count


def load_loop(port, domain, seconds, threads, at, action):
    """`threads` clients GET `domain` through nginx one request after the other for `seconds`; `action()` runs
    `at` s in. Returns (results, action's return value); a result is (end ns, ok, who answered, latency ns,
    what went wrong)."""
    stop_at = time.monotonic() + seconds
    results, lock = [], threading.Lock()

    def client():
        mine = []
        while time.monotonic() < stop_at:
            t0 = time.time_ns()
            try:
                code, body = http_get(port, domain, timeout=10)
                ok = code == 200 and body.startswith("hello from ")
                who = body.split()[2] if ok else None
                page = "" if body.lstrip().startswith("<") else " " + body.strip()[:40]
                detail = None if ok else f"HTTP {code}{page}"
            except OSError as e:
                ok, who, detail = False, None, f"{type(e).__name__}: {e}"
            t1 = time.time_ns()
            mine.append((t1, ok, who, t1 - t0, detail))
        with lock:
            results.extend(mine)

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for w in workers:
        w.start()
    try:
        time.sleep(at)
        value = action()
    finally:
        for w in workers:
            w.join()
    results.sort()
    return results, value


def summarize_load(results, t_action):
    oks = [r for r in results if r[1]]
    failed = [r for r in results if not r[1]]
    gaps = [b[0] - a[0] for a, b in zip(oks, oks[1:])]
    worst = max(range(len(gaps)), key=gaps.__getitem__) if gaps else None
    by = {}
    for r in oks:
        by[r[2]] = by.get(r[2], 0) + 1
    reasons = {}
    for r in failed:
        reasons[r[4]] = reasons.get(r[4], 0) + 1
    lat = [r[3] / 1e6 for r in oks]
    return {
        "requests": len(results),
        "failed": len(failed),
        "reasons": reasons,
        "first_failure": (failed[0][0] - t_action) if failed else None,
        "last_failure": (failed[-1][0] - t_action) if failed else None,
        "gap_ms": gaps[worst] / 1e6 if gaps else None,
        "gap_at": (oks[worst][0] - t_action) if gaps else None,
        "by": by,
        "p50": statistics.median(lat) if lat else None,
        "p99": p(lat, 99) if lat else None,
        "max": max(lat) if lat else None,
    }


def settle(port, domain, who, in_a_row=30, timeout=60):
    """Until `in_a_row` answers in a row come from `who` (nginx's old workers may still answer with the map
    they started with for a moment after a reload)."""
    want, n = f"hello from {who} ", 0
    deadline = time.monotonic() + timeout
    while n < in_a_row:
        try:
            code, body = http_get(port, domain, timeout=5)
            n = n + 1 if code == 200 and body.startswith(want) else 0
        except OSError:
            n = 0
        if n == 0:
            time.sleep(0.02)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{domain} was not served {in_a_row} times in a row by {who} within {timeout} s")


def phase_move(args, ctx, db, emperors, nginx_port, records, row_cfg, host_of):
    """A vassal on h2 moved to h3 with the hand-over, under load; then another one by DELETE + INSERT."""
    out = {}
    movers = [i for i in range(args.rows) if host_of(i) == 2][:2]
    if len(movers) < 2:
        raise RuntimeError("--rows too small: the move needs two vassals on h2")
    cases = [
        ("hand-over", movers[0],
         lambda i: db.commit(f"UPDATE vassals SET host = 'h3', config = {dollar(row_cfg(i, 3))} "
                             f"WHERE name = 'v{i}.ini'")),
        ("delete+insert", movers[1],
         lambda i: db.commit(f"BEGIN; DELETE FROM vassals WHERE name = 'v{i}.ini'; "
                             f"INSERT INTO vassals (name, config, host) VALUES ('v{i}.ini', "
                             f"{dollar(row_cfg(i, 3))}, 'h3'); COMMIT")),
    ]
    at = min(2.0, args.load_seconds / 4)
    for label, i, action in cases:
        domain = f"v{i}.test"
        settle(nginx_port, domain, f"v{i}-h2")
        print(f"3. {label}: v{i}.ini h2 -> h3 at {at:.0f} s of a {args.load_seconds:.0f} s loop of {args.threads}"
              f" clients through nginx", flush=True)
        results, t_commit = load_loop(nginx_port, domain, args.load_seconds, args.threads, at, lambda: action(i))
        h2 = emperors[2]
        h2.wait_log(f"[v{i}.ini] removed", 30, f"h2 to stop v{i}.ini")
        summary = summarize_load(results, t_commit)
        started = [r["t_ns"] for r in common.read_records(records[3]) if r.get("names") == f"v{i}"]
        summary["h3_start"] = (started[0] - t_commit) if started else None
        h3_first = next((r[0] for r in results if r[1] and r[2] == f"v{i}-h3"), None)
        summary["h3_first_answer"] = (h3_first - t_commit) if h3_first else None
        last_h2 = [r[0] for r in results if r[1] and r[2] == f"v{i}-h2"]
        summary["h2_last_answer"] = (max(last_h2) - t_commit) if last_h2 else None
        steps = {}
        for key, text in (("handover_begins", f"[v{i}.ini] placed on another host"),
                          ("successor_seen", f"[v{i}.ini] the new host publishes it"),
                          ("h2_stops", f"[v{i}.ini] handed over to another host: stopping it"),
                          ("h2_removed", f"[v{i}.ini] removed")):
            # The emperor may log before the client has read the COMMIT's answer: any line for this vassal
            # from the loop's start on is the one.
            found = log_lines(h2, text, t_commit - int(at * 1e9))
            steps[key] = (found[0][0] - t_commit) if found else None
        summary["steps"] = steps
        summary["seconds"] = args.load_seconds
        out[label] = summary
    return out


def stats_stall(root, db, emperors, records, row_cfg, host_of, rows):
    """After the request loops /proc/net/tcp holds tens of thousands of TIME_WAIT rows. One stats request on
    h2 then, and a config UPDATE of a vassal on h2 committed 50 ms into it, against the same UPDATE alone."""
    i = [j for j in range(rows) if host_of(j) == 2][2]

    def update(version):
        seen = len([r for r in common.read_records(records[2]) if r.get("names") == f"v{i}"])
        cfg = row_cfg(i, 2).replace(f"--name v{i}-h2", f"--name v{i}-h2-{version}")
        t = db.commit(f"UPDATE vassals SET config = {dollar(cfg)} WHERE name = 'v{i}.ini'")
        got = common.wait_for(
            lambda: [r for r in common.read_records(records[2]) if r.get("names") == f"v{i}"][seen:], 120,
            f"v{i}.ini's new process", interval=0.002)
        return got[0]["t_ns"] - t

    h2 = emperors[2]

    def reload_done(n):
        # The overlapping reload is over once the old instance has exited: a DELETE before that would hit the
        # emperor bug the report describes (the old instance outlives its vassal).
        h2.wait_log_count(f"[v{i}.ini] the old instance (pid", n, 30)

    alone = update(2)
    reload_done(1)
    rows_now = tcp_rows()
    took = []
    reader = threading.Thread(
        target=lambda: took.append(stats_latency(os.path.join(root, "h2", "stats.sock"), 1, timeout=120)))
    reader.start()
    time.sleep(0.05)
    during = update(3)
    reader.join()
    reload_done(2)
    times, _, count = took[0]
    return {"rows": rows_now, "stats": times[0], "vassals": count, "alone": alone, "during": during}


def phase_fleet(args, ctx, phases):
    """Parts 2 and 3: three emperors on one table, routes in Redis, the front and nginx."""
    root, pg_port, stack = ctx["root"], ctx["pg_port"], ctx["stack"]
    rows = args.rows
    out = {}
    new_database(pg_port, "fleet")
    db = PgConn(pg_port, "fleet")
    redis, redis_port = start_redis(stack, root)
    url = f"redis://127.0.0.1:{redis_port}/0"
    fdir = os.path.join(root, "front")
    os.makedirs(fdir)
    map_path = os.path.join(fdir, "routes.conf")
    nginx_base, nginx_port, ndir = configure_nginx(root, map_path)
    front = stack.add(Daemon(
        "emperor front",
        [common.EMPEROR, "front", "--redis", url, "--nginx-map", map_path,
         "--nginx-reload", common.quote(*nginx_base, "-s", "reload")],
        os.path.join(fdir, "daemon.log"), fdir,
    ))
    common.wait_for(lambda: front.check() or os.path.exists(map_path), 30, "the front's first map")
    nginx = stack.add(Daemon("nginx", nginx_base, os.path.join(ndir, "nginx.out"), ndir, grace=10))

    def nginx_404():
        nginx.check()
        try:
            return http_get(nginx_port, "nobody.test", timeout=2)[0] == 404
        except OSError:
            return False

    common.wait_for(nginx_404, 30, "nginx to answer 404 for an unknown host", interval=0.05)
    r = Resp(redis_port)
    common.wait_for(lambda: "K" in (r.cmd("CONFIG", "GET", "notify-keyspace-events") or ["", ""])[1], 30,
                    "the front to switch keyspace notifications on", interval=0.05)
    r.close()
    watch = KeyWatch(redis_port)
    ctx["watch"] = watch

    hosts = (2, 3, 4)
    emperors = {}
    for h in hosts:
        d = os.path.join(root, f"h{h}")
        os.makedirs(d)
        query = (f"SELECT name, config, EXTRACT(epoch FROM ts), uid, gid, host IS DISTINCT FROM 'h{h}' "
                 f"FROM vassals WHERE host = 'h{h}' OR prev_host = 'h{h}'")
        emperors[h] = start_emperor(
            stack, args, root, f"h{h}", pg_source(pg_port, "fleet", query),
            ["--emperor-run-dir", os.path.join(d, "run"), "--routes-redis", url, "--routes-address",
             f"127.0.0.{h}", "--emperor-stats", os.path.join(d, "stats.sock")],
            batch="fleet",
        )
    for e in emperors.values():
        e.wait_log("vassals from postgresql://", 30)
    rss_before = {h: vm_rss_kib(e.pid) for h, e in emperors.items()}
    base = port_base(rows)
    records = {h: os.path.join(root, f"h{h}", "records.log") for h in hosts}

    def host_of(i):
        return hosts[i % 3]

    def row_cfg(i, h):
        text = (f"[emperor]\nsocket = 127.0.0.{h}:{base + i}\ndomains = v{i}.test\n"
                f"exec = {common.quote(common.TESTAPP, '--record', records[h], '--name', f'v{i}-h{h}')}\n")
        return text + ("on-demand = true\n" if args.on_demand else "")

    def check_all():
        for d in (front, nginx, redis, *emperors.values()):
            d.check()

    def starts():
        """{vassal: first start record} over the three hosts."""
        first = {}
        for h in hosts:
            for rec in common.read_records(records[h]):
                first.setdefault(rec.get("names"), rec)
        return first

    # --- 2. rows in one transaction ---
    kind = "on-demand vassals (no process until a connection)" if args.on_demand else "process vassals"
    print(f"2. {rows} rows in one transaction over h2, h3, h4 ({kind}; ports {base}-{base + rows - 1})",
          flush=True)
    values = ",\n".join(f"('v{i}.ini', {dollar(row_cfg(i, host_of(i)))}, 'h{host_of(i)}')" for i in range(rows))
    t0 = db.commit(f"BEGIN; INSERT INTO vassals (name, config, host) VALUES {values}; COMMIT")
    t_sent = db.sent_ns
    t_keys = t_map = t_procs = None
    map_seen = None
    last_print = 0
    deadline = time.monotonic() + 300
    while t_keys is None or t_map is None or (t_procs is None and not args.on_demand):
        check_all()
        if t_keys is None:
            t_keys = watch.when(lambda n: n >= rows, t_sent)
        if t_map is None:
            mtime, domains = read_map(map_path)
            if mtime != map_seen:
                map_seen = mtime
                if len(domains) >= rows:
                    t_map = mtime
        now = time.monotonic()
        if now - last_print > 0.25:
            last_print = now
            if t_procs is None and not args.on_demand:
                first = starts()
                if len(first) >= rows:
                    t_procs = max(rec["t_ns"] for rec in first.values())
            n_procs = "-" if args.on_demand else len(starts()) if t_procs is None else rows
            print(f"\r  +{(time.time_ns() - t0) / 1e9:5.1f} s: {n_procs} started, {watch.count()} keys,"
                  f" map {len(read_map(map_path)[1])} domains", end="", flush=True)
        if now > deadline:
            raise TimeoutError("the fleet did not converge within 300 s")
        time.sleep(0.01)
    print()
    conv = {"statement": t0 - t_sent, "keys": t_keys - t0, "map": t_map - t0, "procs": (t_procs - t0) if t_procs else None,
            "render": t_map - t_keys}
    # Each host's share: its last key and its last start.
    conv["host_keys"] = {h: watch.last_set(f"@127.0.0.{h}") - t0 for h in hosts}
    if not args.on_demand:
        first = starts()
        conv["host_procs"] = {h: max(r["t_ns"] for r in first.values() if r["names"] and
                                     int(r["names"][1:]) % 3 == hosts.index(h)) - t0 for h in hosts}
    # The front logs a write just after its rename: wait for the line of the complete map, then for the
    # reload it asked for.
    common.wait_for(lambda: any(f"({rows} host(s)" in line for _, line in log_lines(front, "nginx map: wrote", t_sent)),
                    10, "the front's log line for the complete map", interval=0.02)
    writes = log_lines(front, "nginx map: wrote", t_sent)
    conv["front_writes"] = [(t - t0, line.split(" (", 1)[1][:-1]) for t, line in writes]
    conv["front_log_render"] = writes[-1][0] - t_keys
    common.wait_for(lambda: log_lines(front, "nginx map: ran", writes[-1][0]), 30, "nginx's reload")
    conv["front_reloads"] = len(log_lines(front, "nginx map: ran", t_sent))
    conv["stats"] = {}
    conv["tcp_rows"] = tcp_rows()
    for h in hosts:
        times, size, count = stats_latency(os.path.join(root, f"h{h}", "stats.sock"), 20)
        conv["stats"][h] = (statistics.median(times), max(times), size, count)
    # nginx's old workers get a moment to finish.
    time.sleep(1)
    # Every domain once through nginx.
    t_sweep = time.monotonic()
    misses = []
    for i in range(rows):
        try:
            code, body = http_get(nginx_port, f"v{i}.test")
            if code != 200 or not body.startswith(f"hello from v{i}-h{host_of(i)} "):
                misses.append(i)
        except OSError:
            misses.append(i)
    conv["sweep"] = (rows - len(misses), time.monotonic() - t_sweep)
    again = []
    for i in misses:
        try:
            code, body = http_get(nginx_port, f"v{i}.test")
            if code != 200:
                again.append(i)
        except OSError:
            again.append(i)
    conv["sweep_retry_failed"] = again
    conv["rss_before"] = rss_before
    conv["rss"] = {h: vm_rss_kib(e.pid) for h, e in emperors.items()}
    conv["rss_front"] = vm_rss_kib(front.pid)
    live = [rec["pid"] for rec in starts().values() if os.path.exists(f"/proc/{rec['pid']}")]
    conv["rss_vassals"] = (len(live), sum(vm_rss_kib(pid) for pid in live if os.path.exists(f"/proc/{pid}")))
    out["fleet"] = conv

    # --- 3. moves under load ---
    if "move" in phases:
        out["move"] = phase_move(args, ctx, db, emperors, nginx_port, records, row_cfg, host_of)
        out["stats_after_load"] = stats_stall(root, db, emperors, records, row_cfg, host_of, args.rows)

    # --- 2, end: every row deleted ---
    pids = {rec["pid"] for h in hosts for rec in common.read_records(records[h])}
    print("2. every row deleted in one transaction", flush=True)
    t0 = db.commit("DELETE FROM vassals")
    t_sent = db.sent_ns
    t_keys = t_map = t_gone = None
    deadline = time.monotonic() + 120
    while t_keys is None or t_map is None or t_gone is None:
        check_all()
        if t_keys is None:
            t_keys = watch.when(lambda n: n == 0, t_sent)
        if t_map is None:
            mtime, domains = read_map(map_path)
            if not domains and mtime and mtime > t_sent:
                t_map = mtime
        if t_gone is None:
            pids = {pid for pid in pids if os.path.exists(f"/proc/{pid}")}
            if len(pids) <= 5:  # a few left: are they still ours (and not a reused pid)?
                pids = {pid for pid in pids if root in (common.cmdline(pid) or "")}
            if not pids:
                t_gone = time.time_ns()
        if t_keys is not None and t_map is not None and t_gone is None and time.monotonic() > deadline - 90:
            break  # 30 s: vassal processes outlived their rows; reported below
        if time.monotonic() > deadline:
            raise TimeoutError("the fleet's routes did not go within 120 s")
        time.sleep(0.01)
    outlived = sorted(f"{pid} ({common.cmdline(pid)})" for pid in pids if root in (common.cmdline(pid) or ""))
    # Each vassal's actor logs its end just after its process is reaped: wait for every line.
    def removed_lines():
        return [t for e in emperors.values() for t, _ in log_lines(e, "] removed (its row is gone", t_sent)]

    try:
        common.wait_for(lambda: len(removed_lines()) >= rows, 30, "a 'removed' line for every row", interval=0.1)
    except TimeoutError:
        pass
    removed = removed_lines()
    out["delete"] = {"statement": t0 - t_sent, "keys": t_keys - t0, "map": t_map - t0,
                     "gone": (t_gone - t0) if t_gone else None, "outlived": outlived,
                     "removed_log": (max(removed) - t0) if removed else None, "removed_n": len(removed),
                     "rss": {h: vm_rss_kib(e.pid) for h, e in emperors.items()}}
    db.close()
    watch.close()
    return out


# --- main ------------------------------------------------------------------------------------------------------


def main():
    p_ = common.arg_parser(__doc__)
    p_.add_argument("--rounds", type=int, default=30, help="inserts and config updates per emperor (default 30)")
    p_.add_argument("--rows", type=int, default=1000, help="rows over the three hosts (default 1000)")
    p_.add_argument("--on-demand", action="store_true",
                    help="the fleet's vassals are on-demand (sockets bound, no process until a connection)")
    p_.add_argument("--threads", type=int, default=3, help="client threads of the move's request loop")
    p_.add_argument("--load-seconds", type=float, default=10, help="duration of each request loop (default 10)")
    p_.add_argument("--phases", default="reaction,fleet,move", help="a subset of reaction,fleet,move")
    p_.add_argument("--no-uwsgi", action="store_true", help="skip uWSGI's emperor in the reaction phase")
    args = common.parse_args(p_)
    phases = set(args.phases.split(","))
    if phases - {"reaction", "fleet", "move"}:
        sys.exit(f"unknown phase(s): {', '.join(sorted(phases - {'reaction', 'fleet', 'move'}))}")
    if os.geteuid() != 0:
        sys.exit("the bench runs PostgreSQL as the postgres OS user and binds 127.0.0.2-4: run it as root")
    common.prepare(args)
    t_start = time.monotonic()
    root = tempfile.mkdtemp(prefix="emperor-bench-fleet-")
    os.chmod(root, 0o755)  # postgres (another user) reaches its data directory below it
    stack = Stack()
    ctx = {"root": root, "stack": stack}
    results = {}
    failed = True
    try:
        pg, ctx["pg_port"] = start_postgres(stack, root)
        if "reaction" in phases:
            results["reaction"] = phase_reaction(args, ctx)
        if phases & {"fleet", "move"}:
            results.update(phase_fleet(args, ctx, phases))
        failed = False
    finally:
        stack.close()
        left = stack.leftovers([root])
        if left:
            print(f"LEFT RUNNING after the stop (now killed): {len(left)}", file=sys.stderr)
            for line in left[:20]:
                print(f"  {line}", file=sys.stderr)
        else:
            print(f"everything the bench started is gone ({len(stack.everything)} daemons and what ran under them)")
        if failed or args.keep:
            print(f"kept {root} (logs of every daemon)", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    report(args, results, ctx)
    report_fleet(args, results)
    print(f"\ntotal run time {time.monotonic() - t_start:.0f} s")


if __name__ == "__main__":
    common.run_main(main)
