"""Services and EndpointSlices (recorded objects, tests/k8s/) as rules; the annotations
kube-loxilb defines; external IPs from the CIDRs; the shipped manifests grant what the
controller uses."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_api import load

from loxicmd.agent.lb.model import parse_lb_entry, rule_to_api
from loxicmd.controller.ipam import IpPool, NoAddress, parse_cidrs
from loxicmd.controller.kube import RBAC
from loxicmd.controller.service import (
    ServiceRefused,
    differs,
    options_of,
    owned_name,
    rule_name,
    rules_for,
    wants_lb,
)

MANIFEST = Path(__file__).resolve().parents[2] / "loxicmd/controller/manifests" \
    / "loxilb-controller.yaml"


def annotated(**annotations: str) -> dict[str, Any]:
    svc = load("service-web.json")
    svc["metadata"]["annotations"].update({f"loxilb.io/{k}": v for k, v in annotations.items()})
    return svc


def test_recorded_service_and_slice_make_one_rule_of_the_ready_endpoints() -> None:
    svc, sl = load("service-web.json"), load("endpointslice-web.json")
    assert wants_lb(svc, "loxilb.io/loxilb", False)
    (rule,) = rules_for(svc, [sl], "198.18.100.1", options_of(svc))
    assert rule == {
        "serviceArguments": {"externalIP": "198.18.100.1", "port": 80, "protocol": "tcp",
                             "sel": 0, "mode": 2, "bgp": False, "monitor": False,
                             "name": "default_web:llb-inst0", "managed": True,
                             "inactiveTimeOut": 240, "probetype": "", "probeport": 0,
                             "probereq": "", "proberesp": "", "probeTimeout": 60,
                             "probeRetries": 2},
        "endpoints": [{"endpointIP": "198.18.2.11", "targetPort": 8080, "weight": 1},
                      {"endpointIP": "198.18.2.12", "targetPort": 8080, "weight": 1}],
        "allowedSources": [],
    }
    assert owned_name(rule_name("default/web")) and not owned_name("web")


def test_class_and_type_decide_whose_service_it_is() -> None:
    svc = load("service-web.json")
    other = copy.deepcopy(svc)
    other["spec"]["loadBalancerClass"] = "example.com/other"
    none = copy.deepcopy(svc)
    del none["spec"]["loadBalancerClass"]
    cluster_ip = copy.deepcopy(svc)
    cluster_ip["spec"]["type"] = "ClusterIP"
    assert not wants_lb(other, "loxilb.io/loxilb", True)
    assert not wants_lb(none, "loxilb.io/loxilb", False) and wants_lb(none, "loxilb.io/loxilb",
                                                                      True)
    assert not wants_lb(cluster_ip, "loxilb.io/loxilb", True)


def test_annotations_as_kube_loxilb_reads_them() -> None:
    o = options_of(annotated(lbmode="onearm", epselect="hash", liveness="yes", timeout="30",
                             probetype="http", probeport="8080", probereq="/health",
                             proberesp="OK", probetimeout="5", proberetries="3",
                             staticIP="198.18.100.9"))
    assert (o.mode, o.sel, o.monitor, o.timeout, o.static_ip) == (1, 1, True, 30,
                                                                  "198.18.100.9")
    assert o.probe == {"probetype": "http", "probeport": 8080, "probereq": "/health",
                       "proberesp": "OK", "probeTimeout": 5, "probeRetries": 3}
    assert options_of(annotated(epselect="roundrobin")).sel == 0
    # naming a probe type asks for monitoring, as the agent reads it
    assert options_of(annotated(probetype="tcp")).monitor
    assert not options_of(annotated(probetype="none")).monitor
    svc = load("service-web.json")
    svc["spec"]["loadBalancerIP"] = "198.18.100.7"
    assert options_of(svc).static_ip == "198.18.100.7"
    del svc["metadata"]["annotations"]["loxilb.io/lbmode"]
    assert options_of(svc, default_mode=2).mode == 2  # the controller's --lb-mode


@pytest.mark.parametrize(("annotations", "words"), [
    ({"lbmode": "magic"}, "loxilb.io/lbmode: 'magic' is not allowed; allowed: default, onearm"),
    ({"epselect": "n2det"}, "loxilb.io/epselect: 'n2det' is not allowed"),
    # kube-loxilb's words the agents do not carry out are refused, not defaulted
    ({"lbmode": "dsr"}, "'dsr' is not allowed; allowed: default, onearm, fullnat$"),
    ({"epselect": "n3"}, "'n3' is not allowed; allowed: rr, hash, priority, persist, lc, "),
    ({"timeout": "soon"}, "loxilb.io/timeout: 'soon' is not a number; allowed: 1..86400"),
    ({"probeport": "70000"}, "loxilb.io/probeport: 70000 is out of range"),
    ({"liveness": "maybe"}, "loxilb.io/liveness: 'maybe' is not allowed; allowed: yes, no"),
    ({"staticIP": "300.1.1.1"}, "'300.1.1.1' (spec.loadBalancerIP or annotation "),
])
def test_bad_annotations_are_named(annotations: dict[str, str], words: str) -> None:
    with pytest.raises(ServiceRefused, match=words.replace("(", r"\(").replace(")", r"\)")):
        options_of(annotated(**annotations))


def test_ports_protocols_and_slices() -> None:
    svc, sl = load("service-web.json"), load("endpointslice-web.json")
    svc["spec"]["ports"].append({"name": "dns", "port": 53, "protocol": "UDP",
                                 "targetPort": 5353, "nodePort": 30053})
    sl2 = copy.deepcopy(sl)
    sl2["metadata"]["name"] = "web-abcde"
    sl2["ports"] = [{"name": "dns", "port": 5353, "protocol": "UDP"}]
    sl2["endpoints"] = [{"addresses": ["198.18.2.14"]}]  # ready unset: ready
    v6 = copy.deepcopy(sl)
    v6["addressType"] = "IPv6"
    v6["endpoints"] = [{"addresses": ["2001:db8::5"], "conditions": {"ready": True}}]
    rules = rules_for(svc, [sl, sl2, v6], "198.18.100.1", options_of(svc), bgp=True)
    assert [(r["serviceArguments"]["port"], r["serviceArguments"]["protocol"],
             r["serviceArguments"]["bgp"], [e["endpointIP"] for e in r["endpoints"]])
            for r in rules] == [(80, "tcp", True, ["198.18.2.11", "198.18.2.12"]),
                                (53, "udp", True, ["198.18.2.14"])]
    assert rules[1]["serviceArguments"]["inactiveTimeOut"] == 20  # udp's
    svc["spec"]["ports"][0]["protocol"] = "SCTP"
    with pytest.raises(ServiceRefused, match="protocol 'sctp' is not allowed; allowed: tcp, udp"):
        rules_for(svc, [], "198.18.100.1", options_of(svc))
    svc["spec"]["ports"][0]["protocol"] = "TCP"
    svc["spec"]["loadBalancerSourceRanges"] = ["10.0.0.5/24", "192.0.2.0/25"]
    assert rules_for(svc, [], "198.18.100.1", options_of(svc))[0]["allowedSources"] == [
        {"prefix": "10.0.0.0/24"}, {"prefix": "192.0.2.0/25"}]  # host bits as Kubernetes
    svc["spec"]["loadBalancerSourceRanges"] = ["2001:db8::/32"]
    with pytest.raises(ServiceRefused, match="is IPv6; allowed: IPv4 prefixes"):
        rules_for(svc, [], "198.18.100.1", options_of(svc))
    svc["spec"]["ipFamilies"] = ["IPv6"]
    with pytest.raises(ServiceRefused, match="spec.ipFamilies: IPv6 alone"):
        options_of(svc)


def _as_the_agent_shows(entry: dict[str, Any]) -> dict[str, Any]:
    """What the agent's API answers for a rule posted as `entry` (its own code)."""
    rule, _, _ = parse_lb_entry(entry)
    return rule_to_api(rule, {})


