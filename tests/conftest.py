"""Shared fixtures: the network-namespace lab (see tests/lab.py and shared/spec/lab.md).

Tests live in subdirectories that mirror the code's rooms; the lab, the agent-process and
test-run helpers stay here, importable from any of them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
from dp_harness import DpHarness  # noqa: E402
from lab import Lab, Topology, close_all_labs, run_root, tcplb_topology  # noqa: E402
from lbnode import LbNode  # noqa: E402

_netns_problem: str | None = None
_netns_checked = False


def pytest_configure(config: pytest.Config) -> None:
    markers = config.getini("markers")
    if not any(str(m).split(":", 1)[0].strip() == "e2e" for m in markers):
        config.addinivalue_line(
            "markers",
            "e2e: end-to-end tests with network namespaces, the agent and loxicmd as processes",
        )


def _probe_netns() -> str | None:
    """Why network namespaces are unusable here, or None when they work."""
    if os.geteuid() != 0:
        return f"the lab tests must run as root (euid is {os.geteuid()})"
    for tool in ("ip", "nsenter", "curl"):
        if shutil.which(tool) is None:
            return f"{tool!r} is not installed (needed by the lab tests)"
    try:
        run_root("ip", "netns", "list", timeout=10)
        with Lab() as probe:
            ns = probe.add_ns("probe")
            ns.run("ip", "link", "show", "lo")
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        return f"'ip netns' is unusable on this machine: {exc}"
    return None


@pytest.fixture
def require_root_netns() -> None:
    """Fail (never skip) when the lab cannot run: not root, or ``ip netns`` unusable."""
    global _netns_problem, _netns_checked
    if not _netns_checked:
        _netns_problem = _probe_netns()
        _netns_checked = True
    if _netns_problem is not None:
        pytest.fail(f"lab prerequisites missing: {_netns_problem}", pytrace=False)


@pytest.fixture
def lab(require_root_netns: None) -> Iterator[Lab]:
    """A fresh Lab, closed when the test ends, whatever its outcome."""
    the_lab = Lab()
    try:
        yield the_lab
    finally:
        the_lab.close()


@pytest.fixture
def topo(lab: Lab) -> Topology:
    """client -> lb -> server1..3 (HTTP and UDP on 8080, TCP echo on 7000)."""
    return tcplb_topology(lab, n_backends=3, http_port=8080, udp_port=8080, echo_port=7000)


@pytest.fixture
def node(lab: Lab, topo: Topology) -> LbNode:
    """The real loxilbd on the topology's LB namespace."""
    return LbNode(lab, topo.lb, topo.lb_ifaces).start()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DpHarness]:
    """The BPF program loaded once per module, for BPF_PROG_TEST_RUN tests."""
    h = DpHarness(Path(tmp_path_factory.mktemp("dp")), ct_entries=65536)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def h(harness: DpHarness) -> DpHarness:
    """The module's harness with no rules, flows or pending events."""
    harness.reset()
    return harness


@pytest.fixture(scope="session", autouse=True)
def _close_forgotten_labs() -> Iterator[None]:
    """Safety net: close Labs a test created without closing them."""
    yield
    leaked = close_all_labs()
    if leaked:
        print(f"\nclosed lab(s) left open by tests: {', '.join(leaked)}")
