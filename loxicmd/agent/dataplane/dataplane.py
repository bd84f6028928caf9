"""The agent's side of the datapath: load the object, attach it, program its maps.

Maps are pinned under the node's bpffs directory, so a restarted agent reuses
the conntrack table, counters and rules of the one before it and traffic does
not stop while the agent is away.
"""

from __future__ import annotations

import ctypes
import logging
import socket
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

import datapath
from datapath import layouts as L
from datapath.libbpf import (
    BpfMap,
    BpfObject,
    LibbpfError,
    pinned_map_info,
    prog_test_run,
    tc_attach,
    tc_detach,
)
from loxicmd.names import DP_STAT_WORDS, PROTOCOL_NUMBERS

from ..lb.maglev import build_table
from ..lb.model import PERSIST_LIFETIME_S, LbRule

log = logging.getLogger("loxilbd.dataplane")

PROTOCOL_CODES = {word: code for code, word in PROTOCOL_NUMBERS.items()}

# Our filter's place on the clsact hook; fixed so a restart replaces it.
TC_HANDLE = 0x1B
TC_PRIORITY = 1

NO_RULE = 0xFFFFFFFF  # lb_endpoint.rule_id of a free slot

# struct __sk_buff up to and including cb[5]: the context of a lb_sweep run
_SKB_CB_OFFSET = 48
_SKB_CTX_LEN = _SKB_CB_OFFSET + 5 * 4
_DUMMY_FRAME = bytes(14)


def interfaces_in_namespace() -> list[str]:
    """Every interface but loopback, for `--interfaces all`."""
    return [name for _, name in socket.if_nameindex() if name != "lo"]


