"""Output frames made from an avatar frame by changing one region, without a full copy each time.

A generated frame is the avatar's frame with the mouth region pasted in. Copying the whole frame
for every output frame (6 MB at 1080p) costs more than the paste itself, yet the frame has to be
an array of its own: the one before it may still sit in a sink's queue or an encoder. So output
frames are recycled: a buffer that nobody references any more (no queue, sink, view or "last
frame" holds it: its reference count says so) is handed out again. If it was made from the same
avatar frame and last written in the same region, every pixel outside that region is already
right and the caller overwrites the region: no copy at all. Otherwise the stale region (same
avatar frame) or the whole frame (another one) is copied in first.

Reference counts are exact for Python objects: a buffer someone still holds, directly or
through a view, is never reused; a buffer kept alive only by a not-yet-collected cycle just
looks busy, and a fresh one is made. The pool is bounded: when every buffer is busy, a new one
is made and the oldest busy one is forgotten (its holder keeps it alive as long as it needs it).

`origin(frame)` tells whether a frame is one of these (and of which avatar frame, differing in
which region), so that a crossfade between it and that avatar frame blends the region only.
"""

from __future__ import annotations

import sys
import threading
import weakref
from typing import NamedTuple

import numpy as np


class _Buffer:
    __slots__ = ("array", "source", "region")

    def __init__(self, array: np.ndarray, source: np.ndarray, region: tuple[slice, slice]):
        self.array = array
        self.source = weakref.ref(source)  # the avatar frame it equals outside `region`
        self.region = region


def _pool_only() -> int:
    """sys.getrefcount of a buffer's array held by its _Buffer alone, measured the way `take`
    asks (what getrefcount counts for its own argument differs between Python versions)."""
    a = np.zeros(1, np.uint8)
    buf = _Buffer(a, a, (slice(0), slice(0)))
    del a  # now only `buf` holds it (its weak `source` does not count)
    return sys.getrefcount(buf.array)


_POOL_ONLY = _pool_only()


class Origin(NamedTuple):
    source: np.ndarray  # the avatar frame it equals outside `region`
    region: tuple[slice, slice]
    pool: FramePool  # where a frame made from the same source can be taken


# id(array) -> (the array, weakly; its _Buffer; its pool) for every buffer a pool holds.
_ORIGINS: dict[int, tuple[weakref.ref, _Buffer, FramePool]] = {}


def origin(frame: np.ndarray) -> Origin | None:
    """Where `frame` came from, if a FramePool made it and still holds it; else None."""
    kept = _ORIGINS.get(id(frame))
    if kept is None or kept[0]() is not frame:
        return None
    source = kept[1].source()
    return None if source is None else Origin(source, kept[1].region, kept[2])


class FramePool:
    def __init__(self, max_buffers: int = 6):
        self.max_buffers = max_buffers
        self._buffers: list[_Buffer] = []
        self.full_copies = 0  # frames that had to be copied whole (counted for the stats and tests)
        self._lock = threading.Lock()  # a renderer shared by two engines (one stopping, one starting)

    def take(self, base: np.ndarray, region: tuple[slice, slice]) -> np.ndarray:
        """A frame of its own that equals `base` everywhere except possibly inside `region`,
        which the caller is about to overwrite completely."""
        with self._lock:
            return self._take(base, region)

    def _take(self, base: np.ndarray, region: tuple[slice, slice]) -> np.ndarray:
        for buf in self._buffers:
            if sys.getrefcount(buf.array) > _POOL_ONLY:
                continue  # still in use downstream
            if buf.source() is base:
                if buf.region != region:
                    buf.array[buf.region] = base[buf.region]  # the old region back to the avatar's pixels
                    buf.region = region
                return buf.array
            if buf.array.shape == base.shape:
                np.copyto(buf.array, base)
                buf.source, buf.region = weakref.ref(base), region
                self.full_copies += 1
                return buf.array
        self.full_copies += 1
        array = base.copy()
        buf = _Buffer(array, base, region)
        self._buffers.append(buf)
        _ORIGINS[id(array)] = (weakref.ref(array), buf, self)
        if len(self._buffers) > self.max_buffers:
            gone = self._buffers.pop(0)  # all busy: the one held longest is left to its holder
            _ORIGINS.pop(id(gone.array), None)
        return array

    def __del__(self) -> None:
        for buf in self._buffers:
            _ORIGINS.pop(id(buf.array), None)
