"""Conntrack for the API: flows page by page (batch lookups, so a million-entry table
never travels whole), filters, and the LoxiLB ConntrackEntry of each flow."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from datapath import layouts as L

from .flows import Flow

if TYPE_CHECKING:
    from ..lb.table import RuleRecord, RuleTable

Page = tuple[list[dict[str, Any]], bytes | None]


@dataclass(frozen=True)
class FlowFilter:
    serv_name: str | None = None
    ip: str | None = None
    port: int | None = None
    state: str | None = None

    def matches(self, flow: Flow, name: str) -> bool:
        return ((self.serv_name is None or name == self.serv_name)
                and (self.ip is None or self.ip in (flow.client_ip, flow.vip_ip,
                                                     flow.endpoint_ip, flow.nat_ip))
                and (self.port is None or self.port in (flow.client_port, flow.vip_port,
                                                         flow.endpoint_port, flow.nat_port))
                and (self.state is None or flow.state_word == self.state))


class FlowListing:
    """The flows of the datapath's conntrack table, named by the rules they belong to."""

    def __init__(self, rules: RuleTable) -> None:
        self.rules = rules
        self.ct = rules.dp.maps["lb_conntrack"]

    @property
    def token_size(self) -> int:
        return self.ct.token_size

    def pages(self, flt: FlowFilter, after: bytes | None = None,
              page_size: int = 4096) -> Iterator[Page]:
        """Flows that pass the filter, page by page, with the token that resumes
        after each page (None after the last). Pages are read with batch lookups,
        so the whole table is never held at once."""
        with self.rules.lock:
            by_id = dict(self.rules.by_id)
        token = after
        while True:
            entries, token = self.ct.page(token, page_size)
            rows = []
            for key, entry in entries:
                if entry.dir != L.CtDir.ORIGINAL:
                    continue
                flow = Flow.from_entries(key, entry, self.ct.lookup(entry.peer))
                rec = by_id.get(flow.rule_id)
                if flt.matches(flow, rec.rule.name if rec else ""):
                    rows.append(flow_to_api(flow, rec))
            yield rows, token
            if token is None:
                return

    def page(self, flt: FlowFilter, limit: int, after: bytes | None) -> Page:
        """About `limit` flows (a hash bucket is never split) and the next token."""
        rows: list[dict[str, Any]] = []
        token = after
        while len(rows) < limit:
            page, token = next(self.pages(flt, token, page_size=max(limit - len(rows), 8)))
            rows.extend(page)
            if token is None:
                break
        return rows, token

    def all(self, flt: FlowFilter | None = None) -> list[dict[str, Any]]:
        return [row for page, _ in self.pages(flt or FlowFilter()) for row in page]


def flow_to_api(flow: Flow, rec: RuleRecord | None) -> dict[str, Any]:
    weight = 0
    if rec is not None:
        for ep in rec.rule.endpoints:
            if rec.slots.get(ep.ident) == flow.ep_slot:
                weight = ep.weight
    icmp = flow.protocol == "icmp"
    target = f"{flow.endpoint_ip}:{flow.endpoint_port}:w{weight}"
    nat_port = 0 if icmp else flow.nat_port
    act = f"fdnat-{flow.nat_ip}:{nat_port},{target}" if flow.snat else f"dnat-{target}"
    return {
        "sourceIP": flow.client_ip,
        "sourcePort": 0 if icmp else flow.client_port,
        "destinationIP": flow.vip_ip,
        "destinationPort": flow.vip_port,
        "protocol": flow.protocol,
        "conntrackState": flow.state_word,
        "conntrackAct": act,
        "ident": str(flow.client_port if icmp else 0),  # a string in LoxiLB's API
        "packets": flow.packets,
        "bytes": flow.bytes,
        "servName": rec.rule.name if rec else "",
    }
