"""The rule table: the agent's source of truth for load-balancer rules.

Every change is validated, programmed into the datapath and persisted as one
step under a lock; if programming or saving fails the previous rule is put
back, so an error changes nothing.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from datapath import layouts as L
from datapath.layouts import (
    LB_ALLOW_ENTRIES,
    LB_MAX_ENDPOINTS,
    LB_MAX_EP_SLOTS,
    LB_MAX_RULES,
    LB_MAX_SVC_KEYS,
)
from loxicmd.names import NAT_MODE_NAMES, RULE_UNCHANGED

from .dataplane import Dataplane, FlowView, flow_view, route_source
from .model import (
    OPER_ATTACH,
    OPER_CREATE,
    InvalidInput,
    LbRule,
    RuleKey,
    names_service,
    parse_lb_entry,
    rule_to_api,
    rule_to_request,
)
from .store import StateStore

log = logging.getLogger("loxilbd.rules")


class ApiError(Exception):
    """A refusal with its HTTP status and the sentence saying what was wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class RuleRecord:
    rule_id: int
    rule: LbRule
    slots: dict[tuple[str, int], int] = field(default_factory=dict)  # endpoint -> counter slot
    # one-arm/fullnat: the node's address towards each endpoint ("" while it has no route)
    sources: dict[tuple[str, int], str] = field(default_factory=dict)


class IdPool:
    """Numbers 0..size-1 handed out and taken back: rule ids, endpoint slots."""

    def __init__(self, size: int, what: str, field: str) -> None:
        self.size = size
        self.what = what
        self.field = field
        self.used: set[int] = set()
        self._next = 0

    def take(self, number: int) -> None:
        self.used.add(number)

    def allocate(self) -> int:
        if len(self.used) >= self.size:
            raise ApiError(403, f"{self.field}: the datapath holds at most {self.size} "
                           f"{self.what}s; delete some first")
        while self._next in self.used:
            self._next = (self._next + 1) % self.size
        self.used.add(self._next)
        return self._next

    def free(self, numbers: Iterable[int]) -> None:
        self.used.difference_update(numbers)

    @property
    def available(self) -> int:
        return self.size - len(self.used)


class RuleObserver(Protocol):
    """Told about rule changes (the endpoint health table watches monitored rules)."""

    def initially_inactive(self, record: RuleRecord) -> set[int]:
        """Slots of a rule about to be installed that must start inactive."""
        ...

    def rule_changed(self, old: RuleRecord | None, new: RuleRecord | None) -> None:
        """After a rule was installed, updated (both) or deleted (new is None)."""
        ...


