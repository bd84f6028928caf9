"""keepalived's two hooks into the agent.

``loxilbd-notify`` is keepalived's ``notify`` script (keepalived appends ``TYPE NAME STATE
PRIORITY``): it posts the state to the agent's ``/config/cistate`` and keeps the
LoxiLB-style state file (``INSTANCE <name> is in <STATE> state vip <ip>``, one line per
instance). ``loxilbd-ready`` is a ``vrrp_script`` for ``track_script``: it fails (and
keepalived holds the node in FAULT, so it cannot take MASTER) while the agent is down or
has not yet received the conntrack of every live peer.

Both start often and must start fast: the standard library only, no click.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from loxicmd.names import API_BASE_PATH, DEFAULT_API_HOST, DEFAULT_API_PORT

DEFAULT_URL = f"http://{DEFAULT_API_HOST}:{DEFAULT_API_PORT}"
DEFAULT_STATE_FILE = "/etc/shared/keepalive.state"
KEEPALIVED_STATES = ("MASTER", "BACKUP", "FAULT", "STOP")
TIMEOUT_S = 3.0


def _call(url: str, token: str | None, method: str, path: str,
          body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(f"{url.rstrip('/')}{API_BASE_PATH}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    # the agent is local: a proxy from the environment must not carry this
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=TIMEOUT_S) as resp:
        return json.loads(resp.read() or b"null")


def state_line(instance: str, state: str, vip: str) -> str:
    return f"INSTANCE {instance} is in {state} state vip {vip or 'none'}"


def write_state_file(path: Path, instance: str, line: str) -> None:
    """Replace the instance's line (atomically: readers never see half a file)."""
    lines = []
    with contextlib.suppress(FileNotFoundError):
        lines = [ln for ln in path.read_text().splitlines()
                 if ln.split()[:2] != ["INSTANCE", instance]]
    lines.append(line)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL,
                        help=f"the agent's API (default {DEFAULT_URL})")
    parser.add_argument("--token", default=os.environ.get("LOXILBD_TOKEN"),
                        help="API token (env LOXILBD_TOKEN)")


def notify_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="loxilbd-notify",
        description="keepalived notify script: tell loxilbd this node's state of an HA "
                    "instance and record it in the state file.")
    _common(parser)
    parser.add_argument("--instance", default=None,
                        help="the cluster instance (default: keepalived's instance name)")
    parser.add_argument("--vip", default="", help="the instance's VIP, recorded with it")
    parser.add_argument("--state-file", default=DEFAULT_STATE_FILE,
                        help=f"(default {DEFAULT_STATE_FILE}; '' for none)")
    parser.add_argument("type", help="INSTANCE or GROUP (keepalived's first argument)")
    parser.add_argument("name", help="keepalived's instance name")
    parser.add_argument("state", help="MASTER, BACKUP, FAULT or STOP")
    parser.add_argument("priority", nargs="?", default=None)
    args = parser.parse_args(argv)
    state = args.state.upper()
    if state not in KEEPALIVED_STATES:
        parser.error(f"state {args.state!r}; allowed: {', '.join(KEEPALIVED_STATES)}")
    instance = args.instance or args.name
    if args.state_file:
        write_state_file(Path(args.state_file), instance,
                         state_line(instance, state, args.vip))
    body = {"instance": instance, "state": state, **({"vip": args.vip} if args.vip else {})}
    try:
        _call(args.url, args.token, "POST", "/config/cistate", body)
    except (OSError, ValueError) as exc:
        print(f"loxilbd-notify: could not tell the agent at {args.url} that {instance} is "
              f"{state}: {_reason(exc)}", file=sys.stderr)
        return 1
    return 0


def ready_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="loxilbd-ready",
        description="keepalived track script: succeeds once loxilbd answers and holds the "
                    "conntrack of every live peer (always, without --cluster).")
    _common(parser)
    args = parser.parse_args(argv)
    try:
        entries = _call(args.url, args.token, "GET", "/config/cistate/all")["Attr"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"loxilbd-ready: the agent at {args.url} does not answer: {_reason(exc)}",
              file=sys.stderr)
        return 1
    sync = next((e.get("sync") for e in entries if e.get("sync")), None)
    if sync is not None and not sync.get("ready"):
        waiting = [p["peer"] for p in sync.get("peers", [])
                   if p.get("state") == "connected" and p.get("bulk") != "done"]
        print("loxilbd-ready: conntrack sync not finished"
              + (f" (waiting for {', '.join(waiting)})" if waiting else ""), file=sys.stderr)
        return 1
    return 0


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.read().decode(errors='replace')[:200]}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc)


def notify() -> None:
    sys.exit(notify_main())


def ready() -> None:
    sys.exit(ready_main())
