"""TCP resets on behalf of the load balancer for the flows it ends (idle timeout, endpoint
removed, rule deleted), so neither end keeps a dead connection open.

For an ``EV_EXPIRED`` event of a TCP flow that was not closed already,
:meth:`ResetSender.reset_flow` sends two RST+ACK segments from one raw socket
(``IPPROTO_RAW``, ``IP_HDRINCL``) of the agent's network namespace:

- to the client, as the VIP: ``VIP:vport -> client:cport``, ``seq = reply.seq_next``
  (what the client expects next from the server side), ``ack = orig.seq_next``;
- to the endpoint, as the client or the NAT source the endpoint sees:
  ``nat-source:nport -> endpoint:eport``, ``seq = orig.seq_next``, ``ack = reply.seq_next``.

A receiver accepts a RST only when its sequence number is exactly the next one it expects
(RFC 5961), hence the datapath keeps ``seq_next`` per direction. The segments are built
after the datapath's translation (they leave by the kernel's routing, not through the TC
program); the kernel fills the IP checksum, identification and total length, the TCP
checksum is computed here.
"""

from __future__ import annotations

import logging
import socket
import struct

from datapath.layouts import CtState, EventType, LbEvent

from .flows import EVENT_PROTO_OFFSET, EVENT_TYPE_OFFSET, Buffer, Flow

log = logging.getLogger("loxilbd.tcpreset")

TCP_RST, TCP_ACK = 0x04, 0x10
_IP_HDR = struct.Struct("!BBHHHBBH4s4s")
_TCP_HDR = struct.Struct("!2s2sIIBBHHH")  # ports kept as their wire bytes
_WORDS = struct.Struct("!16H")  # pseudo header (12) + TCP header (20)


def tcp_checksum(src: bytes, dst: bytes, segment: bytes) -> int:
    """Internet checksum of a 20-byte TCP segment with its pseudo header (to fill a zero
    checksum field; 0 for a segment whose checksum is right)."""
    total = sum(_WORDS.unpack(src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP,
                                                      len(segment)) + segment))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_rst(src: bytes, sport: bytes, dst: bytes, dport: bytes, seq: int, ack: int) -> bytes:
    """An IPv4 + TCP RST|ACK packet; addresses and ports as wire bytes (network order)."""
    seq &= 0xFFFFFFFF
    ack &= 0xFFFFFFFF
    tcp = _TCP_HDR.pack(sport, dport, seq, ack, 5 << 4, TCP_RST | TCP_ACK, 0, 0, 0)
    csum = tcp_checksum(src, dst, tcp)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    # version/IHL, TOS, total length, id (0: kernel picks), DF, TTL, TCP, checksum (kernel)
    ip = _IP_HDR.pack(0x45, 0, 40, 0, 0x4000, 64, socket.IPPROTO_TCP, 0, src, dst)
    return ip + tcp


_EXPIRED = int(EventType.EXPIRED)


def flow_resets(ev: Buffer | LbEvent) -> list[tuple[str, bytes]]:
    """(destination, packet) of the two RSTs of an EV_EXPIRED event of an open TCP flow:
    client first, endpoint second; none for other events, other protocols, closed flows."""
    view = memoryview(ev).cast("B")
    if view[EVENT_TYPE_OFFSET] != _EXPIRED or view[EVENT_PROTO_OFFSET] != socket.IPPROTO_TCP:
        return []  # decided on two bytes: most events are not this
    flow = Flow.from_event(ev)
    if flow.state == CtState.CLOSED or flow.copy:
        return []  # closed already, or a peer's copy: the node carrying it decides
    client, cport = flow.client, _port(flow.client_port)
    vip, vport = flow.vip, _port(flow.vip_port)
    ep, eport = flow.endpoint, _port(flow.endpoint_port)
    nat, nport = flow.nat_source, _port(flow.nat_port)
    c_next, e_next = flow.client_seq_next, flow.endpoint_seq_next
    return [
        (socket.inet_ntoa(client), build_rst(vip, vport, client, cport, e_next, c_next)),
        (socket.inet_ntoa(ep), build_rst(nat, nport, ep, eport, c_next, e_next)),
    ]


def _port(port: int) -> bytes:
    return struct.pack("!H", port)


class ResetSender:
    """Sends the RSTs of expired TCP flows through one raw socket of the current netns."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        self.sent = 0
        self.errors = 0

    def reset_flow(self, ev: Buffer | LbEvent) -> int:
        """Reset both ends of the flow of an EV_EXPIRED event; returns the packets sent.

        Does nothing (0) for other events, non-TCP flows and flows already closed. Send
        errors are logged and counted, never raised.
        """
        sent = 0
        for dst, packet in flow_resets(ev):
            try:
                self.sock.sendto(packet, (dst, 0))
            except OSError as exc:
                self.errors += 1
                log.warning("TCP reset to %s failed: %s", dst, exc)
                continue
            sent += 1
        self.sent += sent
        return sent

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ResetSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
