#!/usr/bin/env python3
"""Reloading an nginx vassal under load: failed requests with nginx's fast stop (SIGTERM) against its graceful stop
(SIGQUIT), for nginx in a container and as a process, side by side.

Four variants, each its own emperor (temp dir, default log level) with one vassal serving on one unix socket:

docker-sigterm   emperor-test/nginx (scripts/build-images; Debian's nginx FROM scratch, STOPSIGNAL SIGQUIT), network
                 none, with `stop-signal = SIGTERM`: the default of an image that says nothing
docker-image     the same image without `stop-signal`: the container is stopped with the image's STOPSIGNAL
proc-sigterm     Debian's /usr/sbin/nginx as a process vassal, the default stop signal (SIGTERM)
proc-sigquit     the same with `stop-signal = SIGQUIT` (vassals.d/nginx.ini)

nginx serves `/` (a short answer) and `/blob`, a file of `--blob-kib` (256) KiB sent at `limit_rate` `--rate` (128k),
about 2 s per download: a large response or a slow client. Under a constant load, `--quick` (3) threads GET `/` in a
loop and `--slow` (3) threads download `/blob` in a loop; the bench touches the vassal file `--reloads` (5) times, each
once the previous reload is over (the old instance has exited) and 1 s has passed. A touch starts a new nginx beside
the old one, which is stopped once the new one waits for connections. Every variant has `socket-nonblocking = true`. A request fails when it is refused, cut before
its Content-Length, or answered with another status. The bench prints, per variant, the requests served and failed
(short and downloads apart) over the whole run.

Then the stall part (`--stall-trials` 20, 0 skips it), for `socket-nonblocking`: Debian's nginx as a process vassal with
two workers, without and with the key. Each trial starts one download of `/blob`, and 0.3 s later a burst of 30
concurrent short requests; the download counts as stalled when it fails or takes over 1 s longer than its size at
`--rate` allows. nginx never sets O_NONBLOCK on a socket it inherits: on a blocking one, a worker woken for a connection
that the other worker took blocks in accept(), and the download it serves waits for the next connection.

    python3 bench/nginx_reload.py [--reloads 5] [--no-build] [--keep]

Network rule: only unix sockets; containers run with network none and carry the run's --docker-label, swept at the end,
on an error and on Ctrl-C.
"""

import os
import socket
import threading
import time

import common
import docker_common as dc

NGINX_IMAGE = "emperor-test/nginx"
VARIANTS = ("docker-sigterm", "docker-image", "proc-sigterm", "proc-sigquit")


def get(sock, path):
    """One GET; None when it succeeded, else why not."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    try:
        s.connect(sock)
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    finally:
        s.close()
    head, _, body = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        return f"status {head[:40]!r}"
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:") and int(line.split(b":")[1]) != len(body):
            return f"cut after {len(body)} bytes"
    return None


class Load:
    """Threads requesting `path` in a loop until stopped; counts successes and failures."""

    def __init__(self, sock, path, threads):
        self.ok, self.failed, self.errors = 0, 0, []
        self.lock, self.stopping = threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self.loop, args=(sock, path), daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def loop(self, sock, path):
        while not self.stopping.is_set():
            err = get(sock, path)
            with self.lock:
                if err is None:
                    self.ok += 1
                else:
                    self.failed += 1
                    self.errors.append(err)

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(60)


def site(dir_, sock, root, rate):
    """The server block: the socket, `/blob` slowly from `root`, `/` at once."""
    return (
        f"server {{\n    listen unix:{sock};\n"
        f"    location = /blob {{ root {root}; limit_rate {rate}; }}\n"
        '    location / { return 200 "ok $pid\\n"; }\n}\n'
    )


def vassal_text(run, variant, args, workers=1, nonblocking=True):
    """The vassal of `variant` (docker-*, proc-*), with its site, config and /blob in the run's dir."""
    sock = os.path.join(run.dir, "nginx.sock")
    www = os.path.join(run.dir, "www")
    os.makedirs(www, exist_ok=True)
    with open(os.path.join(www, "blob"), "wb") as f:
        f.write(b"x" * (args.blob_kib << 10))
    os.chmod(run.dir, 0o755)
    nb = "socket-nonblocking = true\n" if nonblocking else ""
    if variant.startswith("docker"):
        with open(os.path.join(www, "site.conf"), "w") as f:
            f.write(site(www, sock, "/etc/nginx/sites", args.rate))
        stop = "stop-signal = SIGTERM\n" if variant == "docker-sigterm" else ""
        return (f"[emperor]\ndocker-image = {NGINX_IMAGE}\ndocker-network-mode = none\nsocket = {sock}\n"
                f"docker-mount = {www}:/etc/nginx/sites:ro\n{nb}{stop}")
    conf = os.path.join(run.dir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"master_process on;\nworker_processes {workers};\npid {run.dir}/nginx.pid;\nerror_log stderr notice;\n"
                f"events {{ worker_connections 1024; }}\nhttp {{\n    access_log off;\n"
                f"{site(www, sock, www, args.rate)}}}\n")
    stop = "stop-signal = SIGQUIT\n" if variant == "proc-sigquit" else ""
    return (f"[emperor]\nsocket = {sock}\n{nb}"
            f"exec = {common.quote('/usr/sbin/nginx', '-p', run.dir + '/', '-c', conf, '-g', 'daemon off;')}\n{stop}")


