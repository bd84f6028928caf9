"""LoadbalanceEntry as typed values (loxicmd/api/lbentry.py): the names, the checks every
reader makes, and both directions of the JSON."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from loxicmd.api import wire
from loxicmd.api.lbentry import (
    LoadbalanceEntry,
    LoadBalancerEndpoint,
    ServiceArguments,
    python_name,
)
from loxicmd.api.wire import InvalidInput

VIP = "198.18.100.1"


def kube_body() -> dict[str, Any]:
    """A body as kube-loxilb posts it: capitalised keys, null lists, empty read-only
    values, fields this agent does not know."""
    return {
        "serviceArguments": {
            "externalIP": VIP, "port": 80, "protocol": "tcp", "sel": 0, "mode": 0,
            "BGP": False, "Monitor": True, "inactiveTimeOut": 0, "block": 0,
            "managed": True, "name": "default_web", "snat": False, "oper": 0,
            "probetype": "", "probeport": 0, "probereq": "", "proberesp": "",
            "probeTimeout": 0, "probeRetries": 0, "secIP": None, "host": "",
        },
        "secondaryIPs": None,
        "allowedSources": None,
        "endpoints": [
            {"endpointIP": "198.18.11.2", "targetPort": 8080, "weight": 1, "state": "",
             "counter": ""},
            {"endpointIP": "198.18.12.2", "targetPort": 8080, "weight": 2, "state": "",
             "counter": ""},
        ],
    }


def body(**service: Any) -> dict[str, Any]:
    return {"serviceArguments": {"externalIP": VIP, "port": 80, **service}}


def refusal(obj: Any, where: str = "", **kw: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as err:
        LoadbalanceEntry.parse(obj, where, **kw)
    return err.value


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(("wire_name", "python"), [
    ("externalIP", "external_ip"),
    ("privateIP", "private_ip"),
    ("portMax", "port_max"),
    ("inactiveTimeOut", "inactive_time_out"),
    ("probeTimeout", "probe_timeout"),
    ("endpointIP", "endpoint_ip"),
    ("secondaryIPs", "secondary_ips"),
    ("serviceArguments", "service_arguments"),
    ("proxyprotocolv2", "proxyprotocolv2"),
    ("port", "port"),
])
def test_python_name_turns_camel_case_and_acronyms_into_snake_case(wire_name: str,
                                                                  python: str) -> None:
    """An acronym is one word (IP, IPs), not one letter each."""
    assert python_name(wire_name) == python


@pytest.mark.parametrize(("cls", "schema"), [
    (ServiceArguments, "ServiceArguments"),
    (LoadBalancerEndpoint, "LoadBalancerEndpoint"),
    (LoadbalanceEntry, "LoadbalanceEntry"),
])
def test_each_dataclass_has_exactly_the_python_names_of_its_schemas_fields(
        cls: type, schema: str) -> None:
    """A field added to the schema and not to the class (or back) breaks parse or to_json."""
    fields = {f.name for f in dataclasses.fields(cls)}
    assert fields == {python_name(n) for n in wire.SCHEMAS_BY_NAME[schema].fields}


def test_python_names_of_a_schema_are_distinct() -> None:
    """Two wire names with one Python name would overwrite each other."""
    for schema in ("ServiceArguments", "LoadBalancerEndpoint", "LoadbalanceEntry"):
        names = [python_name(n) for n in wire.SCHEMAS_BY_NAME[schema].fields]
        assert len(set(names)) == len(names), schema


# --------------------------------------------------------------------------- parse


def test_a_kube_loxilb_body_parses_into_typed_values() -> None:
    """Capitalised keys, null lists and "" read-only values are what kube-loxilb sends."""
    entry = LoadbalanceEntry.parse(kube_body())
    s = entry.service_arguments
    assert (s.external_ip, s.port, s.port_max, s.protocol) == (VIP, 80, 0, "tcp")
    assert s.monitor is True and s.bgp is False and s.managed is True
    assert s.name == "default_web" and s.oper == 0
    assert entry.endpoints == [
        LoadBalancerEndpoint("198.18.11.2", 8080, 1, None, None),
        LoadBalancerEndpoint("198.18.12.2", 8080, 2, None, None)]
    assert entry.secondary_ips == [] and entry.allowed_sources == []


def test_omitted_values_take_the_dataclass_defaults() -> None:
    """name stays None (not given) so that an update keeps the rule's name; targetPort
    None (the rule's port)."""
    entry = LoadbalanceEntry.parse({**body(), "endpoints": [{"endpointIP": "198.18.11.2"}]})
    assert entry.service_arguments == ServiceArguments(external_ip=VIP, port=80)
    assert entry.service_arguments.name is None
    assert entry.endpoints == [LoadBalancerEndpoint("198.18.11.2", None, 1)]


def test_unknown_fields_are_ignored_by_default_and_refused_when_asked() -> None:
    """A request ignores them (LoxiLB's clients carry more); a file refuses them."""
    LoadbalanceEntry.parse(kube_body())
    err = refusal(kube_body(), unknown="refuse")
    assert err.field == "serviceArguments.secIP"
    assert err.why.startswith("unknown field; allowed: externalIP, privateIP, port")


def test_an_icmp_rule_must_have_port_zero() -> None:
    """ICMP echo has no port: a port given for it is a mistake, not a detail."""
    entry = LoadbalanceEntry.parse(body(port=0, protocol="ICMP"))
    assert (entry.service_arguments.protocol, entry.service_arguments.port) == ("icmp", 0)
    err = refusal(body(port=80, protocol="icmp"))
    assert err.field == "serviceArguments.port"
    assert err.why == "80 is not allowed for icmp; allowed: 0 (icmp rules have no port)"


def test_an_icmp_rule_has_no_port_range() -> None:
    """ICMP echo has no port, so no range of ports either: portMax 5 would make the agent
    program six service keys of which only port 0 is ever looked up."""
    err = refusal(body(port=0, portMax=5, protocol="icmp"))
    assert err.field == "serviceArguments.portMax"
    assert "5" in err.why and "icmp" in err.why and "allowed: 0" in err.why


@pytest.mark.parametrize("protocol", ["tcp", "udp", "sctp"])
def test_port_zero_is_only_for_icmp(protocol: str) -> None:
    """The schema allows 0 (for icmp); the others need a port."""
    err = refusal(body(port=0, protocol=protocol))
    assert err.field == "serviceArguments.port"
    assert err.why == "0 is out of range; allowed: 1..65535 (0 for icmp)"


def test_port_max_below_port_is_refused_naming_both() -> None:
    """A range that ends before it starts."""
    err = refusal(body(port=100, portMax=99))
    assert err.field == "serviceArguments.portMax"
    assert err.why == "99 is below port 100; allowed: 100..65535 or 0 for a single port"


def test_port_max_equal_to_port_or_above_is_a_range() -> None:
    """portMax == port is a range of one port; 0 a single port."""
    assert LoadbalanceEntry.parse(body(port=100, portMax=100)).service_arguments.port_max == 100
    assert LoadbalanceEntry.parse(body(port=100, portMax=200)).service_arguments.port_max == 200


def test_the_paths_of_parse_refusals_start_with_where() -> None:
    """A file's n-th object names itself in every refusal, the reader's checks too."""
    assert refusal(body(port=100, portMax=99), "items[2]").field == (
        "items[2].serviceArguments.portMax")
    assert refusal(body(port=0), "items[2]").field == "items[2].serviceArguments.port"
    twice = {**body(), "endpoints": [{"endpointIP": "198.18.11.2"}] * 2}
    assert refusal(twice, "items[2]").field == "items[2].endpoints[1]"
    assert refusal({**body(), "bad": 1}, "items[2]", unknown="refuse").field == "items[2].bad"


def test_an_endpoint_listed_twice_is_refused_naming_the_second() -> None:
    """The same address and target port twice would take two slots for one backend."""
    eps = [{"endpointIP": "198.18.11.2", "targetPort": 8080},
           {"endpointIP": "198.18.12.2", "targetPort": 8080},
           {"endpointIP": "198.18.11.2", "targetPort": 8080}]
    err = refusal({**body(), "endpoints": eps})
    assert (err.field, err.why) == ("endpoints[2]", "198.18.11.2:8080 is listed twice")
    err = refusal({**body(), "endpoints": [{"endpointIP": "198.18.11.2"},
                                           {"endpointIP": "198.18.11.2", "weight": 3}]})
    assert (err.field, err.why) == ("endpoints[1]", "198.18.11.2 is listed twice")


def test_an_endpoint_is_compared_by_its_canonical_address() -> None:
    """Two spellings of one IPv6 address are one endpoint."""
    err = refusal({**body(), "endpoints": [{"endpointIP": "2001:db8::2", "targetPort": 1},
                                           {"endpointIP": "2001:DB8:0::2", "targetPort": 1}]})
    assert (err.field, err.why) == ("endpoints[1]", "2001:db8::2:1 is listed twice")


def test_one_address_on_two_target_ports_is_two_endpoints() -> None:
    """An endpoint is its address and its port."""
    entry = LoadbalanceEntry.parse({**body(), "endpoints": [
        {"endpointIP": "198.18.11.2", "targetPort": 8080},
        {"endpointIP": "198.18.11.2", "targetPort": 8081}]})
    assert [(e.endpoint_ip, e.target_port) for e in entry.endpoints] == [
        ("198.18.11.2", 8080), ("198.18.11.2", 8081)]


def test_allowed_sources_are_canonical_and_without_repeats_in_order() -> None:
    """198.18.1.2 and 198.18.1.2/32 are one prefix."""
    entry = LoadbalanceEntry.parse({**body(), "allowedSources": [
        {"prefix": "198.18.1.2"}, {"prefix": "10.0.0.0/8"}, {"prefix": "198.18.1.2/32"}],
        "secondaryIPs": [{"secondaryIP": "198.18.100.2"}]})
    assert entry.allowed_sources == ["198.18.1.2/32", "10.0.0.0/8"]
    assert entry.secondary_ips == ["198.18.100.2"]


def test_schema_refusals_come_through_parse_unchanged() -> None:
    """parse is the wire check first: its paths and words."""
    err = refusal({**body(), "endpoints": [{"endpointIP": "198.18.11.2", "weight": 256}]})
    assert (err.field, err.why) == ("endpoints[0].weight", "256 is out of range; allowed: 1..255")
    assert refusal({"endpoints": []}).field == "serviceArguments"


# --------------------------------------------------------------------------- to_json


def full_entry() -> LoadbalanceEntry:
    return LoadbalanceEntry(
        ServiceArguments(external_ip=VIP, port=8000, port_max=8100, protocol="udp",
                         private_ip="198.18.5.5", sel=2, mode=2, monitor=True,
                         probetype="udp", probeport=53, probereq="ping", proberesp="pong",
                         probe_timeout=30, probe_retries=3, managed=True,
                         inactive_time_out=50, block=7, name="dns", oper=1),
        [LoadBalancerEndpoint("198.18.11.2", 5353, 3, state="active", counter="5:500"),
         LoadBalancerEndpoint("198.18.12.2", None, 1, state="inactive", counter="0:0")],
        ["198.18.100.9"],
        ["198.18.0.0/16", "10.1.2.3/32"],
    )


def test_a_request_leaves_out_read_only_fields_and_keeps_write_only_ones() -> None:
    """What the agent only shows (state, counter) is not sent; oper is."""
    out = full_entry().to_json()
    assert [set(ep) for ep in out["endpoints"]] == [
        {"endpointIP", "targetPort", "weight"}, {"endpointIP", "weight"}]
    assert out["serviceArguments"]["oper"] == 1
    assert out["secondaryIPs"] == [{"secondaryIP": "198.18.100.9"}]
    assert out["allowedSources"] == [{"prefix": "198.18.0.0/16"}, {"prefix": "10.1.2.3/32"}]


def test_a_request_has_every_service_field_under_its_wire_name() -> None:
    """Every field of the schema that is not read-only, in the schema's order."""
    sch = wire.SCHEMAS_BY_NAME["ServiceArguments"]
    out = full_entry().to_json()["serviceArguments"]
    assert list(out) == [n for n, f in sch.fields.items() if not f.read_only]
    assert out["externalIP"] == VIP and out["portMax"] == 8100
    assert out["inactiveTimeOut"] == 50 and out["probeTimeout"] == 30


def test_a_request_leaves_out_a_name_not_given() -> None:
    """name None: an update that keeps the rule's name; "" clears it and is sent."""
    entry = full_entry()
    entry.service_arguments.name = None
    assert "name" not in entry.to_json()["serviceArguments"]
    entry.service_arguments.name = ""
    assert entry.to_json()["serviceArguments"]["name"] == ""


def test_a_shown_entry_has_read_only_fields_and_not_write_only_ones() -> None:
    """The agent's answer shows state and counter, never oper."""
    out = full_entry().to_json(shown=True)
    assert "oper" not in out["serviceArguments"]
    assert out["endpoints"][0] == {"endpointIP": "198.18.11.2", "targetPort": 5353,
                                   "weight": 3, "state": "active", "counter": "5:500"}
    assert out["endpoints"][1] == {"endpointIP": "198.18.12.2", "weight": 1,
                                   "state": "inactive", "counter": "0:0"}


def test_to_json_passes_the_wire_check_it_came_from() -> None:
    """What we send is what we accept (a request, and a shown answer posted back)."""
    for shown in (False, True):
        out = full_entry().to_json(shown=shown)
        assert wire.check("LoadbalanceEntry", out, unknown="refuse")


def test_parse_then_to_json_then_parse_is_the_same_entry() -> None:
    """A file written from a parsed entry reads back as that entry."""
    first = LoadbalanceEntry.parse(kube_body())
    again = LoadbalanceEntry.parse(first.to_json(), unknown="refuse")
    assert again == first
    request = full_entry()
    for ep in request.endpoints:
        ep.state = ep.counter = None
    assert LoadbalanceEntry.parse(request.to_json(), unknown="refuse") == request


def test_a_shown_entry_posted_back_is_the_request_without_what_is_shown() -> None:
    """`get lb -o json` output applied again: state/counter dropped, oper 0."""
    shown = full_entry().to_json(shown=True)
    back = LoadbalanceEntry.parse(shown, unknown="refuse")
    assert back.service_arguments.oper == 0
    assert [(e.endpoint_ip, e.target_port, e.weight, e.state, e.counter)
            for e in back.endpoints] == [("198.18.11.2", 5353, 3, None, None),
                                         ("198.18.12.2", None, 1, None, None)]
    expected = dataclasses.replace(full_entry().service_arguments, oper=0)
    assert back.service_arguments == expected
