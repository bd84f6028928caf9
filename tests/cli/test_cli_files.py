"""apply/delete -f, apply -c, save, conntrack paging, agent answers and tokens: the real
loxicmd against the real agent (one for the module, on a client-LB-backend lab so that real
flows can be made): checks before changes, undo on refusal, streaming page by page.

Which requests the CLI sent is read from its own ``-v`` debug lines (stderr).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_lab import (
    clear_rules,
    loxicmd,
    loxicmd_on_terminal,
    paused,
    requests_sent,
    restarted_with_token,
    run_in,
    running_topology,
    udp_flows,
)
from lab import Topology, wait_for
from lbnode import LbNode, pipe_table
from testpaths import GOLDEN

from loxicmd.api.client import _error_message
from loxicmd.cli import manifest, saveapply

pytestmark = pytest.mark.e2e

VIP = "198.18.200.1"
EP = "198.18.1.2"
LB = "/config/loadbalancer"
LB_ALL = "/config/loadbalancer/all"


def rule_path(port: int) -> str:
    return f"{LB}/externalipaddress/{VIP}/port/{port}/protocol/tcp"


@pytest.fixture(scope="module")
def lab_topo() -> Iterator[tuple[LbNode, Topology]]:
    with running_topology(n_backends=1) as pair:
        yield pair


@pytest.fixture
def node(lab_topo: tuple[LbNode, Topology]) -> LbNode:
    """The module's agent, with no rules (whatever an earlier test left)."""
    return clear_rules(lab_topo[0])


def lx(node: LbNode, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return loxicmd(node, *argv, **env)


def ok(node: LbNode, *argv: str, **env: str) -> str:
    cp = lx(node, *argv, **env)
    assert cp.returncode == 0, (argv, cp.returncode, cp.stderr)
    return cp.stdout


def lb_doc(port: int, **sa: Any) -> dict[str, Any]:
    return {"apiVersion": "netlox/v1", "kind": "LoadBalancer", "metadata": {"name": f"r{port}"},
            "spec": {"serviceArguments": {"externalIP": VIP, "port": port,
                                          "protocol": "tcp", **sa},
                     "endpoints": [{"endpointIP": EP, "targetPort": 80, "weight": 1}]}}


def write(tmp_path: Path, docs: list[Any]) -> str:
    path = tmp_path / "objects.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return str(path)


# ---- checking files before anything changes -----------------------------------------------


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["spec"]["serviceArguments"].update(port=70000),
     "document 2 (LoadBalancer r81): spec.serviceArguments.port: 70000 is out of range"),
    (lambda d: d["spec"]["endpoints"][0].update(weight=0),
     "spec.endpoints[0].weight: 0 is out of range; allowed: 1..255"),
    (lambda d: d["spec"]["serviceArguments"].update(sel="fastest"),
     "spec.serviceArguments.sel: 'fastest' is unknown; allowed: 0 (rr)"),
    (lambda d: d["spec"]["serviceArguments"].update(externalIP="1.2.3"),
     "spec.serviceArguments.externalIP: '1.2.3' is not a valid"),
    (lambda d: d["spec"]["serviceArguments"].update(prot="tcp"),
     "spec.serviceArguments.prot: unknown field; allowed: externalIP"),
    (lambda d: d.update(kind="Firewall"), "document 2: kind: 'Firewall' is unknown; allowed: "
     "LoadBalancer, Endpoint, BGPNeighbor, BGPGlobal, HAState"),
    (lambda d: d.update(apiVersion="v1"), "document 2: apiVersion: 'v1'; allowed: netlox/v1"),
    (lambda d: d.pop("spec"), "document 2: spec: is required"),
    (lambda d: d["spec"]["serviceArguments"].update(port=80),
     "document 2 (LoadBalancer r81): the same LoadBalancer as"),
])
def test_bad_document_rejects_the_whole_file(node: LbNode, tmp_path: Path, change: Any,
                                             message: str) -> None:
    docs = [lb_doc(80), lb_doc(81), lb_doc(82)]
    change(docs[1])
    cp = lx(node, "-v", "apply", "-f", write(tmp_path, docs))
    assert cp.returncode == 2, cp.stderr
    assert message in cp.stderr and "nothing was changed" in cp.stderr
    assert requests_sent(cp.stderr) == [] and node.rules() == []


