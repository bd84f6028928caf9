"""Names shared by the CLI and the agent: the API's numeric codes and their words.

Kept free of heavy imports: the CLI imports this on every run.
"""

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

# Conntrack states as the API names them (ctAttr.conntrackState, ?state= of
# /config/conntrack/all): TCP, then UDP, then ICMP echo.
CONNTRACK_STATES: tuple[str, ...] = (
    "closed", "sync-sent", "sync-ack", "est", "fini", "closed-wait",
    "udp-uni", "udp-est",
    "req-sent", "bidir",
)

# The end of the agent's 409 sentence for a rule posted again unchanged (kube-loxilb
# treats an error saying "exist" as done; `apply` reports such a rule as unchanged).
RULE_UNCHANGED = "already exists with the same options and endpoints"

DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 11111
API_BASE_PATH = "/netlox/v1"


def code_for_name(table: dict[int, str], name: str) -> int | None:
    """Reverse lookup in one of the tables above; None when the name is unknown."""
    for code, word in table.items():
        if word == name:
            return code
    return None
