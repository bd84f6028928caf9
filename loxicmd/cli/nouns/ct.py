"""Noun ``conntrack`` (ct): columns, API path, filters, commands."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, TextIO

import click

from loxicmd.api import paths
from loxicmd.cli import args
from loxicmd.cli.complete import rule_names
from loxicmd.cli.options import global_options, settings
from loxicmd.cli.render import Column, ip_key, render, render_pages
from loxicmd.names import CONNTRACK_STATES

if TYPE_CHECKING:
    from loxicmd.api.client import Client

PAGE_SIZE = 1000
PAGE_SIZE_ENV = "LOXICMD_CT_PAGE_SIZE"  # hidden: lets the tests see several pages

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


def page_size_setting() -> int:
    """Entries asked for per request: ``$LOXICMD_CT_PAGE_SIZE`` when it is an integer in
    1..1000000 (not documented: for tests), else PAGE_SIZE."""
    try:
        size = int(os.environ.get(PAGE_SIZE_ENV, ""))
    except ValueError:
        return PAGE_SIZE
    return size if 1 <= size <= 1_000_000 else PAGE_SIZE


def pages(client: Client, query: Mapping[str, Any], limit: int | None,
          page_size: int | None = None) -> Iterator[dict[str, Any]]:
    """Fetch entries page by page (``limit``/``after``, the agent's ``next`` token) until
    the agent has no more or ``limit`` entries came; the last page is cut to ``limit``."""
    page_size = page_size or page_size_setting()
    after: str | None = None
    remaining = limit
    while True:
        size = page_size if remaining is None else min(page_size, remaining)
        body = client.get(paths.CONNTRACK_ALL, query={**query, "limit": size, "after": after}).data
        if not isinstance(body, dict):
            body = {"ctAttr": []}
        entries = body.get("ctAttr") or []
        if remaining is not None and len(entries) > remaining:
            body = {**body, "ctAttr": entries[:remaining]}
            entries = body["ctAttr"]
        yield body
        if remaining is not None:
            remaining -= len(entries)
        after = body.get("next") or None
        if after is None or not entries or remaining == 0:
            return


def show(stream: Iterator[dict[str, Any]], limit: int | None, output: str, *,
         out: TextIO | None = None, tty: bool | None = None) -> None:
    """Print the agent's pages as ``get ct`` does: one page as a whole, several streamed
    (``out``/``tty``: see render)."""
    first = next(stream)
    if first.get("next") and limit is not None and len(first["ctAttr"]) >= limit:
        del first["next"]  # not followed: the limit is reached
    if not first.get("next"):
        render(sorted_entries(first), COLUMNS, output, first, out=out, tty=tty)
    else:
        render_pages(itertools.chain([first], stream), "ctAttr", sorted_entries, COLUMNS,
                     output, out=out, tty=tty)


@click.command("conntrack")
@click.option("--servName", "serv_name", metavar="NAME", shell_complete=rule_names,
              help="Only this service's entries.")
@click.option("--ip", type=args.IP, help="Only entries with this source or destination IP.")
@click.option("--port", "ct_port", type=args.PORT,
              help="Only entries with this source or destination port (the agent port is -p).")
@click.option("--state", type=click.Choice(CONNTRACK_STATES), metavar="STATE",
              help=f"Only entries in this state: {', '.join(CONNTRACK_STATES)}.")
@click.option("--limit", type=args.int_type("limit", 1, 2**31 - 1),
              help="At most this many entries.")
@global_options(skip={"--port"})
@click.pass_context
def get_ct(ctx: click.Context, serv_name: str | None, ip: str | None, ct_port: int | None,
           state: str | None, limit: int | None) -> None:
    """List connection-tracking entries (fetched and printed page by page)."""
    s = settings(ctx)
    show(pages(s.client(), filters(serv_name, ip, ct_port, state, None), limit), limit,
         s.output)


COMMANDS: dict[str, click.Command] = {"get": get_ct}
