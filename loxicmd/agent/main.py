"""loxilbd: the load-balancer agent, a foreground daemon run in the LB's network namespace."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from loxicmd.names import DEFAULT_API_HOST, DEFAULT_API_PORT

from .dataplane.pins import PIN_ROOT, ensure_bpffs

if TYPE_CHECKING:
    from .rest.app import AgentParts
    from .store.journal import StateStore

log = logging.getLogger("loxilbd")

ROUTE_RECHECK_S = 5.0


def _interfaces(value: str) -> list[str] | None:
    """None means every interface but lo."""
    if value == "all":
        return None
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise click.BadParameter("give interface names separated by commas, or 'all'")
    for name in names:
        try:
            socket.if_nametoindex(name)
        except OSError:
            raise click.BadParameter(f"interface {name!r} does not exist in this network "
                                     "namespace") from None
    return names


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default=DEFAULT_API_HOST, show_default=True,
              help="Address the REST API listens on (beyond loopback only with --token-file).")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_API_PORT,
              show_default=True, help="REST API port.")
@click.option("--state-dir", type=click.Path(file_okay=False), default="/var/lib/loxilbd",
              show_default=True, help="Where rules are persisted (one agent per directory).")
@click.option("--interfaces", default="all", show_default=True,
              help="Interfaces to attach the datapath to: a,b,... or all (every one but lo).")
@click.option("--node", default=socket.gethostname(), show_default="hostname",
              help="Node name; the maps are pinned under /sys/fs/bpf/loxilb/NODE.")
@click.option("--bpffs-dir", type=click.Path(file_okay=False), default=None,
              help="Pin directory for the maps (overrides --node). One agent per node: a "
                   "second one on the same maps refuses to start.")
@click.option("--ct-entries", type=click.IntRange(1024, 16 * 1024 * 1024), default=None,
              help="Conntrack table size (entries) when the maps are created.")
@click.option("--token", envvar="LOXILBD_TOKEN", default=None,
              help="Require this token in the Authorization header (env LOXILBD_TOKEN; "
                   "on loopback only: elsewhere use --token-file).")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="Require the token in this file (mode 0600); created with a new random "
                   "token when it does not exist. Needed with --host other than loopback.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Serve the API over HTTPS with this certificate (PEM; with --tls-key).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The certificate's private key (PEM, mode 0600).")
@click.option("--detach-on-exit", is_flag=True,
              help="On SIGTERM also detach the datapath (default: traffic keeps flowing "
                   "on the pinned maps until the next agent takes over).")
@click.option("--cleanup", is_flag=True,
              help="Detach the datapath from every interface, remove the pinned maps, exit "
                   "(refused while an agent runs on them).")
@click.option("--keep-sysctls", is_flag=True,
              help="Leave net.ipv4.ip_forward as it is (default: set it to 1 when it is 0, "
                   "as forwarding needs it; logged).")
@click.option("--audit-max-mb", type=click.IntRange(1, 1 << 20), default=64, show_default=True,
              help="Rotate the connection audit log (STATE_DIR/audit.log) at this size.")
@click.option("--audit-backups", type=click.IntRange(0, 1000), default=5, show_default=True,
              help="Rotated audit logs kept (audit.log.1 ... audit.log.N).")
@click.option("--cluster", "cluster", default=None, metavar="PEER[:PORT][,...]",
              help="Sync conntrack with these LB nodes (their --cluster-listen; port "
                   "22222 when not given), so that a failover breaks no flow.")
@click.option("--cluster-key", type=click.Path(dir_okay=False), default=None,
              help="File with the cluster's shared key (mode 600; every node the same): "
                   "authenticates the sync peers. Needed with --cluster.")
@click.option("--cluster-listen", default="0.0.0.0:22222", show_default=True,
              metavar="ADDR[:PORT]", help="Where peers' sync connections are accepted.")
@click.option("--bgp-backup", type=click.Choice(["worse", "withdraw"]), default="worse",
              show_default=True,
              help="What a BACKUP node does with its VIPs' routes: announce them as the "
                   "worse path (MED 20, local preference 100) or withdraw them.")
@click.option("--bgp-import", is_flag=True,
              help="Install the routes BGP peers announce in this node's routing table "
                   "(the best path of each prefix; ip route proto 196).")
@click.option("--bgp-hold-time", type=click.IntRange(3, 65535), default=90, show_default=True,
              help="BGP hold time offered to peers (s); a session lasts the lower of both.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
def cli(host: str, port: int, state_dir: str, interfaces: str, node: str,
        bpffs_dir: str | None, ct_entries: int | None, token: str | None,
        token_file: str | None, tls_cert: str | None, tls_key: str | None,
        detach_on_exit: bool, cleanup: bool, keep_sysctls: bool, audit_max_mb: int,
        audit_backups: int, cluster: str | None, cluster_key: str | None,
        cluster_listen: str, bgp_backup: str, bgp_import: bool, bgp_hold_time: int,
        log_level: str) -> None:
    """The load-balancer agent: loads the eBPF datapath, serves the REST API."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pin_dir = bpffs_dir or f"{PIN_ROOT}/{node}"
    try:
        ensure_bpffs()
    except OSError as exc:
        raise click.ClickException(str(exc)) from None
    if cleanup:
        _cleanup(pin_dir, node, bpffs_dir is None)
        return
    token = _api_token(host, token, token_file)
    tls = _tls_files(tls_cert, tls_key)
    ifnames = _interfaces(interfaces)
    sync = _cluster_settings(cluster, cluster_key, cluster_listen, node)

    import uvicorn

    from .dataplane.pins import NodeBusy, NodeLock
    from .rest.app import create_app
    from .store.journal import StateDirBusy, StateStore

    try:
        store = StateStore(state_dir)
    except StateDirBusy as exc:
        raise click.ClickException(str(exc)) from None
    with contextlib.ExitStack() as stack:
        stack.callback(store.close)
        try:  # before anything reads or writes the pinned maps
            stack.callback(NodeLock(pin_dir, node).close)
        except NodeBusy as exc:
            raise click.ClickException(str(exc)) from None
        from .dataplane.dataplane import interfaces_in_namespace

        # forwarding first: the datapath forwards what it translates from its first packet
        ifnames = ifnames if ifnames is not None else interfaces_in_namespace()
        _ensure_forwarding(keep_sysctls, ifnames)
        try:
            parts = _build(stack, store, pin_dir, ct_entries, ifnames,
                           Path(state_dir), audit_max_mb * 1024 * 1024, audit_backups, sync,
                           BgpOptions(bgp_backup, bgp_import, bgp_hold_time))
        except (OSError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        dp = parts.rules.dp
        log.info("datapath on %s, maps in %s, %d rules restored from %s",
                 ", ".join(dp.attached) or "no interface", pin_dir, len(parts.rules.records),
                 state_dir)
        server = uvicorn.Server(uvicorn.Config(create_app(parts, token), host=host, port=port,
                                               log_level="warning", access_log=False,
                                               lifespan="off", **tls))
        # uvicorn handles SIGTERM/SIGINT while it runs and re-raises them to the
        # previous handlers when it is done: make that a no-op so the clean-up
        # below runs and the exit status is 0.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: None)
        server.run()
        log.info("stopping")
        if detach_on_exit or not server.started:
            dp.detach_all()
        if not server.started:
            raise click.ClickException(f"could not serve the API on {host}:{port}")


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _api_token(host: str, token: str | None, token_file: str | None) -> str | None:
    """The API's token: none on loopback unless given; beyond loopback one from a file (a
    token on a command line or in the environment can be read by the host's other
    users), created 0600 with a new random token when the file does not exist."""
    from loxicmd.secretfile import create_secret, read_secret

    if token and token_file:
        raise click.UsageError("give one of --token and --token-file")
    if host not in LOOPBACK and not token_file:
        raise click.UsageError(f"--host {host} (beyond loopback) needs --token-file FILE: "
                               "the API would be open to the network")
    if token_file is None:
        return token
    try:
        if not os.path.exists(token_file):
            made = create_secret(token_file)
            log.warning("wrote a new API token to %s (mode 0600)", token_file)
            return made
        return read_secret(token_file).decode()
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise click.BadParameter(str(exc), param_hint="--token-file") from None


def _tls_files(cert: str | None, key: str | None) -> dict[str, str]:
    """uvicorn's TLS settings: both files or neither; the key the owner's only."""
    from loxicmd.secretfile import owner_only

    if (cert is None) != (key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if cert is None or key is None:
        return {}
    try:
        owner_only(key)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--tls-key") from None
    return {"ssl_certfile": cert, "ssl_keyfile": key}


@dataclass(frozen=True)
class BgpOptions:
    backup_policy: str = "worse"
    import_routes: bool = False
    hold_time: int = 90


@dataclass(frozen=True)
class SyncSettings:
    node: str
    key: bytes
    peers: list[tuple[str, int]]
    listen: tuple[str, int]


def _cluster_settings(cluster: str | None, key_file: str | None, listen: str,
                      node: str) -> SyncSettings | None:
    from .ha.sync import DEFAULT_PORT, parse_peer, read_key

    if cluster is None:
        if key_file is not None:
            raise click.UsageError("--cluster-key needs --cluster (the peers to sync with)")
        return None
    if key_file is None:
        raise click.UsageError("--cluster needs --cluster-key FILE (the shared key that "
                               "authenticates the peers)")
    try:
        peers = [parse_peer(p) for p in cluster.split(",") if p.strip()]
        listen_at = parse_peer(listen, DEFAULT_PORT)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--cluster/--cluster-listen") from None
    if not peers:
        raise click.BadParameter(f"{cluster!r} names no peer; allowed: PEER[:PORT][,...]",
                                 param_hint="--cluster")
    try:
        key = read_key(key_file)
    except (OSError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--cluster-key") from None
    return SyncSettings(node, key, peers, listen_at)


def _build(stack: contextlib.ExitStack, store: StateStore, pin_dir: str,
           ct_entries: int | None, ifnames: list[str], state_dir: Path,
           audit_max_bytes: int, audit_backups: int,
           sync_settings: SyncSettings | None = None,
           bgp_options: BgpOptions | None = None) -> AgentParts:
    """The agent's parts, wired: the datapath, the HA states, the rule table and its
    observers (endpoint health, the BGP speaker), the readers of conntrack events (audit
    log, resets, conntrack sync), the timers; restored from the state directory, then
    attached. Each part is stopped by `stack`."""
    from .bgp.speaker import BgpSpeaker
    from .conntrack.listing import FlowListing
    from .conntrack.resets import ResetSender
    from .dataplane.dataplane import Dataplane
    from .events.audit import AuditLog
    from .events.pump import POLL_MS, EventPump, Periodic, sweeper
    from .ha.garp import announce_on_takeover
    from .ha.states import HaStates, instance_of
    from .ha.sync import POLL_MS as SYNC_POLL_MS
    from .ha.sync import ConntrackSync
    from .health.endpoints import EndpointTable
    from .health.monitor import HealthMonitor
    from .lb.table import RuleTable
    from .rest.app import AgentParts
    from .store.journal import StateStore

    dp = Dataplane(pin_dir, ct_entries=ct_entries)
    stack.callback(dp.close)
    # HA states first: every rule programmed carries its instance's slot
    ha = HaStates(state_dir, dp.maps["lb_instances"], restore_master=sync_settings is None)
    dp.instance_slot = ha.slot_of_rule
    table = RuleTable(dp, store)
    ha.observers.append(announce_on_takeover(table, dp))

    # Endpoint probes: configurations restored before the rules, so that monitored rules
    # share their probes. Health changes are applied on a worker of their own: they take
    # the rule table's lock, which must never stall the probe loop's timers.
    ep_store = StateStore(state_dir, "endpoints", lock=False)
    stack.callback(ep_store.close)
    applier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="health-apply")
    stack.callback(applier.shutdown)
    monitor = HealthMonitor(on_change=lambda spec, healthy: applier.submit(
        endpoints.on_health_change, spec, healthy))
    endpoints = EndpointTable(table, monitor, ep_store)
    table.observe(endpoints)
    table.gate(endpoints)
    endpoints.restore()
    monitor.start()
    stack.callback(monitor.stop)

    # The BGP speaker counts the VIPs of rules as they are restored; it starts talking
    # once the datapath is attached (a VIP is announced only when it can be served).
    bgp_options = bgp_options or BgpOptions()
    bgp = BgpSpeaker(state_dir, ha, backup_policy=bgp_options.backup_policy,
                     import_routes=bgp_options.import_routes, hold_time=bgp_options.hold_time)
    table.observe(bgp.vips)
    ha.observers.append(bgp.on_ha_state)

    table.restore()

    # Conntrack events: the audit log and the resets sent to both ends of TCP flows the
    # LB ends; the idle sweep; endpoints restored without a route come back with it.
    audit = AuditLog(state_dir / "audit.log", max_bytes=audit_max_bytes,
                     backups=audit_backups, rule_name=table.book.name_of)
    stack.callback(audit.close)
    resets = ResetSender()
    stack.callback(resets.close)
    handlers = [audit.handle, resets.reset_flow]
    sync: ConntrackSync | None = None
    if sync_settings is not None:
        def mark_of(rule_id: int) -> int:
            record = table.book.by_id.get(rule_id)
            return record.rule.key.mark if record else 0

        sync = ConntrackSync(dp, sync_settings.node, sync_settings.key, sync_settings.peers,
                             sync_settings.listen, mark_of=mark_of,
                             instance_of=lambda rule_id: instance_of(table.book.name_of(rule_id)),
                             is_master=ha.any_master)
        stack.callback(sync.stop)
        table.observe(sync.installer)
        ha.observers.append(sync.on_state)
        handlers.append(sync.handle)
        ha.sync_status = sync.status
        sync.start()
    else:
        dp.set_refresh(0)
    # with peers, events are read sooner: their wait adds to the peers' lag
    def on_lost(count: int) -> None:
        audit.note_lost(count)
        if sync is not None:
            sync.resync(count)  # what the lost events said, the peers get in a new bulk

    pump = EventPump(dp, handlers, on_lost=on_lost, on_batch=audit.flush,
                     poll_ms=SYNC_POLL_MS if sync_settings else POLL_MS).start()
    stack.callback(pump.stop)
    stack.callback(sweeper(dp).start().stop)
    stack.callback(Periodic("route-recheck", ROUTE_RECHECK_S, table.recheck_routes).start().stop)

    try:
        dp.attach(ifnames)
    except (OSError, ValueError):
        dp.detach_all()
        raise
    stack.callback(bgp.start().stop)
    return AgentParts(rules=table, flows=FlowListing(table), endpoints=endpoints,
                      ha=ha, bgp=bgp, state_dir=str(state_dir), pin_dir=pin_dir)


def _cleanup(pin_dir: str, node: str, default_dir: bool) -> None:
    """`--cleanup`: detach everywhere and remove the node's pins, unless an agent runs on
    them (taking its maps away would leave it programming nothing)."""
    from .dataplane.dataplane import detach_everywhere
    from .dataplane.pins import NodeBusy, NodeLock, agents_in_this_namespace, unpin

    had_pins = os.path.isdir(pin_dir)
    try:
        lock = NodeLock(pin_dir, node)
    except NodeBusy as exc:
        raise click.ClickException(f"{exc}; stop it before --cleanup") from None
    try:
        # The filter is the same program slot on every interface of the namespace: with
        # another agent running here, detaching would take its datapath away too.
        others = agents_in_this_namespace()
        if others:
            if not had_pins:
                unpin(pin_dir, parent=PIN_ROOT if default_dir else None)
            raise click.ClickException(
                f"another agent runs in this network namespace ({'; '.join(others)}) on the "
                "same interfaces: stop it before --cleanup (nothing was changed)")
        detached = detach_everywhere()
        removed = unpin(pin_dir, parent=PIN_ROOT if default_dir else None) and had_pins
    finally:
        lock.close()
    if not detached and not removed:
        click.echo(f"nothing to clean up: the datapath is attached to no interface of this "
                   f"namespace and no maps are pinned in {pin_dir}")
        return
    click.echo(f"detached from {', '.join(detached) or 'no interface'}; "
               + (f"removed {pin_dir}" if removed else f"no maps were pinned in {pin_dir}"))


IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def _ensure_forwarding(keep_sysctls: bool, ifnames: list[str]) -> None:
    """The datapath forwards what it translates through the kernel's FIB, which answers
    "forwarding disabled" while forwarding is off in this namespace or on the interface
    the packet came in by. Set it (logged) unless told to keep the sysctls (warned)."""
    def off(path: Path) -> bool:
        try:
            return path.read_text().strip() == "0"
        except OSError as exc:
            log.warning("cannot read %s (%s): forwarding needs it to be 1", path, exc)
            return False

    files = [IP_FORWARD, *(Path(f"/proc/sys/net/ipv4/conf/{n}/forwarding") for n in ifnames)]
    for path in files:  # ip_forward first: setting it sets every interface's too
        if not off(path):
            continue
        name = str(path.relative_to("/proc/sys")).replace("/", ".")
        if keep_sysctls:
            log.warning("%s is 0 in this network namespace: translated packets will not be "
                        "forwarded (set it to 1, or start without --keep-sysctls)", name)
            continue
        try:
            path.write_text("1")
        except OSError as exc:
            log.warning("%s is 0 in this network namespace and could not be set (%s): "
                        "translated packets will not be forwarded", name, exc)
            continue
        log.warning("%s was 0 in this network namespace: set it to 1 (the load balancer "
                    "forwards packets; --keep-sysctls leaves it alone)", name)


def main() -> None:
    cli(prog_name="loxilbd")


if __name__ == "__main__":
    main()
