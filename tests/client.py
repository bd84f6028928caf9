#!/usr/bin/env python3
"""Lab client for the end-to-end tests: what curl cannot do. Run inside a lab namespace.

Usage::

    client.py http HOST PORT [--count N] [--path /] [--sport P] [--gap S] [--timeout T]
    client.py session HOST PORT [--sport P] [--interval S] [--chunk N] [--timeout T]
    client.py udp HOST PORT [--count N] [--payload TEXT] [--timeout T]
    client.py sweep [--timeout T] < targets

``http``: N sequential HTTP/1.1 GETs, each on its own connection, closed before the next
one opens; prints the first line of each body (a lab backend's name) on its own line.
``--sport`` binds every connection to that source port (reused once the previous
connection is gone). Fails (status 1, the reason on stderr) at the first request that
does not get a ``200`` answer.

``udp``: N request/answer exchanges, each from its own socket (so its own source port:
the sockets stay open until the end); the sockets are connected, so only an answer from
``HOST:PORT`` itself counts. Prints each answer (decoded) on its own line; status 1 and
the reason on stderr at the first datagram left unanswered.

``sweep``: one exchange with each target read from stdin, one ``tcp|udp HOST PORT`` per
line (tcp: an HTTP GET on its own connection; udp: a datagram from its own socket). Prints
one JSON object per target, ``{"target": "tcp HOST PORT", "answer": "server1"}`` or
``{"target": ..., "error": "..."}``, and always exits 0: the caller judges the answers.

``session``: one long-lived TCP connection to an echo server. Every ``--interval`` seconds
(0: only once, at the start: an idle session) it sends ``--chunk`` random bytes and reads
them back, verifying every byte. Closing stdin ends it cleanly (half-close, every byte
still owed read back and verified). One JSON object per line on stdout (flushed)::

    {"event": "connected", "local": "IP:PORT", "peer": "IP:PORT"}
    {"event": "echo", "bytes": N, "rounds": R}        after each verified exchange
    {"event": "closed", "bytes": N, "rounds": R}      stdin closed, clean end: status 0

or, ending the session: ``connect-failed`` (status 2), ``reset`` (RST received, 3),
``timeout`` (an echo not back within ``--timeout``, 4), ``mismatch`` (a byte differs, 5),
``eof`` (the peer closed first, 6). Only the standard library is used.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import select
import socket
import sys
import time
from typing import Any

EXIT_OK, EXIT_CONNECT, EXIT_RESET, EXIT_TIMEOUT, EXIT_MISMATCH, EXIT_EOF = 0, 2, 3, 4, 5, 6
REBIND_WAIT = 3.0  # how long a fixed source port may stay busy (previous connection closing)


class SessionEnd(Exception):
    def __init__(self, event: str, status: int, detail: str = "") -> None:
        super().__init__(event)
        self.event = event
        self.status = status
        self.detail = detail


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def connect(host: str, port: int, sport: int | None, timeout: float) -> socket.socket:
    """A connected TCP socket, from ``sport`` when given (waiting while it is still busy)."""
    deadline = time.monotonic() + REBIND_WAIT
    while True:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            if sport is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("0.0.0.0", sport))
            sock.connect((host, port))
            return sock
        except OSError as exc:
            sock.close()
            busy = exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL)
            if sport is None or not busy or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def http_once(host: str, port: int, path: str, sport: int | None, timeout: float) -> str:
    sock = connect(host, port, sport, timeout)
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     "Connection: close\r\n\r\n".encode())
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    finally:
        sock.close()
    answer = b"".join(chunks)
    head, sep, body = answer.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if not sep or b" 200 " not in status + b" ":
        raise OSError(f"bad HTTP answer {answer[:200]!r}")
    return body.decode(errors="replace").splitlines()[0] if body else ""


def cmd_http(args: argparse.Namespace) -> int:
    for i in range(args.count):
        if i and args.gap:
            time.sleep(args.gap)
        try:
            line = http_once(args.host, args.port, args.path, args.sport, args.timeout)
        except OSError as exc:
            print(f"request {i + 1}/{args.count} to {args.host}:{args.port} failed: {exc!r}",
                  file=sys.stderr)
            return 1
        sys.stdout.write(line + "\n")
    sys.stdout.flush()
    return 0


def cmd_udp(args: argparse.Namespace) -> int:
    socks: list[socket.socket] = []
    try:
        for i in range(args.count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.settimeout(args.timeout)
            sock.connect((args.host, args.port))
            try:
                sock.send(args.payload.encode())
                answer = sock.recv(65535)
            except OSError as exc:
                print(f"datagram {i + 1}/{args.count} to {args.host}:{args.port} from port "
                      f"{sock.getsockname()[1]}: {exc!r}", file=sys.stderr)
                return 1
            sys.stdout.write(answer.decode(errors="replace") + "\n")
    finally:
        for sock in socks:
            sock.close()
    sys.stdout.flush()
    return 0


def udp_once(host: str, port: int, payload: bytes, timeout: float) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.send(payload)
        return sock.recv(65535).decode(errors="replace")


def cmd_sweep(args: argparse.Namespace) -> int:
    for line in sys.stdin:
        if not line.strip():
            continue
        proto, host, port = line.split()
        try:
            if proto == "tcp":
                answer = http_once(host, int(port), "/", None, args.timeout)
            else:
                answer = udp_once(host, int(port), b"ping", args.timeout)
            emit(target=line.strip(), answer=answer.strip())
        except OSError as exc:
            emit(target=line.strip(), error=repr(exc))
    return 0


class Session:
    def __init__(self, sock: socket.socket, chunk: int, timeout: float) -> None:
        self.sock = sock
        self.chunk = chunk
        self.timeout = timeout
        self.bytes = 0
        self.rounds = 0

    def recv(self, size: int) -> bytes:
        try:
            return self.sock.recv(size)
        except ConnectionResetError:
            raise SessionEnd("reset", EXIT_RESET) from None
        except TimeoutError:
            raise SessionEnd("timeout", EXIT_TIMEOUT, f"no echo within {self.timeout}s") \
                from None

    def read_exactly(self, expected: bytes) -> None:
        got = 0
        while got < len(expected):
            data = self.recv(min(65536, len(expected) - got))
            if not data:
                raise SessionEnd("eof", EXIT_EOF, f"{got}/{len(expected)} bytes of an echo")
            if data != expected[got:got + len(data)]:
                raise SessionEnd("mismatch", EXIT_MISMATCH, f"at byte {self.bytes + got}")
            got += len(data)

    def exchange(self) -> None:
        payload = os.urandom(self.chunk)
        try:
            self.sock.sendall(payload)
        except (ConnectionResetError, BrokenPipeError):
            raise SessionEnd("reset", EXIT_RESET, "on send") from None
        self.read_exactly(payload)
        self.bytes += len(payload)
        self.rounds += 1
        emit(event="echo", bytes=self.bytes, rounds=self.rounds)

    def unsolicited(self) -> None:
        """The socket became readable between exchanges: a reset, an EOF or stray bytes."""
        data = self.recv(65536)
        if not data:
            raise SessionEnd("eof", EXIT_EOF, "the peer closed the idle session")
        raise SessionEnd("mismatch", EXIT_MISMATCH, f"{len(data)} bytes nobody sent")

    def close(self) -> None:
        """Half-close, then everything the peer still sends must be nothing but its EOF."""
        self.sock.shutdown(socket.SHUT_WR)
        data = self.recv(65536)
        if data:
            raise SessionEnd("mismatch", EXIT_MISMATCH, f"{len(data)} bytes after the end")
        self.sock.close()


def cmd_session(args: argparse.Namespace) -> int:
    try:
        sock = connect(args.host, args.port, args.sport, args.timeout)
    except OSError as exc:
        emit(event="connect-failed", error=repr(exc))
        return EXIT_CONNECT
    local, peer = sock.getsockname(), sock.getpeername()
    emit(event="connected", local=f"{local[0]}:{local[1]}", peer=f"{peer[0]}:{peer[1]}")
    session = Session(sock, args.chunk, args.timeout)
    stdin = sys.stdin.fileno()
    try:
        session.exchange()
        next_at = time.monotonic() + args.interval
        while True:
            wait = max(0.0, next_at - time.monotonic()) if args.interval > 0 else None
            ready, _, _ = select.select([sock, stdin], [], [], wait)
            if sock in ready:
                session.unsolicited()
            if stdin in ready:
                if not os.read(stdin, 4096):
                    break
                continue
            if args.interval > 0 and time.monotonic() >= next_at:
                session.exchange()
                next_at = time.monotonic() + args.interval
        session.close()
    except SessionEnd as end:
        emit(event=end.event, detail=end.detail, bytes=session.bytes, rounds=session.rounds)
        return end.status
    emit(event="closed", bytes=session.bytes, rounds=session.rounds)
    return EXIT_OK


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    http = sub.add_parser("http", help="sequential HTTP GETs, printing the backends' names")
    session = sub.add_parser("session", help="a long-lived, verified TCP echo session")
    udp = sub.add_parser("udp", help="UDP exchanges, each from its own source port")
    sweep = sub.add_parser("sweep", help="one exchange with each target given on stdin")
    sweep.add_argument("--timeout", type=float, default=2.0, help="per-target timeout (s)")
    for p in (http, session, udp):
        p.add_argument("host")
        p.add_argument("port", type=int)
        p.add_argument("--timeout", type=float, default=3.0, help="per-operation timeout (s)")
    for p in (http, session):
        p.add_argument("--sport", type=int, default=None, help="fixed source port")
    for p in (http, udp):
        p.add_argument("--count", type=int, default=1)
    udp.add_argument("--payload", default="ping")
    http.add_argument("--path", default="/")
    http.add_argument("--gap", type=float, default=0.0, help="pause between requests (s)")
    session.add_argument("--interval", type=float, default=0.0,
                         help="seconds between exchanges; 0: one exchange, then idle")
    session.add_argument("--chunk", type=int, default=1024, help="bytes per exchange")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    commands = {"http": cmd_http, "udp": cmd_udp, "session": cmd_session, "sweep": cmd_sweep}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
