"""Places a flow in this node's conntrack table, as if its first packet had come here.

A flow is placed by what it is, never by another node's numbers: the service by VIP, port,
protocol and mark (the local rule that has that service key), the endpoint by address and
port (the local rule's endpoint with them); rule ids, endpoint slots and monotonic times
are this node's. The NAT source is kept as the flow has it: the endpoint's replies go to
that address (for HA, the fullNAT private IP both nodes share). What a peer's conntrack
sync needs, and what a restart could use to carry flows over.
"""

from __future__ import annotations

import socket
import sys
import time
from dataclasses import dataclass

from datapath import layouts as L

from ..dataplane.dataplane import Dataplane
from .flows import Flow


class FlowNotPlaceable(LookupError):
    """This node has no rule (or no such endpoint in it) for the flow."""


@dataclass(frozen=True)
class Placement:
    """Where a flow went on this node."""

    rule_id: int
    ep_slot: int
    replaced: bool  # an entry for the flow was there already (now overwritten)


# plain ints: IntFlag arithmetic costs more than the rest of building an entry
_SADDR, _DADDR = int(L.Xlate.SADDR), int(L.Xlate.DADDR)
_SPORT, _DPORT = int(L.Xlate.SPORT), int(L.Xlate.DPORT)
_ORIGINAL, _REPLY = int(L.CtDir.ORIGINAL), int(L.CtDir.REPLY)
_COUNTED, _REPORTED_CLOSED = int(L.CtFlags.COUNTED), int(L.CtFlags.REPORTED_CLOSED)
_SYNCED = int(L.CtFlags.SYNCED)
_CLOSED = int(L.CtState.CLOSED)


_BE16 = [socket.htons(p) for p in range(65536)]  # sync installs thousands of flows a second


def _port(port: int) -> int:
    """A port as a __be16 field holds it."""
    return _BE16[port]


def _addr(wire: bytes) -> int:
    """A wire address (4 bytes, network order) as a __be32 field holds it."""
    return int.from_bytes(wire, sys.byteorder)


