"""The BGP speaker as the agent runs it: one worker thread that keeps an ExaBGP process
running while there is something to say (global settings and at least one neighbour),
restarts it with a growing delay when it fails, and brings what ExaBGP announces to each
neighbour in line with the rules, the HA states and the configuration.

Everything that changes (rules created with ``bgp``, HA states, neighbours, global
settings) only wakes the worker; the worker alone talks to ExaBGP, one command at a time.
It polls ExaBGP's neighbour table every POLL_S for the session states the API shows.

Routes go only to established sessions. ExaBGP keeps a neighbour's adj-RIB-out across
session flaps and sends it again when the session comes back, but it drops a ``reload``
(without a word) while any peer has routes queued, and a peer that is down keeps them
queued until it is up: so nothing is queued for one that is down, and every reload is
checked against what ExaBGP shows it has loaded, and sent again until it is.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..ha.states import HaStates
from .adverts import (
    Attributes,
    ServiceVips,
    desired_routes,
    host_prefix,
    route_commands,
)
from .exabgp import (
    ExaBgp,
    SpeakerError,
    expected_neighbors,
    loaded_as_expected,
    loaded_neighbors,
    local_address_towards,
    render_config,
)
from .received import KernelRoutes, ReceivedRoutes
from .settings import BgpConfig, BgpSettings, Neighbor, parse_global, parse_neighbor

log = logging.getLogger("loxilbd.bgp")

POLL_S = 1.0
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_S = 60.0  # a run this long resets the restart delay
RELOAD_TIMEOUT_S = 15.0
RELOAD_RETRY_S = 0.5
DEFAULT_HOLD_TIME_S = 90
IDLE = "IDLE"
ESTABLISHED = "ESTABLISHED"


def updown(since: float | None, now: float) -> str:
    """Time in the current state as LoxiLB shows it: ``HH:MM:SS``, ``Nd HH:MM:SS`` past a
    day, ``never`` for a session that never came up."""
    if since is None:
        return "never"
    seconds = max(0, int(now - since))
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


@dataclass
class PeerStatus:
    state: str = IDLE
    since: float | None = None  # wall clock of the last change in or out of ESTABLISHED
    ever_up: bool = False
    local_address: str = ""
    hold_time: int | None = None  # negotiated
    advertised: int = 0
    events: int = 0  # up/down events seen: a poll begun before one must not undo it

    def moved(self, established: bool, now: float, duration: int = 0) -> None:
        was = self.state == ESTABLISHED
        if established and not was:
            self.since, self.ever_up = now - duration, True
        elif was and not established:
            self.since = now


class BgpSpeaker:
    def __init__(self, state_dir: str | Path, ha: HaStates, *,
                 backup_policy: str = "worse", import_routes: bool = False,
                 hold_time: int = DEFAULT_HOLD_TIME_S) -> None:
        self.settings = BgpSettings(state_dir)
        self.ha = ha
        self.backup_policy = backup_policy
        self.hold_time = hold_time
        self.import_routes = import_routes
        self.vips = ServiceVips(on_change=self.wake)
        self.received = ReceivedRoutes(KernelRoutes() if import_routes else None,
                                       own_prefixes=lambda: {host_prefix(v)
                                                             for v in self.vips.vips()})
        self._cond = threading.Condition()
        self._dirty = True
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # the status below
        self._peers: dict[str, PeerStatus] = {}
        self._exa: ExaBgp | None = None
        self.restarts = 0
        self.last_error = ""
        self.state = "stopped"
        self.run_dir = Path(state_dir) / "exabgp"

    # -- life ----------------------------------------------------------------------
    def start(self) -> BgpSpeaker:
        self._thread = threading.Thread(target=self._run, name="bgp-speaker", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.received.clear()

    def wake(self) -> None:
        with self._cond:
            self._dirty = True
            self._cond.notify_all()

    def on_ha_state(self, instance: str, previous: str, entry: dict[str, Any]) -> None:
        """An HA state changed: the routes' attributes may have."""
        self.wake()

    # -- the API -------------------------------------------------------------------
    def set_global(self, body: Any) -> None:
        glob = parse_global(body)
        if self.settings.set_global(glob):
            log.info("BGP global settings: router id %s, AS %d, port %d%s", glob.router_id,
                     glob.local_as, glob.listen_port,
                     ", next hop self" if glob.nexthop_self else "")
            self.wake()

    def global_view(self) -> dict[str, Any] | None:
        glob = self.settings.config.global_config
        if glob is None:
            return None
        with self._lock:
            exa = self._exa
            speaker = {"state": self.state, "pid": exa.pid if exa else None,
                       "restarts": self.restarts, "lastError": self.last_error,
                       "holdTime": self.hold_time, "backupPolicy": self.backup_policy,
                       "importRoutes": self.import_routes}
        return {**glob.api(), "speaker": speaker}

    def add_neighbor(self, body: Any) -> Neighbor:
        neighbor = parse_neighbor(body)
        self.settings.add_neighbor(neighbor)
        log.info("BGP neighbor %s AS %d added", neighbor.address, neighbor.remote_as)
        self.wake()
        return neighbor

    def delete_neighbor(self, address: str, remote_as: int | None) -> None:
        neighbor = self.settings.delete_neighbor(address, remote_as)
        log.info("BGP neighbor %s AS %d deleted", neighbor.address, neighbor.remote_as)
        self.wake()

    def neighbors_view(self) -> list[dict[str, Any]]:
        now = time.time()
        rows = []
        with self._lock:
            for address, n in sorted(self.settings.config.neighbors.items()):
                status = self._peers.get(address) or PeerStatus()
                received, accepted = self.received.counts(address)
                rows.append({
                    **n.api(), "state": status.state,
                    "updowntime": updown(status.since if status.ever_up else None, now),
                    "localAddress": status.local_address, "holdTime": status.hold_time,
                    "advertisedPrefixes": status.advertised if status.state == ESTABLISHED
                    else 0,
                    "receivedPrefixes": received, "acceptedPrefixes": accepted,
                })
        return rows

    # -- ExaBGP's events (its reader thread) -----------------------------------------
    def _on_event(self, message: dict[str, Any]) -> None:
        neighbor = message.get("neighbor") or {}
        peer = str((neighbor.get("address") or {}).get("peer", ""))
        kind = message.get("type")
        if kind == "state":
            state = neighbor.get("state")
            if state in ("up", "down"):
                with self._lock:
                    status = self._peers.setdefault(peer, PeerStatus())
                    status.moved(state == "up", time.time())
                    status.state = ESTABLISHED if state == "up" else IDLE
                    status.events += 1
                if state == "down":
                    log.info("BGP session with %s down: %s", peer,
                             neighbor.get("reason", "no reason given"))
                    self.received.peer_down(peer)
                else:
                    log.info("BGP session with %s established", peer)
                    self.wake()  # its routes can go now
        elif kind == "update":
            update = (neighbor.get("message") or {}).get("update")
            if isinstance(update, dict):
                self.received.update(peer, update)

    # -- the worker ------------------------------------------------------------------
    def _set(self, state: str, error: str | None = None) -> None:
        with self._lock:
            self.state = state
            if error is not None:
                self.last_error = error

    def _wait(self, timeout: float | None) -> None:
        with self._cond:
            if not self._dirty and not self._stopping:
                self._cond.wait(timeout)
            self._dirty = False

    def _run(self) -> None:
        delay = BACKOFF_MIN_S
        while not self._stopping:
            config = self.settings.config
            if not config.complete:
                self._set("stopped")
                self._wait(None)
                continue
            started = time.monotonic()
            try:
                self._session(config)
                continue  # a planned restart (listen port) or nothing left to say
            except SpeakerError as exc:
                self.restarts += 1
                log.warning("BGP speaker failed (%s); restarting in %.0f s", exc, delay)
                self._set("restarting", str(exc).splitlines()[0])
            except Exception as exc:  # a bug or the system (files, sockets): never give up
                self.restarts += 1
                log.exception("BGP speaker failed; restarting in %.0f s", delay)
                self._set("restarting", f"{type(exc).__name__}: {exc}")
            if time.monotonic() - started > STABLE_S:
                delay = BACKOFF_MIN_S
            with self._cond:
                if not self._stopping:
                    self._cond.wait(delay)
            delay = min(2 * delay, BACKOFF_MAX_S)
        self._set("stopped")

    def _session(self, config: BgpConfig) -> None:
        """One run of ExaBGP, until it fails, the agent stops, or the configuration needs
        a new run (a new listen port) or none (no neighbours left)."""
        exa = ExaBgp(self.run_dir, on_event=self._on_event)
        self._set("starting")
        with self._lock:
            self._exa = exa
        glob = config.global_config
        assert glob is not None
        sent: dict[str, dict[str, Attributes]] = {}
        local = self._local_addresses(config)
        try:
            exa.start(render_config(config, local, exa.bridge_argv, self.hold_time),
                      glob.listen_port)
            log.info("BGP speaker started (ExaBGP pid %d): %d neighbor(s)", exa.pid,
                     len(config.neighbors))
            self._await_loaded(exa, config, local, reload_text=None)
            self._set("running", "")
            running = config
            sent = {address: {} for address in config.neighbors}
            last_poll = 0.0
            own = self.vips.vips()
            while not self._stopping:
                config = self.settings.config
                if not config.complete or (config.global_config is not None
                                           and config.global_config.listen_port
                                           != glob.listen_port):
                    return
                now_local = self._local_addresses(config)
                if config != running or now_local != local:
                    self._reconfigure(exa, running, local, config, now_local, sent)
                    running, local = config, now_local
                self._announce(exa, config, local, sent)
                now_own = self.vips.vips()
                if now_own != own:  # a VIP a peer announces is ours now, or no longer
                    self.received.reselect({host_prefix(v) for v in now_own ^ own})
                    own = now_own
                if time.monotonic() - last_poll >= POLL_S:
                    self._poll(exa, config)
                    self.received.retry()
                    last_poll = time.monotonic()
                self._wait(POLL_S)
        finally:
            exa.stop()
            with self._lock:
                self._exa = None
                self._peers.clear()
            self.received.clear()

    def _await_loaded(self, exa: ExaBgp, config: BgpConfig, local: dict[str, str],
                      reload_text: str | None) -> None:
        """Wait until ExaBGP has loaded exactly `config`'s neighbours (routes for one it
        does not have would be refused; one it still has would keep its session). A reload
        ExaBGP dropped is sent again (`reload_text`: the configuration it is for)."""
        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        retry = time.monotonic() + RELOAD_RETRY_S
        want = expected_neighbors(config, local)
        while True:
            have = loaded_neighbors(exa.neighbors())
            if loaded_as_expected(have, want):
                return
            now = time.monotonic()
            if now > deadline:
                raise SpeakerError(f"ExaBGP did not load its neighbors within "
                                   f"{RELOAD_TIMEOUT_S:.0f} s: it shows {have}, the "
                                   f"configuration says {want}")
            if reload_text is not None and now > retry:
                exa.reload(reload_text)
                retry = now + RELOAD_RETRY_S
            time.sleep(0.05)

    @staticmethod
    def _local_addresses(config: BgpConfig) -> dict[str, str]:
        found = {a: local_address_towards(a) for a in config.neighbors}
        return {a: local for a, local in found.items() if local}

    def _reconfigure(self, exa: ExaBgp, running: BgpConfig, running_local: dict[str, str],
                     config: BgpConfig, local: dict[str, str],
                     sent: dict[str, dict[str, Attributes]]) -> None:
        """Reload ExaBGP on `config`. Every neighbour that is new or changed starts with
        nothing sent. ExaBGP knows a peer by its address, ASes, router id and local address
        and keeps its adj-RIB-out while these stay; it drops it when the peer is removed. So
        a neighbour changed in what is not part of that identity (its port, multi-hop) is
        first reloaded away, then back: it reconnects with an empty adj-RIB-out."""
        old = expected_neighbors(running, running_local)
        new = expected_neighbors(config, local)
        changed = {a for a, n in config.neighbors.items()
                   if a not in running.neighbors or running.neighbors[a] != n
                   or old.get(a) != new.get(a)}
        same_identity = {a for a in changed if a in old and old[a] == new[a]}
        if same_identity:
            without = BgpConfig(config.global_config,
                                {a: n for a, n in config.neighbors.items()
                                 if a not in same_identity})
            text = render_config(without, local, exa.bridge_argv, self.hold_time)
            exa.reload(text)
            self._await_loaded(exa, without, local, reload_text=text)
        text = render_config(config, local, exa.bridge_argv, self.hold_time)
        exa.reload(text)
        self._await_loaded(exa, config, local, reload_text=text)
        for address in list(sent):
            if address not in config.neighbors or address in changed:
                del sent[address]
        log.info("BGP speaker reloaded: %d neighbor(s)", len(config.neighbors))

    def _announce(self, exa: ExaBgp, config: BgpConfig, local: dict[str, str],
                  sent: dict[str, dict[str, Attributes]]) -> None:
        """Bring each established neighbour's routes in line (the others get theirs when
        their session comes up)."""
        glob = config.global_config
        assert glob is not None
        pairs = self.vips.pairs()
        instances = self.ha.entries()
        for address, neighbor in config.neighbors.items():
            if address not in local or not self._established(address):
                continue
            out = sent.setdefault(address, {})
            want = desired_routes(pairs, instances, glob, neighbor, local[address],
                                  self.backup_policy)
            for command, change in route_commands(address, out, want):
                if not self._established(address):  # it went down: nothing to queue
                    break
                exa.command(command)
                for prefix, attrs in change.items():
                    if attrs is None:
                        out.pop(prefix, None)
                    else:
                        out[prefix] = attrs
            with self._lock:
                self._peers.setdefault(address, PeerStatus()).advertised = len(out)

    def _established(self, address: str) -> bool:
        with self._lock:
            status = self._peers.get(address)
            return status is not None and status.state == ESTABLISHED

    def _poll(self, exa: ExaBgp, config: BgpConfig) -> None:
        with self._lock:
            seen = {a: st.events for a, st in self._peers.items()}
        shown = {str((p.get("peer") or {}).get("address", "")): p for p in exa.neighbors()}
        now = time.time()
        with self._lock:
            for address in config.neighbors:
                entry = shown.get(address)
                status = self._peers.setdefault(address, PeerStatus())
                if entry is None or status.events != seen.get(address, 0):
                    continue  # an up/down event came in meanwhile: it is newer
                fsm = str(entry.get("fsm", IDLE)).upper()
                status.moved(fsm == ESTABLISHED, now, int(entry.get("duration") or 0))
                status.state = fsm
                local = entry.get("local") or {}
                peer = entry.get("peer") or {}
                local_address = str(local.get("address") or "")
                if local_address not in ("", "None"):
                    status.local_address = local_address
                elif fsm != ESTABLISHED:  # a reload shows none for a session that is up
                    status.local_address = ""
                holds = [h for h in (local.get("hold"), peer.get("hold")) if isinstance(h, int)]
                status.hold_time = min(holds) if fsm == ESTABLISHED and len(holds) == 2 \
                    else None
