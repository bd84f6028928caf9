"""Load-balancer rules: parsing and validation of the API's LoadbalanceEntry, and its output form.

Validation names the field, the value and what is allowed, and happens before
anything changes. Keys are matched case-insensitively (LoxiLB's clients spell
them both ways).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any

from datapath.layouts import LB_MAX_ENDPOINTS
from loxicmd.names import NAT_MODE_NAMES, SELECTION_NAMES

DEFAULT_TIMEOUTS = {"tcp": 240, "udp": 20, "sctp": 240, "icmp": 20}
MAX_TIMEOUT_S = 86400

# What this datapath implements today; the rest of the API's codes are known
# (and named in errors) but refused rather than silently treated as another.
SUPPORTED_PROTOCOLS = ("tcp", "udp", "icmp")
SUPPORTED_SEL = (0, 1, 2, 3, 4)
SUPPORTED_MODES = (0, 1, 2)
MODE_FULLNAT = 2
PERSIST_LIFETIME_S = 3 * 3600

OPER_CREATE, OPER_ATTACH, OPER_DETACH = 0, 1, 2


class InvalidInput(ValueError):
    """Bad request: carries the field path and a sentence saying what is wrong."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True, order=True)
class Endpoint:
    ip: str
    target_port: int
    weight: int = 1

    @property
    def ident(self) -> tuple[str, int]:
        return (self.ip, self.target_port)

    def sort_key(self) -> tuple[int, int]:
        return (int(ipaddress.IPv4Address(self.ip)), self.target_port)


@dataclass(frozen=True)
class RuleKey:
    """A rule's identity (api.md): posting the same identity again updates it."""

    external_ip: str
    port: int
    port_max: int
    protocol: str
    block: int
    host: str

    def describe(self) -> str:
        ports = str(self.port) if self.port_max == self.port else f"{self.port}-{self.port_max}"
        mark = f" mark {self.block}" if self.block else ""
        return f"{self.external_ip}:{ports}/{self.protocol}{mark}"


@dataclass(frozen=True)
class LbRule:
    key: RuleKey
    sel: int = 0
    mode: int = 0
    inactive_timeout: int = 0  # 0: the protocol's default
    name: str = ""
    bgp: bool = False
    monitor: bool = False  # probe the endpoints with `probe` (kept whether on or off)
    managed: bool = False  # LoxiLB's "externally managed" marker, kept for its clients
    security: int = 0
    private_ip: str = ""
    allowed_sources: tuple[str, ...] = ()
    probe: RuleProbe | None = None  # None: the protocol's default probe
    endpoints: tuple[Endpoint, ...] = field(default_factory=tuple)

    @property
    def effective_timeout(self) -> int:
        return self.inactive_timeout or DEFAULT_TIMEOUTS[self.key.protocol]

    @property
    def effective_probe(self) -> RuleProbe:
        return self.probe or RuleProbe(ptype=DEFAULT_PROBE_TYPES[self.key.protocol])

    def with_endpoints(self, endpoints: list[Endpoint]) -> LbRule:
        return replace(self, endpoints=tuple(sorted(endpoints, key=Endpoint.sort_key)))


PROBE_TYPES = ("ping", "tcp", "udp", "http", "https", "none")
# A monitored rule probes its endpoints as its protocol says unless told otherwise (LoxiLB).
DEFAULT_PROBE_TYPES = {"tcp": "tcp", "udp": "udp", "sctp": "sctp", "icmp": "ping"}
# LoxiLB's probeTimeout (rules) and probeDuration (endpoints) are the probe period.
DEFAULT_PROBE_PERIOD_S = 60
MAX_PROBE_PERIOD_S = 86400
DEFAULT_PROBE_RETRIES = 2
MAX_PROBE_RETRIES = 100
SECURITY_NAMES = {0: "plain", 1: "https", 2: "e2ehttps"}
SUPPORTED_SECURITY = (0,)


