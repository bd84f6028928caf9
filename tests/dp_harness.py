"""Running the real BPF program on crafted frames (BPF_PROG_TEST_RUN), with
rules installed through the agent's own RuleTable.

The test process's thread enters a private network namespace for the
duration, so that the agent's route lookups (the LB's address towards each
endpoint, used by one-arm and fullNAT) see a known lab layout:
198.18.1.1/24 towards clients, 198.18.1x.1/24 towards endpoints 198.18.1x.y.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import subprocess
import uuid
from pathlib import Path
from typing import Any

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from datapath import layouts as L
from datapath.libbpf import RingBuffer, prog_test_run
from loxicmd.agent.conntrack.listing import FlowListing
from loxicmd.agent.dataplane.dataplane import Dataplane
from loxicmd.agent.dataplane.pins import unpin
from loxicmd.agent.lb.table import RuleTable
from loxicmd.agent.store.journal import StateStore

TC_ACT_OK = 0
TC_ACT_SHOT = 2

VIP = "198.18.100.1"
CLIENT = "198.18.1.2"
CLIENT2 = "198.18.1.3"
EPS = ["198.18.11.2", "198.18.12.2", "198.18.13.2"]
LB_TOWARDS = {ip: ip.rsplit(".", 1)[0] + ".1" for ip in EPS}  # the LB's address per endpoint
PRIVATE_IP = "198.18.50.1"

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


class NetnsThread:
    """Move the calling thread into a fresh namespace; `leave` brings it back."""

    def __init__(self) -> None:
        self.name = f"lxtr{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            self._configure()
        except BaseException:
            self.leave()
            raise

    def _configure(self) -> None:
        cmds = [
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "add", "tr0", "type", "veth", "peer", "name", "tr1"],
            ["ip", "addr", "add", "198.18.1.1/24", "dev", "tr0"],
            *[["ip", "addr", "add", f"{lb}/24", "dev", "tr0"] for lb in LB_TOWARDS.values()],
            ["ip", "link", "set", "tr0", "up"],
            ["ip", "link", "set", "tr1", "up"],
        ]
        for cmd in cmds:  # run as children of this thread: they inherit its namespace
            subprocess.run(cmd, check=True)

    def leave(self) -> None:
        _setns(self._home)
        os.close(self._home)
        subprocess.run(["ip", "netns", "delete", self.name], check=False)


class DpHarness:
    def __init__(self, tmp_path: Path, ct_entries: int = 65536, **table_limits: int) -> None:
        self.netns = NetnsThread()
        self.pin_dir = f"/sys/fs/bpf/loxilb-test-{uuid.uuid4().hex[:8]}"
        self.store = StateStore(tmp_path / f"state-{uuid.uuid4().hex[:6]}")
        try:
            self.dp = Dataplane(self.pin_dir, ct_entries=ct_entries)
        except BaseException:
            self.close()
            raise
        self.table = RuleTable(self.dp, self.store, **table_limits)
        self._events: list[L.LbEvent] = []
        self._syn_template = bytes(tcp())
        self._ring = RingBuffer(self.dp.maps["lb_events"].fd,
                                lambda b: self._events.append(L.LbEvent.from_buffer_copy(b)))

    def close(self) -> None:
        if hasattr(self, "_ring"):
            self._ring.close()
        if hasattr(self, "dp"):
            self.dp.close()
        self.store.close()
        unpin(self.pin_dir)
        self.netns.leave()

    # -- rules ------------------------------------------------------------
    def apply(self, body: dict[str, Any]) -> None:
        self.table.apply(body)

    def reset(self) -> None:
        """Delete every rule (which ends their flows) and forget events."""
        self.table.delete(list(self.table.records), "")
        for key, _ in list(self.dp.maps["lb_conntrack"].items()):
            self.dp.maps["lb_conntrack"].delete(key)
        for key, _ in list(self.dp.maps["lb_persist"].items()):
            self.dp.maps["lb_persist"].delete(key)
        # HA: every instance back to NOT_DEFINED, rules back in the default one
        for slot in range(L.LB_MAX_INSTANCES):
            self.dp.maps["lb_instances"].update(slot, L.LbInstance())
        self.dp.instance_slot = lambda rule_name: 0
        self.events()

    def rule_id(self) -> int:
        (rec,) = self.table.records.values()
        return rec.rule_id

    def slot_of(self, ip: str, port: int = 8080) -> int:
        """The slot of the one endpoint ip:port among all rules."""
        (slot,) = [rec.slots[(ip, port)] for rec in self.table.records.values()
                   if (ip, port) in rec.slots]
        return slot

    def set_active(self, ip: str, active: bool, port: int = 8080) -> None:
        slot = self.slot_of(ip, port)
        ep = self.dp.maps["lb_endpoints"].lookup(slot)
        ep.flags = L.EpFlags.ACTIVE if active else 0
        self.dp.maps["lb_endpoints"].update(slot, ep)

    # -- packets ----------------------------------------------------------
    def run_raw(self, raw: bytes, mark: int = 0) -> tuple[int, bytes]:
        ctx = None
        if mark:
            ctx = bytearray(12)
            ctx[8:12] = mark.to_bytes(4, "little")
            ctx = bytes(ctx)
        res = prog_test_run(self.dp.prog_fd, raw, ctx=ctx)
        return res.retval, res.data

    def dp_run_duration(self, raw: bytes) -> int:
        """The kernel's duration of one run (ns), for benchmarks."""
        return prog_test_run(self.dp.prog_fd, raw).duration_ns

    def run(self, pkt: Packet | bytes, mark: int = 0) -> tuple[int, Packet]:
        verdict, data = self.run_raw(bytes(pkt), mark)
        return verdict, Ether(data)

    def dst_of(self, pkt: Packet) -> str:
        verdict, out = self.run(pkt)
        assert verdict == TC_ACT_OK
        return out[IP].dst

    def dst_fast(self, src: str, sport: int, dport: int = 2020) -> str:
        """Where a SYN goes, for runs of thousands of flows: the frame is patched
        in place rather than built (the program does not verify checksums)."""
        raw = bytearray(self._syn_template)
        raw[26:30] = socket.inet_aton(src)
        raw[34:36] = sport.to_bytes(2, "big")
        raw[36:38] = dport.to_bytes(2, "big")
        verdict, out = self.run_raw(bytes(raw))
        assert verdict == TC_ACT_OK
        return socket.inet_ntoa(out[30:34])

    def events(self) -> list[L.LbEvent]:
        self._ring.consume()
        got, self._events = self._events, []
        return got

    def flows(self) -> list[dict[str, Any]]:
        return FlowListing(self.table).all()

    def rule_counters(self, rule_id: int) -> tuple[int, int]:
        """Packets and bytes the datapath counted for a rule (all CPUs)."""
        per_cpu = self.dp.maps["lb_rule_stats"].lookup(rule_id) or []
        return (sum(c.packets for c in per_cpu), sum(c.bytes for c in per_cpu))

    def endpoint_load(self, slot: int) -> int:
        """Open flows the datapath counts for an endpoint (least connections)."""
        return endpoint_load(self.dp, slot)

    def drops(self, reason: str) -> int:
        return self.dp.drop_counters()[reason][0]


