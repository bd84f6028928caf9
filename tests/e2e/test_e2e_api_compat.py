"""LoxiLB's own clients read this agent correctly: error bodies, probe settings, field
types and meanings as in LoxiLB's API specification, kube-loxilb's request bodies, the
OpenAPI document. One agent for the module (its rules are removed after each test)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from lab import Lab, Topology, http_get, tcplb_topology
from lbnode import LbNode

from loxicmd.api import paths, wire

pytestmark = pytest.mark.e2e

VIP = "198.18.100.1"
LOXILB_MESSAGES = {400: "Malformed arguments for API call", 404: "Resource not found",
                   409: "Resource conflict: Resource already exists OR dependency not found",
                   403: "Capacity insufficient"}


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[Topology, LbNode]]:
    lab = Lab()
    try:
        topo = tcplb_topology(lab, n_backends=3)
        yield topo, LbNode(lab, topo.lb, topo.lb_ifaces).start()
    finally:
        lab.close()


@pytest.fixture
def node(world: tuple[Topology, LbNode]) -> Iterator[LbNode]:
    yield world[1]
    status, _ = world[1].api("DELETE", "/config/loadbalancer/all")
    assert status == 200


@pytest.fixture
def topo(world: tuple[Topology, LbNode]) -> Topology:
    return world[0]


def kube_loxilb_body(topo: Topology, **svc: Any) -> dict[str, Any]:
    """A LoadBalancerModel as kube-loxilb marshals it (Go field tags, omitempty), with
    its documented liveness settings."""
    return {
        "serviceArguments": {
            "externalIP": VIP, "privateIP": "", "port": 2020, "protocol": "tcp", "sel": 0,
            "mode": 0, "BGP": False, "Monitor": True, "inactiveTimeOut": 0, "block": 0,
            "managed": True, "probetype": "", "probeport": 0, "probereq": "",
            "proberesp": "", "probeRetries": 3, "probeTimeout": 10,
            "name": "default_web:llb-inst0", **svc},
        "secondaryIPs": None,
        "allowedSources": None,
        "endpoints": [{"endpointIP": ip, "targetPort": 8080, "weight": 1, "state": "",
                       "counter": ""} for ip in topo.backend_ips],
    }


def only_rule(node: LbNode) -> dict[str, Any]:
    (rule,) = node.rules()
    return rule


def test_kube_loxilb_rule_is_accepted_as_it_means_it(topo: Topology, node: LbNode) -> None:
    status, answer = node.api("POST", "/config/loadbalancer", kube_loxilb_body(topo))
    assert (status, answer) == (200, {"result": "Success"})
    sa = only_rule(node)["serviceArguments"]
    # probeTimeout is the probe period (LoxiLB), probeRetries the failures before down
    assert (sa["probeTimeout"], sa["probeRetries"], sa["monitor"]) == (10, 3, True)
    assert sa["probetype"] == ""  # as given: the protocol's probe (tcp) runs
    status, eps = node.api("GET", "/config/endpoint/all")
    assert {e["probeType"] for e in eps["Attr"]} == {"tcp"}
    assert sa["managed"] is True and sa["security"] == 0
    assert sa["snat"] is False  # kube-loxilb keeps rules with snat:true when it cleans up
    # the same body again: a conflict whose words say "exist" (kube-loxilb then moves on)
    status, answer = node.api("POST", "/config/loadbalancer", kube_loxilb_body(topo))
    assert status == 409 and "exist" in answer["result"], answer


@pytest.mark.parametrize("mode", [1, 2])
def test_snat_is_false_on_every_rule_of_this_agent(topo: Topology, node: LbNode,
                                                    mode: int) -> None:
    status, answer = node.api("POST", "/config/loadbalancer",
                              kube_loxilb_body(topo, mode=mode, Monitor=False))
    assert status == 200, answer
    assert only_rule(node)["serviceArguments"]["snat"] is False


@pytest.mark.parametrize("ptype,port,req,resp", [
    ("none", 0, "", ""), ("ping", 0, "", ""), ("tcp", 8080, "", ""),
    ("http", 8080, "/health", "server"), ("udp", 8080, "ping", "server")])
def test_probe_settings_are_kept_and_a_probe_type_asks_for_monitoring(
        topo: Topology, node: LbNode, ptype: str, port: int, req: str, resp: str) -> None:
    """kube-loxilb sends the probe annotations with Monitor false; LoxiLB keeps them, and a
    probe type other than none turns monitoring on."""
    body = kube_loxilb_body(topo, Monitor=False, probetype=ptype, probeport=port,
                            probereq=req, proberesp=resp)
    status, answer = node.api("POST", "/config/loadbalancer", body)
    assert status == 200, answer
    sa = only_rule(node)["serviceArguments"]
    monitored = ptype != "none"
    assert (sa["probetype"], sa["probeport"], sa["probereq"], sa["proberesp"],
            sa["monitor"]) == (ptype, port, req, resp, monitored)
    status, eps = node.api("GET", "/config/endpoint/all")
    probed = {(e["hostName"], e["probeType"]) for e in eps["Attr"]}
    assert probed == ({(ip, ptype) for ip in topo.backend_ips} if monitored else set()), eps
    assert http_get(topo.client, f"http://{VIP}:2020/").strip().startswith("server")


def test_monitor_off_and_no_probe_type_probes_nothing(topo: Topology, node: LbNode) -> None:
    assert node.api("POST", "/config/loadbalancer", kube_loxilb_body(topo, Monitor=False)
                    )[0] == 200
    assert only_rule(node)["serviceArguments"]["monitor"] is False
    assert node.api("GET", "/config/endpoint/all")[1]["Attr"] == []


def test_snat_rules_are_refused(topo: Topology, node: LbNode) -> None:
    status, answer = node.api("POST", "/config/loadbalancer",
                              kube_loxilb_body(topo, snat=True))
    assert status == 400 and answer["fields"] == ["serviceArguments.snat"], answer
    assert node.rules() == []


def test_probe_timeout_defaults_to_a_60_s_period(topo: Topology, node: LbNode) -> None:
    body = kube_loxilb_body(topo)
    for key in ("probeTimeout", "probeRetries"):
        del body["serviceArguments"][key]
    assert node.api("POST", "/config/loadbalancer", body)[0] == 200
    sa = only_rule(node)["serviceArguments"]
    assert (sa["probeTimeout"], sa["probeRetries"]) == (60, 2)
    status, eps = node.api("GET", "/config/endpoint/all")
    assert {e["probeDuration"] for e in eps["Attr"]} == {60}, eps


@pytest.mark.parametrize("key,value,named", [
    ("security", 1, "serviceArguments.security"),
    ("security", 7, "serviceArguments.security"),
    ("managed", "yes", "serviceArguments.managed"),
    ("probeTimeout", 100000, "serviceArguments.probeTimeout"),
])
def test_security_and_managed_are_kept_or_refused_never_dropped(
        topo: Topology, node: LbNode, key: str, value: Any, named: str) -> None:
    status, answer = node.api("POST", "/config/loadbalancer",
                              kube_loxilb_body(topo, **{key: value}))
    assert status == 400, answer
    assert answer["message"] == LOXILB_MESSAGES[400]
    assert answer["result"].startswith(named) and answer["fields"] == [named], answer
    assert node.rules() == []


def test_error_bodies_are_loxilbs(topo: Topology, node: LbNode) -> None:
    status, answer = node.api("DELETE", "/config/loadbalancer/externalipaddress/"
                              f"{VIP}/port/2999/protocol/tcp")
    assert status == 404 and answer["code"] == 404, answer
    assert answer["message"] == LOXILB_MESSAGES[404]
    assert answer["result"] == f"no rule {VIP}:2999/tcp"
    status, answer = node.api("POST", "/config/loadbalancer",
                              kube_loxilb_body(topo, port=70000))
    assert (status, answer["code"], answer["message"]) == (400, 400, LOXILB_MESSAGES[400])
    assert "serviceArguments.port" in answer["result"] and "70000" in answer["result"]
    status, answer = node.api("GET", "/config/nosuch")
    assert status == 404 and answer["result"] == "no such path /netlox/v1/config/nosuch"
    status, answer = node.api("PUT", "/config/loadbalancer/all")
    assert status == 405 and "PUT" in answer["result"], answer


def test_no_route_to_an_snat_endpoint_is_a_400_naming_it(topo: Topology,
                                                          node: LbNode) -> None:
    body = kube_loxilb_body(topo, mode=2, Monitor=False)
    body["endpoints"].append({"endpointIP": "203.0.113.9", "targetPort": 8080, "weight": 1})
    # the lab's LB has no default route: nothing reaches 203.0.113.9
    status, answer = node.api("POST", "/config/loadbalancer", body)
    assert status == 400, answer
    assert "203.0.113.9" in answer["result"] and "no route" in answer["result"], answer
    assert answer["fields"] == ["endpoints"]
    assert "Error" not in answer["result"] and "Exception" not in answer["result"]
    assert node.rules() == []


@pytest.mark.parametrize("where,value", [
    ("externalIP", "0.0.0.0"), ("externalIP", "255.255.255.255"), ("externalIP", "239.1.1.1"),
    ("externalIP", "127.0.0.1"), ("endpointIP", "127.0.0.1"), ("endpointIP", "0.0.0.0"),
    ("endpointIP", "224.0.0.5"), ("endpointIP", VIP)])
def test_addresses_that_cannot_carry_traffic_are_refused(topo: Topology, node: LbNode,
                                                         where: str, value: str) -> None:
    body = kube_loxilb_body(topo, Monitor=False)
    if where == "externalIP":
        body["serviceArguments"]["externalIP"] = value
        named = "serviceArguments.externalIP"
    else:
        body["endpoints"][1]["endpointIP"] = value
        named = "endpoints["
    status, answer = node.api("POST", "/config/loadbalancer", body)
    assert status == 400 and answer["result"].startswith(named), answer
    assert value in answer["result"]
    assert node.rules() == []


def test_field_types_as_loxilb_declares_them(topo: Topology, node: LbNode) -> None:
    assert node.api("POST", "/config/loadbalancer", kube_loxilb_body(topo, Monitor=False)
                    )[0] == 200
    http_get(topo.client, f"http://{VIP}:2020/")
    status, ct = node.api("GET", "/config/conntrack/all")
    assert status == 200 and ct["ctAttr"], ct
    assert all(isinstance(e["ident"], str) for e in ct["ctAttr"])
    status, proc = node.api("GET", "/status/process")
    (entry,) = proc["processAttr"]
    for key in ("pid", "user", "priority", "nice", "virtMemory", "residentSize",
                "sharedMemory", "status", "CPUUsage", "MemoryUsage", "time", "command"):
        assert isinstance(entry[key], str), (key, entry)
    assert entry["pid"].isdigit() and int(entry["residentSize"]) > 0


def test_conntrack_state_filter_names_what_is_allowed(node: LbNode) -> None:
    status, answer = node.api("GET", "/config/conntrack/all?state=bogus")
    assert status == 400 and answer["result"].startswith("state: 'bogus'"), answer
    assert "est" in answer["result"] and "udp-uni" in answer["result"]


def test_update_without_a_name_keeps_the_name(topo: Topology, node: LbNode) -> None:
    eps = ",".join(f"{ip}:1" for ip in topo.backend_ips)
    node.loxicmd("create", "lb", VIP, "--tcp=2020:8080", f"--endpoints={eps}",
                 "--name=web", check=True)
    node.loxicmd("create", "lb", VIP, "--tcp=2020:8080",
                 f"--endpoints={topo.backend_ips[0]}:1", check=True)
    rule = only_rule(node)
    assert rule["serviceArguments"]["name"] == "web"
    assert [e["endpointIP"] for e in rule["endpoints"]] == topo.backend_ips[:1]


def test_an_ha_instance_set_by_mistake_can_be_removed(node: LbNode) -> None:
    node.loxicmd("set", "hastate", "nosuch", "MASTER", check=True)
    cp = node.loxicmd("delete", "hastate", "nosuch")
    assert cp.returncode == 0 and cp.stdout == "", cp.stderr
    status, listed = node.api("GET", "/config/cistate/all")
    assert [i["instance"] for i in listed["Attr"]] == ["default"]
    status, answer = node.api("DELETE", "/config/cistate/instance/nosuch")
    assert status == 404 and "nosuch" in answer["result"]
    status, answer = node.api("DELETE", "/config/cistate/instance/default")
    assert status == 400 and answer["result"].startswith("instance: 'default'"), answer


def test_host_and_port_range_delete_route_exists(topo: Topology, node: LbNode) -> None:
    body = kube_loxilb_body(topo, Monitor=False, port=3000, portMax=3003)
    assert node.api("POST", "/config/loadbalancer", body)[0] == 200
    status, answer = node.api("DELETE", "/config/loadbalancer/hosturl/any/externalipaddress/"
                              f"{VIP}/port/3000/portmax/3003/protocol/tcp")
    assert (status, answer) == (200, {"result": "Success"}), answer
    assert node.rules() == []


def test_openapi_document_carries_every_route_with_its_schemas(node: LbNode) -> None:
    status, doc = node.api("GET", "/openapi.json")
    assert status == 200
    served = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    declared = {(r.method, "/netlox/v1" + r.path) for r in wire.ROUTES}
    assert served == declared
    schemas = doc["components"]["schemas"]
    for route in wire.ROUTES:
        op = doc["paths"]["/netlox/v1" + route.path][route.method.lower()]
        ok = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        assert ok.rsplit("/", 1)[1] in schemas
        assert op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"] \
            == "#/components/schemas/Error"
        if route.method == "POST":
            ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.rsplit("/", 1)[1] in schemas
    sa = schemas["ServiceArguments"]["properties"]
    for key in ("probeTimeout", "probeRetries", "managed", "security", "snat", "probetype"):
        assert key in sa
    # optional members may be null (taken as absent), in OpenAPI 3.1's words
    assert schemas["ConntrackEntry"]["properties"]["ident"]["type"] == ["string", "null"]
    assert schemas["ProcessInfoEntry"]["properties"]["pid"]["type"] == ["string", "null"]
    # parameters say what the handlers take
    delete = doc["paths"]["/netlox/v1" + paths.LB_RULE]["delete"]["parameters"]
    by_name = {p["name"]: p["schema"] for p in delete}
    assert by_name["port"]["type"] == "integer" and by_name["proto"]["enum"][0] == "tcp"
    # every $ref resolves
    refs = [v for v in _walk(doc) if isinstance(v, str) and v.startswith("#/components/")]
    assert refs and all(r.rsplit("/", 1)[1] in schemas for r in refs)
    json.dumps(doc)


def _walk(obj: Any) -> Iterator[Any]:
    if isinstance(obj, dict):
        for value in obj.values():
            yield from _walk(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _walk(value)
    else:
        yield obj