@dataclass(frozen=True)
class RuleProbe:
    """How a rule's endpoints are probed when it is monitored (port 0: each endpoint's
    target port). Kept, and shown, whether monitoring is on or not."""

    ptype: str = "tcp"
    port: int = 0
    req: str = ""
    resp: str = ""
    period_s: int = DEFAULT_PROBE_PERIOD_S
    retries: int = DEFAULT_PROBE_RETRIES


def _lower_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k).lower(): _lower_keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_lower_keys(v) for v in obj]
    return obj


def _int(obj: dict[str, Any], key: str, where: str, default: int, lo: int, hi: int,
         allowed: str = "") -> int:
    value = obj.get(key.lower(), default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{where}{key}", f"{value!r} is not an integer; "
                           f"allowed: {allowed or f'{lo}..{hi}'}")
    if not lo <= value <= hi:
        raise InvalidInput(f"{where}{key}", f"{value} is out of range; "
                           f"allowed: {allowed or f'{lo}..{hi}'}")
    return value


def _bool(obj: dict[str, Any], key: str, where: str) -> bool:
    value = obj.get(key.lower(), False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}{key}", f"{value!r} is not a boolean (true or false)")
    return value


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key.lower(), "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{where}{key}", f"{value!r} is not a string")
    return value


def _ipv4(obj: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    value = obj.get(key.lower())
    if value in (None, "") and not required:
        return ""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{where}{key}", f"{value!r} is missing or not a string; "
                           "allowed: an IPv4 address")
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidInput(f"{where}{key}", f"{value!r} is not a valid IP address") from None
    if addr.version != 4:
        raise InvalidInput(f"{where}{key}", f"{value!r}: IPv6 is not supported by this "
                           "datapath yet; allowed: an IPv4 address")
    return str(addr)


def _unicast_ipv4(obj: dict[str, Any], key: str, where: str, what: str,
                  required: bool = True) -> str:
    """An address that can carry traffic as `what` (a VIP, an endpoint, a source)."""
    value = _ipv4(obj, key, where, required)
    if not value:
        return value
    addr = ipaddress.IPv4Address(value)
    why = ("is the unspecified address" if addr.is_unspecified
           else "is the broadcast address" if addr == ipaddress.IPv4Address("255.255.255.255")
           else "is a multicast address" if addr.is_multicast
           else "is a loopback address (traffic to it never leaves the node)"
           if addr.is_loopback else "")
    if why:
        raise InvalidInput(f"{where}{key}", f"{value!r} {why}; allowed: a unicast IPv4 "
                           f"address for {what}")
    return value


def _known_code(obj: dict[str, Any], key: str, where: str, names: dict[int, str],
                supported: tuple[int, ...]) -> int:
    listing = ", ".join(f"{c} ({n})" for c, n in names.items())
    value = _int(obj, key, where, 0, min(names), max(names), allowed=listing)
    if value not in supported:
        ok = ", ".join(f"{c} ({names[c]})" for c in supported)
        raise InvalidInput(f"{where}{key}", f"{value} ({names[value]}) is not supported by "
                           f"this datapath yet; supported: {ok}")
    return value


def _refuse_unsupported(svc: dict[str, Any], body: dict[str, Any]) -> None:
    """Options the API defines but this agent does not carry out yet: refuse
    them when set rather than accept and ignore them."""
    for key in ("bgp", "proxyprotocolv2", "egress"):
        if svc.get(key):
            raise InvalidInput(f"serviceArguments.{key}", "is not supported by this agent "
                               "yet; allowed: false")
    for key in ("host",):
        if svc.get(key):
            raise InvalidInput(f"serviceArguments.{key}", f"{svc[key]!r} is not supported "
                               "by this agent yet; allowed: empty")
    if body.get("secondaryips"):
        raise InvalidInput("secondaryIPs", "apply to sctp rules, which this datapath does not "
                           "carry yet; allowed: empty")


