"""`make bench`: datapath cost per packet (test-run) and CLI latency, each beside a baseline.

Writes bench/results/<date>-<host>.json and prints a Markdown table.

- Datapath: the kernel-reported duration of BPF_PROG_TEST_RUN, averaged over
  many repeat-1 runs (a repeated run would see its own rewritten packet), for
  a packet that matches no rule (the pass-through floor), a first packet
  (service lookup, selection, conntrack create, DNAT) and an established-flow
  packet (conntrack hit, DNAT).
- CLI: wall time of `loxicmd get lb` piped, with 100 rules in the agent, and of
  `loxicmd --help`, beside `python3 -c pass` (the interpreter's floor); medians.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from lab import Lab  # noqa: E402
from lbnode import LbNode  # noqa: E402
from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402

from datapath.libbpf import prog_test_run  # noqa: E402
from loxicmd.agent.dataplane import Dataplane, unpin  # noqa: E402
from loxicmd.agent.rules import RuleTable  # noqa: E402
from loxicmd.agent.store import StateStore  # noqa: E402

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


def bench_cli(runs: int, rules: int) -> dict[str, Any]:
    loxicmd = shutil.which("loxicmd") or "loxicmd"
    with Lab() as lab:
        lb, peer = lab.add_ns("lb"), lab.add_ns("peer")
        lab.link(lb, peer, "eth0", "eth0", "198.18.1.1/24", "198.18.1.2/24")
        node = LbNode(lab, lb, ["eth0"]).start()
        for i in range(rules):
            status, body = node.api("POST", "/config/loadbalancer", {
                "serviceArguments": {"externalIP": f"198.18.{100 + i // 250}.{1 + i % 250}",
                                     "port": 80, "protocol": "tcp", "name": f"svc{i}"},
                "endpoints": [{"endpointIP": "198.18.1.2", "targetPort": 8080}],
            })
            assert status == 200, body

        def timed(*argv: str) -> dict[str, float]:
            out = lb.run(sys.executable, "-c", _TIMER, str(runs), *argv, timeout=600).stdout
            median, lo, hi = (float(x) for x in out.split())
            return {"median_s": median, "min_s": lo, "max_s": hi}

        floor = timed(sys.executable, "-c", "pass")
        get_lb = timed(loxicmd, "-p", str(node.port), "get", "lb")
        helptext = timed(loxicmd, "--help")
    return {"runs": runs, "rules": rules, "python_floor": floor,
            "get_lb": get_lb, "help": helptext}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    opts = parser.parse_args()
    packet_runs, cli_runs = (2000, 5) if opts.quick else (20000, 21)

    started = time.time()
    dp = bench_testrun(packet_runs)
    cli = bench_cli(cli_runs, 100)
    result = {"date": date.today().isoformat(), "host": platform.node(),
              "kernel": platform.release(), "seconds": round(time.time() - started, 1),
              "testrun": dp, "cli": cli}
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"{result['date']}-{result['host']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")

    floor_ns = dp["passthrough_ns"][0]
    py = cli["python_floor"]["median_s"]
    print("| measure | value | ratio to baseline | baseline |\n|---|---|---|---|")
    for name, key in (("first packet (test-run)", "first_packet_ns"),
                      ("established packet (test-run)", "established_ns")):
        mean, sd = dp[key]
        print(f"| {name} | {mean:.0f} ns (sd {sd:.0f}) | {mean / floor_ns:.2f} | "
              f"no-match pass-through {floor_ns:.0f} ns |")
    for name, key in ((f"`loxicmd get lb` piped, {cli['rules']} rules", "get_lb"),
                      ("`loxicmd --help`", "help")):
        med = cli[key]["median_s"]
        print(f"| {name} | {med * 1000:.0f} ms | {med / py:.2f} | "
              f"`python3 -c pass` {py * 1000:.0f} ms |")
    print(f"\nwritten to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
