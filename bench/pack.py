#!/usr/bin/env python3
"""`emperor pack` against debootstrap: Debian's nginx as a FROM scratch image of the binary, the libraries its loader
maps and its config, against a debootstrap (minbase) image with the same nginx package installed: image size, and
cold start as an on-demand Docker vassal, side by side in one run.

The two images:

packed   `emperor pack` of the host's /usr/sbin/nginx, --add the bench's config and page and /etc/nginx/mime.types,
         --mkdir /run and /var/lib/nginx (Debian's built-in pid and temp paths)
deboot   `debootstrap --variant=minbase bookworm` from Debian's mirror, then `apt-get install nginx-light` at the
         host's exact version (bookworm-security added), apt's caches and lists removed; the same config and page
         added; `docker import`ed. The rootfs is made once and kept as a tarball in --cache-dir (default
         /var/tmp/emperor-bench-debootstrap; about 25 s and 40 MB of downloads the first time; needs root and the
         debootstrap package); the bench checks that its /usr/sbin/nginx is byte for byte the host's.

Both run `nginx -c <conf> -g 'daemon off;'`, one worker, serving a static page on the unix socket they inherit
through NGINX=3; (network none). Each of `--boots` (10) boots starts a fresh emperor with both vassals on-demand;
their containers are created ahead of time (docker-precreate, the default), so a first request waits for
`docker start`, the shim's hand-over and nginx's start. When both wait for their first connection, the bench makes
one GET on each, in an order that alternates boot by boot, timing connect to the end of the answer on the client's
clock; then it stops the emperor (which removes the containers). It prints each image's size as the daemon counts
it and its number of files, the median and p95 of each variant's first request, and the ratios deboot/packed.

    python3 bench/pack.py [--boots 10] [--cache-dir DIR] [--rebuild-debootstrap] [--mirror URL] [--no-build] [--keep]

Network rule: unix sockets only; containers run with network none. Both images carry the label emperor.bench=<pid>
and are removed at the end (also on an error or Ctrl-C), as is every container of the run.
"""

import io
import json
import os
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time

import common
import docker_common as dc

VARIANTS = ("packed", "deboot")
SUITE = "bookworm"
NGINX = "/usr/sbin/nginx"


def host_nginx_version():
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "nginx"], capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout:
        raise RuntimeError("Debian's nginx package is not installed (scripts/setup installs nginx-light)")
    return out.stdout.strip()


def debootstrap_tarball(args, version):
    """The cached minbase rootfs with nginx-light at `version`, made if missing."""
    os.makedirs(args.cache_dir, exist_ok=True)
    path = os.path.join(args.cache_dir, f"{SUITE}-minbase-nginx-light-{version}.tar")
    if os.path.exists(path) and not args.rebuild_debootstrap:
        print(f"debootstrap rootfs: {path} (cached)", flush=True)
        return path
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is missing: apt-get install -y debootstrap")
    if os.geteuid() != 0:
        raise RuntimeError("debootstrap needs root")
    work = tempfile.mkdtemp(prefix="rootfs-", dir=args.cache_dir)
    root = os.path.join(work, "root")
    try:
        t0 = time.monotonic()
        print(f"debootstrap --variant=minbase {SUITE} from {args.mirror} ...", flush=True)
        quiet(["debootstrap", "--variant=minbase", SUITE, root, args.mirror], timeout=1800)
        t_base = time.monotonic() - t0
        with open(os.path.join(root, "etc/apt/sources.list"), "w") as f:
            f.write(f"deb {args.mirror} {SUITE} main\n"
                    f"deb {args.mirror.rstrip('/')}-security {SUITE}-security main\n")
        policy = os.path.join(root, "usr/sbin/policy-rc.d")  # no service starts inside the chroot
        with open(policy, "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod(policy, 0o755)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        chroot = ["chroot", root]
        quiet(chroot + ["apt-get", "update", "-q"], env=env, timeout=600)
        quiet(chroot + ["apt-get", "install", "-y", "-q", "--no-install-recommends", f"nginx-light={version}",
                        f"nginx={version}"], env=env, timeout=900)
        quiet(chroot + ["apt-get", "clean"], env=env, timeout=60)
        os.remove(policy)
        shutil.rmtree(os.path.join(root, "var/lib/apt/lists"))
        os.mkdir(os.path.join(root, "var/lib/apt/lists"))
        print(f"  debootstrap {t_base:.0f} s, nginx-light {time.monotonic() - t0 - t_base:.0f} s", flush=True)
        subprocess.run(["tar", "--numeric-owner", "-C", root, "-cf", path + ".part", "."], check=True, timeout=600)
        os.rename(path + ".part", path)
        return path
    finally:
        subprocess.run(["rm", "-rf", work], check=False)


def quiet(argv, **kw):
    """Runs argv with its output captured; a failure raises with the output's tail."""
    out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, **kw)
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).splitlines()[-15:])
        raise RuntimeError(f"`{' '.join(argv)}` failed ({out.returncode}):\n{tail}")


