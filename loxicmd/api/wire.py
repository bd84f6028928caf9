"""The wire schema of every kind of object the API carries, declared once, and the one
checker of objects against it.

Field names, types and meanings follow LoxiLB's API specification (its clients must read
this agent correctly). Each schema renders to JSON Schema for the agent's OpenAPI document,
and :func:`check` validates an object against it for whoever reads one (the agent a
request, the CLI a file): keys of any case, each value's type, range, words and address
form, every problem named with its field path, the value and what is allowed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from loxicmd.api import paths
from loxicmd.names import (
    CONNTRACK_STATES,
    HA_STATES,
    HOST_STATES,
    LOXILB_PROBE_TYPES,
    NAT_MODE_NAMES,
    OPER_NAMES,
    PROTOCOLS,
    SELECTION_NAMES,
)

UINT32_MAX = 2**32 - 1
BGP_STATES = ("IDLE", "CONNECT", "ACTIVE", "OPENSENT", "OPENCONFIRM", "ESTABLISHED")
JSON_TYPES = ("string", "integer", "boolean", "array", "object", "number")


class InvalidInput(ValueError):
    """Bad input: the field path and a sentence saying what is wrong and what is
    allowed (a 400 from the agent, exit status 2 from the CLI)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}" if field_name else message)
        self.field = field_name
        self.why = message


@dataclass(frozen=True)
class Field:
    """One member of an object: its JSON type and what is accepted."""

    type: str  # a JSON type, or a schema name (an object of that schema)
    description: str = ""
    minimum: int | None = None
    maximum: int | None = None
    enum: tuple[Any, ...] = ()
    format: str = ""  # strings: "ip" (an address), "prefix" (an address/length)
    items: str = ""  # arrays: a schema name or a JSON type
    required: bool = False
    read_only: bool = False  # shown by the agent; dropped from what is sent to it
    write_only: bool = False  # sent to the agent, never shown
    nullable: bool = False
    fold: str = ""  # strings: "lower" or "upper": words accepted in any case
    words: Mapping[int, str] | None = None  # integer codes: their names, for messages
    pattern: str = ""  # strings: a regular expression the whole value matches
    pattern_words: str = ""  # what the pattern allows, for messages

    def json_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = _type_schema(self.type)
        if self.type == "array":
            out["items"] = _type_schema(self.items)
        for key, value in (("description", self.description), ("minimum", self.minimum),
                           ("maximum", self.maximum), ("pattern", self.pattern)):
            if value not in ("", None):
                out[key] = value
        if self.format:
            # JSON Schema's own formats, so that generic clients and fuzzers know the form:
            # an address of either family (a bare address is a host prefix too).
            forms: list[dict[str, Any]] = [{"format": "ipv4"}, {"format": "ipv6"}]
            if self.format == "prefix":
                forms += [{"pattern": PREFIX4_PATTERN}, {"pattern": PREFIX6_PATTERN}]
            elif not self.required:
                forms.append({"enum": [""]})  # empty: none
            out["anyOf"] = forms
            out["x-loxilb-format"] = self.format
        if self.enum:
            out["enum"] = list(self.enum)
        if self.read_only:
            out["readOnly"] = True
        if self.write_only:
            out["writeOnly"] = True
        if self.nullable or not self.required:
            # null is taken as absent (`check`), as LoxiLB's clients send it
            if "$ref" in out:
                out = {"anyOf": [{"$ref": out.pop("$ref")}, {"type": "null"}], **out}
            else:
                out["type"] = [out["type"], "null"]
                if "enum" in out:
                    out["enum"].append(None)
        return out


def _type_schema(type_name: str) -> dict[str, Any]:
    if type_name in JSON_TYPES:
        return {"type": type_name}
    return {"$ref": f"#/components/schemas/{type_name}"}


