"""End to end: hitless HA with real keepalived, two real agents syncing conntrack.

The HA lab (tests/ha_lab.py): a client, lb1 and lb2 (each ``loxilbd --cluster`` towards
the other, and keepalived with ``loxilbd-notify`` as its notify script and
``loxilbd-ready`` as its track script), three backends whose gateway is the server-side
VRRP VIP. Two services with round-robin selection (so that only conntrack, never a fresh
selection, keeps a flow on its endpoint): a fullNAT one whose source is that VIP, and a
default-mode (DNAT) one. 50 long-lived TCP echo streams over both and one UDP flow, every
byte verified.

SIGKILL of lb1's agent and keepalived: lb2 takes over and every stream and the UDP flow
go on through it (0 resets, no data error, the UDP flow on the same backend). lb1 comes
back: its keepalived stays in FAULT until its agent has lb2's table, then preempts; again
0 resets. Run with advert_int 1 and 0.1; the longest pause of any stream is printed
(``-s``) and recorded as a test property.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ha_lab import (
    KEEPALIVED,
    SERVER_VIP,
    HaTopology,
    Keepalived,
    Streams,
    ha_topology,
    keepalived_pair,
)
from lab import Lab, wait_for
from lbnode import LbNode

from loxicmd.agent.dataplane.pins import unpin

pytestmark = pytest.mark.e2e

FULLNAT_VIP, DNAT_VIP = "198.18.100.1", "198.18.100.2"
ECHO, UDP = 7000, 8080
STREAMS_PER_SERVICE = 25
UDP_INTERVAL = 0.02  # client.py streams' default --udp-interval
# short, so that the UDP flow's entries left on the node that is no longer MASTER age out
# within the test: they must do so silently (no delete sent to the new MASTER)
UDP_TIMEOUT = 4
LB_FRONT = {"lb1": "198.18.1.2", "lb2": "198.18.1.3"}


def rules(topo: HaTopology) -> list[dict[str, Any]]:
    def rule(vip: str, port: int, proto: str, mode: int, name: str) -> dict[str, Any]:
        extra: dict[str, Any] = {"privateIP": SERVER_VIP} if mode == 2 else {}
        if proto == "udp":
            extra["inactiveTimeOut"] = UDP_TIMEOUT
        return {"serviceArguments": {"externalIP": vip, "port": port, "protocol": proto,
                                     "sel": 0, "mode": mode, "name": name, **extra},
                "endpoints": [{"endpointIP": ip, "targetPort": port, "weight": 1}
                              for ip in topo.backend_ips]}
    return [rule(FULLNAT_VIP, ECHO, "tcp", 2, "echo-fullnat"),
            rule(FULLNAT_VIP, UDP, "udp", 2, "udp-fullnat"),
            rule(DNAT_VIP, ECHO, "tcp", 0, "echo-dnat")]


class HaCluster:
    def __init__(self, lab: Lab, topo: HaTopology, advert_int: float) -> None:
        self.lab, self.topo = lab, topo
        key = lab.workdir / "cluster.key"
        key.write_bytes(os.urandom(24).hex().encode())
        key.chmod(0o600)
        self.agents: dict[str, LbNode] = {}
        for name, ns in topo.lbs.items():
            other = next(o for o in topo.lbs if o != name)
            self.agents[name] = LbNode(lab, ns, ["eth0", "eth1"], extra_args=(
                "--cluster", LB_FRONT[other], "--cluster-key", str(key),
                "--cluster-listen", LB_FRONT[name]))
        notify, ready = shutil.which("loxilbd-notify"), shutil.which("loxilbd-ready")
        assert notify and ready, "loxilbd-notify/loxilbd-ready are not installed"
        self.state_files = {name: lab.workdir / f"keepalive-{name}.state"
                            for name in topo.lbs}
        self.kas: dict[str, Keepalived] = keepalived_pair(
            lab, topo, advert_int=advert_int,
            notify={n: f"{notify} --url http://127.0.0.1:{a.port} --vip {topo.client_vip} "
                       f"--state-file {self.state_files[n]}" for n, a in self.agents.items()},
            track={n: f"{ready} --url http://127.0.0.1:{a.port}"
                   for n, a in self.agents.items()})

    def start(self) -> None:
        for agent in self.agents.values():
            agent.start()
            for body in rules(self.topo):
                status, answer = agent.api("POST", "/config/loadbalancer", body)
                assert status == 200, answer
        for ka in self.kas.values():
            ka.start()
        self.kas["lb1"].wait_state("MASTER", timeout=20)
        self.kas["lb2"].wait_state("BACKUP", timeout=20)
        self.wait_agent_state("lb1", "MASTER")
        self.wait_agent_state("lb2", "BACKUP")

    def ha(self, name: str) -> dict[str, Any]:
        status, body = self.agents[name].api("GET", "/config/cistate/all")
        assert status == 200, body
        (default,) = [e for e in body["Attr"] if e["instance"] == "default"]
        return dict(default)

    def wait_agent_state(self, name: str, state: str, timeout: float = 20) -> None:
        wait_for(lambda: self.ha(name)["state"] == state, timeout=timeout,
                 what=f"{name}'s agent told {state}")

    def flows(self, name: str) -> list[dict[str, Any]]:
        status, body = self.agents[name].api("GET", "/config/conntrack/all")
        assert status == 200, body
        return [f for f in body["ctAttr"] if f["destinationIP"] in (FULLNAT_VIP, DNAT_VIP)]

    def rule_packets(self, name: str) -> int:
        """Packets lb `name`'s datapath counted on the services' rules."""
        return sum(int(str(ep.get("counter", "0:0")).split(":")[0] or 0)
                   for r in self.agents[name].rules() for ep in r["endpoints"])

    def block_sync(self, sender: str, receiver: str) -> Callable[[], None]:
        """Drop `sender`'s sync connections to `receiver`; returns the undo."""
        ns, table = self.topo.lbs[sender], f"blocksync{os.getpid()}"
        ns.run("nft", "-f", "-", check=True, input=(
            f"table inet {table} {{\n chain out {{\n type filter hook output priority 0;\n"
            f" ip daddr {LB_FRONT[receiver]} tcp dport 22222 drop\n }}\n}}\n"))
        return lambda: ns.run("nft", "delete", "table", "inet", table, check=True)

    def links(self, name: str, updown: str) -> None:
        for ifname in ("eth0", "eth1"):
            self.topo.lbs[name].ip("link", "set", ifname, updown)

    def blackhole(self, name: str) -> Callable[[], None]:
        """The node takes every frame and does nothing with it: its datapath detached and
        everything dropped at ingress (its kernel, which still holds the VIPs, would
        otherwise answer the endpoints' replies to the fullNAT address with resets).
        Returns the undo (the datapath comes back with the next agent)."""
        ns, table = self.topo.lbs[name], f"wedged{os.getpid()}"
        for ifname in ("eth0", "eth1"):
            ns.run("tc", "filter", "del", "dev", ifname, "ingress", check=True)
        ns.run("nft", "-f", "-", check=True, input="".join(
            f"table netdev {table} {{\n chain in_{i} {{\n type filter hook ingress device "
            f"{i} priority 0;\n drop\n }}\n}}\n" for i in ("eth0", "eth1")))
        return lambda: ns.run("nft", "delete", "table", "netdev", table, check=True)

    def kill(self, name: str) -> None:
        """The node's keepalived and agent die at once (SIGKILL; keepalived first, so
        that no track-script run sees the agent gone and hands over gracefully)."""
        self.kas[name].kill()
        self.agents[name].kill()


