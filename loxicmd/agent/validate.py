"""What this agent accepts beyond the wire schema's types and ranges (checked by
:func:`loxicmd.api.wire.check`): addresses of the family its datapath carries that can
carry traffic, and the values of query parameters. Every refusal names the field, the
value and what is allowed."""

from __future__ import annotations

import ipaddress

from loxicmd.api.wire import InvalidInput

BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def ipv4(value: str, where: str) -> str:
    """An IPv4 address (the datapath carries no IPv6 yet), canonical."""
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidInput(where, f"{value!r} is not a valid IP address") from None
    if addr.version != 4:
        raise InvalidInput(where, f"{value!r}: IPv6 is not supported by this datapath yet; "
                           "allowed: an IPv4 address")
    return str(addr)


def unicast_ipv4(value: str, where: str, what: str) -> str:
    """An IPv4 address that can carry traffic as `what` (a service, an endpoint, ...)."""
    text = ipv4(value, where)
    addr = ipaddress.IPv4Address(text)
    why = ("is the unspecified address" if addr.is_unspecified
           else "is the broadcast address" if addr == BROADCAST
           else "is a multicast address" if addr.is_multicast
           else "is a loopback address (traffic to it never leaves the node)"
           if addr.is_loopback else "")
    if why:
        raise InvalidInput(where, f"{text!r} {why}; allowed: a unicast IPv4 address for {what}")
    return text


def ipv4_prefix(value: str, where: str) -> str:
    if ":" in value:
        raise InvalidInput(where, f"{value!r}: IPv6 is not supported by this datapath yet; "
                           "allowed: an IPv4 prefix such as 198.18.0.0/16")
    return value


def query_int(value: str, name: str, lo: int, hi: int) -> int:
    """An integer query parameter (or path segment) in lo..hi."""
    try:
        number = int(value)
    except ValueError:
        raise InvalidInput(name, f"{value!r} is not an integer; allowed: {lo}..{hi}") from None
    if not lo <= number <= hi:
        raise InvalidInput(name, f"{number} is out of range; allowed: {lo}..{hi}")
    return number


def one_of(value: str, name: str, allowed: tuple[str, ...] | list[str], what: str) -> str:
    if value not in allowed:
        raise InvalidInput(name, f"{value!r} is not {what}; allowed: {', '.join(allowed)}")
    return value