def same_nginx(tarball):
    """Whether the rootfs's /usr/sbin/nginx is the host's, byte for byte."""
    with tarfile.open(tarball) as t:
        member = t.extractfile("./usr/sbin/nginx")
        data = member.read() if member else b""
    with open(NGINX, "rb") as f:
        return data == f.read()


def site(d):
    """The bench's nginx configs (one per variant, each listening on its own socket) and page, under `d`."""
    os.chmod(d, 0o755)  # nobody (nginx's workers) must reach the page
    for sub in ("conf", "html", "sock"):
        os.makedirs(os.path.join(d, sub), mode=0o755, exist_ok=True)
    with open(os.path.join(d, "html", "index.html"), "w") as f:
        f.write("hello from nginx\n")
    for v in VARIANTS:
        with open(os.path.join(d, "conf", f"{v}.conf"), "w") as f:
            f.write("worker_processes 1;\nerror_log stderr warn;\nevents { worker_connections 64; }\n"
                    "http {\n  access_log off;\n  include /etc/nginx/mime.types;\n"
                    f"  server {{ listen unix:{sock(d, v)}; root {d}/html; }}\n}}\n")


def sock(d, variant):
    return os.path.join(d, "sock", f"{variant}.sock")


def command(d, variant):
    return [NGINX, "-c", os.path.join(d, "conf", f"{variant}.conf"), "-g", "daemon off;"]


def pack_image(d, tag, label):
    argv = [common.EMPEROR, "pack", "--tag", tag, "--label", label,
            "--add", os.path.join(d, "conf"), "--add", os.path.join(d, "html"), "--add", "/etc/nginx/mime.types",
            "--mkdir", "/run", "--mkdir", "/var/lib/nginx", *command(d, "packed")]
    t0 = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"emperor pack failed: {out.stderr.strip()}")
    print(f"  {out.stdout.strip()} in {time.monotonic() - t0:.2f} s", flush=True)


def deboot_image(d, tag, label, tarball):
    """Imports the cached rootfs plus the bench's site (same paths as in the packed image)."""
    changes = [f"CMD {json.dumps(command(d, 'deboot'))}", f"LABEL {label}"]
    argv = ["docker", "import"] + [a for c in changes for a in ("--change", c)] + ["-", tag]
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with tarfile.open(fileobj=p.stdin, mode="w|") as out, tarfile.open(tarball) as base:
        have = set()
        for m in base:
            out.addfile(m, base.extractfile(m) if m.isfile() else None)
            have.add(os.path.normpath(m.name))
        at, parents = d, []  # the bench dir and its parents first, as on the host
        while at != "/":
            parents.append(at)
            at = os.path.dirname(at)
        for at in reversed(parents):
            if at.lstrip("/") not in have:  # /tmp is there already
                out.add(at, recursive=False)
        for sub in ("conf", "html", "sock"):
            for root, _, files in os.walk(os.path.join(d, sub)):
                out.add(root, recursive=False)
                for f in files:
                    out.add(os.path.join(root, f))
    p.stdin.close()
    stdout, stderr = p.stdout.read(), p.stderr.read()
    p.wait(timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"docker import failed: {stderr.decode().strip()}")
    print(f"  imported {tag} ({stdout.decode().strip()[:19]}) in {time.monotonic() - t0:.2f} s", flush=True)


def image_facts(tag):
    status, body = dc.docker_api("GET", f"/images/{tag}/json")
    if status != 200:
        raise RuntimeError(f"image {tag}: inspect answered {status}")
    return body["Size"]


def count_files(tag, label):
    """Regular files and symlinks in the image, from an export of a created (never started) container."""
    cid = subprocess.run(["docker", "create", "--label", label, tag], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        tar = subprocess.run(["docker", "export", cid], capture_output=True, check=True, timeout=300).stdout
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            return sum(1 for m in t if m.isfile() or m.issym())
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=False)


