"""The BGP part of the API (LoxiLB's /config/bgp paths; GET of the global settings is ours)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.convertors import StringConvertor, register_url_convertor

from loxicmd.api import paths, wire
from loxicmd.api.wire import UINT32_MAX
from loxicmd.names import API_BASE_PATH

from ..bgp.speaker import BgpSpeaker
from ..errors import ApiError
from ..validate import query_int
from .config import SUCCESS, json_body


class NotAll(StringConvertor):
    """A path segment but the word `all`."""

    regex = "(?!all$)[^/]+"


register_url_convertor("not_all", NotAll())


def bgp_router(speaker: BgpSpeaker) -> APIRouter:
    router = APIRouter(prefix=API_BASE_PATH)

    @router.get(paths.BGP_NEIGH_ALL)
    def list_neighbors() -> dict[str, Any]:
        return {"bgpNeiAttr": speaker.neighbors_view()}

    @router.post(paths.BGP_NEIGH)
    async def add_neighbor(request: Request) -> dict[str, str]:
        speaker.add_neighbor(await json_body(request))
        return SUCCESS

    # `all` is the list's own path (GET only), never an address: DELETE of it is a 405
    @router.delete(paths.BGP_NEIGH_BY_IP.replace("{ip}", "{ip:not_all}"))
    def delete_neighbor(ip: str, remoteAs: str | None = None  # noqa: N803 (API name)
                        ) -> dict[str, str]:
        address = wire.ip_address(ip, "ip_address")
        remote_as = query_int(remoteAs, "remoteAs", 1, UINT32_MAX) if remoteAs else None
        speaker.delete_neighbor(address, remote_as)
        return SUCCESS

    @router.get(paths.BGP_GLOBAL)
    def get_global() -> dict[str, Any]:
        view = speaker.global_view()
        if view is None:
            raise ApiError(404, "BGP is not configured: no global settings (POST "
                           f"{API_BASE_PATH}{paths.BGP_GLOBAL} with routerId and localAs)")
        return view

    @router.post(paths.BGP_GLOBAL)
    async def set_global(request: Request) -> dict[str, str]:
        speaker.set_global(await json_body(request))
        return SUCCESS

    return router
