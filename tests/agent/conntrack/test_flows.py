"""The one decoder of conntrack entries and events (loxicmd/agent/conntrack/flows.py),
fed with LbEvent values built as the datapath builds them (conntrack.h lb_ct_create /
lb_ct_emit): a DNAT tcp flow, a fullNAT flow, an ICMP echo flow."""

from __future__ import annotations

import ctypes
import dataclasses
import socket
import struct
from collections.abc import Callable

import pytest
from flow_events import CLIENT, EP, VIP, flow_event

from datapath.layouts import (
    CtState,
    EventType,
    LbCtEntry,
    LbCtKey,
    LbEvent,
    NatMode,
    Reason,
    Xlate,
    ip_to_be32,
    port_to_be16,
)
from loxicmd.agent.conntrack import flows
from loxicmd.agent.conntrack.flows import EVENT_FIELDS, Flow, event_reader, read_event

SNAT = "198.18.5.5"
SEC = 1_000_000_000
TS = 123 * SEC


def wire(ip: str) -> bytes:
    return socket.inet_aton(ip)


def tcp_dnat() -> LbEvent:
    return flow_event(etype=EventType.CLOSED, reason=Reason.FIN, state=CtState.FINI, ts_ns=TS,
                      seqs=(1_000_001, 0xFFFF_FFF0), counts=(6, 512, 5, 9000),
                      times=(10 * SEC, 12 * SEC, 13 * SEC), fin_seen=1, flags=1)


def fullnat() -> LbEvent:
    return flow_event(proto=socket.IPPROTO_UDP, client=(CLIENT, 5353), vip=(VIP, 53),
                      endpoint=(EP, 5300), nat=(SNAT, 61000), state=CtState.UDP_EST,
                      counts=(1, 80, 1, 120), times=(5, 9, 7), timeout_s=20)


def icmp_echo() -> LbEvent:
    """Echo: the identifier rides as the client's port; the service has none."""
    return flow_event(etype=EventType.EXPIRED, reason=Reason.TIMEOUT, proto=socket.IPPROTO_ICMP,
                      client=(CLIENT, 0x1234), vip=(VIP, 0), endpoint=(EP, 0),
                      state=CtState.ICMP_BIDIR, counts=(3, 252, 3, 252), timeout_s=20)


# --------------------------------------------------------------------------- from_event


def test_a_dnat_tcp_flow_decodes_addresses_ports_and_the_untranslated_source() -> None:
    """DNAT: the endpoint sees the client's own address and port; nat_ip is ""."""
    f = Flow.from_event(tcp_dnat())
    assert (f.proto, f.protocol) == (socket.IPPROTO_TCP, "tcp")
    assert (f.client, f.vip, f.endpoint) == (wire(CLIENT), wire(VIP), wire(EP))
    assert (f.client_ip, f.vip_ip, f.endpoint_ip) == (CLIENT, VIP, EP)
    assert (f.client_port, f.vip_port, f.endpoint_port) == (40000, 2020, 8080)
    assert f.snat is False and f.nat_ip == ""
    assert (f.nat_source, f.nat_port) == (wire(CLIENT), 40000)
    assert f.nat_mode == NatMode.DEFAULT


def test_a_dnat_tcp_flow_carries_counters_per_direction_and_both_sequence_numbers() -> None:
    """Resets need each end's next sequence number; the audit log each direction's count."""
    f = Flow.from_event(tcp_dnat())
    assert (f.packets_to_endpoint, f.bytes_to_endpoint) == (6, 512)
    assert (f.packets_to_client, f.bytes_to_client) == (5, 9000)
    assert (f.packets, f.bytes) == (11, 9512)
    assert (f.client_seq_next, f.endpoint_seq_next) == (1_000_001, 0xFFFF_FFF0)
    assert (f.state, f.state_word, f.fin_seen) == (CtState.FINI, "fini", 1)
    assert (f.event, f.reason) == (EventType.CLOSED, Reason.FIN)
    assert (f.rule_id, f.ep_slot, f.timeout_s, f.flags) == (7, 3, 240, 1)
    assert f.created_ns == 10 * SEC
    assert f.last_seen_ns == 13 * SEC  # the later of the two entries
    assert f.mark == 0


