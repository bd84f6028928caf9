"""Capacity limits answer 403/400 naming the limit, and change nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dp_harness import EPS, VIP, DpHarness, lb_body

from datapath import layouts as L
from loxicmd.agent.errors import ApiError, InvalidInput


@pytest.fixture
def small(tmp_path: Path) -> Iterator[DpHarness]:
    h = DpHarness(tmp_path, ct_entries=4096, max_rules=3, max_endpoints=5)
    try:
        yield h
    finally:
        h.close()


def rules_now(h: DpHarness) -> list[dict]:
    return h.table.api_list()


def test_rules_past_the_limit_are_refused_with_403(small: DpHarness) -> None:
    for port in (1, 2, 3):
        small.apply(lb_body(port=port, eps=[EPS[0]]))
    before = rules_now(small)
    with pytest.raises(ApiError) as err:
        small.apply(lb_body(port=4, eps=[EPS[0]]))
    assert err.value.status == 403 and "at most 3 rules" in err.value.message
    assert rules_now(small) == before
    small.table.delete(small.table.book.find(VIP, 1, None, "tcp", 0, ""), "one")
    small.apply(lb_body(port=4, eps=[EPS[0]]))  # a freed id is usable again


def test_endpoints_past_the_limit_are_refused_with_403(small: DpHarness) -> None:
    small.apply(lb_body(port=1, eps=EPS))
    with pytest.raises(ApiError) as err:
        small.apply(lb_body(port=2, eps=["198.18.14.2", "198.18.14.3", "198.18.14.4"]))
    assert err.value.status == 403 and err.value.message.startswith("endpoints:")
    small.apply(lb_body(port=1, eps=[*EPS, "198.18.14.2", "198.18.14.3"]))  # 5: fits
    assert len(small.table.book.slots.used) == 5


def test_more_endpoints_than_a_rule_holds_is_a_400_naming_the_field(small: DpHarness) -> None:
    eps = [f"198.18.20.{i}" for i in range(1, L.LB_MAX_ENDPOINTS + 2)]
    with pytest.raises(InvalidInput) as err:
        small.apply(lb_body(eps=eps))
    assert err.value.field == "endpoints" and str(L.LB_MAX_ENDPOINTS) in str(err.value)


def test_service_keys_past_the_limit_are_refused_with_403(small: DpHarness) -> None:
    small.apply(lb_body(port=1, portMax=65535, eps=[EPS[0]]))
    with pytest.raises(ApiError) as err:
        small.apply(lb_body(port=1, portMax=2000, eps=[EPS[0]], proto="udp"))
    assert err.value.status == 403 and "portMax" in err.value.message
