"""External IPs for Services, from the CIDRs the controller is given (kube-loxilb's
``externalCIDR``): the lowest free address, the network and broadcast addresses of an IPv4
pool excepted. An address a Service asks for (``spec.loadBalancerIP``,
``loxilb.io/staticIP``) is its own whether in a pool or not, but never two Services'.
The allocator keeps no file: on start the controller reserves what the Services' statuses
already say, before it gives anything new.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class NoAddress(RuntimeError):
    """Every address of the pools is taken, or the one asked for is another's."""


def parse_cidrs(text: str) -> list[IpNetwork]:
    nets = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            net = ipaddress.ip_network(part, strict=True)
        except ValueError as exc:
            raise ValueError(f"{part!r} is not a CIDR ({exc}); allowed: a.b.c.d/len[,...]"
                             ) from None
        if net.version != 4:
            raise ValueError(f"{part!r} is IPv6; allowed: IPv4 CIDRs (the agents take IPv4 "
                             "service addresses)")
        nets.append(net)
    if not nets:
        raise ValueError(f"{text!r} names no CIDR; allowed: a.b.c.d/len[,...]")
    return nets


def _hosts(net: IpNetwork) -> Iterator[str]:
    if net.version == 4 and net.prefixlen < 31:
        return (str(h) for h in net.hosts())
    return (str(h) for h in net)


class IpPool:
    def __init__(self, cidrs: list[IpNetwork]) -> None:
        self.cidrs = cidrs
        self._lock = threading.Lock()
        self._owner: dict[str, str] = {}  # address -> service key

    def in_pool(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return any(ip in net for net in self.cidrs)

    def owner(self, address: str) -> str | None:
        with self._lock:
            return self._owner.get(address)

    def address_of(self, service: str) -> str | None:
        with self._lock:
            return next((a for a, s in self._owner.items() if s == service), None)

    def reserve(self, service: str, address: str) -> None:
        """Give `address` to `service` (what it asked for, or its status says it has)."""
        with self._lock:
            owner = self._owner.get(address)
            if owner is not None and owner != service:
                raise NoAddress(f"{address} is already the external IP of Service {owner}")
            self._release_locked(service)
            self._owner[address] = service

    def allocate(self, service: str) -> str:
        """The service's address: the one it has, else the lowest free one."""
        with self._lock:
            have = next((a for a, s in self._owner.items() if s == service), None)
            if have is not None:
                return have
            for net in self.cidrs:
                for host in _hosts(net):
                    if host not in self._owner:
                        self._owner[host] = service
                        return host
        raise NoAddress(f"no free address in {', '.join(map(str, self.cidrs))} "
                        f"({len(self._owner)} in use)")

    def owners(self) -> set[str]:
        with self._lock:
            return set(self._owner.values())

    def release(self, service: str) -> None:
        with self._lock:
            self._release_locked(service)

    def _release_locked(self, service: str) -> None:
        for address in [a for a, s in self._owner.items() if s == service]:
            del self._owner[address]
