"""Each defect of the Go loxicmd listed at the end of cli.md, and ours behaving correctly,
against the real agent (on a port above 32767: defect 6).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_lab import clear_rules, cli_env, loxicmd, requests_sent, run_in, running_agent
from lbnode import LbNode, pipe_table

pytestmark = pytest.mark.e2e

VIP = "198.18.200.1"
EP = "198.18.1.2"


@pytest.fixture(scope="module")
def agent() -> Iterator[LbNode]:
    with running_agent(port=40000 + os.getpid() % 5000) as node:
        yield node


@pytest.fixture
def node(agent: LbNode) -> LbNode:
    return clear_rules(agent)


def lx(node: LbNode, *argv: str) -> Any:
    return loxicmd(node, *argv)


def rules(node: LbNode) -> list[tuple[str, int, str]]:
    return sorted((r["serviceArguments"]["protocol"], r["serviceArguments"]["port"],
                   ",".join(f"{e['endpointIP']}:{e['targetPort']}" for e in r["endpoints"]))
                  for r in node.rules())


def test_1_failures_do_not_exit_0(node: LbNode) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    cp = run_in(node.ns, "loxicmd", "-p", str(closed), "get", "lb")
    assert cp.returncode == 3 and f"127.0.0.1:{closed}" in cp.stderr
    cp = lx(node, "delete", "lb", VIP, "--tcp=9")
    assert cp.returncode == 1  # HTTP error
    cp = lx(node, "create", "lb", VIP, "--tcp=80:80", "--endpoints=1.2.3.4:x")
    assert cp.returncode == 2  # validation error


def test_2_agent_error_text_is_shown(node: LbNode) -> None:
    assert lx(node, "create", "lb", VIP, "--tcp=80:80", f"--endpoints={EP}:1").returncode == 0
    cp = lx(node, "create", "lb", VIP, "--tcp=80:80", f"--endpoints={EP}:1")
    assert cp.returncode == 1
    assert "HTTP 409" in cp.stderr and "already exists" in cp.stderr
    assert "Debug:" not in cp.stderr + cp.stdout


@pytest.mark.parametrize("flag", ["--mode=nat", "--select=random", "--mode=", "--select=2"])
def test_3_unknown_mode_or_select_is_refused(node: LbNode, flag: str) -> None:
    cp = lx(node, "create", "lb", VIP, "--tcp=80:80", f"--endpoints={EP}:1", flag)
    assert cp.returncode == 2 and flag.split("=")[0] in cp.stderr
    assert node.rules() == []


def test_4_two_protocols_make_two_rules(node: LbNode) -> None:
    cp = lx(node, "create", "lb", VIP, "--tcp=80:80", "--udp=80:80", f"--endpoints={EP}:1")
    assert cp.returncode == 0, cp.stderr
    assert rules(node) == [("tcp", 80, f"{EP}:80"), ("udp", 80, f"{EP}:80")]


def test_5_port_list_is_separate_rules(node: LbNode) -> None:
    cp = lx(node, "create", "lb", VIP, "--tcp=80:8080,81:8081", f"--endpoints={EP}:1")
    assert cp.returncode == 0, cp.stderr
    assert rules(node) == [("tcp", 80, f"{EP}:8080"), ("tcp", 81, f"{EP}:8081")]


def test_6_no_wrapping_and_high_agent_port(node: LbNode) -> None:
    assert node.port > 32767
    for arg, named in (("--endpoints=1.2.3.4:300", "'1.2.3.4:300': weight must be 1..255"),
                       ("--tcp=65536:80", "'65536:80': port must be 1..65535")):
        argv = ["create", "lb", VIP, arg] + ([] if arg.startswith("--tcp") else ["--tcp=1:1"])
        cp = lx(node, *argv)
        assert cp.returncode == 2 and named in cp.stderr, cp.stderr
    assert node.rules() == []
    cp = lx(node, "create", "lb", VIP, "--tcp=65535:65535", f"--endpoints={EP}:255")
    assert cp.returncode == 0, cp.stderr
    (rule,) = node.rules()
    assert rule["serviceArguments"]["port"] == 65535 and rule["endpoints"][0]["weight"] == 255


def test_7_success_is_silent_every_time(node: LbNode) -> None:
    for port in range(1000, 1020):
        cp = lx(node, "create", "lb", VIP, f"--tcp={port}:80", f"--endpoints={EP}:1")
        assert (cp.returncode, cp.stdout, cp.stderr) == (0, "", ""), port
    assert len(node.rules()) == 20


def test_8_delete_file_runs(node: LbNode, tmp_path: Path) -> None:
    doc = {"apiVersion": "netlox/v1", "kind": "LoadBalancer", "metadata": {"name": "x"},
           "spec": {"serviceArguments": {"externalIP": VIP, "port": 80, "protocol": "tcp"},
                    "endpoints": [{"endpointIP": EP, "targetPort": 80, "weight": 1}]}}
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert lx(node, "apply", "-f", str(path)).returncode == 0
    assert len(node.rules()) == 1
    cp = lx(node, "delete", "-f", str(path))
    assert cp.returncode == 0, cp.stderr
    assert node.rules() == []


def test_8_wide_shows_rules_without_endpoints_and_every_source(node: LbNode) -> None:
    assert lx(node, "create", "lb", VIP, "--tcp=80:80").returncode == 0
    (row,) = pipe_table(lx(node, "get", "lb", "-o", "wide").stdout)
    assert row["EXT IP"] == VIP and row["ENDPOINT"] == ""
    cp = lx(node, "create", "lb", VIP, "--tcp=81:80", f"--endpoints={EP}:1",
            "--sources=10.0.0.0/8,192.168.0.0/16", "--sources=198.18.0.0/15")
    assert cp.returncode == 0, cp.stderr
    rows = pipe_table(lx(node, "get", "lb", "-o", "wide").stdout)
    assert [(r["PORT"], r["SOURCES"]) for r in rows] == [
        ("80", ""), ("81", "10.0.0.0/8,192.168.0.0/16,198.18.0.0/15")]


def test_9_json_is_the_agents_json(node: LbNode) -> None:
    assert lx(node, "create", "lb", VIP, "--tcp=80:80", f"--endpoints={EP}:1").returncode == 0
    status, raw = node.api("GET", "/config/loadbalancer/all")
    assert status == 200
    assert json.loads(lx(node, "get", "lb", "-o", "json").stdout) == raw


def test_9_bgp_values_and_no_debug_on_stdout(node: LbNode) -> None:
    # --remotePort above 255 and 4-byte ASNs pass the CLI's checks for create and delete,
    # and the agent keeps them as given
    cp = lx(node, "create", "bgpnei", "198.18.1.2", "4200000000", "--remotePort=1790")
    assert cp.returncode == 0, cp.stderr
    status, body = node.api("GET", "/config/bgp/neigh/all")
    assert status == 200 and [(n["remoteAs"], n["remotePort"]) for n in body["bgpNeiAttr"]] \
        == [(4200000000, 1790)], body
    cp = lx(node, "delete", "bgpnei", "198.18.1.2", "4200000000")
    assert cp.returncode == 0, cp.stderr
    cp = lx(node, "create", "bgpnei", "198.18.1.2", "4294967296")
    assert cp.returncode == 2 and "4294967296" in cp.stderr
    # no `set login` (tokens come from --token/LOXICMD_TOKEN, no terminal needed);
    # -v debug goes to stderr only
    cp = run_in(node.ns, "loxicmd", "-p", str(node.port), "-v", "get", "lb", "-o", "json",
                env=cli_env(LOXICMD_TOKEN="secret"))
    assert cp.returncode == 0 and json.loads(cp.stdout) == {"lbAttr": []}
    assert "debug: > GET" in cp.stderr


# ---- issue 15: the CLI defects found since -------------------------------------------------

KEEP_PORT_VIP = "198.18.100.1"


def test_issue15_11_keep_the_port_ranges(node: LbNode, tmp_path: Path) -> None:
    """README's `--tcp=8001-8100:0`: created, shown, saved, applied back (-c and -f)."""
    cp = lx(node, "create", "lb", KEEP_PORT_VIP, "--tcp=8001-8100:0", f"--endpoints={EP}:1")
    assert cp.returncode == 0, cp.stderr
    before = node.rules()
    (rule,) = before
    assert (rule["serviceArguments"]["port"], rule["serviceArguments"]["portMax"]) == \
        (8001, 8100)
    assert [(e["endpointIP"], e["targetPort"]) for e in rule["endpoints"]] == [(EP, 0)]
    (row,) = pipe_table(lx(node, "get", "lb", "-o", "wide").stdout)
    assert (row["PORT"], row["ENDPOINT"], row["EPORT"]) == ("8001-8100", EP, "0")

    cp = lx(node, "save", "--lb", "-c", str(tmp_path))
    assert cp.returncode == 0, cp.stderr
    saved = json.loads((tmp_path / "lbconfig.txt").read_text())
    assert saved["lbAttr"][0]["endpoints"][0]["targetPort"] == 0
    assert lx(node, "delete", "lb", "--all", "--yes").returncode == 0
    cp = lx(node, "apply", "-c", str(tmp_path))
    assert cp.returncode == 0, cp.stderr
    assert node.rules() == before

    assert lx(node, "delete", "lb", KEEP_PORT_VIP, "--tcp=8001-8100:0").returncode == 0
    doc = {"apiVersion": "netlox/v1", "kind": "LoadBalancer", "metadata": {"name": "keep"},
           "spec": {"serviceArguments": {"externalIP": KEEP_PORT_VIP, "port": 8001,
                                         "portMax": 8100, "protocol": "tcp"},
                    "endpoints": [{"endpointIP": EP, "targetPort": 0, "weight": 1}]}}
    path = tmp_path / "keep.yaml"
    path.write_text(yaml.safe_dump(doc))
    cp = lx(node, "apply", "-f", str(path))
    assert cp.returncode == 0, cp.stderr
    assert node.rules() == before


