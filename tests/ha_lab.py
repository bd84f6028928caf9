"""The HA lab: a client, two LB nodes electing a master with keepalived, three backends.

Topology (every address in 198.18.0.0/15; see shared/spec/lab.md and shared/spec/ha.md)::

    client eth0 198.18.1.10/24, default via 198.18.1.1 (the client-side VRRP VIP)
       |
    cswitch (bridge br0)
       |                                 |
    lb1 eth0 198.18.1.2/24            lb2 eth0 198.18.1.3/24
    lb1 eth1 198.18.2.2/24            lb2 eth1 198.18.2.3/24
       |                                 |
    sswitch (bridge br0)
       |            |            |
    be1 .2.11    be2 .2.12    be3 .2.13   eth0 198.18.2.1x/24, default via 198.18.2.1
                                          (the server-side VRRP VIP)

The VRRP master holds both VIPs (198.18.1.1 on eth0, 198.18.2.1 on eth1). Service VIPs
live in 198.18.100.0/24 and are on no interface: the client reaches them through its
default route, i.e. through the master, whose datapath intercepts them. Both LBs forward
(``ip_forward=1``), so with plain routing the client also reaches the backends' own
addresses through the master.

``Keepalived`` runs keepalived 2.2.7 for one LB node (config, log and pid files in the
lab's workdir), tracked by the Lab. ``Streams`` drives ``client.py streams`` in a
namespace. Helpers: who holds the VIPs, the client's ARP entry for its gateway, interface
counters, SIGKILL of a process group.

VRRP runs as version 3 (keepalived's VRRPv2 rounds ``advert_int`` up to whole seconds, so
0.1 would silently be 1). The master-down interval is 3 x advert_int + skew
((256 - priority) / 256 x advert_int): for lb2 (priority 100) 3.6 s at advert_int 1,
0.36 s at 0.1.

What a SIGKILL of keepalived leaves behind (measured with tests/e2e/test_e2e_ha_lab.py):
the killed node keeps both VIPs on its interfaces and its kernel keeps answering ARP for
them. The survivor takes over after the master-down interval and sends gratuitous ARPs;
the client and the backends already have an ARP entry for their gateway and a gratuitous
ARP overrides it, so all existing traffic moves to the survivor at once (its interface
counters take everything; the killed node only gets VRRP adverts and ARP). A host that
resolves the gateway afresh afterwards (broadcast request) gets two answers and keeps the
first for ``locktime`` (1 s): in this lab the stale node's, as lb2 is plugged into both
bridges first (a bridge floods a broadcast to its newest port first: the worst case for a
killed lb1). With keepalived's default ``garp_master_refresh 0`` that host then stays on
the dead node for good (its unicast re-probes are answered by the stale VIP: 100% loss
over 12 s); the refresh set here (every ``garp_refresh`` = 1 s) overrides it within about
2 s (locktime + refresh period). When the killed node's keepalived starts again it first
removes the stale VIPs (log: ``removing VIPs``), then waits as BACKUP for the
master-down interval before preempting.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import (
    Lab,
    LabError,
    Netns,
    check_lab_addr,
    end_by_stdin,
    process_group_members,
    start_backend,
    wait_for,
)
from testpaths import CLIENT_SCRIPT

KEEPALIVED = "/usr/sbin/keepalived"

CLIENT_IP = "198.18.1.10"
CLIENT_VIP = "198.18.1.1"  # the client's default gateway, held by the VRRP master
SERVER_VIP = "198.18.2.1"  # the backends' default gateway, held by the VRRP master
SERVICE_NET = "198.18.100.0/24"  # service VIPs: on no interface
LB_ADDRS = {
    "lb1": ("198.18.1.2", "198.18.2.2"),  # (eth0, eth1)
    "lb2": ("198.18.1.3", "198.18.2.3"),
}
LB_PRIORITY = {"lb1": 150, "lb2": 100}
BACKEND_NAMES = ("be1", "be2", "be3")
BACKEND_IPS = ("198.18.2.11", "198.18.2.12", "198.18.2.13")
VRRP_STATES = ("MASTER", "BACKUP", "FAULT", "STOP", "INIT")


# --------------------------------------------------------------------------- helpers


def sigkill_group(proc: subprocess.Popen[Any], timeout: float = 5) -> None:
    """SIGKILL a process started with ``start_new_session`` and everything in its group.

    This is a crash: no handler runs, nothing is cleaned up (keepalived leaves its VIPs).
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=timeout)
    wait_for(lambda: not process_group_members(proc.pid), timeout=timeout, interval=0.02,
             what=f"process group {proc.pid} to die")


