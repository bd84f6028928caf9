"""loxicmd against the real agent in a namespace lab: every command line of cli.md, the
shape of the agent's answers against the golden captures, save/apply/delete -f, and real
bash completion. One agent (and topology) for the whole module keeps this fast.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_lab import cli_env, loxicmd, run_in
from lab import Lab, Topology, tcplb_topology
from lbnode import LbNode, pipe_table
from testpaths import GOLDEN, ROOT

pytestmark = pytest.mark.e2e

COMPLETIONS = ROOT / "completions"
VIP = "198.18.200.1"


def _load_capture_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("golden_capture", GOLDEN / "capture.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lab_topo() -> Iterator[tuple[LbNode, Topology]]:
    with Lab() as lab:
        topo = tcplb_topology(lab, n_backends=2)
        node = LbNode(lab, topo.lb, topo.lb_ifaces).start()
        try:
            yield node, topo
        finally:
            node.stop()


@pytest.fixture
def node(lab_topo: tuple[LbNode, Topology]) -> LbNode:
    """The module's agent, with no rules nor probes (whatever an earlier test left)."""
    node = lab_topo[0]
    status, body = node.api("DELETE", "/config/loadbalancer/all")
    assert status == 200, body
    status, body = node.api("GET", "/config/endpoint/all")
    for ep in body["Attr"]:
        node.api("DELETE", f"/config/endpoint/epipaddress/{ep['hostName']}?name={ep['name']}")
    return node


@pytest.fixture
def eps(lab_topo: tuple[LbNode, Topology]) -> str:
    return ",".join(f"{ip}:1" for ip in lab_topo[1].backend_ips)


def lx(node: LbNode, *argv: str, **env: str) -> Any:
    return loxicmd(node, *argv, **env)


def ok(node: LbNode, *argv: str) -> str:
    cp = lx(node, *argv)
    assert cp.returncode == 0, (argv, cp.returncode, cp.stderr)
    return cp.stdout


def accepted_or_named(node: LbNode, argv: list[str], field: str) -> bool:
    """Options the agent may not implement yet: accepted (exit 0) or refused with exit 1
    and the field named; never accepted and ignored, never another status."""
    cp = lx(node, *argv)
    assert cp.returncode in (0, 1), (argv, cp.returncode, cp.stderr)
    if cp.returncode == 1:
        assert field in cp.stderr and "HTTP 400" in cp.stderr, (argv, cp.stderr)
    return cp.returncode == 0


def lb_rows(node: LbNode) -> list[dict[str, str]]:
    return pipe_table(ok(node, "get", "lb"))


# ---- the agent's answers still have the captured shape ------------------------------------


