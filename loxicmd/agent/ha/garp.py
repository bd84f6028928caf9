"""Gratuitous ARP when this node becomes MASTER of an instance.

The neighbours (the clients' router, the endpoints) must send the instance's traffic
here at once rather than when their ARP entries age out. keepalived announces its own
virtual addresses; the agent announces, on the real interfaces the datapath is attached
to (never on ``lo``), the instance's VIP and every service VIP of the instance that lies
in one of those interfaces' subnets.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import subprocess
from collections.abc import Iterable
from typing import Any

from ..dataplane.dataplane import Dataplane
from ..lb.table import RuleTable
from .states import StateObserver, instance_of

log = logging.getLogger("loxilbd.ha")

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6


def arp_announcement(mac: bytes, ip: str) -> bytes:
    """A gratuitous ARP request (sender and target both `ip`), broadcast."""
    addr = socket.inet_aton(ip)
    arp = (b"\x00\x01\x08\x00\x06\x04\x00\x01" + mac + addr + b"\x00" * 6 + addr)
    return BROADCAST + mac + ETH_P_ARP.to_bytes(2, "big") + arp


def interface_networks(ifname: str) -> list[ipaddress.IPv4Interface]:
    out = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", ifname],
                         capture_output=True, text=True, timeout=5, check=False).stdout
    nets = []
    for link in json.loads(out or "[]"):
        for a in link.get("addr_info", []):
            nets.append(ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}"))
    return nets


def announce(ifname: str, ips: Iterable[str], count: int = 2) -> int:
    """Send gratuitous ARPs for `ips` out of `ifname`; returns how many were sent."""
    sent = 0
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((ifname, ETH_P_ARP))
        mac = s.getsockname()[4]
        for ip in ips:
            frame = arp_announcement(mac, ip)
            for _ in range(count):
                s.send(frame)
                sent += 1
    return sent


def addresses_to_announce(ifnames: Iterable[str], vips: Iterable[str]
                          ) -> dict[str, list[str]]:
    """Per interface, the VIPs that fall in one of its subnets."""
    wanted = sorted({ipaddress.IPv4Address(v) for v in vips if v})
    plan: dict[str, list[str]] = {}
    for ifname in ifnames:
        nets = interface_networks(ifname)
        hits = [str(v) for v in wanted if any(v in n.network for n in nets)]
        if hits:
            plan[ifname] = hits
    return plan


def announce_on_takeover(table: RuleTable, dp: Dataplane) -> StateObserver:
    def on_state(instance: str, previous: str, entry: dict[str, Any]) -> None:
        if entry["state"] != "MASTER" or previous == "MASTER":
            return
        with table.lock:
            vips = [r.rule.key.external_ip for r in table.records.values()
                    if instance_of(r.rule.name) == instance]
        try:
            for ifname, ips in addresses_to_announce(dp.attached, [entry["vip"], *vips]).items():
                announce(ifname, ips)
                log.info("instance %s is MASTER here: gratuitous ARP for %s on %s", instance,
                         ", ".join(ips), ifname)
        except (OSError, ValueError) as exc:
            log.warning("instance %s: gratuitous ARP failed: %s", instance, exc)
    return on_state
