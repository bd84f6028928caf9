"""The one renderer of loxicmd: rows + column spec -> table / wide / json / yaml.

Not a terminal: the Go tool's pipe table (``| A | B |``, ``|---|---|``, one row per line, no
colour) so ``cut -d'|'`` scripts work. A terminal: a rich table (rich imported only then).
``-o json`` prints the agent's body with every field kept; ``-o yaml`` the same data as YAML.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

OUTPUTS: tuple[str, ...] = ("table", "wide", "json", "yaml")

GREEN_STATES = frozenset({"est", "active", "ok", "MASTER", "Established"})
RED_STATES = frozenset({"closed", "inactive", "nok", "FAULT", "STOP", "Idle"})


@dataclass(frozen=True)
class Column:
    """A table column: header text and a dict key or a function of the row."""

    header: str
    value: str | Callable[[Any], Any]
    state: bool = False  # colour the cell as a state on a terminal
    _get: Callable[[Any], Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:  # the getter is chosen once, not per cell
        key = self.value
        object.__setattr__(self, "_get", key if callable(key) else (lambda row: row.get(key)))

    def cell(self, row: Any) -> str:
        return format_cell(self._get(row))


def format_cell(value: Any) -> str:
    kind = value.__class__
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is int:
        return str(value)
    if value is None:
        return ""
    if kind is bool:
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(format_cell(v) for v in value)
    return str(value)


def ip_key(text: Any) -> tuple[int, int, str]:
    """Numeric sort key for an address: IPv4 before IPv6, unparsable text last."""
    bare = str(text).strip("[]")
    for version, family in ((4, socket.AF_INET), (6, socket.AF_INET6)):
        try:
            return (version, int.from_bytes(socket.inet_pton(family, bare), "big"), "")
        except (OSError, ValueError):
            continue
    return (9, 0, str(text))


def table_cells(rows: Sequence[Any], columns: Sequence[Column]) -> list[list[str]]:
    return [[col.cell(row) for col in columns] for row in rows]


def column_widths(columns: Sequence[Column], body: Sequence[Sequence[str]]) -> list[int]:
    if not body:
        return [len(col.header) for col in columns]
    return [max(len(col.header), max(map(len, cells)))
            for col, cells in zip(columns, zip(*body, strict=True), strict=True)]


def pipe_lines(cells: Sequence[Sequence[str]], widths: Sequence[int]) -> list[str]:
    """``| a | b |`` lines, each cell padded to its column's width (longer ones overflow)."""
    return ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
            for line in cells]


def pipe_header(columns: Sequence[Column], widths: Sequence[int]) -> list[str]:
    return [*pipe_lines([[col.header for col in columns]], widths),
            "|" + "|".join("-" * (w + 2) for w in widths) + "|"]


def pipe_table(rows: Sequence[Any], columns: Sequence[Column]) -> str:
    """The Go tool's pipe table, without a trailing newline."""
    body = table_cells(rows, columns)
    widths = column_widths(columns, body)
    return "\n".join([*pipe_header(columns, widths), *pipe_lines(body, widths)])


def state_style(value: str) -> str | None:
    if not value or value == "-":
        return None
    if value in GREEN_STATES:
        return "green"
    if value in RED_STATES:
        return "red"
    return "yellow"


def _rich_table(rows: Sequence[Any], columns: Sequence[Column], out: TextIO, *,
                widths: Sequence[int] | None = None, header: bool = True) -> list[int]:
    """A colour table on a terminal; returns the column widths used (for following pages)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    body = table_cells(rows, columns)
    natural = column_widths(columns, body)
    widths = [max(a, b) for a, b in zip(natural, widths, strict=True)] if widths else natural
    table = Table(show_header=header, header_style="bold", show_edge=False, pad_edge=False)
    for col, width in zip(columns, widths, strict=True):
        table.add_column(col.header, no_wrap=True, min_width=width)
    for line in body:
        table.add_row(*(
            Text(text, style=(state_style(text) if col.state else None) or "")
            for col, text in zip(columns, line, strict=True)
        ))
    console = Console(file=out, highlight=False)
    # Never fold cells: a table wider than the terminal is left to the terminal to wrap.
    total = sum(widths) + 3 * len(widths) + 1
    if total > console.width:
        console = Console(file=out, highlight=False, width=total)
    console.print(table)
    return widths


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def to_yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False,
                          allow_unicode=True).rstrip("\n")


def is_terminal(out: TextIO) -> bool:
    """Whether ``out`` is a terminal (colour table) rather than a pipe or file."""
    return out.isatty()


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
    elif is_terminal(out) if tty is None else tty:
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


def print_results(output: str, results: Sequence[tuple[Any, str]], *,
                  out: TextIO | None = None) -> None:
    """Results of several mutations (parsed body, raw text): nothing unless ``-o json`` /
    ``-o yaml``, then one list of the bodies (a body that is not JSON as its text)."""
    if output in ("json", "yaml"):
        bodies = [raw if raw is not None else text for raw, text in results]
        print_result(output, bodies, out=out)


def render_pages(
    pages: Iterable[Any],
    list_key: str,
    rows_of: Callable[[Any], Sequence[Any]],
    columns: Sequence[Column],
    output: str,
    *,
    out: TextIO | None = None,
    tty: bool | None = None,
) -> None:
    """Stream a list that arrives page by page (bodies ``{list_key: [...]}``): nothing is
    held beyond one page. JSON/YAML come out as one ``{list_key: [...]}`` document; tables
    take their column widths from the first page and sort rows within each page."""
    out = out or sys.stdout
    if output in ("json", "yaml"):
        _stream_document(pages, list_key, output, out)
        return
    on_tty = is_terminal(out) if tty is None else tty
    widths: list[int] | None = None
    for page in pages:
        rows = rows_of(page)
        if on_tty:
            widths = _rich_table(rows, columns, out, widths=widths, header=widths is None)
            continue
        body = table_cells(rows, columns)
        lines = []
        if widths is None:
            widths = column_widths(columns, body)
            lines = pipe_header(columns, widths)
        lines += pipe_lines(body, widths)
        if lines:
            print("\n".join(lines), file=out, flush=True)


def _stream_document(pages: Iterable[Any], list_key: str, output: str, out: TextIO) -> None:
    """The same text as to_json/to_yaml of ``{list_key: all items}``, written per item."""
    count = 0
    for page in pages:
        items = page.get(list_key) if isinstance(page, dict) else None
        for item in items or []:
            if output == "json":
                text = json.dumps(item, indent=2, ensure_ascii=False).replace("\n", "\n    ")
                head = "{\n  " + json.dumps(list_key) + ": [\n    " if not count else ",\n    "
                out.write(head + text)
            else:
                key = to_yaml({list_key: None}).removesuffix(" null")
                out.write(("" if count else f"{key}\n") + to_yaml([item]) + "\n")
            count += 1
        out.flush()
    if not count:
        out.write((to_json if output == "json" else to_yaml)({list_key: []}) + "\n")
    elif output == "json":
        out.write("\n  ]\n}\n")
