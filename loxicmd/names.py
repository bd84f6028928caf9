"""Names shared by the CLI and the agent: the API's numeric codes and their words.

Kept free of heavy imports: the CLI imports this on every run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# serviceArguments.sel (api.md): code -> name
SELECTION_NAMES: dict[int, str] = {
    0: "rr",
    1: "hash",
    2: "priority",
    3: "persist",
    4: "lc",
    5: "n2",
    6: "n3",
}

# serviceArguments.mode (api.md): code -> name
NAT_MODE_NAMES: dict[int, str] = {
    0: "default",
    1: "onearm",
    2: "fullnat",
    3: "dsr",
    4: "fullproxy",
    5: "hostonearm",
}

PROTOCOLS: tuple[str, ...] = ("tcp", "udp", "sctp", "icmp")
PROTOCOL_NUMBERS: dict[int, str] = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp"}  # IANA

# serviceArguments.oper: code -> name
OPER_NAMES: dict[int, str] = {0: "create", 1: "attach", 2: "detach"}
OPER_CREATE, OPER_ATTACH, OPER_DETACH = 0, 1, 2

# What loxilbd carries out today (the rest of LoxiLB's words it refuses, naming them); the
# selections and NAT modes are its datapath's enums (tests/dp/test_layouts_btf.py).
LOXILBD_SELECTIONS: tuple[str, ...] = ("rr", "hash", "priority", "persist", "lc")
LOXILBD_NAT_MODES: tuple[str, ...] = ("default", "onearm", "fullnat")
LOXILBD_PROTOCOLS: tuple[str, ...] = ("tcp", "udp", "icmp")

# Probe types: LoxiLB's, and those this agent carries out (it refuses sctp).
LOXILB_PROBE_TYPES: tuple[str, ...] = ("tcp", "udp", "sctp", "http", "https", "ping", "none")
PROBE_TYPES: tuple[str, ...] = ("ping", "tcp", "udp", "http", "https", "none")
PORTLESS_PROBE_TYPES: tuple[str, ...] = ("ping", "none")

# HA (cluster instance) states: the words of /config/cistate and `loxicmd set hastate`.
HA_STATES: tuple[str, ...] = ("MASTER", "BACKUP", "FAULT", "STOP", "NOT_DEFINED")
# Host states of POST /config/endpointhoststate.
HOST_STATES: tuple[str, ...] = ("green", "yellow", "red")
HOST_GREEN, HOST_YELLOW, HOST_RED = HOST_STATES

# The words of the datapath's enums (datapath/layouts.py, by member name), as the API
# (conntrackState, dpStats) and the audit log show them.
CT_STATE_WORDS: dict[str, str] = {
    "CLOSED": "closed",
    "SYN_SENT": "sync-sent",
    "SYN_ACK": "sync-ack",
    "EST": "est",
    "FINI": "fini",
    "CLOSED_WAIT": "closed-wait",
    "UDP_UNI": "udp-uni",
    "UDP_EST": "udp-est",
    "ICMP_REQ": "req-sent",
    "ICMP_BIDIR": "bidir",
}
# Conntrack states as the API names them (ctAttr.conntrackState, ?state= of
# /config/conntrack/all): TCP, then UDP, then ICMP echo.
CONNTRACK_STATES: tuple[str, ...] = tuple(CT_STATE_WORDS.values())
EVENT_WORDS: dict[str, str] = {"NEW": "new", "EST": "established", "CLOSED": "closed",
                               "EXPIRED": "expired", "REFRESH": "refresh"}
REASON_WORDS: dict[str, str] = {"NONE": "", "FIN": "fin", "RST": "rst", "TIMEOUT": "timeout",
                                "EP_REMOVED": "endpoint removed",
                                "RULE_DELETED": "rule deleted", "EP_DOWN": "endpoint down"}
DP_STAT_WORDS: dict[str, str] = {
    "DROP_NO_ENDPOINT": "no-endpoint",
    "DROP_MALFORMED": "malformed",
    "DROP_REWRITE": "rewrite-failed",
    "STAT_PASS_FRAGMENT": "fragment-passed",
    "DROP_SOURCE": "source-not-allowed",
    "DROP_CT_FULL": "ct-full",
    "DROP_SNAT_PORTS": "snat-ports-exhausted",
    "STAT_EVENTS_LOST": "events-lost",
    "DROP_HA_STANDBY": "ha-standby",
}

# The end of the agent's 409 sentence for a rule posted again unchanged (kube-loxilb
# treats an error saying "exist" as done; `apply` reports such a rule as unchanged).
RULE_UNCHANGED = "already exists with the same options and endpoints"

# Defaults of a rule the API documents (what the agent shows for a field not given).
DEFAULT_TIMEOUTS = {"tcp": 240, "udp": 20, "sctp": 240, "icmp": 20}
# LoxiLB's: a rule's probeTimeout and an endpoint's probeDuration are the probe period;
# retries are the failures before an endpoint is down.
DEFAULT_PROBE_PERIOD_S = 60
DEFAULT_PROBE_RETRIES = 2

DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 11111
API_BASE_PATH = "/netlox/v1"


def by_code(codes: Iterable[Any], words: dict[str, str]) -> dict[int, str]:
    """An enum's words by its numeric values: `by_code(CtState, CT_STATE_WORDS)`."""
    return {int(member): words[member.name] for member in codes}


def code_for_name(table: dict[int, str], name: str) -> int | None:
    """Reverse lookup in one of the tables above; None when the name is unknown."""
    for code, word in table.items():
        if word == name:
            return code
    return None
