"""The probe scheduler and its state machine, without network: the monitor is given a probe
kind whose answers a test scripts (kinds come from a registry the monitor is handed), so
retries, confirmed recovery, damping and the carry-over of a probe's state are checked
without root or namespaces. The real probe kinds are tested against real servers in
test_monitor.py."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from lab import wait_for

from loxicmd.agent.health.monitor import HealthMonitor
from loxicmd.agent.health.probes import ProbeFailed, ProbeKind
from loxicmd.agent.health.spec import ProbeSpec

PERIOD = 0.1


class ScriptedProbe:
    """Answers each probe of a host with the next of its outcomes (then the last one)."""

    def __init__(self) -> None:
        self.outcomes: dict[str, list[bool]] = {}
        self.runs: dict[str, int] = {}
        self.lock = threading.Lock()

    def script(self, host: str, outcomes: str) -> None:
        """`outcomes`: "G" up, "B" down, e.g. "GGBB"."""
        with self.lock:
            self.outcomes[host] = [c == "G" for c in outcomes]

    def silence_is_up(self, spec: ProbeSpec) -> bool:
        return False

    async def measure(self, spec: ProbeSpec) -> float:
        with self.lock:
            queue = self.outcomes.get(spec.host, [True])
            ok = queue.pop(0) if len(queue) > 1 else queue[0]
            self.runs[spec.host] = self.runs.get(spec.host, 0) + 1
        if not ok:
            raise ProbeFailed("tcp: scripted failure")
        return 0.001

    def close(self) -> None:
        pass


@pytest.fixture
def scripted() -> ScriptedProbe:
    return ScriptedProbe()


@pytest.fixture
def monitor(scripted: ScriptedProbe) -> Iterator[tuple[HealthMonitor, list[tuple[str, bool]]]]:
    changes: list[tuple[str, bool]] = []
    kinds: dict[str, ProbeKind] = {"tcp": scripted}
    mon = HealthMonitor(lambda spec, healthy: changes.append((spec.host, healthy)),
                        kinds=lambda: kinds)
    mon.start()
    try:
        yield mon, changes
    finally:
        mon.stop()


def spec(host: str, retries: int = 2) -> ProbeSpec:
    return ProbeSpec(host=host, ptype="tcp", port=80, interval_s=PERIOD, timeout_s=PERIOD / 2,
                     retries=retries)


def wait(predicate: Callable[[], object], seconds: float = 3.0) -> None:
    wait_for(predicate, timeout=seconds, interval=0.01, what="the monitor's changes")


def test_down_after_retries_failures_and_back_after_two_successes(
        monitor: tuple[HealthMonitor, list[tuple[str, bool]]], scripted: ScriptedProbe) -> None:
    mon, changes = monitor
    # one success between failures is not "back" (a monitor that flipped on one would
    # say down, up, down, up); two failures are "down" (three would never say it)
    scripted.script("198.18.0.1", "GBBGBBG")
    s = spec("198.18.0.1")
    mon.add(s)
    wait(lambda: ("198.18.0.1", False) in changes)
    st = mon.status(s)
    assert st is not None and st.state == "nok" and st.last_error == "tcp: scripted failure"
    wait(lambda: ("198.18.0.1", True) in changes, seconds=10)  # back-off, then confirmed
    assert changes == [("198.18.0.1", False), ("198.18.0.1", True)]


def test_one_failure_below_retries_does_not_flip(
        monitor: tuple[HealthMonitor, list[tuple[str, bool]]], scripted: ScriptedProbe) -> None:
    mon, changes = monitor
    scripted.script("198.18.0.2", "GBGGGG")
    mon.add(spec("198.18.0.2"))
    wait(lambda: scripted.runs.get("198.18.0.2", 0) >= 6)
    assert changes == []


def test_an_alternating_endpoint_never_flips(
        monitor: tuple[HealthMonitor, list[tuple[str, bool]]], scripted: ScriptedProbe) -> None:
    mon, changes = monitor
    scripted.script("198.18.0.3", "GB" * 20)
    mon.add(spec("198.18.0.3"))
    wait(lambda: scripted.runs.get("198.18.0.3", 0) >= 12)
    assert changes == []


def test_a_probe_taking_over_starts_in_the_state_of_the_one_before(
        monitor: tuple[HealthMonitor, list[tuple[str, bool]]], scripted: ScriptedProbe) -> None:
    mon, changes = monitor
    scripted.script("198.18.0.4", "B")
    old = spec("198.18.0.4")
    mon.add(old)
    wait(lambda: ("198.18.0.4", False) in changes)
    new = spec("198.18.0.4", retries=5)  # another spec of the same endpoint
    mon.add(new, like=old)
    mon.remove(old)
    st = mon.status(new)
    assert st is not None and st.state == "nok", "a down endpoint does not come back unprobed"
    fresh = spec("198.18.0.5")
    mon.add(fresh, like=None)
    st = mon.status(fresh)
    assert st is not None and st.state == "ok", "a new endpoint starts up (LoxiLB)"
