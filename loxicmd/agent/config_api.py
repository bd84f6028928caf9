"""Agent API beyond the rules: HA instance states, operating parameters, process status.

``config_router(state_dir, pin_dir)`` is included by ``api.create_app``; errors are raised
as ``InvalidInput`` / ``ApiError`` so they get the app's error body
(``{"code", "message", "result"}``, 400 naming the field).
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import sys
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from loxicmd.names import API_BASE_PATH

from .cistate import CIStateStore
from .model import InvalidInput

LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")
SUCCESS = {"result": "Success"}

log = logging.getLogger("loxilbd.config")


async def json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput("body", f"not valid JSON ({exc})") from None


def log_level() -> str:
    name = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    return str(name).lower()


def set_log_level(body: Any) -> str:
    """Apply ``{"logLevel": ...}`` (key case-insensitive) to the agent's root logger."""
    if not isinstance(body, dict):
        raise InvalidInput("body", f"{type(body).__name__} is not a JSON object")
    fields = {str(k).lower(): v for k, v in body.items()}
    level = fields.get("loglevel")
    if not isinstance(level, str) or level.lower() not in LOG_LEVELS:
        raise InvalidInput("logLevel", f"{level!r} is not a log level; "
                           f"allowed: {', '.join(LOG_LEVELS)}")
    logging.getLogger().setLevel(level.upper())
    log.warning("log level set to %s", level.lower())
    return level.lower()


def _proc_status() -> dict[str, str]:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def _proc_stat() -> list[str]:
    """/proc/self/stat from field 3 (state) on; the command name may hold spaces."""
    with open("/proc/self/stat") as f:
        return f.read().rpartition(")")[2].split()


def _start_time() -> float:
    """The process's start (epoch seconds) from /proc, so uptime counts from exec."""
    ticks = int(_proc_stat()[19])  # field 22: starttime, in clock ticks since boot
    with open("/proc/uptime") as f:
        boot = time.time() - float(f.read().split()[0])
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _kib(status: dict[str, str], *keys: str) -> int:
    return sum(int(status.get(k, "0 kB").split()[0]) for k in keys)


def _cpu_time(seconds: float) -> str:
    """top's TIME+ column: minutes:seconds.hundredths."""
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}:{rest:05.2f}"


def process_status(state_dir: str, pin_dir: str, started: float) -> dict[str, Any]:
    """LoxiLB's ProcessInfoEntry (every field a string, as `top` shows it: memory in KiB,
    CPU and memory in percent), then this agent's own fields."""
    status = _proc_status()
    stat = _proc_stat()
    clk = os.sysconf("SC_CLK_TCK")
    cpu_s = (int(stat[11]) + int(stat[12])) / clk  # utime + stime
    uptime = max(0.0, time.time() - started)
    with open("/proc/meminfo") as f:
        mem_total = int(f.readline().split()[1])  # MemTotal, kB
    rss = _kib(status, "VmRSS")
    return {
        "pid": str(os.getpid()),
        "user": pwd.getpwuid(os.geteuid()).pw_name,
        "priority": stat[15],
        "nice": stat[16],
        "virtMemory": str(_kib(status, "VmSize")),
        "residentSize": str(rss),
        "sharedMemory": str(_kib(status, "RssFile", "RssShmem")),
        "status": stat[0],
        "CPUUsage": f"{100 * cpu_s / uptime if uptime else 0.0:.1f}",
        "MemoryUsage": f"{100 * rss / mem_total if mem_total else 0.0:.1f}",
        "time": _cpu_time(cpu_s),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "uptimeSeconds": int(uptime),
        "threads": int(status.get("Threads", "0")),
        "openFds": len(os.listdir("/proc/self/fd")),
        "stateDir": state_dir,
        "pinDir": pin_dir,
        "logLevel": log_level(),
    }


def config_router(state_dir: str | Path, pin_dir: str) -> APIRouter:
    router = APIRouter(prefix=API_BASE_PATH)
    cistates = CIStateStore(state_dir)
    started = _start_time()

    @router.get("/config/cistate/all")
    def list_cistate() -> dict[str, Any]:
        return {"Attr": cistates.all()}

    @router.post("/config/cistate")
    async def set_cistate(request: Request) -> dict[str, str]:
        entry = cistates.set(await json_body(request))
        log.info("HA instance %s is now %s (vip %s)", entry["instance"], entry["state"],
                 entry["vip"] or "none")
        return SUCCESS

    @router.delete("/config/cistate/instance/{instance}")
    def delete_cistate(instance: str) -> dict[str, str]:
        cistates.delete(instance)
        log.info("HA instance %s removed", instance)
        return SUCCESS

    @router.get("/config/params")
    def get_params() -> dict[str, Any]:
        return {"logLevel": log_level()}

    @router.post("/config/params")
    async def post_params(request: Request) -> dict[str, str]:
        set_log_level(await json_body(request))
        return SUCCESS

    @router.get("/status/process")
    def get_process() -> dict[str, Any]:
        return {"processAttr": [process_status(str(state_dir), pin_dir, started)]}

    return router
