"""The one binding to libbpf (libbpf.so.1) through ctypes.

Covers what the agent and the tests need: open/load an object with its maps
pinned in a directory, TC attach/detach, map operations (per-CPU aware, batch
iteration) and BPF_PROG_TEST_RUN. Every libbpf failure raises LibbpfError with
the errno, the operation and, for loads, the tail of libbpf's log (the
verifier's complaint).
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import errno as errno_mod
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("datapath.libbpf")

_lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

BPF_ANY = 0
BPF_NOEXIST = 1

BPF_MAP_TYPE_ARRAY = 2

BPF_TC_INGRESS = 1
BPF_TC_EGRESS = 2
BPF_TC_F_REPLACE = 1

# enum bpf_map_type values that hold one value per CPU
# PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH, PERCPU_CGROUP_STORAGE
_PERCPU_MAP_TYPES = {5, 6, 10, 21}


class LibbpfError(OSError):
    """A libbpf call failed: errno, the operation, and libbpf's own words when it had any."""

    def __init__(self, err: int, operation: str, detail: str = "") -> None:
        text = f"{operation}: {os.strerror(err)} (errno {err})"
        if detail:
            text += "\n" + detail
        super().__init__(err, text)
        self.operation = operation
        self.detail = detail

    def __str__(self) -> str:
        return self.strerror


# libbpf's log goes to a bounded buffer (for error reports) and to logging.
_LOG_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_log_lines: collections.deque[str] = collections.deque(maxlen=400)
_log_lock = threading.Lock()
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]


@_LOG_CB
def _libbpf_print(level: int, fmt: bytes, args: int) -> int:
    buf = ctypes.create_string_buffer(4096)
    _libc.vsnprintf(buf, len(buf), fmt, args)
    text = buf.value.decode(errors="replace").rstrip("\n")
    with _log_lock:
        _log_lines.extend(text.splitlines())
    log.debug("libbpf: %s", text)
    return 0


_lib.libbpf_set_print.restype = ctypes.c_void_p
_lib.libbpf_set_print.argtypes = [_LOG_CB]
_lib.libbpf_set_print(_libbpf_print)


def _take_log(tail: int = 60) -> str:
    with _log_lock:
        lines = list(_log_lines)[-tail:]
        _log_lines.clear()
    return "\n".join(lines)


def _sig(name: str, restype: Any, *argtypes: Any) -> None:
    fn = getattr(_lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


_vp, _cp, _int, _u32 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32


class _TcHook(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("ifindex", ctypes.c_int),
        ("attach_point", ctypes.c_int),
        ("parent", ctypes.c_uint32),
    ]


class _TcOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("prog_fd", ctypes.c_int),
        ("flags", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("handle", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
    ]


class _TestRunOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class MapInfo(ctypes.Structure):
    """The leading fields of the kernel's struct bpf_map_info (it fills what we size)."""

    _fields_ = [
        ("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32), ("name", ctypes.c_char * 16),
    ]


class _BatchOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t), ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64),
    ]


