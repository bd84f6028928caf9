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

from loxicmd.api import paths
from loxicmd.api.wire import check
from loxicmd.names import API_BASE_PATH

from ..errors import InvalidInput
from ..ha.states import HaStates

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
    """Apply ``{"logLevel": ...}`` (key and word in any case) to the agent's root logger."""
    level = str(check("OperParams", body, unknown="ignore")["logLevel"])
    logging.getLogger().setLevel(level.upper())
    log.warning("log level set to %s", level)
    return level


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


def config_router(ha_states: HaStates, state_dir: str, pin_dir: str) -> APIRouter:
    router = APIRouter(prefix=API_BASE_PATH)
    started = _start_time()

    @router.get(paths.CISTATE_ALL)
    def list_ha_states() -> dict[str, Any]:
        return {"Attr": ha_states.all()}

    @router.post(paths.CISTATE)
    async def set_ha_state(request: Request) -> dict[str, str]:
        entry = ha_states.set(await json_body(request))
        log.info("HA instance %s is now %s (vip %s)", entry["instance"], entry["state"],
                 entry["vip"] or "none")
        return SUCCESS

    @router.delete(paths.CISTATE_INSTANCE)
    def delete_ha_state(instance: str) -> dict[str, str]:
        ha_states.delete(instance)
        log.info("HA instance %s removed", instance)
        return SUCCESS

    @router.get(paths.PARAMS)
    def get_params() -> dict[str, Any]:
        return {"logLevel": log_level()}

    @router.post(paths.PARAMS)
    async def post_params(request: Request) -> dict[str, str]:
        set_log_level(await json_body(request))
        return SUCCESS

    @router.get(paths.PROCESS)
    def get_process() -> dict[str, Any]:
        return {"processAttr": [process_status(state_dir, pin_dir, started)]}

    return router