@dataclass(frozen=True)
class Schema:
    """A JSON object kind: its fields by canonical spelling (clients may use any case)."""

    name: str
    description: str
    fields: Mapping[str, Field] = field(default_factory=dict)
    # field names by their lower case (clients spell them in any case); made once
    canonical: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "canonical", {k.lower(): k for k in self.fields})

    def json_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "object", "description": self.description,
                               "properties": {k: f.json_schema() for k, f in
                                              self.fields.items()}}
        required = [k for k, f in self.fields.items() if f.required]
        if required:
            out["required"] = required
        return out


def _codes(names: Mapping[int, str]) -> str:
    return ", ".join(f"{code} {name}" for code, name in names.items())


_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# The form of a prefix (whether host bits are clear is checked, not said)
PREFIX4_PATTERN = rf"^({_OCTET}\.){{3}}{_OCTET}/(3[0-2]|[12]?[0-9])$"
PREFIX6_PATTERN = r"^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*/(12[0-8]|1[01][0-9]|[1-9]?[0-9])$"
PORT = {"minimum": 0, "maximum": 65535}
IP = {"format": "ip"}
# HA instance names (keepalived's are single words): visible ASCII but '/' (a path segment)
MAX_INSTANCE_LEN = 64
INSTANCE: dict[str, Any] = {
    "pattern": f"^[!-.0-~]{{0,{MAX_INSTANCE_LEN}}}$",
    "pattern_words": f"at most {MAX_INSTANCE_LEN} visible ASCII characters but '/'"}