@pytest.fixture
def ha_topo(lab: Lab) -> HaTopology:
    if not os.access(KEEPALIVED, os.X_OK):
        pytest.fail(f"{KEEPALIVED} is missing (Debian package keepalived)", pytrace=False)
    return ha_topology(lab, echo_port=ECHO, udp_port=UDP)


@pytest.fixture
def streams(ha_topo: HaTopology) -> Iterator[list[Streams]]:
    made: list[Streams] = []
    yield made
    for s in made:
        if s.proc.poll() is None:
            s.proc.kill()


@pytest.mark.parametrize("how", ["processes", "node", "blackhole"])
@pytest.mark.parametrize("advert_int", [1.0, 0.1])
def test_failover_and_failback_break_no_flow(lab: Lab, ha_topo: HaTopology,
                                             streams: list[Streams], advert_int: float,
                                             how: str, record_property: Any) -> None:
    """How lb1 dies, its agent and keepalived SIGKILLed in each case:
    - `processes`: only that; its datapath (pinned, attached) goes on forwarding what
      reaches it until lb2's gratuitous ARPs move the hosts over;
    - `node`: its links go down too (the machine dies): the switches flood frames for
      its MAC to every port, and lb2's datapath carries the synced flows among them at
      once, before VRRP even makes it MASTER;
    - `blackhole`: its datapath is detached and every frame dropped, links up (a wedged
      node): everything sent to it is lost until VRRP moves the VIPs, so the pause is
      VRRP's master-down interval (3 x advert_int + skew) stretched by TCP's
      retransmission back-off."""
    cluster = HaCluster(lab, ha_topo, advert_int)
    cluster.start()
    # the state file keepalived's notify keeps, as LoxiLB's
    assert "INSTANCE default is in MASTER state vip 198.18.1.1" in \
        cluster.state_files["lb1"].read_text()

    streams += [Streams(ha_topo.client, FULLNAT_VIP, ECHO, STREAMS_PER_SERVICE,
                        udp=f"{FULLNAT_VIP}:{UDP}"),
                Streams(ha_topo.client, DNAT_VIP, ECHO, STREAMS_PER_SERVICE)]
    for s in streams:
        s.wait_ready()
        s.wait_flowing()
    # lb2 has every flow before anything fails: sync, not luck, carries them over
    wait_for(lambda: len(cluster.flows("lb2")) >= 2 * STREAMS_PER_SERVICE + 1, timeout=10,
             what="lb2 holding lb1's flows")
    assert {f["conntrackState"] for f in cluster.flows("lb2") if f["protocol"] == "tcp"} \
        == {"est"}
    wide = cluster.agents["lb2"].loxicmd("get", "ha", "-o", "wide", check=True).stdout
    assert "synced" in wide and f"{LB_FRONT['lb1']}:22222(connected, table done)" in wide

    # failover: lb1's agent and keepalived die
    lb2_before = cluster.rule_packets("lb2")
    cluster.kill("lb1")
    if how == "node":
        cluster.links("lb1", "down")
    elif how == "blackhole":
        unwedge = cluster.blackhole("lb1")
    cluster.kas["lb2"].wait_state("MASTER", timeout=15)
    cluster.wait_agent_state("lb2", "MASTER")
    for s in streams:
        s.wait_flowing(timeout=20)
    udp_before = streams[0].progress()["udp"]["answered"]
    failover = [s.progress()["max_pause_s"] for s in streams]
    assert cluster.rule_packets("lb2") > lb2_before + 1000, "the traffic is on lb2"
    # flows that only lb2 ever carried (a UDP one too): failback must hand them to lb1
    streams.append(Streams(ha_topo.client, DNAT_VIP, ECHO, STREAMS_PER_SERVICE,
                           udp=f"{FULLNAT_VIP}:{UDP}"))
    streams[-1].wait_ready()
    streams[-1].wait_flowing()
    assert streams[0].progress()["udp"]["answered"] > udp_before + 20, "UDP flows via lb2"
    assert "INSTANCE default is in MASTER state" in cluster.state_files["lb2"].read_text()

    # failback: lb1 comes back; while lb2's table cannot reach it (lb2's connection to it
    # is blocked), its keepalived is held in FAULT, and lb2 stays MASTER
    block = cluster.block_sync("lb2", "lb1")
    cluster.kas["lb1"].start()  # first: it takes away the VIPs the crash left
    if how == "node":  # a machine that died boots with no pinned maps: no flow at all
        cp = ha_topo.lbs["lb1"].run("loxilbd", "--cleanup", *cluster.agents["lb1"].pin_args,
                                    check=False)
        assert cp.returncode == 0, cp.stderr
        cluster.links("lb1", "up")
    elif how == "blackhole":
        unwedge()
    cluster.agents["lb1"].start()
    lb1_before = cluster.rule_packets("lb1")
    cluster.kas["lb1"].wait_state("FAULT", timeout=10)
    assert cluster.ha("lb1")["state"] != "MASTER", "restarted as MASTER before told"
    ready = cluster.topo.lbs["lb1"].run(
        "loxilbd-ready", "--url", f"http://127.0.0.1:{cluster.agents['lb1'].port}",
        check=False)
    assert ready.returncode == 1 and "sync not finished" in ready.stderr, ready.stderr
    time.sleep(3 * advert_int + 1)
    assert cluster.kas["lb1"].state() == "FAULT" and cluster.kas["lb2"].state() == "MASTER"
    block()  # lb2 reconnects, sends its table: lb1 is ready and preempts
    cluster.kas["lb1"].wait_state("MASTER", timeout=30)
    assert cluster.ha("lb1")["sync"]["ready"]
    cluster.wait_agent_state("lb1", "MASTER")
    cluster.kas["lb2"].wait_state("BACKUP", timeout=15)
    for s in streams:
        s.wait_flowing(timeout=20)
    assert cluster.rule_packets("lb1") > lb1_before + 1000, "the traffic is back on lb1"
    time.sleep(UDP_TIMEOUT + 2)  # lb2's own entries of the UDP flow age out meanwhile
    for s in streams:
        s.wait_flowing(timeout=20)

    summaries = [s.finish() for s in streams]
    pauses = [round(float(s["max_pause_s"]), 3) for s in summaries]
    udp = summaries[0]["udp"]
    print(f"\n{how} die, advert_int {advert_int}: longest stream pause at failover "
          f"{max(failover)} s, over the whole run {max(pauses)} s (fullNAT {pauses[0]} s, "
          f"DNAT {pauses[1]} s, opened on lb2 {pauses[2]} s); UDP longest gap "
          f"{udp['max_gap_s']} s, {udp['lost']} of {udp['sent']} datagrams lost")
    # the outage: none while a datapath still takes the frames; else VRRP's master-down
    # interval (3 x advert_int + skew), doubled at most by TCP's back-off
    down = 3 * advert_int + (256 - 100) / 256 * advert_int
    bound = 1.0 if how != "blackhole" else 2 * (down + 0.5)
    assert max(pauses) < bound and udp["max_gap_s"] < bound, (pauses, udp, bound)
    record_property("max_pause_s", max(pauses))
    record_property("udp_max_gap_s", udp["max_gap_s"])
    for summary in summaries:
        assert summary["returncode"] == 0, (summary.get("problems"), summary)
        assert summary["connected"] == summary["closed"] == STREAMS_PER_SERVICE, summary
        for bad in ("resets", "mismatches", "timeouts", "eofs"):
            assert summary[bad] == 0, (bad, summary)
    for flow in (udp, summaries[2]["udp"]):  # opened on lb1, opened on lb2
        assert flow["endpoint_changes"] == 0, flow
    # datagrams are lost only while no LB forwards (at most the failover's and the
    # failback's gaps, each no longer than the longest one)
    assert udp["answered"] > 0 and udp["lost"] * UDP_INTERVAL <= 2 * udp["max_gap_s"] + 0.5, \
        udp