_sig("bpf_object__open_file", _vp, _cp, _vp)
_sig("bpf_object__load", _int, _vp)
_sig("bpf_object__close", None, _vp)
_sig("bpf_object__find_program_by_name", _vp, _vp, _cp)
_sig("bpf_object__find_map_by_name", _vp, _vp, _cp)
_sig("bpf_object__next_map", _vp, _vp, _vp)
_sig("bpf_program__fd", _int, _vp)
_sig("bpf_map__fd", _int, _vp)
_sig("bpf_map__name", _cp, _vp)
_sig("bpf_map__type", _int, _vp)
_sig("bpf_map__is_internal", ctypes.c_bool, _vp)
_sig("bpf_map__key_size", _u32, _vp)
_sig("bpf_map__value_size", _u32, _vp)
_sig("bpf_map__max_entries", _u32, _vp)
_sig("bpf_map__set_max_entries", _int, _vp, _u32)
_sig("bpf_map__set_pin_path", _int, _vp, _cp)
_sig("bpf_tc_hook_create", _int, ctypes.POINTER(_TcHook))
_sig("bpf_tc_attach", _int, ctypes.POINTER(_TcHook), ctypes.POINTER(_TcOpts))
_sig("bpf_tc_detach", _int, ctypes.POINTER(_TcHook), ctypes.POINTER(_TcOpts))
_sig("bpf_map_update_elem", _int, _int, _vp, _vp, ctypes.c_uint64)
_sig("bpf_map_lookup_elem", _int, _int, _vp, _vp)
_sig("bpf_map_delete_elem", _int, _int, _vp)
_sig("bpf_map_get_next_key", _int, _int, _vp, _vp)
_sig(
    "bpf_map_lookup_batch", _int, _int, _vp, _vp, _vp, _vp,
    ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(_BatchOpts),
)
_sig(
    "bpf_map_update_batch", _int, _int, _vp, _vp,
    ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(_BatchOpts),
)
_sig("bpf_map_create", _int, _int, _cp, _u32, _u32, _u32, _vp)
_sig("bpf_obj_get", _int, _cp)
_sig("bpf_obj_get_info_by_fd", _int, _int, _vp, ctypes.POINTER(_u32))
_sig("bpf_prog_test_run_opts", _int, _int, ctypes.POINTER(_TestRunOpts))
_RB_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_sig("ring_buffer__new", _vp, _int, _RB_CB, _vp, _vp)
_sig("ring_buffer__poll", _int, _vp, _int)
_sig("ring_buffer__consume", _int, _vp)
_sig("ring_buffer__free", None, _vp)
_sig("libbpf_num_possible_cpus", _int)


def _errno_of(ret: int) -> int:
    """libbpf 1.x returns -errno; fall back to errno for the few that return -1."""
    if ret < -1:
        return -ret
    return ctypes.get_errno() or errno_mod.EINVAL


def _check(ret: int, operation: str) -> int:
    if ret < 0:
        raise LibbpfError(_errno_of(ret), operation)
    return ret


