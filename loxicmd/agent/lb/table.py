"""The rule table: the agent's source of truth for load-balancer rules.

Every change is checked (``book``), programmed into the datapath and persisted as one step
under a lock; if programming or saving fails the previous rule is put back, so an error
changes nothing. Observers (endpoint health, and what comes: BGP, HA sync) are told about
each change after it took effect.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from datapath import layouts as L
from datapath.layouts import LB_MAX_EP_SLOTS, LB_MAX_RULES
from loxicmd.names import NAT_MODE_NAMES

from ..dataplane.dataplane import Dataplane, route_source
from ..errors import ApiError, InvalidInput
from ..health.spec import FORMAT_1_PROBE_PERIOD_S
from ..store.journal import StateStore, upgraded
from .book import Change, EndpointIdent, RuleBook, RuleRecord
from .model import (
    LbRule,
    RuleKey,
    parse_lb_entry,
    rule_to_api,
    rule_to_request,
    shown_form,
)

log = logging.getLogger("loxilbd.rules")

# Format 2: probeTimeout is the probe period (LoxiLB's meaning). Records without a format
# are older: there it was the attempt timeout of probes run every 10 s.
RECORD_FORMAT = 2


def _format_1(entry: dict[str, Any]) -> dict[str, Any]:
    sa = dict(entry.get("serviceArguments") or {})
    if sa.get("monitor"):
        sa["probeTimeout"] = FORMAT_1_PROBE_PERIOD_S  # what the rule did before the upgrade
    else:  # probe options of an unmonitored rule were only ever defaults
        for key in ("probetype", "probeport", "probereq", "proberesp", "probeTimeout",
                    "probeRetries"):
            sa.pop(key, None)
    return {**entry, "serviceArguments": sa}


class RuleObserver(Protocol):
    """Told about every rule change, after it took effect (under the table's lock)."""

    def rule_changed(self, old: RuleRecord | None, new: RuleRecord | None) -> None:
        """A rule was installed (old None), updated (both) or deleted (new None)."""
        ...


class EndpointGate(Protocol):
    """Decides which endpoints of a rule about to be installed start without new flows
    (the endpoint health table: probes down, host states)."""

    def initially_inactive(self, record: RuleRecord) -> set[int]:
        ...


class RuleTable:
    def __init__(self, dataplane: Dataplane, store: StateStore, max_rules: int = LB_MAX_RULES,
                 max_endpoints: int = LB_MAX_EP_SLOTS) -> None:
        self.dp = dataplane
        self.store = store
        self.book = RuleBook(max_rules, max_endpoints)
        self.observers: list[RuleObserver] = []
        self.gates: list[EndpointGate] = []
        self.inactive: set[int] = set()  # endpoint slots that get no new flows
        # slots of one-arm/fullnat endpoints the node had no route to when their rule
        # was restored: no new flows until one appears (recheck_routes)
        self.no_route: set[int] = set()
        self.lock = threading.RLock()

    @property
    def records(self) -> dict[RuleKey, RuleRecord]:
        return self.book.records

    @property
    def by_id(self) -> dict[int, RuleRecord]:
        return self.book.by_id

    def observe(self, observer: RuleObserver) -> None:
        self.observers.append(observer)

    def gate(self, gate: EndpointGate) -> None:
        self.gates.append(gate)

    def _changed(self, old: RuleRecord | None, new: RuleRecord | None) -> None:
        for observer in self.observers:
            observer.rule_changed(old, new)

    def _gate(self, record: RuleRecord) -> None:
        for gate in self.gates:
            self.inactive |= gate.initially_inactive(record)

    # -- persistence --------------------------------------------------------
    @staticmethod
    def _to_record(r: RuleRecord) -> dict[str, Any]:
        return {"format": RECORD_FORMAT, "ruleId": r.rule_id, "entry": rule_to_request(r.rule),
                "slots": [[ip, port, slot] for (ip, port), slot in sorted(r.slots.items())]}

    def restore(self) -> int:
        """Load the state directory and program every rule again. Counter
        slots and rule ids are kept, so pinned counters stay with their rule."""
        saved = self.store.load()
        with self.lock:
            for rid, item in sorted(saved.items()):
                where = f"{self.store.dir}: rule {rid}"
                try:
                    rule, _, _ = parse_lb_entry(upgraded(item, "entry", RECORD_FORMAT,
                                                         _format_1))
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
                self._gate(record)
                self.dp.program_rule(rule_id, rule, slots, inactive=self.inactive | self.no_route,
                                     sources=record.sources)
                self.book.restore(record)
                self._changed(None, record)
            stale = self.dp.remove_stale_services(set(self.by_id))
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

    # -- routes of one-arm / fullnat endpoints ------------------------------
    @staticmethod
    def _sources(rule: LbRule, strict: bool) -> dict[EndpointIdent, str]:
        """One-arm and fullnat send to each endpoint from the node's own address towards
        it. strict: an endpoint the node has no route to is refused (an API change);
        otherwise it is noted as "" (a restore must not fail on a route not up yet)."""
        if rule.mode == L.NatMode.DEFAULT:
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

    # -- changes ------------------------------------------------------------
    def apply(self, body: Any) -> None:
        rule, oper, named = parse_lb_entry(body)
        with self.lock:
            rule, current = self.book.check(rule, oper, keep_name=not named)
            self._install(self.book.assign(rule, current, self._sources(rule, strict=True)))

    def _install(self, change: Change) -> None:
        record, current = change.record, change.current
        if current is None:
            self.dp.reset_rule_state(record.rule_id)
        self._gate(record)
        try:
            # every source of this rule was resolved: none of its slots waits for a route
            self.dp.program_rule(record.rule_id, record.rule, record.slots,
                                 current.rule if current else None, change.fresh,
                                 self.inactive | (self.no_route - set(record.slots.values())),
                                 record.sources)
            self.book.put(record)
            self._persist(put=record)
        except Exception:
            self.book.release_failed(change)
            self._forget_slots(change.fresh)
            self._rollback(record, current)
            raise
        self.no_route.difference_update(record.slots.values())
        gone = change.gone
        if gone:
            self.dp.release_slots(gone)  # ends their flows (reported as endpoint removed)
            self.book.slots.free(gone)
            self._forget_slots(gone)
        self._changed(current, record)
        log.info("%s rule %s (id %d, %d endpoints)", "updated" if current else "created",
                 record.rule.key.describe(), record.rule_id, len(record.rule.endpoints))

    def _rollback(self, attempted: RuleRecord, previous: RuleRecord | None) -> None:
        try:
            if previous is None:
                self.book.drop(attempted)
                self.dp.remove_rule(attempted.rule_id, attempted.rule, ())
            else:
                self.book.put(previous)
                self.dp.program_rule(previous.rule_id, previous.rule, previous.slots,
                                     attempted.rule, inactive=self.inactive | self.no_route,
                                     sources=previous.sources)
        except Exception:  # the original error is the one to report
            log.exception("rollback of %s failed", attempted.rule.key.describe())

    def delete_where(self, what: str, match: Callable[[RuleKey], bool]) -> int:
        """Delete the rules whose key matches (404 naming `what` when none does; "" for
        "every rule", which may be none)."""
        with self.lock:
            return self.delete([k for k in self.records if match(k)], what)

    def delete(self, keys: list[RuleKey], what: str) -> int:
        with self.lock:
            doomed = [self.records[k] for k in keys if k in self.records]
            if not doomed and what:
                raise ApiError(404, f"no rule {what}")
            for rec in doomed:
                self.book.drop(rec)
            try:
                self._persist(deleted=doomed)
            except ApiError:
                for rec in doomed:
                    self.book.put(rec)
                raise
            for rec in doomed:
                try:
                    self.dp.remove_rule(rec.rule_id, rec.rule, rec.slots.values())
                except Exception:  # it is deleted for good: free what it held regardless
                    log.exception("removing rule %s from the datapath", rec.rule.key.describe())
                self.book.release(rec)
                self._forget_slots(rec.slots.values())
                self._changed(rec, None)
                log.info("deleted rule %s (id %d)", rec.rule.key.describe(), rec.rule_id)
            return len(doomed)

    def _forget_slots(self, slots: Iterable[int]) -> None:
        slots = list(slots)
        self.inactive.difference_update(slots)
        self.no_route.difference_update(slots)

    def set_slot_active(self, slot: int, active: bool, end_flows: bool = False) -> None:
        """Health or host state changed: new flows go (or stop going) to the
        endpoint; end_flows also resets its established flows."""
        with self.lock:
            if slot not in self.book.slots.used:
                return
            if active:
                self.inactive.discard(slot)
            else:
                self.inactive.add(slot)
            self.dp.set_endpoint_active(slot, active and slot not in self.no_route)
            if end_flows:
                self.dp.sweep(L.SweepMode.ENDPOINT, slot, L.Reason.EP_DOWN)

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
                if rec.shown is None:
                    rec.shown = shown_form(rec.rule)
                out.append(rule_to_api(rec.rule, counters, down, rec.shown))
            return out
