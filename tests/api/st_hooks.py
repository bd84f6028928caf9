"""Schemathesis hooks for the API fuzz test (test_api_fuzz): loaded by the schemathesis
process through SCHEMATHESIS_HOOKS, configured through the environment.

- Before a call that may change something (POST, PUT, PATCH, DELETE), the agent's state
  is known (taken again after each change that was not refused): the state directory's
  files (what the agent restores on restart) and the datapath's tables of services and HA
  instances (what it forwards by). Both are read directly, not through the API, so that
  the check costs the agent nothing and a run of 10,000 calls stays short. (The test
  compares what the API shows with what a restart restores once the run is over.)
- The check `no_state_change_on_refusal` fails a 4xx answer after which any of that
  differs.
- Every call and its status are counted, and written out when the run ends.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import schemathesis

from datapath import layouts as L
from datapath.libbpf import BpfMap, open_pinned

STATE_DIR = Path(os.environ["FUZZ_STATE_DIR"])
PIN_DIR = os.environ["FUZZ_PIN_DIR"]
COUNTS_FILE = os.environ["FUZZ_COUNTS_FILE"]

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
TABLES = ("lb_services", "lb_instances")

_statuses: Counter[str] = Counter()
# The state before the next change; None: not known (taken again before the next one).
_known: dict[str, Any] | None = None
_maps: dict[str, BpfMap] = {}


def _table(name: str) -> list[str]:
    if name not in _maps:
        key, value = L.MAPS[name]
        _maps[name] = BpfMap(open_pinned(f"{PIN_DIR}/{name}"), name, key, value, owned=True)
    return sorted(bytes(k).hex() + ":" + bytes(v).hex() for k, v in _maps[name].items())


def agent_state() -> dict[str, Any]:
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(STATE_DIR.iterdir()) if p.suffix in (".json", ".journal")}
    return {"files": files, **{name: _table(name) for name in TABLES}}


def _differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    out = []
    for part in before:
        if before[part] != after[part]:
            out.append(f"{part} changed; now: {json.dumps(after[part], sort_keys=True)[:600]}")
    return out


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    global _known
    if case.method.upper() in MUTATING and _known is None:
        _known = agent_state()


@schemathesis.hook
def after_call(ctx: Any, case: Any, response: Any) -> None:
    global _known
    _statuses[str(response.status_code)] += 1
    if case.method.upper() in MUTATING and not 400 <= response.status_code < 500:
        _known = None  # it may have changed: taken again before the next change


@schemathesis.check
def no_state_change_on_refusal(ctx: Any, response: Any, case: Any) -> bool | None:
    """A refused request (4xx) changes nothing: not the state directory, not the
    datapath."""
    global _known
    if case.method.upper() not in MUTATING or not 400 <= response.status_code < 500:
        return None
    if _known is None:  # a replay while shrinking: no state was taken before it
        return None
    now = agent_state()
    before, _known = _known, now
    changed = _differences(before, now)
    if changed:
        raise AssertionError(f"{case.method} {case.formatted_path} answered "
                             f"{response.status_code} but changed the agent's state: "
                             + "; ".join(changed))
    return True


@atexit.register
def _write_counts() -> None:
    Path(COUNTS_FILE).write_text(json.dumps(dict(_statuses)))