def test_the_notify_script_keeps_one_line_per_instance(lab: Lab, ha_topo: HaTopology) -> None:
    """loxilbd-notify against a real agent: the API state and LoxiLB's state file."""
    agent = LbNode(lab, ha_topo.lbs["lb1"], ["eth0", "eth1"]).start()
    state = lab.workdir / "keepalive.state"
    notify = [shutil.which("loxilbd-notify") or "loxilbd-notify", "--url",
              f"http://127.0.0.1:{agent.port}", "--state-file", str(state)]
    for args in (["--vip", "198.18.1.1", "INSTANCE", "default", "BACKUP", "100"],
                 ["--instance", "blue", "INSTANCE", "VI_2", "MASTER", "100"],
                 ["--vip", "198.18.1.1", "INSTANCE", "default", "MASTER", "100"]):
        ha_topo.lbs["lb1"].run(*notify, *args, check=True)
    assert state.read_text().splitlines() == [
        "INSTANCE blue is in MASTER state vip none",
        "INSTANCE default is in MASTER state vip 198.18.1.1"]
    status, body = agent.api("GET", "/config/cistate/all")
    assert {e["instance"]: (e["state"], e["vip"]) for e in body["Attr"]} == {
        "default": ("MASTER", "198.18.1.1"), "blue": ("MASTER", "")}
    bad = ha_topo.lbs["lb1"].run(*notify, "INSTANCE", "default", "PANIC", check=False)
    assert bad.returncode == 2 and "PANIC" in bad.stderr
    # without an agent: the state file is still written, the failure said, status 1
    agent.stop()
    down = ha_topo.lbs["lb1"].run(*notify, "INSTANCE", "default", "FAULT", check=False)
    assert down.returncode == 1 and "could not tell the agent" in down.stderr
    assert "INSTANCE default is in FAULT state vip none" in state.read_text()
    ready = ha_topo.lbs["lb1"].run(shutil.which("loxilbd-ready") or "loxilbd-ready", "--url",
                                   f"http://127.0.0.1:{agent.port}", check=False)
    assert ready.returncode == 1 and "does not answer" in ready.stderr