def route_source(ip: str) -> str | None:
    """The address this node uses to reach `ip`, None when it has no route there
    (connecting a UDP socket sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((ip, 9))
        except OSError:
            return None
        return str(s.getsockname()[0])


def allow_key(rule_id: int, prefix: str) -> L.LbAllowKey:
    addr, plen = prefix.split("/")
    return L.LbAllowKey(prefixlen=32 + int(plen), rule_id=socket.htonl(rule_id),
                        addr=L.ip_to_be32(addr))


class Dataplane:
    def __init__(self, pin_dir: str, object_path: str | None = None,
                 ct_entries: int | None = None) -> None:
        self.pin_dir = pin_dir
        # A pinned table keeps its size: a restart without --ct-entries takes it over,
        # a different size would need a new (empty) table, which ends every flow.
        pinned = pinned_map_info(f"{pin_dir}/lb_conntrack")
        if pinned is not None and ct_entries and pinned.max_entries != ct_entries:
            raise ValueError(f"the conntrack table pinned in {pin_dir} holds "
                             f"{pinned.max_entries} entries, not {ct_entries}: start with that "
                             "--ct-entries, or run `loxilbd --cleanup` first (which ends every "
                             "flow)")
        size = ct_entries or (pinned.max_entries if pinned is not None else None)
        sizes = {"lb_conntrack": size} if size else None
        try:
            self.obj = BpfObject(str(object_path or datapath.OBJECT_PATH), L.MAPS, pin_dir,
                                 sizes)
        except LibbpfError as exc:
            if "couldn't reuse pinned map" in exc.detail:
                raise ValueError(f"the maps pinned in {pin_dir} do not fit this datapath "
                                 "(made by another build of it): run `loxilbd --cleanup` "
                                 f"first (which ends every flow)\n{exc}") from None
            raise
        self.prog_fd = self.obj.program_fd(datapath.PROGRAM_NAME)
        self.sweep_fd = self.obj.program_fd(datapath.SWEEP_PROGRAM_NAME)
        self.maps = self.obj.maps
        self.attached: dict[str, int] = {}
        # A rule's HA instance slot (lb_svc.instance) by its name; the HA states set it.
        self.instance_slot: Callable[[str], int] = lambda rule_name: 0

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
        proto = PROTOCOL_CODES[k.protocol]
        vip = L.ip_to_be32(k.external_ip)
        return [L.LbSvcKey(vip=vip, port=L.port_to_be16(p), proto=proto, mark=k.mark)
                for p in range(k.port, k.port_max + 1)]

    def program_rule(self, rule_id: int, rule: LbRule, slots: dict[tuple[str, int], int],
                     old_rule: LbRule | None = None, new_slots: Iterable[int] = (),
                     inactive: Collection[int] = (),
                     sources: Mapping[tuple[str, int], str] | None = None) -> None:
        """Install or update a rule. Endpoints go in before the rule lists
        them, the rule before the service points at it; counters and loads of
        newly used slots start from zero. `sources`: the node's address towards
        each endpoint, the source of one-arm and fullnat."""
        sources = sources or {}
        for slot in new_slots:
            self.maps["lb_ep_stats"].update(slot, L.LbCounter())
            self.maps["lb_ep_load"].update(slot, L.LbEpLoad())
        for ep in rule.endpoints:
            source = sources.get(ep.ident, "")
            self.maps["lb_endpoints"].update(slots[ep.ident], L.LbEndpoint(
                addr=L.ip_to_be32(ep.ip), port=L.port_to_be16(ep.target_port),
                weight=ep.weight, rule_id=rule_id,
                flags=0 if slots[ep.ident] in inactive else L.EpFlags.ACTIVE,
                snat_addr=L.ip_to_be32(source) if source else 0))
        ordered = [slots[ep.ident] for ep in rule.endpoints]
        if rule.sel == L.Sel.HASH:
            self._program_maglev(rule_id, rule, ordered)
        elif old_rule is not None and old_rule.sel == L.Sel.HASH:
            self.maps["lb_maglev"].delete(rule_id)
        entry = L.LbRuleSlots(ep_count=len(ordered))
        entry.slots[: len(ordered)] = ordered
        self.maps["lb_rules"].update(rule_id, entry)
        self._program_sources(rule_id, rule, old_rule)

        svc = L.LbSvc(rule_id=rule_id, sel=rule.sel, nat_mode=rule.mode,
                      flags=L.SvcFlags.ALLOWLIST if rule.allowed_sources else 0,
                      timeout_s=rule.effective_timeout, persist_s=PERSIST_LIFETIME_S,
                      snat_addr=L.ip_to_be32(rule.private_ip) if rule.private_ip else 0,
                      instance=self.instance_slot(rule.name))
        keys = self.service_keys(rule)
        for key in keys:
            self.maps["lb_services"].update(key, svc)
        if old_rule is not None:
            wanted = {bytes(k) for k in keys}
            for key in self.service_keys(old_rule):
                if bytes(key) not in wanted:
                    self.maps["lb_services"].delete(key)

    def _program_maglev(self, rule_id: int, rule: LbRule, ordered: Sequence[int]) -> None:
        """A fresh table per change, swapped in whole: a flow never sees a half-built one."""
        names = [f"{ep.ip}:{ep.target_port}" for ep in rule.endpoints]
        table = build_table(names, L.LB_MAGLEV_SIZE)
        inner = BpfMap.create_array(f"lb_mglv_{rule_id}", ctypes.c_uint32, L.LB_MAGLEV_SIZE)
        try:
            keys = (ctypes.c_uint32 * L.LB_MAGLEV_SIZE)(*range(L.LB_MAGLEV_SIZE))
            values = (ctypes.c_uint32 * L.LB_MAGLEV_SIZE)(*(ordered[i] for i in table))
            inner.update_batch(keys, values)
            self.maps["lb_maglev"].update(rule_id, ctypes.c_uint32(inner.fd))
        finally:
            inner.close()  # the outer map holds its own reference

    def _program_sources(self, rule_id: int, rule: LbRule, old_rule: LbRule | None) -> None:
        one = ctypes.c_uint8(1)
        for prefix in rule.allowed_sources:
            self.maps["lb_allow"].update(allow_key(rule_id, prefix), one)
        if old_rule is not None:
            for prefix in set(old_rule.allowed_sources) - set(rule.allowed_sources):
                self.maps["lb_allow"].delete(allow_key(rule_id, prefix))

    def release_slots(self, slots: Iterable[int]) -> None:
        """Endpoints gone from their rule: end their flows, then free the slots."""
        for slot in slots:
            self.sweep(L.SweepMode.ENDPOINT, slot)
            self.maps["lb_endpoints"].update(slot, L.LbEndpoint(rule_id=NO_RULE))

    def set_endpoint_source(self, slot: int, source: str, active: bool) -> None:
        """A route to the endpoint appeared: its one-arm/fullnat source, and new flows."""
        ep = self.maps["lb_endpoints"].lookup(slot)
        if ep is not None:
            ep.snat_addr = L.ip_to_be32(source)
            ep.flags = (ep.flags | L.EpFlags.ACTIVE) if active else (ep.flags & ~L.EpFlags.ACTIVE)
            self.maps["lb_endpoints"].update(slot, ep)

    def set_endpoint_active(self, slot: int, active: bool) -> None:
        """Health or an operator's host state: inactive endpoints get no new flows."""
        ep = self.maps["lb_endpoints"].lookup(slot)
        if ep is not None:
            ep.flags = (ep.flags | L.EpFlags.ACTIVE) if active else (ep.flags & ~L.EpFlags.ACTIVE)
            self.maps["lb_endpoints"].update(slot, ep)

    def reset_rule_state(self, rule_id: int) -> None:
        """A fresh rule id: rotation from the first endpoint, counters from zero."""
        self.maps["lb_rule_state"].update(rule_id, L.LbRuleState())
        self.maps["lb_rule_stats"].update(rule_id, L.LbCounter())

    def remove_rule(self, rule_id: int, rule: LbRule, slots: Iterable[int]) -> None:
        for key in self.service_keys(rule):
            self.maps["lb_services"].delete(key)
        self.maps["lb_rules"].update(rule_id, L.LbRuleSlots())
        if rule.sel == L.Sel.HASH:
            self.maps["lb_maglev"].delete(rule_id)
        for prefix in rule.allowed_sources:
            self.maps["lb_allow"].delete(allow_key(rule_id, prefix))
        self.sweep(L.SweepMode.RULE, rule_id)
        for slot in slots:
            self.maps["lb_endpoints"].update(slot, L.LbEndpoint(rule_id=NO_RULE))

    def remove_stale_services(self, live_rule_ids: set[int]) -> int:
        """After a restart on pinned maps: drop service keys of rules the
        agent no longer has (deleted while it was away from the state file)."""
        stale = [k for k, v in self.maps["lb_services"].items() if v.rule_id not in live_rule_ids]
        for key in stale:
            self.maps["lb_services"].delete(key)
        return len(stale)

    # -- conntrack ------------------------------------------------------------
    def sweep(self, mode: int, target: int = 0, reason: int = 0) -> int:
        """Run lb_sweep: expire idle flows (SWEEP_IDLE) or end those of a rule
        or endpoint. Returns how many flows it ended; each one is reported on
        the event ring buffer."""
        ctx = bytearray(_SKB_CTX_LEN)
        ctx[_SKB_CB_OFFSET:_SKB_CB_OFFSET + 12] = (ctypes.c_uint32 * 3)(mode, target, reason)
        return prog_test_run(self.sweep_fd, _DUMMY_FRAME, ctx=bytes(ctx)).retval

    def set_refresh(self, seconds: float) -> None:
        """Have the datapath report flows that carry traffic again every `seconds` (0:
        never): what keeps the copies conntrack sync gave to peers from ageing out."""
        self.maps["lb_config"].update(0, L.LbConfig(refresh_ns=int(seconds * 1e9)))

    # -- counters -------------------------------------------------------------
    def _sum(self, map_name: str, index: int) -> tuple[int, int]:
        per_cpu = self.maps[map_name].lookup(index) or []
        return (sum(c.packets for c in per_cpu), sum(c.bytes for c in per_cpu))

    def endpoint_counters(self, slot: int) -> tuple[int, int]:
        return self._sum("lb_ep_stats", slot)

    def drop_counters(self) -> dict[str, tuple[int, int]]:
        return {DP_STAT_WORDS[s.name]: self._sum("lb_dp_stats", s) for s in L.DpStat}


def detach_everywhere() -> list[str]:
    """Remove our filter from every interface of this namespace."""
    removed = []
    for _, name in socket.if_nameindex():
        if tc_detach(socket.if_nametoindex(name), handle=TC_HANDLE, priority=TC_PRIORITY):
            removed.append(name)
    return removed
