"""End to end: what the agent does with conntrack events — idle flows reset
towards both ends, flows to removed endpoints reset, and the audit log."""

from __future__ import annotations

import json
import sys
import textwrap
from typing import Any

import pytest
from lab import Netns, Topology, http_get, udp_request, wait_for
from lbnode import LbNode

pytestmark = pytest.mark.e2e

VIP = "198.18.100.1"
ECHO_PORT = 7000

# A client that opens a connection, checks one echo, then waits on the idle
# connection and says how it ended: "reset <seconds>", "eof" or "alive".
_IDLE_CLIENT = textwrap.dedent("""
    import socket, sys, time
    host, port, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(b"hello")
    assert s.recv(100) == b"hello"
    print("open", flush=True)
    s.settimeout(wait)
    start = time.monotonic()
    try:
        data = s.recv(100)
        print("eof" if not data else "data", flush=True)
    except ConnectionResetError:
        print(f"reset {time.monotonic() - start:.1f}", flush=True)
    except socket.timeout:
        print("alive", flush=True)
""")


def eps(topo: Topology, port: int) -> str:
    return ",".join(f"{ip}:1" for ip in topo.backend_ips)


def established_to(ns: Netns, port: int) -> int:
    """Established TCP connections on a local port inside a namespace."""
    out = ns.run("ss", "-Htn", "state", "established", f"( sport = :{port} )").stdout
    return len([ln for ln in out.splitlines() if ln.strip()])


def start_idle_client(topo: Topology, wait: float) -> Any:
    proc = topo.client.popen(sys.executable, "-c", _IDLE_CLIENT, VIP, "2020", str(wait),
                             stdout=-1, text=True)
    assert proc.stdout.readline().strip() == "open"
    return proc


def test_an_idle_tcp_flow_is_reset_towards_both_ends(topo: Topology, node: LbNode) -> None:
    """LoxiLB's `lbtimeout` check: an idle session past the rule's timeout gets RST."""
    cp = node.loxicmd("create", "lb", VIP, f"--tcp=2020:{ECHO_PORT}",
                      f"--endpoints={topo.backend_ips[0]}:1", "--inatimeout=2")
    assert cp.returncode == 0, cp.stderr
    proc = start_idle_client(topo, wait=15)
    assert established_to(topo.backends[0], ECHO_PORT) == 1
    out, _ = proc.communicate(timeout=20)
    verdict, *elapsed = out.split()
    assert verdict == "reset", out
    assert 1.5 <= float(elapsed[0]) <= 6, "reset after the 2 s timeout and one sweep"
    wait_for(lambda: established_to(topo.backends[0], ECHO_PORT) == 0, timeout=5,
             what="the endpoint's side of the connection reset too")
    assert [r for r in node.rules()[0]["endpoints"]]  # the rule itself stays


def test_an_active_flow_is_not_reset(topo: Topology, node: LbNode) -> None:
    assert node.loxicmd("create", "lb", VIP, f"--tcp=2020:{ECHO_PORT}",
                        f"--endpoints={topo.backend_ips[0]}:1").returncode == 0
    proc = start_idle_client(topo, wait=3)  # idle 3 s, well inside the default 240 s
    out, _ = proc.communicate(timeout=10)
    assert out.strip() == "alive"


def test_removing_an_endpoint_resets_its_flows_and_keeps_the_others(
        topo: Topology, node: LbNode) -> None:
    assert node.loxicmd("create", "lb", VIP, f"--tcp=2020:{ECHO_PORT}",
                        f"--endpoints={eps(topo, ECHO_PORT)}").returncode == 0
    procs = [start_idle_client(topo, wait=8) for _ in range(3)]  # one per endpoint (rr)
    assert [established_to(b, ECHO_PORT) for b in topo.backends] == [1, 1, 1]
    keep = ",".join(f"{ip}:1" for ip in topo.backend_ips[1:])
    assert node.loxicmd("create", "lb", VIP, f"--tcp=2020:{ECHO_PORT}",
                        f"--endpoints={keep}").returncode == 0
    outcomes = [p.communicate(timeout=15)[0].split()[0] for p in procs]
    assert outcomes == ["reset", "alive", "alive"], outcomes
    assert established_to(topo.backends[0], ECHO_PORT) == 0, "the endpoint was reset too"


def audit_lines(node: LbNode) -> list[dict[str, Any]]:
    path = node.state_dir / "audit.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_audit_log_records_a_real_curl_and_a_real_udp_exchange(
        topo: Topology, node: LbNode) -> None:
    assert node.loxicmd("create", "lb", VIP, "--tcp=2020:8080",
                        f"--endpoints={topo.backend_ips[0]}:1", "--name=web").returncode == 0
    assert node.loxicmd("create", "lb", VIP, "--udp=2020:8080",
                        f"--endpoints={topo.backend_ips[1]}:1", "--name=dns",
                        "--inatimeout=2").returncode == 0
    assert http_get(topo.client, f"http://{VIP}:2020/").strip() == "server1"
    assert udp_request(topo.client, VIP, 2020, b"q", source_port=35353) == b"server2:q"

    def lines_for(proto: str) -> list[dict[str, Any]]:
        got = [ln for ln in audit_lines(node) if ln.get("proto") == proto]
        assert [ln["event"] for ln in got] == ["open", "close"], got
        return got

    tcp_open, tcp_close = wait_for(lambda: lines_for("tcp"), timeout=10, what="tcp audit lines")
    assert tcp_open["service"] == "web" and tcp_open["vip"] == f"{VIP}:2020"
    assert tcp_open["endpoint"] == f"{topo.backend_ips[0]}:8080"
    assert tcp_open["client"].startswith(f"{topo.client_ip}:")
    assert tcp_open["nat_source"] == tcp_open["client"], "default mode keeps the client"
    assert tcp_close["reason"] == "fin" and tcp_close["established"] is True
    assert tcp_close["state"] == "closed"
    assert tcp_close["packets_to_endpoint"] >= 4 and tcp_close["packets_to_client"] >= 3
    assert tcp_close["bytes_to_client"] > tcp_close["packets_to_client"] * 40  # carried the page
    assert 0 <= tcp_close["duration_s"] < 5

    udp_open, udp_close = wait_for(lambda: lines_for("udp"), timeout=10, what="udp audit lines")
    assert udp_open["service"] == "dns" and udp_open["client"] == f"{topo.client_ip}:35353"
    assert udp_close["reason"] == "timeout" and udp_close["state"] == "udp-est"
    assert (udp_close["packets_to_endpoint"], udp_close["packets_to_client"]) == (1, 1)
