"""Noun ``conntrack`` (ct): columns, API path, filters, commands."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from loxicmd.cli import args
from loxicmd.cli.options import global_options, settings
from loxicmd.cli.render import Column, ip_key, render

PATH_ALL = "/config/conntrack/all"

COLUMNS: tuple[Column, ...] = (
    Column("SERVICE NAME", "servName"),
    Column("DESTIP", "destinationIP"),
    Column("SRCIP", "sourceIP"),
    Column("DPORT", "destinationPort"),
    Column("SPORT", "sourcePort"),
    Column("PROTO", "protocol"),
    Column("IDENT", "ident"),
    Column("STATE", "conntrackState", state=True),
    Column("ACT", "conntrackAct"),
    Column("PACKETS", "packets"),
    Column("BYTES", "bytes"),
)


def entry_key(ct: Mapping[str, Any]) -> tuple[Any, ...]:
    def num(key: str) -> int:
        value = ct.get(key)
        return value if isinstance(value, int) else 0

    return (ip_key(ct.get("destinationIP", "")), num("destinationPort"),
            ip_key(ct.get("sourceIP", "")), num("sourcePort"), str(ct.get("protocol", "")))


def sorted_entries(body: Any) -> list[Mapping[str, Any]]:
    entries = body.get("ctAttr") if isinstance(body, dict) else None
    return sorted((e for e in entries or [] if isinstance(e, dict)), key=entry_key)


def filters(serv_name: str | None, ip: str | None, port: int | None, state: str | None,
            limit: int | None) -> dict[str, Any]:
    """Query parameters of GET /config/conntrack/all (only those given)."""
    query = {"servName": serv_name, "ip": ip, "port": port, "state": state, "limit": limit}
    return {k: v for k, v in query.items() if v is not None}


@click.command("conntrack")
@click.option("--servName", "serv_name", metavar="NAME", help="Only this service's entries.")
@click.option("--ip", type=args.IP, help="Only entries with this source or destination IP.")
@click.option("--port", "ct_port", type=args.PORT,
              help="Only entries with this source or destination port (the agent port is -p).")
@click.option("--state", help="Only entries in this state (est, closed, udp-est, ...).")
@click.option("--limit", type=args.int_type("limit", 1, 2**31 - 1),
              help="At most this many entries.")
@global_options(skip={"--port"})
@click.pass_context
def get_ct(ctx: click.Context, serv_name: str | None, ip: str | None, ct_port: int | None,
           state: str | None, limit: int | None) -> None:
    """List connection-tracking entries."""
    s = settings(ctx)
    resp = s.client().get(PATH_ALL, query=filters(serv_name, ip, ct_port, state, limit))
    render(sorted_entries(resp.data), COLUMNS, s.output, resp.data)


COMMANDS: dict[str, click.Command] = {"get": get_ct}
