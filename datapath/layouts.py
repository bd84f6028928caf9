"""ctypes mirrors of the map layouts in include/lb_types.h.

tests/test_layouts_btf.py checks every class in STRUCTS against the BTF of the
built object (size and field offsets), so an edit on one side only fails the
tests instead of corrupting maps.
"""

from __future__ import annotations

import ctypes
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

SEL_RR, SEL_HASH, SEL_PRIORITY, SEL_PERSIST, SEL_LC = 0, 1, 2, 3, 4
NAT_DEFAULT, NAT_ONEARM, NAT_FULLNAT = 0, 1, 2

SVC_F_ALLOWLIST = 0x1
EP_F_ACTIVE = 0x1

CT_DIR_ORIGINAL = 0
CT_DIR_REPLY = 1

XLATE_SADDR = 0x1
XLATE_DADDR = 0x2
XLATE_SPORT = 0x4
XLATE_DPORT = 0x8

CT_F_COUNTED = 0x1
CT_F_REPORTED_CLOSED = 0x2

CT_CLOSED = 0
CT_EST = 3
CT_STATE_NAMES: dict[int, str] = {
    0: "closed",
    1: "sync-sent",
    2: "sync-ack",
    3: "est",
    4: "fini",
    5: "closed-wait",
    16: "udp-uni",
    17: "udp-est",
    32: "req-sent",
    33: "bidir",
}

EV_NEW, EV_EST, EV_CLOSED, EV_EXPIRED = 1, 2, 3, 4
EVENT_NAMES = {EV_NEW: "new", EV_EST: "established", EV_CLOSED: "closed", EV_EXPIRED: "expired"}
REASON_NAMES = {0: "", 1: "fin", 2: "rst", 3: "timeout", 4: "endpoint removed",
                5: "rule deleted", 6: "endpoint down"}
REASON_EP_DOWN = 6

SWEEP_IDLE, SWEEP_RULE, SWEEP_ENDPOINT = 0, 1, 2

# lb_dp_stats indexes
DP_STAT_NAMES: dict[int, str] = {
    0: "no-endpoint",
    1: "malformed",
    2: "rewrite-failed",
    3: "fragment-passed",
    4: "source-not-allowed",
    5: "ct-full",
    6: "snat-ports-exhausted",
    7: "events-lost",
}
LB_DP_STAT_MAX = 8

IPPROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "icmp": socket.IPPROTO_ICMP}
PROTO_NAMES = {v: k for k, v in IPPROTO.items()}


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
    ]


class LbRule(ctypes.Structure):
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
    "lb_rule": LbRule,
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
    "lb_rules": (U32, LbRule),
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
    "lb_dp_stats": (U32, LbCounter),
}


# Values in maps are in network byte order: these convert to and from the
# host integers that ctypes fields hold.
def ip_to_be32(ip: str) -> int:
    return struct.unpack("=I", socket.inet_aton(ip))[0]


def be32_to_ip(value: int) -> str:
    return socket.inet_ntoa(struct.pack("=I", value))


def port_to_be16(port: int) -> int:
    return struct.unpack("=H", struct.pack("!H", port))[0]


def be16_to_port(value: int) -> int:
    return struct.unpack("!H", struct.pack("=H", value))[0]
