"""One run of ExaBGP: its configuration, its process, and the conversation with it.

ExaBGP reads its neighbours from a configuration file (changed by rewriting it and sending
``reload``: sessions of unchanged neighbours stay up) and takes routes as text commands on
its process API. It answers every command with ``done`` or ``error``, after any output the
command has; answers of different commands can come out of order (``show`` runs in the
background), so a command is sent only once the previous one is answered. Lines that are
JSON objects with a ``type`` are events (a neighbour went up or down, an UPDATE came in),
handed to ``on_event`` as they arrive.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .settings import BgpConfig, Neighbor

log = logging.getLogger("loxilbd.bgp")
exa_log = logging.getLogger("loxilbd.bgp.exabgp")

PROCESS_NAME = "loxilbd"
CONNECT_TIMEOUT_S = 20.0
COMMAND_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
LOG_TAIL_LINES = 30
PR_SET_PDEATHSIG = 1

# ExaBGP's environment (its settings are environment variables): stay in the foreground
# as root (it would drop to `nobody`, and so would the bridge), answer every command,
# stop when the bridge stops (the agent is gone or has given up on this run), no CLI pipe.
ENVIRONMENT = {
    "exabgp_daemon_daemonize": "false",
    "exabgp_daemon_user": "root",
    "exabgp_daemon_drop": "false",
    "exabgp_api_ack": "true",
    "exabgp_api_respawn": "false",
    "exabgp_api_terminate": "true",
    "exabgp_api_cli": "false",
    "exabgp_api_encoder": "json",
    "exabgp_log_destination": "stdout",
    "exabgp_log_short": "true",
}


class SpeakerError(RuntimeError):
    """ExaBGP did not start, stopped, or stopped answering: this run is over."""


class CommandRefused(SpeakerError):
    """ExaBGP answered ``error`` to a command."""


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the child may only call it
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes


def _die_with_parent() -> None:
    """In the child before exec: ExaBGP gets SIGTERM (and ends its sessions with a
    NOTIFICATION) when the agent's thread that started it dies, however it dies."""
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _neighbor_block(n: Neighbor, config: BgpConfig, local_address: str | None,
                    hold_time: int) -> str:
    glob = config.global_config
    assert glob is not None
    ibgp = n.remote_as == glob.local_as
    lines = [
        f"neighbor {n.address} {{",
        f"  router-id {glob.router_id};",
        *([f"  local-address {local_address};"] if local_address else []),
        f"  local-as {glob.local_as};",
        f"  peer-as {n.remote_as};",
        f"  hold-time {hold_time};",
    ]
    if n.remote_port != 179:
        lines.append(f"  connect {n.remote_port};")
    if not ibgp:
        # eBGP is one hop unless told otherwise (the peer is on a shared link)
        lines.append(f"  outgoing-ttl {255 if n.multihop else 1};")
    family = "ipv6" if ":" in n.address else "ipv4"
    lines += [
        f"  family {{ {family} unicast; }}",
        "  capability { route-refresh; }",
        f"  api {{ processes [ {PROCESS_NAME} ]; neighbor-changes; "
        "receive { parsed; update; } }",
        "}",
    ]
    return "\n".join(lines)


def render_config(config: BgpConfig, local_addresses: dict[str, str], bridge_argv: list[str],
                  hold_time: int) -> str:
    """ExaBGP's configuration for `config`: the API process, then one block per neighbour,
    with this node's address towards it when it has a route there (ExaBGP's own discovery
    of it is lost on every reload, and with it what ``next-hop self`` means)."""
    blocks = [
        f"process {PROCESS_NAME} {{\n  run {' '.join(bridge_argv)};\n  encoder json;\n}}",
        *(_neighbor_block(n, config, local_addresses.get(address), hold_time)
          for address, n in sorted(config.neighbors.items())),
    ]
    return "\n\n".join(blocks) + "\n"


def local_address_towards(peer: str) -> str | None:
    """This node's source address towards `peer` as its routing table chooses it (a UDP
    socket's connect sends nothing), or None without a route."""
    family = socket.AF_INET6 if ":" in peer else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((peer, 179))
            return str(probe.getsockname()[0])
    except OSError:
        return None


Identity = tuple[int, int, str, str]  # peer AS, local AS, router id, local address


def loaded_neighbors(shown: list[dict[str, Any]]) -> dict[str, Identity]:
    """What ExaBGP has loaded, from ``show neighbor json``: by peer address, its AS, the
    local AS, the router id and the local address ("" when it discovers it)."""
    out = {}
    for entry in shown:
        local, peer = entry.get("local") or {}, entry.get("peer") or {}
        address = str(local.get("address") or "")
        out[str(peer.get("address", ""))] = (
            int(peer.get("as") or 0), int(local.get("as") or 0), str(local.get("id", "")),
            "" if address == "None" else address)
    return out


def expected_neighbors(config: BgpConfig, local_addresses: dict[str, str]
                       ) -> dict[str, Identity]:
    """What ExaBGP should have loaded for `config` (as :func:`loaded_neighbors` reads it)."""
    glob = config.global_config
    if glob is None:
        return {}
    return {a: (n.remote_as, glob.local_as, glob.router_id, local_addresses.get(a, ""))
            for a, n in config.neighbors.items()}


