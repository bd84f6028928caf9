"""The wire schema and its one checker (loxicmd/api/wire.py): what every reader of the API
(the agent a request, the CLI a file) accepts, how it normalises it, and how it names what
it refuses; and the OpenAPI parts built from the same declarations."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from loxicmd.api import paths, wire
from loxicmd.api.wire import (
    ROUTES,
    SCHEMAS,
    SCHEMAS_BY_NAME,
    Field,
    InvalidInput,
    Schema,
    check,
    openapi_components,
    operation,
)
from loxicmd.names import NAT_MODE_NAMES, SELECTION_NAMES

VIP = "198.18.100.1"


def sa(**extra: Any) -> dict[str, Any]:
    """A minimal valid serviceArguments object, with `extra` on top."""
    return {"externalIP": VIP, "port": 80, **extra}


def refusal(schema: str, obj: Any, **kw: Any) -> InvalidInput:
    """The InvalidInput that checking `obj` raises (the test fails when none is)."""
    with pytest.raises(InvalidInput) as err:
        check(schema, obj, **kw)
    return err.value


# --------------------------------------------------------------------------- keys


def test_keys_are_matched_in_any_case_and_come_back_canonical() -> None:
    """LoxiLB's clients spell keys both ways (kube-loxilb sends "BGP", "Monitor")."""
    out = check("ServiceArguments", {"EXTERNALIP": VIP, "Port": 80, "BGP": False,
                                     "Monitor": True, "inactivetimeout": 30})
    assert out == {"externalIP": VIP, "port": 80, "bgp": False, "monitor": True,
                   "inactiveTimeOut": 30}


def test_a_key_given_twice_in_two_spellings_is_refused_naming_both() -> None:
    """Two spellings of one key would make the result depend on their order."""
    err = refusal("ServiceArguments", {"externalIP": VIP, "port": 80, "PORT": 81})
    assert err.field == "PORT"
    assert err.why == "given twice (as 'port' too)"
    assert str(err) == "PORT: given twice (as 'port' too)"


def test_a_key_given_twice_names_the_path_of_the_second_spelling_in_a_nested_object() -> None:
    """The path says where in the document the duplicate is."""
    body = {"serviceArguments": sa(), "endpoints": [
        {"endpointIP": "198.18.11.2"},
        {"endpointIP": "198.18.11.3", "Weight": 2, "weight": 3}]}
    err = refusal("LoadbalanceEntry", body)
    assert err.field == "endpoints[1].weight"
    assert err.why == "given twice (as 'weight' too)"


def test_an_unknown_field_is_refused_listing_the_allowed_ones() -> None:
    """A file a person wrote: a misspelt key must not be silently dropped."""
    err = refusal("LoadBalancerEndpoint", {"endpointIP": "198.18.11.2", "wieght": 2})
    assert err.field == "wieght"
    assert err.why == "unknown field; allowed: endpointIP, targetPort, weight, state, counter"


def test_an_unknown_field_is_ignored_when_asked_and_the_rest_still_checked() -> None:
    """A client's request carries fields this agent has no use for (LoxiLB's secIP...)."""
    out = check("ServiceArguments", sa(secIP=None, futureOption={"x": 1}), unknown="ignore")
    assert out == {"externalIP": VIP, "port": 80}
    err = refusal("ServiceArguments", sa(futureOption=1, port=-1), unknown="ignore")
    assert err.field == "port" and "-1 is out of range" in err.why


def test_unknown_refuse_applies_inside_nested_objects_and_lists() -> None:
    """The choice holds for the whole document, not only its top level."""
    body = {"serviceArguments": sa(), "endpoints": [{"endpointIP": "198.18.11.2", "foo": 1}]}
    err = refusal("LoadbalanceEntry", body)
    assert err.field == "endpoints[0].foo"
    assert check("LoadbalanceEntry", body, unknown="ignore")["endpoints"] == [
        {"endpointIP": "198.18.11.2"}]


def test_null_is_the_same_as_absent() -> None:
    """kube-loxilb sends `null` for lists and options it leaves out."""
    out = check("LoadbalanceEntry", {"serviceArguments": sa(name=None, portMax=None),
                                     "endpoints": None, "secondaryIPs": None,
                                     "allowedSources": None})
    assert out == {"serviceArguments": {"externalIP": VIP, "port": 80}}