SCHEMAS: tuple[Schema, ...] = (
    Schema("Result", "A change was carried out.", {
        "result": Field("string", "Success", enum=("Success",), required=True)}),
    Schema("Error", "A refusal or a failure: `result` says what was wrong.", {
        "code": Field("integer", "The HTTP status", required=True),
        "message": Field("string", "LoxiLB's words for the status", required=True),
        "result": Field("string", "What was wrong: the field, the value, what is allowed",
                        required=True),
        "fields": Field("array", "The fields at fault (invalid arguments)", items="string"),
    }),
    Schema("ServiceArguments", "A rule's service: address, ports, protocol and options.", {
        "externalIP": Field("string", "The service's virtual IP", required=True, **IP),
        "privateIP": Field("string", "fullnat: the source towards endpoints (empty: none)",
                           **IP),
        "port": Field("integer", "The (first) port; 0 for icmp", required=True, **PORT),
        "portMax": Field("integer", "The last port of a range (0: a single port)", **PORT),
        "protocol": Field("string", "sctp is refused by this agent", enum=PROTOCOLS,
                          fold="lower"),
        "sel": Field("integer", f"Endpoint selection: {_codes(SELECTION_NAMES)} (n2, n3 "
                     "refused by this agent)", enum=tuple(SELECTION_NAMES), words=SELECTION_NAMES),
        "mode": Field("integer", f"NAT mode: {_codes(NAT_MODE_NAMES)} (dsr, fullproxy, "
                      "hostonearm refused by this agent)", enum=tuple(NAT_MODE_NAMES),
                      words=NAT_MODE_NAMES),
        "bgp": Field("boolean", "Announce the VIP with BGP while this node is its "
                     "instance's MASTER (BACKUP: worse path, or withdrawn)"),
        "monitor": Field("boolean", "Probe the endpoints; inactive ones get no new flows"),
        "probetype": Field("string", "How endpoints are probed (empty: the protocol's; "
                           "sctp refused by this agent)", enum=("", *LOXILB_PROBE_TYPES)),
        "probeport": Field("integer", "Port probed (0: each endpoint's target port)", **PORT),
        "probereq": Field("string", "Request sent (udp/tcp bytes, http/https path)"),
        "proberesp": Field("string", "Expected in the answer"),
        "probeTimeout": Field("integer", "Seconds between probes (0: 60)", minimum=0,
                              maximum=86400),
        "probeRetries": Field("integer", "Failed probes before an endpoint is inactive "
                              "(0: 2)", minimum=0, maximum=100),
        "managed": Field("boolean", "Managed by an external controller (kept and shown)"),
        "security": Field("integer", "0 plain (1 https, 2 e2ehttps: refused by this agent)",
                          enum=(0, 1, 2)),
        "inactiveTimeOut": Field("integer", "Idle seconds before a flow ends (0: 240 tcp, "
                                 "20 udp/icmp)", minimum=0, maximum=86400),
        "block": Field("integer", "Mark matched against the packet's mark (0: none)",
                       minimum=0, maximum=UINT32_MAX),
        "name": Field("string", "Service name, `<svc>` or `<svc>:<ha-instance>` (left out "
                      "of an update: the rule keeps its name)"),
        "snat": Field("boolean", "An egress SNAT rule (refused by this agent: none of its "
                      "rules is one)"),
        "oper": Field("integer", f"Endpoint operation: {_codes(OPER_NAMES)}",
                      enum=tuple(OPER_NAMES), words=OPER_NAMES, write_only=True),
        "host": Field("string", "Ingress host URL (refused by this agent yet)"),
        "proxyprotocolv2": Field("boolean", "Proxy protocol v2 (refused by this agent)"),
        "egress": Field("boolean", "An egress rule (refused by this agent)"),
    }),
    Schema("LoadBalancerEndpoint", "One endpoint of a rule.", {
        "endpointIP": Field("string", "Its address", required=True, **IP),
        "targetPort": Field("integer", "Its port (0: the port the client used)", **PORT),
        "weight": Field("integer", "Weight for priority selection", minimum=1, maximum=255),
        "state": Field("string", "New flows go to it or not", enum=("active", "inactive"),
                       read_only=True),
        "counter": Field("string", "`<packets>:<bytes>` sent to it", read_only=True),
    }),
    Schema("SecondaryIP", "A secondary address of an sctp rule (refused by this agent).", {
        "secondaryIP": Field("string", required=True, **IP)}),
    Schema("AllowedSource", "A source prefix allowed to reach the rule.", {
        "prefix": Field("string", "e.g. 198.18.0.0/16 (a bare address: /32)",
                        format="prefix", required=True)}),
    Schema("LoadbalanceEntry", "A load-balancer rule.", {
        "serviceArguments": Field("ServiceArguments", required=True),
        "endpoints": Field("array", items="LoadBalancerEndpoint"),
        "secondaryIPs": Field("array", items="SecondaryIP"),
        "allowedSources": Field("array", items="AllowedSource"),
    }),
    Schema("LoadbalanceList", "Every rule.", {
        "lbAttr": Field("array", items="LoadbalanceEntry", required=True)}),
    Schema("ConntrackEntry", "A tracked flow, in the client's direction.", {
        "sourceIP": Field("string", **IP),
        "sourcePort": Field("integer", **PORT),
        "destinationIP": Field("string", **IP),
        "destinationPort": Field("integer", **PORT),
        "protocol": Field("string", enum=("tcp", "udp", "icmp")),
        "conntrackState": Field("string"),
        "conntrackAct": Field("string", "`dnat-<ep>:<port>:w<weight>` or "
                              "`fdnat-<src>:<port>,<ep>:<port>:w<weight>`"),
        "ident": Field("string", "icmp: the echo identifier"),
        "packets": Field("integer", "Both directions", minimum=0),
        "bytes": Field("integer", "Both directions", minimum=0),
        "servName": Field("string", "The rule's name"),
    }),
    Schema("ConntrackList", "Flows (one page when `limit` was given).", {
        "ctAttr": Field("array", items="ConntrackEntry", required=True),
        "next": Field("string", "Give as `after` for the next page (empty: the last one)"),
    }),
    Schema("EndPoint", "An endpoint health probe (POST /config/endpoint).", {
        "hostName": Field("string", "The endpoint's address", required=True, **IP),
        "name": Field("string", "Default `<ip>_<probeType>_<probePort>`; posting it again "
                      "updates it"),
        "probeType": Field("string", "Default ping; sctp refused by this agent",
                           enum=("", *LOXILB_PROBE_TYPES)),
        "probePort": Field("integer", **PORT),
        "probeReq": Field("string"),
        "probeResp": Field("string"),
        "probeDuration": Field("integer", "Seconds between probes (0: 60)", minimum=0,
                               maximum=86400),
        "inactiveReTries": Field("integer", "Failures before nok (0: 2)", minimum=0,
                                 maximum=100),
        "minDelay": Field("string", read_only=True),
        "avgDelay": Field("string", read_only=True),
        "maxDelay": Field("string", read_only=True),
        "currState": Field("string", enum=("ok", "nok"), read_only=True),
        "ruleProbe": Field("boolean", "Made by monitored rules: goes and comes with them "
                           "(save leaves it out)", read_only=True),
    }),
    Schema("EndPointList", "Every endpoint probe and what it found.", {
        "Attr": Field("array", items="EndPoint", required=True)}),
    Schema("EndPointHostState", "An operator's state for a host's endpoints.", {
        "hostName": Field("string", required=True, **IP),
        "epPort": Field("integer", "0: every port", **PORT),
        "epProto": Field("string", "Default tcp", enum=("", *PROTOCOLS), fold="lower"),
        "state": Field("string", "green follows the probes, yellow drains, red is down",
                       enum=HOST_STATES, required=True, fold="lower"),
    }),
    Schema("CIStatusEntry", "The HA state of a cluster instance (keepalived's notify).", {
        "instance": Field("string", "Default `default`", **INSTANCE),
        "state": Field("string", enum=HA_STATES, required=True, fold="upper"),
        "vip": Field("string", "The instance's VIP (empty: none)", **IP),
        "sync": Field("object", "This node's conntrack sync (null without --cluster): "
                      "`ready` (every live peer's table received), `peers` (per peer: "
                      "state, lag, flows sent and received), `sent`/`received` (flows by "
                      "instance)", nullable=True, read_only=True),
    }),
    Schema("CIStatusList", "Every cluster instance.", {
        "Attr": Field("array", items="CIStatusEntry", required=True)}),
    Schema("BGPNeigh", "A BGP peer of this node's speaker, and its session.", {
        "ipAddress": Field("string", "The peer's address", required=True, **IP),
        "remoteAs": Field("integer", "Its AS number", minimum=1, maximum=UINT32_MAX,
                          required=True),
        "remotePort": Field("integer", "Its BGP port (default 179)", minimum=1,
                            maximum=65535),
        "setMultiHop": Field("boolean", "eBGP multi-hop (else one hop: TTL 1)"),
        "state": Field("string", "Session state", enum=BGP_STATES, read_only=True),
        "updowntime": Field("string", "Time in (or out of) ESTABLISHED: HH:MM:SS, "
                            "`Nd HH:MM:SS`, `never`", read_only=True),
        "localAddress": Field("string", "This node's address on the session", read_only=True),
        "holdTime": Field("integer", "Negotiated hold time (s); null while not established",
                          nullable=True, read_only=True),
        "advertisedPrefixes": Field("integer", "Routes sent to the peer", read_only=True),
        "receivedPrefixes": Field("integer", "Routes the peer announces", read_only=True),
        "acceptedPrefixes": Field("integer", "Of those, the ones installed in this node's "
                                  "routing table (0 without --bgp-import)", read_only=True),
    }),
    Schema("BGPNeighList", "Every BGP neighbor.", {
        "bgpNeiAttr": Field("array", items="BGPNeigh", required=True)}),
    Schema("BGPGlobalConfig", "The BGP speaker's global settings.", {
        "routerId": Field("string", "BGP identifier (an IPv4 address)", required=True, **IP),
        "localAs": Field("integer", minimum=1, maximum=UINT32_MAX, required=True),
        "listenPort": Field("integer", "Default 179", minimum=1, maximum=65535),
        "SetNextHopSelf": Field("boolean", "Announce with this node's address as next hop "
                                "(else the HA instance's VIP when it has one)"),
        "speaker": Field("object", "The speaker process: `state` (stopped, starting, "
                         "running, restarting), `pid`, `restarts`, `lastError`, `holdTime`, "
                         "`backupPolicy` (worse, withdraw), `importRoutes`", read_only=True),
    }),
    Schema("OperParams", "The agent's operating parameters.", {
        "logLevel": Field("string", enum=("debug", "info", "warning", "error"),
                          required=True, fold="lower")}),
    Schema("ProcessInfoEntry", "The agent process, as `top` shows it, and its own facts.", {
        "pid": Field("string"), "user": Field("string"), "priority": Field("string"),
        "nice": Field("string"), "virtMemory": Field("string", "KiB"),
        "residentSize": Field("string", "KiB"), "sharedMemory": Field("string", "KiB"),
        "status": Field("string"), "CPUUsage": Field("string", "Percent of one CPU"),
        "MemoryUsage": Field("string", "Percent of the node's memory"),
        "time": Field("string", "CPU time, minutes:seconds"), "command": Field("string"),
        "uptimeSeconds": Field("integer"), "threads": Field("integer"),
        "openFds": Field("integer"), "stateDir": Field("string"), "pinDir": Field("string"),
        "logLevel": Field("string"),
    }),
    Schema("ProcessList", "The agent process.", {
        "processAttr": Field("array", items="ProcessInfoEntry", required=True)}),
    Schema("VersionGetEntry", "The agent's version.", {
        "version": Field("string"), "buildInfo": Field("string")}),
    Schema("DpStatEntry", "Packets the datapath dropped or passed, by reason.", {
        "reason": Field("string"), "packets": Field("integer"), "bytes": Field("integer")}),
    Schema("DpStats", "Datapath counters by reason.", {
        "dpStats": Field("array", items="DpStatEntry", required=True)}),
)