def test_a_fullnat_flow_has_the_translated_source_and_port() -> None:
    """xlate SADDR|SPORT: the endpoint sees the SNAT address and port."""
    f = Flow.from_event(fullnat())
    assert (f.protocol, f.state_word) == ("udp", "udp-est")
    assert f.snat is True
    assert (f.nat_source, f.nat_ip, f.nat_port) == (wire(SNAT), SNAT, 61000)
    assert (f.client_ip, f.client_port) == (CLIENT, 5353)
    assert (f.vip_ip, f.vip_port, f.endpoint_ip, f.endpoint_port) == (VIP, 53, EP, 5300)
    assert f.nat_mode == NatMode.FULLNAT
    assert (f.packets, f.bytes, f.timeout_s) == (2, 200, 20)
    assert f.last_seen_ns == 9  # the original entry's is the later one here
    assert (f.event, f.reason) == (EventType.NEW, 0)


def test_an_icmp_echo_flow_has_the_identifier_as_client_port_and_no_service_port() -> None:
    """ICMP echo: the client's port is the identifier; the VIP and endpoint have none."""
    f = Flow.from_event(icmp_echo())
    assert (f.protocol, f.state_word) == ("icmp", "bidir")
    assert (f.client_port, f.vip_port, f.endpoint_port) == (0x1234, 0, 0)
    assert (f.nat_port, f.nat_ip) == (0x1234, "")
    assert (f.endpoint_ip, f.event, f.reason) == (EP, EventType.EXPIRED, Reason.TIMEOUT)


def test_ports_are_host_integers_whatever_the_byte_order() -> None:
    """Ports whose two bytes differ catch a missing or doubled byte swap."""
    f = Flow.from_event(flow_event(client=(CLIENT, 0x0102), vip=(VIP, 0x0304),
                                   endpoint=(EP, 0xABCD), nat=(SNAT, 0xFE01)))
    assert (f.client_port, f.vip_port, f.endpoint_port, f.nat_port) == (
        0x0102, 0x0304, 0xABCD, 0xFE01)


def test_an_entry_without_address_translation_keeps_the_vip_as_endpoint() -> None:
    """No DADDR/DPORT in xlate: the packet went to the VIP's own address and port."""
    ev = flow_event()
    ev.orig.xlate = 0
    f = Flow.from_event(ev)
    assert (f.endpoint_ip, f.endpoint_port, f.snat) == (VIP, 2020, False)


def test_from_event_reads_bytes_of_the_ring_buffer_as_the_structure() -> None:
    """The ring buffer hands raw bytes (bytes, bytearray, memoryview)."""
    ev = tcp_dnat()
    raw = bytes(ev)
    assert len(raw) == ctypes.sizeof(LbEvent)
    expected = Flow.from_event(ev)
    for buf in (raw, bytearray(raw), memoryview(raw)):
        assert Flow.from_event(buf) == expected


def test_unknown_protocols_and_states_are_shown_as_numbers() -> None:
    """A new state in the datapath must not crash a listing."""
    ev = flow_event(proto=47)
    ev.orig.state = 99
    f = Flow.from_event(ev)
    assert (f.protocol, f.state_word) == ("47", "99")


# --------------------------------------------------------------------------- from_entries


@pytest.mark.parametrize("build", [tcp_dnat, fullnat, icmp_echo])
def test_from_entries_decodes_map_entries_as_from_event_does(
        build: Callable[[], LbEvent]) -> None:
    """The listing reads the map, the audit log the event: the same flow, but for the
    event's own fields."""
    ev = build()
    from_map = Flow.from_entries(ev.key, ev.orig, ev.reply)
    from_event = Flow.from_event(ev)
    assert from_event.event != 0
    assert (from_map.event, from_map.reason) == (0, 0)
    assert from_map == dataclasses.replace(from_event, event=0, reason=0)


def test_from_entries_without_a_reply_entry_has_no_reply_direction() -> None:
    """The reply entry may be gone (LRU): zero counters and sequence number back."""
    ev = tcp_dnat()
    f = Flow.from_entries(ev.key, ev.orig, None)
    assert (f.packets_to_client, f.bytes_to_client, f.endpoint_seq_next) == (0, 0, 0)
    assert (f.packets_to_endpoint, f.client_seq_next) == (6, 1_000_001)
    assert f.last_seen_ns == 12 * SEC


