"""Network-namespace lab for the tests: namespaces, veth links, processes, backends.

Every process that must live in a lab namespace is started with
``nsenter --net=/run/netns/NAME -- ...`` (network namespace only).  ``ip netns exec`` is
never used: it remounts /sys in a private mount namespace, which hides the /sys/fs/bpf pins.

Rules (see shared/spec/lab.md): addresses only in 198.18.0.0/15, all traffic inside
namespaces the test created, unique namespace names, everything torn down even on failure.
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import logging
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

log = logging.getLogger("tests.lab")

T = TypeVar("T")

NETNS_DIR = Path("/run/netns")
NAME_PREFIX = "lx"
IFNAMSIZ = 15
LAB_NET = ipaddress.ip_network("198.18.0.0/15")
LOOPBACK_NET = ipaddress.ip_network("127.0.0.0/8")
TERM_GRACE = 3.0
BACKEND_SCRIPT = Path(__file__).resolve().with_name("backend.py")
_ROLE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


# --------------------------------------------------------------------------- errors


class LabError(RuntimeError):
    """A lab operation failed."""


class CommandError(subprocess.CalledProcessError):
    """A command run inside (or for) a lab namespace failed or timed out."""

    def __init__(
        self,
        cmd: Sequence[str],
        returncode: int | None,
        stdout: str | None = None,
        stderr: str | None = None,
        netns: str | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(returncode if returncode is not None else -1, list(cmd), stdout, stderr)
        self.netns = netns
        self.timeout = timeout

    def __str__(self) -> str:
        where = f" in netns {self.netns}" if self.netns else ""
        cmd = shlex.join(_abbrev(str(c)) for c in self.cmd)
        if self.timeout is not None:
            msg = f"command{where} timed out after {self.timeout}s: {cmd}"
        else:
            msg = f"command{where} exited with status {self.returncode}: {cmd}"
        stderr = (self.stderr or "").strip()
        stdout = (self.stdout or "").strip()
        if stderr:
            msg += f"\nstderr: {stderr[-2000:]}"
        if stdout:
            msg += f"\nstdout: {stdout[-1000:]}"
        return msg


class LabCleanupError(LabError):
    """``Lab.close()`` could not undo everything; ``errors`` lists what failed."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("lab cleanup failed:\n  " + "\n  ".join(errors))
        self.errors = errors


# --------------------------------------------------------------------------- helpers


def _abbrev(arg: str, limit: int = 120) -> str:
    """Shorten long arguments (inline scripts) in error messages."""
    if "\n" in arg or len(arg) > limit:
        return (arg.strip().splitlines() or [""])[0][:60] + " ..."
    return arg


