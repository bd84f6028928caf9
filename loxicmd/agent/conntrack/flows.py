"""The one decoder of conntrack entries and events.

A flow has two entries in the datapath (client -> VIP, and endpoint -> client or SNAT
address); the ring buffer's events carry both. Everything the agent reads of them goes
through here: ``read_event`` unpacks an event (a ring-buffer record) into one flat tuple in
a single ``struct`` call, for the audit log's hot path; :class:`Flow` is the same
information named, built from an event or from a pair of map entries, for the listing, the
resets and the installer. The offsets come from the ctypes mirrors of ``lb_types.h``, so a
layout change follows here by itself.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datapath import layouts as L
from loxicmd.names import CT_STATE_WORDS, PROTOCOL_NUMBERS, by_code

Buffer = bytes | bytearray | memoryview

# Fields of one lb_ct_entry in layout order (path below the entry, struct code): 4-byte
# addresses stay wire bytes, __be16 ports are read natively and turned with ntohs.
_ENTRY = [
    ("peer.saddr", "4s"), ("peer.daddr", "4s"), ("peer.sport", "H"), ("peer.dport", "H"),
    ("peer.proto", "B"),
    ("xlate_saddr", "4s"), ("xlate_daddr", "4s"), ("xlate_sport", "H"), ("xlate_dport", "H"),
    ("rule_id", "I"), ("ep_slot", "I"), ("timeout_s", "I"), ("seq_next", "I"),
    ("dir", "B"), ("state", "B"), ("fin_seen", "B"), ("xlate", "B"), ("flags", "I"),
    ("nat_mode", "B"), ("created_ns", "Q"), ("last_seen_ns", "Q"), ("packets", "Q"),
    ("bytes", "Q"), ("reported_ns", "Q"),
]
_KEY = [("saddr", "4s"), ("daddr", "4s"), ("sport", "H"), ("dport", "H"), ("proto", "B")]
ENTRY_FIELDS = [name for name, _ in _ENTRY]
KEY_FIELDS = [name for name, _ in _KEY]
# An event: type, reason, ts, then the original key and both entries.
EVENT_FIELDS = (["type", "reason", "rule_id", "ts_ns"] + [f"key.{n}" for n in KEY_FIELDS]
                + [f"orig.{n}" for n in ENTRY_FIELDS] + [f"reply.{n}" for n in ENTRY_FIELDS])


def _offset(root: type, path: str) -> int:
    """Byte offset of a dotted field path of a ctypes structure (e.g. ``orig.packets``)."""
    off, cls = 0, root
    for name in path.split("."):
        off += getattr(cls, name).offset
        cls = dict(cls._fields_)[name]
    return off


def _reader(root: type, fields: list[tuple[str, str]]) -> Callable[[Any], tuple[Any, ...]]:
    """``unpack_from`` of ``fields`` (path, struct code, in layout order) of ``root``."""
    fmt, pos = "=", 0
    for path, code in fields:
        off = _offset(root, path)
        if off < pos:
            raise ValueError(f"{path}: fields must be listed in layout order")
        if off > pos:
            fmt += f"{off - pos}x"
        fmt += code
        pos = off + struct.calcsize("=" + code)
    return struct.Struct(fmt).unpack_from


def _prefixed(prefix: str, fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(f"{prefix}.{path}", code) for path, code in fields]


_EVENT = [("type", "B"), ("reason", "B"), ("rule_id", "I"), ("ts_ns", "Q"),
          *_prefixed("key", _KEY),
          *_prefixed("orig", _ENTRY), *_prefixed("reply", _ENTRY)]
_EVENT_CODES = dict(_EVENT)


def event_reader(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """A reader of only some of an event's fields (EVENT_FIELDS names, in that order),
    for a hot path that needs few: one struct call, nothing else decoded."""
    return _reader(L.LbEvent, [(name, _EVENT_CODES[name]) for name in names])


# Where an event says what it is, for readers that skip most events on one byte.
EVENT_TYPE_OFFSET = _offset(L.LbEvent, "type")
EVENT_PROTO_OFFSET = _offset(L.LbEvent, "key.proto")

read_event = _reader(L.LbEvent, _EVENT)
"""An event's fields as one tuple, in the order of EVENT_FIELDS."""
read_key = _reader(L.LbCtKey, _KEY)
read_entry = _reader(L.LbCtEntry, _ENTRY)

# Positions in read_event's tuple, for readers that take only some fields.
EV = {name: i for i, name in enumerate(EVENT_FIELDS)}
_E = {name: i for i, name in enumerate(ENTRY_FIELDS)}
_ntohs = socket.ntohs
STATE_WORDS = by_code(L.CtState, CT_STATE_WORDS)
_R_SEQ, _R_SEEN = _E["seq_next"], _E["last_seen_ns"]
_R_PACKETS, _R_BYTES, _R_FLAGS = _E["packets"], _E["bytes"], _E["flags"]
_SYNCED = int(L.CtFlags.SYNCED)
_ICMP = socket.IPPROTO_ICMP
_SADDR, _DADDR = int(L.Xlate.SADDR), int(L.Xlate.DADDR)
_SPORT, _DPORT = int(L.Xlate.SPORT), int(L.Xlate.DPORT)