def test_null_for_a_required_field_is_refused_as_missing() -> None:
    """null is absent, so a required field given as null is missing."""
    err = refusal("ServiceArguments", {"externalIP": None, "port": 80})
    assert err.field == "externalIP" and err.why == "is required"


def test_read_only_fields_are_dropped_whatever_their_value() -> None:
    """What the agent shows (state, counter) posts back without being checked."""
    out = check("LoadBalancerEndpoint", {"endpointIP": "198.18.11.2", "state": "",
                                         "counter": ["not", "a", "string"]})
    assert out == {"endpointIP": "198.18.11.2"}
    assert check("CIStatusEntry", {"state": "MASTER", "sync": "nonsense"}) == {
        "state": "MASTER"}


def test_a_missing_required_field_is_named_with_its_path() -> None:
    """Required fields are named where they are missing, inside nested objects too."""
    assert refusal("ServiceArguments", {"externalIP": VIP}).field == "port"
    err = refusal("LoadbalanceEntry", {"serviceArguments": {"port": 80}})
    assert err.field == "serviceArguments.externalIP"
    assert str(err) == "serviceArguments.externalIP: is required"
    assert refusal("LoadbalanceEntry", {}).field == "serviceArguments"


def test_where_prefixes_every_path() -> None:
    """A file's n-th object is named as such (`items[3].serviceArguments.port`)."""
    err = refusal("LoadbalanceEntry", {"serviceArguments": sa(port="80")}, where="items[3]")
    assert err.field == "items[3].serviceArguments.port"
    err = refusal("LoadbalanceEntry", {"serviceArguments": sa(), "x": 1}, where="items[3]")
    assert err.field == "items[3].x"


def test_what_is_not_an_object_is_named_with_its_kind() -> None:
    """The body itself, a nested object and a list's item."""
    err = refusal("LoadbalanceEntry", [])
    assert (err.field, err.why) == ("body", "a list is not an object")
    err = refusal("LoadbalanceEntry", {"serviceArguments": "x"})
    assert (err.field, err.why) == ("serviceArguments", "a string is not an object")
    err = refusal("LoadbalanceEntry", {"serviceArguments": sa(), "endpoints": [5]})
    assert (err.field, err.why) == ("endpoints[0]", "an integer is not an object")


# --------------------------------------------------------------------------- scalar values


@pytest.mark.parametrize(("value", "why"), [
    ("80", "'80' is not an integer; allowed: 0..65535"),
    (80.0, "80.0 is not an integer; allowed: 0..65535"),
    (True, "True is not an integer; allowed: 0..65535"),
    (-1, "-1 is out of range; allowed: 0..65535"),
    (65536, "65536 is out of range; allowed: 0..65535"),
])
def test_integers_are_checked_for_type_and_range(value: Any, why: str) -> None:
    """A boolean is no integer even though Python says so."""
    err = refusal("ServiceArguments", sa(port=value))
    assert (err.field, err.why) == ("port", why)


def test_integer_bounds_are_inclusive() -> None:
    """0 and 65535 are ports; the block (mark) takes any 32-bit value."""
    assert check("ServiceArguments", sa(port=0, portMax=65535, block=2**32 - 1))[
        "block"] == 2**32 - 1
    err = refusal("ServiceArguments", sa(block=2**32))
    assert err.why == "4294967296 is out of range; allowed: 0..4294967295"


def test_booleans_must_be_json_booleans() -> None:
    """"true" and 1 are not booleans: a file saying so is wrong, not quietly true."""
    for value in ("true", 1):
        err = refusal("ServiceArguments", sa(bgp=value))
        assert (err.field, err.why) == ("bgp", f"{value!r} is not a boolean; allowed: true, false")


def test_strings_must_be_strings() -> None:
    """A number where a name goes is refused, not turned into text."""
    err = refusal("ServiceArguments", sa(name=5))
    assert (err.field, err.why) == ("name", "5 is not a string")


def test_enum_words_are_folded_to_their_case() -> None:
    """Protocols and host states in any case; HA states upper case."""
    assert check("ServiceArguments", sa(protocol="UDP"))["protocol"] == "udp"
    assert check("EndPointHostState", {"hostName": "198.18.11.2", "state": "Red",
                                       "epProto": "TCP"}) == {
        "hostName": "198.18.11.2", "state": "red", "epProto": "tcp"}
    assert check("CIStatusEntry", {"state": "backup"}) == {"state": "BACKUP"}


