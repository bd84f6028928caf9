"""End to end, without the load balancer: the HA lab itself (tests/ha_lab.py).

Two LB namespaces that only route (no loxilbd) elect a master with keepalived; the client
reaches backend be1 through the VRRP gateway 198.18.1.1, be1 answers through 198.18.2.1.
50 verified TCP echo streams and a UDP flow (``client.py streams``) must survive a
SIGKILL of the master's keepalived and the failback, with stateless routing: zero
resets, mismatches, timeouts. What a SIGKILL leaves behind is checked too: lb1 keeps
its VIPs (stale) and its kernel keeps answering ARP for them.

``lb1_dies``: ``keepalived`` kills only keepalived (lb1 keeps routing, so the streams
never stop: lb1 forwards until lb2's gratuitous ARPs move the hosts over); ``node``
also turns lb1's forwarding off at the same moment (as when the agent's datapath dies
with it), so the streams pause for the real failover time: VRRP's master-down interval,
stretched by TCP's retransmission back-off (retransmits 0.2, 0.6, 1.4, 3.0, 6.2 s after
the loss: a 2.6-3.6 s outage at advert_int 1 costs 3.4 s or 6.8 s, depending on whether
the path is back before the retransmit at 3.0 s; about 0.5 s at advert_int 0.1).
Measured pauses are printed (``-s``) and recorded as test properties.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from ha_lab import (
    KEEPALIVED,
    HaTopology,
    Keepalived,
    Streams,
    ha_topology,
    keepalived_pair,
    mac_of,
    neighbour,
    sigkill_group,
)
from lab import Lab, wait_for

pytestmark = pytest.mark.e2e

STREAMS = 50


@pytest.fixture
def ha(lab: Lab) -> HaTopology:
    if not os.access(KEEPALIVED, os.X_OK):
        pytest.fail(f"{KEEPALIVED} is missing (Debian package keepalived)", pytrace=False)
    return ha_topology(lab)


def notified(path: Path) -> dict[str, list[str]]:
    """The states each LB's notify hook appended (``lbN INSTANCE default STATE PRIO``)."""
    seen: dict[str, list[str]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            who, kind, _name, state, _prio = line.split()
            assert kind == "INSTANCE", line
            seen.setdefault(who, []).append(state)
    return seen


def traffic_share(ha: HaTopology, seconds: float = 1.0) -> dict[str, int]:
    """Packets each LB received on its data interfaces during ``seconds``."""
    before = {name: ha.forwarded(name) for name in ha.lbs}
    time.sleep(seconds)
    return {name: ha.forwarded(name) - before[name] for name in ha.lbs}


def wait_gateway(ha: HaTopology, lb: str, timeout: float = 5) -> None:
    """Wait until the client and be1 send to ``lb``'s MACs for their gateways."""
    ns = ha.lb(lb)
    want = {"client": mac_of(ns, "eth0"), "be1": mac_of(ns, "eth1")}
    wait_for(lambda: all(ha.gateway_macs()[k] == v for k, v in want.items()),
             timeout=timeout, interval=0.05,
             what=f"client and be1 to use {lb}'s MACs (have {ha.gateway_macs()}, "
                  f"LB MACs {ha.lb_macs()})")


def fresh_resolver_reaches_client(ha: HaTopology, via: str, timeout: float = 5) -> float:
    """be2 forgets its gateway's MAC and pings the client: how long until it gets through
    ``via`` (the killed lb1's stale VIP answers the broadcast ARP first in this lab)."""
    be2 = ha.backends[1]
    want = mac_of(ha.lb(via), "eth1")
    be2.ip("neigh", "flush", "dev", "eth0")
    start = time.monotonic()

    def through() -> bool:
        ok = be2.run("ping", "-c1", "-W0.5", ha.client_ip, check=False).returncode == 0
        entry = neighbour(be2, ha.server_vip)
        return ok and entry is not None and entry.get("lladdr") == want
    wait_for(through, timeout=timeout, interval=0.05,
             what=f"be2 to reach the client through {via}")
    return time.monotonic() - start


def assert_no_stream_broke(counters: dict[str, Any]) -> None:
    broken = {k: counters[k] for k in ("resets", "mismatches", "timeouts", "eofs", "errors")}
    assert broken == dict.fromkeys(broken, 0), counters
    assert counters["connected"] == STREAMS, counters


@pytest.mark.parametrize("lb1_dies", ["keepalived", "node"])
@pytest.mark.parametrize("advert_int", [1.0, 0.1], ids=["advert1", "advert0.1"])
def test_streams_survive_sigkill_of_the_master_and_the_failback(
        lab: Lab, ha: HaTopology, advert_int: float, lb1_dies: str,
        record_property: Any) -> None:
    states = lab.workdir / "notify.states"
    kas = keepalived_pair(lab, ha, advert_int=advert_int,
                          notify={name: f"echo {name} >>{states}" for name in ha.lbs})
    lb1, lb2 = kas["lb1"], kas["lb2"]
    lb1.start()
    lb2.start()
    down = 3 * advert_int + advert_int  # master-down interval, rounded up
    lb1.wait_state("MASTER", timeout=down + 5)
    lb2.wait_state("BACKUP", timeout=2)
    wait_for(lambda: ha.vip_owner() == "lb1", timeout=2, what="lb1 holding both VIPs")

    be1 = ha.backend_ips[0]
    streams = Streams(ha.client, be1, ha.echo_port, STREAMS, udp=f"{be1}:{ha.udp_port}")
    try:
        ready = streams.wait_ready()
        assert ready["connected"] == STREAMS, ready
        wait_gateway(ha, "lb1")
        share = traffic_share(ha)
        assert share["lb1"] > 1000 > share["lb2"], share

        # -- SIGKILL the master's keepalived
        lb1.kill()
        if lb1_dies == "node":
            ha.set_forwarding("lb1", False)
        assert ha.vip_holders()["lb1"] == [ha.client_vip, ha.server_vip], \
            "a SIGKILLed keepalived leaves its VIPs behind"
        lb2.wait_state("MASTER", timeout=down + 3)
        wait_gateway(ha, "lb2")  # lb2's gratuitous ARPs beat lb1's stale VIPs
        streams.wait_flowing(more_rounds=10 * STREAMS, timeout=20)
        share = traffic_share(ha)
        assert share["lb2"] > 1000 and share["lb1"] < share["lb2"] * 0.05, \
            f"traffic did not move to lb2: {share}"
        assert ha.vip_holders() == {"lb1": [ha.client_vip, ha.server_vip],
                                    "lb2": [ha.client_vip, ha.server_vip]}
        resolve_s = fresh_resolver_reaches_client(ha, via="lb2")
        failover = streams.progress()
        assert_no_stream_broke(failover)

        # -- lb1 comes back and takes MASTER again (preempt)
        if lb1_dies == "node":
            ha.set_forwarding("lb1", True)
        lb1.start()
        assert "removing VIPs" in lb1.log(), lb1.log()
        lb1.wait_state("MASTER", timeout=down + 5)
        lb2.wait_state("BACKUP", timeout=3)
        wait_for(lambda: ha.vip_owner() == "lb1", timeout=3, what="lb1 holding both VIPs")
        wait_gateway(ha, "lb1")
        streams.wait_flowing(more_rounds=10 * STREAMS, timeout=10)
        share = traffic_share(ha)
        assert share["lb1"] > 1000 and share["lb2"] < share["lb1"] * 0.05, share
        assert_no_stream_broke(streams.progress())
    finally:
        summary = streams.finish()

    record_property("failover_max_pause_s", failover["max_pause_s"])
    record_property("failover_udp_max_gap_s", failover["udp"]["max_gap_s"])
    record_property("max_pause_s", summary["max_pause_s"])
    record_property("fresh_arp_resolution_s", round(resolve_s, 2))
    print(f"\n[ha-lab advert_int={advert_int} lb1_dies={lb1_dies}] failover: max TCP pause "
          f"{failover['max_pause_s']} s, UDP gap {failover['udp']['max_gap_s']} s, "
          f"{failover['udp']['lost']} datagrams lost; whole run: max pause "
          f"{summary['max_pause_s']} s; a host resolving the gateway afresh reached lb2 "
          f"after {resolve_s:.2f} s")

    assert summary["returncode"] == 0 and summary["clean"], summary
    assert_no_stream_broke(summary)
    assert summary["closed"] == STREAMS, summary
    udp = summary["udp"]
    assert udp["endpoints"] == ["be1"] and udp["endpoint_changes"] == 0, udp
    assert udp["answered"] > 0.5 * udp["sent"], udp
    if lb1_dies == "keepalived":
        # lb1 keeps routing until lb2 takes over: nothing stops
        assert summary["max_pause_s"] < 1.0, summary
    else:
        # the outage (master-down interval) doubled at most by TCP's back-off
        assert failover["max_pause_s"] < 2 * (down + 0.5), failover
    wait_for(lambda: notified(states) == {"lb1": ["BACKUP", "MASTER", "BACKUP", "MASTER"],
                                          "lb2": ["BACKUP", "MASTER", "BACKUP"]},
             timeout=5, what=f"the notify hooks' states (have {notified(states)})")


def test_a_failing_track_script_keeps_a_node_in_fault(lab: Lab, ha: HaTopology) -> None:
    """The hook for ``loxilbd-ready``: until it succeeds the node is FAULT and cannot take
    MASTER (``init_fail``); when it fails again the peer takes over. VRRP by unicast."""
    ready = lab.workdir / "lb1.ready"
    states = lab.workdir / "notify.states"
    kas = keepalived_pair(lab, ha, advert_int=0.1, unicast=True,
                          notify={name: f"echo {name} >>{states}" for name in ha.lbs},
                          track={"lb1": f"test -e {ready}"})
    lb1, lb2 = kas["lb1"], kas["lb2"]
    assert "track_script" in lb1.config() and "track_script" not in lb2.config()
    lb1.start()
    lb2.start()
    lb1.wait_state("FAULT", timeout=3)
    lb2.wait_state("MASTER", timeout=3)
    time.sleep(1.5)
    assert lb1.state() == "FAULT" and ha.vip_owner() == "lb2"

    ready.touch()
    lb1.wait_state("MASTER", timeout=5)
    lb2.wait_state("BACKUP", timeout=2)
    wait_for(lambda: ha.vip_owner() == "lb1", timeout=2, what="lb1 holding both VIPs")

    ready.unlink()
    lb1.wait_state("FAULT", timeout=4)
    lb2.wait_state("MASTER", timeout=2)
    wait_for(lambda: ha.vip_owner() == "lb2", timeout=2, what="lb2 holding both VIPs")
    wait_for(lambda: notified(states).get("lb1", [])[-1:] == ["FAULT"], timeout=3,
             what=f"lb1's notify hook told FAULT (have {notified(states)})")
    lb1.stop()
    assert lb1.state() == "DEAD"


def test_the_streams_client_reports_what_broke(lab: Lab, ha: HaTopology) -> None:
    """The client is not blind: the echo server dying ends every stream (EOF), the UDP flow
    gets no more answers, the summary says so and the exit status is 1."""
    be1, be2 = ha.backend_ips[0], ha.backends[1]
    streams = Streams(be2, be1, ha.echo_port, 10, udp=f"{be1}:{ha.udp_port}", timeout=5)
    try:
        assert streams.wait_ready()["connected"] == 10
        streams.wait_flowing(more_rounds=50)
        sigkill_group(ha.backend_procs[0])
        wait_for(lambda: streams.progress()["open"] == 0, timeout=10,
                 what="every stream ended")
    finally:
        summary = streams.finish()
    assert summary["returncode"] == 1 and not summary["clean"], summary
    assert summary["eofs"] + summary["resets"] == 10, summary
    assert summary["udp"]["lost"] > 0 and summary["udp"]["endpoint"] == "be1", summary


def test_keepalived_config_of_the_lab(lab: Lab, ha: HaTopology) -> None:
    """The generated configuration (what the acceptance test will run) is what keepalived
    accepts without a warning."""
    ka = Keepalived(lab, ha.lb("lb1"), "lb1", priority=150, advert_int=0.1,
                    notify="loxilbd-notify", track="loxilbd-ready",
                    unicast_src="198.18.1.2", unicast_peers=["198.18.1.3"])
    ka.conf_path.write_text(ka.config())
    cp = ha.lb("lb1").run(KEEPALIVED, f"--config-test={lab.workdir / 'ka-test.log'}",
                          "--use-file", str(ka.conf_path), check=False)
    text = (lab.workdir / "ka-test.log").read_text() if \
        (lab.workdir / "ka-test.log").exists() else ""
    assert cp.returncode == 0, (cp.stdout, cp.stderr, text)
    assert "WARNING" not in text and "invalid" not in text.lower(), text