SCHEMAS_BY_NAME: dict[str, Schema] = {s.name: s for s in SCHEMAS}


# --------------------------------------------------------------------------- checking


def check(schema: str, obj: Any, where: str = "", *, unknown: str = "refuse"
          ) -> dict[str, Any]:
    """`obj` checked against a schema: keys in their canonical spelling (matched in any
    case, as LoxiLB's clients spell them both ways), values checked (type, range, words,
    address form; objects and lists of objects recursively). `null` means absent. Fields
    the agent only shows (read-only) are dropped. `unknown`: "refuse" names a key the
    schema does not have (a file a person wrote); "ignore" drops it (a client's request:
    LoxiLB's carry fields this agent has no use for). Raises InvalidInput naming the field
    path (`where` first)."""
    sch = SCHEMAS_BY_NAME[schema]
    if not isinstance(obj, Mapping):
        raise InvalidInput(where or "body", f"{_kind(obj)} is not an object")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = sch.canonical.get(str(key).lower())
        path = f"{where}.{key}" if where else str(key)
        if name is None:
            if unknown == "refuse":
                raise InvalidInput(path, f"unknown field; allowed: {', '.join(sch.fields)}")
            continue
        if name in out:
            raise InvalidInput(path, f"given twice (as {name!r} too)")
        f = sch.fields[name]
        if value is None or f.read_only:  # shown by the agent: whatever it is, not taken
            out.setdefault(name, None)
            continue
        out[name] = check_value(f, value, f"{where}.{name}" if where else name, unknown)
    out = {k: v for k, v in out.items() if v is not None}
    for name, f in sch.fields.items():
        if f.required and name not in out:
            raise InvalidInput(f"{where}.{name}" if where else name, "is required")
    return out


