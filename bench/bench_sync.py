"""Conntrack sync throughput: new flows per second a peer receives, its lag, both agents' CPU.

    .venv/bin/python bench/bench_sync.py [--rates 2000,5000,10000,20000,0] [--seconds 10]

Lab: client --- lb1 --- srv1..3 (tests/lab.py), and lb2 joined to lb1 by a link of its own
(the sync link, 198.18.60.0/30). Both agents have the same DNAT rule; lb1 runs with
``--cluster`` towards lb2 and lb2 towards lb1. hping3 in the client sends SYNs to the VIP
at each offered rate (its source port grows by one per packet: one new flow each; 0 means
``--flood``), each step ``--seconds`` long. A backend answers SYN-ACK, the client's kernel
RST: two conntrack events per flow (new; closed by the RST). Past 65,536 SYNs a source port
comes round again; its previous flow is closed by then, so the SYN still opens a new one.

Per step: SYNs hping3 sent per second (each a new flow on lb1), events lb1 sent, records
lb2 installed per second (new and closed: about two per flow), lb1's lag p99 (the oldest
event of each batch until lb2's ack, over the last 10 s: a step is as long), the events
the datapath could not deliver to lb1's agent, and the CPU of each agent (utime+stime from
/proc, share of one core).
Baseline in the same run: the same steps with lb1 alone (no --cluster): its CPU without
sync.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import netbench  # noqa: E402
from lab import Lab, tcplb_topology  # noqa: E402
from lbnode import LbNode  # noqa: E402

VIP, PORT = "198.18.100.1", 80
SYNC_LB1, SYNC_LB2 = "198.18.60.1", "198.18.60.2"


def cpu_s(pid: int) -> float:
    return netbench._proc_cpu_s([pid])


def events_lost(node: LbNode) -> int:
    status, body = node.api("GET", "/config/dpstats")
    assert status == 200, body
    return sum(int(e.get("packets", 0)) for e in body["dpStats"]
               if e.get("reason") == "events-lost")


def rule(backends: list[str]) -> dict[str, Any]:
    return {"serviceArguments": {"externalIP": VIP, "port": PORT, "protocol": "tcp",
                                 "name": "sync-bench", "sel": 0, "mode": 0},
            "endpoints": [{"endpointIP": ip, "targetPort": 8080, "weight": 1}
                          for ip in backends]}


def sync_peer(node: LbNode) -> dict[str, Any]:
    status, body = node.api("GET", "/config/cistate/all")
    assert status == 200, body
    sync = body["Attr"][0]["sync"] or {}
    return (sync.get("peers") or [{}])[0]


def step(lab: Lab, client: Any, lb1: LbNode, lb2: LbNode | None, rate: int,
         seconds: float) -> dict[str, Any]:
    assert lb1.proc is not None
    before1, got1 = cpu_s(lb1.proc.pid), sync_peer(lb1) if lb2 else {}
    before2 = cpu_s(lb2.proc.pid) if lb2 and lb2.proc else 0.0
    lost0 = events_lost(lb1)
    got2 = sync_peer(lb2) if lb2 else {}
    pace = ["--flood"] if rate == 0 else ["-i", f"u{max(1, 1_000_000 // rate)}"]
    t0 = time.monotonic()
    hping = client.popen("hping3", "-q", "-S", "-p", str(PORT), *pace, VIP,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(seconds)
    hping.send_signal(signal.SIGINT)  # it prints what it sent
    said = hping.communicate(timeout=10)[0]
    took = time.monotonic() - t0
    sent = re.search(r"(\d+) packets transmitted", said)
    time.sleep(0.5)  # the last batches
    out: dict[str, Any] = {"offered_per_s": rate or "flood", "seconds": round(took, 1),
                           "flows_per_s": round(int(sent.group(1)) / took) if sent else None,
                           "lb1_cpu": round((cpu_s(lb1.proc.pid) - before1) / took, 3),
                           "events_lost": events_lost(lb1) - lost0}
    if lb2 is not None and lb2.proc is not None:
        now1, now2 = sync_peer(lb1), sync_peer(lb2)
        events = now1.get("sent", 0) - got1.get("sent", 0)
        installed = now2.get("installed", 0) - got2.get("installed", 0)
        out.update({"events_sent_per_s": round(events / took),
                    "flows_installed_per_s": round(installed / took),
                    "lag_p99_ms": now1.get("lagP99Ms"),
                    "unplaceable": now2.get("unplaceable", 0),
                    "lb2_cpu": round((cpu_s(lb2.proc.pid) - before2) / took, 3)})
    return out


def run(rates: list[int], seconds: float) -> dict[str, Any]:
    result: dict[str, Any] = {"rates": rates, "seconds": seconds}
    with Lab() as lab:
        topo = tcplb_topology(lab, n_backends=3)
        lb2_ns = lab.add_ns("lb2")
        lab.link(topo.lb, lb2_ns, "sync0", "sync0", f"{SYNC_LB1}/30", f"{SYNC_LB2}/30")
        key = lab.workdir / "cluster.key"
        key.write_bytes(os.urandom(32).hex().encode())
        key.chmod(0o600)
        for with_sync in (False, True):
            lb1 = LbNode(lab, topo.lb, topo.lb_ifaces, ct_entries=1 << 20,
                         state_dir=lab.workdir / f"state-lb1-{with_sync}", extra_args=(
                ("--cluster", SYNC_LB2, "--cluster-key", str(key),
                 "--cluster-listen", SYNC_LB1) if with_sync else ()))
            lb1.start()
            status, body = lb1.api("POST", "/config/loadbalancer", rule(topo.backend_ips))
            assert status == 200, body
            lb2 = None
            if with_sync:
                lb2 = LbNode(lab, lb2_ns, ["sync0"], ct_entries=1 << 20, extra_args=(
                    "--cluster", SYNC_LB1, "--cluster-key", str(key),
                    "--cluster-listen", SYNC_LB2))
                lb2.start()
                status, body = lb2.api("POST", "/config/loadbalancer", rule(topo.backend_ips))
                assert status == 200, body
                deadline = time.monotonic() + 20
                while sync_peer(lb1).get("bulk") != "done":
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"lb1 and lb2 did not sync: {sync_peer(lb1)}")
                    time.sleep(0.2)
            rows = [step(lab, topo.client, lb1, lb2, r, seconds) for r in rates]
            result["with_sync" if with_sync else "baseline"] = rows
            for node in (lb1, lb2):
                if node is not None:
                    node.stop()
                    subprocess.run(["loxilbd", "--cleanup", *node.pin_args], check=False,
                                   capture_output=True)
    return result


def table(result: dict[str, Any]) -> str:
    lines = ["| offered SYNs/s | SYNs/s sent (each a new flow) | events sent/s | records "
             "installed on peer/s | lag p99 | events lost | lb1 CPU (sync) | lb1 CPU "
             "(baseline: no sync) | ratio | lb2 CPU |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s, b in zip(result["with_sync"], result["baseline"], strict=True):
        ratio = s["lb1_cpu"] / b["lb1_cpu"] if b["lb1_cpu"] else float("nan")
        lines.append(f"| {s['offered_per_s']} | {s['flows_per_s']:,} | "
                     f"{s['events_sent_per_s']:,} | "
                     f"{s['flows_installed_per_s']:,} | {s['lag_p99_ms']} ms | "
                     f"{s['events_lost']:,} | "
                     f"{s['lb1_cpu']:.0%} | {b['lb1_cpu']:.0%} | {ratio:.2f} | "
                     f"{s['lb2_cpu']:.0%} |")
    return "\n".join(lines)


def main(quick: bool = False) -> dict[str, Any]:
    # steps as long as the lag percentile's window, so that each reports its own
    rates = [2000, 10000, 0] if quick else [2000, 5000, 10000, 20000, 0]
    return run(rates, 10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="2000,5000,10000,20000,0",
                        help="offered new flows per second per step (0: hping3 --flood)")
    parser.add_argument("--seconds", type=float, default=10)
    opts = parser.parse_args()
    res = run([int(r) for r in opts.rates.split(",")], opts.seconds)
    print(json.dumps(res, indent=2))
    print(table(res))
