"""Noun ``hastate`` (ha): HA instance states (GET/POST /config/cistate)."""

from __future__ import annotations

import click

from loxicmd.api import paths
from loxicmd.cli import args
from loxicmd.cli.listing import Listing
from loxicmd.cli.options import Call, global_options, perform, settings
from loxicmd.cli.render import Column
from loxicmd.names import HA_STATES

STATES = HA_STATES

LISTING = Listing(
    "hastate", paths.CISTATE_ALL, "Attr",
    (Column("INSTANCE", "instance"), Column("HASTATE", "state", state=True)),
    wide=(Column("VIP", "vip"), Column("SYNC", "sync")),
    sort_key=lambda r: str(r.get("instance", "")),
)


@click.command("hastate")
@click.argument("instance")
@click.argument("state", metavar="STATE", type=args.UpperChoice(STATES))
@click.option("--vip", type=args.IP, help="The instance's virtual IP.")
@global_options()
@click.pass_context
def set_hastate(ctx: click.Context, instance: str, state: str, vip: str | None) -> None:
    """Set the HA state of INSTANCE (MASTER, BACKUP, FAULT, STOP, NOT_DEFINED)."""
    body = {"instance": instance, "state": state.upper()}
    if vip is not None:
        body["vip"] = vip
    call = Call(f"set hastate {instance}", "POST", paths.CISTATE, body=body)
    ctx.exit(perform(settings(ctx), [call]))


@click.command("hastate")
@click.argument("instance")
@global_options()
@click.pass_context
def delete_hastate(ctx: click.Context, instance: str) -> None:
    """Forget the HA instance INSTANCE (one set by mistake, or whose keepalived instance is
    gone; `default` is always there)."""
    call = Call(f"delete hastate {instance}", "DELETE",
                paths.fill(paths.CISTATE_INSTANCE, instance=instance))
    ctx.exit(perform(settings(ctx), [call]))


COMMANDS: dict[str, click.Command] = {
    "get": LISTING.command("List HA instance states (-o wide adds VIP and SYNC)."),
    "set": set_hastate,
    "delete": delete_hastate,
}