def test_an_unknown_word_is_refused_listing_the_allowed_ones() -> None:
    """The empty word is shown quoted so that it can be seen."""
    err = refusal("ServiceArguments", sa(protocol="quic"))
    assert (err.field, err.why) == ("protocol", "'quic' is not allowed; allowed: tcp, udp, "
                                    "sctp, icmp")
    err = refusal("ServiceArguments", sa(probetype="dns"))
    assert err.why == ("'dns' is not allowed; allowed: '', tcp, udp, sctp, http, https, "
                       "ping, none")
    err = refusal("CIStatusEntry", {"state": "primary"})
    assert err.why == "'PRIMARY' is not allowed; allowed: MASTER, BACKUP, FAULT, STOP, NOT_DEFINED"


def test_an_integer_code_given_as_a_word_is_unknown_and_the_codes_are_named() -> None:
    """sel/mode/oper are numbers on the wire; the message says which word each is."""
    err = refusal("ServiceArguments", sa(sel="fastest"))
    assert err.field == "sel"
    assert err.why == ("'fastest' is unknown; allowed: 0 (rr), 1 (hash), 2 (priority), "
                       "3 (persist), 4 (lc), 5 (n2), 6 (n3)")
    err = refusal("ServiceArguments", sa(mode="fullnat"))
    assert err.why.startswith("'fullnat' is unknown; allowed: 0 (default), 1 (onearm), "
                              "2 (fullnat), 3 (dsr)")


def test_an_integer_code_out_of_the_list_is_not_allowed() -> None:
    """Every code of LoxiLB's is accepted by the schema; others are not."""
    for code in SELECTION_NAMES:
        assert check("ServiceArguments", sa(sel=code))["sel"] == code
    for code in NAT_MODE_NAMES:
        assert check("ServiceArguments", sa(mode=code))["mode"] == code
    err = refusal("ServiceArguments", sa(oper=3))
    assert (err.field, err.why) == ("oper", "3 is not allowed; allowed: 0 (create), "
                                    "1 (attach), 2 (detach)")
    assert refusal("ServiceArguments", sa(security=3)).why == (
        "3 is not allowed; allowed: 0, 1, 2")


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(("given", "canonical"), [
    ("198.18.100.1", "198.18.100.1"),
    (" 198.18.100.1 ", "198.18.100.1"),
    ("2001:DB8:0:0::0001", "2001:db8::1"),
    ("[2001:db8::1]", "2001:db8::1"),
    ("::FFFF:198.18.0.1", "::ffff:c612:1"),
])
def test_ip_fields_come_back_canonical(given: str, canonical: str) -> None:
    """One address has one spelling, so rules compare and match by it."""
    assert check("ServiceArguments", sa(externalIP=given))["externalIP"] == canonical


def test_an_empty_ip_string_stays_empty() -> None:
    """privateIP "" means none (LoxiLB's clients send it so)."""
    assert check("ServiceArguments", sa(privateIP=""))["privateIP"] == ""
    assert check("CIStatusEntry", {"state": "MASTER", "vip": ""})["vip"] == ""


@pytest.mark.parametrize("bad", ["198.18.100", "198.18.100.256", "host.example", "1.2.3.4/32"])
def test_an_invalid_ip_is_refused_naming_it(bad: str) -> None:
    """The message repeats what was given."""
    err = refusal("LoadbalanceEntry", {"serviceArguments": sa(),
                                       "endpoints": [{"endpointIP": bad}]})
    assert (err.field, err.why) == ("endpoints[0].endpointIP", f"{bad!r} is not a valid IP address")


@pytest.mark.parametrize(("given", "canonical"), [
    ("198.18.0.1", "198.18.0.1/32"),
    (" 198.18.0.1 ", "198.18.0.1/32"),
    ("198.18.0.0/16", "198.18.0.0/16"),
    ("2001:DB8::1", "2001:db8::1/128"),
    ("2001:db8:0::/32", "2001:db8::/32"),
])
def test_prefixes_come_back_canonical_and_a_bare_address_is_a_host_prefix(
        given: str, canonical: str) -> None:
    """A bare IPv4 address is /32, an IPv6 one /128."""
    assert check("AllowedSource", {"prefix": given}) == {"prefix": canonical}


