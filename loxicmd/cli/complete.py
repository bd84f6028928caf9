"""Live shell completion: existing rule addresses and names, read from the agent.

Asked on every TAB, so it must be quick and quiet: a short timeout, and any failure (agent
down, refused, odd answer) simply completes nothing.

Also the ``--opt=value`` form. bash splits ``--mode=on`` into the words ``--mode``, ``=``,
``on`` (``=`` is in its COMP_WORDBREAKS), which click reads as ``--mode`` given the value
``=``: ``BashComplete`` joins them back, and answers values alone (readline replaces what
follows the ``=``). zsh and fish replace (or match) the whole word, so ``ZshComplete`` and
``FishComplete`` answer ``--mode=onearm``, where click answers ``onearm``.
"""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import BashComplete as ClickBashComplete
from click.shell_completion import CompletionItem, add_completion_class
from click.shell_completion import FishComplete as ClickFishComplete
from click.shell_completion import ZshComplete as ClickZshComplete

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


def join_option_values(words: list[str]) -> list[str]:
    """``["--mode", "=", "on"]`` -> ``["--mode=on"]`` (bash's split at ``=`` undone); a
    trailing ``=`` (the cursor right after it) gives ``"--mode="``."""
    joined: list[str] = []
    at = 0
    while at < len(words):
        word = words[at]
        if word == "=" and joined and joined[-1].startswith("-") and "=" not in joined[-1]:
            joined[-1] += "="
            if at + 1 < len(words):
                joined[-1] += words[at + 1]
                at += 1
        else:
            joined.append(word)
        at += 1
    return joined


class BashComplete(ClickBashComplete):
    """click's bash completion, with ``--opt=value`` words joined back (see above)."""

    def get_completion_args(self) -> tuple[list[str], str]:
        args, incomplete = super().get_completion_args()
        words = join_option_values([*args, incomplete])
        return words[:-1], words[-1]


def option_prefix(incomplete: str) -> str:
    """``--mode=`` of ``--mode=on`` (an option given its value in the same word), or ""."""
    name, sep, _ = incomplete.partition("=")
    return f"{name}=" if sep and name.startswith("-") else ""


def _whole_words(items: list[CompletionItem], incomplete: str) -> list[CompletionItem]:
    """Values of ``--opt=value`` as whole words (``--mode=onearm``); paths are left to
    the shell, which completes them itself."""
    prefix = option_prefix(incomplete)
    if not prefix:
        return items
    return [CompletionItem(prefix + str(item.value), type=item.type, help=item.help)
            if item.type == "plain" else item for item in items]


class ZshComplete(ClickZshComplete):
    def get_completions(self, args: list[str], incomplete: str) -> list[CompletionItem]:
        return _whole_words(super().get_completions(args, incomplete), incomplete)


class FishComplete(ClickFishComplete):
    def get_completions(self, args: list[str], incomplete: str) -> list[CompletionItem]:
        return _whole_words(super().get_completions(args, incomplete), incomplete)


def register_completion_classes() -> None:
    """Use the classes above for their shells (the scripts they print are click's,
    unchanged: only the answers differ)."""
    for cls in (BashComplete, ZshComplete, FishComplete):
        add_completion_class(cls)
