"""Objects read from files, checked whole before anything is sent.

- ``apply -f`` / ``delete -f``: Kubernetes-style YAML documents (``apiVersion``, ``kind``,
  ``metadata``, ``spec``), several per file; ``spec`` is the API's request body.
- ``apply -c DIR``: the Go tool's saved files, ``lbconfig.txt`` (``{"lbAttr": [...]}``) and
  ``EPconfig.txt`` (``{"Attr": [...]}``), as written by ``save``.

Every document is checked against its kind's schema; any error rejects the whole input
(``ManifestError`` lists each problem with its file, document and field).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loxicmd.cli import schema
from loxicmd.cli.options import Call
from loxicmd.cli.schema import Invalid, address, boolean, integer, text
from loxicmd.names import NAT_MODE_NAMES, PROTOCOLS, RULE_UNCHANGED, SELECTION_NAMES

LB_FILE = "lbconfig.txt"
EP_FILE = "EPconfig.txt"
API_VERSION = "netlox/v1"


class ManifestError(ValueError):
    """The input is rejected whole; ``problems`` are ``<where>: <why>`` lines."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


# ---- kinds ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """How one kind of object is checked, created, deleted, identified and restored."""

    name: str
    check: Callable[[Any, str], dict[str, Any]]  # spec, where -> request body
    create: Callable[[dict[str, Any]], Call]
    delete: Callable[[dict[str, Any]], Call] | None
    identity: Callable[[Mapping[str, Any]], tuple[Any, ...]]  # request or listed object
    label: Callable[[Mapping[str, Any]], str]
    list_path: str
    list_key: str | None  # None: the GET body is the one object
    restore: Callable[[Mapping[str, Any]], dict[str, Any]]  # listed object -> request body
    unchanged_result: str = ""  # the agent's result text for "posted again, nothing to do"


def _lb_sa(value: Any, where: str) -> dict[str, Any]:
    sa = schema.check({
        "externalIP": address, "privateIP": lambda v: address(v) if v else "",
        "port": integer(0, 65535), "portMax": integer(0, 65535),
        "protocol": schema.choice(PROTOCOLS), "sel": schema.code(SELECTION_NAMES),
        "mode": schema.code(NAT_MODE_NAMES), "bgp": boolean, "monitor": boolean,
        "inactiveTimeOut": integer(0, 86400), "block": integer(0, 2**32 - 1), "name": text,
        "oper": integer(0, 0), "probetype": text, "probeport": integer(0, 65535),
        "probereq": text, "proberesp": text, "probeTimeout": integer(0, 86400),
        "probeRetries": integer(0, 1000), "managed": boolean, "security": integer(0, 255),
        "host": text, "proxyprotocolv2": boolean, "egress": boolean, "snat": boolean,
    }, value, where, required=("externalIP", "port"))
    sa.pop("snat", None)  # output only
    protocol = sa.get("protocol", "tcp")
    if sa["port"] == 0 and protocol != "icmp":
        raise Invalid(f"{where}.port", "0 is out of range; allowed: 1..65535 (0 for icmp)")
    if sa.get("portMax") and sa["portMax"] < sa["port"]:
        raise Invalid(f"{where}.portMax", f"{sa['portMax']} is below port {sa['port']}; "
                      f"allowed: {sa['port']}..65535 or 0")
    return sa


def _lb_endpoint(value: Any, where: str) -> dict[str, Any]:
    # targetPort 0 keeps the port the client used (ranges such as 8001-8100:0)
    ep = schema.check({"endpointIP": address, "targetPort": integer(0, 65535),
                       "weight": integer(1, 255), "state": text, "counter": text},
                      value, where, required=("endpointIP",))
    ep.pop("state", None)  # output only
    ep.pop("counter", None)
    return ep


