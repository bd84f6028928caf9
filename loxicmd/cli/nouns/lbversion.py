"""Noun ``lbversion``: the agent's version (GET /version)."""

from __future__ import annotations

import click

from loxicmd.api import paths
from loxicmd.cli.listing import Listing
from loxicmd.cli.render import Column

LISTING = Listing("lbversion", paths.VERSION, None,
                  (Column("VERSION", "version"), Column("BUILD INFO", "buildInfo")))

COMMANDS: dict[str, click.Command] = {"get": LISTING.command("Show the agent's version.")}
