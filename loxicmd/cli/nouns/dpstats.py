"""Noun ``dpstats``: datapath drop/exception counters (GET /config/dpstats)."""

from __future__ import annotations

import click

from loxicmd.api import paths
from loxicmd.cli.listing import Listing
from loxicmd.cli.render import Column

LISTING = Listing(
    "dpstats", paths.DPSTATS, "dpStats",
    (Column("REASON", "reason"), Column("PACKETS", "packets"), Column("BYTES", "bytes")),
)

COMMANDS: dict[str, click.Command] = {
    "get": LISTING.command("Show the datapath's counters by reason."),
}