def check_lb(spec: Any, where: str) -> dict[str, Any]:
    body = schema.check({"serviceArguments": lambda v: v, "endpoints": lambda v: v,
                         "secondaryIPs": lambda v: v, "allowedSources": lambda v: v},
                        spec, where, required=("serviceArguments",))
    at = f"{where}." if where else ""
    out: dict[str, Any] = {"serviceArguments": _lb_sa(body["serviceArguments"],
                                                      f"{at}serviceArguments")}
    eps = schema.items(_lb_endpoint, body.get("endpoints"), f"{at}endpoints")
    seen: set[tuple[str, int | None]] = set()
    for i, ep in enumerate(eps):
        ident = (ep["endpointIP"], ep.get("targetPort"))
        if ident in seen:
            raise Invalid(f"{at}endpoints[{i}]", f"{ep['endpointIP']} is listed twice")
        seen.add(ident)
    out["endpoints"] = eps
    out["secondaryIPs"] = schema.items(
        lambda v, w: schema.check({"secondaryIP": address}, v, w, ("secondaryIP",)),
        body.get("secondaryIPs"), f"{at}secondaryIPs")
    out["allowedSources"] = schema.items(
        lambda v, w: schema.check({"prefix": schema.prefix}, v, w, ("prefix",)),
        body.get("allowedSources"), f"{at}allowedSources")
    return out


def lb_identity(rule: Mapping[str, Any]) -> tuple[Any, ...]:
    sa = rule.get("serviceArguments") or {}
    port = sa.get("port", 0)
    return (sa.get("externalIP"), port, sa.get("portMax") or port, sa.get("protocol", "tcp"),
            sa.get("block", 0), sa.get("host", ""))


def _lb_label(rule: Mapping[str, Any]) -> str:
    from loxicmd.cli.nouns.lb import port_cell

    sa = rule.get("serviceArguments") or {}
    name = f" ({sa['name']})" if sa.get("name") else ""
    return f"{sa.get('externalIP')} {sa.get('protocol', 'tcp')}/{port_cell(sa)}{name}"


def _lb_delete(rule: dict[str, Any]) -> Call:
    from loxicmd.cli.nouns.lb import path_rule

    sa = rule["serviceArguments"]
    port_max = sa.get("portMax") or None
    query = {"block": sa["block"]} if sa.get("block") else None
    return Call(f"delete LoadBalancer {_lb_label(rule)}", "DELETE",
                path_rule(sa["externalIP"], sa["port"], port_max, sa.get("protocol", "tcp"),
                          sa.get("host", "")), query=query)


_EP_OUTPUT = ("minDelay", "avgDelay", "maxDelay", "currState", "ruleProbe")


def check_endpoint(spec: Any, where: str) -> dict[str, Any]:
    from loxicmd.cli.nouns.endpoint import PROBE_TYPES

    body = schema.check({
        "hostName": address, "name": text, "probeType": schema.choice(PROBE_TYPES),
        "probePort": integer(0, 65535), "probeReq": text, "probeResp": text,
        "probeDuration": integer(0, 86400), "inactiveReTries": integer(0, 1000),
        **{key: lambda v: v for key in _EP_OUTPUT},
    }, spec, where, required=("hostName",))
    for key in _EP_OUTPUT:  # output only
        body.pop(key, None)
    return body


def _ep_delete(body: dict[str, Any]) -> Call:
    from loxicmd.cli.nouns.endpoint import path_delete

    query = {"name": body.get("name"), "probe_type": body.get("probeType"),
             "probe_port": body.get("probePort")}
    return Call(f"delete Endpoint {body['hostName']}", "DELETE", path_delete(body["hostName"]),
                query=query)


def check_bgpneighbor(spec: Any, where: str) -> dict[str, Any]:
    return schema.check({"ipAddress": address, "remoteAs": schema.ASN,
                         "remotePort": schema.PORT, "setMultiHop": boolean},
                        spec, where, required=("ipAddress", "remoteAs"))