def test_issue15_12_one_document_for_several_calls(node: LbNode) -> None:
    one = ["--endpoints", f"{EP}:1", "-o", "json"]
    cp = lx(node, "create", "lb", VIP, "--tcp=70:8080", *one)
    assert cp.returncode == 0, cp.stderr
    created = json.loads(cp.stdout)  # one call: the agent's body as it is
    assert isinstance(created, dict)

    cp = lx(node, "create", "lb", VIP, "--tcp=80:8080", "--udp=80:8080", *one)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout) == [created, created]
    cp = lx(node, "create", "lb", VIP, "--tcp=90:8080,91:8080", "--udp=90:8080",
            f"--endpoints={EP}:1", "-o", "yaml")
    assert cp.returncode == 0, cp.stderr
    assert yaml.safe_load(cp.stdout) == [created] * 3

    # a refused call: its error on stderr, the others' bodies in order, the worst status
    cp = lx(node, "create", "lb", VIP, "--tcp=80:8080,100:8080", *one)
    assert cp.returncode == 1
    assert "tcp/80" in cp.stderr and "HTTP 409" in cp.stderr
    assert json.loads(cp.stdout) == [created]
    cp = lx(node, "delete", "lb", VIP, "--tcp=200", "--udp=201", "-o", "json")
    assert cp.returncode == 1 and json.loads(cp.stdout) == []
    cp = lx(node, "delete", "lb", VIP, "--tcp=80", "--udp=80", "-o", "yaml")
    assert cp.returncode == 0, cp.stderr
    deleted = yaml.safe_load(cp.stdout)
    assert isinstance(deleted, list) and len(deleted) == 2


