"""Noun ``bgpneighbor`` (bgpnei): BGP peers (/config/bgp/neigh)."""

from __future__ import annotations

import click

from loxicmd.api import paths
from loxicmd.cli import args
from loxicmd.cli.listing import Listing
from loxicmd.cli.options import Call, global_options, perform, settings
from loxicmd.cli.render import Column, ip_key

ASN_MAX = 2**32 - 1
ASN = args.int_type("AS number", 1, ASN_MAX, "ASN")

LISTING = Listing(
    "bgpneighbor", paths.BGP_NEIGH_ALL, "bgpNeiAttr",
    (Column("PEER", "ipAddress"), Column("AS", "remoteAs"), Column("UP/DOWN", "updowntime"),
     Column("STATE", "state", state=True)),
    wide=(Column("LOCAL", "localAddress"), Column("HOLD", "holdTime"),
          Column("SENT", "advertisedPrefixes"), Column("RECEIVED", "receivedPrefixes"),
          Column("ACCEPTED", "acceptedPrefixes")),
    sort_key=lambda r: ip_key(r.get("ipAddress", "")),
)


@click.command("bgpneighbor")
@click.argument("ip", metavar="IP", type=args.IP)
@click.argument("asn", metavar="ASN", type=ASN)
@click.option("--remotePort", "remote_port", type=args.PORT, help="Peer's BGP port.")
@click.option("--setMultiHop", "multihop", is_flag=True, help="eBGP multi-hop.")
@global_options()
@click.pass_context
def create_bgpnei(ctx: click.Context, ip: str, asn: int, remote_port: int | None,
                  multihop: bool) -> None:
    """Add the BGP peer IP with AS number ASN (4-byte ASNs allowed)."""
    body = {"ipAddress": ip, "remoteAs": asn, "setMultiHop": multihop}
    if remote_port is not None:
        body["remotePort"] = remote_port
    ctx.exit(perform(settings(ctx), [Call(f"create bgpneighbor {ip}", "POST", paths.BGP_NEIGH,
                                          body=body)]))


@click.command("bgpneighbor")
@click.argument("ip", metavar="IP", type=args.IP)
@click.argument("asn", metavar="ASN", type=ASN)
@global_options()
@click.pass_context
def delete_bgpnei(ctx: click.Context, ip: str, asn: int) -> None:
    """Remove the BGP peer IP with AS number ASN."""
    call = Call(f"delete bgpneighbor {ip}", "DELETE", paths.fill(paths.BGP_NEIGH_BY_IP, ip=ip),
                query={"remoteAs": asn})
    ctx.exit(perform(settings(ctx), [call]))


COMMANDS: dict[str, click.Command] = {
    "get": LISTING.command("List BGP neighbors (-o wide adds prefix counts)."),
    "create": create_bgpnei,
    "delete": delete_bgpnei,
}
