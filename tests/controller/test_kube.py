"""The controller's Kubernetes side with the real client against the API fixture
(tests/k8s_api.py, on loopback): list then watch, changes and deletions as they come, a
relist when the watched version is compacted away, the status patch, Warning events."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from k8s_api import ApiServer, load
from lab import wait_for

from loxicmd.controller.kube import Cluster


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServer]:
    server = ApiServer().start()
    yield server
    server.stop()


def test_list_watch_relist_status_and_events(api: ApiServer, tmp_path: Path) -> None:
    api.apply(load("service-web.json"))
    cluster = Cluster(str(api.kubeconfig(tmp_path / "kubeconfig")))
    seen: list[tuple[str, Any]] = []
    lock = threading.Lock()

    def changed(key: str, obj: dict[str, Any] | None) -> None:
        with lock:
            seen.append((key, (obj or {}).get("metadata", {}).get("resourceVersion")))

    informer = cluster.services(changed).start()
    try:
        assert informer.synced.wait(10)
        assert list(informer.objects) == ["default/web"] and informer.lists == 1
        # a change and a new Service come through the watch
        web = load("service-web.json")
        web["metadata"]["annotations"]["loxilb.io/epselect"] = "hash"
        api.apply(web)
        other = load("service-web.json")
        other["metadata"]["name"] = "api"
        api.apply(other)
        wait_for(lambda: "default/api" in informer.objects and informer.objects[
            "default/web"]["metadata"]["annotations"].get("loxilb.io/epselect") == "hash",
            timeout=10, what="the watch's changes")
        api.delete("Service", "default", "api")
        wait_for(lambda: "default/api" not in informer.objects, timeout=10,
                 what="the deletion")
        assert ("default/api", None) in seen
        # history compacted while watching: the watch ends, its version is gone (410), the
        # informer lists again and carries on
        api.compact()
        api.apply(other)
        wait_for(lambda: informer.lists == 2 and "default/api" in informer.objects,
                 timeout=15, what="a relist after the 410")
        assert any("watch=True" in r or "watch=true" in r for r in api.requests)
        # status and events
        cluster.set_ingress("default", "web", ["198.18.100.1"])
        assert api.get("Service", "default", "web")["status"] == {
            "loadBalancer": {"ingress": [{"ip": "198.18.100.1"}]}}
        version = api.version
        cluster.set_ingress("default", "web", ["198.18.100.1"])  # no change: no new version
        assert api.version == version and len(api.patches) == 2
        cluster.warn(api.get("Service", "default", "web"), "InvalidService", "bad annotation")
        (event,) = api.events
        assert event["involvedObject"]["name"] == "web" and event["type"] == "Warning"
        assert event["reason"] == "InvalidService" and event["message"] == "bad annotation"
    finally:
        informer.stop()
