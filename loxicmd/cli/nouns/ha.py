"""Noun ``hastate`` (ha): HA instance states (GET/POST /config/cistate)."""

from __future__ import annotations

import click

from loxicmd.cli import args
from loxicmd.cli.listing import Listing
from loxicmd.cli.options import Call, global_options, perform, settings
from loxicmd.cli.render import Column

PATH = "/config/cistate"
STATES = ("MASTER", "BACKUP", "FAULT", "STOP", "NOT_DEFINED")

LISTING = Listing(
    "hastate", f"{PATH}/all", "Attr",
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
    ctx.exit(perform(settings(ctx), [Call(f"set hastate {instance}", "POST", PATH, body=body)]))


@click.command("hastate")
@click.argument("instance")
@global_options()
@click.pass_context
def delete_hastate(ctx: click.Context, instance: str) -> None:
    """Forget the HA instance INSTANCE (one set by mistake, or whose keepalived instance is
    gone; `default` is always there)."""
    from loxicmd.cli.client import segment

    call = Call(f"delete hastate {instance}", "DELETE", f"{PATH}/instance/{segment(instance)}")
    ctx.exit(perform(settings(ctx), [call]))


COMMANDS: dict[str, click.Command] = {
    "get": LISTING.command("List HA instance states (-o wide adds VIP and SYNC)."),
    "set": set_hastate,
    "delete": delete_hastate,
}
