#!/usr/bin/python3
"""A mail tenant's vassal for tests/cases/mail.rs and bench/mail.py: serves the sockets the emperor passes
(systemd's convention: fds from 3, LISTEN_FDS, LISTEN_FDNAMES) and says its name in every answer.

  mail_vassal.py NAME

- SMTP (aiosmtpd, Debian's python3-aiosmtpd) on the socket named `smtp`, else on the first one: AUTH PLAIN
  and LOGIN without TLS, any login with any password except the password `wrong` (refused with
  `535 5.7.8 NAME refuses`, so that a test sees the vassal, not the emperor, check passwords). MAIL FROM
  answers `250 NAME accepts <from> from <login>`, DATA `250 NAME delivered to <rcpts>`.
- POP3 on the socket named `pop3`, if any: USER, PASS (`+OK NAME: <user> logged in`), STAT, QUIT. Just enough
  for nginx's proxy and a client to see who answers.

Prints `NAME: listening pid=N` once serving, and `NAME: <what>` for each login and mail, to stdout (the
emperor's log, prefixed with the vassal's name).
"""

import asyncio
import os
import socket
import sys
import logging

from aiosmtpd.smtp import SMTP, AuthResult

NAME = sys.argv[1] if len(sys.argv) > 1 else "vassal"

# aiosmtpd 1.4 logs a warning about its own deprecated attribute at every AUTH.
logging.getLogger("mail.log").setLevel(logging.ERROR)


def say(what):
    print(f"{NAME}: {what}", flush=True)


def inherited():
    """The sockets the emperor passed, by name (unnamed ones are named after the vassal: first wins)."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit(f"{NAME}: no sockets passed (LISTEN_PID is not this process)")
    count = int(os.environ.get("LISTEN_FDS", "0"))
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    socks = []
    for i in range(count):
        s = socket.socket(fileno=3 + i)
        s.setblocking(False)
        socks.append((names[i] if i < len(names) else "", s))
    if not socks:
        sys.exit(f"{NAME}: LISTEN_FDS is 0")
    return socks


class Handler:
    async def handle_MAIL(self, server, session, envelope, address, options):
        envelope.mail_from = address
        login = session.auth_data.decode() if isinstance(session.auth_data, bytes) else session.auth_data
        say(f"mail from {address} (login {login})")
        return f"250 {NAME} accepts {address} from {login}"

    async def handle_DATA(self, server, session, envelope):
        rcpts = ",".join(envelope.rcpt_tos)
        say(f"delivered to {rcpts}")
        return f"250 {NAME} delivered to {rcpts}"


def authenticate(server, session, envelope, mechanism, data):
    login = data.login.decode(errors="replace")
    if data.password == b"wrong":
        say(f"refused {login}")
        return AuthResult(success=False, handled=False, message=f"535 5.7.8 {NAME} refuses")
    say(f"login {login} ({mechanism})")
    return AuthResult(success=True, auth_data=login)


def smtp_factory():
    return SMTP(
        Handler(),
        hostname=NAME,
        authenticator=authenticate,
        auth_require_tls=False,
        auth_exclude_mechanism=[],
    )


async def pop3(reader, writer):
    user = ""
    writer.write(f"+OK {NAME} POP3 ready\r\n".encode())
    while True:
        line = await reader.readline()
        if not line:
            break
        words = line.decode(errors="replace").strip().split(" ", 1)
        verb, arg = words[0].upper(), (words[1] if len(words) > 1 else "")
        if verb == "USER":
            user = arg
            writer.write(b"+OK\r\n")
        elif verb == "PASS":
            say(f"pop3 login {user}")
            writer.write(f"+OK {NAME}: {user} logged in\r\n".encode())
        elif verb == "STAT":
            writer.write(b"+OK 0 0\r\n")
        elif verb == "QUIT":
            writer.write(f"+OK {NAME} bye\r\n".encode())
            break
        else:
            writer.write(b"-ERR unknown\r\n")
        await writer.drain()
    await writer.drain()
    writer.close()


async def main():
    socks = inherited()
    by_name = dict(reversed(socks))
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(smtp_factory, sock=by_name.get("smtp", socks[0][1]))]
    if "pop3" in by_name:
        servers.append(await asyncio.start_server(pop3, sock=by_name["pop3"]))
    say(f"listening pid={os.getpid()}")
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main())
