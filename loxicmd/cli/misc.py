"""``version``, ``completion`` and ``help``: commands that never talk to the agent."""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem

from loxicmd.cli.options import global_options

SHELLS = ("bash", "zsh", "fish")
PROG = "loxicmd"


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loxicmd")
    except PackageNotFoundError:
        return "unknown"


@click.command("version")
@global_options()
def version_cmd() -> None:
    """Show loxicmd's version (the agent's: get lbversion)."""
    click.echo(f"loxicmd {package_version()}")


def completion_script(shell: str) -> str:
    from click.shell_completion import get_completion_class

    from loxicmd.cli.main import COMPLETE_VAR, cli

    cls = get_completion_class(shell)
    assert cls is not None, shell
    return cls(cli, {}, PROG, COMPLETE_VAR).source()


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
def completion_cmd(shell: str) -> None:
    """Print the completion script for SHELL.

    \b
    bash: source <(loxicmd completion bash)
    zsh:  loxicmd completion zsh > "${fpath[1]}/_loxicmd"
    fish: loxicmd completion fish > ~/.config/fish/completions/loxicmd.fish
    """
    click.echo(completion_script(shell), nl=False)


def resolve_help_path(ctx: click.Context, words: tuple[str, ...] | list[str]
                      ) -> tuple[click.Command, click.Context]:
    """The command named by ``words`` below the root (``get lb``) and a context for it
    like the one ``--help`` of that command sees (same command path and usage)."""
    command_ctx = ctx.find_root()
    command = command_ctx.command
    for word in words:
        if not isinstance(command, click.Group):
            raise click.UsageError(f"'{command_ctx.command_path}' has no sub-command "
                                   f"'{word}'", ctx)
        sub = command.get_command(command_ctx, word)
        if sub is None:
            known = ", ".join(command.list_commands(command_ctx))
            raise click.UsageError(f"unknown command '{word}' for "
                                   f"'{command_ctx.command_path}'; known: {known}", ctx)
        # resilient: no required argument or option is asked for, nothing is run
        command_ctx = sub.make_context(sub.name, [], parent=command_ctx,
                                       resilient_parsing=True)
        command = sub
    return command, command_ctx


def _complete_help_words(ctx: click.Context, param: click.Parameter, incomplete: str
                         ) -> list[CompletionItem]:
    try:
        command, command_ctx = resolve_help_path(ctx, ctx.params.get("words") or ())
    except click.UsageError:
        return []
    if not isinstance(command, click.Group):
        return []
    return [CompletionItem(name) for name in command.list_commands(command_ctx)
            if name.startswith(incomplete)]


@click.command("help")
@click.argument("words", nargs=-1, metavar="[VERB [NOUN]]",
                shell_complete=_complete_help_words)
@click.pass_context
def help_cmd(ctx: click.Context, words: tuple[str, ...]) -> None:
    """Show the help of loxicmd or of a command: 'loxicmd help get lb' prints what
    'loxicmd get lb --help' prints."""
    command, command_ctx = resolve_help_path(ctx, words)
    click.echo(command.get_help(command_ctx))
