"""`make demo`: a lab in network namespaces, the agent, a service, real traffic.

client (198.18.1.2) -> LB node (loxilbd + eBPF on its interfaces) -> server1..3
Everything is torn down at the end, also on Ctrl-C or failure.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lab import Lab, http_get, tcplb_topology, udp_request  # noqa: E402
from lbnode import LbNode  # noqa: E402

VIP = "198.18.100.1"


def show(node: LbNode, *args: str) -> None:
    print(f"\n$ loxicmd {shlex.join(args)}", flush=True)
    cp = node.loxicmd(*args)
    sys.stdout.write(cp.stdout)
    if cp.returncode:
        sys.stdout.write(cp.stderr)
        raise SystemExit(f"loxicmd exited with {cp.returncode}")


def main() -> None:
    with Lab() as lab:
        print("building the lab: client, lb, server1..3 (network namespaces, veth pairs)")
        topo = tcplb_topology(lab, n_backends=3, http_port=8080, udp_port=8080)
        node = LbNode(lab, topo.lb, topo.lb_ifaces, port=11111).start()
        print(f"loxilbd runs in {topo.lb.name}, datapath attached to {', '.join(topo.lb_ifaces)}")
        eps = ",".join(f"{ip}:1" for ip in topo.backend_ips)
        show(node, "create", "lb", VIP, "--tcp=2020:8080", f"--endpoints={eps}", "--name=web")
        show(node, "create", "lb", VIP, "--udp=2020:8080", f"--endpoints={eps}", "--name=dns")

        print(f"\n$ for i in 1..6: curl http://{VIP}:2020/   (from the client namespace)")
        for _ in range(6):
            print("  ", http_get(topo.client, f"http://{VIP}:2020/").strip())
        print(f"\n$ for i in 1..3: UDP request to {VIP}:2020")
        for i in range(3):
            print("  ", udp_request(topo.client, VIP, 2020, f"hello{i}".encode(),
                                    source_port=33000 + i).decode())

        show(node, "get", "lb", "-o", "wide")
        show(node, "get", "ct")
        print("\ntearing the lab down")


if __name__ == "__main__":
    main()