def parse_rule_probe(svc: dict[str, Any], where: str, protocol: str) -> RuleProbe:
    """The probe options of a rule (LoxiLB's clients send them with monitor off too);
    omitted ones take LoxiLB's defaults."""
    ptype = _str(svc, "probetype", where) or DEFAULT_PROBE_TYPES[protocol]
    if ptype not in PROBE_TYPES:
        raise InvalidInput(f"{where}probetype", f"{ptype!r} is unknown; allowed: "
                           f"{', '.join(PROBE_TYPES)}")
    no_port = ptype in ("ping", "none")
    port = _int(svc, "probeport", where, 0, 0, 0 if no_port else 65535,
                allowed="0 (no port) for ping and none" if no_port
                else "1..65535, or 0 for each endpoint's target port")
    probe = RuleProbe(
        ptype=ptype, port=port, req=_str(svc, "probereq", where),
        resp=_str(svc, "proberesp", where),
        period_s=_int(svc, "probeTimeout", where, 0, 0, MAX_PROBE_PERIOD_S,
                      allowed=f"1..{MAX_PROBE_PERIOD_S} s between probes, or 0 for "
                      f"{DEFAULT_PROBE_PERIOD_S} s") or DEFAULT_PROBE_PERIOD_S,
        retries=_int(svc, "probeRetries", where, 0, 0, MAX_PROBE_RETRIES,
                     allowed=f"1..{MAX_PROBE_RETRIES}, or 0 for {DEFAULT_PROBE_RETRIES}")
        or DEFAULT_PROBE_RETRIES,
    )
    # The probe engine's own rules (request/response per type...), checked now
    # rather than when the first endpoint is probed.
    from .health import ProbeSpec, attempt_timeout, validate

    try:
        validate(ProbeSpec(host="198.18.0.1", ptype=ptype, port=port or (0 if no_port else 1),
                           req=probe.req, resp=probe.resp, interval_s=probe.period_s,
                           timeout_s=attempt_timeout(probe.period_s), retries=probe.retries))
    except ValueError as exc:
        field_name, _, why = str(exc).partition(":")
        names = {"req": "probereq", "resp": "proberesp", "port": "probeport",
                 "retries": "probeRetries", "interval_s": "probeTimeout"}
        raise InvalidInput(f"{where}{names.get(field_name.strip(), field_name.strip())}",
                           why.strip()) from None
    return probe


