"""The agent's REST API (LoxiLB-compatible paths and bodies; see api.md)."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from loxicmd.api import paths, wire
from loxicmd.api.wire import UINT32_MAX
from loxicmd.names import API_BASE_PATH, CONNTRACK_STATES, PROTOCOLS

from ..bgp.speaker import BgpSpeaker
from ..conntrack.listing import FlowFilter, FlowListing
from ..errors import ApiError, InvalidInput
from ..ha.states import HaStates
from ..health.endpoints import EndpointTable
from ..lb.table import RuleTable
from ..validate import one_of, query_int
from .bgp import bgp_router
from .config import SUCCESS, config_router, json_body

log = logging.getLogger("loxilbd.api")

VERSION = "0.1.0"


# LoxiLB's words for each status (its clients show `result`, the sentence saying what was
# wrong; some classify by `message`).
STATUS_MESSAGES = {
    400: "Malformed arguments for API call",
    401: "Invalid authentication credentials",
    403: "Capacity insufficient",
    404: "Resource not found",
    405: "Method not allowed",
    409: "Resource conflict: Resource already exists OR dependency not found",
    500: "Internal service error",
    503: "Maintenance mode",
}


def error_body(status: int, result: str, fields: list[str] | None = None) -> dict[str, Any]:
    """LoxiLB's error body: the status, its words, and what was wrong in `result`."""
    body: dict[str, Any] = {"code": status,
                            "message": STATUS_MESSAGES.get(status, "Error"), "result": result}
    if fields:
        body["fields"] = fields
    return body


def _error(status: int, result: str, fields: list[str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, result, fields), status_code=status)


def _token(value: str | None, size: int) -> bytes | None:
    if not value:
        return None
    try:
        token = bytes.fromhex(value)
    except ValueError:
        token = b""
    if len(token) != size:
        raise InvalidInput("after", f"{value!r} is not a token this agent handed out "
                           "(the `next` of a previous page)")
    return token


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """The methods the path of a request has (a 405's Allow header, RFC 9110)."""
    def served(method: str) -> bool:
        scope = {"type": "http", "path": request.url.path, "root_path": "", "method": method}
        return any(route.matches(scope)[0] == Match.FULL for route in app.routes)

    return [m for m in ("GET", "POST", "PUT", "PATCH", "DELETE") if served(m)]


def _stream_ct(pages: Iterator[tuple[list[dict[str, Any]], bytes | None]]) -> Iterator[bytes]:
    yield b'{"ctAttr": ['
    first = True
    for rows, _ in pages:
        for row in rows:
            yield (b"" if first else b",") + json.dumps(row).encode()
            first = False
    yield b"]}"


def _endpoint_routes(app: FastAPI, endpoints: EndpointTable) -> None:
    base = API_BASE_PATH

    @app.get(base + paths.ENDPOINT_ALL)
    def list_endpoints() -> dict[str, Any]:
        return {"Attr": endpoints.api_list()}

    @app.post(base + paths.ENDPOINT)
    async def create_endpoint(request: Request) -> dict[str, str]:
        endpoints.create(await json_body(request))
        return SUCCESS

    @app.delete(base + paths.ENDPOINT_BY_IP)
    def delete_endpoint(ip: str, name: str | None = None, probe_type: str | None = None,
                        probe_port: str | None = None) -> dict[str, str]:
        endpoints.delete(wire.ip_address(ip, "epipaddress"), name or None, probe_type or None,
                         query_int(probe_port, "probe_port", 0, 65535) if probe_port else None)
        return SUCCESS

    @app.post(base + paths.ENDPOINT_HOST_STATE)
    async def set_host_state(request: Request) -> dict[str, str]:
        endpoints.set_host_state(await json_body(request))
        return SUCCESS


@dataclass(frozen=True)
class AgentParts:
    """What the API serves, built by the agent's main and handed over whole."""

    rules: RuleTable
    flows: FlowListing
    endpoints: EndpointTable
    ha: HaStates
    bgp: BgpSpeaker
    state_dir: str
    pin_dir: str


