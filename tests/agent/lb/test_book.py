"""The rule book (loxicmd/agent/lb/book.py): the checks a change passes before anything is
programmed (attach/detach, "unchanged", overlapping ports, capacity) and the bookkeeping of
rule ids and endpoint slots. Pure Python: small limits, no datapath."""

from __future__ import annotations

from dataclasses import replace

import pytest

from datapath.layouts import LB_ALLOW_ENTRIES, LB_MAX_ENDPOINTS, LB_MAX_SVC_KEYS
from loxicmd.agent.errors import ApiError, InvalidInput
from loxicmd.agent.lb.book import Change, IdPool, RuleBook, RuleRecord, merge_endpoints
from loxicmd.agent.lb.model import Endpoint, LbRule, RuleKey, parse_lb_entry
from loxicmd.names import OPER_ATTACH, OPER_CREATE, OPER_DETACH, RULE_UNCHANGED

VIP = "198.18.100.1"
EP1, EP2, EP3, EP4 = "198.18.11.2", "198.18.12.2", "198.18.13.2", "198.18.14.2"


def key(port: int = 80, port_max: int | None = None, protocol: str = "tcp", mark: int = 0,
        vip: str = VIP) -> RuleKey:
    return RuleKey(vip, port, port if port_max is None else port_max, protocol, mark, "")


def rule(*eps: str, k: RuleKey | None = None, name: str = "", target: int = 8080,
         sources: tuple[str, ...] = (), **options: object) -> LbRule:
    """A rule of `eps` (addresses, all on `target`)."""
    r = LbRule(key=k or key(), name=name, allowed_sources=sources, **options)  # type: ignore[arg-type]
    return r.with_endpoints([Endpoint(ip, target) for ip in eps])


def install(book: RuleBook, r: LbRule, oper: int = OPER_CREATE,
            keep_name: bool = False) -> Change:
    """What the rule table does with a change that succeeds: check, assign, put, free
    the slots of endpoints that went."""
    checked, current = book.check(r, oper, keep_name)
    change = book.assign(checked, current, {})
    book.put(change.record)
    book.slots.free(change.gone)
    return change


def refused(book: RuleBook, r: LbRule, oper: int = OPER_CREATE,
            keep_name: bool = False) -> ApiError:
    with pytest.raises(ApiError) as err:
        book.check(r, oper, keep_name)
    return err.value


@pytest.fixture
def book() -> RuleBook:
    return RuleBook(max_rules=3, max_endpoints=5)


# --------------------------------------------------------------------------- create / update


def test_a_new_rule_gets_an_id_and_a_slot_per_endpoint(book: RuleBook) -> None:
    """Ids and slots are distinct numbers below their limits."""
    change = install(book, rule(EP1, EP2))
    assert change.current is None
    assert change.record.rule_id == 0
    assert set(change.record.slots) == {(EP1, 8080), (EP2, 8080)}
    assert sorted(change.fresh) == sorted(change.record.slots.values())
    assert len(set(change.fresh)) == 2 and all(0 <= s < 5 for s in change.fresh)
    assert change.gone == []
    assert book.records[key()] is change.record and book.by_id[0] is change.record


def test_posting_the_same_rule_again_is_a_409_saying_unchanged(book: RuleBook) -> None:
    """kube-loxilb takes a message saying "exist" as done; apply reports it unchanged."""
    install(book, rule(EP1, name="web"))
    err = refused(book, rule(EP1, name="web"))
    assert err.status == 409
    assert err.message == f"rule {VIP}:80/tcp {RULE_UNCHANGED}"
    assert err.message.endswith(RULE_UNCHANGED)


def test_an_update_without_a_name_keeps_the_rules_name(book: RuleBook) -> None:
    """keep_name: the request named no service; the rule keeps its own (and is then
    unchanged)."""
    install(book, rule(EP1, name="web"))
    err = refused(book, rule(EP1, name=""), keep_name=True)
    assert err.status == 409 and err.message.endswith(RULE_UNCHANGED)
    checked, current = book.check(rule(EP1, EP2, name=""), OPER_CREATE, keep_name=True)
    assert checked.name == "web" and current is book.records[key()]


def test_an_update_that_names_the_service_empty_clears_it(book: RuleBook) -> None:
    """"" is a name given: the rule is changed, not unchanged."""
    install(book, rule(EP1, name="web"))
    checked, current = book.check(rule(EP1, name=""), OPER_CREATE, keep_name=False)
    assert checked.name == "" and current is not None


