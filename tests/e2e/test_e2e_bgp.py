"""End to end: the agents announce service VIPs over BGP to real BIRD 2 and GoBGP peers.

The HA lab (tests/ha_lab.py), with BGP: the client namespace runs BIRD (AS 64512, eBGP
with both LB nodes; its kernel protocol puts the paths it selects in the client's routing
table, so the client's traffic goes where BGP says), and a namespace ``gobgp`` on the
client-side switch runs gobgpd (AS 64601, iBGP with both LB nodes, so it also sees local
preference). lb1 and lb2 (AS 64601) run ``loxilbd``, configured with ``loxicmd``.
Services are fullNAT (the LB's own address as source), so the backends answer whichever
LB carried a flow.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from bgp_lab import BIRD, GOBGPD, Bird, GoBgp, Peer
from ha_lab import KEEPALIVED, LB_ADDRS, HaTopology, _plug, ha_topology, keepalived_pair
from lab import Lab, wait_for
from lbnode import LbNode, pipe_table

pytestmark = pytest.mark.e2e

LB_AS, BIRD_AS = 64601, 64512
GOBGP_IP = "198.18.1.20"
VIP, PLAIN_VIP = "198.18.100.1", "198.18.100.2"
HTTP = 8080
IMPORTED = "198.18.60.0/24"  # announced by BIRD, imported by lb1
HOLD_TIME = 6  # BIRD's: the session's hold time is the lower of both sides'


def front(name: str) -> str:
    return LB_ADDRS[name][0]


def prefix(vip: str) -> str:
    return f"{vip}/32"


def ok(node: LbNode, *argv: str) -> str:
    cp = node.loxicmd(*argv)
    assert cp.returncode == 0, (argv, cp.stdout, cp.stderr)
    return cp.stdout


def service(topo: HaTopology, vip: str, bgp: bool = True, name: str = "web") -> dict[str, Any]:
    return {"serviceArguments": {"externalIP": vip, "port": HTTP, "protocol": "tcp",
                                 "mode": 2, "bgp": bgp, "name": name},
            "endpoints": [{"endpointIP": ip, "targetPort": HTTP, "weight": 1}
                          for ip in topo.backend_ips]}


WORKDIRS: list[str] = []  # of the labs made: their agents' ExaBGPs run from there


class BgpLab:
    def __init__(self, lab: Lab, topo: HaTopology,
                 agent_args: dict[str, tuple[str, ...]]) -> None:
        self.lab, self.topo = lab, topo
        WORKDIRS.append(str(lab.workdir))
        gobgp_ns = lab.add_ns("gobgp")
        _plug(lab, gobgp_ns, "eth0", f"{GOBGP_IP}/24", topo.cswitch, "gobgp")
        self.agents = {name: LbNode(lab, ns, ["eth0", "eth1"], extra_args=agent_args[name])
                       for name, ns in topo.lbs.items()}
        lbs = [Peer(name, front(name), LB_AS) for name in topo.lbs]
        self.bird = Bird(lab, topo.client, topo.client_ip, BIRD_AS, lbs,
                         static_routes=[f"{IMPORTED} via {topo.client_ip}"],
                         hold_time=HOLD_TIME)
        self.gobgp = GoBgp(lab, gobgp_ns, GOBGP_IP, LB_AS, lbs)

    def start(self, names: tuple[str, ...] = ("lb1", "lb2")) -> None:
        self.bird.start()
        self.gobgp.start()
        for name in names:
            node = self.agents[name].start()
            ok(node, "create", "bgpglobal", f"--routerid={front(name)}",
               f"--localas={LB_AS}", "--setnexthopself")
            ok(node, "create", "bgpneighbor", self.topo.client_ip, str(BIRD_AS))
            ok(node, "create", "bgpneighbor", GOBGP_IP, str(LB_AS))
        for name in names:
            self.wait_established(name)

    def wait_established(self, name: str, timeout: float = 30) -> None:
        wait_for(lambda: self.bird.established(name), timeout=timeout,
                 what=f"BIRD's session with {name} established")
        wait_for(lambda: self.gobgp.established(front(name)), timeout=timeout,
                 what=f"gobgpd's session with {name} established")

    def neighbors(self, name: str) -> dict[str, dict[str, Any]]:
        status, body = self.agents[name].api("GET", "/config/bgp/neigh/all")
        assert status == 200, body
        return {n["ipAddress"]: n for n in body["bgpNeiAttr"]}

    def set_state(self, name: str, state: str, vip: str = "") -> None:
        ok(self.agents[name], "set", "hastate", "default", state,
           *((f"--vip={vip}",) if vip else ()))

    def bird_path(self, vip: str, name: str) -> dict[str, Any] | None:
        return next((p for p in self.bird.routes(prefix(vip)) if p["from"] == name), None)

    def gobgp_path(self, vip: str, name: str) -> dict[str, Any] | None:
        return next((p for p in self.gobgp.paths(prefix(vip))
                     if p["neighbor"] == front(name)), None)

    def client_route(self, vip: str) -> str:
        """The client's next hop towards `vip` (BIRD's kernel export)."""
        out = self.topo.client.ip("-j", "route", "get", vip).stdout
        return str(json.loads(out)[0].get("gateway", ""))

    def fetch(self, vip: str) -> str:
        cp = self.topo.client.run("curl", "-s", "--noproxy", "*", "--max-time", "5",
                                  f"http://{vip}:{HTTP}/", check=False, timeout=15)
        assert cp.returncode == 0, cp.stderr
        return cp.stdout

    def carried_by(self, name: str, vip: str) -> bool:
        status, body = self.agents[name].api("GET", f"/config/conntrack/all?ip={vip}")
        assert status == 200, body
        return any(f["sourceIP"] == self.topo.client_ip for f in body["ctAttr"])


@pytest.fixture
def bgp_topo(lab: Lab) -> HaTopology:
    for tool in (BIRD, GOBGPD):
        if not os.access(tool, os.X_OK):
            pytest.fail(f"{tool} is missing (Debian packages bird2, gobgpd)", pytrace=False)
    return ha_topology(lab, http_port=HTTP)


def test_announce_attributes_import_and_withdraw(lab: Lab, bgp_topo: HaTopology) -> None:
    """lb1 (BACKUP: worse path, --bgp-import) and lb2 (BACKUP: withdraw) peer with BIRD and
    gobgpd: a rule created with --bgp is announced with next hop self and the role's MED
    (and local preference to the iBGP peer), one without is not; roles change the
    attributes; the instance's VIP is the next hop without SetNextHopSelf; delete
    withdraws; BIRD's route is installed in lb1's routing table."""
    bl = BgpLab(lab, bgp_topo, {"lb1": ("--bgp-import",),
                                "lb2": ("--bgp-backup", "withdraw")})
    bl.start()
    lb1, lb2 = bl.agents["lb1"], bl.agents["lb2"]
    for node in (lb1, lb2):
        for body in (service(bgp_topo, VIP), service(bgp_topo, PLAIN_VIP, bgp=False,
                                                     name="plain")):
            status, answer = node.api("POST", "/config/loadbalancer", body)
            assert status == 200, answer

    # no HA yet (NOT_DEFINED): both announce as the node that serves
    for name in ("lb1", "lb2"):
        wait_for(lambda name=name: (bl.bird_path(VIP, name) or {}).get("med") == "10",
                 timeout=10, what=f"BIRD has {VIP} from {name} with MED 10")
        path = bl.bird_path(VIP, name)
        assert path is not None and path["next_hop"] == front(name), path
        assert path["as_path"] == str(LB_AS), path
        wait_for(lambda name=name: bl.gobgp_path(VIP, name) is not None, timeout=10,
                 what=f"gobgpd has {VIP} from {name}")
        gpath = bl.gobgp_path(VIP, name)
        assert gpath == {"best": gpath["best"], "neighbor": front(name),
                         "next_hop": front(name), "med": 10, "local_pref": 5000}, gpath
    assert bl.bird.routes(prefix(PLAIN_VIP)) == [] and bl.gobgp.paths(prefix(PLAIN_VIP)) == []

    # lb1 MASTER, lb2 BACKUP (withdraw): only lb1's path is left, and it is BIRD's
    bl.set_state("lb1", "MASTER")
    bl.set_state("lb2", "BACKUP")
    wait_for(lambda: bl.bird_path(VIP, "lb2") is None and bl.gobgp_path(VIP, "lb2") is None,
             timeout=10, what="lb2 (BACKUP, withdraw policy) withdrew its path")
    assert (bl.bird.best(prefix(VIP)) or {}).get("next_hop") == front("lb1")
    assert bl.client_route(VIP) == front("lb1")
    assert "be" in bl.fetch(VIP) and bl.carried_by("lb1", VIP)

    # lb1 BACKUP (worse policy): MED 20, local preference 100
    bl.set_state("lb1", "BACKUP")
    wait_for(lambda: (bl.gobgp_path(VIP, "lb1") or {}).get("local_pref") == 100, timeout=10,
             what="lb1's path with local preference 100")
    assert (bl.bird_path(VIP, "lb1") or {}).get("med") == "20"
    assert (bl.gobgp_path(VIP, "lb1") or {}).get("med") == 20
    # FAULT: withdrawn
    bl.set_state("lb1", "FAULT")
    wait_for(lambda: bl.bird.routes(prefix(VIP)) == [] and bl.gobgp.paths(prefix(VIP)) == [],
             timeout=10, what="every path withdrawn")
    # MASTER with the instance's VIP and no SetNextHopSelf: the VIP is the next hop
    ok(lb1, "create", "bgpglobal", f"--routerid={front('lb1')}", f"--localas={LB_AS}")
    bl.set_state("lb1", "MASTER", vip=bgp_topo.client_vip)
    wait_for(lambda: (bl.bird_path(VIP, "lb1") or {}).get("next_hop") == bgp_topo.client_vip,
             timeout=10, what="lb1's path via the instance's VIP")
    assert (bl.gobgp_path(VIP, "lb1") or {}).get("next_hop") == bgp_topo.client_vip

    # import: BIRD's static route is in lb1's routing table (lb2 was not asked to)
    def imported(name: str) -> list[dict[str, Any]]:
        out = bgp_topo.lb(name).ip("-j", "route", "show", IMPORTED).stdout
        return json.loads(out) if out.strip() else []
    wait_for(lambda: imported("lb1") != [], timeout=10, what=f"{IMPORTED} in lb1's table")
    (route,) = imported("lb1")
    assert route["gateway"] == bgp_topo.client_ip and route["protocol"] == "196", route
    assert imported("lb2") == []
    rows = {r["PEER"]: r for r in pipe_table(ok(lb1, "get", "bgpnei", "-o", "wide"))}
    bird_row = rows[bgp_topo.client_ip]
    assert bird_row["STATE"] == "ESTABLISHED" and bird_row["AS"] == str(BIRD_AS)
    assert (bird_row["SENT"], bird_row["RECEIVED"], bird_row["ACCEPTED"]) == ("1", "1", "1")
    assert bird_row["HOLD"] == str(HOLD_TIME) and bird_row["LOCAL"] == front("lb1")
    assert rows[GOBGP_IP]["STATE"] == "ESTABLISHED" and rows[GOBGP_IP]["RECEIVED"] == "0"

    # delete withdraws
    ok(lb1, "delete", "lb", VIP, f"--tcp={HTTP}")
    wait_for(lambda: bl.bird_path(VIP, "lb1") is None and bl.gobgp_path(VIP, "lb1") is None,
             timeout=10, what="lb1's path withdrawn on delete")
    # a neighbor deleted: its session ends, the other stays up
    since = bl.bird.protocol("lb1")["since"]
    ok(lb1, "delete", "bgpneighbor", GOBGP_IP, str(LB_AS))
    wait_for(lambda: not bl.gobgp.established(front("lb1")), timeout=10,
             what="gobgpd's session with lb1 closed")
    assert bl.bird.protocol("lb1")["since"] == since and bl.bird.established("lb1")
    assert set(bl.neighbors("lb1")) == {bgp_topo.client_ip}
    # the agent's own words for mistakes
    cp = lb1.loxicmd("delete", "bgpneighbor", GOBGP_IP, str(LB_AS))
    assert cp.returncode == 1 and f"no BGP neighbor {GOBGP_IP}" in cp.stderr, cp.stderr
    cp = lb1.loxicmd("create", "bgpneighbor", bgp_topo.client_ip, "65000")
    assert cp.returncode == 1 and "409" in cp.stderr and "already exists" in cp.stderr
    status, body = lb1.api("POST", "/config/bgp/global",
                           {"routerId": "::1", "localAs": LB_AS})
    assert status == 400 and body["result"].startswith("routerId: '::1'"), body
    status, body = lb1.api("POST", "/config/bgp/neigh", {"ipAddress": "224.0.0.5",
                                                         "remoteAs": 1})
    assert status == 400 and "ipAddress" in body["result"], body
    assert set(bl.neighbors("lb1")) == {bgp_topo.client_ip}


def test_failover_moves_the_preferred_path(lab: Lab, bgp_topo: HaTopology) -> None:
    """keepalived elects lb1: BIRD's and gobgpd's best path to the VIP is lb1's, lb2's is
    there as the worse one, and the client's traffic goes through lb1. lb1's keepalived
    stops: lb2 becomes MASTER and the best path, and the client's next connection goes
    through lb2. lb1's keepalived comes back and preempts: the path moves back."""
    if not os.access(KEEPALIVED, os.X_OK):
        pytest.fail(f"{KEEPALIVED} is missing (Debian package keepalived)", pytrace=False)
    bl = BgpLab(lab, bgp_topo, {"lb1": (), "lb2": ()})
    bl.start()
    for node in bl.agents.values():
        status, answer = node.api("POST", "/config/loadbalancer", service(bgp_topo, VIP))
        assert status == 200, answer
    notify = "loxilbd-notify"
    kas = keepalived_pair(lab, bgp_topo, notify={
        n: f"{notify} --url http://127.0.0.1:{a.port} --vip {bgp_topo.client_vip}"
        for n, a in bl.agents.items()})
    for ka in kas.values():
        ka.start()

    def preferred(name: str, other: str) -> bool:
        best, gbest = bl.bird.best(prefix(VIP)), bl.gobgp.best(prefix(VIP))
        return (best is not None and best["next_hop"] == front(name) and best["med"] == "10"
                and gbest is not None and gbest["next_hop"] == front(name)
                and gbest["local_pref"] == 5000
                and bl.client_route(VIP) == front(name))

    wait_for(lambda: preferred("lb1", "lb2"), timeout=30, what="lb1's path preferred")
    wait_for(lambda: (bl.bird_path(VIP, "lb2") or {}).get("med") == "20", timeout=10,
             what="lb2's path there as the worse one")
    assert (bl.gobgp_path(VIP, "lb2") or {}).get("local_pref") == 100
    bl.fetch(VIP)
    assert bl.carried_by("lb1", VIP) and not bl.carried_by("lb2", VIP)

    started = time.monotonic()
    kas["lb1"].stop()
    wait_for(lambda: preferred("lb2", "lb1"), timeout=30, what="lb2's path preferred")
    moved = time.monotonic() - started
    print(f"\nBGP failover: the best path moved to lb2 {moved:.2f} s after lb1's keepalived "
          "stopped")
    bl.fetch(VIP)
    assert bl.carried_by("lb2", VIP)

    kas["lb1"].start()
    wait_for(lambda: preferred("lb1", "lb2"), timeout=30, what="lb1's path preferred again")
    # no session was reset by any of it
    for name in ("lb1", "lb2"):
        assert bl.gobgp.neighbor(front(name)).get("state", {}).get("flops", 0) == 0


