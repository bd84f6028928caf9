"""The agent's state directory: rules persisted atomically, one agent per directory."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

STATE_VERSION = 1


class StateDirBusy(RuntimeError):
    pass


class StateStore:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = self.dir / "lbrules.json"
        self._lock_file = open(self.dir / "loxilbd.lock", "a+")  # noqa: SIM115 (held for life)
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise StateDirBusy(f"state directory {self.dir} is in use by another loxilbd") from None
        self._lock_file.truncate(0)
        self._lock_file.write(f"{os.getpid()}\n")
        self._lock_file.flush()

    def load(self) -> dict[str, Any]:
        """The saved state; an empty one when there is none yet."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {"version": STATE_VERSION, "rules": []}
        try:
            state = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.path}: not valid JSON ({exc}); "
                             "fix or move it away to start empty") from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"{self.path}: unknown state format (want version {STATE_VERSION})")
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write-then-rename with fsyncs: a crash leaves the old or the new file, whole."""
        tmp = self.path.with_suffix(".json.tmp")
        data = json.dumps({"version": STATE_VERSION, **state}, indent=1, sort_keys=True)
        with open(tmp, "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        self._lock_file.close()
