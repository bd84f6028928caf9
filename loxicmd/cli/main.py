"""loxicmd entry point: ``loxicmd <verb> <noun> [args] [flags]``.

Verbs are click groups whose sub-commands (nouns, with aliases) come from the registry in
``loxicmd.cli.nouns`` and are imported only when used. ``RootGroup.main`` maps every failure
to the exit statuses of cli.md: 1 agent error, 2 bad usage/input, 3 agent unreachable.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from loxicmd.cli import nouns
from loxicmd.cli.options import global_options

EXIT_OK = 0
EXIT_AGENT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"],
                                    "max_content_width": 100}


class VerbGroup(click.Group):
    """A verb (get, create, delete, ...): its commands are the nouns supporting it."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [noun.name for noun in nouns.for_verb(self.name or "")]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        noun = nouns.find(cmd_name, self.name)
        return noun.command(self.name or "") if noun else None

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0]
        cmd = self.get_command(ctx, name)
        if cmd is None and not ctx.resilient_parsing:
            known = "; ".join(
                f"{n.name} ({', '.join(n.aliases)})" if n.aliases else n.name
                for n in nouns.for_verb(self.name or "")
            )
            raise click.UsageError(f"unknown noun '{name}' for '{self.name}'; known: {known}",
                                   ctx)
        return (cmd.name if cmd else name), cmd, args[1:]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # From the registry, so that help does not import every noun module.
        rows = []
        for noun in nouns.for_verb(self.name or ""):
            aliases = f" (aliases: {', '.join(noun.aliases)})" if noun.aliases else ""
            rows.append((noun.name, noun.help + aliases))
        if rows:
            with formatter.section("Nouns"):
                formatter.write_dl(rows)


def _lower_first(text: str) -> str:
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        return text[0].lower() + text[1:]
    return text


def _param_hint(exc: click.BadParameter) -> str:
    if isinstance(exc.param_hint, str):
        return exc.param_hint
    if exc.param_hint is not None:
        return " / ".join(exc.param_hint)
    param = exc.param
    if isinstance(param, click.Option):
        return max(param.opts, key=len)
    if param is not None:
        return param.human_readable_name
    return "argument"


def _missing(exc: click.MissingParameter) -> str:
    """``missing EXTERNAL-IP; allowed: ...``: click's own text says only that it is
    missing, and BadParameter's ``message`` is empty for it."""
    text = f"missing {_param_hint(exc)}"
    param_type = exc.param.type if exc.param is not None else None
    allowed = getattr(param_type, "allowed", "")
    if isinstance(param_type, click.Choice):
        allowed = ", ".join(map(str, param_type.choices))
    return f"{text}; allowed: {allowed}" if allowed else text


def _fail(message: str, code: int) -> int:
    click.echo(f"loxicmd: {message}", err=True)
    return code


# Top-level commands other than the verb groups: module, attribute, help (for --help
# without importing them).
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "save": ("loxicmd.cli.saveapply", "save_cmd", "Save the agent's configuration as files."),
    "apply": ("loxicmd.cli.saveapply", "apply_cmd", "Create or update objects from files."),
    "version": ("loxicmd.cli.misc", "version_cmd", "Show loxicmd's version."),
    "completion": ("loxicmd.cli.misc", "completion_cmd",
                   "Print a shell completion script (bash, zsh, fish)."),
    "help": ("loxicmd.cli.misc", "help_cmd",
             "Show the help of loxicmd or of a command (as --help does)."),
}

COMPLETE_VAR = "_LOXICMD_COMPLETE"


