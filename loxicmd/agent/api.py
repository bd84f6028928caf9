"""The agent's REST API (LoxiLB-compatible paths and bodies; see api.md)."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from loxicmd.names import API_BASE_PATH, PROTOCOLS

from .config_api import SUCCESS, config_router, json_body
from .endpoints import EndpointTable
from .model import InvalidInput
from .rules import ApiError, FlowFilter, RuleTable

log = logging.getLogger("loxilbd.api")

VERSION = "0.1.0"


def _error(status: int, result: str, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "message": message, "result": result}, status_code=status)


def _port(value: str, field: str, lo: int = 1) -> int:
    try:
        port = int(value)
    except ValueError:
        raise InvalidInput(field, f"{value!r} is not an integer; allowed: {lo}..65535") from None
    if not lo <= port <= 65535:
        raise InvalidInput(field, f"{port} is out of range; allowed: {lo}..65535")
    return port


def _ip(value: str, field: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise InvalidInput(field, f"{value!r} is not a valid IP address") from None


def _proto(value: str) -> str:
    if value.lower() not in PROTOCOLS:
        raise InvalidInput("protocol", f"{value!r} is unknown; allowed: {', '.join(PROTOCOLS)}")
    return value.lower()


def _block(value: str | None) -> int:
    if value in (None, ""):
        return 0
    try:
        block = int(value)
    except ValueError:
        raise InvalidInput("block", f"{value!r} is not an integer; "
                           "allowed: 0..4294967295") from None
    if not 0 <= block <= 2**32 - 1:
        raise InvalidInput("block", f"{block} is out of range; allowed: 0..4294967295")
    return block


def _positive(value: str, field: str, hi: int = 1_000_000) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= hi:
        raise InvalidInput(field, f"{value!r} is not an integer in 1..{hi}")
    return number


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

    @app.get(f"{base}/config/endpoint/all")
    def list_endpoints() -> dict[str, Any]:
        return {"Attr": endpoints.api_list()}

    @app.post(f"{base}/config/endpoint")
    async def create_endpoint(request: Request) -> dict[str, str]:
        endpoints.create(await json_body(request))
        return SUCCESS

    @app.delete(f"{base}/config/endpoint/epipaddress/{{ip}}")
    def delete_endpoint(ip: str, name: str | None = None, probe_type: str | None = None,
                        probe_port: str | None = None) -> dict[str, str]:
        endpoints.delete(_ip(ip, "epipaddress"), name or None, probe_type or None,
                         _port(probe_port, "probe_port", lo=0) if probe_port else None)
        return SUCCESS

    @app.post(f"{base}/config/endpointhoststate")
    async def set_host_state(request: Request) -> dict[str, str]:
        endpoints.set_host_state(await json_body(request))
        return SUCCESS


def create_app(table: RuleTable, token: str | None = None,
               endpoints: EndpointTable | None = None) -> FastAPI:
    app = FastAPI(
        title="loxilbd",
        version=VERSION,
        openapi_url=f"{API_BASE_PATH}/openapi.json",
        docs_url=None,
        redoc_url=None,
    )

    @app.exception_handler(InvalidInput)
    async def invalid_input(_: Request, exc: InvalidInput) -> JSONResponse:
        return _error(400, "invalid-argument", str(exc))

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.result, exc.message)

    @app.exception_handler(RequestValidationError)
    async def request_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        where = ".".join(str(p) for p in exc.errors()[0].get("loc", ())) if exc.errors() else ""
        return _error(400, "invalid-argument", f"{where}: {exc.errors()[0].get('msg', exc)}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        result = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "error")
        detail = exc.detail if exc.status_code != 404 else f"no such path {request.url.path}"
        return _error(exc.status_code, result, str(detail))

    @app.exception_handler(Exception)
    async def bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return _error(500, "internal-error", f"{type(exc).__name__}: {exc}")

    if token:
        @app.middleware("http")
        async def require_token(request: Request, call_next: Any) -> Any:
            if request.url.path != f"{API_BASE_PATH}/version":
                given = request.headers.get("authorization", "")
                given = given.removeprefix("Bearer ").strip()
                if not hmac.compare_digest(given.encode(), token.encode()):
                    return _error(401, "unauthorized", "missing or wrong token in the "
                                  "Authorization header")
            return await call_next(request)

    base = API_BASE_PATH

    @app.get(f"{base}/version")
    def version() -> dict[str, str]:
        return {"version": VERSION, "buildInfo": "loxilbd (python, eBPF TC datapath)"}

    @app.post(f"{base}/config/loadbalancer")
    async def create_lb(request: Request) -> dict[str, str]:
        table.apply(await json_body(request))
        return SUCCESS

    @app.get(f"{base}/config/loadbalancer/all")
    def list_lb() -> dict[str, Any]:
        return {"lbAttr": table.api_list()}

    @app.delete(f"{base}/config/loadbalancer/all")
    def delete_all_lb() -> dict[str, str]:
        table.delete(list(table.records), "")
        return SUCCESS

    @app.delete(f"{base}/config/loadbalancer/name/{{name}}")
    def delete_lb_by_name(name: str) -> dict[str, str]:
        table.delete(table.by_name(name), f"named {name!r}")
        return SUCCESS

    def _delete(ip: str, port: str, portmax: str | None, proto: str, host: str,
                block: str | None) -> dict[str, str]:
        ext = _ip(ip, "externalipaddress")
        lo = _port(port, "port", lo=0)
        hi = _port(portmax, "portmax", lo=0) if portmax is not None else None
        protocol = _proto(proto)
        mark = _block(block)
        keys = table.find(ext, lo, hi, protocol, mark, "" if host == "any" else host)
        table.delete(keys, f"{ext}:{lo if hi is None else f'{lo}-{hi}'}/{protocol}"
                     + (f" mark {mark}" if mark else ""))
        return SUCCESS

    lb_path = f"{base}/config/loadbalancer"

    @app.delete(f"{lb_path}/externalipaddress/{{ip}}/port/{{port}}/protocol/{{proto}}")
    def delete_lb(ip: str, port: str, proto: str, block: str | None = None,
                  bgp: str | None = None) -> dict[str, str]:
        return _delete(ip, port, None, proto, "", block)

    @app.delete(f"{lb_path}/externalipaddress/{{ip}}/port/{{port}}/portmax/{{portmax}}"
                "/protocol/{proto}")
    def delete_lb_range(ip: str, port: str, portmax: str, proto: str, block: str | None = None,
                        bgp: str | None = None) -> dict[str, str]:
        return _delete(ip, port, portmax, proto, "", block)

    @app.delete(f"{lb_path}/hosturl/{{host}}/externalipaddress/{{ip}}/port/{{port}}"
                "/protocol/{proto}")
    def delete_lb_host(host: str, ip: str, port: str, proto: str, block: str | None = None,
                       bgp: str | None = None) -> dict[str, str]:
        return _delete(ip, port, None, proto, host, block)

    @app.get(f"{base}/config/conntrack/all")
    def list_ct(servName: str | None = None, ip: str | None = None,  # noqa: N803 (API name)
                port: str | None = None, state: str | None = None,
                limit: str | None = None, after: str | None = None) -> Any:
        flt = FlowFilter(
            serv_name=servName,
            ip=_ip(ip, "ip") if ip else None,
            port=_port(port, "port") if port else None,
            state=state or None,
        )
        token = _token(after, table.dp.maps["lb_conntrack"].token_size)
        if limit is None:
            # Everything (LoxiLB's clients expect it), streamed page by page.
            return StreamingResponse(_stream_ct(table.conntrack_pages(flt, token)),
                                     media_type="application/json")
        rows, token = table.conntrack_page(flt, _positive(limit, "limit"), token)
        return {"ctAttr": rows, "next": token.hex() if token else ""}

    if endpoints is not None:
        _endpoint_routes(app, endpoints)

    @app.get(f"{base}/config/dpstats")
    def dp_stats() -> dict[str, Any]:
        counters = table.dp.drop_counters()
        return {"dpStats": [{"reason": k, "packets": p, "bytes": b}
                            for k, (p, b) in counters.items()]}

    app.include_router(config_router(table.store.dir, table.dp.pin_dir))
    return app