def shape(value: Any) -> Any:
    """Keys and value types, lists by their first item (an empty list has no shape)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    return "number" if isinstance(value, int | float) else type(value).__name__


def test_live_answers_have_the_captured_shape(lab_topo: tuple[LbNode, Topology]) -> None:
    """Runs first, on the fresh agent: the same objects and traffic as the capture."""
    node, topo = lab_topo
    capture = _load_capture_module()
    capture.populate(node, topo)
    live = capture.capture(node)
    assert set(live) == set(capture.GETS)
    for name, body in live.items():
        saved = json.loads((GOLDEN / "api" / f"{name}.json").read_text())
        assert shape(body) == shape(saved), (
            f"GET {capture.GETS[name]} changed shape; re-run tests/golden/capture.py and "
            "UPDATE_GOLDEN=1 tests/cli/test_cli_golden.py")
    ok(node, "delete", "lb", "--all", "--yes")


# ---- cli.md command lines ------------------------------------------------------------------


def test_global_options_and_environment(node: LbNode) -> None:
    port = str(node.port)
    for argv in (["-s", "127.0.0.1", "get", "lb", "-o", "json"],
                 ["get", "lb", "-s", "127.0.0.1", "--protocol", "http", "-t", "5", "-o", "json"],
                 ["--token", "t0k", "get", "lb", "-o", "json"]):
        cp = run_in(node.ns, "loxicmd", "-p", port, *argv)
        assert cp.returncode == 0 and json.loads(cp.stdout) == {"lbAttr": []}, cp.stderr
    cp = run_in(node.ns, "loxicmd", "get", "lb",
                env=cli_env(LOXICMD_PORT=port, LOXICMD_APISERVER="127.0.0.1"))
    assert cp.returncode == 0 and cp.stdout.startswith("| EXT IP"), cp.stderr
    cp = run_in(node.ns, "loxicmd", "get", "lb", env=cli_env(LOXICMD_PORT="1"))
    assert cp.returncode == 3 and "127.0.0.1:1" in cp.stderr


def test_create_get_delete_lb_flags(node: LbNode, eps: str) -> None:
    ok(node, "create", "lb", VIP, "--tcp=80:8080,81:8081", f"--endpoints={eps}",
       "--name=web:1", "--inatimeout=60", "--mark=5")
    ok(node, "create", "loadbalancer", VIP, "--udp=53:5353", "--tcp=90-95:9090",
       f"--endpoints={eps}")
    rows = lb_rows(node)
    got = [(r["PORT"], r["PROTO"], r["NAME"], r["MARK"], r["TIMEOUT"]) for r in rows]
    assert got == [("53", "udp", "", "0", "20"), ("80", "tcp", "web:1", "5", "60"),
                   ("81", "tcp", "web:1", "5", "60"), ("90-95", "tcp", "", "0", "240")]
    wide = pipe_table(ok(node, "get", "lbs", "-o", "wide"))
    assert [r["EPORT"] for r in wide if r["ENDPOINT"]][:2] == ["5353", "5353"]

    ok(node, "delete", "lb", VIP, "--tcp=80", "--mark=5")
    ok(node, "delete", "lb", VIP, "--tcp=90-95", "--udp=53")
    assert [r["PORT"] for r in lb_rows(node)] == ["81"]
    ok(node, "delete", "lb", "--name=web:1")
    assert lb_rows(node) == []
    cp = lx(node, "delete", "lb", "--name=web:1")
    assert cp.returncode == 1 and "404" in cp.stderr


def test_delete_lb_selectors(node: LbNode, eps: str) -> None:
    ok(node, "create", "lb", VIP, "--tcp=80:8080,81:8081", f"--endpoints={eps}")
    cp = lx(node, "delete", "lb", VIP, "--tcp=80", "--host=www.example.com")
    assert cp.returncode == 1 and "404" in cp.stderr  # no such rule with that host
    ok(node, "delete", "lb", VIP, "--tcp=80", "--bgp")
    assert [r["PORT"] for r in lb_rows(node)] == ["81"]
    cp = lx(node, "delete", "lb", VIP, "--tcp=81", "--mark=3")
    assert cp.returncode == 1 and "404" in cp.stderr  # marks are part of the identity
    cp = lx(node, "delete", "lb", VIP, "--tcp=81", "--tcp=82")  # worst status: the missing 82
    assert cp.returncode == 1 and "tcp/82" in cp.stderr and lb_rows(node) == []
    if accepted_or_named(node, ["create", "lb", VIP, "--icmp", f"--endpoints={eps}"],
                         "protocol"):
        ok(node, "delete", "lb", VIP, "--icmp")
        assert lb_rows(node) == []


def test_create_lb_options_passed_through(node: LbNode, eps: str) -> None:
    """--mode/--select/--bgp/--monitor/--secips/--sources/probes/--sctp/--icmp: sent as
    given; the agent carries them out or refuses them naming the field."""
    base = ["create", "lb", VIP, "--tcp=100:8080", f"--endpoints={eps}"]
    cases: list[tuple[list[str], str, str, str]] = [
        (["--select=hash"], "sel", "SEL", "hash"),
        (["--select=priority"], "sel", "SEL", "priority"),
        (["--mode=onearm"], "mode", "MODE", "onearm"),
        (["--mode=fullnat"], "mode", "MODE", "fullnat"),
        (["--monitor"], "monitor", "MONITOR", "On"),
        (["--bgp"], "bgp", "", ""),
        (["--sources=10.0.0.0/8,192.168.0.0/16"], "allowedSources", "", ""),
        (["--secips=198.18.200.9"], "secondaryIPs", "", ""),
        (["--probetype=tcp", "--probeport=8080"], "probetype", "", ""),
    ]
    for extra, field, column, value in cases:
        if accepted_or_named(node, [*base, *extra], field) and column:
            (row,) = lb_rows(node)
            assert row[column] == value, (extra, row)
        lx(node, "delete", "lb", "--all", "--yes")
    for argv, field in ((["create", "lb", VIP, "--sctp=38412:38412", f"--endpoints={eps}"],
                         "protocol"),
                        (["create", "lb", VIP, "--icmp", f"--endpoints={eps}"], "protocol")):
        accepted_or_named(node, argv, field)
        lx(node, "delete", "lb", "--all", "--yes")


def test_attach_and_detach_endpoints(node: LbNode, lab_topo: tuple[LbNode, Topology]) -> None:
    first, second = lab_topo[1].backend_ips
    ok(node, "create", "lb", VIP, "--tcp=80:8080", f"--endpoints={first}:1")
    ok(node, "create", "lb", VIP, "--tcp=80:8080", f"--endpoints={second}:2", "--attachEP")
    wide = pipe_table(ok(node, "get", "lb", "-o", "wide"))
    assert [(r["ENDPOINT"], r["WEIGHT"]) for r in wide] == [(first, "1"), (second, "2")]
    ok(node, "create", "lb", VIP, "--tcp=80:8080", f"--endpoints={first}:1", "--detachEP")
    assert [r["ENDPOINT"] for r in pipe_table(ok(node, "get", "lb", "-o", "wide"))] == [second]
    ok(node, "delete", "lb", "--all", "--yes")


def test_delete_all_confirmation(node: LbNode, eps: str) -> None:
    ok(node, "create", "lb", VIP, "--tcp=80:8080", f"--endpoints={eps}")
    cp = lx(node, "delete", "lb", "--all")
    assert cp.returncode == 2 and "--yes" in cp.stderr
    assert len(lb_rows(node)) == 1
    ok(node, "delete", "lb", "--all", "--yes")
    assert lb_rows(node) == []


def test_conntrack_filters(lab_topo: tuple[LbNode, Topology], eps: str) -> None:
    from lab import http_get

    node, topo = lab_topo
    ok(node, "create", "lb", VIP, "--tcp=2020:8080", f"--endpoints={eps}", "--name=ctweb")
    for _ in range(4):
        http_get(topo.client, f"http://{VIP}:2020/")
    rows = [r for r in pipe_table(ok(node, "get", "ct")) if r["DESTIP"] == VIP]
    assert len(rows) == 4
    assert len(pipe_table(ok(node, "get", "ct", "--servName=ctweb"))) == 4
    assert pipe_table(ok(node, "get", "ct", "--servName=nosuch")) == []
    assert len(pipe_table(ok(node, "get", "conntrack", f"--ip={VIP}", "--port=2020"))) == 4
    assert len(pipe_table(ok(node, "get", "cts", "--limit=3"))) == 3
    state = rows[0]["STATE"]
    assert all(r["STATE"] == state for r in pipe_table(ok(node, "get", "ct", f"--state={state}")))
    body = json.loads(ok(node, "get", "ct", "-o", "json", "--limit=2"))
    assert len(body["ctAttr"]) == 2
    ok(node, "delete", "lb", "--all", "--yes")


def test_ha_version_process_log_level_dpstats(node: LbNode) -> None:
    ok(node, "set", "hastate", "inst1", "backup", "--vip=198.18.200.5")
    ha = {r["INSTANCE"]: r for r in pipe_table(ok(node, "get", "ha", "-o", "wide"))}
    assert ha["inst1"] == {"INSTANCE": "inst1", "HASTATE": "BACKUP", "VIP": "198.18.200.5",
                           "SYNC": "off", "PEERS": "", "LAG": "", "SENT/RECEIVED": ""}
    cp = lx(node, "set", "hastate", "inst1", "PRIMARY")
    assert cp.returncode == 2 and "MASTER, BACKUP, FAULT" in cp.stderr
    status, answer = node.api("POST", "/config/cistate", {"instance": "i", "state": "UP"})
    assert status == 400 and "state" in answer["result"]
    status, answer = node.api("POST", "/config/cistate", {"state": "MASTER", "vip": "1.2.3"})
    assert status == 400 and "vip" in answer["result"]

    (version,) = pipe_table(ok(node, "get", "lbversion"))
    assert version["VERSION"]
    assert ok(node, "version").startswith("loxicmd ")
    (proc,) = pipe_table(ok(node, "get", "process", "-o", "wide"))
    assert int(proc["PID"]) == node.proc.pid if node.proc else False
    assert proc["STATE DIR"] == str(node.state_dir) and proc["PIN DIR"] == node.pin_dir

    ok(node, "set", "log-level", "error")
    assert pipe_table(ok(node, "get", "log-level")) == [{"LOG LEVEL": "error"}]
    ok(node, "set", "log-level", "debug")
    assert pipe_table(ok(node, "get", "log-level")) == [{"LOG LEVEL": "debug"}]
    status, answer = node.api("POST", "/config/params", {"logLevel": "loud"})
    assert status == 400 and "logLevel" in answer["result"]
    reasons = [r["REASON"] for r in pipe_table(ok(node, "get", "dpstats"))]
    assert reasons and all(reasons)


def test_ha_state_survives_restart(node: LbNode) -> None:
    ok(node, "set", "hastate", "default", "FAULT")
    node.stop()
    node.start()
    ha = {r["INSTANCE"]: r["HASTATE"] for r in pipe_table(ok(node, "get", "ha"))}
    assert ha["default"] == "FAULT"
    ok(node, "set", "hastate", "default", "MASTER")


def test_bgp_nouns(node: LbNode) -> None:
    """create/get bgpglobal and bgpneighbor against the agent (the peer is not there: the
    session stays short of ESTABLISHED); the agent's refusals exit 1 with its words."""
    cp = lx(node, "get", "bgpglobal")
    assert cp.returncode == 1 and "HTTP 404): BGP is not configured" in cp.stderr, cp.stderr
    ok(node, "create", "bgpglobal", "--routerid=198.18.1.1", "--localas=4200000001",
       "--listenport=1179")
    ok(node, "create", "bgpneighbor", "198.18.1.2", "65002", "--remotePort=1790",
       "--setMultiHop")
    (glob,) = pipe_table(ok(node, "get", "bgpglobal", "-o", "wide"))
    assert (glob["ROUTER ID"], glob["LOCAL AS"], glob["LISTEN PORT"], glob["NEXTHOP SELF"]) \
        == ("198.18.1.1", "4200000001", "1179", "false"), glob
    assert glob["SPEAKER"] in ("starting", "running") and glob["BACKUP"] == "worse"
    (row,) = pipe_table(ok(node, "get", "bgpnei"))
    assert (row["PEER"], row["AS"], row["UP/DOWN"]) == ("198.18.1.2", "65002", "never"), row
    assert row["STATE"] in ("IDLE", "CONNECT", "ACTIVE"), row
    (shown,) = json.loads(ok(node, "get", "bgpnei", "-o", "json"))["bgpNeiAttr"]
    assert shown["remotePort"] == 1790 and shown["setMultiHop"] is True, shown
    cp = lx(node, "create", "bgpneighbor", "198.18.1.2", "65003")
    assert cp.returncode == 1 and "HTTP 409): BGP neighbor 198.18.1.2 already exists" \
        in cp.stderr, cp.stderr
    cp = lx(node, "delete", "bgpneighbor", "198.18.1.2", "65003")
    assert cp.returncode == 1 and "with AS 65003 (its AS is 65002)" in cp.stderr, cp.stderr
    ok(node, "delete", "bgpneighbor", "198.18.1.2", "65002")
    assert pipe_table(ok(node, "get", "bgpnei")) == []