def create_app(parts: AgentParts, token: str | None = None) -> FastAPI:
    table = parts.rules
    app = FastAPI(
        title="loxilbd",
        version=VERSION,
        openapi_url=f"{API_BASE_PATH}/openapi.json",
        docs_url=None,
        redoc_url=None,
    )

    @app.exception_handler(InvalidInput)
    async def invalid_input(_: Request, exc: InvalidInput) -> JSONResponse:
        return _error(400, str(exc), [exc.field])

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def request_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(400, f"{where}: {first.get('msg', 'invalid')}", [where])

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            detail = f"no such path {request.url.path}"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        else:
            detail = str(exc.detail)
        response = _error(exc.status_code, detail)
        if exc.status_code == 405:
            response.headers["Allow"] = ", ".join(_allowed_methods(app, request))
        return response

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        # The details go to the agent's log; the answer says where to look, never a
        # Python exception's name.
        log.exception("internal error in %s %s", request.method, request.url.path)
        return _error(500, f"the agent failed to carry out {request.method} "
                      f"{request.url.path} (the agent's log has the details)")

    if token:
        @app.middleware("http")
        async def require_token(request: Request, call_next: Any) -> Any:
            if request.url.path != f"{API_BASE_PATH}/version":
                given = request.headers.get("authorization", "")
                given = given.removeprefix("Bearer ").strip()
                if not hmac.compare_digest(given.encode(), token.encode()):
                    return _error(401, "invalid token: missing or wrong in the "
                                  "Authorization header")
            return await call_next(request)

    base = API_BASE_PATH

    @app.get(base + paths.VERSION)
    def version() -> dict[str, str]:
        return {"version": VERSION, "buildInfo": "loxilbd (python, eBPF TC datapath)"}

    @app.post(base + paths.LB)
    async def create_lb(request: Request) -> dict[str, str]:
        table.apply(await json_body(request))
        return SUCCESS

    @app.get(base + paths.LB_ALL)
    def list_lb() -> dict[str, Any]:
        return {"lbAttr": table.api_list()}

    @app.delete(base + paths.LB_ALL)
    def delete_all_lb() -> dict[str, str]:
        table.delete_where("", lambda key: True)
        return SUCCESS

    @app.delete(base + paths.LB_NAME)
    def delete_lb_by_name(name: str) -> dict[str, str]:
        with table.lock:
            table.delete(table.book.by_name(name), f"named {name!r}")
        return SUCCESS

    def _delete(ip: str, port: str, portmax: str | None, proto: str, host: str,
                block: str | None) -> dict[str, str]:
        ext = wire.ip_address(ip, "externalipaddress")
        lo = query_int(port, "port", 0, 65535)
        hi = query_int(portmax, "portmax", 0, 65535) if portmax is not None else None
        protocol = one_of(proto.lower(), "protocol", PROTOCOLS, "a protocol")
        mark = query_int(block, "block", 0, UINT32_MAX) if block else 0
        with table.lock:
            keys = table.book.find(ext, lo, hi, protocol, mark, "" if host == "any" else host)
            table.delete(keys, f"{ext}:{lo if hi is None else f'{lo}-{hi}'}/{protocol}"
                         + (f" mark {mark}" if mark else ""))
        return SUCCESS

    @app.delete(base + paths.LB_RULE)
    def delete_lb(ip: str, port: str, proto: str, block: str | None = None,
                  bgp: str | None = None) -> dict[str, str]:
        return _delete(ip, port, None, proto, "", block)

    @app.delete(base + paths.LB_RULE_RANGE)
    def delete_lb_range(ip: str, port: str, portmax: str, proto: str, block: str | None = None,
                        bgp: str | None = None) -> dict[str, str]:
        return _delete(ip, port, portmax, proto, "", block)

    @app.delete(base + paths.LB_HOST_RULE)
    def delete_lb_host(host: str, ip: str, port: str, proto: str, block: str | None = None,
                       bgp: str | None = None) -> dict[str, str]:
        return _delete(ip, port, None, proto, host, block)

    @app.delete(base + paths.LB_HOST_RULE_RANGE)
    def delete_lb_host_range(host: str, ip: str, port: str, portmax: str, proto: str,
                             block: str | None = None, bgp: str | None = None
                             ) -> dict[str, str]:
        return _delete(ip, port, portmax, proto, host, block)

    @app.get(base + paths.CONNTRACK_ALL)
    def list_ct(servName: str | None = None, ip: str | None = None,  # noqa: N803 (API name)
                port: str | None = None, state: str | None = None,
                limit: str | None = None, after: str | None = None) -> Any:
        flt = FlowFilter(
            serv_name=servName,
            ip=wire.ip_address(ip, "ip") if ip else None,
            port=query_int(port, "port", 1, 65535) if port else None,
            state=one_of(state, "state", CONNTRACK_STATES, "a conntrack state") if state else None,
        )
        token = _token(after, parts.flows.token_size)
        if not limit:  # an empty value is not given, as with every filter
            # Everything (LoxiLB's clients expect it), streamed page by page.
            return StreamingResponse(_stream_ct(parts.flows.pages(flt, token)),
                                     media_type="application/json")
        rows, token = parts.flows.page(flt, query_int(limit, "limit", 1, 1_000_000), token)
        return {"ctAttr": rows, "next": token.hex() if token else ""}

    _endpoint_routes(app, parts.endpoints)

    @app.get(base + paths.DPSTATS)
    def dp_stats() -> dict[str, Any]:
        counters = table.dp.drop_counters()
        return {"dpStats": [{"reason": k, "packets": p, "bytes": b}
                            for k, (p, b) in counters.items()]}

    app.include_router(config_router(parts.ha, parts.state_dir, parts.pin_dir))
    app.include_router(bgp_router(parts.bgp))
    _document(app)
    return app


def _document(app: FastAPI) -> None:
    """The OpenAPI document: FastAPI's (paths and parameters) with the request and
    response schemas of the wire contract. Bodies are read by hand (keys of any case, as
    LoxiLB's clients send them), so FastAPI cannot see them."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
            for route in wire.ROUTES:
                op = doc["paths"][API_BASE_PATH + route.path][route.method.lower()]
                op.update(wire.operation(route))
                for param in op.get("parameters", ()):
                    wire.document_parameter(param)
            doc["components"] = wire.openapi_components()
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
