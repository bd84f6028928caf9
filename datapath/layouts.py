"""ctypes mirrors of the map layouts in include/lb_types.h.

tests/test_layouts_btf.py checks every class in STRUCTS against the BTF of the
built object (size and field offsets), so an edit on one side only fails the
tests instead of corrupting maps.
"""

from __future__ import annotations

import ctypes
import socket
import struct

LB_MAX_RULES = 1024
LB_MAX_ENDPOINTS = 64
LB_CT_DEFAULT_ENTRIES = 131072

SEL_RR = 0
NAT_DEFAULT = 0

EP_F_ACTIVE = 0x1

CT_DIR_ORIGINAL = 0
CT_DIR_REPLY = 1

XLATE_SADDR = 0x1
XLATE_DADDR = 0x2
XLATE_SPORT = 0x4
XLATE_DPORT = 0x8

CT_STATE_NAMES: dict[int, str] = {
    0: "closed",
    1: "sync-sent",
    2: "sync-ack",
    3: "est",
    4: "fini",
    5: "closed-wait",
    16: "udp-uni",
    17: "udp-est",
}

# lb_dp_stats indexes
DP_STAT_NAMES: dict[int, str] = {
    0: "no-endpoint",
    1: "malformed",
    2: "rewrite-failed",
    3: "fragment-passed",
}
LB_DP_STAT_MAX = 8

IPPROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
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
        ("ep_count", ctypes.c_uint16),
        ("sel", ctypes.c_uint8),
        ("nat_mode", ctypes.c_uint8),
        ("flags", ctypes.c_uint32),
        ("inactive_timeout_s", ctypes.c_uint32),
    ]


class LbEndpoint(ctypes.Structure):
    _fields_ = [
        ("addr", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("weight", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("stat_slot", ctypes.c_uint32),
    ]


class LbRuleState(ctypes.Structure):
    _fields_ = [("rr_next", ctypes.c_uint64)]


class LbCounter(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


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
        ("dir", ctypes.c_uint8),
        ("state", ctypes.c_uint8),
        ("fin_seen", ctypes.c_uint8),
        ("xlate", ctypes.c_uint8),
        ("created_ns", ctypes.c_uint64),
        ("last_seen_ns", ctypes.c_uint64),
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
    ]


# C struct name -> mirror, for the BTF check.
STRUCTS: dict[str, type[ctypes.Structure]] = {
    "lb_svc_key": LbSvcKey,
    "lb_svc": LbSvc,
    "lb_endpoint": LbEndpoint,
    "lb_rule_state": LbRuleState,
    "lb_counter": LbCounter,
    "lb_ct_key": LbCtKey,
    "lb_ct_entry": LbCtEntry,
}

# Map name -> (key type, value type) as declared in include/lb_maps.h.
MAPS: dict[str, tuple[type, type[ctypes.Structure]]] = {
    "lb_services": (LbSvcKey, LbSvc),
    "lb_endpoints": (ctypes.c_uint32, LbEndpoint),
    "lb_rule_state": (ctypes.c_uint32, LbRuleState),
    "lb_rule_stats": (ctypes.c_uint32, LbCounter),
    "lb_ep_stats": (ctypes.c_uint32, LbCounter),
    "lb_conntrack": (LbCtKey, LbCtEntry),
    "lb_dp_stats": (ctypes.c_uint32, LbCounter),
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
