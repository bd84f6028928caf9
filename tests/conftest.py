"""Shared fixtures: the network-namespace lab (see tests/lab.py and shared/spec/lab.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from lab import Lab, close_all_labs, run_root

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


@pytest.fixture(scope="session", autouse=True)
def _close_forgotten_labs() -> Iterator[None]:
    """Safety net: close Labs a test created without closing them."""
    yield
    leaked = close_all_labs()
    if leaked:
        print(f"\nclosed lab(s) left open by tests: {', '.join(leaked)}")
