"""The rule a LoadbalanceEntry asks this agent for (loxicmd/agent/lb/model.py): what it
fills in for omitted values, what it refuses beyond the wire schema, and the JSON it gives
back (the API's answer and the persisted request)."""

from __future__ import annotations

from typing import Any

import pytest

from datapath.layouts import LB_MAX_ENDPOINTS
from loxicmd.agent.errors import InvalidInput
from loxicmd.agent.lb.model import (
    Endpoint,
    LbRule,
    RuleKey,
    RuleProbe,
    parse_lb_entry,
    rule_to_api,
    rule_to_request,
)
from loxicmd.api import wire

VIP = "198.18.100.1"
EP1, EP2, EP3 = "198.18.11.2", "198.18.12.2", "198.18.13.2"


def body(eps: list[Any] | tuple[Any, ...] = (EP1,), **service: Any) -> dict[str, Any]:
    """A LoadbalanceEntry request: VIP:80/tcp with `service` on top; endpoints given as
    addresses or as objects."""
    return {"serviceArguments": {"externalIP": VIP, "port": 80, "protocol": "tcp", **service},
            "endpoints": [{"endpointIP": e} if isinstance(e, str) else e for e in eps]}


def rule_of(b: dict[str, Any]) -> LbRule:
    return parse_lb_entry(b)[0]


def refusal(b: dict[str, Any]) -> InvalidInput:
    with pytest.raises(InvalidInput) as err:
        parse_lb_entry(b)
    return err.value


# --------------------------------------------------------------------------- what it fills in


def test_a_minimal_request_is_the_rule_it_means() -> None:
    """Key, the default target port (the rule's port) and LoxiLB's defaults."""
    rule, oper, named = parse_lb_entry(body())
    assert rule.key == RuleKey(VIP, 80, 80, "tcp", 0, "")
    assert rule.endpoints == (Endpoint(EP1, 80, 1),)
    assert (rule.sel, rule.mode, rule.name, rule.monitor, rule.private_ip) == (0, 0, "", False, "")
    assert (oper, named) == (0, False)


@pytest.mark.parametrize(("protocol", "port", "timeout"), [
    ("tcp", 80, 240), ("udp", 53, 20), ("icmp", 0, 20)])
def test_inactive_timeout_zero_is_stored_as_the_protocols_default(protocol: str, port: int,
                                                                  timeout: int) -> None:
    """Stored as what it means, so that what the API shows posts back as the same rule."""
    rule = rule_of(body(protocol=protocol, port=port, inactiveTimeOut=0))
    assert rule.inactive_timeout == timeout and rule.effective_timeout == timeout
    assert rule_of(body(protocol=protocol, port=port)).inactive_timeout == timeout
    assert rule_of(body(protocol=protocol, port=port, inactiveTimeOut=7)).inactive_timeout == 7


def test_probe_timeout_and_retries_zero_are_stored_as_loxilbs_defaults() -> None:
    """probeTimeout is the probe period (60 s); probeRetries the failures (2)."""
    probe = rule_of(body(probeTimeout=0, probeRetries=0)).effective_probe
    assert (probe.period_s, probe.retries) == (60, 2)
    probe = rule_of(body(probeTimeout=15, probeRetries=5)).effective_probe
    assert (probe.period_s, probe.retries) == (15, 5)


@pytest.mark.parametrize(("protocol", "port", "ptype"), [
    ("tcp", 80, "tcp"), ("udp", 53, "udp"), ("icmp", 0, "ping")])
def test_no_probe_type_probes_as_the_protocol_says(protocol: str, port: int,
                                                   ptype: str) -> None:
    """A monitored rule with no probetype probes with its own protocol (ping for icmp)."""
    rule = rule_of(body(protocol=protocol, port=port, monitor=True, probetype=""))
    assert rule.effective_probe.ptype == ptype
    assert rule.monitor is True