# ---- save / apply / delete -f --------------------------------------------------------------


def test_save_and_apply_dir(node: LbNode, eps: str, tmp_path: Path) -> None:
    ok(node, "create", "lb", VIP, "--tcp=80:8080,81:8081", f"--endpoints={eps}", "--name=s")
    before = node.rules()
    out = ok(node, "save", "--all", "-c", str(tmp_path))
    assert f"{tmp_path}/lbconfig.txt" in out
    saved = json.loads((tmp_path / "lbconfig.txt").read_text())
    assert len(saved["lbAttr"]) == 2 and "counter" not in saved["lbAttr"][0]["endpoints"][0]
    ok(node, "delete", "lb", "--all", "--yes")
    out = ok(node, "apply", "-c", str(tmp_path))
    assert out.count("applied LoadBalancer") == 2  # a pipe: one line per object
    assert [r["serviceArguments"] for r in node.rules()] == \
        [r["serviceArguments"] for r in before]
    out = ok(node, "apply", "-c", str(tmp_path))
    assert out.count("unchanged") == 2
    ok(node, "save", "--lb", "-c", str(tmp_path))
    assert (tmp_path / "lbconfig.txt.bk").exists()
    ok(node, "delete", "lb", "--all", "--yes")


def _manifest(eps: list[str], ports: list[int]) -> str:
    docs = [{"apiVersion": "netlox/v1", "kind": "LoadBalancer",
             "metadata": {"name": f"web-{p}"},
             "spec": {"serviceArguments": {"externalIP": VIP, "port": p, "protocol": "tcp",
                                           "name": f"web-{p}"},
                      "endpoints": [{"endpointIP": ip, "targetPort": 8080, "weight": 1}
                                    for ip in eps]}} for p in ports]
    return yaml.safe_dump_all(docs)