def test_a_bare_ipv4_mapped_ipv6_address_is_a_host_prefix() -> None:
    """'::ffff:198.18.0.1' is an IPv6 address (wire.check accepts it as one): its host
    prefix is /128, as for any other IPv6 address."""
    assert check("AllowedSource", {"prefix": "::ffff:198.18.0.1"}) == {
        "prefix": "::ffff:c612:1/128"}


@pytest.mark.parametrize(("bad", "detail"), [
    ("198.18.0.1/16", "has host bits set"),
    ("198.18.0.0/33", ""),
    ("", ""),
    ("nowhere", ""),
])
def test_an_invalid_prefix_is_refused_naming_it(bad: str, detail: str) -> None:
    """Host bits set is refused rather than silently widened to the network."""
    err = refusal("LoadbalanceEntry", {"serviceArguments": sa(),
                                       "allowedSources": [{"prefix": "10.0.0.0/8"},
                                                          {"prefix": bad}]})
    assert err.field == "allowedSources[1].prefix"
    assert err.why.startswith(f"{bad!r} is not a valid prefix (")
    assert detail in err.why


# --------------------------------------------------------------------------- nesting


def test_a_nested_document_comes_back_checked_and_normalised() -> None:
    """Objects and lists of objects are checked recursively, in order."""
    body = {"ServiceArguments": sa(Protocol="TCP", externalIP="[2001:DB8::1]"),
            "Endpoints": [{"EndpointIP": "198.18.11.2", "targetport": 8080},
                          {"endpointIP": "198.18.12.2", "weight": 2, "state": "active"}],
            "allowedSources": [{"PREFIX": "198.18.1.2"}]}
    assert check("LoadbalanceEntry", body) == {
        "serviceArguments": {"externalIP": "2001:db8::1", "port": 80, "protocol": "tcp"},
        "endpoints": [{"endpointIP": "198.18.11.2", "targetPort": 8080},
                      {"endpointIP": "198.18.12.2", "weight": 2}],
        "allowedSources": [{"prefix": "198.18.1.2/32"}],
    }


def test_a_bad_value_in_a_list_item_is_named_with_its_index() -> None:
    """`endpoints[1].weight`, not just `weight`."""
    body = {"serviceArguments": sa(), "endpoints": [
        {"endpointIP": "198.18.11.2", "weight": 1},
        {"endpointIP": "198.18.12.2", "weight": 0}]}
    err = refusal("LoadbalanceEntry", body)
    assert err.field == "endpoints[1].weight"
    assert err.why == "0 is out of range; allowed: 1..255"
    assert str(err) == "endpoints[1].weight: 0 is out of range; allowed: 1..255"


def test_a_list_field_must_be_a_list() -> None:
    """An object where a list goes is named."""
    err = refusal("LoadbalanceEntry", {"serviceArguments": sa(), "endpoints": {}})
    assert (err.field, err.why) == ("endpoints", "an object is not a list")


def test_a_list_of_plain_values_checks_each_item() -> None:
    """Error.fields is a list of strings."""
    ok = {"code": 400, "message": "m", "result": "r", "fields": ["a", "b"]}
    assert check("Error", ok) == ok
    err = refusal("Error", {**ok, "fields": ["a", 3]})
    assert (err.field, err.why) == ("fields[1]", "3 is not a string")


def test_check_value_of_a_schema_typed_field_checks_the_object() -> None:
    """check_value is what check uses for each field; a schema name is an object."""
    f = Field("ServiceArguments")
    assert wire.check_value(f, sa(protocol="ICMP"), "x") == {
        "externalIP": VIP, "port": 80, "protocol": "icmp"}
    with pytest.raises(InvalidInput) as err:
        wire.check_value(f, sa(port=None), "x")
    assert err.value.field == "x.port"


# --------------------------------------------------------------------------- JSON Schema


def test_field_json_schema_carries_each_constraint() -> None:
    """Zero bounds are constraints too; empty ones are left out. A field that is not
    required may be null (taken as absent), in OpenAPI 3.1's words."""
    assert Field("integer", "a port", minimum=0, maximum=65535,
                 required=True).json_schema() == {
        "type": "integer", "description": "a port", "minimum": 0, "maximum": 65535}
    assert Field("string").json_schema() == {"type": ["string", "null"]}
    assert Field("string", enum=("", "x"), read_only=True).json_schema() == {
        "type": ["string", "null"], "enum": ["", "x", None], "readOnly": True}
    assert Field("integer", write_only=True, nullable=True, required=True).json_schema() \
        == {"type": ["integer", "null"], "writeOnly": True}
    assert Field("string", pattern="^a+$", required=True).json_schema() == {
        "type": "string", "pattern": "^a+$"}