def test_probe_options_are_kept_with_monitoring_off() -> None:
    """LoxiLB's clients send them with monitor off too; they are shown back."""
    rule = rule_of(body(probeport=8081, probeTimeout=20, probeRetries=3))
    assert rule.monitor is False
    p = rule.effective_probe
    assert (p.ptype, p.port, p.period_s, p.retries) == ("tcp", 8081, 20, 3)


@pytest.mark.parametrize(("probetype", "extra", "monitor"), [
    ("tcp", {}, True), ("udp", {}, True), ("ping", {}, True),
    ("http", {"probeport": 8080, "probereq": "/health"}, True),
    ("https", {"probeport": 8443}, True),
    ("none", {}, False), ("", {}, False)])
def test_a_probe_type_other_than_none_turns_monitoring_on(probetype: str,
                                                          extra: dict[str, Any],
                                                          monitor: bool) -> None:
    """As in LoxiLB: naming how to probe asks for probing."""
    rule = rule_of(body(monitor=False, probetype=probetype, **extra))
    assert rule.monitor is monitor
    assert rule.effective_probe.ptype == (probetype or "tcp")


def test_monitor_true_stays_on_with_probe_type_none() -> None:
    """The flag given is kept; `none` does not turn it off."""
    rule = rule_of(body(monitor=True, probetype="none"))
    assert rule.monitor is True and rule.effective_probe.ptype == "none"


def test_endpoints_are_sorted_by_address_as_numbers() -> None:
    """198.18.11.10 comes after 198.18.11.9 (rr rotates over this order)."""
    rule = rule_of(body(eps=["198.18.11.10", "198.18.11.9", "198.18.2.1"]))
    assert [e.ip for e in rule.endpoints] == ["198.18.2.1", "198.18.11.9", "198.18.11.10"]


def test_a_range_forwards_each_port_to_itself_unless_a_target_is_given() -> None:
    """Target 0 in a range keeps the client's port; a single port defaults to itself."""
    rule = rule_of(body(port=8000, portMax=8100,
                        eps=[EP1, {"endpointIP": EP2, "targetPort": 9000}]))
    assert rule.key.port_max == 8100
    assert [(e.ip, e.target_port) for e in rule.endpoints] == [(EP1, 0), (EP2, 9000)]
    assert rule_of(body(port=8000, portMax=8000)).endpoints == (Endpoint(EP1, 8000, 1),)
    assert rule_of(body(port=0, protocol="icmp")).endpoints == (Endpoint(EP1, 0, 1),)


def test_an_endpoint_given_twice_once_by_default_target_is_refused() -> None:
    """Without targetPort and with the rule's port are the same endpoint."""
    err = refusal(body(eps=[EP1, EP2, {"endpointIP": EP1, "targetPort": 80}]))
    assert (err.field, err.why) == ("endpoints[2]", f"{EP1}:80 is listed twice")


def test_allowed_sources_mark_and_options_are_carried() -> None:
    """block is the rule's mark and part of its key."""
    rule = rule_of({**body(block=9, sel=2, managed=True, name="web",
                           eps=[{"endpointIP": EP1, "weight": 5}]),
                    "allowedSources": [{"prefix": "198.18.1.0/24"}, {"prefix": "198.18.9.9"}]})
    assert rule.key == RuleKey(VIP, 80, 80, "tcp", 9, "")
    assert rule.allowed_sources == ("198.18.1.0/24", "198.18.9.9/32")
    assert (rule.sel, rule.managed, rule.name) == (2, True, "web")
    assert rule.endpoints == (Endpoint(EP1, 80, 5),)


def test_fullnat_takes_a_private_ip() -> None:
    """privateIP is the source towards endpoints of a fullnat rule."""
    rule = rule_of(body(mode=2, privateIP="198.18.5.5"))
    assert (rule.mode, rule.private_ip) == (2, "198.18.5.5")


# --------------------------------------------------------------------------- the named flag


@pytest.mark.parametrize(("service", "named", "name"), [
    ({}, False, ""), ({"name": None}, False, ""), ({"name": ""}, True, ""),
    ({"name": "web"}, True, "web")])
