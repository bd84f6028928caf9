"""Conntrack sync: the wire format (records, authentication, framing), and two nodes with
the real datapath (test-run) syncing over TCP: a flow opened on one is carried on by the
other, its end is removed there, a table that was there before the connection arrives as
a bulk, and readiness waits for the bulk of every live peer."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dp_harness import CLIENT, EPS, PRIVATE_IP, VIP, DpHarness, lb_body, tcp, udp
from lab import wait_for
from scapy.layers.inet import IP, TCP

from datapath import layouts as L
from loxicmd.agent.conntrack.flows import Flow
from loxicmd.agent.ha import sync_format as F
from loxicmd.agent.ha.sync import GRACE_S, PEER_DOWN_S, ConntrackSync, parse_peer, read_key

KEY = b"k" * 32


def _flow(**changes: object) -> Flow:
    flow = Flow(6, socket.inet_aton(CLIENT), 40000, socket.inet_aton(VIP), 2020,
                socket.inet_aton(EPS[1]), 8080, socket.inet_aton(PRIVATE_IP), 41234, True,
                2, int(L.CtState.EST), 1, 1001, 5001, 240, 1_000_000, 4_000_000, 3, 300, 2,
                200, 7, 9, 1, mark=5)
    for name, value in changes.items():
        setattr(flow, name, value)
    return flow


def test_a_flow_record_carries_what_a_peer_needs() -> None:
    flow = _flow()
    rec = F.encode_flow(flow, F.Op.UPSERT, now_ns=10_000_000)
    assert len(rec) == F.RECORD.size
    op, back = F.decode_flow(rec, now_ns=50_000_000)
    assert op == F.Op.UPSERT
    for name in ("proto", "client", "client_port", "vip", "vip_port", "endpoint",
                 "endpoint_port", "nat_source", "nat_port", "snat", "nat_mode", "state",
                 "fin_seen", "client_seq_next", "endpoint_seq_next", "mark",
                 "packets_to_endpoint", "bytes_to_endpoint", "packets_to_client",
                 "bytes_to_client"):
        assert getattr(back, name) == getattr(flow, name), name
    # times travel as age and idle time: on the receiver's clock, same distances
    assert back.last_seen_ns - back.created_ns == flow.last_seen_ns - flow.created_ns
    assert 50_000_000 - back.last_seen_ns == 10_000_000 - flow.last_seen_ns


def test_a_record_with_an_ipv6_address_is_refused_by_name() -> None:
    rec = bytearray(F.encode_flow(_flow(), F.Op.DELETE, 0))
    rec[8:24] = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    with pytest.raises(F.SyncError, match="IPv6"):
        F.decode_flow(bytes(rec), 0)


def _handshake(server_key: bytes, client_key: bytes) -> tuple[object, object]:
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    result: dict[str, object] = {}

    def serve() -> None:
        try:
            result["server"] = F.server_handshake(F.Channel(a), server_key, "lb2")
        except (F.SyncError, OSError) as exc:
            result["server"] = exc
            a.close()

    t = threading.Thread(target=serve)
    t.start()
    try:
        result["client"] = F.client_handshake(F.Channel(b), client_key, "lb1")
    except (F.SyncError, OSError) as exc:
        result["client"] = exc
        b.close()
    t.join(5)
    return result["server"], result["client"]


def test_peers_with_the_same_key_learn_each_others_names() -> None:
    assert _handshake(KEY, KEY) == ("lb1", "lb2")


def test_a_peer_with_another_key_is_refused_both_ways() -> None:
    server, client = _handshake(KEY, b"x" * 32)
    assert isinstance(client, F.SyncError) and "cluster key" in str(client)
    assert isinstance(server, OSError | F.SyncError)


def test_a_client_without_the_key_is_refused_by_the_server() -> None:
    """The server's own check: a client that cannot prove the key gets no further."""
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    got: list[BaseException | str] = []

    def serve() -> None:
        try:
            got.append(F.server_handshake(F.Channel(a), KEY, "lb2"))
        except (F.SyncError, OSError) as exc:
            got.append(exc)

    t = threading.Thread(target=serve)
    t.start()
    client = F.Channel(b)
    nonce = b"n" * F.NONCE_LEN
    client.send(F.FrameType.HELLO, nonce + b"intruder")
    challenge = client.expect(F.FrameType.CHALLENGE)
    server = challenge[:F.NONCE_LEN] + challenge[F.NONCE_LEN + 32:]
    client.send(F.FrameType.PROOF, F.proof(b"x" * 32, b"client", server, nonce + b"intruder"))
    t.join(5)
    (result,) = got
    assert isinstance(result, F.SyncError) and "does not hold the cluster key" in str(result)
    a.close()
    b.close()