class RuleTable:
    def __init__(self, dataplane: Dataplane, store: StateStore, max_rules: int = LB_MAX_RULES,
                 max_endpoints: int = LB_MAX_EP_SLOTS) -> None:
        self.dp = dataplane
        self.store = store
        self.observer: RuleObserver | None = None
        self.inactive: set[int] = set()  # endpoint slots that get no new flows
        # slots of one-arm/fullnat endpoints the node had no route to when their rule
        # was restored: no new flows until one appears (recheck_routes)
        self.no_route: set[int] = set()
        self.records: dict[RuleKey, RuleRecord] = {}
        self.by_id: dict[int, RuleRecord] = {}  # the same records by rule id
        self.rule_ids = IdPool(max_rules, "rule", "serviceArguments")
        self.slots = IdPool(max_endpoints, "endpoint", "endpoints")
        self.lock = threading.RLock()

    # -- persistence --------------------------------------------------------
    @staticmethod
    def _to_record(r: RuleRecord) -> dict[str, Any]:
        return {"ruleId": r.rule_id, "entry": rule_to_request(r.rule),
                "slots": [[ip, port, slot] for (ip, port), slot in sorted(r.slots.items())]}

    def restore(self) -> int:
        """Load the state directory and program every rule again. Counter
        slots and rule ids are kept, so pinned counters stay with their rule."""
        saved = self.store.load()
        with self.lock:
            for rid, item in sorted(saved.items()):
                where = f"{self.store.dir}: rule {rid}"
                try:
                    rule, _ = parse_lb_entry(item["entry"])
                    rule_id = int(item["ruleId"])
                    slots = {(ip, int(port)): int(slot) for ip, port, slot in item["slots"]}
                except (InvalidInput, KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"{where} is invalid: {exc}") from None
                if {ep.ident for ep in rule.endpoints} != set(slots) or str(rule_id) != rid:
                    raise ValueError(f"{where}: its slots or id do not match its endpoints")
                record = RuleRecord(rule_id, rule, slots, self._sources(rule, strict=False))
                for ident, source in record.sources.items():
                    if not source:
                        self.no_route.add(slots[ident])
                        log.warning("rule %s: no route to endpoint %s; it gets no new flows "
                                    "until one appears", rule.key.describe(), ident[0])
                if self.observer:
                    self.inactive |= self.observer.initially_inactive(record)
                self.dp.program_rule(rule_id, rule, slots, inactive=self.inactive | self.no_route,
                                     sources=record.sources)
                self._put(record)
                self.rule_ids.take(rule_id)
                if self.observer:
                    self.observer.rule_changed(None, record)
                for slot in slots.values():
                    self.slots.take(slot)
            stale = self.dp.remove_stale_services({r.rule_id for r in self.records.values()})
        if stale:
            log.info("removed %d service keys of rules deleted while the agent was away", stale)
        return len(self.records)

    def _persist(self, put: RuleRecord | None = None, deleted: Iterable[RuleRecord] = ()) -> None:
        try:
            if put is not None:
                self.store.put(str(put.rule_id), self._to_record(put))
            self.store.delete([str(r.rule_id) for r in deleted])
        except OSError as exc:
            raise ApiError(500, f"could not save state in {self.store.dir}: {exc}") from exc

    # -- changes ------------------------------------------------------------
    @staticmethod
    def _sources(rule: LbRule, strict: bool) -> dict[tuple[str, int], str]:
        """One-arm and fullnat send to each endpoint from the node's own address towards
        it. strict: an endpoint the node has no route to is refused (an API change);
        otherwise it is noted as "" (a restore must not fail on a route not up yet)."""
        if rule.mode == L.NAT_DEFAULT:
            return {}
        sources = {}
        for ep in rule.endpoints:
            source = route_source(ep.ip)
            if source is None and strict:
                raise InvalidInput("endpoints", f"{ep.ip!r}: this node has no route to it, and "
                                   f"{NAT_MODE_NAMES[rule.mode]} rules send to an endpoint from "
                                   "the node's own address towards it; allowed: an endpoint "
                                   "the node can route to (or mode 0, default)")
            sources[ep.ident] = source or ""
        return sources

    def recheck_routes(self) -> int:
        """Endpoints restored without a route: those that have one now get their source
        and new flows again. Returns how many came back."""
        if not self.no_route:
            return 0
        back = 0
        with self.lock:
            for rec in self.records.values():
                for ident, slot in rec.slots.items():
                    if slot not in self.no_route:
                        continue
                    source = route_source(ident[0])
                    if source is None:
                        continue
                    rec.sources[ident] = source
                    self.no_route.discard(slot)
                    self.dp.set_endpoint_source(slot, source, active=slot not in self.inactive)
                    log.info("rule %s: endpoint %s reachable again (from %s)",
                             rec.rule.key.describe(), ident[0], source)
                    back += 1
        return back

    def _check_capacity(self, rule: LbRule, replacing: RuleRecord | None) -> None:
        others = [r.rule for r in self.records.values()
                  if replacing is None or r.rule.key != replacing.rule.key]
        used = sum(r.key.port_max - r.key.port + 1 for r in others)
        need = rule.key.port_max - rule.key.port + 1
        if used + need > LB_MAX_SVC_KEYS:
            raise ApiError(403, f"serviceArguments.portMax: the range needs {need} service "
                           f"entries, {LB_MAX_SVC_KEYS - used} of {LB_MAX_SVC_KEYS} are free")
        kept = set(replacing.slots) if replacing else set()
        new_eps = sum(1 for ep in rule.endpoints if ep.ident not in kept)
        if new_eps > self.slots.available:
            raise ApiError(403, f"endpoints: {new_eps} new endpoints, {self.slots.available} of "
                           f"{self.slots.size} endpoint slots are free")
        if replacing is None and not self.rule_ids.available:
            raise ApiError(403, f"serviceArguments: the datapath holds at most "
                           f"{self.rule_ids.size} rules; delete some first")
        sources = sum(len(r.allowed_sources) for r in others)
        if sources + len(rule.allowed_sources) > LB_ALLOW_ENTRIES:
            raise ApiError(403, f"allowedSources: {len(rule.allowed_sources)} prefixes, "
                           f"{LB_ALLOW_ENTRIES - sources} of {LB_ALLOW_ENTRIES} entries are free")

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
                    raise ApiError(404, f"no rule {rule.key.describe()} to {verb}")
                rule = self._merge_endpoints(current.rule, rule, oper)
            else:
                if current is not None and not names_service(body):
                    # an update without a `name` keeps the rule's (kube-loxilb and the CLI
                    # leave it out when they have none to give; "" clears it)
                    rule = replace(rule, name=current.rule.name)
                if current is not None and current.rule == rule:
                    raise ApiError(409, f"rule {rule.key.describe()} {RULE_UNCHANGED}")
            clash = self._overlapping(rule)
            if clash is not None:
                raise ApiError(409, f"ports of {rule.key.describe()} overlap rule "
                               f"{clash.rule.key.describe()}")
            self._check_capacity(rule, current)
            self._install(rule, current, self._sources(rule, strict=True))

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
                raise ApiError(404, f"endpoints: {', '.join(missing)} not in rule "
                               f"{current.key.describe()}")
            for ep in change.endpoints:
                del have[ep.ident]
        return current.with_endpoints(list(have.values()))

    def _install(self, rule: LbRule, current: RuleRecord | None,
                 sources: dict[tuple[str, int], str]) -> None:
        if current is None:
            record = RuleRecord(self.rule_ids.allocate(), rule, sources=sources)
            self.dp.reset_rule_state(record.rule_id)
        else:
            record = RuleRecord(current.rule_id, rule, sources=sources)
        old_slots = current.slots if current else {}
        fresh = []
        for ep in rule.endpoints:  # endpoints that stay keep their slot (and counters)
            if ep.ident in old_slots:
                record.slots[ep.ident] = old_slots[ep.ident]
            else:
                record.slots[ep.ident] = self.slots.allocate()
                fresh.append(record.slots[ep.ident])
        if self.observer:
            self.inactive |= self.observer.initially_inactive(record)
        try:
            self.dp.program_rule(record.rule_id, rule, record.slots,
                                 current.rule if current else None, fresh,
                                 self.inactive | self.no_route, sources)
            self._put(record)
            self._persist(put=record)
        except Exception:
            self._free_slots(fresh)
            if current is None:
                self.rule_ids.free([record.rule_id])
            self._rollback(rule.key, record, current)
            raise
        self.no_route.difference_update(record.slots.values())  # every source resolved
        if current is not None:
            gone = [slot for ident, slot in current.slots.items() if ident not in record.slots]
            self.dp.release_slots(gone)  # ends their flows (reported as endpoint removed)
            self._free_slots(gone)
        if self.observer:
            self.observer.rule_changed(current, record)
        log.info("%s rule %s (id %d, %d endpoints)", "updated" if current else "created",
                 rule.key.describe(), record.rule_id, len(rule.endpoints))

    def _rollback(self, key: RuleKey, attempted: RuleRecord, previous: RuleRecord | None) -> None:
        try:
            if previous is None:
                self._drop(attempted)
                self.dp.remove_rule(attempted.rule_id, attempted.rule, ())
            else:
                self._put(previous)
                self.dp.program_rule(previous.rule_id, previous.rule, previous.slots,
                                     attempted.rule, inactive=self.inactive | self.no_route,
                                     sources=previous.sources)
        except Exception:  # the original error is the one to report
            log.exception("rollback of %s failed", key.describe())

    def delete(self, keys: list[RuleKey], what: str) -> int:
        with self.lock:
            doomed = [self.records[k] for k in keys if k in self.records]
            if not doomed and what:
                raise ApiError(404, f"no rule {what}")
            for rec in doomed:
                self._drop(rec)
            try:
                self._persist(deleted=doomed)
            except ApiError:
                for rec in doomed:
                    self._put(rec)
                raise
            for rec in doomed:
                try:
                    self.dp.remove_rule(rec.rule_id, rec.rule, rec.slots.values())
                except Exception:  # it is deleted for good: free what it held regardless
                    log.exception("removing rule %s from the datapath", rec.rule.key.describe())
                self._free_slots(rec.slots.values())
                self.rule_ids.free([rec.rule_id])
                if self.observer:
                    self.observer.rule_changed(rec, None)
                log.info("deleted rule %s (id %d)", rec.rule.key.describe(), rec.rule_id)
            return len(doomed)

    def _free_slots(self, slots: Iterable[int]) -> None:
        slots = list(slots)
        self.slots.free(slots)
        self.inactive.difference_update(slots)
        self.no_route.difference_update(slots)

    def set_slot_active(self, slot: int, active: bool, end_flows: bool = False) -> None:
        """Health or host state changed: new flows go (or stop going) to the
        endpoint; end_flows also resets its established flows."""
        with self.lock:
            if slot not in self.slots.used:
                return
            if active:
                self.inactive.discard(slot)
            else:
                self.inactive.add(slot)
            self.dp.set_endpoint_active(slot, active and slot not in self.no_route)
            if end_flows:
                self.dp.sweep(L.SWEEP_ENDPOINT, slot, L.REASON_EP_DOWN)

    def find(self, external_ip: str, port: int, port_max: int | None, protocol: str,
             block: int, host: str) -> list[RuleKey]:
        return [k for k in self.records
                if k.external_ip == external_ip and k.port == port and k.protocol == protocol
                and k.block == block and k.host == host
                and (port_max is None or k.port_max == port_max)]

    def _put(self, record: RuleRecord) -> None:
        self.records[record.rule.key] = record
        self.by_id[record.rule_id] = record

    def _drop(self, record: RuleRecord) -> None:
        self.records.pop(record.rule.key, None)
        self.by_id.pop(record.rule_id, None)

    def name_of(self, rule_id: int) -> str:
        """The service name of a rule id ("" when unknown): read by the event thread."""
        rec = self.by_id.get(rule_id)
        return rec.rule.name if rec else ""

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
                counters = {ident: self.dp.endpoint_counters(slot)
                            for ident, slot in rec.slots.items()}
                down = {ident for ident, slot in rec.slots.items()
                        if slot in self.inactive or slot in self.no_route}
                out.append(rule_to_api(rec.rule, counters, down))
            return out

    def conntrack_pages(self, flt: FlowFilter, after: bytes | None = None,
                        page_size: int = 4096) -> Iterator[tuple[list[dict[str, Any]],
                                                                 bytes | None]]:
        """Flows that pass the filter, page by page, with the token that resumes
        after each page (None after the last). Pages are read with batch lookups,
        so the whole table is never held at once."""
        with self.lock:
            by_id = dict(self.by_id)
        ct = self.dp.maps["lb_conntrack"]
        token = after
        while True:
            entries, token = ct.page(token, page_size)
            rows = []
            for key, entry in entries:
                if entry.dir != L.CT_DIR_ORIGINAL:
                    continue
                flow = flow_view(key, entry, ct.lookup(entry.peer))
                rec = by_id.get(flow.rule_id)
                if flt.matches(flow, rec.rule.name if rec else ""):
                    rows.append(_flow_to_api(flow, rec))
            yield rows, token
            if token is None:
                return

    def conntrack_page(self, flt: FlowFilter, limit: int, after: bytes | None
                       ) -> tuple[list[dict[str, Any]], bytes | None]:
        """About `limit` flows (a hash bucket is never split) and the next token."""
        rows: list[dict[str, Any]] = []
        token = after
        while len(rows) < limit:
            pages = self.conntrack_pages(flt, token, page_size=max(limit - len(rows), 8))
            page, token = next(pages)
            rows.extend(page)
            if token is None:
                break
        return rows, token

    def api_conntrack(self, flt: FlowFilter | None = None) -> list[dict[str, Any]]:
        return [row for page, _ in self.conntrack_pages(flt or FlowFilter()) for row in page]


