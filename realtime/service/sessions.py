"""Many live sessions in one process over one generator service.

Each session is a capture engine of its own (its avatar, sinks, source and stats) whose
renderer asks the shared service for faces instead of running a decoder: N engines are N worker
threads waiting on futures while the service thread batches their requests. Sessions start and
stop independently; one that fails (a sink raising, a source dying) ends alone: its queued
requests are cancelled and the service keeps serving the others.

Stream clocks are staggered: the k-th session started begins on phase vdc(k) of the frame period
(van der Corput: 0, 1/2, 1/4, 3/4, 1/8, ...), so any N sessions started so far sit nearly evenly
spread and their frames do not all become due at the same instant (aligned clocks make bursts
the decoder cannot absorb), however they were started.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import numpy as np

from models.errors import EngineFailure, LipsyncError
from realtime.avatar import AvatarConfig, load_avatar
from realtime.clock import MonotonicClock
from realtime.compositor import first_shown_row
from realtime.config import EngineConfig
from realtime.engine import Engine
from realtime.renderer import FrameDropped, Wav2LipRenderer
from realtime.service.generator_service import DROPPED, GeneratorService
from realtime.stage_timer import Stage, span

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WaitConfig:
    """How long a session waits on the service for one face. Past the frame's deadline the
    service would drop the request itself; the grace covers a batch that started just before
    the deadline (one batch decode). Without a deadline (offline) the wait is still bounded: a
    service that answers nothing for that long is broken, and the session fails."""

    grace_ms: float = 100.0
    no_deadline_wait_s: float = 60.0


class ServiceRenderer(Wav2LipRenderer):
    """Wav2LipRenderer whose faces come from a GeneratorService; compositing stays in the
    session's own worker thread. The wait for a face is bounded (WaitConfig): a late or stuck
    service costs this session dropped frames, a dead one ends it with GeneratorServiceDown."""

    wants_deadline = True  # the engine sets deadline_ns before each render

    def __init__(
        self,
        service: GeneratorService,
        avatar_id: str,
        avatar,
        blend: str = "feather",
        session: str | None = None,
        wait: WaitConfig = WaitConfig(),
    ):
        super().__init__(service, avatar, blend)
        self.service, self.avatar_id, self.session = service, avatar_id, session or avatar_id
        self.wait = wait
        self.deadline_ns: int | None = None
        self.timeouts = 0  # faces given up on past deadline + grace (also counted as drops)

    def face(self, idx: int, mel_window: np.ndarray) -> np.ndarray:
        fut = self.service.submit(self.avatar_id, idx, mel_window, self.deadline_ns, self.session)
        if self.deadline_ns is None:
            timeout_s = self.wait.no_deadline_wait_s
        else:
            timeout_s = max(0, self.deadline_ns - self.service.clock.now_ns()) / 1e9 + self.wait.grace_ms / 1000
        try:
            with span(Stage.SERVICE_WAIT):
                out = fut.result(timeout_s)
        except FutureTimeout:
            self.service.withdraw(fut)  # still queued: nobody will want it now
            if self.deadline_ns is None:
                raise EngineFailure(
                    f"generator service: no answer for avatar frame {idx} within {timeout_s:g} s (no deadline given)"
                ) from None
            self.timeouts += 1
            raise FrameDropped(f"no face for avatar frame {idx} by its deadline + {self.wait.grace_ms:g} ms") from None
        if out is DROPPED:
            raise FrameDropped(f"frame of avatar frame {idx} dropped past its deadline")
        return out


def prepare_avatar(path: str, generator, checkpoint_id: str, cfg: EngineConfig = EngineConfig(), loop: str = "forward"):
    """Load an avatar and attach the face encoder's features (disk-cached) for a service whose
    decoder is `generator`. The decoder may be cropped to rows first_row..S-1: an avatar whose
    blend shows rows above that cannot use it. Crops are made at the generator's face size."""
    av = load_avatar(AvatarConfig(path, loop=loop, fps=cfg.fps, face_size=generator.face_size))
    needed = first_shown_row(av.boxes, av.paste_points(), generator.face_size) if cfg.blend == "feather" else 0
    first = getattr(generator, "first_row", 0)
    if needed < first:
        raise LipsyncError(
            f"avatar {path}",
            f"a face whose shown rows start at or below row {first}",
            f"rows from {needed}",
            "export the service's decoder with a lower first row (or 0)",
        )
    av.attach_features(generator, f"{generator.name}:{checkpoint_id}")
    return av


