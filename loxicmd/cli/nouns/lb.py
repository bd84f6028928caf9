"""Noun ``loadbalancer`` (lb): columns, API paths, argument parsing, commands."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import click

from loxicmd.api import paths
from loxicmd.cli import args
from loxicmd.cli.args import Endpoint, PortMap, PortRange
from loxicmd.cli.complete import rule_ips, rule_names
from loxicmd.cli.options import Call, global_options, perform, settings
from loxicmd.cli.render import Column, ip_key, render
from loxicmd.names import LOXILB_PROBE_TYPES as PROBE_TYPES
from loxicmd.names import (
    LOXILBD_NAT_MODES,
    LOXILBD_SELECTIONS,
    NAT_MODE_NAMES,
    OPER_ATTACH,
    OPER_CREATE,
    OPER_DETACH,
    PROTOCOLS,
    SELECTION_NAMES,
    code_for_name,
)
from loxicmd.names import PROBE_TYPES as LOXILBD_PROBE_TYPES

# ---- API paths (api.md) -------------------------------------------------------------------

MARK_MAX = 2**32 - 1

# What loxilbd refuses today (400 naming the field). The CLI still sends them, so that the
# agent names the refusal and an agent that carries them out gets them; --help says so.
NOT_IN_LOXILBD = "not supported by loxilbd yet"
UNSUPPORTED_MODES = tuple(m for m in NAT_MODE_NAMES.values() if m not in LOXILBD_NAT_MODES)
UNSUPPORTED_SELECTIONS = tuple(s for s in SELECTION_NAMES.values()
                               if s not in LOXILBD_SELECTIONS)
UNSUPPORTED_PROBE_TYPES = tuple(t for t in PROBE_TYPES if t not in LOXILBD_PROBE_TYPES)


# ---- columns ------------------------------------------------------------------------------


def _sa(rule: Mapping[str, Any]) -> Mapping[str, Any]:
    return rule.get("serviceArguments") or {}


def port_cell(sa: Mapping[str, Any]) -> str:
    port, port_max = sa.get("port"), sa.get("portMax")
    if port_max and port_max != port:
        return f"{port}-{port_max}"
    return "" if port is None else str(port)


def _name_of(table: Mapping[int, str], code: Any) -> str:
    if code is None:
        code = 0
    return table.get(code, str(code)) if isinstance(code, int) else str(code)


def _joined(items: Any, key: str) -> str:
    return ",".join(str(item.get(key, "")) for item in items or [] if isinstance(item, dict))


_RULE_CELLS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "EXT IP": lambda r: _sa(r).get("externalIP"),
    "SEC IPS": lambda r: _joined(r.get("secondaryIPs"), "secondaryIP"),
    "SOURCES": lambda r: _joined(r.get("allowedSources"), "prefix"),
    "HOST": lambda r: _sa(r).get("host"),
    "PORT": lambda r: port_cell(_sa(r)),
    "PROTO": lambda r: _sa(r).get("protocol"),
    "NAME": lambda r: _sa(r).get("name"),
    "MARK": lambda r: _sa(r).get("block", 0),
    "SEL": lambda r: _name_of(SELECTION_NAMES, _sa(r).get("sel")),
    "MODE": lambda r: _name_of(NAT_MODE_NAMES, _sa(r).get("mode")),
    "# OF ENDPOINTS": lambda r: len(r.get("endpoints") or []),
    "TIMEOUT": lambda r: _sa(r).get("inactiveTimeOut"),
    "MONITOR": lambda r: "On" if _sa(r).get("monitor") else "Off",
}

COLUMNS: tuple[Column, ...] = tuple(
    Column(h, _RULE_CELLS[h])
    for h in ("EXT IP", "PORT", "PROTO", "NAME", "MARK", "SEL", "MODE", "# OF ENDPOINTS",
              "TIMEOUT", "MONITOR")
)


@dataclass(frozen=True)
class WideRow:
    """One ``-o wide`` line: a rule's endpoint (or None); rule cells only on its first line."""

    rule: Mapping[str, Any]
    endpoint: Mapping[str, Any] | None
    first: bool


