#!/usr/bin/env python3
"""Lab client for the end-to-end tests: what curl cannot do. Run inside a lab namespace.

Usage::

    client.py http HOST PORT [--count N] [--path /] [--sport P] [--gap S] [--timeout T]
    client.py session HOST PORT [--sport P] [--interval S] [--chunk N] [--timeout T]
    client.py udp HOST PORT [--count N] [--payload TEXT] [--timeout T]
    client.py sweep [--timeout T] < targets
    client.py streams HOST PORT --count N [--interval S] [--chunk B] [--timeout T]
                      [--udp UHOST:UPORT] [--udp-interval S]

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
``eof`` (the peer closed first, 6).

``streams``: N long-lived TCP connections to an echo server, and with ``--udp`` one UDP
flow, all driven by one process (a selectors loop), for failover tests. Every
``--interval`` seconds (default 0.05) each stream sends ``--chunk`` random bytes (default
512) and reads them back, verifying every byte. A stream's *pause* is the longest time
between two of its consecutive completed echo rounds (a stream stalled by a failover shows
it). An echo not back within ``--timeout`` (default 30) counts as a timeout and the stream
is closed; an RST, a byte that differs, or an EOF from the peer end the stream too. The
UDP flow is one connected socket sending ``seq:<n>`` every ``--udp-interval`` seconds
(default 0.02) to a lab backend, which answers ``NAME:seq:<n>``: late or duplicate answers
are fine, unanswered datagrams count as ``lost``, an answer from another NAME than the
previous one counts as an ``endpoint_changes`` (the flow moved to another backend).
One JSON object per line on stdout (flushed)::

    {"event": "ready", ...counters}     every stream connected and did one exchange
                                        (or failed: see "connected")
    {"event": "progress", ...counters}  on SIGUSR1
    {"event": "summary", "clean": true, "streams": N, "connected": C, "resets": R,
     "mismatches": M, "timeouts": T, "eofs": E, "errors": X, "connect_failed": F,
     "closed": D, "open": O, "stalled_now": S, "bytes": B, "rounds": K, "max_pause_s": P,
     "pause_streams": [{"stream": I, "pause_s": S, "at": EPOCH}, ...top 5...],
     "problems": [{"stream": I, "end": "reset", "detail": ..., "rounds": K}, ...],
     "udp": {"sent": ..., "answered": ..., "lost": ..., "errors": ..., "bad": ...,
             "endpoint": NAME, "endpoints": [NAME, ...], "endpoint_changes": C,
             "max_gap_s": G, "max_gap_at": EPOCH}}

(``at``: the wall-clock time the longest pause ended; ``errors``: other socket errors;
``stalled_now``: open streams without a completed round for max(1 s, 10 intervals);
``udp.errors``: ICMP errors reported on the socket.)

Closing stdin ends it: every stream finishes its echo in flight, half-closes and must get
nothing but an EOF back; the UDP flow waits up to a second for late answers. Exit status
0 when all was clean (every stream connected, no reset, mismatch, timeout or early EOF;
the UDP flow, if any, answered and never changed endpoint), else 1.

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import select
import selectors
import signal
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

# --------------------------------------------------------------------------- streams

STREAM_ENDS = ("reset", "mismatch", "timeout", "eof", "error", "connect-failed")
PROGRESS_TICK = 0.1  # the loop wakes at least this often (SIGUSR1, timeouts)
UDP_GRACE = 1.0  # how long the end waits for late UDP answers


class Stream:
    """One long-lived echo connection of ``streams``; ``end`` says how it finished."""

    def __init__(self, index: int, sock: socket.socket, first_at: float) -> None:
        self.index = index
        self.sock = sock
        self.state = "connecting"  # connecting, open, draining (half-closed), done
        self.connected = False
        self.started = time.monotonic()
        self.next_at = first_at
        self.expected = b""  # the echo in flight
        self.got = 0
        self.out = b""  # its bytes not sent yet
        self.sent_at = 0.0
        self.drain_at = 0.0
        self.last_round: float | None = None
        self.max_pause = 0.0
        self.pause_at = 0.0  # wall clock when the longest pause ended
        self.rounds = 0
        self.bytes = 0
        self.end: str | None = None  # one of STREAM_ENDS, or "closed" (clean)
        self.detail = ""

    @property
    def in_flight(self) -> bool:
        return self.got < len(self.expected)


class UdpFlow:
    """The ``--udp`` flow: ``seq:<n>`` datagrams from one connected socket."""

    def __init__(self, host: str, port: int, interval: float) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect((host, port))
        self.sock.setblocking(False)
        self.interval = interval
        self.next_at = time.monotonic()
        self.seq = 0
        self.sent = 0
        self.answered: set[int] = set()
        self.errors = 0
        self.bad = 0
        self.endpoint: str | None = None
        self.endpoints: list[str] = []
        self.last_name: str | None = None
        self.changes = 0
        self.last_answer: float | None = None
        self.max_gap = 0.0
        self.gap_at = 0.0

    def send(self, now: float) -> None:
        self.seq += 1
        self.sent += 1
        try:
            self.sock.send(f"seq:{self.seq}".encode())
        except BlockingIOError:
            pass  # counted as lost
        except OSError:
            self.errors += 1  # an ICMP error reported on the connected socket
        self.next_at = max(self.next_at + self.interval, now)

    def receive(self) -> None:
        while True:
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                return
            except OSError:
                self.errors += 1  # ICMP unreachable and the like; the flow goes on
                continue
            self.answer(data)

    def answer(self, data: bytes) -> None:
        name, _, rest = data.decode(errors="replace").partition(":")
        word, _, num = rest.partition(":")
        if word != "seq" or not num.isdigit() or not 0 < int(num) <= self.seq:
            self.bad += 1
            return
        now = time.monotonic()
        if self.last_answer is not None and now - self.last_answer > self.max_gap:
            self.max_gap = now - self.last_answer
            self.gap_at = time.time()
        self.last_answer = now
        self.answered.add(int(num))
        if self.endpoint is None:
            self.endpoint = name
        if name not in self.endpoints:
            self.endpoints.append(name)
        if self.last_name is not None and name != self.last_name:
            self.changes += 1
        self.last_name = name

    def counters(self) -> dict[str, Any]:
        return {
            "sent": self.sent, "answered": len(self.answered),
            "lost": self.sent - len(self.answered), "errors": self.errors, "bad": self.bad,
            "endpoint": self.endpoint, "endpoints": self.endpoints,
            "endpoint_changes": self.changes, "max_gap_s": round(self.max_gap, 3),
            "max_gap_at": round(self.gap_at, 3),
        }


class StreamsRun:
    """The ``streams`` command: one selectors loop over every stream and the UDP flow."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sel = selectors.DefaultSelector()
        self.streams: list[Stream] = []
        self.udp: UdpFlow | None = None
        self.closing = False
        self.close_at = 0.0
        self.ready_sent = False
        self.progress_wanted = False

    # -- counters
    def counters(self) -> dict[str, Any]:
        now = time.monotonic()
        ends = [s.end for s in self.streams]
        top = sorted(self.streams, key=lambda s: s.max_pause, reverse=True)[:5]
        stall = max(1.0, 10 * self.args.interval)
        out: dict[str, Any] = {
            "streams": len(self.streams),
            "connected": sum(s.connected for s in self.streams),
            "resets": ends.count("reset"), "mismatches": ends.count("mismatch"),
            "timeouts": ends.count("timeout"), "eofs": ends.count("eof"),
            "errors": ends.count("error"), "connect_failed": ends.count("connect-failed"),
            "closed": ends.count("closed"),
            "open": sum(s.end is None for s in self.streams),
            "stalled_now": sum(
                s.end is None and s.last_round is not None and now - s.last_round > stall
                for s in self.streams),
            "bytes": sum(s.bytes for s in self.streams),
            "rounds": sum(s.rounds for s in self.streams),
            "max_pause_s": round(max((s.max_pause for s in self.streams), default=0.0), 3),
            "pause_streams": [
                {"stream": s.index, "pause_s": round(s.max_pause, 3), "at": round(s.pause_at, 3)}
                for s in top if s.max_pause > 0],
            "problems": [
                {"stream": s.index, "end": s.end, "detail": s.detail, "rounds": s.rounds}
                for s in self.streams if s.end not in (None, "closed")][:10],
        }
        if self.udp is not None:
            out["udp"] = self.udp.counters()
        return out

    def clean(self) -> bool:
        if not all(s.connected and s.end == "closed" for s in self.streams):
            return False
        if self.udp is not None:
            return bool(self.udp.answered) and self.udp.changes == 0
        return True

    # -- streams
    def watch(self, stream: Stream) -> None:
        """(Re)register a stream with the events it currently waits for."""
        if stream.state == "done":
            try:
                self.sel.unregister(stream.sock)
            except (KeyError, ValueError):
                pass
            return
        events = selectors.EVENT_READ
        if stream.state == "connecting" or stream.out:
            events |= selectors.EVENT_WRITE
        try:
            key = self.sel.get_key(stream.sock)
        except KeyError:
            self.sel.register(stream.sock, events, stream)
            return
        if key.events != events:
            self.sel.modify(stream.sock, events, stream)

    def finish(self, stream: Stream, end: str, detail: str = "") -> None:
        stream.end, stream.detail = end, detail
        stream.state = "done"
        self.watch(stream)
        try:
            if end in ("timeout", "mismatch"):
                # abort: no point in a graceful close of a broken stream
                stream.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       b"\x01\x00\x00\x00\x00\x00\x00\x00")
            stream.sock.close()
        except OSError:
            pass

    def connected(self, stream: Stream) -> None:
        err = stream.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.finish(stream, "connect-failed", os.strerror(err))
            return
        stream.connected = True
        stream.state = "open"
        if self.closing:
            self.half_close(stream, time.monotonic())
        self.watch(stream)

    def start_round(self, stream: Stream, now: float) -> None:
        stream.expected = os.urandom(self.args.chunk)
        stream.got = 0
        stream.out = stream.expected
        stream.sent_at = now
        self.send(stream)

    def send(self, stream: Stream) -> None:
        try:
            sent = stream.sock.send(stream.out)
        except BlockingIOError:
            sent = 0
        except (ConnectionResetError, BrokenPipeError):
            self.finish(stream, "reset", "on send")
            return
        except OSError as exc:
            self.finish(stream, "error", f"send: {exc!r}")
            return
        stream.out = stream.out[sent:]
        self.watch(stream)

    def receive(self, stream: Stream) -> None:
        try:
            data = stream.sock.recv(65536)
        except BlockingIOError:
            return
        except ConnectionResetError:
            self.finish(stream, "reset", f"after {stream.rounds} rounds")
            return
        except OSError as exc:
            self.finish(stream, "error", f"recv: {exc!r}")
            return
        if not data:
            if stream.state == "draining":
                self.finish(stream, "closed")
            else:
                self.finish(stream, "eof", f"{stream.got}/{len(stream.expected)} bytes "
                            f"of an echo after {stream.rounds} rounds")
            return
        if stream.state == "draining" or not stream.in_flight:
            self.finish(stream, "mismatch", f"{len(data)} bytes nobody sent")
            return
        want = stream.expected[stream.got:stream.got + len(data)]
        if data != want:
            at = stream.bytes + stream.got
            self.finish(stream, "mismatch", f"at byte {at} ({len(data)} received, "
                        f"{len(stream.expected) - stream.got} expected)")
            return
        stream.got += len(data)
        if not stream.in_flight:
            self.round_done(stream)

    def round_done(self, stream: Stream) -> None:
        now = time.monotonic()
        if stream.last_round is not None and now - stream.last_round > stream.max_pause:
            stream.max_pause = now - stream.last_round
            stream.pause_at = time.time()
        stream.last_round = now
        stream.rounds += 1
        stream.bytes += len(stream.expected)
        stream.expected, stream.got = b"", 0
        stream.next_at = now + self.args.interval
        if self.closing:
            self.half_close(stream, now)

    def half_close(self, stream: Stream, now: float) -> None:
        try:
            stream.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.finish(stream, "error", f"shutdown: {exc!r}")
            return
        stream.state = "draining"
        stream.drain_at = now

    def tick(self, now: float) -> float:
        """Start due rounds and enforce timeouts; the next moment something is due."""
        args = self.args
        due = now + PROGRESS_TICK
        for stream in self.streams:
            if stream.state == "connecting":
                if now - stream.started > args.timeout:
                    self.finish(stream, "connect-failed", f"not connected within {args.timeout}s")
                else:
                    due = min(due, stream.started + args.timeout)
            elif stream.state == "draining":
                if now - stream.drain_at > args.timeout:
                    self.finish(stream, "timeout", "no EOF after the half-close")
            elif stream.state == "open":
                if stream.in_flight:
                    if now - stream.sent_at > args.timeout:
                        self.finish(stream, "timeout", f"echo not back within {args.timeout}s "
                                    f"after {stream.rounds} rounds")
                    else:
                        due = min(due, stream.sent_at + args.timeout)
                elif not self.closing:
                    if now >= stream.next_at:
                        self.start_round(stream, now)
                    else:
                        due = min(due, stream.next_at)
        if self.udp is not None and not self.closing:
            if now >= self.udp.next_at:
                self.udp.send(now)
            due = min(due, self.udp.next_at)
        return due

    def begin_close(self, now: float) -> None:
        self.closing = True
        self.close_at = now
        for stream in self.streams:
            if stream.state == "open" and not stream.in_flight:
                self.half_close(stream, now)

    def finished(self, now: float) -> bool:
        if not self.closing or any(s.state != "done" for s in self.streams):
            return False
        if self.udp is None or self.udp.sent == len(self.udp.answered):
            return True
        return now - self.close_at >= min(UDP_GRACE, self.args.timeout)

    def run(self) -> int:
        args = self.args
        signal.signal(signal.SIGUSR1, self._on_usr1)
        start = time.monotonic()
        for i in range(args.count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stream = Stream(i, sock, start + i * args.interval / max(1, args.count))
            self.streams.append(stream)
            err = sock.connect_ex((args.host, args.port))
            if err not in (0, errno.EINPROGRESS):
                self.finish(stream, "connect-failed", os.strerror(err))
            else:
                self.watch(stream)
        if args.udp:
            host, _, port = args.udp.rpartition(":")
            self.udp = UdpFlow(host, int(port), args.udp_interval)
            self.sel.register(self.udp.sock, selectors.EVENT_READ, "udp")
        stdin = sys.stdin.fileno()
        self.sel.register(stdin, selectors.EVENT_READ, "stdin")
        while True:
            now = time.monotonic()
            due = self.tick(now)
            if not self.ready_sent and all(s.rounds or s.end for s in self.streams):
                self.ready_sent = True
                emit(event="ready", **self.counters())
            if self.progress_wanted:
                self.progress_wanted = False
                emit(event="progress", **self.counters())
            if self.finished(now):
                break
            for key, mask in self.sel.select(max(0.0, due - time.monotonic())):
                if key.data == "stdin":
                    if not os.read(stdin, 4096):
                        self.sel.unregister(stdin)
                        self.begin_close(time.monotonic())
                elif key.data == "udp":
                    assert self.udp is not None
                    self.udp.receive()
                else:
                    stream = key.data
                    if stream.state == "connecting":
                        if mask & selectors.EVENT_WRITE:
                            self.connected(stream)
                        continue
                    if mask & selectors.EVENT_READ and stream.state != "done":
                        self.receive(stream)
                    if mask & selectors.EVENT_WRITE and stream.state != "done" and stream.out:
                        self.send(stream)
        if self.udp is not None:
            self.udp.sock.close()
        clean = self.clean()
        emit(event="summary", clean=clean, **self.counters())
        return EXIT_OK if clean else 1

    def _on_usr1(self, signum: int, frame: Any) -> None:
        self.progress_wanted = True


def cmd_streams(args: argparse.Namespace) -> int:
    if args.count < 1 or args.chunk < 1 or args.interval < 0 or args.udp_interval <= 0:
        print("streams: --count and --chunk must be >= 1, --interval >= 0, "
              "--udp-interval > 0", file=sys.stderr)
        return 2
    return StreamsRun(args).run()



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    http = sub.add_parser("http", help="sequential HTTP GETs, printing the backends' names")
    session = sub.add_parser("session", help="a long-lived, verified TCP echo session")
    udp = sub.add_parser("udp", help="UDP exchanges, each from its own source port")
    sweep = sub.add_parser("sweep", help="one exchange with each target given on stdin")
    sweep.add_argument("--timeout", type=float, default=2.0, help="per-target timeout (s)")
    streams = sub.add_parser("streams", help="many verified TCP echo streams and a UDP flow "
                             "in one process, until stdin closes")
    streams.add_argument("host")
    streams.add_argument("port", type=int)
    streams.add_argument("--count", type=int, required=True, help="number of TCP streams")
    streams.add_argument("--interval", type=float, default=0.05,
                         help="seconds between a stream's exchanges")
    streams.add_argument("--chunk", type=int, default=512, help="bytes per exchange")
    streams.add_argument("--timeout", type=float, default=30.0,
                         help="an echo (or connect, or close) not done within it: timeout")
    streams.add_argument("--udp", default=None, metavar="UHOST:UPORT",
                         help="also one UDP flow to a lab backend")
    streams.add_argument("--udp-interval", type=float, default=0.02,
                         help="seconds between UDP datagrams")
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
    commands = {"http": cmd_http, "udp": cmd_udp, "session": cmd_session, "sweep": cmd_sweep,
                "streams": cmd_streams}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
