"""A Kubernetes API server for the controller's tests: it speaks the API's wire format for
what the controller uses (list and watch of Services and EndpointSlices, merge patches of
a Service's status, events), over real HTTP, so that the controller runs with the real
``kubernetes`` client, unchanged.

- Lists answer ``{"kind": "ServiceList", "metadata": {"resourceVersion"}, "items"}`` (items
  without kind, as the API server writes them).
- ``?watch=true&resourceVersion=N`` streams (chunked) one JSON event per line, every change
  after N, then waits for more until ``timeoutSeconds``, with a BOOKMARK (the present
  version) after each idle second when ``allowWatchBookmarks``; a version older than the
  last compaction gets the API's ERROR event with a 410 Status, as etcd's compaction does.
- Status patches are JSON merge or strategic merge patches (the same for what is patched
  here: a list is replaced whole); one that changes nothing keeps the resourceVersion.
- Every change bumps one resourceVersion counter, written into the object's metadata.
- ``compact()`` forgets the history up to and including the present version (as a
  compaction after one more write would) and ends every open watch: the clients come back
  with a version that is gone, and must list again.

The objects the tests load are in ``tests/k8s/``: Services and EndpointSlices as
``kubectl get -o json`` prints them.
"""

from __future__ import annotations

import copy
import ctypes
import json
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

OBJECTS = Path(__file__).resolve().parent / "k8s"

KINDS = {  # list path -> (kind, apiVersion, namespaced path segment)
    "/api/v1/services": ("Service", "v1", "services"),
    "/apis/discovery.k8s.io/v1/endpointslices": ("EndpointSlice", "discovery.k8s.io/v1",
                                                 "endpointslices"),
}
KIND_PATHS = {kind: path for path, (kind, _, _) in KINDS.items()}

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def load(name: str) -> dict[str, Any]:
    """A recorded object from tests/k8s/."""
    return json.loads((OBJECTS / name).read_text())


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class ApiServer:
    def __init__(self) -> None:
        self._lock = threading.Condition()
        self.version = 100
        self.compacted = 0
        self.generation = 0  # bumped by compact(): open watches end
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # kind, ns, name
        self.history: list[tuple[int, str, dict[str, Any]]] = []  # version, type, object
        self.events: list[dict[str, Any]] = []  # Events POSTed
        self.patches: list[tuple[str, dict[str, Any]]] = []  # (path, body)
        self.requests: list[str] = []
        self.httpd: ThreadingHTTPServer | None = None
        self.address = ""

    # -- what tests do -----------------------------------------------------------------
    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object (a new resourceVersion; ADDED or MODIFIED)."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        key = (obj["kind"], meta.get("namespace", "default"), meta["name"])
        with self._lock:
            known = key in self.objects
            if not known:
                meta.setdefault("uid", str(uuid.uuid4()))
            else:
                meta["uid"] = self.objects[key]["metadata"]["uid"]
            self._store(key, obj, "MODIFIED" if known else "ADDED")
        return obj

    def delete(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            obj = self.objects.pop((kind, namespace, name))
            self.version += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self.version)
            self.history.append((self.version, "DELETED", obj))
            self._lock.notify_all()

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            obj = self.objects.get((kind, namespace, name))
            return copy.deepcopy(obj) if obj else None

    def compact(self) -> None:
        with self._lock:
            self.history.clear()
            self.compacted = self.version + 1
            self.generation += 1
            self._lock.notify_all()

    def _store(self, key: tuple[str, str, str], obj: dict[str, Any], kind: str) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.objects[key] = obj
        self.history.append((self.version, kind, copy.deepcopy(obj)))
        self._lock.notify_all()

    # -- serving -----------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", netns: str | None = None) -> ApiServer:
        """Listen on `host` (inside network namespace `netns` when given: the socket is
        made by a thread that enters it)."""
        made: list[ThreadingHTTPServer] = []
        errors: list[BaseException] = []

        def bind() -> None:
            try:
                if netns is not None:
                    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
                    try:
                        if _libc.setns(fd, _CLONE_NEWNET) != 0:
                            raise OSError(ctypes.get_errno(), "setns")
                    finally:
                        os.close(fd)
                made.append(ThreadingHTTPServer((host, 0), _handler(self)))
            except BaseException as exc:
                errors.append(exc)

        # a thread of its own: it stays in the namespace (and ends), the socket with it
        thread = threading.Thread(target=bind)
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        self.httpd = made[0]
        self.httpd.daemon_threads = True
        self.address = f"http://{host}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, name="k8s-api", daemon=True).start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.compact()  # ends the watches
            self.httpd.shutdown()
            self.httpd.server_close()

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "lab",
            "clusters": [{"name": "lab", "cluster": {"server": self.address}}],
            "users": [{"name": "lab", "user": {"token": "lab-token"}}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}],
        }))
        return path

    # -- the API's answers -------------------------------------------------------------
    def list_body(self, path: str) -> dict[str, Any]:
        kind, api_version, _ = KINDS[path]
        with self._lock:
            items = []
            for (k, _, _), obj in sorted(self.objects.items()):
                if k == kind:
                    item = copy.deepcopy(obj)
                    item.pop("kind", None)
                    item.pop("apiVersion", None)
                    items.append(item)
            return {"kind": f"{kind}List", "apiVersion": api_version,
                    "metadata": {"resourceVersion": str(self.version)}, "items": items}

    def watch_events(self, path: str, since: int, timeout: float, write: Any,
                     bookmarks: bool = False) -> None:
        kind, api_version, _ = KINDS[path]
        deadline = time.monotonic() + timeout
        with self._lock:
            generation = self.generation
            if since < self.compacted:
                write({"type": "ERROR", "object": {
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": f"too old resource version: {since} ({self.compacted})",
                    "reason": "Expired", "code": 410}})
                return
        sent = since
        while True:
            with self._lock:
                if self.generation != generation:  # compacted: this watch is over
                    return
                batch = [(v, t, o) for v, t, o in self.history if v > sent and o["kind"] == kind]
                if not batch:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    if not self._lock.wait(min(left, 1.0)) and bookmarks:
                        sent = max(sent, self.version)
                        batch = [(sent, "BOOKMARK", {"kind": kind, "apiVersion": api_version,
                                                     "metadata": {"resourceVersion":
                                                                  str(sent)}})]
                    else:
                        continue
            for version, kind_of_event, obj in batch:
                write({"type": kind_of_event, "object": obj})
                sent = version