def _rule_col(header: str) -> Column:
    cell = _RULE_CELLS[header]
    return Column(header, lambda w: cell(w.rule) if w.first else "")


def _ep_state(w: WideRow) -> str:
    if w.endpoint is None:
        return ""
    if not _sa(w.rule).get("monitor"):
        return "-"
    return str(w.endpoint.get("state") or "-")


def _ep(key: str) -> Callable[[WideRow], Any]:
    return lambda w: None if w.endpoint is None else w.endpoint.get(key)


WIDE_COLUMNS: tuple[Column, ...] = (
    *(_rule_col(h) for h in ("EXT IP", "SEC IPS", "SOURCES", "HOST", "PORT", "PROTO", "NAME",
                             "MARK", "SEL", "MODE")),
    Column("ENDPOINT", _ep("endpointIP")),
    Column("EPORT", _ep("targetPort")),
    Column("WEIGHT", _ep("weight")),
    Column("STATE", _ep_state, state=True),
    Column("COUNTERS", _ep("counter")),
)


def rule_key(rule: Mapping[str, Any]) -> tuple[Any, ...]:
    sa = _sa(rule)
    port = sa.get("port") or 0
    return (ip_key(sa.get("externalIP", "")), port, sa.get("portMax") or port,
            str(sa.get("protocol", "")), sa.get("block") or 0, str(sa.get("host") or ""))


def with_service_name(body: Any, name: str) -> Any:
    """The agent's rule list ``body`` with only the rules named ``name`` (every other
    field kept, order unchanged): ``get lb --servName``."""
    if not isinstance(body, dict) or not isinstance(body.get("lbAttr"), list):
        return body
    kept = [r for r in body["lbAttr"] if isinstance(r, dict) and _sa(r).get("name") == name]
    return {**body, "lbAttr": kept}


def sorted_rules(body: Any) -> list[Mapping[str, Any]]:
    rules = body.get("lbAttr") if isinstance(body, dict) else None
    return sorted((r for r in rules or [] if isinstance(r, dict)), key=rule_key)


def wide_rows(rules: Sequence[Mapping[str, Any]]) -> list[WideRow]:
    """One row per endpoint; a rule without endpoints still gets one row."""
    rows: list[WideRow] = []
    for rule in rules:
        eps = [ep for ep in rule.get("endpoints") or [] if isinstance(ep, dict)]
        if not eps:
            rows.append(WideRow(rule, None, True))
        rows.extend(WideRow(rule, ep, i == 0) for i, ep in enumerate(eps))
    return rows


def show(body: Any, output: str, *, out: TextIO | None = None,
         tty: bool | None = None) -> None:
    """Print the agent's rule list ``body`` as ``get lb`` does (``out``/``tty``: see render)."""
    rules = sorted_rules(body)
    if output == "wide":
        render(wide_rows(rules), WIDE_COLUMNS, output, body, out=out, tty=tty)
    else:
        render(rules, COLUMNS, output, body, out=out, tty=tty)


# ---- request bodies -----------------------------------------------------------------------


