"""Endpoint health: probe configurations (/config/endpoint), operators' host
states (/config/endpointhoststate), and the link from probe results to the
datapath's active flag of every rule endpoint that is monitored.

An endpoint of a monitored rule is probed with the rule's probe options
(default: tcp connect to its target port), unless an endpoint configuration
exists for the same host, probe type and port: then that one's interval,
retries and request are used. Equal probes are run once, whichever rules use
them. An endpoint gets new flows when its probe says ok and its host state is
green; yellow drains it (no new flows, established ones stay); red takes it
down (no new flows, established ones are reset).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

from loxicmd.api import wire
from loxicmd.names import (
    DEFAULT_PROBE_PERIOD_S,
    DEFAULT_PROBE_RETRIES,
    HOST_GREEN,
    HOST_RED,
    PROBE_TYPES,
)

from ..errors import ApiError, InvalidInput
from ..lb.model import Endpoint, LbRule
from ..lb.table import RuleRecord, RuleTable
from ..store.journal import StateStore, upgraded
from ..validate import ipv4, one_of, unicast_ipv4
from .monitor import HealthMonitor, ProbeStatus
from .spec import (
    FORMAT_1_PROBE_PERIOD_S,
    ProbeSpec,
    attempt_timeout,
    validate,
)

log = logging.getLogger("loxilbd.endpoints")

# Format 2: an omitted probeDuration means LoxiLB's 60 s; records without a format are
# older, when it meant 10 s.
RECORD_FORMAT = 2


def _format_1(body: dict[str, Any]) -> dict[str, Any]:
    if not any(str(k).lower() == "probeduration" and v for k, v in body.items()):
        return {**body, "probeDuration": FORMAT_1_PROBE_PERIOD_S}
    return body

@dataclass(frozen=True)
class EndpointConfig:
    name: str
    spec: ProbeSpec


def _name(spec: ProbeSpec) -> str:
    return f"{spec.host}_{spec.ptype}_{spec.port}"


def parse_endpoint_config(body: Any) -> EndpointConfig:
    """POST /config/endpoint: a flat object, `hostName` required; probe type ping, a 60 s
    period and 2 retries when not given (LoxiLB's defaults)."""
    b = wire.check("EndPoint", body, unknown="ignore")
    host = unicast_ipv4(b["hostName"], "hostName", "an endpoint")
    ptype = b.get("probeType") or "ping"
    one_of(ptype, "probeType", PROBE_TYPES, "a probe type this agent carries out")
    period = b.get("probeDuration") or DEFAULT_PROBE_PERIOD_S
    spec = ProbeSpec(
        host=host, ptype=ptype, port=b.get("probePort", 0), req=b.get("probeReq", ""),
        resp=b.get("probeResp", ""), interval_s=float(period),
        timeout_s=attempt_timeout(period),
        retries=b.get("inactiveReTries") or DEFAULT_PROBE_RETRIES,
    )
    try:
        validate(spec)
    except InvalidInput as exc:
        api_field = {"port": "probePort", "ptype": "probeType", "interval_s": "probeDuration",
                     "retries": "inactiveReTries", "req": "probeReq", "resp": "probeResp"}
        raise InvalidInput(api_field.get(exc.field, exc.field), exc.why) from None
    return EndpointConfig(b.get("name") or _name(spec), spec)


def config_to_api(cfg: EndpointConfig, status: ProbeStatus | None,
                  rule_probe: bool = False) -> dict[str, Any]:
    """The API's EndPoint; `rule_probe`: a probe only monitored rules made (it goes and
    comes with them; `save` leaves it out)."""
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}ms"

    s = cfg.spec
    return {
        "hostName": s.host, "name": cfg.name, "probeType": s.ptype, "probePort": s.port,
        "probeReq": s.req, "probeResp": s.resp, "probeDuration": int(s.interval_s),
        "inactiveReTries": s.retries,
        "minDelay": ms(status.min_delay_ms if status else None),
        "avgDelay": ms(status.avg_delay_ms if status else None),
        "maxDelay": ms(status.max_delay_ms if status else None),
        "currState": status.state if status else "ok",
        "ruleProbe": rule_probe,
    }


