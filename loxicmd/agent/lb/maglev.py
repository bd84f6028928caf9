"""Maglev consistent-hashing tables (Eisenbud et al., NSDI 2016), built by the agent.

Each endpoint gets a permutation of the table's buckets from two hashes of its
identity; endpoints take turns claiming their next preferred free bucket until
the table is full. Every endpoint ends up with an almost equal share, and
removing one endpoint moves only its own buckets plus a small fraction of the
others (under 0.5 %: tests/dp/test_dp_selection.py, and the Maglev part of
`make bench`). The datapath hashes a flow's 5-tuple to a bucket.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def _hash64(name: str, seed: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8, key=seed).digest(),
                          "little")


def build_table(names: Sequence[str], size: int) -> list[int]:
    """Bucket -> index into `names`. `size` must be prime and larger than len(names)."""
    n = len(names)
    if n == 0:
        return []
    offsets = [_hash64(name, b"offset") % size for name in names]
    skips = [_hash64(name, b"skip") % (size - 1) + 1 for name in names]
    next_pref = [0] * n
    table = [-1] * size
    filled = 0
    while True:
        for i in range(n):
            offset, skip, j = offsets[i], skips[i], next_pref[i]
            bucket = (offset + j * skip) % size
            while table[bucket] >= 0:
                j += 1
                bucket = (offset + j * skip) % size
            table[bucket] = i
            next_pref[i] = j + 1
            filled += 1
            if filled == size:
                return table