def test_yaml_syntax_error_names_the_line(node: LbNode, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("apiVersion: netlox/v1\nkind: [LoadBalancer\n")
    cp = lx(node, "-v", "apply", "-f", str(path))
    assert cp.returncode == 2 and "line 3" in cp.stderr and requests_sent(cp.stderr) == []
    cp = lx(node, "apply", "-f", str(tmp_path / "missing.yaml"))
    assert cp.returncode == 2 and "cannot read" in cp.stderr


def test_names_and_codes_accepted() -> None:
    body = manifest.check_lb({"serviceArguments": {"externalIP": "2001:DB8::1", "port": 80,
                                                   "SEL": "hash", "mode": 2},
                              "endpoints": []}, "spec")
    sa = body["serviceArguments"]
    assert (sa["externalIP"], sa["port"], sa["sel"], sa["mode"]) == ("2001:db8::1", 80, 1, 2)


def test_kinds_other_than_rules(tmp_path: Path) -> None:
    docs = [
        {"apiVersion": "netlox/v1", "kind": "endpoint",
         "spec": {"hostName": "198.18.1.2", "probeType": "http", "probePort": 8080}},
        {"apiVersion": "netlox/v1", "kind": "BGPNeighbor",
         "spec": {"ipAddress": "198.18.1.2", "remoteAs": 4200000000, "remotePort": 1790}},
        {"apiVersion": "netlox/v1", "kind": "HAState",
         "spec": {"instance": "default", "state": "master"}},
    ]
    items = manifest.read_documents(write(tmp_path, docs))
    assert [i.kind.name for i in items] == ["Endpoint", "BGPNeighbor", "HAState"]
    assert items[2].body == {"instance": "default", "state": "MASTER"}
    with pytest.raises(manifest.ManifestError, match="HAState objects cannot be deleted"):
        manifest.read_documents(write(tmp_path, docs), deleting=True)


# ---- all or nothing ----------------------------------------------------------------------


def test_refusal_midway_undoes_what_was_done(node: LbNode, tmp_path: Path) -> None:
    """r80 is new, r81 replaces a rule with another weight, r92 is refused by the agent
    (its port is in an existing 90-95 rule): r81's previous version is posted back, r80
    deleted, and the agent has exactly the rules it had before."""
    ok(node, "create", "lb", VIP, "--tcp=81:80", f"--endpoints={EP}:9")
    ok(node, "create", "lb", VIP, "--tcp=90-95:80", f"--endpoints={EP}:1")
    before = node.rules()
    cp = lx(node, "-v", "apply", "-f", write(tmp_path, [lb_doc(80), lb_doc(81), lb_doc(92)]))
    assert cp.returncode == 1, cp.stderr
    assert "document 3 (LoadBalancer r92)" in cp.stderr and "HTTP 409" in cp.stderr
    assert "2 change(s) made before were undone" in cp.stderr
    assert requests_sent(cp.stderr) == [
        ("GET", LB_ALL), ("POST", LB), ("POST", LB), ("POST", LB),
        ("POST", LB),  # undo of r81: its previous version back
        ("DELETE", rule_path(80)),  # undo of r80: it did not exist
    ]
    assert node.rules() == before


def test_delete_file_undo_posts_back(node: LbNode, tmp_path: Path) -> None:
    ok(node, "apply", "-f", write(tmp_path, [lb_doc(80)]))
    before = node.rules()
    cp = lx(node, "-v", "delete", "-f", write(tmp_path, [lb_doc(80), lb_doc(81)]))
    assert cp.returncode == 1 and "HTTP 404" in cp.stderr, cp.stderr
    assert requests_sent(cp.stderr) == [("GET", LB_ALL), ("DELETE", rule_path(80)),
                                        ("DELETE", rule_path(81)), ("POST", LB)]
    assert node.rules() == before


def test_pipe_prints_one_line_per_object(node: LbNode, tmp_path: Path) -> None:
    path = write(tmp_path, [lb_doc(80), lb_doc(81, name="w")])
    assert ok(node, "apply", "-f", path).splitlines() == [
        "applied LoadBalancer 198.18.200.1 tcp/80", "applied LoadBalancer 198.18.200.1 tcp/81 (w)"]
    assert ok(node, "apply", "-f", path).splitlines() == [
        "unchanged LoadBalancer 198.18.200.1 tcp/80",
        "unchanged LoadBalancer 198.18.200.1 tcp/81 (w)"]
    assert len(node.rules()) == 2


def test_progress_bar_on_a_terminal(node: LbNode, tmp_path: Path) -> None:
    cp = loxicmd_on_terminal(node, "apply", "-f",
                             write(tmp_path, [lb_doc(80), lb_doc(81), lb_doc(82)]))
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "100%" in cp.stdout and "━" in cp.stdout, cp.stdout
    assert len(node.rules()) == 3


# ---- save / apply -c -----------------------------------------------------------------------


def test_save_writes_go_files_and_apply_replays(node: LbNode, lab_topo: tuple[LbNode, Topology],
                                                tmp_path: Path) -> None:
    backend = lab_topo[1].backend_ips[0]
    for argv in (["198.18.100.1", "--tcp=2020:8080", f"--endpoints={backend}:1,{EP}:2",
                  "--name=web"],
                 ["198.18.100.1", "--udp=2020:8080", f"--endpoints={backend}:1",
                  "--name=web-udp", "--inatimeout=30"],
                 ["198.18.100.2", "--tcp=8000-8010:8080", f"--endpoints={backend}:5",
                  "--mark=7"],
                 ["198.18.100.10", "--tcp=80:8080"]):
        ok(node, "create", "lb", *argv)
    before = node.rules()
    listed_eps = [ep for rule in before for ep in rule["endpoints"]]
    assert all("counter" in ep and "state" in ep for ep in listed_eps)  # output only
    assert all("snat" in rule["serviceArguments"] for rule in before)  # output only
    has_endpoint_api = node.api("GET", "/config/endpoint/all")[0] == 200

    cp = lx(node, "save", "--all", "-c", str(tmp_path))
    assert cp.returncode == 0, cp.stderr
    assert (tmp_path / "EPconfig.txt").exists() == has_endpoint_api
    if not has_endpoint_api:
        assert "no Endpoint API; EPconfig.txt not written" in cp.stderr
    saved = json.loads((tmp_path / "lbconfig.txt").read_text())
    assert len(saved["lbAttr"]) == len(before)
    for rule in saved["lbAttr"]:
        assert rule["serviceArguments"]["snat"] is False  # no SNAT rule is posted back
        assert all("counter" not in ep and "state" not in ep for ep in rule["endpoints"])
    assert lx(node, "save", "--endpoint", "-c", str(tmp_path)).returncode == \
        (0 if has_endpoint_api else 1)

    ok(node, "delete", "lb", "--all", "--yes")
    out = ok(node, "apply", "-c", str(tmp_path))
    assert out.count("applied LoadBalancer") == len(before)
    assert node.rules() == before
    cp = lx(node, "apply", "-c", str(tmp_path / "nowhere"))
    assert cp.returncode == 2 and "neither lbconfig.txt nor EPconfig.txt" in cp.stderr


def test_usage_of_save_and_apply(node: LbNode) -> None:
    for argv in (["save"], ["apply"], ["apply", "-f", "a", "-c", "b"],
                 ["delete", "-f", "a", "lb", "1.1.1.1"]):
        cp = lx(node, "-v", *argv)
        assert cp.returncode == 2 and requests_sent(cp.stderr) == [], (argv, cp.stderr)


def test_save_refuses_what_it_could_not_apply_back(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """An answer with a field this loxicmd does not know (a newer agent's): save writes
    nothing rather than a file apply could not post back. The agent here has no such
    field, so its captured answer is given one."""
    captured = json.loads((GOLDEN / "api" / "lb.json").read_text())
    captured["lbAttr"][1]["serviceArguments"]["futureOption"] = 1
    path = tmp_path / "lbconfig.txt"
    assert saveapply.save_objects(manifest.kinds()["loadbalancer"], captured, path) == 1
    assert "lbAttr[1].serviceArguments.futureOption: unknown field" in capsys.readouterr().err
    assert not path.exists()


# ---- conntrack paging: real flows ----------------------------------------------------------

CT_VIP, CT_PORT, FIRST_SPORT, FLOWS, PAGE = "198.18.200.7", 5000, 20000, 300, 64


@pytest.fixture
def flows(node: LbNode, lab_topo: tuple[LbNode, Topology]) -> list[int]:
    """FLOWS real UDP flows through a rule named 'flows'; their source ports."""
    topo = lab_topo[1]
    ok(node, "create", "lb", CT_VIP, f"--udp={CT_PORT}:{topo.udp_port}",
       f"--endpoints={topo.backend_ips[0]}:1", "--name=flows", "--inatimeout=3600")
    assert udp_flows(topo.client, CT_VIP, CT_PORT, FIRST_SPORT, FLOWS) == FLOWS

    def listed() -> bool:
        status, body = node.api("GET", "/config/conntrack/all?servName=flows")
        return status == 200 and len(body["ctAttr"]) == FLOWS

    wait_for(listed, timeout=10, what=f"{FLOWS} conntrack entries")
    return list(range(FIRST_SPORT, FIRST_SPORT + FLOWS))


def test_ct_streams_page_by_page(node: LbNode, flows: list[int]) -> None:
    cp = lx(node, "-v", "get", "ct", "--servName=flows", LOXICMD_CT_PAGE_SIZE=str(PAGE))
    assert cp.returncode == 0, cp.stderr
    rows = pipe_table(cp.stdout)
    assert sorted(int(r["SPORT"]) for r in rows) == flows  # every flow, once
    assert {(r["SERVICE NAME"], r["DESTIP"], r["DPORT"]) for r in rows} == \
        {("flows", CT_VIP, str(CT_PORT))}
    assert cp.stdout.count("| SERVICE NAME") == 1  # one header for all pages
    sent = requests_sent(cp.stderr)
    assert len(sent) >= FLOWS // PAGE, sent  # several pages
    assert all(method == "GET" and "servName=flows" in target and f"limit={PAGE}" in target
               for method, target in sent), sent
    assert "after=" not in sent[0][1] and all("after=" in t for _, t in sent[1:]), sent

    status, everything = node.api("GET", "/config/conntrack/all?servName=flows")
    assert status == 200
    for output, load in (("json", json.loads), ("yaml", yaml.safe_load)):
        out = ok(node, "get", "ct", "--servName=flows", "-o", output,
                 LOXICMD_CT_PAGE_SIZE=str(PAGE))
        body = load(out)
        assert list(body) == ["ctAttr"]
        assert sorted(e["sourcePort"] for e in body["ctAttr"]) == flows
        assert sorted(body["ctAttr"], key=lambda e: e["sourcePort"]) == \
            sorted(everything["ctAttr"], key=lambda e: e["sourcePort"])


def test_ct_limit_caps_the_total(node: LbNode, flows: list[int]) -> None:
    limit = 150
    cp = lx(node, "-v", "get", "ct", f"--limit={limit}", "-o", "json",
            LOXICMD_CT_PAGE_SIZE=str(PAGE))
    assert cp.returncode == 0, cp.stderr
    ports = [e["sourcePort"] for e in json.loads(cp.stdout)["ctAttr"]]
    assert len(ports) == limit and len(set(ports)) == limit and set(ports) <= set(flows)
    asked = [int(t.split("limit=")[1].split("&")[0]) for _, t in requests_sent(cp.stderr)]
    assert len(asked) >= 2 and all(n <= PAGE for n in asked), asked
    assert asked[-1] < PAGE, asked  # the last page asks only for what is left
    table = pipe_table(ok(node, "get", "ct", f"--limit={limit}", LOXICMD_CT_PAGE_SIZE=str(PAGE)))
    assert len(table) == limit and len({r["SPORT"] for r in table}) == limit


# ---- statuses of agent answers -------------------------------------------------------------


def test_agent_errors_exit_1_with_message(node: LbNode) -> None:
    cp = lx(node, "set", "hastate", "a/b", "MASTER")  # the agent refuses the instance name
    assert cp.returncode == 1 and "HTTP 400): instance: 'a/b'" in cp.stderr, cp.stderr
    cp = lx(node, "delete", "lb", VIP, "--tcp=9")
    assert cp.returncode == 1 and "HTTP 404" in cp.stderr, cp.stderr
    ok(node, "create", "lb", VIP, "--tcp=80:80", f"--endpoints={EP}:1")
    cp = lx(node, "create", "lb", VIP, "--tcp=80:80", f"--endpoints={EP}:1")
    assert cp.returncode == 1 and "HTTP 409" in cp.stderr, cp.stderr
    cp = lx(node, "delete", "bgpneighbor", "198.18.1.2", "65000")
    assert cp.returncode == 1 and "HTTP 404): no BGP neighbor 198.18.1.2" in cp.stderr, \
        cp.stderr
    # a path an older agent does not serve is named as such
    assert _error_message(404, "Not Found", "", {"result": "no such path /netlox/v1/x"}) == \
        "no such path /netlox/v1/x (this agent does not implement this API)"
    # an answer that is not JSON is shown as it is
    assert _error_message(500, "Internal Server Error", "plain text failure\n", None) == \
        "plain text failure"


def test_agent_timed_out_or_unreachable_exit_3(node: LbNode) -> None:
    with paused(node):
        started = time.monotonic()
        cp = lx(node, "-t", "1", "get", "lb")
        elapsed = time.monotonic() - started
    assert cp.returncode == 3 and cp.stdout == "", cp.stderr
    assert f"cannot reach the agent at http://127.0.0.1:{node.port}: timed out after 1 s" \
        in cp.stderr
    assert elapsed < 5, elapsed
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    cp = run_in(node.ns, "loxicmd", "-p", str(closed), "get", "lb")
    assert cp.returncode == 3 and f"127.0.0.1:{closed}: connection refused" in cp.stderr
    ok(node, "get", "lb")  # answering again


def test_mutation_json_output(node: LbNode) -> None:
    try:
        cp = lx(node, "set", "log-level", "INFO")
        assert (cp.returncode, cp.stdout, cp.stderr) == (0, "", "")
        assert pipe_table(ok(node, "get", "log-level")) == [{"LOG LEVEL": "info"}]
        assert json.loads(ok(node, "set", "log-level", "error", "-o", "json")) == \
            {"result": "Success"}
        assert yaml.safe_load(ok(node, "set", "log-level", "warning", "-o", "yaml")) == \
            {"result": "Success"}
        assert pipe_table(ok(node, "get", "log-level")) == [{"LOG LEVEL": "warning"}]
    finally:
        ok(node, "set", "log-level", "debug")


# ---- token -----------------------------------------------------------------------------------


def test_token_sources(node: LbNode, tmp_path: Path) -> None:
    """The agent requires a token: which one loxicmd sends shows in its answer."""
    token_file = tmp_path / "token"
    token_file.write_text("")
    token_file.chmod(0o600)

    def get(in_file: str, *argv: str, **env: str) -> int:
        token_file.write_text(f"{in_file}\n")
        cp = lx(node, "get", "log-level", *argv, LOXICMD_TOKEN_FILE=str(token_file), **env)
        assert cp.returncode == 0 or "HTTP 401" in cp.stderr, cp.stderr
        return cp.returncode

    with restarted_with_token(node, "right"):
        assert get("right") == 0
        assert get("wrong") == 1  # the file's token is sent
        assert get("wrong", LOXICMD_TOKEN="right") == 0  # the environment's, over the file's
        assert get("right", LOXICMD_TOKEN="wrong") == 1
        assert get("wrong", "--token", "right", LOXICMD_TOKEN="wrong") == 0  # the flag's
        assert get("right", "--token", "wrong", LOXICMD_TOKEN="right") == 1
        token_file.chmod(0o644)
        cp = lx(node, "get", "log-level", LOXICMD_TOKEN_FILE=str(token_file))
        assert cp.returncode == 2 and "is mode 0644; allowed: 0600" in cp.stderr, cp.stderr