class EndpointTable:
    """Also the rule table's observer: it probes the endpoints of monitored rules."""

    def __init__(self, rules: RuleTable, monitor: HealthMonitor, store: StateStore) -> None:
        self.rules = rules
        self.monitor = monitor
        self.store = store
        self.lock = rules.lock  # one lock: health callbacks reach into the rule table
        self.configs: dict[str, EndpointConfig] = {}
        self.host_states: dict[str, str] = {}  # "ip:port/proto" -> green|yellow|red
        self.watch: dict[int, ProbeSpec] = {}  # endpoint slot -> its probe
        # probe -> the (rule id, endpoint) pairs it decides for
        self.watchers: dict[ProbeSpec, set[tuple[int, tuple[str, int]]]] = {}


    # -- persistence --------------------------------------------------------
    def restore(self) -> int:
        for name, rec in sorted(self.store.load().items()):
            if rec.get("kind") == "hoststate":
                self.host_states[name] = rec["state"]
                continue
            cfg = parse_endpoint_config(upgraded(rec, "body", RECORD_FORMAT, _format_1))
            self.configs[cfg.name] = cfg
            self.monitor.add(cfg.spec)
        return len(self.configs)

    # -- endpoint configurations (API) --------------------------------------
    def create(self, body: Any) -> bool:
        """Create or update (LoxiLB's way to change a probe is to create it again);
        False when an identical one was there."""
        cfg = parse_endpoint_config(body)
        with self.lock:
            previous = self.configs.get(cfg.name)
            if previous == cfg:
                return False
            try:
                self.store.put(cfg.name, {"kind": "endpoint", "format": RECORD_FORMAT,
                                          "body": body})
            except OSError as exc:
                raise ApiError(500, f"could not save state in {self.store.dir}: {exc}") from exc
            self.configs[cfg.name] = cfg
            self.monitor.add(cfg.spec, like=previous.spec if previous else
                             self._watched_like(cfg.spec))
            self._rewatch()
            if previous is not None:
                self.monitor.remove(previous.spec)
            log.info("%s endpoint probe %s", "updated" if previous else "created", cfg.name)
            return True

    def delete(self, host: str, name: str | None, ptype: str | None, port: int | None) -> int:
        with self.lock:
            doomed = [c for c in self.configs.values() if c.spec.host == host
                      and (name is None or c.name == name)
                      and (ptype is None or c.spec.ptype == ptype)
                      and (port is None or c.spec.port == port)]
            if not doomed:
                raise ApiError(404, f"no endpoint configuration for {host}"
                               + (f" named {name!r}" if name else ""))
            self.store.delete([c.name for c in doomed])
            for cfg in doomed:
                del self.configs[cfg.name]
                self.monitor.remove(cfg.spec)
            self._rewatch()
            return len(doomed)

    def _watched_like(self, spec: ProbeSpec) -> ProbeSpec | None:
        """The probe monitored rules run now for the endpoint `spec` probes (the one a new
        configuration takes over from)."""
        for watched in self.watchers:
            if (watched.host, watched.ptype, watched.port) == (spec.host, spec.ptype, spec.port):
                return watched
        return None

    def _rewatch(self) -> None:
        """Endpoint probes changed: monitored rules' endpoints follow the probe that now
        applies to them (an endpoint configuration's, else the rule's own)."""
        for rec in list(self.rules.records.values()):
            if rec.rule.monitor:
                self.rule_changed(rec, rec)
                for ep in rec.rule.endpoints:
                    self._refresh(rec.slots[ep.ident], rec, ep)

    def api_list(self) -> list[dict[str, Any]]:
        with self.lock:
            shown = {cfg.spec for cfg in self.configs.values()}
            rows = [config_to_api(cfg, self.monitor.status(cfg.spec))
                    for cfg in self.configs.values()]
            for spec in sorted(set(self.watch.values()) - shown, key=_name):
                rows.append(config_to_api(EndpointConfig(_name(spec), spec),
                                          self.monitor.status(spec), rule_probe=True))
        return sorted(rows, key=lambda r: (int(ipaddress.ip_address(r["hostName"])), r["name"]))

    # -- host states ----------------------------------------------------------
    def set_host_state(self, body: Any) -> None:
        b = wire.check("EndPointHostState", body, unknown="ignore")
        host = ipv4(b["hostName"], "hostName")
        port = b.get("epPort", 0)
        proto = b.get("epProto") or "tcp"
        state = b["state"]
        key = f"{host}:{port}/{proto}"
        with self.lock:
            previous = self.host_states.get(key, HOST_GREEN)
            self.store.put(key, {"kind": "hoststate", "state": state})
            self.host_states[key] = state
            for rec in list(self.rules.records.values()):
                if rec.rule.key.protocol != proto:
                    continue
                for ep in rec.rule.endpoints:
                    if ep.ip == host and port in (0, ep.target_port):
                        self._refresh(rec.slots[ep.ident], rec, ep,
                                      end_flows=state == HOST_RED and previous != HOST_RED)

    def _host_state(self, rec: RuleRecord, ep: Endpoint) -> str:
        proto = rec.rule.key.protocol
        for key in (f"{ep.ip}:{ep.target_port}/{proto}", f"{ep.ip}:0/{proto}"):
            if key in self.host_states:
                return self.host_states[key]
        return HOST_GREEN

    # -- probes of monitored rules -------------------------------------------
    def _spec_for(self, rule: LbRule, ep: Endpoint) -> ProbeSpec:
        p = rule.effective_probe
        port = 0 if p.ptype in ("ping", "none") else (p.port or ep.target_port)
        for cfg in self.configs.values():
            s = cfg.spec
            if (s.host, s.ptype, s.port) == (ep.ip, p.ptype, port):
                return s
        return ProbeSpec(host=ep.ip, ptype=p.ptype, port=port, req=p.req, resp=p.resp,
                         interval_s=float(p.period_s), timeout_s=attempt_timeout(p.period_s),
                         retries=p.retries)

    def _wanted_active(self, rec: RuleRecord, ep: Endpoint, healthy: bool | None) -> bool:
        if self._host_state(rec, ep) != HOST_GREEN:
            return False
        if healthy is None:
            spec = self.watch.get(rec.slots[ep.ident])
            status = self.monitor.status(spec) if spec is not None else None
            healthy = status is None or status.state == "ok"
        return healthy

    def _refresh(self, slot: int, rec: RuleRecord, ep: Endpoint, end_flows: bool = False,
                 healthy: bool | None = None) -> None:
        self.rules.set_slot_active(slot, self._wanted_active(rec, ep, healthy),
                                   end_flows=end_flows)

    def initially_inactive(self, record: RuleRecord) -> set[int]:
        down = set()
        for ep in record.rule.endpoints:
            slot = record.slots[ep.ident]
            if self._host_state(record, ep) != HOST_GREEN:
                down.add(slot)
            elif record.rule.monitor:
                status = self.monitor.status(self._spec_for(record.rule, ep))
                if status is not None and status.state != "ok":
                    down.add(slot)
        return down

    def rule_changed(self, old: RuleRecord | None, new: RuleRecord | None) -> None:
        dropped: dict[int, ProbeSpec] = {}  # slot -> the probe it had
        for ident, slot in (old.slots.items() if old else ()):
            spec = self.watch.pop(slot, None)
            if spec is not None:
                self.watchers[spec].discard((old.rule_id, ident))
                dropped[slot] = spec
        if new is not None and new.rule.monitor:
            for ep in new.rule.endpoints:
                slot = new.slots[ep.ident]
                spec = self._spec_for(new.rule, ep)
                self.watch[slot] = spec
                self.watchers.setdefault(spec, set()).add((new.rule_id, ep.ident))
                # a new probe of the same endpoint starts where the old one was
                self.monitor.add(spec, like=dropped.get(slot))
        # Released after the new ones were added: a probe the rule keeps never
        # drops to zero references in between (which would forget its state).
        for spec in dropped.values():
            self.monitor.remove(spec)
            if not self.watchers.get(spec):
                self.watchers.pop(spec, None)

    def on_health_change(self, spec: ProbeSpec, healthy: bool) -> None:
        """From the monitor's thread: flip every endpoint that uses this probe."""
        log.info("endpoint %s is %s", _name(spec), "ok" if healthy else "nok")
        with self.lock:
            for rule_id, ident in list(self.watchers.get(spec, ())):
                rec = self.rules.by_id.get(rule_id)
                if rec is not None and ident in rec.slots:
                    ep = next(e for e in rec.rule.endpoints if e.ident == ident)
                    self._refresh(rec.slots[ident], rec, ep, healthy=healthy)
