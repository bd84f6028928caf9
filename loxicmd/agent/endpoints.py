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

from .health import HealthMonitor, ProbeSpec, ProbeStatus, attempt_timeout, validate
from .model import (
    DEFAULT_PROBE_PERIOD_S,
    DEFAULT_PROBE_RETRIES,
    MAX_PROBE_PERIOD_S,
    PROBE_TYPES,
    Endpoint,
    InvalidInput,
    LbRule,
    _int,
    _lower_keys,
    _str,
)
from .rules import ApiError, RuleRecord, RuleTable
from .store import StateStore

log = logging.getLogger("loxilbd.endpoints")

HOST_STATES = ("green", "yellow", "red")


@dataclass(frozen=True)
class EndpointConfig:
    name: str
    spec: ProbeSpec


def _name(spec: ProbeSpec) -> str:
    return f"{spec.host}_{spec.ptype}_{spec.port}"


def parse_endpoint_config(body: Any) -> EndpointConfig:
    """POST /config/endpoint: a flat object, `hostName` required."""
    if not isinstance(body, dict):
        raise InvalidInput("body", f"{type(body).__name__} is not a JSON object")
    b = _lower_keys(body)
    host = _str(b, "hostName", "")
    try:
        if ipaddress.ip_address(host).version != 4:
            raise ValueError
    except ValueError:
        raise InvalidInput("hostName", f"{host!r} is not an IPv4 address") from None
    ptype = _str(b, "probeType", "") or "ping"
    if ptype not in PROBE_TYPES:
        raise InvalidInput("probeType", f"{ptype!r} is unknown; allowed: {', '.join(PROBE_TYPES)}")
    period = _int(b, "probeDuration", "", 0, 0, MAX_PROBE_PERIOD_S,
                  allowed=f"1..{MAX_PROBE_PERIOD_S} s, or 0 for {DEFAULT_PROBE_PERIOD_S} s"
                  ) or DEFAULT_PROBE_PERIOD_S
    spec = ProbeSpec(
        host=host, ptype=ptype,
        port=_int(b, "probePort", "", 0, 0, 65535),
        req=_str(b, "probeReq", ""), resp=_str(b, "probeResp", ""),
        interval_s=float(period), timeout_s=attempt_timeout(period),
        retries=_int(b, "inactiveReTries", "", 0, 0, 100,
                     allowed=f"1..100, or 0 for {DEFAULT_PROBE_RETRIES}")
        or DEFAULT_PROBE_RETRIES,
    )
    try:
        validate(spec)
    except ValueError as exc:
        field, _, why = str(exc).partition(":")
        api_field = {"port": "probePort", "ptype": "probeType", "interval_s": "probeDuration",
                     "retries": "inactiveReTries", "req": "probeReq", "resp": "probeResp"}
        raise InvalidInput(api_field.get(field.strip(), field.strip()), why.strip()) from None
    return EndpointConfig(_str(b, "name", "") or _name(spec), spec)


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
        rules.observer = self

    # -- persistence --------------------------------------------------------
    def restore(self) -> int:
        for name, rec in sorted(self.store.load().items()):
            if rec.get("kind") == "hoststate":
                self.host_states[name] = rec["state"]
                continue
            cfg = parse_endpoint_config(rec["body"])
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
                self.store.put(cfg.name, {"kind": "endpoint", "body": body})
            except OSError as exc:
                raise ApiError(500, f"could not save state in {self.store.dir}: {exc}") from exc
            self.configs[cfg.name] = cfg
            self.monitor.add(cfg.spec)
            if previous is not None:
                self.monitor.remove(previous.spec)
            self._rewatch()
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
        if not isinstance(body, dict):
            raise InvalidInput("body", "is not a JSON object")
        b = _lower_keys(body)
        host = _str(b, "hostName", "")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise InvalidInput("hostName", f"{host!r} is not an IPv4 address") from None
        port = _int(b, "epPort", "", 0, 0, 65535, allowed="1..65535, or 0 for every port")
        proto = (_str(b, "epProto", "") or "tcp").lower()
        if proto not in ("tcp", "udp", "icmp", "sctp"):
            raise InvalidInput("epProto", f"{proto!r} is unknown; allowed: tcp, udp, icmp, sctp")
        state = _str(b, "state", "").lower()
        if state not in HOST_STATES:
            raise InvalidInput("state", f"{state!r} is unknown; allowed: green (follow probes), "
                               "yellow (drain: no new flows), red (down: flows reset)")
        key = f"{host}:{port}/{proto}"
        with self.lock:
            previous = self.host_states.get(key, "green")
            self.store.put(key, {"kind": "hoststate", "state": state})
            self.host_states[key] = state
            for rec in list(self.rules.records.values()):
                if rec.rule.key.protocol != proto:
                    continue
                for ep in rec.rule.endpoints:
                    if ep.ip == host and port in (0, ep.target_port):
                        self._refresh(rec.slots[ep.ident], rec, ep,
                                      end_flows=state == "red" and previous != "red")

    def _host_state(self, rec: RuleRecord, ep: Endpoint) -> str:
        proto = rec.rule.key.protocol
        for key in (f"{ep.ip}:{ep.target_port}/{proto}", f"{ep.ip}:0/{proto}"):
            if key in self.host_states:
                return self.host_states[key]
        return "green"

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
        if self._host_state(rec, ep) != "green":
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
            if self._host_state(record, ep) != "green":
                down.add(slot)
            elif record.rule.monitor:
                status = self.monitor.status(self._spec_for(record.rule, ep))
                if status is not None and status.state != "ok":
                    down.add(slot)
        return down

    def rule_changed(self, old: RuleRecord | None, new: RuleRecord | None) -> None:
        dropped = []
        for ident, slot in (old.slots.items() if old else ()):
            spec = self.watch.pop(slot, None)
            if spec is not None:
                self.watchers[spec].discard((old.rule_id, ident))
                dropped.append(spec)
        if new is not None and new.rule.monitor:
            for ep in new.rule.endpoints:
                spec = self._spec_for(new.rule, ep)
                self.watch[new.slots[ep.ident]] = spec
                self.watchers.setdefault(spec, set()).add((new.rule_id, ep.ident))
                self.monitor.add(spec)
        # Released after the new ones were added: a probe the rule keeps never
        # drops to zero references in between (which would forget its state).
        for spec in dropped:
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
