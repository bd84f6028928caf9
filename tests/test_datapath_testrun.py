"""The BPF program run on crafted frames with BPF_PROG_TEST_RUN (repeat 1).

Rules are installed through the agent's own RuleTable, so these also cover how
the agent programs the maps.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from datapath.libbpf import prog_test_run
from loxicmd.agent.dataplane import Dataplane, unpin
from loxicmd.agent.rules import RuleTable
from loxicmd.agent.store import StateStore

TC_ACT_OK = 0
TC_ACT_SHOT = 2

VIP = "198.18.100.1"
CLIENT = "198.18.1.2"
EPS = ["198.18.11.2", "198.18.12.2", "198.18.13.2"]


@pytest.fixture
def table(tmp_path: Path) -> Iterator[RuleTable]:
    pin_dir = f"/sys/fs/bpf/loxilb-test-{uuid.uuid4().hex[:8]}"
    dp = Dataplane(pin_dir, ct_entries=4096)
    store = StateStore(tmp_path / "state")
    try:
        yield RuleTable(dp, store)
    finally:
        dp.close()
        store.close()
        unpin(pin_dir)


def lb_body(port: int = 2020, proto: str = "tcp", eps: list[str] = EPS, target: int = 8080,
            **svc: object) -> dict:
    return {
        "serviceArguments": {"externalIP": VIP, "port": port, "protocol": proto, "name": "t",
                             **svc},
        "endpoints": [{"endpointIP": ip, "targetPort": target, "weight": 1} for ip in eps],
    }


def run(table: RuleTable, pkt: Packet) -> tuple[int, Packet, bytes]:
    raw = bytes(pkt)
    res = prog_test_run(table.dp.prog_fd, raw)
    return res.retval, Ether(res.data), res.data


def tcp(src: str = CLIENT, dst: str = VIP, sport: int = 40000, dport: int = 2020,
        flags: str = "S", payload: bytes = b"") -> Packet:
    return Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags) / payload


def udp(src: str = CLIENT, dst: str = VIP, sport: int = 40000, dport: int = 2020,
        payload: bytes = b"hello") -> Packet:
    return Ether() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload


def assert_checksums_valid(frame: Packet) -> None:
    """Recompute IP and L4 checksums from scratch and compare with the frame's."""
    ip = frame[IP]
    l4 = ip.payload
    fresh = IP(bytes(ip))
    del fresh.chksum
    del fresh.payload.chksum
    rebuilt = IP(bytes(fresh))
    assert ip.chksum == rebuilt.chksum, "IP header checksum wrong"
    if isinstance(l4, UDP) and l4.chksum == 0:
        return
    assert l4.chksum == rebuilt.payload.chksum, f"{type(l4).__name__} checksum wrong"


def flows(table: RuleTable) -> list[dict]:
    return table.api_conntrack()


def test_syn_to_vip_is_dnatted_with_valid_checksums(table: RuleTable) -> None:
    table.apply(lb_body())
    verdict, out, _ = run(table, tcp(payload=b"GET / HTTP/1.0\r\n\r\n"))
    assert verdict == TC_ACT_OK
    assert out[IP].dst == EPS[0] and out[TCP].dport == 8080
    assert out[IP].src == CLIENT and out[TCP].sport == 40000, "default mode keeps the client"
    assert_checksums_valid(out)


def test_reply_is_translated_back_to_the_vip(table: RuleTable) -> None:
    table.apply(lb_body())
    run(table, tcp(flags="S"))
    verdict, out, _ = run(table, tcp(src=EPS[0], dst=CLIENT, sport=8080, dport=40000,
                                     flags="SA"))
    assert verdict == TC_ACT_OK
    assert (out[IP].src, out[TCP].sport) == (VIP, 2020)
    assert (out[IP].dst, out[TCP].dport) == (CLIENT, 40000)
    assert_checksums_valid(out)


def test_non_matching_packets_pass_untouched(table: RuleTable) -> None:
    table.apply(lb_body())
    for pkt in (
        tcp(dst="198.18.100.2"),                # other address
        tcp(dport=2021),                        # other port
        udp(),                                  # other protocol on the rule's port
        Ether() / IP(src=CLIENT, dst=VIP) / ICMP(),
        Ether() / ARP(pdst=VIP),
        Ether() / IPv6(dst="2001:db8::1") / TCP(dport=2020),
    ):
        raw = bytes(pkt)
        res = prog_test_run(table.dp.prog_fd, raw)
        assert res.retval == TC_ACT_OK
        assert res.data == raw, f"{pkt.summary()} was modified"
    assert flows(table) == []


def test_round_robin_rotates_over_endpoints_sorted_by_ip(table: RuleTable) -> None:
    table.apply(lb_body(eps=list(reversed(EPS))))  # given unsorted
    seen = [run(table, tcp(sport=41000 + i))[1][IP].dst for i in range(9)]
    assert seen == EPS * 3


def test_established_flow_sticks_to_its_endpoint(table: RuleTable) -> None:
    table.apply(lb_body())
    first = run(table, tcp(sport=42000, flags="S"))[1][IP].dst
    run(table, tcp(sport=43000, flags="S"))  # another flow moves the cursor
    for flags in ("A", "PA", "A"):
        assert run(table, tcp(sport=42000, flags=flags, payload=b"x"))[1][IP].dst == first


