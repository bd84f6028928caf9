"""The Python mirrors of the map layouts agree with the BTF of the built object.

bpftool reads the BTF independently of our binding, so a struct edited on one
side only, or a map declared with another key or value type, fails here.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
from typing import Any

import pytest

import datapath
from datapath import layouts


@pytest.fixture(scope="module")
def btf() -> dict[int, dict[str, Any]]:
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "file", str(datapath.OBJECT_PATH)],
                         check=True, capture_output=True, text=True).stdout
    return {t["id"]: t for t in json.loads(out)["types"]}


def _struct(btf: dict[int, dict[str, Any]], name: str) -> dict[str, Any]:
    found = [t for t in btf.values() if t["kind"] == "STRUCT" and t.get("name") == name]
    assert found, f"struct {name} is not in the BTF of {datapath.OBJECT_PATH}"
    return found[0]


def _resolve(btf: dict[int, dict[str, Any]], type_id: int) -> dict[str, Any]:
    """Follow typedefs and qualifiers to the underlying type."""
    t = btf[type_id]
    while t["kind"] in ("TYPEDEF", "CONST", "VOLATILE"):
        t = btf[t["type_id"]]
    return t


def _size(btf: dict[int, dict[str, Any]], type_id: int) -> int:
    t = _resolve(btf, type_id)
    if t["kind"] == "ARRAY":
        return t["nr_elems"] * _size(btf, t["type_id"])
    return t["size"]


@pytest.mark.parametrize("name", sorted(layouts.STRUCTS))
def test_struct_size_and_offsets_match(btf: dict[int, dict[str, Any]], name: str) -> None:
    mirror = layouts.STRUCTS[name]
    c_struct = _struct(btf, name)
    assert ctypes.sizeof(mirror) == c_struct["size"], f"sizeof(struct {name})"
    c_fields = [(m["name"], m["bits_offset"] // 8) for m in c_struct["members"]]
    py_fields = [(f[0], getattr(mirror, f[0]).offset) for f in mirror._fields_]
    assert py_fields == c_fields, f"fields of struct {name} (name, byte offset)"
    for member, (field_name, ctype) in zip(c_struct["members"], mirror._fields_, strict=True):
        assert ctypes.sizeof(ctype) == _size(btf, member["type_id"]), f"{name}.{field_name}"


def _map_defs(btf: dict[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Map name -> the anonymous struct of its definition in section .maps."""
    (maps_sec,) = [t for t in btf.values() if t["kind"] == "DATASEC" and t["name"] == ".maps"]
    defs = {}
    for var in maps_sec["vars"]:
        v = btf[var["type_id"]]
        defs[v["name"]] = btf[v["type_id"]]
    return defs


def _pointee_size_and_name(btf: dict[int, dict[str, Any]], member: dict[str, Any]
                           ) -> tuple[int, str]:
    ptr = btf[member["type_id"]]
    assert ptr["kind"] == "PTR"
    t = _resolve(btf, ptr["type_id"])
    return t["size"], t.get("name", "")


def _check_key_value(btf: dict[int, dict[str, Any]], name: str, members: dict[str, Any],
                     key_type: type, value_type: type) -> None:
    key_size, key_name = _pointee_size_and_name(btf, members["key"])
    value_size, value_name = _pointee_size_and_name(btf, members["value"])
    assert key_size == ctypes.sizeof(key_type), f"{name} key size"
    assert value_size == ctypes.sizeof(value_type), f"{name} value size"
    if issubclass(value_type, ctypes.Structure):
        assert layouts.STRUCTS[value_name] is value_type, f"{name} value type"
    if issubclass(key_type, ctypes.Structure):
        assert layouts.STRUCTS[key_name] is key_type, f"{name} key type"