def _bgpnei_delete(body: dict[str, Any]) -> Call:
    from loxicmd.cli.nouns.bgpneighbor import path_delete

    return Call(f"delete BGPNeighbor {body['ipAddress']}", "DELETE",
                path_delete(body["ipAddress"]), query={"remoteAs": body["remoteAs"]})


def check_bgpglobal(spec: Any, where: str) -> dict[str, Any]:
    return schema.check({"routerId": address, "localAs": schema.ASN,
                         "listenPort": schema.PORT, "SetNextHopSelf": boolean},
                        spec, where, required=("routerId", "localAs"))


def check_hastate(spec: Any, where: str) -> dict[str, Any]:
    from loxicmd.cli.nouns.ha import STATES

    body = schema.check({"instance": text, "state": schema.choice(STATES, upper=True),
                         "vip": lambda v: address(v) if v else "", "sync": lambda v: v},
                        spec, where, required=("instance", "state"))
    body.pop("sync", None)  # output only
    return body


def _post(path: str, kind: str,
          label: Callable[[Mapping[str, Any]], str]) -> Callable[[dict[str, Any]], Call]:
    return lambda body: Call(f"apply {kind} {label(body)}", "POST", path, body=body)


def _field(*keys: str) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    return lambda obj: tuple(obj.get(k) for k in keys)