def test_apply_and_delete_file(node: LbNode, lab_topo: tuple[LbNode, Topology],
                               tmp_path: Path) -> None:
    ips = lab_topo[1].backend_ips
    path = tmp_path / "lb.yaml"
    path.write_text(_manifest(ips, [80, 81, 82]))
    assert ok(node, "apply", "-f", str(path)).count("applied") == 3
    assert [r["PORT"] for r in lb_rows(node)] == ["80", "81", "82"]
    assert ok(node, "delete", "-f", str(path)).count("deleted") == 3
    assert lb_rows(node) == []


def test_bad_file_rejected_whole(node: LbNode, lab_topo: tuple[LbNode, Topology],
                                 tmp_path: Path) -> None:
    ips = lab_topo[1].backend_ips
    docs = list(yaml.safe_load_all(_manifest(ips, [80, 81, 82])))
    docs[2]["spec"]["endpoints"][0]["weight"] = 300
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    cp = lx(node, "apply", "-f", str(path))
    assert cp.returncode == 2
    assert "document 3 (LoadBalancer web-82): spec.endpoints[0].weight: 300" in cp.stderr
    assert lb_rows(node) == []


def test_refusal_midway_is_undone(node: LbNode, lab_topo: tuple[LbNode, Topology],
                                  tmp_path: Path) -> None:
    """The third rule is refused by the agent (not by the file check): the first two,
    already created, are removed again, and the rule that was there before stays as it was."""
    ips = lab_topo[1].backend_ips
    ok(node, "create", "lb", VIP, "--tcp=81:9090", f"--endpoints={ips[0]}:3")
    before = node.rules()
    docs = list(yaml.safe_load_all(_manifest(ips, [80, 81, 82])))
    docs[2]["spec"]["serviceArguments"]["externalIP"] = "2001:db8::1"  # IPv6: agent refuses
    path = tmp_path / "midway.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    cp = lx(node, "apply", "-f", str(path))
    if cp.returncode == 0:  # an agent that takes IPv6 VIPs: nothing to undo in this test
        ok(node, "delete", "-f", str(path))
        return
    assert cp.returncode == 1, cp.stderr
    assert "document 3" in cp.stderr and "undone" in cp.stderr
    assert node.rules() == before
    ok(node, "delete", "lb", "--all", "--yes")


