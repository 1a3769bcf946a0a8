"""One generator shared by every live session of a process: requests in, batches out.

A request names an avatar registered once with the service (its face features stay here: 1.16 MB
per frame is never copied into a request), the avatar frame, the 16-frame mel window and a
deadline on the sessions' clock. One thread runs the decoder:

  * earliest deadline first, and what is already queued goes into one batch (up to `max_batch`);
    on a CPU it never waits for more to arrive (a wait is latency bought for nothing when the
    cores are the bottleneck); `batch_wait_ms` > 0 is for GPUs, where a fuller batch is nearly free;
  * a request whose deadline has passed is not decoded: its future resolves to DROPPED, as the
    capture engine would have dropped the frame itself (see realtime.engine, max_lateness_ms);
  * fair across sessions: a batch takes each session's earliest request before anyone's second,
    so a session that floods the queue cannot push the others out of a batch.

If the thread itself dies (a bug, not a decode error: those go to the requests of that batch),
every queued and later request fails with GeneratorServiceDown, so no session waits on a future
nobody will resolve; ServiceRenderer also bounds its wait by the frame's deadline.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import numpy as np

from models.errors import EngineFailure
from realtime.clock import MediaClock, MonotonicClock
from realtime.protocols import FaceDecoder, FeatureSource
from realtime.stage_timer import StageTimes, bind

log = logging.getLogger(__name__)


class _Dropped:
    def __repr__(self) -> str:
        return "DROPPED"


DROPPED = _Dropped()  # what a dropped request's future resolves to


def _resolve(future: Future, value) -> None:
    """A waiter may cancel its future (asyncio.wrap_future does when the awaiting task is
    cancelled): then nobody wants the answer, and the service must not die of giving it."""
    try:
        future.set_result(value)
    except InvalidStateError:
        pass


def _fail(future: Future, error: BaseException) -> None:
    try:
        future.set_exception(error)
    except InvalidStateError:
        pass


class GeneratorServiceDown(EngineFailure):
    """The service's decoder thread died: no request will be served again by this service."""


@dataclass(frozen=True)
class ServiceConfig:
    max_batch: int = 8
    batch_wait_ms: float = 0.0  # CPU: 0, never wait to fill a batch; GPU nodes may wait a little
    # Requests waiting, all sessions together; a submit past it is dropped at once (policy:
    # refuse newest), since the queue being this deep means every one of them will be late.
    queue_limit: int = 256
    stats_window: int = 2048  # batches kept for the decode-time percentiles


@dataclass
class _Request:
    avatar_id: str
    frame_index: int
    mel: np.ndarray
    deadline_ns: int | None
    session: str
    submitted_ns: int
    future: Future = field(default_factory=Future)


class ServiceStats:
    """Per-batch figures; guarded by the service's lock."""

    def __init__(self, window: int):
        self.batches = 0
        self.frames = 0
        self.dropped_late = 0
        self.dropped_full = 0
        self.cancelled = 0
        self.batch_sizes: collections.Counter = collections.Counter()
        self.decode_ms: collections.deque = collections.deque(maxlen=window)
        self.wait_ms: collections.deque = collections.deque(maxlen=window * 4)
        self.per_session: dict[str, dict[str, int]] = {}

    def session(self, name: str) -> dict[str, int]:
        return self.per_session.setdefault(name, {"served": 0, "dropped": 0})

    def summary(self) -> dict:
        def pct(values) -> dict:
            if not values:
                return {"p50": None, "p95": None, "p99": None}
            a = np.asarray(values, np.float64)
            return {k: round(float(np.percentile(a, q)), 2) for k, q in (("p50", 50), ("p95", 95), ("p99", 99))}

        return {
            "batches": self.batches,
            "frames": self.frames,
            "batch_size_mean": round(self.frames / self.batches, 3) if self.batches else None,
            "batch_size_histogram": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "decode_ms": pct(self.decode_ms),
            "queue_wait_ms": pct(self.wait_ms),
            "dropped_late": self.dropped_late,
            "dropped_queue_full": self.dropped_full,
            "cancelled": self.cancelled,
            "per_session": {k: dict(v) for k, v in self.per_session.items()},
        }


