"""The wire schema of every kind of object the API carries, declared once.

Field names, types and meanings follow LoxiLB's API specification (its clients must read
this agent correctly); each schema renders to JSON Schema for the agent's OpenAPI
document. Output-only fields are marked read-only, request-only ones write-only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from loxicmd.names import NAT_MODE_NAMES, PROTOCOLS, SELECTION_NAMES

UINT32_MAX = 2**32 - 1


@dataclass(frozen=True)
class Field:
    """One member of an object: its JSON type and what the agent accepts."""

    type: str  # string | integer | boolean | array | object | <schema name> (a reference)
    description: str = ""
    minimum: int | None = None
    maximum: int | None = None
    enum: tuple[Any, ...] = ()
    format: str = ""
    items: str = ""  # arrays: a schema name or a JSON type
    required: bool = False
    read_only: bool = False  # shown by the agent, never sent to it
    write_only: bool = False  # sent to the agent, never shown
    nullable: bool = False

    def json_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = _type_schema(self.type)
        if self.type == "array":
            out["items"] = _type_schema(self.items)
        for key, value in (("description", self.description), ("minimum", self.minimum),
                           ("maximum", self.maximum), ("format", self.format)):
            if value not in ("", None):
                out[key] = value
        if self.enum:
            out["enum"] = list(self.enum)
        if self.read_only:
            out["readOnly"] = True
        if self.write_only:
            out["writeOnly"] = True
        if self.nullable:
            out["nullable"] = True
        return out


def _type_schema(type_name: str) -> dict[str, Any]:
    if type_name in ("string", "integer", "boolean", "array", "object", "number"):
        return {"type": type_name}
    return {"$ref": f"#/components/schemas/{type_name}"}


@dataclass(frozen=True)
class Schema:
    """A JSON object kind: its fields by canonical spelling (clients may use any case)."""

    name: str
    description: str
    fields: Mapping[str, Field] = field(default_factory=dict)

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


PORT = {"minimum": 0, "maximum": 65535}
PROBE_TYPES_ALL = ("tcp", "udp", "sctp", "http", "https", "ping", "none")

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
        "externalIP": Field("string", "The service's virtual IP", format="ipv4",
                            required=True),
        "privateIP": Field("string", "fullnat: the source towards endpoints", format="ipv4"),
        "port": Field("integer", "The (first) port; 0 for icmp", required=True, **PORT),
        "portMax": Field("integer", "The last port of a range (0: a single port)", **PORT),
        "protocol": Field("string", "sctp is refused by this agent", enum=PROTOCOLS),
        "sel": Field("integer", f"Endpoint selection: {_codes(SELECTION_NAMES)} (n2, n3 "
                     "refused by this agent)", enum=tuple(SELECTION_NAMES)),
        "mode": Field("integer", f"NAT mode: {_codes(NAT_MODE_NAMES)} (dsr, fullproxy, "
                      "hostonearm refused by this agent)", enum=tuple(NAT_MODE_NAMES)),
        "bgp": Field("boolean", "Announce the VIP with BGP (refused by this agent yet)"),
        "monitor": Field("boolean", "Probe the endpoints; inactive ones get no new flows"),
        "probetype": Field("string", "How endpoints are probed (default: the protocol's; "
                           "sctp refused by this agent)", enum=PROBE_TYPES_ALL),
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
        "name": Field("string", "Service name, `<svc>` or `<svc>:<ha-instance>`"),
        "snat": Field("boolean", "An egress SNAT rule (never, on this agent)",
                      read_only=True),
        "oper": Field("integer", "0 create/update, 1 attach endpoints, 2 detach endpoints",
                      enum=(0, 1, 2), write_only=True),
        "host": Field("string", "Ingress host URL (refused by this agent yet)"),
        "proxyprotocolv2": Field("boolean", "Proxy protocol v2 (refused by this agent)"),
        "egress": Field("boolean", "An egress rule (refused by this agent)"),
    }),
    Schema("LoadBalancerEndpoint", "One endpoint of a rule.", {
        "endpointIP": Field("string", "Its address", format="ipv4", required=True),
        "targetPort": Field("integer", "Its port (0: the port the client used)", **PORT),
        "weight": Field("integer", "Weight for priority selection", minimum=1, maximum=255),
        "state": Field("string", "New flows go to it or not", enum=("active", "inactive"),
                       read_only=True),
        "counter": Field("string", "`<packets>:<bytes>` sent to it", read_only=True),
    }),
    Schema("SecondaryIP", "A secondary address of an sctp rule (refused by this agent).", {
        "secondaryIP": Field("string", format="ipv4")}),
    Schema("AllowedSource", "A source prefix allowed to reach the rule.", {
        "prefix": Field("string", "e.g. 198.18.0.0/16 (a bare address: /32)",
                        required=True)}),
    Schema("LoadbalanceEntry", "A load-balancer rule.", {
        "serviceArguments": Field("ServiceArguments", required=True),
        "endpoints": Field("array", items="LoadBalancerEndpoint"),
        "secondaryIPs": Field("array", items="SecondaryIP"),
        "allowedSources": Field("array", items="AllowedSource"),
    }),
    Schema("LoadbalanceList", "Every rule.", {
        "lbAttr": Field("array", items="LoadbalanceEntry", required=True)}),
    Schema("ConntrackEntry", "A tracked flow, in the client's direction.", {
        "sourceIP": Field("string", format="ipv4"),
        "sourcePort": Field("integer", **PORT),
        "destinationIP": Field("string", format="ipv4"),
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
        "hostName": Field("string", "The endpoint's address", format="ipv4", required=True),
        "name": Field("string", "Default `<ip>_<probeType>_<probePort>`; posting it again "
                      "updates it"),
        "probeType": Field("string", "sctp refused by this agent", enum=PROBE_TYPES_ALL),
        "probePort": Field("integer", **PORT),
        "probeReq": Field("string"),
        "probeResp": Field("string"),
        "probeDuration": Field("integer", "Seconds between probes (0: 60)", minimum=0,
                               maximum=86400),
        "inactiveReTries": Field("integer", "Failures before nok (0: 2)", minimum=0,
                                 maximum=100),
    }),
    Schema("EndPointGetEntry", "An endpoint probe and what it found.", {
        "ruleProbe": Field("boolean", "Made by monitored rules (goes and comes with them)"),
        "hostName": Field("string", format="ipv4"),
        "name": Field("string"),
        "probeType": Field("string"),
        "probePort": Field("integer", **PORT),
        "probeReq": Field("string"),
        "probeResp": Field("string"),
        "probeDuration": Field("integer"),
        "inactiveReTries": Field("integer"),
        "minDelay": Field("string"),
        "avgDelay": Field("string"),
        "maxDelay": Field("string"),
        "currState": Field("string", enum=("ok", "nok")),
    }),
    Schema("EndPointList", "Every endpoint probe.", {
        "Attr": Field("array", items="EndPointGetEntry", required=True)}),
    Schema("EndPointHostState", "An operator's state for a host's endpoints.", {
        "hostName": Field("string", format="ipv4", required=True),
        "epPort": Field("integer", "0: every port", **PORT),
        "epProto": Field("string", enum=("tcp", "udp", "icmp", "sctp")),
        "state": Field("string", "green follows the probes, yellow drains, red is down",
                       enum=("green", "yellow", "red"), required=True),
    }),
    Schema("CIStatusEntry", "The HA state of a cluster instance (keepalived's notify).", {
        "instance": Field("string", "Default `default`"),
        "state": Field("string", enum=("MASTER", "BACKUP", "FAULT", "STOP", "NOT_DEFINED"),
                       required=True),
        "vip": Field("string", format="ipv4"),
    }),
    Schema("CIStatusGetEntry", "A cluster instance and its state.", {
        "instance": Field("string"),
        "state": Field("string"),
        "vip": Field("string"),
        "sync": Field("integer", "Conntrack sync progress (not yet reported)", nullable=True),
    }),
    Schema("CIStatusList", "Every cluster instance.", {
        "Attr": Field("array", items="CIStatusGetEntry", required=True)}),
    Schema("OperParams", "The agent's operating parameters.", {
        "logLevel": Field("string", enum=("debug", "info", "warning", "error"),
                          required=True)}),
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


@dataclass(frozen=True)
class Route:
    """One served route: what it takes and what it answers (besides errors)."""

    method: str
    path: str  # below the base path, with {parameters}
    summary: str
    request: str = ""  # schema name of the JSON body
    response: str = "Result"


_LB = "/config/loadbalancer"
_LB_RULE = "/externalipaddress/{ip}/port/{port}"

ROUTES: tuple[Route, ...] = (
    Route("GET", "/version", "The agent's version (no token needed)",
          response="VersionGetEntry"),
    Route("POST", _LB, "Create a rule, or update it in place", request="LoadbalanceEntry"),
    Route("GET", f"{_LB}/all", "Every rule", response="LoadbalanceList"),
    Route("DELETE", f"{_LB}/all", "Delete every rule"),
    Route("DELETE", f"{_LB}/name/{{name}}", "Delete every rule with this name"),
    Route("DELETE", f"{_LB}{_LB_RULE}/protocol/{{proto}}", "Delete a rule"),
    Route("DELETE", f"{_LB}{_LB_RULE}/portmax/{{portmax}}/protocol/{{proto}}",
          "Delete a port-range rule"),
    Route("DELETE", f"{_LB}/hosturl/{{host}}{_LB_RULE}/protocol/{{proto}}",
          "Delete a rule of a host (`any`: none)"),
    Route("DELETE", f"{_LB}/hosturl/{{host}}{_LB_RULE}/portmax/{{portmax}}/protocol/{{proto}}",
          "Delete a port-range rule of a host (`any`: none)"),
    Route("GET", "/config/conntrack/all", "Tracked flows (filters, paging)",
          response="ConntrackList"),
    Route("GET", "/config/endpoint/all", "Endpoint probes and their findings",
          response="EndPointList"),
    Route("POST", "/config/endpoint", "Create an endpoint probe, or update it",
          request="EndPoint"),
    Route("DELETE", "/config/endpoint/epipaddress/{ip}", "Delete endpoint probes"),
    Route("POST", "/config/endpointhoststate", "Set a host's state",
          request="EndPointHostState"),
    Route("GET", "/config/dpstats", "Datapath counters by reason", response="DpStats"),
    Route("GET", "/config/cistate/all", "HA instance states", response="CIStatusList"),
    Route("POST", "/config/cistate", "Set an HA instance's state", request="CIStatusEntry"),
    Route("DELETE", "/config/cistate/instance/{instance}", "Forget an HA instance"),
    Route("GET", "/config/params", "Operating parameters", response="OperParams"),
    Route("POST", "/config/params", "Change operating parameters", request="OperParams"),
    Route("GET", "/status/process", "The agent process", response="ProcessList"),
)

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
