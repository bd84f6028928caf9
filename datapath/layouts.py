"""ctypes mirrors of the map layouts in include/lb_types.h.

tests/dp/test_layouts_btf.py checks every class in STRUCTS against the BTF of the
built object (size and field offsets), so an edit on one side only fails the
tests instead of corrupting maps.
"""

from __future__ import annotations

import ctypes
import enum
import socket
import struct

LB_MAX_RULES = 16384
LB_MAX_ENDPOINTS = 64
LB_MAX_EP_SLOTS = 65536
LB_MAX_SVC_KEYS = 65536
LB_MAGLEV_SIZE = 65537
LB_CT_DEFAULT_ENTRIES = 131072
LB_PERSIST_ENTRIES = 65536
LB_ALLOW_ENTRIES = 16384
LB_EVENTS_BYTES = 4 * 1024 * 1024
LB_MAX_INSTANCES = 256


# The enums of lb_types.h (tests/dp/test_layouts_btf.py checks names and values against the
# object's BTF). Their words, where the API or the audit log shows them, are in
# loxicmd/names.py.


class Sel(enum.IntEnum):
    """enum lb_sel: endpoint selection."""

    RR = 0
    HASH = 1
    PRIORITY = 2
    PERSIST = 3
    LC = 4


class NatMode(enum.IntEnum):
    """enum lb_nat_mode."""

    DEFAULT = 0
    ONEARM = 1
    FULLNAT = 2


class SvcFlags(enum.IntFlag):
    """enum lb_svc_flags (lb_svc.flags)."""

    ALLOWLIST = 0x1


class EpFlags(enum.IntFlag):
    """enum lb_ep_flags (lb_endpoint.flags)."""

    ACTIVE = 0x1


class CtDir(enum.IntEnum):
    """enum lb_ct_dir."""

    ORIGINAL = 0
    REPLY = 1


class Xlate(enum.IntFlag):
    """enum lb_xlate: which fields of a packet a conntrack entry rewrites."""

    SADDR = 0x1
    DADDR = 0x2
    SPORT = 0x4
    DPORT = 0x8


class CtFlags(enum.IntFlag):
    """enum lb_ct_flags (lb_ct_entry.flags)."""

    COUNTED = 0x1
    REPORTED_CLOSED = 0x2
    SYNCED = 0x4


class CtState(enum.IntEnum):
    """enum lb_ct_state."""

    CLOSED = 0
    SYN_SENT = 1
    SYN_ACK = 2
    EST = 3
    FINI = 4
    CLOSED_WAIT = 5
    UDP_UNI = 16
    UDP_EST = 17
    ICMP_REQ = 32
    ICMP_BIDIR = 33


class EventType(enum.IntEnum):
    """enum lb_event_type."""

    NEW = 1
    EST = 2
    CLOSED = 3
    EXPIRED = 4
    REFRESH = 5


class Reason(enum.IntEnum):
    """enum lb_reason: why a flow ended."""

    NONE = 0
    FIN = 1
    RST = 2
    TIMEOUT = 3
    EP_REMOVED = 4
    RULE_DELETED = 5
    EP_DOWN = 6


class DpStat(enum.IntEnum):
    """enum lb_dp_stat: the keys of lb_dp_stats."""

    DROP_NO_ENDPOINT = 0
    DROP_MALFORMED = 1
    DROP_REWRITE = 2
    STAT_PASS_FRAGMENT = 3
    DROP_SOURCE = 4
    DROP_CT_FULL = 5
    DROP_SNAT_PORTS = 6
    STAT_EVENTS_LOST = 7
    DROP_HA_STANDBY = 8


class HaState(enum.IntEnum):
    """enum lb_ha_state: a node's state of an HA cluster instance."""

    NOT_DEFINED = 0
    MASTER = 1
    BACKUP = 2
    FAULT = 3
    STOP = 4


class SweepMode(enum.IntEnum):
    """enum lb_sweep_mode: what a run of lb_sweep ends."""

    IDLE = 0
    RULE = 1
    ENDPOINT = 2


LB_DP_STAT_MAX = len(DpStat)

# C enum name -> (mirror, prefix of its constants' names in C).
ENUMS: dict[str, tuple[type[enum.Enum], str]] = {
    "lb_sel": (Sel, "LB_SEL_"),
    "lb_nat_mode": (NatMode, "LB_NAT_"),
    "lb_svc_flags": (SvcFlags, "LB_SVC_F_"),
    "lb_ep_flags": (EpFlags, "LB_EP_F_"),
    "lb_ct_dir": (CtDir, "LB_CT_DIR_"),
    "lb_xlate": (Xlate, "LB_XLATE_"),
    "lb_ct_flags": (CtFlags, "LB_CT_F_"),
    "lb_ct_state": (CtState, "LB_CT_"),
    "lb_event_type": (EventType, "LB_EV_"),
    "lb_reason": (Reason, "LB_REASON_"),
    "lb_dp_stat": (DpStat, "LB_"),
    "lb_sweep_mode": (SweepMode, "LB_SWEEP_"),
    "lb_ha_state": (HaState, "LB_HA_"),
}



