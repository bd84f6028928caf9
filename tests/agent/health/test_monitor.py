"""The probe engine (loxicmd/agent/health/) against real servers in lab namespaces.

One lab for the module: ``mon`` (where the HealthMonitor's thread runs: ``netns=``) linked to
``srv`` (198.18.20.2: tests/backend.py as server1, scripted servers below) and to ``srv2``
(198.18.21.2, whose link the ping test takes down). 198.18.99.9 has no route from ``mon``.

Short periods (interval 0.3 s, timeout 0.2 s, 2 retries): a bad endpoint must be ``nok``
within interval x retries + timeout (0.8 s) plus SLACK for scheduling.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lab import Lab, Netns, start_backend, wait_for

from loxicmd.agent.health.monitor import (
    HealthMonitor,
    ProbeStatus,
    backoff_factors,
    confirm_delay,
)
from loxicmd.agent.health.spec import ProbeSpec, validate

IV, TO, RETRIES = 0.3, 0.2, 2
DETECT = IV * RETRIES + TO
SLACK = 0.35
SRV, SRV2, NOROUTE, NOHOST = "198.18.20.2", "198.18.21.2", "198.18.99.9", "198.18.20.77"

# A server whose answers follow a pattern read (per request) from a control file, one letter
# per request, cyclically: G 200 "good", B 500, W 200 "wrong", H hang, C 200 "good" chunked.
# A new file content restarts the pattern at its first letter.
_SCRIPTED = textwrap.dedent(
    r"""
    import asyncio, ssl, sys

    class Pattern:
        def __init__(self, path):
            self.path, self.raw, self.i = path, None, 0
        def next(self):
            try:
                with open(self.path) as f:
                    raw = f.read().strip() or "G"
            except OSError:
                raw = "G"
            if raw != self.raw:
                self.raw, self.i = raw, 0
            c = raw[self.i % len(raw)]
            self.i += 1
            return c

    def http_handler(pattern):
        async def handle(reader, writer):
            try:
                await reader.readuntil(b"\r\n\r\n")
                c = pattern.next()
                if c == "H":
                    await asyncio.sleep(30)
                    return
                if c == "C":
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                                 b"Connection: close\r\n\r\n3\r\ngoo\r\n2\r\nd\n\r\n0\r\n\r\n")
                else:
                    status, body = {"G": (b"200 OK", b"good\n"),
                                    "B": (b"500 Internal Server Error", b"good\n"),
                                    "W": (b"200 OK", b"wrong\n")}[c]
                    writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: "
                                 + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
                                 + body)
                await writer.drain()
            except Exception:
                pass
            finally:
                writer.close()
        return handle

    class Sink(asyncio.DatagramProtocol):
        pass  # receives, never answers

    async def main():
        args, cert, key = sys.argv[1:], None, None
        http, https, sinks = [], [], []
        while args:
            opt = args.pop(0)
            if opt == "--http":
                http.append((int(args.pop(0)), args.pop(0)))
            elif opt == "--https":
                https.append((int(args.pop(0)), args.pop(0)))
            elif opt == "--udp-sink":
                sinks.append(int(args.pop(0)))
            elif opt == "--cert":
                cert, key = args.pop(0), args.pop(0)
        loop = asyncio.get_running_loop()
        keep = []
        for port, ctrl in http:
            keep.append(await asyncio.start_server(http_handler(Pattern(ctrl)), "0.0.0.0",
                                                   port, reuse_address=True))
        if https:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            for port, ctrl in https:
                keep.append(await asyncio.start_server(http_handler(Pattern(ctrl)),
                                                       "0.0.0.0", port, ssl=ctx,
                                                       reuse_address=True))
        for port in sinks:
            keep.append(await loop.create_datagram_endpoint(Sink,
                                                            local_addr=("0.0.0.0", port)))
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)

# scripted listeners in srv: port -> initial pattern
HTTP_500, HTTP_WRONG, HTTP_HANG, HTTP_CHUNKED, CTRL_A, CTRL_B = 8081, 8082, 8084, 8085, 8086, 8087
HTTPS_OK, HTTPS_500 = 8443, 8444
UDP_SINK, CLOSED = 9000, 9999
ECHO = 7000