def check_value(f: Field, value: Any, where: str, unknown: str = "refuse") -> Any:
    """One field's value, checked (and normalised: addresses canonical, words folded)."""
    if f.type in SCHEMAS_BY_NAME:
        return check(f.type, value, where, unknown=unknown)
    if f.type == "array":
        if not isinstance(value, list):
            raise InvalidInput(where, f"{_kind(value)} is not a list")
        item = Field(f.items)
        return [check_value(item, v, f"{where}[{i}]", unknown) for i, v in enumerate(value)]
    if f.type == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            what = "is unknown" if f.words else "is not an integer"
            raise InvalidInput(where, f"{value!r} {what}; allowed: {_allowed(f)}")
        if f.enum and value not in f.enum:
            raise InvalidInput(where, f"{value} is not allowed; allowed: {_allowed(f)}")
        if ((f.minimum is not None and value < f.minimum)
                or (f.maximum is not None and value > f.maximum)):
            raise InvalidInput(where, f"{value} is out of range; allowed: {_allowed(f)}")
        return value
    if f.type == "boolean":
        if not isinstance(value, bool):
            raise InvalidInput(where, f"{value!r} is not a boolean; allowed: true, false")
        return value
    if f.type == "string":
        if not isinstance(value, str):
            raise InvalidInput(where, f"{value!r} is not a string")
        if f.fold == "lower":
            value = value.lower()
        elif f.fold == "upper":
            value = value.upper()
        if f.enum and value not in f.enum:
            words = ", ".join(repr(w) if w == "" else w for w in f.enum)
            raise InvalidInput(where, f"{value!r} is not allowed; allowed: {words}")
        if f.pattern and not re.fullmatch(f.pattern, value):
            raise InvalidInput(where, f"{value!r} is not allowed; allowed: {f.pattern_words}")
        if f.format == "ip":
            if not value and f.required:
                raise InvalidInput(where, "is empty; allowed: an IP address")
            return ip_address(value, where) if value else value
        if f.format == "prefix":
            return ip_prefix(value, where)
        return value
    return value  # number, object: taken as they are


