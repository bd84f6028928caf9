"""Live shell completion: existing rules' addresses and names and endpoint probes' hosts and
names, read from the agent.

Asked on every TAB, so it must be quick and quiet: a short timeout, and any failure (agent
down, refused, odd answer) simply completes nothing.

Also the ``--opt=value`` form. bash splits ``--mode=on`` into the words ``--mode``, ``=``,
``on`` (``=`` is in its COMP_WORDBREAKS), which click reads as ``--mode`` given the value
``=``: ``BashComplete`` joins them back, and answers values alone (readline replaces what
follows the ``=``). zsh and fish replace (or match) the whole word, so ``ZshComplete`` and
``FishComplete`` answer ``--mode=onearm``, where click answers ``onearm``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from click.shell_completion import BashComplete as ClickBashComplete
from click.shell_completion import CompletionItem, add_completion_class
from click.shell_completion import FishComplete as ClickFishComplete
from click.shell_completion import ZshComplete as ClickZshComplete

from loxicmd.api import paths
from loxicmd.cli.options import settings

TIMEOUT_S = 0.5


def _listed(ctx: click.Context, path: str, list_key: str) -> list[dict[str, Any]]:
    from dataclasses import replace

    s = replace(settings(ctx), timeout=TIMEOUT_S, verbose=0)
    try:
        body = s.client().get(path).data
    except Exception:  # completion must never fail or print
        return []
    objects = body.get(list_key) if isinstance(body, dict) else None
    return [o for o in objects or [] if isinstance(o, dict)]


Completer = Callable[[click.Context, click.Parameter, str], list[CompletionItem]]


def _completer(path: str, list_key: str, value: Callable[[dict[str, Any]], Any],
               keep: Callable[[dict[str, Any]], bool] = lambda _: True) -> Completer:
    """Completes with `value` of each object the agent lists at `path` (those `keep`s)."""
    def complete(ctx: click.Context, param: click.Parameter, incomplete: str
                 ) -> list[CompletionItem]:
        values = {str(value(o) or "") for o in _listed(ctx, path, list_key) if keep(o)}
        return [CompletionItem(v) for v in sorted(values) if v and v.startswith(incomplete)]

    return complete


def _service(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda rule: (rule.get("serviceArguments") or {}).get(key)


def _own_probe(probe: dict[str, Any]) -> bool:
    """Probes made for monitored rules cannot be deleted on their own: not offered."""
    return not probe.get("ruleProbe")


rule_ips = _completer(paths.LB_ALL, "lbAttr", _service("externalIP"))
rule_names = _completer(paths.LB_ALL, "lbAttr", _service("name"))
endpoint_ips = _completer(paths.ENDPOINT_ALL, "Attr", lambda p: p.get("hostName"), _own_probe)
endpoint_names = _completer(paths.ENDPOINT_ALL, "Attr", lambda p: p.get("name"), _own_probe)


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