def test_named_says_whether_the_request_gave_a_name(service: dict[str, Any], named: bool,
                                                    name: str) -> None:
    """An update that names no service keeps the rule's name; "" clears it."""
    rule, _, was_named = parse_lb_entry(body(**service))
    assert (was_named, rule.name) == (named, name)


@pytest.mark.parametrize("oper", [0, 1, 2])
def test_oper_is_returned_as_given(oper: int) -> None:
    """Attach and detach are the book's business; the parser hands the code on."""
    assert parse_lb_entry(body(oper=oper))[1] == oper


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("service", "field", "why"), [
    ({"protocol": "sctp"}, "serviceArguments.protocol",
     "'sctp' is not supported by this datapath yet; supported: tcp, udp, icmp"),
    ({"mode": 3}, "serviceArguments.mode",
     "3 (dsr) is not supported by this datapath yet; supported: 0 (default), 1 (onearm), "
     "2 (fullnat)"),
    ({"mode": 5}, "serviceArguments.mode", "5 (hostonearm) is not supported"),
    ({"sel": 5}, "serviceArguments.sel",
     "5 (n2) is not supported by this datapath yet; supported: 0 (rr), 1 (hash), "
     "2 (priority), 3 (persist), 4 (lc)"),
    ({"security": 1}, "serviceArguments.security",
     "1 (https) is not supported by this agent yet; supported: 0 (plain)"),
    ({"snat": True}, "serviceArguments.snat", "allowed: false"),
    ({"egress": True}, "serviceArguments.egress", "allowed: false"),
    ({"proxyprotocolv2": True}, "serviceArguments.proxyprotocolv2", "allowed: false"),
    ({"host": "www.example.com"}, "serviceArguments.host",
     "'www.example.com' is not supported by this agent yet; allowed: empty"),
    ({"privateIP": "198.18.5.5"}, "serviceArguments.privateIP",
     "'198.18.5.5' applies to fullnat rules (mode 2) only; this rule's mode is 0"),
    ({"privateIP": "198.18.5.5", "mode": 1}, "serviceArguments.privateIP",
     "this rule's mode is 1"),
    ({"privateIP": "224.0.0.5", "mode": 2}, "serviceArguments.privateIP", "multicast"),
    ({"probetype": "sctp"}, "serviceArguments.probetype",
     "'sctp' is not supported by this agent; allowed: ping, tcp, udp, http, https, none"),
])
def test_options_this_agent_does_not_carry_out_are_refused_naming_the_field(
        service: dict[str, Any], field: str, why: str) -> None:
    """Refused rather than accepted and ignored; the message says what is allowed."""
    err = refusal(body(**service))
    assert err.field == field
    assert why in err.why


def test_secondary_ips_are_refused() -> None:
    """They belong to sctp rules, which this datapath does not carry."""
    err = refusal({**body(), "secondaryIPs": [{"secondaryIP": "198.18.100.2"}]})
    assert err.field == "secondaryIPs" and err.why.endswith("allowed: empty")


@pytest.mark.parametrize(("vip", "why"), [
    ("2001:db8::1", "'2001:db8::1': IPv6 is not supported by this datapath yet; allowed: an "
                    "IPv4 address"),
    ("0.0.0.0", "'0.0.0.0' is the unspecified address; allowed: a unicast IPv4 address for "
                "a service"),
    ("255.255.255.255", "'255.255.255.255' is the broadcast address"),
    ("239.1.2.3", "'239.1.2.3' is a multicast address"),
    ("127.0.0.1", "'127.0.0.1' is a loopback address"),
    ("127.9.9.9", "'127.9.9.9' is a loopback address"),
])
def test_a_vip_that_cannot_carry_traffic_is_refused(vip: str, why: str) -> None:
    """Such a rule would never see a packet."""
    err = refusal(body(externalIP=vip))
    assert err.field == "serviceArguments.externalIP"
    assert err.why.startswith(why)