class RootGroup(click.Group):
    """The top-level group; its ``main`` maps exceptions to exit statuses and it loads the
    non-verb commands (LAZY_COMMANDS) only when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*self.commands, *LAZY_COMMANDS]  # definition order: get first

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            import importlib

            module, attr, _ = LAZY_COMMANDS[cmd_name]
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, cmd.get_short_help_str(limit=80)) for name, cmd in self.commands.items()]
        rows += [(name, help_text) for name, (_, _, help_text) in LAZY_COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> int:
        if os.environ.get(complete_var or COMPLETE_VAR):
            # Completing (the shell called us): our completion classes, only then.
            from loxicmd.cli.complete import register_completion_classes

            register_completion_classes()
        code = self._run(args, prog_name or "loxicmd", complete_var, **extra)
        if standalone_mode:
            sys.exit(code)
        return code

    def _run(self, args: Sequence[str] | None, prog_name: str, complete_var: str | None,
             **extra: Any) -> int:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except BrokenPipeError:
            # The reader went away (``| head``): quiet, as the shell's own tools are.
            sys.stderr.close()
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.format_message(), err=True)
            return EXIT_USAGE
        except click.MissingParameter as exc:
            code = _fail(_missing(exc), EXIT_USAGE)
            if exc.ctx is not None:
                click.echo(f"Try '{exc.ctx.command_path} --help' for help.", err=True)
            return code
        except click.BadParameter as exc:
            return _fail(f"invalid value for {_param_hint(exc)}: {exc.message}", EXIT_USAGE)
        except click.UsageError as exc:
            code = _fail(_lower_first(exc.format_message()), EXIT_USAGE)
            if exc.ctx is not None:
                click.echo(f"Try '{exc.ctx.command_path} --help' for help.", err=True)
            return code
        except click.ClickException as exc:
            return _fail(exc.format_message(), exc.exit_code)
        except click.Abort as exc:
            if isinstance(exc.__cause__, KeyboardInterrupt):
                return 130
            return _fail("aborted", EXIT_AGENT_ERROR)
        except Exception as exc:
            # The client module is imported only by commands that talk to the agent; if it
            # was never imported, none of its errors can have been raised.
            client = sys.modules.get("loxicmd.api.client")
            if client is not None and isinstance(exc, client.AgentUnreachable):
                return _fail(str(exc), EXIT_UNREACHABLE)
            if client is not None and isinstance(exc, client.AgentRefused):
                return _fail(str(exc), EXIT_AGENT_ERROR)
            raise
        return rv if isinstance(rv, int) else EXIT_OK


@click.group(cls=RootGroup, context_settings=CONTEXT_SETTINGS)
@global_options(root=True)
def cli() -> None:
    """loxicmd: command-line client of the loxilbd load-balancer agent.

    \b
    loxicmd <verb> <noun> [args] [flags]
    Global options are accepted before the verb and after the noun.
    Exit status: 0 done, 1 the agent refused or failed, 2 bad usage or input,
    3 agent unreachable or timed out.
    """


def _verb(name: str, help_text: str) -> VerbGroup:
    @click.group(name, cls=VerbGroup, help=help_text, context_settings=CONTEXT_SETTINGS)
    @global_options()
    def group() -> None:
        pass

    cli.add_command(group)
    return group


get = _verb("get", "Show objects (table, -o wide, -o json, -o yaml).")
create = _verb("create", "Create objects.")


@click.group("delete", cls=VerbGroup, invoke_without_command=True,
             context_settings=CONTEXT_SETTINGS)
@click.option("-f", "--file", "file_", metavar="FILE",
              help="Delete the objects of this YAML file (as given to apply -f), all or none.")
@global_options()
@click.pass_context
def delete(ctx: click.Context, file_: str | None) -> None:
    """Delete objects: a noun with its arguments, or -f FILE."""
    if file_ is not None and ctx.invoked_subcommand is not None:
        raise click.UsageError("give a noun or -f FILE, not both", ctx)
    if ctx.invoked_subcommand is None:
        if file_ is None:
            raise click.UsageError("missing noun (or -f FILE)", ctx)
        from loxicmd.cli.options import settings
        from loxicmd.cli.saveapply import delete_file

        ctx.exit(delete_file(settings(ctx), file_))


cli.add_command(delete)
set_ = _verb("set", "Change agent settings (hastate, log-level).")


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="loxicmd")


if __name__ == "__main__":
    main()