def num_possible_cpus() -> int:
    return _check(_lib.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


def open_pinned(path: str) -> int:
    """A new fd of the object pinned at `path` (the caller closes it)."""
    return _check(_lib.bpf_obj_get(path.encode()), f"open pinned {path}")


def pinned_map_info(path: str) -> MapInfo | None:
    """What the kernel says of the map pinned at `path`; None when nothing is pinned there."""
    try:
        fd = open_pinned(path)
    except LibbpfError as exc:
        if exc.errno == errno_mod.ENOENT:
            return None
        raise
    try:
        info = MapInfo()
        size = _u32(ctypes.sizeof(info))
        _check(_lib.bpf_obj_get_info_by_fd(fd, ctypes.addressof(info), ctypes.byref(size)),
               f"info of pinned {path}")
        return info
    finally:
        os.close(fd)


class BpfMap:
    """A map: typed lookups with the ctypes layouts of datapath.layouts."""

    def __init__(self, fd: int, name: str, key_type: type | None, value_type: type | None,
                 *, percpu: bool = False, max_entries: int = 0, owned: bool = False) -> None:
        self.fd = fd
        self.name = name
        self.key_type = key_type
        self.value_type = value_type
        self.max_entries = max_entries
        self.percpu = percpu
        self.ncpus = num_possible_cpus() if percpu else 1
        self._owned = owned  # a map we created ourselves: close its fd with us
        # The kernel lays per-CPU values out at 8-byte strides, one per possible
        # CPU; every other map's values (single lookups and batches alike) are
        # packed at their own size. A wrong stride reads the wrong bytes.
        size = ctypes.sizeof(value_type) if value_type else 0
        self._stride = (size + 7) & ~7 if percpu else size
        self._key_size = ctypes.sizeof(key_type) if key_type else 0

    @classmethod
    def from_object(cls, handle: int, key_type: type | None, value_type: type | None) -> BpfMap:
        name = _lib.bpf_map__name(handle).decode()
        if key_type is not None and value_type is not None:
            for what, ctype, size in (
                ("key", key_type, _lib.bpf_map__key_size(handle)),
                ("value", value_type, _lib.bpf_map__value_size(handle)),
            ):
                if ctypes.sizeof(ctype) != size:
                    raise LibbpfError(
                        errno_mod.EINVAL,
                        f"map {name}: {what} is {size} bytes in the object, "
                        f"{ctypes.sizeof(ctype)} in {ctype.__name__}",
                    )
        return cls(_lib.bpf_map__fd(handle), name, key_type, value_type,
                   percpu=_lib.bpf_map__type(handle) in _PERCPU_MAP_TYPES,
                   max_entries=_lib.bpf_map__max_entries(handle))

    @classmethod
    def create_array(cls, name: str, value_type: type, max_entries: int) -> BpfMap:
        """A new BPF_MAP_TYPE_ARRAY (e.g. an inner map of a map-in-map)."""
        fd = _check(_lib.bpf_map_create(BPF_MAP_TYPE_ARRAY, name.encode()[:15], 4,
                                        ctypes.sizeof(value_type), max_entries, None),
                    f"create map {name}")
        return cls(fd, name, ctypes.c_uint32, value_type, max_entries=max_entries, owned=True)

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def update_batch(self, keys: ctypes.Array[Any], values: ctypes.Array[Any]) -> None:
        """Write many entries in one syscall (BPF_MAP_UPDATE_BATCH)."""
        count = ctypes.c_uint32(len(keys))
        opts = _BatchOpts(sz=ctypes.sizeof(_BatchOpts))
        _check(_lib.bpf_map_update_batch(self.fd, ctypes.addressof(keys),
                                         ctypes.addressof(values), ctypes.byref(count),
                                         ctypes.byref(opts)),
               f"batch update {self.name}")

    def _value_buffer(self) -> ctypes.Array[ctypes.c_char]:
        return ctypes.create_string_buffer(self._stride * self.ncpus)

    def update(self, key: Any, value: Any, flags: int = BPF_ANY) -> None:
        key = self._key(key)
        if self.percpu:
            buf = self._value_buffer()
            for cpu in range(self.ncpus):
                ctypes.memmove(ctypes.addressof(buf) + cpu * self._stride,
                               ctypes.addressof(value), ctypes.sizeof(value))
            ptr = ctypes.addressof(buf)
        else:
            ptr = ctypes.addressof(value)
        _check(_lib.bpf_map_update_elem(self.fd, ctypes.addressof(key), ptr, flags),
               f"update {self.name}")

    def lookup(self, key: Any) -> Any | None:
        """The value, or None when absent. Per-CPU maps give a list (one per CPU)."""
        key = self._key(key)
        buf = self._value_buffer()
        ret = _lib.bpf_map_lookup_elem(self.fd, ctypes.addressof(key), ctypes.addressof(buf))
        if ret < 0:
            if _errno_of(ret) == errno_mod.ENOENT:
                return None
            _check(ret, f"lookup {self.name}")
        return self._decode_value(buf, 0)

    def delete(self, key: Any) -> bool:
        key = self._key(key)
        ret = _lib.bpf_map_delete_elem(self.fd, ctypes.addressof(key))
        if ret < 0:
            if _errno_of(ret) == errno_mod.ENOENT:
                return False
            _check(ret, f"delete from {self.name}")
        return True

    def items(self, batch: int = 4096) -> Iterator[tuple[Any, Any]]:
        """All entries, read with BPF_MAP_LOOKUP_BATCH (one syscall per `batch`)."""
        token: bytes | None = None
        while True:
            page, token = self.page(token, batch)
            yield from page
            if token is None:
                return

    @property
    def token_size(self) -> int:
        """Size of the resume token of batch lookups (hash maps use a bucket index)."""
        return max(ctypes.sizeof(self.key_type), 8)

    def page(self, token: bytes | None, count: int) -> tuple[list[tuple[Any, Any]], bytes | None]:
        """Up to `count` entries (whole hash buckets) from where `token` left
        off, and the token to resume from (None at the end). Entries added or
        removed meanwhile are seen or not, but none is seen twice."""
        if token is not None and len(token) != self.token_size:
            raise ValueError(f"a resume token of {self.name} is {self.token_size} bytes")
        keys = (self.key_type * count)()
        values = ctypes.create_string_buffer(self._stride * self.ncpus * count)
        token_in = ctypes.create_string_buffer(token or b"", self.token_size)
        token_out = ctypes.create_string_buffer(self.token_size)
        opts = _BatchOpts(sz=ctypes.sizeof(_BatchOpts))
        got = ctypes.c_uint32(count)
        ret = _lib.bpf_map_lookup_batch(
            self.fd, None if token is None else ctypes.addressof(token_in),
            ctypes.addressof(token_out), ctypes.addressof(keys),
            ctypes.addressof(values), ctypes.byref(got), ctypes.byref(opts))
        err = _errno_of(ret) if ret < 0 else 0
        if err == errno_mod.ENOSPC and got.value == 0:  # a bucket larger than count
            return self.page(token, count * 2)
        if err not in (0, errno_mod.ENOENT):
            _check(ret, f"batch lookup {self.name}")
        items = [(self.key_type.from_buffer_copy(keys, i * self._key_size),
                  self._decode_value(values, i * self._stride * self.ncpus))
                 for i in range(got.value)]
        return items, None if err == errno_mod.ENOENT else token_out.raw

    def _key(self, key: Any) -> Any:
        return self.key_type(key) if isinstance(key, int) else key

    def _decode_value(self, buf: Any, offset: int) -> Any:
        if not self.percpu:
            return self.value_type.from_buffer_copy(buf, offset)
        return [self.value_type.from_buffer_copy(buf, offset + cpu * self._stride)
                for cpu in range(self.ncpus)]


@dataclass
class ProgTestRunResult:
    retval: int
    data: bytes
    duration_ns: int


class BpfObject:
    """An opened and loaded object. With pin_dir, every map is pinned there
    (and an existing compatible pin is reused, which is how a restarted agent
    picks up the conntrack and rules of the one before it)."""

    def __init__(
        self,
        path: str,
        map_types: dict[str, tuple[type, type]],
        pin_dir: str | None = None,
        max_entries: dict[str, int] | None = None,
    ) -> None:
        self.path = path
        _take_log()
        handle = _lib.bpf_object__open_file(path.encode(), None)
        if not handle:
            raise LibbpfError(ctypes.get_errno() or errno_mod.EINVAL,
                              f"open {path}", _take_log())
        self._handle: int | None = handle
        try:
            self._prepare_maps(pin_dir, max_entries or {})
            ret = _lib.bpf_object__load(handle)
            if ret < 0:
                raise LibbpfError(_errno_of(ret), f"load {path}", _take_log())
            self.maps = {name: BpfMap.from_object(self._map_handle(name), *types)
                         for name, types in map_types.items()}
        except BaseException:
            self.close()
            raise

    def _map_handle(self, name: str) -> int:
        assert self._handle is not None
        handle = _lib.bpf_object__find_map_by_name(self._handle, name.encode())
        if not handle:
            raise LibbpfError(errno_mod.ENOENT, f"map {name} not in {self.path}")
        return handle

    def _prepare_maps(self, pin_dir: str | None, max_entries: dict[str, int]) -> None:
        if pin_dir:
            os.makedirs(pin_dir, mode=0o700, exist_ok=True)
        handle = _lib.bpf_object__next_map(self._handle, None)
        while handle:
            name = _lib.bpf_map__name(handle).decode()
            if name in max_entries:
                _check(_lib.bpf_map__set_max_entries(handle, max_entries[name]),
                       f"resize {name}")
            # .bss/.rodata and friends are private to each loaded program
            if pin_dir and not _lib.bpf_map__is_internal(handle):
                _check(_lib.bpf_map__set_pin_path(handle, f"{pin_dir}/{name}".encode()),
                       f"pin path for {name}")
            handle = _lib.bpf_object__next_map(self._handle, handle)

    def program_fd(self, name: str) -> int:
        assert self._handle is not None
        prog = _lib.bpf_object__find_program_by_name(self._handle, name.encode())
        if not prog:
            raise LibbpfError(errno_mod.ENOENT, f"program {name} not in {self.path}")
        return _check(_lib.bpf_program__fd(prog), f"fd of program {name}")

    def close(self) -> None:
        if self._handle:
            _lib.bpf_object__close(self._handle)
            self._handle = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tc_hook(ifindex: int, direction: int) -> _TcHook:
    return _TcHook(sz=ctypes.sizeof(_TcHook), ifindex=ifindex, attach_point=direction)


def tc_attach(ifindex: int, prog_fd: int, *, handle: int = 1, priority: int = 1,
              direction: int = BPF_TC_INGRESS) -> None:
    """Attach (or replace) the program on the clsact hook of an interface."""
    hook = _tc_hook(ifindex, direction)
    ret = _lib.bpf_tc_hook_create(ctypes.byref(hook))
    if ret < 0 and _errno_of(ret) != errno_mod.EEXIST:
        _check(ret, f"create clsact on ifindex {ifindex}")
    opts = _TcOpts(sz=ctypes.sizeof(_TcOpts), prog_fd=prog_fd, flags=BPF_TC_F_REPLACE,
                   handle=handle, priority=priority)
    _check(_lib.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts)),
           f"attach to ifindex {ifindex}")


