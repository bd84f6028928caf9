"""BGP peers for the lab: BIRD 2 and GoBGP, each run for real in a namespace.

``Bird`` runs ``bird -f`` with a configuration made from its neighbours and reads its
state with ``birdc`` (its control socket is in the lab's workdir). Its kernel protocol
exports the BGP routes it selects into its namespace's routing table, so that a client
there sends its traffic where BGP says. It announces ``static_routes`` to its peers.

``GoBgp`` runs ``gobgpd`` with a TOML configuration and reads its RIB and neighbours with
``gobgp -j`` (its gRPC API listens on the namespace's loopback).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import Lab, Netns, wait_for

BIRD, BIRDC = "/usr/sbin/bird", "/usr/sbin/birdc"
GOBGPD, GOBGP = "/usr/bin/gobgpd", "/usr/bin/gobgp"


@dataclass(frozen=True)
class Peer:
    """A neighbour of the lab's speaker: an LB node's agent."""

    name: str
    address: str
    asn: int


@dataclass
class Bird:
    lab: Lab
    ns: Netns
    router_id: str
    asn: int
    peers: list[Peer]
    static_routes: list[str] = field(default_factory=list)  # "prefix via address"
    hold_time: int = 6
    proc: subprocess.Popen[Any] | None = None

    def _path(self, what: str) -> Path:
        return self.lab.workdir / f"bird-{self.ns.name}.{what}"

    @property
    def socket(self) -> str:
        return str(self._path("ctl"))

    def config(self) -> str:
        statics = "".join(f"  route {r};\n" for r in self.static_routes)
        text = (f"router id {self.router_id};\nprotocol device {{ scan time 1; }}\n"
                "protocol kernel { ipv4 { import none; export where source = RTS_BGP; }; }\n"
                f"protocol static announced {{\n  ipv4;\n{statics}}}\n")
        for p in self.peers:
            text += (f"protocol bgp {p.name} {{\n  local as {self.asn};\n"
                     f"  neighbor {p.address} as {p.asn};\n"
                     f"  hold time {self.hold_time}; keepalive time {max(1, self.hold_time // 3)};"
                     "\n  connect retry time 1; error wait time 1, 2;\n"
                     "  ipv4 { import all; export where proto = \"announced\"; };\n}\n")
        return text

    def start(self) -> Bird:
        self._path("conf").write_text(self.config())
        self.proc = self.lab.track(self.ns.popen(
            BIRD, "-f", "-c", str(self._path("conf")), "-s", self.socket,
            stdout=subprocess.DEVNULL, stderr=open(self._path("log"), "w")))  # noqa: SIM115
        wait_for(lambda: self.birdc("show status").returncode == 0, timeout=10,
                 what="bird's control socket")
        return self

    def birdc(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([BIRDC, "-s", self.socket, *command], capture_output=True,
                              text=True, check=False, timeout=10)

    def protocol(self, name: str) -> dict[str, str]:
        """`show protocols NAME`: its state, since when, and BGP state (Established, ...)."""
        out = self.birdc("show", "protocols", name).stdout
        for line in out.splitlines():
            cols = line.split()
            if cols and cols[0] == name:
                return {"state": cols[3], "since": cols[4],
                        "info": cols[5] if len(cols) > 5 else ""}
        return {}

    def established(self, name: str) -> bool:
        return self.protocol(name).get("info") == "Established"

    def routes(self, prefix: str) -> list[dict[str, Any]]:
        """Every path BIRD has for `prefix`: `from` (the peer protocol), `primary`, and
        the BGP attributes (next_hop, med, local_pref, as_path)."""
        out = self.birdc("show", "route", "for", prefix.split("/")[0], "all").stdout
        paths: list[dict[str, Any]] = []
        for line in out.splitlines():
            head = re.match(r"^(\S+/\d+)?\s+unicast \[(\S+) [^\]]*\] (\*)?", line)
            if head:
                if head.group(1) and head.group(1) != prefix:
                    paths.append({"skip": True})
                    continue
                paths.append({"from": head.group(2), "primary": bool(head.group(3))})
                continue
            attr = re.match(r"^\s+BGP\.(\w+): (.*)$", line)
            if attr and paths:
                paths[-1][attr.group(1)] = attr.group(2).strip()
        return [p for p in paths if not p.get("skip")]

    def best(self, prefix: str) -> dict[str, Any] | None:
        return next((p for p in self.routes(prefix) if p.get("primary")), None)

    def pause(self) -> None:
        """SIGSTOP: the process holds its sessions open and says nothing (a hung peer)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@dataclass
class GoBgp:
    lab: Lab
    ns: Netns
    router_id: str
    asn: int
    peers: list[Peer]
    api_port: int = 50051
    proc: subprocess.Popen[Any] | None = None

    def _path(self, what: str) -> Path:
        return self.lab.workdir / f"gobgpd-{self.ns.name}.{what}"

    def config(self) -> str:
        text = (f'[global.config]\n  as = {self.asn}\n  router-id = "{self.router_id}"\n'
                "  port = 179\n")
        for p in self.peers:
            text += (f'\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = '
                     f'"{p.address}"\n    peer-as = {p.asn}\n  [neighbors.timers.config]\n'
                     "    connect-retry = 1\n    hold-time = 9\n    keepalive-interval = 3\n")
        return text

    def start(self) -> GoBgp:
        self._path("toml").write_text(self.config())
        self.proc = self.lab.track(self.ns.popen(
            GOBGPD, "-f", str(self._path("toml")), "-t", "toml", "-l", "warn", "-p",
            "--api-hosts", f"127.0.0.1:{self.api_port}", "--pprof-disable",
            stdout=subprocess.DEVNULL, stderr=open(self._path("log"), "w")))  # noqa: SIM115
        wait_for(lambda: self.gobgp("global").returncode == 0, timeout=10,
                 what="gobgpd's API")
        return self

    def gobgp(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.ns.run(GOBGP, "-p", str(self.api_port), *args, check=False, timeout=10)

    def _json(self, *args: str) -> Any:
        cp = self.gobgp("-j", *args)
        return json.loads(cp.stdout) if cp.returncode == 0 and cp.stdout.strip() else None

    def neighbor(self, address: str) -> dict[str, Any]:
        """`gobgp neighbor ADDRESS`: state (session_state 6 is established), uptime, flops."""
        return self._json("neighbor", address) or {}

    def established(self, address: str) -> bool:
        state = self.neighbor(address).get("state", {})
        return state.get("session_state") in (6, "established", "ESTABLISHED")

    def paths(self, prefix: str) -> list[dict[str, Any]]:
        """Every path gobgpd has for `prefix`: `best`, `neighbor`, and its attributes by
        type (nexthop, med, local_pref)."""
        rib = self._json("global", "rib", prefix) or {}
        out = []
        for path in rib.get(prefix, []):
            entry: dict[str, Any] = {"best": bool(path.get("best")),
                                     "neighbor": path.get("neighbor-ip", path.get("source-id"))}
            for attr in path.get("attrs", []):
                if attr.get("type") == 3:
                    entry["next_hop"] = attr.get("nexthop")
                elif attr.get("type") == 4:
                    entry["med"] = attr.get("metric")
                elif attr.get("type") == 5:
                    entry["local_pref"] = attr.get("value")
            out.append(entry)
        return out

    def best(self, prefix: str) -> dict[str, Any] | None:
        return next((p for p in self.paths(prefix) if p["best"]), None)
