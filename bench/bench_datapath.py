"""Datapath cost per packet through BPF_PROG_TEST_RUN, per selection and NAT mode,
beside the pass-through floor measured in the same run; and Maglev disruption.

Durations are the kernel's own, averaged over many runs with repeat=1 (a
repeated run would see the packet it already rewrote).
"""

from __future__ import annotations

import collections
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dp_harness import DpHarness, lb_body, tcp  # noqa: E402

SELECTIONS = {"rr": 0, "hash": 1, "priority": 2, "persist": 3, "lc": 4}
MODES = {"default": 0, "fullnat": 2}


def _mean_ns(h: DpHarness, frames: list[bytes]) -> float:
    return statistics.fmean(h.dp_run_duration(f) for f in frames)


def _syn_frames(n: int, template: bytes) -> list[bytes]:
    frames = []
    for i in range(n):
        raw = bytearray(template)
        raw[26:30] = bytes((198, 18, 2 + (i >> 16) % 200, 1 + (i >> 8) % 250))
        raw[34:36] = (1024 + i % 60000).to_bytes(2, "big")
        frames.append(bytes(raw))
    return frames


def per_packet(h: DpHarness, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    h.reset()
    h.apply(lb_body())
    out["passthrough_ns"] = _mean_ns(h, [bytes(tcp(dst="198.18.100.9", flags="A"))] * runs)
    syn = bytes(tcp())
    for mode_name, mode in MODES.items():
        for sel_name, sel in SELECTIONS.items():
            h.reset()
            h.apply(lb_body(sel=sel, mode=mode, weights=[50, 30, 20]))
            first = _mean_ns(h, _syn_frames(runs, syn))
            h.run(tcp(sport=65000))
            est = _mean_ns(h, [bytes(tcp(sport=65000, flags="A", seq=1001))] * runs)
            out[f"{sel_name}/{mode_name}"] = {"first_packet_ns": first, "established_ns": est}
    return out


def maglev_disruption(h: DpHarness, tuples: int = 10_000) -> dict[str, float]:
    rng = random.Random(1)
    flows = [(f"198.18.{rng.randrange(1, 9)}.{rng.randrange(2, 250)}", rng.randrange(1024, 65535))
             for _ in range(tuples)]
    result = {}
    for n in (3, 10, 64):
        eps = [f"198.18.{11 + i // 200}.{1 + i % 200}" for i in range(n)]
        h.reset()
        started = time.perf_counter()
        h.apply(lb_body(eps=eps, sel=1))
        build_s = time.perf_counter() - started

        def assign() -> list[str]:
            got = [h.dst_fast(src, sport) for src, sport in flows]
            ct = h.dp.maps["lb_conntrack"]
            for key, _ in list(ct.items()):
                ct.delete(key)
            return got

        before = assign()
        removed = eps[n // 2]
        h.apply(lb_body(eps=[e for e in eps if e != removed], sel=1))
        after = assign()
        others = [(b, a) for b, a in zip(before, after, strict=True) if b != removed]
        moved = sum(1 for b, a in others if b != a)
        share = collections.Counter(before)
        result[f"{n}_endpoints"] = {
            "moved_other_flows_pct": 100 * moved / len(others),
            "largest_share_over_fair": max(share.values()) * n / tuples,
            "apply_with_table_build_s": build_s,
        }
    return result


def main(runs: int = 5000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        h = DpHarness(Path(tmp), ct_entries=1 << 20)
        try:
            result = {"runs": runs, "per_packet": per_packet(h, runs),
                      "maglev": maglev_disruption(h)}
        finally:
            h.close()
    return result


def table(result: dict[str, Any]) -> str:
    pp = result["per_packet"]
    floor = pp["passthrough_ns"]
    lines = ["| selection/mode | first packet ns | x floor | established ns | x floor |",
             "|---|---|---|---|---|"]
    for key, v in pp.items():
        if key == "passthrough_ns":
            continue
        lines.append(f"| {key} | {v['first_packet_ns']:.0f} | {v['first_packet_ns'] / floor:.2f} "
                     f"| {v['established_ns']:.0f} | {v['established_ns'] / floor:.2f} |")
    lines.append(f"\npass-through floor (no rule matches): {floor:.0f} ns\n")
    lines.append("| Maglev, remove 1 of N | other flows moved | largest share / fair | apply s |")
    lines.append("|---|---|---|---|")
    for key, v in result["maglev"].items():
        lines.append(f"| {key.replace('_', ' ')} | {v['moved_other_flows_pct']:.2f} % | "
                     f"{v['largest_share_over_fair']:.2f} | {v['apply_with_table_build_s']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)))
