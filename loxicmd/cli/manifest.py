"""Objects read from files, checked whole before anything is sent.

- ``apply -f`` / ``delete -f``: Kubernetes-style YAML documents (``apiVersion``, ``kind``,
  ``metadata``, ``spec``), several per file; ``spec`` is the API's request body.
- ``apply -c DIR``: the Go tool's saved files, ``lbconfig.txt`` (``{"lbAttr": [...]}``) and
  ``EPconfig.txt`` (``{"Attr": [...]}``), as written by ``save``.

Every document is checked against its kind's wire schema (:mod:`loxicmd.api.wire`, the
checks the agent makes too; unknown fields refused); any error rejects the whole input
(``ManifestError`` lists each problem with its file, document and field).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loxicmd.api import paths, wire
from loxicmd.api.lbentry import LoadbalanceEntry
from loxicmd.api.wire import InvalidInput
from loxicmd.cli.options import Call
from loxicmd.names import NAT_MODE_NAMES, RULE_UNCHANGED, SELECTION_NAMES, code_for_name

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


def _codes_by_name(spec: Any) -> Any:
    """A file may name sel and mode (`sel: hash`): their codes, as the API takes them."""
    if not isinstance(spec, Mapping):
        return spec
    out = dict(spec)
    for key, value in spec.items():
        if str(key).lower() == "serviceArguments".lower() and isinstance(value, Mapping):
            sa = dict(value)
            for k, v in value.items():
                table = {"sel": SELECTION_NAMES, "mode": NAT_MODE_NAMES}.get(str(k).lower())
                if table is not None and isinstance(v, str):
                    code = code_for_name(table, v)
                    sa[k] = v if code is None else code
            out[key] = sa
    return out


def check_lb(spec: Any, where: str) -> dict[str, Any]:
    entry = LoadbalanceEntry.parse(_codes_by_name(spec), where, unknown="refuse")
    if entry.service_arguments.oper != 0:
        at = f"{where}.serviceArguments.oper" if where else "serviceArguments.oper"
        raise InvalidInput(at, f"{entry.service_arguments.oper} is for create lb --attachEP/"
                           "--detachEP; allowed in a file: 0 (create or update)")
    return entry.to_json()


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
    sa = rule["serviceArguments"]
    port_max = sa.get("portMax") or None
    query = {"block": sa["block"]} if sa.get("block") else None
    return Call(f"delete LoadBalancer {_lb_label(rule)}", "DELETE",
                paths.lb_rule(sa["externalIP"], sa["port"], port_max,
                              sa.get("protocol", "tcp"), sa.get("host", "")), query=query)


def check_endpoint(spec: Any, where: str) -> dict[str, Any]:
    return wire.check("EndPoint", spec, where)


def _ep_delete(body: dict[str, Any]) -> Call:
    query = {"name": body.get("name"), "probe_type": body.get("probeType"),
             "probe_port": body.get("probePort")}
    return Call(f"delete Endpoint {body['hostName']}", "DELETE",
                paths.fill(paths.ENDPOINT_BY_IP, ip=body["hostName"]), query=query)


def check_bgpneighbor(spec: Any, where: str) -> dict[str, Any]:
    return wire.check("BGPNeigh", spec, where)


def _bgpnei_delete(body: dict[str, Any]) -> Call:
    return Call(f"delete BGPNeighbor {body['ipAddress']}", "DELETE",
                paths.fill(paths.BGP_NEIGH_BY_IP, ip=body["ipAddress"]),
                query={"remoteAs": body["remoteAs"]})


def check_bgpglobal(spec: Any, where: str) -> dict[str, Any]:
    return wire.check("BGPGlobalConfig", spec, where)


def check_hastate(spec: Any, where: str) -> dict[str, Any]:
    body = wire.check("CIStatusEntry", spec, where)
    if not body.get("instance"):
        raise InvalidInput(f"{where}.instance" if where else "instance", "is required")
    return body


def _post(path: str, kind: str,
          label: Callable[[Mapping[str, Any]], str]) -> Callable[[dict[str, Any]], Call]:
    return lambda body: Call(f"apply {kind} {label(body)}", "POST", path, body=body)


def _field(*keys: str) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    return lambda obj: tuple(obj.get(k) for k in keys)


@functools.cache
def kinds() -> dict[str, Kind]:
    """The kinds by lower-case name (built on first use: they import the noun modules)."""

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
        Kind("LoadBalancer", check_lb, _post(paths.LB, "LoadBalancer", _lb_label), _lb_delete,
             lb_identity, _lb_label, paths.LB_ALL, "lbAttr", restore(check_lb),
             unchanged_result=RULE_UNCHANGED),
        Kind("Endpoint", check_endpoint, _post(paths.ENDPOINT, "Endpoint", ep_label),
             _ep_delete, _field("hostName", "name"), ep_label, paths.ENDPOINT_ALL, "Attr",
             restore(check_endpoint)),
        Kind("BGPNeighbor", check_bgpneighbor,
             _post(paths.BGP_NEIGH, "BGPNeighbor", nei_label), _bgpnei_delete,
             _field("ipAddress"), nei_label, paths.BGP_NEIGH_ALL, "bgpNeiAttr",
             lambda o: check_bgpneighbor({k: o[k] for k in ("ipAddress", "remoteAs")
                                          if k in o}, "")),
        Kind("BGPGlobal", check_bgpglobal, _post(paths.BGP_GLOBAL, "BGPGlobal", global_label),
             None, lambda b: (), global_label, paths.BGP_GLOBAL, None,
             restore(check_bgpglobal)),
        Kind("HAState", check_hastate, _post(paths.CISTATE, "HAState", ha_label), None,
             _field("instance"), ha_label, paths.CISTATE_ALL, "Attr", restore(check_hastate)),
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
        raise InvalidInput(where, f"{type(doc).__name__} is not a mapping with apiVersion, kind, "
                      "metadata, spec")
    keys = {str(k): v for k, v in doc.items()}
    unknown = set(keys) - {"apiVersion", "kind", "metadata", "spec"}
    if unknown:
        raise InvalidInput(f"{where}: {sorted(unknown)[0]}",
                      "unknown field; allowed: apiVersion, kind, metadata, spec")
    version = keys.get("apiVersion")
    if version != API_VERSION:
        raise InvalidInput(f"{where}: apiVersion", f"{version!r}; allowed: {API_VERSION}")
    kind_name = keys.get("kind")
    kind = kinds().get(kind_name.lower()) if isinstance(kind_name, str) else None
    if kind is None:
        raise InvalidInput(f"{where}: kind", f"{kind_name!r} is unknown; "
                      f"allowed: {', '.join(KIND_NAMES)}")
    metadata = keys.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidInput(f"{where}: metadata", "is not a mapping")
    if deleting and kind.delete is None:
        raise InvalidInput(f"{where}: kind", f"{kind.name} objects cannot be deleted")
    if "spec" not in keys:
        raise InvalidInput(f"{where}: spec", "is required")
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
        except InvalidInput as exc:
            problems.append(str(exc))
    _no_duplicates(items, problems)
    if problems:
        raise ManifestError(problems)
    return items
