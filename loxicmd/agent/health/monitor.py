"""Endpoint health probes: one asyncio loop, in its own thread, probes every endpoint.

:class:`HealthMonitor` runs every probe of the agent as an asyncio task on ONE event loop in
one thread (no thread per endpoint). A probe is identified by its :class:`ProbeSpec`: equal
specs are probed once, whoever asks (``add``/``remove`` are reference-counted).

How each kind of probe is carried out is in ``probes`` (a registry by name); what a
probe is and which specs are valid, in ``spec``.

State machine (the timings the agent and the tests rely on)
-----------------------------------------------------------
- A new probe starts ``ok`` (assumed healthy): a rule's endpoints take traffic from the
  start, as in LoxiLB, rather than black-holing a whole service until every first probe
  answered. Its first probe runs within ``min(interval, 1 s)`` of ``add`` (a deterministic
  per-spec offset that spreads many probes added at once), so a bad endpoint reaches ``nok``
  within ``interval x retries + timeout`` of ``add``.
- Probes run at ``t0 + k x interval`` (``t0``: the first probe's time), never "interval after
  the previous one ended", so timers do not drift; a slot missed because the loop was stalled
  is skipped, not run late twice.
- ``ok`` -> ``nok`` after ``retries`` consecutive failures; any success resets the count.
  Detection after a fault: at most ``interval x retries + timeout``.
- While ``nok``, the period backs off: x2, x4, x8 of ``interval``, capped at ``min(8 x
  interval, 60 s)`` rounded down to a whole number of intervals (no back-off from 60 s up),
  still on the ``t0 + k x interval`` grid.
- ``nok`` -> ``ok`` needs two consecutive successes: on the first success while down a
  confirmation probe runs ``min(interval / 2, 1 s)`` later; if it succeeds too, the endpoint
  is ``ok`` and probing returns to every ``interval`` on the grid; if it fails, the endpoint
  stays ``nok`` and the back-off goes on growing. An endpoint that alternates good/bad thus
  never flips: while ``ok`` it never reaches two consecutive failures, while ``nok`` it
  never confirms.
- Recovery is detected at most ``backoff + timeout + confirm + timeout`` after the endpoint
  comes back (backoff: the period reached, at most the cap above).
- ``on_change(spec, healthy)`` is called from the monitor's thread on each state change
  (never for the initial ``ok``). It must not block for long (it delays other probes), and
  it is never called with the monitor's lock held, so it may call back into the monitor.

Delays (min/avg/max, milliseconds) are those of successful probes since ``add``: the connect
time for a tcp probe without ``resp``, otherwise the time until the verdict (reply seen,
response read), the RTT for ping.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .probes import ProbeFailed, ProbeKind, oserror_text, probe_kinds
from .spec import ProbeSpec, validate

log = logging.getLogger("loxilbd.health")

BACKOFF_FACTOR_MAX = 8
BACKOFF_CAP_S = 60.0
CONFIRM_MAX_S = 1.0
STAGGER_MAX_S = 1.0
JITTER_SAMPLES = 200_000
_CLONE_NEWNET = 0x40000000


def backoff_factors(interval_s: float) -> list[int]:
    """The successive periods (in intervals) while down: 2, 4, 8 capped at min(8, 60 s)."""
    cap = max(1, min(BACKOFF_FACTOR_MAX, int(BACKOFF_CAP_S // interval_s)))
    factors, f = [], 2
    while f < cap:
        factors.append(f)
        f *= 2
    factors.append(cap)
    return factors


def confirm_delay(interval_s: float) -> float:
    """How long after the first success while down the confirmation probe runs."""
    return min(interval_s / 2, CONFIRM_MAX_S)



@dataclass
class ProbeStatus:
    state: str = "ok"  # ok | nok
    min_delay_ms: float | None = None
    avg_delay_ms: float | None = None
    max_delay_ms: float | None = None
    last_change: float = field(default_factory=time.time)  # wall time of the last state change
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    probes: int = 0
    failures: int = 0
    last_error: str = ""  # of the last failed probe (kept after recoveries)
    last_probe: float | None = None  # wall time the last probe ended
    last_delay_ms: float | None = None
    period_s: float = 0.0  # current period: the interval, or the back-off one while down
    skipped: int = 0  # slots skipped because the loop was late by more than a period


@dataclass(eq=False)
class _Probe:
    spec: ProbeSpec
    status: ProbeStatus
    refs: int = 1
    task: asyncio.Task[None] | None = None
    removed: bool = False
    level: int = 0  # back-off step while down (0: none)
    delay_sum: float = 0.0
    delay_count: int = 0


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():  # cancelled in the same loop iteration the timer fired
        fut.set_result(None)


class HealthMonitor:
    """Probes endpoints on one asyncio loop in its own thread (see the module's docstring).

    ``netns``: the path of a network namespace (``/run/netns/NAME``) the monitor's thread
    enters before it opens any socket; by default the thread stays in the namespace of the
    thread that calls ``start``.
    """

    def __init__(self, on_change: Callable[[ProbeSpec, bool], None], *,
                 netns: str | None = None,
                 kinds: Callable[[], dict[str, ProbeKind]] = probe_kinds) -> None:
        self.on_change = on_change
        self.netns = netns
        self.make_kinds = kinds  # the registry of probe kinds (made on the loop's thread)
        self._lock = threading.Lock()
        self._probes: dict[ProbeSpec, _Probe] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_event: asyncio.Event | None = None
        self._kinds: dict[str, ProbeKind] = {}  # made on the loop's thread (probes)
        self._jitter: deque[float] = deque(maxlen=JITTER_SAMPLES)
        self._late = 0

    # -- life cycle -------------------------------------------------------------
    def start(self) -> None:
        """Start the monitor's thread and loop; the probes added so far begin."""
        if self._thread is not None:
            raise RuntimeError("health monitor already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                if self.netns:
                    _setns(self.netns)
                loop = asyncio.new_event_loop()
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                failure.append(exc)
                ready.set()
                return
            self._loop = loop
            try:
                loop.run_until_complete(self._main(ready))
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="loxilbd-health", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]

    def stop(self) -> None:
        """Stop probing and join the thread (added specs are kept for a later start)."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        stop_event = self._stop_event
        if stop_event is not None:
            try:
                loop.call_soon_threadsafe(stop_event.set)
            except RuntimeError:
                pass  # loop already closed
        thread.join()
        self._thread = None
        self._loop = None

    async def _main(self, ready: threading.Event) -> None:
        self._stop_event = asyncio.Event()
        with self._lock:
            for p in self._probes.values():
                self._spawn(p)
        ready.set()
        try:
            await self._stop_event.wait()
        finally:
            with self._lock:
                tasks = [p.task for p in self._probes.values() if p.task is not None]
                for p in self._probes.values():
                    p.task = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for kind in self._kinds.values():
                kind.close()
            self._kinds = {}

    # -- registry (any thread; never waits for the loop) --------------------------
    def add(self, spec: ProbeSpec, like: ProbeSpec | None = None) -> int:
        """Probe ``spec`` (validated; ValueError otherwise); returns its reference count.

        ``like``: the probe this one takes over from (another period or request for the
        same endpoint): a new probe starts in its state, so an endpoint that was down does
        not come back before a probe says so."""
        validate(spec)
        with self._lock:
            p = self._probes.get(spec)
            if p is not None:
                p.refs += 1
                return p.refs
            p = _Probe(spec, ProbeStatus(period_s=spec.interval_s))
            before = self._probes.get(like) if like is not None else None
            if before is not None and before.status.state == "nok":
                p.status.state, p.status.last_change = "nok", before.status.last_change
                p.status.last_error = before.status.last_error
                p.level = 1
            self._probes[spec] = p
            loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._spawn_locked, p)
            except RuntimeError:
                pass  # loop shutting down: a later start() spawns it
        return 1

    def remove(self, spec: ProbeSpec) -> int:
        """Drop one reference; at zero the probe stops and its status is forgotten.

        Returns the references left (0 also for a spec that was not added)."""
        with self._lock:
            p = self._probes.get(spec)
            if p is None:
                return 0
            p.refs -= 1
            if p.refs > 0:
                return p.refs
            del self._probes[spec]
            p.removed = True
            task, loop = p.task, self._loop
        if task is not None and loop is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:
                pass
        return 0

    def refs(self, spec: ProbeSpec) -> int:
        with self._lock:
            p = self._probes.get(spec)
            return p.refs if p is not None else 0

    def status(self, spec: ProbeSpec) -> ProbeStatus | None:
        """A copy of the spec's status, or None if it is not monitored."""
        with self._lock:
            p = self._probes.get(spec)
            return replace(p.status) if p is not None else None

    def all(self) -> dict[ProbeSpec, ProbeStatus]:
        with self._lock:
            return {s: replace(p.status) for s, p in self._probes.items()}

    def jitter(self, reset: bool = False) -> dict[str, float]:
        """|actual start - scheduled start| of the probes run (since the last reset):
        ``count``, ``p50_ms``, ``p99_ms``, ``max_ms``, and ``skipped`` slots."""
        with self._lock:
            samples = sorted(self._jitter)
            skipped = self._late
            if reset:
                self._jitter.clear()
                self._late = 0
        n = len(samples)

        def pct(q: float) -> float:
            return samples[min(n - 1, int(q * n))] * 1e3 if n else 0.0

        return {"count": float(n), "p50_ms": pct(0.50), "p99_ms": pct(0.99),
                "max_ms": samples[-1] * 1e3 if n else 0.0, "skipped": float(skipped)}

    # -- scheduling (loop thread) -------------------------------------------------
    def _spawn_locked(self, p: _Probe) -> None:
        with self._lock:
            self._spawn(p)

    def _spawn(self, p: _Probe) -> None:
        """Start ``p``'s task (lock held, loop thread)."""
        if p.removed or p.task is not None or p.spec.ptype == "none":
            return
        p.task = asyncio.get_running_loop().create_task(self._run(p))

    @staticmethod
    def _offset(spec: ProbeSpec) -> float:
        frac = zlib.crc32(repr(spec).encode()) / 2**32
        return frac * min(spec.interval_s, STAGGER_MAX_S)

    async def _sleep_until(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        fut = loop.create_future()
        handle = loop.call_at(when, _wake, fut)
        try:
            await fut
        finally:
            handle.cancel()

    @staticmethod
    def _period(p: _Probe) -> float:
        iv = p.spec.interval_s
        return (backoff_factors(iv)[p.level - 1] if p.level else 1) * iv

    async def _run(self, p: _Probe) -> None:
        loop = asyncio.get_running_loop()
        spec, iv = p.spec, p.spec.interval_s
        anchor = loop.time() + self._offset(spec)  # the grid point of the last regular probe
        due = anchor
        try:
            while not p.removed:
                if due > loop.time():
                    await self._sleep_until(loop, due)
                lateness = abs(loop.time() - due)
                ok, delay, err = await self._probe_once(spec)
                if p.removed:
                    return
                changed, confirm = self._record(p, ok, delay, err, lateness)
                now = loop.time()
                if confirm:
                    due = now + confirm_delay(iv)
                else:
                    nxt = anchor + self._period(p)
                    skipped = 0
                    while nxt <= now:
                        nxt += iv
                        skipped += 1
                    if skipped:
                        with self._lock:
                            p.status.skipped += skipped
                            self._late += skipped
                    anchor = due = nxt
                with self._lock:
                    p.status.period_s = due - now if confirm else self._period(p)
                if changed is not None and not p.removed:
                    try:
                        self.on_change(spec, changed)
                    except Exception:  # noqa: BLE001 - a callback must not stop probing
                        log.exception("health on_change callback failed for %s", spec)
        except asyncio.CancelledError:
            pass

    def _record(self, p: _Probe, ok: bool, delay: float | None, err: str,
                lateness: float) -> tuple[bool | None, bool]:
        """Account a probe's result; returns (new health if it changed, confirm next)."""
        changed: bool | None = None
        confirm = False
        with self._lock:
            self._jitter.append(lateness)
            st = p.status
            st.probes += 1
            st.last_probe = time.time()
            if ok:
                st.consecutive_failures = 0
                st.consecutive_successes += 1
                if delay is not None:
                    ms = delay * 1e3
                    st.last_delay_ms = ms
                    p.delay_sum += ms
                    p.delay_count += 1
                    st.min_delay_ms = ms if st.min_delay_ms is None else min(st.min_delay_ms, ms)
                    st.max_delay_ms = ms if st.max_delay_ms is None else max(st.max_delay_ms, ms)
                    st.avg_delay_ms = p.delay_sum / p.delay_count
                if st.state == "nok":
                    if st.consecutive_successes >= 2:
                        st.state, st.last_change, p.level = "ok", time.time(), 0
                        changed = True
                    else:
                        confirm = True
            else:
                st.failures += 1
                st.consecutive_successes = 0
                st.consecutive_failures += 1
                st.last_error = err
                if st.state == "ok" and st.consecutive_failures >= p.spec.retries:
                    st.state, st.last_change, p.level = "nok", time.time(), 1
                    changed = False
                elif st.state == "nok":
                    p.level = min(p.level + 1, len(backoff_factors(p.spec.interval_s)))
        return changed, confirm

    # -- probes (loop thread) -----------------------------------------------------
    async def _probe_once(self, spec: ProbeSpec) -> tuple[bool, float | None, str]:
        """(up, delay in seconds or None, error text) of one probe, within its timeout."""
        if not self._kinds:
            self._kinds = self.make_kinds()
        kind = self._kinds[spec.ptype]
        try:
            async with asyncio.timeout(spec.timeout_s):
                delay = await kind.measure(spec)
            return True, delay, ""
        except TimeoutError:
            if kind.silence_is_up(spec):
                return True, None, ""  # silence is not a failure without an expected reply
            return False, None, f"{spec.ptype}: no answer within {spec.timeout_s:g} s"
        except ProbeFailed as exc:
            return False, None, str(exc)
        except ConnectionRefusedError:
            if spec.ptype == "udp":
                return False, None, "udp: ICMP port unreachable (connection refused)"
            return False, None, f"{spec.ptype}: connection refused"
        except OSError as exc:
            return False, None, f"{spec.ptype}: {oserror_text(exc)}"
        except Exception as exc:  # noqa: BLE001 - a probe bug must not kill the task
            log.exception("health probe %s failed unexpectedly", spec)
            return False, None, f"{spec.ptype}: internal error: {exc!r}"