def test_a_cluster_needs_its_key_and_names_what_is_wrong(lab: Lab, ha_topo: HaTopology) -> None:
    ns = ha_topo.lbs["lb1"]
    key = lab.workdir / "open.key"
    key.write_text("x" * 32)
    key.chmod(0o644)
    pins = f"/sys/fs/bpf/loxilb-never-{uuid.uuid4().hex[:8]}"
    lab.register_cleanup(lambda: unpin(pins))
    for args, said in (
            (["--cluster", "198.18.1.3"], "--cluster needs --cluster-key"),
            (["--cluster", "198.18.1.3:99999", "--cluster-key", str(key)], "HOST:PORT"),
            (["--cluster", "198.18.1.3", "--cluster-key", str(key)], "chmod 600")):
        cp = ns.run("loxilbd", "--state-dir", str(lab.workdir / "never"), "--bpffs-dir", pins,
                    *args, check=False, timeout=30)
        assert cp.returncode == 2 and said in cp.stderr, (args, cp.stderr)
    assert not (lab.workdir / "never").exists() and not os.path.exists(pins)


def test_the_readme_s_keepalived_conf_is_valid_for_keepalived(ha_topo: HaTopology,
                                                               lab: Lab) -> None:
    """The documented keepalived.conf (README), with this install's script paths, passes
    keepalived's own check on a node with the interfaces it names."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    conf = text.split("keepalived.conf of lb1", 1)[1].split("```\n", 2)[1]
    assert "loxilbd-ready" in conf and "loxilbd-notify" in conf
    bindir = str(Path(shutil.which("loxilbd-ready") or "").parent)
    path = lab.workdir / "readme-keepalived.conf"
    path.write_text(conf.replace("/usr/local/bin", bindir))
    cp = ha_topo.lbs["lb1"].run(KEEPALIVED, "--config-test", "-f", str(path), check=False)
    assert cp.returncode == 0 and not cp.stderr.strip(), cp.stderr