@pytest.mark.parametrize(("ep", "why"), [
    (VIP, f"'{VIP}' is the rule's own externalIP; allowed: an address behind the load "
          "balancer"),
    ("0.0.0.0", "'0.0.0.0' is the unspecified address; allowed: a unicast IPv4 address for "
                "an endpoint"),
    ("224.0.0.1", "'224.0.0.1' is a multicast address"),
    ("127.0.0.1", "'127.0.0.1' is a loopback address"),
    ("2001:db8::2", "'2001:db8::2': IPv6 is not supported"),
])
def test_an_endpoint_that_cannot_carry_traffic_is_refused_naming_its_index(ep: str,
                                                                          why: str) -> None:
    """The second endpoint is named as endpoints[1].endpointIP."""
    err = refusal(body(eps=[EP1, ep]))
    assert err.field == "endpoints[1].endpointIP"
    assert err.why.startswith(why)


def test_more_endpoints_than_a_rule_holds_are_refused_and_exactly_that_many_accepted() -> None:
    """64 per rule is the datapath's array size."""
    eps = [f"198.18.20.{i}" for i in range(1, LB_MAX_ENDPOINTS + 2)]
    assert len(rule_of(body(eps=eps[:LB_MAX_ENDPOINTS])).endpoints) == LB_MAX_ENDPOINTS
    err = refusal(body(eps=eps))
    assert err.field == "endpoints"
    assert err.why == (f"{LB_MAX_ENDPOINTS + 1} endpoints; the datapath holds at most "
                       f"{LB_MAX_ENDPOINTS} per rule")


def test_an_ipv6_allowed_source_is_refused_naming_its_index() -> None:
    """The datapath's allow-list is IPv4."""
    err = refusal({**body(), "allowedSources": [{"prefix": "198.18.0.0/16"},
                                                {"prefix": "2001:db8::/32"}]})
    assert err.field == "allowedSources[1].prefix" and "IPv6" in err.why


@pytest.mark.parametrize(("service", "field", "why"), [
    ({"probetype": "ping", "probeport": 80}, "serviceArguments.probeport",
     "80 is not allowed with probe type ping; allowed: 0"),
    ({"probetype": "ping", "probereq": "x"}, "serviceArguments.probereq",
     "'x' is not used by probe type ping; allowed: empty"),
    ({"probetype": "none", "proberesp": "ok"}, "serviceArguments.proberesp",
     "'ok' is not used by probe type none; allowed: empty"),
    ({"probetype": "http", "probereq": "health"}, "serviceArguments.probereq",
     "'health' is not a URL path"),
])
def test_probe_options_the_probe_engine_refuses_are_named_by_their_api_field(
        service: dict[str, Any], field: str, why: str) -> None:
    """The engine's field names (port, req, ...) are turned into the API's."""
    err = refusal(body(**service))
    assert err.field == field and err.why.startswith(why)


def test_a_monitored_rule_needs_a_probe_port_when_an_endpoint_keeps_the_clients_port() -> None:
    """Target port 0 (a range) gives a tcp probe no port to probe."""
    err = refusal(body(port=8000, portMax=8100, monitor=True))
    assert err.field == "serviceArguments.probeport" and "1..65535" in err.why
    rule = rule_of(body(port=8000, portMax=8100, monitor=True, probeport=8000))
    assert rule.monitor and rule.effective_probe.port == 8000
    assert rule_of(body(port=8000, portMax=8100, monitor=True, probetype="ping")).monitor


# --------------------------------------------------------------------------- back to JSON


ROUND_TRIP_BODIES: dict[str, dict[str, Any]] = {
    "plain": body(),
    "named-udp-range": body(protocol="udp", port=5000, portMax=5100, name="media",
                            eps=[EP1, {"endpointIP": EP2, "targetPort": 6000}]),
    "icmp": body(protocol="icmp", port=0, eps=[EP1, EP2]),
    "fullnat-priority": body(mode=2, privateIP="198.18.5.5", sel=2, block=4,
                             eps=[{"endpointIP": EP1, "weight": 3},
                                  {"endpointIP": EP2, "weight": 1}]),
    "monitored-http": body(monitor=True, probetype="http", probeport=8080,
                           probereq="/healthz", proberesp="ok", probeTimeout=10,
                           probeRetries=4, inactiveTimeOut=99, managed=True),
    "probe-port-unmonitored": body(probeport=81, probeTimeout=30),
    "monitor-none": body(monitor=True, probetype="none"),
    "sources": {**body(sel=3, name=""), "allowedSources": [{"prefix": "198.18.1.0/24"}]},
}