class LbSvcKey(ctypes.Structure):
    _fields_ = [
        ("vip", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("mark", ctypes.c_uint32),
    ]


class LbSvc(ctypes.Structure):
    _fields_ = [
        ("rule_id", ctypes.c_uint32),
        ("sel", ctypes.c_uint8),
        ("nat_mode", ctypes.c_uint8),
        ("flags", ctypes.c_uint16),
        ("timeout_s", ctypes.c_uint32),
        ("persist_s", ctypes.c_uint32),
        ("snat_addr", ctypes.c_uint32),
        ("instance", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


class LbInstance(ctypes.Structure):
    _fields_ = [
        ("state", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class LbConfig(ctypes.Structure):
    _fields_ = [
        ("refresh_ns", ctypes.c_uint64),
    ]


class LbRuleSlots(ctypes.Structure):
    _fields_ = [
        ("ep_count", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
        ("slots", ctypes.c_uint32 * LB_MAX_ENDPOINTS),
    ]


class LbEndpoint(ctypes.Structure):
    _fields_ = [
        ("addr", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("weight", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("snat_addr", ctypes.c_uint32),
        ("rule_id", ctypes.c_uint32),
    ]


class LbRuleState(ctypes.Structure):
    _fields_ = [("rr_next", ctypes.c_uint64)]


class LbCounter(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class LbEpLoad(ctypes.Structure):
    _fields_ = [("active", ctypes.c_uint64)]


class LbPersistKey(ctypes.Structure):
    _fields_ = [("rule_id", ctypes.c_uint32), ("client", ctypes.c_uint32)]


class LbPersist(ctypes.Structure):
    _fields_ = [
        ("slot", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("last_used_ns", ctypes.c_uint64),
    ]


class LbAllowKey(ctypes.Structure):
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("rule_id", ctypes.c_uint32),  # network byte order
        ("addr", ctypes.c_uint32),
    ]


class LbCtKey(ctypes.Structure):
    _fields_ = [
        ("saddr", ctypes.c_uint32),
        ("daddr", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class LbCtEntry(ctypes.Structure):
    _fields_ = [
        ("peer", LbCtKey),
        ("xlate_saddr", ctypes.c_uint32),
        ("xlate_daddr", ctypes.c_uint32),
        ("xlate_sport", ctypes.c_uint16),
        ("xlate_dport", ctypes.c_uint16),
        ("rule_id", ctypes.c_uint32),
        ("ep_slot", ctypes.c_uint32),
        ("timeout_s", ctypes.c_uint32),
        ("seq_next", ctypes.c_uint32),
        ("dir", ctypes.c_uint8),
        ("state", ctypes.c_uint8),
        ("fin_seen", ctypes.c_uint8),
        ("xlate", ctypes.c_uint8),
        ("flags", ctypes.c_uint32),
        ("nat_mode", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
        ("created_ns", ctypes.c_uint64),
        ("last_seen_ns", ctypes.c_uint64),
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("reported_ns", ctypes.c_uint64),
    ]


class LbEvent(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint8),
        ("reason", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
        ("rule_id", ctypes.c_uint32),
        ("ts_ns", ctypes.c_uint64),
        ("key", LbCtKey),
        ("orig", LbCtEntry),
        ("reply", LbCtEntry),
    ]


# C struct name -> mirror, for the BTF check.
STRUCTS: dict[str, type[ctypes.Structure]] = {
    "lb_svc_key": LbSvcKey,
    "lb_svc": LbSvc,
    "lb_instance": LbInstance,
    "lb_config": LbConfig,
    "lb_rule_slots": LbRuleSlots,
    "lb_endpoint": LbEndpoint,
    "lb_rule_state": LbRuleState,
    "lb_counter": LbCounter,
    "lb_ep_load": LbEpLoad,
    "lb_persist_key": LbPersistKey,
    "lb_persist": LbPersist,
    "lb_allow_key": LbAllowKey,
    "lb_ct_key": LbCtKey,
    "lb_ct_entry": LbCtEntry,
    "lb_event": LbEvent,
}

U32 = ctypes.c_uint32
U8 = ctypes.c_uint8

# Map name -> (key type, value type) as declared in include/lb_maps.h; None
# where user space does not read values (map-in-map, ring buffer).
MAPS: dict[str, tuple[type | None, type | None]] = {
    "lb_services": (LbSvcKey, LbSvc),
    "lb_rules": (U32, LbRuleSlots),
    "lb_endpoints": (U32, LbEndpoint),
    "lb_rule_state": (U32, LbRuleState),
    "lb_maglev": (U32, U32),  # value: the inner table's fd on update, its id on lookup
    "lb_ep_load": (U32, LbEpLoad),
    "lb_persist": (LbPersistKey, LbPersist),
    "lb_allow": (LbAllowKey, U8),
    "lb_rule_stats": (U32, LbCounter),
    "lb_ep_stats": (U32, LbCounter),
    "lb_conntrack": (LbCtKey, LbCtEntry),
    "lb_events": (None, None),
    "lb_instances": (U32, LbInstance),
    "lb_config": (U32, LbConfig),
    "lb_dp_stats": (U32, LbCounter),
}


# Values in maps are in network byte order: these convert to and from the
# host integers that ctypes fields hold.
def ip_to_be32(ip: str) -> int:
    return struct.unpack("=I", socket.inet_aton(ip))[0]


def port_to_be16(port: int) -> int:
    return struct.unpack("=H", struct.pack("!H", port))[0]


def be16_to_port(value: int) -> int:
    return struct.unpack("!H", struct.pack("=H", value))[0]
