"""End to end: bulk TCP (GSO super-packets on veth) through every NAT mode.

GSO packets are larger than the MTU until they are segmented on the way out;
the datapath must forward them itself like any other packet, or the kernel
drops those whose source became the LB's own address (one-arm, fullNAT)."""

from __future__ import annotations

import json

import pytest
from lab import Lab, tcplb_topology
from lbnode import LbNode

pytestmark = pytest.mark.e2e

VIP = "198.18.100.1"


@pytest.mark.parametrize("mode", ["default", "onearm", "fullnat"])
def test_iperf3_through_the_vip(lab: Lab, mode: str) -> None:
    topo = tcplb_topology(lab, n_backends=1)
    node = LbNode(lab, topo.lb, topo.lb_ifaces).start()
    server = topo.backends[0].popen("iperf3", "-s", "-p", "5201", "-1")
    args = ["create", "lb", VIP, "--tcp=5201:5201", f"--endpoints={topo.backend_ips[0]}:1"]
    if mode != "default":
        args.append(f"--mode={mode}")
    assert node.loxicmd(*args).returncode == 0
    forwarded_before = _forwarded(node)
    out = topo.client.run("iperf3", "-c", VIP, "-p", "5201", "-t", "2", "-J",
                          timeout=30).stdout
    server.wait(timeout=10)
    gbits = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9
    assert gbits > 1.0, f"{mode}: {gbits:.2f} Gbit/s"
    # the datapath forwarded (nearly) everything itself, not the kernel
    assert _forwarded(node) - forwarded_before < 100


def _forwarded(node: LbNode) -> int:
    """Packets the LB namespace's own IP stack forwarded."""
    for line in node.ns.run("nstat", "-az", "IpForwDatagrams").stdout.splitlines():
        if line.startswith("IpForwDatagrams"):
            return int(line.split()[1])
    return 0
