"""Tests of the lab helper itself: topology, routing, traffic helpers and teardown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest
from lab import (
    CommandError,
    Lab,
    Netns,
    http_get,
    pid_alive,
    pids_in_netns,
    process_group_members,
    run_root,
    tcp_echo,
    tcplb_topology,
    udp_request,
    wait_for,
    wait_tcp,
)


def netns_list() -> set[str]:
    out = run_root("ip", "netns", "list").stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def group_alive(pgid: int) -> bool:
    return bool(process_group_members(pgid))


def assert_all_gone(names: list[str], procs: list[subprocess.Popen[bytes]]) -> None:
    left = netns_list()
    for name in names:
        assert name not in left
        assert not os.path.exists(f"/run/netns/{name}")
    for proc in procs:
        assert proc.returncode is not None, f"pid {proc.pid} was not reaped"
        assert not group_alive(proc.pid), f"process group {proc.pid} survived"


def test_names_are_unique_and_prefixed(lab: Lab) -> None:
    other = Lab()
    try:
        assert other.id != lab.id
        ns = lab.add_ns("client")
        assert re.fullmatch(r"lx[0-9a-f]{6}-client", ns.name)
        assert ns.path == f"/run/netns/{ns.name}"
        assert ns.name in netns_list()
        with pytest.raises(ValueError):
            lab.add_ns("client")
    finally:
        other.close()


def test_topology_routes_client_to_backends(lab: Lab) -> None:
    topo = tcplb_topology(lab)
    assert topo.lb_ifaces == ["lbc", "lbs1", "lbs2", "lbs3"]
    assert topo.backend_ips == ["198.18.11.2", "198.18.12.2", "198.18.13.2"]
    assert topo.client_ip == "198.18.1.2"
    assert topo.lb_client_side_ip == "198.18.1.1"
    assert topo.lb.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    for key in ("all", "default", *topo.lb_ifaces):
        val = topo.lb.run("sysctl", "-n", f"net.ipv4.conf.{key}.rp_filter").stdout
        assert val.strip() == "0", key
    assert topo.lb.ifindex("lbc") > 1

    assert http_get(topo.client, "http://198.18.11.2:8080/") == "server1\n"
    assert udp_request(topo.client, "198.18.11.2", 8080, b"ping") == b"server1:ping"
    for i, ip in enumerate(topo.backend_ips, start=1):
        assert http_get(topo.client, f"http://{ip}:8080/x") == f"server{i}\n"
        payload = os.urandom(32)
        reply = udp_request(topo.client, ip, 8080, payload, source_port=40000 + i)
        assert reply == f"server{i}:".encode() + payload


def test_backend_http_headers_and_echo(lab: Lab) -> None:
    topo = tcplb_topology(lab, n_backends=1, http_port=8081, udp_port=5353, echo_port=9000)
    out = topo.client.run(
        "curl", "-sS", "-i", "--noproxy", "*", "--max-time", "5", "http://198.18.11.2:8081/"
    ).stdout
    head = out.split("\r\n\r\n", 1)[0]
    assert head.startswith("HTTP/1.1 200")
    assert "Content-Length: 8" in head
    assert "Connection: close" in head
    assert udp_request(topo.client, "198.18.11.2", 5353, b"") == b"server1:"
    wait_tcp(topo.client, "198.18.11.2", 9000, timeout=5)
    payload = os.urandom(300_000)
    assert tcp_echo(topo.client, "198.18.11.2", 9000, payload) == payload


def test_udp_timeout_and_http_failure_raise(lab: Lab) -> None:
    topo = tcplb_topology(lab, n_backends=1)
    with pytest.raises(CommandError) as err:
        udp_request(topo.client, "198.18.11.2", 9999, b"x", timeout=0.5)
    assert err.value.returncode == 4 and "refused" in str(err.value)
    # A listener that never answers: the client times out.
    topo.backends[0].popen("socat", "-u", "UDP-RECV:9998", "OPEN:/dev/null")
    wait_for(
        lambda: ":9998 " in topo.backends[0].run("ss", "-uln").stdout, timeout=5, what="socat"
    )
    with pytest.raises(CommandError) as err:
        udp_request(topo.client, "198.18.11.2", 9998, b"x", timeout=0.5)
    assert err.value.returncode == 3 and "timeout" in str(err.value)
    with pytest.raises(CommandError) as err:
        http_get(topo.client, "http://198.18.11.2:9999/", timeout=1)
    assert "exited with status 7" in str(err.value)  # curl: couldn't connect
    with pytest.raises(AssertionError, match="TCP 198.18.11.2:9999"):
        wait_tcp(topo.client, "198.18.11.2", 9999, timeout=0.5)


def test_addresses_outside_the_lab_are_refused(lab: Lab) -> None:
    a, b = lab.add_ns("a"), lab.add_ns("b")
    with pytest.raises(ValueError):
        lab.link(a, b, "x0", "y0", "10.0.0.1/24", "10.0.0.2/24")
    with pytest.raises(ValueError):
        lab.link(a, b, "an-interface-name-too-long", "y0", "198.18.0.1/30", "198.18.0.2/30")
    with pytest.raises(ValueError):
        http_get(a, "http://192.0.2.1/")
    with pytest.raises(ValueError):
        udp_request(a, "8.8.8.8", 53, b"x")
    lab.link(a, b, "x0", "y0", "198.18.0.1/30", "198.18.0.2/30")
    a.run("ping", "-c1", "-W2", "198.18.0.2")


def test_run_error_names_command_status_and_stderr(lab: Lab) -> None:
    ns = lab.add_ns("c")
    with pytest.raises(CommandError) as err:
        ns.ip("link", "show", "dev", "nosuchdev")
    msg = str(err.value)
    assert "ip link show dev nosuchdev" in msg
    assert "status 1" in msg
    assert "nosuchdev" in err.value.stderr
    assert ns.run("false", check=False).returncode == 1
    assert ns.run("cat", input="hello").stdout == "hello"
    with pytest.raises(CommandError, match="timed out"):
        ns.run("sleep", "5", timeout=0.3)


def test_wait_for_names_what_on_timeout() -> None:
    assert wait_for(lambda: 42, timeout=1, what="answer") == 42
    with pytest.raises(AssertionError, match="the moon to turn blue"):
        wait_for(lambda: False, timeout=0.2, interval=0.05, what="the moon to turn blue")

    def boom() -> bool:
        raise OSError("nope")

    with pytest.raises(AssertionError, match="nope"):
        wait_for(boom, timeout=0.2, interval=0.05, what="boom")


def test_close_removes_namespaces_and_processes(require_root_netns: None) -> None:
    lab = Lab()
    try:
        topo = tcplb_topology(lab, n_backends=2)
        # A process whose child would outlive it if only the leader were killed.
        shell = topo.lb.popen("sh", "-c", "sleep 1000 & sleep 1000 & wait")
        # A process that ignores SIGTERM: must be SIGKILLed.
        stubborn = topo.client.popen("sh", "-c", "trap '' TERM; while :; do sleep 1; done")
        names = [ns.name for ns in lab.namespaces.values()]
        procs = [*topo.backend_procs, shell, stubborn]
        assert len(names) == 4 and all(n in netns_list() for n in names)
        wait_for(lambda: len(pids_in_netns(topo.lb.path)) >= 3, timeout=5, what="sleeps")
        cleaned: list[str] = []

        def failing() -> None:
            cleaned.append("failing")
            raise RuntimeError("cleanup error must be swallowed")

        lab.register_cleanup(lambda: cleaned.append("first"))
        lab.register_cleanup(failing)
        lab.register_cleanup(lambda: cleaned.append("last"))
        started = time.monotonic()
        lab.close()
        assert time.monotonic() - started < 15
        assert cleaned == ["last", "failing", "first"]
        assert_all_gone(names, procs)
        assert stubborn.returncode == -signal.SIGKILL
        lab.close()  # idempotent
        assert cleaned == ["last", "failing", "first"]
    finally:
        lab.close()


def test_close_when_the_body_raises(require_root_netns: None) -> None:
    names: list[str] = []
    procs: list[subprocess.Popen[bytes]] = []
    with pytest.raises(RuntimeError, match="test body failed"):
        with Lab() as lab:
            a, b = lab.add_ns("a"), lab.add_ns("b")
            names += [a.name, b.name]
            lab.link(a, b, "eth0", "eth0", "198.18.2.1/24", "198.18.2.2/24")
            procs.append(a.popen("sleep", "1000"))
            procs.append(b.popen("socat", "-u", "UDP-RECV:7000", "-"))
            raise RuntimeError("test body failed")
    assert lab.closed
    assert_all_gone(names, procs)


def test_close_kills_untracked_daemons(require_root_netns: None) -> None:
    with Lab() as lab:
        ns = lab.add_ns("d")
        # Double fork + setsid: neither tracked nor in a tracked process group.
        ns.run("sh", "-c", "setsid sleep 1000 </dev/null >/dev/null 2>&1 &")
        strays = wait_for(lambda: pids_in_netns(ns.path), timeout=5, what="daemon")
        name = ns.name
    assert name not in netns_list()
    for pid in strays:
        assert not pid_alive(pid), f"untracked pid {pid} survived"


def test_netns_standalone_helpers(lab: Lab) -> None:
    ns = lab.add_ns("h")
    plain = Netns(ns.name)  # not attached to the lab: still usable for commands
    assert plain.path == ns.path
    assert plain.ifindex("lo") == 1
    ns.sysctl("net/ipv4/ip_forward", 1)
    assert ns.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    ns.sysctl("net.ipv4.ip_forward", 0)
    assert ns.run("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"
