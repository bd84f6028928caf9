"""Generated files are current (completion scripts, manual pages), the manual renders
without warnings, and the zsh/fish scripts are valid and complete in those shells."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from cli_lab import cli_env
from testpaths import ROOT

from loxicmd.cli import gendocs, nouns


def test_generated_files_are_current() -> None:
    assert gendocs.stale() == [], "run: .venv/bin/python -m loxicmd.cli.gendocs"


def test_completion_command_prints_the_committed_scripts() -> None:
    for shell, rel in (("bash", "loxicmd.bash"), ("zsh", "_loxicmd"), ("fish", "loxicmd.fish")):
        cp = subprocess.run(["loxicmd", "completion", shell], env=cli_env(),
                            capture_output=True, text=True, check=False)
        assert cp.returncode == 0 and cp.stdout == (ROOT / "completions" / rel).read_text()


def _man_warnings(path: Path) -> str:
    cp = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", str(path)],
                        env={**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": "0"},
                        capture_output=True, text=True, check=False, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip(), "rendered page is empty"
    return cp.stderr


@pytest.mark.parametrize("page", ["loxicmd.1", "loxilbd.8"])
def test_man_pages_render_without_warnings(page: str) -> None:
    assert _man_warnings(ROOT / "man" / page) == ""


def test_man_warning_check_does_detect_warnings(tmp_path: Path) -> None:
    bad = tmp_path / "bad.1"
    bad.write_text('.TH BAD 1\n.SH NAME\nbad \\- x\n.XYZZY\n\\*[nosuchstring]\n')
    assert _man_warnings(bad) != ""


def test_loxicmd_page_has_a_section_per_verb_and_noun() -> None:
    text = (ROOT / "man" / "loxicmd.1").read_text()
    for verb in ("GET", "CREATE", "DELETE", "SET", "SAVE", "APPLY", "VERSION", "COMPLETION"):
        assert f"\n.SH {verb}\n" in text
    for noun in nouns.NOUNS:
        for verb in noun.verbs:
            assert f'\n.SS "{verb} {noun.name.replace("-", chr(92) + "-")}"\n' in text
    agent_page = (ROOT / "man" / "loxilbd.8").read_text()
    for flag in ("state\\-dir", "interfaces", "bpffs\\-dir", "log\\-level", "cleanup"):
        assert f"\\-\\-{flag}" in agent_page


def test_zsh_script_is_valid() -> None:
    cp = subprocess.run(["zsh", "-n", str(ROOT / "completions" / "_loxicmd")],
                        capture_output=True, text=True, check=False)
    assert cp.returncode == 0, cp.stderr


def fish_complete(*command_lines: str) -> list[str]:
    """What fish completes for each command line (the agent unreachable)."""
    script = ROOT / "completions" / "loxicmd.fish"
    asks = "; echo ---; ".join(f"complete --do-complete='{line}'" for line in command_lines)
    cp = subprocess.run(["fish", "--no-config", "-c", f"source {script}; {asks}"],
                        env=cli_env(LOXICMD_PORT="1"), capture_output=True, text=True,
                        check=False, timeout=60)
    assert cp.returncode == 0, cp.stderr
    return cp.stdout.split("---\n")


def test_fish_completes_nouns_and_values() -> None:
    nouns_part, modes_part = fish_complete("loxicmd get ", "loxicmd create lb 1.1.1.1 --mode ")
    assert {"loadbalancer", "conntrack", "hastate"} <= {w.split("\t")[0]
                                                       for w in nouns_part.split()}
    assert modes_part.split() == ["default", "dsr", "fullnat", "fullproxy", "hostonearm",
                                  "onearm"]


def test_issue15_15_fish_completes_option_equals_value() -> None:
    """``--mode=on<TAB>`` in fish: the whole word comes back (fish drops answers that do
    not start with the word under the cursor)."""
    modes, states = fish_complete("loxicmd create lb 1.1.1.1 --mode=on",
                                  "loxicmd get ct --state=udp")
    assert modes.split() == ["--mode=onearm"]
    assert states.split() == ["--state=udp-est", "--state=udp-uni"]
