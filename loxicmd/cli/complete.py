"""Live shell completion: existing rule addresses and names, read from the agent.

Asked on every TAB, so it must be quick and quiet: a short timeout, and any failure (agent
down, refused, odd answer) simply completes nothing.
"""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import CompletionItem

from loxicmd.cli.options import settings

TIMEOUT_S = 0.5


def _rules(ctx: click.Context) -> list[dict[str, Any]]:
    from dataclasses import replace

    from loxicmd.cli.nouns.lb import PATH_ALL

    s = replace(settings(ctx), timeout=TIMEOUT_S, verbose=0)
    try:
        body = s.client().get(PATH_ALL).data
    except Exception:  # completion must never fail or print
        return []
    rules = body.get("lbAttr") if isinstance(body, dict) else None
    return [r for r in rules or [] if isinstance(r, dict)]


def _complete(ctx: click.Context, key: str, incomplete: str) -> list[CompletionItem]:
    values = {str((r.get("serviceArguments") or {}).get(key) or "") for r in _rules(ctx)}
    return [CompletionItem(v) for v in sorted(values) if v and v.startswith(incomplete)]


def rule_ips(ctx: click.Context, param: click.Parameter, incomplete: str
             ) -> list[CompletionItem]:
    return _complete(ctx, "externalIP", incomplete)


def rule_names(ctx: click.Context, param: click.Parameter, incomplete: str
               ) -> list[CompletionItem]:
    return _complete(ctx, "name", incomplete)
