"""Endpoint health probes: one asyncio loop, in its own thread, probes every endpoint.

:class:`HealthMonitor` runs every probe of the agent as an asyncio task on ONE event loop in
one thread (no thread per endpoint). A probe is identified by its :class:`ProbeSpec`: equal
specs are probed once, whoever asks (``add``/``remove`` are reference-counted).

Probe types (``ProbeSpec.ptype``)
---------------------------------
``ping``
    ICMP echo over ONE raw socket shared by every ping probe of the monitor (needs root, or
    CAP_NET_RAW). Requests carry the monitor's identifier, a sequence number and a random
    token; replies are matched on all three and on the source address. The RTT is measured
    from just before ``sendto`` to the kernel's receive timestamp (``SO_TIMESTAMPNS``), so a
    busy loop does not inflate it. An ICMP destination unreachable / time exceeded quoting the
    request, or a send error (no route), fails the probe at once; silence fails it at the
    timeout.
``tcp``
    Connect; then, when ``req`` is set, send it (utf-8); when ``resp`` is set, read until the
    reply contains ``resp`` (up to 64 KiB). Failure: refused (RST), unreachable, timeout, or
    the peer closing before ``resp`` was seen. The connection is closed with a RST (zero
    linger, as HAProxy's checks do), so probes leave no TIME_WAIT behind.
``udp``
    Send ``req`` (or an empty datagram) on a connected socket and wait for a reply.
    An ICMP port unreachable (``ConnectionRefusedError``) or host unreachable means down.
    With ``resp`` set, the reply must contain it, and silence until the timeout means down.
    **With no ``resp``, silence until the timeout counts as up** (a UDP service need not
    answer; only an ICMP error proves it is not there). The delay of such a probe is not
    measured. The kernel rate-limits ICMP errors per destination (``net.ipv4.icmp_ratelimit``,
    1/s after a burst of 6): probing a closed port faster than that, some probes see
    silence, hence "up"; keep intervals of a second or more, or set ``resp``.
``http`` / ``https``
    ``GET <req or "/"> HTTP/1.1`` with a ``Host`` header and ``Connection: close``; up when the
    status is 200 and, if ``resp`` is set, the body (up to 64 KiB, chunked decoded) contains
    it. ``https`` with ``ca_file`` verifies the certificate chain against that bundle and the
    certificate's name against the host address (an IP SAN); without it, no verification.
``none``
    Always ok; nothing is sent.

State machine (the timings the agent and the tests rely on)
-----------------------------------------------------------
- A new probe starts ``ok`` (assumed healthy): a rule's endpoints take traffic from the
  start, as in LoxiLB, rather than black-holing a whole service until every first probe
  answered. Its first probe runs within ``min(interval, 1 s)`` of ``add`` (a deterministic
  per-spec offset that spreads many probes added at once), so a bad endpoint reaches ``nok``
  within ``interval x retries + timeout`` of ``add``.
- Probes run at ``t0 + k x interval`` (``t0``: the first probe's time), never "interval after
  the previous one ended", so timers do not drift; a slot missed because the loop was stalled
  is skipped, not run late twice.
- ``ok`` -> ``nok`` after ``retries`` consecutive failures; any success resets the count.
  Detection after a fault: at most ``interval x retries + timeout``.
- While ``nok``, the period backs off: x2, x4, x8 of ``interval``, capped at ``min(8 x
  interval, 60 s)`` rounded down to a whole number of intervals (no back-off from 60 s up),
  still on the ``t0 + k x interval`` grid.
- ``nok`` -> ``ok`` needs two consecutive successes: on the first success while down a
  confirmation probe runs ``min(interval / 2, 1 s)`` later; if it succeeds too, the endpoint
  is ``ok`` and probing returns to every ``interval`` on the grid; if it fails, the endpoint
  stays ``nok`` and the back-off goes on growing. An endpoint that alternates good/bad thus
  never flips: while ``ok`` it never reaches two consecutive failures, while ``nok`` it
  never confirms.
- Recovery is detected at most ``backoff + timeout + confirm + timeout`` after the endpoint
  comes back (backoff: the period reached, at most the cap above).
- ``on_change(spec, healthy)`` is called from the monitor's thread on each state change
  (never for the initial ``ok``). It must not block for long (it delays other probes), and
  it is never called with the monitor's lock held, so it may call back into the monitor.

Delays (min/avg/max, milliseconds) are those of successful probes since ``add``: the connect
time for a tcp probe without ``resp``, otherwise the time until the verdict (reply seen,
response read), the RTT for ping.
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import logging
import math
import os
import random
import socket
import ssl
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

log = logging.getLogger("loxilbd.health")

PROBE_TYPES = ("ping", "tcp", "udp", "http", "https", "none")
PORTLESS = ("ping", "none")
MAX_PERIOD_S = 86400.0
MIN_PERIOD_S = 0.05
MAX_RETRIES = 100
MAX_TEXT = 4096  # req / resp length (characters)
READ_LIMIT = 64 * 1024  # bytes read from a tcp or http reply
BACKOFF_FACTOR_MAX = 8
BACKOFF_CAP_S = 60.0
CONFIRM_MAX_S = 1.0
STAGGER_MAX_S = 1.0
JITTER_SAMPLES = 200_000

_CLONE_NEWNET = 0x40000000
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_SOL_RAW = 255
_ICMP_FILTER = 1
_ICMP_ECHOREPLY, _ICMP_UNREACH, _ICMP_ECHO, _ICMP_TIMXCEED = 0, 3, 8, 11
_LINGER_RST = struct.pack("ii", 1, 0)
_UNREACH_CODES = {0: "network unreachable", 1: "host unreachable", 2: "protocol unreachable",
                  3: "port unreachable", 9: "network prohibited", 10: "host prohibited",
                  13: "administratively prohibited"}


# --------------------------------------------------------------------------- spec

ATTEMPT_TIMEOUT_S = 2.0


def attempt_timeout(interval_s: float) -> float:
    """How long one probe waits for its answer: 2 s, or half the period when that is
    shorter (an attempt must end before the next one starts)."""
    return ATTEMPT_TIMEOUT_S if ATTEMPT_TIMEOUT_S < interval_s else max(interval_s / 2, 0.1)



@dataclass(frozen=True)
class ProbeSpec:
    """The identity of a probe: equal specs are probed once, whoever asks."""

    host: str  # IPv4 address
    ptype: str  # ping | tcp | udp | http | https | none
    port: int = 0  # 1..65535 for tcp/udp/http/https, 0 for ping/none
    req: str = ""  # tcp/udp: bytes to send (utf-8); http/https: the URL path (default "/")
    resp: str = ""  # expected reply substring; empty: any reply / status 200
    interval_s: float = 10.0
    timeout_s: float = 2.0
    retries: int = 2  # consecutive failures before ok -> nok
    ca_file: str = ""  # https: CA bundle to verify against ("": no verification)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def validate(spec: ProbeSpec) -> None:
    """Raise ``ValueError("<field>: <value> ...; allowed: ...")`` for the first bad field."""
    try:
        if not isinstance(spec.host, str):
            raise TypeError
        addr = ipaddress.IPv4Address(spec.host)
    except (ValueError, TypeError):
        raise ValueError(f"host: {spec.host!r} is not an IPv4 address; "
                         "allowed: a dotted-quad IPv4 address") from None
    if addr.is_unspecified or addr.is_multicast or addr == ipaddress.IPv4Address(0xFFFFFFFF):
        raise ValueError(f"host: {spec.host!r} is not a unicast address; "
                         "allowed: a unicast IPv4 address")
    if spec.ptype not in PROBE_TYPES:
        raise ValueError(f"ptype: {spec.ptype!r} is unknown; allowed: {', '.join(PROBE_TYPES)}")
    if not _is_int(spec.port):
        raise ValueError(f"port: {spec.port!r} is not an integer")
    if spec.ptype in PORTLESS:
        if spec.port != 0:
            raise ValueError(f"port: {spec.port} is not allowed with probe type {spec.ptype}; "
                             "allowed: 0")
    elif not 1 <= spec.port <= 65535:
        raise ValueError(f"port: {spec.port} is out of range for probe type {spec.ptype}; "
                         "allowed: 1..65535 (required)")
    for name in ("req", "resp"):
        value = getattr(spec, name)
        if not isinstance(value, str):
            raise ValueError(f"{name}: {value!r} is not a string")
        if value and spec.ptype in PORTLESS:
            raise ValueError(f"{name}: {value!r} is not used by probe type {spec.ptype}; "
                             "allowed: empty")
        if len(value) > MAX_TEXT:
            raise ValueError(f"{name}: {len(value)} characters is too long; "
                             f"allowed: up to {MAX_TEXT}")
    if spec.ptype in ("http", "https") and spec.req:
        if (not spec.req.startswith("/") or not spec.req.isascii()
                or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in spec.req)):
            raise ValueError(f"req: {spec.req!r} is not a URL path; allowed: an ASCII path "
                             "starting with '/' without spaces or control characters")
    if not _is_number(spec.interval_s) or not MIN_PERIOD_S <= spec.interval_s <= MAX_PERIOD_S:
        raise ValueError(f"interval_s: {spec.interval_s!r} is out of range; allowed: "
                         f"{MIN_PERIOD_S:g}..{MAX_PERIOD_S:g} s")
    if not _is_number(spec.timeout_s) or not 0 < spec.timeout_s < spec.interval_s:
        raise ValueError(f"timeout_s: {spec.timeout_s!r} is out of range; allowed: more than "
                         f"0 and less than the interval ({spec.interval_s:g} s)")
    if not _is_int(spec.retries) or not 1 <= spec.retries <= MAX_RETRIES:
        raise ValueError(f"retries: {spec.retries!r} is out of range; "
                         f"allowed: 1..{MAX_RETRIES}")
    if not isinstance(spec.ca_file, str):
        raise ValueError(f"ca_file: {spec.ca_file!r} is not a string")
    if spec.ca_file:
        if spec.ptype != "https":
            raise ValueError(f"ca_file: {spec.ca_file!r} is not used by probe type "
                             f"{spec.ptype}; allowed: empty (only https verifies)")
        try:
            ssl.create_default_context(cafile=spec.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"ca_file: {spec.ca_file!r} is not a readable CA bundle "
                             f"({exc}); allowed: a PEM file of CA certificates") from None


def backoff_factors(interval_s: float) -> list[int]:
    """The successive periods (in intervals) while down: 2, 4, 8 capped at min(8, 60 s)."""
    cap = max(1, min(BACKOFF_FACTOR_MAX, int(BACKOFF_CAP_S // interval_s)))
    factors, f = [], 2
    while f < cap:
        factors.append(f)
        f *= 2
    factors.append(cap)
    return factors


def confirm_delay(interval_s: float) -> float:
    """How long after the first success while down the confirmation probe runs."""
    return min(interval_s / 2, CONFIRM_MAX_S)


# --------------------------------------------------------------------------- status


@dataclass
class ProbeStatus:
    state: str = "ok"  # ok | nok
    min_delay_ms: float | None = None
    avg_delay_ms: float | None = None
    max_delay_ms: float | None = None
    last_change: float = field(default_factory=time.time)  # wall time of the last state change
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    probes: int = 0
    failures: int = 0
    last_error: str = ""  # of the last failed probe (kept after recoveries)
    last_probe: float | None = None  # wall time the last probe ended
    last_delay_ms: float | None = None
    period_s: float = 0.0  # current period: the interval, or the back-off one while down
    skipped: int = 0  # slots skipped because the loop was late by more than a period


class ProbeFailed(Exception):
    """A probe's negative verdict; its text goes to ``ProbeStatus.last_error``."""


