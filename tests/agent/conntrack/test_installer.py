"""The flow installer with the real program (test-run): a flow that began on one node is
placed on another whose rule ids and endpoint slots differ, and its next packets (both ways)
are translated there exactly as on the first node, with no new flow made."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from dp_harness import CLIENT, EPS, PRIVATE_IP, VIP, DpHarness, lb_body, tcp, udp
from scapy.layers.inet import IP, TCP, UDP

from datapath import layouts as L
from loxicmd.agent.conntrack.flows import Flow
from loxicmd.agent.conntrack.installer import FlowInstaller, FlowNotPlaceable


@pytest.fixture
def peer(tmp_path_factory: pytest.TempPathFactory, h: DpHarness) -> Iterator[DpHarness]:
    """A second node (its own maps), entered after `h` and left before it."""
    other = DpHarness(Path(tmp_path_factory.mktemp("peer")), ct_entries=65536)
    try:
        yield other
    finally:
        other.close()


def _first_flow(h: DpHarness, pkt: object) -> Flow:
    """Send the first packet of a flow through `h`; the flow as its NEW event tells it."""
    h.events()
    verdict, _ = h.run(pkt)
    assert verdict == 0
    (ev,) = [e for e in h.events() if e.type == L.EventType.NEW]
    return Flow.from_event(ev)


def _ids_differ(h: DpHarness, peer: DpHarness) -> None:
    """Rules made in another order on the peer: other rule ids and endpoint slots."""
    peer.apply(lb_body(port=9999, eps=["198.18.13.9", "198.18.12.9"]))


@pytest.mark.parametrize("mode", [0, 2])
def test_a_tcp_flow_placed_on_a_peer_carries_on_there(h: DpHarness, peer: DpHarness,
                                                      mode: int) -> None:
    extra = {"mode": mode, **({"privateIP": PRIVATE_IP} if mode == 2 else {})}
    h.apply(lb_body(**extra))
    _ids_differ(h, peer)
    peer.apply(lb_body(**extra))
    flow = _first_flow(h, tcp(sport=41000))
    on_peer = FlowInstaller(peer.dp).install(flow)
    rec = peer.table.records[next(k for k in peer.table.records if k.port == 2020)]
    assert on_peer.rule_id == rec.rule_id and on_peer.rule_id != h.rule_id()
    assert on_peer.ep_slot == rec.slots[(flow.endpoint_ip, flow.endpoint_port)]

    # the client's next segment: the same endpoint and source as on the first node
    peer.events()
    verdict, out = peer.run(tcp(sport=41000, flags="A", seq=1001, ack=5001))
    assert verdict == 0
    assert out[IP].dst == flow.endpoint_ip and out[TCP].dport == flow.endpoint_port
    assert out[IP].src == (flow.nat_ip or CLIENT) and out[TCP].sport == flow.nat_port
    assert not [e for e in peer.events() if e.type == L.EventType.NEW], "no second flow"
    # the endpoint's answer goes back as from the VIP
    answer = tcp(src=flow.endpoint_ip, dst=flow.nat_ip or CLIENT, sport=flow.endpoint_port,
                 dport=flow.nat_port, flags="SA", seq=5000, ack=1001)
    verdict, back = peer.run(answer)
    assert verdict == 0
    assert (back[IP].src, back[TCP].sport, back[IP].dst, back[TCP].dport) == \
        (VIP, 2020, CLIENT, 41000)
    (row,) = [r for r in peer.flows() if r["sourcePort"] == 41000]
    assert row["servName"] == "t" and row["destinationIP"] == VIP


def test_a_udp_flow_keeps_its_endpoint_on_the_peer(h: DpHarness, peer: DpHarness) -> None:
    h.apply(lb_body(proto="udp"))
    _ids_differ(h, peer)
    peer.apply(lb_body(proto="udp", eps=list(reversed(EPS))))
    flow = _first_flow(h, udp(sport=42000))
    FlowInstaller(peer.dp).install(flow)
    peer.events()
    for _ in range(3):  # rotation on the peer would move it: conntrack keeps it
        verdict, out = peer.run(udp(sport=42000))
        assert verdict == 0 and out[IP].dst == flow.endpoint_ip
        assert out[UDP].dport == flow.endpoint_port
    assert not [e for e in peer.events() if e.type == L.EventType.NEW], "no second flow"


def test_the_endpoints_load_counts_the_placed_flow_once(h: DpHarness, peer: DpHarness) -> None:
    h.apply(lb_body(sel=4))
    peer.apply(lb_body(sel=4))
    flow = _first_flow(h, tcp(sport=43000))
    installer = FlowInstaller(peer.dp)
    slot = installer.install(flow).ep_slot
    installer.install(flow)  # again (a resync): still one flow
    assert peer.endpoint_load(slot) == 1


def test_a_flow_this_node_has_no_rule_or_endpoint_for_is_refused(h: DpHarness,
                                                                 peer: DpHarness) -> None:
    h.apply(lb_body())
    flow = _first_flow(h, tcp(sport=44000))
    with pytest.raises(FlowNotPlaceable, match=f"no rule for {VIP}:2020/tcp"):
        FlowInstaller(peer.dp).place(flow)
    peer.apply(lb_body(eps=["198.18.11.7"]))
    with pytest.raises(FlowNotPlaceable, match=f"endpoint {flow.endpoint_ip}:8080"):
        FlowInstaller(peer.dp).place(flow)
    key = L.LbCtKey(saddr=L.ip_to_be32(CLIENT), daddr=L.ip_to_be32(VIP),
                    sport=L.port_to_be16(44000), dport=L.port_to_be16(2020),
                    proto=socket.IPPROTO_TCP)
    assert peer.dp.maps["lb_conntrack"].lookup(key) is None, "nothing written"