def addresses(ns: Netns, ifname: str) -> list[str]:
    """IPv4 addresses (without prefix) on an interface of ``ns``."""
    out = ns.ip("-j", "-4", "addr", "show", "dev", ifname).stdout
    return [a["local"] for link in json.loads(out or "[]") for a in link.get("addr_info", [])]


def mac_of(ns: Netns, ifname: str) -> str:
    return str(json.loads(ns.ip("-j", "link", "show", "dev", ifname).stdout)[0]["address"])


def neighbour(ns: Netns, ip: str, ifname: str = "eth0") -> dict[str, Any] | None:
    """``ns``'s ARP entry for ``ip`` (keys ``lladdr`` and ``state``), None if it has none."""
    out = ns.ip("-j", "-4", "neigh", "show", ip, "dev", ifname).stdout
    entries = json.loads(out or "[]")
    return entries[0] if entries else None


def link_stats(ns: Netns, ifname: str) -> dict[str, int]:
    """Packet/byte counters of an interface: rx_packets, rx_bytes, tx_packets, tx_bytes."""
    link = json.loads(ns.ip("-j", "-s", "link", "show", "dev", ifname).stdout)[0]
    stats = link["stats64"]
    return {f"{d}_{k}": int(stats[d][k]) for d in ("rx", "tx") for k in ("packets", "bytes")}


# --------------------------------------------------------------------------- topology


@dataclass
class HaTopology:
    lab: Lab
    client: Netns
    cswitch: Netns
    sswitch: Netns
    lbs: dict[str, Netns]  # "lb1", "lb2"
    backends: list[Netns]
    backend_names: list[str]
    backend_ips: list[str]
    http_port: int
    udp_port: int
    echo_port: int
    backend_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    client_ip: str = CLIENT_IP
    client_vip: str = CLIENT_VIP
    server_vip: str = SERVER_VIP

    def lb(self, name: str) -> Netns:
        return self.lbs[name]

    def vip_holders(self) -> dict[str, list[str]]:
        """For each LB, the VRRP VIPs it has on its interfaces (a SIGKILLed one keeps them)."""
        held: dict[str, list[str]] = {}
        for name, ns in self.lbs.items():
            held[name] = [ip for ifname, ip in (("eth0", self.client_vip),
                                                ("eth1", self.server_vip))
                          if ip in addresses(ns, ifname)]
        return held

    def vip_owner(self) -> str | None:
        """The one LB holding both VIPs while the other holds none; None otherwise."""
        held = self.vip_holders()
        full = [n for n, ips in held.items() if len(ips) == 2]
        empty = [n for n, ips in held.items() if not ips]
        return full[0] if len(full) == 1 and len(empty) == len(held) - 1 else None

    def gateway_macs(self) -> dict[str, str | None]:
        """Which MAC the client uses for its gateway and the backends use for theirs."""
        out: dict[str, str | None] = {}
        entry = neighbour(self.client, self.client_vip)
        out["client"] = entry.get("lladdr") if entry else None
        for name, ns in zip(self.backend_names, self.backends, strict=True):
            entry = neighbour(ns, self.server_vip)
            out[name] = entry.get("lladdr") if entry else None
        return out

    def lb_macs(self) -> dict[str, str]:
        """``{mac: "lb1 eth0", ...}`` for reading ``gateway_macs``."""
        return {mac_of(ns, ifname): f"{name} {ifname}"
                for name, ns in self.lbs.items() for ifname in ("eth0", "eth1")}

    def forwarded(self, name: str) -> int:
        """Packets an LB has received on both data interfaces (its share of the traffic)."""
        ns = self.lbs[name]
        return sum(link_stats(ns, ifname)["rx_packets"] for ifname in ("eth0", "eth1"))

    def set_forwarding(self, name: str, on: bool) -> None:
        """Turn an LB's IP forwarding on or off (off: a node whose datapath is dead)."""
        self.lbs[name].sysctl("net.ipv4.ip_forward", 1 if on else 0)


def _bridge(lab: Lab, ns: Netns) -> None:
    ns.ip("link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0",
          "mcast_snooping", "0")
    ns.ip("link", "set", "br0", "up")


def _plug(lab: Lab, host: Netns, host_if: str, cidr: str | None, switch: Netns,
          port: str) -> None:
    lab.link(host, switch, host_if, port, cidr, None)
    switch.ip("link", "set", port, "master", "br0")


