"""How fast the agent drains conntrack events into the audit log, end to end:
the datapath's ring buffer (filled by the real program through test-run) ->
libbpf's ring_buffer__poll -> decode -> AuditLog.handle -> file. Beside it,
the same drain with a handler that does nothing (the reading cost alone).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dp_harness import DpHarness, lb_body  # noqa: E402

from datapath import layouts as L  # noqa: E402
from datapath.libbpf import RingBuffer  # noqa: E402
from loxicmd.agent.events.audit import AuditLog  # noqa: E402


def _fill(h: DpHarness, flows: int, start: int) -> None:
    for i in range(start, start + flows):
        h.dst_fast(f"198.18.{2 + (i // 250) % 200}.{1 + i % 250}", 1024 + (i // 50000) % 60000)


def _drain(h: DpHarness, handler: Any) -> tuple[int, float]:
    ring = RingBuffer(h.dp.maps["lb_events"].fd, handler)
    started = time.perf_counter()
    total = 0
    while (n := ring.consume()) > 0:
        total += n
    elapsed = time.perf_counter() - started
    ring.close()
    return total, elapsed


def main(flows: int = 15000) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        h = DpHarness(Path(tmp), ct_entries=1 << 18)
        try:
            h.apply(lb_body())
            h.events()
            _fill(h, flows, 0)
            n_null, t_null = _drain(h, lambda data: None)
            audit = AuditLog(Path(tmp) / "audit.log", rule_name=lambda _: "bench")

            def to_audit(data: bytes) -> None:
                audit.handle(L.LbEvent.from_buffer_copy(data))

            _fill(h, flows, flows)
            n_audit, t_audit = _drain(h, to_audit)
            audit.flush()
            audit.close()
            lost = h.drops("events-lost")
        finally:
            h.close()
    return {"events": n_audit, "read_only_per_s": n_null / t_null,
            "to_audit_log_per_s": n_audit / t_audit, "lost": lost}


if __name__ == "__main__":
    r = main()
    print("| drain of the event ring buffer | events/s | ratio |\n|---|---|---|")
    print(f"| read only, no handler (baseline) | {r['read_only_per_s']:,.0f} | 1.00 |")
    print(f"| into the audit log | {r['to_audit_log_per_s']:,.0f} | "
          f"{r['to_audit_log_per_s'] / r['read_only_per_s']:.2f} |")
    print(f"\n{r['events']:,} events per run, {r['lost']:.0f} lost")