def test_an_update_keeps_the_id_and_the_slots_of_endpoints_that_stay(book: RuleBook) -> None:
    """Their counters and flows stay; only new endpoints take slots, gone ones are listed."""
    first = install(book, rule(EP1, EP2))
    slots = dict(first.record.slots)
    second = install(book, rule(EP2, EP3))
    assert second.current is first.record
    assert second.record.rule_id == first.record.rule_id
    assert second.record.slots[(EP2, 8080)] == slots[(EP2, 8080)]
    assert second.fresh == (second.record.slots[(EP3, 8080)],)
    assert second.fresh[0] not in slots.values()
    assert second.gone == [slots[(EP1, 8080)]]
    assert book.slots.used == set(second.record.slots.values())
    assert len(book.rule_ids.used) == 1


def test_an_endpoint_with_a_new_weight_keeps_its_slot(book: RuleBook) -> None:
    """An endpoint is its address and port; its weight is an option."""
    first = install(book, rule(EP1))
    heavier = rule(EP1).with_endpoints([Endpoint(EP1, 8080, 9)])
    second = install(book, heavier)
    assert second.fresh == () and second.gone == []
    assert second.record.slots == first.record.slots


# --------------------------------------------------------------------------- attach / detach


@pytest.mark.parametrize(("oper", "verb"), [(OPER_ATTACH, "attach endpoints to"),
                                            (OPER_DETACH, "detach endpoints from")])
def test_attach_or_detach_to_a_missing_rule_is_a_404(book: RuleBook, oper: int,
                                                     verb: str) -> None:
    """There is nothing to merge with."""
    err = refused(book, rule(EP1, k=key(81)), oper)
    assert err.status == 404
    assert err.message == f"no rule {VIP}:81/tcp to {verb}"


def test_attach_adds_endpoints_and_keeps_the_rules_options(book: RuleBook) -> None:
    """Only the endpoints of an attach request count; an endpoint there already is
    replaced (its weight)."""
    install(book, rule(EP1, name="web", sel=2))
    change = install(book, rule(EP2, name="other", sel=0).with_endpoints(
        [Endpoint(EP2, 8080), Endpoint(EP1, 8080, 7)]), OPER_ATTACH)
    r = book.records[key()].rule
    assert (r.name, r.sel) == ("web", 2)
    assert r.endpoints == (Endpoint(EP1, 8080, 7), Endpoint(EP2, 8080, 1))
    assert len(change.fresh) == 1


def test_attaching_what_is_there_is_not_refused_as_unchanged(book: RuleBook) -> None:
    """Attach is idempotent (LoxiLB's clients retry)."""
    install(book, rule(EP1))
    checked, current = book.check(rule(EP1), OPER_ATTACH, keep_name=False)
    assert current is not None and checked == current.rule


def test_detach_removes_endpoints_and_frees_their_slots(book: RuleBook) -> None:
    """The slot of a detached endpoint is in Change.gone."""
    first = install(book, rule(EP1, EP2, EP3))
    change = install(book, rule(EP2), OPER_DETACH)
    assert [e.ip for e in book.records[key()].rule.endpoints] == [EP1, EP3]
    assert change.gone == [first.record.slots[(EP2, 8080)]]
    assert len(book.slots.used) == 2


def test_detaching_an_endpoint_the_rule_lacks_is_a_404_naming_it(book: RuleBook) -> None:
    """Each missing endpoint is named, with the rule."""
    install(book, rule(EP1))
    err = refused(book, rule(EP1, EP2, EP3), OPER_DETACH)
    assert err.status == 404
    assert err.message == f"endpoints: {EP2}:8080, {EP3}:8080 not in rule {VIP}:80/tcp"
    assert [e.ip for e in book.records[key()].rule.endpoints] == [EP1]


def test_attaching_past_the_endpoints_of_a_rule_is_a_400() -> None:
    """The datapath holds 64 endpoints per rule."""
    base = rule(*[f"198.18.20.{i}" for i in range(1, LB_MAX_ENDPOINTS + 1)])
    with pytest.raises(InvalidInput) as err:
        merge_endpoints(base, rule(EP1), OPER_ATTACH)
    assert err.value.field == "endpoints"
    assert f"{LB_MAX_ENDPOINTS + 1} endpoints" in err.value.why
    assert f"at most {LB_MAX_ENDPOINTS} per rule" in err.value.why


