"""ResetSender: the RSTs of an expired TCP flow really reset both ends of a live connection.

Lab: client (198.18.1.2) --- lb (router, 198.18.1.1 | 198.18.2.1) --- server (198.18.2.2).
A real TCP connection carries data both ways between a Python client and a Python server;
a packet socket in the lb namespace learns the two initial sequence numbers from the
handshake. The test then describes that flow as a load balancer's conntrack would (VIP =
endpoint = the server, no SNAT, seq_next = ISN + 1 + bytes sent) and runs ResetSender in the
lb namespace, a third position that owns neither address. RSTs one sequence number off
must leave both sockets alive (RFC 5961); the exact ones must reset both within a second.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from flow_events import flow_event as built_flow_event
from lab import Lab, Netns

from datapath.layouts import (
    EventType,
    LbEvent,
    Reason,
    Xlate,
    ip_to_be32,
    port_to_be16,
)
from loxicmd.agent.conntrack.resets import ResetSender, build_rst, flow_resets, tcp_checksum

CLIENT_IP, SERVER_IP = "198.18.1.2", "198.18.2.2"
PORT = 8080
TO_SERVER, TO_CLIENT = 100_000, 54_321  # bytes each side sends before the reset

_SNIFFER = textwrap.dedent(
    """
    import json, socket, struct, sys
    ifname, port = sys.argv[1], int(sys.argv[2])
    # ETH_P_ALL: packets sent on the interface reach only "all protocols" taps.
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(3))
    s.bind((ifname, 3))
    s.settimeout(20)
    print("ready", flush=True)
    syn = synack = None
    while syn is None or synack is None:
        pkt, addr = s.recvfrom(65535)
        if addr[1] != 0x0800 or pkt[9] != 6:
            continue
        ihl = (pkt[0] & 15) * 4
        sport, dport, seq = struct.unpack_from("!HHI", pkt, ihl)
        flags = pkt[ihl + 13] & 0x12
        if flags == 0x02 and dport == port:
            syn = (sport, seq)
        elif flags == 0x12 and sport == port:
            synack = (dport, seq)
    print(json.dumps({"cport": syn[0], "client_isn": syn[1], "cport_reply": synack[0],
                      "server_isn": synack[1]}), flush=True)
    """
)

# Both ends: exchange the data, say "exchanged <local port>", then block in recv() and
# report how the connection ended.
_END = textwrap.dedent(
    """
    def wait_end(s):
        print("exchanged", s.getsockname()[1], flush=True)
        s.settimeout(20)
        try:
            data = s.recv(1)
            print("eof" if not data else "data", flush=True)
        except ConnectionResetError:
            print("reset", flush=True)
        except OSError as exc:
            print("error", repr(exc), flush=True)

    def read_exactly(s, n):
        got = 0
        while got < n:
            chunk = s.recv(min(65536, n - got))
            if not chunk:
                raise SystemExit("eof after %d bytes" % got)
            got += len(chunk)
    """
)

_SERVER = _END + textwrap.dedent(
    """
    import socket, sys
    ip, port, n_in, n_out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((ip, port))
    ls.listen(1)
    print("listening", flush=True)
    s, _ = ls.accept()
    read_exactly(s, n_in)
    s.sendall(b"s" * n_out)
    wait_end(s)
    """
)

_CLIENT = _END + textwrap.dedent(
    """
    import socket, sys
    ip, port, n_out, n_in = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    s = socket.create_connection((ip, port), timeout=10)
    s.sendall(b"c" * n_out)
    read_exactly(s, n_in)
    wait_end(s)
    """
)

_SEND = textwrap.dedent(
    """
    import sys
    from datapath.layouts import LbEvent
    from loxicmd.agent.conntrack.resets import ResetSender
    with ResetSender() as rs:
        print(rs.reset_flow(LbEvent.from_buffer_copy(bytes.fromhex(sys.argv[1]))))
    """
)


class Lines:
    """Line reader of a process's stdout with timeouts."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc, self.fd, self.buf = proc, proc.stdout.fileno(), b""

    def read(self, timeout: float) -> str | None:
        """The next line, or None if none came within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 4096)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def expect(self, timeout: float, what: str) -> str:
        line = self.read(timeout)
        if line is None:
            self.proc.poll()
            raise AssertionError(f"no {what!r} line within {timeout}s "
                                 f"(exit status {self.proc.returncode})")
        return line


def start(ns: Netns, script: str, *args: object) -> Lines:
    proc = ns.popen(sys.executable, "-c", script, *(str(a) for a in args),
                    stdout=subprocess.PIPE)
    return Lines(proc)


def flow_event(cport: int, client_next: int, server_next: int) -> LbEvent:
    """The EventType.EXPIRED event an LB between client and server would emit for the flow."""
    return built_flow_event(EventType.EXPIRED, reason=Reason.TIMEOUT, rule_id=1,
                            client=(CLIENT_IP, cport), vip=(SERVER_IP, PORT),
                            endpoint=(SERVER_IP, PORT),
                            seqs=(client_next & 0xFFFFFFFF, server_next & 0xFFFFFFFF))


def send_resets(lb: Netns, ev: LbEvent) -> int:
    return int(lb.run(sys.executable, "-c", _SEND, bytes(ev).hex(), timeout=20).stdout)


def test_expired_flow_resets_both_ends(lab: Lab) -> None:
    client, lb, server = lab.add_ns("client"), lab.add_ns("lb"), lab.add_ns("server")
    lb.sysctl("net.ipv4.ip_forward", 1)
    lab.link(client, lb, "eth0", "lbc", f"{CLIENT_IP}/24", "198.18.1.1/24")
    lab.link(lb, server, "lbs", "eth0", "198.18.2.1/24", f"{SERVER_IP}/24")
    client.ip("route", "add", "default", "via", "198.18.1.1")
    server.ip("route", "add", "default", "via", "198.18.2.1")

    sniffer = start(lb, _SNIFFER, "lbc", PORT)
    assert sniffer.expect(10, "ready") == "ready"
    srv = start(server, _SERVER, SERVER_IP, PORT, TO_SERVER, TO_CLIENT)
    assert srv.expect(10, "listening") == "listening"
    cli = start(client, _CLIENT, SERVER_IP, PORT, TO_SERVER, TO_CLIENT)

    c_line = cli.expect(15, "exchanged").split()
    s_line = srv.expect(15, "exchanged").split()
    assert c_line[0] == "exchanged" and s_line == ["exchanged", str(PORT)], (c_line, s_line)
    hs = json.loads(sniffer.expect(10, "handshake"))
    cport = int(c_line[1])
    assert hs["cport"] == hs["cport_reply"] == cport, hs

    client_next = hs["client_isn"] + 1 + TO_SERVER
    server_next = hs["server_isn"] + 1 + TO_CLIENT

    # One off on each side: inside the window, so only a challenge ACK, no reset.
    assert send_resets(lb, flow_event(cport, client_next + 1, server_next + 1)) == 2
    assert cli.read(0.5) is None, "the client accepted a RST with a wrong sequence number"
    assert srv.read(0.1) is None, "the server accepted a RST with a wrong sequence number"

    sent_at = time.monotonic()
    assert send_resets(lb, flow_event(cport, client_next, server_next)) == 2
    left = 1.0 - (time.monotonic() - sent_at)
    assert cli.expect(max(left, 0.05), "client end") == "reset"
    left = 1.0 - (time.monotonic() - sent_at)
    assert srv.expect(max(left, 0.05), "server end") == "reset"


def test_only_expired_open_tcp_flows_are_reset(require_root_netns: None) -> None:
    """Nothing is sent (0) for UDP, for flows the endpoints closed, for closed states."""
    with ResetSender() as rs:
        ev = flow_event(40000, 1, 1)
        ev.key.proto = socket.IPPROTO_UDP
        assert rs.reset_flow(ev) == 0
        ev = flow_event(40000, 1, 1)
        ev.type = EventType.CLOSED
        assert rs.reset_flow(ev) == 0
        ev = flow_event(40000, 1, 1)
        ev.orig.state = 0  # closed
        assert rs.reset_flow(ev) == 0
        assert rs.sent == rs.errors == 0


def test_fullnat_flow_resets_are_addressed_as_each_end_sees_the_flow() -> None:
    """Client side: from the VIP. Endpoint side: from the NAT source and port, to the
    endpoint's own port; sequence numbers swapped between the two."""
    ev = flow_event(40000, 0x1000_0001, 0xFFFF_FFF0)
    ev.key.daddr, ev.key.dport = ip_to_be32("198.18.100.1"), port_to_be16(2020)
    ev.orig.xlate = Xlate.SADDR | Xlate.SPORT | Xlate.DADDR | Xlate.DPORT
    ev.orig.xlate_saddr, ev.orig.xlate_sport = ip_to_be32("198.18.2.1"), port_to_be16(61000)
    (to_client, p1), (to_ep, p2) = flow_resets(ev)
    assert (to_client, to_ep) == (CLIENT_IP, SERVER_IP)

    def fields(p: bytes) -> tuple[str, str, int, int, int, int]:
        return (socket.inet_ntoa(p[12:16]), socket.inet_ntoa(p[16:20]),
                int.from_bytes(p[20:22], "big"), int.from_bytes(p[22:24], "big"),
                int.from_bytes(p[24:28], "big"), int.from_bytes(p[28:32], "big"))

    assert fields(p1) == ("198.18.100.1", CLIENT_IP, 2020, 40000, 0xFFFF_FFF0, 0x1000_0001)
    assert fields(p2) == ("198.18.2.1", SERVER_IP, 61000, PORT, 0x1000_0001, 0xFFFF_FFF0)
    for p in (p1, p2):
        assert tcp_checksum(p[12:16], p[16:20], p[20:]) == 0
    # Without SNAT the endpoint sees the client itself.
    ev.orig.xlate = Xlate.DADDR | Xlate.DPORT
    assert fields(flow_resets(ev)[1][1])[:3] == (CLIENT_IP, SERVER_IP, 40000)