def ha_topology(lab: Lab, http_port: int = 8080, udp_port: int = 8080,
                echo_port: int = 7000) -> HaTopology:
    """Build the HA lab (namespaces, bridges, addresses, routes) and start the backends."""
    client = lab.add_ns("client")
    cswitch = lab.add_ns("cswitch")
    sswitch = lab.add_ns("sswitch")
    _bridge(lab, cswitch)
    _bridge(lab, sswitch)
    _plug(lab, client, "eth0", f"{CLIENT_IP}/24", cswitch, "client")
    client.ip("route", "add", "default", "via", CLIENT_VIP)

    lbs: dict[str, Netns] = {name: lab.add_ns(name) for name in LB_ADDRS}
    # lb2 is plugged first: a bridge floods a broadcast to its newest port first, so the
    # killed lb1's stale VIPs answer an ARP request before lb2 does (the worst case).
    for name in reversed(LB_ADDRS):
        ns = lbs[name]
        front, back = LB_ADDRS[name]
        _plug(lab, ns, "eth0", f"{front}/24", cswitch, name)
        _plug(lab, ns, "eth1", f"{back}/24", sswitch, name)
        ns.sysctl("net.ipv4.ip_forward", 1)
        for conf in ("all", "default", "eth0", "eth1"):
            ns.sysctl(f"net.ipv4.conf.{conf}.rp_filter", 0)

    topo = HaTopology(
        lab=lab, client=client, cswitch=cswitch, sswitch=sswitch, lbs=lbs, backends=[],
        backend_names=list(BACKEND_NAMES), backend_ips=list(BACKEND_IPS),
        http_port=http_port, udp_port=udp_port, echo_port=echo_port,
    )
    for name, ip in zip(BACKEND_NAMES, BACKEND_IPS, strict=True):
        ns = lab.add_ns(name)
        _plug(lab, ns, "eth0", f"{ip}/24", sswitch, name)
        ns.ip("route", "add", "default", "via", SERVER_VIP)
        topo.backends.append(ns)
    for ns, name in zip(topo.backends, BACKEND_NAMES, strict=True):
        topo.backend_procs.append(
            start_backend(lab, ns, name, http_port, udp_port, echo_port=echo_port))
    return topo


# --------------------------------------------------------------------------- keepalived

_STATE_RE = re.compile(r"\((?P<inst>[^)]+)\) Entering (?P<state>[A-Z]+) STATE")
_SCRIPT_FAILED_RE = re.compile(r"VRRP_Script\([^)]+\) failed")


