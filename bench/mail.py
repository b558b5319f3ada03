#!/usr/bin/env python3
"""SMTP first login through nginx's mail proxy: a stopped (on-demand) tenant against a running one.

One emperor with --mail-auth and two mail tenants, each tests/mail_vassal.py (Debian's aiosmtpd) on a TCP socket
of its own: `cold` (on-demand = true, idle = 1: stopped again about a second after each session) and `warm`
(always running). Debian's nginx with its mail module runs the README's `mail {}` block (its own ports and
auth_http address) on 127.0.0.1. Each of `--logins` (30) rounds, in alternating order: wait until `cold` waits for
a connection (the emperor's log: at start-up, then its process's exit after each idle stop, plus 0.1 s), then one
session per tenant: connect to nginx's submission port, greeting, EHLO, `AUTH PLAIN user@<tenant>.test` -> 235.
The figure is connect -> 235 on the client's clock, which for `cold` includes nginx asking the emperor, connecting
to the bound socket, the vassal's start (python3 + aiosmtpd) and nginx replaying the login to it. It prints median
and p95 of each, their ratios, and the failed logins (goal: none).

    python3 bench/mail.py [--logins 30] [--no-build] [--keep]

Network rule: everything is on 127.0.0.1. The vassal script is copied into the temp dir, so that the clean-up
recognises its processes by their command line.
"""

import base64
import os
import shutil
import smtplib
import socket
import time

import common
import docker_common as dc

PYTHON = "/usr/bin/python3"  # Debian's, which has Debian's aiosmtpd
MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"
SCRIPT = os.path.join(common.REPO, "tests", "mail_vassal.py")
TENANTS = ("cold", "warm")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readme_mail_block():
    """The README's documented mail block, as tests/cases/mail.rs takes it."""
    with open(os.path.join(common.REPO, "README.md")) as f:
        section = f.read().split("\n## Mail tenants through nginx's mail proxy\n")[1]
    return section.split("```nginx\n")[1].split("```")[0]


def nginx_body(auth_port, submission):
    """The README block with its own auth_http address and listen ports (submission on `submission`)."""
    body = readme_mail_block().replace("auth_http 127.0.0.1:8025/;", f"auth_http 127.0.0.1:{auth_port}/;")
    for port in ("587", "25", "143", "110"):
        ours = submission if port == "587" else free_port()
        body = body.replace(f"listen {port};", f"listen 127.0.0.1:{ours};")
    return body


def vassal(name, port, script, extra=""):
    return (f"[emperor]\nsocket = name=smtp,127.0.0.1:{port}\ndomains = {name}.test\n{extra}"
            f"exec = {common.quote(PYTHON, script, name)}\n")


def login_ms(port, tenant):
    """One session through nginx: connect -> 235 in ms, or None if the login failed."""
    plain = base64.b64encode(f"\0user@{tenant}.test\0secret".encode()).decode()
    t0 = time.perf_counter()
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.ehlo("bench.test")
            code, _ = s.docmd("AUTH", f"PLAIN {plain}")
            dt = (time.perf_counter() - t0) * 1000
            return dt if code == 235 else None
    except (OSError, smtplib.SMTPException):
        return None


def log_count(run, text):
    with open(run.log_path, errors="replace") as f:
        return f.read().count(text)


def fmt(values):
    if not values:
        return "n/a"
    return (f"p50 {common.percentile(values, 50):7.1f}  p95 {common.percentile(values, 95):7.1f}  "
            f"min {min(values):6.1f}  max {max(values):7.1f}  (n={len(values)})")


def main():
    p = common.arg_parser(__doc__)
    p.add_argument("--logins", type=int, default=30, help="rounds: one login to each tenant (default 30)")
    args = common.parse_args(p)
    for path, package in ((MAIL_MODULE, "libnginx-mod-mail"), (PYTHON, "python3"), (dc.NGINX, "nginx-light")):
        if not os.path.exists(path):
            raise SystemExit(f"{path} is missing: scripts/setup installs {package}")
    common.prepare(args)
    with common.Run("mail", keep=args.keep) as run:
        script = os.path.join(run.dir, "mail_vassal.py")
        shutil.copy(SCRIPT, script)
        auth, submission = free_port(), free_port()
        with open(os.path.join(run.vassals, "cold.ini"), "w") as f:
            f.write(vassal("cold", free_port(), script, "on-demand = true\nidle = 1\n"))
        with open(os.path.join(run.vassals, "warm.ini"), "w") as f:
            f.write(vassal("warm", free_port(), script))
        run.start(run.emperor_argv(["--mail-auth", f"127.0.0.1:{auth}", *args.emperor_arg]), log="info")
        run.wait_log("[cold.ini] on demand: waiting for a connection", 30, "cold.ini to wait for a connection")
        nginx = dc.Nginx(os.path.join(run.dir, "nginx"), None, top=f"load_module {MAIL_MODULE};\n",
                         body=nginx_body(auth, submission))
        try:
            common.wait_for(lambda: run.check_alive() or login_ms(submission, "warm"), 30,
                            "a first login to warm (nginx up, warm running)", interval=0.1)
            times = {t: [] for t in TENANTS}
            failed = {t: 0 for t in TENANTS}
            print(f"{args.logins} rounds: one login to each tenant, cold first in even rounds", flush=True)
            for i in range(args.logins):
                run.check_alive()
                # cold waits again once its process of the last round has exited (idle stop).
                common.wait_for(lambda: log_count(run, "[cold.ini] exited") >= i, 60,
                                f"cold.ini to stop again (round {i + 1})", interval=0.01)
                time.sleep(0.1)
                for tenant in (TENANTS if i % 2 == 0 else TENANTS[::-1]):
                    ms = login_ms(submission, tenant)
                    if ms is None:
                        failed[tenant] += 1
                    else:
                        times[tenant].append(ms)
                print(f"  round {i + 1}/{args.logins}: cold {times['cold'][-1] if times['cold'] else 0:.1f} ms, "
                      f"warm {times['warm'][-1] if times['warm'] else 0:.1f} ms", flush=True)
            starts = log_count(run, "[cold.ini] spawned pid")
            errors = [line for line in nginx.error_lines() if "[error]" in line or "[crit]" in line]
        finally:
            nginx.stop()
    cold, warm = times["cold"], times["warm"]
    print()
    print("=" * 100)
    print("SMTP login through nginx's mail proxy, connect -> 235 (ms, client clock), rounds alternating:")
    print(f"  stopped tenant (on-demand, started by the login)  {fmt(cold)}")
    print(f"  running tenant                                    {fmt(warm)}")
    if cold and warm:
        print(f"  ratio stopped / running: p50 {common.percentile(cold, 50) / common.percentile(warm, 50):.1f}, "
              f"p95 {common.percentile(cold, 95) / common.percentile(warm, 95):.1f}")
    print(f"  failed logins: cold {failed['cold']}, warm {failed['warm']} (goal: 0); cold.ini started {starts} times "
          f"for {args.logins} rounds; nginx errors: {len(errors)}")
    for line in errors[:5]:
        print(f"    {line}")


if __name__ == "__main__":
    common.run_main(main)