@pytest.mark.parametrize("seq,ack", [(0, 0), (0xFFFFFFFF, 1), (0x12345678, 0x9ABCDEF0)])
def test_rst_packet_layout_and_checksum(seq: int, ack: int) -> None:
    src, dst = socket.inet_aton(CLIENT_IP), socket.inet_aton(SERVER_IP)
    pkt = build_rst(src, (40000).to_bytes(2, "big"), dst, (8080).to_bytes(2, "big"), seq, ack)
    assert len(pkt) == 40
    assert pkt[0] == 0x45 and int.from_bytes(pkt[2:4], "big") == 40 and pkt[9] == 6
    assert pkt[12:16] == src and pkt[16:20] == dst
    tcp = pkt[20:]
    assert int.from_bytes(tcp[0:2], "big") == 40000 and int.from_bytes(tcp[2:4], "big") == 8080
    assert int.from_bytes(tcp[4:8], "big") == seq and int.from_bytes(tcp[8:12], "big") == ack
    assert tcp[12] == 0x50 and tcp[13] == 0x14  # 20-byte header, RST|ACK
    # The one's complement sum over pseudo header + segment (checksum included) is 0xFFFF,
    # i.e. recomputing the checksum over the whole segment gives 0.
    assert tcp_checksum(src, dst, tcp) == 0
    # Independent reference: scapy recomputes the same checksum.
    from scapy.layers.inet import IP, TCP

    ref = IP(pkt)
    want = ref[TCP].chksum
    del ref[TCP].chksum
    assert IP(bytes(ref))[TCP].chksum == want