def ip_address(value: str, where: str) -> str:
    """An IPv4 or IPv6 address in canonical form (brackets allowed)."""
    try:
        return str(ipaddress.ip_address(value.strip().strip("[]")))
    except ValueError:
        raise InvalidInput(where, f"{value!r} is not a valid IP address") from None


def ip_prefix(value: str, where: str) -> str:
    """A prefix in canonical form; a bare address is a host prefix."""
    try:
        if "/" in value:
            return str(ipaddress.ip_network(value.strip()))
        return str(ipaddress.ip_network(ipaddress.ip_address(value.strip())))  # a host
    except ValueError as exc:
        raise InvalidInput(where, f"{value!r} is not a valid prefix ({exc})") from None


def _allowed(f: Field) -> str:
    if f.words:
        return ", ".join(f"{c} ({f.words[c]})" for c in f.enum)
    if f.enum:
        return ", ".join(str(v) for v in f.enum)
    lo = f.minimum if f.minimum is not None else "-inf"
    hi = f.maximum if f.maximum is not None else "inf"
    return f"{lo}..{hi}"


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(
                type(value), type(value).__name__)


@dataclass(frozen=True)
class Route:
    """One served route: what it takes and what it answers (besides errors)."""

    method: str
    path: str  # below the base path, with {parameters}
    summary: str
    request: str = ""  # schema name of the JSON body
    response: str = "Result"


ROUTES: tuple[Route, ...] = (
    Route("GET", paths.VERSION, "The agent's version (no token needed)",
          response="VersionGetEntry"),
    Route("POST", paths.LB, "Create a rule, or update it in place", request="LoadbalanceEntry"),
    Route("GET", paths.LB_ALL, "Every rule", response="LoadbalanceList"),
    Route("DELETE", paths.LB_ALL, "Delete every rule"),
    Route("DELETE", paths.LB_NAME, "Delete every rule with this name"),
    Route("DELETE", paths.LB_RULE, "Delete a rule"),
    Route("DELETE", paths.LB_RULE_RANGE, "Delete a port-range rule"),
    Route("DELETE", paths.LB_HOST_RULE, "Delete a rule of a host (`any`: none)"),
    Route("DELETE", paths.LB_HOST_RULE_RANGE,
          "Delete a port-range rule of a host (`any`: none)"),
    Route("GET", paths.CONNTRACK_ALL, "Tracked flows (filters, paging)",
          response="ConntrackList"),
    Route("GET", paths.ENDPOINT_ALL, "Endpoint probes and their findings",
          response="EndPointList"),
    Route("POST", paths.ENDPOINT, "Create an endpoint probe, or update it", request="EndPoint"),
    Route("DELETE", paths.ENDPOINT_BY_IP, "Delete endpoint probes"),
    Route("POST", paths.ENDPOINT_HOST_STATE, "Set a host's state",
          request="EndPointHostState"),
    Route("GET", paths.DPSTATS, "Datapath counters by reason", response="DpStats"),
    Route("GET", paths.CISTATE_ALL, "HA instance states", response="CIStatusList"),
    Route("POST", paths.CISTATE, "Set an HA instance's state", request="CIStatusEntry"),
    Route("DELETE", paths.CISTATE_INSTANCE, "Forget an HA instance"),
    Route("GET", paths.PARAMS, "Operating parameters", response="OperParams"),
    Route("POST", paths.PARAMS, "Change operating parameters", request="OperParams"),
    Route("GET", paths.PROCESS, "The agent process", response="ProcessList"),
    Route("GET", paths.BGP_NEIGH_ALL, "BGP neighbors and their sessions",
          response="BGPNeighList"),
    Route("POST", paths.BGP_NEIGH, "Add a BGP neighbor", request="BGPNeigh"),
    Route("DELETE", paths.BGP_NEIGH_BY_IP, "Delete a BGP neighbor (query remoteAs: only "
          "if its AS is that)"),
    Route("GET", paths.BGP_GLOBAL, "The BGP global settings and the speaker's state",
          response="BGPGlobalConfig"),
    Route("POST", paths.BGP_GLOBAL, "Set the BGP global settings", request="BGPGlobalConfig"),
)

