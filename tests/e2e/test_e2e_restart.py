"""A restart keeps every rule: over 500 rules of every kind carry traffic before and after.

The agent once read the pinned service map with a wrong value stride after a restart, took
live services for rules deleted while it was away, and removed them: some VIPs refused
connections while `get lb` still listed them.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
from dp_harness import NetnsThread, tcp
from ha_lab import Streams
from lab import Lab, Topology, http_get, tcplb_topology, wait_for
from lbnode import LbNode
from testpaths import CLIENT_SCRIPT

from datapath.libbpf import prog_test_run
from loxicmd.agent.dataplane.dataplane import Dataplane
from loxicmd.agent.store.journal import StateStore

pytestmark = pytest.mark.e2e

ECHO_PORT = 7000



def _rule(vip: str, port: int, eps: list[str], *, proto: str = "tcp", target: int = 8080,
          port_max: int = 0, **svc: Any) -> dict[str, Any]:
    sources = svc.pop("sources", None)
    body: dict[str, Any] = {
        "serviceArguments": {"externalIP": vip, "port": port, "portMax": port_max,
                             "protocol": proto, **svc},
        "endpoints": [{"endpointIP": ip, "targetPort": target, "weight": 1} for ip in eps],
    }
    if sources:
        body["allowedSources"] = [{"prefix": p} for p in sources]
    return body


def rules_of_every_kind(topo: Topology) -> tuple[list[dict[str, Any]], list[str]]:
    """Over 500 rules and the traffic targets (``tcp|udp VIP PORT``) that must answer."""
    eps = topo.backend_ips
    client_net = topo.client_ip.rsplit(".", 1)[0] + ".0/24"
    kinds: list[tuple[int, dict[str, Any]]] = [
        (120, {}),                                     # rr, DNAT
        (60, {"proto": "udp"}),
        (40, {"port_max": 3003, "port": 3000}),        # port ranges
        (60, {"mode": 2}),                             # fullNAT
        (40, {"mode": 1}),                             # one-arm
        (60, {"sel": 1}),                              # hash (Maglev)
        (30, {"sel": 2}),                              # priority
        (30, {"sel": 3}),                              # persist
        (30, {"sel": 4}),                              # lc
        (40, {"sources": [client_net]}),               # allow-lists
        (40, {"block": 0}),                            # marks (block set per rule below)
    ]
    bodies: list[dict[str, Any]] = []
    targets: list[str] = []
    n = 0
    for count, kind in kinds:
        for _ in range(count):
            vip = f"198.18.{100 + n // 200}.{1 + n % 200}"
            opts = dict(kind)
            port = opts.pop("port", 80)
            proto = opts.pop("proto", "tcp")
            marked = "block" in opts
            if marked:
                opts["block"] = 1000 + n
            bodies.append(_rule(vip, port, eps, proto=proto, name=f"svc{n}", **opts))
            if not marked:  # a packet's mark does not survive the veth from the client
                last = opts.get("port_max") or port
                targets += [f"{proto} {vip} {p}" for p in sorted({port, last})]
            n += 1
    return bodies, targets


def sweep(topo: Topology, targets: list[str]) -> dict[str, str]:
    """Each target's answer (a backend's name) or error, from one client process."""
    cp = topo.client.run("python3", CLIENT_SCRIPT, "sweep", "--timeout", "2",
                         input="\n".join(targets) + "\n", timeout=600)
    out = {}
    for line in cp.stdout.splitlines():
        row = json.loads(line)
        out[row["target"]] = row.get("answer") or f"ERROR {row.get('error')}"
    return out


def marked_rules_forward(node: LbNode, bodies: list[dict[str, Any]]) -> list[str]:
    """Marked rules, checked with the real program on the node's pinned maps (test-run with
    the mark in the packet's context): what failed to reach one of the rule's endpoints."""
    failures = []
    netns = NetnsThread()  # the route lookups of the datapath see the lab's addresses
    try:
        dp = Dataplane(node.pin_dir)
        try:
            for i, body in enumerate(b for b in bodies if b["serviceArguments"].get("block")):
                sa = body["serviceArguments"]
                ctx = bytearray(12)
                ctx[8:12] = sa["block"].to_bytes(4, "little")
                frame = bytes(tcp(dst=sa["externalIP"], dport=sa["port"], sport=30000 + i))
                res = prog_test_run(dp.prog_fd, frame, ctx=bytes(ctx))
                dst = socket.inet_ntoa(res.data[30:34])
                if dst not in {ep["endpointIP"] for ep in body["endpoints"]}:
                    failures.append(f"{sa['externalIP']} mark {sa['block']}: to {dst} "
                                    f"(verdict {res.retval})")
        finally:
            dp.close()
    finally:
        netns.leave()
    return failures


def test_restart_keeps_500_rules_of_every_kind_carrying_traffic(lab: Lab) -> None:
    topo = tcplb_topology(lab, n_backends=3)
    node = LbNode(lab, topo.lb, topo.lb_ifaces).start()
    bodies, targets = rules_of_every_kind(topo)
    assert len(bodies) >= 500
    assert set(node.bulk_post("/config/loadbalancer", bodies)) == {200}
    before = node.rules()
    assert len(before) == len(bodies)

    def all_answer() -> None:
        answers = sweep(topo, targets)
        bad = {t: a for t, a in answers.items()
               if a.split(":")[0] not in topo.backend_names}  # udp: "name:payload"
        assert not bad, f"{len(bad)} of {len(targets)} targets failed, e.g. " \
            f"{list(bad.items())[:5]}"
        assert not marked_rules_forward(node, bodies)

    all_answer()
    for _ in range(2):  # two restarts: the second reads what the first one wrote back
        assert node.stop() == 0
        node.start()
        log = node.log()
        assert "deleted while the agent was away" not in log, log[-2000:]
        assert node.rules() == node.rules()  # stable
        assert [r["serviceArguments"] for r in node.rules()] == \
            [r["serviceArguments"] for r in before]
        all_answer()
    # creating one again is "exists", not a second copy
    status, answer = node.api("POST", "/config/loadbalancer", bodies[0])
    assert status == 409, answer


def test_restart_with_an_endpoint_out_of_reach_starts_and_takes_it_back(lab: Lab) -> None:
    """A fullnat endpoint the node has no route to when the agent restores its rule (a
    link still down at boot) gets no new flows until the route is back; the agent starts."""
    topo = tcplb_topology(lab, n_backends=3)
    node = LbNode(lab, topo.lb, topo.lb_ifaces).start()
    eps = ",".join(f"{ip}:1" for ip in topo.backend_ips)
    node.loxicmd("create", "lb", "198.18.100.1", "--tcp=2020:8080", f"--endpoints={eps}",
                 "--mode=fullnat", check=True)
    assert node.stop() == 0
    topo.lb.ip("link", "set", "lbs3", "down")
    node.start()
    assert "no route to endpoint 198.18.13.2" in node.log()

    def states() -> dict[str, str]:
        (rule,) = node.rules()
        return {ep["endpointIP"]: ep["state"] for ep in rule["endpoints"]}

    assert states()["198.18.13.2"] == "inactive"
    names = [http_get(topo.client, "http://198.18.100.1:2020/").strip() for _ in range(6)]
    assert set(names) == {"server1", "server2"}, names
    topo.lb.ip("link", "set", "lbs3", "up")
    wait_for(lambda: states()["198.18.13.2"] == "active", timeout=15,
             what="the endpoint back once its route is")
    names = [http_get(topo.client, "http://198.18.100.1:2020/").strip() for _ in range(6)]
    assert "server3" in names


def test_state_written_before_the_probe_period_change_keeps_its_probing(lab: Lab) -> None:
    """Records without a format were written when a rule's probeTimeout was the attempt
    timeout of probes run every 10 s, and an omitted probeDuration meant 10 s: restored,
    they probe as they did."""
    topo = tcplb_topology(lab, n_backends=2)
    node = LbNode(lab, topo.lb, topo.lb_ifaces)
    rules = StateStore(node.state_dir)
    rules.load()
    rules.put("0", {"ruleId": 0, "slots": [[ip, 8080, i] for i, ip in
                                           enumerate(topo.backend_ips)],
                    "entry": {"serviceArguments": {
                        "externalIP": "198.18.100.1", "port": 2020, "protocol": "tcp",
                        "monitor": True, "probetype": "tcp", "probeTimeout": 2,
                        "probeRetries": 2},
                        "endpoints": [{"endpointIP": ip, "targetPort": 8080, "weight": 1}
                                      for ip in topo.backend_ips]}})
    rules.close()
    probes = StateStore(node.state_dir, "endpoints", lock=False)
    probes.load()
    probes.put("p", {"kind": "endpoint", "body": {"hostName": "198.18.77.7",
                                                  "name": "p", "probeType": "ping"}})
    probes.close()
    node.start()
    (rule,) = node.rules()
    assert rule["serviceArguments"]["probeTimeout"] == 10
    status, eps = node.api("GET", "/config/endpoint/all")
    assert {e["name"]: e["probeDuration"] for e in eps["Attr"]}["p"] == 10


def test_twenty_streams_go_on_through_an_agent_restart(lab: Lab) -> None:
    """SIGTERM leaves the datapath attached on its pinned maps: 20 live TCP streams (every
    byte checked) go on while no agent runs and after the next one takes over, with no
    reset; the new agent reports new connections again (the audit log) and probes the
    monitored endpoints (all active)."""
    topo = tcplb_topology(lab, n_backends=3, echo_port=ECHO_PORT)
    node = LbNode(lab, topo.lb, topo.lb_ifaces).start()
    status, answer = node.api("POST", "/config/loadbalancer", _rule(
        "198.18.100.1", ECHO_PORT, topo.backend_ips, target=ECHO_PORT, name="echo",
        monitor=True, probetype="tcp", probeport=ECHO_PORT, probeTimeout=1))
    assert status == 200, answer
    streams = Streams(topo.client, "198.18.100.1", ECHO_PORT, 20)
    try:
        streams.wait_ready()
        streams.wait_flowing()
        assert node.stop() == 0
        streams.wait_flowing()  # no agent: the datapath alone
        audit = node.state_dir / "audit.log"
        logged = audit.read_text().count("198.18.100.1") if audit.exists() else 0
        node.start()
        streams.wait_flowing()
        summary = streams.finish()
    finally:
        if streams.proc.poll() is None:
            streams.proc.kill()
    assert summary["returncode"] == 0, summary
    assert summary["connected"] == summary["closed"] == 20, summary
    for bad in ("resets", "mismatches", "timeouts", "eofs", "errors"):
        assert summary[bad] == 0, (bad, summary)
    # the restarted agent hears the datapath's events (the streams' ends, a new one)
    one = Streams(topo.client, "198.18.100.1", ECHO_PORT, 1)
    one.wait_ready()
    assert one.finish()["resets"] == 0
    wait_for(lambda: audit.read_text().count("198.18.100.1") > logged, timeout=10,
             what="new connections in the audit log after the restart")
    wait_for(lambda: all(e["state"] == "active" for r in node.rules()
                         for e in r["endpoints"]), timeout=10,
             what="the restarted agent's probes finding every endpoint up")


_POSTER = (
    "import http.client, json, sys\n"
    "conn = http.client.HTTPConnection('127.0.0.1', int(sys.argv[1]), timeout=30)\n"
    "for i, line in enumerate(sys.stdin):\n"
    "    try:\n"
    "        conn.request('POST', '/netlox/v1/config/loadbalancer', line,\n"
    "                     {'Content-Type': 'application/json'})\n"
    "        r = conn.getresponse(); r.read()\n"
    "    except OSError:\n"
    "        break\n"
    "    print(i, r.status, flush=True)\n"
)


def test_kill_9_during_bulk_creates_loses_no_acknowledged_rule(lab: Lab) -> None:
    """The agent SIGKILLed at random points while rules are being created, five times:
    every rule it answered 200 for is there after the restart, nothing it was not asked
    for is, and the one in flight is there whole or not at all."""
    import random

    topo = tcplb_topology(lab, n_backends=3)
    node = LbNode(lab, topo.lb, topo.lb_ifaces).start()
    rng = random.Random(12)
    acknowledged: dict[str, dict[str, Any]] = {}
    asked: dict[str, dict[str, Any]] = {}
    kept: set[str] = set()
    for round_ in range(5):
        bodies = [_rule(f"198.18.{110 + round_}.{i // 200 + 1}", 1000 + i % 200,
                        topo.backend_ips) for i in range(400)]
        for b in bodies:
            sa = b["serviceArguments"]
            asked[f"{sa['externalIP']}:{sa['port']}"] = b
        poster = node.ns.popen(sys.executable, "-c", _POSTER, str(node.port),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert poster.stdin is not None and poster.stdout is not None
        poster.stdin.write("".join(json.dumps(b) + "\n" for b in bodies))
        poster.stdin.close()
        time.sleep(rng.uniform(0.05, 0.8))
        node.kill()
        for line in poster.stdout:
            index, status = line.split()
            if status == "200":
                sa = bodies[int(index)]["serviceArguments"]
                acknowledged[f"{sa['externalIP']}:{sa['port']}"] = bodies[int(index)]
        poster.wait(timeout=30)
        node.start()
        have = {f"{r['serviceArguments']['externalIP']}:{r['serviceArguments']['port']}": r
                for r in node.rules()}
        missing = set(acknowledged) - set(have)
        assert not missing, f"round {round_}: acknowledged and lost: {sorted(missing)[:5]}"
        assert set(have) <= set(asked), sorted(set(have) - set(asked))[:5]
        in_flight = set(have) - set(acknowledged) - kept
        assert len(in_flight) <= 1, in_flight  # at most the one in flight when killed
        kept |= in_flight  # kept whole: it is the agent's now
        for key, rule in have.items():  # whole: its endpoints as posted
            assert {e["endpointIP"] for e in rule["endpoints"]} == set(topo.backend_ips), key
    assert len(acknowledged) > 50, len(acknowledged)  # the kills came mid-way
