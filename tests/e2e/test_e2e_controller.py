"""End to end: ``loxilb-controller`` programs two real agents from a Kubernetes API.

The HA lab (tests/ha_lab.py) without keepalived: lb1 and lb2 run ``loxilbd`` listening on
their front addresses with a token; the client namespace runs the Kubernetes API fixture
(tests/k8s_api.py: the API's list/watch wire format, loaded with the recorded Service and
EndpointSlice of tests/k8s/) and the controller, a real process with the real
``kubernetes`` client, pointed at both agents. The client reaches the service VIPs through
lb1; the backends be1..be3 are the EndpointSlice's pods.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import time
from typing import Any

import pytest
from ha_lab import LB_ADDRS, HaTopology, ha_topology
from k8s_api import ApiServer, load
from lab import Lab, wait_for
from lbnode import LbNode

pytestmark = pytest.mark.e2e

TOKEN = "lab-agent-token"
HTTP = 8080
CIDR = "198.18.100.0/28"
RULE = "default_web:llb-inst0"


class ControllerLab:
    def __init__(self, lab: Lab, topo: HaTopology) -> None:
        self.lab, self.topo = lab, topo
        token_file = lab.workdir / "agent.token"
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
        self.token_file = token_file
        self.agents = {name: LbNode(lab, ns, ["eth0", "eth1"], extra_args=(
            "--host", "0.0.0.0", "--token-file", str(token_file)))
            for name, ns in topo.lbs.items()}
        self.api = ApiServer().start(topo.client_ip, netns=topo.client.name)
        lab.register_cleanup(self.api.stop)
        self.kubeconfig = self.api.kubeconfig(lab.workdir / "kubeconfig")
        self.controller: subprocess.Popen[Any] | None = None
        self.starts = 0
        # the client reaches the VIPs through lb1
        topo.client.ip("route", "add", "198.18.100.0/24", "via", LB_ADDRS["lb1"][0])

    @property
    def log_path(self) -> Any:
        return self.lab.workdir / f"controller-{self.starts}.log"

    def start_controller(self) -> None:
        self.starts += 1
        urls = ",".join(f"http://{LB_ADDRS[n][0]}:{a.port}" for n, a in self.agents.items())
        self.controller = self.lab.track(self.topo.client.popen(
            "loxilb-controller", "--kubeconfig", str(self.kubeconfig), "--loxi-url", urls,
            "--loxi-token-file", str(self.token_file), "--external-cidr", CIDR, "--resync", "2",
            stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w")))  # noqa: SIM115

    def stop_controller(self) -> None:
        assert self.controller is not None
        self.controller.terminate()
        assert self.controller.wait(timeout=15) == 0, self.log_path.read_text()

    def rules(self, name: str) -> dict[str, dict[str, Any]]:
        """The agent's rules by name:port (through its API, with the token)."""
        node = self.agents[name]
        cp = node.ns.run("curl", "-s", "--noproxy", "*", "-H", f"Authorization: {TOKEN}",
                         f"http://127.0.0.1:{node.port}/netlox/v1/config/loadbalancer/all",
                         check=True, timeout=20)
        return {f"{r['serviceArguments']['name']}@{r['serviceArguments']['externalIP']}:"
                f"{r['serviceArguments']['port']}": r for r in json.loads(cp.stdout)["lbAttr"]}

    def endpoints(self, name: str, rule: str) -> set[str] | None:
        found = [r for k, r in self.rules(name).items() if k.startswith(rule + "@")]
        return {e["endpointIP"] for e in found[0]["endpoints"]} if found else None

    def ingress(self, service: str) -> list[str]:
        svc = self.api.get("Service", "default", service) or {}
        return [i.get("ip") for i in ((svc.get("status") or {}).get("loadBalancer") or {})
                .get("ingress") or []]

    def fetch(self, vip: str) -> str:
        cp = self.topo.client.run("curl", "-s", "--noproxy", "*", "--max-time", "5",
                                  f"http://{vip}:80/", check=False, timeout=15)
        assert cp.returncode == 0, cp.stderr
        return cp.stdout


