"""The noun registry: which nouns exist, their aliases, verbs and module.

Noun modules are imported only when one of their commands runs (or for help), so start-up
cost does not grow with the number of nouns.

Adding a noun:
1. write ``loxicmd/cli/nouns/<module>.py`` with columns, API paths, argument parsing and
   ``COMMANDS: dict[str, click.Command]`` mapping each verb (``get``, ``create``, ...) to a
   click command decorated with ``options.global_options()``;
2. add one ``Noun(...)`` line to ``NOUNS`` below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import click


@dataclass(frozen=True)
class Noun:
    name: str  # canonical name, shown in help
    module: str  # module under loxicmd.cli.nouns
    aliases: tuple[str, ...]
    verbs: tuple[str, ...]
    help: str

    def command(self, verb: str) -> click.Command:
        module = importlib.import_module(f"{__name__}.{self.module}")
        commands: dict[str, click.Command] = module.COMMANDS
        return commands[verb]


NOUNS: tuple[Noun, ...] = (
    Noun("loadbalancer", "lb", ("lb", "lbs", "loadbalancers"),
         ("get", "create", "delete"), "Load-balancer rules."),
    Noun("conntrack", "ct", ("ct", "cts", "conntracks"),
         ("get",), "Connection-tracking entries."),
    Noun("endpoint", "endpoint", ("ep", "endpoints"),
         ("get", "create", "delete"), "Endpoint health probes."),
    Noun("hastate", "ha", ("ha",), ("get", "set", "delete"), "HA instance states."),
    Noun("bgpneighbor", "bgpneighbor", ("bgpnei", "bgpneigh"),
         ("get", "create", "delete"), "BGP neighbors."),
    Noun("bgpglobal", "bgpglobal", (), ("get", "create"), "BGP global settings."),
    Noun("lbversion", "lbversion", (), ("get",), "The agent's version."),
    Noun("process", "process", (), ("get",), "The agent process."),
    Noun("log-level", "loglevel", (), ("get", "set"), "The agent's log level."),
    Noun("dpstats", "dpstats", (), ("get",), "Datapath counters by reason."),
)


def find(name: str, verb: str | None = None) -> Noun | None:
    """The noun called ``name`` (canonical or alias), optionally only if it supports ``verb``."""
    for noun in NOUNS:
        if name == noun.name or name in noun.aliases:
            if verb is None or verb in noun.verbs:
                return noun
            return None
    return None


def for_verb(verb: str) -> list[Noun]:
    return [noun for noun in NOUNS if verb in noun.verbs]
