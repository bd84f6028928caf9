"""The BGP configuration (checked, kept across restarts) and the routes peers announce
(read from ExaBGP's UPDATE events, the best path of each prefix chosen for the kernel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loxicmd.agent.bgp.received import KernelRoutes, ReceivedRoutes
from loxicmd.agent.bgp.settings import BgpSettings, parse_global, parse_neighbor
from loxicmd.agent.errors import ApiError, InvalidInput


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"routerId": "2001:db8::1", "localAs": 1}, "routerId", "allowed: a non-zero IPv4"),
    ({"routerId": "0.0.0.0", "localAs": 1}, "routerId", "is not a router id"),
    ({"routerId": "198.18.1.1", "localAs": 0}, "localAs", "0 is out of range"),
    ({"routerId": "198.18.1.1", "localAs": 2**32}, "localAs", "out of range"),
    ({"routerId": "198.18.1.1", "localAs": 1, "listenPort": 70000}, "listenPort", "range"),
    ({"localAs": 1}, "routerId", "is required"),
])
def test_global_refusals_name_the_field(body: dict, field: str, words: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_global(body)
    assert err.value.field == field and words in err.value.why


@pytest.mark.parametrize(("body", "field"), [
    ({"ipAddress": "224.0.0.5", "remoteAs": 1}, "ipAddress"),
    ({"ipAddress": "0.0.0.0", "remoteAs": 1}, "ipAddress"),
    ({"ipAddress": "nope", "remoteAs": 1}, "ipAddress"),
    ({"ipAddress": "198.18.1.2", "remoteAs": -1}, "remoteAs"),
    ({"ipAddress": "198.18.1.2", "remoteAs": 1, "remotePort": 0}, "remotePort"),
    ({"ipAddress": "198.18.1.2", "remoteAs": 1, "setMultiHop": "yes"}, "setMultiHop"),
])
def test_neighbor_refusals_name_the_field(body: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_neighbor(body)
    assert err.value.field == field


def test_settings_are_kept_and_checked(tmp_path: Path) -> None:
    settings = BgpSettings(tmp_path)
    # keys in any case, as LoxiLB's clients send them (kube-loxilb: setNextHopSelf)
    glob = parse_global({"routerid": "198.18.1.1", "LocalAs": 4200000000,
                         "setNextHopSelf": True})
    assert settings.set_global(glob) and not settings.set_global(glob)
    settings.add_neighbor(parse_neighbor({"ipAddress": "198.18.1.10", "remoteAs": 64512}))
    settings.add_neighbor(parse_neighbor({"ipAddress": "198.18.1.20", "remoteAs": 64601,
                                          "remotePort": 1179, "setMultiHop": True}))
    with pytest.raises(ApiError) as err:
        settings.add_neighbor(parse_neighbor({"ipAddress": "198.18.1.10", "remoteAs": 1}))
    assert err.value.status == 409 and "already exists (AS 64512)" in err.value.message
    with pytest.raises(ApiError) as err:
        settings.delete_neighbor("198.18.1.10", 1)
    assert err.value.status == 404 and "its AS is 64512" in err.value.message
    with pytest.raises(ApiError) as err:
        settings.delete_neighbor("198.18.1.99", None)
    assert err.value.status == 404
    settings.delete_neighbor("198.18.1.10", 64512)
    again = BgpSettings(tmp_path).config  # a restarted agent
    assert again == settings.config and again.complete
    assert again.global_config is not None and again.global_config.local_as == 4200000000
    assert again.global_config.nexthop_self and again.global_config.listen_port == 179
    (n,) = again.neighbors.values()
    assert (n.address, n.remote_as, n.remote_port, n.multihop) == ("198.18.1.20", 64601, 1179,
                                                                   True)


def test_a_damaged_record_is_named(tmp_path: Path) -> None:
    settings = BgpSettings(tmp_path)
    settings.store.put("global", {"routerId": "2001:db8::1", "localAs": 1})
    with pytest.raises(ValueError, match="bgp.json: routerId"):
        BgpSettings(tmp_path)


class RecordedKernel(KernelRoutes):
    """The lines the kernel would be given (the e2e tests give them to the real one)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def run(self, lines: list[str]) -> set[int]:
        self.lines += lines
        return set()

    def flush(self) -> None:
        self.lines.append("flush")


def update(next_hop: str, prefixes: list[str], withdraw: list[str] | None = None,
           **attributes: object) -> dict:
    """An UPDATE as ExaBGP 5's JSON encoder writes it."""
    out: dict = {"attribute": {"origin": "igp", **attributes}}
    if prefixes:
        out["announce"] = {"ipv4 unicast": {next_hop: [{"nlri": p} for p in prefixes]}}
    if withdraw:
        out["withdraw"] = {"ipv4 unicast": [{"nlri": p} for p in withdraw]}
    return out


def segments(*asns: int) -> dict:
    return {"0": {"element": "as-sequence", "value": list(asns)}}


def test_best_paths_go_to_the_kernel() -> None:
    kernel = RecordedKernel()
    received = ReceivedRoutes(kernel, own_prefixes=lambda: {"198.18.100.1/32"})
    assert kernel.lines == ["flush"]  # what a previous run left goes first
    received.update("198.18.1.10", update("198.18.1.10", ["198.18.60.0/24", "198.18.100.1/32"],
                                          **{"as-path": segments(64512, 64513)}))
    assert kernel.lines[1:] == ["route replace 198.18.60.0/24 via 198.18.1.10 proto 196 metric 196"]
    # a shorter AS path from another peer wins; then a higher local preference wins back
    received.update("198.18.1.20", update("198.18.1.20", ["198.18.60.0/24"],
                                          **{"as-path": segments(64512)}))
    assert kernel.lines[-1] == "route replace 198.18.60.0/24 via 198.18.1.20 proto 196 metric 196"
    received.update("198.18.1.10", update("198.18.1.10", ["198.18.60.0/24"],
                                          **{"as-path": segments(64512, 64513),
                                             "local-preference": 200}))
    assert kernel.lines[-1] == "route replace 198.18.60.0/24 via 198.18.1.10 proto 196 metric 196"
    assert received.counts("198.18.1.10") == (2, 1)  # its VIP route is never installed
    assert received.counts("198.18.1.20") == (1, 0)
    # the best peer goes down: the other path takes over; withdrawn: the route goes
    received.peer_down("198.18.1.10")
    assert kernel.lines[-1] == "route replace 198.18.60.0/24 via 198.18.1.20 proto 196 metric 196"
    received.update("198.18.1.20", update("198.18.1.20", [], withdraw=["198.18.60.0/24"]))
    assert kernel.lines[-1] == "route del 198.18.60.0/24 proto 196 metric 196"
    assert received.counts("198.18.1.20") == (0, 0)


def test_without_import_routes_are_only_counted() -> None:
    received = ReceivedRoutes(None, own_prefixes=set)
    received.update("198.18.1.10", update("198.18.1.10", ["198.18.60.0/24", "bogus"]))
    assert received.counts("198.18.1.10") == (1, 0)
    received.clear()
    assert received.counts("198.18.1.10") == (0, 0)