def test_address_fields_use_json_schemas_own_formats() -> None:
    """Generic clients and fuzzers know ipv4 and ipv6; an optional address may be empty,
    a prefix is an address or address/length."""
    assert Field("string", format="ip", required=True).json_schema() == {
        "type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}],
        "x-loxilb-format": "ip"}
    assert Field("string", format="ip").json_schema()["anyOf"][-1] == {"enum": [""]}
    prefix = Field("string", format="prefix", required=True).json_schema()
    assert prefix["anyOf"][2:] == [{"pattern": wire.PREFIX4_PATTERN},
                                   {"pattern": wire.PREFIX6_PATTERN}]


def test_field_json_schema_refers_to_schemas_by_name() -> None:
    """Objects and list items of a schema are `$ref`s into the components."""
    assert Field("ServiceArguments", required=True).json_schema() == {
        "$ref": "#/components/schemas/ServiceArguments"}
    assert Field("ServiceArguments").json_schema() == {"anyOf": [
        {"$ref": "#/components/schemas/ServiceArguments"}, {"type": "null"}]}
    assert Field("array", items="LoadBalancerEndpoint", required=True).json_schema() == {
        "type": "array", "items": {"$ref": "#/components/schemas/LoadBalancerEndpoint"}}
    assert Field("array", items="string", required=True).json_schema() == {
        "type": "array", "items": {"type": "string"}}


def test_schema_json_schema_lists_properties_and_required_ones_in_order() -> None:
    """No `required` key when nothing is required."""
    s = Schema("S", "d", {"a": Field("string", required=True), "b": Field("integer"),
                          "c": Field("boolean", required=True)})
    assert s.json_schema() == {"type": "object", "description": "d", "properties": {
        "a": {"type": "string"}, "b": {"type": ["integer", "null"]},
        "c": {"type": "boolean"}}, "required": ["a", "c"]}
    assert "required" not in Schema("T", "d", {"a": Field("string")}).json_schema()


def test_the_served_endpoint_schema_marks_what_is_shown_and_what_is_sent() -> None:
    """Clients generated from the document must not send state or expect oper back."""
    schemas = openapi_components()["schemas"]
    ep = schemas["LoadBalancerEndpoint"]
    assert ep["required"] == ["endpointIP"]
    assert ep["properties"]["state"]["readOnly"] is True
    assert ep["properties"]["state"]["enum"] == ["active", "inactive", None]
    assert schemas["ServiceArguments"]["properties"]["oper"]["writeOnly"] is True
    assert schemas["ServiceArguments"]["properties"]["sel"]["enum"] == [*SELECTION_NAMES, None]


def _refs(node: Any) -> Iterator[str]:
    """Every `$ref` value anywhere in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_openapi_components_hold_every_schema_and_every_ref_resolves() -> None:
    """A dangling `$ref` makes the whole OpenAPI document unusable for generators."""
    schemas = openapi_components()["schemas"]
    assert list(schemas) == [s.name for s in SCHEMAS]
    assert len(SCHEMAS_BY_NAME) == len(SCHEMAS), "two schemas share a name"
    refs = set(_refs(schemas))
    assert refs, "no references at all: the walk is broken"
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in schemas, f"{ref} resolves to nothing"


def test_every_field_type_is_a_json_type_or_a_schema() -> None:
    """A typo in a type name would become a `$ref` to nothing."""
    for s in SCHEMAS:
        for name, f in s.fields.items():
            assert f.type in wire.JSON_TYPES or f.type in SCHEMAS_BY_NAME, (s.name, name)
            if f.type == "array":
                assert f.items in wire.JSON_TYPES or f.items in SCHEMAS_BY_NAME, (s.name, name)
            if f.words is not None:
                assert set(f.enum) == set(f.words), (s.name, name)
            assert not (f.read_only and f.required), (s.name, name)


def test_no_schema_has_two_fields_one_key_of_any_case_would_match() -> None:
    """Keys are matched in any case: two fields differing only by case could not both be
    given."""
    for s in SCHEMAS:
        lowered = [name.lower() for name in s.fields]
        assert len(set(lowered)) == len(lowered), s.name


def test_check_leaves_the_given_object_as_it_was() -> None:
    """The caller's document is not rewritten behind its back (the CLI shows it)."""
    body = {"ServiceArguments": sa(protocol="TCP"), "endpoints": [
        {"endpointIP": "2001:DB8::1", "state": "active"}]}
    snapshot = repr(body)
    check("LoadbalanceEntry", body)
    assert repr(body) == snapshot