def _as_text(value: str | bytes | None) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def run_root(
    *argv: str, check: bool = True, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run a management command (``ip netns add`` ...) in the root namespace. Never traffic."""
    try:
        cp = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(
            argv, None, _as_text(exc.stdout), _as_text(exc.stderr), timeout=timeout
        ) from None
    if check and cp.returncode != 0:
        raise CommandError(argv, cp.returncode, cp.stdout, cp.stderr)
    return cp


def check_lab_addr(addr: str, allow_loopback: bool = True) -> None:
    """Raise ValueError unless ``addr`` (an address or CIDR) lies in 198.18.0.0/15."""
    ip = ipaddress.ip_interface(addr).ip
    if ip in LAB_NET or (allow_loopback and ip in LOOPBACK_NET):
        return
    raise ValueError(f"{addr!r} is outside the lab range {LAB_NET}")


def _check_host(host: str) -> None:
    if host == "localhost":
        return
    try:
        check_lab_addr(host)
    except ValueError:
        raise ValueError(
            f"lab traffic must aim at {LAB_NET} or loopback, not {host!r}"
        ) from None


def _check_ifname(ifname: str) -> None:
    if not ifname or len(ifname) > IFNAMSIZ or "/" in ifname or ifname.strip() != ifname:
        raise ValueError(f"bad interface name {ifname!r} (1..{IFNAMSIZ} characters)")


def _netns_id(path: Path | str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def pids_in_netns(path: Path | str) -> list[int]:
    """Every process whose network namespace is the one bind-mounted at ``path``."""
    target = _netns_id(path)
    if target is None:
        return []
    me = os.getpid()
    pids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        if _netns_id(f"/proc/{entry}/ns/net") == target:
            pids.append(int(entry))
    return pids


def _proc_stat(pid: int | str) -> tuple[str, int] | None:
    """(state, process group) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[2])
    except (OSError, IndexError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    st = _proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def process_group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_stat(entry)
            if st is not None and st[1] == pgid and st[0] not in ("Z", "X"):
                members.append(int(entry))
    return members


def end_by_stdin(proc: subprocess.Popen[Any], reader: threading.Thread,
                 timeout: float) -> None:
    """End a lab client that stops when its stdin closes (client.py session/streams),
    and wait for it and for the thread reading its output."""
    assert proc.stdin is not None
    try:
        proc.stdin.close()
    except BrokenPipeError:
        pass
    proc.wait(timeout=timeout)
    reader.join(timeout=timeout)


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.1,
    what: str = "condition",
    ignore: tuple[type[BaseException], ...] = (Exception,),
) -> T:
    """Poll ``predicate`` until it returns a truthy value, and return that value.

    Exceptions of the ``ignore`` types count as "not yet" (the last one is reported).
    Raises AssertionError naming ``what`` on timeout.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    last_value: Any = None
    while True:
        try:
            last_value = predicate()
            if last_value:
                return last_value
            last_exc = None
        except ignore as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    msg = f"timed out after {timeout}s waiting for {what}"
    if last_exc is not None:
        msg += f" (last error: {last_exc})"
    else:
        msg += f" (last value: {last_value!r})"
    raise AssertionError(msg)


# --------------------------------------------------------------------------- Netns


class Netns:
    """A named network namespace (``/run/netns/NAME``); commands run through ``nsenter``."""

    def __init__(self, name: str, lab: Lab | None = None) -> None:
        self.name = name
        self.path = str(NETNS_DIR / name)
        self.lab = lab

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    def __str__(self) -> str:
        return self.name

    def argv(self, *argv: str) -> list[str]:
        """The command line that runs ``argv`` inside this network namespace."""
        if not argv:
            raise ValueError("empty command")
        return ["nsenter", f"--net={self.path}", "--", *(str(a) for a in argv)]

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 30,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace; raise CommandError on failure or timeout."""
        cmd = self.argv(*argv)
        try:
            cp = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandError(
                argv, None, _as_text(exc.stdout), _as_text(exc.stderr),
                netns=self.name, timeout=timeout,
            ) from None
        if check and cp.returncode != 0:
            raise CommandError(argv, cp.returncode, cp.stdout, cp.stderr, netns=self.name)
        return cp

    def popen(self, *argv: str, **kw: Any) -> subprocess.Popen[Any]:
        """Start a process inside the namespace, in its own process group.

        Keyword arguments go to ``subprocess.Popen`` (stdin defaults to /dev/null). If the
        namespace belongs to a Lab, the process is tracked and stopped by ``Lab.close()``.
        """
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(*argv), **kw)
        if self.lab is not None:
            self.lab.track(proc)
        return proc

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("ip", *args, check=check)

    def sysctl(self, key: str, value: str | int) -> None:
        """Set a sysctl in this namespace; ``key`` may use dots or slashes."""
        if "/" in key:
            path = "/proc/sys/" + key.strip("/")
            self.run("sh", "-c", 'printf "%s\\n" "$1" > "$2"', "sh", str(value), path)
        else:
            self.run("sysctl", "-q", "-w", f"{key}={value}")

    def ifindex(self, ifname: str) -> int:
        out = self.ip("-j", "link", "show", "dev", ifname).stdout
        return int(json.loads(out)[0]["ifindex"])

    def links(self) -> list[dict[str, Any]]:
        """``ip -j link show`` inside the namespace."""
        return list(json.loads(self.ip("-j", "link", "show").stdout or "[]"))


# --------------------------------------------------------------------------- Lab

_LIVE_LABS: weakref.WeakSet[Lab] = weakref.WeakSet()


