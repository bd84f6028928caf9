"""The Kubernetes API as the controller uses it, through the official client: Services and
EndpointSlices listed then watched (from the list's resourceVersion; listed again when the
API says the version is gone, 410), a Service's status written, Warning events raised.

``RBAC`` lists every (API group, resource, verb) this module uses: the shipped ClusterRole
must grant exactly those (a test checks it).
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

log = logging.getLogger("loxilb-controller.kube")

WATCH_TIMEOUT_S = 240  # a watch is ended by the server after this and opened again
RETRY_MIN_S, RETRY_MAX_S = 0.5, 30.0
GONE = 410

RBAC = {
    ("", "services", "list"), ("", "services", "watch"),
    ("", "services/status", "patch"),
    ("discovery.k8s.io", "endpointslices", "list"), ("discovery.k8s.io", "endpointslices", "watch"),
    ("", "events", "create"),
}


class Cluster:
    def __init__(self, kubeconfig: str | None) -> None:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig)
        else:
            config.load_incluster_config()
        self.api = client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.discovery = client.DiscoveryV1Api(self.api)

    def services(self, on_change: Callable[[str, dict[str, Any] | None], None]) -> Informer:
        return Informer("services", self.core.list_service_for_all_namespaces, on_change)

    def endpoint_slices(self, on_change: Callable[[str, dict[str, Any] | None], None]
                        ) -> Informer:
        return Informer("endpointslices", self.discovery.list_endpoint_slice_for_all_namespaces,
                        on_change)

    def set_ingress(self, namespace: str, name: str, addresses: list[str]) -> None:
        """status.loadBalancer.ingress of the Service (a merge patch of the status)."""
        body = {"status": {"loadBalancer": {"ingress": [{"ip": a} for a in addresses]}}}
        self.core.patch_namespaced_service_status(name, namespace, body)

    def warn(self, service: dict[str, Any], reason: str, message: str) -> None:
        """A Warning event on the Service (``kubectl describe service`` shows it)."""
        meta = service.get("metadata") or {}
        now = datetime.datetime.now(datetime.UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=f"{meta.get('name')}.{uuid.uuid4().hex[:10]}",
                                         namespace=meta.get("namespace", "default")),
            involved_object=client.V1ObjectReference(
                api_version="v1", kind="Service", name=meta.get("name"),
                namespace=meta.get("namespace"), uid=meta.get("uid"),
                resource_version=meta.get("resourceVersion")),
            reason=reason, message=message, type="Warning", count=1,
            first_timestamp=now, last_timestamp=now,
            source=client.V1EventSource(component="loxilb-controller"))
        try:
            self.core.create_namespaced_event(meta.get("namespace", "default"), event)
        except ApiException as exc:
            log.warning("could not raise the event %r on %s/%s: %s", message,
                        meta.get("namespace"), meta.get("name"), exc.reason)


class Informer:
    """One kind, listed then watched, in a thread; `on_change(key, obj or None)` for every
    object added, changed or deleted (and for each on every relist)."""

    def __init__(self, kind: str, lister: Callable[..., Any],
                 on_change: Callable[[str, dict[str, Any] | None], None]) -> None:
        self.kind = kind
        self.lister = lister
        self.on_change = on_change
        self.objects: dict[str, dict[str, Any]] = {}
        self.synced = threading.Event()
        self.lists = 0
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, name=f"watch-{kind}", daemon=True)

    def start(self) -> Informer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    @staticmethod
    def key(obj: dict[str, Any]) -> str:
        meta = obj.get("metadata") or {}
        return f"{meta.get('namespace', '')}/{meta.get('name', '')}"

    def _list(self) -> str:
        raw = self.lister(_preload_content=False)
        data = json.loads(raw.data)
        fresh = {self.key(o): o for o in data.get("items") or []}
        gone = set(self.objects) - set(fresh)
        self.objects = fresh
        self.lists += 1
        for key in gone:
            self.on_change(key, None)
        for key, obj in fresh.items():
            self.on_change(key, obj)
        self.synced.set()
        return str((data.get("metadata") or {}).get("resourceVersion", ""))

    def _run(self) -> None:
        delay = RETRY_MIN_S
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    version = self._list()
                version = self._watch_from(version)
                delay = RETRY_MIN_S
            except ApiException as exc:
                if exc.status == GONE:
                    log.info("%s: version %s is gone: listing again", self.kind, version)
                    version = ""
                    continue
                log.warning("%s: %s %s; again in %.1f s", self.kind, exc.status, exc.reason,
                            delay)
                self._stop.wait(delay)
                delay = min(2 * delay, RETRY_MAX_S)
            except Exception as exc:  # the API server away, a broken stream: try again
                log.warning("%s: %s; again in %.1f s", self.kind, exc, delay)
                self._stop.wait(delay)
                delay = min(2 * delay, RETRY_MAX_S)

    def _watch_from(self, version: str) -> str:
        """Watch until the server ends the watch; the last version seen."""
        self._watch = watch.Watch()
        # deserialized (the client reads a 410 from `raw_object` only then); the dict is
        # what is used
        # the read timeout ends a connection that died without a word
        for event in self._watch.stream(self.lister, resource_version=version,
                                        timeout_seconds=WATCH_TIMEOUT_S,
                                        allow_watch_bookmarks=True,
                                        _request_timeout=WATCH_TIMEOUT_S + 30):
            if self._stop.is_set():
                break
            obj = event.get("raw_object") or {}
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            kind = event.get("type")
            if kind == "BOOKMARK":
                continue
            key = self.key(obj)
            if kind == "DELETED":
                self.objects.pop(key, None)
                self.on_change(key, None)
            elif kind in ("ADDED", "MODIFIED"):
                self.objects[key] = obj
                self.on_change(key, obj)
        return version


def wait_synced(informers: list[Informer], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    return all(i.synced.wait(max(0.0, deadline - time.monotonic())) for i in informers)
