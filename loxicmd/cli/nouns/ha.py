"""Noun ``hastate`` (ha): HA instance states (GET/POST /config/cistate)."""

from __future__ import annotations

from typing import Any

import click

from loxicmd.api import paths
from loxicmd.cli import args
from loxicmd.cli.listing import Listing
from loxicmd.cli.options import Call, global_options, perform, settings
from loxicmd.cli.render import Column
from loxicmd.names import HA_STATES


def _peers(row: dict[str, Any]) -> list[str]:
    """Each peer as ADDRESS(state, bulk received): what sync has with it."""
    sync = row.get("sync") or {}
    return [f"{p.get('peer')}({p.get('state')}, table {p.get('bulk')})"
            for p in sync.get("peers", [])]


def _sync_state(row: dict[str, Any]) -> str:
    sync = row.get("sync")
    if not sync:
        return "off"
    return "synced" if sync.get("ready") else "syncing"


def _lag(row: dict[str, Any]) -> str:
    """The worst peer's lag now and its p99 (ms)."""
    peers = (row.get("sync") or {}).get("peers", [])
    if not peers:
        return ""
    now = max(float(p.get("lagMs") or 0) for p in peers)
    p99 = max(float(p.get("lagP99Ms") or 0) for p in peers)
    return f"{now:g}ms (p99 {p99:g}ms)"


def _synced(row: dict[str, Any]) -> str:
    """This instance's flows sent to peers / installed from them."""
    sync = row.get("sync")
    if not sync:
        return ""
    name = row.get("instance", "")
    return f"{sync.get('sent', {}).get(name, 0)}/{sync.get('received', {}).get(name, 0)}"


LISTING = Listing(
    "hastate", paths.CISTATE_ALL, "Attr",
    (Column("INSTANCE", "instance"), Column("HASTATE", "state", state=True)),
    wide=(Column("VIP", "vip"), Column("SYNC", _sync_state), Column("PEERS", _peers),
          Column("LAG", _lag), Column("SENT/RECEIVED", _synced)),
    sort_key=lambda r: str(r.get("instance", "")),
)


@click.command("hastate")
@click.argument("instance")
@click.argument("state", metavar="STATE", type=args.UpperChoice(HA_STATES))
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
    "get": LISTING.command("List HA instance states (-o wide adds the VIP and conntrack "
                           "sync: its state, the peers, the lag, flows sent/received)."),
    "set": set_hastate,
    "delete": delete_hastate,
}
