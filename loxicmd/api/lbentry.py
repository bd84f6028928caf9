"""LoxiLB's LoadbalanceEntry (a load-balancer rule on the wire) as typed values.

The one place that turns the JSON object into Python values and back: the CLI builds
requests with it (`create lb`, `apply -f`, files of `save`), the agent reads requests and
writes its answers and state with it. Field spellings come from the wire schema
(:mod:`loxicmd.api.wire`); here every field has its Python name (``externalIP`` ->
``external_ip``). Checks that hold for any reader are made here (the port range, an
endpoint given twice); what a particular agent supports is its own business.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loxicmd.api import wire


@functools.cache
def python_name(wire_name: str) -> str:
    """``externalIP`` -> ``external_ip``, ``inactiveTimeOut`` -> ``inactive_time_out``."""
    return re.sub(r"(?<=[a-z0-9])([A-Z]+)", lambda m: "_" + m.group(1).lower(), wire_name)


@functools.cache
def _shown_fields(schema: str, shown: bool) -> tuple[tuple[str, ...],
                                                      Callable[[Any], tuple[Any, ...]]]:
    """The wire names of the fields a request (or an answer) carries, and a getter of
    their values (one call per object: answers list thousands of rules)."""
    names = tuple(name for name, f in wire.SCHEMAS_BY_NAME[schema].fields.items()
                  if not ((f.read_only and not shown) or (f.write_only and shown)))
    return names, operator.attrgetter(*(python_name(n) for n in names))


@dataclass
class ServiceArguments:
    external_ip: str
    port: int
    port_max: int = 0
    protocol: str = "tcp"
    private_ip: str = ""
    sel: int = 0
    mode: int = 0
    bgp: bool = False
    monitor: bool = False
    probetype: str = ""
    probeport: int = 0
    probereq: str = ""
    proberesp: str = ""
    probe_timeout: int = 0
    probe_retries: int = 0
    managed: bool = False
    security: int = 0
    inactive_time_out: int = 0
    block: int = 0
    name: str | None = None  # None: not given (an update then keeps the rule's name)
    snat: bool = False  # shown only
    oper: int = 0  # sent only
    host: str = ""
    proxyprotocolv2: bool = False
    egress: bool = False


@dataclass
class LoadBalancerEndpoint:
    endpoint_ip: str
    target_port: int | None = None  # None: not given (the rule's port, or 0 for a range)
    weight: int = 1
    state: str | None = None  # shown only
    counter: str | None = None  # shown only


@dataclass
class LoadbalanceEntry:
    service_arguments: ServiceArguments
    endpoints: list[LoadBalancerEndpoint] = field(default_factory=list)
    secondary_ips: list[str] = field(default_factory=list)
    allowed_sources: list[str] = field(default_factory=list)

    # -- from JSON ------------------------------------------------------------------
    @classmethod
    def parse(cls, obj: Any, where: str = "", *, unknown: str = "ignore") -> LoadbalanceEntry:
        """A request body (or a saved object) checked against the wire schema, then the
        checks every reader needs; InvalidInput names the field."""
        body = wire.check("LoadbalanceEntry", obj, where, unknown=unknown)
        at = f"{where}." if where else ""
        sa = ServiceArguments(**_python(body["serviceArguments"]))
        sa_at = f"{at}serviceArguments"
        if sa.protocol == "icmp":
            for name, value in (("port", sa.port), ("portMax", sa.port_max)):
                if value != 0:
                    raise wire.InvalidInput(f"{sa_at}.{name}", f"{value} is not allowed for "
                                            "icmp; allowed: 0 (icmp rules have no port)")
        elif sa.port == 0:
            raise wire.InvalidInput(f"{sa_at}.port", "0 is out of range; allowed: 1..65535 "
                                    "(0 for icmp)")
        if sa.port_max and sa.port_max < sa.port:
            raise wire.InvalidInput(f"{sa_at}.portMax", f"{sa.port_max} is below port "
                                    f"{sa.port}; allowed: {sa.port}..65535 or 0 for a "
                                    "single port")
        endpoints = [LoadBalancerEndpoint(**_python(ep)) for ep in body.get("endpoints", [])]
        seen: set[tuple[str, int | None]] = set()
        for i, ep in enumerate(endpoints):
            ident = (ep.endpoint_ip, ep.target_port)
            if ident in seen:
                target = f":{ep.target_port}" if ep.target_port is not None else ""
                raise wire.InvalidInput(f"{at}endpoints[{i}]",
                                        f"{ep.endpoint_ip}{target} is listed twice")
            seen.add(ident)
        sources = []
        for item in body.get("allowedSources", []):
            if item["prefix"] not in sources:
                sources.append(item["prefix"])
        return cls(sa, endpoints, [s["secondaryIP"] for s in body.get("secondaryIPs", [])],
                   sources)

    # -- to JSON --------------------------------------------------------------------
    def to_json(self, *, shown: bool = False) -> dict[str, Any]:
        """The JSON object: a request (`shown` False: fields only shown are left out) or
        the agent's answer (`shown` True: they are in, request-only ones out). Fields not
        given (None) are left out."""
        return {
            "serviceArguments": _wire(self.service_arguments, "ServiceArguments", shown),
            "endpoints": [_wire(ep, "LoadBalancerEndpoint", shown) for ep in self.endpoints],
            "secondaryIPs": [{"secondaryIP": ip} for ip in self.secondary_ips],
            "allowedSources": [{"prefix": p} for p in self.allowed_sources],
        }


def with_endpoint_states(shown: dict[str, Any], states: list[tuple[str, str]]
                         ) -> dict[str, Any]:
    """An answer's LoadbalanceEntry (`to_json(shown=True)` made without them) with each
    endpoint's state and `<packets>:<bytes>` counter, in endpoint order; `shown` itself is
    left as it is."""
    return {**shown, "endpoints": [{**ep, "state": state, "counter": counter} for ep, (
        state, counter) in zip(shown["endpoints"], states, strict=True)]}


def _python(obj: dict[str, Any]) -> dict[str, Any]:
    return {python_name(k): v for k, v in obj.items()}


def _wire(value: Any, schema: str, shown: bool) -> dict[str, Any]:
    names, values = _shown_fields(schema, shown)
    return {name: v for name, v in zip(names, values(value), strict=True) if v is not None}
