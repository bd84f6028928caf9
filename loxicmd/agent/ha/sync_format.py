"""The conntrack sync wire format, version 1: declared here once, for both ends.

A connection starts with a handshake that proves to each side that the other holds the
cluster key (HMAC-SHA256 over both sides' random nonces; the key never crosses the wire),
then carries frames, each authenticated with a key derived from the handshake and
numbered (a frame replayed or reordered is refused)::

    frame   = header payload mac
    header  = magic "LXSY", version u8, type u8, reserved u16, payload length u32, seq u64
    mac     = HMAC-SHA256(session key, header + payload), first 16 bytes
              (absent on the three handshake frames)

Frame types: HELLO (client: nonce, node name), CHALLENGE (server: nonce, proof, node
name), PROOF (client: proof); then from the sender of flows: BULK_BEGIN, FLOWS (a count
and that many records), BULK_END (the count sent in the bulk); from the receiver: ACK
(the seq of the last frame handled, and how many flow records it has installed).

A flow record is fixed-size; addresses are 16 bytes (IPv4 as ::ffff:a.b.c.d, room for
IPv6) and ports host integers in network order; times are relative (age and idle time
when sent), since nodes' monotonic clocks differ.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import socket
import struct
from dataclasses import dataclass

from ..conntrack.flows import Flow

VERSION = 1
MAGIC = b"LXSY"
HEADER = struct.Struct("!4sBBHIQ")
MAC_LEN = 16
NONCE_LEN = 16
MAX_PAYLOAD = 4 * 1024 * 1024
MAX_NAME = 255
MAX_HANDSHAKE = 1024  # before the peer is authenticated, frames stay small


class FrameType(enum.IntEnum):
    HELLO = 1
    CHALLENGE = 2
    PROOF = 3
    BULK_BEGIN = 4
    FLOWS = 5
    BULK_END = 6
    ACK = 7


class Op(enum.IntEnum):
    UPSERT = 1  # the flow is (still) open, or closed but kept a while (TCP)
    DELETE = 2  # the flow ended and its entries are gone


# op, family, proto, state, nat_mode, fin_seen, snat, reserved; client, vip, endpoint,
# nat source; their ports; mark, client's and endpoint's next sequence numbers, reserved;
# age and idle time (ns); packets and bytes to the endpoint, then to the client.
RECORD = struct.Struct("!8B16s16s16s16sHHHHIIII6Q")
_MAPPED = b"\0" * 10 + b"\xff\xff"
COUNT = struct.Struct("!I")
ACK = struct.Struct("!QQ")


class SyncError(Exception):
    """The other side broke the protocol (or holds another key)."""


def _addr16(addr: bytes) -> bytes:
    return _MAPPED + addr if len(addr) == 4 else addr


def _addr4(addr: bytes) -> bytes:
    if addr[:12] != _MAPPED:
        raise SyncError("an IPv6 flow record (this node handles IPv4 flows only)")
    return addr[12:]


def encode_flow(flow: Flow, op: Op, now_ns: int) -> bytes:
    return RECORD.pack(
        op, 4, flow.proto, flow.state, flow.nat_mode, flow.fin_seen, flow.snat, 0,
        _addr16(flow.client), _addr16(flow.vip), _addr16(flow.endpoint),
        _addr16(flow.nat_source), flow.client_port, flow.vip_port, flow.endpoint_port,
        flow.nat_port, flow.mark, flow.client_seq_next, flow.endpoint_seq_next, 0,
        max(0, now_ns - flow.created_ns), max(0, now_ns - flow.last_seen_ns),
        flow.packets_to_endpoint, flow.bytes_to_endpoint, flow.packets_to_client,
        flow.bytes_to_client)


def decode_flow(record: bytes | memoryview, now_ns: int) -> tuple[Op, Flow]:
    (op, _family, proto, state, nat_mode, fin_seen, snat, _, client, vip, endpoint, nat,
     cport, vport, eport, nport, mark, cseq, eseq, _, age, idle, p_ep, b_ep, p_cl,
     b_cl) = RECORD.unpack(record)
    try:
        op = Op(op)
    except ValueError:
        raise SyncError(f"unknown record operation {op}") from None
    flow = Flow(proto, _addr4(client), cport, _addr4(vip), vport, _addr4(endpoint), eport,
                _addr4(nat), nport, bool(snat), nat_mode, state, fin_seen, cseq, eseq, 0,
                now_ns - age, now_ns - idle, p_ep, b_ep, p_cl, b_cl, 0, 0, 0, mark=mark)
    return op, flow


def records(payload: bytes | memoryview) -> list[memoryview]:
    """The records of a FLOWS payload."""
    view = memoryview(payload)
    (count,) = COUNT.unpack_from(view)
    if COUNT.size + count * RECORD.size != len(view):
        raise SyncError(f"a FLOWS frame of {len(view)} bytes says it holds {count} records")
    return [view[COUNT.size + i * RECORD.size:COUNT.size + (i + 1) * RECORD.size]
            for i in range(count)]


def proof(key: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(key, role + first + second, hashlib.sha256).digest()


@dataclass
class Channel:
    """One side of an authenticated connection: frames out with the next seq and a MAC,
    frames in checked (MAC, seq strictly growing)."""

    sock: socket.socket
    session_key: bytes = b""
    seq_out: int = 0
    seq_in: int = 0

    def send(self, ftype: FrameType, payload: bytes = b"") -> int:
        self.seq_out += 1
        head = HEADER.pack(MAGIC, VERSION, ftype, 0, len(payload), self.seq_out)
        mac = (hmac.new(self.session_key, head + payload, hashlib.sha256).digest()[:MAC_LEN]
               if self.session_key else b"")
        self.sock.sendall(head + payload + mac)
        return self.seq_out

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the peer closed the connection")
            buf += chunk
        return bytes(buf)

    def recv(self) -> tuple[FrameType, int, bytes]:
        head = self._read(HEADER.size)
        magic, version, ftype, _, length, seq = HEADER.unpack(head)
        if magic != MAGIC:
            raise SyncError("not a conntrack sync peer (bad magic)")
        if version != VERSION:
            raise SyncError(f"the peer speaks sync version {version}; this node speaks "
                            f"{VERSION}")
        limit = MAX_PAYLOAD if self.session_key else MAX_HANDSHAKE
        if length > limit:
            raise SyncError(f"a frame of {length} bytes (at most {limit})")
        payload = self._read(length)
        if self.session_key:
            mac = self._read(MAC_LEN)
            want = hmac.new(self.session_key, head + payload, hashlib.sha256).digest()[:MAC_LEN]
            if not hmac.compare_digest(mac, want):
                raise SyncError("a frame failed authentication")
        if seq != self.seq_in + 1:
            raise SyncError(f"frame {seq} after frame {self.seq_in} (replayed, reordered or "
                            "one dropped on the way)")
        self.seq_in = seq
        try:
            return FrameType(ftype), seq, payload
        except ValueError:
            raise SyncError(f"unknown frame type {ftype}") from None

    def expect(self, ftype: FrameType) -> bytes:
        got, _, payload = self.recv()
        if got != ftype:
            raise SyncError(f"expected {ftype.name}, got {got.name}")
        return payload


def _name(payload: bytes) -> str:
    return payload[:MAX_NAME].decode("utf-8", "replace")


def client_handshake(ch: Channel, key: bytes, node: str) -> str:
    """Authenticate both ways from the connecting side; returns the server's node name."""
    nonce, name = os.urandom(NONCE_LEN), node.encode()[:MAX_NAME]
    ch.send(FrameType.HELLO, nonce + name)
    payload = ch.expect(FrameType.CHALLENGE)
    server_nonce, server_proof = payload[:NONCE_LEN], payload[NONCE_LEN:NONCE_LEN + 32]
    server_name = payload[NONCE_LEN + 32:]
    # the proofs cover both names: neither can be changed on the way
    if not hmac.compare_digest(server_proof, proof(key, b"server", nonce + name,
                                                   server_nonce + server_name)):
        raise SyncError("the peer does not hold the cluster key")
    ch.send(FrameType.PROOF, proof(key, b"client", server_nonce + server_name, nonce + name))
    ch.session_key = proof(key, b"session", nonce, server_nonce)
    return _name(server_name)


def server_handshake(ch: Channel, key: bytes, node: str) -> str:
    """Authenticate both ways from the accepting side; returns the client's node name."""
    payload = ch.expect(FrameType.HELLO)
    client_nonce, client_name = payload[:NONCE_LEN], payload[NONCE_LEN:NONCE_LEN + MAX_NAME]
    name = _name(client_name)
    if len(client_nonce) != NONCE_LEN:
        raise SyncError("a HELLO without a nonce")
    nonce, own = os.urandom(NONCE_LEN), node.encode()[:MAX_NAME]
    ch.send(FrameType.CHALLENGE, nonce + proof(key, b"server", client_nonce + client_name,
                                               nonce + own) + own)
    if not hmac.compare_digest(ch.expect(FrameType.PROOF),
                               proof(key, b"client", nonce + own, client_nonce + client_name)):
        raise SyncError(f"the peer {name!r} does not hold the cluster key")
    ch.session_key = proof(key, b"session", client_nonce, nonce)
    return name

