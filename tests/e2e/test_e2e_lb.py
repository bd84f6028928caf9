"""End to end: client -> LB node (loxilbd + eBPF) -> three backends, real traffic.

Mirrors LoxiLB's `tcplb` check: a VIP over three backends answering with their
names, strict round robin, conntrack visible, counters growing, delete stops it.
"""

from __future__ import annotations

import json

import pytest
from lab import CommandError, Topology, http_get, udp_request, wait_for
from lbnode import LbNode, pipe_table

pytestmark = pytest.mark.e2e

VIP = "198.18.100.1"
VPORT = 2020


def endpoints_arg(topo: Topology) -> str:
    return ",".join(f"{ip}:1" for ip in topo.backend_ips)


def assert_strict_rotation(names: list[str], expected_order: list[str]) -> None:
    """Consecutive answers walk the endpoints in order (from wherever the cursor was)."""
    start = expected_order.index(names[0])
    n = len(expected_order)
    assert names == [expected_order[(start + i) % n] for i in range(len(names))], names


def created_ok(node: LbNode, *args: str) -> None:
    cp = node.loxicmd("create", "lb", *args)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout == "", "create prints nothing on success"


def test_tcp_service_round_robin_conntrack_counters_delete(topo: Topology, node: LbNode) -> None:
    created_ok(node, VIP, f"--tcp={VPORT}:8080", f"--endpoints={endpoints_arg(topo)}",
               "--name=tcplb")
    table = pipe_table(node.loxicmd("get", "lb", check=True).stdout)
    assert table == [{
        "EXT IP": VIP, "PORT": str(VPORT), "PROTO": "tcp", "NAME": "tcplb", "MARK": "0",
        "SEL": "rr", "MODE": "default", "# OF ENDPOINTS": "3", "TIMEOUT": "240",
        "MONITOR": "Off",
    }]

    names = [http_get(topo.client, f"http://{VIP}:{VPORT}/").strip() for _ in range(12)]
    assert_strict_rotation(names, ["server1", "server2", "server3"])

    def flows_done() -> list[dict[str, str]]:
        rows = pipe_table(node.loxicmd("get", "ct", check=True).stdout)
        ours = [r for r in rows if r["DESTIP"] == VIP]
        assert len(ours) == 12 and all(r["STATE"] in ("est", "closed") for r in ours), ours
        return ours

    flows = wait_for(flows_done, timeout=10, what="12 flows in est/closed state")
    for row in flows:
        assert row["SERVICE NAME"] == "tcplb" and row["SRCIP"] == topo.client_ip
        assert row["DPORT"] == str(VPORT) and row["PROTO"] == "tcp"
        assert row["ACT"].startswith("dnat-198.18.1") and row["ACT"].endswith(":8080:w1")
        assert int(row["PACKETS"]) >= 8 and int(row["BYTES"]) > 0
    acts = sorted(r["ACT"] for r in flows)
    assert acts == sorted([f"dnat-{ip}:8080:w1" for ip in topo.backend_ips] * 4)

    out = json.loads(node.loxicmd("get", "lb", "-o", "json", check=True).stdout)
    (rule,) = out["lbAttr"]
    for ep in rule["endpoints"]:
        packets, nbytes = (int(x) for x in ep["counter"].split(":"))
        assert packets >= 4 * 8 and nbytes > packets * 40, ep

    cp = node.loxicmd("delete", "lb", VIP, f"--tcp={VPORT}")
    assert cp.returncode == 0 and cp.stdout == "", cp.stderr
    with pytest.raises(CommandError):
        http_get(topo.client, f"http://{VIP}:{VPORT}/", timeout=2)
    assert node.rules() == []
    assert [r for r in pipe_table(node.loxicmd("get", "ct").stdout) if r["DESTIP"] == VIP] == []


def test_udp_service_round_robin_and_delete(topo: Topology, node: LbNode) -> None:
    created_ok(node, VIP, f"--udp={VPORT}:8080", f"--endpoints={endpoints_arg(topo)}",
               "--name=udplb")
    replies = [udp_request(topo.client, VIP, VPORT, f"ping{i}".encode(), source_port=30000 + i)
               for i in range(6)]
    names = [r.split(b":", 1)[0].decode() for r in replies]
    assert_strict_rotation(names, ["server1", "server2", "server3"])
    assert all(r.endswith(f"ping{i}".encode()) for i, r in enumerate(replies))

    rows = [r for r in pipe_table(node.loxicmd("get", "ct", check=True).stdout)
            if r["DESTIP"] == VIP]
    assert len(rows) == 6 and {r["STATE"] for r in rows} == {"udp-est"}
    assert {r["PROTO"] for r in rows} == {"udp"}

    assert node.loxicmd("delete", "lb", VIP, f"--udp={VPORT}").returncode == 0
    with pytest.raises(CommandError):
        udp_request(topo.client, VIP, VPORT, b"after-delete", timeout=1)