def _handler(api: ApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _status(self, code: int, reason: str, message: str) -> None:
            self._send(code, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                              "status": "Failure", "message": message, "reason": reason,
                              "code": code})

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            api.requests.append(f"GET {self.path}")
            if url.path not in KINDS:
                self._status(404, "NotFound", f"the server could not find {url.path}")
                return
            if query.get("watch", "").lower() not in ("true", "1"):
                self._send(200, api.list_body(url.path))
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()

            def write(event: dict[str, Any]) -> None:
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            try:
                api.watch_events(url.path, int(query.get("resourceVersion") or 0),
                                 float(query.get("timeoutSeconds") or 60), write,
                                 query.get("allowWatchBookmarks", "").lower() == "true")
                self.wfile.write(b"0\r\n\r\n")
            except (TimeoutError, BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"null")

        def do_PATCH(self) -> None:  # noqa: N802
            parts = urlsplit(self.path).path.strip("/").split("/")
            body = self._body()
            api.requests.append(f"PATCH {self.path}")
            # /api/v1/namespaces/NS/services/NAME/status
            if len(parts) != 7 or parts[:3] != ["api", "v1", "namespaces"] \
                    or parts[4] != "services" or parts[6] != "status":
                self._status(404, "NotFound", f"the server could not find {self.path}")
                return
            kind = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if kind not in ("application/merge-patch+json",
                            "application/strategic-merge-patch+json"):
                self._status(415, "UnsupportedMediaType",
                             f"the body of the request was in an unknown format ({kind})")
                return
            key = ("Service", parts[3], parts[5])
            with api._lock:
                obj = api.objects.get(key)
                if obj is None:
                    self._status(404, "NotFound", f'services "{parts[5]}" not found')
                    return
                patched = merge_patch(obj, {"status": (body or {}).get("status")})
                api.patches.append((self.path, body))
                if patched != obj:
                    api._store(key, patched, "MODIFIED")
                answer = copy.deepcopy(patched)
            self._send(200, answer)

        def do_POST(self) -> None:  # noqa: N802
            parts = urlsplit(self.path).path.strip("/").split("/")
            body = self._body()
            api.requests.append(f"POST {self.path}")
            if len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] \
                    and parts[4] == "events":
                with api._lock:
                    api.events.append(body)
                self._send(201, {**body, "kind": "Event", "apiVersion": "v1"})
                return
            self._status(404, "NotFound", f"the server could not find {self.path}")

    return Handler
