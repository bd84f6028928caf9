"""One agent per node's maps, `--cleanup`, and the forwarding the datapath needs.

A second agent with the node's name (the default is the host name, which namespaces share)
once took over the first one's pinned maps and deleted every service key it did not know.
"""

from __future__ import annotations

import os
import uuid

import pytest
from lab import Topology, http_get
from lbnode import LbNode

from datapath.libbpf import pinned_map_info
from loxicmd.agent.dataplane.pins import PIN_ROOT

pytestmark = pytest.mark.e2e

VIP, VPORT = "198.18.100.1", 2020


def _serve(topo: Topology, node: LbNode) -> None:
    eps = ",".join(f"{ip}:1" for ip in topo.backend_ips)
    node.loxicmd("create", "lb", VIP, f"--tcp={VPORT}:8080", f"--endpoints={eps}", check=True)
    assert http_get(topo.client, f"http://{VIP}:{VPORT}/").strip() in topo.backend_names


@pytest.mark.parametrize("by", ["node", "bpffs-dir"])
def test_a_second_agent_on_the_same_node_refuses_naming_the_first(topo: Topology,
                                                                  by: str) -> None:
    lab = topo.lb.lab
    assert lab is not None
    name = f"lxtest-{uuid.uuid4().hex[:8]}"
    first = LbNode(lab, topo.lb, topo.lb_ifaces, node=name if by == "node" else None).start()
    _serve(topo, first)
    assert first.proc is not None
    other_ns = lab.add_ns("lb2")
    second = LbNode(lab, other_ns, ["lo"], node=first.node, pin_dir=first.pin_dir)
    cp = other_ns.run("loxilbd", "--port", str(second.port), "--state-dir",
                      str(lab.workdir / "state-second"), *second.pin_args, "--interfaces",
                      "all", check=False, timeout=30)
    assert cp.returncode == 1, cp.stderr
    node_name = first.node or os.uname().nodename  # the default node is the host name
    assert f"node {node_name!r} in {first.pin_dir} are in use" in cp.stderr, cp.stderr
    assert f"pid {first.proc.pid}" in cp.stderr, cp.stderr
    assert "--node" in cp.stderr  # what to do instead
    # the first one still has every rule, in the datapath too
    assert len(first.rules()) == 1
    names = {http_get(topo.client, f"http://{VIP}:{VPORT}/").strip() for _ in range(3)}
    assert names == set(topo.backend_names)
    # --cleanup would pull the maps from under it: refused too
    cp = topo.lb.run("loxilbd", "--cleanup", *first.pin_args, check=False, timeout=30)
    assert cp.returncode == 1 and "stop it before --cleanup" in cp.stderr, cp.stderr
    assert os.path.isdir(first.pin_dir)


def test_cleanup_removes_the_node_and_says_when_there_is_nothing(topo: Topology) -> None:
    lab = topo.lb.lab
    assert lab is not None
    node = LbNode(lab, topo.lb, topo.lb_ifaces, node=f"lxtest-{uuid.uuid4().hex[:8]}").start()
    _serve(topo, node)
    assert node.stop() == 0
    cp = topo.lb.run("loxilbd", "--cleanup", *node.pin_args, timeout=30)
    assert f"removed {node.pin_dir}" in cp.stdout and "lbc" in cp.stdout, cp.stdout
    assert not os.path.exists(node.pin_dir)
    # no empty directory left behind
    assert not os.path.isdir(PIN_ROOT) or os.listdir(PIN_ROOT)
    again = topo.lb.run("loxilbd", "--cleanup", *node.pin_args, timeout=30)
    assert "nothing to clean up" in again.stdout and "removed" not in again.stdout, again.stdout
    assert not os.path.exists(node.pin_dir)


@pytest.mark.parametrize("keep", [False, True])
def test_forwarding_is_switched_on_or_its_absence_reported(topo: Topology, keep: bool) -> None:
    lab = topo.lb.lab
    assert lab is not None
    topo.lb.sysctl("net.ipv4.ip_forward", 0)
    node = LbNode(lab, topo.lb, topo.lb_ifaces,
                  extra_args=("--keep-sysctls",) if keep else ()).start()
    value = topo.lb.run("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip()
    if keep:
        assert value == "0"
        assert "net.ipv4.ip_forward is 0" in node.log()
    else:
        assert value == "1"
        assert "net.ipv4.ip_forward was 0 in this network namespace: set it to 1" in node.log()
        _serve(topo, node)


def test_forwarding_off_on_one_interface_is_switched_on(topo: Topology) -> None:
    """The FIB lookup checks the interface the packet came in by, not only ip_forward."""
    lab = topo.lb.lab
    assert lab is not None
    topo.lb.sysctl("net.ipv4.conf.lbc.forwarding", 0)
    node = LbNode(lab, topo.lb, topo.lb_ifaces).start()
    assert topo.lb.run("cat", "/proc/sys/net/ipv4/conf/lbc/forwarding").stdout.strip() == "1"
    assert "net.ipv4.conf.lbc.forwarding was 0" in node.log()
    _serve(topo, node)


def test_cleanup_of_another_node_leaves_a_running_agent_alone(topo: Topology) -> None:
    """--cleanup detaches the filter from every interface of the namespace: with an agent
    running there (whatever its node), it refuses and changes nothing."""
    lab = topo.lb.lab
    assert lab is not None
    running = LbNode(lab, topo.lb, topo.lb_ifaces).start()
    _serve(topo, running)
    assert running.proc is not None
    other = f"lxtest-{uuid.uuid4().hex[:8]}"
    cp = topo.lb.run("loxilbd", "--cleanup", "--node", other, check=False, timeout=30)
    assert cp.returncode == 1, cp.stdout
    assert f"pid {running.proc.pid}" in cp.stderr and "nothing was changed" in cp.stderr
    assert not os.path.exists(f"{PIN_ROOT}/{other}")
    assert http_get(topo.client, f"http://{VIP}:{VPORT}/").strip() in topo.backend_names


def test_a_restart_keeps_the_pinned_conntrack_size_and_refuses_another(
        topo: Topology) -> None:
    lab = topo.lb.lab
    assert lab is not None
    node = LbNode(lab, topo.lb, topo.lb_ifaces, ct_entries=16384).start()
    _serve(topo, node)
    assert node.stop() == 0
    node.ct_entries = 32768  # a new size would need a new (empty) table
    cp = topo.lb.run(*node.argv(), check=False, timeout=30)
    assert cp.returncode == 1 and "holds 16384 entries, not 32768" in cp.stderr, cp.stderr
    node.ct_entries = None  # no size given: the pinned one
    node.start()
    info = pinned_map_info(f"{node.pin_dir}/lb_conntrack")
    assert info is not None and info.max_entries == 16384
    assert http_get(topo.client, f"http://{VIP}:{VPORT}/").strip() in topo.backend_names
