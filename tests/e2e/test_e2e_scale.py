"""End to end at the datapath's advertised scale: 1,024 rules in one agent."""

from __future__ import annotations

import pytest
from lab import Lab, http_get, tcplb_topology
from lbnode import LbNode, pipe_table

pytestmark = pytest.mark.e2e


def test_1024_rules_all_programmed_and_the_last_one_serves(lab: Lab) -> None:
    topo = tcplb_topology(lab, n_backends=1)
    node = LbNode(lab, topo.lb, topo.lb_ifaces).start()
    vips = [f"198.18.{100 + i // 250}.{1 + i % 250}" for i in range(1024)]
    bodies = [{
        "serviceArguments": {"externalIP": vip, "port": 2020, "protocol": "tcp",
                             "name": f"svc{i}"},
        "endpoints": [{"endpointIP": topo.backend_ips[0], "targetPort": 8080, "weight": 1}],
    } for i, vip in enumerate(vips)]
    assert set(node.bulk_post("/config/loadbalancer", bodies)) == {200}
    rows = pipe_table(node.loxicmd("get", "lb", check=True).stdout)
    assert len(rows) == 1024
    assert [r["EXT IP"] for r in rows[-2:]] == vips[-2:], "sorted numerically by IP"
    for vip in (vips[0], vips[511], vips[-1]):
        assert http_get(topo.client, f"http://{vip}:2020/").strip() == "server1"