@functools.cache
def kinds() -> dict[str, Kind]:
    """The kinds by lower-case name (built on first use: they import the noun modules)."""
    from loxicmd.cli.nouns import bgpglobal, bgpneighbor, endpoint, ha, lb

    def restore(check: Callable[[Any, str], dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        return lambda obj: check(dict(obj), "")

    def ep_label(b: Mapping[str, Any]) -> str:
        return str(b.get("hostName"))

    def nei_label(b: Mapping[str, Any]) -> str:
        return str(b.get("ipAddress"))

    def global_label(b: Mapping[str, Any]) -> str:
        return str(b.get("routerId"))

    def ha_label(b: Mapping[str, Any]) -> str:
        return f"{b.get('instance')} {b.get('state')}"

    found = [
        Kind("LoadBalancer", check_lb, _post(lb.PATH, "LoadBalancer", _lb_label), _lb_delete,
             lb_identity, _lb_label, lb.PATH_ALL, "lbAttr", restore(check_lb),
             unchanged_result=RULE_UNCHANGED),
        Kind("Endpoint", check_endpoint, _post(endpoint.PATH, "Endpoint", ep_label),
             _ep_delete, _field("hostName", "name"), ep_label, endpoint.LISTING.path, "Attr",
             restore(check_endpoint)),
        Kind("BGPNeighbor", check_bgpneighbor,
             _post(bgpneighbor.PATH, "BGPNeighbor", nei_label), _bgpnei_delete,
             _field("ipAddress"), nei_label, bgpneighbor.LISTING.path, "bgpNeiAttr",
             lambda o: check_bgpneighbor({k: o[k] for k in ("ipAddress", "remoteAs")
                                          if k in o}, "")),
        Kind("BGPGlobal", check_bgpglobal, _post(bgpglobal.PATH, "BGPGlobal", global_label),
             None, lambda b: (), global_label, bgpglobal.PATH, None, restore(check_bgpglobal)),
        Kind("HAState", check_hastate, _post(ha.PATH, "HAState", ha_label), None,
             _field("instance"), ha_label, ha.LISTING.path, "Attr", restore(check_hastate)),
    ]
    return {k.name.lower(): k for k in found}


KIND_NAMES = ("LoadBalancer", "Endpoint", "BGPNeighbor", "BGPGlobal", "HAState")


# ---- documents -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One checked object: its kind, its request body and where it came from."""

    kind: Kind
    body: dict[str, Any]
    source: str

    @property
    def label(self) -> str:
        return f"{self.kind.name} {self.kind.label(self.body)}"


def _document(doc: Any, where: str, deleting: bool) -> Item:
    if not isinstance(doc, Mapping):
        raise Invalid(where, f"{type(doc).__name__} is not a mapping with apiVersion, kind, "
                      "metadata, spec")
    keys = {str(k): v for k, v in doc.items()}
    unknown = set(keys) - {"apiVersion", "kind", "metadata", "spec"}
    if unknown:
        raise Invalid(f"{where}: {sorted(unknown)[0]}",
                      "unknown field; allowed: apiVersion, kind, metadata, spec")
    version = keys.get("apiVersion")
    if version != API_VERSION:
        raise Invalid(f"{where}: apiVersion", f"{version!r}; allowed: {API_VERSION}")
    kind_name = keys.get("kind")
    kind = kinds().get(kind_name.lower()) if isinstance(kind_name, str) else None
    if kind is None:
        raise Invalid(f"{where}: kind", f"{kind_name!r} is unknown; "
                      f"allowed: {', '.join(KIND_NAMES)}")
    metadata = keys.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise Invalid(f"{where}: metadata", "is not a mapping")
    if deleting and kind.delete is None:
        raise Invalid(f"{where}: kind", f"{kind.name} objects cannot be deleted")
    if "spec" not in keys:
        raise Invalid(f"{where}: spec", "is required")
    name = (metadata or {}).get("name")
    at = f"{where} ({kind.name}{f' {name}' if name else ''})"
    return Item(kind, kind.check(keys["spec"], f"{at}: spec"), at)


def _no_duplicates(items: Sequence[Item], problems: list[str]) -> None:
    seen: dict[tuple[str, tuple[Any, ...]], str] = {}
    for item in items:
        key = (item.kind.name, item.kind.identity(item.body))
        if key in seen:
            problems.append(f"{item.source}: the same {item.kind.name} as {seen[key]}")
        seen.setdefault(key, item.source)


def read_documents(path: str, *, deleting: bool = False) -> list[Item]:
    """The objects of a YAML file of Kubernetes-style documents, all checked."""
    import yaml

    try:
        text_ = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError([f"{path}: cannot read: {exc}"]) from None
    try:
        docs = [d for d in yaml.safe_load_all(text_) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError([f"{path}:{at}: not valid YAML: {problem}"]) from None
    if not docs:
        raise ManifestError([f"{path}: no documents"])
    return _collect([functools.partial(_document, doc, f"{path}: document {i}", deleting)
                     for i, doc in enumerate(docs, 1)], [])


def read_saved(directory: str) -> list[Item]:
    """The objects of ``save``'s files in ``directory`` (endpoints first, then rules)."""
    base = Path(directory)
    sources = [(EP_FILE, "endpoint", "Attr"), (LB_FILE, "loadbalancer", "lbAttr")]
    present = [(base / name, kinds()[kind], key) for name, kind, key in sources
               if (base / name).exists()]
    if not present:
        raise ManifestError([f"{directory}: neither {LB_FILE} nor {EP_FILE} is there"])
    attempts: list[Callable[[], Item]] = []
    problems: list[str] = []
    for path, kind, key in present:
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            problems.append(f"{path}: not valid JSON: {exc}")
            continue
        objects = data.get(key) if isinstance(data, dict) else None
        if not isinstance(objects, list):
            problems.append(f"{path}: expected {{\"{key}\": [...]}}")
            continue
        attempts += [functools.partial(_saved_item, kind, obj, f"{path}: {key}[{i}]")
                     for i, obj in enumerate(objects)]
    return _collect(attempts, problems)


def _saved_item(kind: Kind, obj: Any, where: str) -> Item:
    return Item(kind, kind.check(obj, where), where)


def _collect(attempts: Sequence[Callable[[], Item]], problems: list[str]) -> list[Item]:
    """Run every check; any problem (or an object given twice) rejects them all."""
    items = []
    for attempt in attempts:
        try:
            items.append(attempt())
        except Invalid as exc:
            problems.append(str(exc))
    _no_duplicates(items, problems)
    if problems:
        raise ManifestError(problems)
    return items