def test_every_map_has_the_declared_key_and_value(btf: dict[int, dict[str, Any]]) -> None:
    defs = _map_defs(btf)
    assert set(defs) == set(layouts.MAPS), "maps in the object vs datapath.layouts.MAPS"
    for name, (key_type, value_type) in layouts.MAPS.items():
        members = {m["name"]: m for m in defs[name]["members"]}
        if key_type is None:  # ring buffer: no key or value
            assert "key" not in members and "value" not in members, name
        elif "values" in members:  # map of maps: the inner map holds the values
            arr = btf[members["values"]["type_id"]]
            inner = btf[btf[arr["type_id"]]["type_id"]]
            inner_members = {m["name"]: m for m in inner["members"]}
            _check_key_value(btf, f"{name} (inner)", inner_members, ctypes.c_uint32, value_type)
        else:
            _check_key_value(btf, name, members, key_type, value_type)


def test_capacity_constants_match(btf: dict[int, dict[str, Any]]) -> None:
    def max_entries(map_name: str) -> int:
        members = {m["name"]: m for m in _map_defs(btf)[map_name]["members"]}
        arr = btf[btf[members["max_entries"]["type_id"]]["type_id"]]
        assert arr["kind"] == "ARRAY"
        return arr["nr_elems"]

    assert max_entries("lb_rules") == layouts.LB_MAX_RULES
    assert max_entries("lb_rule_state") == layouts.LB_MAX_RULES
    assert max_entries("lb_endpoints") == layouts.LB_MAX_EP_SLOTS
    assert max_entries("lb_services") == layouts.LB_MAX_SVC_KEYS
    assert max_entries("lb_conntrack") == layouts.LB_CT_DEFAULT_ENTRIES
    assert max_entries("lb_persist") == layouts.LB_PERSIST_ENTRIES
    assert max_entries("lb_allow") == layouts.LB_ALLOW_ENTRIES
    assert max_entries("lb_events") == layouts.LB_EVENTS_BYTES
    assert max_entries("lb_dp_stats") == layouts.LB_DP_STAT_MAX
    assert layouts.LbRuleSlots.slots.size == 4 * layouts.LB_MAX_ENDPOINTS


def _enum(btf: dict[int, dict[str, Any]], name: str) -> dict[str, int]:
    found = [t for t in btf.values() if t["kind"] == "ENUM" and t.get("name") == name]
    assert found, f"enum {name} is not in the BTF of {datapath.OBJECT_PATH}"
    return {v["name"]: v["val"] for v in found[0]["values"]}


@pytest.mark.parametrize("name", sorted(layouts.ENUMS))
def test_enum_names_and_values_match(btf: dict[int, dict[str, Any]], name: str) -> None:
    mirror, prefix = layouts.ENUMS[name]
    assert {prefix + m.name: int(m.value) for m in mirror} == _enum(btf, name)


def test_every_enum_of_lb_types_h_is_mirrored(btf: dict[int, dict[str, Any]]) -> None:
    ours = {t["name"] for t in btf.values() if t["kind"] == "ENUM"
            and t.get("name", "").startswith("lb_")}
    assert ours == set(layouts.ENUMS)


def test_words_cover_every_member_and_codes_agree_with_the_api() -> None:
    from loxicmd import names

    for enum_type, words in ((layouts.CtState, names.CT_STATE_WORDS),
                             (layouts.EventType, names.EVENT_WORDS),
                             (layouts.Reason, names.REASON_WORDS),
                             (layouts.DpStat, names.DP_STAT_WORDS)):
        assert {m.name for m in enum_type} == set(words), enum_type.__name__
    # the datapath's codes are the API's (sel, mode) for what it carries
    for member in layouts.Sel:
        assert names.SELECTION_NAMES[member.value] == member.name.lower()
    for member in layouts.NatMode:
        assert names.NAT_MODE_NAMES[member.value] == member.name.lower()
    # what the CLI says loxilbd carries is what its datapath carries
    assert names.LOXILBD_SELECTIONS == tuple(m.name.lower() for m in layouts.Sel)
    assert names.LOXILBD_NAT_MODES == tuple(m.name.lower() for m in layouts.NatMode)
