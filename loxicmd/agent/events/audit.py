"""The connection audit log: one JSON line per connection opened and per connection closed.

The agent feeds every conntrack event of the datapath's ring buffer (``struct lb_event``,
mirrored by :class:`datapath.layouts.LbEvent`) to :meth:`AuditLog.handle` and calls
:meth:`AuditLog.flush` after each batch it drained. ``EV_NEW`` writes an ``open`` line,
``EV_CLOSED`` (ended by the endpoints) and ``EV_EXPIRED`` (ended by the LB) write a
``close`` line, ``EV_EST`` writes nothing but is remembered so the close line can tell
whether the connection was established.

Lines (one JSON object each, keys always in this order, ASCII only)::

    {"time": "2026-11-30T12:34:56.123456Z",  # event time, ISO 8601 UTC, microseconds
     "event": "open" | "close",
     "service": "web",            # rule_name(rule_id); on close, the name seen at open
     "rule_id": 7,
     "proto": "tcp" | "udp" | "icmp",   # or the protocol number as a string
     "vip": "198.18.100.1:2020",        # the address and port the client aimed at
     "endpoint": "198.18.11.2:8080",    # where the LB sent the connection
     "nat_mode": "default" | "onearm" | "fullnat",
     "client": "198.18.1.2:40000",      # the client's address and port
     "nat_source": "198.18.11.1:40000", # source the endpoint sees (= client without SNAT)
     # close lines only:
     "state": "est",              # conntrack state at close (CT_STATE_NAMES)
     "established": true,         # the flow reached est / udp-est / bidir
     "reason": "fin" | "rst" | "timeout" | "endpoint removed" | "rule deleted",
     "packets_to_endpoint": 5, "bytes_to_endpoint": 412,   # client -> LB direction
     "packets_to_client": 4, "bytes_to_client": 1337,      # endpoint -> LB direction
     "duration_s": 1.250000}      # last packet - first packet, seconds

    {"time": "...", "event": "events-lost", "count": 12}   # note_lost(): the datapath
                                  # dropped 12 events because the reader fell behind

ICMP echo flows carry the echo identifier where a port would be.

Times: the datapath stamps events with CLOCK_MONOTONIC; the wall-clock offset is taken
once when the log is created (a clock step later shifts the times of later lines, never
their order).

Writing: lines are built in memory and written by :meth:`flush` (or when 64 KiB are
pending) with one ``write`` on an ``O_APPEND`` descriptor; never fsync'ed, so the reader of
the ring buffer never waits on the disk. Rotation by size: a line that would take the file
past ``max_bytes`` first moves ``audit.log`` to ``audit.log.1`` (``.1`` to ``.2`` ... up to
``backups``, the oldest dropped); lines are never split across files. Write errors (disk
full) are logged and counted, never raised.

Memory: what the close line needs from earlier events (established, service name) is kept
per flow from open to close in two generations of at most ``max_tracked / 2`` flows each;
flows whose open is older than that (or lost) fall back on the state at close and the
current rule name.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datapath.layouts import CtFlags, CtState, EventType, LbEvent, NatMode, Reason, Xlate
from loxicmd.names import (
    CT_STATE_WORDS,
    NAT_MODE_NAMES,
    PROTOCOL_NUMBERS,
    REASON_WORDS,
    by_code,
)

from ..conntrack.flows import event_reader

log = logging.getLogger("loxilbd.audit")

MiB = 1024 * 1024
FLUSH_BYTES = 64 * 1024  # pending output written without waiting for flush()
MAX_TRACKED = 1 << 18  # flows remembered between open and close (two generations)
CACHE_ENTRIES = 1 << 14  # texts of addresses / line segments cached (cleared when full)
# States that mean the flow was established (TCP est and later, UDP/ICMP answered).
ESTABLISHED_STATES = frozenset({CtState.EST, CtState.FINI, CtState.CLOSED_WAIT,
                                CtState.UDP_EST, CtState.ICMP_BIDIR})
# Plain ints and dicts by code for the hot path (no enum lookups per event).
EV_NEW, EV_EST = int(EventType.NEW), int(EventType.EST)
EV_CLOSED, EV_EXPIRED = int(EventType.CLOSED), int(EventType.EXPIRED)
XLATE_SADDR, XLATE_SPORT = int(Xlate.SADDR), int(Xlate.SPORT)
CT_STATE_NAMES = by_code(CtState, CT_STATE_WORDS)
REASON_NAMES = by_code(Reason, REASON_WORDS)
NAT_NAMES = {int(m): NAT_MODE_NAMES[int(m)] for m in NatMode}

EventBuffer = LbEvent | bytes | bytearray | memoryview


_read = event_reader([
    "type", "reason", "rule_id", "ts_ns", "key.saddr", "key.daddr", "key.sport", "key.dport",
    "key.proto", "orig.xlate_saddr", "orig.xlate_daddr", "orig.xlate_sport",
    "orig.xlate_dport", "orig.state", "orig.xlate", "orig.flags", "orig.nat_mode",
    "orig.created_ns", "orig.last_seen_ns", "orig.packets", "orig.bytes", "reply.flags",
    "reply.packets", "reply.bytes",
])
_SYNCED = int(CtFlags.SYNCED)
_ntoa = socket.inet_ntoa


def _default_rule_name(rule_id: int) -> str:
    return str(rule_id)


class AuditLog:
    """Size-rotated JSON-lines audit log of connections (see the module docstring).

    Not thread-safe: one reader of the ring buffer calls handle()/note_lost()/flush();
    ``stats`` may be read from elsewhere (plain counters). ``handle`` takes an LbEvent or a
    buffer of at least ``sizeof(struct lb_event)`` bytes (the ring buffer record).
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int = 64 * MiB,
        backups: int = 5,
        rule_name: Callable[[int], str] = _default_rule_name,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        if backups < 0:
            raise ValueError("backups must be >= 0")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.rule_name = rule_name
        self._half = max(1, max_tracked // 2)
        # (client addr, VIP, client port, VIP port, proto) -> (line segment, established)
        self._flows: dict[tuple[Any, ...], tuple[str, bool]] = {}
        self._flows_old: dict[tuple[Any, ...], tuple[str, bool]] = {}
        self._pending: list[str] = []
        self._pending_len = 0
        self._size = 0  # bytes in the file + pending
        self._secs: dict[int, str] = {}  # Unix second -> "YYYY-MM-DDTHH:MM:SS"
        self._ports: dict[int, str] = {}  # __be16 as read natively -> "port"
        self._ips: dict[bytes, str] = {}  # wire address -> "a.b.c.d"
        # (rule, proto, VIP, endpoint, NAT mode) -> (rule name, the line's part for them)
        self._segments: dict[tuple[Any, ...], tuple[str, str]] = {}
        # monotonic ns + offset = Unix time ns
        self._wall_offset_ns = time.time_ns() - time.monotonic_ns()
        self.lines = 0
        self.bytes = 0
        self.rotations = 0
        self.lost_events = 0
        self.write_errors = 0
        self.ignored = 0
        self._fd = -1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()

    # ------------------------------------------------------------------ file

    def _open(self) -> None:
        self._fd = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640
        )
        self._size = os.fstat(self._fd).st_size + self._pending_len

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except InterruptedError:
                continue
            except OSError as exc:
                self.write_errors += 1
                log.error("audit log %s: write failed, %d bytes lost: %s",
                          self.path, len(view), exc)
                return
            view = view[n:]

    def flush(self) -> None:
        """Write the pending lines (one write). Call it after each batch of events."""
        if not self._pending:
            return
        data = "".join(self._pending).encode()
        self._pending.clear()
        self._pending_len = 0
        if self._fd < 0:
            self.write_errors += 1
            log.error("audit log %s is closed: %d bytes lost", self.path, len(data))
            return
        self._write(data)

    def _rotate(self) -> None:
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        base = str(self.path)
        try:
            if self.backups == 0:
                os.unlink(base)
            else:
                for i in range(self.backups - 1, 0, -1):
                    try:
                        os.rename(f"{base}.{i}", f"{base}.{i + 1}")
                    except FileNotFoundError:
                        pass
                os.rename(base, f"{base}.1")
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.error("audit log %s: rotation failed: %s", self.path, exc)
        self.rotations += 1
        try:
            self._open()
        except OSError as exc:
            self.write_errors += 1
            log.error("audit log %s: cannot reopen after rotation: %s", self.path, exc)
            self._size = 0

    def _emit(self, line: str) -> None:
        n = len(line)  # ASCII only: characters == bytes
        if self._size + n > self.max_bytes and self._size > 0:
            self._rotate()
        self._pending.append(line)
        self._pending_len += n
        self._size += n
        self.lines += 1
        self.bytes += n
        if self._pending_len >= FLUSH_BYTES:
            self.flush()

    def close(self) -> None:
        """Flush and close the file (idempotent)."""
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ lines

    def _time(self, mono_ns: int) -> str:
        sec, ns = divmod(mono_ns + self._wall_offset_ns, 1_000_000_000)
        return f"{self._secs.get(sec) or self._sec_text(sec)}.{ns // 1000:06d}Z"

    def _service(self, rule_id: int, proto: int, vaddr: bytes, vport: int, eaddr: bytes,
                 eport: int, nat_mode: int) -> str:
        """The part of a line that all flows of a service to one endpoint share (cached;
        rebuilt when the rule's name changes)."""
        try:
            name = self.rule_name(rule_id)
        except Exception:  # noqa: BLE001 - a lookup failure must not stop the log
            name = str(rule_id)
        key = (rule_id, proto, vaddr, vport, eaddr, eport, nat_mode)
        hit = self._segments.get(key)
        if hit is not None and hit[0] == name:
            return hit[1]
        if len(self._segments) >= CACHE_ENTRIES:
            self._segments.clear()
        segment = (
            f'"service":{json.dumps(str(name))},"rule_id":{rule_id},'
            f'"proto":"{PROTOCOL_NUMBERS.get(proto) or proto}",'
            f'"vip":"{_ntoa(vaddr)}:{socket.ntohs(vport)}",'
            f'"endpoint":"{_ntoa(eaddr)}:{socket.ntohs(eport)}",'
            f'"nat_mode":"{NAT_NAMES.get(nat_mode) or nat_mode}"'
        )
        self._segments[key] = (name, segment)
        return segment

    def note_lost(self, count: int) -> None:
        """Record that the datapath dropped ``count`` events (its events-lost counter grew)."""
        if count <= 0:
            return
        self.lost_events += count
        now = self._time(time.monotonic_ns())
        self._emit(f'{{"time":"{now}","event":"events-lost","count":{int(count)}}}\n')

    def handle(self, ev: EventBuffer) -> None:
        """Account one conntrack event (an LbEvent, or its raw bytes from the ring buffer)."""
        (etype, reason, rule_id, ts_ns, csaddr, vaddr, cport, vport, proto, nsaddr, eaddr,
         nport, eport, state, xlate, oflags, nat_mode, created, last_seen, opk, oby, rflags,
         rpk, rby) = _read(ev)
        key = (csaddr, vaddr, cport, vport, proto)
        flows = self._flows
        if etype == EV_NEW:
            segment = self._service(rule_id, proto, vaddr, vport, eaddr, eport, nat_mode)
            if len(flows) >= self._half:  # start a new generation, forget the oldest
                self._flows_old = flows
                flows = self._flows = {}
            flows[key] = (segment, state in ESTABLISHED_STATES)
            event, tail = "open", "}\n"
        elif etype == EV_CLOSED or etype == EV_EXPIRED:
            if oflags & rflags & _SYNCED:
                return  # a peer's copy that ended unused: the connection was not here
            flow = flows.pop(key, None) or self._flows_old.pop(key, None)
            if flow is None:  # opened before we started, or forgotten
                segment = self._service(rule_id, proto, vaddr, vport, eaddr, eport, nat_mode)
                est = state in ESTABLISHED_STATES
            else:
                segment, est = flow
                est = est or state in ESTABLISHED_STATES
            dur = (last_seen - created) / 1e9 if last_seen > created else 0.0
            event, tail = "close", (
                f',"state":"{CT_STATE_NAMES.get(state) or state}",'
                f'"established":{"true" if est else "false"},'
                f'"reason":"{REASON_NAMES.get(reason) or reason}",'
                f'"packets_to_endpoint":{opk},"bytes_to_endpoint":{oby},'
                f'"packets_to_client":{rpk},"bytes_to_client":{rby},'
                f'"duration_s":{dur:.6f}}}\n'
            )
        elif etype == EV_EST:
            flow = flows.get(key)
            if flow is None:
                flow = self._flows_old.pop(key, None)
                if flow is None:
                    segment = self._service(rule_id, proto, vaddr, vport, eaddr, eport,
                                            nat_mode)
                else:
                    segment = flow[0]
                if len(flows) >= self._half:
                    self._flows_old = flows
                    flows = self._flows = {}
                flows[key] = (segment, True)
            elif not flow[1]:
                flows[key] = (flow[0], True)
            return
        else:
            self.ignored += 1
            return
        # Addresses as text, through small caches (client addresses repeat, ports are few).
        ports, ips = self._ports, self._ips
        cp = ports.get(cport) or self._port(cport)
        client = f"{ips.get(csaddr) or self._ip(csaddr)}:{cp}"
        if xlate & XLATE_SADDR:
            np = (ports.get(nport) or self._port(nport)) if xlate & XLATE_SPORT else cp
            nat = f"{ips.get(nsaddr) or self._ip(nsaddr)}:{np}"
        else:
            nat = client
        sec, us = divmod((ts_ns + self._wall_offset_ns) // 1000, 1_000_000)
        line = (
            f'{{"time":"{self._secs.get(sec) or self._sec_text(sec)}.'
            f'{str(us + 1_000_000)[1:]}Z","event":"{event}",{segment},'
            f'"client":"{client}","nat_source":"{nat}"{tail}'
        )
        self._emit(line)

    # Cache fillers (the slow path of the lookups in handle()).
    def _port(self, raw: int) -> str:
        if len(self._ports) >= 65536:
            self._ports.clear()
        text = self._ports[raw] = str(socket.ntohs(raw))
        return text

    def _ip(self, raw: bytes) -> str:
        if len(self._ips) >= CACHE_ENTRIES:
            self._ips.clear()
        text = self._ips[raw] = _ntoa(raw)
        return text

    def _sec_text(self, sec: int) -> str:
        if len(self._secs) >= 64:
            self._secs.clear()
        text = self._secs[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return text

    # ------------------------------------------------------------------ stats

    @property
    def tracked(self) -> int:
        """Flows remembered between their open and close lines (bounded)."""
        return len(self._flows) + len(self._flows_old)

    @property
    def stats(self) -> dict[str, int]:
        """Counters for the agent's API."""
        return {
            "lines": self.lines,
            "bytes": self.bytes,
            "rotations": self.rotations,
            "lost_events": self.lost_events,
            "write_errors": self.write_errors,
            "tracked_flows": self.tracked,
        }
