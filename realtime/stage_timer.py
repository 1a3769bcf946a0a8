"""Where a frame's CPU goes: per-stage thread CPU and wall time, always on.

A thread binds a StageTimes (its session's, or a shared service's) once; code anywhere on that
thread then times itself with `span(Stage.X)` without being handed anything, so the mel stream,
the generator and the compositor report their own cost wherever they are called from. A thread
with nothing bound records nothing (tests driving an engine by hand, offline tools).

Spans nest and each stage counts its *own* time: a span opened inside another is subtracted
from the outer one, so the stages of a thread add up to the time spent in its outermost spans.
CPU is the thread's (time.thread_time_ns: what this thread burnt, not what others did while it
waited), except for the decoder, whose runtime works on its own thread pool: DECODE counts the
process's CPU during the call (in a process serving many sessions, whatever else ran meanwhile
too); wall is time.perf_counter_ns. Opening and closing a span costs about a microsecond.

Each recording thread writes only its own counters (one slot per thread), so no lock is taken
per span; readers sum the slots. Time spent waiting in a BoundedQueue is recorded by `waited`
under the queue's name (wall only: waiting burns no CPU), and each bound thread's whole CPU time
is kept as the thread last read it (at every span and queue wait), so a thread's total covers
what no stage names: queue hops, fan-out to the sinks, bookkeeping.
"""

from __future__ import annotations

import enum
import threading
import time
import weakref

_NS_PER_MS = 1_000_000


class Stage(str, enum.Enum):
    """The stages of the live path; a `str` enum so reports key them by their value."""

    SCHEDULE = "schedule"  # the worker's own work: resampling, audio history, deciding each frame
    MEL = "mel"  # streaming mel spectrogram and the window copy
    DECODE = "decode"  # the decoder call (runtime included)
    SERVICE_WAIT = "service_wait"  # a session waiting for a shared generator service's answer
    CONVERT = "convert"  # decoder output -> uint8 face (scale, clip, layout, the rows not decoded)
    PASTE = "paste"  # resize, colour match and blend into the output frame
    CROSSFADE = "crossfade"  # fading lips in and out (speech start and end)

    def __str__(self) -> str:
        return self.value


_STAGES = tuple(Stage)
_INDEX = {s: i for i, s in enumerate(_STAGES)}
_PROCESS_CPU = frozenset({_INDEX[Stage.DECODE]})  # work done on the runtime's threads, not the caller's


class _Slot:
    """One thread's counters: calls, CPU ns and wall ns per stage, and queue waits."""

    __slots__ = ("thread", "name", "cpu_at_bind", "cpu_last", "calls", "cpu_ns", "wall_ns", "waits", "stack")

    def __init__(self, thread: threading.Thread):
        n = len(_STAGES)
        self.thread, self.name = weakref.ref(thread), thread.name
        self.cpu_at_bind = self.cpu_last = time.thread_time_ns()
        self.calls, self.cpu_ns, self.wall_ns = [0] * n, [0] * n, [0] * n
        self.waits: dict[str, list[int]] = {}  # queue name -> [gets, wall ns]
        self.stack: list[_Span] = []


class StageTimes:
    """Cumulative per-stage figures for whatever threads bound it; `snapshot()` and `report()`."""

    def __init__(self):
        self._slots: list[_Slot] = []
        self._by_thread: dict[int, _Slot] = {}  # thread ident -> its slot
        self._lock = threading.Lock()  # only to add a slot

    def _slot_of_this_thread(self) -> _Slot:
        """Called on the thread that binds: its slot, made (and its CPU clock read) the first time."""
        me = threading.current_thread()
        slot = self._by_thread.get(threading.get_ident())
        if slot is None or slot.thread() is not me:  # idents are reused once a thread has ended
            slot = _Slot(me)
            with self._lock:
                self._slots.append(slot)
                self._by_thread[threading.get_ident()] = slot
        return slot

    def snapshot(self) -> dict:
        """Totals so far: {"stages": {stage: [calls, cpu_ns, wall_ns]}, "waits": {queue: [gets,
        wall_ns]}, "threads": {thread name: cpu_ns}} (threads of one name are added up)."""
        with self._lock:
            slots = list(self._slots)
        stages = {s.value: [0, 0, 0] for s in _STAGES}
        waits: dict[str, list[int]] = {}
        threads: dict[str, int] = {}
        for slot in slots:
            for i, s in enumerate(_STAGES):
                v = stages[s.value]
                v[0] += slot.calls[i]
                v[1] += slot.cpu_ns[i]
                v[2] += slot.wall_ns[i]
            for name, (n, ns) in dict(slot.waits).items():  # dict(): a copy made under the GIL
                w = waits.setdefault(name, [0, 0])
                w[0] += n
                w[1] += ns
            threads[slot.name] = threads.get(slot.name, 0) + slot.cpu_last - slot.cpu_at_bind
        return {"stages": stages, "waits": waits, "threads": threads}

    def report(self, frames: int) -> dict:
        """The whole run so far: see `between`."""
        return between(None, self.snapshot(), frames)


