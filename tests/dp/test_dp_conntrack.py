"""Conntrack through the real program: states, counters, expiry and the
events the agent reads from the ring buffer."""

from __future__ import annotations

import time

from dp_harness import CLIENT, CLIENT2, EPS, PRIVATE_IP, VIP, DpHarness, ip_of, lb_body, tcp, udp
from scapy.layers.inet import IP, TCP

from datapath import layouts as L
from loxicmd.names import EVENT_WORDS, REASON_WORDS, by_code


def from_ep(ep: str = EPS[0], flags: str = "A", payload: bytes = b"", seq: int = 5000,
            dport: int = 40000) -> object:
    return tcp(src=ep, dst=CLIENT, sport=8080, dport=dport, flags=flags, payload=payload,
               seq=seq)


def state(h: DpHarness) -> str:
    (flow,) = h.flows()
    return flow["conntrackState"]


EVENTS = by_code(L.EventType, EVENT_WORDS)
REASONS = by_code(L.Reason, REASON_WORDS)


def kinds(events: list[L.LbEvent]) -> list[tuple[str, str]]:
    return [(EVENTS[e.type], REASONS[e.reason]) for e in events]


def test_tcp_states_and_events_through_a_full_connection(h: DpHarness) -> None:
    h.apply(lb_body())
    steps = [
        (tcp(flags="S", seq=1000), "sync-sent"),
        (from_ep(flags="SA", seq=5000), "sync-ack"),
        (tcp(flags="A", seq=1001), "est"),
        (tcp(flags="PA", seq=1001, payload=b"x" * 10), "est"),
        (from_ep(flags="FA", seq=5001), "fini"),
        (tcp(flags="FA", seq=1011), "closed-wait"),
        (from_ep(flags="A", seq=5002), "closed"),
    ]
    for pkt, expected in steps:
        h.run(pkt)
        assert state(h) == expected, pkt.summary()
    events = h.events()
    assert kinds(events) == [("new", ""), ("established", ""), ("closed", "fin")]
    closed = events[-1]
    assert closed.orig.packets == 4 and closed.reply.packets == 3
    assert closed.orig.seq_next == 1012 and closed.reply.seq_next == 5002
    assert closed.orig.state == L.CtState.CLOSED
    # a retransmission or keepalive (snd_una - 1) does not move seq_next back
    h.run(tcp(flags="A", seq=1011))
    assert [e.seq_next for k, e in h.dp.maps["lb_conntrack"].items()
            if e.dir == L.CtDir.ORIGINAL] == [1012]
    # a SYN on the closed tuple is a new connection, selected afresh
    out = h.run(tcp(flags="S", seq=9000))[1]
    assert out[IP].dst == EPS[1] and state(h) == "sync-sent"
    assert kinds(h.events()) == [("new", "")]  # the closed flow was reported once


def test_rst_closes_and_releases_the_endpoint_load(h: DpHarness) -> None:
    h.apply(lb_body())
    h.run(tcp(flags="S"))
    assert h.endpoint_load(h.slot_of(EPS[0])) == 1
    h.run(from_ep(flags="R"))
    assert state(h) == "closed"
    assert h.endpoint_load(h.slot_of(EPS[0])) == 0
    assert kinds(h.events()) == [("new", ""), ("closed", "rst")]


def test_udp_and_icmp_states(h: DpHarness) -> None:
    h.apply(lb_body(proto="udp"))
    h.run(udp())
    assert state(h) == "udp-uni"
    h.run(udp(src=EPS[0], dst=CLIENT, sport=8080, dport=40000))
    assert state(h) == "udp-est"
    assert kinds(h.events()) == [("new", ""), ("established", "")]


def test_counters_per_rule_endpoint_and_flow(h: DpHarness) -> None:
    h.apply(lb_body())
    sizes = []
    for i in range(4):  # flows 0..3 -> endpoints 0,1,2,0
        pkt = tcp(sport=44000 + i)
        sizes.append(len(bytes(pkt)))
        h.run(pkt)
    assert h.rule_counters(h.rule_id()) == (4, sum(sizes))
    (entry,) = h.table.api_list()
    assert [ep["counter"] for ep in entry["endpoints"]] == [
        f"2:{2 * sizes[0]}", f"1:{sizes[0]}", f"1:{sizes[0]}"]
    assert [f["packets"] for f in h.flows()] == [1, 1, 1, 1]


def test_idle_flows_expire_by_sweep_with_an_event(h: DpHarness) -> None:
    h.apply(lb_body(inactiveTimeOut=1))
    h.run(tcp(flags="S"))
    h.run(from_ep(flags="SA"))
    h.run(tcp(flags="A", seq=1001))
    h.events()
    assert h.dp.sweep(L.SweepMode.IDLE) == 0, "a fresh flow is not idle"
    time.sleep(1.2)
    assert h.dp.sweep(L.SweepMode.IDLE) == 1
    assert h.flows() == [] and len(list(h.dp.maps["lb_conntrack"].items())) == 0
    (ev,) = h.events()
    assert kinds([ev]) == [("expired", "timeout")]
    assert ev.orig.state == L.CtState.EST, "the event tells the reset sender the flow was open"
    assert h.endpoint_load(h.slot_of(EPS[0])) == 0