@pytest.mark.parametrize("annotations", [
    {}, {"liveness": "yes"}, {"probetype": "tcp", "probeport": "8080"},
    {"timeout": "30", "epselect": "persist", "lbmode": "onearm"},
    {"probetype": "http", "probereq": "/h", "proberesp": "OK", "probetimeout": "5",
     "proberetries": "4", "liveness": "yes"},
])
def test_what_the_agent_shows_is_what_the_controller_asked(annotations: dict[str, str]
                                                           ) -> None:
    """No difference seen where there is none (else every pass would post again), and
    an annotation taken away is a difference."""
    svc, sl = annotated(**annotations), load("endpointslice-web.json")
    svc["spec"]["loadBalancerSourceRanges"] = ["10.0.0.5/24"]
    (want,) = rules_for(svc, [sl], "198.18.100.1", options_of(svc))
    shown = _as_the_agent_shows(want)
    assert not differs(want, shown), (want, shown)
    shown["endpoints"].pop()
    assert differs(want, shown)
    if annotations:
        (plain,) = rules_for(load("service-web.json"), [sl], "198.18.100.1",
                             options_of(load("service-web.json")))
        assert differs(plain, _as_the_agent_shows(want))


def test_ipam() -> None:
    pool = IpPool(parse_cidrs("198.18.100.0/30, 198.18.101.8/31"))
    assert [pool.allocate(s) for s in ("a", "b")] == ["198.18.100.1", "198.18.100.2"]
    assert pool.allocate("a") == "198.18.100.1"  # the one it has
    assert pool.allocate("c") == "198.18.101.8"  # a /31 has two usable addresses
    pool.reserve("d", "198.18.101.9")
    with pytest.raises(NoAddress, match="no free address"):
        pool.allocate("e")
    with pytest.raises(NoAddress, match="is already the external IP of Service a"):
        pool.reserve("e", "198.18.100.1")
    pool.release("a")
    assert pool.allocate("e") == "198.18.100.1"
    pool.reserve("f", "203.0.113.5")  # asked for, outside the pools: its own all the same
    assert pool.address_of("f") == "203.0.113.5" and not pool.in_pool("203.0.113.5")
    with pytest.raises(ValueError, match="'198.18.100.1/24' is not a CIDR"):
        parse_cidrs("198.18.100.1/24")
    with pytest.raises(ValueError, match="'2001:db8::/64' is IPv6; allowed: IPv4 CIDRs"):
        parse_cidrs("2001:db8::/64")


def test_manifests_grant_what_the_controller_uses() -> None:
    docs = list(yaml.safe_load_all(MANIFEST.read_text()))
    assert [d["kind"] for d in docs] == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                         "Deployment"]
    granted = {(g, r, v) for rule in docs[1]["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    assert granted == RBAC
    binding, deployment = docs[2], docs[3]
    assert binding["roleRef"]["name"] == docs[1]["metadata"]["name"]
    assert binding["subjects"][0]["name"] == docs[0]["metadata"]["name"] \
        == deployment["spec"]["template"]["spec"]["serviceAccountName"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    from click.testing import CliRunner

    from loxicmd.controller.main import cli
    # the shipped arguments are ones the program takes (it stops at the missing cluster)
    result = CliRunner().invoke(cli, [*args, "--kubeconfig", "/nonexistent"])
    assert "cannot reach the Kubernetes API" in result.output, result.output
