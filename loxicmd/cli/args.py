"""Argument parsing and validation: pure functions, no I/O.

Every parser raises ``click.BadParameter`` whose message names the offending value and what
is allowed; the flag name comes from ``field`` (or from click when used through a ParamType).
Values are never wrapped, truncated or silently replaced.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import click

PORT_MIN = 1
PORT_MAX = 65535
# A target port of 0 keeps the port the client used (ranges such as 8001-8100:0).
TARGET_PORT_MIN = 0
TARGET_PORT_HINT = "0 keeps the client's port"
WEIGHT_MIN = 1
WEIGHT_MAX = 255

T = TypeVar("T")


@dataclass(frozen=True)
class PortMap:
    """One ``<port>[-<max>]:<targetport>`` item of --tcp/--udp/--sctp."""

    port: int
    port_max: int | None
    target: int

    @property
    def last(self) -> int:
        return self.port if self.port_max is None else self.port_max

    def overlaps(self, other: PortMap) -> bool:
        return self.port <= other.last and other.port <= self.last

    def __str__(self) -> str:
        ports = str(self.port) if self.port_max is None else f"{self.port}-{self.port_max}"
        return f"{ports}:{self.target}"


@dataclass(frozen=True)
class PortRange:
    """One ``<port>[-<max>]`` item (delete)."""

    port: int
    port_max: int | None


@dataclass(frozen=True)
class Endpoint:
    ip: str
    weight: int


class _Invalid(ValueError):
    """Internal: what is wrong with a value; the public parsers add the quoted item."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _bad(item: str, why: str, field: str | None) -> click.BadParameter:
    return click.BadParameter(f"'{item}': {why}", param_hint=field)


def _checked(parser: Callable[[str], T]) -> Callable[..., T]:
    """Turn an internal parser raising _Invalid into a public one raising BadParameter."""

    def public(item: str, field: str | None = None) -> T:
        try:
            return parser(item)
        except _Invalid as exc:
            raise _bad(item, exc.why, field) from None

    public.__name__ = parser.__name__.lstrip("_")
    public.__doc__ = parser.__doc__
    return public


def split_list(values: str | Iterable[str], field: str | None = None) -> list[str]:
    """Split comma lists (and repeated flags) into items; empty items are an error."""
    texts = [values] if isinstance(values, str) else list(values)
    items: list[str] = []
    for text in texts:
        for item in text.split(","):
            item = item.strip()
            if not item:
                raise _bad(text, "empty item in comma-separated list", field)
            items.append(item)
    return items


def _int(text: str, what: str, lo: int, hi: int, hint: str = "") -> int:
    """``hint`` says what a special value means (``0 keeps the client's port``)."""
    stripped = text.strip()
    note = f" ({hint})" if hint else ""
    if not stripped.isascii() or not stripped.isdigit():
        raise _Invalid(f"{what} must be an integer {lo}..{hi}{note}")
    value = int(stripped)
    if not lo <= value <= hi:
        raise _Invalid(f"{what} must be {lo}..{hi}{note}")
    return value


def parse_int(text: str, what: str, lo: int, hi: int, field: str | None = None) -> int:
    """A decimal integer in lo..hi (no wrapping); ``what`` names it in the message."""
    try:
        return _int(text, what, lo, hi)
    except _Invalid as exc:
        raise _bad(text, exc.why, field) from None


def _port_range(item: str) -> PortRange:
    """``<port>`` or ``<port>-<max>`` with 1 <= port <= max <= 65535."""
    first, sep, last = item.partition("-")
    port = _int(first, "port", PORT_MIN, PORT_MAX)
    if not sep:
        return PortRange(port, None)
    port_max = _int(last, "max port", PORT_MIN, PORT_MAX)
    if port_max < port:
        raise _Invalid(f"max port {port_max} is below port {port}")
    return PortRange(port, port_max if port_max != port else None)