def build_rules(
    external_ip: str,
    *,
    ports: Mapping[str, Sequence[PortMap]],
    icmp: bool = False,
    endpoints: Sequence[Endpoint] = (),
    mode: str = "default",
    select: str = "rr",
    bgp: bool = False,
    monitor: bool = False,
    inactive_timeout: int | None = None,
    mark: int = 0,
    name: str | None = None,
    host: str = "",
    sources: Sequence[str] = (),
    secips: Sequence[str] = (),
    oper: int = OPER_CREATE,
    probe: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One LoadbalanceEntry per port mapping per protocol (tcp, udp, sctp, then icmp).

    ``oper`` 1/2 attaches/detaches the endpoints to/from existing rules; ``probe`` holds the
    monitor options given (probetype, probeport, probereq, proberesp), sent as they are.
    Without ``name`` the body names no service (an update then keeps the rule's name)."""
    # imported here: listing rules (most runs) needs no request bodies
    from loxicmd.api.lbentry import LoadbalanceEntry, LoadBalancerEndpoint, ServiceArguments

    mode_code = code_for_name(NAT_MODE_NAMES, mode)
    if mode_code is None:
        raise click.BadParameter(f"'{mode}': allowed: {', '.join(NAT_MODE_NAMES.values())}",
                                 param_hint="--mode")
    sel_code = code_for_name(SELECTION_NAMES, select)
    if sel_code is None:
        raise click.BadParameter(f"'{select}': allowed: {', '.join(SELECTION_NAMES.values())}",
                                 param_hint="--select")
    unknown = set(ports) - set(PROTOCOLS)
    if unknown:
        raise ValueError(f"unknown protocol(s): {sorted(unknown)}")
    for proto, maps in ports.items():
        args.check_no_overlap(maps, f"--{proto}")
    for ep in endpoints:
        if ep.ip == external_ip:
            raise click.BadParameter(
                f"'{ep.ip}:{ep.weight}': {ep.ip} is EXTERNAL-IP itself; allowed: addresses "
                "behind the load balancer", param_hint="--endpoints")

    plan: list[tuple[str, PortMap]] = [
        (proto, pm) for proto in PROTOCOLS for pm in ports.get(proto, ())
    ]
    if icmp:
        plan.append(("icmp", PortMap(0, None, 0)))

    bodies = []
    for proto, pm in plan:
        sa = ServiceArguments(
            external_ip=external_ip, port=pm.port, port_max=pm.port_max or 0, protocol=proto,
            sel=sel_code, mode=mode_code, bgp=bgp, monitor=monitor,
            inactive_time_out=inactive_timeout or 0, block=mark, host=host,
            name=name, oper=oper, **(probe or {}))
        bodies.append(LoadbalanceEntry(
            sa, [LoadBalancerEndpoint(ep.ip, pm.target, ep.weight) for ep in endpoints],
            list(secips), list(sources)).to_json())
    return bodies


def rule_label(verb: str, body_or_sa: Mapping[str, Any]) -> str:
    sa = body_or_sa.get("serviceArguments", body_or_sa)
    return f"{verb} lb {sa.get('externalIP')} {sa.get('protocol')}/{port_cell(sa)}"


def delete_calls(
    external_ip: str,
    *,
    ports: Mapping[str, Sequence[PortRange]],
    icmp: bool = False,
    bgp: bool = False,
    mark: int | None = None,
    host: str = "",
) -> list[Call]:
    query: dict[str, Any] = {}
    if bgp:
        query["bgp"] = True
    if mark is not None:
        query["block"] = mark
    plan = [(proto, rng) for proto in PROTOCOLS for rng in ports.get(proto, ())]
    if icmp:
        plan.append(("icmp", PortRange(0, None)))
    calls = []
    for proto, rng in plan:
        sa = {"externalIP": external_ip, "protocol": proto, "port": rng.port,
              "portMax": rng.port_max}
        calls.append(Call(rule_label("delete", sa), "DELETE",
                          paths.lb_rule(external_ip, rng.port, rng.port_max, proto, host),
                          query=query or None))
    return calls


# ---- commands -----------------------------------------------------------------------------

_MODES = list(NAT_MODE_NAMES.values())
_SELS = list(SELECTION_NAMES.values())


def _unsupported(values: Sequence[str]) -> str:
    return f"{', '.join(values)}: {NOT_IN_LOXILBD}"


@click.command("loadbalancer")
@click.option("--servName", "serv_name", metavar="NAME", shell_complete=rule_names,
              help="Only the rules of this service (name as given to create --name).")
@global_options()
@click.pass_context
def get_lb(ctx: click.Context, serv_name: str | None) -> None:
    """List load-balancer rules (-o wide: one line per endpoint)."""
    s = settings(ctx)
    body = s.client().get(paths.LB_ALL).data
    show(body if serv_name is None else with_service_name(body, serv_name), s.output)


@click.command("loadbalancer")
@click.argument("external_ip", metavar="EXTERNAL-IP", type=args.SERVICE_IP,
                shell_complete=rule_ips)
@click.option("--tcp", multiple=True, type=args.PORT_MAPS,
              help="TCP <port>[-<max>]:<targetport>, comma list or repeated; one rule each "
              "(ranges must not overlap). Target port 0 keeps the client's port "
              "(8001-8100:0).")
@click.option("--udp", multiple=True, type=args.PORT_MAPS, help="UDP port mappings.")
@click.option("--sctp", multiple=True, type=args.PORT_MAPS,
              help=f"SCTP port mappings ({NOT_IN_LOXILBD}).")
@click.option("--icmp", is_flag=True, help="An ICMP rule.")
@click.option("--endpoints", multiple=True, type=args.ENDPOINTS,
              help="<ip>:<weight>,... (weight 1..255; split at the last colon; unicast, "
              "not loopback, not EXTERNAL-IP).")
@click.option("--mode", type=click.Choice(_MODES), default="default", show_default=True,
              help=f"NAT mode ({_unsupported(UNSUPPORTED_MODES)}).")
@click.option("--select", type=click.Choice(_SELS), default="rr", show_default=True,
              help=f"Endpoint selection ({_unsupported(UNSUPPORTED_SELECTIONS)}).")
@click.option("--bgp", is_flag=True,
              help="Announce the address with BGP (while this node is MASTER of the rule's "
                   "HA instance; see loxilbd --bgp-backup).")
@click.option("--monitor", is_flag=True, help="Health-check the endpoints.")
@click.option("--inatimeout", type=args.int_type("timeout", 0, 86400, "SECONDS"),
              help="Idle timeout of connections (agent default when omitted).")
@click.option("--mark", type=args.int_type("mark", 0, MARK_MAX), default=0,
              show_default=True, help="Rule mark (block), 0..4294967295.")
@click.option("--name", type=args.SERVICE_NAME, shell_complete=rule_names,
              help="<service>[:<instance>].")
@click.option("--sources", multiple=True, type=args.CIDR_LIST,
              help="Allowed source prefixes, comma list.")
@click.option("--secips", multiple=True, type=args.IP_LIST,
              help=f"Secondary external IPs (SCTP multi-homing), comma list "
              f"({NOT_IN_LOXILBD}).")
@click.option("--host", default="", help=f"Host (URL) of the rule ({NOT_IN_LOXILBD}).")
@click.option("--attachEP", "attach_ep", is_flag=True,
              help="Add the --endpoints to existing rules instead of replacing them.")
@click.option("--detachEP", "detach_ep", is_flag=True,
              help="Remove the --endpoints from existing rules.")
@click.option("--probetype", type=click.Choice(PROBE_TYPES),
              help=f"Monitor probe type ({_unsupported(UNSUPPORTED_PROBE_TYPES)}).")
@click.option("--probeport", type=args.PORT,
              help="Monitor probe port (default: each endpoint's target port).")
@click.option("--probereq", metavar="TEXT", help="Monitor probe request (http/https/udp).")
@click.option("--proberesp", metavar="TEXT", help="Expected probe response.")
@global_options()
@click.pass_context
def create_lb(ctx: click.Context, external_ip: str, tcp: tuple[list[PortMap], ...],
              udp: tuple[list[PortMap], ...], sctp: tuple[list[PortMap], ...], icmp: bool,
              endpoints: tuple[list[Endpoint], ...], mode: str, select: str, bgp: bool,
              monitor: bool, inatimeout: int | None, mark: int, name: str | None,
              sources: tuple[list[str], ...], secips: tuple[list[str], ...], host: str,
              attach_ep: bool, detach_ep: bool, probetype: str | None, probeport: int | None,
              probereq: str | None, proberesp: str | None) -> None:
    """Create load-balancer rules for EXTERNAL-IP (one per port mapping and protocol).

    With --attachEP/--detachEP the --endpoints are added to / removed from existing rules."""
    ports = {"tcp": args.flatten(tcp), "udp": args.flatten(udp), "sctp": args.flatten(sctp)}
    if not icmp and not any(ports.values()):
        raise click.UsageError("give at least one of --tcp, --udp, --sctp, --icmp", ctx)
    eps = args.flatten(endpoints)
    if attach_ep and detach_ep:
        raise click.UsageError("give --attachEP or --detachEP, not both", ctx)
    oper = OPER_ATTACH if attach_ep else OPER_DETACH if detach_ep else OPER_CREATE
    if oper != OPER_CREATE and not eps:
        raise click.UsageError("--attachEP/--detachEP need --endpoints", ctx)
    probe = {"probetype": probetype, "probeport": probeport, "probereq": probereq,
             "proberesp": proberesp}
    bodies = build_rules(
        external_ip, ports=ports, icmp=icmp, endpoints=eps, mode=mode,
        select=select, bgp=bgp, monitor=monitor, inactive_timeout=inatimeout, mark=mark,
        name=name, host=host, sources=args.flatten(sources), secips=args.flatten(secips),
        oper=oper, probe={k: v for k, v in probe.items() if v is not None},
    )
    calls = [Call(rule_label("create", b), "POST", paths.LB, body=b) for b in bodies]
    ctx.exit(perform(settings(ctx), calls))


@click.command("loadbalancer")
@click.argument("external_ip", metavar="EXTERNAL-IP", type=args.IP, required=False,
                shell_complete=rule_ips)
@click.option("--tcp", multiple=True, type=args.PORT_RANGES,
              help="TCP <port>[-<max>], comma list or repeated.")
@click.option("--udp", multiple=True, type=args.PORT_RANGES, help="UDP ports.")
@click.option("--sctp", multiple=True, type=args.PORT_RANGES, help="SCTP ports.")
@click.option("--icmp", is_flag=True, help="The ICMP rule.")
@click.option("--bgp", is_flag=True, help="The rule was advertised with BGP.")
@click.option("--mark", type=args.int_type("mark", 0, MARK_MAX),
              help="Rule mark (block), 0..4294967295.")
@click.option("--host", default="", help="Host (URL) of the rule.")
@click.option("--name", type=args.SERVICE_NAME, shell_complete=rule_names,
              help="Delete every rule with this name.")
@click.option("--all", "all_", is_flag=True, help="Delete every rule.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (--all).")
@global_options()
@click.pass_context
def delete_lb(ctx: click.Context, external_ip: str | None, tcp: tuple[list[PortRange], ...],
              udp: tuple[list[PortRange], ...], sctp: tuple[list[PortRange], ...], icmp: bool,
              bgp: bool, mark: int | None, host: str, name: str | None, all_: bool,
              yes: bool) -> None:
    """Delete load-balancer rules: EXTERNAL-IP with protocol flags, --name, or --all."""
    ports = {"tcp": args.flatten(tcp), "udp": args.flatten(udp), "sctp": args.flatten(sctp)}
    by_rule = (external_ip is not None or icmp or any(ports.values()) or bgp
               or mark is not None or bool(host))
    if sum((bool(all_), name is not None, by_rule)) > 1:
        raise click.UsageError(
            "give one of: EXTERNAL-IP with --tcp/--udp/--sctp/--icmp, --name, or --all", ctx)
    s = settings(ctx)
    if all_:
        if not yes:
            import sys

            if not sys.stdin.isatty():
                raise click.UsageError(
                    "--all deletes every rule: add --yes to confirm (no terminal to ask on)", ctx)
            if not click.confirm("Delete every load-balancer rule?", default=False, err=True):
                click.echo("loxicmd: not confirmed; nothing deleted", err=True)
                ctx.exit(1)
        calls = [Call("delete lb --all", "DELETE", paths.LB_ALL)]
    elif name is not None:
        calls = [Call(f"delete lb --name={name}", "DELETE", paths.fill(paths.LB_NAME, name=name))]
    else:
        if external_ip is None:
            raise click.UsageError("missing EXTERNAL-IP (or use --name or --all)", ctx)
        if not icmp and not any(ports.values()):
            raise click.UsageError("give at least one of --tcp, --udp, --sctp, --icmp", ctx)
        calls = delete_calls(external_ip, ports=ports, icmp=icmp, bgp=bgp, mark=mark, host=host)
    ctx.exit(perform(s, calls))


COMMANDS: dict[str, click.Command] = {"get": get_lb, "create": create_lb, "delete": delete_lb}