def _channels() -> tuple[F.Channel, F.Channel, socket.socket]:
    a, b = socket.socketpair()
    a.settimeout(5)
    return F.Channel(a, session_key=KEY), F.Channel(b, session_key=KEY), b


def test_a_tampered_frame_fails_authentication() -> None:
    rx, tx, raw = _channels()
    payload = F.COUNT.pack(0)
    head = F.HEADER.pack(F.MAGIC, F.VERSION, F.FrameType.FLOWS, 0, len(payload), 1)
    import hashlib
    import hmac
    mac = hmac.new(KEY, head + payload, hashlib.sha256).digest()[:F.MAC_LEN]
    raw.sendall(head + b"\0\0\0\1" + mac)  # the count changed after the MAC was made
    with pytest.raises(F.SyncError, match="authentication"):
        rx.recv()


def test_a_replayed_frame_is_refused() -> None:
    rx, tx, _ = _channels()
    tx.send(F.FrameType.BULK_BEGIN)
    assert rx.recv()[0] == F.FrameType.BULK_BEGIN
    tx.seq_out -= 1  # the same seq again
    tx.send(F.FrameType.BULK_BEGIN)
    with pytest.raises(F.SyncError, match="replayed"):
        rx.recv()


def test_another_version_is_refused_by_name() -> None:
    rx, _, raw = _channels()
    raw.sendall(F.HEADER.pack(F.MAGIC, 2, F.FrameType.ACK, 0, 0, 1))
    with pytest.raises(F.SyncError, match="version 2"):
        rx.recv()


def test_peers_and_key_files_are_checked(tmp_path: Path) -> None:
    assert parse_peer("198.18.1.3") == ("198.18.1.3", 22222)
    assert parse_peer("198.18.1.3:7000") == ("198.18.1.3", 7000)
    with pytest.raises(ValueError, match="HOST or HOST:PORT"):
        parse_peer("198.18.1.3:70000")
    key = tmp_path / "key"
    key.write_bytes(b"s" * 32)
    key.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        read_key(str(key))
    key.chmod(0o600)
    assert read_key(str(key)) == b"s" * 32
    key.write_bytes(b"short")
    with pytest.raises(ValueError, match="at least 16"):
        read_key(str(key))


# -- two nodes, real datapaths ------------------------------------------------------------

@pytest.fixture
def peer(tmp_path_factory: pytest.TempPathFactory, h: DpHarness) -> Iterator[DpHarness]:
    """A second node (its own maps; its namespace is where the thread is now, so both
    nodes' sockets are on that namespace's loopback)."""
    other = DpHarness(Path(tmp_path_factory.mktemp("peer")), ct_entries=65536)
    try:
        yield other
    finally:
        other.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pair(h: DpHarness, peer: DpHarness) -> Iterator[tuple[ConntrackSync, ConntrackSync]]:
    ports = _free_port(), _free_port()
    one = ConntrackSync(h.dp, "lb1", KEY, [("127.0.0.1", ports[1])], ("127.0.0.1", ports[0]))
    two = ConntrackSync(peer.dp, "lb2", KEY, [("127.0.0.1", ports[0])], ("127.0.0.1", ports[1]))
    try:
        yield one, two
    finally:
        one.stop()
        two.stop()


def _pump(h: DpHarness, sync: ConntrackSync) -> list[L.LbEvent]:
    """What the event pump does: the node's events to its sync."""
    events = h.events()
    for ev in events:
        sync.handle(bytes(ev))
    return events


def _entries(node: DpHarness) -> int:
    return sum(1 for _ in node.dp.maps["lb_conntrack"].items())


