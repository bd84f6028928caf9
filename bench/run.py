"""`make bench`: our LB beside direct forwarding, iptables/nftables DNAT and HAProxy on real
traffic, the datapath's cost per packet, conntrack at scale, control plane and CLI.

    make bench                       # the whole suite (about 12 min on 2 cores)
    .venv/bin/python bench/run.py --quick            # about 75 s
    .venv/bin/python bench/run.py --parts network,testrun

Writes bench/results/<date>-<host>.json (``-quick`` before the suffix for --quick), the
same as Markdown tables (.md) and a PNG chart of the network ratios (.png), and prints the
Markdown. Parts (in this order): network (bench/netbench.py), testrun (below), datapath
(bench/bench_datapath.py: per selection and NAT mode, Maglev), conntrack and control_plane
(bench/conntrack_scale.py), cli (below), audit (bench/bench_audit.py), sync
(bench/bench_sync.py).

- Datapath: the kernel-reported duration of BPF_PROG_TEST_RUN, averaged over
  many repeat-1 runs (a repeated run would see its own rewritten packet), for
  a packet that matches no rule (the pass-through floor), a first packet
  (service lookup, selection, conntrack create, DNAT) and an established-flow
  packet (conntrack hit, DNAT).
- CLI: wall time of `loxicmd get lb` piped, with 100 and 10,000 rules in the agent, and
  of `loxicmd --help`, beside `python3 -c pass` (the interpreter's floor); medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import bench_datapath  # noqa: E402
import bench_sync  # noqa: E402
import chart  # noqa: E402
import conntrack_scale  # noqa: E402
import netbench  # noqa: E402
from lab import Lab  # noqa: E402
from lbnode import LbNode  # noqa: E402
from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402

from datapath.libbpf import prog_test_run  # noqa: E402
from loxicmd.agent.dataplane.dataplane import Dataplane  # noqa: E402
from loxicmd.agent.dataplane.pins import unpin  # noqa: E402
from loxicmd.agent.lb.table import RuleTable  # noqa: E402
from loxicmd.agent.store.journal import StateStore  # noqa: E402

VIP, CLIENT = "198.18.100.1", "198.18.1.2"


def _frame(sport: int, flags: str, dst: str = VIP) -> bytes:
    return bytes(Ether() / IP(src=CLIENT, dst=dst) / TCP(sport=sport, dport=2020, flags=flags))


def bench_testrun(runs: int) -> dict[str, Any]:
    pin_dir = f"/sys/fs/bpf/loxilb-bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as state:
        dp = Dataplane(pin_dir, ct_entries=max(4 * runs, 65536))
        store = StateStore(state)
        try:
            table = RuleTable(dp, store)
            table.apply({
                "serviceArguments": {"externalIP": VIP, "port": 2020, "protocol": "tcp"},
                "endpoints": [{"endpointIP": f"198.18.{10 + i}.2", "targetPort": 8080}
                              for i in range(1, 4)],
            })

            def mean_ns(frames: list[bytes]) -> tuple[float, float]:
                durations = [prog_test_run(dp.prog_fd, f).duration_ns for f in frames]
                return statistics.fmean(durations), statistics.pstdev(durations)

            passthrough = mean_ns([_frame(40000, "A", dst="198.18.100.9")] * runs)
            first = mean_ns([_frame(10000 + i % 50000, "S") for i in range(runs)])
            prog_test_run(dp.prog_fd, _frame(65000, "S"))
            established = mean_ns([_frame(65000, "A")] * runs)
        finally:
            dp.close()
            store.close()
            unpin(pin_dir)
    return {
        "runs": runs,
        "passthrough_ns": passthrough,
        "first_packet_ns": first,
        "established_ns": established,
    }


_TIMER = """
import statistics, subprocess, sys, time
runs = int(sys.argv[1]); argv = sys.argv[2:]
times = []
for _ in range(runs):
    t = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    times.append(time.perf_counter() - t)
