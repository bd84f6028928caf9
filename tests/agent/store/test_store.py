"""The agent's state directory: journal + snapshot, crash tolerance, one agent per directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from loxicmd.agent.store.journal import StateDirBusy, StateStore


def reopen(store: StateStore) -> StateStore:
    store.close()
    return StateStore(store.dir)


def test_changes_survive_a_restart(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert store.load() == {}
    store.put("1", {"a": 1})
    store.put("2", {"b": 2})
    store.put("1", {"a": 3})
    store.delete(["2"])
    store = reopen(store)
    assert store.load() == {"1": {"a": 3}}
    store.close()


def test_one_change_appends_one_line(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.load()
    for i in range(50):
        store.put(str(i), {"i": i})
    assert len(store.journal_path.read_bytes().splitlines()) == 50
    assert store.path.read_text().count('"i"') == 0, "the snapshot is not rewritten per change"
    store.close()


def test_the_journal_is_folded_into_the_snapshot(tmp_path: Path) -> None:
    store = StateStore(tmp_path, compact_min=10)
    store.load()
    for i in range(25):
        store.put("same", {"i": i})
    assert len(store.journal_path.read_bytes().splitlines()) <= 10
    store = reopen(store)
    assert store.load() == {"same": {"i": 24}}
    store.close()


def test_a_torn_last_line_is_dropped(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.load()
    store.put("1", {"a": 1})
    store.close()
    with open(tmp_path / "lbrules.journal", "ab") as f:
        f.write(b'{"op":"put","id":"2","rec":{"b"')  # a crash in the middle of a write
    store = StateStore(tmp_path)
    assert store.load() == {"1": {"a": 1}}
    store.close()


def test_a_corrupt_line_in_the_middle_is_an_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "lbrules.journal").write_bytes(b'garbage\n{"op":"del","ids":["1"]}\n')
    store = StateStore(tmp_path)
    with pytest.raises(ValueError, match="lbrules.journal:1"):
        store.load()
    store.close()


def test_a_second_agent_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with pytest.raises(StateDirBusy, match=str(tmp_path)):
        StateStore(tmp_path)
    store.close()
