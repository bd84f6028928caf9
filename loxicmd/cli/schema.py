"""Validation of API objects read from files (apply/delete -f, apply -c): pure functions.

A schema maps each field (matched case-insensitively, as the agent does) to its canonical
spelling and a check. ``check(schema, obj, where)`` returns the object with canonical keys
and checked values, or raises ``Invalid`` naming the field path, the value and what is
allowed. Nothing is wrapped or replaced by a default.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Check = Callable[[Any], Any]


class Invalid(ValueError):
    """``<where>: <why>``; ``where`` is the field path inside the document."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}" if where else why)
        self.where = where
        self.why = why


class _Bad(ValueError):
    """Internal: what is wrong with one value; check() adds the field path."""


def integer(lo: int, hi: int) -> Check:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"{value!r} is not an integer; allowed: {lo}..{hi}")
        if not lo <= value <= hi:
            raise _Bad(f"{value} is out of range; allowed: {lo}..{hi}")
        return value

    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"{value!r} is not a boolean; allowed: true, false")
    return value


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad(f"{value!r} is not a string")
    return value


def address(value: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(value).strip("[]")))
    except ValueError:
        raise _Bad(f"{value!r} is not a valid IPv4 or IPv6 address") from None


def prefix(value: Any) -> str:
    try:
        ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise _Bad(f"{value!r} is not a valid IPv4 or IPv6 prefix") from None
    return str(value)


def choice(allowed: Sequence[str], *, upper: bool = False) -> Check:
    def check(value: Any) -> str:
        word = value.upper() if upper and isinstance(value, str) else value
        if word not in allowed:
            raise _Bad(f"{value!r} is not allowed; allowed: {', '.join(allowed)}")
        return str(word)

    return check


def code(names: Mapping[int, str]) -> Check:
    """A numeric API code, or its name (``sel: hash``), -> the code."""
    listing = ", ".join(f"{c} ({n})" for c, n in names.items())

    def check(value: Any) -> int:
        if isinstance(value, str):
            for number, name in names.items():
                if name == value:
                    return number
        if isinstance(value, int) and not isinstance(value, bool) and value in names:
            return value
        raise _Bad(f"{value!r} is unknown; allowed: {listing}")

    return check


PORT = integer(1, 65535)
ASN = integer(1, 2**32 - 1)


def check(schema: Mapping[str, Check], obj: Any, where: str,
          required: Sequence[str] = ()) -> dict[str, Any]:
    """Check ``obj`` against ``schema`` (canonical key -> check); unknown keys are refused."""
    if not isinstance(obj, Mapping):
        raise Invalid(where, f"{type(obj).__name__} is not a mapping")
    canonical = {key.lower(): key for key in schema}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = canonical.get(str(key).lower())
        path = f"{where}.{key}" if where else str(key)
        if name is None:
            raise Invalid(path, f"unknown field; allowed: {', '.join(schema)}")
        if name in out:
            raise Invalid(path, f"given twice (as {name!r} too)")
        try:
            out[name] = schema[name](value)
        except _Bad as exc:
            raise Invalid(path, str(exc)) from None
    for key in required:
        if key not in out:
            raise Invalid(f"{where}.{key}" if where else key, "is required")
    return out


def items(item_check: Callable[[Any, str], Any], value: Any, where: str) -> list[Any]:
    """A list whose items are checked by ``item_check(item, "<where>[i]")``."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise Invalid(where, f"{type(value).__name__} is not a list")
    return [item_check(item, f"{where}[{i}]") for i, item in enumerate(value)]
