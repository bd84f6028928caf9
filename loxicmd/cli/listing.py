"""``get <noun>`` for nouns that show one API list as it is: the path, the list key, columns.

``Listing.command()`` makes the click command; ``-o wide`` appends the wide columns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import click

from loxicmd.cli.options import global_options, settings
from loxicmd.cli.render import Column, render


@dataclass(frozen=True)
class Listing:
    name: str  # the noun's canonical name (the click command's name)
    path: str
    key: str | None  # the list in the body; None: the body is a single object (one row)
    columns: tuple[Column, ...]
    wide: tuple[Column, ...] = ()
    sort_key: Callable[[Any], Any] | None = None

    def rows(self, body: Any) -> list[Any]:
        if self.key is None:
            items = [body] if isinstance(body, dict) else []
        else:
            items = body.get(self.key) if isinstance(body, dict) else None
            items = [r for r in items or [] if isinstance(r, dict)]
        return sorted(items, key=self.sort_key) if self.sort_key else items

    def columns_for(self, output: str) -> Sequence[Column]:
        return (*self.columns, *self.wide) if output == "wide" else self.columns

    def show(self, body: Any, output: str, *, out: TextIO | None = None,
             tty: bool | None = None) -> None:
        """Print the agent's answer ``body`` as ``get`` does (``out``/``tty``: see render)."""
        render(self.rows(body), self.columns_for(output), output, body, out=out, tty=tty)

    def command(self, help_text: str) -> click.Command:
        @click.command(self.name, help=help_text)
        @global_options()
        @click.pass_context
        def get(ctx: click.Context) -> None:
            s = settings(ctx)
            self.show(s.client().get(self.path).data, s.output)

        return get