def _port_map(item: str) -> PortMap:
    """``<port>[-<max>]:<targetport>``."""
    ports, sep, target = item.partition(":")
    if not sep or not ports.strip():
        raise _Invalid("expected <port>[-<max>]:<targetport>")
    rng = _port_range(ports)
    return PortMap(rng.port, rng.port_max,
                   _int(target, "target port", TARGET_PORT_MIN, PORT_MAX, TARGET_PORT_HINT))


def _delete_port_range(item: str) -> PortRange:
    """``<port>[-<max>]``; a ``:<target>`` suffix (as given to create) is accepted and ignored."""
    ports, sep, target = item.partition(":")
    if sep:
        _int(target, "target port", TARGET_PORT_MIN, PORT_MAX, TARGET_PORT_HINT)
    return _port_range(ports)


def _endpoint(item: str) -> Endpoint:
    """``<ip>:<weight>``, split at the LAST colon (``2001:db8::1:5``, ``[2001:db8::1]:5``)."""
    ip_text, sep, weight_text = item.rpartition(":")
    if not sep or not ip_text:
        raise _Invalid(f"expected <ip>:<weight> (weight {WEIGHT_MIN}..{WEIGHT_MAX})")
    weight = _int(weight_text, "weight", WEIGHT_MIN, WEIGHT_MAX)
    return Endpoint(_usable_ip(ip_text, "an endpoint", "endpoint address"), weight)


def _ip(text: str, what: str = "address") -> str:
    bare = text.strip()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    if not bare:
        raise _Invalid(f"no address given; allowed: an IPv4 or IPv6 {what}")
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        raise _Invalid(f"not a valid IPv4 or IPv6 {what}") from None


def unusable_reason(address: str) -> str:
    """Why ``address`` (canonical) cannot carry a service's traffic, or ""."""
    addr = ipaddress.ip_address(address)
    if addr.is_unspecified:
        return "the unspecified address"
    if addr.version == 4 and int(addr) == 0xFFFFFFFF:
        return "the broadcast address"
    if addr.is_multicast:
        return "a multicast address"
    if addr.is_loopback:
        return "a loopback address"
    return ""


def _usable_ip(text: str, role: str, what: str) -> str:
    """An address that can be ``role`` (a service address, an endpoint): unicast and not
    loopback; the datapath never sees traffic to or from the others."""
    allowed = f"allowed: a unicast, non-loopback IPv4 or IPv6 {what}"
    if not text.strip().strip("[]"):
        raise _Invalid(f"no address given; {allowed}")
    address = _ip(text, what)
    reason = unusable_reason(address)
    if reason:
        raise _Invalid(f"{reason} cannot be {role}; {allowed}")
    return address


def _service_ip(text: str) -> str:
    """The external (virtual) IP of a rule."""
    return _usable_ip(text, "a service address", "address")


def _cidr(text: str) -> str:
    """An IPv4/IPv6 prefix such as ``10.0.0.0/8`` (a bare address means a host prefix)."""
    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise _Invalid("not a valid IPv4 or IPv6 prefix (<address>/<length>)") from None
    return text.strip()


def _service_name(text: str) -> str:
    """``<svc>`` or ``<svc>:<instance>``; both parts non-empty."""
    svc, sep, inst = text.partition(":")
    if not svc.strip() or (sep and not inst.strip()):
        raise _Invalid("expected <service>[:<instance>]")
    return text


parse_port_range = _checked(_port_range)
parse_port_map = _checked(_port_map)
parse_delete_port_range = _checked(_delete_port_range)
parse_endpoint = _checked(_endpoint)
parse_cidr = _checked(_cidr)
parse_service_name = _checked(_service_name)
parse_service_ip = _checked(_service_ip)


def parse_ip(text: str, field: str | None = None) -> str:
    """An IPv4 or IPv6 address (brackets allowed); returned in canonical form."""
    try:
        return _ip(text)
    except _Invalid as exc:
        raise _bad(text, exc.why, field) from None


