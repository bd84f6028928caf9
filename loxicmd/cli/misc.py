"""``version`` and ``completion``: commands that never talk to the agent."""

from __future__ import annotations

import click

from loxicmd.cli.options import global_options

SHELLS = ("bash", "zsh", "fish")
PROG = "loxicmd"
COMPLETE_VAR = "_LOXICMD_COMPLETE"


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

    from loxicmd.cli.main import cli

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
