"""Conntrack sync between LB nodes, so that a failover or a failback breaks no flow.

Each node connects to every peer (``--cluster``) and sends over that connection its own
flows: the whole table when the connection opens (bulk), then every conntrack event of
its datapath (new, established, closed, still active, ended), batched every
``BATCH_S``. It accepts the peers' connections and installs what they send into its own
table (:class:`~loxicmd.agent.conntrack.installer.FlowInstaller`), acknowledging each
frame, which gives the sender its lag. Both ways are authenticated with the cluster key
(``sync_format``).

A node is *synced* once every live peer (one its own connection reaches) has finished its
bulk to it: until then it must not become MASTER (``loxilbd-ready``, keepalived's track
script, fails), or a failback would send clients to a node that does not know their flows.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from datapath import layouts as L
from loxicmd.secretfile import read_secret

from ..conntrack.flows import EVENT_TYPE_OFFSET, Flow
from ..conntrack.installer import FlowInstaller, FlowNotPlaceable
from ..dataplane.dataplane import Dataplane
from . import sync_format as F

log = logging.getLogger("loxilbd.sync")

DEFAULT_PORT = 22222
BATCH_S = 0.02  # the most an event waits to be sent
POLL_MS = 10  # how often the event pump reads the ring buffer while sync is on
BATCH_RECORDS = 2000  # records per frame
QUEUE_LIMIT = 500_000  # records queued for a peer beyond which it gets a new bulk
# Flows that carry traffic are reported again this often; a peer keeps its copy that much
# longer than the rule's idle timeout (twice: one period, plus delivery).
REFRESH_S = 30
GRACE_S = 2 * REFRESH_S
CONNECT_TIMEOUT_S = 1.0
HANDSHAKE_S = 5.0  # an accepted connection proves the key within this, or is closed
MAX_HANDSHAKES = 16  # connections accepted and not yet authenticated
# A peer that refused or did not answer our connections this long after this agent started
# is down: the node need not wait for its table. (A peer that was only slow to come up
# makes the node wait: waiting is safe, taking MASTER without the flows is not.)
PEER_DOWN_S = 3.0
RETRY_S = 1.0
SEND_TIMEOUT_S = 10.0
LAG_SAMPLES = 20_000
LAG_WINDOW_S = 10  # the lag percentile is over the batches acknowledged this recently

_EXPIRED = int(L.EventType.EXPIRED)
_EVENT_TS, _EVENT_TS_OFFSET = struct.Struct("=Q"), L.LbEvent.ts_ns.offset


def parse_peer(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``HOST[:PORT]`` (an IPv4 address or a name) as (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host, port = text.strip(), str(default_port)
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not a peer; allowed: HOST or HOST:PORT (port 1-65535)")
    return host, int(port)


def read_key(path: str) -> bytes:
    """The cluster key file: non-empty, readable by its owner only (it authenticates
    peers that may write this node's conntrack table)."""
    key = read_secret(path)
    if len(key) < 16:
        raise ValueError(f"{path} holds {len(key)} bytes of key; allowed: at least 16 "
                         "(e.g. `head -c 32 /dev/urandom | base64 > FILE`)")
    return key


def _abort(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _tune(sock: socket.socket) -> None:
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # a send that cannot go on for this long fails (the peer stopped reading); reads
    # wait as long as the connection lives
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                    struct.pack("ll", int(SEND_TIMEOUT_S), 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    # a peer that vanished without closing (its node gone) is noticed in ~5 s
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 2)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


def _ms(ns: int) -> float:
    return round(ns / 1e6, 1)


@dataclass
class Inbound:
    """A peer's connection to this node: what it sent and what was installed."""

    identity: str
    address: str
    bulk: str = "waiting"  # waiting | receiving | done
    bulk_flows: int = 0
    received: int = 0
    installed: int = 0
    removed: int = 0
    unplaceable: int = 0
    since: float = field(default_factory=time.time)


class Outbound:
    """This node's connection to one peer: bulk on connect, then the queued events."""

    def __init__(self, sync: ConntrackSync, host: str, port: int) -> None:
        self.sync, self.host, self.port = sync, host, port
        self.state = "connecting"  # connecting | connected | down
        self.down_since: float | None = None  # monotonic; this streak of failures
        self.identity = ""
        self.error = ""
        self.sent = 0
        self.bulk_flows = 0
        self._queue: collections.deque[tuple[int, bytes]] = collections.deque()
        self._overflow = False
        self._cond = threading.Condition()
        self._unacked: collections.deque[tuple[int, int]] = collections.deque()  # seq, ts
        self.lags: collections.deque[tuple[int, int]] = collections.deque(maxlen=LAG_SAMPLES)
        self._kick = threading.Event()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name=f"sync-to-{host}", daemon=True)

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def kick(self) -> None:
        """Retry now (the peer just connected to us: it is back)."""
        self._kick.set()

    def close(self) -> None:
        self._kick.set()
        with self._cond:
            self._cond.notify_all()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def offer(self, ts_ns: int, record: bytes) -> None:
        """Queue a record (from the event pump); only while connected: a new connection
        starts with a bulk of the whole table."""
        if self.state != "connected":
            return
        with self._cond:
            if len(self._queue) >= QUEUE_LIMIT:
                self._overflow = True
                self._queue.clear()
            else:
                self._queue.append((ts_ns, record))
            if len(self._queue) >= BATCH_RECORDS:
                self._cond.notify()

    def lag_ns(self, now: int) -> int:
        """How long the oldest event not yet acknowledged by the peer has waited."""
        oldest = []
        with contextlib.suppress(IndexError):  # emptied by another thread meanwhile
            oldest.append(self._unacked[0][1])
        with contextlib.suppress(IndexError):
            oldest.append(self._queue[0][0])
        return max(0, now - min(oldest)) if oldest else 0

    # -- the connection ---------------------------------------------------------------
    def _run(self) -> None:
        while not self.sync.stopping:
            try:
                sock = socket.create_connection((self.host, self.port),
                                                timeout=CONNECT_TIMEOUT_S)
            except OSError as exc:
                self._down(f"connect: {exc.strerror or exc}")
                continue
            self._sock = sock
            try:
                ch = F.Channel(sock)
                self.identity = F.client_handshake(ch, self.sync.key, self.sync.identity)
                _tune(sock)
                self._serve(ch)
            except F.SyncError as exc:
                # it answers but is not a peer we can trust (another key, another
                # version): not down, so this node keeps waiting for its table
                log.warning("sync to %s: %s", self.name, exc)
                self._down(str(exc), refused=True)
            except OSError as exc:
                if not self.sync.stopping:
                    log.warning("sync to %s: %s", self.name, exc)
                self._down(str(exc))
            finally:
                # shutdown first: a close alone wakes neither our ack reader nor the peer
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
                self._sock = None

    def is_down(self) -> bool:
        return (self.state == "down" and self.down_since is not None
                and time.monotonic() - self.down_since >= PEER_DOWN_S)

    def _down(self, error: str, refused: bool = False) -> None:
        if self.state != "down" or refused:
            self.down_since = None if refused else time.monotonic()
        self.state, self.error = "down", error
        self.sync.ready()  # a peer down long enough may be what the node waited for
        self._unacked.clear()
        self._kick.wait(RETRY_S)
        self._kick.clear()

    def _serve(self, ch: F.Channel) -> None:
        with self._cond:
            self._queue.clear()
            self._overflow = False
        self.state, self.error, self.down_since = "connected", "", None
        self.sync.peer_back()
        log.info("sync to %s (%s): connected", self.name, self.identity)
        acks = threading.Thread(target=self._read_acks, args=(ch,), daemon=True,
                                name=f"sync-acks-{self.host}")
        acks.start()
        try:
            self._send(ch, acks)
        finally:
            with contextlib.suppress(OSError):
                ch.sock.shutdown(socket.SHUT_RDWR)
            acks.join(timeout=5)  # before the next connection's acks start counting

    def resync(self) -> None:
        """Send the whole table again (events were lost on the way to the queue)."""
        with self._cond:
            self._overflow = True
            self._cond.notify()

    def _send(self, ch: F.Channel, acks: threading.Thread) -> None:
        self._bulk(ch)
        while not self.sync.stopping and acks.is_alive():
            with self._cond:
                if not self._queue and not self._overflow:
                    self._cond.wait(BATCH_S)
                if self._overflow:
                    self._queue.clear()
                    self._overflow = False
                    overflow = True
                else:
                    overflow = False
                    batch = [self._queue.popleft()
                             for _ in range(min(len(self._queue), BATCH_RECORDS))]
            if overflow:
                log.warning("sync to %s: events queued beyond %d or lost; sending the whole "
                            "table again", self.name, QUEUE_LIMIT)
                self._bulk(ch)
            elif batch:
                self._send_flows(ch, [r for _, r in batch], batch[0][0])
        if not acks.is_alive() and not self.sync.stopping:
            raise ConnectionError("the peer closed the connection")

    def _send_flows(self, ch: F.Channel, recs: list[bytes], oldest_ts: int) -> None:
        seq = ch.send(F.FrameType.FLOWS, F.COUNT.pack(len(recs)) + b"".join(recs))
        self._unacked.append((seq, oldest_ts))
        self.sent += len(recs)

    def _bulk(self, ch: F.Channel) -> None:
        start = time.monotonic_ns()
        ch.send(F.FrameType.BULK_BEGIN)
        count = 0
        batch: list[bytes] = []
        for rec in self.sync.table_records():
            batch.append(rec)
            if len(batch) >= BATCH_RECORDS:
                self._send_flows(ch, batch, start)
                count += len(batch)
                batch = []
        if batch:
            self._send_flows(ch, batch, start)
            count += len(batch)
        ch.send(F.FrameType.BULK_END, F.COUNT.pack(count))
        self.bulk_flows = count
        log.info("sync to %s: sent the table (%d flows) in %.0f ms", self.name, count,
                 (time.monotonic_ns() - start) / 1e6)

    def _read_acks(self, ch: F.Channel) -> None:
        try:
            while True:
                ftype, _, payload = ch.recv()
                if ftype != F.FrameType.ACK:
                    raise F.SyncError(f"a {ftype.name} frame from the receiving side")
                acked, _ = F.ACK.unpack(payload)
                now = time.monotonic_ns()
                while self._unacked and self._unacked[0][0] <= acked:
                    _, ts = self._unacked.popleft()
                    self.lags.append((now, now - ts))
        except (OSError, F.SyncError) as exc:
            if not self.sync.stopping:
                log.info("sync to %s: %s", self.name, exc)
        with contextlib.suppress(OSError):
            if self._sock is not None:
                self._sock.shutdown(socket.SHUT_RDWR)
        with self._cond:
            self._cond.notify_all()

    def status(self, now: int) -> dict[str, Any]:
        since = now - LAG_WINDOW_S * 1_000_000_000
        lags = sorted(lag for at, lag in list(self.lags) if at >= since)
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else 0
        return {"peer": self.name, "node": self.identity.rsplit("@", 1)[0],
                "state": self.state, "error": self.error, "sent": self.sent,
                "bulkSent": self.bulk_flows, "queued": len(self._queue),
                "lagMs": _ms(self.lag_ns(now)), "lagP99Ms": _ms(p99)}


class ConntrackSync:
    def __init__(self, dp: Dataplane, node: str, key: bytes, peers: list[tuple[str, int]],
                 listen: tuple[str, int], mark_of: Callable[[int], int] = lambda rule_id: 0,
                 instance_of: Callable[[int], str] = lambda rule_id: "default",
                 is_master: Callable[[], bool] = lambda: False) -> None:
        self.dp = dp
        self.key = key
        self.identity = f"{node}@{os.urandom(4).hex()}"  # names alone may repeat
        self.listen = listen
        self.mark_of = mark_of
        self.instance_of = instance_of
        self.installer = FlowInstaller(dp)
        self.stopping = False
        self._synced = False
        self.is_master = is_master
        self.outbound = [Outbound(self, host, port) for host, port in peers]
        self.inbound: dict[int, Inbound] = {}  # by connection id
        self._inbound_socks: dict[int, socket.socket] = {}
        self._handshakes = threading.BoundedSemaphore(MAX_HANDSHAKES)
        self._conn_ids = iter(range(1, 1 << 62))
        self._lock = threading.Lock()
        self.sent_by_instance: collections.Counter[str] = collections.Counter()
        self.received_by_instance: collections.Counter[str] = collections.Counter()
        self._server = socket.create_server(listen, reuse_port=False)
        self._threads: list[threading.Thread] = []

    # -- life -------------------------------------------------------------------------
    def start(self) -> ConntrackSync:
        marked = self.installer.mark_all_as_copies()
        if marked:
            log.info("conntrack: %d entries from before this start taken as copies (the "
                     "peers' tables win; a flow carrying traffic here is ours again)", marked)
        self.dp.set_refresh(REFRESH_S)
        accept = threading.Thread(target=self._accept, name="sync-accept", daemon=True)
        accept.start()
        self._threads.append(accept)
        for out in self.outbound:
            out.start()
        log.info("conntrack sync on %s:%d with %s", *self.listen,
                 ", ".join(o.name for o in self.outbound))
        return self

    def stop(self) -> None:
        self.stopping = True
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        for out in self.outbound:
            out.close()
        with self._lock:
            socks = list(self._inbound_socks.values())
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.dp.set_refresh(0)

    def resync(self, lost: int = 0) -> None:
        """Events were lost (the ring buffer was full): every peer gets the table again."""
        for out in self.outbound:
            out.resync()

    def on_state(self, instance: str, previous: str, entry: dict[str, Any]) -> None:
        """An HA state observer: a node that stops being MASTER stops owning the flows it
        carried. They become copies (the new MASTER reports them from now on), so that
        when they age out here, unused, this node neither deletes them on the peers nor
        resets their ends. (Flows of other instances this node still carries are its own
        again at their next packet.)"""
        if previous == "MASTER" and entry["state"] != "MASTER":
            threading.Thread(target=self._disown, args=(instance,), daemon=True,
                             name="sync-disown").start()

    def _disown(self, instance: str) -> None:
        marked = self.installer.mark_all_as_copies()
        log.info("no longer MASTER of %s: %d conntrack entries are copies now", instance,
                 marked)

    # -- sending ----------------------------------------------------------------------
    def handle(self, data: bytes) -> None:
        """An event from the pump: queued for every connected peer."""
        if not any(o.state == "connected" for o in self.outbound):
            return
        etype = data[EVENT_TYPE_OFFSET]
        flow = Flow.from_event(data)
        if flow.copy:
            return  # a peer's flow that carried nothing here: its owner reports it
        flow.mark = self.mark_of(flow.rule_id)
        now = time.monotonic_ns()
        rec = F.encode_flow(flow, F.Op.DELETE if etype == _EXPIRED else F.Op.UPSERT, now)
        self.sent_by_instance[self.instance_of(flow.rule_id)] += 1
        (ts,) = _EVENT_TS.unpack_from(data, _EVENT_TS_OFFSET)  # when the datapath sent it
        for out in self.outbound:
            out.offer(ts, rec)

    def table_records(self) -> list[bytes]:
        """Every flow this node carries (not the peers' copies), as UPSERT records (a bulk)."""
        ct = self.dp.maps["lb_conntrack"]
        originals, replies = [], {}
        for key, entry in ct.items():
            if entry.dir == L.CtDir.ORIGINAL:
                originals.append((key, entry))
            else:
                replies[bytes(key)] = entry
        now = time.monotonic_ns()
        out = []
        for key, entry in originals:
            flow = Flow.from_entries(key, entry, replies.get(bytes(entry.peer)))
            if flow.copy:
                continue  # the peer's own flow: sending it back would undo newer state
            flow.mark = self.mark_of(flow.rule_id)
            out.append(F.encode_flow(flow, F.Op.UPSERT, now))
        return out

    # -- receiving --------------------------------------------------------------------
    def _accept(self) -> None:
        while not self.stopping:
            try:
                sock, addr = self._server.accept()
            except OSError:
                if self.stopping:
                    return
                time.sleep(0.1)
                continue
            threading.Thread(target=self._receive, args=(sock, addr[0]), daemon=True,
                             name=f"sync-from-{addr[0]}").start()

    def _receive(self, sock: socket.socket, address: str) -> None:
        conn_id = next(self._conn_ids)
        peer: Inbound | None = None
        with self._lock:
            self._inbound_socks[conn_id] = sock
        # whoever connects has HANDSHAKE_S to prove the key, and only so many may try at
        # once: an unauthenticated client holds a thread no longer than that
        if not self._handshakes.acquire(blocking=False):
            log.warning("sync from %s: refused, %d handshakes already under way", address,
                        MAX_HANDSHAKES)
            sock.close()
            with self._lock:
                self._inbound_socks.pop(conn_id, None)
            return
        deadline = threading.Timer(HANDSHAKE_S, _abort, args=(sock,))
        try:
            deadline.start()
            sock.settimeout(HANDSHAKE_S)
            ch = F.Channel(sock)
            try:
                identity = F.server_handshake(ch, self.key, self.identity)
            finally:
                deadline.cancel()
                self._handshakes.release()
            _tune(sock)
            peer = Inbound(identity, address)
            with self._lock:
                self.inbound[conn_id] = peer
            log.info("sync from %s (%s): connected", address, identity)
            for out in self.outbound:  # it is back: our own connection to it need not wait
                if out.state != "connected":
                    out.kick()
            while not self.stopping:
                ftype, seq, payload = ch.recv()
                if ftype == F.FrameType.BULK_BEGIN:
                    peer.bulk, peer.bulk_flows = "receiving", 0
                elif ftype == F.FrameType.FLOWS:
                    self._install(peer, payload)
                elif ftype == F.FrameType.BULK_END:
                    peer.bulk = "done"
                    log.info("sync from %s: received its table (%d flows)", address,
                             peer.bulk_flows)
                    self.ready()
                else:
                    raise F.SyncError(f"a {ftype.name} frame from the sending side")
                ch.send(F.FrameType.ACK, F.ACK.pack(seq, peer.installed))
        except (OSError, F.SyncError) as exc:
            if not self.stopping:
                log.info("sync from %s: %s", address, exc)
        finally:
            with self._lock:
                self.inbound.pop(conn_id, None)
                self._inbound_socks.pop(conn_id, None)
            with contextlib.suppress(OSError):
                sock.close()

    def _install(self, peer: Inbound, payload: bytes) -> None:
        """A FLOWS frame: upserts installed in batches, deletes in their place."""
        now = time.monotonic_ns()
        recs = F.records(payload)
        peer.received += len(recs)
        if peer.bulk == "receiving":
            peer.bulk_flows += len(recs)
        upserts: list[Flow] = []
        for rec in recs:
            op, flow = F.decode_flow(rec, now)
            if op == F.Op.UPSERT:
                upserts.append(flow)
                continue
            self._upsert(peer, upserts, now)
            upserts = []
            peer.removed += self.installer.remove(flow)
        self._upsert(peer, upserts, now)

    def _upsert(self, peer: Inbound, flows: list[Flow], now: int) -> None:
        for placed in self.installer.install_many(flows, now, grace_s=GRACE_S,
                                                  as_copies=True):
            if isinstance(placed, FlowNotPlaceable):
                peer.unplaceable += 1
                if peer.unplaceable <= 3 or peer.unplaceable % 1000 == 0:
                    log.warning("sync from %s: %s (%d such flows)", peer.address, placed,
                                peer.unplaceable)
                continue
            peer.installed += 1
            self.received_by_instance[self.instance_of(placed.rule_id)] += 1

    # -- state --------------------------------------------------------------------------
    def peer_back(self) -> None:
        """A peer is reachable again (after a partition, or it restarted): unless this node
        is MASTER of something, it waits for that peer's table again before it may take
        MASTER (the peer may have carried flows meanwhile). A MASTER stays ready: its
        track script failing would hand its flows to a node that may not have them."""
        if self._synced and not self.is_master():
            self._synced = False
            log.info("a peer is back: waiting for its table before this node may be MASTER")

    def ready(self) -> bool:
        """This node got the whole table of every peer that is up (a peer that stays
        unreachable is down and has nothing to give). Once true it stays true, but for a
        peer coming back to a node that is MASTER of nothing (peer_back)."""
        if self._synced:
            return True
        with self._lock:
            done = {p.identity for p in self.inbound.values() if p.bulk == "done"}
        if all((o.state == "connected" and o.identity in done) or o.is_down()
               for o in self.outbound):
            self._synced = True
            log.info("conntrack synced: every live peer's table received (%s)", ", ".join(
                f"{o.name} {'down' if o.is_down() else 'sent its table'}"
                for o in self.outbound))
        return self._synced

    def status(self) -> dict[str, Any]:
        now = time.monotonic_ns()
        with self._lock:
            inbound = list(self.inbound.values())
        by_identity = {p.identity: p for p in inbound}
        peers = []
        for out in self.outbound:
            row = out.status(now)
            got = by_identity.pop(out.identity, None) if out.identity else None
            row.update(_inbound_status(got))
            peers.append(row)
        for got in by_identity.values():  # connected to us, not in our --cluster list
            peers.append({"peer": got.address, "node": got.identity.rsplit("@", 1)[0],
                          "state": "inbound only", **_inbound_status(got)})
        return {"ready": self.ready(), "peers": peers,
                "sent": dict(self.sent_by_instance),
                "received": dict(self.received_by_instance)}


def _inbound_status(peer: Inbound | None) -> dict[str, Any]:
    if peer is None:
        return {"bulk": "none", "received": 0, "installed": 0, "unplaceable": 0}
    return {"bulk": peer.bulk, "received": peer.received, "installed": peer.installed,
            "unplaceable": peer.unplaceable}
