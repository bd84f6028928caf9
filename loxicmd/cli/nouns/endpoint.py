"""Noun ``endpoint`` (ep): endpoint health probes (/config/endpoint)."""

from __future__ import annotations

from typing import Any

import click

from loxicmd.api import paths
from loxicmd.cli import args
from loxicmd.cli.complete import endpoint_ips, endpoint_names
from loxicmd.cli.listing import Listing
from loxicmd.cli.nouns.lb import NOT_IN_LOXILBD, PROBE_TYPES, UNSUPPORTED_PROBE_TYPES
from loxicmd.cli.options import Call, global_options, perform, settings
from loxicmd.cli.render import Column, ip_key
from loxicmd.names import PORTLESS_PROBE_TYPES

# Probe types without a port: the agent refuses a port with them and requires one (1..65535)
# with every other type.

LISTING = Listing(
    "endpoint", paths.ENDPOINT_ALL, "Attr",
    (Column("HOST", "hostName"), Column("NAME", "name"), Column("PTYPE", "probeType"),
     Column("PORT", "probePort"), Column("DURATION", "probeDuration"),
     Column("RETRIES", "inactiveReTries"), Column("MINDELAY", "minDelay"),
     Column("AVGDELAY", "avgDelay"), Column("MAXDELAY", "maxDelay"),
     Column("STATE", "currState", state=True)),
    sort_key=lambda r: (ip_key(r.get("hostName", "")), str(r.get("name", ""))),
)


def body(ip: str, name: str | None, probetype: str, probeport: int | None,
         probereq: str | None, proberesp: str | None, period: int | None,
         retries: int | None) -> dict[str, Any]:
    """The POST body; unset options are left to the agent's defaults."""
    fields = {"hostName": ip, "name": name, "probeType": probetype, "probePort": probeport,
              "probeReq": probereq, "probeResp": proberesp, "probeDuration": period,
              "inactiveReTries": retries}
    return {k: v for k, v in fields.items() if v is not None}


def check_probe_port(probetype: str, probeport: int | None, ctx: click.Context) -> None:
    """What the agent would refuse about --probeport, refused here before anything is sent."""
    if probetype in PORTLESS_PROBE_TYPES:
        if probeport is not None:
            default = " (the default)" if probetype == "ping" else ""
            raise click.UsageError(
                f"--probeport={probeport} is not used by --probetype={probetype}{default}; "
                "allowed: --probeport with --probetype="
                + "|".join(t for t in PROBE_TYPES if t not in PORTLESS_PROBE_TYPES), ctx)
    elif probeport is None:
        raise click.UsageError(f"--probeport is missing: --probetype={probetype} needs the "
                               "port to probe; allowed: 1..65535", ctx)


@click.command("endpoint")
@click.argument("ip", metavar="IP", type=args.IP)
@click.option("--name", help="Endpoint name (agent default <ip>_<probetype>_<probeport>).")
@click.option("--probetype", type=click.Choice(PROBE_TYPES), default="ping",
              show_default=True,
              help=f"Probe type ({', '.join(UNSUPPORTED_PROBE_TYPES)}: {NOT_IN_LOXILBD}).")
@click.option("--probeport", type=args.PORT,
              help="Probe port; required with tcp/udp/sctp/http/https, not allowed with "
              "ping/none.")
@click.option("--probereq", metavar="TEXT", help="Probe request (http/https/udp).")
@click.option("--proberesp", metavar="TEXT", help="Expected probe response.")
@click.option("--period", type=args.int_type("period", 1, 86400, "SECONDS"),
              help="Probe period in seconds.")
@click.option("--retries", type=args.int_type("retries", 1, 1000),
              help="Failed probes before the endpoint is inactive.")
@global_options()
@click.pass_context
def create_endpoint(ctx: click.Context, ip: str, name: str | None, probetype: str,
                    probeport: int | None, probereq: str | None, proberesp: str | None,
                    period: int | None, retries: int | None) -> None:
    """Create a health probe for the endpoint IP."""
    check_probe_port(probetype, probeport, ctx)
    payload = body(ip, name, probetype, probeport, probereq, proberesp, period, retries)
    ctx.exit(perform(settings(ctx), [Call(f"create endpoint {ip}", "POST", paths.ENDPOINT,
                                          body=payload)]))


@click.command("endpoint")
@click.argument("ip", metavar="IP", type=args.IP, shell_complete=endpoint_ips)
@click.option("--name", help="Only the probe with this name.", shell_complete=endpoint_names)
@click.option("--probetype", type=click.Choice(PROBE_TYPES), help="Only this probe type.")
@click.option("--probeport", type=args.PORT, help="Only this probe port.")
@global_options()
@click.pass_context
def delete_endpoint(ctx: click.Context, ip: str, name: str | None, probetype: str | None,
                    probeport: int | None) -> None:
    """Delete the health probe(s) of the endpoint IP."""
    query = {"name": name, "probe_type": probetype, "probe_port": probeport}
    call = Call(f"delete endpoint {ip}", "DELETE", paths.fill(paths.ENDPOINT_BY_IP, ip=ip),
                query=query)
    ctx.exit(perform(settings(ctx), [call]))


COMMANDS: dict[str, click.Command] = {
    "get": LISTING.command("List endpoint health probes."),
    "create": create_endpoint,
    "delete": delete_endpoint,
}
