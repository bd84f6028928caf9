"""Cluster-instance (HA) states: what keepalived (or another caller of ``/config/cistate``)
says this node is, kept in the state dir and put in the datapath.

Each instance has a slot in the datapath's ``lb_instances`` map, and every rule carries the
slot of its instance (``name: "<service>:<instance>"``, else ``default``): a node opens new
flows of an instance only while it is MASTER of it (or while the instance is NOT_DEFINED,
i.e. no HA); flows already in conntrack, which sync brought from the MASTER, go on in every
state. Slots are kept with the states, so that a restart finds the rules' slots unchanged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datapath import layouts as L
from loxicmd.api.wire import check

from ..errors import ApiError, InvalidInput
from ..store.journal import StateStore

log = logging.getLogger("loxilbd.ha")

DEFAULT_INSTANCE = "default"
# LoxiLB's own name of its default instance, which kube-loxilb's rule names carry
# ("<namespace>_<service>:llb-inst0"): the same instance here.
LOXILB_DEFAULT_INSTANCE = "llb-inst0"
# Called after a state changed: (instance, previous state, entry), outside the lock.
StateObserver = Callable[[str, str, dict[str, Any]], None]


def instance_of(rule_name: str) -> str:
    """The HA instance a rule belongs to: the part of its name after the last ':'."""
    _, sep, instance = rule_name.rpartition(":")
    return canonical(instance) if sep and instance else DEFAULT_INSTANCE


def canonical(instance: str) -> str:
    return DEFAULT_INSTANCE if instance == LOXILB_DEFAULT_INSTANCE else instance


def parse_ha_state(body: Any) -> dict[str, str]:
    """A POST /config/cistate body as ``{"instance", "state", "vip"}`` (state upper-case,
    VIP canonical; the default instance when none is named)."""
    b = check("CIStatusEntry", body, unknown="ignore")
    instance = canonical(b.get("instance") or DEFAULT_INSTANCE)
    return {"instance": instance, "state": b["state"], "vip": b.get("vip", "")}


class HaStates:
    """Instance states, kept in the state directory's `cistate` journal (the same store as
    rules) with each instance's datapath slot; the default instance starts NOT_DEFINED as
    in LoxiLB. With a map (``lb_instances``), every state is written there as it is set."""

    def __init__(self, state_dir: str | Path, instances_map: Any | None = None,
                 restore_master: bool = True) -> None:
        # the journal keeps the API's name (cistate) so that state directories carry over
        self.store = StateStore(state_dir, "cistate", lock=False)
        self.map = instances_map
        self._lock = threading.Lock()
        self.observers: list[StateObserver] = []
        self.sync_status: Callable[[], dict[str, Any] | None] = lambda: None
        self._states: dict[str, dict[str, str]] = {}
        self._slots: dict[str, int] = {DEFAULT_INSTANCE: 0}
        try:
            for name, entry in self.store.load().items():
                self._states[name] = parse_ha_state(entry)
                if name != DEFAULT_INSTANCE and isinstance(entry.get("slot"), int):
                    self._slots[name] = entry["slot"]
        except InvalidInput as exc:
            raise ValueError(f"{self.store.path}: {exc}; fix or move it away") from None
        self._states.setdefault(DEFAULT_INSTANCE, {"instance": DEFAULT_INSTANCE,
                                                   "state": "NOT_DEFINED", "vip": ""})
        if not restore_master:
            # In a cluster, a node that starts again may have been MASTER when it went
            # down while a peer carries its flows now: it opens none until keepalived
            # says MASTER again (its track script, failing while the agent was away,
            # makes keepalived go through FAULT and BACKUP and say so).
            for entry in self._states.values():
                if entry["state"] == "MASTER":
                    entry["state"] = "BACKUP"
                    log.info("HA instance %s was MASTER: BACKUP until told again",
                             entry["instance"])
        for name in self._states:
            self._write(name)

    # -- datapath slots ----------------------------------------------------------
    def slot_of(self, instance: str) -> int:
        """The datapath slot of an instance, given (and kept) on first use: a rule of an
        instance nobody set yet makes it NOT_DEFINED, which forwards as without HA."""
        with self._lock:
            if instance in self._states:
                return self._slot_locked(instance)
            self._states[instance] = {"instance": instance, "state": "NOT_DEFINED", "vip": ""}
            try:
                return self._slot_locked(instance)
            except (ApiError, InvalidInput):
                del self._states[instance]
                raise

    def _slot_locked(self, instance: str) -> int:
        """The instance's slot (saved with its entry and written to the map when new)."""
        slot = self._slots.get(instance)
        if slot is not None:
            return slot
        used = set(self._slots.values())
        slot = next((s for s in range(1, L.LB_MAX_INSTANCES) if s not in used), None)
        if slot is None:
            raise InvalidInput("instance", f"{instance!r} would be HA instance number "
                               f"{L.LB_MAX_INSTANCES + 1}; allowed: at most "
                               f"{L.LB_MAX_INSTANCES} instances")
        self._save(self._states[instance], slot)
        self._slots[instance] = slot
        self._write(instance)
        return slot

    def slot_of_rule(self, rule_name: str) -> int:
        return self.slot_of(instance_of(rule_name))

    def _write(self, instance: str) -> None:
        if self.map is not None and instance in self._slots:
            state = L.HaState[self._states[instance]["state"]]
            self.map.update(self._slots[instance], L.LbInstance(state=state))

    def _save(self, entry: dict[str, str], slot: int | None) -> None:
        try:
            self.store.put(entry["instance"], {**entry, "slot": slot} if slot else entry)
        except OSError as exc:
            raise ApiError(500, f"could not save state in {self.store.dir}: {exc}") from exc

    # -- the API -----------------------------------------------------------------
    def any_master(self) -> bool:
        with self._lock:
            return any(e["state"] == "MASTER" for e in self._states.values())

    def state_of(self, instance: str) -> str:
        with self._lock:
            entry = self._states.get(instance)
            return entry["state"] if entry else "NOT_DEFINED"

    def entries(self) -> dict[str, dict[str, str]]:
        """Every instance's entry (``instance``, ``state``, ``vip``) by name."""
        with self._lock:
            return {name: dict(entry) for name, entry in self._states.items()}

    def all(self) -> list[dict[str, Any]]:
        """The API view; ``sync`` is this node's conntrack sync (null without peers)."""
        sync = self.sync_status()
        with self._lock:
            return [{**s, "sync": sync} for _, s in sorted(self._states.items())]

    def delete(self, instance: str) -> None:
        """Forget an instance (one set by mistake, or whose keepalived instance is gone):
        its rules, if any are left, forward as without HA."""
        instance = canonical(instance)
        if instance == DEFAULT_INSTANCE:
            raise InvalidInput("instance", f"{instance!r} is always there and cannot be "
                               "removed; allowed: an instance set with POST /config/cistate")
        with self._lock:
            if instance not in self._states:
                raise ApiError(404, f"no HA instance {instance!r}")
            try:
                self.store.delete([instance])
            except OSError as exc:
                raise ApiError(500, f"could not save state in {self.store.dir}: {exc}") from exc
            previous = self._states.pop(instance)["state"]
            # the slot stays reserved: rules of the instance still carry it
            slot = self._slots.get(instance)
            if self.map is not None and slot is not None:
                self.map.update(slot, L.LbInstance(state=L.HaState.NOT_DEFINED))
        self._notify(instance, previous, {"instance": instance, "state": "NOT_DEFINED",
                                          "vip": ""})

    def set(self, body: Any) -> dict[str, str]:
        entry = parse_ha_state(body)
        name = entry["instance"]
        with self._lock:
            previous = self._states.get(name)
            self._states[name] = entry
            try:
                if name in self._slots:
                    self._save(entry, self._slots[name])
                else:
                    self._slot_locked(name)
            except (ApiError, InvalidInput):
                if previous is None:
                    del self._states[name]
                else:
                    self._states[name] = previous
                raise
            self._write(name)
            previous_state = previous["state"] if previous else "NOT_DEFINED"
        self._notify(name, previous_state, entry)
        return entry

    def _notify(self, instance: str, previous: str, entry: dict[str, Any]) -> None:
        for observer in self.observers:
            observer(instance, previous, entry)
