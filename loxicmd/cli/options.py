"""Global options (the Go tool's cobra persistent flags) and the settings they produce.

``global_options()`` adds -s/-p/--protocol/-t/-o/--token/-v to a command. The root group has
them with their defaults and environment variables; verb groups and leaf commands have them
without defaults, so ``loxicmd -o json get lb`` and ``loxicmd get lb -o json`` both work and
the value given last on the command line (the leaf's) wins.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from loxicmd.cli.args import PORT
from loxicmd.cli.render import OUTPUTS
from loxicmd.names import DEFAULT_API_HOST, DEFAULT_API_PORT
from loxicmd.secretfile import read_secret

if TYPE_CHECKING:
    from loxicmd.api.client import Client

F = TypeVar("F", bound=Callable[..., Any])

_META_KEY = "loxicmd.globals"


@dataclass(frozen=True)
class Settings:
    apiserver: str = DEFAULT_API_HOST
    port: int = DEFAULT_API_PORT
    protocol: str = "http"
    timeout: float = 10.0
    output: str = "table"
    token: str | None = None
    cacert: str | None = None
    verbose: int = 0

    def debug(self, message: str) -> None:
        """Debug line on stderr (never stdout) when -v was given."""
        if self.verbose:
            print(f"loxicmd: debug: {message}", file=sys.stderr)

    def client(self) -> Client:
        from loxicmd.api.client import Client

        return Client(
            self.apiserver,
            self.port,
            protocol=self.protocol,
            timeout=self.timeout,
            token=self.token if self.token is not None else file_token(),
            cafile=self.cacert,
            debug=self.debug if self.verbose else None,
        )


def token_path() -> Path:
    """``$LOXICMD_TOKEN_FILE``, else ``$XDG_CONFIG_HOME/loxicmd/token`` (~/.config)."""
    explicit = os.environ.get("LOXICMD_TOKEN_FILE")
    if explicit:
        return Path(explicit)
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(config) / "loxicmd" / "token"


def file_token() -> str | None:
    """The token file's content when there is one; it must be readable by its owner only."""
    path = token_path()
    if not path.exists():
        return None
    try:
        return read_secret(path).decode()
    except OSError as exc:
        raise click.BadParameter(f"'{path}': {exc.strerror}", param_hint="token file") from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="token file") from None


# name -> (param decls, click kwargs, root default, environment variable)
_GLOBALS: dict[str, tuple[tuple[str, ...], dict[str, Any], Any, str | None]] = {
    "apiserver": (
        ("-s", "--apiserver"),
        {"metavar": "HOST", "help": "Agent address."},
        DEFAULT_API_HOST,
        "LOXICMD_APISERVER",
    ),
    "port": (
        ("-p", "--port"),
        {"type": PORT, "metavar": "PORT", "help": "Agent port (1..65535)."},
        DEFAULT_API_PORT,
        "LOXICMD_PORT",
    ),
    "protocol": (
        ("--protocol",),
        {"type": click.Choice(["http", "https"]), "help": "Agent API scheme."},
        "http",
        None,
    ),
    "timeout": (
        ("-t", "--timeout"),
        {"type": click.FloatRange(0, min_open=True), "metavar": "SECONDS",
         "help": "Request timeout in seconds."},
        10.0,
        None,
    ),
    "output": (
        ("-o", "--output"),
        {"type": click.Choice(list(OUTPUTS)), "help": "Output format."},
        "table",
        None,
    ),
    "cacert": (
        ("--cacert",),
        {"type": click.Path(exists=True, dir_okay=False), "metavar": "FILE",
         "help": "With --protocol https: the CA certificate (PEM) that signed the agent's."},
        None,
        "LOXICMD_CACERT",
    ),
    "token": (
        ("--token",),
        {"metavar": "TOKEN", "help": "API token, sent as 'Authorization: Bearer <token>' "
         "(else $LOXICMD_TOKEN, else the 0600 file $LOXICMD_TOKEN_FILE or "
         "~/.config/loxicmd/token)."},
        None,
        "LOXICMD_TOKEN",
    ),
}


def _store(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        values = ctx.meta.setdefault(_META_KEY, {})
        if name == "verbose":
            values["verbose"] = values.get("verbose", 0) + (value or 0)
        elif value is not None:
            values[name] = value

    return callback


def global_options(*, root: bool = False, skip: Collection[str] = ()) -> Callable[[F], F]:
    """Decorator adding the global options to a command or group.

    ``root=True`` gives them defaults and environment variables (the top-level group only).
    ``skip`` drops option strings a command uses for itself (``get ct`` keeps ``-p`` for the
    agent port but uses ``--port`` as its own filter).
    """

    def decorate(f: F) -> F:
        # click lists options in reverse order of decoration: -v last, the others in order.
        f = click.option("-v", "--verbose", "verbose", count=True, expose_value=False,
                         callback=_store("verbose"),
                         help="Debug output on stderr (repeatable).")(f)
        specs = list(_GLOBALS.items())
        for name, (decls, kwargs, default, envvar) in reversed(specs):
            kept = tuple(d for d in decls if d not in skip)
            if not kept:
                continue
            extra: dict[str, Any] = {"default": None, "show_default": False}
            if root:
                extra = {"default": default, "show_default": default is not None,
                         "envvar": envvar, "show_envvar": envvar is not None}
            f = click.option(*kept, name, expose_value=False, callback=_store(name),
                             **kwargs, **extra)(f)
        return f

    return decorate


def settings(ctx: click.Context) -> Settings:
    """The merged global options for this invocation."""
    values = dict(ctx.meta.get(_META_KEY, {}))
    return Settings(**values)


@dataclass(frozen=True)
class Call:
    """One API request of a mutation; ``label`` prefixes its error message."""

    label: str
    method: str
    path: str
    query: dict[str, Any] | None = None
    body: Any = None


def perform(s: Settings, calls: Sequence[Call]) -> int:
    """Send the calls one after another; return the worst exit status.

    An agent error is printed (``loxicmd: <label>: agent error (HTTP 409): ...``) and the next
    call still goes; an unreachable agent raises AgentUnreachable at once (exit 3).
    With ``-o json``/``-o yaml`` one document is printed: for one call its result body, for
    several one list of the result bodies of those that succeeded, in call order (so that
    ``jq`` or a YAML loader reads the output whole).
    """
    from loxicmd.api.client import AgentRefused, AgentUnreachable
    from loxicmd.cli.render import print_result, print_results

    client = s.client()
    worst = 0
    results: list[tuple[Any, str]] = []
    for call in calls:
        try:
            resp = client.request(call.method, call.path, query=call.query, body=call.body)
        except AgentRefused as exc:
            print(f"loxicmd: {call.label}: {exc}", file=sys.stderr)
            worst = max(worst, 1)
            continue
        except AgentUnreachable:
            if len(calls) > 1:
                print_results(s.output, results)  # what was done before, then exit 3
            raise
        if len(calls) == 1:
            print_result(s.output, resp.data, resp.text)
        else:
            results.append((resp.data, resp.text))
    if len(calls) > 1:
        print_results(s.output, results)
    return worst
