"""End to end: health checks that steer traffic (real probes, real servers, real agent)."""

from __future__ import annotations

import collections
import signal
import sys
import time

import pytest
from lab import Lab, Topology, start_backend, wait_for
from lbnode import LbNode, pipe_table
from testpaths import CLIENT_SCRIPT

pytestmark = pytest.mark.e2e

VIP = "198.18.100.1"


def names(topo: Topology, n: int, port: int = 2020) -> list[str]:
    out = topo.client.run(sys.executable, CLIENT_SCRIPT, "http", VIP, str(port),
                          "--count", str(n), timeout=60).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def ep_states(node: LbNode) -> dict[str, str]:
    rows = pipe_table(node.loxicmd("get", "ep", check=True).stdout)
    return {r["HOST"]: r["STATE"] for r in rows}


def lb_states(node: LbNode) -> dict[str, str]:
    (rule,) = node.rules()
    return {e["endpointIP"]: e["state"] for e in rule["endpoints"]}


def probe_every_second(node: LbNode, topo: Topology, ptype: str = "tcp", port: int = 8080,
                       **extra: str) -> None:
    for ip in topo.backend_ips:
        args = ["create", "endpoint", ip, f"--probetype={ptype}", "--period=1", "--retries=2"]
        if port:
            args.append(f"--probeport={port}")
        args += [f"--{k}={v}" for k, v in extra.items()]
        cp = node.loxicmd(*args)
        assert cp.returncode == 0, cp.stderr


def monitored_rule(node: LbNode, topo: Topology, *extra: str, proto: str = "tcp") -> None:
    eps = ",".join(f"{ip}:1" for ip in topo.backend_ips)
    cp = node.loxicmd("create", "lb", VIP, f"--{proto}=2020:8080", f"--endpoints={eps}",
                      "--monitor", *extra)
    assert cp.returncode == 0, cp.stderr


def stop_backend(topo: Topology, i: int) -> None:
    proc = topo.backend_procs[i]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=5)


def restart_backend(lab: Lab, topo: Topology, i: int) -> None:
    topo.backend_procs[i] = start_backend(lab, topo.backends[i], f"server{i + 1}",
                                          http_port=8080, udp_port=8080)


def test_a_dead_tcp_backend_stops_getting_traffic_and_comes_back(
        lab: Lab, topo: Topology, node: LbNode) -> None:
    probe_every_second(node, topo)
    monitored_rule(node, topo)
    wait_for(lambda: set(ep_states(node).values()) == {"ok"}, timeout=5, what="all ok")
    assert sorted(names(topo, 3)) == ["server1", "server2", "server3"]

    stop_backend(topo, 0)
    killed = time.monotonic()
    wait_for(lambda: ep_states(node)[topo.backend_ips[0]] == "nok", timeout=8,
             what="server1's probe to fail")
    detected = time.monotonic() - killed
    # interval x retries + timeout, plus the polling of this test
    assert detected <= 1 * 2 + 0.5 + 2, f"detected after {detected:.1f} s"
    assert lb_states(node)[topo.backend_ips[0]] == "inactive"
    wide = pipe_table(node.loxicmd("get", "lb", "-o", "wide", check=True).stdout)
    assert {r["ENDPOINT"]: r["STATE"] for r in wide}[topo.backend_ips[0]] == "inactive"
    assert collections.Counter(names(topo, 12)) == {"server2": 6, "server3": 6}

    # updating the rule in place keeps what the probes know
    reweighted = ",".join(f"{ip}:2" for ip in topo.backend_ips)
    assert node.loxicmd("create", "lb", VIP, "--tcp=2020:8080", f"--endpoints={reweighted}",
                        "--monitor").returncode == 0
    assert lb_states(node)[topo.backend_ips[0]] == "inactive"
    assert ep_states(node)[topo.backend_ips[0]] == "nok"

    restart_backend(lab, topo, 0)
    wait_for(lambda: ep_states(node)[topo.backend_ips[0]] == "ok", timeout=10,
             what="server1 to recover")
    assert lb_states(node)[topo.backend_ips[0]] == "active"
    assert "server1" in names(topo, 6)


def test_udp_probe_sees_a_closed_port_through_icmp_unreachable(
        topo: Topology, node: LbNode) -> None:
    probe_every_second(node, topo, ptype="udp", probereq="ping", proberesp="server")
    monitored_rule(node, topo, "--probetype=udp", proto="udp")
    wait_for(lambda: set(ep_states(node).values()) == {"ok"}, timeout=5, what="all ok")
    stop_backend(topo, 1)
    wait_for(lambda: ep_states(node)[topo.backend_ips[1]] == "nok", timeout=8,
             what="server2's udp probe to fail")
    assert lb_states(node)[topo.backend_ips[1]] == "inactive"


