"""Regenerate the files derived from the command definitions: shell completion scripts
(``completions/``) and manual pages (``man/``).

    python -m loxicmd.cli.gendocs          # write them
    python -m loxicmd.cli.gendocs --check  # exit 1 listing those that are not current
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def outputs() -> dict[str, str]:
    """Relative path -> content of every generated file."""
    from loxicmd.cli.manpage import loxicmd_page, loxilbd_page
    from loxicmd.cli.misc import completion_script, package_version

    version = package_version()
    return {
        "completions/loxicmd.bash": completion_script("bash"),
        "completions/_loxicmd": completion_script("zsh"),
        "completions/loxicmd.fish": completion_script("fish"),
        "man/loxicmd.1": loxicmd_page(version),
        "man/loxilbd.8": loxilbd_page(version),
    }


def stale(root: Path = ROOT) -> list[str]:
    return [rel for rel, text in outputs().items()
            if not (root / rel).exists() or (root / rel).read_text() != text]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        names = stale()
        for rel in names:
            print(f"{rel} is not current: run python -m loxicmd.cli.gendocs", file=sys.stderr)
        return 1 if names else 0
    for rel, text in outputs().items():
        path = ROOT / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