class LiveSession:
    """One engine run on its own thread: start() returns at once; wait() gives the summary."""

    def __init__(
        self,
        session_id: str,
        engine: Engine,
        source,
        duration_s: float | None = None,
        start_at_ns: int | None = None,
        on_end=None,
    ):
        self.id, self.engine, self.source, self.duration_s = session_id, engine, source, duration_s
        self.start_at_ns = start_at_ns
        self.state = "created"  # created | waiting | running | stopped | failed
        self.error: BaseException | None = None
        self.summary: dict | None = None
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._on_end = on_end
        self._thread = threading.Thread(target=self._run, name=f"lipsync-session-{session_id}", daemon=True)

    def start(self) -> LiveSession:
        self.state = "waiting"
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            if self.start_at_ns is not None:
                self.engine.clock.sleep_until_ns(self.start_at_ns, self._cancel)
            if self._cancel.is_set():
                self.state = "stopped"
                return
            self.state = "running"
            self.summary = self.engine.run(self.source, self.duration_s)
            self.state = "stopped"
        except BaseException as e:  # this session ends; the others and the service go on
            self.error, self.state = e, "failed"
            self.summary = self.engine.stats.summary()
            log.warning("session %s failed: %s", self.id, e)
        finally:
            self._finish()

    def _finish(self) -> None:
        # The owner's cleanup runs before anyone waiting sees the session done: a session
        # started again under this id right after must not lose its avatar to this cleanup.
        try:
            if self._on_end is not None:
                self._on_end(self)
        except Exception:
            log.exception("session %s: its end-of-session cleanup failed", self.id)
        finally:
            self._done.set()

    def stop(self) -> None:
        """Stop the input; the engine finishes what is queued and closes its sinks. A session
        never started ends here and now (its sinks were never opened by a run)."""
        self._cancel.set()
        self.source.stop()
        if self.state == "created":
            self.state = "stopped"
            self._finish()

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._done.wait(timeout_s)

    @property
    def done(self) -> bool:
        return self._done.is_set()


def van_der_corput(k: int) -> float:
    """k-th point of the base-2 van der Corput sequence in [0, 1): 0, .5, .25, .75, .125, ..."""
    x, f = 0.0, 0.5
    while k:
        x += f * (k & 1)
        k >>= 1
        f /= 2
    return x


@dataclass(frozen=True)
class HostConfig:
    stagger: bool = True  # False: every session starts at once (aligned clocks; for comparison)
    wait: WaitConfig = WaitConfig()
    ended_kept: int = 256  # ended sessions whose outcome is kept (oldest forgotten first)


@dataclass(frozen=True)
class EndedSession:
    """What is kept of a session once it has ended: its engine, avatar and sinks are let go."""

    session_id: str
    state: str
    error: str | None
    summary: dict | None


def ended_record(session: LiveSession) -> EndedSession:
    summary = session.summary if session.summary is not None else session.engine.stats.summary()
    return EndedSession(session.id, session.state, None if session.error is None else str(session.error), summary)