# --------------------------------------------------------------------------- overlapping ports


def test_overlapping_port_ranges_of_one_service_are_a_409_naming_both(book: RuleBook) -> None:
    """A packet to port 150 could match either rule."""
    install(book, rule(EP1, k=key(100, 200)))
    err = refused(book, rule(EP1, k=key(150, 250)))
    assert err.status == 409
    assert err.message == f"ports of {VIP}:150-250/tcp overlap rule {VIP}:100-200/tcp"
    assert refused(book, rule(EP1, k=key(200))).status == 409
    assert refused(book, rule(EP1, k=key(1, 100))).status == 409
    assert refused(book, rule(EP1, k=key(120, 130))).status == 409


@pytest.mark.parametrize("other", [
    key(201, 300), key(1, 99), key(150, 250, protocol="udp"), key(150, 250, mark=3),
    key(150, 250, vip="198.18.100.2")])
def test_ranges_that_do_not_share_a_service_key_do_not_overlap(book: RuleBook,
                                                               other: RuleKey) -> None:
    """Adjacent ports, another protocol, another mark or another VIP are other keys."""
    install(book, rule(EP1, k=key(100, 200)))
    install(book, rule(EP2, k=other))
    assert len(book.records) == 2


def test_a_mark_is_named_in_the_overlap_message(book: RuleBook) -> None:
    """Rules that differ only by mark are told apart in messages."""
    install(book, rule(EP1, k=key(100, 200, mark=3)))
    err = refused(book, rule(EP1, k=key(150, mark=3)))
    assert err.message == f"ports of {VIP}:150/tcp mark 3 overlap rule {VIP}:100-200/tcp mark 3"


# --------------------------------------------------------------------------- capacity


def test_rules_past_the_limit_are_a_403_naming_it(book: RuleBook) -> None:
    """A rule id per rule; an update of an existing rule needs none."""
    for port in (1, 2, 3):
        install(book, rule(k=key(port)))
    err = refused(book, rule(k=key(4)))
    assert err.status == 403
    assert err.message == ("serviceArguments: the datapath holds at most 3 rules; "
                           "delete some first")
    install(book, rule(EP1, k=key(3)))  # an update of a rule there is not a new rule


def test_endpoint_slots_past_the_limit_are_a_403_naming_what_is_free(book: RuleBook) -> None:
    """Only endpoints new to the rule count; endpoints that stay keep their slot."""
    install(book, rule(EP1, EP2, EP3, k=key(1)))
    err = refused(book, rule("198.18.20.1", "198.18.20.2", "198.18.20.3", k=key(2)))
    assert err.status == 403
    assert err.message == "endpoints: 3 new endpoints, 2 of 5 endpoint slots are free"
    install(book, rule(EP1, EP2, EP3, EP4, "198.18.20.1", k=key(1)))  # 2 new: fits
    assert book.slots.available == 0


def test_the_slot_pool_itself_refuses_past_its_size() -> None:
    """The last line of defence names the field and the limit too."""
    pool = IdPool(2, "endpoint", "endpoints")
    assert {pool.allocate(), pool.allocate()} == {0, 1}
    with pytest.raises(ApiError) as err:
        pool.allocate()
    assert err.value.status == 403
    assert err.value.message == "endpoints: the datapath holds at most 2 endpoints; delete " \
                                "some first"
    pool.free([0])
    assert pool.allocate() == 0 and pool.available == 0


def test_service_keys_of_ranges_past_the_limit_are_a_403_naming_the_range(
        book: RuleBook) -> None:
    """Every port of a range is one service key; the datapath has a fixed number."""
    install(book, rule(k=key(1, 65535)))
    install(book, rule(k=key(1, protocol="udp")))  # 65,536 in all: exactly full
    assert LB_MAX_SVC_KEYS == 65536
    err = refused(book, rule(k=key(2, 3, protocol="udp")))
    assert err.status == 403
    assert err.message == ("serviceArguments.portMax: the range needs 2 service entries, "
                           f"0 of {LB_MAX_SVC_KEYS} are free")
    assert refused(book, rule(k=key(2, protocol="udp"))).status == 403  # one more is one too many
    install(book, rule(EP1, k=key(1, 65535)))  # its own keys are not counted twice