# ---- completion: real bash, the generated script, live values --------------------------


COMPLETE = """
source {script}
complete -p loxicmd >/dev/null || exit 9
t() {{ COMP_WORDS=("$@"); COMP_CWORD=$((${{#COMP_WORDS[@]}}-1)); COMPREPLY=()
      _loxicmd_completion loxicmd; echo "${{COMPREPLY[*]}}"; }}
t loxicmd ""
t loxicmd get ""
t loxicmd create lb 1.1.1.1 --mo
t loxicmd create lb 1.1.1.1 --mode ""
t loxicmd create lb 1.1.1.1 --select ""
t loxicmd delete lb ""
t loxicmd delete lb --name ""
t loxicmd -p {port} delete lb 198.18.200.
t loxicmd create lb 1.1.1.1 --mode =
t loxicmd create lb 1.1.1.1 --select = p
t loxicmd get ct --servName ""
t loxicmd get ct --servName = al
t loxicmd get lb --servName = b
t loxicmd help ""
t loxicmd delete ep ""
t loxicmd delete ep 198.18.1.2 --name ""
"""


ENDPOINT_HOST = "198.18.77.7"


def _complete(node: LbNode, port: int) -> tuple[list[str], str, float]:
    started = time.monotonic()
    cp = run_in(node.ns, "bash", "--norc", "-c",
                COMPLETE.format(script=COMPLETIONS / "loxicmd.bash", port=port),
                env=cli_env(LOXICMD_PORT=str(port)))
    assert cp.returncode == 0, cp.stderr
    return cp.stdout.splitlines(), cp.stderr, time.monotonic() - started