class GeneratorService:
    """`generator`: a split generator (a FaceDecoder: `decode(mels (B,1,80,16), 7 feature arrays
    (B, ...))`). Avatars: FeatureSources (`features_at(i)` -> 7 arrays (1, ...))."""

    def __init__(self, generator: FaceDecoder, cfg: ServiceConfig = ServiceConfig(), clock: MediaClock | None = None):
        if cfg.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {cfg.max_batch}")
        self.gen, self.cfg = generator, cfg
        self.clock = clock or MonotonicClock()
        self.name = getattr(generator, "name", "generator") + f"+service(b{cfg.max_batch})"
        self.first_row = getattr(generator, "first_row", 0)
        self._avatars: dict[str, FeatureSource] = {}
        self._pending: list[_Request] = []
        self._cv = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._down: GeneratorServiceDown | None = None  # set once, when the thread dies
        self._inflight: list[_Request] = []  # taken off the queue, not yet resolved
        self._batchable = True
        self._holding = False  # submit_many is queueing: the decoder thread waits for all of it
        self._decoding = threading.Lock()  # runtimes' requests are not safe to run from two threads
        self.stats = ServiceStats(cfg.stats_window)
        self.stages = StageTimes()  # the decoder thread's per-stage costs (per frame decoded)

    # -- registry ---------------------------------------------------------------------------------
    def register_avatar(self, avatar_id: str, avatar: FeatureSource, replace: bool = False) -> None:
        """`replace`: the id may already name another avatar (a reload of the same file), which
        this one takes over from; otherwise that is refused."""
        with self._cv:
            if not replace and avatar_id in self._avatars and self._avatars[avatar_id] is not avatar:
                raise ValueError(f"avatar id {avatar_id!r} is already registered with another avatar")
            self._avatars[avatar_id] = avatar

    def unregister_avatar(self, avatar_id: str, avatar: FeatureSource | None = None) -> None:
        """Forget an avatar; its queued requests resolve to DROPPED. With `avatar`, only if the id
        still names that very avatar: whoever registered it can let go late (a finaliser, a
        session's cleanup) without removing a newer registration under the same id."""
        with self._cv:
            if avatar is not None and self._avatars.get(avatar_id) is not avatar:
                return
            self._avatars.pop(avatar_id, None)
            gone = [r for r in self._pending if r.avatar_id == avatar_id]
            self._pending = [r for r in self._pending if r.avatar_id != avatar_id]
            self.stats.cancelled += len(gone)
        for r in gone:
            _resolve(r.future, DROPPED)

    def cancel_session(self, session: str) -> None:
        """A session that stops: whatever it still has queued resolves to DROPPED."""
        with self._cv:
            gone = [r for r in self._pending if r.session == session]
            self._pending = [r for r in self._pending if r.session != session]
            self.stats.cancelled += len(gone)
        for r in gone:
            _resolve(r.future, DROPPED)

    # -- requests ---------------------------------------------------------------------------------
    def submit(
        self,
        avatar_id: str,
        frame_index: int,
        mel_window: np.ndarray,
        deadline_ns: int | None,
        session: str | None = None,
    ) -> Future:
        """Queue one face; the future resolves to the decoder's (1, 3, rows, 96) output, to DROPPED,
        or to the decoder's exception. `deadline_ns` (the service clock's time): None, never late."""
        req = _Request(
            avatar_id,
            int(frame_index),
            np.array(mel_window, np.float32, copy=True).reshape(80, 16),
            deadline_ns,
            session or avatar_id,
            self.clock.now_ns(),
        )
        with self._cv:
            if avatar_id not in self._avatars:
                raise KeyError(f"avatar {avatar_id!r} is not registered with this generator service")
            if self._down is not None:
                _fail(req.future, self._down)
                return req.future
            if self._closed:
                _resolve(req.future, DROPPED)
                return req.future
            if len(self._pending) >= self.cfg.queue_limit:
                self.stats.dropped_full += 1
                self.stats.session(req.session)["dropped"] += 1
                _resolve(req.future, DROPPED)
                return req.future
            self._pending.append(req)
            self._cv.notify_all()
        return req.future

    def submit_many(self, requests: list[tuple[str, int, np.ndarray, int | None, str | None]]) -> list[Future]:
        """Queue several faces at once, (avatar_id, frame_index, mel_window, deadline_ns, session)
        each: all of them are in the queue before the decoder thread looks again, so a batch
        gathered elsewhere (Ray Serve's @serve.batch) reaches the decoder as one batch."""
        with self._cv:
            self._holding = True
        try:
            return [self.submit(*r) for r in requests]
        finally:
            with self._cv:
                self._holding = False
                self._cv.notify_all()

    def withdraw(self, future: Future) -> bool:
        """A waiter that gave up (ServiceRenderer past its deadline): the request leaves the
        queue unserved, counted as a drop. False when it was already taken into a batch."""
        with self._cv:
            mine = [r for r in self._pending if r.future is future]
            if not mine:
                return False
            self._pending.remove(mine[0])
            self.stats.dropped_late += 1
            self.stats.session(mine[0].session)["dropped"] += 1
        _resolve(future, DROPPED)
        return True

    @property
    def down(self) -> GeneratorServiceDown | None:
        """Why the decoder thread died, or None while it lives (or was never started)."""
        return self._down

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> GeneratorService:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="lipsync-generator-service", daemon=True)
            self._thread.start()
        return self

    def warm_up(self, batch_sizes) -> None:
        """Run each batch size once now, on the first registered avatar: a runtime that compiles
        per batch size (the OpenVINO int8 IR) would otherwise stall every session on the first
        batch of a new size. Call before sessions start (it runs on the caller's thread)."""
        with self._cv:
            avatar = next(iter(self._avatars.values()), None)
        if avatar is None:
            return
        feats = avatar.features_at(0)
        for b in batch_sizes:
            if b < 2 or b > self.cfg.max_batch or not self._batchable:
                continue
            mels = np.zeros((b, 1, 80, 16), np.float32)
            try:
                with self._decoding:
                    self.gen.decode(mels, [np.concatenate([f] * b) for f in feats])
            except Exception as e:
                log.warning("generator service: the decoder refused a batch of %d (%s); decoding one by one", b, e)
                self._batchable = False

    def close(self, timeout_s: float | None = 30.0) -> None:
        """Stop the thread; whatever is still queued resolves to DROPPED. A decoder stuck in a
        call is not waited on past `timeout_s` (the thread is a daemon)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("generator service: the decoder thread did not stop within %s s", timeout_s)
        with self._cv:
            gone, self._pending = self._pending, []
        for r in gone:
            _resolve(r.future, DROPPED)

    def __enter__(self) -> GeneratorService:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def summary(self) -> dict:
        with self._cv:
            out = self.stats.summary()
            frames = self.stats.frames
        out["stages"] = self.stages.report(frames)
        return out

    # -- the decoder thread -----------------------------------------------------------------------
    def _serve(self) -> None:
        bind(self.stages)
        try:
            self._loop()
        except BaseException as e:  # a bug in the thread itself: fail everyone now, not never
            self._die(e)

    def _die(self, e: BaseException) -> None:
        log.error("generator service: the decoder thread died", exc_info=e)
        down = GeneratorServiceDown(f"generator service stopped: its decoder thread died of {type(e).__name__}: {e}")
        down.__cause__ = e
        with self._cv:
            self._down = down
            gone = self._pending + self._inflight
            self._pending, self._inflight = [], []
        for r in gone:
            _fail(r.future, down)

    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: (self._pending and not self._holding) or self._closed)
                if self._closed:
                    return
                if self.cfg.batch_wait_ms > 0 and len(self._pending) < self.cfg.max_batch:
                    self._cv.wait_for(
                        lambda: len(self._pending) >= self.cfg.max_batch or self._closed, self.cfg.batch_wait_ms / 1000
                    )
                batch, late = self._take(self.clock.now_ns())
                self._inflight = batch + late
            for r in late:
                _resolve(r.future, DROPPED)
            if batch:
                self._run(batch)
            with self._cv:
                self._inflight = []

    def _take(self, now_ns: int) -> tuple[list[_Request], list[_Request]]:
        """(batch, expired) out of the queue; called with the lock held."""
        cancelled = [r for r in self._pending if r.future.cancelled()]  # its waiter gave up: not decoded
        if cancelled:
            self.stats.cancelled += len(cancelled)
            self._pending = [r for r in self._pending if not r.future.cancelled()]
        late = [r for r in self._pending if r.deadline_ns is not None and r.deadline_ns < now_ns]
        for r in late:
            self.stats.dropped_late += 1
            self.stats.session(r.session)["dropped"] += 1
        live = [r for r in self._pending if r.deadline_ns is None or r.deadline_ns >= now_ns]
        never = float("inf")
        by_session: dict[str, list[_Request]] = {}
        for r in sorted(live, key=lambda r: never if r.deadline_ns is None else r.deadline_ns):
            by_session.setdefault(r.session, []).append(r)
        # Rounds: every session's earliest request, then every session's second, ...; within a
        # round, earliest deadline first. The globally earliest request is always in the batch.
        batch: list[_Request] = []
        depth = 0
        while len(batch) < self.cfg.max_batch:
            layer = [q[depth] for q in by_session.values() if len(q) > depth]
            if not layer:
                break
            layer.sort(key=lambda r: never if r.deadline_ns is None else r.deadline_ns)
            batch += layer[: self.cfg.max_batch - len(batch)]
            depth += 1
        taken = {id(r) for r in batch}
        self._pending = [r for r in live if id(r) not in taken]
        for r in batch:
            self.stats.wait_ms.append((now_ns - r.submitted_ns) / 1e6)
        return batch, late

    def _run(self, batch: list[_Request]) -> None:
        # An avatar unregistered after its requests were taken (a session ending meanwhile): those
        # requests are dropped as queued ones would have been, and the rest of the batch decodes.
        with self._cv:
            avatars = [self._avatars.get(r.avatar_id) for r in batch]
            gone = [r for r, a in zip(batch, avatars) if a is None]
            self.stats.cancelled += len(gone)
        for r in gone:
            _resolve(r.future, DROPPED)
        pairs = [(r, a) for r, a in zip(batch, avatars) if a is not None]
        if not pairs:
            return
        batch = [r for r, _ in pairs]
        t0 = time.perf_counter()
        try:
            with self._decoding:
                outs = self._decode(pairs)
        except BaseException as e:  # the sessions waiting on these get the error, the service lives on
            log.exception("generator service: a batch of %d failed", len(batch))
            for r in batch:
                _fail(r.future, e)
            return
        ms = (time.perf_counter() - t0) * 1000
        with self._cv:
            self.stats.batches += 1
            self.stats.frames += len(batch)
            self.stats.batch_sizes[len(batch)] += 1
            self.stats.decode_ms.append(ms)
            for r in batch:
                self.stats.session(r.session)["served"] += 1
        for r, out in zip(batch, outs):
            _resolve(r.future, out)

    def _decode(self, pairs: list[tuple[_Request, FeatureSource]]) -> list[np.ndarray]:
        batch = [r for r, _ in pairs]
        feats = [a.features_at(r.frame_index) for r, a in pairs]
        mels = np.stack([r.mel for r in batch])[:, None]
        if len(batch) > 1 and self._batchable:
            try:
                out = self.gen.decode(mels, [np.concatenate([f[k] for f in feats]) for k in range(len(feats[0]))])
                return [out[i : i + 1] for i in range(len(batch))]
            except Exception as e:
                # A decoder exported at a fixed batch of 1: one request at a time from now on.
                log.warning(
                    "generator service: the decoder refused a batch of %d (%s); decoding one by one", len(batch), e
                )
                self._batchable = False
        return [self.gen.decode(mels[i : i + 1], feats[i]) for i in range(len(batch))]
