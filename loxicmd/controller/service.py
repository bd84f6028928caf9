"""A Service and its EndpointSlices as load-balancer rules.

The Service's annotations are kube-loxilb's (``loxilb.io/lbmode``, ``loxilb.io/epselect``,
``loxilb.io/liveness``, ``loxilb.io/timeout``, the ``loxilb.io/probe*`` family,
``loxilb.io/staticIP``), so that Services written for kube-loxilb work unchanged; a value
this controller cannot carry out is refused by name (the Service then gets a Warning
event and no rule) rather than replaced by a default. One rule per Service port, named as
kube-loxilb names them (``<namespace>_<service>:<HA instance>``), with every ready endpoint
of the EndpointSlices that carry the port.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from loxicmd.names import (
    DEFAULT_PROBE_PERIOD_S,
    DEFAULT_PROBE_RETRIES,
    DEFAULT_TIMEOUTS,
    LOXILBD_NAT_MODES,
    LOXILBD_SELECTIONS,
    NAT_MODE_NAMES,
    SELECTION_NAMES,
)

LB_CLASS = "loxilb.io/loxilb"
INSTANCE = "llb-inst0"  # LoxiLB's default HA instance, as kube-loxilb names it
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ANNOTATION = "loxilb.io/"

# kube-loxilb's words the agents carry out (the others are refused by name, not defaulted)
MODES = {name: code for code, name in NAT_MODE_NAMES.items() if name in LOXILBD_NAT_MODES}
SELECTIONS = {**{name: code for code, name in SELECTION_NAMES.items()
                 if name in LOXILBD_SELECTIONS}, "roundrobin": 0}
PROBE_TYPES = ("none", "ping", "tcp", "udp", "http", "https")
PROTOCOLS = ("tcp", "udp")  # of a Service's; the datapath carries no SCTP yet
# A rule's probe fields as the agent shows them when none is given: sent explicitly, so
# that an annotation taken away is taken away on the agents too.
PROBE_DEFAULTS = {"probetype": "", "probeport": 0, "probereq": "", "proberesp": "",
                  "probeTimeout": DEFAULT_PROBE_PERIOD_S, "probeRetries": DEFAULT_PROBE_RETRIES}
YES_NO = ("yes", "no")


class ServiceRefused(ValueError):
    """Something in the Service this controller cannot carry out; says what and what is
    allowed (shown in a Warning event on the Service)."""


@dataclass(frozen=True)
class Options:
    """What a Service's annotations (and flags) ask of its rules."""

    mode: int = 0
    sel: int = 0
    monitor: bool = False
    timeout: int = 0  # 0: the API's default for the protocol
    probe: dict[str, Any] = field(default_factory=lambda: dict(PROBE_DEFAULTS))
    static_ip: str = ""


