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

    def sleep_until_ns(self, t_ns: int) -> None: ...


class MonotonicClock:
    def now_ns(self) -> int:
        return time.monotonic_ns()

    def sleep_until_ns(self, t_ns: int) -> None:
        delay = t_ns - time.monotonic_ns()
        if delay > 0:
            time.sleep(delay / 1e9)


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

    def sleep_until_ns(self, t_ns: int) -> None:
        with self._cv:
            self._cv.wait_for(lambda: self._t >= t_ns)


class FreeRunClock:
    """Offline: sleeping jumps time forward instead of waiting."""

    def __init__(self, start_ns: int = 0):
        self._t = start_ns
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        with self._lock:
            return self._t

    def sleep_until_ns(self, t_ns: int) -> None:
        with self._lock:
            self._t = max(self._t, t_ns)