@pytest.mark.parametrize("name", list(ROUND_TRIP_BODIES))
def test_the_persisted_request_parses_back_to_the_same_rule(name: str) -> None:
    """The state directory holds rule_to_request; a restart parses it (and must not,
    e.g., turn monitoring on)."""
    rule = rule_of(ROUND_TRIP_BODIES[name])
    request = rule_to_request(rule)
    assert wire.check("LoadbalanceEntry", request, unknown="refuse")
    again, oper, named = parse_lb_entry(request)
    assert again == rule
    assert again.monitor is rule.monitor
    assert (oper, named) == (0, True)


@pytest.mark.parametrize("name", list(ROUND_TRIP_BODIES))
def test_what_the_api_shows_posts_back_as_the_same_rule(name: str) -> None:
    """`get lb -o json` then `apply -f`: the same rule, so it answers "unchanged"."""
    rule = rule_of(ROUND_TRIP_BODIES[name])
    shown = rule_to_api(rule, {})
    assert parse_lb_entry(shown)[0] == rule


def test_the_request_has_no_shown_fields_and_fills_in_what_omitted_values_mean() -> None:
    """The persisted form: no state/counter; the timeout and probe values explicit."""
    req = rule_to_request(rule_of(body(protocol="udp", port=53, eps=[EP2, EP1])))
    sa = req["serviceArguments"]
    assert (sa["inactiveTimeOut"], sa["probeTimeout"], sa["probeRetries"]) == (20, 60, 2)
    assert (sa["portMax"], sa["monitor"], sa["snat"], sa["oper"]) == (0, False, False, 0)
    assert req["endpoints"] == [{"endpointIP": EP1, "targetPort": 53, "weight": 1},
                                {"endpointIP": EP2, "targetPort": 53, "weight": 1}]
    assert req["secondaryIPs"] == [] and req["allowedSources"] == []


def test_the_api_answer_shows_endpoint_states_and_counters_and_no_oper() -> None:
    """Counters by (address, port); endpoints not in `inactive` are active."""
    rule = rule_of(body(eps=[EP1, EP2, EP3], name="web", port=8000, portMax=8010))
    out = rule_to_api(rule, {(EP1, 0): (10, 1500), (EP3, 0): (1, 60)}, inactive={(EP2, 0)})
    assert "oper" not in out["serviceArguments"]
    assert out["serviceArguments"]["portMax"] == 8010
    assert out["serviceArguments"]["name"] == "web"
    assert out["endpoints"] == [
        {"endpointIP": EP1, "targetPort": 0, "weight": 1, "state": "active",
         "counter": "10:1500"},
        {"endpointIP": EP2, "targetPort": 0, "weight": 1, "state": "inactive",
         "counter": "0:0"},
        {"endpointIP": EP3, "targetPort": 0, "weight": 1, "state": "active", "counter": "1:60"},
    ]
    assert wire.check("LoadbalanceEntry", out, unknown="refuse")


def test_a_rule_made_in_code_with_defaults_shows_what_they_mean() -> None:
    """A rule with inactive_timeout 0 and no probe shows the protocol's values."""
    rule = LbRule(RuleKey(VIP, 53, 53, "udp", 0, ""), endpoints=(Endpoint(EP1, 53),))
    sa = rule_to_api(rule, {})["serviceArguments"]
    assert (sa["inactiveTimeOut"], sa["probeTimeout"], sa["probeRetries"]) == (20, 60, 2)
    assert rule.effective_probe == RuleProbe(ptype="udp")
    assert sa["monitor"] is False
    assert parse_lb_entry(rule_to_request(rule))[0].monitor is False
