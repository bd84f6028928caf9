"""Which routes each neighbour should have: the VIP of every rule created with ``bgp``, as a
host route (/32, /128), with attributes that follow this node's role in the rule's HA
instance.

- MASTER, and NOT_DEFINED (no HA: the node opens new flows as a master does): the better
  path, MED 10 and local preference 5000 (LoxiLB's figures).
- BACKUP: the worse path, MED 20 and local preference 100, so that the peers already hold
  a path to this node when the master's disappears; or withdrawn (``withdraw`` policy).
- FAULT, STOP: withdrawn (the node takes no new flows).

The next hop is this node's address on the session ("next hop self") when the global
settings say ``SetNextHopSelf``; otherwise the instance's VIP when it has one of the
route's family (the VRRP address: the peers then follow keepalived's master at once),
else this node's address. Local preference only goes to iBGP peers (RFC 4271 5.1.5).
"""

from __future__ import annotations

import ipaddress
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..ha.states import instance_of
from ..lb.book import RuleRecord
from .settings import GlobalConfig, Neighbor

MASTER_MED, BACKUP_MED = 10, 20
MASTER_LOCAL_PREF, BACKUP_LOCAL_PREF = 5000, 100
BACKUP_POLICIES = ("worse", "withdraw")
ANNOUNCING_STATES = ("MASTER", "NOT_DEFINED")
# how many prefixes one ExaBGP command carries (one UPDATE's worth, roughly)
PREFIXES_PER_COMMAND = 200


@dataclass(frozen=True)
class Attributes:
    """A route's path attributes as this node sets them."""

    next_hop: str
    med: int
    local_pref: int | None  # iBGP only

    def words(self) -> str:
        """The attributes in ExaBGP's command syntax."""
        text = f"next-hop {self.next_hop} med {self.med}"
        return text if self.local_pref is None else f"{text} local-preference {self.local_pref}"


def host_prefix(address: str) -> str:
    ip = ipaddress.ip_address(address)
    return f"{ip}/{ip.max_prefixlen}"


def family_of(prefix: str) -> int:
    return 6 if ":" in prefix else 4


class ServiceVips:
    """The VIPs to announce, counted by (VIP, HA instance): kept as rules come and go (a
    rule observer; called under the rule table's lock, so it only counts and wakes)."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self.on_change = on_change
        self._lock = threading.Lock()
        self._count: Counter[tuple[str, str]] = Counter()

    @staticmethod
    def _key(record: RuleRecord | None) -> tuple[str, str] | None:
        if record is None or not record.rule.bgp:
            return None
        return record.rule.key.external_ip, instance_of(record.rule.name)

    def rule_changed(self, old: RuleRecord | None, new: RuleRecord | None) -> None:
        before, after = self._key(old), self._key(new)
        if before == after:
            return
        with self._lock:
            if before is not None:
                self._count[before] -= 1
                if self._count[before] <= 0:
                    del self._count[before]
            if after is not None:
                self._count[after] += 1
        self.on_change()

    def pairs(self) -> list[tuple[str, str]]:
        """(VIP, instance) for every VIP some bgp rule of the instance has."""
        with self._lock:
            return list(self._count)

    def vips(self) -> set[str]:
        with self._lock:
            return {vip for vip, _ in self._count}


def role_attributes(state: str, backup_policy: str) -> tuple[int, int] | None:
    """(MED, local preference) for a node in `state`, or None: not announced."""
    if state in ANNOUNCING_STATES:
        return MASTER_MED, MASTER_LOCAL_PREF
    if state == "BACKUP" and backup_policy == "worse":
        return BACKUP_MED, BACKUP_LOCAL_PREF
    return None


def desired_routes(pairs: Iterable[tuple[str, str]], instances: dict[str, dict[str, str]],
                   glob: GlobalConfig, neighbor: Neighbor, local_address: str,
                   backup_policy: str) -> dict[str, Attributes]:
    """prefix -> attributes: what `neighbor` should have from this node, whose address on
    the session is `local_address`. `instances` maps an HA instance to its entry
    (``state``, ``vip``). A VIP in several instances (rules of one VIP named for
    different instances) takes the best role it has. Only VIPs of the session's family
    are sent (the session carries that family alone)."""
    ibgp = neighbor.remote_as == glob.local_as
    best: dict[str, tuple[tuple[int, int], str]] = {}
    session_family = family_of(neighbor.address)
    for vip, instance in pairs:
        if family_of(vip) != session_family:
            continue
        entry = instances.get(instance, {"state": "NOT_DEFINED", "vip": ""})
        attrs = role_attributes(entry["state"], backup_policy)
        if attrs is None:
            continue
        prefix = host_prefix(vip)
        current = best.get(prefix)
        if current is None or attrs[0] < current[0][0]:
            best[prefix] = (attrs, entry.get("vip", ""))
    out: dict[str, Attributes] = {}
    for prefix, ((med, local_pref), instance_vip) in best.items():
        next_hop = local_address
        if (not glob.nexthop_self and instance_vip
                and family_of(prefix) == family_of(instance_vip)):
            next_hop = instance_vip
        out[prefix] = Attributes(next_hop, med, local_pref if ibgp else None)
    return out


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), PREFIXES_PER_COMMAND):
        yield items[i:i + PREFIXES_PER_COMMAND]


def route_commands(neighbor: str, sent: dict[str, Attributes], want: dict[str, Attributes]
                   ) -> list[tuple[str, dict[str, Attributes | None]]]:
    """The ExaBGP commands that take `neighbor` from `sent` to `want`, each with the change
    it makes to `sent` once answered (None: withdrawn): withdrawals first, then one
    command per set of prefixes sharing attributes and family."""
    commands: list[tuple[str, dict[str, Attributes | None]]] = []
    gone: dict[str, list[str]] = {}  # by next hop (a withdrawal names one; any of its family)
    for prefix in sorted(p for p in sent if p not in want):
        gone.setdefault(sent[prefix].next_hop, []).append(prefix)
    for next_hop, prefixes in gone.items():
        for chunk in _chunks(prefixes):
            commands.append((f"neighbor {neighbor} withdraw attributes next-hop {next_hop} "
                             "nlri " + " ".join(chunk), dict.fromkeys(chunk)))
    groups: dict[tuple[Attributes, int], list[str]] = {}
    for prefix, attrs in sorted(want.items()):
        if sent.get(prefix) != attrs:
            groups.setdefault((attrs, family_of(prefix)), []).append(prefix)
    for (attrs, _), prefixes in groups.items():
        for chunk in _chunks(prefixes):
            commands.append((f"neighbor {neighbor} announce attributes {attrs.words()} nlri "
                             + " ".join(chunk), dict.fromkeys(chunk, attrs)))
    return commands