@pytest.mark.parametrize("argv", [
    ["get", "ct", "--state", "bogus"],
    ["create", "lb", "0.0.0.0", "--tcp=80:8080", f"--endpoints={EP}:1"],
    ["create", "lb", VIP, "--tcp=80:8080", "--endpoints=127.0.0.1:1"],
    ["create", "lb", VIP, "--tcp=80:8080", f"--endpoints={VIP}:1"],
    ["create", "lb", VIP, "--tcp=80:8080,80:8081", f"--endpoints={EP}:1"],
    ["create", "lb", "", "--tcp=80:8080"],
    ["create", "endpoint", EP, "--probetype=tcp"],
])
def test_issue15_13_refused_by_the_cli(node: LbNode, argv: list[str]) -> None:
    cp = lx(node, "-v", *argv)
    assert cp.returncode == 2, (cp.returncode, cp.stderr)
    assert requests_sent(cp.stderr) == [] and cp.stdout == ""
    assert node.rules() == []


def test_issue15_15_get_lb_service_name(node: LbNode) -> None:
    for port, name in ((80, "web"), (81, "db"), (82, "web")):
        cp = lx(node, "create", "lb", VIP, f"--tcp={port}:8080", f"--endpoints={EP}:1",
                f"--name={name}")
        assert cp.returncode == 0, cp.stderr
    assert [r["PORT"] for r in pipe_table(lx(node, "get", "lb", "--servName", "web").stdout)] \
        == ["80", "82"]
    wide = pipe_table(lx(node, "get", "lb", "-o", "wide", "--servName=db").stdout)
    assert [(r["PORT"], r["ENDPOINT"]) for r in wide] == [("81", EP)]
    for output, load in (("json", json.loads), ("yaml", yaml.safe_load)):
        body = load(lx(node, "get", "lb", "-o", output, "--servName=web").stdout)
        assert sorted(r["serviceArguments"]["port"] for r in body["lbAttr"]) == [80, 82]
    assert pipe_table(lx(node, "get", "lb", "--servName=nosuch").stdout) == []


def test_issue15_15_delete_ep(node: LbNode) -> None:
    cp = lx(node, "create", "endpoint", EP, "--probetype=tcp", "--probeport=80",
            "--name=issue15")
    assert cp.returncode == 0, cp.stderr

    def probes() -> list[tuple[str, str]]:
        status, body = node.api("GET", "/config/endpoint/all")
        assert status == 200, body
        return [(ep["hostName"], ep["name"]) for ep in body["Attr"]]

    assert (EP, "issue15") in probes()
    cp = lx(node, "delete", "ep", EP)
    assert (cp.returncode, cp.stderr) == (0, "")
    assert [host for host, _ in probes() if host == EP] == []
