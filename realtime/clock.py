"""Media clocks: where "now" comes from, so the same engine runs live, offline and under test.

All times are integer nanoseconds. `MonotonicClock` is the real thing; `ManualClock` only
moves when a test advances it; `FreeRunClock` never waits (offline rendering runs as fast as
the machine allows while timestamps stay those of real time).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class MediaClock(Protocol):
    def now_ns(self) -> int: ...

    def sleep_until_ns(self, t_ns: int, cancel: threading.Event | None = None) -> None:
        """Returns at `t_ns`, or early once `cancel` is set (a thread that is stopping)."""


class MonotonicClock:
    def now_ns(self) -> int:
        return time.monotonic_ns()

    def sleep_until_ns(self, t_ns: int, cancel: threading.Event | None = None) -> None:
        delay = t_ns - time.monotonic_ns()
        if delay > 0:
            if cancel is None:
                time.sleep(delay / 1e9)
            else:
                cancel.wait(delay / 1e9)


class ManualClock:
    """A clock for tests: `advance_ns` moves time and wakes anyone sleeping past it."""

    def __init__(self, start_ns: int = 0):
        self._t = start_ns
        self._cv = threading.Condition()

    def now_ns(self) -> int:
        with self._cv:
            return self._t

    def advance_ns(self, dt_ns: int) -> None:
        with self._cv:
            self._t += dt_ns
            self._cv.notify_all()

    def sleep_until_ns(self, t_ns: int, cancel: threading.Event | None = None) -> None:
        with self._cv:
            # The cancel event cannot notify this condition: look at it every 50 ms of real time.
            while not self._cv.wait_for(
                lambda: self._t >= t_ns or (cancel is not None and cancel.is_set()), None if cancel is None else 0.05
            ):
                pass


class FreeRunClock:
    """Offline: sleeping jumps time forward instead of waiting."""

    def __init__(self, start_ns: int = 0):
        self._t = start_ns
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        with self._lock:
            return self._t

    def sleep_until_ns(self, t_ns: int, cancel: threading.Event | None = None) -> None:
        with self._lock:
            self._t = max(self._t, t_ns)