def test_ping_probe_follows_the_backends_link(topo: Topology, node: LbNode) -> None:
    probe_every_second(node, topo, ptype="ping", port=0)
    monitored_rule(node, topo, "--probetype=ping")
    wait_for(lambda: set(ep_states(node).values()) == {"ok"}, timeout=5, what="all ok")
    wait_for(lambda: all(r["MINDELAY"].endswith("ms") for r in pipe_table(
        node.loxicmd("get", "ep", check=True).stdout)), timeout=5, what="ping round trips")
    topo.backends[2].ip("link", "set", "eth0", "down")
    wait_for(lambda: ep_states(node)[topo.backend_ips[2]] == "nok", timeout=8,
             what="server3's ping to fail")
    assert "server3" not in names(topo, 4)
    topo.backends[2].ip("link", "set", "eth0", "up")
    topo.backends[2].ip("route", "replace", "default", "via", "198.18.13.1")
    wait_for(lambda: ep_states(node)[topo.backend_ips[2]] == "ok", timeout=10,
             what="server3 back")


def test_host_state_red_yellow_green(topo: Topology, node: LbNode) -> None:
    monitored_rule(node, topo)
    ip = topo.backend_ips[0]

    def host_state(state: str) -> None:
        status, body = node.api("POST", "/config/endpointhoststate",
                                {"hostName": ip, "epPort": 8080, "epProto": "tcp",
                                 "state": state})
        assert status == 200, body

    host_state("yellow")  # drain
    assert lb_states(node)[ip] == "inactive"
    assert "server1" not in names(topo, 6)
    host_state("green")
    assert lb_states(node)[ip] == "active"
    assert "server1" in names(topo, 3)
    host_state("red")
    assert "server1" not in names(topo, 6)
    status, body = node.api("POST", "/config/endpointhoststate",
                            {"hostName": ip, "epPort": 8080, "epProto": "tcp", "state": "blue"})
    assert status == 400 and "state" in body["result"]


def test_endpoints_shared_by_rules_are_probed_once(topo: Topology, node: LbNode) -> None:
    probe_every_second(node, topo)
    monitored_rule(node, topo)
    eps = ",".join(f"{ip}:1" for ip in topo.backend_ips)
    assert node.loxicmd("create", "lb", "198.18.100.2", "--tcp=2020:8080", f"--endpoints={eps}",
                        "--monitor").returncode == 0
    rows = pipe_table(node.loxicmd("get", "ep", check=True).stdout)
    assert sorted(r["HOST"] for r in rows) == sorted(topo.backend_ips)


@pytest.mark.parametrize("args, field", [
    (["--probetype=tcp"], "probePort"),
    (["--probetype=ping", "--probeport=80"], "probePort"),
    (["--probetype=http", "--probeport=80", "--period=0"], "period"),
])
def test_invalid_endpoint_configs_are_named_and_change_nothing(
        topo: Topology, node: LbNode, args: list[str], field: str) -> None:
    before = node.api("GET", "/config/endpoint/all")
    cp = node.loxicmd("create", "endpoint", topo.backend_ips[0], *args)
    assert cp.returncode in (1, 2) and field.lower() in cp.stderr.lower(), cp.stderr
    assert node.api("GET", "/config/endpoint/all") == before
    status, body = node.api("POST", "/config/endpoint",
                            {"hostName": topo.backend_ips[0], "probeType": "tcp",
                             "probePort": 8080, "probeDuration": 86401})
    assert status == 400 and "probeDuration" in body["result"]



def test_changing_the_probe_of_a_down_endpoint_keeps_it_down(topo: Topology,
                                                             node: LbNode) -> None:
    """Creating an endpoint probe again (LoxiLB's way to change it) makes a new probe: it
    starts where the old one was, so a dead backend gets no traffic until a probe says it
    is back (not at once, for a whole new period x retries)."""
    dead = topo.backend_ips[0]
    for period in (1, 1):  # the same config twice: unchanged, not an error
        assert node.loxicmd("create", "endpoint", dead, "--name=p0", "--probetype=tcp",
                            "--probeport=8080", f"--period={period}", "--retries=2"
                            ).returncode == 0
    monitored_rule(node, topo)
    stop_backend(topo, 0)
    wait_for(lambda: lb_states(node)[dead] == "inactive", timeout=8, what="endpoint down")
    assert node.loxicmd("create", "endpoint", dead, "--name=p0", "--probetype=tcp",
                        "--probeport=8080", "--period=30", "--retries=5").returncode == 0
    assert lb_states(node)[dead] == "inactive"
    assert ep_states(node)[dead] == "nok"
    assert "server1" not in names(topo, 6)
