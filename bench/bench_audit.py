"""Rate of AuditLog.handle beside a plain json.dumps + file.write loop of the same lines.

    .venv/bin/python bench/bench_audit.py [--flows 100000] [--repeat 3] [--batch 256]

Synthetic TCP flows (NEW, EST, CLOSED by FIN two seconds later; half of them fullNAT;
16 services, 8 endpoints) are built as LbEvent values up front, in time order.

Measured: AuditLog.handle over every event (the EST events write nothing but are part of
the work) with flush() after each batch, in a temporary directory, default rotation size.
Baseline: the dicts of the very lines the log wrote, written with
``f.write(json.dumps(d) + "\\n")`` and ``f.flush()`` after each batch of lines: the
cheapest way to write the same JSON, with no event decoding at all. Rates are in logged
events (open + close lines) per second; the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datapath.layouts import (  # noqa: E402
    EventType,
    LbEvent,
    NatMode,
    Xlate,
    ip_to_be32,
    port_to_be16,
)
from loxicmd.agent.events.audit import AuditLog  # noqa: E402


def make_events(flows: int) -> list[LbEvent]:
    events: list[LbEvent] = []
    t0 = time.monotonic_ns()
    for i in range(flows):
        ev = LbEvent()
        ev.rule_id = i % 16
        ev.key.saddr = ip_to_be32(f"198.18.{1 + (i >> 16) % 200}.{1 + (i >> 8) % 250}")
        ev.key.daddr = ip_to_be32("198.18.100.1")
        ev.key.sport = port_to_be16(1024 + i % 60000)
        ev.key.dport = port_to_be16(443)
        ev.key.proto = socket.IPPROTO_TCP
        o = ev.orig
        o.xlate_daddr = ip_to_be32(f"198.18.{10 + i % 8}.2")
        o.xlate_dport = port_to_be16(8443)
        o.xlate = Xlate.DADDR | Xlate.DPORT
        if i % 2:
            o.xlate_saddr = ip_to_be32(f"198.18.{10 + i % 8}.1")
            o.xlate_sport = port_to_be16(32768 + i % 28000)
            o.xlate |= Xlate.SADDR | Xlate.SPORT
            o.nat_mode = ev.reply.nat_mode = NatMode.FULLNAT
        o.created_ns = ev.reply.created_ns = t0 + i * 10_000  # 100,000 new flows/s
        for etype, state, ts in ((EventType.NEW, 1, 0), (EventType.EST, 3, 300_000),
                                 (EventType.CLOSED, 0, 2_000_000_000)):
            e = LbEvent.from_buffer_copy(ev)
            e.type, e.ts_ns = etype, t0 + i * 10_000 + ts
            e.orig.state = e.reply.state = state
            if etype == EventType.CLOSED:
                e.reason = 1
                e.orig.last_seen_ns = e.reply.last_seen_ns = e.ts_ns
                e.orig.packets, e.orig.bytes = 10 + i % 7, 1500 + i % 1000
                e.reply.packets, e.reply.bytes = 12 + i % 5, 64000 + i % 3000
            events.append(e)
    # The order the ring buffer delivers them: by time (opens of new flows interleave
    # with the closes of flows opened two seconds earlier).
    events.sort(key=lambda e: e.ts_ns)
    return events


def run_audit(events: list[LbEvent], batch: int, tmp: Path) -> tuple[float, list[Path]]:
    names = {i: f"svc-{i}" for i in range(16)}
    log = AuditLog(tmp / "audit.log", rule_name=names.__getitem__)
    handle, flush = log.handle, log.flush
    start = time.perf_counter()
    for j in range(0, len(events), batch):
        for ev in events[j:j + batch]:
            handle(ev)
        flush()
    log.close()
    elapsed = time.perf_counter() - start
    return elapsed, sorted(tmp.glob("audit.log*"))


def run_baseline(dicts: list[dict[str, Any]], batch: int, tmp: Path) -> float:
    dumps = json.dumps
    with open(tmp / "baseline.log", "a") as f:
        write = f.write
        start = time.perf_counter()
        for j in range(0, len(dicts), batch):
            for d in dicts[j:j + batch]:
                write(dumps(d) + "\n")
            f.flush()
        elapsed = time.perf_counter() - start
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256, help="events per flush")
    args = ap.parse_args()

    events = make_events(args.flows)
    # One event batch of the ring buffer holds ~2/3 logged events (EST writes nothing):
    # batch the baseline by the same number of lines.
    line_batch = max(1, args.batch * 2 // 3)
    audit_best = base_best = float("inf")
    lines = 0
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-audit-") as d:
            tmp = Path(d)
            elapsed, files = run_audit(events, args.batch, tmp)
            audit_best = min(audit_best, elapsed)
            dicts = [json.loads(line) for p in files for line in p.read_text().splitlines()]
            lines = len(dicts)
            for p in files:
                p.unlink()
            base_best = min(base_best, run_baseline(dicts, line_batch, tmp))
    assert lines == 2 * args.flows, lines
    audit_rate = lines / audit_best
    base_rate = lines / base_best
    print(f"flows: {args.flows}  events handled: {len(events)} (NEW, EST, CLOSED)  "
          f"lines: {lines}  best of {args.repeat}")
    print("| measure | logged events/s | ns/logged event |")
    print("|---|---|---|")
    print(f"| AuditLog.handle (+flush every {args.batch} events) | {audit_rate:,.0f} | "
          f"{1e9 / audit_rate:,.0f} |")
    print(f"| baseline json.dumps + write (same dicts) | {base_rate:,.0f} | "
          f"{1e9 / base_rate:,.0f} |")
    print(f"ratio AuditLog / baseline (time per line): {base_rate / audit_rate:.2f}  "
          f"({audit_rate / base_rate:.2f}x the baseline's rate)")
    print(f"open+close pairs/s: {audit_rate / 2:,.0f} (AuditLog), "
          f"{base_rate / 2:,.0f} (baseline)")


if __name__ == "__main__":
    main()