@dataclass
class World:
    lab: Lab
    mon: Netns
    srv: Netns
    srv2: Netns
    ctrl: dict[int, Path]
    ca: str
    other_ca: str

    def pattern(self, port: int, pattern: str) -> None:
        tmp = self.ctrl[port].with_suffix(".tmp")
        tmp.write_text(pattern)
        tmp.replace(self.ctrl[port])


def _openssl(workdir: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=workdir, check=True, capture_output=True,
                   timeout=30)


def _make_certs(workdir: Path) -> None:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(workdir, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=lab test CA")
    _openssl(workdir, "req", "-x509", *ec, "-keyout", "other.key", "-out", "other.pem",
             "-days", "2", "-subj", "/CN=some other CA")
    _openssl(workdir, "req", *ec, "-keyout", "srv.key", "-out", "srv.csr",
             "-subj", f"/CN={SRV}")
    (workdir / "srv.ext").write_text(
        f"subjectAltName=IP:{SRV}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid,issuer\nsubjectKeyIdentifier=hash\n"
    )
    _openssl(workdir, "x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "srv.pem", "-days", "2", "-extfile", "srv.ext")


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.fail(f"the health probe tests must run as root (euid is {os.geteuid()})",
                    pytrace=False)
    with Lab() as lab:
        mon, srv, srv2 = lab.add_ns("mon"), lab.add_ns("srv"), lab.add_ns("srv2")
        lab.link(mon, srv, "m0", "eth0", "198.18.20.1/24", f"{SRV}/24")
        lab.link(mon, srv2, "m1", "eth0", "198.18.21.1/24", f"{SRV2}/24")
        srv.sysctl("net.ipv4.icmp_ratelimit", 0)  # every closed-port probe gets its ICMP
        work = lab.workdir
        _make_certs(work)
        ctrl = {}
        for port, pat in ((HTTP_500, "B"), (HTTP_WRONG, "W"), (HTTP_HANG, "H"),
                          (HTTP_CHUNKED, "C"), (CTRL_A, "G"), (CTRL_B, "G"),
                          (HTTPS_OK, "G"), (HTTPS_500, "B")):
            ctrl[port] = work / f"ctrl-{port}"
            ctrl[port].write_text(pat)
        argv = [sys.executable, "-c", _SCRIPTED]
        for port in (HTTP_500, HTTP_WRONG, HTTP_HANG, HTTP_CHUNKED, CTRL_A, CTRL_B):
            argv += ["--http", str(port), str(ctrl[port])]
        for port in (HTTPS_OK, HTTPS_500):
            argv += ["--https", str(port), str(ctrl[port])]
        argv += ["--udp-sink", str(UDP_SINK), "--cert", str(work / "srv.pem"),
                 str(work / "srv.key")]
        with open(work / "scripted.log", "wb") as logf:
            proc = srv.popen(*argv, stdout=subprocess.PIPE, stderr=logf)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == b"ready", (line, (work / "scripted.log").read_text())
        start_backend(lab, srv, "server1", 8080, 8080, echo_port=ECHO)
        yield World(lab, mon, srv, srv2, ctrl, str(work / "ca.pem"), str(work / "other.pem"))


class Events:
    """on_change recorder: (monotonic time, spec, healthy)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[float, ProbeSpec, bool]] = []

    def __call__(self, spec: ProbeSpec, healthy: bool) -> None:
        with self.lock:
            self.items.append((time.monotonic(), spec, healthy))

    def of(self, spec: ProbeSpec) -> list[tuple[float, bool]]:
        with self.lock:
            return [(t, h) for t, s, h in self.items if s == spec]


@pytest.fixture
def mon(world: World) -> Iterator[tuple[HealthMonitor, Events]]:
    events = Events()
    monitor = HealthMonitor(events, netns=world.mon.path)
    monitor.start()
    try:
        yield monitor, events
    finally:
        monitor.stop()


def S(ptype: str, port: int = 0, host: str = SRV, **kw: object) -> ProbeSpec:  # noqa: N802
    return ProbeSpec(host=host, ptype=ptype, port=port, interval_s=IV, timeout_s=TO,
                     retries=RETRIES, **kw)  # type: ignore[arg-type]


def _state(m: HealthMonitor, spec: ProbeSpec) -> str:
    st = m.status(spec)
    assert st is not None
    return st.state


def wait_state(m: HealthMonitor, spec: ProbeSpec, state: str, timeout: float) -> float:
    """Wait for ``spec`` to reach ``state``; returns the seconds it took."""
    t0 = time.monotonic()
    wait_for(lambda: _state(m, spec) == state, timeout=timeout, interval=0.01,
             what=f"{spec} to be {state} (status {m.status(spec)})")
    return time.monotonic() - t0


def _plausible_delays(st: ProbeStatus, limit_ms: float) -> None:
    assert st.min_delay_ms is not None and st.avg_delay_ms is not None
    assert st.max_delay_ms is not None
    assert 0 < st.min_delay_ms <= st.avg_delay_ms <= st.max_delay_ms < limit_ms, st


def check_types(m: HealthMonitor, events: Events, good: list[ProbeSpec],
                bad: dict[ProbeSpec, str], measured: bool = True) -> dict[ProbeSpec, float]:
    """Add every spec at once: each bad one must be nok within DETECT (its last_error
    containing the given text), each good one must stay ok with no failure."""
    t0 = time.monotonic()
    for spec in [*good, *bad]:
        m.add(spec)
    took: dict[ProbeSpec, float] = {}
    deadline = t0 + DETECT + SLACK
    while len(took) < len(bad) and time.monotonic() < deadline:
        for spec in bad:
            if spec not in took and _state(m, spec) == "nok":
                took[spec] = time.monotonic() - t0
        time.sleep(0.01)
    late = {str(s): m.status(s) for s in bad if s not in took}
    assert not late, f"not nok within {DETECT + SLACK:.2f} s: {late}"
    for spec, text in bad.items():
        st = m.status(spec)
        assert st is not None and text in st.last_error, (spec, st)
        assert [h for _, h in events.of(spec)] == [False]
    time.sleep(max(0.0, t0 + DETECT + 2 * IV - time.monotonic()))
    for spec in good:
        st = m.status(spec)
        assert st is not None and st.state == "ok" and st.failures == 0, (spec, st)
        assert st.probes >= RETRIES, st
        assert events.of(spec) == []
        if measured:
            _plausible_delays(st, TO * 1000)
    return took


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"host": "198.18.1"}, "host"),
        ({"host": "::1"}, "host"),
        ({"host": "0.0.0.0"}, "host"),
        ({"host": 3325170690}, "host"),
        ({"ptype": "icmp", "port": 0}, "ptype"),
        ({"ptype": "tcp", "port": 0}, "port"),
        ({"ptype": "udp", "port": 70000}, "port"),
        ({"ptype": "http", "port": -1}, "port"),
        ({"ptype": "ping", "port": 80}, "port"),
        ({"ptype": "none", "port": 1}, "port"),
        ({"ptype": "ping", "port": 0, "req": "x"}, "req"),
        ({"ptype": "http", "port": 80, "req": "health"}, "req"),
        ({"ptype": "http", "port": 80, "req": "/a b"}, "req"),
        ({"ptype": "http", "port": 80, "req": "/\u00e9"}, "req"),
        ({"interval_s": 86401.0}, "interval_s"),
        ({"interval_s": 0.0}, "interval_s"),
        ({"interval_s": float("nan")}, "interval_s"),
        ({"interval_s": 5.0, "timeout_s": 5.0}, "timeout_s"),
        ({"timeout_s": 0.0}, "timeout_s"),
        ({"retries": 0}, "retries"),
        ({"retries": 101}, "retries"),
        ({"ca_file": "/nonexistent/ca.pem", "ptype": "https", "port": 443}, "ca_file"),
        ({"ca_file": "/etc/hostname", "ptype": "tcp", "port": 443}, "ca_file"),
    ],
)
def test_validation_names_the_field(kw: dict[str, object], field: str) -> None:
    base: dict[str, object] = {"host": SRV, "ptype": "tcp", "port": 80}
    spec = ProbeSpec(**{**base, **kw})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"^{field}: "):
        validate(spec)
    m = HealthMonitor(lambda s, h: None)
    with pytest.raises(ValueError, match=rf"^{field}: "):
        m.add(spec)
    assert m.all() == {}


def test_valid_specs_and_timing_helpers() -> None:
    for spec in (ProbeSpec(SRV, "ping"), ProbeSpec(SRV, "none"), ProbeSpec(SRV, "tcp", 1),
                 ProbeSpec(SRV, "http", 65535, req="/h?x=1", resp="ok", interval_s=86400,
                           timeout_s=2, retries=100),
                 ProbeSpec(SRV, "udp", 53, interval_s=1, timeout_s=0.5, retries=1)):
        validate(spec)
    assert backoff_factors(1.0) == [2, 4, 8]
    assert backoff_factors(10.0) == [2, 4, 6]  # min(8 x 10 s, 60 s)
    assert backoff_factors(40.0) == [1]  # 60 s cap: no back-off
    assert confirm_delay(0.3) == pytest.approx(0.15) and confirm_delay(10.0) == 1.0


# --------------------------------------------------------------------------- probe types


def test_tcp(world: World, mon: tuple[HealthMonitor, Events]) -> None:
    m, events = mon
    check_types(
        m, events,
        good=[S("tcp", 8080), S("tcp", ECHO, req="hello\n", resp="hello"),
              S("tcp", 8080, req="GET / HTTP/1.0\r\n\r\n", resp="server1")],
        bad={S("tcp", CLOSED): "connection refused",
             S("tcp", ECHO, req="hello\n", resp="bye"): "no answer within",
             S("tcp", 8080, req="GET / HTTP/1.0\r\n\r\n", resp="nope"): "reply lacks 'nope'",
             S("tcp", 8080, host=NOROUTE): "unreachable",
             S("tcp", 8080, host=NOHOST): "no answer within"},
    )


def test_udp(world: World, mon: tuple[HealthMonitor, Events]) -> None:
    m, events = mon
    check_types(m, events,
                good=[S("udp", 8080, req="hi", resp="server1:hi"), S("udp", 8080)],
                bad={S("udp", 8080, req="hi", resp="nope"): "reply lacks 'nope'",
                     S("udp", CLOSED): "ICMP port unreachable",
                     S("udp", CLOSED, req="x", resp="x"): "ICMP port unreachable",
                     S("udp", UDP_SINK, req="x", resp="x"): "no answer within"})
    # No expected reply: silence within the timeout is "up" (only an ICMP error is down).
    silent = S("udp", UDP_SINK, req="x")
    m.add(silent)
    time.sleep(DETECT + IV)
    st = m.status(silent)
    assert st is not None and st.state == "ok" and st.failures == 0 and st.probes >= 2
    assert st.min_delay_ms is None  # nothing to measure


def test_http(world: World, mon: tuple[HealthMonitor, Events]) -> None:
    m, events = mon
    check_types(
        m, events,
        good=[S("http", 8080), S("http", 8080, req="/health", resp="server1"),
              S("http", HTTP_CHUNKED, resp="good")],
        bad={S("http", 8080, resp="nope"): "body lacks 'nope'",
             S("http", HTTP_500): "status 500",
             S("http", HTTP_WRONG, resp="good"): "body lacks 'good'",
             S("http", HTTP_HANG): "no answer within",
             S("http", CLOSED): "connection refused"},
    )


def test_https(world: World, mon: tuple[HealthMonitor, Events]) -> None:
    m, events = mon
    check_types(
        m, events,
        good=[S("https", HTTPS_OK, ca_file=world.ca), S("https", HTTPS_OK),
              S("https", HTTPS_OK, req="/x", resp="good", ca_file=world.ca),
              S("https", HTTPS_OK, resp="good")],
        bad={S("https", HTTPS_OK, ca_file=world.other_ca): "certificate verify failed",
             S("https", HTTPS_500, ca_file=world.ca): "status 500",
             S("https", 8080): "https: ",  # plain HTTP where TLS is expected
             S("https", CLOSED): "connection refused"},
    )


def test_ping(world: World, mon: tuple[HealthMonitor, Events]) -> None:
    m, events = mon
    check_types(m, events, good=[S("ping"), S("ping", host=SRV2)],
                bad={S("ping", host=NOROUTE): "unreachable",
                     S("ping", host=NOHOST): "no answer within"})
    # The backend's link goes down: nok within DETECT; back up: ok again, confirmed.
    spec = S("ping", host=SRV2)
    t_down = time.monotonic()
    world.srv2.ip("link", "set", "eth0", "down")
    try:
        took = wait_state(m, spec, "nok", DETECT + SLACK + 0.2)
        time.sleep(0.5)
        st = m.status(spec)
        assert st is not None and st.period_s > IV  # backing off while down
    finally:
        t_up = time.monotonic()
        world.srv2.ip("link", "set", "eth0", "up")
    print(f"\nping link down -> nok {took:.2f} s after the fault was started "
          f"({t_up - t_down:.2f} s down)")
    bound = max(backoff_factors(IV)) * IV + 2 * TO + confirm_delay(IV) + SLACK + 0.5
    wait_state(m, spec, "ok", bound)
    print(f"ping link up -> ok {time.monotonic() - t_up:.2f} s after the link came back")
    assert [h for _, h in events.of(spec)] == [False, True]


def test_none(world: World, mon: tuple[HealthMonitor, Events]) -> None:
    m, events = mon
    spec = S("none")
    assert m.add(spec) == 1
    time.sleep(3 * IV)
    st = m.status(spec)
    assert st is not None and st.state == "ok" and st.probes == 0 and events.items == []


# --------------------------------------------------------------------------- state machine


def test_detection_backoff_and_confirmed_recovery(world: World,
                                                  mon: tuple[HealthMonitor, Events]) -> None:
    m, events = mon
    world.pattern(CTRL_A, "G")
    spec = S("http", CTRL_A, resp="good")
    m.add(spec)
    time.sleep(1.0)
    assert _state(m, spec) == "ok"

    t_fault = time.monotonic()
    world.pattern(CTRL_A, "B")
    detect = wait_state(m, spec, "nok", DETECT + SLACK)
    st = m.status(spec)
    assert st is not None
    down_probes = st.probes

    time.sleep(3.0)  # back-off: 0.6, 1.2, 2.4 s periods rather than 0.3 s
    st = m.status(spec)
    assert st is not None and st.state == "nok"
    backed_off = st.probes - down_probes
    assert backed_off <= 5, f"{backed_off} probes in 3 s while down: no back-off?"
    period = st.period_s
    assert period == pytest.approx(max(backoff_factors(IV)) * IV)

    t_fix = time.monotonic()
    world.pattern(CTRL_A, "G")
    recover = wait_state(m, spec, "ok", period + 2 * TO + confirm_delay(IV) + SLACK)
    st = m.status(spec)
    assert st is not None and st.consecutive_successes >= 2  # a confirmed recovery
    ev = events.of(spec)
    assert [h for _, h in ev] == [False, True]
    print(f"\nhttp 500 -> nok in {detect:.2f} s (bound {DETECT:.2f} s); "
          f"{backed_off} probes in 3 s while down; 200 -> ok in {recover:.2f} s "
          f"(period {period:.2f} s while down)")
    assert ev[0][0] - t_fault <= DETECT + SLACK
    assert ev[1][0] - t_fix >= confirm_delay(IV) * 0.9  # never on the first success alone


def test_killed_backend_detected_and_restart_recovered(
        world: World, mon: tuple[HealthMonitor, Events]) -> None:
    m, events = mon
    proc = start_backend(world.lab, world.srv, "server2", 8090, 8090)
    tcp, udp = S("tcp", 8090), S("udp", 8090, req="x", resp="server2:x")
    m.add(tcp)
    m.add(udp)
    time.sleep(1.0)
    assert _state(m, tcp) == _state(m, udp) == "ok"
    t_kill = time.monotonic()
    proc.terminate()
    proc.wait(5)
    wait_for(lambda: _state(m, tcp) == _state(m, udp) == "nok", timeout=DETECT + SLACK,
             interval=0.01, what="both probes nok")
    detect = time.monotonic() - t_kill
    t_start = time.monotonic()
    start_backend(world.lab, world.srv, "server2", 8090, 8090)
    up = time.monotonic() - t_start
    bound = 2 * IV + 2 * TO + confirm_delay(IV) + SLACK + up  # still early in the back-off
    wait_for(lambda: _state(m, tcp) == _state(m, udp) == "ok", timeout=bound, interval=0.01,
             what="both probes ok again")
    print(f"\nkill -> both nok in {detect:.2f} s; restart (server up in {up:.2f} s) -> ok "
          f"in {time.monotonic() - t_start:.2f} s")
    for spec in (tcp, udp):
        assert [h for _, h in events.of(spec)] == [False, True]


def test_one_lost_probe_does_not_flip(world: World, mon: tuple[HealthMonitor, Events]) -> None:
    m, events = mon
    world.pattern(CTRL_B, "G")
    spec = S("http", CTRL_B)
    m.add(spec)
    time.sleep(0.8)
    world.pattern(CTRL_B, "B" + "G" * 1000)  # the next request fails, then all succeed
    time.sleep(2.0)
    st = m.status(spec)
    assert st is not None and st.failures == 1 and st.state == "ok", st
    assert st.consecutive_failures == 0 and events.of(spec) == []


def test_flapping_endpoint_is_damped(world: World, mon: tuple[HealthMonitor, Events]) -> None:
    m, events = mon
    # Up and alternating good/bad: never two failures in a row, so it never goes down.
    world.pattern(CTRL_A, "GB")
    up = S("http", CTRL_A)
    m.add(up)
    time.sleep(3.0)
    st = m.status(up)
    assert st is not None and st.state == "ok" and st.failures >= 3, st
    assert st.probes - st.failures >= 3 and events.of(up) == []
    m.remove(up)

    # Down, then alternating: each success is followed by a failing confirmation probe,
    # so it never comes back (one change only: the first ok -> nok).
    world.pattern(CTRL_A, "B")
    down = S("http", CTRL_A, req="/down")
    m.add(down)
    wait_state(m, down, "nok", DETECT + SLACK)
    before = m.status(down)
    assert before is not None
    world.pattern(CTRL_A, "GB")
    time.sleep(4.0)
    st = m.status(down)
    assert st is not None and st.state == "nok", st
    successes = (st.probes - st.failures) - (before.probes - before.failures)
    assert successes >= 2, f"the flapping endpoint answered well {successes} times only: {st}"
    assert [h for _, h in events.of(down)] == [False]


def test_add_remove_reference_counting(world: World,
                                       mon: tuple[HealthMonitor, Events]) -> None:
    m, events = mon
    a = S("tcp", 8080)
    b = ProbeSpec(host=SRV, ptype="tcp", port=8080, interval_s=IV, timeout_s=TO,
                  retries=RETRIES)  # an equal spec built elsewhere
    assert a == b and m.add(a) == 1 and m.add(b) == 2
    t0 = time.monotonic()
    time.sleep(1.5)
    st = m.status(a)
    assert st is not None
    assert st.probes <= (time.monotonic() - t0) / IV + 1.5, "equal specs probed twice?"
    assert list(m.all()) == [a]
    assert m.remove(a) == 1 and m.status(b) is not None and m.refs(a) == 1
    assert m.remove(b) == 0 and m.status(a) is None and m.all() == {}
    assert m.remove(a) == 0  # one remove too many: nothing to do
    # Re-added: a fresh status (probing restarts)
    assert m.add(a) == 1
    st2 = m.status(a)
    assert st2 is not None and st2.probes == 0
    wait_for(lambda: (m.status(a) or ProbeStatus()).probes > 0, timeout=2, interval=0.02)


def test_timers_do_not_drift(world: World, mon: tuple[HealthMonitor, Events]) -> None:
    m, _ = mon
    specs = [S("tcp", 8080, req=f"x{i}") for i in range(40)]  # 40 distinct probes
    for spec in specs:
        m.add(spec)
    time.sleep(0.2)
    m.jitter(reset=True)
    t0 = time.monotonic()
    counts0 = {s: (m.status(s) or ProbeStatus()).probes for s in specs}
    time.sleep(3.0)
    elapsed = time.monotonic() - t0
    jit = m.jitter()
    for spec in specs:
        st = m.status(spec)
        assert st is not None and st.state == "ok"
        n = st.probes - counts0[spec]
        assert abs(n - elapsed / IV) <= 1.01, (spec, n, elapsed / IV)
    print(f"\njitter over {int(jit['count'])} probes: p50 {jit['p50_ms']:.2f} ms, "
          f"p99 {jit['p99_ms']:.2f} ms, max {jit['max_ms']:.2f} ms")
    assert jit["count"] >= 0.9 * len(specs) * elapsed / IV
    assert jit["p99_ms"] < 25 and jit["skipped"] == 0


def test_monitor_restart_keeps_specs(world: World) -> None:
    events = Events()
    m = HealthMonitor(events, netns=world.mon.path)
    spec = S("tcp", CLOSED)
    m.add(spec)  # before start: probed once started
    m.start()
    try:
        wait_state(m, spec, "nok", DETECT + SLACK)
    finally:
        m.stop()
    st = m.status(spec)
    assert st is not None and st.state == "nok"
    n = st.probes
    time.sleep(2 * IV)
    assert (m.status(spec) or ProbeStatus()).probes == n  # stopped: no more probes
    with pytest.raises(OSError):
        HealthMonitor(events, netns="/run/netns/lx-does-not-exist").start()