def stalls(args, nonblocking):
    """Trials in which a download stalled: two workers, one download, then a burst of short requests."""
    with dc.DockerRun("nginx-stall", keep=args.keep) as run:
        dc.drop(os.path.join(run.vassals, "nginx.ini"), vassal_text(run, "proc", args, 2, nonblocking))
        sock = os.path.join(run.dir, "nginx.sock")
        run.start(run.emperor_argv(args.emperor_arg), log="info")
        dc.wait_answer(sock, 60)
        expected = (args.blob_kib << 10) / (int(args.rate.rstrip("k")) << 10)
        stalled = 0
        for _ in range(args.stall_trials):
            t0, result = time.monotonic(), []
            download = threading.Thread(target=lambda: result.append(get(sock, "/blob")))
            download.start()
            time.sleep(0.3)
            burst = [threading.Thread(target=get, args=(sock, "/")) for _ in range(30)]
            for t in burst:
                t.start()
            for t in burst:
                t.join()
            download.join()
            if result != [None] or time.monotonic() - t0 > expected + 1:
                stalled += 1
        return stalled


def one_variant(args, variant):
    with dc.DockerRun(f"nginx-{variant}", keep=args.keep) as run:
        vassal = os.path.join(run.vassals, "nginx.ini")
        dc.drop(vassal, vassal_text(run, variant, args))
        sock = os.path.join(run.dir, "nginx.sock")
        run.start(run.emperor_argv(args.emperor_arg), log="info")
        dc.wait_answer(sock, 60)
        quick, slow = Load(sock, "/", args.quick), Load(sock, "/blob", args.slow)
        try:
            time.sleep(1)
            for i in range(args.reloads):
                with open(run.log_path, errors="replace") as f:
                    before = f.read().count("[nginx.ini] the old instance (pid")
                os.utime(vassal)
                common.wait_for(
                    lambda: open(run.log_path, errors="replace").read().count("[nginx.ini] the old instance (pid")
                    > before,
                    60,
                    f"reload {i + 1} to finish",
                    interval=0.02,
                )
                time.sleep(1)
        finally:
            quick.stop()
            slow.stop()
        print(f"  {variant:<15} short: {quick.ok:6d} ok {quick.failed:4d} failed   "
              f"downloads: {slow.ok:4d} ok {slow.failed:4d} failed", flush=True)
        errors = quick.errors + slow.errors
        if errors:
            print(f"  {'':<15} e.g. {', '.join(sorted(set(errors))[:3])}", flush=True)
        return quick.ok, quick.failed, slow.ok, slow.failed


def main():
    p = common.arg_parser(__doc__)
    p.add_argument("--reloads", type=int, default=5, help="touches per variant (5)")
    p.add_argument("--quick", type=int, default=3, help="threads requesting / in a loop (3)")
    p.add_argument("--slow", type=int, default=3, help="threads downloading /blob in a loop (3)")
    p.add_argument("--blob-kib", type=int, default=256, help="size of /blob in KiB (256)")
    p.add_argument("--rate", default="128k", help="nginx limit_rate of /blob, in k (128k)")
    p.add_argument("--stall-trials", type=int, default=20, help="trials of the stall part, each way (20; 0: skip)")
    args = common.parse_args(p, docker=True)
    dc.prepare(args, images=(NGINX_IMAGE,))
    if not os.path.exists(dc.NGINX):
        raise SystemExit(f"{dc.NGINX} is missing: scripts/setup installs nginx-light")
    print(f"{args.reloads} reloads per variant under {args.quick} short-request and {args.slow} download loops "
          f"({args.blob_kib} KiB at {args.rate}/s)", flush=True)
    results = {v: one_variant(args, v) for v in VARIANTS}
    print()
    print("=" * 100)
    print("FAILED REQUESTS ACROSS RELOADS (short / downloads):")
    for v, (qok, qf, sok, sf) in results.items():
        print(f"  {v:<15} {qf:4d} / {sf:4d} failed of {qok + qf:6d} / {sok + sf:4d}")
    if args.stall_trials:
        print(f"STALLED DOWNLOADS (2 workers, a burst of 30 short requests during each of {args.stall_trials} downloads):")
        for nb in (False, True):
            n = stalls(args, nb)
            print(f"  socket-nonblocking = {str(nb).lower():<5}  {n:3d} of {args.stall_trials} stalled", flush=True)


if __name__ == "__main__":
    common.run_main(main)
