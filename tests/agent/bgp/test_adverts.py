"""Which routes each neighbour gets, with which attributes, and the ExaBGP commands that
bring a neighbour from what it has to what it should have."""

from __future__ import annotations

import pytest

from loxicmd.agent.bgp.adverts import (
    PREFIXES_PER_COMMAND,
    Attributes,
    ServiceVips,
    desired_routes,
    route_commands,
)
from loxicmd.agent.bgp.settings import GlobalConfig, Neighbor
from loxicmd.agent.lb.book import RuleRecord
from loxicmd.agent.lb.model import LbRule, RuleKey

LOCAL = "198.18.1.2"
EBGP = Neighbor("198.18.1.10", 64512)
IBGP = Neighbor("198.18.1.20", 64601)
SELF = GlobalConfig("198.18.1.2", 64601, nexthop_self=True)
NO_SELF = GlobalConfig("198.18.1.2", 64601)


def routes(state: str, policy: str = "worse", neighbor: Neighbor = EBGP,
           glob: GlobalConfig = SELF, vip: str = "") -> dict[str, Attributes]:
    return desired_routes([("198.18.100.1", "default")],
                          {"default": {"state": state, "vip": vip}}, glob, neighbor, LOCAL,
                          policy)


@pytest.mark.parametrize(("state", "policy", "expected"), [
    ("MASTER", "worse", (10, 5000)),
    ("NOT_DEFINED", "worse", (10, 5000)),  # no HA: the node serves as a master does
    ("BACKUP", "worse", (20, 100)),
    ("BACKUP", "withdraw", None),
    ("FAULT", "worse", None),
    ("STOP", "worse", None),
])
def test_role_attributes(state: str, policy: str, expected: tuple[int, int] | None) -> None:
    got = routes(state, policy, neighbor=IBGP)
    if expected is None:
        assert got == {}
    else:
        assert got == {"198.18.100.1/32": Attributes(LOCAL, *expected)}


def test_local_preference_only_to_ibgp_peers() -> None:
    assert routes("MASTER", neighbor=EBGP) == {"198.18.100.1/32": Attributes(LOCAL, 10, None)}
    assert routes("MASTER", neighbor=IBGP)["198.18.100.1/32"].local_pref == 5000


def test_next_hop_self_or_the_instance_vip() -> None:
    assert routes("MASTER", vip="198.18.1.1")["198.18.100.1/32"].next_hop == LOCAL
    assert routes("MASTER", glob=NO_SELF, vip="198.18.1.1")["198.18.100.1/32"].next_hop \
        == "198.18.1.1"
    assert routes("MASTER", glob=NO_SELF)["198.18.100.1/32"].next_hop == LOCAL
    # an instance VIP of the other family cannot be the next hop of this route
    assert routes("MASTER", glob=NO_SELF, vip="2001:db8::1")["198.18.100.1/32"].next_hop \
        == LOCAL


def test_a_vip_of_two_instances_takes_the_better_role_and_families_stay_apart() -> None:
    pairs = [("198.18.100.1", "a"), ("198.18.100.1", "b"), ("2001:db8::5", "a")]
    instances = {"a": {"state": "BACKUP", "vip": "2001:db8::1"},
                 "b": {"state": "MASTER", "vip": ""}}
    # an IPv4 session carries IPv4 routes only, whatever next hop a v6 VIP could have
    got = desired_routes(pairs, instances, NO_SELF, EBGP, LOCAL, "worse")
    assert got == {"198.18.100.1/32": Attributes(LOCAL, 10, None)}
    v6_peer = Neighbor("2001:db8::10", 64512)
    got = desired_routes(pairs, instances, NO_SELF, v6_peer, "2001:db8::2", "worse")
    assert got == {"2001:db8::5/128": Attributes("2001:db8::1", 20, None)}


def test_route_commands_withdraw_first_then_group_by_attributes() -> None:
    a, b = Attributes(LOCAL, 10, None), Attributes(LOCAL, 20, None)
    sent = {"198.18.100.1/32": a, "198.18.100.2/32": a, "198.18.100.3/32": a}
    want = {"198.18.100.2/32": a, "198.18.100.3/32": b, "198.18.100.4/32": b,
            "198.18.100.5/32": a}
    commands = route_commands("198.18.1.10", sent, want)
    assert [c for c, _ in commands] == [
        "neighbor 198.18.1.10 withdraw attributes next-hop 198.18.1.2 nlri 198.18.100.1/32",
        "neighbor 198.18.1.10 announce attributes next-hop 198.18.1.2 med 20 nlri "
        "198.18.100.3/32 198.18.100.4/32",
        "neighbor 198.18.1.10 announce attributes next-hop 198.18.1.2 med 10 nlri "
        "198.18.100.5/32",
    ]
    for _, change in commands:
        for prefix, attrs in change.items():
            if attrs is None:
                del sent[prefix]
            else:
                sent[prefix] = attrs
    assert sent == want and route_commands("198.18.1.10", sent, want) == []


def test_many_prefixes_are_cut_into_commands() -> None:
    a = Attributes(LOCAL, 10, 5000)
    want = {f"198.18.{i // 250}.{i % 250}/32": a for i in range(2 * PREFIXES_PER_COMMAND + 1)}
    commands = route_commands("198.18.1.20", {}, want)
    assert len(commands) == 3
    assert all("med 10 local-preference 5000 nlri" in c for c, _ in commands)
    assert sum(len(change) for _, change in commands) == len(want)


def _record(rule_id: int, vip: str, bgp: bool, name: str = "") -> RuleRecord:
    return RuleRecord(rule_id, LbRule(RuleKey(vip, 80, 80, "tcp", 0, ""), bgp=bgp, name=name))


def test_service_vips_count_rules_by_vip_and_instance() -> None:
    woken: list[int] = []
    vips = ServiceVips(on_change=lambda: woken.append(1))
    web = _record(0, "198.18.100.1", True, "web")
    web443 = _record(1, "198.18.100.1", True, "web443")
    other = _record(2, "198.18.100.2", True, "db:inst1")
    for record in (web, web443, other, _record(3, "198.18.100.3", False)):
        vips.rule_changed(None, record)
    assert sorted(vips.pairs()) == [("198.18.100.1", "default"), ("198.18.100.2", "inst1")]
    vips.rule_changed(web, None)
    assert ("198.18.100.1", "default") in vips.pairs()  # web443 still has it
    vips.rule_changed(web443, _record(1, "198.18.100.1", False, "web443"))  # bgp turned off
    assert vips.vips() == {"198.18.100.2"}
    before = len(woken)
    vips.rule_changed(other, _record(2, "198.18.100.2", True, "db:inst1"))  # same key
    assert len(woken) == before
