"""A live agent for the CLI tests, and helpers to drive it.

``running_agent()`` (one LB namespace with a peer) and ``running_topology()`` (client, LB,
backends: for real flows) are context managers for module-scoped fixtures: one agent per
test module keeps the CLI tests fast. They need root and network namespaces and fail
(never skip) without them. ``clear_rules`` is for the function-scoped fixture that keeps
the tests of a module independent.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lab import Lab, Netns, Topology, tcplb_topology
from lbnode import LbNode

VENV_BIN = str(Path(__file__).resolve().parents[1] / ".venv" / "bin")


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for loxicmd/bash run by the tests: the venv first on PATH, no
    LOXICMD_* settings from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOXICMD_")}
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env.update(extra)
    return env


@contextmanager
def running_agent(port: int | None = None) -> Iterator[LbNode]:
    """loxilbd in a fresh namespace 'lb' (eth0 198.18.1.1/24 to a peer 198.18.1.2)."""
    with Lab() as lab:
        lb, peer = lab.add_ns("lb"), lab.add_ns("peer")
        lab.link(lb, peer, "eth0", "eth0", "198.18.1.1/24", "198.18.1.2/24")
        kw: dict[str, Any] = {} if port is None else {"port": port}
        node = LbNode(lab, lb, ["eth0"], **kw).start()
        try:
            yield node
        finally:
            if node.proc is not None:
                node.stop()


@contextmanager
def running_topology(n_backends: int = 1) -> Iterator[tuple[LbNode, Topology]]:
    """loxilbd on the LB of ``tcplb_topology`` (client 198.18.1.2, backends 198.18.1x.2)."""
    with Lab() as lab:
        topo = tcplb_topology(lab, n_backends=n_backends)
        node = LbNode(lab, topo.lb, topo.lb_ifaces).start()
        try:
            yield node, topo
        finally:
            if node.proc is not None:
                node.stop()


def clear_rules(node: LbNode) -> LbNode:
    """Delete every rule (whatever an earlier test left); returns the node."""
    status, body = node.api("DELETE", "/config/loadbalancer/all")
    assert status == 200, body
    return node


@contextmanager
def paused(node: LbNode) -> Iterator[None]:
    """The agent stopped with SIGSTOP (connections are accepted by the kernel, never
    answered); SIGCONT whatever happens."""
    assert node.proc is not None
    os.kill(node.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(node.proc.pid, signal.SIGCONT)


@contextmanager
def restarted_with_token(node: LbNode, token: str) -> Iterator[None]:
    """The node's agent restarted requiring ``token`` (LOXILBD_TOKEN; /version stays open,
    so readiness is still seen), and restarted without one afterwards."""
    node.stop()
    os.environ["LOXILBD_TOKEN"] = token
    try:
        node.start()
    finally:
        del os.environ["LOXILBD_TOKEN"]
    try:
        yield
    finally:
        node.stop()
        node.start()


_REQUEST = re.compile(r"^loxicmd: debug: > (GET|POST|DELETE) \S+?/netlox/v1(\S*)$", re.M)


def requests_sent(stderr: str) -> list[tuple[str, str]]:
    """(method, path?query) of every request, from the stderr of ``loxicmd -v``."""
    return [(m.group(1), m.group(2)) for m in _REQUEST.finditer(stderr)]


_UDP_FLOWS = textwrap.dedent(
    """
    import select, socket, sys, time
    host, port, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    socks = []
    for sport in range(first, first + count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", sport))
        s.connect((host, port))
        socks.append(s)
    answered = 0
    # 32 at a time: a burst of hundreds overflows the backend's socket buffer
    for at in range(0, count, 32):
        chunk = socks[at:at + 32]
        pending = set(chunk)
        for attempt in range(3):
            for s in pending:
                s.send(b"flow")
            deadline = time.monotonic() + 1
            while pending and time.monotonic() < deadline:
                ready, _, _ = select.select(list(pending), [], [], 0.05)
                for s in ready:
                    try:
                        s.recv(2048)
                    except OSError:
                        continue
                    pending.discard(s)
            if not pending:
                break
        answered += len(chunk) - len(pending)
    print(answered)
    """
)


def udp_flows(ns: Netns, host: str, port: int, first_sport: int, count: int) -> int:
    """``count`` UDP flows to host:port from source ports first_sport.., one datagram each
    way, sent by one process in ``ns``; returns how many got their answer."""
    cp = ns.run(sys.executable, "-c", _UDP_FLOWS, host, str(port), str(first_sport),
                str(count), timeout=60)
    return int(cp.stdout)


def loxicmd_on_terminal(node: LbNode, *args: str, **env: str
                        ) -> subprocess.CompletedProcess[str]:
    """The real CLI against the node's agent with a pseudo-terminal as its stdout
    (``script``): what an operator at a terminal sees."""
    command = shlex.join(["loxicmd", "-p", str(node.port), *args])
    return run_in(node.ns, "script", "-qec", command, "/dev/null",
                  env=cli_env(TERM="xterm", COLUMNS="100", **env))


def run_in(ns: Netns, *argv: str, env: dict[str, str] | None = None,
           input_: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """A command in the namespace with the CLI environment (no check)."""
    return subprocess.run(ns.argv(*argv), env=env or cli_env(), input=input_,
                          stdin=None if input_ is not None else subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, check=False)


def loxicmd(node: LbNode, *args: str, input_: str | None = None,
            **env: str) -> subprocess.CompletedProcess[str]:
    """The real CLI against the node's agent (port given with -p)."""
    return run_in(node.ns, "loxicmd", "-p", str(node.port), *args, env=cli_env(**env),
                  input_=input_)
