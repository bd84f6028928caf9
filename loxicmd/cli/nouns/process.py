"""Noun ``process``: the agent process (GET /status/process)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from loxicmd.api import paths
from loxicmd.cli.listing import Listing
from loxicmd.cli.render import Column


def duration(seconds: Any) -> str:
    """``93784`` -> ``1d2h3m4s`` (units with a zero leading part left out)."""
    if not isinstance(seconds, int):
        return "" if seconds is None else str(seconds)
    parts, rest = [], seconds
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if rest >= size or parts:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts) + f"{rest}s"


def kibibytes(value: Any) -> str:
    """LoxiLB's memory fields: KiB as a decimal string (as `top` shows them)."""
    text = str(value or "")
    return f"{int(text) / 1024:.1f}MiB" if text.isdigit() else text


def _get(key: str, fmt: Any) -> Any:
    return lambda row: fmt(row.get(key)) if isinstance(row, Mapping) else ""


LISTING = Listing(
    "process", paths.PROCESS, "processAttr",
    (Column("PID", "pid"), Column("UPTIME", _get("uptimeSeconds", duration)),
     Column("RSS", _get("residentSize", kibibytes)), Column("CPU%", "CPUUsage"),
     Column("THREADS", "threads"), Column("FDS", "openFds"), Column("LOG LEVEL", "logLevel")),
    wide=(Column("STATE DIR", "stateDir"), Column("PIN DIR", "pinDir"),
          Column("COMMAND", "command")),
)

COMMANDS: dict[str, click.Command] = {
    "get": LISTING.command("Show the agent process (-o wide adds its directories)."),
}
