"""Health probes at scale: 1,000 endpoints probed every second by one HealthMonitor.

    .venv/bin/python bench/bench_health.py [--endpoints 1000] [--duration 20] [--warmup 3]
                                           [--variants noio,tcp100,tcp,ping,http] [--json F]

Runs as root. A lab of two namespaces: ``mon`` (198.18.30.1, where the monitor's thread
runs) and ``srv`` (198.18.30.2 plus N addresses 198.19.x.y/32 on the same interface, routed
from ``mon`` through 198.18.30.2). In ``srv``, one TCP listener on 0.0.0.0 accepts and
closes every connection (the tcp probes), tests/backend.py answers HTTP on 0.0.0.0 (the
http probes), and the kernel answers the pings.

Each variant is a fresh HealthMonitor in this process with N specs (one per address,
interval 1 s, timeout 0.5 s, 2 retries). After ``--warmup`` seconds, for ``--duration``
seconds, it measures:

- CPU % of this process (``resource.getrusage`` user + system over wall time; 100 % is one
  core): the monitor's thread is the only busy one;
- the probe-period jitter: |actual start - scheduled start| of every probe run
  (``HealthMonitor.jitter``), whose schedule is ``t0 + k x interval``; p50 / p99 / max;
- probes run, probes failed and endpoints ``nok`` (all should be up).

Baseline (``noio``): the same monitor and loop, same number of specs and schedule, whose
probe does no I/O (returns at once): the cost of the scheduling alone; every CPU figure is
given as a ratio to it. ``tcp100`` is the tcp probe with a tenth of the endpoints.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from lab import Lab, Netns, start_backend  # noqa: E402

from loxicmd.agent.health.monitor import HealthMonitor  # noqa: E402
from loxicmd.agent.health.probes import NoneProbe, ProbeKind  # noqa: E402
from loxicmd.agent.health.spec import ProbeSpec  # noqa: E402

MON_IP, SRV_IP = "198.18.30.1", "198.18.30.2"
TCP_PORT, HTTP_PORT = 7070, 8080
INTERVAL, TIMEOUT, RETRIES = 1.0, 0.5, 2

_ACCEPTOR = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[1])))
    s.listen(4096)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        c.close()
    """
)


class NoIoProbe(NoneProbe):
    """A probe that returns at once: the monitor's scheduling cost alone."""


def no_io_kinds() -> dict[str, ProbeKind]:
    return {ptype: NoIoProbe() for ptype in ("tcp", "udp", "http", "https", "ping", "none")}


def addresses(n: int) -> list[str]:
    return [f"198.19.{i // 250}.{i % 250 + 1}" for i in range(n)]


def build_lab(lab: Lab, n: int) -> tuple[Netns, Netns]:
    mon, srv = lab.add_ns("mon"), lab.add_ns("srv")
    lab.link(mon, srv, "m0", "eth0", f"{MON_IP}/24", f"{SRV_IP}/24")
    srv.run("ip", "-batch", "-", input="".join(
        f"addr add {a}/32 dev eth0\n" for a in addresses(n)))
    mon.ip("route", "add", "198.19.0.0/16", "via", SRV_IP)
    srv.sysctl("net.core.somaxconn", 4096)
    proc = srv.popen(sys.executable, "-c", _ACCEPTOR, str(TCP_PORT),
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError("tcp acceptor did not start")
    start_backend(lab, srv, "bench", HTTP_PORT, HTTP_PORT)
    return mon, srv


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_variant(mon: Netns, name: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    ptype = {"noio": "tcp", "tcp100": "tcp"}.get(name, name)
    port = {"tcp": TCP_PORT, "http": HTTP_PORT, "ping": 0}[ptype]
    specs = [ProbeSpec(host=a, ptype=ptype, port=port, interval_s=INTERVAL, timeout_s=TIMEOUT,
                       retries=RETRIES) for a in addresses(n)]
    changes: list[tuple[ProbeSpec, bool]] = []
    monitor = HealthMonitor(lambda s, h: changes.append((s, h)), netns=mon.path,
                            **({"kinds": no_io_kinds} if name == "noio" else {}))
    monitor.start()
    try:
        for spec in specs:
            monitor.add(spec)
        time.sleep(args.warmup)
        before = monitor.all()
        monitor.jitter(reset=True)
        cpu0, t0 = cpu_seconds(), time.monotonic()
        time.sleep(args.duration)
        cpu1, t1 = cpu_seconds(), time.monotonic()
        jit = monitor.jitter()
        after = monitor.all()
    finally:
        monitor.stop()
    probes = sum(after[s].probes - before[s].probes for s in specs)
    failed = sum(after[s].failures - before[s].failures for s in specs)
    delays = [after[s].avg_delay_ms for s in specs if after[s].avg_delay_ms is not None]
    errors = sorted({after[s].last_error for s in specs if after[s].last_error})
    return {
        "variant": name, "ptype": ptype, "endpoints": n, "seconds": t1 - t0,
        "cpu_pct": 100.0 * (cpu1 - cpu0) / (t1 - t0),
        "probes_per_s": probes / (t1 - t0), "failed": failed,
        "nok": sum(1 for s in specs if after[s].state != "ok"), "changes": len(changes),
        "jitter_p50_ms": jit["p50_ms"], "jitter_p99_ms": jit["p99_ms"],
        "jitter_max_ms": jit["max_ms"], "skipped": int(jit["skipped"]),
        "avg_delay_ms": sum(delays) / len(delays) if delays else None,
        "errors": errors[:5],
    }


def table(results: list[dict[str, Any]]) -> str:
    base = next((r for r in results if r["variant"] == "noio"), None)
    lines = [
        "| variant | endpoints | probes/s | CPU % | ratio to baseline | jitter p50 / p99 / max "
        "(ms) | failed probes | nok | avg delay (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = (f"{r['cpu_pct'] / base['cpu_pct']:.2f}" if base and base["cpu_pct"] > 0
                 else "-")
        label = "no-I/O baseline" if r["variant"] == "noio" else r["ptype"]
        delay = "-" if r["avg_delay_ms"] is None else f"{r['avg_delay_ms']:.3f}"
        lines.append(
            f"| {label} | {r['endpoints']} | {r['probes_per_s']:.0f} | {r['cpu_pct']:.1f} | "
            f"{ratio} | {r['jitter_p50_ms']:.2f} / {r['jitter_p99_ms']:.2f} / "
            f"{r['jitter_max_ms']:.2f} | {r['failed']} | {r['nok']} | {delay} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--variants", default="noio,tcp100,tcp,ping,http")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if not 1 <= args.endpoints <= 60000:
        parser.error("--endpoints must be in 1..60000")
    results = []
    with Lab() as lab:
        mon, _ = build_lab(lab, args.endpoints)
        for name in args.variants.split(","):
            n = max(1, args.endpoints // 10) if name == "tcp100" else args.endpoints
            res = run_variant(mon, name, n, args)
            print(f"{name}: {json.dumps(res)}", file=sys.stderr, flush=True)
            results.append(res)
    print(f"\nHealthMonitor, interval {INTERVAL:g} s, {args.duration:g} s measured after "
          f"{args.warmup:g} s warm-up; {platform.node()}, {platform.release()}, "
          f"python {platform.python_version()}\n")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    bad = [r for r in results if r["failed"] or r["nok"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