def test_bash_completion_live(node: LbNode, eps: str) -> None:
    ok(node, "create", "lb", VIP, "--tcp=80:8080", f"--endpoints={eps}", "--name=alpha")
    ok(node, "create", "lb", "198.18.200.2", "--tcp=80:8080", f"--endpoints={eps}", "--name=beta",
       "--monitor")
    ok(node, "create", "ep", ENDPOINT_HOST, "--name=probe-a", "--probetype=ping")
    lines, err, _ = _complete(node, node.port)
    assert err == ""
    assert lines[0].split() == ["get", "create", "delete", "set", "save", "apply", "version",
                                "completion", "help"]
    assert {"loadbalancer", "conntrack", "hastate", "bgpneighbor"} <= set(lines[1].split())
    assert lines[2].split() == ["--mode", "--monitor"]
    assert lines[3].split() == ["default", "onearm", "fullnat", "dsr", "fullproxy",
                                "hostonearm"]
    assert lines[4].split() == ["rr", "hash", "priority", "persist", "lc", "n2", "n3"]
    assert lines[5].split() == [VIP, "198.18.200.2"]
    assert lines[6].split() == ["alpha", "beta"]
    assert lines[7].split() == [VIP, "198.18.200.2"]
    # issue 15: `--opt=value` (bash splits it at `=`), service names of get ct / get lb
    assert lines[8].split() == lines[3].split()
    assert lines[9].split() == ["priority", "persist"]
    assert lines[10].split() == ["alpha", "beta"]
    assert lines[11].split() == ["alpha"]
    assert lines[12].split() == ["beta"]
    assert lines[13].split() == lines[0].split()
    # delete ep: the hosts and names of endpoint probes (not those rules made)
    assert lines[14].split() == [ENDPOINT_HOST]
    assert lines[15].split() == ["probe-a"]
    ok(node, "delete", "lb", "--all", "--yes")
    ok(node, "delete", "ep", ENDPOINT_HOST)


def test_bash_completion_agent_down_is_fast_and_silent(node: LbNode) -> None:
    lines, err, elapsed = _complete(node, 1)
    assert err == ""
    assert lines[5] == "" and lines[6] == "" and lines[1]  # static values still complete
    assert lines[10] == "" and lines[8] and lines[9] and lines[14] == ""
    # 16 completions, each one python start: none of them waited for a 10 s timeout
    assert elapsed < 16 * 5, elapsed