def parse_port(text: str, field: str | None = None) -> int:
    return parse_int(text, "port", PORT_MIN, PORT_MAX, field)


def parse_port_maps(values: str | Iterable[str], field: str | None = None) -> list[PortMap]:
    """``80:8080,81:8081`` -> two mappings (never one range)."""
    return [parse_port_map(item, field) for item in split_list(values, field)]


def check_no_overlap(maps: Iterable[PortMap], field: str | None = None) -> None:
    """Mappings of one protocol make one rule each: two whose ports overlap would be the
    same rule twice (the later silently replacing the earlier), so they are refused."""
    ordered = sorted(maps, key=lambda m: (m.port, m.last))
    for earlier, later in zip(ordered, ordered[1:], strict=False):
        if earlier.overlaps(later):
            raise click.BadParameter(
                f"'{earlier}' and '{later}' overlap; allowed: port ranges that do not "
                "overlap (one rule each)", param_hint=field)


def parse_port_ranges(values: str | Iterable[str], field: str | None = None) -> list[PortRange]:
    return [parse_delete_port_range(item, field) for item in split_list(values, field)]


def parse_endpoints(values: str | Iterable[str], field: str | None = None) -> list[Endpoint]:
    return [parse_endpoint(item, field) for item in split_list(values, field)]


def parse_ips(values: str | Iterable[str], field: str | None = None) -> list[str]:
    return [parse_ip(item, field) for item in split_list(values, field)]


def parse_cidrs(values: str | Iterable[str], field: str | None = None) -> list[str]:
    return [parse_cidr(item, field) for item in split_list(values, field)]


class ParsedType(click.ParamType, Generic[T]):
    """Adapts one of the pure parsers above to a click parameter type.

    click then attaches the flag name to the BadParameter, so messages name it.
    ``allowed`` describes a good value for the message when the parameter is missing.
    """

    def __init__(self, name: str, parser: Callable[[str], T], allowed: str = "") -> None:
        self.name = name
        self._parser = parser
        self.allowed = allowed

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> T:
        if not isinstance(value, str):
            return value  # already converted (default value)
        try:
            return self._parser(value)
        except click.BadParameter as exc:
            exc.ctx, exc.param = ctx, param
            raise


IP = ParsedType("ip", parse_ip, "an IPv4 or IPv6 address")
SERVICE_IP = ParsedType("ip", parse_service_ip,
                        "a unicast, non-loopback IPv4 or IPv6 address (e.g. 198.18.100.1)")
IP_LIST = ParsedType("ip[,ip...]", parse_ips)
CIDR_LIST = ParsedType("cidr[,cidr...]", parse_cidrs)
PORT_MAPS = ParsedType("port[-max]:target[,...]", parse_port_maps)
PORT_RANGES = ParsedType("port[-max][,...]", parse_port_ranges)
ENDPOINTS = ParsedType("ip:weight[,...]", parse_endpoints)
SERVICE_NAME = ParsedType("svc[:instance]", parse_service_name)
PORT = ParsedType("port", parse_port)


def int_type(what: str, lo: int, hi: int, metavar: str = "N") -> ParsedType[int]:
    """A click type for an integer lo..hi with this module's messages."""
    return ParsedType(metavar, lambda text: parse_int(text, what, lo, hi))


def flatten(groups: Iterable[Iterable[T]]) -> list[T]:
    """Flatten the per-occurrence lists of a ``multiple=True`` list option."""
    return [item for group in groups for item in group]


class UpperChoice(click.Choice):  # type: ignore[type-arg]
    """Upper-case words (MASTER, BACKUP, ...) accepted in any case; errors list them as
    they are spelt."""

    def __init__(self, choices: Iterable[str]) -> None:
        super().__init__(list(choices), case_sensitive=True)

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value.upper() in self.choices:
            return value.upper()
        self.fail(f"'{value}': allowed: {', '.join(map(str, self.choices))}", param, ctx)
