"""The batch reader (BpfMap.items / page) against single lookups, on every map of the object.

A wrong value stride in the batch reader once made a restarted agent read rule ids from the
wrong bytes of lb_services and delete live services as stale: every map whose values user
space reads is filled with random values here and read both ways.
"""

from __future__ import annotations

import ctypes
import os
import random
from typing import Any

import pytest
from dp_harness import DpHarness

from datapath import layouts as L
from datapath.libbpf import BpfMap

READABLE = [name for name, (k, v) in L.MAPS.items() if k is not None and v is not None]


def _random_value(vtype: type) -> Any:
    return vtype.from_buffer_copy(os.urandom(ctypes.sizeof(vtype)))


def _keys(name: str, m: BpfMap, rng: random.Random, count: int) -> list[Any]:
    """Keys the map accepts: indexes for arrays, valid prefixes for the LPM trie."""
    if m.key_type is ctypes.c_uint32:
        indexes = rng.sample(range(m.max_entries), min(count, m.max_entries))
        return [ctypes.c_uint32(i) for i in indexes]
    if name == "lb_allow":
        return [L.LbAllowKey(prefixlen=32 + rng.randint(8, 32), rule_id=rng.getrandbits(32),
                             addr=rng.getrandbits(32)) for _ in range(count)]
    return [m.key_type.from_buffer_copy(os.urandom(ctypes.sizeof(m.key_type)))
            for _ in range(count)]


def _by_key(pairs: list[tuple[Any, Any]]) -> dict[bytes, bytes | list[bytes]]:
    def raw(value: Any) -> bytes | list[bytes]:
        return [bytes(v) for v in value] if isinstance(value, list) else bytes(value)

    return {bytes(k): raw(v) for k, v in pairs}


@pytest.mark.parametrize("name", READABLE)
def test_batch_read_equals_single_lookups(h: DpHarness, name: str) -> None:
    m = h.dp.maps[name]
    rng = random.Random(name)
    written: list[Any] = []
    if name == "lb_maglev":  # values are inner maps: put real ones in
        for key in _keys(name, m, rng, 3):
            inner = BpfMap.create_array("t_inner", ctypes.c_uint32, L.LB_MAGLEV_SIZE)
            try:
                m.update(key, ctypes.c_uint32(inner.fd))
            finally:
                inner.close()
            written.append(key)
    else:
        for key in _keys(name, m, rng, 50):
            m.update(key, _random_value(m.value_type))
            written.append(key)
    try:
        batch = _by_key(list(m.items(batch=7)))  # small pages: several round trips
        single = _by_key([(key, m.lookup(key)) for key in
                          (m.key_type.from_buffer_copy(raw) for raw in batch)])
        assert batch == single
        for key in written:  # and nothing written was missed
            assert bytes(key) in batch, f"{name}: {bytes(key).hex()} not read back"
    finally:
        for key in written:
            if name in ("lb_services", "lb_persist", "lb_conntrack", "lb_allow", "lb_maglev"):
                m.delete(key)
            else:
                m.update(key, m.value_type())