def test_allow_list_entries_past_the_limit_are_a_403_naming_what_is_free(
        book: RuleBook) -> None:
    """Allow-list prefixes of all rules share one map."""
    many = tuple(f"10.{i // 256}.{i % 256}.0/24" for i in range(LB_ALLOW_ENTRIES - 10))
    install(book, rule(k=key(1), sources=many))
    few = tuple(f"198.18.{i}.0/24" for i in range(11))
    err = refused(book, rule(k=key(2), sources=few))
    assert err.status == 403
    assert err.message == (f"allowedSources: 11 prefixes, 10 of {LB_ALLOW_ENTRIES} entries "
                           "are free")
    install(book, rule(k=key(2), sources=few[:10]))
    install(book, rule(EP1, k=key(1), sources=many))  # its own entries count once


def test_deleting_a_rule_gives_its_service_keys_and_entries_back() -> None:
    """The totals the checks use follow every put and drop: a full datapath has room
    again once a rule goes."""
    book = RuleBook(max_rules=8, max_endpoints=8)
    wide = install(book, rule(k=key(1, 65535), sources=("10.0.0.0/8",))).record
    assert refused(book, rule(k=key(1, 2, protocol="udp"))).status == 403  # 65,537
    book.drop(wide)
    book.release(wide)
    install(book, rule(k=key(1, 65534), sources=("10.0.0.0/8",)))
    install(book, rule(k=key(1, 2, protocol="udp")))  # 65,534 + 2: exactly full
    assert refused(book, rule(k=key(3, protocol="udp"))).status == 403
    install(book, rule(EP1, k=key(1, 65534), sources=("10.0.0.0/8",)))  # an update: same keys


def test_the_kept_totals_are_what_a_recount_gives() -> None:
    """After creates, updates, attach/detach and deletes of rules on shared and other
    addresses, the index and totals the checks read equal counting the records."""
    book = RuleBook(max_rules=16, max_endpoints=16)
    vips = (VIP, "198.18.100.2")
    for i in range(6):
        install(book, rule(EP1, k=key(100 * i + 1, 100 * i + 1 + i, vip=vips[i % 2]),
                           sources=tuple(f"10.{i}.{j}.0/24" for j in range(i))))
    install(book, rule(EP1, EP2, k=key(1, 1, vip=VIP), sources=("10.9.0.0/16",)))
    install(book, rule(EP3, k=key(1, 1, vip=VIP)), OPER_ATTACH)
    install(book, rule(EP1, k=key(1, 1, vip=VIP)), OPER_DETACH)
    install(book, rule(EP4, k=key(7, mark=5)))  # alone on its address: gone with it
    for k in [key(201, 203, vip=VIP), key(101, 102, vip=vips[1]), key(7, mark=5)]:
        rec = book.records[k]
        book.drop(rec)
        book.release(rec)
    rules = [r.rule for r in book.records.values()]
    assert book.svc_keys_used == sum(r.key.port_max - r.key.port + 1 for r in rules)
    assert book.allow_used == sum(len(r.allowed_sources) for r in rules)
    index: dict[tuple[str, str, int, str], set[RuleKey]] = {}
    for r in rules:
        index.setdefault((r.key.external_ip, r.key.protocol, r.key.mark, r.key.host),
                         set()).add(r.key)
    assert book.by_address == index
    assert refused(book, rule(EP1, k=key(402, 410, vip=VIP))).status == 409
    install(book, rule(EP1, k=key(202, 202, vip=VIP)))  # the deleted rule's ports are free


def test_a_refused_check_changes_nothing(book: RuleBook) -> None:
    """Checks come before anything is taken."""
    install(book, rule(EP1, EP2, EP3, EP4, k=key(1)))
    before = (dict(book.records), set(book.slots.used), set(book.rule_ids.used))
    refused(book, rule("198.18.20.1", "198.18.20.2", k=key(2)))
    assert (dict(book.records), set(book.slots.used), set(book.rule_ids.used)) == before


# --------------------------------------------------------------------------- bookkeeping


def test_release_failed_gives_back_a_new_rules_id_and_slots(book: RuleBook) -> None:
    """A change the datapath refused leaves the book as it was."""
    r = rule(EP1, EP2)
    checked, current = book.check(r, OPER_CREATE, False)
    change = book.assign(checked, current, {})
    assert book.rule_ids.used and book.slots.used
    book.release_failed(change)
    assert book.rule_ids.used == set() and book.slots.used == set()