def key_of(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', 'default')}/{meta.get('name', '')}"


def rule_name(service_key: str) -> str:
    namespace, _, name = service_key.partition("/")
    return f"{namespace}_{name}:{INSTANCE}"


def owned_name(name: str) -> bool:
    """A rule name this controller gives (it deletes no rule of another maker)."""
    head, sep, instance = name.rpartition(":")
    return bool(sep) and instance == INSTANCE and "_" in head


def wants_lb(service: dict[str, Any], lb_class: str, default_class: bool) -> bool:
    """A Service of type LoadBalancer of this controller's class (or of none, when it is
    the cluster's default load balancer)."""
    spec = service.get("spec") or {}
    if spec.get("type") != "LoadBalancer":
        return False
    cls = spec.get("loadBalancerClass")
    return cls == lb_class or (cls is None and default_class)


def _int(annotations: dict[str, str], key: str, lo: int, hi: int) -> int | None:
    value = annotations.get(ANNOTATION + key)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise ServiceRefused(f"annotation {ANNOTATION}{key}: {value!r} is not a number; "
                             f"allowed: {lo}..{hi}") from None
    if not lo <= number <= hi:
        raise ServiceRefused(f"annotation {ANNOTATION}{key}: {number} is out of range; "
                             f"allowed: {lo}..{hi}")
    return number


def _word(annotations: dict[str, str], key: str, allowed: tuple[str, ...] | dict[str, int]
          ) -> str | None:
    value = annotations.get(ANNOTATION + key)
    if value is None:
        return None
    if value not in allowed:
        raise ServiceRefused(f"annotation {ANNOTATION}{key}: {value!r} is not allowed; "
                             f"allowed: {', '.join(allowed)}")
    return value


def options_of(service: dict[str, Any], default_mode: int = 0) -> Options:
    """The Service's options from its annotations; ServiceRefused names a bad one."""
    annotations: dict[str, str] = (service.get("metadata") or {}).get("annotations") or {}
    mode_word = _word(annotations, "lbmode", MODES)
    sel_word = _word(annotations, "epselect", SELECTIONS)
    liveness = _word(annotations, "liveness", YES_NO)
    probe: dict[str, Any] = dict(PROBE_DEFAULTS)
    ptype = _word(annotations, "probetype", PROBE_TYPES)
    if ptype is not None:
        probe["probetype"] = ptype
    for key, wire_name, hi in (("probeport", "probeport", 65535),
                               ("probetimeout", "probeTimeout", 86400),
                               ("proberetries", "probeRetries", 100)):
        number = _int(annotations, key, 1, hi)
        if number is not None:
            probe[wire_name] = number
    for key in ("probereq", "proberesp"):
        if ANNOTATION + key in annotations:
            probe[key] = annotations[ANNOTATION + key]
    static = annotations.get(ANNOTATION + "staticIP") or \
        (service.get("spec") or {}).get("loadBalancerIP") or ""
    if static:
        try:
            static = str(ipaddress.ip_address(static))
        except ValueError:
            raise ServiceRefused(f"the requested address {static!r} (spec.loadBalancerIP or "
                                 f"annotation {ANNOTATION}staticIP) is not an IP "
                                 "address") from None
    spec = service.get("spec") or {}
    if spec.get("ipFamilies") == ["IPv6"]:
        raise ServiceRefused("spec.ipFamilies: IPv6 alone is not served yet; allowed: "
                             "IPv4, or dual-stack (served on IPv4)")
    return Options(mode=MODES[mode_word] if mode_word else default_mode,
                   sel=SELECTIONS[sel_word] if sel_word else 0,
                   # naming a probe type asks for monitoring (LoxiLB's, and the agent's)
                   monitor=liveness == "yes" or ptype not in (None, "none"),
                   timeout=_int(annotations, "timeout", 1, 86400) or 0,
                   probe=probe, static_ip=static)


def ready_endpoints(slices: list[dict[str, Any]], port_name: str, protocol: str,
                    family: str) -> list[tuple[str, int]]:
    """(address, port) of every ready endpoint of the slices that carry the Service port
    named `port_name` (EndpointSlices name their ports after the Service's)."""
    out: set[tuple[str, int]] = set()
    for sl in slices:
        if sl.get("addressType") != family:
            continue
        port = next((p.get("port") for p in sl.get("ports") or []
                     if (p.get("name") or "") == port_name
                     and (p.get("protocol") or "TCP").lower() == protocol), None)
        if not isinstance(port, int):
            continue
        for endpoint in sl.get("endpoints") or []:
            # ready unset means ready (the API's own reading)
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            for address in endpoint.get("addresses") or []:
                out.add((str(ipaddress.ip_address(address)), port))
    return sorted(out, key=lambda e: (ipaddress.ip_address(e[0]), e[1]))


def rules_for(service: dict[str, Any], slices: list[dict[str, Any]], external_ip: str,
              options: Options, bgp: bool = False) -> list[dict[str, Any]]:
    """One LoadbalanceEntry per Service port."""
    key = key_of(service)
    family = "IPv6" if ":" in external_ip else "IPv4"
    rules = []
    for port in (service.get("spec") or {}).get("ports") or []:
        protocol = str(port.get("protocol") or "TCP").lower()
        if protocol not in PROTOCOLS:
            raise ServiceRefused(f"port {port.get('port')}: protocol {protocol!r} is not "
                                 f"allowed; allowed: {', '.join(PROTOCOLS)}")
        args: dict[str, Any] = {
            "externalIP": external_ip, "port": int(port["port"]), "protocol": protocol,
            "sel": options.sel, "mode": options.mode, "bgp": bgp,
            "monitor": options.monitor, "name": rule_name(key), "managed": True,
            **options.probe,
        }
        args["inactiveTimeOut"] = options.timeout or DEFAULT_TIMEOUTS[protocol]
        endpoints = ready_endpoints(slices, port.get("name") or "", protocol, family)
        rules.append({
            "serviceArguments": args,
            "endpoints": [{"endpointIP": ip, "targetPort": p, "weight": 1}
                          for ip, p in endpoints],
            "allowedSources": [{"prefix": p} for p in source_ranges(service)],
        })
    return rules


def source_ranges(service: dict[str, Any]) -> list[str]:
    """spec.loadBalancerSourceRanges as prefixes (Kubernetes takes host bits set)."""
    out = set()
    for text in (service.get("spec") or {}).get("loadBalancerSourceRanges") or []:
        try:
            net = ipaddress.ip_network(str(text).strip(), strict=False)
        except ValueError:
            raise ServiceRefused(f"spec.loadBalancerSourceRanges: {text!r} is not a prefix; "
                                 "allowed: a.b.c.d/len") from None
        if net.version != 4:
            raise ServiceRefused(f"spec.loadBalancerSourceRanges: {text!r} is IPv6; allowed: "
                                 "IPv4 prefixes (the agents filter IPv4 sources only)")
        out.add(str(net))
    return sorted(out, key=lambda p: ipaddress.ip_network(p))


def rule_identity(entry: dict[str, Any]) -> tuple[str, int, str]:
    sa = entry["serviceArguments"]
    return (str(sa["externalIP"]), int(sa["port"]), str(sa.get("protocol", "tcp")).lower())


def differs(want: dict[str, Any], shown: dict[str, Any]) -> bool:
    """Whether the agent's rule (as it shows it) is not what `want` asks: every service
    argument `want` sets, its endpoint set and its source list."""
    sa, have = want["serviceArguments"], shown.get("serviceArguments") or {}
    if any(have.get(k) != v for k, v in sa.items()):
        return True

    def endpoints(entry: dict[str, Any]) -> set[tuple[str, int, int]]:
        return {(e["endpointIP"], int(e.get("targetPort", 0)), int(e.get("weight", 1)))
                for e in entry.get("endpoints") or []}

    def sources(entry: dict[str, Any]) -> set[str]:
        return {s["prefix"] for s in entry.get("allowedSources") or []}
    return endpoints(want) != endpoints(shown) or sources(want) != sources(shown)