@dataclass(frozen=True)
class FlowFilter:
    serv_name: str | None = None
    ip: str | None = None
    port: int | None = None
    state: str | None = None

    def matches(self, flow: FlowView, name: str) -> bool:
        return ((self.serv_name is None or name == self.serv_name)
                and (self.ip is None or self.ip in (flow.client_ip, flow.vip, flow.endpoint_ip,
                                                     flow.nat_ip))
                and (self.port is None or self.port in (flow.client_port, flow.vip_port,
                                                         flow.endpoint_port, flow.nat_port))
                and (self.state is None or flow.state == self.state))


def _flow_to_api(flow: FlowView, rec: RuleRecord | None) -> dict[str, Any]:
    weight = 0
    if rec is not None:
        for ep in rec.rule.endpoints:
            if rec.slots.get(ep.ident) == flow.ep_slot:
                weight = ep.weight
    target = f"{flow.endpoint_ip}:{flow.endpoint_port}:w{weight}"
    act = f"fdnat-{flow.nat_ip}:{flow.nat_port},{target}" if flow.nat_ip else f"dnat-{target}"
    icmp = flow.protocol == "icmp"
    return {
        "sourceIP": flow.client_ip,
        "sourcePort": 0 if icmp else flow.client_port,
        "destinationIP": flow.vip,
        "destinationPort": flow.vip_port,
        "protocol": flow.protocol,
        "conntrackState": flow.state,
        "conntrackAct": act,
        "ident": str(flow.client_port if icmp else 0),  # a string in LoxiLB's API
        "packets": flow.packets,
        "bytes": flow.bytes,
        "servName": rec.rule.name if rec else "",
    }