def test_hundred_services_dead_peer_and_speaker_restart(lab: Lab, bgp_topo: HaTopology) -> None:
    """100 services added at once reach both peers without resetting either session; a
    crashed ExaBGP is restarted and announces everything again; a killed agent takes its
    ExaBGP with it, and started again peers again from its saved configuration; a hung
    peer (SIGSTOP) is noticed within the hold time and the routes it gave are taken out of
    the routing table; while it is down, services and neighbors still change (ExaBGP
    takes every reload) and it gets everything when it is back."""
    bl = BgpLab(lab, bgp_topo, {"lb1": ("--bgp-import",), "lb2": ()})
    bl.start(("lb1",))
    lb1 = bl.agents["lb1"]
    since = bl.bird.protocol("lb1")["since"]
    bodies = [service(bgp_topo, f"198.18.101.{i}", name=f"s{i}") for i in range(1, 101)]
    posted = time.monotonic()
    assert set(lb1.bulk_post("/config/loadbalancer", bodies)) == {200}
    vips = {f"198.18.101.{i}/32" for i in range(1, 101)}

    def bird_count() -> int:
        out = bl.bird.birdc("show", "route", "protocol", "lb1", "count").stdout
        return int(next((w for w in out.split() if w.isdigit()), "0"))

    def gobgp_count() -> int:
        rib = bl.gobgp._json("global", "rib") or {}
        return len(vips & set(rib))
    wait_for(lambda: bird_count() == 100 and gobgp_count() == 100, timeout=30,
             what="100 routes at BIRD and gobgpd")
    print(f"\nBGP: 100 services posted and their routes at both peers in "
          f"{time.monotonic() - posted:.2f} s")
    assert bl.bird.protocol("lb1")["since"] == since and bl.bird.established("lb1")
    assert bl.gobgp.neighbor(front("lb1"))["state"].get("flops", 0) == 0
    assert bl.neighbors("lb1")[bgp_topo.client_ip]["advertisedPrefixes"] == 100

    # ExaBGP crashes: the agent starts it again and it announces everything again
    status, glob = lb1.api("GET", "/config/bgp/global")
    assert status == 200 and glob["speaker"]["state"] == "running", glob
    os.kill(glob["speaker"]["pid"], signal.SIGKILL)
    wait_for(lambda: (lb1.api("GET", "/config/bgp/global")[1]["speaker"]["restarts"] == 1),
             timeout=15, what="the speaker restarted")
    bl.wait_established("lb1")
    wait_for(lambda: bird_count() == 100 and gobgp_count() == 100, timeout=30,
             what="100 routes announced again")

    # the agent is killed: its ExaBGP ends with it (the peers drop its routes at once);
    # started again, its configuration and rules are saved and it peers again
    lb1.kill()
    wait_for(lambda: bird_count() == 0, timeout=15, what="lb1's routes gone with its agent")
    wait_for(lambda: not speakers(), timeout=10, what="no ExaBGP left by the killed agent")
    lb1.start()
    bl.wait_established("lb1")
    wait_for(lambda: bird_count() == 100, timeout=30, what="100 routes after the restart")

    # a hung peer: noticed within the hold time, its routes out of lb1's table
    wait_for(lambda: bgp_topo.lb("lb1").ip("route", "show", IMPORTED).stdout.strip() != "",
             timeout=10, what=f"{IMPORTED} imported")
    bl.bird.pause()
    try:
        hung = time.monotonic()
        wait_for(lambda: bl.neighbors("lb1")[bgp_topo.client_ip]["state"] != "ESTABLISHED",
                 timeout=HOLD_TIME + 10, interval=0.2, what="the hung peer noticed")
        noticed = time.monotonic() - hung
        print(f"\nBGP: a hung peer (hold time {HOLD_TIME} s) noticed after {noticed:.1f} s")
        # the hold timer runs from the peer's last message (a KEEPALIVE every hold/3 s, so
        # up to 2 s before it hung); ExaBGP counts it in whole seconds, so it expires
        # between hold and hold + 1 s after that message, checked once per turn of its
        # loop; the agent hears it at once
        assert noticed <= HOLD_TIME + 2, noticed
        assert bgp_topo.lb("lb1").ip("route", "show", IMPORTED).stdout.strip() == ""
        assert gobgp_count() == 100  # the other session is untouched
        # while BIRD is down: 5 more services, gobgpd deleted (its session ends) and
        # added again (it gets all 105)
        more = [service(bgp_topo, f"198.18.101.{i}", name=f"s{i}") for i in range(101, 106)]
        assert set(lb1.bulk_post("/config/loadbalancer", more)) == {200}
        vips.update(f"198.18.101.{i}/32" for i in range(101, 106))
        ok(lb1, "delete", "bgpneighbor", GOBGP_IP, str(LB_AS))
        wait_for(lambda: not bl.gobgp.established(front("lb1")), timeout=15,
                 what="gobgpd's session with lb1 closed while BIRD is down")
        ok(lb1, "create", "bgpneighbor", GOBGP_IP, str(LB_AS))
        wait_for(lambda: gobgp_count() == 105, timeout=30, what="105 routes at gobgpd")
    finally:
        bl.bird.resume()
    wait_for(lambda: bl.bird.established("lb1"), timeout=30, what="BIRD back")
    wait_for(lambda: bird_count() == 105, timeout=30, what="105 routes at BIRD")
    # BIRD's neighbor changed in what ExaBGP does not know peers by (multi-hop), deleted
    # and created back to back: its session starts again and gets everything
    since = bl.bird.protocol("lb1")["since"]
    status, _ = lb1.api("DELETE", f"/config/bgp/neigh/{bgp_topo.client_ip}?remoteAs={BIRD_AS}")
    assert status == 200
    status, _ = lb1.api("POST", "/config/bgp/neigh", {
        "ipAddress": bgp_topo.client_ip, "remoteAs": BIRD_AS, "setMultiHop": True})
    assert status == 200
    wait_for(lambda: bl.bird.protocol("lb1")["since"] != since and bird_count() == 105,
             timeout=30, what="BIRD's session again, with 105 routes")
    assert bl.neighbors("lb1")[bgp_topo.client_ip]["setMultiHop"] is True
    assert gobgp_count() == 105
    status, glob = lb1.api("GET", "/config/bgp/global")
    assert glob["speaker"]["restarts"] == 0, glob  # every reload was taken


def speakers() -> list[str]:
    """ExaBGP processes and their bridges run by this module's labs' agents."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if (("exabgp" in cmdline or "loxicmd.agent.bgp.bridge" in cmdline)
                and any(w in cmdline for w in WORKDIRS)):
            out.append(pid)
    return out


@pytest.fixture(autouse=True)
def _no_leftover_speakers() -> Iterator[None]:
    """Every ExaBGP (and bridge) a test's agents started ends with them."""
    yield
    wait_for(lambda: not speakers(), timeout=10, what="no ExaBGP left running")