def test_tcp_state_machine_through_close(table: RuleTable) -> None:
    table.apply(lb_body())
    ep = EPS[0]

    def state() -> str:
        (flow,) = flows(table)
        return flow["conntrackState"]

    run(table, tcp(flags="S"))
    assert state() == "sync-sent"
    run(table, tcp(src=ep, dst=CLIENT, sport=8080, dport=40000, flags="SA"))
    assert state() == "sync-ack"
    run(table, tcp(flags="A"))
    assert state() == "est"
    run(table, tcp(src=ep, dst=CLIENT, sport=8080, dport=40000, flags="FA"))
    assert state() == "fini"
    run(table, tcp(flags="FA"))
    assert state() == "closed-wait"
    run(table, tcp(src=ep, dst=CLIENT, sport=8080, dport=40000, flags="A"))
    assert state() == "closed"
    # the same tuple opening again is a new connection: selected afresh
    out = run(table, tcp(flags="S"))[1]
    assert out[IP].dst == EPS[1]
    assert state() == "sync-sent"


def test_rst_closes_the_flow(table: RuleTable) -> None:
    table.apply(lb_body())
    run(table, tcp(flags="S"))
    run(table, tcp(src=EPS[0], dst=CLIENT, sport=8080, dport=40000, flags="R"))
    (flow,) = flows(table)
    assert flow["conntrackState"] == "closed"


def test_udp_dnat_reply_and_states(table: RuleTable) -> None:
    table.apply(lb_body(proto="udp", target=9090))
    verdict, out, _ = run(table, udp())
    assert verdict == TC_ACT_OK and (out[IP].dst, out[UDP].dport) == (EPS[0], 9090)
    assert_checksums_valid(out)
    assert flows(table)[0]["conntrackState"] == "udp-uni"
    _, back, _ = run(table, udp(src=EPS[0], dst=CLIENT, sport=9090, dport=40000))
    assert (back[IP].src, back[UDP].sport) == (VIP, 2020)
    assert_checksums_valid(back)
    assert flows(table)[0]["conntrackState"] == "udp-est"


def test_udp_without_checksum_keeps_zero(table: RuleTable) -> None:
    table.apply(lb_body(proto="udp"))
    pkt = udp()
    pkt[UDP].chksum = 0
    _, out, _ = run(table, pkt)
    assert out[IP].dst == EPS[0]
    assert out[UDP].chksum == 0
    assert_checksums_valid(out)


def test_ip_options_and_vlan_tag_are_parsed(table: RuleTable) -> None:
    from scapy.layers.inet import IPOption_NOP
    from scapy.layers.l2 import Dot1Q

    table.apply(lb_body())
    pkt = Ether() / Dot1Q(vlan=7) / IP(src=CLIENT, dst=VIP, options=[IPOption_NOP()] * 4) \
        / TCP(sport=40001, dport=2020, flags="S")
    _, out, _ = run(table, pkt)
    assert out[IP].dst == EPS[0] and out[Dot1Q].vlan == 7
    assert_checksums_valid(out)


def test_counters_move_per_rule_and_endpoint(table: RuleTable) -> None:
    table.apply(lb_body())
    sizes = []
    for i in range(4):  # flows 0..3 -> eps 0,1,2,0
        pkt = tcp(sport=44000 + i)
        sizes.append(len(bytes(pkt)))
        run(table, pkt)
    rec = next(iter(table.records.values()))
    assert table.dp.rule_counters(rec.rule_id) == (4, sum(sizes))
    (entry,) = table.api_list()
    counters = [ep["counter"] for ep in entry["endpoints"]]
    assert counters == [f"2:{2 * sizes[0]}", f"1:{sizes[0]}", f"1:{sizes[0]}"]
    assert [f["packets"] for f in flows(table)] == [1, 1, 1, 1]


def test_malformed_headers_pass_and_are_counted(table: RuleTable) -> None:
    table.apply(lb_body())
    good = bytes(tcp())
    truncated = good[: 14 + 20 + 8]  # TCP header cut short
    bad_ihl = bytearray(good)
    bad_ihl[14] = 0x44  # IHL 4 (< 5)
    for raw in (truncated, bytes(bad_ihl)):
        res = prog_test_run(table.dp.prog_fd, raw)
        assert res.retval == TC_ACT_OK and res.data == raw
    assert table.dp.drop_counters()["malformed"][0] == 2
    assert flows(table) == []


def test_rule_without_endpoints_drops_and_counts(table: RuleTable) -> None:
    table.apply(lb_body(eps=[]))
    verdict, _, _ = run(table, tcp())
    assert verdict == TC_ACT_SHOT
    assert table.dp.drop_counters()["no-endpoint"][0] == 1


def test_deleting_a_rule_ends_its_flows_and_frees_the_vip(table: RuleTable) -> None:
    table.apply(lb_body())
    run(table, tcp())
    assert flows(table)
    table.delete(list(table.records), "all")
    assert flows(table) == []
    raw = bytes(tcp(sport=45000))
    assert prog_test_run(table.dp.prog_fd, raw).data == raw


def test_update_in_place_keeps_flows_to_remaining_endpoints(table: RuleTable) -> None:
    table.apply(lb_body())
    for i in range(3):
        run(table, tcp(sport=46000 + i))  # one flow per endpoint
    table.apply(lb_body(eps=EPS[:2]))      # EPS[2] removed
    remaining = {(f["sourcePort"], f["conntrackAct"]) for f in flows(table)}
    assert remaining == {(46000, f"dnat-{EPS[0]}:8080:w1"), (46001, f"dnat-{EPS[1]}:8080:w1")}
    assert run(table, tcp(sport=46001, flags="A"))[1][IP].dst == EPS[1]