def service(name: str, **annotations: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A copy of the recorded Service and its EndpointSlice under another name."""
    svc, sl = load("service-web.json"), load("endpointslice-web.json")
    svc["metadata"]["name"] = name
    svc["metadata"]["annotations"].update({f"loxilb.io/{k}": v for k, v in annotations.items()})
    sl["metadata"]["name"] = f"{name}-x1"
    sl["metadata"]["labels"]["kubernetes.io/service-name"] = name
    return svc, sl


@pytest.fixture
def ctl(lab: Lab) -> ControllerLab:
    if shutil.which("loxilb-controller") is None:
        pytest.fail("loxilb-controller is not installed (pip install -e .)", pytrace=False)
    topo = ha_topology(lab, http_port=HTTP)
    cl = ControllerLab(lab, topo)
    for agent in cl.agents.values():
        agent.start()
    return cl


def test_controller_programs_both_agents_and_keeps_them(ctl: ControllerLab) -> None:
    api = ctl.api
    web = load("service-web.json")
    # a probe type alone asks for monitoring (as LoxiLB reads it): the agents' copy of the
    # rule must then match what the controller asks, or every pass would post it again
    web["metadata"]["annotations"]["loxilb.io/probetype"] = "tcp"
    api.apply(web)
    api.apply(load("endpointslice-web.json"))
    ctl.start_controller()

    # the first address of the CIDR, written into the status; both agents hold the rule
    # with the ready endpoints (be3 is not ready), fullNAT from the annotation
    wait_for(lambda: ctl.ingress("web") == ["198.18.100.1"], timeout=30,
             what="web's external IP in its status")
    for name in ("lb1", "lb2"):
        wait_for(lambda name=name: ctl.endpoints(name, RULE) == {"198.18.2.11", "198.18.2.12"},
                 timeout=15, what=f"web's rule on {name}")
        (rule,) = ctl.rules(name).values()
        sa = rule["serviceArguments"]
        assert (sa["externalIP"], sa["port"], sa["protocol"], sa["mode"], sa["managed"],
                sa["monitor"], sa["probetype"]) == ("198.18.100.1", 80, "tcp", 2, True, True,
                                                    "tcp"), sa
        assert {e["targetPort"] for e in rule["endpoints"]} == {HTTP}
    assert ctl.fetch("198.18.100.1").strip() in ("be1", "be2")

    # the slice changes: be3 ready, be1 not
    sl = load("endpointslice-web.json")
    sl["endpoints"][0]["conditions"]["ready"] = False
    sl["endpoints"][2]["conditions"]["ready"] = True
    api.apply(sl)
    for name in ("lb1", "lb2"):
        wait_for(lambda name=name: ctl.endpoints(name, RULE) == {"198.18.2.12", "198.18.2.13"},
                 timeout=15, what=f"web's endpoints updated on {name}")
    # settled: passes (every 2 s) find nothing to change
    posts = ctl.log_path.read_text().count(f"updated {RULE}")
    time.sleep(5)
    assert ctl.log_path.read_text().count(f"updated {RULE}") == posts

    # a Service asking for its address and hash selection; one with a bad annotation
    static, static_sl = service("static", epselect="hash")
    static["spec"]["loadBalancerIP"] = "198.18.100.9"
    api.apply(static)
    api.apply(static_sl)
    bad, _ = service("bad", lbmode="magic")
    api.apply(bad)
    wait_for(lambda: ctl.ingress("static") == ["198.18.100.9"], timeout=15,
             what="static's address")
    for name in ("lb1", "lb2"):
        wait_for(lambda name=name: ctl.endpoints(name, "default_static:llb-inst0") is not None,
                 timeout=15, what=f"static's rule on {name}")
        rules = ctl.rules(name)
        assert rules["default_static:llb-inst0@198.18.100.9:80"]["serviceArguments"]["sel"] == 1
        assert not any(k.startswith("default_bad:") for k in rules)
    wait_for(lambda: any(e["involvedObject"]["name"] == "bad" for e in api.events), timeout=10,
             what="a Warning event on bad")
    (event,) = [e for e in api.events if e["involvedObject"]["name"] == "bad"]
    assert event["type"] == "Warning" and "loxilb.io/lbmode: 'magic' is not allowed" in \
        event["message"], event
    assert ctl.ingress("bad") == []

    # lb2 comes back empty (state and maps gone): the controller fills it again
    lb2 = ctl.agents["lb2"]
    lb2.stop()
    lb2.ns.run("loxilbd", "--cleanup", *lb2.pin_args, check=True)
    assert lb2.state_dir is not None
    shutil.rmtree(lb2.state_dir)
    lb2.start()
    wait_for(lambda: len(ctl.rules("lb2")) == 2, timeout=20,
             what="lb2's rules back after it restarted empty")

    # the controller is away while static is deleted: when it is back, static's rules go
    # and web keeps the address its status says
    ctl.stop_controller()
    api.delete("Service", "default", "static")
    ctl.start_controller()
    for name in ("lb1", "lb2"):
        wait_for(lambda name=name: set(ctl.rules(name)) == {f"{RULE}@198.18.100.1:80"},
                 timeout=20, what=f"static's rule gone from {name}")
    assert ctl.ingress("web") == ["198.18.100.1"]

    # the watched history is compacted (410 on the next watch): a change still arrives
    api.compact()
    web["metadata"]["annotations"]["loxilb.io/epselect"] = "persist"
    web["status"] = api.get("Service", "default", "web")["status"]
    api.apply(web)
    for name in ("lb1", "lb2"):
        wait_for(lambda name=name: ctl.rules(name)[f"{RULE}@198.18.100.1:80"]
                 ["serviceArguments"]["sel"] == 3, timeout=20,
                 what=f"web's selection changed on {name} after the relist")

    # deleted: the rules go, the address is free for the next Service
    api.delete("Service", "default", "web")
    for name in ("lb1", "lb2"):
        wait_for(lambda name=name: ctl.rules(name) == {}, timeout=15,
                 what=f"web's rule deleted from {name}")
    again, again_sl = service("again")
    api.apply(again)
    api.apply(again_sl)
    wait_for(lambda: ctl.ingress("again") == ["198.18.100.1"], timeout=15,
             what="the freed address given again")
    text = ctl.log_path.read_text()
    assert "Traceback" not in text, text
    ctl.stop_controller()


def test_agents_unreachable_then_there(ctl: ControllerLab) -> None:
    """With lb2 down the controller programs lb1, writes the status, and says what failed
    in an event; lb2 back, it gets the rule without any change to the Service."""
    ctl.agents["lb2"].stop()
    api = ctl.api
    svc, sl = copy.deepcopy(load("service-web.json")), load("endpointslice-web.json")
    api.apply(svc)
    api.apply(sl)
    ctl.start_controller()
    wait_for(lambda: ctl.ingress("web") == ["198.18.100.1"], timeout=30, what="the status")
    assert ctl.endpoints("lb1", RULE) == {"198.18.2.11", "198.18.2.12"}
    wait_for(lambda: any("cannot reach the agent" in e["message"] for e in api.events),
             timeout=15, what="an event naming the unreachable agent")
    ctl.agents["lb2"].start()
    wait_for(lambda: ctl.endpoints("lb2", RULE) == {"198.18.2.11", "198.18.2.12"},
             timeout=20, what="lb2 programmed once it is there")
    ctl.stop_controller()
