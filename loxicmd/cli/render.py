"""The one renderer of loxicmd: rows + column spec -> table / wide / json / yaml.

Not a terminal: the Go tool's pipe table (``| A | B |``, ``|---|---|``, one row per line, no
colour) so ``cut -d'|'`` scripts work. A terminal: a rich table (rich imported only then).
``-o json`` prints the agent's body with every field kept; ``-o yaml`` the same data as YAML.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

OUTPUTS: tuple[str, ...] = ("table", "wide", "json", "yaml")

GREEN_STATES = frozenset({"est", "active", "ok"})
RED_STATES = frozenset({"closed", "inactive", "nok"})


@dataclass(frozen=True)
class Column:
    """A table column: header text and a dict key or a function of the row."""

    header: str
    value: str | Callable[[Any], Any]
    state: bool = False  # colour the cell as a state on a terminal

    def cell(self, row: Any) -> str:
        raw = self.value(row) if callable(self.value) else row.get(self.value)
        return format_cell(raw)


def format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(format_cell(v) for v in value)
    return str(value)


def ip_key(text: Any) -> tuple[int, int, str]:
    """Numeric sort key for an address: IPv4 before IPv6, unparsable text last."""
    try:
        addr = ipaddress.ip_address(str(text).strip("[]"))
    except ValueError:
        return (9, 0, str(text))
    return (addr.version, int(addr), "")


def table_cells(rows: Sequence[Any], columns: Sequence[Column]) -> list[list[str]]:
    return [[col.cell(row) for col in columns] for row in rows]


def pipe_table(rows: Sequence[Any], columns: Sequence[Column]) -> str:
    """The Go tool's pipe table, without a trailing newline."""
    headers = [col.header for col in columns]
    body = table_cells(rows, columns)
    widths = [len(h) for h in headers]
    for line in body:
        widths = [max(w, len(c)) for w, c in zip(widths, line, strict=True)]

    def fmt(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    lines = [fmt(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines.extend(fmt(line) for line in body)
    return "\n".join(lines)


def state_style(value: str) -> str | None:
    if not value or value == "-":
        return None
    if value in GREEN_STATES:
        return "green"
    if value in RED_STATES:
        return "red"
    return "yellow"


def _rich_table(rows: Sequence[Any], columns: Sequence[Column], out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    body = table_cells(rows, columns)
    table = Table(show_header=True, header_style="bold", show_edge=False, pad_edge=False)
    widths = [len(col.header) for col in columns]
    for line in body:
        widths = [max(w, len(c)) for w, c in zip(widths, line, strict=True)]
    for col in columns:
        table.add_column(col.header, no_wrap=True)
    for line in body:
        table.add_row(*(
            Text(text, style=(state_style(text) if col.state else None) or "")
            for col, text in zip(columns, line, strict=True)
        ))
    console = Console(file=out, highlight=False)
    # Never fold cells: a table wider than the terminal is left to the terminal to wrap.
    natural = sum(widths) + 3 * len(widths) + 1
    if natural > console.width:
        console = Console(file=out, highlight=False, width=natural)
    console.print(table)


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def to_yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False,
                          allow_unicode=True).rstrip("\n")


def render(
    rows: Sequence[Any],
    columns: Sequence[Column],
    output: str,
    raw: Any,
    *,
    out: TextIO | None = None,
    tty: bool | None = None,
) -> None:
    """Print rows as a table (``table``/``wide``: the caller picks rows and columns for wide),
    or ``raw`` (the agent's parsed body, every field kept) as JSON/YAML."""
    out = out or sys.stdout
    if output == "json":
        print(to_json(raw), file=out)
    elif output == "yaml":
        print(to_yaml(raw), file=out)
    elif (out.isatty() if tty is None else tty):
        _rich_table(rows, columns, out)
    else:
        print(pipe_table(rows, columns), file=out)


def print_result(output: str, raw: Any, text: str = "", *, out: TextIO | None = None) -> None:
    """Result of a mutation: nothing unless ``-o json`` / ``-o yaml``."""
    out = out or sys.stdout
    if output == "json":
        print(to_json(raw) if raw is not None else text, file=out)
    elif output == "yaml":
        print(to_yaml(raw) if raw is not None else text, file=out)
