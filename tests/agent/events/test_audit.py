"""The connection audit log: the JSON lines of real LbEvent values, rotation, bounded memory."""

from __future__ import annotations

import json
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flow_events import flow_event

from datapath.layouts import CtState, EventType, LbEvent, Reason
from loxicmd.agent.events.audit import AuditLog

SEC = 1_000_000_000
OPEN_KEYS = ["time", "event", "service", "rule_id", "proto", "vip", "endpoint", "nat_mode",
             "client", "nat_source"]
CLOSE_KEYS = OPEN_KEYS + ["state", "established", "reason", "packets_to_endpoint",
                          "bytes_to_endpoint", "packets_to_client", "bytes_to_client",
                          "duration_s"]


def read_lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    assert text == "" or text.endswith("\n"), "a line was cut"
    return [json.loads(line) for line in text.splitlines()]


def parse_time(value: str) -> float:
    assert value.endswith("Z") and "T" in value, value
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


@pytest.fixture
def names() -> dict[int, str]:
    return {7: "web", 8: "dns", 9: "api"}


@pytest.fixture
def log(tmp_path: Path, names: dict[int, str]) -> AuditLog:
    return AuditLog(tmp_path / "audit.log", rule_name=lambda rid: names[rid])


def test_tcp_open_established_closed_by_fin(log: AuditLog, tmp_path: Path) -> None:
    t0 = time.monotonic_ns()
    log.handle(flow_event(EventType.NEW, state=CtState.SYN_SENT, ts_ns=t0, times=(t0, t0, t0)))
    log.handle(flow_event(EventType.EST, state=CtState.EST, ts_ns=t0 + SEC // 100))
    log.flush()
    # EventType.EST writes nothing.
    assert len(read_lines(tmp_path / "audit.log")) == 1
    log.handle(flow_event(EventType.CLOSED, state=CtState.CLOSED, reason=Reason.FIN,
                          ts_ns=t0 + 2 * SEC, times=(t0, t0 + 1_250_000_000, t0 + 1_250_000_000),
                          counts=(6, 512, 5, 9000)))
    log.close()
    opened, closed = read_lines(tmp_path / "audit.log")

    assert list(opened) == OPEN_KEYS
    assert opened == {
        "time": opened["time"], "event": "open", "service": "web", "rule_id": 7,
        "proto": "tcp", "client": "198.18.1.2:40000", "vip": "198.18.100.1:2020",
        "endpoint": "198.18.11.2:8080", "nat_source": "198.18.1.2:40000",
        "nat_mode": "default",
    }
    assert abs(parse_time(opened["time"]) - time.time()) < 5
    assert list(closed) == CLOSE_KEYS
    assert closed == {
        "time": closed["time"], "event": "close", "service": "web", "rule_id": 7,
        "proto": "tcp", "client": "198.18.1.2:40000", "vip": "198.18.100.1:2020",
        "endpoint": "198.18.11.2:8080", "nat_source": "198.18.1.2:40000",
        "nat_mode": "default", "state": "closed", "established": True, "reason": "fin",
        "packets_to_endpoint": 6, "bytes_to_endpoint": 512,
        "packets_to_client": 5, "bytes_to_client": 9000, "duration_s": 1.25,
    }
    # Wall times follow the monotonic stamps (2 s apart, to the microsecond).
    assert parse_time(closed["time"]) - parse_time(opened["time"]) == pytest.approx(2, abs=2e-6)
    assert log.stats["lines"] == 2 and log.stats["tracked_flows"] == 0
    assert log.stats["bytes"] == (tmp_path / "audit.log").stat().st_size


def test_tcp_never_established_reset(log: AuditLog, tmp_path: Path) -> None:
    log.handle(flow_event(EventType.NEW, state=CtState.SYN_SENT, client=("198.18.1.3", 1234)))
    log.handle(flow_event(EventType.CLOSED, client=("198.18.1.3", 1234), state=CtState.CLOSED,
                          reason=Reason.RST, counts=(1, 60, 1, 54)))
    log.close()
    _, closed = read_lines(tmp_path / "audit.log")
    assert closed["established"] is False
    assert closed["reason"] == "rst" and closed["state"] == "closed"
    assert closed["client"] == "198.18.1.3:1234"


def test_udp_open_then_expired_by_timeout(log: AuditLog, tmp_path: Path) -> None:
    t0 = time.monotonic_ns()
    udp = {"proto": socket.IPPROTO_UDP, "client": ("198.18.1.2", 5353),
           "vip": ("198.18.100.2", 53), "endpoint": ("198.18.12.2", 5300), "rule_id": 8}
    log.handle(flow_event(EventType.NEW, state=CtState.UDP_UNI, ts_ns=t0, **udp))
    log.handle(flow_event(EventType.EXPIRED, state=CtState.UDP_UNI, reason=Reason.TIMEOUT,
                          ts_ns=t0 + 21 * SEC, times=(t0, t0 + SEC // 2, t0 + SEC // 2),
                          counts=(3, 180, 0, 0), **udp))
    # A second UDP flow that got answers.
    udp["client"] = ("198.18.1.2", 5354)
    log.handle(flow_event(EventType.NEW, state=CtState.UDP_UNI, ts_ns=t0, **udp))
    log.handle(flow_event(EventType.EST, state=CtState.UDP_EST, ts_ns=t0 + 1000, **udp))
    log.handle(flow_event(EventType.EXPIRED, state=CtState.UDP_EST, reason=Reason.TIMEOUT,
                          ts_ns=t0 + 21 * SEC, times=(t0, t0 + SEC, t0 + SEC),
                          counts=(2, 120, 2, 400), **udp))
    log.close()
    open1, close1, open2, close2 = read_lines(tmp_path / "audit.log")
    assert open1["event"] == "open" and open1["proto"] == "udp" and open1["service"] == "dns"
    assert open1["vip"] == "198.18.100.2:53" and open1["endpoint"] == "198.18.12.2:5300"
    assert close1["event"] == "close" and close1["reason"] == "timeout"
    assert close1["state"] == "udp-uni" and close1["established"] is False
    assert (close1["packets_to_endpoint"], close1["bytes_to_endpoint"]) == (3, 180)
    assert (close1["packets_to_client"], close1["bytes_to_client"]) == (0, 0)
    assert close1["duration_s"] == 0.5
    assert parse_time(close1["time"]) - parse_time(open1["time"]) == pytest.approx(21, abs=2e-6)
    assert open2["client"] == close2["client"] == "198.18.1.2:5354"
    assert close2["established"] is True and close2["state"] == "udp-est"
    assert (close2["packets_to_client"], close2["bytes_to_client"]) == (2, 400)
    assert close2["duration_s"] == 1.0


def test_fullnat_flow_reports_the_nat_source(log: AuditLog, tmp_path: Path) -> None:
    flow = {"client": ("198.18.1.2", 40000), "nat": ("198.18.11.1", 61234), "rule_id": 9}
    log.handle(flow_event(EventType.NEW, state=CtState.SYN_SENT, **flow))
    log.handle(flow_event(EventType.EST, state=CtState.EST, **flow))
    log.handle(flow_event(EventType.EXPIRED, state=CtState.EST, reason=Reason.EP_REMOVED, **flow))
    log.close()
    opened, closed = read_lines(tmp_path / "audit.log")
    for line in (opened, closed):
        assert line["client"] == "198.18.1.2:40000"
        assert line["nat_source"] == "198.18.11.1:61234"
        assert line["nat_mode"] == "fullnat"
        assert line["service"] == "api"
    assert closed["reason"] == "endpoint removed" and closed["established"] is True


def test_close_keeps_the_service_name_of_a_deleted_rule(
    log: AuditLog, tmp_path: Path, names: dict[int, str]
) -> None:
    log.handle(flow_event(EventType.NEW, state=CtState.SYN_SENT, rule_id=9))
    del names[9]  # the agent forgot the rule before the datapath reported the end
    log.handle(flow_event(EventType.EXPIRED, rule_id=9, state=CtState.EST,
                          reason=Reason.RULE_DELETED))
    # A close without its open (agent restarted): the lookup fails, the id stands in.
    log.handle(flow_event(EventType.EXPIRED, rule_id=9, client=("198.18.1.9", 9),
                          state=CtState.EST, reason=Reason.RULE_DELETED))
    log.close()
    _, closed, orphan = read_lines(tmp_path / "audit.log")
    assert closed["service"] == "api" and closed["reason"] == "rule deleted"
    assert orphan["service"] == "9" and orphan["established"] is True  # from its state


def test_raw_ring_buffer_bytes_give_the_same_lines(tmp_path: Path) -> None:
    ts = time.monotonic_ns()
    evs = [flow_event(EventType.NEW, state=CtState.SYN_SENT, ts_ns=ts),
           flow_event(EventType.EST, state=CtState.EST, ts_ns=ts),
           flow_event(EventType.CLOSED, state=CtState.CLOSED, reason=Reason.FIN, ts_ns=ts)]
    a = AuditLog(tmp_path / "a.log")
    b = AuditLog(tmp_path / "b.log")
    b._wall_offset_ns = a._wall_offset_ns
    for ev in evs:
        a.handle(ev)
        b.handle(bytes(ev))
    a.close()
    b.close()
    assert (tmp_path / "a.log").read_text() == (tmp_path / "b.log").read_text()
    assert read_lines(tmp_path / "a.log")[0]["service"] == "7"  # default rule_name


def test_note_lost(log: AuditLog, tmp_path: Path) -> None:
    log.note_lost(0)  # nothing lost, nothing written
    log.note_lost(12)
    log.close()
    (line,) = read_lines(tmp_path / "audit.log")
    assert list(line) == ["time", "event", "count"]
    assert line["event"] == "events-lost" and line["count"] == 12
    assert abs(parse_time(line["time"]) - time.time()) < 5
    assert log.stats["lost_events"] == 12


def _numbered(i: int) -> LbEvent:
    """The i-th open line: the number is readable back from the client port."""
    return flow_event(EventType.NEW, state=CtState.SYN_SENT, client=("198.18.1.2", 1024 + i))


def _port(line: dict[str, Any]) -> int:
    return int(line["client"].rsplit(":", 1)[1]) - 1024


def test_rotation_drops_the_oldest_and_never_splits_a_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    probe = AuditLog(tmp_path / "probe.log")
    probe.handle(_numbered(0))
    probe.close()
    line_len = (tmp_path / "probe.log").stat().st_size
    max_bytes = 3 * line_len + line_len // 2  # 3 lines per file
    log = AuditLog(path, max_bytes=max_bytes, backups=2)
    total = 40
    for i in range(total):
        log.handle(_numbered(i))
        if i % 7 == 0:  # batches of irregular size
            log.flush()
    log.close()

    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("audit.log"))
    assert files == ["audit.log", "audit.log.1", "audit.log.2"]
    kept: list[int] = []
    for name in ("audit.log.2", "audit.log.1", "audit.log"):
        size = (tmp_path / name).stat().st_size
        assert 0 < size <= max_bytes, (name, size)
        kept += [_port(line) for line in read_lines(tmp_path / name)]
    # The newest lines, contiguous and in order; only whole older files were dropped.
    assert kept == list(range(total - len(kept), total))
    assert len(kept) == 3 * 3 - (3 - total % 3) % 3  # .2 and .1 full, the current partly
    assert log.stats["rotations"] == (total - 1) // 3
    assert log.stats["lines"] == total


def test_rotation_loses_nothing_when_backups_suffice(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, max_bytes=2000, backups=100)
    total = 300
    for i in range(total):
        log.handle(_numbered(i))
        if i % 13 == 0:
            log.flush()
    log.close()
    n = log.stats["rotations"]
    assert 20 <= n < 100
    kept: list[int] = []
    for name in [f"audit.log.{i}" for i in range(n, 0, -1)] + ["audit.log"]:
        assert (tmp_path / name).stat().st_size <= 2000
        kept += [_port(line) for line in read_lines(tmp_path / name)]
    assert kept == list(range(total))
    assert not (tmp_path / f"audit.log.{n + 1}").exists()


def test_reopening_appends_and_counts_the_existing_size(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path) as log:
        log.handle(_numbered(1))
    size = path.stat().st_size
    with AuditLog(path, max_bytes=size + size // 2) as log:
        log.handle(_numbered(2))  # would exceed: rotates first
    assert [_port(x) for x in read_lines(tmp_path / "audit.log.1")] == [1]
    assert [_port(x) for x in read_lines(path)] == [2]


def test_flow_memory_stays_bounded(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log", max_tracked=100)
    for i in range(10_000):  # opened and established, never closed (lost events)
        ev = flow_event(EventType.NEW, state=CtState.SYN_SENT, client=("198.18.1.2", 1024 + i))
        log.handle(ev)
        ev.type = EventType.EST
        log.handle(ev)
        assert log.tracked <= 100
    # The most recent flows are still remembered as established when they close.
    ev = flow_event(EventType.CLOSED, client=("198.18.1.2", 1024 + 9_999),
                    state=CtState.CLOSED, reason=Reason.FIN)
    log.handle(ev)
    before = log.tracked
    log.handle(flow_event(EventType.CLOSED, client=("198.18.1.2", 1024 + 9_998),
                          state=CtState.CLOSED, reason=Reason.FIN))
    assert log.tracked == before - 1  # cleared on close
    log.close()
    lines = read_lines(tmp_path / "audit.log")
    assert len(lines) == 10_002
    assert lines[-1]["established"] is True and lines[-2]["established"] is True
    assert log.stats["tracked_flows"] <= 100
