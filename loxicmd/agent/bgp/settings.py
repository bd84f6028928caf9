"""The BGP configuration: the speaker's global settings and its neighbours, as LoxiLB's API
shapes them (``BGPGlobalConfig``, ``BGPNeigh``), checked and kept in the state directory
(journal ``bgp``) so that a restarted agent peers again as before."""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loxicmd.api.wire import check

from ..errors import ApiError, InvalidInput
from ..store.journal import StateStore

BGP_PORT = 179
GLOBAL_KEY = "global"
NEIGHBOR_PREFIX = "neigh/"


@dataclass(frozen=True)
class GlobalConfig:
    router_id: str
    local_as: int
    listen_port: int = BGP_PORT
    nexthop_self: bool = False

    def api(self) -> dict[str, Any]:
        return {"routerId": self.router_id, "localAs": self.local_as,
                "listenPort": self.listen_port, "SetNextHopSelf": self.nexthop_self}


@dataclass(frozen=True)
class Neighbor:
    address: str
    remote_as: int
    remote_port: int = BGP_PORT
    multihop: bool = False

    def api(self) -> dict[str, Any]:
        return {"ipAddress": self.address, "remoteAs": self.remote_as,
                "remotePort": self.remote_port, "setMultiHop": self.multihop}


@dataclass(frozen=True)
class BgpConfig:
    """One consistent view of the configuration (what a run of the speaker is built from)."""

    global_config: GlobalConfig | None = None
    neighbors: dict[str, Neighbor] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Enough to run a speaker: a router id and AS, and someone to talk to."""
        return self.global_config is not None and bool(self.neighbors)


def parse_global(body: Any) -> GlobalConfig:
    b = check("BGPGlobalConfig", body, unknown="ignore")
    router_id = ipaddress.ip_address(b["routerId"])
    if router_id.version != 4 or router_id.is_unspecified:
        raise InvalidInput("routerId", f"{b['routerId']!r} is not a router id; allowed: a "
                           "non-zero IPv4 address (BGP identifiers are 32 bits)")
    return GlobalConfig(str(router_id), b["localAs"], b.get("listenPort") or BGP_PORT,
                        bool(b.get("SetNextHopSelf", False)))


def parse_neighbor(body: Any) -> Neighbor:
    b = check("BGPNeigh", body, unknown="ignore")
    address = ipaddress.ip_address(b["ipAddress"])
    if address.is_unspecified or address.is_multicast:
        raise InvalidInput("ipAddress", f"{b['ipAddress']!r} cannot be a BGP peer; allowed: "
                           "a unicast address")
    return Neighbor(str(address), b["remoteAs"], b.get("remotePort") or BGP_PORT,
                    bool(b.get("setMultiHop", False)))


class BgpSettings:
    """The configuration, changed one checked step at a time and saved before it is used."""

    def __init__(self, state_dir: str | Path) -> None:
        self.store = StateStore(state_dir, "bgp", lock=False)
        self._lock = threading.Lock()
        glob: GlobalConfig | None = None
        neighbors: dict[str, Neighbor] = {}
        try:
            for key, record in self.store.load().items():
                if key == GLOBAL_KEY:
                    glob = parse_global(record)
                elif key.startswith(NEIGHBOR_PREFIX):
                    n = parse_neighbor(record)
                    neighbors[n.address] = n
        except InvalidInput as exc:
            raise ValueError(f"{self.store.path}: {exc}; fix or move it away") from None
        self._config = BgpConfig(glob, neighbors)

    @property
    def config(self) -> BgpConfig:
        return self._config

    def _save(self, key: str, record: dict[str, Any] | None) -> None:
        try:
            if record is None:
                self.store.delete([key])
            else:
                self.store.put(key, record)
        except OSError as exc:
            raise ApiError(500, f"could not save the BGP configuration in "
                           f"{self.store.dir}: {exc}") from exc

    def set_global(self, glob: GlobalConfig) -> bool:
        """Set the global settings; False when they were already so (nothing changes)."""
        with self._lock:
            if self._config.global_config == glob:
                return False
            self._save(GLOBAL_KEY, glob.api())
            self._config = BgpConfig(glob, self._config.neighbors)
            return True

    def add_neighbor(self, neighbor: Neighbor) -> None:
        with self._lock:
            known = self._config.neighbors.get(neighbor.address)
            if known is not None:
                raise ApiError(409, f"BGP neighbor {neighbor.address} already exists (AS "
                               f"{known.remote_as}); delete it first to change it")
            self._save(NEIGHBOR_PREFIX + neighbor.address, neighbor.api())
            self._config = BgpConfig(self._config.global_config,
                                     {**self._config.neighbors, neighbor.address: neighbor})

    def delete_neighbor(self, address: str, remote_as: int | None) -> Neighbor:
        with self._lock:
            known = self._config.neighbors.get(address)
            if known is None:
                raise ApiError(404, f"no BGP neighbor {address}")
            if remote_as is not None and remote_as != known.remote_as:
                raise ApiError(404, f"no BGP neighbor {address} with AS {remote_as} (its AS "
                               f"is {known.remote_as})")
            self._save(NEIGHBOR_PREFIX + address, None)
            self._config = BgpConfig(self._config.global_config,
                                     {a: n for a, n in self._config.neighbors.items()
                                      if a != address})
            return known
