"""Probe specs and their rules (loxicmd/agent/health/spec.py): what `validate` refuses,
naming the field (as ProbeSpec names it), the value and what is allowed, and the attempt
timeout that goes with a probe period."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from loxicmd.agent.health.spec import (
    ATTEMPT_TIMEOUT_S,
    MAX_PERIOD_S,
    MAX_RETRIES,
    MAX_TEXT,
    MIN_PERIOD_S,
    ProbeSpec,
    attempt_timeout,
    validate,
)
from loxicmd.api.wire import InvalidInput
from loxicmd.names import PROBE_TYPES

HOST = "198.18.11.2"
PORTS = {"ping": 0, "none": 0, "tcp": 80, "udp": 53, "http": 8080, "https": 8443}


def spec(ptype: str = "tcp", **kw: Any) -> ProbeSpec:
    """A valid spec of `ptype`, with `kw` on top."""
    return replace(ProbeSpec(HOST, ptype, PORTS[ptype]), **kw)


def refusal(s: ProbeSpec) -> InvalidInput:
    """The InvalidInput validate raises (the API's own type, so the agent answers 400)."""
    with pytest.raises(InvalidInput) as err:
        validate(s)
    assert str(err.value) == f"{err.value.field}: {err.value.why}"
    return err.value


@pytest.mark.parametrize("ptype", PROBE_TYPES)
def test_a_spec_of_each_type_with_its_port_is_valid(ptype: str) -> None:
    """The baseline the refusals below change one field of."""
    validate(spec(ptype))


def test_the_limits_themselves_are_allowed() -> None:
    """Bounds are inclusive where they say so."""
    validate(spec("tcp", port=1, interval_s=MIN_PERIOD_S, timeout_s=MIN_PERIOD_S / 2,
                  retries=1))
    validate(spec("udp", port=65535, interval_s=MAX_PERIOD_S, timeout_s=2.0,
                  retries=MAX_RETRIES, req="x" * MAX_TEXT, resp="y" * MAX_TEXT))
    validate(spec("udp", interval_s=5, timeout_s=4.999))


# --------------------------------------------------------------------------- host, type, port


@pytest.mark.parametrize(("host", "why"), [
    ("198.18.1", "'198.18.1' is not an IPv4 address; allowed: a dotted-quad IPv4 address"),
    ("2001:db8::1", "'2001:db8::1' is not an IPv4 address"),
    (3325170690, "3325170690 is not an IPv4 address"),
    ("0.0.0.0", "'0.0.0.0' is not a unicast address; allowed: a unicast IPv4 address"),
    ("224.0.0.9", "'224.0.0.9' is not a unicast address"),
    ("255.255.255.255", "'255.255.255.255' is not a unicast address"),
])
def test_the_host_must_be_a_unicast_ipv4_address(host: Any, why: str) -> None:
    """Probes go to one IPv4 host."""
    err = refusal(spec(host=host))
    assert err.field == "host" and err.why.startswith(why)


def test_an_unknown_probe_type_is_refused_listing_those_carried_out() -> None:
    """sctp is LoxiLB's, not carried out here."""
    for ptype in ("sctp", "icmp", "", "TCP"):
        err = refusal(ProbeSpec(HOST, ptype, 80))
        assert err.field == "ptype"
        assert err.why == f"{ptype!r} is unknown; allowed: ping, tcp, udp, http, https, none"


@pytest.mark.parametrize("ptype", ["tcp", "udp", "http", "https"])
@pytest.mark.parametrize("port", [0, -1, 65536])
def test_a_port_is_required_for_types_that_connect(ptype: str, port: int) -> None:
    """tcp, udp, http and https probe a port: 1..65535."""
    err = refusal(spec(ptype, port=port))
    assert err.field == "port"
    assert err.why == (f"{port} is out of range for probe type {ptype}; "
                       "allowed: 1..65535 (required)")


@pytest.mark.parametrize("ptype", ["ping", "none"])
def test_a_port_is_forbidden_for_ping_and_none(ptype: str) -> None:
    """A port given to ping would be a mistake silently ignored."""
    err = refusal(spec(ptype, port=80))
    assert (err.field, err.why) == ("port", f"80 is not allowed with probe type {ptype}; "
                                    "allowed: 0")


@pytest.mark.parametrize("port", ["80", 80.0, True, None])
def test_a_port_must_be_an_integer(port: Any) -> None:
    """A boolean is not a port even though Python says it is an int."""
    err = refusal(spec("tcp", port=port))
    assert (err.field, err.why) == ("port", f"{port!r} is not an integer")


# --------------------------------------------------------------------------- request, response


@pytest.mark.parametrize("ptype", ["ping", "none"])
@pytest.mark.parametrize("name", ["req", "resp"])
def test_request_and_response_are_refused_for_ping_and_none(ptype: str, name: str) -> None:
    """Neither sends nor reads anything."""
    err = refusal(spec(ptype, **{name: "hello"}))
    assert (err.field, err.why) == (name, f"'hello' is not used by probe type {ptype}; "
                                    "allowed: empty")


def test_tcp_and_udp_take_any_request_and_response_text() -> None:
    """They are bytes to send and a substring to expect, not paths."""
    for ptype in ("tcp", "udp"):
        validate(spec(ptype, req="PING\r\n", resp="+PONG"))


@pytest.mark.parametrize("name", ["req", "resp"])
def test_request_and_response_have_a_length_limit(name: str) -> None:
    """A multi-megabyte request would be sent every period."""
    err = refusal(spec("udp", **{name: "x" * (MAX_TEXT + 1)}))
    assert (err.field, err.why) == (name, f"{MAX_TEXT + 1} characters is too long; "
                                    f"allowed: up to {MAX_TEXT}")


@pytest.mark.parametrize("name", ["req", "resp"])
def test_request_and_response_must_be_strings(name: str) -> None:
    """Bytes are not text."""
    err = refusal(spec("tcp", **{name: b"x"}))
    assert (err.field, err.why) == (name, "b'x' is not a string")


@pytest.mark.parametrize("ptype", ["http", "https"])
@pytest.mark.parametrize("path", ["/", "/healthz", "/h?x=1&y=%20", "", "/a/b/c.html"])
def test_an_http_request_is_a_url_path(ptype: str, path: str) -> None:
    """Empty means "/"; query strings and escapes are part of a path."""
    validate(spec(ptype, req=path))


@pytest.mark.parametrize("ptype", ["http", "https"])
@pytest.mark.parametrize("path", ["healthz", "http://x/h", "/a b", "/a\tb", "/a\nb", "/\x00",
                                  "/\x7f", "/caf\u00e9", "/\u3000"])
def test_an_http_request_that_is_not_a_url_path_is_refused(ptype: str, path: str) -> None:
    """It goes into the request line: no spaces, controls or non-ASCII."""
    err = refusal(spec(ptype, req=path))
    assert (err.field, err.why) == ("req", f"{path!r} is not a URL path; allowed: an ASCII "
                                    "path starting with '/' without spaces or control "
                                    "characters")


def test_the_first_bad_field_is_the_one_named() -> None:
    """One message, in the order the fields are declared."""
    assert refusal(spec("ping", port=1, req="x", retries=0)).field == "port"
    assert refusal(spec("ping", req="x", retries=0)).field == "req"
    assert refusal(spec("tcp", interval_s=0, retries=0)).field == "interval_s"


# --------------------------------------------------------------------------- timing


@pytest.mark.parametrize("interval", [0.0, MIN_PERIOD_S / 2, -1, MAX_PERIOD_S + 0.5,
                                      float("nan"), float("inf"), "10", True])
def test_the_interval_has_a_range(interval: Any) -> None:
    """0.05 s to a day; not a number is refused too."""
    err = refusal(spec(interval_s=interval, timeout_s=0.01))
    assert err.field == "interval_s"
    assert err.why == f"{interval!r} is out of range; allowed: 0.05..86400 s"


@pytest.mark.parametrize("timeout", [0.0, -1.0, 10.0, 10.5, float("nan"), "1", None])
def test_the_attempt_timeout_is_positive_and_below_the_interval(timeout: Any) -> None:
    """An attempt must end before the next one starts."""
    err = refusal(spec(interval_s=10.0, timeout_s=timeout))
    assert err.field == "timeout_s"
    assert err.why == (f"{timeout!r} is out of range; allowed: more than 0 and less than "
                       "the interval (10 s)")


@pytest.mark.parametrize("retries", [0, -1, MAX_RETRIES + 1, 2.0, True, "2"])
def test_retries_are_an_integer_from_one_to_the_maximum(retries: Any) -> None:
    """0 failures before down would mean down without probing."""
    err = refusal(spec(retries=retries))
    assert (err.field, err.why) == ("retries", f"{retries!r} is out of range; "
                                    f"allowed: 1..{MAX_RETRIES}")


# --------------------------------------------------------------------------- ca_file


@pytest.mark.parametrize("ptype", ["tcp", "udp", "http", "ping", "none"])
def test_a_ca_file_is_only_for_https(ptype: str) -> None:
    """Only https verifies a certificate; elsewhere the option would be ignored."""
    err = refusal(spec(ptype, ca_file="/etc/ssl/ca.pem"))
    assert (err.field, err.why) == ("ca_file", f"'/etc/ssl/ca.pem' is not used by probe "
                                    f"type {ptype}; allowed: empty (only https verifies)")


def test_a_ca_file_that_cannot_be_read_as_a_bundle_is_refused(tmp_path: Path) -> None:
    """Missing, or not PEM: refused when given, not when the first probe runs."""
    missing = tmp_path / "none.pem"
    err = refusal(spec("https", ca_file=str(missing)))
    assert err.field == "ca_file"
    assert err.why.startswith(f"{str(missing)!r} is not a readable CA bundle (")
    assert err.why.endswith("allowed: a PEM file of CA certificates")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert refusal(spec("https", ca_file=str(junk))).field == "ca_file"
    assert refusal(spec("https", ca_file=5)).why == "5 is not a string"


def test_a_readable_ca_bundle_is_accepted_for_https() -> None:
    """A real bundle of CA certificates."""
    import certifi  # requests' dependency, in the test extras
    validate(spec("https", ca_file=certifi.where()))


# --------------------------------------------------------------------------- attempt_timeout


@pytest.mark.parametrize(("interval", "timeout"), [
    (86400, 2.0), (60, 2.0), (10, 2.0), (2.5, 2.0), (2.0, 1.0), (1, 0.5), (0.5, 0.25),
    (0.3, 0.15), (0.2, 0.1), (0.15, 0.075)])
def test_attempt_timeout_is_two_seconds_or_half_a_shorter_period(interval: float,
                                                                 timeout: float) -> None:
    """2 s, or half the period when that is shorter (it ends before the next one)."""
    assert attempt_timeout(interval) == pytest.approx(timeout)
    assert ATTEMPT_TIMEOUT_S == 2.0


@pytest.mark.parametrize("period", [1, 2, 3, 5, 10, 60, 3600, 86400])
def test_the_api_periods_with_their_attempt_timeout_are_valid_specs(period: int) -> None:
    """Rule and endpoint probes (whole seconds) are built so; validate must accept them."""
    for ptype in PROBE_TYPES:
        validate(spec(ptype, interval_s=float(period), timeout_s=attempt_timeout(period)))


@pytest.mark.parametrize("interval", [MIN_PERIOD_S, 0.08, 0.1])
def test_attempt_timeout_ends_before_the_next_attempt_for_every_allowed_period(
        interval: float) -> None:
    """Its own promise ("an attempt must end before the next one starts"), for every
    period validate accepts: a spec built with it must be valid."""
    assert attempt_timeout(interval) < interval
    validate(spec(interval_s=interval, timeout_s=attempt_timeout(interval)))