def test_release_failed_of_an_update_keeps_the_rules_id_and_old_slots(book: RuleBook) -> None:
    """Only what the failed update took is given back."""
    first = install(book, rule(EP1))
    checked, current = book.check(rule(EP1, EP2), OPER_CREATE, False)
    change = book.assign(checked, current, {})
    assert len(book.slots.used) == 2
    book.release_failed(change)
    assert book.slots.used == set(first.record.slots.values())
    assert book.rule_ids.used == {first.record.rule_id}


def test_release_gives_back_a_deleted_rules_id_and_slots(book: RuleBook) -> None:
    """drop forgets the rule; release frees what it held, for the next rule."""
    change = install(book, rule(EP1, EP2))
    install(book, rule(EP3, k=key(81)))
    book.drop(change.record)
    book.release(change.record)
    assert key() not in book.records and change.record.rule_id not in book.by_id
    assert book.rule_ids.available == 2 and book.slots.available == 4
    assert book.find(VIP, 80, None, "tcp", 0, "") == []


def test_restore_takes_the_ids_and_slots_a_record_had(book: RuleBook) -> None:
    """A restart keeps ids and slots (pinned counters stay with their rule); new rules
    get others."""
    r = rule(EP1, EP2)
    book.restore(RuleRecord(2, r, {(EP1, 8080): 4, (EP2, 8080): 0}))
    assert book.rule_ids.used == {2} and book.slots.used == {0, 4}
    assert book.records[key()].rule_id == 2 and book.name_of(2) == ""
    change = install(book, rule(EP3, k=key(81)))
    assert change.record.rule_id != 2
    assert change.fresh[0] not in (0, 4)


def test_assign_records_the_sources_given(book: RuleBook) -> None:
    """One-arm/fullnat: the node's address towards each endpoint goes with the record."""
    r = rule(EP1, mode=1)
    checked, current = book.check(r, OPER_CREATE, False)
    change = book.assign(checked, current, {(EP1, 8080): "198.18.11.1"})
    assert change.record.sources == {(EP1, 8080): "198.18.11.1"}


def test_find_by_name_and_name_of_look_rules_up(book: RuleBook) -> None:
    """find: port_max None matches any range from that port; by_name every rule of a
    service; name_of "" for an unknown id."""
    a = install(book, rule(EP1, k=key(80), name="web")).record
    b = install(book, rule(EP1, k=key(80, protocol="udp"), name="web")).record
    c = install(book, rule(EP1, k=key(8000, 8100), name="range")).record
    assert book.find(VIP, 80, None, "tcp", 0, "") == [key(80)]
    assert book.find(VIP, 80, 80, "tcp", 0, "") == [key(80)]
    assert book.find(VIP, 8000, None, "tcp", 0, "") == [key(8000, 8100)]
    assert book.find(VIP, 8000, 8000, "tcp", 0, "") == []
    assert book.find(VIP, 80, None, "tcp", 1, "") == []
    assert book.find("198.18.100.2", 80, None, "tcp", 0, "") == []
    assert sorted(book.by_name("web"), key=lambda k: k.protocol) == [
        key(80), key(80, protocol="udp")]
    assert book.by_name("nope") == []
    assert [book.name_of(x.rule_id) for x in (a, b, c)] == ["web", "web", "range"]
    assert book.name_of(99) == ""


def test_rules_parsed_from_requests_go_through_the_book(book: RuleBook) -> None:
    """The model's rule and the book agree: an update without a name keeps it."""
    req = {"serviceArguments": {"externalIP": VIP, "port": 80, "name": "web"},
           "endpoints": [{"endpointIP": EP1}]}
    r, oper, named = parse_lb_entry(req)
    install(book, r, oper, keep_name=not named)
    del req["serviceArguments"]["name"]
    r, oper, named = parse_lb_entry(req)
    err = refused(book, r, oper, keep_name=not named)
    assert err.status == 409 and err.message.endswith(RULE_UNCHANGED)
    r2 = replace(r, endpoints=(*r.endpoints, Endpoint(EP2, 80)))
    assert book.check(r2, OPER_CREATE, keep_name=True)[0].name == "web"