# --------------------------------------------------------------------------- routes


def test_every_route_answers_and_takes_schemas_that_exist() -> None:
    """Each route's success schema exists; POSTs take a body of a known schema, others
    none."""
    for route in ROUTES:
        assert route.response in SCHEMAS_BY_NAME, route
        if route.method == "POST":
            assert route.request in SCHEMAS_BY_NAME, route
        else:
            assert route.request == "", route


def test_an_operation_documents_its_body_its_answer_and_every_error() -> None:
    """Errors all answer the Error schema; the success its route's."""
    post = next(r for r in ROUTES if r.method == "POST" and r.path == paths.LB)
    op = operation(post)
    assert op["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/LoadbalanceEntry"}
    assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Result"}
    assert sorted(op["responses"]) == ["200", "400", "401", "403", "404", "409", "500"]
    for code, text in wire.ERROR_STATUSES.items():
        answer = op["responses"][str(code)]
        assert answer["description"] == text
        assert answer["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"}
    get = next(r for r in ROUTES if r.method == "GET" and r.path == paths.LB_ALL)
    assert "requestBody" not in operation(get)
    assert operation(get)["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/LoadbalanceList"}


def test_routes_are_unique_by_method_and_path() -> None:
    """Two declarations of one route would document it twice."""
    seen = [(r.method, r.path) for r in ROUTES]
    assert len(set(seen)) == len(seen)
    assert {r.method for r in ROUTES} <= {"GET", "POST", "DELETE"}


def _path_constants() -> dict[str, str]:
    return {name: value for name, value in vars(paths).items()
            if name.isupper() and not name.startswith("_") and isinstance(value, str)
            and value.startswith("/")}


def test_the_routes_are_the_paths_module_paths() -> None:
    """paths.py declares the routes once; the documented routes are those."""
    assert {r.path for r in ROUTES} == set(_path_constants().values())


def test_every_route_path_can_be_filled() -> None:
    """Each template's parameters are names `paths.fill` fills, one segment each."""
    for route in ROUTES:
        names = re.findall(r"{(\w+)}", route.path)
        filled = paths.fill(route.path, **{n: "a/b c" for n in names})
        assert "{" not in filled, route.path
        assert filled.count("a%2Fb%20c") == len(names), route.path


@pytest.mark.parametrize("name", ["a/b", "two words", "x" * 65, "caf\u00e9", "tab\there"])
def test_ha_instance_names_outside_the_pattern_are_refused_naming_it(name: str) -> None:
    with pytest.raises(InvalidInput) as err:
        wire.check("CIStatusEntry", {"instance": name, "state": "MASTER"})
    assert err.value.field == "instance"
    assert "at most 64 visible ASCII characters but '/'" in err.value.why


def test_ha_instance_names_of_keepalived_are_taken() -> None:
    for name in ("default", "VI_1", "llb-inst0", "x" * 64, ""):
        assert wire.check("CIStatusEntry", {"instance": name, "state": "BACKUP"})


def test_parameters_are_documented_by_name_and_query_ones_may_be_empty() -> None:
    path = {"name": "port", "in": "path", "required": True, "schema": {"type": "string"}}
    wire.document_parameter(path)
    assert path["schema"] == {"type": "integer", "description": "A port (0: an icmp rule's)",
                              "minimum": 0, "maximum": 65535}
    query = {"name": "limit", "in": "query", "schema": {"type": "string"}}
    wire.document_parameter(query)
    assert query["schema"]["anyOf"][1] == {"type": "string", "enum": [""]}
    unknown = {"name": "servName", "in": "query", "schema": {"type": "string"}}
    wire.document_parameter(unknown)
    assert unknown["schema"] == {"type": "string"}
