"""The agent's state directory: rules persisted durably, one agent per directory.

A snapshot (lbrules.json, replaced atomically) plus a journal of changes
(lbrules.journal, one JSON line per change, fsync'd before the API answers).
A change costs one appended line whatever the number of rules; the journal
is folded into a new snapshot once it outgrows it. A crash can only cut the
last journal line short; such a line was never acknowledged and is dropped.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

STATE_VERSION = 2

log = logging.getLogger("loxilbd.store")


def upgraded(record: dict[str, Any], key: str, version: int,
             upgrade: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
    """``record[key]`` as of format `version`: records of an older format (written
    without one) are passed through `upgrade`, which gives what they meant then."""
    value = record[key]
    if record.get("format", 1) >= version or not isinstance(value, dict):
        return value
    return upgrade(value)


class StateDirBusy(RuntimeError):
    pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateStore:
    """One kind of record (`name`: lbrules, endpoints, ...) in a state directory.
    The store made with lock=True holds the directory's lock for the agent's life."""

    def __init__(self, state_dir: str | os.PathLike[str], name: str = "lbrules",
                 compact_min: int = 1000, lock: bool = True) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = self.dir / f"{name}.json"
        self.journal_path = self.dir / f"{name}.journal"
        self.compact_min = compact_min
        self._lock_file = None
        if lock:
            self._lock_file = open(self.dir / "loxilbd.lock", "a+")  # noqa: SIM115 (held)
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock_file.close()
                raise StateDirBusy(f"state directory {self.dir} is in use by another "
                                   "loxilbd") from None
            self._lock_file.truncate(0)
            self._lock_file.write(f"{os.getpid()}\n")
            self._lock_file.flush()
        self.records: dict[str, dict[str, Any]] = {}
        self._journal_lines = 0
        self._journal: Any = None

    def load(self) -> dict[str, dict[str, Any]]:
        """Every record (id -> record) as of the last acknowledged change."""
        self.records = self._read_snapshot()
        self._journal_lines = 0
        if self.journal_path.exists():
            with open(self.journal_path, "rb") as f:
                lines = f.read().split(b"\n")
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    op = json.loads(line)
                except json.JSONDecodeError:
                    if n >= len(lines) - 1:  # the torn tail of a crash: never acknowledged
                        log.warning("%s: dropped an incomplete last line", self.journal_path)
                        break
                    raise ValueError(f"{self.journal_path}:{n}: not valid JSON; fix or move "
                                     "the state directory away to start empty") from None
                self._apply(op, f"{self.journal_path}:{n}")
                self._journal_lines += 1
        self._compact()  # start from a clean snapshot and an empty journal
        return dict(self.records)

    def _read_snapshot(self) -> dict[str, dict[str, Any]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        try:
            state = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.path}: not valid JSON ({exc}); "
                             "fix or move it away to start empty") from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION \
                or not isinstance(state.get("records"), dict):
            raise ValueError(f"{self.path}: unknown state format (want version {STATE_VERSION})")
        return state["records"]

    def _apply(self, op: dict[str, Any], where: str) -> None:
        if op.get("op") == "put" and isinstance(op.get("rec"), dict):
            self.records[str(op["id"])] = op["rec"]
        elif op.get("op") == "del" and isinstance(op.get("ids"), list):
            for rid in op["ids"]:
                self.records.pop(str(rid), None)
        else:
            raise ValueError(f"{where}: unknown journal entry {op!r}")

    def put(self, rid: str, record: dict[str, Any]) -> None:
        self._append({"op": "put", "id": rid, "rec": record})

    def delete(self, rids: list[str]) -> None:
        if rids:
            self._append({"op": "del", "ids": rids})

    def _append(self, op: dict[str, Any]) -> None:
        if self._journal is None:
            self._journal = open(self.journal_path, "ab")  # noqa: SIM115
        self._journal.write(json.dumps(op, separators=(",", ":")).encode() + b"\n")
        self._journal.flush()
        os.fdatasync(self._journal.fileno())
        self._apply(op, "change")
        self._journal_lines += 1
        if self._journal_lines > max(self.compact_min, 2 * len(self.records)):
            self._compact()

    def _compact(self) -> None:
        """Fold the journal into a new snapshot (write, fsync, rename), then empty it."""
        tmp = self.path.with_suffix(".json.tmp")
        with open(tmp, "w") as f:
            json.dump({"version": STATE_VERSION, "records": self.records}, f,
                      separators=(",", ":"), sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.dir)
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        with open(self.journal_path, "wb") as f:
            os.fsync(f.fileno())
        self._journal_lines = 0

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._lock_file is not None:
            self._lock_file.close()
