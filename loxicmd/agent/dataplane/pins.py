"""One agent per node's maps, and where they live.

A node's maps are pinned in ``PIN_ROOT/NODE`` on bpffs; the agent holds an exclusive flock on
that directory for its whole life (bpffs holds no regular files, but any directory can be
locked), which the kernel releases however the agent ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil

BPFFS = "/sys/fs/bpf"
PIN_ROOT = f"{BPFFS}/loxilb"  # a node's maps go in PIN_ROOT/NODE


def ensure_bpffs() -> None:
    """Mount bpffs at /sys/fs/bpf when it is not (pins need it)."""
    with open("/proc/self/mounts") as f:
        if any(line.split()[1:3] == [BPFFS, "bpf"] for line in f):
            return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", BPFFS.encode(), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot mount bpffs at {BPFFS}: {os.strerror(err)}")


def unpin(pin_dir: str, parent: str | None = None) -> bool:
    """Remove a node's pinned maps (what `loxilbd --cleanup` does after detaching), and
    `parent` too when that leaves it empty. False when there was nothing to remove."""
    if not os.path.isdir(pin_dir):
        return False
    shutil.rmtree(pin_dir)
    if parent is not None:
        with contextlib.suppress(OSError):  # not empty: other nodes' pins are there
            os.rmdir(parent)
    return True


class NodeBusy(RuntimeError):
    """Another agent runs on this node's pinned maps."""


class NodeLock:
    """One agent per node's maps: an exclusive flock on the pin directory (bpffs holds no
    regular files, but any directory can be locked), released by the kernel when the agent
    dies however it dies. A second agent is told who holds it."""

    def __init__(self, pin_dir: str, node: str) -> None:
        os.makedirs(pin_dir, mode=0o700, exist_ok=True)
        self.fd = os.open(pin_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(self.fd)
            os.close(self.fd)
            raise NodeBusy(f"the maps of node {node!r} in {pin_dir} are in use by "
                           f"{holder}; give this agent a node of its own (--node NAME "
                           "or --bpffs-dir DIR)") from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def agents_in_this_namespace() -> list[str]:
    """Other agents running in this network namespace ("pid N (command line)"): the
    holders of node locks (flocks held by loxilbd processes) whose network namespace is
    ours, wherever their maps are pinned."""
    try:
        ours = os.stat("/proc/self/ns/net").st_ino
        with open("/proc/locks") as f:
            pids = {line.split()[4] for line in f if "FLOCK" in line.split()[1:2]}
    except OSError:
        return []
    found = []
    for pid in sorted(pids, key=lambda p: int(p) if p.isdigit() else 0):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino != ours:
                continue
        except OSError:
            continue
        cmd = _cmdline(pid)
        if "loxilbd" in cmd and "--cleanup" not in cmd:
            found.append(f"pid {pid} ({cmd})")
    return found


def _cmdline(pid: str) -> str:
    """A process's command line ("" when it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as c:
            return c.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _lock_holder(fd: int) -> str:
    """The process holding a flock on `fd` ("pid N: its command line"), from /proc/locks."""
    st = os.fstat(fd)
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if "FLOCK" in fields and wanted in fields:
                    pid = fields[fields.index(wanted) - 1]
                    cmd = _cmdline(pid)
                    return f"pid {pid}" + (f" ({cmd})" if cmd else "")
    except OSError:
        pass
    return "another loxilbd"
