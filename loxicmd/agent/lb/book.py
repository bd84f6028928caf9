"""The bookkeeping of rules: which exist (by key, by id, by name), what each holds (a rule
id, an endpoint slot per endpoint, service keys, allow-list entries), and the checks a
change must pass before anything is programmed (attach/detach, "unchanged", overlapping
ports, capacity). Pure: no datapath, no disk, so it is tested without root."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from datapath.layouts import (
    LB_ALLOW_ENTRIES,
    LB_MAX_ENDPOINTS,
    LB_MAX_EP_SLOTS,
    LB_MAX_RULES,
    LB_MAX_SVC_KEYS,
)
from loxicmd.names import OPER_ATTACH, OPER_CREATE, RULE_UNCHANGED

from ..errors import ApiError, InvalidInput
from .model import LbRule, RuleKey

EndpointIdent = tuple[str, int]  # (address, target port)


@dataclass
class RuleRecord:
    """A rule as installed: its id and the datapath slot of each endpoint."""

    rule_id: int
    rule: LbRule
    slots: dict[EndpointIdent, int] = field(default_factory=dict)  # endpoint -> slot
    # one-arm/fullnat: the node's address towards each endpoint ("" while it has no route)
    sources: dict[EndpointIdent, str] = field(default_factory=dict)
    # what the API shows of the rule but endpoint states and counters (made on first use)
    shown: dict[str, Any] | None = field(default=None, compare=False, repr=False)


class IdPool:
    """Numbers 0..size-1 handed out and taken back: rule ids, endpoint slots."""

    def __init__(self, size: int, what: str, field_name: str) -> None:
        self.size = size
        self.what = what
        self.field = field_name
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


@dataclass(frozen=True)
class Change:
    """A checked change: the rule to install, the record it replaces (None: a new rule),
    and its record with ids and slots assigned; `fresh` are the slots newly taken."""

    rule: LbRule
    current: RuleRecord | None
    record: RuleRecord
    fresh: tuple[int, ...]

    @property
    def gone(self) -> list[int]:
        """Slots of endpoints the change removes from the rule."""
        if self.current is None:
            return []
        return [s for ident, s in self.current.slots.items() if ident not in self.record.slots]


class RuleBook:
    def __init__(self, max_rules: int = LB_MAX_RULES,
                 max_endpoints: int = LB_MAX_EP_SLOTS) -> None:
        self.records: dict[RuleKey, RuleRecord] = {}
        self.by_id: dict[int, RuleRecord] = {}  # the same records by rule id
        self.rule_ids = IdPool(max_rules, "rule", "serviceArguments")
        self.slots = IdPool(max_endpoints, "endpoint", "endpoints")
        # kept as records come and go, so that a check does not walk every rule (creating
        # N rules one by one would cost N^2)
        self.by_address: dict[tuple[str, str, int, str], set[RuleKey]] = {}
        self.svc_keys_used = 0  # service entries in the datapath (one per port of a range)
        self.allow_used = 0  # allow-list entries

    # -- lookups --------------------------------------------------------------
    def find(self, external_ip: str, port: int, port_max: int | None, protocol: str,
             mark: int, host: str) -> list[RuleKey]:
        return [k for k in self.by_address.get((external_ip, protocol, mark, host), ())
                if k.port == port and (port_max is None or k.port_max == port_max)]

    def by_name(self, name: str) -> list[RuleKey]:
        return [k for k, r in self.records.items() if r.rule.name == name]

    def name_of(self, rule_id: int) -> str:
        """The service name of a rule id ("" when unknown); safe from any thread."""
        rec = self.by_id.get(rule_id)
        return rec.rule.name if rec else ""

    # -- checks ---------------------------------------------------------------
    def check(self, rule: LbRule, oper: int, keep_name: bool) -> tuple[LbRule, RuleRecord | None]:
        """The rule a request asks for, checked against the rules there are: what to
        install and the record it replaces. keep_name: the request named no service."""
        current = self.records.get(rule.key)
        if oper != OPER_CREATE:
            if current is None:
                verb = "attach endpoints to" if oper == OPER_ATTACH else "detach endpoints from"
                raise ApiError(404, f"no rule {rule.key.describe()} to {verb}")
            rule = merge_endpoints(current.rule, rule, oper)
        else:
            if current is not None and keep_name:
                # an update without a `name` keeps the rule's (kube-loxilb and the CLI
                # leave it out when they have none to give; "" clears it)
                rule = replace(rule, name=current.rule.name)
            if current is not None and current.rule == rule:
                raise ApiError(409, f"rule {rule.key.describe()} {RULE_UNCHANGED}")
        clash = self.overlapping(rule)
        if clash is not None:
            raise ApiError(409, f"ports of {rule.key.describe()} overlap rule "
                           f"{clash.rule.key.describe()}")
        self.check_capacity(rule, current)
        return rule, current

    def overlapping(self, rule: LbRule) -> RuleRecord | None:
        """Another rule whose ports share one of this rule's service keys."""
        k = rule.key
        for o in self.by_address.get(_address(k), ()):
            if o != k and o.port <= k.port_max and k.port <= o.port_max:
                return self.records[o]
        return None

    def check_capacity(self, rule: LbRule, replacing: RuleRecord | None) -> None:
        used = self.svc_keys_used - (_svc_keys(replacing.rule) if replacing else 0)
        need = _svc_keys(rule)
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
        sources = self.allow_used - (len(replacing.rule.allowed_sources) if replacing else 0)
        if sources + len(rule.allowed_sources) > LB_ALLOW_ENTRIES:
            raise ApiError(403, f"allowedSources: {len(rule.allowed_sources)} prefixes, "
                           f"{LB_ALLOW_ENTRIES - sources} of {LB_ALLOW_ENTRIES} entries are free")

    # -- changes --------------------------------------------------------------
    def assign(self, rule: LbRule, current: RuleRecord | None,
               sources: dict[EndpointIdent, str]) -> Change:
        """Ids and slots for a checked rule: endpoints that stay keep their slot (and so
        their counters and flows); undo with `release_failed`."""
        rule_id = current.rule_id if current is not None else self.rule_ids.allocate()
        record = RuleRecord(rule_id, rule, sources=sources)
        old_slots = current.slots if current else {}
        fresh = []
        for ep in rule.endpoints:
            if ep.ident in old_slots:
                record.slots[ep.ident] = old_slots[ep.ident]
            else:
                record.slots[ep.ident] = self.slots.allocate()
                fresh.append(record.slots[ep.ident])
        return Change(rule, current, record, tuple(fresh))

    def release_failed(self, change: Change) -> None:
        """A change that could not be carried out gives back what `assign` took."""
        self.slots.free(change.fresh)
        if change.current is None:
            self.rule_ids.free([change.record.rule_id])

    def restore(self, record: RuleRecord) -> None:
        """A persisted record comes back with the ids and slots it had."""
        self.rule_ids.take(record.rule_id)
        for slot in record.slots.values():
            self.slots.take(slot)
        self.put(record)

    def put(self, record: RuleRecord) -> None:
        key = record.rule.key
        self._forget(key)
        self.records[key] = record
        self.by_id[record.rule_id] = record
        self.by_address.setdefault(_address(key), set()).add(key)
        self.svc_keys_used += _svc_keys(record.rule)
        self.allow_used += len(record.rule.allowed_sources)

    def drop(self, record: RuleRecord) -> None:
        self._forget(record.rule.key)
        self.by_id.pop(record.rule_id, None)

    def _forget(self, key: RuleKey) -> None:
        old = self.records.pop(key, None)
        if old is None:
            return
        same = self.by_address[_address(key)]
        same.discard(key)
        if not same:
            del self.by_address[_address(key)]
        self.svc_keys_used -= _svc_keys(old.rule)
        self.allow_used -= len(old.rule.allowed_sources)

    def release(self, record: RuleRecord) -> None:
        """A deleted rule gives back its id and slots."""
        self.slots.free(record.slots.values())
        self.rule_ids.free([record.rule_id])


def _address(key: RuleKey) -> tuple[str, str, int, str]:
    """What two rules must share for their port ranges to clash."""
    return key.external_ip, key.protocol, key.mark, key.host


def _svc_keys(rule: LbRule) -> int:
    return rule.key.port_max - rule.key.port + 1


def merge_endpoints(current: LbRule, change: LbRule, oper: int) -> LbRule:
    """Attach (oper 1) or detach (oper 2) the change's endpoints to/from a rule."""
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
