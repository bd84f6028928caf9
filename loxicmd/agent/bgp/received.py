"""Routes the peers announce: kept per peer from ExaBGP's UPDATE events and, when the agent
is told to (``--bgp-import``), the best path of each prefix installed in the node's main
routing table, under a protocol number and a metric of their own: told apart from every
other route, never replacing one (the kernel matches a route by prefix and metric, so a
connected or static route of the same prefix stays, and wins), and removed when the peer
withdraws them, goes down, or the agent stops.

Best path, as BGP decides between the paths of one prefix: highest local preference, then
shortest AS path, lowest origin, lowest MED, then the lowest peer address. Prefixes this
node announces itself (its VIPs) are never installed.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("loxilbd.bgp")

# The routes' protocol in the kernel (`ip route ... proto 196`): a number no routing daemon
# shipped with Debian uses (iproute2's rt_protos), so ours are never confused with theirs.
ROUTE_PROTOCOL = 196
ROUTE_METRIC = 196
FAILED_LINE = re.compile(r"Command failed -:(\d+)")
ORIGINS = {"igp": 0, "egp": 1, "incomplete": 2}
DEFAULT_LOCAL_PREF = 100


@dataclass(frozen=True)
class Path:
    peer: str
    next_hop: str
    local_pref: int = DEFAULT_LOCAL_PREF
    as_path_len: int = 0
    origin: int = 0
    med: int = 0

    def rank(self) -> tuple[int, int, int, int, ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return (-self.local_pref, self.as_path_len, self.origin, self.med,
                ipaddress.ip_address(self.peer))


def _as_path_len(value: Any) -> int:
    """ExaBGP's as-path: a list of ASNs, or segments ({"0": {"element", "value"}}); an AS
    set counts as one (RFC 4271 9.1.2.2)."""
    if isinstance(value, list):
        return len(value)
    if isinstance(value, dict):
        total = 0
        for segment in value.values():
            if isinstance(segment, dict):
                members = segment.get("value") or []
                total += 1 if "set" in str(segment.get("element", "")) else len(members)
        return total
    return 0


def _nlri(item: Any) -> str | None:
    prefix = item.get("nlri") if isinstance(item, dict) else item
    if not isinstance(prefix, str):
        return None
    try:
        return str(ipaddress.ip_network(prefix, strict=False))
    except ValueError:
        return None


class KernelRoutes:
    """The node's routing table, changed in batches through ``ip -batch``."""

    def run(self, lines: list[str]) -> set[int]:
        """Carry out `lines` (``ip`` commands) in one process that goes on past a failing
        line; the indexes of those that failed (it names them ``Command failed -:N``)."""
        if not lines:
            return set()
        done = subprocess.run(["ip", "-force", "-batch", "-"], input="\n".join(lines) + "\n",
                              capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return set()
        failed = {int(n) - 1 for n in FAILED_LINE.findall(done.stderr)}
        if not failed:  # not its usual words: count every line as failed
            failed = set(range(len(lines)))
        log.warning("BGP routes not installed (%d of %d; retried): %s", len(failed),
                    len(lines), done.stderr.strip()[:300])
        return failed

    def replace(self, prefix: str, next_hop: str) -> str:
        return (f"route replace {prefix} via {next_hop} proto {ROUTE_PROTOCOL} "
                f"metric {ROUTE_METRIC}")

    def delete(self, prefix: str) -> str:
        return f"route del {prefix} proto {ROUTE_PROTOCOL} metric {ROUTE_METRIC}"

    def flush(self) -> None:
        for family in ("-4", "-6"):
            subprocess.run(["ip", family, "route", "flush", "proto", str(ROUTE_PROTOCOL)],
                           capture_output=True, check=False)


class ReceivedRoutes:
    """Each peer's announced paths and, with `kernel`, the best of each installed."""

    def __init__(self, kernel: KernelRoutes | None, own_prefixes: Callable[[], set[str]]
                 ) -> None:
        self.kernel = kernel
        self.own_prefixes = own_prefixes
        self._lock = threading.Lock()
        self._paths: dict[str, dict[str, Path]] = {}  # peer -> prefix -> path
        self._installed: dict[str, Path] = {}  # prefix -> the path in the kernel
        self._failed: set[str] = set()  # prefixes the kernel refused: tried again later
        if kernel is not None:
            kernel.flush()  # what a previous run left

    def update(self, peer: str, update: dict[str, Any]) -> None:
        """An UPDATE from `peer`, as ExaBGP's JSON encoder gives it."""
        attributes = update.get("attribute") or {}
        touched: set[str] = set()
        with self._lock:
            paths = self._paths.setdefault(peer, {})
            for items in (update.get("withdraw") or {}).values():
                for item in items if isinstance(items, list) else []:
                    prefix = _nlri(item)
                    if prefix is not None and paths.pop(prefix, None) is not None:
                        touched.add(prefix)
            for family, by_next_hop in (update.get("announce") or {}).items():
                if "unicast" not in family or not isinstance(by_next_hop, dict):
                    continue
                for next_hop, items in by_next_hop.items():
                    path = Path(peer, next_hop,
                                int(attributes.get("local-preference", DEFAULT_LOCAL_PREF)),
                                _as_path_len(attributes.get("as-path")),
                                ORIGINS.get(str(attributes.get("origin", "igp")), 2),
                                int(attributes.get("med", 0)))
                    for item in items if isinstance(items, list) else []:
                        prefix = _nlri(item)
                        if prefix is not None:
                            paths[prefix] = path
                            touched.add(prefix)
            self._reselect(touched)

    def peer_down(self, peer: str) -> None:
        with self._lock:
            paths = self._paths.pop(peer, {})
            self._reselect(set(paths))

    def clear(self) -> None:
        """Forget every path and take the installed routes out (the speaker stopped)."""
        with self._lock:
            touched = {p for paths in self._paths.values() for p in paths}
            self._paths.clear()
            self._reselect(touched)

    def reselect(self, prefixes: set[str]) -> None:
        """Choose again for `prefixes` (the node's own VIPs changed)."""
        with self._lock:
            self._reselect(prefixes)

    def retry(self) -> None:
        """Try again the routes the kernel refused (a next hop not reachable yet)."""
        with self._lock:
            failed, self._failed = self._failed, set()
            self._reselect(failed)

    def _reselect(self, prefixes: set[str]) -> None:
        if self.kernel is None or not prefixes:
            return
        own = self.own_prefixes()
        changes: list[tuple[str, Path | None]] = []
        for prefix in sorted(prefixes):
            candidates = [paths[prefix] for paths in self._paths.values() if prefix in paths]
            best = min(candidates, key=Path.rank) if candidates and prefix not in own else None
            if best != self._installed.get(prefix):
                changes.append((prefix, best))
        failed = self.kernel.run([self.kernel.replace(p, b.next_hop) if b else
                                  self.kernel.delete(p) for p, b in changes])
        for i, (prefix, best) in enumerate(changes):
            if best is None:  # a route that could not be deleted is gone or not ours
                self._installed.pop(prefix, None)
            elif i not in failed:
                self._installed[prefix] = best
            else:
                self._installed.pop(prefix, None)  # whatever was there, replace failed
                self._failed.add(prefix)

    def counts(self, peer: str) -> tuple[int, int]:
        """(received, accepted): the prefixes the peer announces, and those of them whose
        path from this peer is the one installed (0 without ``--bgp-import``)."""
        with self._lock:
            paths = self._paths.get(peer, {})
            accepted = sum(1 for prefix, path in paths.items()
                           if self._installed.get(prefix) == path)
            return len(paths), accepted
