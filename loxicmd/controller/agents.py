"""Every LB node's agent, kept holding the rules the Services ask for.

A pass reads the agent's rules, posts what is missing or different (the agent updates a
rule in place; 409 means it already was so) and deletes the rules this controller made
that no Service wants any more. Only rules with this controller's names and ``managed``
are ever deleted, and a VIP, port and protocol held by someone else's rule is refused,
not taken over. A pass is whole or not at all per agent: an agent that cannot be reached
or refuses is named, and the next pass (the periodic resync, or the next change) tries
again; an agent that restarted empty is filled again that way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from loxicmd.api import paths
from loxicmd.api.client import AgentError, AgentRefused, Client
from loxicmd.names import RULE_UNCHANGED

from .service import differs, owned_name, rule_identity

log = logging.getLogger("loxilb-controller.agents")


@dataclass(frozen=True)
class Failure:
    agent: str
    rule: str  # the rule's name ("" when the whole agent failed)
    message: str


def client_for(url: str, token: str | None, timeout: float, cafile: str | None = None
               ) -> Client:
    """An agent's client from a URL as kube-loxilb's ``loxiURL`` gives it."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an agent URL; allowed: http[s]://HOST[:PORT]")
    return Client(parts.hostname, parts.port or 11111, protocol=parts.scheme, token=token,
                  timeout=timeout, cafile=cafile)


class Agents:
    def __init__(self, urls: Iterable[str], token: str | None = None,
                 timeout: float = 5.0, cafile: str | None = None) -> None:
        self.clients = [client_for(u, token, timeout, cafile) for u in urls]

    def apply(self, desired: list[dict[str, Any]], names: set[str] | None,
              spare: frozenset[str] | set[str] = frozenset()) -> list[Failure]:
        """Make every agent hold `desired` among this controller's rules named in `names`
        (None: every rule of this controller); what is not desired is deleted, but rules
        named in `spare`."""
        failures: list[Failure] = []
        for client in self.clients:
            try:
                failures += self._apply(client, desired, names, spare)
            except AgentError as exc:
                failures.append(Failure(client.address, "", str(exc)))
        return failures

    def _apply(self, client: Client, desired: list[dict[str, Any]], names: set[str] | None,
               spare: frozenset[str] | set[str]) -> list[Failure]:
        shown = {rule_identity(e): e for e in
                 (client.get(paths.LB_ALL).data or {}).get("lbAttr") or []}
        failures: list[Failure] = []
        wanted = {rule_identity(e): e for e in desired}
        for identity, want in wanted.items():
            name = want["serviceArguments"]["name"]
            have = shown.get(identity)
            if have is not None:
                have_sa = have.get("serviceArguments") or {}
                if have_sa.get("name") != name:  # an operator's, or another Service's
                    failures.append(Failure(client.address, name, (
                        f"{identity[0]}:{identity[1]}/{identity[2]} is held by rule "
                        f"{have_sa.get('name')!r}")))
                    continue
                if not differs(want, have):
                    continue
            try:
                client.post(paths.LB, want)
                log.info("%s: %s %s (%s:%d/%s)", client.address,
                         "updated" if have else "created", name, *identity)
            except AgentRefused as exc:
                if not (exc.status == 409 and RULE_UNCHANGED in exc.message):  # it is so
                    failures.append(Failure(client.address, name, exc.message))
        for identity, have in shown.items():
            sa = have.get("serviceArguments") or {}
            name = str(sa.get("name", ""))
            if identity in wanted or not (owned_name(name) and sa.get("managed")):
                continue
            if (names is not None and name not in names) or name in spare:
                continue
            try:
                client.delete(paths.fill(paths.LB_RULE, ip=identity[0], port=identity[1],
                                         proto=identity[2]),
                              query={"block": sa.get("block") or None})
                log.info("%s: deleted %s (%s:%d/%s)", client.address, name, *identity)
            except AgentRefused as exc:
                if exc.status != 404:  # 404: already gone
                    failures.append(Failure(client.address, name, exc.message))
        return failures
