"""`save` then `apply` gives back the same configuration, of every kind; creating an
endpoint probe again changes it (LoxiLB's documented way)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lab import Topology
from lbnode import LbNode

pytestmark = pytest.mark.e2e

VIP = "198.18.100.1"


def _rule(topo: Topology, port: int, *, target: int = 8080, port_max: int = 0,
          weights: tuple[int, ...] = (1, 1, 1), sources: tuple[str, ...] = (),
          **svc: Any) -> dict[str, Any]:
    return {
        "serviceArguments": {"externalIP": VIP, "port": port, "portMax": port_max,
                             "protocol": svc.pop("protocol", "tcp"), **svc},
        "endpoints": [{"endpointIP": ip, "targetPort": target, "weight": w}
                      for ip, w in zip(topo.backend_ips, weights, strict=True)],
        "allowedSources": [{"prefix": p} for p in sources],
    }


def configuration_of_every_kind(topo: Topology) -> tuple[list[dict[str, Any]],
                                                         list[dict[str, Any]]]:
    rules = [
        _rule(topo, 80, name="plain"),
        _rule(topo, 81, protocol="udp", name="dns:inst1", inactiveTimeOut=30),
        _rule(topo, 8001, port_max=8100, target=0, name="keep-port"),
        _rule(topo, 3000, port_max=3003, name="range"),
        _rule(topo, 82, mode=2, privateIP="198.18.50.1", name="fullnat"),
        _rule(topo, 83, mode=1, sel=1, name="onearm-hash"),
        _rule(topo, 84, sel=2, weights=(1, 2, 5), name="weighted"),
        _rule(topo, 85, sel=3, name="persist"),
        _rule(topo, 86, sel=4, name="lc"),
        _rule(topo, 87, sources=("198.18.1.0/24", "198.18.7.7/32"), name="allow"),
        _rule(topo, 88, block=77, name="marked"),
        _rule(topo, 89, monitor=True, probetype="http", probeport=8080, probereq="/",
              proberesp="server", probeTimeout=30, probeRetries=4, name="monitored"),
        _rule(topo, 90, probetype="none", managed=True, name="probe-kept"),
        {"serviceArguments": {"externalIP": VIP, "port": 0, "protocol": "icmp",
                              "name": "ping"},
         "endpoints": [{"endpointIP": topo.backend_ips[0], "targetPort": 0, "weight": 1}]},
    ]
    ip1, ip2, _ = topo.backend_ips
    endpoints = [
        {"hostName": ip1, "probeType": "ping", "probeDuration": 40, "inactiveReTries": 3},
        {"hostName": ip2, "name": "web2", "probeType": "http", "probePort": 8080,
         "probeReq": "/", "probeResp": "server2", "probeDuration": 20},
        {"hostName": ip2, "probeType": "tcp", "probePort": 7000},
    ]
    return rules, endpoints


def snapshot(node: LbNode) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The configuration as the agent shows it, without what traffic and probes change."""
    rules = node.rules()
    for rule in rules:
        for ep in rule["endpoints"]:
            ep.pop("counter")
            ep.pop("state")
    status, eps = node.api("GET", "/config/endpoint/all")
    assert status == 200
    for ep in eps["Attr"]:
        for key in ("minDelay", "avgDelay", "maxDelay", "currState"):
            ep.pop(key)
    return rules, eps["Attr"]


def test_save_then_apply_gives_back_every_kind(topo: Topology, node: LbNode,
                                               tmp_path: Path) -> None:
    rules, endpoints = configuration_of_every_kind(topo)
    for body in endpoints:
        status, answer = node.api("POST", "/config/endpoint", body)
        assert status == 200, (body, answer)
    for body in rules:
        status, answer = node.api("POST", "/config/loadbalancer", body)
        assert status == 200, (body, answer)
    before = snapshot(node)
    assert len(before[0]) == len(rules)

    saved = tmp_path / "saved"
    cp = node.loxicmd("save", "--all", "-c", str(saved))
    assert cp.returncode == 0, cp.stderr
    # onto the same configuration: nothing to do, nothing refused
    cp = node.loxicmd("apply", "-c", str(saved))
    assert cp.returncode == 0, cp.stderr
    assert snapshot(node) == before

    # onto an empty agent: everything comes back as it was
    assert node.api("DELETE", "/config/loadbalancer/all")[0] == 200
    for ip in topo.backend_ips[:2]:
        assert node.api("DELETE", f"/config/endpoint/epipaddress/{ip}")[0] == 200
    assert snapshot(node) == ([], [])
    cp = node.loxicmd("apply", "-c", str(saved))
    assert cp.returncode == 0, cp.stderr
    assert snapshot(node) == before


def test_creating_an_endpoint_again_updates_its_probe(topo: Topology, node: LbNode) -> None:
    ip = topo.backend_ips[0]
    cp = node.loxicmd("create", "endpoint", ip, "--name=probe1", "--probetype=tcp",
                      "--probeport=8080", "--period=10")
    assert cp.returncode == 0, cp.stderr
    cp = node.loxicmd("create", "endpoint", ip, "--name=probe1", "--probetype=tcp",
                      "--probeport=8080", "--period=40")
    assert cp.returncode == 0, cp.stderr
    status, eps = node.api("GET", "/config/endpoint/all")
    assert [(e["name"], e["probeDuration"]) for e in eps["Attr"]] == [("probe1", 40)]
    # and the same once more changes nothing and is not an error
    cp = node.loxicmd("create", "endpoint", ip, "--name=probe1", "--probetype=tcp",
                      "--probeport=8080", "--period=40")
    assert cp.returncode == 0, cp.stderr
    # a restart keeps the update
    node.stop()
    node.start()
    status, eps = node.api("GET", "/config/endpoint/all")
    assert [(e["name"], e["probeDuration"]) for e in eps["Attr"]] == [("probe1", 40)]