def test_a_flow_opened_on_one_node_goes_on_through_the_other(
        h: DpHarness, peer: DpHarness, pair: tuple[ConntrackSync, ConntrackSync]) -> None:
    one, two = pair
    body = lb_body(mode=2, privateIP=PRIVATE_IP)
    h.apply(body)
    peer.apply(lb_body(port=9999, eps=["198.18.13.9"]))  # other rule ids there
    peer.apply(body)
    one.start()
    two.start()
    wait_for(lambda: one.ready() and two.ready(), timeout=10, what="both nodes synced")

    assert h.run(tcp(sport=41000, flags="S", seq=1000))[0] == 0
    (new,) = _pump(h, one)
    flow = Flow.from_event(new)
    wait_for(lambda: _entries(peer) == 2, timeout=5, what="the flow on the peer")
    # the peer keeps it longer than the rule says (it sees none of its packets)
    entries = [e for _, e in peer.dp.maps["lb_conntrack"].items()]
    assert {e.timeout_s for e in entries} == {240 + GRACE_S}
    # a copy: the peer neither sends it back in a bulk nor reports its end
    assert two.table_records() == []

    # the next packets of the flow, on the other node: same endpoint, same NAT port
    peer.events()
    verdict, out = peer.run(tcp(sport=41000, flags="A", seq=1001, ack=5001))
    assert verdict == 0
    assert (out[IP].dst, out[IP].src, out[TCP].sport) == (flow.endpoint_ip, PRIVATE_IP,
                                                          flow.nat_port)
    verdict, back = peer.run(tcp(src=flow.endpoint_ip, dst=PRIVATE_IP, sport=8080,
                                 dport=flow.nat_port, flags="SA", seq=5000, ack=1001))
    assert (back[IP].src, back[TCP].sport, back[IP].dst, back[TCP].dport) == \
        (VIP, 2020, CLIENT, 41000)
    assert not [e for e in peer.events() if e.type == L.EventType.NEW]
    assert len(two.table_records()) == 1  # it carried packets here: the peer's own now

    # the flow's end on the first node removes it on the peer
    h.table.delete(list(h.table.records), "")
    assert [e.type for e in _pump(h, one)] == [L.EventType.EXPIRED]
    wait_for(lambda: _entries(peer) == 0, timeout=5, what="the flow gone from the peer")
    status = one.status()
    (p,) = status["peers"]
    assert p["state"] == "connected" and p["sent"] == 2 and p["bulk"] == "done"
    wait_for(lambda: one.status()["peers"][0]["lagMs"] == 0, timeout=5, what="acks")
    assert two.status()["peers"][0]["installed"] == 1


def test_a_table_made_before_the_connection_arrives_whole_and_gates_readiness(
        h: DpHarness, peer: DpHarness, pair: tuple[ConntrackSync, ConntrackSync]) -> None:
    one, two = pair
    h.apply(lb_body(proto="udp"))
    peer.apply(lb_body(proto="udp"))
    # lb2 has a flow in its (pinned) table from before it starts in the cluster
    assert peer.run(udp(sport=43000))[0] == 0
    peer.events()
    one.start()  # lb1 first: lb2 is not there yet, so lb1 has nobody to wait for...
    time.sleep(PEER_DOWN_S / 3)
    assert not one.ready()  # ...once lb2 has refused its connections long enough
    wait_for(one.ready, timeout=10, what="lb1 ready alone")
    assert one.status()["peers"][0]["state"] == "down"
    for sport in range(42000, 42050):  # lb1 alone carries 50 flows
        assert h.run(udp(sport=sport))[0] == 0
    _pump(h, one)
    two.start()
    wait_for(lambda: _entries(peer) == 102, timeout=10, what="lb1's table on lb2")
    wait_for(lambda: one.ready() and two.ready(), timeout=10, what="both synced")
    assert two.status()["peers"][0]["bulk"] == "done"
    assert two.status()["peers"][0]["installed"] == 50
    assert len(one.table_records()) == 50
    # on lb2 everything is a copy, its own old flow too: the peers' tables win
    assert two.table_records() == []
    peer.dp.sweep(L.SweepMode.RULE, peer.rule_id())  # copies that end tell nobody
    ended = peer.events()
    assert len(ended) == 51 and all(Flow.from_event(e).copy for e in ended)
    one.stop()  # a peer leaving takes no flow away: still ready
    wait_for(lambda: two.status()["peers"][0]["state"] == "down", timeout=5, what="lb1 gone")
    assert two.ready() and two.status()["ready"]


