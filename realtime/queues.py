"""Bounded queues whose overflow behaviour is part of their name.

Every edge between threads is one of these, sized in milliseconds of media, so a slow stage
can never make memory or latency grow without bound:
  NEVER_DROP   audio in: it is the clock; a full queue is an overrun, counted and reported
  DROP_OLDEST  frames waiting for a stage: the stalest is least worth showing
  KEEP_LATEST  a sink that only ever wants the newest frame (size 1)
Each item is stamped when queued; the thread that takes it records how long it waited under
the queue's name (realtime.stage_timer), so the stats show every hop's wait.
"""

from __future__ import annotations

import collections
import enum
import threading
import time

from realtime.stage_timer import waited


class Policy(enum.Enum):
    NEVER_DROP = "never_drop"
    DROP_OLDEST = "drop_oldest"
    KEEP_LATEST = "keep_latest"


class Closed(Exception):
    """Raised by `get` once the queue is closed and empty."""


class BoundedQueue:
    def __init__(self, capacity: int, policy: Policy, name: str = ""):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = 1 if policy is Policy.KEEP_LATEST else capacity
        self.policy, self.name = policy, name
        self._items: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self.dropped = 0
        self.overruns = 0

    def put(self, item) -> bool:
        """Never blocks. Returns False if something was dropped or refused to make room."""
        with self._cv:
            if self._closed:
                return False
            ok = True
            if len(self._items) >= self.capacity:
                ok = False
                if self.policy is Policy.NEVER_DROP:
                    # Refusing the newest keeps what is queued contiguous; the source counts it.
                    self.overruns += 1
                    return False
                self._items.popleft()
                self.dropped += 1
            self._items.append((time.perf_counter_ns(), item))
            self._cv.notify()
            return ok

    def put_wait(self, item) -> bool:
        """Blocks while full (back-pressure): for offline runs, where nothing is real time."""
        with self._cv:
            self._cv.wait_for(lambda: len(self._items) < self.capacity or self._closed)
            if self._closed:
                return False
            self._items.append((time.perf_counter_ns(), item))
            self._cv.notify_all()
            return True

    def get(self, timeout_s: float | None = None):
        """Blocks until an item, `timeout_s` (then returns None), or close (raises Closed)."""
        with self._cv:
            if not self._cv.wait_for(lambda: self._items or self._closed, timeout_s):
                return None
            if self._items:
                put_ns, item = self._items.popleft()
                self._cv.notify_all()  # a put_wait may be waiting for room
                waited(self.name, time.perf_counter_ns() - put_ns)
                return item
            raise Closed(self.name)

    def clear(self) -> int:
        """Discard everything queued (an interrupt); returns how many items went."""
        with self._cv:
            n = len(self._items)
            self._items.clear()
            self._cv.notify_all()
            return n

    def snapshot(self) -> list:
        """A copy of what is queued, oldest first, for a consumer deciding whether to start."""
        with self._cv:
            return [item for _, item in self._items]

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def __len__(self) -> int:
        with self._cv:
            return len(self._items)
