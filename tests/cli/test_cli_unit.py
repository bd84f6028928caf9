"""Unit tests of loxicmd's pure parts: argument parsing, request bodies, rendering, exit codes.

No agent: usage errors never reach it, and the unreachable case uses a closed port.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from loxicmd.api import paths
from loxicmd.api.wire import InvalidInput
from loxicmd.cli import args, nouns, render
from loxicmd.cli.args import Endpoint, PortMap, PortRange
from loxicmd.cli.main import cli
from loxicmd.cli.nouns import ct, lb

# ---- argument parsing ---------------------------------------------------------------------


def _msg(exc: pytest.ExceptionInfo[click.BadParameter]) -> str:
    return exc.value.format_message()


def test_port_maps_list_means_separate_rules() -> None:
    assert args.parse_port_maps("80:8080,81:8081") == [PortMap(80, None, 8080),
                                                        PortMap(81, None, 8081)]
    assert args.parse_port_maps(["80:8080", "81-90:9090"]) == [PortMap(80, None, 8080),
                                                                PortMap(81, 90, 9090)]
    assert args.parse_port_maps("1:65535") == [PortMap(1, None, 65535)]
    assert args.parse_port_maps("90-90:1") == [PortMap(90, None, 1)]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("70000:80", "port must be 1..65535"),
        ("0:80", "port must be 1..65535"),
        ("65536:80", "port must be 1..65535"),
        ("abc:80", "port must be an integer 1..65535"),
        ("80:70000", "target port must be 0..65535 (0 keeps the client's port)"),
        ("80:x", "target port must be an integer 0..65535 (0 keeps the client's port)"),
        ("90-80:8080", "max port 80 is below port 90"),
        ("80-70000:8080", "max port must be 1..65535"),
        ("80", "expected <port>[-<max>]:<targetport>"),
        (":80", "expected <port>[-<max>]:<targetport>"),
        ("-1:80", "port must be an integer 1..65535"),
    ],
)
def test_port_map_bad_values(value: str, why: str) -> None:
    with pytest.raises(click.BadParameter) as exc:
        args.parse_port_maps(f"80:80,{value}", "--tcp")
    assert _msg(exc) == f"Invalid value for --tcp: '{value}': {why}"


def test_port_map_empty_item() -> None:
    with pytest.raises(click.BadParameter, match="empty item"):
        args.parse_port_maps("80:80,,81:81", "--tcp")


def test_delete_port_ranges() -> None:
    assert args.parse_port_ranges("80,81-85") == [PortRange(80, None), PortRange(81, 85)]
    assert args.parse_port_ranges("80:8080") == [PortRange(80, None)]  # create syntax accepted
    for bad in ("0", "70000", "abc", "90-80", "80:70000"):
        with pytest.raises(click.BadParameter, match=f"'{bad}'"):
            args.parse_port_ranges(bad, "--tcp")


def test_endpoints() -> None:
    assert args.parse_endpoints("10.0.0.1:1,10.0.0.2:255") == [Endpoint("10.0.0.1", 1),
                                                              Endpoint("10.0.0.2", 255)]
    # split at the LAST colon, so IPv6 works with or without brackets
    assert args.parse_endpoints(["[2001:db8::1]:5", "2001:db8::1:5"]) == [
        Endpoint("2001:db8::1", 5), Endpoint("2001:db8::1", 5)]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("10.0.0.1:0", "weight must be 1..255"),
        ("10.0.0.1:256", "weight must be 1..255"),
        ("10.0.0.1:300", "weight must be 1..255"),  # must not wrap to 44
        ("10.0.0.1:abc", "weight must be an integer 1..255"),
        ("10.0.0.1:-1", "weight must be an integer 1..255"),
        ("10.0.0.1", "expected <ip>:<weight> (weight 1..255)"),
        ("10.0.0:1", "not a valid IPv4 or IPv6 endpoint address"),
        ("2001:db8::1", "not a valid IPv4 or IPv6 endpoint address"),
    ],
)
def test_endpoint_bad_values(value: str, why: str) -> None:
    with pytest.raises(click.BadParameter) as exc:
        args.parse_endpoints(value, "--endpoints")
    assert _msg(exc) == f"Invalid value for --endpoints: '{value}': {why}"


def test_ips_and_prefixes() -> None:
    assert args.parse_ip("20.20.20.1") == "20.20.20.1"
    assert args.parse_ip("[2001:DB8:0::1]") == "2001:db8::1"
    assert args.parse_ips("1.1.1.1,2.2.2.2") == ["1.1.1.1", "2.2.2.2"]
    assert args.parse_cidrs(["10.0.0.0/8", "2001:db8::/32"]) == ["10.0.0.0/8", "2001:db8::/32"]
    for bad in ("1.2.3", "1.2.3.256", "host", ""):
        with pytest.raises(click.BadParameter):
            args.parse_ip(bad)
    with pytest.raises(click.BadParameter, match="'10.0.0.0/33'"):
        args.parse_cidrs("10.0.0.0/33")


def test_integers_never_wrap() -> None:
    assert args.parse_int("4294967295", "mark", 0, 2**32 - 1) == 2**32 - 1
    with pytest.raises(click.BadParameter, match="mark must be 0..4294967295"):
        args.parse_int("4294967296", "mark", 0, 2**32 - 1)
    with pytest.raises(click.BadParameter, match="must be an integer"):
        args.parse_int("1.5", "timeout", 0, 86400)


def test_service_name() -> None:
    assert args.parse_service_name("svc:1") == "svc:1"
    for bad in ("", ":1", "svc:"):
        with pytest.raises(click.BadParameter):
            args.parse_service_name(bad)


# ---- request bodies -----------------------------------------------------------------------


def test_two_mappings_two_bodies() -> None:
    bodies = lb.build_rules(
        "20.20.20.1", ports={"tcp": args.parse_port_maps("80:8080,81:8081")},
        endpoints=args.parse_endpoints("10.0.0.1:1,10.0.0.2:2"),
    )
    assert [b["serviceArguments"]["port"] for b in bodies] == [80, 81]
    assert [[e["targetPort"] for e in b["endpoints"]] for b in bodies] == [[8080, 8080],
                                                                          [8081, 8081]]
    # not given: the API's zero values (a single port, the protocol's idle timeout)
    assert all(b["serviceArguments"]["portMax"] == 0 for b in bodies)
    assert all(b["serviceArguments"]["inactiveTimeOut"] == 0 for b in bodies)
    assert all("name" not in b["serviceArguments"] for b in bodies)


def test_two_protocols_two_bodies() -> None:
    bodies = lb.build_rules("20.20.20.1", ports={"tcp": [PortMap(80, None, 80)],
                                                 "udp": [PortMap(80, None, 80)]})
    assert [b["serviceArguments"]["protocol"] for b in bodies] == ["tcp", "udp"]


def test_full_body() -> None:
    (body,) = lb.build_rules(
        "2001:db8::1", ports={"sctp": [PortMap(80, 90, 8080)]},
        endpoints=[Endpoint("2001:db8::10", 3)], mode="fullnat", select="priority", bgp=True,
        monitor=True, inactive_timeout=30, mark=7, name="svc:1", host="example.com",
        sources=["10.0.0.0/8"], secips=["2001:db8::2"],
    )
    assert body == {
        "serviceArguments": {
            "externalIP": "2001:db8::1", "privateIP": "", "port": 80, "portMax": 90,
            "protocol": "sctp", "sel": 2, "mode": 2, "bgp": True, "monitor": True,
            "probetype": "", "probeport": 0, "probereq": "", "proberesp": "",
            "probeTimeout": 0, "probeRetries": 0, "managed": False, "security": 0,
            "inactiveTimeOut": 30, "block": 7, "name": "svc:1", "snat": False, "oper": 0,
            "host": "example.com", "proxyprotocolv2": False, "egress": False,
        },
        "endpoints": [{"endpointIP": "2001:db8::10", "targetPort": 8080, "weight": 3}],
        "secondaryIPs": [{"secondaryIP": "2001:db8::2"}],
        "allowedSources": [{"prefix": "10.0.0.0/8"}],
    }


def test_icmp_body() -> None:
    (body,) = lb.build_rules("20.20.20.1", ports={}, icmp=True)
    assert body["serviceArguments"]["protocol"] == "icmp"
    assert body["serviceArguments"]["port"] == 0


def test_unknown_mode_and_select_rejected() -> None:
    with pytest.raises(click.BadParameter) as exc:
        lb.build_rules("1.1.1.1", ports={"tcp": [PortMap(80, None, 80)]}, mode="nat")
    assert "--mode: 'nat'" in _msg(exc) and "hostonearm" in _msg(exc)
    with pytest.raises(click.BadParameter) as exc:
        lb.build_rules("1.1.1.1", ports={"tcp": [PortMap(80, None, 80)]}, select="random")
    assert "--select: 'random'" in _msg(exc) and "persist" in _msg(exc)


def test_delete_paths() -> None:
    calls = lb.delete_calls("20.20.20.1", ports={"tcp": [PortRange(80, None), PortRange(81, 85)]},
                            icmp=True, bgp=True, mark=5)
    assert [c.path for c in calls] == [
        "/config/loadbalancer/externalipaddress/20.20.20.1/port/80/protocol/tcp",
        "/config/loadbalancer/externalipaddress/20.20.20.1/port/81/portmax/85/protocol/tcp",
        "/config/loadbalancer/externalipaddress/20.20.20.1/port/0/protocol/icmp",
    ]
    assert all(c.method == "DELETE" and c.query == {"bgp": True, "block": 5} for c in calls)
    (hosted,) = lb.delete_calls("2001:db8::1", ports={"udp": [PortRange(53, None)]},
                                host="a.example")
    assert hosted.path == ("/config/loadbalancer/hosturl/a.example/externalipaddress/"
                           "2001:db8::1/port/53/protocol/udp")
    assert hosted.query is None
    assert paths.fill(paths.LB_NAME, name="svc 1/x") == "/config/loadbalancer/name/svc%201%2Fx"


def test_ct_filters() -> None:
    assert ct.filters("svc", None, 80, None, 10) == {"servName": "svc", "port": 80, "limit": 10}


# ---- rendering ----------------------------------------------------------------------------


def _rule(ip: str, port: int, eps: list[dict[str, Any]] | None = None, **sa: Any) -> dict:
    args_ = {"externalIP": ip, "port": port, "protocol": "tcp", "sel": 0, "mode": 0,
             "monitor": False, "inactiveTimeOut": 240, "block": 0, "name": ""}
    args_.update(sa)
    return {"serviceArguments": args_, "endpoints": eps or [], "secondaryIPs": [],
            "allowedSources": []}


def _ep(ip: str, state: str = "active", weight: int = 1) -> dict[str, Any]:
    return {"endpointIP": ip, "targetPort": 8080, "weight": weight, "state": state,
            "counter": "10:1000"}


def _table(rows: Any, columns: Any, output: str = "table", raw: Any = None) -> str:
    out = io.StringIO()
    render.render(rows, columns, output, raw, out=out, tty=False)
    return out.getvalue()


def test_pipe_table_exact() -> None:
    body = {"lbAttr": [
        _rule("198.18.0.10", 80, [_ep("10.0.0.1")], sel=1, mode=2, name="web",
              monitor=True),
        _rule("198.18.0.9", 8080, [], portMax=8090, inactiveTimeOut=30, block=5),
    ]}
    text = _table(lb.sorted_rules(body), lb.COLUMNS)
    assert text == (
        "| EXT IP      | PORT      | PROTO | NAME | MARK | SEL  | MODE    | # OF ENDPOINTS "
        "| TIMEOUT | MONITOR |\n"
        "|-------------|-----------|-------|------|------|------|---------|----------------"
        "|---------|---------|\n"
        "| 198.18.0.9  | 8080-8090 | tcp   |      | 5    | rr   | default | 0              "
        "| 30      | Off     |\n"
        "| 198.18.0.10 | 80        | tcp   | web  | 0    | hash | fullnat | 1              "
        "| 240     | On      |\n"
    )
    assert "\x1b" not in text and not text.endswith("\n\n")


def test_empty_table_has_header_only() -> None:
    assert _table(lb.sorted_rules({"lbAttr": []}), lb.COLUMNS).count("\n") == 2


def test_numeric_ip_sort() -> None:
    rules = [_rule(ip, port) for ip, port in [
        ("2001:db8::1", 80), ("198.18.0.10", 80), ("198.18.0.9", 81), ("198.18.0.9", 80),
        ("10.0.0.1", 443), ("::1", 1),
    ]]
    order = [(r["serviceArguments"]["externalIP"], r["serviceArguments"]["port"])
             for r in lb.sorted_rules({"lbAttr": rules})]
    assert order == [("10.0.0.1", 443), ("198.18.0.9", 80), ("198.18.0.9", 81),
                     ("198.18.0.10", 80), ("::1", 1), ("2001:db8::1", 80)]


def _cells(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()[2:]]


def test_wide_continuation_rows_and_rules_without_endpoints() -> None:
    rules = lb.sorted_rules({"lbAttr": [
        _rule("20.20.20.1", 80, [_ep("10.0.0.1"), _ep("10.0.0.2", "inactive", 2)],
              monitor=True),
        _rule("20.20.20.2", 80, []),
        _rule("20.20.20.3", 80, [_ep("10.0.0.3")]),  # not monitored -> STATE '-'
    ]})
    rules[0]["allowedSources"] = [{"prefix": "10.0.0.0/8"}, {"prefix": "192.168.0.0/16"}]
    rules[0]["secondaryIPs"] = [{"secondaryIP": "20.20.20.9"}]
    text = _table(lb.wide_rows(rules), lb.WIDE_COLUMNS, "wide")
    header = [c.strip() for c in text.splitlines()[0].split("|")[1:-1]]
    assert header == ["EXT IP", "SEC IPS", "SOURCES", "HOST", "PORT", "PROTO", "NAME", "MARK",
                      "SEL", "MODE", "ENDPOINT", "EPORT", "WEIGHT", "STATE", "COUNTERS"]
    rows = _cells(text)
    assert rows == [
        ["20.20.20.1", "20.20.20.9", "10.0.0.0/8,192.168.0.0/16", "", "80", "tcp", "", "0",
         "rr", "default", "10.0.0.1", "8080", "1", "active", "10:1000"],
        ["", "", "", "", "", "", "", "", "", "", "10.0.0.2", "8080", "2", "inactive", "10:1000"],
        ["20.20.20.2", "", "", "", "80", "tcp", "", "0", "rr", "default", "", "", "", "", ""],
        ["20.20.20.3", "", "", "", "80", "tcp", "", "0", "rr", "default", "10.0.0.3", "8080",
         "1", "-", "10:1000"],
    ]


def test_json_passthrough_keeps_unknown_fields() -> None:
    body = {"lbAttr": [_rule("1.1.1.1", 80)], "futureField": {"x": [1, 2]}}
    body["lbAttr"][0]["serviceArguments"]["snat"] = True
    out = _table(lb.sorted_rules(body), lb.COLUMNS, "json", body)
    assert json.loads(out) == body


def test_yaml() -> None:
    body = {"ctAttr": [{"servName": "s", "destinationIP": "1.1.1.1", "extra": 1}]}
    out = _table(ct.sorted_entries(body), ct.COLUMNS, "yaml", body)
    assert yaml.safe_load(out) == body
    assert not out.endswith("\n\n")


def test_ct_columns() -> None:
    entry = {"servName": "web", "destinationIP": "20.20.20.1", "sourceIP": "10.0.0.1",
             "destinationPort": 80, "sourcePort": 40000, "protocol": "tcp", "ident": 0,
             "conntrackState": "est", "conntrackAct": "dnat-10.0.0.2:8080:w1", "packets": 3,
             "bytes": 180}
    text = _table(ct.sorted_entries({"ctAttr": [entry]}), ct.COLUMNS)
    assert text.splitlines()[0] == ("| SERVICE NAME | DESTIP     | SRCIP    | DPORT | SPORT "
                                     "| PROTO | IDENT | STATE | ACT                   "
                                     "| PACKETS | BYTES |")
    assert _cells(text) == [["web", "20.20.20.1", "10.0.0.1", "80", "40000", "tcp", "0",
                             "est", "dnat-10.0.0.2:8080:w1", "3", "180"]]


def test_state_colours() -> None:
    assert render.state_style("est") == "green"
    assert render.state_style("inactive") == "red"
    assert render.state_style("sync-sent") == "yellow"
    assert render.state_style("-") is None


def test_rich_table_on_terminal() -> None:
    pytest.importorskip("rich")
    out = io.StringIO()
    render.render([{"a": "x", "s": "est"}], [render.Column("A", "a"),
                                             render.Column("STATE", "s", state=True)],
                  "table", None, out=out, tty=True)
    assert "STATE" in out.getvalue() and "est" in out.getvalue()


# ---- registry -----------------------------------------------------------------------------


def test_registry_matches_modules() -> None:
    for noun in nouns.NOUNS:
        for verb in noun.verbs:
            assert isinstance(noun.command(verb), click.Command)
    assert nouns.find("lbs", "get") is nouns.find("loadbalancer", "create")
    assert nouns.find("ct", "delete") is None


# ---- CLI usage errors (never reach the agent) ---------------------------------------------


def _run(*argv: str) -> Any:
    return CliRunner().invoke(cli, list(argv), env={"LOXICMD_PORT": "1"}, prog_name="loxicmd")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["create", "lb", "1.1.1.1", "--tcp=70000:80"],
         "invalid value for --tcp: '70000:80': port must be 1..65535"),
        (["create", "lb", "1.1.1.1", "--udp=80:80", "--endpoints=10.0.0.1:300"],
         "invalid value for --endpoints: '10.0.0.1:300': weight must be 1..255"),
        (["create", "lb", "1.1.1.1", "--tcp=80:80", "--mode=nat"], "--mode: 'nat'"),
        (["create", "lb", "1.1.1.1", "--tcp=80:80", "--select=random"], "--select: 'random'"),
        (["create", "lb", "1.1.1", "--tcp=80:80"], "EXTERNAL-IP: '1.1.1'"),
        (["create", "lb", "1.1.1.1"], "--tcp, --udp, --sctp, --icmp"),
        (["create", "lb", "1.1.1.1", "--tcp=80:80", "--mark=-1"], "--mark: '-1'"),
        (["delete", "lb", "1.1.1.1", "--tcp=0"], "--tcp: '0'"),
        (["delete", "lb", "--tcp=80"], "EXTERNAL-IP"),
        (["get", "lb", "-p", "70000"], "--port: '70000'"),
        (["get", "lb", "-o", "xml"], "--output: 'xml'"),
        (["get", "nosuch"], "unknown noun 'nosuch'"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], expected: str) -> None:
    result = _run(*argv)
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert result.stdout == ""


def test_mode_error_lists_allowed() -> None:
    result = _run("create", "lb", "1.1.1.1", "--tcp=80:80", "--mode=nat")
    for mode in ("default", "onearm", "fullnat", "dsr", "fullproxy", "hostonearm"):
        assert mode in result.stderr


def test_delete_all_needs_yes_without_terminal() -> None:
    result = _run("delete", "lb", "--all")
    assert result.exit_code == 2
    assert "--yes" in result.stderr


def test_global_options_before_and_after() -> None:
    for argv in (["-o", "nope", "get", "lb"], ["get", "-o", "nope", "lb"],
                 ["get", "lb", "-o", "nope"]):
        result = _run(*argv)
        assert result.exit_code == 2 and "--output: 'nope'" in result.stderr


def test_help_exits_0() -> None:
    for argv in (["--help"], ["get", "--help"], ["get", "lbs", "--help"],
                 ["create", "loadbalancer", "--help"], ["get", "cts", "--help"]):
        assert _run(*argv).exit_code == 0


# ---- unreachable agent (real process) -----------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loxicmd() -> list[str]:
    exe = shutil.which("loxicmd")
    return [exe] if exe else [sys.executable, "-m", "loxicmd.cli.main"]


@pytest.mark.parametrize("argv", [["get", "lb"], ["get", "ct"],
                                  ["create", "lb", "20.20.20.1", "--tcp=80:8080"],
                                  ["delete", "lb", "20.20.20.1", "--tcp=80"]])
def test_unreachable_agent_exit_3(argv: list[str]) -> None:
    port = _closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOXICMD_")}
    proc = subprocess.run([*_loxicmd(), *argv, "-p", str(port), "-t", "2"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3, proc.stderr
    assert f"http://127.0.0.1:{port}" in proc.stderr
    assert proc.stderr.startswith("loxicmd: cannot reach the agent at")
    assert proc.stdout == ""


# ---- nouns added for issue 4 ----------------------------------------------------------------


def test_every_noun_and_alias_of_cli_md() -> None:
    table = {
        "loadbalancer": (("lb", "lbs", "loadbalancers"), ("get", "create", "delete")),
        "conntrack": (("ct", "cts", "conntracks"), ("get",)),
        "endpoint": (("ep", "endpoints"), ("get", "create", "delete")),
        "hastate": (("ha",), ("get", "set")),
        "bgpneighbor": (("bgpnei", "bgpneigh"), ("get", "create", "delete")),
        "bgpglobal": ((), ("get", "create")),
        "lbversion": ((), ("get",)), "process": ((), ("get",)),
        "log-level": ((), ("get", "set")), "dpstats": ((), ("get",)),
    }
    for name, (aliases, verbs) in table.items():
        for alias in (name, *aliases):
            for verb in verbs:
                noun = nouns.find(alias, verb)
                assert noun is not None and noun.name == name, (alias, verb)


def test_attach_detach_and_probe_bodies() -> None:
    (body,) = lb.build_rules("20.20.20.1", ports={"tcp": [PortMap(80, None, 8080)]},
                             endpoints=[Endpoint("10.0.0.1", 1)], oper=lb.OPER_DETACH,
                             probe={"probetype": "http", "probeport": 8080})
    sa = body["serviceArguments"]
    assert sa["oper"] == 2 and sa["probetype"] == "http" and sa["probeport"] == 8080
    (plain,) = lb.build_rules("20.20.20.1", ports={"tcp": [PortMap(80, None, 8080)]})
    assert plain["serviceArguments"]["oper"] == 0


@pytest.mark.parametrize(("argv", "expected"), [
    (["create", "lb", "1.1.1.1", "--tcp=80:80", "--attachEP"], "need --endpoints"),
    (["create", "lb", "1.1.1.1", "--tcp=80:80", "--endpoints=2.2.2.2:1", "--attachEP",
      "--detachEP"], "not both"),
    (["create", "lb", "1.1.1.1", "--tcp=80:80", "--probetype=icmpv9"], "--probetype"),
    (["set", "hastate", "default", "PRIMARY"], "allowed: MASTER, BACKUP, FAULT"),
    (["set", "log-level", "loud"], "'loud' is not one of"),
    (["create", "bgpnei", "1.1.1.1", "0"], "AS number must be 1..4294967295"),
    (["create", "bgpnei", "1.1.1.1", "65000", "--remotePort=70000"], "--remotePort"),
    (["create", "bgpglobal", "--localas=65000"], "--routerid"),
    (["create", "endpoint", "1.1.1.1", "--period=0"], "--period"),
    (["delete"], "missing noun"),
    (["completion", "tcsh"], "'tcsh' is not one of"),
])
def test_more_usage_errors_exit_2(argv: list[str], expected: str) -> None:
    result = _run(*argv)
    assert result.exit_code == 2, result.output
    assert expected in result.stderr


def test_process_cells() -> None:
    from loxicmd.cli.nouns.process import duration, kibibytes

    assert duration(93784) == "1d2h3m4s" and duration(59) == "59s" and duration(3600) == "1h0m0s"
    assert kibibytes("50320") == "49.1MiB" and kibibytes(None) == ""


def test_version_and_completion_need_no_agent() -> None:
    assert _run("version").stdout.startswith("loxicmd ")
    for shell in ("bash", "zsh", "fish"):
        result = _run("completion", shell)
        assert result.exit_code == 0 and "_LOXICMD_COMPLETE" in result.stdout


# ---- issue 15 ---------------------------------------------------------------------------------


def test_issue15_11_target_port_0_keeps_the_port() -> None:
    from loxicmd.cli import manifest

    assert args.parse_port_maps("8001-8100:0,80:0") == [PortMap(8001, 8100, 0),
                                                         PortMap(80, None, 0)]
    assert args.parse_port_ranges("8001-8100:0") == [PortRange(8001, 8100)]  # delete
    (body,) = lb.build_rules("198.18.100.1", ports={"tcp": args.parse_port_maps("8001-8100:0")},
                             endpoints=[Endpoint("198.18.1.2", 1)])
    assert body["endpoints"] == [{"endpointIP": "198.18.1.2", "targetPort": 0, "weight": 1}]
    # apply -f / apply -c / save check rules with the same schema
    checked = manifest.check_lb(body, "spec")
    assert checked["endpoints"][0]["targetPort"] == 0
    with pytest.raises(InvalidInput, match="targetPort: 65536 is out of range; "
                       "allowed: 0..65535"):
        manifest.check_lb({**body, "endpoints": [{"endpointIP": "198.18.1.2",
                                                  "targetPort": 65536}]}, "spec")


def test_issue15_11_create_lb_keep_port_reaches_the_agent() -> None:
    result = _run("create", "lb", "198.18.100.1", "--tcp=8001-8100:0",
                  "--endpoints=198.18.1.2:1")
    assert result.exit_code == 3, result.stderr  # sent (the agent at port 1 is not there)


@pytest.mark.parametrize(("argv", "expected"), [
    # service addresses that carry no traffic
    (["create", "lb", "0.0.0.0", "--tcp=80:80"],
     "EXTERNAL-IP: '0.0.0.0': the unspecified address cannot be a service address; allowed: "
     "a unicast, non-loopback IPv4 or IPv6 address"),
    (["create", "lb", "255.255.255.255", "--tcp=80:80"],
     "EXTERNAL-IP: '255.255.255.255': the broadcast address cannot be a service address"),
    (["create", "lb", "224.0.0.5", "--tcp=80:80"],
     "EXTERNAL-IP: '224.0.0.5': a multicast address cannot be a service address"),
    (["create", "lb", "239.255.255.250", "--tcp=80:80"], "EXTERNAL-IP: '239.255.255.250'"),
    (["create", "lb", "::", "--tcp=80:80"],
     "EXTERNAL-IP: '::': the unspecified address cannot be a service address"),
    (["create", "lb", "ff02::1", "--tcp=80:80"],
     "EXTERNAL-IP: 'ff02::1': a multicast address cannot be a service address"),
    # endpoints
    (["create", "lb", "1.1.1.1", "--tcp=80:80", "--endpoints=127.0.0.1:1"],
     "--endpoints: '127.0.0.1:1': a loopback address cannot be an endpoint; allowed: a "
     "unicast, non-loopback IPv4 or IPv6 endpoint address"),
    (["create", "lb", "1.1.1.1", "--tcp=80:80", "--endpoints=10.0.0.1:1,127.1.2.3:1"],
     "--endpoints: '127.1.2.3:1': a loopback address"),
    (["create", "lb", "1.1.1.1", "--tcp=80:80", "--endpoints=0.0.0.0:1"],
     "--endpoints: '0.0.0.0:1': the unspecified address cannot be an endpoint"),
    (["create", "lb", "1.1.1.1", "--tcp=80:80", "--endpoints=224.1.1.1:1"],
     "--endpoints: '224.1.1.1:1': a multicast address cannot be an endpoint"),
    (["create", "lb", "1.1.1.1", "--tcp=80:80", "--endpoints=255.255.255.255:1"],
     "--endpoints: '255.255.255.255:1': the broadcast address cannot be an endpoint"),
    (["create", "lb", "1.1.1.1", "--tcp=80:80", "--endpoints=[::1]:1"],
     "--endpoints: '[::1]:1': a loopback address"),
    (["create", "lb", "1.1.1.1", "--tcp=80:80", "--endpoints=10.0.0.1:1,1.1.1.1:2"],
     "--endpoints: '1.1.1.1:2': 1.1.1.1 is EXTERNAL-IP itself; allowed: addresses behind "
     "the load balancer"),
    # overlapping mappings of one protocol (the last one used to win silently)
    (["create", "lb", "1.1.1.1", "--tcp=80:8080,80:8081"],
     "--tcp: '80:8080' and '80:8081' overlap; allowed: port ranges that do not overlap"),
    (["create", "lb", "1.1.1.1", "--tcp=80-90:8080", "--tcp=85:1"],
     "--tcp: '80-90:8080' and '85:1' overlap"),
    (["create", "lb", "1.1.1.1", "--tcp=80:1", "--udp=100-200:0,150-300:0"],
     "--udp: '100-200:0' and '150-300:0' overlap"),
    # conntrack states
    (["get", "ct", "--state", "bogus"],
     "--state: 'bogus' is not one of 'closed', 'sync-sent', 'sync-ack', 'est', 'fini', "
     "'closed-wait', 'udp-uni', 'udp-est', 'req-sent', 'bidir'"),
    # no or an empty service address
    (["create", "lb", "--tcp=80:8080"],
     "missing EXTERNAL-IP; allowed: a unicast, non-loopback IPv4 or IPv6 address"),
    (["create", "lb", "", "--tcp=80:8080"],
     "EXTERNAL-IP: '': no address given; allowed: a unicast, non-loopback IPv4 or IPv6 "
     "address"),
    (["create", "endpoint"], "missing IP; allowed: an IPv4 or IPv6 address"),
    (["set", "hastate", "default"], "missing STATE; allowed: MASTER, BACKUP, FAULT"),
    # probe ports the agent would refuse
    (["create", "endpoint", "198.18.1.2", "--probetype=tcp"],
     "--probeport is missing: --probetype=tcp needs the port to probe; allowed: 1..65535"),
    (["create", "endpoint", "198.18.1.2", "--probetype=udp"], "--probeport is missing"),
    (["create", "endpoint", "198.18.1.2", "--probetype=sctp"], "--probeport is missing"),
    (["create", "endpoint", "198.18.1.2", "--probetype=http"], "--probeport is missing"),
    (["create", "endpoint", "198.18.1.2", "--probetype=https"], "--probeport is missing"),
    (["create", "endpoint", "198.18.1.2", "--probeport=80"],
     "--probeport=80 is not used by --probetype=ping (the default)"),
    (["create", "endpoint", "198.18.1.2", "--probetype=none", "--probeport=80"],
     "--probeport=80 is not used by --probetype=none"),
])
def test_issue15_13_refused_before_anything_is_sent(argv: list[str], expected: str) -> None:
    # The agent "at" port 1 is not there: anything sent would end in exit 3.
    result = _run(*argv)
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert expected in result.stderr, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("argv", [
    ["create", "lb", "1.1.1.1", "--tcp=80:8080", "--udp=80:8080"],  # two protocols
    ["create", "lb", "1.1.1.1", "--tcp=80-89:8080,90:9090", "--tcp=91-95:0"],  # adjacent
    ["create", "lb", "2001:db8::1", "--tcp=80:80", "--endpoints=[2001:db8::2]:1"],
    ["create", "endpoint", "198.18.1.2", "--probetype=tcp", "--probeport=80"],
    ["create", "endpoint", "198.18.1.2", "--probetype=none"],
    ["create", "endpoint", "198.18.1.2"],
    ["get", "ct", "--state", "udp-est"],
])
def test_issue15_13_good_input_is_sent(argv: list[str]) -> None:
    result = _run(*argv)
    assert result.exit_code == 3, (result.exit_code, result.stderr)


def test_issue15_13_conntrack_states_are_the_datapaths() -> None:
    from datapath import layouts
    from loxicmd.names import CONNTRACK_STATES, CT_STATE_WORDS

    assert CONNTRACK_STATES == tuple(CT_STATE_WORDS[s.name] for s in layouts.CtState)


@pytest.mark.parametrize("words", [[], ["get"], ["get", "lb"], ["get", "loadbalancer"],
                                   ["create", "lbs"], ["delete", "ep"], ["delete"],
                                   ["set", "hastate"], ["save"], ["apply"], ["completion"],
                                   ["help"]])
def test_issue15_15_help_command_is_help_option(words: list[str]) -> None:
    by_command = _run("help", *words)
    by_option = _run(*words, "--help")
    assert (by_command.exit_code, by_option.exit_code) == (0, 0), by_command.stderr
    assert by_command.stdout == by_option.stdout and by_command.stdout.startswith("Usage:")


@pytest.mark.parametrize(("words", "expected"), [
    (["nosuch"], "unknown command 'nosuch' for 'loxicmd'; known: get, create, delete"),
    (["get", "nosuch"], "unknown command 'nosuch' for 'loxicmd get'; known: loadbalancer"),
    (["set", "lb"], "unknown command 'lb' for 'loxicmd set'"),
    (["get", "lb", "extra"], "'loxicmd get loadbalancer' has no sub-command 'extra'"),
])
def test_issue15_15_help_of_unknown_command_exit_2(words: list[str], expected: str) -> None:
    result = _run("help", *words)
    assert result.exit_code == 2 and expected in result.stderr, result.stderr
    assert result.stdout == ""


def test_issue15_15_get_lb_service_name_filter() -> None:
    body = {"lbAttr": [_rule("1.1.1.2", 80, name="web"), _rule("1.1.1.1", 80, name="db"),
                       _rule("1.1.1.1", 81, name="web")], "extra": 1}
    kept = lb.with_service_name(body, "web")
    assert kept == {"lbAttr": [body["lbAttr"][0], body["lbAttr"][2]], "extra": 1}
    assert lb.with_service_name(body, "nosuch")["lbAttr"] == []
    assert lb.with_service_name(body, "we")["lbAttr"] == []  # the whole name, not a prefix


def test_issue15_15_bash_option_value_words_joined() -> None:
    from loxicmd.cli.complete import join_option_values, option_prefix

    assert join_option_values(["create", "--mode", "="]) == ["create", "--mode="]
    assert join_option_values(["create", "--mode", "=", "on"]) == ["create", "--mode=on"]
    assert join_option_values(["--mode", "=", "onearm", "--select", "=", ""]) == \
        ["--mode=onearm", "--select="]
    assert join_option_values(["lb", "1.1.1.1", ""]) == ["lb", "1.1.1.1", ""]
    assert join_option_values(["--probereq", "=", "/a", "=", "b"]) == ["--probereq=/a", "=",
                                                                       "b"]
    assert option_prefix("--mode=on") == "--mode=" and option_prefix("on") == ""


def _complete(shell: str, words: list[str]) -> list[str]:
    """What ``loxicmd`` answers the generated ``shell`` script for ``words`` (the last one
    is the word under the cursor), asked as that script asks."""
    env = {**os.environ, "_LOXICMD_COMPLETE": f"{shell}_complete", "LOXICMD_PORT": "1",
           "COMP_WORDS": " ".join(words), "COMP_CWORD": str(len(words) - 1)}
    if shell == "fish":  # the command line up to the cursor, and the word under it
        env["COMP_CWORD"] = words[-1]
    proc = subprocess.run([*_loxicmd()], env=env, capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    if shell == "zsh":  # type, value, help: one a line
        return proc.stdout.splitlines()[1::3]
    return [line.split(",", 1)[1] for line in proc.stdout.splitlines()]


def test_issue15_15_bash_completes_option_equals_value() -> None:
    # bash splits `--mode=on` at `=` (COMP_WORDBREAKS) into `--mode`, `=`, `on`, and
    # readline replaces what follows the `=`: values alone
    base = ["loxicmd", "create", "lb", "1.1.1.1"]
    assert _complete("bash", [*base, "--mode", "="]) == list(lb.NAT_MODE_NAMES.values())
    assert _complete("bash", [*base, "--mode", "=", "on"]) == ["onearm"]
    assert _complete("bash", [*base, "--select", "=", "p"]) == ["priority", "persist"]
    assert _complete("bash", [*base, "--select", "=", "hash", "--mo"]) == ["--mode",
                                                                          "--monitor"]
    assert _complete("bash", ["loxicmd", "get", "ct", "--state", "=", "udp"]) == \
        ["udp-uni", "udp-est"]
    assert _complete("bash", ["loxicmd", "help", "get", "lb"]) == ["lbversion"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_issue15_15_zsh_fish_complete_option_equals_value(shell: str) -> None:
    # one word `--mode=on`, replaced (zsh) or matched (fish) whole: whole words back
    base = ["loxicmd", "create", "lb", "1.1.1.1"]
    assert _complete(shell, [*base, "--mode=on"]) == ["--mode=onearm"]
    assert _complete(shell, [*base, "--select=p"]) == ["--select=priority", "--select=persist"]
    assert _complete(shell, [*base, "--select", "p"]) == ["priority", "persist"]


def test_issue15_15_help_says_what_loxilbd_refuses() -> None:
    from loxicmd import names
    from loxicmd.agent.health import probes
    from loxicmd.agent.lb import model

    text = " ".join(_run("create", "lb", "--help").stdout.split())
    def help_of(flag: str) -> str:
        return text.split(f" {flag} ", 1)[1].split(" --", 1)[0]
    for flag in ("--sctp", "--secips", "--host"):
        assert f"({lb.NOT_IN_LOXILBD})" in help_of(flag)
    assert lb.NOT_IN_LOXILBD not in help_of("--bgp")  # carried out since issue 10
    assert f"NAT mode (dsr, fullproxy, hostonearm: {lb.NOT_IN_LOXILBD})" in text
    assert f"Endpoint selection (n2, n3: {lb.NOT_IN_LOXILBD})" in text
    assert f"Monitor probe type (sctp: {lb.NOT_IN_LOXILBD})" in text
    text = " ".join(_run("create", "ep", "--help").stdout.split())
    assert f"Probe type (sctp: {lb.NOT_IN_LOXILBD})" in text
    # the lists are the agent's refusals, no more, no less
    assert set(lb.UNSUPPORTED_MODES) == {name for code, name in lb.NAT_MODE_NAMES.items()
                                         if code not in model.SUPPORTED_MODES}
    assert set(lb.UNSUPPORTED_SELECTIONS) == {name for code, name in lb.SELECTION_NAMES.items()
                                              if code not in model.SUPPORTED_SEL}
    assert set(lb.UNSUPPORTED_PROBE_TYPES) == set(lb.PROBE_TYPES) - set(names.PROBE_TYPES)
    assert set(names.PROBE_TYPES) == set(probes.probe_kinds())
    assert "sctp" not in model.SUPPORTED_PROTOCOLS


def test_issue15_15_delete_ep_alias_resolves() -> None:
    for noun in ("ep", "endpoints", "endpoint"):
        result = _run("delete", noun, "198.18.1.2")
        assert result.exit_code == 3, result.stderr  # resolved and sent
