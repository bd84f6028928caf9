"""HA instance states in the datapath (test-run): only the MASTER of a rule's instance (or
a node without HA) opens its flows, flows already in conntrack go on in every state; the
instances' slots survive a restart; a MASTER announces its VIPs with gratuitous ARP on the
real interface; the datapath reports active flows again while sync asks for it."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
from dp_harness import CLIENT, EPS, DpHarness, lb_body, tcp
from scapy.layers.inet import IP

from datapath import layouts as L
from loxicmd.agent.errors import InvalidInput
from loxicmd.agent.ha.garp import addresses_to_announce, announce
from loxicmd.agent.ha.states import HaStates, instance_of

TC_ACT_SHOT = 2


def _states(h: DpHarness, tmp_path: Path) -> HaStates:
    ha = HaStates(tmp_path / "ha", h.dp.maps["lb_instances"])
    h.dp.instance_slot = ha.slot_of_rule
    return ha


def test_rule_names_say_their_instance() -> None:
    assert instance_of("web") == "default"
    assert instance_of("web:blue") == "blue"
    assert instance_of("ns:web:blue") == "blue"
    assert instance_of("web:") == "default"
    assert instance_of("default_web:llb-inst0") == "default"  # kube-loxilb's, LoxiLB's default


def test_only_the_master_of_an_instance_opens_its_flows(h: DpHarness, tmp_path: Path) -> None:
    ha = _states(h, tmp_path)
    try:
        h.apply(lb_body(name="web:blue"))
        h.apply(lb_body(port=3030, name="other"))  # the default instance, NOT_DEFINED
        assert h.run(tcp(sport=40001, flags="S"))[0] == 0, "NOT_DEFINED: as without HA"
        for state in ("BACKUP", "FAULT", "STOP"):
            ha.set({"instance": "blue", "state": state})
            assert h.dp.maps["lb_instances"].lookup(ha.slot_of("blue")).state == \
                L.HaState[state]
            before = h.drops("ha-standby")
            verdict, _ = h.run(tcp(sport=40100, flags="S"))
            assert verdict == TC_ACT_SHOT, state
            assert h.drops("ha-standby") == before + 1
            # a flow it already has (synced from the MASTER) goes on
            verdict, out = h.run(tcp(sport=40001, flags="A", seq=1001))
            assert verdict == 0 and out[IP].dst in EPS, state
            # another instance's rule is not held back
            assert h.run(tcp(sport=40200, dport=3030, flags="S"))[0] == 0
        ha.set({"instance": "blue", "state": "MASTER"})
        ha.set({"instance": "llb-inst0", "state": "BACKUP"})  # LoxiLB's name of default
        assert ha.state_of("default") == "BACKUP"
        assert h.run(tcp(sport=40400, dport=3030, flags="S"))[0] == TC_ACT_SHOT
        ha.set({"instance": "default", "state": "NOT_DEFINED"})
        verdict, out = h.run(tcp(sport=40100, flags="S"))
        assert verdict == 0 and out[IP].dst in EPS
        ha.delete("blue")  # forgotten: as without HA
        assert h.run(tcp(sport=40300, flags="S"))[0] == 0
    finally:
        ha.store.close()


def test_in_a_cluster_a_restored_master_waits_to_be_told_again(h: DpHarness,
                                                               tmp_path: Path) -> None:
    """A node that went down as MASTER opens no flow on restart until keepalived says
    MASTER again (its peer may carry the instance now); without a cluster it goes on."""
    ha = _states(h, tmp_path)
    h.apply(lb_body())
    ha.set({"instance": "default", "state": "MASTER"})
    ha.store.close()
    for restore_master, verdict, state in ((False, TC_ACT_SHOT, "BACKUP"), (True, 0, "MASTER")):
        again = HaStates(tmp_path / "ha", h.dp.maps["lb_instances"], restore_master)
        try:
            assert again.state_of("default") == state
            assert h.run(tcp(sport=40600 + verdict, flags="S"))[0] == verdict
            if not restore_master:
                again.set({"instance": "default", "state": "MASTER"})
                assert h.run(tcp(sport=40610, flags="S"))[0] == 0
        finally:
            again.store.close()


def test_instance_slots_and_states_survive_a_restart(h: DpHarness, tmp_path: Path) -> None:
    ha = _states(h, tmp_path)
    ha.set({"instance": "green", "state": "BACKUP"})
    h.apply(lb_body(name="web:blue"))  # blue: made by its first rule
    slots = {name: ha.slot_of(name) for name in ("default", "green", "blue")}
    assert slots["default"] == 0 and len(set(slots.values())) == 3
    ha.store.close()
    h.dp.maps["lb_instances"].update(slots["green"], L.LbInstance(state=0))
    again = HaStates(tmp_path / "ha", h.dp.maps["lb_instances"])
    try:
        assert {name: again.slot_of(name) for name in slots} == slots
        assert again.state_of("green") == "BACKUP" and again.state_of("blue") == "NOT_DEFINED"
        # written to the datapath again on start
        assert h.dp.maps["lb_instances"].lookup(slots["green"]).state == L.HaState.BACKUP
    finally:
        again.store.close()


def test_instances_beyond_the_datapath_s_room_are_refused(h: DpHarness, tmp_path: Path) -> None:
    ha = _states(h, tmp_path)
    try:
        for i in range(1, L.LB_MAX_INSTANCES):
            ha.slot_of(f"i{i}")
        with pytest.raises(InvalidInput, match="at most 256"):
            ha.set({"instance": "one-too-many", "state": "MASTER"})
        assert "one-too-many" not in {s["instance"] for s in ha.all()}
    finally:
        ha.store.close()


def test_a_flow_with_traffic_is_reported_again_while_sync_asks(h: DpHarness) -> None:
    h.apply(lb_body())
    h.run(tcp(sport=40500, flags="S", seq=1000))
    h.run(tcp(src=EPS[0], dst=CLIENT, sport=8080, dport=40500, flags="SA", seq=5000))
    h.run(tcp(sport=40500, flags="A", seq=1001))
    h.events()
    try:
        h.dp.set_refresh(0.3)
        time.sleep(0.35)
        h.run(tcp(sport=40500, flags="PA", seq=1001, payload=b"x"))
        h.run(tcp(sport=40500, flags="PA", seq=1002, payload=b"y"))  # within the period
        refresh = [e for e in h.events() if e.type == L.EventType.REFRESH]
        assert len(refresh) == 1
        assert refresh[0].orig.packets == 3 and refresh[0].reply.packets == 1
        time.sleep(0.35)  # a reply-side packet reports the flow too
        h.run(tcp(src=EPS[0], dst=CLIENT, sport=8080, dport=40500, flags="A", seq=5001))
        assert [e.type for e in h.events()] == [L.EventType.REFRESH]
        h.dp.set_refresh(0)
        time.sleep(0.35)
        h.run(tcp(sport=40500, flags="PA", seq=1003, payload=b"z"))
        assert h.events() == []
    finally:
        h.dp.set_refresh(0)


def test_a_master_announces_in_subnet_vips_on_the_real_interface(h: DpHarness) -> None:
    """The harness's namespace: tr0 (198.18.1.1/24 ...) and its veth peer tr1."""
    plan = addresses_to_announce(["tr0", "lo"], ["198.18.1.77", "198.18.200.1", ""])
    assert plan == {"tr0": ["198.18.1.77"]}
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806)) as rx:
        rx.bind(("tr1", 0x0806))
        rx.settimeout(2)
        assert announce("tr0", ["198.18.1.77"], count=1) == 1
        frame = rx.recv(100)
    (link,) = json.loads(subprocess.run(["ip", "-j", "link", "show", "tr0"], check=True,
                                        capture_output=True, text=True).stdout)
    tr0_mac = link["address"]
    assert frame[:6] == b"\xff" * 6 and frame[6:12].hex(":") == tr0_mac
    assert frame[12:14] == b"\x08\x06"
    arp = frame[14:42]
    assert arp[14:18] == socket.inet_aton("198.18.1.77")  # sender address
    assert arp[24:28] == socket.inet_aton("198.18.1.77")  # target address: gratuitous