def tc_detach(ifindex: int, *, handle: int = 1, priority: int = 1,
              direction: int = BPF_TC_INGRESS) -> bool:
    """Remove our filter; False when it was not there."""
    hook = _tc_hook(ifindex, direction)
    opts = _TcOpts(sz=ctypes.sizeof(_TcOpts), handle=handle, priority=priority)
    ret = _lib.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts))
    if ret < 0:
        if _errno_of(ret) in (errno_mod.ENOENT, errno_mod.EINVAL, errno_mod.ENODEV):
            return False
        _check(ret, f"detach from ifindex {ifindex}")
    return True


def prog_test_run(prog_fd: int, data: bytes, repeat: int = 1,
                  ctx: bytes | None = None) -> ProgTestRunResult:
    """BPF_PROG_TEST_RUN: the verdict, the frame as the program left it, and
    the kernel's average duration per run. `ctx` is the program's context in
    (for TC programs, the leading bytes of a struct __sk_buff)."""
    data_in = ctypes.create_string_buffer(data, len(data))
    data_out = ctypes.create_string_buffer(len(data) + 512)
    ctx_in = ctypes.create_string_buffer(ctx, len(ctx)) if ctx else None
    opts = _TestRunOpts(
        sz=ctypes.sizeof(_TestRunOpts),
        data_in=ctypes.addressof(data_in),
        data_out=ctypes.addressof(data_out),
        data_size_in=len(data),
        data_size_out=len(data_out),
        ctx_in=ctypes.addressof(ctx_in) if ctx_in is not None else None,
        ctx_size_in=len(ctx) if ctx else 0,
        repeat=repeat,
    )
    _check(_lib.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "test run")
    return ProgTestRunResult(opts.retval, data_out.raw[: opts.data_size_out], opts.duration)


