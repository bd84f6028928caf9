"""Load-balancer rules as the agent keeps them, and the rule a LoadbalanceEntry asks for.

The wire form (field names, types, ranges, the checks any reader makes) is
:mod:`loxicmd.api.lbentry`; here is what this agent accepts on top of it (what its
datapath carries, addresses that can carry traffic) and what it fills in for omitted values.
Validation names the field, the value and what is allowed, and happens before anything
changes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any

from datapath.layouts import LB_MAX_ENDPOINTS, NatMode, Sel
from loxicmd.api.lbentry import (
    LoadbalanceEntry,
    LoadBalancerEndpoint,
    ServiceArguments,
    with_endpoint_states,
)
from loxicmd.names import (
    DEFAULT_PROBE_PERIOD_S,
    DEFAULT_PROBE_RETRIES,
    DEFAULT_TIMEOUTS,
    LOXILBD_PROTOCOLS,
    NAT_MODE_NAMES,
    PROBE_TYPES,
    SELECTION_NAMES,
)

from ..errors import InvalidInput
from ..health.spec import (
    ProbeSpec,
    attempt_timeout,
    validate,
)
from ..validate import ipv4_prefix, unicast_ipv4

# What this datapath implements today; the rest of the API's codes are known
# (and named in errors) but refused rather than silently treated as another.
SUPPORTED_PROTOCOLS = LOXILBD_PROTOCOLS
SUPPORTED_SEL = tuple(int(s) for s in Sel)
SUPPORTED_MODES = tuple(int(m) for m in NatMode)
PERSIST_LIFETIME_S = 3 * 3600


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
    mark: int  # the API calls it `block`
    host: str

    def describe(self) -> str:
        ports = str(self.port) if self.port_max == self.port else f"{self.port}-{self.port_max}"
        mark = f" mark {self.mark}" if self.mark else ""
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
        """The probe monitoring runs (no type given: the protocol's)."""
        probe = self.probe or RuleProbe()
        return replace(probe, ptype=probe.ptype or DEFAULT_PROBE_TYPES[self.key.protocol])

    def with_endpoints(self, endpoints: list[Endpoint]) -> LbRule:
        return replace(self, endpoints=tuple(sorted(endpoints, key=Endpoint.sort_key)))


# A monitored rule probes its endpoints as its protocol says unless told otherwise (LoxiLB).
DEFAULT_PROBE_TYPES = {"tcp": "tcp", "udp": "udp", "sctp": "sctp", "icmp": "ping"}
SECURITY_NAMES = {0: "plain", 1: "https", 2: "e2ehttps"}


@dataclass(frozen=True)
class RuleProbe:
    """How a rule's endpoints are probed when it is monitored (port 0: each endpoint's
    target port). Kept, and shown, whether monitoring is on or not."""

    ptype: str = ""  # as given ("": the rule protocol's, see LbRule.effective_probe)
    port: int = 0
    req: str = ""
    resp: str = ""
    period_s: int = DEFAULT_PROBE_PERIOD_S
    retries: int = DEFAULT_PROBE_RETRIES


def _supported(value: int, where: str, names: dict[int, str], supported: tuple[int, ...]
               ) -> int:
    if value not in supported:
        ok = ", ".join(f"{c} ({names[c]})" for c in supported)
        raise InvalidInput(where, f"{value} ({names[value]}) is not supported by this "
                           f"datapath yet; supported: {ok}")
    return value


def _refuse_unsupported(sa: ServiceArguments, entry: LoadbalanceEntry) -> None:
    """Options the API defines but this agent does not carry out yet: refuse them when
    set rather than accept and ignore them."""
    for key, value in (("proxyprotocolv2", sa.proxyprotocolv2), ("egress", sa.egress),
                       ("snat", sa.snat)):
        if value:
            raise InvalidInput(f"serviceArguments.{key}", "is not supported by this agent "
                               "yet; allowed: false")
    if sa.host:
        raise InvalidInput("serviceArguments.host", f"{sa.host!r} is not supported by this "
                           "agent yet; allowed: empty")
    if entry.secondary_ips:
        raise InvalidInput("secondaryIPs", "apply to sctp rules, which this datapath does not "
                           "carry yet; allowed: empty")


def rule_probe(sa: ServiceArguments, protocol: str) -> RuleProbe:
    """The probe options of a rule (LoxiLB's clients send them with monitor off too);
    omitted ones take LoxiLB's defaults."""
    where = "serviceArguments."
    ptype = sa.probetype or DEFAULT_PROBE_TYPES[protocol]
    if ptype not in PROBE_TYPES:
        raise InvalidInput(f"{where}probetype", f"{ptype!r} is not supported by this agent; "
                           f"allowed: {', '.join(PROBE_TYPES)}")
    # kept as given: a type shown back must not turn monitoring on by itself
    probe = RuleProbe(ptype=sa.probetype, port=sa.probeport, req=sa.probereq,
                      resp=sa.proberesp,
                      period_s=sa.probe_timeout or DEFAULT_PROBE_PERIOD_S,
                      retries=sa.probe_retries or DEFAULT_PROBE_RETRIES)
    # The probe engine's own rules (port per type, request/response per type...),
    # checked now rather than when the first endpoint is probed.
    no_port = ptype in ("ping", "none")
    try:
        validate(ProbeSpec(host="198.18.0.1", ptype=ptype,
                           port=probe.port or (0 if no_port else 1), req=probe.req,
                           resp=probe.resp, interval_s=probe.period_s,
                           timeout_s=attempt_timeout(probe.period_s), retries=probe.retries))
    except InvalidInput as exc:
        names = {"port": "probeport", "req": "probereq", "resp": "proberesp",
                 "retries": "probeRetries", "interval_s": "probeTimeout"}
        raise InvalidInput(f"{where}{names.get(exc.field, exc.field)}", exc.why) from None
    return probe


def parse_lb_entry(body: Any) -> tuple[LbRule, int, bool]:
    """A LoadbalanceEntry request as the rule it asks for: the rule, its `oper`, and
    whether it names the service (an update that does not keeps the rule's name)."""
    entry = LoadbalanceEntry.parse(body)
    sa = entry.service_arguments
    where = "serviceArguments."
    protocol = sa.protocol
    if protocol not in SUPPORTED_PROTOCOLS:
        raise InvalidInput(f"{where}protocol", f"{protocol!r} is not supported by this "
                           f"datapath yet; supported: {', '.join(SUPPORTED_PROTOCOLS)}")
    external_ip = unicast_ipv4(sa.external_ip, f"{where}externalIP", "a service")
    port_max = sa.port_max or sa.port
    _refuse_unsupported(sa, entry)
    mode = _supported(sa.mode, f"{where}mode", NAT_MODE_NAMES, SUPPORTED_MODES)
    private_ip = (unicast_ipv4(sa.private_ip, f"{where}privateIP", "the source of fullnat")
                  if sa.private_ip else "")
    if private_ip and mode != NatMode.FULLNAT:
        raise InvalidInput(f"{where}privateIP", f"{private_ip!r} applies to fullnat rules "
                           f"(mode {int(NatMode.FULLNAT)}) only; this rule's mode is {mode}")
    if sa.security != 0:
        raise InvalidInput(f"{where}security", f"{sa.security} ({SECURITY_NAMES[sa.security]}) "
                           "is not supported by this agent yet; supported: 0 (plain)")
    if len(entry.endpoints) > LB_MAX_ENDPOINTS:
        raise InvalidInput("endpoints", f"{len(entry.endpoints)} endpoints; the datapath "
                           f"holds at most {LB_MAX_ENDPOINTS} per rule")
    # A range forwards each port to the same port unless a target is given.
    default_target = sa.port if port_max == sa.port else 0
    endpoints = [_endpoint(ep, i, default_target, external_ip)
                 for i, ep in enumerate(entry.endpoints)]
    seen: set[tuple[str, int]] = set()  # twice, perhaps only once target ports are filled
    for i, ep in enumerate(endpoints):
        if ep.ident in seen:
            raise InvalidInput(f"endpoints[{i}]", f"{ep.ip}:{ep.target_port} is listed twice")
        seen.add(ep.ident)
    rule = LbRule(
        key=RuleKey(external_ip, sa.port, port_max, protocol, sa.block, ""),
        sel=_supported(sa.sel, f"{where}sel", SELECTION_NAMES, SUPPORTED_SEL),
        mode=mode,
        # Omitted values are stored as what they mean, so that posting back what
        # the API shows is the same rule.
        inactive_timeout=sa.inactive_time_out or DEFAULT_TIMEOUTS[protocol],
        name=sa.name or "",
        bgp=sa.bgp,
        # As in LoxiLB: naming a probe type other than none asks for monitoring
        monitor=sa.monitor or sa.probetype not in ("", "none"),
        managed=sa.managed,
        security=sa.security,
        private_ip=private_ip,
        allowed_sources=tuple(ipv4_prefix(p, f"allowedSources[{i}].prefix")
                              for i, p in enumerate(entry.allowed_sources)),
        probe=rule_probe(sa, protocol),
    )
    probe = rule.effective_probe
    if (rule.monitor and not probe.port and probe.ptype not in ("ping", "none")
            and any(ep.target_port == 0 for ep in endpoints)):
        raise InvalidInput(f"{where}probeport", "0 probes each endpoint's target port, and an "
                           "endpoint of this rule keeps the client's port (targetPort 0), so "
                           f"{probe.ptype} probes would have no port; allowed: 1..65535")
    return rule.with_endpoints(endpoints), sa.oper, sa.name is not None


def _endpoint(ep: LoadBalancerEndpoint, i: int, default_target: int, vip: str) -> Endpoint:
    ip = unicast_ipv4(ep.endpoint_ip, f"endpoints[{i}].endpointIP", "an endpoint")
    if ip == vip:
        raise InvalidInput(f"endpoints[{i}].endpointIP", f"{ip!r} is the rule's own "
                           "externalIP; allowed: an address behind the load balancer")
    target = default_target if ep.target_port is None else ep.target_port
    return Endpoint(ip, target, ep.weight)


def rule_entry(rule: LbRule) -> LoadbalanceEntry:
    """The LoadbalanceEntry of a rule, without endpoint states and counters (the API adds
    those: rule_to_api)."""
    k, p = rule.key, rule.effective_probe
    sa = ServiceArguments(
        external_ip=k.external_ip, port=k.port, port_max=k.port_max if k.port_max != k.port
        else 0, protocol=k.protocol, private_ip=rule.private_ip, sel=rule.sel,
        mode=rule.mode, bgp=rule.bgp, monitor=rule.monitor,
        probetype=rule.probe.ptype if rule.probe else "",
        probeport=p.port, probereq=p.req, proberesp=p.resp, probe_timeout=p.period_s,
        probe_retries=p.retries, managed=rule.managed, security=rule.security,
        inactive_time_out=rule.effective_timeout, block=k.mark, name=rule.name, host=k.host,
        # LoxiLB's egress SNAT rules (which kube-loxilb leaves alone when it removes the
        # rules of deleted Services); no rule of this agent is one
        snat=False,
    )
    endpoints = [LoadBalancerEndpoint(ep.ip, ep.target_port, ep.weight)
                 for ep in rule.endpoints]
    return LoadbalanceEntry(sa, endpoints, [], list(rule.allowed_sources))


def shown_form(rule: LbRule) -> dict[str, Any]:
    """What the API shows of a rule but its endpoints' states and counters (rules are
    immutable: the rule table keeps this with the rule, so a listing builds it once)."""
    return rule_entry(rule).to_json(shown=True)


def rule_to_api(rule: LbRule, counters: dict[tuple[str, int], tuple[int, int]],
                inactive: set[tuple[str, int]] | None = None,
                shown: dict[str, Any] | None = None) -> dict[str, Any]:
    """The LoadbalanceEntry the API returns for a rule (`shown`: its shown_form, when
    kept)."""
    inactive = inactive or set()
    return with_endpoint_states(shown or shown_form(rule), [
        ("inactive" if ep.ident in inactive else "active",
         "{}:{}".format(*counters.get(ep.ident, (0, 0)))) for ep in rule.endpoints])


def rule_to_request(rule: LbRule) -> dict[str, Any]:
    """The request body that recreates a rule (the persisted form)."""
    return rule_entry(rule).to_json()
