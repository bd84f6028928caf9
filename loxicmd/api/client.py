"""The one HTTP client of loxicmd: talks to the agent's REST API (api.md).

Standard library only (``http.client``) to keep start-up fast.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from loxicmd.names import API_BASE_PATH, DEFAULT_API_HOST, DEFAULT_API_PORT


class AgentError(Exception):
    """Base of the errors the client raises."""


class AgentRefused(AgentError):
    """The agent answered with an error status (exit status 1)."""

    def __init__(self, status: int, message: str, body: str) -> None:
        super().__init__(f"agent error (HTTP {status}): {message}")
        self.status = status
        self.message = message
        self.body = body


class AgentUnreachable(AgentError):
    """No usable answer: connection refused, timeout, bad TLS, ... (exit status 3)."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot reach the agent at {address}: {reason}")
        self.address = address
        self.reason = reason


@dataclass(frozen=True)
class Response:
    status: int
    data: Any  # parsed JSON body; None when the body is empty or not JSON
    text: str  # raw body text


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"its TLS certificate was not accepted ({exc.verify_message}); give the CA "
                "that signed it (--cacert)")
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or exc})"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the agent closed the connection without answering"
    if isinstance(exc, http.client.HTTPException):
        return f"bad HTTP answer ({type(exc).__name__}: {exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def _error_message(status: int, reason: str, text: str, data: Any) -> str:
    message = text.strip() or reason or "no message"
    if isinstance(data, dict):
        # LoxiLB puts what was wrong in `result` (`message` only names the status)
        for key in ("result", "message", "detail"):
            value = data.get(key)
            if value:
                message = value if isinstance(value, str) else json.dumps(value)
                break
    if status == 405 or (status == 404 and "path" in message.lower()):
        message += " (this agent does not implement this API)"
    return message


class Client:
    """One agent address; every call is one request on a fresh connection."""

    def __init__(
        self,
        host: str = DEFAULT_API_HOST,
        port: int = DEFAULT_API_PORT,
        *,
        protocol: str = "http",
        timeout: float = 10.0,
        token: str | None = None,
        cafile: str | None = None,
        debug: Callable[[str], None] | None = None,
    ) -> None:
        self.host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        self.port = port
        self.protocol = protocol
        self.timeout = timeout
        self.token = token
        self.cafile = cafile  # https: the CA that signed the agent's certificate
        self._debug = debug

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.protocol}://{host}:{self.port}"

    def url(self, path: str, query: Mapping[str, Any] | None = None) -> str:
        """The request target: base path + path + query (None values dropped)."""
        target = API_BASE_PATH + path
        if query:
            pairs = {k: _query_value(v) for k, v in query.items() if v is not None}
            if pairs:
                target += "?" + urlencode(pairs)
        return target

    def _connection(self) -> http.client.HTTPConnection:
        if self.protocol == "https":
            context = ssl.create_default_context(cafile=self.cafile)
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                               context=context)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Response:
        """Send one request; 2xx -> Response, else AgentRefused / AgentUnreachable."""
        target = self.url(path, query)
        headers = {"Accept": "application/json"}
        payload: bytes | None = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self._debug:
            self._debug(f"> {method} {self.address}{target}")
            if payload is not None:
                self._debug(f"> {payload.decode()}")
        started = time.monotonic()
        conn = self._connection()
        try:
            conn.request(method, target, body=payload, headers=headers)
            answer = conn.getresponse()
            raw = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            raise AgentUnreachable(self.address, _reason(exc, self.timeout)) from exc
        finally:
            conn.close()
        text = raw.decode("utf-8", errors="replace")
        if self._debug:
            elapsed = (time.monotonic() - started) * 1000
            self._debug(f"< {answer.status} {answer.reason} ({len(raw)} bytes, {elapsed:.1f} ms)")
        try:
            data = json.loads(text) if text.strip() else None
        except ValueError:
            data = None
        if not 200 <= answer.status < 300:
            message = _error_message(answer.status, answer.reason, text, data)
            raise AgentRefused(answer.status, message, text)
        return Response(answer.status, data, text)

    def get(self, path: str, *, query: Mapping[str, Any] | None = None) -> Response:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any, *, query: Mapping[str, Any] | None = None) -> Response:
        return self.request("POST", path, query=query, body=body)

    def delete(self, path: str, *, query: Mapping[str, Any] | None = None) -> Response:
        return self.request("DELETE", path, query=query)


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