def test_agent_restart_keeps_traffic_and_restores_rules(topo: Topology, node: LbNode) -> None:
    created_ok(node, VIP, f"--tcp={VPORT}:8080", f"--endpoints={endpoints_arg(topo)}",
               "--name=persisted")
    assert http_get(topo.client, f"http://{VIP}:{VPORT}/").strip() == "server1"
    before = node.rules()

    # SIGTERM: a clean stop; the pinned datapath keeps serving while no agent runs
    assert node.stop() == 0
    assert http_get(topo.client, f"http://{VIP}:{VPORT}/").strip() == "server2"

    # warm restart on the pinned maps: the same rule, counters carried over
    node.start()
    after = node.rules()
    assert [r["serviceArguments"] for r in after] == [r["serviceArguments"] for r in before]
    total = sum(int(ep["counter"].split(":")[0]) for ep in after[0]["endpoints"])
    assert total > 0, "pinned counters survive an agent restart"
    assert http_get(topo.client, f"http://{VIP}:{VPORT}/").strip() == "server3"

    # cold start: datapath gone (as after a reboot), rules come back from the state dir
    assert node.stop() == 0
    node.ns.run("loxilbd", "--cleanup", "--bpffs-dir", node.pin_dir)
    with pytest.raises(CommandError):
        http_get(topo.client, f"http://{VIP}:{VPORT}/", timeout=2)
    node.start()
    assert [r["serviceArguments"] for r in node.rules()] == \
        [r["serviceArguments"] for r in before]
    names = [http_get(topo.client, f"http://{VIP}:{VPORT}/").strip() for _ in range(3)]
    assert_strict_rotation(names, ["server1", "server2", "server3"])


def test_bad_input_is_named_and_changes_nothing(topo: Topology, node: LbNode) -> None:
    created_ok(node, VIP, f"--tcp={VPORT}:8080", f"--endpoints={endpoints_arg(topo)}")
    baseline = node.rules()
    eps = endpoints_arg(topo)

    cli_cases = [
        (["create", "lb", "198.18.300.1", "--tcp=80:8080", f"--endpoints={eps}"],
         "198.18.300.1"),
        (["create", "lb", VIP, "--tcp=70000:8080", f"--endpoints={eps}"], "70000"),
        (["create", "lb", VIP, "--tcp=81:8080", "--endpoints=198.18.11.2:0"], "0"),
        (["create", "lb", VIP, "--tcp=81:8080", f"--endpoints={eps}", "--select=fastest"],
         "fastest"),
    ]
    for args, named in cli_cases:
        cp = node.loxicmd(*args)
        assert cp.returncode == 2, (args, cp.returncode, cp.stderr)
        assert named in cp.stderr, (args, cp.stderr)

    svc = {"externalIP": VIP, "port": 81, "protocol": "tcp"}
    ep = {"endpointIP": topo.backend_ips[0], "targetPort": 8080, "weight": 1}
    api_cases = [
        ({"serviceArguments": {**svc, "externalIP": "198.18.300.1"}, "endpoints": [ep]},
         "externalIP"),
        ({"serviceArguments": {**svc, "port": 70000}, "endpoints": [ep]}, "port"),
        ({"serviceArguments": svc, "endpoints": [{**ep, "weight": 0}]}, "weight"),
        ({"serviceArguments": svc, "endpoints": [{**ep, "weight": 300}]}, "weight"),
        ({"serviceArguments": {**svc, "protocol": "gre"}, "endpoints": [ep]}, "protocol"),
        ({"serviceArguments": {**svc, "sel": 9}, "endpoints": [ep]}, "sel"),
        ({"serviceArguments": svc, "endpoints": [ep, ep]}, "endpoints"),
        ('{"serviceArguments": {"externalIP": ', "JSON"),
    ]
    for body, named in api_cases:
        status, answer = node.api("POST", "/config/loadbalancer", body)
        assert status == 400, (body, status, answer)
        assert answer["code"] == 400 and named in answer["result"], (body, answer)

    # an identical rule again is a conflict, reported by the CLI with exit 1
    cp = node.loxicmd("create", "lb", VIP, f"--tcp={VPORT}:8080", f"--endpoints={eps}")
    assert cp.returncode == 1 and "409" in cp.stderr and "exists" in cp.stderr, cp.stderr
    cp = node.loxicmd("delete", "lb", VIP, "--tcp=2999")
    assert cp.returncode == 1 and "404" in cp.stderr, cp.stderr

    assert node.rules() == baseline
    assert http_get(topo.client, f"http://{VIP}:{VPORT}/").strip().startswith("server")


def test_loxicmd_without_agent_exits_3_naming_the_address(topo: Topology) -> None:
    cp = topo.lb.run("loxicmd", "-p", "21999", "get", "lb", check=False)
    assert cp.returncode == 3
    assert "127.0.0.1:21999" in cp.stderr
    assert cp.stdout == ""