def test_an_idle_flow_is_expired_by_its_next_packet_without_a_sweep(h: DpHarness) -> None:
    h.apply(lb_body(inactiveTimeOut=1))
    assert h.dst_of(tcp(flags="S")) == EPS[0]
    time.sleep(1.2)
    assert h.dst_of(tcp(flags="A", seq=1001)) == EPS[1]  # treated as a new flow
    assert kinds(h.events()) == [("new", ""), ("expired", "timeout"), ("new", "")]


def test_handshake_and_closing_states_time_out_sooner(h: DpHarness) -> None:
    ct = h.dp.maps["lb_conntrack"]
    h.apply(lb_body())
    h.run(tcp(flags="S"))
    for key, entry in list(ct.items()):  # both directions: as if the SYN were 61 s old
        entry.last_seen_ns -= 61 * 10**9
        ct.update(key, entry)
    assert h.dp.sweep(L.SweepMode.IDLE) == 1, "half-open flows live 60 s, not the rule's 240 s"


def test_update_in_place_keeps_flows_to_remaining_endpoints(h: DpHarness) -> None:
    h.apply(lb_body())
    for i in range(3):
        h.run(tcp(sport=46000 + i))  # one flow per endpoint
    h.events()
    h.apply(lb_body(eps=EPS[:2]))  # EPS[2] removed
    remaining = {(f["sourcePort"], f["conntrackAct"]) for f in h.flows()}
    assert remaining == {(46000, f"dnat-{EPS[0]}:8080:w1"), (46001, f"dnat-{EPS[1]}:8080:w1")}
    (ev,) = h.events()
    assert kinds([ev]) == [("expired", "endpoint removed")]
    assert ip_of(ev.orig.xlate_daddr) == EPS[2]
    assert h.dst_of(tcp(sport=46001, flags="A")) == EPS[1]


def test_deleting_a_rule_ends_its_flows_and_frees_the_vip(h: DpHarness) -> None:
    h.apply(lb_body())
    h.run(tcp())
    h.events()
    h.table.delete(list(h.table.records), "all")
    assert h.flows() == []
    assert kinds(h.events()) == [("expired", "rule deleted")]
    raw = bytes(tcp(sport=45000))
    assert h.run_raw(raw)[1] == raw


def test_fullnat_event_carries_everything_to_recreate_the_flow(h: DpHarness) -> None:
    h.apply(lb_body(mode=2, privateIP=PRIVATE_IP, eps=[EPS[0]]))
    h.run(tcp(sport=40000))
    out = h.run(tcp(src=CLIENT2, sport=40000))[1]
    nat_port = out[TCP].sport
    ev = h.events()[-1]
    assert EVENTS[ev.type] == "new"
    assert (ip_of(ev.key.saddr), L.be16_to_port(ev.key.sport)) == (CLIENT2, 40000)
    assert (ip_of(ev.key.daddr), L.be16_to_port(ev.key.dport)) == (VIP, 2020)
    assert ip_of(ev.orig.xlate_saddr) == PRIVATE_IP
    assert L.be16_to_port(ev.orig.xlate_sport) == nat_port
    assert L.be16_to_port(ev.orig.peer.dport) == nat_port, "the reply key is in the event"
    assert (ip_of(ev.reply.xlate_daddr), L.be16_to_port(ev.reply.xlate_dport)) == \
        (CLIENT2, 40000)
    assert ev.orig.nat_mode == L.NatMode.FULLNAT
    # replies to the allocated port reach the second client
    back = h.run(tcp(src=EPS[0], dst=PRIVATE_IP, sport=8080, dport=nat_port, flags="SA"))[1]
    assert (back[IP].dst, back[TCP].dport, back[IP].src) == (CLIENT2, 40000, VIP)


def test_a_full_event_ring_counts_lost_events_and_never_blocks(h: DpHarness) -> None:
    h.apply(lb_body())
    before = h.drops("events-lost")
    flows = L.LB_EVENTS_BYTES // 200 + 2000  # more NEW events than the ring holds
    for i in range(flows):
        h.dst_fast(f"198.18.{2 + i // 60000}.{1 + (i // 250) % 250}", 1024 + i % 60000)
    lost = h.drops("events-lost") - before
    assert lost > 0
    assert len(h.events()) + lost == flows


def test_a_flow_busy_in_one_direction_only_is_not_idle(h: DpHarness) -> None:
    """A UDP server streaming after one request keeps the flow alive (replies
    refresh only their own entry; idleness is judged over both)."""
    h.apply(lb_body(proto="udp", inactiveTimeOut=1))
    h.run(udp())
    reply = udp(src=EPS[0], dst=CLIENT, sport=8080, dport=40000)
    for _ in range(4):
        time.sleep(0.4)
        assert h.run(reply)[1][IP].src == VIP, "replies are still translated"
        assert h.dp.sweep(L.SweepMode.IDLE) == 0
    time.sleep(1.2)
    assert h.dp.sweep(L.SweepMode.IDLE) == 1, "silent both ways: now it expires"
