"""``save``, ``apply`` and ``delete -f``: the agent's configuration to and from files.

``save`` writes the Go tool's files (``lbconfig.txt``, ``EPconfig.txt``: the agent's list
bodies with counters and states left out) atomically, keeping the previous file as
``.bk``. ``apply -c DIR`` replays them; ``apply -f``/``delete -f`` take YAML documents.
Input is checked whole before anything is sent (exit 2 naming file, document and field).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from loxicmd.api.wire import InvalidInput
from loxicmd.cli import manifest
from loxicmd.cli.options import Settings, global_options, settings

DEFAULT_DIR = "/etc/loxilb/"


def _items(load: object, *args: object, **kw: object) -> list[manifest.Item]:
    try:
        return load(*args, **kw)  # type: ignore[operator,no-any-return]
    except manifest.ManifestError as exc:
        for problem in exc.problems:
            click.echo(f"loxicmd: {problem}", err=True)
        click.echo("loxicmd: rejected whole; nothing was changed", err=True)
        raise click.exceptions.Exit(2) from None


def delete_file(s: Settings, path: str) -> int:
    """``delete -f FILE``: delete every object of the file, all or nothing."""
    from loxicmd.cli import transaction

    return transaction.run(s, _items(manifest.read_documents, path, deleting=True),
                           deleting=True)


@click.command("apply")
@click.option("-f", "--file", "file_", metavar="FILE",
              help="YAML file of objects (apiVersion, kind, metadata, spec).")
@click.option("-c", "--config-path", "config_dir", metavar="DIR",
              help=f"Directory of saved files ({manifest.LB_FILE}, {manifest.EP_FILE}).")
@global_options()
@click.pass_context
def apply_cmd(ctx: click.Context, file_: str | None, config_dir: str | None) -> None:
    """Create or update the objects of a file, all or nothing."""
    from loxicmd.cli import transaction

    if (file_ is None) == (config_dir is None):
        raise click.UsageError("give one of -f FILE or -c DIR", ctx)
    items = (_items(manifest.read_documents, file_) if file_ is not None
             else _items(manifest.read_saved, config_dir))
    ctx.exit(transaction.run(settings(ctx), items))


def _write(path: Path, data: object) -> None:
    """Write-then-rename; the previous file is kept as <name>.bk."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    if path.exists():
        os.replace(path, path.with_name(path.name + ".bk"))
    os.replace(tmp, path)


@click.command("save")
@click.option("-a", "--all", "all_", is_flag=True, help="Save everything below.")
@click.option("-l", "--lb", is_flag=True, help=f"Load-balancer rules ({manifest.LB_FILE}).")
@click.option("-e", "--endpoint", is_flag=True,
              help=f"Endpoint health probes ({manifest.EP_FILE}).")
@click.option("-c", "--config-path", "config_dir", default=DEFAULT_DIR, show_default=True,
              metavar="DIR", help="Directory to write to.")
@global_options()
@click.pass_context
def save_cmd(ctx: click.Context, all_: bool, lb: bool, endpoint: bool, config_dir: str) -> None:
    """Save the agent's configuration as files (the Go tool's names and JSON shapes)."""
    from loxicmd.api.client import AgentRefused

    if not (all_ or lb or endpoint):
        raise click.UsageError("give --all, --lb or --endpoint", ctx)
    directory = Path(config_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(f"'{config_dir}': {exc.strerror}",
                                 param_hint="--config-path") from None
    s = settings(ctx)
    client = s.client()
    wanted = [(kind, name) for kind, name, on in (
        ("endpoint", manifest.EP_FILE, all_ or endpoint),
        ("loadbalancer", manifest.LB_FILE, all_ or lb)) if on]
    status = 0
    for kind_name, filename in wanted:
        kind = manifest.kinds()[kind_name]
        try:
            body = client.get(kind.list_path).data
        except AgentRefused as exc:
            if all_ and exc.status in (404, 405):
                click.echo(f"loxicmd: the agent has no {kind.name} API; {filename} not "
                           "written", err=True)
                continue
            click.echo(f"loxicmd: save {kind.name}: {exc}", err=True)
            status = 1
            continue
        status = max(status, save_objects(kind, body, directory / filename))
    ctx.exit(status)


def save_objects(kind: manifest.Kind, body: Any, path: Path) -> int:
    """Write the objects of the agent's list ``body`` to ``path`` as ``save`` does (0), or
    write nothing (1) when one has a field this loxicmd does not know (it could not post
    it back)."""
    objects = (body or {}).get(kind.list_key or "") or []
    # Probes the agent made for monitored rules come back with their rules: saved as
    # endpoint configurations they would outlive the rules.
    objects = [o for o in objects if not (isinstance(o, dict) and o.get("ruleProbe"))]
    try:
        saved = [kind.check(obj, f"{kind.list_key}[{i}]") for i, obj in enumerate(objects)]
    except InvalidInput as exc:
        click.echo(f"loxicmd: save {kind.name}: the agent's {exc}; {path.name} not written",
                   err=True)
        return 1
    try:
        _write(path, {kind.list_key: saved})
    except OSError as exc:
        raise click.BadParameter(f"'{path}': {exc.strerror}",
                                 param_hint="--config-path") from None
    click.echo(f"{kind.name} configuration saved in {path}")
    return 0