class RingBuffer:
    """Consumer of a BPF_MAP_TYPE_RINGBUF: `poll` calls `handler` with each
    record's bytes. Not thread-safe: poll from one thread."""

    def __init__(self, map_fd: int, handler: Callable[[bytes], None]) -> None:
        self._handler = handler
        self._error: BaseException | None = None

        def on_record(_ctx: int, data: int, size: int) -> int:
            try:
                handler(ctypes.string_at(data, size))
            except BaseException as exc:  # noqa: BLE001 (re-raised from poll)
                self._error = exc
                return -1
            return 0

        self._callback = _RB_CB(on_record)  # keep a reference for libbpf
        ptr = _lib.ring_buffer__new(map_fd, self._callback, None, None)
        if not ptr:
            raise LibbpfError(ctypes.get_errno() or errno_mod.EINVAL, "ring_buffer__new")
        self._rb: int | None = ptr

    def poll(self, timeout_ms: int) -> int:
        """Wait up to timeout_ms for records and handle them; returns how many."""
        assert self._rb is not None
        ret = _lib.ring_buffer__poll(self._rb, timeout_ms)
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        if ret < 0 and _errno_of(ret) == errno_mod.EINTR:
            return 0
        return _check(ret, "ring_buffer__poll")

    def consume(self) -> int:
        """Handle every record waiting now, without waiting for a wake-up."""
        assert self._rb is not None
        ret = _lib.ring_buffer__consume(self._rb)
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        return _check(ret, "ring_buffer__consume")

    def close(self) -> None:
        if self._rb:
            _lib.ring_buffer__free(self._rb)
            self._rb = None