def vassal_text(d, tag, variant):
    return ("[emperor]\n"
            f"docker-image = {tag}\n"
            "docker-network-mode = none\n"
            "on-demand = true\n"
            f"socket = {sock(d, variant)}\n"
            "stop-signal = SIGQUIT\n")


def ready(run, variant):
    run.check_alive()
    with open(run.log_path, errors="replace") as f:
        if f"[{variant}.ini] on demand: waiting for a connection" not in f.read():
            return False
    cs = dc.containers(run.label, [f"emperor.vassal={variant}.ini"])
    return bool(cs) and cs[0].get("State") == "created"


def boot(args, d, tags, i, results):
    with dc.DockerRun("pack", keep=args.keep) as run:
        for v in VARIANTS:
            dc.drop(os.path.join(run.vassals, f"{v}.ini"), vassal_text(d, tags[v], v))
        run.start(run.emperor_argv(args.emperor_arg), log="info")
        common.wait_for(lambda: all(ready(run, v) for v in VARIANTS), 120, "both vassals waiting, containers created",
                        interval=0.01)
        time.sleep(0.3)
        line = []
        for v in (VARIANTS if i % 2 == 0 else VARIANTS[::-1]):
            t0 = time.monotonic()
            if not dc.get_unix(sock(d, v), timeout=60):
                raise RuntimeError(f"boot {i + 1}: {v} did not answer 200 (see {run.log_path})")
            ms = (time.monotonic() - t0) * 1000
            results[v].append(ms)
            line.append(f"{v} {ms:.1f}")
            time.sleep(0.2)
        print(f"  boot {i + 1}/{args.boots}: " + ", ".join(line) + " ms", flush=True)


def fmt(values):
    return (f"p50 {common.percentile(values, 50):7.1f}  p95 {common.percentile(values, 95):7.1f}  "
            f"min {min(values):6.1f}  max {max(values):7.1f}  (n={len(values)})")


def remove_images(tags):
    for tag in tags.values():
        dc.docker_api("DELETE", f"/images/{tag}?force=1")


def main():
    p = common.arg_parser(__doc__)
    p.add_argument("--boots", type=int, default=10, help="emperor boots, one first request per variant each (10)")
    p.add_argument("--cache-dir", default="/var/tmp/emperor-bench-debootstrap", help="where the rootfs is kept")
    p.add_argument("--rebuild-debootstrap", action="store_true", help="make the debootstrap rootfs again")
    p.add_argument("--mirror", default="http://deb.debian.org/debian", help="Debian mirror for debootstrap")
    args = common.parse_args(p, docker=True)
    common.prepare(args)
    version = host_nginx_version()
    tarball = debootstrap_tarball(args, version)
    if not same_nginx(tarball):
        raise RuntimeError(f"{tarball}'s /usr/sbin/nginx differs from the host's: --rebuild-debootstrap")
    label = dc.bench_label()
    tags = {v: f"emperor-bench/nginx-{v}:{os.getpid()}" for v in VARIANTS}
    d = tempfile.mkdtemp(prefix="emperor-bench-pack-")
    results = {v: [] for v in VARIANTS}
    try:
        site(d)
        print(f"nginx {version}; images:", flush=True)
        pack_image(d, tags["packed"], label)
        deboot_image(d, tags["deboot"], label, tarball)
        sizes = {v: image_facts(tags[v]) for v in VARIANTS}
        files = {v: count_files(tags[v], label) for v in VARIANTS}
        print(f"{args.boots} boots, both vassals on-demand in each", flush=True)
        for i in range(args.boots):
            boot(args, d, tags, i, results)
    finally:
        dc.sweep(label, quiet=True)
        remove_images(tags)
        if args.keep:
            print(f"kept {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)
    print()
    print("=" * 100)
    print(f"IMAGE SIZE (the daemon's Size) and files (regular files and symlinks), nginx {version}:")
    for v in VARIANTS:
        print(f"  {v:<8} {sizes[v] / 1e6:8.1f} MB  {files[v]:6d} files")
    print(f"  deboot/packed: size {sizes['deboot'] / sizes['packed']:.1f}x, files {files['deboot'] / files['packed']:.0f}x")
    print("FIRST REQUEST, ON-DEMAND COLD START (ms, connect to the end of the answer, unix socket):")
    for v in VARIANTS:
        print(f"  {v:<8} {fmt(results[v])}")
    print(f"  deboot/packed ratio of the medians "
          f"{statistics.median(results['deboot']) / statistics.median(results['packed']):.2f}")


if __name__ == "__main__":
    common.run_main(main)
