"""The agent's side of the datapath: load the object, attach it, program its maps.

Maps are pinned under the node's bpffs directory, so a restarted agent reuses
the conntrack table, counters and rules of the one before it and traffic does
not stop while the agent is away.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import datapath
from datapath import layouts as L
from datapath.libbpf import BpfObject, tc_attach, tc_detach, tc_query

from .model import LbRule

log = logging.getLogger("loxilbd.dataplane")

# Our filter's place on the clsact hook; fixed so a restart replaces it.
TC_HANDLE = 0x1B
TC_PRIORITY = 1


@dataclass(frozen=True)
class FlowView:
    """One flow as the API shows it (original direction, counters of both)."""

    rule_id: int
    ep_slot: int
    client_ip: str
    client_port: int
    vip: str
    vip_port: int
    protocol: str
    state: str
    endpoint_ip: str
    endpoint_port: int
    packets: int
    bytes: int


def interfaces_in_namespace() -> list[str]:
    """Every interface but loopback, for `--interfaces all`."""
    return [name for _, name in socket.if_nameindex() if name != "lo"]


class Dataplane:
    def __init__(self, pin_dir: str, object_path: str | None = None,
                 ct_entries: int | None = None) -> None:
        self.pin_dir = pin_dir
        sizes = {"lb_conntrack": ct_entries} if ct_entries else None
        self.obj = BpfObject(str(object_path or datapath.OBJECT_PATH), L.MAPS, pin_dir, sizes)
        self.prog_fd = self.obj.program_fd(datapath.PROGRAM_NAME)
        self.maps = self.obj.maps
        self.attached: dict[str, int] = {}

    # -- attachment ---------------------------------------------------------
    def attach(self, ifnames: Iterable[str]) -> None:
        for name in ifnames:
            try:
                ifindex = socket.if_nametoindex(name)
            except OSError:
                raise ValueError(f"interface {name!r} does not exist in this namespace") from None
            tc_attach(ifindex, self.prog_fd, handle=TC_HANDLE, priority=TC_PRIORITY)
            self.attached[name] = ifindex
            log.info("attached to %s (ifindex %d)", name, ifindex)

    def is_attached(self, ifname: str) -> bool:
        return tc_query(socket.if_nametoindex(ifname), handle=TC_HANDLE,
                        priority=TC_PRIORITY) is not None

    def detach_all(self) -> None:
        for name, ifindex in list(self.attached.items()):
            tc_detach(ifindex, handle=TC_HANDLE, priority=TC_PRIORITY)
            del self.attached[name]

    def close(self) -> None:
        self.obj.close()

    # -- rules --------------------------------------------------------------
    @staticmethod
    def service_keys(rule: LbRule) -> list[L.LbSvcKey]:
        k = rule.key
        proto = L.IPPROTO[k.protocol]
        vip = L.ip_to_be32(k.external_ip)
        return [L.LbSvcKey(vip=vip, port=L.port_to_be16(p), proto=proto, mark=k.block)
                for p in range(k.port, k.port_max + 1)]

    def program_rule(self, rule_id: int, rule: LbRule, slots: dict[tuple[str, int], int],
                     old_rule: LbRule | None = None, new_slots: Iterable[int] = ()) -> None:
        """Install or update a rule. Endpoints go in before the service entry
        points at them; counters of newly used slots start from zero."""
        base = rule_id * L.LB_MAX_ENDPOINTS
        zero = L.LbCounter()
        for slot in new_slots:
            self.maps["lb_ep_stats"].update(base + slot, zero)
        for i, ep in enumerate(rule.endpoints):
            self.maps["lb_endpoints"].update(base + i, L.LbEndpoint(
                addr=L.ip_to_be32(ep.ip), port=L.port_to_be16(ep.target_port),
                weight=ep.weight, flags=L.EP_F_ACTIVE, stat_slot=base + slots[ep.ident]))
        svc = L.LbSvc(rule_id=rule_id, ep_count=len(rule.endpoints), sel=rule.sel,
                      nat_mode=rule.mode, inactive_timeout_s=rule.effective_timeout)
        keys = self.service_keys(rule)
        for key in keys:
            self.maps["lb_services"].update(key, svc)
        if old_rule is not None:
            wanted = {bytes(k) for k in keys}
            for key in self.service_keys(old_rule):
                if bytes(key) not in wanted:
                    self.maps["lb_services"].delete(key)
            for i in range(len(rule.endpoints), len(old_rule.endpoints)):
                self.maps["lb_endpoints"].update(base + i, L.LbEndpoint())

    def reset_rule_state(self, rule_id: int) -> None:
        """A fresh rule id: rotation from the first endpoint, counters from zero."""
        self.maps["lb_rule_state"].update(rule_id, L.LbRuleState())
        self.maps["lb_rule_stats"].update(rule_id, L.LbCounter())

    def remove_rule(self, rule_id: int, rule: LbRule) -> None:
        for key in self.service_keys(rule):
            self.maps["lb_services"].delete(key)
        base = rule_id * L.LB_MAX_ENDPOINTS
        for i in range(len(rule.endpoints)):
            self.maps["lb_endpoints"].update(base + i, L.LbEndpoint())
        self.flush_conntrack(lambda e: e.rule_id == rule_id)

    def remove_stale_services(self, live_rule_ids: set[int]) -> int:
        """After a restart on pinned maps: drop service keys of rules the
        agent no longer has (deleted while it was away from the state file)."""
        stale = [k for k, v in self.maps["lb_services"].items() if v.rule_id not in live_rule_ids]
        for key in stale:
            self.maps["lb_services"].delete(key)
        return len(stale)

    # -- counters and conntrack ---------------------------------------------
    def _sum(self, map_name: str, index: int) -> tuple[int, int]:
        per_cpu = self.maps[map_name].lookup(index) or []
        return (sum(c.packets for c in per_cpu), sum(c.bytes for c in per_cpu))

    def rule_counters(self, rule_id: int) -> tuple[int, int]:
        return self._sum("lb_rule_stats", rule_id)

    def endpoint_counters(self, rule_id: int, slot: int) -> tuple[int, int]:
        return self._sum("lb_ep_stats", rule_id * L.LB_MAX_ENDPOINTS + slot)

    def drop_counters(self) -> dict[str, tuple[int, int]]:
        return {name: self._sum("lb_dp_stats", idx) for idx, name in L.DP_STAT_NAMES.items()}

    def flush_conntrack(self, predicate: Callable[[L.LbCtEntry], bool]) -> int:
        doomed = [k for k, e in self.maps["lb_conntrack"].items() if predicate(e)]
        for key in doomed:
            self.maps["lb_conntrack"].delete(key)
        return len(doomed)

    def flows(self) -> Iterator[FlowView]:
        entries = list(self.maps["lb_conntrack"].items())
        replies = {bytes(k): e for k, e in entries if e.dir == L.CT_DIR_REPLY}
        for key, e in entries:
            if e.dir != L.CT_DIR_ORIGINAL:
                continue
            back = replies.get(bytes(e.peer))
            yield FlowView(
                rule_id=e.rule_id,
                ep_slot=e.ep_slot % L.LB_MAX_ENDPOINTS,
                client_ip=L.be32_to_ip(key.saddr),
                client_port=L.be16_to_port(key.sport),
                vip=L.be32_to_ip(key.daddr),
                vip_port=L.be16_to_port(key.dport),
                protocol=L.PROTO_NAMES.get(key.proto, str(key.proto)),
                state=L.CT_STATE_NAMES.get(e.state, str(e.state)),
                endpoint_ip=L.be32_to_ip(e.xlate_daddr),
                endpoint_port=L.be16_to_port(e.xlate_dport),
                packets=e.packets + (back.packets if back else 0),
                bytes=e.bytes + (back.bytes if back else 0),
            )


def unpin(pin_dir: str) -> None:
    """Remove a node's pinned maps (what `loxilbd --cleanup` does after detaching)."""
    if os.path.isdir(pin_dir):
        shutil.rmtree(pin_dir)


def detach_everywhere() -> list[str]:
    """Remove our filter from every interface of this namespace."""
    removed = []
    for _, name in socket.if_nameindex():
        if tc_detach(socket.if_nametoindex(name), handle=TC_HANDLE, priority=TC_PRIORITY):
            removed.append(name)
    return removed

