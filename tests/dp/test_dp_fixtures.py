"""The datapath's packet table, in the manner of Katran's test fixtures.

Each case installs rules (through the agent's RuleTable), runs some packets
first to set up flows, then runs one frame through BPF_PROG_TEST_RUN and
compares the verdict and the whole frame that comes out (addresses, ports,
checksums, every other byte) with what a correct load balancer produces.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from dp_harness import (
    CLIENT,
    CLIENT2,
    EPS,
    LB_TOWARDS,
    PRIVATE_IP,
    TC_ACT_OK,
    TC_ACT_SHOT,
    VIP,
    DpHarness,
    lb_body,
    tcp,
    udp,
    xlated,
)
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet

SAME = "unchanged"
EP1, EP2, EP3 = EPS


def _eth() -> Ether:
    """Explicit addresses: scapy fills a bare Ether() from the host's ARP and routes,
    which other tests change (and the datapath keeps the frame's addresses)."""
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


@dataclass
class Case:
    name: str
    frame: Packet | bytes
    expect: bytes | str | Callable[[Packet], None]  # frame out, SAME, or a check
    verdict: int = TC_ACT_OK
    rules: list[dict[str, Any]] = field(default_factory=lambda: [lb_body()])
    before: list[Packet] = field(default_factory=list)
    mark: int = 0
    counted: str | None = None  # a datapath statistic that must grow


def reply(src: str, dst: str, sport: int, dport: int, flags: str = "SA") -> Packet:
    return tcp(src=src, dst=dst, sport=sport, dport=dport, flags=flags, seq=5000, ack=1001)


def _echo(src: str, dst: str, kind: str = "echo-request", ident: int = 77) -> Packet:
    return (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
            / IP(src=src, dst=dst, id=1) / ICMP(type=kind, id=ident, seq=1) / b"ping")


def _fragment(offset: int, more: bool) -> bytes:
    pkt = tcp()
    pkt[IP].frag = offset
    pkt[IP].flags = "MF" if more else 0
    return bytes(pkt)


def _corrupt(offset: int, value: int, pkt: Packet | None = None) -> bytes:
    raw = bytearray(bytes(pkt if pkt is not None else tcp()))
    raw[offset] = value
    return bytes(raw)


def _udp_without_checksum() -> Packet:
    pkt = Ether(bytes(udp()))
    pkt[UDP].chksum = 0
    return Ether(bytes(pkt))


def _fullnat_collision(out: Packet) -> None:
    """Second client, same source port, same endpoint: a different NAT port."""
    assert out[IP].src == PRIVATE_IP and out[IP].dst == EP1
    assert out[TCP].sport != 40000, "the NAT port of the first client was reused"


SYN = tcp()
one_ep = [lb_body(eps=[EP1])]

CASES: list[Case] = [
    # --- default mode (DNAT), TCP ---------------------------------------------------------
    Case("syn to vip is dnatted to the first endpoint", SYN, xlated(SYN, dst=EP1, dport=8080)),
    Case("second flow goes to the next endpoint", tcp(sport=40001),
         xlated(tcp(sport=40001), dst=EP2, dport=8080), before=[SYN]),
    Case("syn-ack from the endpoint is translated back to the vip",
         reply(EP1, CLIENT, 8080, 40000),
         xlated(reply(EP1, CLIENT, 8080, 40000), src=VIP, sport=2020), before=[SYN]),
    Case("established ack follows its flow", tcp(flags="A", seq=1001, ack=5001),
         xlated(tcp(flags="A", seq=1001, ack=5001), dst=EP1, dport=8080),
         before=[SYN, tcp(sport=40009)]),
    Case("data segment is rewritten with a valid checksum",
         tcp(flags="PA", payload=b"GET / HTTP/1.1\r\n\r\n"),
         xlated(tcp(flags="PA", payload=b"GET / HTTP/1.1\r\n\r\n"), dst=EP1, dport=8080),
         before=[SYN]),
    Case("fin from the client", tcp(flags="FA"), xlated(tcp(flags="FA"), dst=EP1, dport=8080),
         before=[SYN]),
    Case("rst from the endpoint reaches the client as from the vip",
         reply(EP1, CLIENT, 8080, 40000, flags="R"),
         xlated(reply(EP1, CLIENT, 8080, 40000, flags="R"), src=VIP, sport=2020),
         before=[SYN]),
    Case("syn with tcp options", tcp() / b"", xlated(tcp(), dst=EP1, dport=8080)),
    Case("vlan-tagged syn keeps its tag",
         _eth() / Dot1Q(vlan=7) / IP(src=CLIENT, dst=VIP) / TCP(sport=1, dport=2020),
         xlated(_eth() / Dot1Q(vlan=7) / IP(src=CLIENT, dst=VIP) / TCP(sport=1, dport=2020),
                dst=EP1, dport=8080)),
    Case("ip options are skipped",
         _eth() / IP(src=CLIENT, dst=VIP, options=[IPOption_NOP()] * 4) / TCP(dport=2020),
         xlated(_eth() / IP(src=CLIENT, dst=VIP, options=[IPOption_NOP()] * 4)
                / TCP(dport=2020), dst=EP1, dport=8080)),
    # --- not ours: untouched -----------------------------------------------------------------
    Case("other address passes", tcp(dst="198.18.100.2"), SAME),
    Case("other port on the vip passes", tcp(dport=2021), SAME),
    Case("udp to a tcp rule's port passes", udp(), SAME),
    Case("icmp echo to a vip without an icmp rule passes", _echo(CLIENT, VIP), SAME),
    Case("icmp error to the vip passes", _eth() / IP(src=CLIENT, dst=VIP) / ICMP(type=3), SAME),
    Case("arp passes", _eth() / ARP(pdst=VIP), SAME),
    Case("ipv6 passes", _eth() / IPv6(dst="2001:db8::1") / TCP(dport=2020), SAME),
    Case("endpoint's unrelated packet passes", reply(EP1, CLIENT, 8080, 41000), SAME),
    # --- malformed or partial: untouched, counted ---------------------------------------------
    Case("truncated tcp header", bytes(SYN)[: 14 + 20 + 8], SAME, counted="malformed"),
    Case("ihl below 5", _corrupt(14, 0x44), SAME, counted="malformed"),
    Case("total length beyond the frame", _corrupt(17, 0xFF), SAME, counted="malformed"),
    Case("tcp data offset below 5", _corrupt(14 + 20 + 12, 0x40), SAME, counted="malformed"),
    Case("udp length beyond the datagram", _corrupt(14 + 20 + 5, 0xFF, udp()), SAME,
         rules=[lb_body(proto="udp")], counted="malformed"),
    Case("ihl longer than the packet", _corrupt(14, 0x4F), SAME, counted="malformed"),
    Case("first fragment passes", _fragment(0, True), SAME, counted="fragment-passed"),
    Case("later fragment passes", _fragment(8, False), SAME, counted="fragment-passed"),
    # --- drops -----------------------------------------------------------------------------------
    Case("rule without endpoints drops", SYN, SAME, verdict=TC_ACT_SHOT,
         rules=[lb_body(eps=[])], counted="no-endpoint"),
    Case("source outside the allow-list drops", SYN, SAME, verdict=TC_ACT_SHOT,
         rules=[lb_body(allowedSources=[{"prefix": "198.18.2.0/24"}])],
         counted="source-not-allowed"),
    Case("source inside the allow-list is served", SYN, xlated(SYN, dst=EP1, dport=8080),
         rules=[lb_body(allowedSources=[{"prefix": "198.18.1.0/24"}])]),
    # --- ports -----------------------------------------------------------------------------------
    Case("port range: a middle port goes to the target port", tcp(dport=8002),
         xlated(tcp(dport=8002), dst=EP1, dport=80),
         rules=[lb_body(port=8001, portMax=8003, target=80)]),
    Case("port-preserving range keeps the port", tcp(dport=8003),
         xlated(tcp(dport=8003), dst=EP1),
         rules=[lb_body(port=8001, portMax=8003, target=0)]),
    # --- udp -------------------------------------------------------------------------------------
    Case("udp datagram is dnatted", udp(), xlated(udp(), dst=EP1, dport=8080),
         rules=[lb_body(proto="udp")]),
    Case("udp reply is translated back", udp(src=EP1, dst=CLIENT, sport=8080, dport=40000),
         xlated(udp(src=EP1, dst=CLIENT, sport=8080, dport=40000), src=VIP, sport=2020),
         rules=[lb_body(proto="udp")], before=[udp()]),
    Case("udp without checksum keeps none", _udp_without_checksum(),
         xlated(_udp_without_checksum(), dst=EP1, dport=8080), rules=[lb_body(proto="udp")]),
    # --- marks -----------------------------------------------------------------------------------
    Case("a marked rule serves packets with its mark", SYN, xlated(SYN, dst=EP2, dport=8080),
         rules=[lb_body(), lb_body(eps=[EP2], block=7)], mark=7),
    Case("unmarked packets use the unmarked rule", SYN, xlated(SYN, dst=EP1, dport=8080),
         rules=[lb_body(), lb_body(eps=[EP2], block=7)]),
    Case("a marked rule alone ignores unmarked packets", SYN, SAME,
         rules=[lb_body(eps=[EP2], block=7)]),
    # --- one-arm and fullNAT ---------------------------------------------------------------------
    Case("one-arm: source becomes the lb's address towards the endpoint", SYN,
         xlated(SYN, src=LB_TOWARDS[EP1], dst=EP1, dport=8080),
         rules=[lb_body(mode=1)]),
    Case("one-arm: reply to the lb's address goes back to the client",
         reply(EP1, LB_TOWARDS[EP1], 8080, 40000),
         xlated(reply(EP1, LB_TOWARDS[EP1], 8080, 40000), src=VIP, sport=2020, dst=CLIENT,
                dport=40000),
         rules=[lb_body(mode=1)], before=[SYN]),
    Case("fullnat: source becomes the private ip", SYN,
         xlated(SYN, src=PRIVATE_IP, dst=EP1, dport=8080),
         rules=[lb_body(mode=2, privateIP=PRIVATE_IP)]),
    Case("fullnat without private ip uses the lb's address", SYN,
         xlated(SYN, src=LB_TOWARDS[EP1], dst=EP1, dport=8080),
         rules=[lb_body(mode=2)]),
    Case("fullnat: reply is translated to vip -> client",
         reply(EP1, PRIVATE_IP, 8080, 40000),
         xlated(reply(EP1, PRIVATE_IP, 8080, 40000), src=VIP, sport=2020, dst=CLIENT),
         rules=[lb_body(mode=2, privateIP=PRIVATE_IP)], before=[SYN]),
    Case("fullnat: same source port from a second client gets its own nat port",
         tcp(src=CLIENT2), _fullnat_collision,
         rules=[lb_body(mode=2, privateIP=PRIVATE_IP, eps=[EP1])], before=[SYN]),
    # --- icmp echo -------------------------------------------------------------------------------
    Case("icmp echo to the vip goes to an endpoint", _echo(CLIENT, VIP),
         xlated(_echo(CLIENT, VIP), dst=EP1),
         rules=[lb_body(proto="icmp", port=0, target=0)]),
    Case("icmp echo reply comes back from the vip", _echo(EP1, CLIENT, "echo-reply"),
         xlated(_echo(EP1, CLIENT, "echo-reply"), src=VIP),
         rules=[lb_body(proto="icmp", port=0, target=0)], before=[_echo(CLIENT, VIP)]),
]


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES), "case names are unique"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_packet(harness: DpHarness, case: Case) -> None:
    harness.reset()
    for body in case.rules:
        harness.apply(body)
    for pkt in case.before:
        harness.run(pkt)
    stat_before = harness.drops(case.counted) if case.counted else 0
    raw = bytes(case.frame)
    verdict, out = harness.run_raw(raw, mark=case.mark)
    assert verdict == case.verdict
    if case.expect == SAME:
        assert out == raw, "the frame was modified"
    elif callable(case.expect):
        case.expect(Ether(out))
    else:
        assert Ether(out).show(dump=True) == Ether(case.expect).show(dump=True)
        assert out == case.expect
    if case.counted:
        assert harness.drops(case.counted) == stat_before + 1, case.counted