class Lab:
    """Owns namespaces, processes and cleanups of one test; ``close()`` undoes everything."""

    def __init__(self) -> None:
        self.id = secrets.token_hex(3)
        self.namespaces: dict[str, Netns] = {}
        self.procs: list[subprocess.Popen[Any]] = []
        self._cleanups: list[Callable[[], object]] = []
        self._workdir: Path | None = None
        self._closed = False
        self._ifseq = 0
        _LIVE_LABS.add(self)

    # -- context manager
    def __enter__(self) -> Lab:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.close()
        except LabCleanupError:
            if exc is None:
                raise
            log.exception("lab %s: cleanup failed while handling %r", self.id, exc)

    def __repr__(self) -> str:
        return f"Lab({self.id!r}, namespaces={list(self.namespaces)})"

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise LabError(f"lab {self.id} is closed")

    # -- resources
    def ns_name(self, role: str) -> str:
        return f"{NAME_PREFIX}{self.id}-{role}"

    @property
    def workdir(self) -> Path:
        """A private temporary directory, removed at close (logs, state dirs...)."""
        if self._workdir is None:
            self._check_open()
            self._workdir = Path(tempfile.mkdtemp(prefix=f"{NAME_PREFIX}{self.id}-"))
            path = self._workdir
            self.register_cleanup(lambda: shutil.rmtree(path, ignore_errors=True))
        return self._workdir

    def track(self, proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        """Have ``close()`` stop ``proc`` (and its process group if it leads one)."""
        self.procs.append(proc)
        if self._closed:
            self._stop_processes([proc], [])
        return proc

    def register_cleanup(self, fn: Callable[[], object]) -> Callable[[], object]:
        """Run ``fn`` at close, in reverse registration order; its errors are logged."""
        self._cleanups.append(fn)
        return fn

    def add_ns(self, role: str) -> Netns:
        self._check_open()
        if not _ROLE_RE.match(role):
            raise ValueError(f"bad role {role!r}")
        if role in self.namespaces:
            raise ValueError(f"lab {self.id} already has a namespace {role!r}")
        ns = Netns(self.ns_name(role), lab=self)
        run_root("ip", "netns", "add", ns.name)
        self.namespaces[role] = ns
        ns.ip("link", "set", "lo", "up")
        return ns

    def ns(self, role: str) -> Netns:
        return self.namespaces[role]

    def link(
        self,
        a: Netns,
        b: Netns,
        a_if: str,
        b_if: str,
        a_cidr: str | None,
        b_cidr: str | None,
    ) -> None:
        """Create a veth pair ``a:a_if <-> b:b_if``, address both ends and set them up."""
        self._check_open()
        for ifname in (a_if, b_if):
            _check_ifname(ifname)
        for cidr in (a_cidr, b_cidr):
            if cidr is not None:
                check_lab_addr(cidr, allow_loopback=False)
        # Created inside ``a`` with the peer placed directly in ``b``: no name ever lives in
        # the root namespace, so parallel labs cannot collide.
        a.ip("link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
        for ns, ifname, cidr in ((a, a_if, a_cidr), (b, b_if, b_cidr)):
            if cidr is not None:
                ns.ip("addr", "add", cidr, "dev", ifname)
            ns.ip("link", "set", ifname, "up")

    # -- teardown
    def _stop_processes(self, procs: list[subprocess.Popen[Any]], errors: list[str]) -> None:
        def signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            except PermissionError:
                pass  # not a group leader (start_new_session=False): signal the process only
            if proc.poll() is None:
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:
                    pass

        for proc in procs:
            try:
                signal_group(proc, signal.SIGTERM)
            except Exception as exc:  # noqa: BLE001 - keep going, report at the end
                errors.append(f"SIGTERM pid {proc.pid}: {exc!r}")
        deadline = time.monotonic() + TERM_GRACE
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in procs:
            try:
                # Children in the group may outlive the leader: kill the group regardless.
                signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=5)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"SIGKILL pid {proc.pid}: {exc!r}")
            try:
                wait_for(
                    lambda pgid=proc.pid: not process_group_members(pgid),
                    timeout=5, interval=0.02, what=f"process group {proc.pid} to die",
                )
            except AssertionError as exc:
                errors.append(str(exc))
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass

    def _kill_strays(self, errors: list[str]) -> None:
        """Kill untracked processes still living in our namespaces (daemons that forked)."""
        strays: list[int] = []
        for ns in self.namespaces.values():
            try:
                strays.extend(pids_in_netns(ns.path))
            except Exception as exc:  # noqa: BLE001
                errors.append(f"scan {ns.name}: {exc!r}")
        if not strays:
            return
        log.warning("lab %s: killing untracked processes %s", self.id, strays)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in strays:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"kill {pid}: {exc!r}")
            deadline = time.monotonic() + (TERM_GRACE if sig == signal.SIGTERM else 5.0)
            while time.monotonic() < deadline and any(pid_alive(p) for p in strays):
                time.sleep(0.05)
            strays = [p for p in strays if pid_alive(p)]
            if not strays:
                return
        errors.append(f"processes survived SIGKILL: {strays}")

    def close(self) -> None:
        """Stop processes, run cleanups (reverse order), delete namespaces. Idempotent.

        Keeps going after failures; raises LabCleanupError at the end if processes or
        namespaces could not be removed (cleanup callables' errors are only logged).
        """
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        try:
            self._stop_processes(list(self.procs), errors)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"stopping processes: {exc!r}")
        self._kill_strays(errors)
        while self._cleanups:
            fn = self._cleanups.pop()
            try:
                fn()
            except Exception:  # noqa: BLE001
                log.exception("lab %s: cleanup %r failed", self.id, fn)
        for ns in reversed(list(self.namespaces.values())):
            try:
                if ns.exists():
                    run_root("ip", "netns", "delete", ns.name)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"delete netns {ns.name}: {exc}")
        _LIVE_LABS.discard(self)
        if errors:
            for err in errors:
                log.error("lab %s: %s", self.id, err)
            raise LabCleanupError(errors)