def parse_sources(raw: Any) -> tuple[str, ...]:
    """allowedSources: [{"prefix": "198.18.0.0/16"}, ...] -> normalised CIDRs."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidInput("allowedSources", f"{type(raw).__name__} is not a list")
    prefixes: list[str] = []
    for i, item in enumerate(raw):
        value = item.get("prefix") if isinstance(item, dict) else None
        where = f"allowedSources[{i}].prefix"
        if not isinstance(value, str):
            raise InvalidInput(where, f"{value!r} is missing or not a string; allowed: an "
                               "IPv4 prefix such as 198.18.0.0/16")
        try:
            net = ipaddress.ip_network(value if "/" in value else f"{value}/32")
        except ValueError as exc:
            raise InvalidInput(where, f"{value!r} is not a valid prefix ({exc})") from None
        if net.version != 4:
            raise InvalidInput(where, f"{value!r}: IPv6 is not supported by this datapath yet")
        if str(net) not in prefixes:
            prefixes.append(str(net))
    return tuple(prefixes)


def parse_endpoints(raw: Any, default_port: int, where: str = "endpoints") -> list[Endpoint]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidInput(where, f"{type(raw).__name__} is not a list of endpoints")
    if len(raw) > LB_MAX_ENDPOINTS:
        raise InvalidInput(where, f"{len(raw)} endpoints; the datapath holds at most "
                           f"{LB_MAX_ENDPOINTS} per rule")
    endpoints: list[Endpoint] = []
    seen: set[tuple[str, int]] = set()
    for i, item in enumerate(raw):
        at = f"{where}[{i}]."
        if not isinstance(item, dict):
            raise InvalidInput(f"{where}[{i}]", f"{item!r} is not an object")
        ip = _unicast_ipv4(item, "endpointIP", at, "an endpoint")
        port = _int(item, "targetPort", at, default_port, 0, 65535,
                    allowed="1..65535, or 0 to keep the port the client used")
        weight = _int(item, "weight", at, 1, 1, 255)
        ep = Endpoint(ip, port, weight)
        if ep.ident in seen:
            raise InvalidInput(f"{where}[{i}]", f"{ip}:{port} is listed twice")
        seen.add(ep.ident)
        endpoints.append(ep)
    return endpoints


def parse_lb_entry(body: Any) -> tuple[LbRule, int]:
    """Validate a LoadbalanceEntry; returns the rule and its `oper`."""
    if not isinstance(body, dict):
        raise InvalidInput("body", f"{type(body).__name__} is not a JSON object")
    body = _lower_keys(body)
    svc = body.get("servicearguments")
    if not isinstance(svc, dict):
        raise InvalidInput("serviceArguments", "is missing or not an object")
    where = "serviceArguments."
    protocol = svc.get("protocol", "tcp")
    if not isinstance(protocol, str) or protocol.lower() not in ("tcp", "udp", "sctp", "icmp"):
        raise InvalidInput(f"{where}protocol", f"{protocol!r} is unknown; "
                           "allowed: tcp, udp, sctp, icmp")
    protocol = protocol.lower()
    if protocol not in SUPPORTED_PROTOCOLS:
        raise InvalidInput(f"{where}protocol", f"{protocol!r} is not supported by this "
                           f"datapath yet; supported: {', '.join(SUPPORTED_PROTOCOLS)}")
    external_ip = _unicast_ipv4(svc, "externalIP", where, "a service")
    if protocol == "icmp":
        port = _int(svc, "port", where, 0, 0, 0, allowed="0 (icmp rules have no port)")
        port_max = port
    else:
        if "port" not in svc:
            raise InvalidInput(f"{where}port", "is missing; allowed: 1..65535")
        port = _int(svc, "port", where, 0, 1, 65535)
        port_max = _int(svc, "portMax", where, 0, 0, 65535)
        if port_max == 0:
            port_max = port
        if port_max < port:
            raise InvalidInput(f"{where}portMax", f"{port_max} is below port {port}; "
                               f"allowed: {port}..65535 or 0 for a single port")
    timeout = _int(svc, "inactiveTimeOut", where, 0, 0, MAX_TIMEOUT_S,
                   allowed=f"0 (protocol default) .. {MAX_TIMEOUT_S} s")
    _refuse_unsupported(svc, body)
    mode = _known_code(svc, "mode", where, NAT_MODE_NAMES, SUPPORTED_MODES)
    private_ip = _unicast_ipv4(svc, "privateIP", where, "the source of fullnat",
                               required=False)
    if private_ip and mode != MODE_FULLNAT:
        raise InvalidInput(f"{where}privateIP", f"{private_ip!r} applies to fullnat rules "
                           f"(mode {MODE_FULLNAT}) only; this rule's mode is {mode}")
    rule = LbRule(
        key=RuleKey(external_ip, port, port_max, protocol,
                    _int(svc, "block", where, 0, 0, 2**32 - 1), ""),
        sel=_known_code(svc, "sel", where, SELECTION_NAMES, SUPPORTED_SEL),
        mode=mode,
        # Omitted values are stored as what they mean, so that posting back what
        # the API shows is the same rule.
        inactive_timeout=timeout or DEFAULT_TIMEOUTS[protocol],
        name=_str(svc, "name", where),
        monitor=_bool(svc, "monitor", where),
        managed=_bool(svc, "managed", where),
        security=_known_code(svc, "security", where, SECURITY_NAMES, SUPPORTED_SECURITY),
        private_ip=private_ip,
        allowed_sources=parse_sources(body.get("allowedsources")),
        probe=parse_rule_probe(svc, where, protocol),
    )
    oper = _int(svc, "oper", where, OPER_CREATE, 0, 2, allowed="0 (create/update), "
                "1 (attach endpoints), 2 (detach endpoints)")
    # A range forwards each port to the same port unless a target is given.
    default_target = port if port_max == port else 0
    endpoints = parse_endpoints(body.get("endpoints"), default_target)
    for i, ep in enumerate(endpoints):
        if ep.ip == external_ip:
            raise InvalidInput(f"endpoints[{i}].endpointIP", f"{ep.ip!r} is the rule's own "
                               "externalIP; allowed: an address behind the load balancer")
    return rule.with_endpoints(endpoints), oper


def names_service(body: Any) -> bool:
    """Whether a LoadbalanceEntry carries serviceArguments.name (any spelling)."""
    svc = _lower_keys(body).get("servicearguments") if isinstance(body, dict) else None
    return isinstance(svc, dict) and "name" in svc


def _probe_fields(rule: LbRule) -> dict[str, Any]:
    p = rule.effective_probe
    return {"probetype": p.ptype, "probeport": p.port, "probereq": p.req, "proberesp": p.resp,
            "probeTimeout": p.period_s, "probeRetries": p.retries}


def rule_to_api(rule: LbRule, endpoint_counters: dict[tuple[str, int], tuple[int, int]],
                inactive: set[tuple[str, int]] | None = None) -> dict[str, Any]:
    """The LoadbalanceEntry the API returns for a rule."""
    k = rule.key
    inactive = inactive or set()
    return {
        "serviceArguments": {
            "externalIP": k.external_ip,
            "port": k.port,
            "portMax": k.port_max if k.port_max != k.port else 0,
            "protocol": k.protocol,
            "sel": rule.sel,
            "mode": rule.mode,
            "bgp": rule.bgp,
            "monitor": rule.monitor,
            "inactiveTimeOut": rule.effective_timeout,
            "block": k.block,
            "name": rule.name,
            "host": k.host,
            "privateIP": rule.private_ip,
            "managed": rule.managed,
            "security": rule.security,
            # LoxiLB's egress SNAT rules (which kube-loxilb leaves alone when it removes
            # the rules of deleted Services); no rule of this agent is one
            "snat": False,
            **_probe_fields(rule),
        },
        "endpoints": [
            {
                "endpointIP": ep.ip,
                "targetPort": ep.target_port,
                "weight": ep.weight,
                "state": "inactive" if ep.ident in inactive else "active",
                "counter": "{}:{}".format(*endpoint_counters.get(ep.ident, (0, 0))),
            }
            for ep in rule.endpoints
        ],
        "secondaryIPs": [],
        "allowedSources": [{"prefix": p} for p in rule.allowed_sources],
    }


def rule_to_request(rule: LbRule) -> dict[str, Any]:
    """The request body that recreates a rule (the persisted form)."""
    k = rule.key
    return {
        "serviceArguments": {
            "externalIP": k.external_ip, "port": k.port,
            "portMax": k.port_max if k.port_max != k.port else 0,
            "protocol": k.protocol, "sel": rule.sel, "mode": rule.mode,
            "inactiveTimeOut": rule.inactive_timeout, "block": k.block, "name": rule.name,
            "privateIP": rule.private_ip, "monitor": rule.monitor, "managed": rule.managed,
            "security": rule.security, **_probe_fields(rule),
        },
        "endpoints": [{"endpointIP": e.ip, "targetPort": e.target_port, "weight": e.weight}
                      for e in rule.endpoints],
        "allowedSources": [{"prefix": p} for p in rule.allowed_sources],
    }
