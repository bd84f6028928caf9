"""The agent's background work on conntrack: reading the datapath's events
and expiring idle flows.

- EventPump polls the lb_events ring buffer and hands each decoded event to
  the handlers (audit log, reset sender, later HA sync). It never makes the
  datapath wait: when it falls behind, the datapath counts what it could not
  deliver (events-lost) and the pump reports the growth of that counter.
- sweeper() runs the datapath's lb_sweep program periodically; expired flows
  come back through the ring buffer like any other event.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from datapath.layouts import SweepMode
from datapath.libbpf import RingBuffer

from ..dataplane.dataplane import Dataplane

log = logging.getLogger("loxilbd.events")

# A handler gets the ring buffer's record as it is (a struct lb_event): each decodes
# only what it needs (conntrack.flows).
EventHandler = Callable[[bytes], None]

# How long events may wait in the ring buffer when few come (the datapath
# wakes the reader early once many are queued).
POLL_MS = 50


class EventPump:
    def __init__(self, dp: Dataplane, handlers: Sequence[EventHandler],
                 on_lost: Callable[[int], None] | None = None,
                 on_batch: Callable[[], None] | None = None, poll_ms: int = POLL_MS) -> None:
        self.dp = dp
        self.poll_ms = poll_ms
        self.handlers = list(handlers)
        self.on_lost = on_lost
        self.on_batch = on_batch  # after each batch of events (e.g. flush the audit log)
        self.lost_reported = dp.drop_counters()["events-lost"][0]
        self._stop = threading.Event()
        self._ring = RingBuffer(dp.maps["lb_events"].fd, self._handle)
        self._thread = threading.Thread(target=self._run, name="event-pump", daemon=True)

    def start(self) -> EventPump:
        self._thread.start()
        return self

    def _handle(self, data: bytes) -> None:
        for handler in self.handlers:
            try:
                handler(data)
            except Exception:  # one bad handler must not stop the others
                log.exception("event handler %r failed", handler)

    def _check_lost(self) -> None:
        lost = self.dp.drop_counters()["events-lost"][0]
        if lost > self.lost_reported:
            log.warning("datapath dropped %d conntrack events (reader behind)",
                        lost - self.lost_reported)
            if self.on_lost:
                self.on_lost(lost - self.lost_reported)
            self.lost_reported = lost

    def drain(self) -> int:
        """Handle what is queued now (for tests and shutdown)."""
        return self._poll(0)

    def _poll(self, timeout_ms: int) -> int:
        """Wait up to timeout_ms for a wake-up, then take whatever is queued:
        the datapath wakes the reader only when a lot is waiting."""
        handled = self._ring.poll(timeout_ms) if timeout_ms else 0
        handled += self._ring.consume()
        if handled and self.on_batch:
            self.on_batch()
        return handled

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._poll(self.poll_ms) == 0:
                    self._check_lost()
            except Exception:
                log.exception("event pump")
                self._stop.wait(1)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.drain()
        self._check_lost()
        self._ring.close()


class Periodic:
    """Calls `work` every `interval` seconds on a thread of its own (a failure is logged
    and the next round goes on): the idle-flow sweep, the route re-check."""

    def __init__(self, name: str, interval: float, work: Callable[[], object]) -> None:
        self.name = name
        self.interval = interval
        self.work = work
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Periodic:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.work()
            except Exception:
                log.exception("%s", self.name)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def sweeper(dp: Dataplane, interval: float = 1.0) -> Periodic:
    """Expires idle flows every `interval` seconds (the per-packet path only ever checks
    the one flow it touches)."""
    return Periodic("ct-sweeper", interval, lambda: dp.sweep(SweepMode.IDLE))