@dataclass(eq=False)
class _Probe:
    spec: ProbeSpec
    status: ProbeStatus
    refs: int = 1
    task: asyncio.Task[None] | None = None
    removed: bool = False
    level: int = 0  # back-off step while down (0: none)
    delay_sum: float = 0.0
    delay_count: int = 0


# --------------------------------------------------------------------------- ping


class _Pinger:
    """ICMP echo over one raw socket; replies are matched by identifier, sequence, token."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.sock.setblocking(False)
        try:
            keep = (1 << _ICMP_ECHOREPLY) | (1 << _ICMP_UNREACH) | (1 << _ICMP_TIMXCEED)
            self.sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("I", ~keep & 0xFFFFFFFF))
        except OSError:
            pass  # only a filter: the matching below does not rely on it
        self.sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        except OSError:
            pass
        self.ident = random.getrandbits(16)
        self.token = os.urandom(8)
        self.seq = random.getrandbits(16)
        # seq -> (host, future of the rtt in seconds, send time in ns)
        self.pending: dict[int, tuple[str, asyncio.Future[float], int]] = {}
        loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for _, fut, _ in self.pending.values():
            if not fut.done():
                fut.cancel()
        self.pending.clear()

    @staticmethod
    def checksum(data: bytes) -> int:
        if len(data) % 2:
            data += b"\0"
        total = sum(struct.unpack(f"!{len(data) // 2}H", data))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        return ~total & 0xFFFF

    async def ping(self, host: str) -> float:
        seq = self.seq
        while seq in self.pending:
            seq = (seq + 1) & 0xFFFF
        self.seq = (seq + 1) & 0xFFFF
        payload = self.token + struct.pack("!Q", time.monotonic_ns())
        head = struct.pack("!BBHHH", _ICMP_ECHO, 0, 0, self.ident, seq)
        csum = self.checksum(head + payload)
        packet = struct.pack("!BBHHH", _ICMP_ECHO, 0, csum, self.ident, seq) + payload
        fut: asyncio.Future[float] = self.loop.create_future()
        sent = time.time_ns()
        try:
            self.sock.sendto(packet, (host, 0))
        except OSError as exc:
            raise ProbeFailed(f"ping: send: {exc.strerror or exc}") from None
        self.pending[seq] = (host, fut, sent)
        try:
            return await fut
        finally:
            entry = self.pending.get(seq)
            if entry is not None and entry[1] is fut:
                del self.pending[seq]

    def _readable(self) -> None:
        while True:
            try:
                data, anc, _, addr = self.sock.recvmsg(2048, socket.CMSG_SPACE(16))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("ping socket: %s", exc)
                return
            rx_ns = 0
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(cdata) >= 16:
                    sec, nsec = struct.unpack("qq", cdata[:16])
                    rx_ns = sec * 1_000_000_000 + nsec
            self._packet(data, addr[0], rx_ns or time.time_ns())

    def _packet(self, data: bytes, src: str, rx_ns: int) -> None:
        if len(data) < 20:
            return
        ihl = (data[0] & 0x0F) * 4
        icmp = data[ihl:]
        if len(icmp) < 8:
            return
        kind, code = icmp[0], icmp[1]
        if kind == _ICMP_ECHOREPLY:
            ident, seq = struct.unpack("!HH", icmp[4:8])
            entry = self.pending.get(seq)
            if (ident != self.ident or entry is None or entry[0] != src
                    or icmp[8:16] != self.token):
                return
            _, fut, sent = entry
            if not fut.done():
                fut.set_result(max(0, rx_ns - sent) / 1e9)
        elif kind in (_ICMP_UNREACH, _ICMP_TIMXCEED):
            inner = icmp[8:]  # the quoted IP header + 8 bytes of our echo request
            if len(inner) < 20:
                return
            ihl2 = (inner[0] & 0x0F) * 4
            quoted = inner[ihl2:ihl2 + 8]
            if len(quoted) < 8 or quoted[0] != _ICMP_ECHO:
                return
            ident, seq = struct.unpack("!HH", quoted[4:8])
            dst = socket.inet_ntoa(inner[16:20])
            entry = self.pending.get(seq)
            if ident != self.ident or entry is None or entry[0] != dst:
                return
            if kind == _ICMP_UNREACH:
                why = _UNREACH_CODES.get(code, f"destination unreachable (code {code})")
            else:
                why = "time exceeded"
            if not entry[1].done():
                entry[1].set_exception(ProbeFailed(f"ping: {why} (from {src})"))


# --------------------------------------------------------------------------- monitor


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _oserror_text(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"tls: {exc.reason or exc}"
    return exc.strerror or str(exc) or type(exc).__name__


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():  # cancelled in the same loop iteration the timer fired
        fut.set_result(None)


def _dechunk(data: bytes) -> bytes:
    """The payload of a chunked body (as much as is there)."""
    out, pos = bytearray(), 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return bytes(out)
        try:
            size = int(data[pos:eol].split(b";", 1)[0].strip() or b"0", 16)
        except ValueError:
            return bytes(out)
        if size == 0:
            return bytes(out)
        out += data[eol + 2:eol + 2 + size]
        pos = eol + 2 + size + 2


class HealthMonitor:
    """Probes endpoints on one asyncio loop in its own thread (see the module's docstring).

    ``netns``: the path of a network namespace (``/run/netns/NAME``) the monitor's thread
    enters before it opens any socket; by default the thread stays in the namespace of the
    thread that calls ``start``.
    """

    def __init__(self, on_change: Callable[[ProbeSpec, bool], None], *,
                 netns: str | None = None) -> None:
        self.on_change = on_change
        self.netns = netns
        self._lock = threading.Lock()
        self._probes: dict[ProbeSpec, _Probe] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_event: asyncio.Event | None = None
        self._pinger: _Pinger | None = None
        self._ssl: dict[str, tuple[float, ssl.SSLContext]] = {}
        self._jitter: deque[float] = deque(maxlen=JITTER_SAMPLES)
        self._late = 0

    # -- life cycle -------------------------------------------------------------
    def start(self) -> None:
        """Start the monitor's thread and loop; the probes added so far begin."""
        if self._thread is not None:
            raise RuntimeError("health monitor already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                if self.netns:
                    _setns(self.netns)
                loop = asyncio.new_event_loop()
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                failure.append(exc)
                ready.set()
                return
            self._loop = loop
            try:
                loop.run_until_complete(self._main(ready))
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="loxilbd-health", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]

    def stop(self) -> None:
        """Stop probing and join the thread (added specs are kept for a later start)."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        stop_event = self._stop_event
        if stop_event is not None:
            try:
                loop.call_soon_threadsafe(stop_event.set)
            except RuntimeError:
                pass  # loop already closed
        thread.join()
        self._thread = None
        self._loop = None

    async def _main(self, ready: threading.Event) -> None:
        self._stop_event = asyncio.Event()
        with self._lock:
            for p in self._probes.values():
                self._spawn(p)
        ready.set()
        try:
            await self._stop_event.wait()
        finally:
            with self._lock:
                tasks = [p.task for p in self._probes.values() if p.task is not None]
                for p in self._probes.values():
                    p.task = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._pinger is not None:
                self._pinger.close()
                self._pinger = None

    # -- registry (any thread; never waits for the loop) --------------------------
    def add(self, spec: ProbeSpec) -> int:
        """Probe ``spec`` (validated; ValueError otherwise); returns its reference count."""
        validate(spec)
        with self._lock:
            p = self._probes.get(spec)
            if p is not None:
                p.refs += 1
                return p.refs
            p = _Probe(spec, ProbeStatus(period_s=spec.interval_s))
            self._probes[spec] = p
            loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._spawn_locked, p)
            except RuntimeError:
                pass  # loop shutting down: a later start() spawns it
        return 1

    def remove(self, spec: ProbeSpec) -> int:
        """Drop one reference; at zero the probe stops and its status is forgotten.

        Returns the references left (0 also for a spec that was not added)."""
        with self._lock:
            p = self._probes.get(spec)
            if p is None:
                return 0
            p.refs -= 1
            if p.refs > 0:
                return p.refs
            del self._probes[spec]
            p.removed = True
            task, loop = p.task, self._loop
        if task is not None and loop is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:
                pass
        return 0

    def refs(self, spec: ProbeSpec) -> int:
        with self._lock:
            p = self._probes.get(spec)
            return p.refs if p is not None else 0

    def status(self, spec: ProbeSpec) -> ProbeStatus | None:
        """A copy of the spec's status, or None if it is not monitored."""
        with self._lock:
            p = self._probes.get(spec)
            return replace(p.status) if p is not None else None

    def all(self) -> dict[ProbeSpec, ProbeStatus]:
        with self._lock:
            return {s: replace(p.status) for s, p in self._probes.items()}

    def jitter(self, reset: bool = False) -> dict[str, float]:
        """|actual start - scheduled start| of the probes run (since the last reset):
        ``count``, ``p50_ms``, ``p99_ms``, ``max_ms``, and ``skipped`` slots."""
        with self._lock:
            samples = sorted(self._jitter)
            skipped = self._late
            if reset:
                self._jitter.clear()
                self._late = 0
        n = len(samples)

        def pct(q: float) -> float:
            return samples[min(n - 1, int(q * n))] * 1e3 if n else 0.0

        return {"count": float(n), "p50_ms": pct(0.50), "p99_ms": pct(0.99),
                "max_ms": samples[-1] * 1e3 if n else 0.0, "skipped": float(skipped)}

    # -- scheduling (loop thread) -------------------------------------------------
    def _spawn_locked(self, p: _Probe) -> None:
        with self._lock:
            self._spawn(p)

    def _spawn(self, p: _Probe) -> None:
        """Start ``p``'s task (lock held, loop thread)."""
        if p.removed or p.task is not None or p.spec.ptype == "none":
            return
        p.task = asyncio.get_running_loop().create_task(self._run(p))

    @staticmethod
    def _offset(spec: ProbeSpec) -> float:
        frac = zlib.crc32(repr(spec).encode()) / 2**32
        return frac * min(spec.interval_s, STAGGER_MAX_S)

    async def _sleep_until(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        fut = loop.create_future()
        handle = loop.call_at(when, _wake, fut)
        try:
            await fut
        finally:
            handle.cancel()

    @staticmethod
    def _period(p: _Probe) -> float:
        iv = p.spec.interval_s
        return (backoff_factors(iv)[p.level - 1] if p.level else 1) * iv

    async def _run(self, p: _Probe) -> None:
        loop = asyncio.get_running_loop()
        spec, iv = p.spec, p.spec.interval_s
        anchor = loop.time() + self._offset(spec)  # the grid point of the last regular probe
        due = anchor
        try:
            while not p.removed:
                if due > loop.time():
                    await self._sleep_until(loop, due)
                lateness = abs(loop.time() - due)
                ok, delay, err = await self._probe_once(spec)
                if p.removed:
                    return
                changed, confirm = self._record(p, ok, delay, err, lateness)
                now = loop.time()
                if confirm:
                    due = now + confirm_delay(iv)
                else:
                    nxt = anchor + self._period(p)
                    skipped = 0
                    while nxt <= now:
                        nxt += iv
                        skipped += 1
                    if skipped:
                        with self._lock:
                            p.status.skipped += skipped
                            self._late += skipped
                    anchor = due = nxt
                with self._lock:
                    p.status.period_s = due - now if confirm else self._period(p)
                if changed is not None and not p.removed:
                    try:
                        self.on_change(spec, changed)
                    except Exception:  # noqa: BLE001 - a callback must not stop probing
                        log.exception("health on_change callback failed for %s", spec)
        except asyncio.CancelledError:
            pass

    def _record(self, p: _Probe, ok: bool, delay: float | None, err: str,
                lateness: float) -> tuple[bool | None, bool]:
        """Account a probe's result; returns (new health if it changed, confirm next)."""
        changed: bool | None = None
        confirm = False
        with self._lock:
            self._jitter.append(lateness)
            st = p.status
            st.probes += 1
            st.last_probe = time.time()
            if ok:
                st.consecutive_failures = 0
                st.consecutive_successes += 1
                if delay is not None:
                    ms = delay * 1e3
                    st.last_delay_ms = ms
                    p.delay_sum += ms
                    p.delay_count += 1
                    st.min_delay_ms = ms if st.min_delay_ms is None else min(st.min_delay_ms, ms)
                    st.max_delay_ms = ms if st.max_delay_ms is None else max(st.max_delay_ms, ms)
                    st.avg_delay_ms = p.delay_sum / p.delay_count
                if st.state == "nok":
                    if st.consecutive_successes >= 2:
                        st.state, st.last_change, p.level = "ok", time.time(), 0
                        changed = True
                    else:
                        confirm = True
            else:
                st.failures += 1
                st.consecutive_successes = 0
                st.consecutive_failures += 1
                st.last_error = err
                if st.state == "ok" and st.consecutive_failures >= p.spec.retries:
                    st.state, st.last_change, p.level = "nok", time.time(), 1
                    changed = False
                elif st.state == "nok":
                    p.level = min(p.level + 1, len(backoff_factors(p.spec.interval_s)))
        return changed, confirm

    # -- probes (loop thread) -----------------------------------------------------
    async def _probe_once(self, spec: ProbeSpec) -> tuple[bool, float | None, str]:
        """(up, delay in seconds or None, error text) of one probe, within its timeout."""
        try:
            async with asyncio.timeout(spec.timeout_s):
                delay = await self._probe(spec)
            return True, delay, ""
        except TimeoutError:
            if spec.ptype == "udp" and not spec.resp:
                return True, None, ""  # silence is not a failure without an expected reply
            return False, None, f"{spec.ptype}: no answer within {spec.timeout_s:g} s"
        except ProbeFailed as exc:
            return False, None, str(exc)
        except ConnectionRefusedError:
            if spec.ptype == "udp":
                return False, None, "udp: ICMP port unreachable (connection refused)"
            return False, None, f"{spec.ptype}: connection refused"
        except OSError as exc:
            return False, None, f"{spec.ptype}: {_oserror_text(exc)}"
        except Exception as exc:  # noqa: BLE001 - a probe bug must not kill the task
            log.exception("health probe %s failed unexpectedly", spec)
            return False, None, f"{spec.ptype}: internal error: {exc!r}"

    async def _probe(self, spec: ProbeSpec) -> float | None:
        """Run one probe; return its delay in seconds (None: not measured) or raise."""
        if spec.ptype == "ping":
            return await self._ping(spec)
        if spec.ptype == "tcp":
            return await self._tcp(spec)
        if spec.ptype == "udp":
            return await self._udp(spec)
        if spec.ptype in ("http", "https"):
            return await self._http(spec)
        return None  # none

    async def _ping(self, spec: ProbeSpec) -> float:
        if self._pinger is None:
            try:
                self._pinger = _Pinger(asyncio.get_running_loop())
            except OSError as exc:
                raise ProbeFailed(f"ping: raw ICMP socket: {_oserror_text(exc)} "
                                  "(ping probes need root or CAP_NET_RAW)") from None
        return await self._pinger.ping(spec.host)

    async def _tcp(self, spec: ProbeSpec) -> float:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            t0 = time.perf_counter()
            await loop.sock_connect(sock, (spec.host, spec.port))
            delay = time.perf_counter() - t0
            if spec.req:
                await loop.sock_sendall(sock, spec.req.encode())
            if spec.resp:
                want, buf = spec.resp.encode(), b""
                while want not in buf:
                    chunk = await loop.sock_recv(sock, 4096)
                    if not chunk:
                        raise ProbeFailed(f"tcp: reply lacks {spec.resp!r} "
                                          f"(got {buf[:64]!r}, then the peer closed)")
                    buf += chunk
                    if len(buf) > READ_LIMIT:
                        raise ProbeFailed(f"tcp: no {spec.resp!r} in the first "
                                          f"{READ_LIMIT} bytes")
                delay = time.perf_counter() - t0
            return delay
        finally:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            except OSError:
                pass
            sock.close()

    async def _udp(self, spec: ProbeSpec) -> float | None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((spec.host, spec.port))
            t0 = time.perf_counter()
            await loop.sock_sendall(sock, spec.req.encode())
            data = await loop.sock_recv(sock, 65535)
            if spec.resp and spec.resp.encode() not in data:
                raise ProbeFailed(f"udp: reply lacks {spec.resp!r} (got {data[:64]!r})")
            return time.perf_counter() - t0
        finally:
            sock.close()

    def _ssl_context(self, ca_file: str) -> ssl.SSLContext:
        mtime = os.stat(ca_file).st_mtime if ca_file else 0.0
        cached = self._ssl.get(ca_file)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        if ca_file:
            ctx = ssl.create_default_context(cafile=ca_file)  # verifies chain and IP SAN
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        self._ssl[ca_file] = (mtime, ctx)
        return ctx

    async def _http(self, spec: ProbeSpec) -> float:
        tls = spec.ptype == "https"
        ctx: ssl.SSLContext | None = None
        if tls:
            try:
                ctx = self._ssl_context(spec.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ProbeFailed(f"https: ca_file {spec.ca_file}: "
                                  f"{_oserror_text(exc)}") from None
        default_port = 443 if tls else 80
        host = spec.host if spec.port == default_port else f"{spec.host}:{spec.port}"
        request = (f"GET {spec.req or '/'} HTTP/1.1\r\nHost: {host}\r\n"
                   "User-Agent: loxilbd-health/1\r\nAccept: */*\r\nConnection: close\r\n\r\n")
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection(
            spec.host, spec.port, ssl=ctx, limit=READ_LIMIT,
            ssl_handshake_timeout=spec.timeout_s if tls else None,
        )
        try:
            writer.write(request.encode("latin-1"))
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                raise ProbeFailed(f"{spec.ptype}: connection closed before a response "
                                  f"(got {exc.partial[:64]!r})") from None
            except asyncio.LimitOverrunError:
                raise ProbeFailed(f"{spec.ptype}: response header over "
                                  f"{READ_LIMIT} bytes") from None
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                raise ProbeFailed(f"{spec.ptype}: not an HTTP response: {lines[0][:80]!r}")
            if parts[1] != "200":
                raise ProbeFailed(f"{spec.ptype}: status {' '.join(parts[1:])}")
            if not spec.resp:
                return time.perf_counter() - t0
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            want = spec.resp.encode()
            chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            length = headers.get("content-length", "")
            body = b""
            if not chunked and length.isdigit():
                body = await self._read_some(reader, min(int(length), READ_LIMIT))
            else:
                while len(body) < READ_LIMIT:
                    chunk = await reader.read(READ_LIMIT - len(body))
                    if not chunk:
                        break
                    body += chunk
                    if chunked and body.endswith(b"0\r\n\r\n"):
                        break
                    if not chunked and want in body:
                        break
                if chunked:
                    body = _dechunk(body)
            if want not in body:
                raise ProbeFailed(f"{spec.ptype}: body lacks {spec.resp!r} "
                                  f"(got {body[:64]!r})")
            return time.perf_counter() - t0
        finally:
            transport = writer.transport
            sock = transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
                except OSError:
                    pass
            transport.abort()

    @staticmethod
    async def _read_some(reader: asyncio.StreamReader, n: int) -> bytes:
        try:
            return await reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            return exc.partial


__all__ = [
    "PROBE_TYPES", "HealthMonitor", "ProbeFailed", "ProbeSpec", "ProbeStatus",
    "backoff_factors", "confirm_delay", "validate",
]
