"""Manual pages in roff, generated from the click command definitions.

``loxicmd(1)``: global options, then one section per verb with a subsection per noun
(usage, aliases, help, options). ``loxilbd(8)``: the agent's options. Deterministic (no
dates), so a test can check that ``man/`` is current.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import click

GLOBAL_PARAMS = frozenset({"apiserver", "port", "protocol", "timeout", "output", "token",
                           "verbose", "help"})


def esc(text: str) -> str:
    """Escape text for roff: backslashes, dashes and leading control characters."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"(?m)^([.'])", r"\\&\1", text)


def paragraphs(text: str) -> list[str]:
    """Help text as roff: blank-line paragraphs; click's ``\\b`` blocks kept as lines."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", (text or "").strip()):
        lines = block.splitlines()
        if lines and lines[0].strip() == "\b":
            out += [".PP", ".nf", *(esc(line.strip()) for line in lines[1:]), ".fi"]
        elif block.strip():
            out += [".PP", esc(" ".join(line.strip() for line in lines))]
    return out


def _option_rows(ctx: click.Context, params: Iterable[click.Parameter]) -> list[str]:
    out: list[str] = []
    for param in params:
        record = None if isinstance(param, click.Argument) else param.get_help_record(ctx)
        if record is None:
            continue
        opts, help_text = record
        out += [".TP", "\\fB" + esc(opts) + "\\fR", esc(" ".join(help_text.split()))]
    return out


def _context(cmd: click.Command, name: str, parent: click.Context | None = None
             ) -> click.Context:
    return click.Context(cmd, info_name=name, parent=parent)


def _usage(ctx: click.Context) -> str:
    pieces = " ".join(ctx.command.collect_usage_pieces(ctx))
    return ".PP\n.B " + esc(ctx.command_path) + "\n" + esc(pieces)


def _own(params: Iterable[click.Parameter]) -> list[click.Parameter]:
    return [p for p in params if p.name not in GLOBAL_PARAMS]


def _summary(text: str) -> str:
    first = text.strip().splitlines()[0].rstrip(".") if text.strip() else ""
    return first[:1].lower() + first[1:]


def _header(name: str, section: int, version: str, title: str) -> list[str]:
    return [f'.TH {name.upper()} {section} "" "{esc(name)} {esc(version)}" "{title}"']


def loxicmd_page(version: str) -> str:
    from loxicmd.cli import nouns
    from loxicmd.cli.main import LAZY_COMMANDS, cli

    root = _context(cli, "loxicmd")
    help_lines = (cli.help or "").strip().splitlines()
    out = [*_header("loxicmd", 1, version, "User Commands"), ".SH NAME",
           "loxicmd \\- " + esc(help_lines[0].split(":", 1)[-1].strip().rstrip(".")),
           ".SH SYNOPSIS", ".B loxicmd",
           "\\fIverb\\fR \\fInoun\\fR [\\fIargs\\fR] [\\fIflags\\fR]",
           ".SH DESCRIPTION", *paragraphs("\n".join(help_lines[1:])),
           ".SH GLOBAL OPTIONS",
           ".PP", "Accepted before the verb and after the noun; the last one given wins.",
           *_option_rows(root, [p for p in cli.params if p.name in GLOBAL_PARAMS])]
    for verb in ("get", "create", "delete", "set"):
        group = cli.commands[verb]
        vctx = _context(group, verb, root)
        out += [f".SH {verb.upper()}", *paragraphs(group.help or "")]
        if _own(group.params):
            out += [_usage(vctx), *_option_rows(vctx, _own(group.params))]
        for noun in nouns.for_verb(verb):
            cmd = noun.command(verb)
            nctx = _context(cmd, noun.name, vctx)
            out += [f'.SS "{verb} {esc(noun.name)}"', _usage(nctx)]
            if noun.aliases:
                out += [".PP", "Aliases: " + esc(", ".join(noun.aliases)) + "."]
            out += paragraphs(cmd.help or "")
            out += _option_rows(nctx, _own(cmd.params))
    for name in LAZY_COMMANDS:
        cmd = cli.get_command(root, name)
        assert cmd is not None
        cctx = _context(cmd, name, root)
        out += [f".SH {name.upper()}", _usage(cctx), *paragraphs(cmd.help or ""),
                *_option_rows(cctx, _own(cmd.params))]
    out += [".SH EXIT STATUS", ".TP", "0", "done", ".TP", "1",
            "the agent refused or failed (its message on stderr)", ".TP", "2",
            "bad usage or input (which argument, which value, what is allowed)", ".TP", "3",
            "agent unreachable or timed out (the address tried on stderr)",
            ".SH ENVIRONMENT", ".TP", "LOXICMD_APISERVER, LOXICMD_PORT, LOXICMD_TOKEN",
            "Defaults of \\fB\\-s\\fR, \\fB\\-p\\fR and \\fB\\-\\-token\\fR.",
            ".SH SEE ALSO", ".BR loxilbd (8)"]
    return "\n".join(out) + "\n"


def loxilbd_page(version: str) -> str:
    from loxicmd.agent.main import cli as agent

    ctx = _context(agent, "loxilbd")
    out: list[Any] = [*_header("loxilbd", 8, version, "System Administration"),
                      ".SH NAME", "loxilbd \\- " + esc(_summary(agent.help or "")),
                      ".SH SYNOPSIS", ".B loxilbd", "[\\fIoptions\\fR]",
                      ".SH DESCRIPTION", *paragraphs(agent.help or ""),
                      ".SH OPTIONS", *_option_rows(ctx, agent.params),
                      ".SH SEE ALSO", ".BR loxicmd (1)"]
    return "\n".join(out) + "\n"
