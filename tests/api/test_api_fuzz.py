"""The agent's API under schemathesis: more than 10,000 generated calls from its own OpenAPI
document, valid and invalid, against the real agent.

The agent runs in a namespace of its own with nothing but loopback, so that whatever the
calls ask for (BGP peers, probes of any address) reaches nobody. Schemathesis runs there
too, as a process, with the hooks of st_hooks.py. What must hold:

- no 5xx and no crash: every answer is one the document declares, in its declared shape;
- an invalid request is refused (a 4xx), and a refused request changes nothing: not what
  the API shows, not the state directory, not the datapath's service table;
- afterwards the agent restarts from its state directory into the state it showed.

Refusals of schema-valid requests are allowed (schemathesis' positive_data_acceptance is
left out): rules across fields (a port range's end above its start, fullnat's private IP,
an endpoint's unicast address) cannot be said in JSON Schema.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from lab import Lab
from lbnode import LbNode

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
EXAMPLES_PER_OPERATION = 600
MIN_CALLS = 10_000
SEED = 12
LEFT_OUT_CHECKS = ("positive_data_acceptance",)


def _views(node: LbNode) -> dict[str, Any]:
    out = {}
    # (not /config/params: the log level is the command line's again after a restart)
    for path in ("/config/loadbalancer/all", "/config/endpoint/all", "/config/cistate/all",
                 "/config/bgp/neigh/all"):
        status, body = node.api("GET", path)
        assert status == 200, (path, body)
        out[path] = body
    return out


def _settled(views: dict[str, Any]) -> dict[str, Any]:
    """What a restart restores (not probe results, counters or sync progress)."""
    live = {"state", "counter", "minDelay", "avgDelay", "maxDelay", "currState", "sync",
            "updowntime", "holdTime", "localAddress", "advertisedPrefixes",
            "receivedPrefixes", "acceptedPrefixes"}

    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in live}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v
    return strip(views)


def test_schemathesis_finds_no_5xx_and_no_refusal_that_changes_state(
        lab: Lab, tmp_path: Path) -> None:
    ns = lab.add_ns("apifuzz")
    node = LbNode(lab, ns, ["lo"], ct_entries=4096).start()
    # Something to break: rules of each kind, a probe, an HA instance.
    for body in (
        {"serviceArguments": {"externalIP": "198.18.100.1", "port": 80, "protocol": "tcp",
                              "name": "web"},
         "endpoints": [{"endpointIP": "198.18.11.2", "targetPort": 8080, "weight": 1}]},
        {"serviceArguments": {"externalIP": "198.18.100.2", "port": 53, "protocol": "udp",
                              "sel": 1},
         "endpoints": [{"endpointIP": "198.18.12.2", "targetPort": 53, "weight": 2}],
         "allowedSources": [{"prefix": "198.18.1.0/24"}]},
    ):
        assert node.api("POST", "/config/loadbalancer", body)[0] == 200
    assert node.api("POST", "/config/endpoint", {"hostName": "198.18.13.2",
                                                 "probeType": "ping"})[0] == 200
    assert node.api("POST", "/config/cistate", {"instance": "fuzz", "state": "BACKUP"})[0] \
        == 200

    counts = tmp_path / "counts.json"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "st_hooks",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "api"), str(REPO)]),
           "FUZZ_API_BASE": f"http://127.0.0.1:{node.port}/netlox/v1",
           "FUZZ_STATE_DIR": str(node.state_dir), "FUZZ_PIN_DIR": node.pin_dir,
           "FUZZ_COUNTS_FILE": str(counts)}
    schemathesis = Path(sys.executable).with_name("schemathesis")
    out_path = tmp_path / "schemathesis.txt"
    with open(out_path, "w") as out:
        proc = ns.popen(
            str(schemathesis), "run", f"http://127.0.0.1:{node.port}/netlox/v1/openapi.json",
            "--checks", "all", "--exclude-checks", ",".join(LEFT_OUT_CHECKS),
            "--phases", "examples,coverage,fuzzing", "--mode", "all",
            "--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", str(SEED),
            "--workers", "1", "--generation-database", "none", "--no-color",
            "--request-timeout", "20", "--max-failures", "20",
            env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    report = out_path.read_text()
    assert code == 0, report[-6000:]
    statuses = {int(k): v for k, v in json.loads(counts.read_text()).items()}
    calls = sum(statuses.values())
    print(f"schemathesis: {calls} calls, by status: {dict(sorted(statuses.items()))}")
    assert calls >= MIN_CALLS, statuses
    assert not [s for s in statuses if s >= 500], statuses
    assert statuses.get(200, 0) > 500 and statuses.get(400, 0) > 1000, statuses
    assert node.proc is not None and node.proc.poll() is None, "the agent died"
    assert "Traceback" not in node.log()

    # Nothing accepted is lost: a restart restores what the API showed.
    before = _settled(_views(node))
    assert node.stop() == 0
    node.start()
    assert _settled(_views(node)) == before
