"""Capture the real agent's answers for the golden-output tests.

    sudo .venv/bin/python tests/golden/capture.py

Builds a namespace lab (client, LB node, two backends), starts the real ``loxilbd``,
creates objects with the real ``loxicmd`` (``populate``), sends traffic so that conntrack
has entries, and writes each GET body to ``tests/golden/api/<name>.json``. Then run
``UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/cli/test_cli_golden.py`` to refresh the
expected outputs, and review the diff. ``test_cli_live.py`` runs ``populate`` against a
fresh agent and checks that its answers still have the shape of these captures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from lab import Lab, Topology, http_get, tcplb_topology, udp_request, wait_for  # noqa: E402
from lbnode import LbNode  # noqa: E402

API_DIR = HERE / "api"

# capture name -> GET path below /netlox/v1
GETS: dict[str, str] = {
    "lb": "/config/loadbalancer/all",
    "ct": "/config/conntrack/all",
    "ct_page": "/config/conntrack/all?limit=2",
    "ha": "/config/cistate/all",
    "params": "/config/params",
    "process": "/status/process",
    "version": "/version",
    "dpstats": "/config/dpstats",
    "ep": "/config/endpoint/all",
}

VIP, VIP2, VIP3 = "198.18.100.1", "198.18.100.2", "198.18.100.10"


def populate(node: LbNode, topo: Topology) -> None:
    """Rules of several shapes, HA states, and real flows (TCP and UDP)."""
    a, b = topo.backend_ips[:2]
    commands = [
        ["create", "lb", VIP, "--tcp=2020:8080", f"--endpoints={a}:1,{b}:2", "--name=web"],
        ["create", "lb", VIP, "--udp=2020:8080", f"--endpoints={a}:1,{b}:1",
         "--name=web-udp", "--inatimeout=30"],
        ["create", "lb", VIP2, "--tcp=8000-8010:8080", f"--endpoints={a}:5", "--mark=7"],
        ["create", "lb", VIP3, "--tcp=80:8080"],
        ["create", "endpoint", a, "--probetype=tcp", "--probeport=8080", "--period=1",
         "--retries=2"],
        ["create", "endpoint", b, "--probetype=ping", "--period=1", "--name=b-ping"],
        ["create", "lb", "198.18.100.20", "--tcp=8080:8080", f"--endpoints={a}:1,{b}:1",
         "--monitor", "--name=watched"],
        ["set", "hastate", "default", "MASTER", f"--vip={VIP}"],
        ["set", "hastate", "backup-1", "BACKUP"],
    ]
    for argv in commands:
        cp = node.loxicmd(*argv)
        assert cp.returncode == 0, (argv, cp.stderr)
    for _ in range(3):
        http_get(topo.client, f"http://{VIP}:2020/")
    for i in range(2):
        udp_request(topo.client, VIP, 2020, b"ping", source_port=31000 + i)

    def flows() -> bool:
        status, body = node.api("GET", GETS["ct"])
        return status == 200 and len(body["ctAttr"]) >= 5

    wait_for(flows, timeout=10, what="5 conntrack entries")

    def probed() -> bool:
        status, body = node.api("GET", GETS["ep"])
        return status == 200 and all(e["minDelay"] != "-" for e in body["Attr"])

    wait_for(probed, timeout=10, what="every endpoint probed once")


def capture(node: LbNode) -> dict[str, Any]:
    bodies = {}
    for name, path in GETS.items():
        status, body = node.api("GET", path)
        assert status == 200, (path, status, body)
        bodies[name] = body
    return bodies


def main() -> None:
    with Lab() as lab:
        topo = tcplb_topology(lab, n_backends=2)
        node = LbNode(lab, topo.lb, topo.lb_ifaces).start()
        try:
            populate(node, topo)
            bodies = capture(node)
        finally:
            node.stop()
    API_DIR.mkdir(exist_ok=True)
    for name, body in bodies.items():
        (API_DIR / f"{name}.json").write_text(json.dumps(body, indent=2) + "\n")
        print(f"wrote {(API_DIR / f'{name}.json').relative_to(HERE.parent.parent)}")


if __name__ == "__main__":
    main()