# Path and query parameters by name (each name means the same on every route): what the
# handlers accept, for the OpenAPI document (the handlers read them as text and check them).
PARAMETERS: dict[str, Field] = {
    "ip": Field("string", "An address", required=True, **IP),
    "port": Field("integer", "A port (0: an icmp rule's)", **PORT),
    "portmax": Field("integer", "The last port of the range", **PORT),
    "proto": Field("string", "The protocol", enum=PROTOCOLS),
    "block": Field("integer", "The rule's mark", minimum=0, maximum=UINT32_MAX),
    "bgp": Field("boolean", "Accepted and ignored (LoxiLB's clients send it)"),
    "state": Field("string", "Flows in this state", enum=CONNTRACK_STATES),
    "limit": Field("integer", "At most this many flows: one page, with `next`",
                   minimum=1, maximum=1_000_000),
    "after": Field("string", "The `next` of the previous page"),
    "probe_type": Field("string", "Only probes of this type", enum=LOXILB_PROBE_TYPES),
    "probe_port": Field("integer", "Only probes of this port", **PORT),
    "remoteAs": Field("integer", "Only if the neighbor's AS is this", minimum=1,
                      maximum=UINT32_MAX),
    "instance": Field("string", "The instance's name", **INSTANCE),
}


def document_parameter(param: dict[str, Any]) -> None:
    """Give an OpenAPI parameter object the schema of its name (see PARAMETERS)."""
    f = PARAMETERS.get(param["name"])
    if f is not None:
        schema = replace(f, required=True).json_schema()  # a parameter is never null
        if param["in"] == "query":  # an empty value is taken as not given
            schema = {"anyOf": [schema, {"type": "string", "enum": [""]}]}
        param["schema"] = schema
        if f.description and "description" not in param:
            param["description"] = f.description


# The errors each route may answer, with LoxiLB's meanings.
ERROR_STATUSES = {400: "Malformed arguments", 401: "Invalid authentication credentials",
                  403: "Capacity insufficient", 404: "Resource not found",
                  409: "Resource conflict", 500: "Internal service error"}


def operation(route: Route) -> dict[str, Any]:
    """The OpenAPI 3 operation of a route, but for its parameters: its summary, request
    body and responses (the success and each error)."""
    op: dict[str, Any] = {
        "summary": route.summary,
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {
                "schema": _type_schema(route.response)}}},
            **{str(code): {"description": text, "content": {"application/json": {
                "schema": _type_schema("Error")}}} for code, text in ERROR_STATUSES.items()},
        },
    }
    if route.request:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": _type_schema(route.request)}}}
    return op


def openapi_components() -> dict[str, Any]:
    return {"schemas": {s.name: s.json_schema() for s in SCHEMAS}}
