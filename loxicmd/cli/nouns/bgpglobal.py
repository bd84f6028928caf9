"""Noun ``bgpglobal``: the BGP instance's global settings (/config/bgp/global)."""

from __future__ import annotations

import click

from loxicmd.api import paths
from loxicmd.cli import args
from loxicmd.cli.listing import Listing
from loxicmd.cli.nouns.bgpneighbor import ASN
from loxicmd.cli.options import Call, global_options, perform, settings
from loxicmd.cli.render import Column

LISTING = Listing(
    "bgpglobal", paths.BGP_GLOBAL, None,
    (Column("ROUTER ID", "routerId"), Column("LOCAL AS", "localAs"),
     Column("LISTEN PORT", "listenPort"), Column("NEXTHOP SELF", "SetNextHopSelf")),
    wide=tuple(Column(header, lambda row, key=key: (row.get("speaker") or {}).get(key))
               for header, key in (("SPEAKER", "state"), ("PID", "pid"),
                                   ("RESTARTS", "restarts"), ("BACKUP", "backupPolicy"),
                                   ("IMPORT", "importRoutes"))),
)


@click.command("bgpglobal")
@click.option("--routerid", "router_id", type=args.IP, required=True, help="BGP router id.")
@click.option("--localas", "local_as", type=ASN, required=True, help="Local AS number.")
@click.option("--listenport", "listen_port", type=args.PORT, help="BGP listen port.")
@click.option("--setnexthopself", "nexthop_self", is_flag=True,
              help="Advertise routes with this node as next hop.")
@global_options()
@click.pass_context
def create_bgpglobal(ctx: click.Context, router_id: str, local_as: int,
                     listen_port: int | None, nexthop_self: bool) -> None:
    """Set the BGP router id and local AS."""
    body = {"routerId": router_id, "localAs": local_as, "SetNextHopSelf": nexthop_self}
    if listen_port is not None:
        body["listenPort"] = listen_port
    call = Call("create bgpglobal", "POST", paths.BGP_GLOBAL, body=body)
    ctx.exit(perform(settings(ctx), [call]))


COMMANDS: dict[str, click.Command] = {
    "get": LISTING.command("Show the BGP global settings."),
    "create": create_bgpglobal,
}
