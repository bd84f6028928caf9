"""Files that hold a secret (an API token, the cluster key): readable by their owner only,
created that way, and refused by name when they are not."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def owner_only(path: str | os.PathLike[str]) -> None:
    """Raise ValueError when `path` can be read or written by others than its owner."""
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        raise ValueError(f"{path} is mode {mode:04o}; allowed: 0600 or stricter "
                         f"(chmod 600 {path})")


def read_secret(path: str | os.PathLike[str]) -> bytes:
    """The secret in `path` (surrounding white space dropped); it must be the owner's only
    and not empty."""
    owner_only(path)
    with open(path, "rb") as f:
        value = f.read().strip()
    if not value:
        raise ValueError(f"{path} is empty; allowed: a file holding the secret")
    return value


def create_secret(path: str | os.PathLike[str], nbytes: int = 32) -> str:
    """A new random token written to `path`, created 0600 (never over an existing file)."""
    token = secrets.token_urlsafe(nbytes)
    Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    return token