class FlowInstaller:
    def __init__(self, dp: Dataplane) -> None:
        self.dp = dp
        self.services = dp.maps["lb_services"]
        self.rules = dp.maps["lb_rules"]
        self.endpoints = dp.maps["lb_endpoints"]
        self.conntrack = dp.maps["lb_conntrack"]
        self.loads = dp.maps["lb_ep_load"]
        # where flows of a (service, endpoint) went: sync places thousands per second,
        # most of them of a few services; valid until a rule changes (rule_changed)
        self._placed: dict[tuple[bytes, int, int, int, bytes, int], tuple[L.LbSvc, int]] = {}

    def rule_changed(self, old: object, new: object) -> None:
        """A rule changed: slots and service settings may have (the table's observer)."""
        self._placed = {}

    def place(self, flow: Flow) -> tuple[L.LbSvc, int]:
        """The local service and endpoint slot of a flow (FlowNotPlaceable otherwise)."""
        key = (flow.vip, flow.vip_port, flow.proto, flow.mark, flow.endpoint,
               flow.endpoint_port)
        cache = self._placed  # the one a lookup began with: a rule change replaces it
        placed = cache.get(key)
        if placed is None:
            placed = cache[key] = self._lookup(flow)
        return placed

    def _lookup(self, flow: Flow) -> tuple[L.LbSvc, int]:
        icmp = flow.proto == socket.IPPROTO_ICMP
        key = L.LbSvcKey(vip=_addr(flow.vip), port=0 if icmp else _port(flow.vip_port),
                         proto=flow.proto, mark=flow.mark)
        svc = self.services.lookup(key)
        if svc is None:
            raise FlowNotPlaceable(
                f"no rule for {socket.inet_ntoa(flow.vip)}:{flow.vip_port}/{flow.protocol}"
                + (f" mark {flow.mark}" if flow.mark else "") + " on this node")
        slots = self.rules.lookup(svc.rule_id)
        want_addr = _addr(flow.endpoint)
        for slot in (list(slots.slots[:slots.ep_count]) if slots is not None else []):
            ep = self.endpoints.lookup(slot)
            if ep is None or ep.addr != want_addr:
                continue
            # port 0 keeps the port the client used
            port = L.be16_to_port(ep.port) if ep.port else flow.vip_port
            if icmp or port == flow.endpoint_port:
                return svc, slot
        raise FlowNotPlaceable(f"endpoint {flow.endpoint_ip}:{flow.endpoint_port} is not in "
                               f"the rule of {flow.vip_ip}:{flow.vip_port}/{flow.protocol} "
                               "on this node")

    def mark_all_as_copies(self) -> int:
        """Mark every entry of the table SYNCED (as if a peer had sent it): what a node
        finds in its pinned table when it starts again in a cluster may be stale, and
        the peer that carried the flows meanwhile knows better. A flow that carries a
        packet here is this node's again (the datapath clears the mark). Returns how
        many entries were marked. (The flags are rewritten from here: a concurrent
        change by the datapath may be lost, which only skews one endpoint's load.)"""
        entries = [(k, v) for k, v in self.conntrack.items() if not v.flags & _SYNCED]
        for i in range(0, len(entries), 4096):
            chunk = entries[i:i + 4096]
            for _, v in chunk:
                v.flags |= _SYNCED
            self.conntrack.update_batch((L.LbCtKey * len(chunk))(*(k for k, _ in chunk)),
                                        (L.LbCtEntry * len(chunk))(*(v for _, v in chunk)))
        return len(entries)

    @staticmethod
    def original_key(flow: Flow) -> L.LbCtKey:
        icmp = flow.proto == socket.IPPROTO_ICMP
        return L.LbCtKey(saddr=_addr(flow.client), daddr=_addr(flow.vip),
                         sport=_port(flow.client_port),
                         dport=0 if icmp else _port(flow.vip_port), proto=flow.proto)

    def remove(self, flow: Flow) -> bool:
        """Delete both entries of the flow, if here (its end, as another node saw it);
        its endpoint's load is given back."""
        orig_key = self.original_key(flow)
        existing = self.conntrack.lookup(orig_key)
        if existing is None:
            return False
        if existing.flags & L.CtFlags.COUNTED:
            self._add_load(existing.ep_slot, -1)
        self.conntrack.delete(existing.peer)
        self.conntrack.delete(orig_key)
        return True

    def install(self, flow: Flow, now_ns: int | None = None, grace_s: int = 0,
                as_copy: bool = False) -> Placement:
        """Write both entries of the flow (the reply one first, so that the endpoint's
        answer finds its way back as soon as the original one exists). `grace_s` is
        added to the rule's idle timeout: a copy from another node, which sees none of
        the flow's packets, must outlive the last report it got by that much."""
        (placed,) = self.install_many([flow], now_ns, grace_s, as_copy)
        if isinstance(placed, FlowNotPlaceable):
            raise placed
        return placed

    def install_many(self, flows: list[Flow], now_ns: int | None = None, grace_s: int = 0,
                     as_copies: bool = False) -> list[Placement | FlowNotPlaceable]:
        """Install flows in order (a later one of the same tuple wins), all entries in one
        batch; each flow's placement, or why it has none here. `as_copies`: a peer's
        flows (SYNCED): this node neither reports nor resets them until it carries one."""
        now = time.monotonic_ns() if now_ns is None else now_ns  # the datapath's clock
        copy = _SYNCED if as_copies else 0
        results: list[Placement | FlowNotPlaceable] = []
        keys: list[L.LbCtKey] = []
        values: list[L.LbCtEntry] = []
        loads: dict[int, int] = {}
        written: dict[bytes, L.LbCtEntry] = {}  # this batch's original entries by key
        for flow in flows:
            try:
                svc, slot = self.place(flow)
            except FlowNotPlaceable as exc:
                results.append(exc)
                continue
            orig_key, reply_key, orig, reply = self._entries(flow, svc, slot, now, grace_s,
                                                             copy)
            # The endpoint's load (least-connections) counts open flows once: what an
            # entry already here counted is given back first. The datapath changes loads
            # with atomic adds; this read-modify-write can lose one of them in a race,
            # which only skews lc's choice by one flow.
            okey = bytes(orig_key)
            existing = written.get(okey) or self.conntrack.lookup(orig_key)
            if existing is not None and existing.flags & _COUNTED:
                loads[existing.ep_slot] = loads.get(existing.ep_slot, 0) - 1
            if existing is not None and bytes(existing.peer) != bytes(reply_key):
                self.conntrack.delete(existing.peer)  # the tuple was reused (another port)
            if orig.flags & _COUNTED:
                loads[slot] = loads.get(slot, 0) + 1
            keys += (reply_key, orig_key)
            values += (reply, orig)
            written[okey] = orig
            results.append(Placement(svc.rule_id, slot, existing is not None))
        if keys:
            self.conntrack.update_batch((L.LbCtKey * len(keys))(*keys),
                                        (L.LbCtEntry * len(values))(*values))
        for slot, delta in loads.items():
            if delta:
                self._add_load(slot, delta)
        return results

    def _entries(self, flow: Flow, svc: L.LbSvc, slot: int, now: int, grace_s: int,
                 copy: int) -> tuple[L.LbCtKey, L.LbCtKey, L.LbCtEntry, L.LbCtEntry]:
        """The flow's keys and entries on this node: original, then reply."""
        icmp = flow.proto == socket.IPPROTO_ICMP
        orig_key = self.original_key(flow)
        reply_key = L.LbCtKey(saddr=_addr(flow.endpoint), daddr=_addr(flow.nat_source),
                              sport=0 if icmp else _port(flow.endpoint_port),
                              dport=_port(flow.nat_port), proto=flow.proto)
        orig = self._entry(flow, svc, slot, now, _ORIGINAL, reply_key, grace_s)
        orig.xlate_daddr, orig.xlate_dport = _addr(flow.endpoint), _port(flow.endpoint_port)
        orig_xlate = _DADDR | (0 if icmp else _DPORT)
        orig.seq_next = flow.client_seq_next
        orig.packets, orig.bytes = flow.packets_to_endpoint, flow.bytes_to_endpoint
        reply = self._entry(flow, svc, slot, now, _REPLY, orig_key, grace_s)
        reply.xlate_saddr, reply.xlate_sport = _addr(flow.vip), _port(flow.vip_port)
        reply_xlate = _SADDR | (0 if icmp else _SPORT)
        reply.seq_next = flow.endpoint_seq_next
        reply.packets, reply.bytes = flow.packets_to_client, flow.bytes_to_client
        if flow.snat:
            orig.xlate_saddr, orig.xlate_sport = _addr(flow.nat_source), _port(flow.nat_port)
            orig_xlate |= _SADDR | (0 if icmp else _SPORT)
            reply.xlate_daddr, reply.xlate_dport = _addr(flow.client), _port(flow.client_port)
            reply_xlate |= _DADDR | (0 if icmp else _DPORT)
        orig.xlate, reply.xlate = orig_xlate, reply_xlate
        orig.flags = (_COUNTED if flow.state != _CLOSED else _REPORTED_CLOSED) | copy
        reply.flags = copy
        return orig_key, reply_key, orig, reply

    @staticmethod
    def _entry(flow: Flow, svc: L.LbSvc, slot: int, now: int, direction: int,
               peer: L.LbCtKey, grace_s: int) -> L.LbCtEntry:
        age = max(0, flow.last_seen_ns - flow.created_ns)
        return L.LbCtEntry(peer=peer, rule_id=svc.rule_id, ep_slot=slot,
                           timeout_s=svc.timeout_s + grace_s, dir=direction, state=flow.state,
                           fin_seen=flow.fin_seen, nat_mode=flow.nat_mode,
                           created_ns=max(0, now - age), last_seen_ns=now, reported_ns=now)

    def _add_load(self, slot: int, delta: int) -> None:
        load = self.loads.lookup(slot)
        if load is not None:
            load.active = max(0, load.active + delta)
            self.loads.update(slot, load)
