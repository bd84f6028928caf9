"""An LB node in the lab: the real `loxilbd` process in a namespace, and `loxicmd` beside it."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import Lab, Netns, wait_for

from loxicmd.agent.dataplane.pins import PIN_ROOT, unpin

_ports = itertools.count(21000 + (os.getpid() % 500) * 20)


@dataclass
class LbNode:
    lab: Lab
    ns: Netns
    interfaces: list[str]
    port: int = field(default_factory=lambda: next(_ports))
    state_dir: Path | None = None
    pin_dir: str = field(default_factory=lambda: f"/sys/fs/bpf/loxilb-test-{uuid.uuid4().hex[:8]}")
    proc: subprocess.Popen[Any] | None = None
    starts: int = 0
    node: str | None = None  # set: started with --node (maps under /sys/fs/bpf/loxilb/NODE)
    extra_args: tuple[str, ...] = ()
    ct_entries: int | None = 16384  # None: no --ct-entries

    def __post_init__(self) -> None:
        if self.state_dir is None:
            self.state_dir = self.lab.workdir / f"state-{self.ns.name}"
        if self.node is not None:
            self.pin_dir = f"{PIN_ROOT}/{self.node}"
        self.lab.register_cleanup(lambda: unpin(self.pin_dir, parent=PIN_ROOT))

    @property
    def log_path(self) -> Path:
        return self.lab.workdir / f"loxilbd-{self.ns.name}-{self.starts}.log"

    def argv(self) -> list[str]:
        """The agent's command line."""
        return ["loxilbd", "--port", str(self.port), "--state-dir", str(self.state_dir),
                *self.pin_args, "--interfaces", ",".join(self.interfaces),
                *(("--ct-entries", str(self.ct_entries)) if self.ct_entries else ()),
                "--log-level", "debug", *self.extra_args]

    def start(self) -> LbNode:
        self.starts += 1
        self.proc = self.ns.popen(
            *self.argv(),
            stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"),  # noqa: SIM115
        )
        wait_for(self._ready, timeout=20, what=f"loxilbd ready on port {self.port}")
        return self

    @property
    def pin_args(self) -> tuple[str, ...]:
        """How loxilbd is told where this node's maps are."""
        return ("--node", self.node) if self.node is not None else ("--bpffs-dir", self.pin_dir)

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"loxilbd exited with {self.proc.returncode}:\n{self.log()}")
        return self.api("GET", "/version")[0] == 200

    def stop(self) -> int:
        """SIGTERM, as an operator's service manager would; returns the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=15)
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is cleaned up (the datapath stays attached)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def loxicmd(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run the real CLI inside the node's namespace against this agent."""
        return self.ns.run("loxicmd", "-p", str(self.port), *args, check=check, timeout=30)

    def api(self, method: str, path: str, body: str | dict[str, Any] | None = None
            ) -> tuple[int, Any]:
        """A raw API call with curl (for what the CLI would refuse to send)."""
        argv = ["curl", "-s", "--noproxy", "*", "-X", method, "-w", "\n%{http_code}",
                f"http://127.0.0.1:{self.port}/netlox/v1{path}"]
        data = None
        if body is not None:
            data = body if isinstance(body, str) else json.dumps(body)
            argv[1:1] = ["-H", "Content-Type: application/json", "--data-binary", "@-"]
        cp = self.ns.run(*argv, check=False, input=data, timeout=20)
        if cp.returncode != 0:
            return 0, cp.stderr
        text, _, status = cp.stdout.rpartition("\n")
        try:
            return int(status), json.loads(text) if text else None
        except json.JSONDecodeError:
            return int(status), text

    def bulk_post(self, path: str, bodies: list[dict[str, Any]]) -> list[int]:
        """POST many bodies over one keep-alive connection from inside the
        namespace (hundreds of curl processes would dominate a test's time)."""
        script = (
            "import http.client, json, sys\n"
            "conn = http.client.HTTPConnection('127.0.0.1', int(sys.argv[1]), timeout=30)\n"
            "codes = []\n"
            "for line in sys.stdin:\n"
            "    conn.request('POST', sys.argv[2], line, {'Content-Type': 'application/json'})\n"
            "    r = conn.getresponse(); r.read(); codes.append(r.status)\n"
            "print(json.dumps(codes))\n"
        )
        cp = self.ns.run(sys.executable, "-c", script, str(self.port), f"/netlox/v1{path}",
                         input="".join(json.dumps(b) + "\n" for b in bodies), timeout=600)
        return json.loads(cp.stdout)

    def rules(self) -> list[dict[str, Any]]:
        status, body = self.api("GET", "/config/loadbalancer/all")
        assert status == 200, body
        return body["lbAttr"]


def pipe_table(text: str) -> list[dict[str, str]]:
    """Parse loxicmd's pipe table (what scripts cut on '|') into dicts by header."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    if not lines:
        return []
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.append(dict(zip(header, cells, strict=True)))
    return rows