def close_all_labs() -> list[str]:
    """Close every Lab of this process that is still open; returns their ids."""
    ids = []
    for lab in list(_LIVE_LABS):
        if not lab.closed:
            ids.append(lab.id)
            try:
                lab.close()
            except Exception:  # noqa: BLE001
                log.exception("lab %s: close at exit failed", lab.id)
    return ids


atexit.register(close_all_labs)


# --------------------------------------------------------------------------- traffic helpers


def http_get(ns: Netns, url: str, timeout: float = 5) -> str:
    """GET ``url`` with curl from inside ``ns``; returns the body, raises CommandError."""
    host = urlsplit(url).hostname or ""
    _check_host(host)
    cp = ns.run(
        "curl", "-sS", "--fail", "--noproxy", "*", "--max-time", str(timeout), url,
        timeout=timeout + 10,
    )
    return cp.stdout


_UDP_CLIENT = textwrap.dedent(
    """
    import socket, sys
    host, port, payload, timeout, sport = sys.argv[1:6]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if sport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", int(sport)))
    s.settimeout(float(timeout))
    s.connect((host, int(port)))
    s.send(bytes.fromhex(payload))
    try:
        data = s.recv(65535)
    except socket.timeout:
        sys.stderr.write("timeout: no UDP reply from %s:%s\\n" % (host, port))
        sys.exit(3)
    except ConnectionRefusedError:
        sys.stderr.write("refused: ICMP port unreachable from %s:%s\\n" % (host, port))
        sys.exit(4)
    sys.stdout.write(data.hex())
    """
)


def udp_request(
    ns: Netns,
    host: str,
    port: int,
    payload: bytes,
    timeout: float = 2,
    source_port: int | None = None,
) -> bytes:
    """Send one datagram from inside ``ns`` and return the first reply.

    The client socket is connected, so only a reply coming from ``host:port`` itself is
    accepted (a load balancer must answer from the address the client aimed at).
    Raises CommandError when no reply arrives: exit status 3 ("timeout" in stderr), or 4
    ("refused" in stderr) when an ICMP port unreachable came back instead.
    """
    _check_host(host)
    cp = ns.run(
        sys.executable, "-c", _UDP_CLIENT, host, str(port), payload.hex(), str(timeout),
        "" if source_port is None else str(source_port),
        timeout=timeout + 10,
    )
    return bytes.fromhex(cp.stdout.strip())


