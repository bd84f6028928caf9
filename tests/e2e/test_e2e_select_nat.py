"""End to end, issue 3: selection algorithms, NAT modes, fullNAT port collisions, the
allow-list and in-place updates, with real TCP/UDP through the real agent and datapath.

Topology (tests/lab.py): client(s) -- lb (loxilbd + eBPF) -- srv1..3 answering with their
names; ``GET /peer`` and UDP ``peer?`` make a backend tell the source address it saw.
tests/client.py runs inside the client namespaces for what curl cannot do (many sequential
requests in one process, a fixed source port, long-lived echo sessions verifying every byte).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import pytest
from lab import (
    CommandError,
    Lab,
    Netns,
    Topology,
    end_by_stdin,
    http_get,
    tcplb_topology,
    wait_for,
)
from lbnode import LbNode
from testpaths import CLIENT_SCRIPT as CLIENT

pytestmark = pytest.mark.e2e

VIP = "198.18.100.1"
VPORT = 2020
PRIVATE_IP = "198.18.50.1"
HTTP, ECHO = 8080, 8081  # backend ports; a rule over VIP:8080-8081 keeps the port
SEL = {"rr": 0, "hash": 1, "priority": 2, "persist": 3, "lc": 4}
MODE = {"default": 0, "onearm": 1, "fullnat": 2}


# --------------------------------------------------------------------------- helpers


def start(lab: Lab, **topology: Any) -> tuple[Topology, LbNode]:
    topo = tcplb_topology(lab, **topology)
    return topo, LbNode(lab, topo.lb, topo.lb_ifaces).start()


def cli_create(node: LbNode, *args: str) -> None:
    cp = node.loxicmd("create", "lb", VIP, *args)
    assert cp.returncode == 0 and cp.stdout == "", (args, cp.returncode, cp.stderr)


def endpoints(topo: Topology, weights: list[int] | None = None, port: int | None = HTTP,
              which: list[int] | None = None) -> list[dict[str, Any]]:
    """API endpoint list; ``port`` None leaves targetPort out (a range keeps the port)."""
    idx = which if which is not None else list(range(len(topo.backend_ips)))
    eps = []
    for n, i in enumerate(idx):
        ep: dict[str, Any] = {"endpointIP": topo.backend_ips[i],
                              "weight": weights[n] if weights else 1}
        if port is not None:
            ep["targetPort"] = port
        eps.append(ep)
    return eps


def api_rule(node: LbNode, eps: list[dict[str, Any]], **svc: Any) -> None:
    """Create, or update in place (same identity), a rule through the REST API."""
    body = {"serviceArguments": {"externalIP": VIP, "port": VPORT, "protocol": "tcp", **svc},
            "endpoints": eps}
    status, answer = node.api("POST", "/config/loadbalancer", body)
    assert status == 200 and answer == {"result": "Success"}, (status, answer)


def client_run(ns: Netns, *args: str, timeout: float = 30) -> list[str]:
    cp = ns.run(sys.executable, CLIENT, *args, timeout=timeout)
    return cp.stdout.splitlines()


def http_names(ns: Netns, count: int, port: int = VPORT, path: str = "/",
               sport: int | None = None, gap: float = 0.0) -> list[str]:
    """``count`` sequential HTTP connections to the VIP; each answer's first line."""
    args = ["http", VIP, str(port), "--count", str(count), "--path", path, "--timeout", "3"]
    if sport is not None:
        args += ["--sport", str(sport)]
    if gap:
        args += ["--gap", str(gap)]
    return client_run(ns, *args, timeout=10 + count * 0.1)


def udp_answers(ns: Netns, count: int, payload: str, port: int = VPORT) -> list[str]:
    return client_run(ns, "udp", VIP, str(port), "--count", str(count), "--payload", payload,
                      "--timeout", "2")


def flows(node: LbNode, **query: str) -> list[dict[str, Any]]:
    path = "/config/conntrack/all"
    if query:
        path += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    status, body = node.api("GET", path)
    assert status == 200, body
    return [f for f in body["ctAttr"] if f["destinationIP"] == VIP]


def parse_act(act: str) -> dict[str, Any]:
    """``dnat-EP:PORT:wW`` or ``fdnat-NATIP:NATPORT,EP:PORT:wW``."""
    kind, _, rest = act.partition("-")
    out: dict[str, Any] = {"kind": kind}
    if kind == "fdnat":
        nat, _, rest = rest.partition(",")
        out["nat_ip"], nat_port = nat.rsplit(":", 1)
        out["nat_port"] = int(nat_port)
    ep, port, weight = rest.rsplit(":", 2)
    out.update(ep=ep, ep_port=int(port), weight=int(weight.lstrip("w")))
    return out


