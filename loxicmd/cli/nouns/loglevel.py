"""Noun ``log-level``: the agent's log level (GET/POST /config/params)."""

from __future__ import annotations

import click

from loxicmd.api import paths
from loxicmd.cli.listing import Listing
from loxicmd.cli.options import Call, global_options, perform, settings
from loxicmd.cli.render import Column

LEVELS = ("debug", "info", "warning", "error")

LISTING = Listing("log-level", paths.PARAMS, None, (Column("LOG LEVEL", "logLevel"),))


@click.command("log-level")
@click.argument("level", type=click.Choice(LEVELS, case_sensitive=False))
@global_options()
@click.pass_context
def set_log_level(ctx: click.Context, level: str) -> None:
    """Set the agent's log level."""
    call = Call("set log-level", "POST", paths.PARAMS, body={"logLevel": level.lower()})
    ctx.exit(perform(settings(ctx), [call]))


COMMANDS: dict[str, click.Command] = {
    "get": LISTING.command("Show the agent's log level."),
    "set": set_log_level,
}