def test_from_entries_reads_fresh_structures() -> None:
    """Built field by field as the listing's map reads give them."""
    key, orig = LbCtKey(), LbCtEntry()
    key.saddr, key.daddr = ip_to_be32(CLIENT), ip_to_be32(VIP)
    key.sport, key.dport, key.proto = port_to_be16(1), port_to_be16(2), socket.IPPROTO_UDP
    orig.xlate = Xlate.DADDR
    orig.xlate_daddr = ip_to_be32(EP)
    orig.packets = 4
    f = Flow.from_entries(key, orig, None)
    assert (f.client_ip, f.client_port, f.vip_port, f.endpoint_ip, f.endpoint_port) == (
        CLIENT, 1, 2, EP, 2)
    assert (f.protocol, f.packets) == ("udp", 4)


# --------------------------------------------------------------------------- readers


def test_event_fields_match_the_tuple_read_event_gives() -> None:
    """EV indexes read_event's tuple by these names: their counts must agree."""
    values = read_event(tcp_dnat())
    assert len(EVENT_FIELDS) == len(values)
    assert len(set(EVENT_FIELDS)) == len(EVENT_FIELDS)
    assert flows.EV == {name: i for i, name in enumerate(EVENT_FIELDS)}


def test_read_event_puts_each_named_field_at_its_index() -> None:
    """Spot checks through EV: header, key, both entries."""
    v = read_event(tcp_dnat())
    ev = flows.EV
    assert v[ev["type"]] == EventType.CLOSED and v[ev["reason"]] == Reason.FIN
    assert v[ev["rule_id"]] == 7 and v[ev["ts_ns"]] == TS
    assert v[ev["key.saddr"]] == wire(CLIENT) and v[ev["key.daddr"]] == wire(VIP)
    assert socket.ntohs(v[ev["key.dport"]]) == 2020
    assert v[ev["orig.xlate_daddr"]] == wire(EP)
    assert (v[ev["orig.packets"]], v[ev["reply.bytes"]]) == (6, 9000)
    # each entry holds the other direction's key
    assert v[ev["orig.peer.saddr"]] == wire(EP) and v[ev["reply.peer.saddr"]] == wire(CLIENT)
    assert v[ev["reply.dir"]] == 1
    assert v[ev["reply.seq_next"]] == 0xFFFF_FFF0


def test_event_reader_reads_only_the_fields_asked_for() -> None:
    """The audit log's hot path: one struct call, these fields in this order."""
    read = event_reader(["type", "key.proto", "orig.packets", "reply.packets", "reply.bytes"])
    assert read(tcp_dnat()) == (EventType.CLOSED, socket.IPPROTO_TCP, 6, 5, 9000)
    assert read(bytes(icmp_echo())) == (EventType.EXPIRED, socket.IPPROTO_ICMP, 3, 3, 252)
    full = read_event(fullnat())
    subset = ["key.saddr", "orig.xlate_saddr", "orig.nat_mode", "reply.last_seen_ns"]
    assert event_reader(subset)(fullnat()) == tuple(full[flows.EV[n]] for n in subset)


def test_event_reader_refuses_fields_out_of_layout_order_or_unknown() -> None:
    """Out of order would read the wrong bytes silently."""
    with pytest.raises(ValueError, match="type: fields must be listed in layout order"):
        event_reader(["key.proto", "type"])
    with pytest.raises(KeyError):
        event_reader(["orig.nonesuch"])


def test_the_one_byte_offsets_point_at_the_type_and_the_protocol() -> None:
    """Readers skip events on one byte without decoding them."""
    raw = bytes(fullnat())
    assert raw[flows.EVENT_TYPE_OFFSET] == EventType.NEW
    assert raw[flows.EVENT_PROTO_OFFSET] == socket.IPPROTO_UDP
    assert flows.EVENT_PROTO_OFFSET == LbEvent.key.offset + LbCtKey.proto.offset


def test_each_field_the_decoder_reads_has_its_c_size() -> None:
    """The struct codes written by hand in flows.py against the ctypes mirrors (a 1-byte
    field read as 4 bytes would still give right answers over zero padding)."""
    for path, code in flows._EVENT:
        cls: type = LbEvent
        for name in path.split("."):
            ctype = dict(cls._fields_)[name]
            cls = ctype
        assert struct.calcsize("=" + code) == ctypes.sizeof(ctype), path


def test_the_event_reader_format_covers_the_structure() -> None:
    """The last field read ends inside the event (a layout change would show here)."""
    values = read_event(tcp_dnat())
    assert values[-2] == 9000  # reply.bytes, before reply.reported_ns, the last field
    assert struct.calcsize("=Q") + LbEvent.reply.offset + LbCtEntry.reported_ns.offset == (
        ctypes.sizeof(LbEvent))
