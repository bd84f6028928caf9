"""The kinds of probe, chosen by name through a registry (:func:`probe_kinds`); the
monitor schedules them and never asks which kind it runs.

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
    status is 200 and, if ``resp`` is set, the body (up to 64 KiB) contains it. The response
    is read by h11, the HTTP/1.1 parser uvicorn uses too (chunked bodies, framing errors).
    ``https`` with ``ca_file`` verifies the certificate chain against that bundle and the
    certificate's name against the host address (an IP SAN); without it, no verification.
``none``
    Always ok; nothing is sent.

A kind measures one probe: it returns the delay in seconds (None: not measured) or raises
:class:`ProbeFailed` (or an OSError); the monitor applies the timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import ssl
import struct
import time
from typing import Protocol

import h11

from .spec import ProbeSpec

log = logging.getLogger("loxilbd.health")

READ_LIMIT = 64 * 1024  # bytes read from a tcp or http reply
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_SOL_RAW = 255
_ICMP_FILTER = 1
_ICMP_ECHOREPLY, _ICMP_UNREACH, _ICMP_ECHO, _ICMP_TIMXCEED = 0, 3, 8, 11
_LINGER_RST = struct.pack("ii", 1, 0)
_UNREACH_CODES = {0: "network unreachable", 1: "host unreachable", 2: "protocol unreachable",
                  3: "port unreachable", 9: "network prohibited", 10: "host prohibited",
                  13: "administratively prohibited"}


class ProbeFailed(Exception):
    """A probe's negative verdict; its text goes to ``ProbeStatus.last_error``."""


def oserror_text(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"tls: {exc.reason or exc}"
    return exc.strerror or str(exc) or type(exc).__name__


def _close_with_rst(sock: socket.socket | None) -> None:
    """Zero linger: the close sends a RST, so probes leave no TIME_WAIT behind."""
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass


class ProbeKind(Protocol):
    """One kind of probe (an instance per monitor, living on its event loop)."""

    def silence_is_up(self, spec: ProbeSpec) -> bool:
        """Whether no answer within the timeout means up (udp without `resp`)."""
        ...

    async def measure(self, spec: ProbeSpec) -> float | None:
        ...

    def close(self) -> None:
        ...


class _Kind:
    def silence_is_up(self, spec: ProbeSpec) -> bool:
        return False

    def close(self) -> None:
        pass


class Pinger:
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



class PingProbe(_Kind):
    """ICMP echo over one raw socket for every ping probe of the monitor."""

    def __init__(self) -> None:
        self._pinger: Pinger | None = None

    async def measure(self, spec: ProbeSpec) -> float:
        if self._pinger is None:
            try:
                self._pinger = Pinger(asyncio.get_running_loop())
            except OSError as exc:
                raise ProbeFailed(f"ping: raw ICMP socket: {oserror_text(exc)} "
                                  "(ping probes need root or CAP_NET_RAW)") from None
        return await self._pinger.ping(spec.host)

    def close(self) -> None:
        if self._pinger is not None:
            self._pinger.close()
            self._pinger = None


class TcpProbe(_Kind):
    """Connect; send `req`; read until `resp` is seen."""

    async def measure(self, spec: ProbeSpec) -> float:
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
            _close_with_rst(sock)
            sock.close()


class UdpProbe(_Kind):
    """Send `req` on a connected socket; an answer (containing `resp`) is up, an ICMP
    error down, silence up unless `resp` is expected."""

    def silence_is_up(self, spec: ProbeSpec) -> bool:
        return not spec.resp

    async def measure(self, spec: ProbeSpec) -> float | None:
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


class HttpProbe(_Kind):
    """GET `req` over HTTP/1.1 (TLS for https); up on status 200 with `resp` in the body."""

    def __init__(self, tls: bool) -> None:
        self.tls = tls
        self._ssl: dict[str, tuple[float, ssl.SSLContext]] = {}

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

    async def measure(self, spec: ProbeSpec) -> float:
        kind = spec.ptype
        ctx: ssl.SSLContext | None = None
        if self.tls:
            try:
                ctx = self._ssl_context(spec.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ProbeFailed(f"https: ca_file {spec.ca_file}: "
                                  f"{oserror_text(exc)}") from None
        default_port = 443 if self.tls else 80
        host = spec.host if spec.port == default_port else f"{spec.host}:{spec.port}"
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection(
            spec.host, spec.port, ssl=ctx, limit=READ_LIMIT,
            ssl_handshake_timeout=spec.timeout_s if self.tls else None,
        )
        http = h11.Connection(h11.CLIENT, max_incomplete_event_size=READ_LIMIT)
        try:
            writer.write(http.send(h11.Request(method="GET", target=spec.req or "/", headers=[
                ("Host", host), ("User-Agent", "loxilbd-health/1"), ("Accept", "*/*"),
                ("Connection", "close")])) + http.send(h11.EndOfMessage()))
            want, body = spec.resp.encode(), b""
            while True:
                try:
                    event = http.next_event()
                except h11.RemoteProtocolError as exc:
                    raise ProbeFailed(f"{kind}: not an HTTP response ({exc})") from None
                if event is h11.NEED_DATA:
                    http.receive_data(await reader.read(READ_LIMIT))  # b"": the peer closed
                elif isinstance(event, h11.Response):
                    if event.status_code != 200:
                        reason = event.reason.decode("latin-1")
                        raise ProbeFailed(f"{kind}: status {event.status_code} {reason}".rstrip())
                    if not want:
                        return time.perf_counter() - t0
                elif isinstance(event, h11.Data):
                    body += event.data
                    if want in body:
                        return time.perf_counter() - t0
                    if len(body) > READ_LIMIT:
                        break
                else:  # end of the body, or of the connection (h11 raises when it
                    break  # closes before a whole response: "not an HTTP response")
            raise ProbeFailed(f"{kind}: body lacks {spec.resp!r} (got {body[:64]!r})")
        finally:
            _close_with_rst(writer.transport.get_extra_info("socket"))
            writer.transport.abort()


class NoneProbe(_Kind):
    """Always up; nothing is sent."""

    async def measure(self, spec: ProbeSpec) -> None:
        return None


def probe_kinds() -> dict[str, ProbeKind]:
    """A fresh instance of every kind, by the name a ProbeSpec gives (names.PROBE_TYPES)."""
    return {"ping": PingProbe(), "tcp": TcpProbe(), "udp": UdpProbe(),
            "http": HttpProbe(tls=False), "https": HttpProbe(tls=True), "none": NoneProbe()}
