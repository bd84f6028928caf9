"""The rule table against the datapath's maps (test-run harness)."""

from __future__ import annotations

from dp_harness import EPS, DpHarness, lb_body

from datapath import layouts as L


def _active(h: DpHarness, slot: int) -> bool:
    return bool(h.dp.maps["lb_endpoints"].lookup(slot).flags & L.EpFlags.ACTIVE)


def test_an_update_once_the_route_is_back_gives_the_endpoint_new_flows(h: DpHarness) -> None:
    """A fullnat endpoint restored without a route waits inactive (no_route); an update of
    its rule resolves every source, so the endpoint is active again, not forgotten."""
    h.apply(lb_body(mode=2))
    slot = h.slot_of(EPS[0])
    h.table.no_route.add(slot)  # as after a restore while the route was down
    h.dp.set_endpoint_active(slot, False)
    h.apply(lb_body(mode=2, weights=[2, 1, 1]))  # the route is there now
    assert slot not in h.table.no_route
    assert _active(h, slot)
    assert all(_active(h, h.slot_of(ip)) for ip in EPS)