_TCP_ECHO_CLIENT = textwrap.dedent(
    """
    import socket, sys
    host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    payload = bytes.fromhex(sys.stdin.read().strip())
    s = socket.create_connection((host, port), timeout=timeout)
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    chunks = []
    while True:
        data = s.recv(65536)
        if not data:
            break
        chunks.append(data)
    sys.stdout.write(b"".join(chunks).hex())
    """
)


def tcp_echo(ns: Netns, host: str, port: int, payload: bytes, timeout: float = 5) -> bytes:
    """Send ``payload`` to a TCP echo server from inside ``ns``; return all bytes read back."""
    _check_host(host)
    cp = ns.run(
        sys.executable, "-c", _TCP_ECHO_CLIENT, host, str(port), str(timeout),
        input=payload.hex(), timeout=timeout + 10,
    )
    return bytes.fromhex(cp.stdout.strip())


_TCP_WAIT = textwrap.dedent(
    """
    import socket, sys, time
    host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            sys.exit(0)
        except OSError as exc:
            last = exc
        if time.monotonic() >= deadline:
            sys.stderr.write("%r\\n" % (last,))
            sys.exit(1)
        time.sleep(0.05)
    """
)


def wait_tcp(ns: Netns, host: str, port: int, timeout: float = 10) -> None:
    """Wait until a TCP connect from inside ``ns`` to ``host:port`` succeeds."""
    _check_host(host)
    cp = ns.run(
        sys.executable, "-c", _TCP_WAIT, host, str(port), str(timeout),
        check=False, timeout=timeout + 10,
    )
    if cp.returncode != 0:
        raise AssertionError(
            f"timed out after {timeout}s waiting for TCP {host}:{port} from {ns.name}: "
            f"{cp.stderr.strip()}"
        )


# --------------------------------------------------------------------------- backends


def start_backend(
    lab: Lab,
    ns: Netns,
    name: str,
    http_port: int = 8080,
    udp_port: int = 8080,
    echo_port: int | None = None,
    bind: str = "0.0.0.0",
    ready_timeout: float = 10,
) -> subprocess.Popen[bytes]:
    """Run tests/backend.py in ``ns`` and wait for its ``ready`` line (stderr goes to a log)."""
    argv = [
        sys.executable, str(BACKEND_SCRIPT), "--name", name,
        "--http-port", str(http_port), "--udp-port", str(udp_port), "--bind", bind,
    ]
    if echo_port is not None:
        argv += ["--echo-port", str(echo_port)]
    logpath = lab.workdir / f"backend-{ns.name}-{name}.log"
    with open(logpath, "wb") as logf:
        proc: subprocess.Popen[bytes] = ns.popen(*argv, stdout=subprocess.PIPE, stderr=logf)
    assert proc.stdout is not None
    deadline = time.monotonic() + ready_timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if proc.poll() is not None or left <= 0:
            why = f"exited with status {proc.returncode}" if proc.poll() is not None else (
                f"not ready after {ready_timeout}s"
            )
            raise LabError(
                f"backend {name} in {ns.name} {why}: {logpath.read_text(errors='replace')}"
            )
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.2))
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                proc.wait(timeout=2)
                continue
            buf += chunk
    if buf.split(b"\n", 1)[0].strip() != b"ready":
        raise LabError(f"backend {name} in {ns.name} said {buf!r} instead of 'ready'")
    return proc


@dataclass
class Topology:
    client: Netns
    lb: Netns
    backends: list[Netns]
    backend_ips: list[str]
    lb_ifaces: list[str]
    client_ip: str
    lb_client_side_ip: str
    backend_names: list[str] = field(default_factory=list)
    lb_backend_side_ips: list[str] = field(default_factory=list)
    backend_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    http_port: int = 8080
    udp_port: int = 8080
    echo_port: int | None = None
    # Every client host, the first being ``client`` (see ``tcplb_topology(n_clients=...)``).
    clients: list[Netns] = field(default_factory=list)
    client_ips: list[str] = field(default_factory=list)
    lb_client_side_ips: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.clients:
            self.clients = [self.client]
            self.client_ips = [self.client_ip]
            self.lb_client_side_ips = [self.lb_client_side_ip]


