"""Cluster-instance (HA) states: validation and a small store persisted in the state dir.

``POST /config/cistate`` (keepalived's notify hook, ``loxicmd set hastate``) records the
state of an instance; what the state does to the datapath comes with the HA work.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from loxicmd.api.wire import check

from ..errors import ApiError, InvalidInput
from ..store.journal import StateStore

DEFAULT_INSTANCE = "default"
MAX_INSTANCE_LEN = 64


def parse_ha_state(body: Any) -> dict[str, str]:
    """A POST /config/cistate body as ``{"instance", "state", "vip"}`` (state upper-case,
    VIP canonical; the default instance when none is named)."""
    b = check("CIStatusEntry", body, unknown="ignore")
    instance = b.get("instance") or DEFAULT_INSTANCE
    if len(instance) > MAX_INSTANCE_LEN or not instance.isprintable() or "/" in instance:
        raise InvalidInput("instance", f"{instance!r} is not a valid instance name; allowed: "
                           f"printable text without '/', at most {MAX_INSTANCE_LEN} characters")
    return {"instance": instance, "state": b["state"], "vip": b.get("vip", "")}


class HaStates:
    """Instance states, kept in the state directory's `cistate` journal (the
    same store as rules); the default instance starts NOT_DEFINED as in LoxiLB."""

    def __init__(self, state_dir: str | Path) -> None:
        # the journal keeps the API's name (cistate) so that state directories carry over
        self.store = StateStore(state_dir, "cistate", lock=False)
        self._lock = threading.Lock()
        try:
            self._states = {name: parse_ha_state(entry)
                            for name, entry in self.store.load().items()}
        except InvalidInput as exc:
            raise ValueError(f"{self.store.path}: {exc}; fix or move it away") from None
        self._states.setdefault(DEFAULT_INSTANCE, {"instance": DEFAULT_INSTANCE,
                                                   "state": "NOT_DEFINED", "vip": ""})

    def all(self) -> list[dict[str, Any]]:
        """The API view: ``sync`` (conntrack sync progress) is null until HA sync exists."""
        with self._lock:
            return [{**s, "sync": None} for _, s in sorted(self._states.items())]

    def delete(self, instance: str) -> None:
        """Forget an instance (one set by mistake, or whose keepalived instance is gone)."""
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
            del self._states[instance]

    def set(self, body: Any) -> dict[str, str]:
        entry = parse_ha_state(body)
        with self._lock:
            try:
                self.store.put(entry["instance"], entry)
            except OSError as exc:
                raise ApiError(500, f"could not save state in {self.store.dir}: {exc}") from exc
            self._states[entry["instance"]] = entry
        return entry