@dataclass(slots=True)  # not frozen: the listing makes one per flow of the table
class Flow:
    """A flow, both directions. Addresses are wire bytes, ports host integers (ICMP
    echo: the identifier as the client's port, 0 for the service's). `rule_id` and
    `ep_slot` are this node's; `mark` is the rule's when the reader knows it."""

    proto: int
    client: bytes
    client_port: int
    vip: bytes
    vip_port: int
    endpoint: bytes
    endpoint_port: int
    nat_source: bytes  # the source the endpoint sees (the client's when not translated)
    nat_port: int
    snat: bool
    nat_mode: int
    state: int
    fin_seen: int
    client_seq_next: int  # TCP: next sequence number expected from the client
    endpoint_seq_next: int  # ... and from the endpoint
    timeout_s: int
    created_ns: int
    last_seen_ns: int
    packets_to_endpoint: int
    bytes_to_endpoint: int
    packets_to_client: int
    bytes_to_client: int
    rule_id: int
    ep_slot: int
    flags: int
    event: int = 0  # the event that reported it (0: read from the table)
    reason: int = 0
    mark: int = 0
    copy: bool = False  # a peer's, which carried no packet here (both entries SYNCED)

    @classmethod
    def from_event(cls, buf: Buffer | L.LbEvent) -> Flow:
        v = read_event(buf)
        k, n = EV["key.saddr"], len(KEY_FIELDS)
        key, orig = v[k:k + n], v[k + n:k + n + len(ENTRY_FIELDS)]
        reply = v[k + n + len(ENTRY_FIELDS):]
        return cls._decode(key, orig, reply, event=v[0], reason=v[1])

    @classmethod
    def from_entries(cls, key: L.LbCtKey, orig: L.LbCtEntry, reply: L.LbCtEntry | None
                     ) -> Flow:
        return cls._decode(read_key(key), read_entry(orig),
                           read_entry(reply) if reply is not None else None)

    @classmethod
    def _decode(cls, key: tuple[Any, ...], o: tuple[Any, ...], r: tuple[Any, ...] | None,
                event: int = 0, reason: int = 0) -> Flow:
        # unpacked in ENTRY_FIELDS order (the listing decodes every flow of the table)
        saddr, daddr, sport, dport, proto = key
        (_, _, _, _, _, xsaddr, xdaddr, xsport, xdport, rule_id, ep_slot, timeout_s, seq,
         _, state, fin_seen, x, flags, nat_mode, created, last_seen, packets, nbytes, _) = o
        r_seq = r_seen = r_packets = r_bytes = 0
        r_flags = _SYNCED
        if r is not None:
            r_seq, r_seen, r_packets, r_bytes = r[_R_SEQ], r[_R_SEEN], r[_R_PACKETS], r[_R_BYTES]
            r_flags = r[_R_FLAGS]
        icmp = proto == _ICMP
        snat = bool(x & _SADDR)
        return cls(
            proto, saddr, _ntohs(sport), daddr, 0 if icmp else _ntohs(dport),
            xdaddr if x & _DADDR else daddr,
            0 if icmp else _ntohs(xdport if x & _DPORT else dport),
            xsaddr if snat else saddr, _ntohs(xsport if x & _SPORT else sport), snat,
            nat_mode, state, fin_seen, seq, r_seq, timeout_s, created, max(last_seen, r_seen),
            packets, nbytes, r_packets, r_bytes, rule_id, ep_slot, flags, event, reason, 0,
            bool(flags & r_flags & _SYNCED))

    # -- as text ----------------------------------------------------------------
    @property
    def protocol(self) -> str:
        return PROTOCOL_NUMBERS.get(self.proto, str(self.proto))

    @property
    def state_word(self) -> str:
        return STATE_WORDS.get(self.state, str(self.state))

    @property
    def client_ip(self) -> str:
        return socket.inet_ntoa(self.client)

    @property
    def vip_ip(self) -> str:
        return socket.inet_ntoa(self.vip)

    @property
    def endpoint_ip(self) -> str:
        return socket.inet_ntoa(self.endpoint)

    @property
    def nat_ip(self) -> str:
        """The translated source ("" when the endpoint sees the client's own)."""
        return socket.inet_ntoa(self.nat_source) if self.snat else ""

    @property
    def packets(self) -> int:
        return self.packets_to_endpoint + self.packets_to_client

    @property
    def bytes(self) -> int:
        return self.bytes_to_endpoint + self.bytes_to_client
