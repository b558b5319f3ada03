#!/usr/bin/env python3
"""A tiny HTTP app for emperor (Python 3 standard library only).

It binds nothing itself: it serves on the listening sockets it inherits, systemd-style
(fd 3, 4, ... with LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES), unix or TCP alike, and
answers every GET with "Hello from <socket name> (pid N, reloads R)": R counts the in-place
reloads of this process, so a `touch` of its vassal file shows as R going up with the same pid.

Under an emperor that sets UWSGI_EMPEROR_FD it also speaks the uWSGI emperor protocol,
one byte at a time: it sends 1 (ready) and 5 (accepting) once it serves, 17 (loyal)
after its first request; it reloads in place (re-executes itself, keeping its pid and
sockets) when it reads 1, and exits when it reads 0 (stop), 2 (graceful stop) or EOF.
SIGTERM and SIGINT stop it cleanly too.

    [emperor]
    socket = name=web,127.0.0.1:8001
    exec = python3 examples/apps/hello.py
"""

import http.server
import os
import signal
import socket
import sys
import threading

SD_LISTEN_FDS_START = 3
READY, ACCEPTING, LOYAL = 1, 5, 17  # vassal -> emperor
STOP, RELOAD, GRACEFUL_STOP = 0, 1, 2  # emperor -> vassal

stop = threading.Event()
RELOADS = int(os.environ.get("HELLO_RELOADS", "0"))  # in-place reloads so far (kept across the re-exec)
emperor_fd = int(os.environ["UWSGI_EMPEROR_FD"]) if "UWSGI_EMPEROR_FD" in os.environ else None
first_request = threading.Lock()  # taken for good by the first request, which says "loyal"


def tell_emperor(byte):
    if emperor_fd is not None:
        os.write(emperor_fd, bytes([byte]))


def listen_emperor():
    """Reads the emperor's messages: stop, graceful stop or EOF stop us; reload re-executes us."""
    while True:
        try:
            msg = os.read(emperor_fd, 1)
        except OSError:
            msg = b""
        if not msg or msg[0] in (STOP, GRACEFUL_STOP):
            stop.set()
            return
        if msg[0] == RELOAD:
            reload()
        # Anything else is ignored by this minimal example.


def reload():
    """Reloads in place, as uWSGI does: exec ourselves again with the same pid, sockets and
    emperor fd (so LISTEN_PID stays right), then say "accepting" again, which ends the reload."""
    print("reloading", flush=True)
    os.environ["HELLO_RELOADS"] = str(RELOADS + 1)
    for fd in [emperor_fd, *range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(os.environ["LISTEN_FDS"]))]:
        os.set_inheritable(fd, True)
    os.execv(sys.executable, [sys.executable, *sys.argv])


def inherited_sockets():
    """Returns [(name, socket)] for the fds passed with LISTEN_FDS, if they are for us."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit("hello.py: no sockets passed (LISTEN_PID is not my pid); run me under emperor")
    count = int(os.environ.get("LISTEN_FDS", "0"))
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    result = []
    for i in range(count):
        name = names[i] if i < len(names) and names[i] else "unknown"
        # socket.socket(fileno=...) finds out the family (AF_UNIX, AF_INET, ...) itself.
        # Leave its O_NONBLOCK flag alone: the emperor shares the open file description.
        result.append((name, socket.socket(fileno=SD_LISTEN_FDS_START + i)))
    return result


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"Hello from {self.server.name} (pid {os.getpid()}, reloads {RELOADS})\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if first_request.acquire(blocking=False):
            tell_emperor(LOYAL)

    def address_string(self):
        # Unix-socket clients have no (host, port) address.
        return self.client_address[0] if self.client_address else "unix"

    def log_message(self, fmt, *args):
        print(f"{self.server.name}: {self.address_string()} {fmt % args}", flush=True)


def serve(name, sock):
    """Starts a thread serving HTTP on an already-listening socket."""
    server = http.server.HTTPServer(sock.getsockname(), Hello, bind_and_activate=False)
    server.socket.close()  # the socket HTTPServer made; use the inherited one instead
    server.socket, server.name = sock, name
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"serving {name} on {sock.getsockname() or 'unnamed socket'}", flush=True)


def main():
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sockets = inherited_sockets()
    if not sockets:
        sys.exit("hello.py: LISTEN_FDS is 0; give me at least one socket")
    for name, sock in sockets:
        serve(name, sock)
    if emperor_fd is not None:
        threading.Thread(target=listen_emperor, daemon=True).start()
        tell_emperor(READY)
        tell_emperor(ACCEPTING)
    stop.wait()
    print("stopping", flush=True)


if __name__ == "__main__":
    main()
