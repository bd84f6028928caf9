"""The rule table: the agent's source of truth for load-balancer rules.

Every change is validated, programmed into the datapath and persisted as one
step under a lock; if programming or saving fails the previous rule is put
back, so an error changes nothing.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from datapath.layouts import LB_MAX_ENDPOINTS, LB_MAX_RULES

from .dataplane import Dataplane, FlowView
from .model import (
    OPER_ATTACH,
    OPER_CREATE,
    Endpoint,
    InvalidInput,
    LbRule,
    RuleKey,
    parse_lb_entry,
    rule_to_api,
    rule_to_request,
)
from .store import StateStore

log = logging.getLogger("loxilbd.rules")

MAX_SERVICE_KEYS = LB_MAX_RULES * 4  # lb_services capacity (port ranges use one key per port)


class ApiError(Exception):
    def __init__(self, status: int, result: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.result = result
        self.message = message


@dataclass
class RuleRecord:
    rule_id: int
    rule: LbRule
    slots: dict[tuple[str, int], int] = field(default_factory=dict)  # endpoint -> counter slot


def assign_slots(endpoints: tuple[Endpoint, ...], old: dict[tuple[str, int], int]
                 ) -> tuple[dict[tuple[str, int], int], list[int]]:
    """Counter slots: endpoints that stay keep theirs; new ones take free ones.
    Returns the mapping and the slots newly handed out."""
    slots = {ep.ident: old[ep.ident] for ep in endpoints if ep.ident in old}
    free = iter(sorted(set(range(LB_MAX_ENDPOINTS)) - set(slots.values())))
    fresh = []
    for ep in endpoints:
        if ep.ident not in slots:
            slots[ep.ident] = next(free)
            fresh.append(slots[ep.ident])
    return slots, fresh


class RuleTable:
    def __init__(self, dataplane: Dataplane, store: StateStore) -> None:
        self.dp = dataplane
        self.store = store
        self.records: dict[RuleKey, RuleRecord] = {}
        self.lock = threading.RLock()

    # -- persistence --------------------------------------------------------
    def _snapshot(self) -> dict[str, Any]:
        return {"rules": [
            {"ruleId": r.rule_id, "entry": rule_to_request(r.rule),
             "slots": [[ip, port, slot] for (ip, port), slot in sorted(r.slots.items())]}
            for r in self.records.values()
        ]}

    def restore(self) -> int:
        """Load the state directory and program every rule again. Counter
        slots and rule ids are kept, so pinned counters stay with their rule."""
        state = self.store.load()
        with self.lock:
            for i, item in enumerate(state.get("rules", [])):
                try:
                    rule, _ = parse_lb_entry(item["entry"])
                    rule_id = int(item["ruleId"])
                    slots = {(ip, int(port)): int(slot) for ip, port, slot in item["slots"]}
                except (InvalidInput, KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"{self.store.path}: rules[{i}] is invalid: {exc}") from None
                if {ep.ident for ep in rule.endpoints} != set(slots):
                    raise ValueError(f"{self.store.path}: rules[{i}] slots do not match endpoints")
                self.dp.program_rule(rule_id, rule, slots)
                self.records[rule.key] = RuleRecord(rule_id, rule, slots)
            stale = self.dp.remove_stale_services({r.rule_id for r in self.records.values()})
        if stale:
            log.info("removed %d service keys of rules deleted while the agent was away", stale)
        return len(self.records)

    def _commit(self) -> None:
        try:
            self.store.save(self._snapshot())
        except OSError as exc:
            raise ApiError(500, "state-save-failed",
                           f"could not save state to {self.store.path}: {exc}") from exc

    # -- changes ------------------------------------------------------------
    def _free_rule_id(self) -> int:
        used = {r.rule_id for r in self.records.values()}
        for rule_id in range(LB_MAX_RULES):
            if rule_id not in used:
                return rule_id
        raise ApiError(403, "lbrule-capacity",
                       f"the datapath holds at most {LB_MAX_RULES} rules; delete one first")

    def _check_key_capacity(self, rule: LbRule, replacing: LbRule | None) -> None:
        used = sum(r.rule.key.port_max - r.rule.key.port + 1 for r in self.records.values())
        if replacing is not None:
            used -= replacing.key.port_max - replacing.key.port + 1
        need = rule.key.port_max - rule.key.port + 1
        if used + need > MAX_SERVICE_KEYS:
            raise ApiError(403, "lbrule-capacity",
                           f"serviceArguments.portMax: the range needs {need} service entries, "
                           f"{MAX_SERVICE_KEYS - used} of {MAX_SERVICE_KEYS} are free")

    def _overlapping(self, rule: LbRule) -> RuleRecord | None:
        k = rule.key
        for other in self.records.values():
            o = other.rule.key
            if (o != k and o.external_ip == k.external_ip and o.protocol == k.protocol
                    and o.block == k.block and o.host == k.host
                    and o.port <= k.port_max and k.port <= o.port_max):
                return other
        return None

    def apply(self, body: Any) -> None:
        rule, oper = parse_lb_entry(body)
        with self.lock:
            current = self.records.get(rule.key)
            if oper != OPER_CREATE:
                if current is None:
                    verb = "attach endpoints to" if oper == OPER_ATTACH else "detach endpoints from"
                raise ApiError(404, "lbrule-not-found", f"no rule {rule.key.describe()} to {verb}")
                rule = self._merge_endpoints(current.rule, rule, oper)
            elif current is not None and current.rule == rule:
                raise ApiError(409, "lbrule-exists", f"rule {rule.key.describe()} already exists "
                               "with the same options and endpoints")
            clash = self._overlapping(rule)
            if clash is not None:
                raise ApiError(409, "lbrule-overlaps",
                               f"ports of {rule.key.describe()} overlap rule "
                               f"{clash.rule.key.describe()}")
            self._check_key_capacity(rule, current.rule if current else None)
            self._install(rule, current)

    @staticmethod
    def _merge_endpoints(current: LbRule, change: LbRule, oper: int) -> LbRule:
        have = {ep.ident: ep for ep in current.endpoints}
        if oper == OPER_ATTACH:
            for ep in change.endpoints:
                have[ep.ident] = ep
            if len(have) > LB_MAX_ENDPOINTS:
                raise InvalidInput("endpoints", f"attaching makes {len(have)} endpoints; the "
                                   f"datapath holds at most {LB_MAX_ENDPOINTS} per rule")
        else:
            missing = [f"{ip}:{port}" for ip, port in (e.ident for e in change.endpoints)
                       if (ip, port) not in have]
            if missing:
                raise ApiError(404, "endpoint-not-found",
                               f"endpoints: {', '.join(missing)} not in rule "
                               f"{current.key.describe()}")
            for ep in change.endpoints:
                del have[ep.ident]
        return current.with_endpoints(list(have.values()))

    def _install(self, rule: LbRule, current: RuleRecord | None) -> None:
        if current is None:
            record = RuleRecord(self._free_rule_id(), rule)
            self.dp.reset_rule_state(record.rule_id)
        else:
            record = RuleRecord(current.rule_id, rule, dict(current.slots))
        record.slots, fresh = assign_slots(rule.endpoints, record.slots)
        old_rule = current.rule if current else None
        try:
            self.dp.program_rule(record.rule_id, rule, record.slots, old_rule, fresh)
            self.records[rule.key] = record
            self._commit()
        except Exception:
            self._rollback(rule.key, record, current)
            raise
        if current is not None:
            self._end_flows_to_removed(current, record)
        log.info("%s rule %s (id %d, %d endpoints)", "updated" if current else "created",
                 rule.key.describe(), record.rule_id, len(rule.endpoints))

    def _rollback(self, key: RuleKey, attempted: RuleRecord, previous: RuleRecord | None) -> None:
        try:
            if previous is None:
                self.records.pop(key, None)
                self.dp.remove_rule(attempted.rule_id, attempted.rule)
            else:
                self.records[key] = previous
                self.dp.program_rule(previous.rule_id, previous.rule, previous.slots,
                                     attempted.rule)
        except Exception:  # the original error is the one to report
            log.exception("rollback of %s failed", key.describe())

    def _end_flows_to_removed(self, old: RuleRecord, new: RuleRecord) -> None:
        gone = {old.rule_id * LB_MAX_ENDPOINTS + slot
                for ident, slot in old.slots.items() if ident not in new.slots}
        if gone:
            n = self.dp.flush_conntrack(lambda e: e.rule_id == old.rule_id and e.ep_slot in gone)
            log.info("ended %d conntrack entries to removed endpoints", n)

    def delete(self, keys: list[RuleKey], what: str) -> int:
        with self.lock:
            doomed = [self.records[k] for k in keys if k in self.records]
            if not doomed and what:
                raise ApiError(404, "lbrule-not-found", f"no rule {what}")
            for rec in doomed:
                del self.records[rec.rule.key]
            try:
                self._commit()
            except ApiError:
                for rec in doomed:
                    self.records[rec.rule.key] = rec
                raise
            for rec in doomed:
                self.dp.remove_rule(rec.rule_id, rec.rule)
                log.info("deleted rule %s (id %d)", rec.rule.key.describe(), rec.rule_id)
            return len(doomed)

    def find(self, external_ip: str, port: int, port_max: int | None, protocol: str,
             block: int, host: str) -> list[RuleKey]:
        return [k for k in self.records
                if k.external_ip == external_ip and k.port == port and k.protocol == protocol
                and k.block == block and k.host == host
                and (port_max is None or k.port_max == port_max)]

    def by_name(self, name: str) -> list[RuleKey]:
        return [k for k, r in self.records.items() if r.rule.name == name]

    # -- views --------------------------------------------------------------
    def api_list(self) -> list[dict[str, Any]]:
        with self.lock:
            records = sorted(self.records.values(), key=lambda r: (
                int(ipaddress.ip_address(r.rule.key.external_ip)), r.rule.key.port,
                r.rule.key.protocol))
            out = []
            for rec in records:
                counters = {ident: self.dp.endpoint_counters(rec.rule_id, slot)
                            for ident, slot in rec.slots.items()}
                out.append(rule_to_api(rec.rule, counters))
            return out

    def api_conntrack(self, serv_name: str | None = None, ip: str | None = None,
                      port: int | None = None, state: str | None = None,
                      limit: int | None = None) -> list[dict[str, Any]]:
        with self.lock:
            by_id = {r.rule_id: r for r in self.records.values()}
        rows = []
        for flow in self.dp.flows():
            rec = by_id.get(flow.rule_id)
            name = rec.rule.name if rec else ""
            if serv_name is not None and name != serv_name:
                continue
            if ip is not None and ip not in (flow.client_ip, flow.vip, flow.endpoint_ip):
                continue
            if port is not None and port not in (flow.client_port, flow.vip_port,
                                                 flow.endpoint_port):
                continue
            if state is not None and flow.state != state:
                continue
            rows.append(_flow_to_api(flow, name, rec))
            if limit is not None and len(rows) >= limit:
                break
        return rows


def _flow_to_api(flow: FlowView, name: str, rec: RuleRecord | None) -> dict[str, Any]:
    weight = 0
    if rec is not None:
        for ep in rec.rule.endpoints:
            if ep.ident == (flow.endpoint_ip, flow.endpoint_port):
                weight = ep.weight
    return {
        "sourceIP": flow.client_ip,
        "sourcePort": flow.client_port,
        "destinationIP": flow.vip,
        "destinationPort": flow.vip_port,
        "protocol": flow.protocol,
        "conntrackState": flow.state,
        "conntrackAct": f"dnat-{flow.endpoint_ip}:{flow.endpoint_port}:w{weight}",
        "ident": 0,
        "packets": flow.packets,
        "bytes": flow.bytes,
        "servName": name,
    }