print(statistics.median(times), min(times), max(times))
"""


_POPULATE = """
import http.client, json, sys, time
port, first, count = (int(x) for x in sys.argv[1:4])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
started, created, refused = time.perf_counter(), 0, ""
for i in range(first, first + count):
    body = {"serviceArguments": {"externalIP": f"198.18.{100 + i // 250}.{1 + i % 250}",
                                 "port": 80, "protocol": "tcp", "name": f"svc{i}"},
            "endpoints": [{"endpointIP": "198.18.1.2", "targetPort": 8080}]}
    conn.request("POST", "/netlox/v1/config/loadbalancer", json.dumps(body),
                 {"Content-Type": "application/json"})
    answer = conn.getresponse()
    text = answer.read().decode()
    if answer.status != 200:
        refused = f"HTTP {answer.status}: {text}"
        break
    created += 1
print(json.dumps({"created": created, "seconds": time.perf_counter() - started,
                  "refused": refused}))
"""


def bench_cli(runs: int, rule_counts: tuple[int, ...] = (100, 10_000)) -> dict[str, Any]:
    """`loxicmd get lb` piped with each number of rules (created over one keep-alive
    connection; an agent that refuses more rules is measured with what it took), and
    `loxicmd --help`, beside `python3 -c pass`."""
    loxicmd = shutil.which("loxicmd") or "loxicmd"
    with Lab() as lab:
        lb, peer = lab.add_ns("lb"), lab.add_ns("peer")
        lab.link(lb, peer, "eth0", "eth0", "198.18.1.1/24", "198.18.1.2/24")
        node = LbNode(lab, lb, ["eth0"]).start()

        def timed(*argv: str) -> dict[str, float]:
            out = lb.run(sys.executable, "-c", _TIMER, str(runs), *argv, timeout=1800).stdout
            median, lo, hi = (float(x) for x in out.split())
            return {"median_s": median, "min_s": lo, "max_s": hi}

        floor = timed(sys.executable, "-c", "pass")
        helptext = timed(loxicmd, "--help")
        get_lb, have = [], 0
        for wanted in sorted(rule_counts):
            added = json.loads(lb.run(sys.executable, "-c", _POPULATE, str(node.port),
                                      str(have), str(wanted - have), timeout=3600).stdout)
            have += added["created"]
            get_lb.append({"rules_wanted": wanted, "rules": have,
                           "populate_s": added["seconds"], "refused": added["refused"],
                           **timed(loxicmd, "-p", str(node.port), "get", "lb")})
            if added["refused"]:
                break
    return {"runs": runs, "python_floor": floor, "get_lb": get_lb, "help": helptext}


def cli_table_rows(cli: dict[str, Any]) -> list[str]:
    """The CLI rows of the Markdown table (an agent's refusal noted beside its row)."""
    py = cli["python_floor"]["median_s"]
    measures = [(f"`loxicmd get lb` piped, {m['rules']:,} rules"
                 + (f" ({m['rules_wanted']:,} wanted: {m['refused'][:60]})"
                    if m["refused"] else ""), m) for m in cli["get_lb"]]
    measures.append(("`loxicmd --help`", cli["help"]))
    return [f"| {name} | {m['median_s'] * 1000:.0f} ms | {m['median_s'] / py:.2f} | "
            f"`python3 -c pass` {py * 1000:.0f} ms |" for name, m in measures]


PARTS = ("network", "testrun", "datapath", "conntrack", "control_plane", "cli", "audit",
         "sync")


def run_audit(quick: bool) -> dict[str, Any]:
    """bench/bench_audit.py in its own process (it parses its own command line)."""
    argv = [sys.executable, str(ROOT / "bench" / "bench_audit.py"),
            "--flows", "20000" if quick else "100000", "--repeat", "1" if quick else "3"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=600).stdout
    rates = [float(m.replace(",", "")) for m in re.findall(r"\| ([\d,]+) \| [\d,]+ \|", out)]
    return {"argv": argv[2:], "output": out.strip(),
            "audit_events_per_s": rates[0] if rates else None,
            "baseline_events_per_s": rates[1] if len(rates) > 1 else None}


def markdown(result: dict[str, Any]) -> str:
    """Every part's table, in the order of the JSON."""
    out = [f"# `make bench` {result['date']} on {result['host']}",
           f"\nkernel {result['kernel']}, {result['cpus']} CPUs, "
           f"{'`--quick`, ' if result['quick'] else ''}total {result['seconds']:.0f} s "
           f"(parts: {', '.join(f'{k} {v:.0f} s' for k, v in result['timings_s'].items())})"]
    if "network" in result:
        out += ["\n## Network: contenders side by side (ratio to direct forwarding)\n",
                netbench.table(result["network"])]
    if "testrun" in result:
        dp = result["testrun"]
        floor_ns = dp["passthrough_ns"][0]
        out += ["\n## Datapath per packet (BPF_PROG_TEST_RUN)\n",
                "| measure | value | ratio to baseline | baseline |\n|---|---|---|---|"]
        for name, key in (("first packet (test-run)", "first_packet_ns"),
                          ("established packet (test-run)", "established_ns")):
            mean, sd = dp[key]
            out.append(f"| {name} | {mean:.0f} ns (sd {sd:.0f}) | {mean / floor_ns:.2f} | "
                       f"no-match pass-through {floor_ns:.0f} ns |")
    if "datapath" in result:
        out += ["\n### Per selection and NAT mode\n", bench_datapath.table(result["datapath"])]
    if "conntrack" in result or "control_plane" in result:
        out += ["\n## Conntrack scale and control plane\n",
                conntrack_scale.table(result.get("conntrack"), result.get("control_plane"))]
    if "cli" in result:
        out += ["\n## CLI\n", "| measure | value | ratio to baseline | baseline |",
                "|---|---|---|---|", *cli_table_rows(result["cli"])]
    if "audit" in result:
        out += ["\n## Audit log\n", result["audit"]["output"]]
    if "sync" in result:
        out += ["\n## Conntrack sync to one peer (hping3 SYNs, one new flow each)\n",
                bench_sync.table(result["sync"])]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="one network round, shorter runs, smaller tables (about 2 min)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma list of the parts to run ({','.join(PARTS)})")
    opts = parser.parse_args()
    parts = set(opts.parts.split(","))
    if parts - set(PARTS):
        parser.error(f"unknown parts: {sorted(parts - set(PARTS))}")
    q = opts.quick
    packet_runs, cli_runs = (2000, 5) if q else (20000, 21)

    started = time.time()
    result: dict[str, Any] = {"date": date.today().isoformat(), "host": platform.node(),
                              "kernel": platform.release(), "cpus": os.cpu_count(), "quick": q,
                              "command": "make bench" + ("" if not q else " (--quick)"),
                              "timings_s": {}}
    steps: dict[str, Any] = {
        "network": lambda: netbench.main(quick=q),
        "testrun": lambda: bench_testrun(packet_runs),
        "datapath": lambda: bench_datapath.main(1000 if q else 5000),
        "conntrack": lambda: conntrack_scale.ct_scale(
            (10_000, 100_000) if q else (10_000, 100_000, 1_000_000),
            probes=1000 if q else 5000),
        "control_plane": lambda: conntrack_scale.control_plane(
            200 if q else 1000, 10_000 if q else 100_000, 3 if q else 5),
        "cli": lambda: bench_cli(cli_runs, (100, 1000) if q else (100, 10_000)),
        "audit": lambda: run_audit(q),
        "sync": lambda: bench_sync.main(q),
    }
    for name in PARTS:
        if name not in parts:
            continue
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        t = time.time()
        result[name] = steps[name]()
        result["timings_s"][name] = round(time.time() - t, 1)
    result["seconds"] = round(time.time() - started, 1)

    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"{result['date']}-{result['host']}{'-quick' if q else ''}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    path.with_suffix(".md").write_text(md)
    written = [path, path.with_suffix(".md")]
    if "network" in result:
        written.append(chart.render(
            result["network"], path.with_suffix(".png"),
            f"make bench{' --quick' if q else ''}, {result['date']}, {result['host']}, "
            f"{result['cpus']} CPUs: median of {len(result['network']['rounds'])} "
            "round(s), bars min-max"))
    print(md)
    print("written: " + ", ".join(str(p.relative_to(ROOT)) for p in written))


if __name__ == "__main__":
    main()