MAX_CLIENTS = 9


def tcplb_topology(
    lab: Lab,
    n_backends: int = 3,
    http_port: int = 8080,
    udp_port: int = 8080,
    echo_port: int | None = None,
    n_clients: int = 1,
) -> Topology:
    """client(s) --- lb --- srv1..srvN, plain routing through lb, backends running and verified.

    client eth0 198.18.1.2/24 <-> lb lbc 198.18.1.1/24;
    with ``n_clients`` > 1, client{j} eth0 198.18.{j}.2/24 <-> lb lbc{j} 198.18.{j}.1/24 for
    j in 2..n_clients (``topo.clients``, ``topo.client_ips``; the LB's client-side interfaces
    come first in ``lb_ifaces``);
    lb lbs{i} 198.18.{10+i}.1/24 <-> srv{i} eth0 198.18.{10+i}.2/24 (backend name server{i}).
    """
    if not 1 <= n_backends <= 200:
        raise ValueError("n_backends must be in 1..200")
    if not 1 <= n_clients <= MAX_CLIENTS:
        raise ValueError(f"n_clients must be in 1..{MAX_CLIENTS}")
    client = lab.add_ns("client")
    lb = lab.add_ns("lb")
    lb.sysctl("net.ipv4.ip_forward", 1)
    lb.sysctl("net.ipv4.conf.all.rp_filter", 0)
    lb.sysctl("net.ipv4.conf.default.rp_filter", 0)

    client_ip, lb_client_side_ip = "198.18.1.2", "198.18.1.1"
    lab.link(client, lb, "eth0", "lbc", f"{client_ip}/24", f"{lb_client_side_ip}/24")
    client.ip("route", "add", "default", "via", lb_client_side_ip)

    topo = Topology(
        client=client, lb=lb, backends=[], backend_ips=[], lb_ifaces=["lbc"],
        client_ip=client_ip, lb_client_side_ip=lb_client_side_ip,
        http_port=http_port, udp_port=udp_port, echo_port=echo_port,
    )
    for j in range(2, n_clients + 1):
        other = lab.add_ns(f"client{j}")
        ip, lb_ip, lb_if = f"198.18.{j}.2", f"198.18.{j}.1", f"lbc{j}"
        lab.link(other, lb, "eth0", lb_if, f"{ip}/24", f"{lb_ip}/24")
        other.ip("route", "add", "default", "via", lb_ip)
        topo.clients.append(other)
        topo.client_ips.append(ip)
        topo.lb_client_side_ips.append(lb_ip)
        topo.lb_ifaces.append(lb_if)
    for i in range(1, n_backends + 1):
        srv = lab.add_ns(f"srv{i}")
        lb_ip, srv_ip, lb_if = f"198.18.{10 + i}.1", f"198.18.{10 + i}.2", f"lbs{i}"
        lab.link(lb, srv, lb_if, "eth0", f"{lb_ip}/24", f"{srv_ip}/24")
        srv.ip("route", "add", "default", "via", lb_ip)
        topo.backends.append(srv)
        topo.backend_ips.append(srv_ip)
        topo.lb_backend_side_ips.append(lb_ip)
        topo.lb_ifaces.append(lb_if)
        topo.backend_names.append(f"server{i}")
    for ifname in topo.lb_ifaces:
        lb.sysctl(f"net.ipv4.conf.{ifname}.rp_filter", 0)

    for srv, name in zip(topo.backends, topo.backend_names, strict=True):
        topo.backend_procs.append(
            start_backend(lab, srv, name, http_port, udp_port, echo_port=echo_port)
        )
    for ip, name in zip(topo.backend_ips, topo.backend_names, strict=True):
        url = f"http://{ip}:{http_port}/"
        wait_for(
            lambda url=url, name=name: http_get(lb, url, timeout=2).strip() == name,
            timeout=10, interval=0.1, what=f"backend {name} answering {url} from {lb.name}",
        )
    return topo
