"""LbEvent values built as the datapath builds them (conntrack.h lb_ct_create /
lb_ct_emit): both entries of one flow, each keyed by its own direction with the other's
key in `peer`. Used by the tests of the flow decoder and of the audit log."""

from __future__ import annotations

import socket
import time

from datapath.layouts import (
    CtState,
    EventType,
    LbEvent,
    NatMode,
    Reason,
    Xlate,
    ip_to_be32,
    port_to_be16,
)

CLIENT, VIP, EP = "198.18.1.2", "198.18.100.1", "198.18.11.2"


def flow_event(
    etype: int = EventType.NEW,
    *,
    reason: int = Reason.NONE,
    proto: int = socket.IPPROTO_TCP,
    client: tuple[str, int] = (CLIENT, 40000),
    vip: tuple[str, int] = (VIP, 2020),
    endpoint: tuple[str, int] = (EP, 8080),
    nat: tuple[str, int] | None = None,
    state: int = CtState.EST,
    rule_id: int = 7,
    ep_slot: int = 3,
    seqs: tuple[int, int] = (0, 0),
    counts: tuple[int, int, int, int] = (0, 0, 0, 0),
    times: tuple[int, int, int] = (0, 0, 0),
    ts_ns: int | None = None,
    timeout_s: int = 240,
    fin_seen: int = 0,
    flags: int = 0,
) -> LbEvent:
    """`seqs`: client's next, endpoint's next; `counts`: packets and bytes to the
    endpoint, then to the client; `times`: created, last seen of the original entry, last
    seen of the reply entry; `ts_ns`: when the event was emitted (default now)."""
    ev = LbEvent()
    ev.type, ev.reason, ev.rule_id = etype, reason, rule_id
    ev.ts_ns = time.monotonic_ns() if ts_ns is None else ts_ns
    k = ev.key
    k.saddr, k.daddr = ip_to_be32(client[0]), ip_to_be32(vip[0])
    k.sport, k.dport, k.proto = port_to_be16(client[1]), port_to_be16(vip[1]), proto
    o, r = ev.orig, ev.reply
    o.xlate_daddr, o.xlate_dport = ip_to_be32(endpoint[0]), port_to_be16(endpoint[1])
    o.xlate = Xlate.DADDR | Xlate.DPORT
    o.nat_mode = r.nat_mode = NatMode.DEFAULT
    src = client
    if nat is not None:
        o.xlate_saddr, o.xlate_sport = ip_to_be32(nat[0]), port_to_be16(nat[1])
        o.xlate |= Xlate.SADDR | Xlate.SPORT
        o.nat_mode = r.nat_mode = NatMode.FULLNAT
        src = nat
    # the reply entry's key: endpoint -> client (or the NAT source); it rewrites back to
    # the VIP
    o.peer.saddr, o.peer.daddr = o.xlate_daddr, ip_to_be32(src[0])
    o.peer.sport, o.peer.dport, o.peer.proto = o.xlate_dport, port_to_be16(src[1]), proto
    r.peer = k
    r.dir = 1
    r.xlate_saddr, r.xlate_sport = k.daddr, k.dport
    r.xlate = Xlate.SADDR | Xlate.SPORT
    for e in (o, r):
        e.state, e.rule_id, e.ep_slot, e.timeout_s = state, rule_id, ep_slot, timeout_s
        e.created_ns = times[0]
        e.fin_seen, e.flags = fin_seen, flags
    o.last_seen_ns, r.last_seen_ns = times[1], times[2]
    o.seq_next, r.seq_next = seqs
    o.packets, o.bytes, r.packets, r.bytes = counts
    return ev