def endpoint_load(dp: Dataplane, slot: int) -> int:
    load = dp.maps["lb_ep_load"].lookup(slot)
    return load.active if load else 0


def ip_of(be32: int) -> str:
    """The address a __be32 field holds."""
    return socket.inet_ntoa(struct.pack("=I", be32))


def lb_body(port: int = 2020, proto: str = "tcp", eps: list[str] | None = None,
            target: int = 8080, weights: list[int] | None = None, **svc: Any) -> dict[str, Any]:
    eps = EPS if eps is None else eps
    weights = weights or [1] * len(eps)
    extra = {k: svc.pop(k) for k in ("allowedSources",) if k in svc}
    return {
        "serviceArguments": {"externalIP": VIP, "port": port, "protocol": proto, "name": "t",
                             **svc},
        "endpoints": [{"endpointIP": ip, "targetPort": target, "weight": w}
                      for ip, w in zip(eps, weights, strict=True)],
        **extra,
    }


def tcp(src: str = CLIENT, dst: str = VIP, sport: int = 40000, dport: int = 2020,
        flags: str = "S", payload: bytes = b"", seq: int = 1000, ack: int = 0) -> Packet:
    return (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
            / IP(src=src, dst=dst, id=1) / TCP(sport=sport, dport=dport, flags=flags, seq=seq,
                                                ack=ack, window=8192) / payload)


def udp(src: str = CLIENT, dst: str = VIP, sport: int = 40000, dport: int = 2020,
        payload: bytes = b"hello") -> Packet:
    return (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
            / IP(src=src, dst=dst, id=1) / UDP(sport=sport, dport=dport) / payload)


def rebuilt(pkt: Packet) -> bytes:
    """The frame with its IP and L4 checksums computed afresh (a UDP checksum
    of 0, meaning none, is kept)."""
    fresh = pkt.copy()
    del fresh[IP].chksum
    layer = fresh[IP].payload
    if not (isinstance(layer, UDP) and layer.chksum == 0) and hasattr(layer, "chksum"):
        del layer.chksum
    return bytes(fresh)


def xlated(pkt: Packet, src: str | None = None, dst: str | None = None,
           sport: int | None = None, dport: int | None = None) -> bytes:
    """The frame a correct rewrite produces: fields replaced, checksums valid."""
    out = Ether(bytes(pkt))
    for field, value in (("src", src), ("dst", dst)):
        if value is not None:
            setattr(out[IP], field, value)
    l4 = out[IP].payload
    for field, value in (("sport", sport), ("dport", dport)):
        if value is not None:
            setattr(l4, field, value)
    return rebuilt(out)


def assert_checksums_valid(frame: Packet) -> None:
    assert bytes(frame) == rebuilt(frame), "checksums do not match the rewritten headers"