def between(since: dict | None, now: dict, frames: int) -> dict:
    """From two snapshots (`since` None: the start), per stage: calls and CPU / wall ms per
    output frame (`frames` of them); the mean wait in each queue; each bound thread's CPU ms per
    frame. Stages never entered are left out."""
    base = since or {"stages": {}, "waits": {}, "threads": {}}
    per = max(frames, 1) * _NS_PER_MS
    stages = {}
    for name, (calls, cpu, wall) in now["stages"].items():
        c0, p0, w0 = base["stages"].get(name, (0, 0, 0))
        if calls - c0:
            stages[name] = {
                "calls": calls - c0,
                "cpu_ms_per_frame": round((cpu - p0) / per, 3),
                "wall_ms_per_frame": round((wall - w0) / per, 3),
            }
    waits = {}
    for name, (gets, ns) in now["waits"].items():
        g0, n0 = base["waits"].get(name, (0, 0))
        if gets - g0:
            waits[name] = round((ns - n0) / (gets - g0) / _NS_PER_MS, 3)
    threads = {name: round((ns - base["threads"].get(name, 0)) / per, 3) for name, ns in sorted(now["threads"].items())}
    return {
        "frames": frames,
        "stages": stages,
        "queue_wait_ms_mean": waits,
        "thread_cpu_ms_per_frame": threads,
    }


class _Local(threading.local):
    times: StageTimes | None = None
    slot: _Slot | None = None


_local = _Local()


def bind(times: StageTimes | None) -> None:
    """From now on this thread's spans and queue waits are recorded into `times` (None: nowhere).
    Binding the same StageTimes again is free, so a loop may call it every iteration; binding it
    again after another one (or None) continues this thread's counters."""
    if _local.times is times:
        return
    _local.times = times
    _local.slot = None if times is None else times._slot_of_this_thread()


class _Span:
    __slots__ = ("slot", "i", "cpu0", "pcpu0", "wall0", "child_cpu", "child_wall")

    def __init__(self, slot: _Slot, i: int):
        self.slot, self.i = slot, i
        self.child_cpu = self.child_wall = 0

    def __enter__(self) -> _Span:
        self.slot.stack.append(self)
        if self.i in _PROCESS_CPU:
            self.pcpu0 = time.process_time_ns()
        self.cpu0, self.wall0 = time.thread_time_ns(), time.perf_counter_ns()
        return self

    def __exit__(self, *exc) -> None:
        cpu1, wall = time.thread_time_ns(), time.perf_counter_ns() - self.wall0
        cpu = cpu1 - self.cpu0  # what an outer span must not count as its own
        slot, i = self.slot, self.i
        own_cpu = time.process_time_ns() - self.pcpu0 if i in _PROCESS_CPU else cpu - self.child_cpu
        slot.cpu_last = cpu1
        slot.stack.pop()
        slot.calls[i] += 1
        slot.cpu_ns[i] += own_cpu
        slot.wall_ns[i] += wall - self.child_wall
        if slot.stack:
            outer = slot.stack[-1]
            outer.child_cpu += cpu
            outer.child_wall += wall


class _NoSpan:
    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc) -> None:
        return None


_NO_SPAN = _NoSpan()


def span(stage: Stage) -> _Span | _NoSpan:
    """`with span(Stage.PASTE): ...`: time the block as `stage` on this thread's StageTimes."""
    slot = _local.slot
    if slot is None:
        return _NO_SPAN
    return _Span(slot, _INDEX[stage])


def waited(queue: str, wall_ns: int) -> None:
    """An item spent `wall_ns` in `queue` before this thread took it."""
    slot = _local.slot
    if slot is None:
        return
    slot.cpu_last = time.thread_time_ns()
    w = slot.waits.get(queue)
    if w is None:
        slot.waits[queue] = [1, wall_ns]
    else:
        w[0] += 1
        w[1] += wall_ns