class SessionHost:
    """N live sessions over one GeneratorService (started here if not already)."""

    def __init__(
        self, service: GeneratorService, cfg: EngineConfig = EngineConfig(), host: HostConfig = HostConfig(), clock=None
    ):
        self.service, self.cfg, self.host = service.start(), cfg, host
        self.clock = clock or MonotonicClock()
        self.sessions: dict[str, LiveSession] = {}  # not yet ended; an ended one moves to `ended`
        self.ended: collections.OrderedDict[str, EndedSession] = collections.OrderedDict()
        self._epoch_ns = self.clock.now_ns()
        self._slots = itertools.count()
        self._lock = threading.Lock()
        self._avatar_of: dict[str, str] = {}  # session id -> its avatar id with the service

    def add(
        self,
        session_id: str,
        avatar,
        sinks: list,
        source,
        duration_s: float | None = None,
        avatar_id: str | None = None,
        on_end=None,
    ) -> LiveSession:
        """A session on `avatar` (prepared with prepare_avatar for this service's generator),
        writing to `sinks`, fed by `source` (anything with run(push, clock, duration) and stop()).
        `on_end(session)`: called once it has ended and let go of the service (from its thread)."""
        avatar_id = avatar_id or session_id
        renderer = ServiceRenderer(
            self.service, avatar_id, avatar, self.cfg.blend, session=session_id, wait=self.host.wait
        )
        engine = Engine(avatar, renderer, sinks, self.cfg, self.clock)
        session = LiveSession(session_id, engine, source, duration_s, on_end=functools.partial(self._ended, on_end))
        # One lock over the check, the registration and the entry: an ended session's cleanup
        # (which holds it too) cannot interleave with a new session taking the same id.
        with self._lock:
            if session_id in self.sessions:
                raise ValueError(f"session {session_id!r} is already running")
            self.service.register_avatar(avatar_id, avatar)
            self._avatar_of[session_id] = avatar_id
            self.sessions[session_id] = session
        return session

    def start(self, session_id: str) -> LiveSession:
        with self._lock:
            session = self.sessions[session_id]
        session.start_at_ns = self._next_start_ns() if self.host.stagger else None
        return session.start()

    def start_all(self) -> None:
        with self._lock:
            waiting = [s for s in self.sessions.values() if s.state == "created"]
        self.service.warm_up(range(2, len(waiting) + 1))
        for s in waiting:
            self.start(s.id)

    def stop(self, session_id: str, timeout_s: float | None = 10.0) -> LiveSession:
        """Stop a session and wait (up to `timeout_s`) for it to end; once it has, it is out
        of `sessions` (its outcome in `ended`). One that started but never ran is let go here."""
        with self._lock:
            session = self.sessions[session_id]
        session.stop()
        session.wait(timeout_s)
        return session

    def close(self, timeout_s: float | None = 10.0) -> dict[str, dict]:
        """Stop every session and the service; summaries by session id (ended ones included)."""
        with self._lock:
            live = list(self.sessions.values())
        for s in live:
            s.stop()
        for s in live:
            s.wait(timeout_s)
        self.service.close()
        with self._lock:
            out = {sid: e.summary for sid, e in self.ended.items()}
            out.update({s.id: s.summary for s in live})  # one still ending past the timeout: no summary yet
        return out

    def _next_start_ns(self) -> int:
        """The next instant on this session's phase slot of the frame period."""
        period = int(1e9 / self.cfg.fps)
        phase = int(van_der_corput(next(self._slots)) * period)
        now = self.clock.now_ns()
        since = (now - self._epoch_ns - phase) % period
        return now + (period - since) % period

    def _ended(self, on_end, session: LiveSession) -> None:
        """The session's thread, once it ended: its queued requests and (with the last session on
        that avatar) its features leave the service, and the session leaves `sessions`."""
        self.service.cancel_session(session.id)
        with self._lock:
            if self.sessions.get(session.id) is not session:
                return  # let go already
            del self.sessions[session.id]
            avatar_id = self._avatar_of.pop(session.id, None)
            if avatar_id is not None and avatar_id not in self._avatar_of.values():
                self.service.unregister_avatar(avatar_id, session.engine.avatar)
            self.ended.pop(session.id, None)
            self.ended[session.id] = ended_record(session)
            while len(self.ended) > self.host.ended_kept:
                self.ended.popitem(last=False)
        if on_end is not None:
            on_end(session)