def loaded_as_expected(have: dict[str, Identity], want: dict[str, Identity]) -> bool:
    """The same peers with the same identities; a local address left to ExaBGP ("") is
    whatever it found."""
    if have.keys() != want.keys():
        return False
    return all(have[a][:3] == w[:3] and (not w[3] or have[a][3] == w[3])
               for a, w in want.items())


class ExaBgp:
    """An ExaBGP process and the agent's end of its process API."""

    def __init__(self, run_dir: Path, on_event: Callable[[dict[str, Any]], None]) -> None:
        """`run_dir` (in the agent's state directory, so never shared with another agent)
        holds the configuration and the API socket; it is emptied first (what a killed
        agent's run left)."""
        self.on_event = on_event
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(mode=0o700, parents=True)
        self.dir = run_dir
        self.config_path = self.dir / "exabgp.conf"
        self.socket_path = self.dir / "api.sock"
        self._socket_dir: str | None = None
        if len(str(self.socket_path)) > MAX_SOCKET_PATH:  # a deep state directory
            self._socket_dir = tempfile.mkdtemp(prefix="loxilbd-bgp-")  # 0700
            self.socket_path = Path(self._socket_dir) / "api.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self._conn: socket.socket | None = None
        self._answers: queue.Queue[str | None] = queue.Queue()
        self._tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self._threads: list[threading.Thread] = []
        self._stopping = False

    @property
    def bridge_argv(self) -> list[str]:
        return [sys.executable, "-m", "loxicmd.agent.bgp.bridge", str(self.socket_path)]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def log_tail(self) -> str:
        return "\n".join(self._tail)

    def _write_config(self, text: str) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def start(self, config_text: str, listen_port: int) -> None:
        """Start ExaBGP on `config_text` and wait for its API process to connect."""
        self._write_config(config_text)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(str(self.socket_path))
            server.listen(1)
            server.settimeout(CONNECT_TIMEOUT_S)
            env = {**os.environ, **ENVIRONMENT,
                   "exabgp_tcp_bind": "0.0.0.0", "exabgp_tcp_port": str(listen_port)}
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "exabgp", str(self.config_path)], env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent, cwd=self.dir)
            self._spawn(self._read_log, "exabgp-log")
            try:
                self._conn, _ = server.accept()
            except OSError as exc:
                raise SpeakerError(f"ExaBGP's API process did not connect within "
                                   f"{CONNECT_TIMEOUT_S:.0f} s ({exc}); ExaBGP said:\n"
                                   f"{self.log_tail()}") from None
        finally:
            server.close()
        self._conn.settimeout(None)
        self._spawn(self._read_api, "exabgp-api")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self._tail.append(line)
            exa_log.debug("%s", line)

    def _read_api(self) -> None:
        assert self._conn is not None
        with contextlib.suppress(OSError), self._conn.makefile("rb") as lines:
            for raw in lines:
                line = raw.decode(errors="replace").strip()
                if line.startswith("{"):
                    try:
                        message = json.loads(line)
                    except json.JSONDecodeError:
                        message = None
                    if isinstance(message, dict) and "type" in message:
                        try:
                            self.on_event(message)
                        except Exception:  # an event we could not read must not end the run
                            log.exception("could not handle ExaBGP's event %s", line[:200])
                        continue
                self._answers.put(line)
        self._answers.put(None)  # the end of the conversation

    def command(self, line: str, timeout: float = COMMAND_TIMEOUT_S) -> list[str]:
        """Send one command and wait for its answer; its output lines are returned."""
        if self._conn is None:
            raise SpeakerError("ExaBGP is not running")
        try:
            self._conn.sendall(line.encode() + b"\n")
        except OSError as exc:
            raise SpeakerError(f"ExaBGP's API closed ({exc})") from None
        output: list[str] = []
        while True:
            try:
                answer = self._answers.get(timeout=timeout)
            except queue.Empty:
                raise SpeakerError(f"ExaBGP did not answer {line[:80]!r} within "
                                   f"{timeout:.0f} s") from None
            if answer is None:
                self._answers.put(None)
                raise SpeakerError(f"ExaBGP stopped (exit status {self.exit_status()}); "
                                   f"it said:\n{self.log_tail()}")
            if answer == "done":
                return output
            if answer == "error":
                raise CommandRefused(f"ExaBGP refused {line[:200]!r}"
                                     + (f": {' '.join(output)}" if output else ""))
            output.append(answer)

    def reload(self, config_text: str) -> None:
        """Take a new configuration: new neighbours start, removed ones stop, changed ones
        reconnect; the others keep their sessions and their routes."""
        self._write_config(config_text)
        self.command("reload")

    def neighbors(self) -> list[dict[str, Any]]:
        """ExaBGP's view of each neighbour (``show neighbor json``)."""
        output = self.command("show neighbor json")
        try:
            shown = json.loads("".join(output)) if output else []
        except json.JSONDecodeError:
            raise SpeakerError(f"ExaBGP's neighbour list is not JSON: {output[:1]}") from None
        return shown if isinstance(shown, list) else []

    def exit_status(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def stop(self) -> None:
        """End the run: ExaBGP ends its sessions with a NOTIFICATION (SIGTERM), or is
        killed when it does not within STOP_TIMEOUT_S."""
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.shutdown(socket.SHUT_RDWR)
            self._conn.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("ExaBGP (pid %d) did not stop within %.0f s: killed",
                            self.proc.pid, STOP_TIMEOUT_S)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=STOP_TIMEOUT_S)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