def test_a_node_that_is_master_of_nothing_waits_again_for_a_peer_that_comes_back(
        h: DpHarness, peer: DpHarness) -> None:
    ports = _free_port(), _free_port()
    master = {"lb2": False}
    two = ConntrackSync(peer.dp, "lb2", KEY, [("127.0.0.1", ports[0])],
                        ("127.0.0.1", ports[1]), is_master=lambda: master["lb2"])

    def lb1(sends_its_table: bool) -> ConntrackSync:
        """lb1 as a new process; one that cannot reach lb2 never sends it its table."""
        to = ports[1] if sends_its_table else _free_port()
        return ConntrackSync(h.dp, "lb1", KEY, [("127.0.0.1", to)], ("127.0.0.1", ports[0]))

    def back(node: ConntrackSync) -> None:
        """Wait until lb2's connection reaches this lb1 process."""
        wait_for(lambda: two.status()["peers"][0]["node"] == "lb1"
                 and two.outbound[0].identity == node.identity
                 and two.outbound[0].state == "connected", timeout=10, what="lb2 -> lb1")

    running: list[ConntrackSync] = [two]
    try:
        running.append(lb1(True).start())
        two.start()
        wait_for(two.ready, timeout=10, what="lb2 synced")
        running.pop().stop()
        silent = lb1(False).start()  # back, but its table does not reach lb2
        running.append(silent)
        back(silent)
        wait_for(lambda: not two.ready(), timeout=5, what="lb2 waiting for lb1's table")
        time.sleep(1)
        assert not two.ready(), "lb2 must wait for the table of a peer that came back"
        running.pop().stop()
        full = lb1(True).start()
        running.append(full)
        wait_for(two.ready, timeout=10, what="lb2 ready once lb1 sent its table")
        master["lb2"] = True  # a MASTER stays ready whoever comes back
        running.pop().stop()
        silent = lb1(False).start()
        running.append(silent)
        back(silent)
        assert two.ready()
    finally:
        for sync in running:
            sync.stop()


def test_a_node_is_not_ready_while_a_live_peer_has_not_sent_its_table(
        h: DpHarness, tmp_path: Path) -> None:
    """A live peer (it accepts our connection) that never sends its table: not ready."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []

    def silent_peer() -> None:
        conn, _ = server.accept()
        accepted.append(conn)
        F.server_handshake(F.Channel(conn), KEY, "silent")

    t = threading.Thread(target=silent_peer, daemon=True)
    t.start()
    sync = ConntrackSync(h.dp, "lb1", KEY, [("127.0.0.1", port)], ("127.0.0.1", _free_port()))
    try:
        sync.start()
        wait_for(lambda: sync.status()["peers"][0]["state"] == "connected", timeout=5,
                 what="connected to the silent peer")
        time.sleep(0.5)
        assert not sync.ready()
    finally:
        sync.stop()
        server.close()
        for conn in accepted:
            conn.close()


def test_an_unauthenticated_client_is_cut_off_and_only_a_few_may_try(
        h: DpHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    from loxicmd.agent.ha import sync as S

    monkeypatch.setattr(S, "HANDSHAKE_S", 0.5)
    monkeypatch.setattr(S, "MAX_HANDSHAKES", 2)
    port = _free_port()
    sync = ConntrackSync(h.dp, "lb1", KEY, [], ("127.0.0.1", port))
    clients = []
    try:
        sync.start()
        for _ in range(3):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            time.sleep(0.05)
        # the third finds two handshakes under way: closed at once
        assert clients[2].recv(1) == b""
        # the first two say nothing: closed when their time is up
        start = time.monotonic()
        assert clients[0].recv(1) == b"" and clients[1].recv(1) == b""
        assert time.monotonic() - start < 2
    finally:
        for c in clients:
            c.close()
        sync.stop()