@dataclass
class Keepalived:
    """keepalived (VRRP only) for one LB node, run inside its namespace, tracked by the Lab.

    ``notify``: a shell command line run on every state change with keepalived's
    ``TYPE NAME STATE PRIORITY`` appended (e.g. ``loxilbd-notify ...``). ``track``: a shell
    command line run every second as a ``vrrp_script`` with ``weight 0``, ``fall 1``,
    ``rise 1``: while it fails, the instance is in FAULT (``track_init_fail``: it counts as
    failing until its first success, so a restarted node cannot become MASTER early).
    ``unicast_peers``: VRRP by unicast to these addresses instead of multicast.
    """

    lab: Lab
    ns: Netns
    name: str  # the LB's name: "lb1", "lb2" (files are named after it)
    priority: int
    router_id: int = 51
    advert_int: float = 1.0  # seconds, down to 0.01 (VRRPv3: centiseconds)
    version: int = 3  # VRRPv2 rounds advert_int to whole seconds
    instance: str = "default"
    interface: str = "eth0"
    vips: Sequence[str] = (f"{CLIENT_VIP}/24 dev eth0", f"{SERVER_VIP}/24 dev eth1")
    preempt: bool = True
    notify: str | None = None
    track: str | None = None
    track_init_fail: bool = True
    unicast_src: str | None = None
    unicast_peers: Sequence[str] | None = None
    garp_refresh: int = 1  # seconds between GARP refreshes while MASTER (0: none)
    extra_instance_conf: str = ""
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.router_id <= 255:
            raise ValueError("virtual_router_id must be in 1..255")
        if not 1 <= self.priority <= 254:
            raise ValueError("priority must be in 1..254")
        for vip in self.vips:
            check_lab_addr(vip.split()[0], allow_loopback=False)
        for peer in self.unicast_peers or ():
            check_lab_addr(peer, allow_loopback=False)

    # -- files
    def _path(self, what: str) -> Path:
        return self.lab.workdir / f"keepalived-{self.name}.{what}"

    @property
    def conf_path(self) -> Path:
        return self._path("conf")

    @property
    def log_path(self) -> Path:
        """The log of the current (or last) run."""
        return self._path(f"{self.starts}.log")

    def argv(self) -> list[str]:
        return [
            KEEPALIVED, "--dont-fork", "--log-console", "--log-detail", "--no-syslog",
            "--vrrp", "--use-file", str(self.conf_path),
            "--pid", str(self._path("pid")), "--vrrp_pid", str(self._path("vrrp.pid")),
        ]

    def _script(self, what: str, command: str) -> Path:
        """A wrapper running ``command`` through sh with keepalived's arguments appended."""
        path = self._path(f"{what}.sh")
        path.write_text(f"#!/bin/sh\n{command} \"$@\"\n")
        path.chmod(0o755)
        return path

    def config(self) -> str:
        advert = f"{self.advert_int:g}"
        lines = [
            "global_defs {",
            f"    router_id {self.name}",
            "    script_user root",
            "    enable_script_security",
            "}",
        ]
        if self.track is not None:
            lines += [
                "vrrp_script ready {",
                f"    script \"{self._script('track', self.track)}\"",
                "    interval 1",
                "    timeout 2",
                "    fall 1",
                "    rise 1",
                "    weight 0",
                *(["    init_fail"] if self.track_init_fail else []),
                "}",
            ]
        lines += [
            f"vrrp_instance {self.instance} {{",
            "    state BACKUP",
            f"    interface {self.interface}",
            f"    virtual_router_id {self.router_id}",
            f"    priority {self.priority}",
            f"    version {self.version}",
            f"    advert_int {advert}",
            "    preempt" if self.preempt else "    nopreempt",
            # one burst of GARPs on becoming MASTER, then a refresh every garp_refresh s
            "    garp_master_delay 1",
            "    garp_master_repeat 3",
            f"    garp_master_refresh {self.garp_refresh}",
            "    garp_master_refresh_repeat 1",
            "    garp_lower_prio_repeat 3",
            "    garp_lower_prio_delay 1",
            "    virtual_ipaddress {",
            *(f"        {vip}" for vip in self.vips),
            "    }",
        ]
        if self.unicast_peers:
            if self.unicast_src:
                lines.append(f"    unicast_src_ip {self.unicast_src}")
            lines += ["    unicast_peer {", *(f"        {p}" for p in self.unicast_peers),
                      "    }"]
        if self.track is not None:
            lines += ["    track_script {", "        ready", "    }"]
        if self.notify is not None:
            lines.append(f"    notify \"{self._script('notify', self.notify)}\"")
        if self.extra_instance_conf:
            lines.append(self.extra_instance_conf)
        lines.append("}")
        return "\n".join(lines) + "\n"

    # -- process
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Keepalived:
        if self.running:
            raise LabError(f"keepalived on {self.name} is already running")
        self.conf_path.write_text(self.config())
        # a killed keepalived leaves its pid files; if their pids were reused meanwhile,
        # keepalived would take the new owners for itself ("daemon is already running")
        for what in ("pid", "vrrp.pid"):
            self._path(what).unlink(missing_ok=True)
        self.starts += 1
        self.logs.append(self.log_path)
        with open(self.log_path, "wb") as logf:
            self.proc = self.ns.popen(*self.argv(), stdout=logf, stderr=subprocess.STDOUT)
        wait_for(self._started, timeout=10, interval=0.05,
                 what=f"keepalived on {self.name} to start its VRRP instance")
        return self

    def _started(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"keepalived on {self.name} exited with {self.proc.returncode}:\n{self.log()}")
        return self.state() is not None

    def kill(self) -> None:
        """SIGKILL keepalived and its VRRP child: a crash (the VIPs stay where they are)."""
        if self.proc is not None:
            sigkill_group(self.proc)

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM: keepalived leaves MASTER cleanly (priority 0 advert, VIPs removed)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def restart(self) -> Keepalived:
        if self.running:
            self.stop()
        return self.start()

    # -- observation
    def log(self) -> str:
        """The log of the current (or last) run."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def all_logs(self) -> str:
        return "".join(f"--- {p.name}\n{p.read_text(errors='replace')}"
                       for p in self.logs if p.exists())

    def transitions(self) -> list[str]:
        """The states the instance entered during the current run, from its log.

        keepalived logs ``(NAME) Entering STATE STATE`` on every transition, except the
        first FAULT of a node whose track script starts failing (``init_fail``): there it
        logs only ``VRRP_Script(...) failed`` after ``Startup complete`` (INIT here).
        """
        states: list[str] = []
        for line in self.log().splitlines():
            m = _STATE_RE.search(line)
            if m is not None:
                if m["inst"] == self.instance:
                    states.append(m["state"])
            elif "Startup complete" in line and not states:
                states.append("INIT")
            elif _SCRIPT_FAILED_RE.search(line) and states == ["INIT"]:
                states.append("FAULT")
        return states

    def state(self) -> str | None:
        """The instance's state from the log: INIT (started, no state yet), BACKUP, MASTER,
        FAULT...; None before keepalived is up; "DEAD" once the process is gone."""
        if self.proc is not None and self.proc.poll() is not None:
            return "DEAD"
        seen = self.transitions()
        return seen[-1] if seen else None

    def wait_state(self, state: str, timeout: float = 15) -> None:
        def reached() -> bool:
            now = self.state()
            if now == "DEAD":
                raise AssertionError(f"keepalived on {self.name} died:\n{self.log()}")
            return now == state
        try:
            wait_for(reached, timeout=timeout, interval=0.05,
                     what=f"{self.name} in {state}", ignore=())
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nkeepalived log ({self.name}):\n{self.log()}") \
                from None


def keepalived_pair(lab: Lab, topo: HaTopology, *, advert_int: float = 1.0,
                    router_id: int = 51, unicast: bool = False,
                    notify: dict[str, str] | None = None,
                    track: dict[str, str] | None = None,
                    **kw: Any) -> dict[str, Keepalived]:
    """A ``Keepalived`` for lb1 (priority 150) and lb2 (100), not started yet."""
    kas: dict[str, Keepalived] = {}
    for name, ns in topo.lbs.items():
        peers = [LB_ADDRS[o][0] for o in topo.lbs if o != name] if unicast else None
        kas[name] = Keepalived(
            lab, ns, name, priority=LB_PRIORITY[name], router_id=router_id,
            advert_int=advert_int, unicast_src=LB_ADDRS[name][0] if unicast else None,
            unicast_peers=peers, notify=(notify or {}).get(name),
            track=(track or {}).get(name), **kw)
    return kas


# --------------------------------------------------------------------------- streams


class Streams:
    """``client.py streams`` running in a namespace: JSON events read by a thread."""

    def __init__(self, ns: Netns, host: str, port: int, count: int, *,
                 udp: str | None = None, interval: float = 0.05, chunk: int = 512,
                 udp_interval: float = 0.02, timeout: float = 30.0) -> None:
        argv = [sys.executable, CLIENT_SCRIPT, "streams", host, str(port), "--count",
                str(count), "--interval", str(interval), "--chunk", str(chunk),
                "--timeout", str(timeout), "--udp-interval", str(udp_interval)]
        check_lab_addr(host)
        if udp is not None:
            check_lab_addr(udp.rpartition(":")[0])
            argv += ["--udp", udp]
        self.proc: subprocess.Popen[str] = ns.popen(
            *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": "garbage", "line": line}
            with self._lock:
                self.events.append(event)

    def _last(self, kind: str) -> dict[str, Any] | None:
        with self._lock:
            for event in reversed(self.events):
                if event.get("event") == kind:
                    return event
        return None

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"client.py streams exited with {self.proc.returncode}: "
                                 f"{self.events} {self.stderr()}")

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()

    def wait_ready(self, timeout: float = 15) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            self._check_alive()
            return self._last("ready")
        return wait_for(ready, timeout=timeout, interval=0.05,
                        what="all streams connected and echoing", ignore=())

    def progress(self, timeout: float = 5) -> dict[str, Any]:
        """Ask for (SIGUSR1) and return a fresh progress event."""
        with self._lock:
            before = len(self.events)
        self._check_alive()
        self.proc.send_signal(signal.SIGUSR1)

        def fresh() -> dict[str, Any] | None:
            with self._lock:
                new = [e for e in self.events[before:] if e.get("event") == "progress"]
            return new[-1] if new else None
        return wait_for(fresh, timeout=timeout, interval=0.02, what="a progress event",
                        ignore=())

    def wait_flowing(self, more_rounds: int = 200, timeout: float = 10) -> dict[str, Any]:
        """Wait until the streams completed ``more_rounds`` more echo rounds and none is
        stalled (no open stream without a completed round for a second); the progress."""
        start = int(self.progress()["rounds"])

        def flowing() -> dict[str, Any] | None:
            p = self.progress()
            return p if p["rounds"] >= start + more_rounds and not p["stalled_now"] else None
        return wait_for(flowing, timeout=timeout, interval=0.1, ignore=(),
                        what=f"{more_rounds} more echo rounds and no stalled stream")

    def finish(self, timeout: float = 40) -> dict[str, Any]:
        """Close stdin (the clean end) and return the summary event."""
        end_by_stdin(self.proc, self._reader, timeout)
        summary = self._last("summary")
        if summary is None:
            raise AssertionError(f"client.py streams ended ({self.proc.returncode}) without "
                                 f"a summary: {self.events} {self.stderr()}")
        summary["returncode"] = self.proc.returncode
        return summary
