"""Golden outputs: every noun the agent serves, in every output mode, rendered from the
agent's own answers captured in tests/golden/api/ (see tests/golden/capture.py).

The captures are fed straight to each noun's ``show`` (what ``get <noun>`` prints the
agent's answer with): data in, text out, no agent and no HTTP. That the captures still
have the live agent's shape is checked by tests/cli/test_cli_live.py against the real agent.
``UPDATE_GOLDEN=1`` rewrites tests/golden/out/ (review the diff).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from testpaths import GOLDEN

from loxicmd.cli.nouns import ct, dpstats, endpoint, ha, lb, lbversion, loglevel, process

UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

Show = Callable[..., None]  # (body, output, *, out, tty)


def _ct_show(body: Any, output: str, **kw: Any) -> None:
    ct.show(iter([body]), None, output, **kw)  # the agent's one page


# noun as typed -> (capture, how `get <noun>` shows the agent's answer)
NOUNS: dict[str, tuple[str, Show]] = {
    "lb": ("lb", lb.show),
    "ct": ("ct", _ct_show),
    "ha": ("ha", ha.LISTING.show),
    "log-level": ("params", loglevel.LISTING.show),
    "process": ("process", process.LISTING.show),
    "lbversion": ("version", lbversion.LISTING.show),
    "dpstats": ("dpstats", dpstats.LISTING.show),
    "ep": ("ep", endpoint.LISTING.show),
}
MODES = ("table", "wide", "json", "yaml", "tty")


def captured(name: str) -> Any:
    return json.loads((GOLDEN / "api" / f"{name}.json").read_text())


def shown(noun: str, output: str, *, tty: bool = False,
          monkeypatch: pytest.MonkeyPatch | None = None) -> str:
    """What ``get <noun> -o <output>`` prints for the captured answer (on a colour terminal
    with ``tty``)."""
    if tty:  # rich decides colours from the environment: make it a plain colour terminal
        assert monkeypatch is not None
        for key, value in (("FORCE_COLOR", "1"), ("TERM", "xterm"), ("COLUMNS", "200")):
            monkeypatch.setenv(key, value)
        for key in ("NO_COLOR", "COLORTERM"):
            monkeypatch.delenv(key, raising=False)
    capture, show = NOUNS[noun]
    out = io.StringIO()
    show(captured(capture), output, out=out, tty=tty)
    return out.getvalue()


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / "out" / name
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from the golden output"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("noun", list(NOUNS))
def test_golden(noun: str, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    output = "table" if mode == "tty" else mode
    text = shown(noun, output, tty=mode == "tty", monkeypatch=monkeypatch)
    check_golden(f"{noun}.{mode}.txt", text)
    body = captured(NOUNS[noun][0])
    if mode == "json":
        assert json.loads(text) == body, "-o json is the agent's JSON, unchanged"
    elif mode == "yaml":
        assert yaml.safe_load(text) == body
    elif mode == "tty":
        assert "\x1b[" in text, "colour on a terminal"
    else:
        lines = text.splitlines()
        assert "\x1b" not in text
        assert lines[0].startswith("| ") and set(lines[1]) <= {"|", "-"}
        assert all(line.startswith("| ") and line.endswith(" |") for line in lines[2:])


def test_states_coloured_on_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    out = shown("ha", "table", tty=True, monkeypatch=monkeypatch)
    assert "\x1b[32mMASTER" in out  # green
    assert "\x1b[33mBACKUP" in out  # yellow


def test_lb_rows_sorted_numerically() -> None:
    table = (GOLDEN / "out" / "lb.table.txt").read_text().splitlines()[2:]
    ips = [line.split("|")[1].strip() for line in table]
    assert ips == ["198.18.100.1", "198.18.100.1", "198.18.100.2", "198.18.100.10",
                   "198.18.100.20"]
