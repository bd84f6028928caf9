"""Carry out checked objects (apply/delete -f, apply -c) all or nothing.

Before the first change the current objects of every kind involved are read, so that each
change has an undo: a created object is deleted, a replaced or deleted one is posted back
as it was. If the agent refuses one object, the changes already made are undone in reverse
order and the status is 1. Progress: a bar on a terminal, one line per object in a pipe.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from loxicmd.cli.manifest import Item, Kind
from loxicmd.cli.options import Call, Settings

if TYPE_CHECKING:
    from loxicmd.api.client import Client


def _current(client: Client, kind: Kind) -> dict[tuple[Any, ...], dict[str, Any] | None]:
    """The objects of ``kind`` the agent has now, by identity, as request bodies (None for
    one this loxicmd cannot post back: it is left alone by an undo)."""
    from loxicmd.api.client import AgentRefused

    try:
        body = client.get(kind.list_path).data
    except AgentRefused as exc:
        if exc.status in (404, 405):  # the agent does not serve this kind: it has none
            return {}
        raise
    objects = [body] if kind.list_key is None else (body or {}).get(kind.list_key) or []
    current = {}
    for obj in objects:
        if isinstance(obj, dict):
            try:
                restored: dict[str, Any] | None = kind.restore(obj)
            except ValueError:
                restored = None
            current[kind.identity(restored or obj)] = restored
    return current


class Progress:
    """A rich bar on a terminal; otherwise one ``<verb> <object>`` line per object."""

    def __init__(self, total: int, tty: bool) -> None:
        self._bar: Any = None
        if tty and total > 1:
            from rich.progress import Progress as Bar

            self._bar = Bar(transient=False)
            self._task = self._bar.add_task("applying", total=total)
            self._bar.start()

    def step(self, line: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def run(s: Settings, items: Sequence[Item], *, deleting: bool = False) -> int:
    """Apply (or delete) every item; on the first refusal undo the rest and return 1."""
    from loxicmd.api.client import AgentRefused, AgentUnreachable

    client = s.client()
    involved = {item.kind.name: item.kind for item in items}
    snapshots = {name: _current(client, kind) for name, kind in involved.items()}
    undo: list[Call] = []
    progress = Progress(len(items), sys.stdout.isatty())
    try:
        for item in items:
            existed = item.kind.identity(item.body) in snapshots[item.kind.name]
            previous = snapshots[item.kind.name].get(item.kind.identity(item.body))
            call = item.kind.delete(item.body) if deleting and item.kind.delete \
                else item.kind.create(item.body)
            try:
                client.request(call.method, call.path, query=call.query, body=call.body)
            except AgentRefused as exc:
                if not deleting and item.kind.unchanged_result and \
                        item.kind.unchanged_result in exc.body:
                    progress.step(f"unchanged {item.label}")
                    continue
                progress.close()
                print(f"loxicmd: {item.source}: {item.label}: {exc}", file=sys.stderr)
                _undo(client, undo)
                return 1
            if previous is not None:
                undo.append(item.kind.create(previous))
            elif not existed and not deleting and item.kind.delete is not None:
                undo.append(item.kind.delete(item.body))
            progress.step(f"{'deleted' if deleting else 'applied'} {item.label}")
    except AgentUnreachable:
        progress.close()
        if undo:
            print(f"loxicmd: {len(undo)} change(s) were made before the agent became "
                  "unreachable; they are not undone", file=sys.stderr)
        raise
    finally:
        progress.close()
    return 0


def _undo(client: Client, undo: list[Call]) -> None:
    from loxicmd.api.client import AgentError

    failed = 0
    for call in reversed(undo):
        try:
            client.request(call.method, call.path, query=call.query, body=call.body)
        except AgentError as exc:
            failed += 1
            print(f"loxicmd: undo failed: {call.label}: {exc}", file=sys.stderr)
    if failed:
        print(f"loxicmd: {failed} of {len(undo)} change(s) could not be undone",
              file=sys.stderr)
    else:
        print(f"loxicmd: nothing changed ({len(undo)} change(s) made before were undone)",
              file=sys.stderr)
