"""A probe's identity and its rules, apart from how it is carried out (``probes``) and
scheduled (``monitor``): the endpoint table and a rule's probe options are checked here
before anything is probed."""

from __future__ import annotations

import ipaddress
import math
import ssl
from dataclasses import dataclass

from loxicmd.api.wire import InvalidInput
from loxicmd.names import PORTLESS_PROBE_TYPES as PORTLESS
from loxicmd.names import PROBE_TYPES

# What probes ran every before the state format 2 (journals older than it are upgraded).
FORMAT_1_PROBE_PERIOD_S = 10
MAX_PERIOD_S = 86400.0
MIN_PERIOD_S = 0.05
MAX_RETRIES = 100
MAX_TEXT = 4096  # req / resp length (characters)

ATTEMPT_TIMEOUT_S = 2.0


def attempt_timeout(interval_s: float) -> float:
    """How long one probe waits for its answer: 2 s, or half the period when that is
    shorter (an attempt must end before the next one starts)."""
    return ATTEMPT_TIMEOUT_S if ATTEMPT_TIMEOUT_S < interval_s else interval_s / 2



@dataclass(frozen=True)
class ProbeSpec:
    """The identity of a probe: equal specs are probed once, whoever asks."""

    host: str  # IPv4 address
    ptype: str  # ping | tcp | udp | http | https | none
    port: int = 0  # 1..65535 for tcp/udp/http/https, 0 for ping/none
    req: str = ""  # tcp/udp: bytes to send (utf-8); http/https: the URL path (default "/")
    resp: str = ""  # expected reply substring; empty: any reply / status 200
    interval_s: float = 10.0
    timeout_s: float = 2.0
    retries: int = 2  # consecutive failures before ok -> nok
    ca_file: str = ""  # https: CA bundle to verify against ("": no verification)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def validate(spec: ProbeSpec) -> None:
    """Raise InvalidInput naming the first bad field (its name in ProbeSpec), the value and
    what is allowed."""
    try:
        if not isinstance(spec.host, str):
            raise TypeError
        addr = ipaddress.IPv4Address(spec.host)
    except (ValueError, TypeError):
        raise InvalidInput("host", f"{spec.host!r} is not an IPv4 address; "
                         "allowed: a dotted-quad IPv4 address") from None
    if addr.is_unspecified or addr.is_multicast or addr == ipaddress.IPv4Address(0xFFFFFFFF):
        raise InvalidInput("host", f"{spec.host!r} is not a unicast address; "
                         "allowed: a unicast IPv4 address")
    if spec.ptype not in PROBE_TYPES:
        raise InvalidInput("ptype", f"{spec.ptype!r} is unknown; allowed: {', '.join(PROBE_TYPES)}")
    if not _is_int(spec.port):
        raise InvalidInput("port", f"{spec.port!r} is not an integer")
    if spec.ptype in PORTLESS:
        if spec.port != 0:
            raise InvalidInput("port", f"{spec.port} is not allowed with probe type {spec.ptype}; "
                             "allowed: 0")
    elif not 1 <= spec.port <= 65535:
        raise InvalidInput("port", f"{spec.port} is out of range for probe type {spec.ptype}; "
                         "allowed: 1..65535 (required)")
    for name in ("req", "resp"):
        value = getattr(spec, name)
        if not isinstance(value, str):
            raise InvalidInput(name, f"{value!r} is not a string")
        if value and spec.ptype in PORTLESS:
            raise InvalidInput(name, f"{value!r} is not used by probe type {spec.ptype}; "
                             "allowed: empty")
        if len(value) > MAX_TEXT:
            raise InvalidInput(name, f"{len(value)} characters is too long; "
                             f"allowed: up to {MAX_TEXT}")
    if spec.ptype in ("http", "https") and spec.req:
        if (not spec.req.startswith("/") or not spec.req.isascii()
                or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in spec.req)):
            raise InvalidInput("req", f"{spec.req!r} is not a URL path; allowed: an ASCII path "
                             "starting with '/' without spaces or control characters")
    if not _is_number(spec.interval_s) or not MIN_PERIOD_S <= spec.interval_s <= MAX_PERIOD_S:
        raise InvalidInput("interval_s", f"{spec.interval_s!r} is out of range; allowed: "
                         f"{MIN_PERIOD_S:g}..{MAX_PERIOD_S:g} s")
    if not _is_number(spec.timeout_s) or not 0 < spec.timeout_s < spec.interval_s:
        raise InvalidInput("timeout_s", f"{spec.timeout_s!r} is out of range; allowed: more than "
                         f"0 and less than the interval ({spec.interval_s:g} s)")
    if not _is_int(spec.retries) or not 1 <= spec.retries <= MAX_RETRIES:
        raise InvalidInput("retries", f"{spec.retries!r} is out of range; "
                         f"allowed: 1..{MAX_RETRIES}")
    if not isinstance(spec.ca_file, str):
        raise InvalidInput("ca_file", f"{spec.ca_file!r} is not a string")
    if spec.ca_file:
        if spec.ptype != "https":
            raise InvalidInput("ca_file", f"{spec.ca_file!r} is not used by probe type "
                             f"{spec.ptype}; allowed: empty (only https verifies)")
        try:
            ssl.create_default_context(cafile=spec.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidInput("ca_file", f"{spec.ca_file!r} is not a readable CA bundle "
                             f"({exc}); allowed: a PEM file of CA certificates") from None
