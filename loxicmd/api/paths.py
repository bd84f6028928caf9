"""The API's paths below API_BASE_PATH (LoxiLB's), declared once: the agent serves these
templates and clients fill them with :func:`fill`."""

from __future__ import annotations

from urllib.parse import quote

VERSION = "/version"

LB = "/config/loadbalancer"
LB_ALL = f"{LB}/all"
LB_NAME = f"{LB}/name/{{name}}"
_RULE = "/externalipaddress/{ip}/port/{port}"
LB_RULE = f"{LB}{_RULE}/protocol/{{proto}}"
LB_RULE_RANGE = f"{LB}{_RULE}/portmax/{{portmax}}/protocol/{{proto}}"
LB_HOST_RULE = f"{LB}/hosturl/{{host}}{_RULE}/protocol/{{proto}}"
LB_HOST_RULE_RANGE = f"{LB}/hosturl/{{host}}{_RULE}/portmax/{{portmax}}/protocol/{{proto}}"

CONNTRACK_ALL = "/config/conntrack/all"

ENDPOINT = "/config/endpoint"
ENDPOINT_ALL = f"{ENDPOINT}/all"
ENDPOINT_BY_IP = f"{ENDPOINT}/epipaddress/{{ip}}"
ENDPOINT_HOST_STATE = "/config/endpointhoststate"

CISTATE = "/config/cistate"
CISTATE_ALL = f"{CISTATE}/all"
CISTATE_INSTANCE = f"{CISTATE}/instance/{{instance}}"

PARAMS = "/config/params"
DPSTATS = "/config/dpstats"
PROCESS = "/status/process"

BGP_NEIGH = "/config/bgp/neigh"
BGP_NEIGH_ALL = f"{BGP_NEIGH}/all"
BGP_NEIGH_BY_IP = f"{BGP_NEIGH}/{{ip}}"
BGP_GLOBAL = "/config/bgp/global"


def segment(value: object) -> str:
    """Quote one path segment (names may contain '/', ' ', ...)."""
    return quote(str(value), safe=":@")


def fill(template: str, **params: object) -> str:
    """A template with its {parameters} given, each quoted as one segment."""
    return template.format(**{k: segment(v) for k, v in params.items()})


def lb_rule(ip: str, port: int, port_max: int | None, protocol: str, host: str = "") -> str:
    """The path of one rule (a port range when port_max is another port; of a host's rule
    when host is given)."""
    ranged = port_max is not None and port_max != port
    template = ((LB_HOST_RULE_RANGE if ranged else LB_HOST_RULE) if host
                else (LB_RULE_RANGE if ranged else LB_RULE))
    return fill(template, host=host, ip=ip, port=port, portmax=port_max, proto=protocol)