def flow_of(node: LbNode, client_ip: str, sport: int) -> dict[str, Any]:
    """The one conntrack flow of the client's connection from ``sport`` to the VIP."""
    def find() -> dict[str, Any] | None:
        mine = [f for f in flows(node) if f["sourceIP"] == client_ip and f["sourcePort"] == sport]
        assert len(mine) <= 1, mine
        return mine[0] if mine else None
    return wait_for(find, timeout=5, what=f"the flow of {client_ip}:{sport} in get ct")


def endpoint_of(node: LbNode, client_ip: str, sport: int) -> str:
    return str(parse_act(flow_of(node, client_ip, sport)["conntrackAct"])["ep"])


def drops(node: LbNode, reason: str) -> int:
    status, body = node.api("GET", "/config/dpstats")
    assert status == 200, body
    return sum(int(r["packets"]) for r in body["dpStats"] if r["reason"] == reason)


def assert_share(names: list[str], expected: dict[str, float], tolerance: float = 0.08) -> None:
    counts = Counter(names)
    assert set(counts) <= set(expected), counts
    for name, share in expected.items():
        got = counts[name] / len(names)
        assert abs(got - share) <= tolerance, (name, got, share, counts)


class EchoSession:
    """A long-lived echo session run by ``client.py session`` inside a client namespace."""

    def __init__(self, ns: Netns, port: int, *, sport: int | None = None,
                 interval: float = 0.0, chunk: int = 1024, timeout: float = 2.0) -> None:
        argv = [sys.executable, CLIENT, "session", VIP, str(port), "--interval", str(interval),
                "--chunk", str(chunk), "--timeout", str(timeout)]
        if sport is not None:
            argv += ["--sport", str(sport)]
        self.proc: subprocess.Popen[str] = ns.popen(
            *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    @property
    def last(self) -> dict[str, Any]:
        return self.events[-1] if self.events else {}

    @property
    def ended(self) -> bool:
        return self.last.get("event") not in (None, "connected", "echo")

    @property
    def bytes(self) -> int:
        return int(self.last.get("bytes", 0))

    def connected(self) -> tuple[str, int]:
        """Wait for the first verified echo; the session's local (client) address."""
        def ready() -> bool:
            assert not self.ended, self.events
            return self.last.get("event") == "echo"
        wait_for(ready, timeout=5, what="an echo session to connect and echo")
        ip, port = self.events[0]["local"].rsplit(":", 1)
        return ip, int(port)

    def wait_bytes(self, more_than: int, timeout: float = 5) -> None:
        def grown() -> bool:
            assert not self.ended, self.events
            return self.bytes > more_than
        wait_for(grown, timeout=timeout, what=f"echo session past {more_than} bytes")

    def close(self, timeout: float = 5) -> dict[str, Any]:
        """End it from the client side; the final event (``closed`` when all went well)."""
        end_by_stdin(self.proc, self._reader, timeout)
        return self.last


# --------------------------------------------------------------------------- selection


def test_priority_weighted_80_20_then_updated_in_place_to_40_40_20(lab: Lab) -> None:
    topo, node = start(lab)
    s1, s2, s3 = topo.backend_ips
    cli_create(node, f"--tcp={VPORT}:{HTTP}", f"--endpoints={s1}:80,{s2}:20",
               "--select=priority", "--name=weighted")
    names = http_names(topo.client, 600)
    assert len(names) == 600
    assert_share(names, {"server1": 0.8, "server2": 0.2})

    # the same identity with new weights and one more endpoint: updated in place
    api_rule(node, endpoints(topo, [40, 40, 20]), sel=SEL["priority"], name="weighted")
    (rule,) = node.rules()
    assert [(e["endpointIP"], e["weight"]) for e in rule["endpoints"]] == \
        [(s1, 40), (s2, 40), (s3, 20)]
    names = http_names(topo.client, 600)
    assert len(names) == 600
    assert_share(names, {"server1": 0.4, "server2": 0.4, "server3": 0.2})


def test_hash_same_tuple_same_endpoint_and_spread_over_ports(lab: Lab) -> None:
    topo, node = start(lab)
    eps = ",".join(f"{ip}:1" for ip in topo.backend_ips)
    cli_create(node, f"--tcp={VPORT}:{HTTP}", f"--endpoints={eps}", "--select=hash")
    cli_create(node, f"--tcp={VPORT + 1}:{HTTP}", f"--endpoints={eps}")  # rr: the control

    # Each connection from a fixed source port is closed before the next one reuses the
    # port: the same 5-tuple lands on the same endpoint every time.
    chosen: dict[int, str] = {}
    for sport in (40001, 40002, 40003, 40004, 40005):
        names = http_names(topo.client, 5, sport=sport)
        assert len(names) == 5 and len(set(names)) == 1, (sport, names)
        chosen[sport] = names[0]
    # ...because of the hash, not because conntrack kept the closed flow: the same reuse
    # of one source port towards the round-robin rule moves on every time.
    rr = http_names(topo.client, 6, port=VPORT + 1, sport=40009)
    assert len(set(rr)) == 3 and all(a != b for a, b in zip(rr, rr[1:], strict=False)), rr
    # later, after other traffic, a source port still maps where it did
    assert http_names(topo.client, 1, sport=40001) == [chosen[40001]]

    # many source ports (ephemeral, one per connection) spread over every endpoint
    spread = Counter(http_names(topo.client, 90))
    assert set(spread) == set(topo.backend_names), spread
    assert min(spread.values()) >= 10, spread


def test_persist_client_keeps_endpoint_across_ports_tcp_and_udp(lab: Lab) -> None:
    topo, node = start(lab, n_clients=2)
    eps = ",".join(f"{ip}:1" for ip in topo.backend_ips)
    cli_create(node, f"--tcp={VPORT}:{HTTP}", f"--endpoints={eps}", "--select=persist",
               "--name=sticky")
    cli_create(node, f"--udp={VPORT}:{HTTP}", f"--endpoints={eps}", "--select=persist",
               "--name=stickyudp")
    c1, c2 = topo.clients
    ip1 = topo.client_ips[0]

    names = http_names(c1, 12)
    assert len(names) == 12 and len(set(names)) == 1, names
    tcp_flows = [f for f in flows(node) if f["protocol"] == "tcp" and f["sourceIP"] == ip1]
    assert len({f["sourcePort"] for f in tcp_flows}) == 12, tcp_flows  # 12 source ports
    assert len({parse_act(f["conntrackAct"])["ep"] for f in tcp_flows}) == 1, tcp_flows
    # another client is bound on its own (new bindings are made round robin)
    other = http_names(c2, 4)
    assert len(set(other)) == 1 and other[0] != names[0], (names[0], other)

    answers = udp_answers(c1, 10, "hello")
    udp_names = {a.split(":", 1)[0] for a in answers}
    assert len(answers) == 10 and len(udp_names) == 1, answers
    assert all(a.endswith(":hello") for a in answers), answers
    udp_flows = [f for f in flows(node) if f["protocol"] == "udp" and f["sourceIP"] == ip1]
    assert len({f["sourcePort"] for f in udp_flows}) == 10, udp_flows
    assert len({parse_act(f["conntrackAct"])["ep"] for f in udp_flows}) == 1, udp_flows
    assert {f["conntrackState"] for f in udp_flows} == {"udp-est"}
    other_udp = {a.split(":", 1)[0] for a in udp_answers(c2, 4, "x")}
    assert len(other_udp) == 1 and other_udp != udp_names, (udp_names, other_udp)


def test_least_connections_idle_sessions_pin_load(lab: Lab) -> None:
    """LoxiLB's tcplblc: idle long-lived connections pin load on two endpoints."""
    topo, node = start(lab, http_port=HTTP, echo_port=ECHO)
    # One rule over VIP:8080-8081, each port kept: HTTP (names) on 8080 and echo on 8081
    # share the rule's endpoints, so they share the endpoints' connection counts.
    api_rule(node, endpoints(topo, port=None), port=HTTP, portMax=ECHO, sel=SEL["lc"],
             name="lc")
    idle = [EchoSession(topo.client, ECHO, interval=0) for _ in range(2)]
    pinned = [endpoint_of(node, topo.client_ip, s.connected()[1]) for s in idle]
    assert len(set(pinned)) == 2, pinned  # the second went to a less loaded endpoint
    (free,) = set(topo.backend_ips) - set(pinned)
    free_name = topo.backend_names[topo.backend_ips.index(free)]

    names = http_names(topo.client, 8, port=HTTP)
    assert names == [free_name] * 8, (pinned, names)
    assert not any(s.ended for s in idle), [s.events for s in idle]

    for s in idle:
        final = s.close()
        assert final["event"] == "closed" and final["bytes"] == 1024, s.events
    # the closed sessions no longer count: new connections spread again
    names = http_names(topo.client, 6, port=HTTP)
    assert Counter(names) == dict.fromkeys(topo.backend_names, 2), names


# --------------------------------------------------------------------------- NAT modes


@pytest.mark.parametrize("how", ["default", "onearm", "fullnat-private", "fullnat"])
def test_nat_mode_source_seen_by_backend_and_replies_from_vip(lab: Lab, how: str) -> None:
    """default keeps the client's address; onearm, and fullnat without privateIP, use the
    LB's address on the endpoint's link; fullnat with privateIP uses that (the backends
    route it back to the LB by their default route). Every answer comes from the VIP."""
    topo, node = start(lab)
    eps = ",".join(f"{ip}:1" for ip in topo.backend_ips)
    seen = {
        "default": dict.fromkeys(topo.backend_names, topo.client_ip),
        "onearm": dict(zip(topo.backend_names, topo.lb_backend_side_ips, strict=True)),
        "fullnat-private": dict.fromkeys(topo.backend_names, PRIVATE_IP),
        "fullnat": dict(zip(topo.backend_names, topo.lb_backend_side_ips, strict=True)),
    }[how]
    for proto in ("tcp", "udp"):
        if how == "fullnat-private":
            api_rule(node, endpoints(topo), protocol=proto, mode=MODE["fullnat"],
                     privateIP=PRIVATE_IP)
        else:
            mode = [] if how == "default" else [f"--mode={how}"]
            cli_create(node, f"--{proto}={VPORT}:{HTTP}", f"--endpoints={eps}", *mode)

    # TCP: the client's socket is connected to the VIP, so every answer came from it
    try:
        lines = http_names(topo.client, 3, path="/peer")
    except CommandError as exc:
        pytest.fail(f"{how}: no HTTP answer through the VIP: {exc.stderr.strip()}\n"
                    f"conntrack: {flows(node)}", pytrace=False)
    got: dict[str, list[str]] = {}
    for line in lines:
        name, peer = line.split()
        got[name] = peer.rsplit(":", 1)
    assert set(got) == set(topo.backend_names), got
    for name, (ip, _port) in got.items():
        assert ip == seen[name], (name, ip, seen[name])
    # UDP: the same through a connected socket (only answers from VIP:port count)
    got = {}
    for line in udp_answers(topo.client, 3, "peer?"):
        head, peer = line.split(" ")
        name, payload = head.split(":", 1)
        assert payload == "peer?", line
        got[name] = peer.rsplit(":", 1)
    assert set(got) == set(topo.backend_names), got
    for name, (ip, _port) in got.items():
        assert ip == seen[name], ("udp", name, ip, seen[name])

    fl = flows(node)
    assert len(fl) == 6, fl
    for f in fl:
        act = parse_act(f["conntrackAct"])
        assert act["kind"] == ("dnat" if how == "default" else "fdnat"), f
        if how != "default":
            ep_name = topo.backend_names[topo.backend_ips.index(act["ep"])]
            assert act["nat_ip"] == seen[ep_name], f


def test_fullnat_two_clients_same_source_port_at_once(lab: Lab) -> None:
    """LoxiLB drops the second of two clients using the same source port towards the same
    endpoint under fullNAT; here both work at once, on different NAT ports."""
    topo, node = start(lab, n_backends=1, n_clients=2, echo_port=9000)
    (srv,) = topo.backend_ips
    api_rule(node, [{"endpointIP": srv, "targetPort": 9000, "weight": 1}],
             mode=MODE["fullnat"], privateIP=PRIVATE_IP, name="fnat")
    sessions = [EchoSession(ns, VPORT, sport=40000, interval=0.05) for ns in topo.clients]
    for s in sessions:
        assert s.connected()[1] == 40000
    # both exchange data at the same time
    marks = [s.bytes for s in sessions]
    for s, mark in zip(sessions, marks, strict=True):
        s.wait_bytes(mark + 5 * 1024)

    fl = [flow_of(node, ip, 40000) for ip in topo.client_ips]
    acts = [parse_act(f["conntrackAct"]) for f in fl]
    assert [f["conntrackState"] for f in fl] == ["est", "est"], fl
    assert {a["kind"] for a in acts} == {"fdnat"} and {a["ep"] for a in acts} == {srv}, acts
    assert {a["nat_ip"] for a in acts} == {PRIVATE_IP}, acts
    assert acts[0]["nat_port"] != acts[1]["nat_port"], acts
    # the endpoint holds two connections from the NAT address, on those two ports
    ss = topo.backends[0].run("ss", "-Htn", "state", "established", "sport", "= :9000").stdout
    peers = sorted(line.split()[-1] for line in ss.splitlines())
    assert peers == sorted(f"{a['nat_ip']}:{a['nat_port']}" for a in acts), ss

    for s in sessions:
        final = s.close()
        assert final["event"] == "closed" and final["bytes"] >= 5 * 1024, s.events


# --------------------------------------------------------------------------- allow-list


def test_allow_list_serves_listed_prefixes_and_drops_the_rest(lab: Lab) -> None:
    topo, node = start(lab, n_clients=2)
    c1, c2 = topo.clients
    eps = ",".join(f"{ip}:1" for ip in topo.backend_ips)
    cli_create(node, f"--tcp={VPORT}:{HTTP}", f"--endpoints={eps}", "--sources=198.18.1.0/24",
               "--name=allowed")
    cli_create(node, f"--tcp={VPORT + 1}:{HTTP}", f"--endpoints={eps}",
               "--sources=198.18.200.0/24,198.18.2.0/24", "--name=others")
    (rule,) = [r for r in node.rules() if r["serviceArguments"]["port"] == VPORT]
    assert rule["allowedSources"] == [{"prefix": "198.18.1.0/24"}]

    assert sorted(http_names(c1, 3)) == topo.backend_names
    assert http_get(c2, f"http://{VIP}:{VPORT + 1}/").strip().startswith("server")

    before = drops(node, "source-not-allowed")
    for ns, port in ((c1, VPORT + 1), (c2, VPORT)):
        started = time.monotonic()
        with pytest.raises(CommandError):
            http_get(ns, f"http://{VIP}:{port}/", timeout=1)
        assert time.monotonic() - started < 5
    after = wait_for(lambda: (n := drops(node, "source-not-allowed")) > before and n,
                     timeout=3, what="source-not-allowed drops to grow")
    assert after - before >= 2, (before, after)  # at least one SYN from each client
    assert not [f for f in flows(node) if f["sourceIP"] == topo.client_ips[0]
                and f["destinationPort"] == VPORT + 1]


# --------------------------------------------------------------------------- update


def test_update_in_place_keeps_remaining_flows_and_ends_removed(lab: Lab) -> None:
    topo, node = start(lab, http_port=HTTP, echo_port=ECHO)
    api_rule(node, endpoints(topo, port=None), port=HTTP, portMax=ECHO, name="upd")
    sessions = [EchoSession(topo.client, ECHO, interval=0.05) for _ in range(3)]
    by_ep = {endpoint_of(node, topo.client_ip, s.connected()[1]): s for s in sessions}
    assert set(by_ep) == set(topo.backend_ips), by_ep  # round robin: one on each
    s1, s2, s3 = (by_ep[ip] for ip in topo.backend_ips)

    # drop srv2 (the middle one: the others' positions in the rule change)
    api_rule(node, endpoints(topo, port=None, which=[0, 2]), port=HTTP, portMax=ECHO,
             name="upd")
    (rule,) = node.rules()
    assert [e["endpointIP"] for e in rule["endpoints"]] == \
        [topo.backend_ips[0], topo.backend_ips[2]]

    # The session to the removed endpoint is reset towards both sides.
    wait_for(lambda: s2.ended, timeout=4, what="the removed endpoint's session to end")
    assert s2.last["event"] == "reset", s2.events
    wait_for(lambda: topo.backends[1].run("ss", "-Htn", "state", "established",
                                          "sport", f"= :{ECHO}").stdout == "",
             timeout=4, what="srv2's side of the session to be reset")
    assert not [f for f in flows(node) if f["conntrackAct"].startswith(
        f"dnat-{topo.backend_ips[1]}:")], flows(node)

    # the sessions to the endpoints that remain go on, every byte verified
    for s in (s1, s3):
        s.wait_bytes(s.bytes + 10 * 1024)
    # new connections avoid the removed endpoint
    names = http_names(topo.client, 6, port=HTTP)
    assert Counter(names) == {"server1": 3, "server3": 3}, names
    for s in (s1, s3):
        final = s.close()
        assert final["event"] == "closed" and final["bytes"] >= 10 * 1024, s.events
