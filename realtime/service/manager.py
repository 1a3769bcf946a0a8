"""Many live sessions started and stopped at will: what `lipsync serve` hosts.

A session is described by a SessionRequest (avatar, audio input, outputs) and runs until it is
stopped or its input ends. With a Wav2Lip checkpoint every session's faces come from one shared
generator (a GeneratorService in this process, or with backend "ray" session actors over the
node's service actor); without one, each session runs the procedural renderer on its own.

The decoder is chosen once, on the first avatar (the precision ladder calibrates on it) and
cropped to the rows the avatars show: `first_row` is fixed when the generator is made, so an
avatar added later that shows more of the face is refused with a clear error (start the
manager with a lower first_row, or 0).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from models.errors import LipsyncError
from realtime import heap
from realtime.avatar import AvatarConfig, load_avatar
from realtime.compositor import first_shown_row
from realtime.config import EngineConfig
from realtime.generator import RuntimeConfig, SplitGenerator, ladder_samples, live_generator_maker, model_face_size
from realtime.live import build_engine, default_runtime, make_sink, make_source
from realtime.service import GeneratorService, SessionHost
from realtime.service.ray_backend import GeneratorSpec, RaySessionHost, SessionSpec
from realtime.service.sessions import LiveSession, prepare_avatar
from realtime.sinks.base import PreparableSink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionRequest:
    session_id: str
    avatar: str  # photo or video path
    audio: str = "mic"  # "mic", "mic:<device>", or an audio file (played in real time)
    outputs: tuple[str, ...] = ("null",)  # vcam | null | rtmp:// udp:// srt:// URL | FILE.mp4/.mkv
    loop_audio: bool = True  # a file input starts over when it ends, like a looping announcement
    avatar_loop: str = "forward"
    duration_s: float | None = None

    @staticmethod
    def from_json(doc: dict) -> SessionRequest:
        """From a JSON object (the --sessions file, POST /api/sessions); unknown keys refused."""
        if not isinstance(doc, dict):
            raise LipsyncError(
                "session",
                "a JSON object with id, avatar, audio, outputs",
                type(doc).__name__,
                'write e.g. {"id": "a", "avatar": "face.jpg", "audio": "mic", "outputs": ["vcam"]}',
            )
        known = {"id", "avatar", "audio", "outputs", "loop_audio", "avatar_loop", "duration_s"}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise LipsyncError(
                "session", f"keys among {sorted(known)}", f"unknown key {unknown[0]!r}", "remove or rename it"
            )
        for key in ("id", "avatar"):
            if not isinstance(doc.get(key), str) or not doc.get(key):
                raise LipsyncError(f"session {key!r}", "a non-empty string", repr(doc.get(key)), f"give {key}")
        outputs = doc.get("outputs", ["null"])
        if isinstance(outputs, str):
            outputs = [outputs]
        if not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) for o in outputs):
            raise LipsyncError(
                "session 'outputs'",
                "a list of output strings",
                repr(outputs),
                'give e.g. ["rtmp://host/live/a", "vcam"]',
            )
        duration = doc.get("duration_s")
        if duration is not None and (not isinstance(duration, (int, float)) or duration <= 0):
            raise LipsyncError(
                "session 'duration_s'", "a positive number of seconds or null", repr(duration), "give e.g. 60"
            )
        return SessionRequest(
            doc["id"],
            doc["avatar"],
            str(doc.get("audio", "mic")),
            tuple(outputs),
            bool(doc.get("loop_audio", True)),
            str(doc.get("avatar_loop", "forward")),
            None if duration is None else float(duration),
        )

    def to_json(self) -> dict:
        return {
            "id": self.session_id,
            "avatar": self.avatar,
            "audio": self.audio,
            "outputs": list(self.outputs),
            "loop_audio": self.loop_audio,
            "avatar_loop": self.avatar_loop,
            "duration_s": self.duration_s,
        }


@dataclass(frozen=True)
class ManagerConfig:
    backend: str = "inprocess"  # inprocess | ray (sessions as Ray actors; ray.init done by the caller)
    first_row: int | None = None  # decoder crop; None: from the first session's avatar
    audio_rate_hz: int = 48_000  # what the outputs are sent
    ended_kept: int = 100  # ended sessions still listed (their last figures; oldest forgotten first)


class StartCancelled(LipsyncError):
    """The session was stopped while it was still starting: nothing of it runs."""


@dataclass
class _Starting:
    """A start in progress: stop() sets `cancelled` and waits for `done`."""

    req: SessionRequest
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


def make_sinks(outputs: tuple[str, ...], fps: float, audio_rate_hz: int) -> list:
    return [make_sink(t, fps, audio_rate_hz) for t in outputs]


def make_input(audio: str, loop: bool):
    if audio == "mic" or audio.startswith("mic:"):
        device = audio.partition(":")[2] or None
        return make_source("mic", mic_device=int(device) if device and device.isdigit() else device)
    return make_source(audio, loop=loop)


def check_request(req: SessionRequest) -> None:
    """What can be checked before anything is loaded: files exist, outputs parse."""
    if not Path(req.avatar).is_file() and not req.avatar.startswith("camera:"):
        raise LipsyncError(
            f"session {req.session_id!r} avatar",
            "an existing photo or video file",
            repr(req.avatar),
            "check the path (it is read on the server)",
        )
    if req.audio != "mic" and not req.audio.startswith("mic:") and not Path(req.audio).is_file():
        raise LipsyncError(
            f"session {req.session_id!r} audio",
            "'mic', 'mic:<device>' or an existing audio file",
            repr(req.audio),
            "check the path (it is read on the server)",
        )
    if not req.outputs:
        raise LipsyncError(f"session {req.session_id!r} outputs", "at least one output", "none", "give e.g. vcam")


class SessionManager:
    """Sessions by id. A session is starting, live, or ended; an ended one has let go of its
    engine, avatar frames and features (here and on Ray) and is kept only as its last
    description (the newest `ended_kept`). The lock guards these tables only: nothing slow
    (a ladder build, an avatar load, a Ray call) runs under it."""

    def __init__(
        self,
        checkpoint: str | None,
        runtime: RuntimeConfig | None = None,
        cfg: EngineConfig = EngineConfig(),
        mcfg: ManagerConfig = ManagerConfig(),
        local_outputs=None,
    ):
        """`local_outputs`: {output name: make(session_id) -> sink} for outputs that live in this
        process's host (the server's "webrtc"); sessions in other processes (ray) cannot use them."""
        if mcfg.backend not in ("inprocess", "ray"):
            raise LipsyncError("--backend", "inprocess or ray", repr(mcfg.backend), "pick one of those")
        self.checkpoint, self.runtime, self.cfg, self.mcfg = checkpoint, runtime, cfg, mcfg
        self.local_outputs = dict(local_outputs or {})
        self.requests: dict[str, SessionRequest] = {}  # starting or live (not ended)
        self._lock = threading.RLock()
        self._starting: dict[str, _Starting] = {}
        self._ended: OrderedDict[str, dict] = OrderedDict()
        # The shared split generator (inprocess) or its spec (ray); made with the first Wav2Lip
        # session, by whichever start gets there first (the others wait on its future).
        self._gen: SplitGenerator | GeneratorSpec | None = None
        self._gen_future: Future | None = None
        self._host: SessionHost | RaySessionHost | None = None
        self._solo: dict[str, LiveSession] = {}  # procedural sessions: LiveSession each, no service
        self._closed = False

    # -- the shared generator -----------------------------------------------------------------------
    def _generator(self, avatar_path: str):
        """Made on the first Wav2Lip session: the ladder calibrates on that avatar. Built without
        the lock (a first ladder takes minutes); a start that needs it meanwhile waits for it."""
        with self._lock:
            fut, mine = self._gen_future, self._gen_future is None
            if mine:
                fut = self._gen_future = Future()
        assert fut is not None
        if not mine:
            return fut.result()
        try:
            gen, host = self._build_generator(avatar_path)
        except BaseException as e:
            with self._lock:
                self._gen_future = None  # a later start tries again
            fut.set_exception(e)
            raise
        with self._lock:
            closed = self._closed
            if not closed:
                self._gen, self._host = gen, host
        if closed:  # close() came during the build: what the build started stops here
            host.close()
            error = StartCancelled("session manager", "a running manager", "one closed meanwhile", "start a new one")
            with self._lock:
                self._gen_future = None
            fut.set_exception(error)
            raise error
        fut.set_result(gen)
        return gen

    def _build_generator(self, avatar_path: str):
        assert self.checkpoint is not None  # procedural sessions never reach the shared generator
        runtime = self.runtime or default_runtime()
        size = model_face_size(self.checkpoint, runtime)
        av = load_avatar(AvatarConfig(avatar_path, fps=self.cfg.fps, face_size=size))
        first_row = self.mcfg.first_row
        if first_row is None:
            first_row = first_shown_row(av.boxes, av.paste_points(), size) if self.cfg.blend == "feather" else 0
        make = live_generator_maker(self.checkpoint, runtime, first_row, ladder_samples(avatar_path, av))
        gen: SplitGenerator | GeneratorSpec
        host: SessionHost | RaySessionHost
        if self.mcfg.backend == "ray":
            gen = GeneratorSpec(make, str(self.checkpoint), face_size=size)
            host = RaySessionHost(gen, self.cfg)
        else:
            gen = make()
            host = SessionHost(GeneratorService(gen), self.cfg)
        log.info("shared generator made on %s (decoder rows %d-%d)", avatar_path, first_row, size - 1)
        return gen, host

    # -- sessions -----------------------------------------------------------------------------------
    def start(self, req: SessionRequest) -> dict:
        """Start a session; raises StartCancelled when stop() came first."""
        check_request(req)
        sid = req.session_id
        if isinstance(self._host, RaySessionHost) and sid in self.requests:
            self.describe(sid)  # an actor whose session ended by itself is let go here
        with self._lock:
            if self._closed:
                raise StartCancelled(f"session {sid!r}", "a running manager", "one closed", "start a new one")
            if sid in self.requests:
                raise LipsyncError(
                    f"session {sid!r}", "a new session id", "one already running", "stop it first or pick another id"
                )
            self.requests[sid] = req
            starting = self._starting[sid] = _Starting(req)
        try:
            if self.checkpoint is None:
                self._start_procedural(starting)
            elif self.mcfg.backend == "ray":
                self._start_ray(starting)
            else:
                self._start_inprocess(starting)
        except BaseException:
            with self._lock:
                if self.requests.get(sid) is req and starting.cancelled.is_set():
                    self._forget(req, {**req.to_json(), "state": "stopped"})  # what the stop reports
                elif self.requests.get(sid) is req:
                    del self.requests[sid]  # a refused start leaves nothing behind
            raise
        finally:
            with self._lock:
                self._starting.pop(sid, None)
            starting.done.set()
        log.info("session %s started: %s -> %s", sid, req.avatar, ", ".join(req.outputs))
        return self.describe(sid)

    def _check_cancelled(self, starting: _Starting) -> None:
        if starting.cancelled.is_set():
            raise StartCancelled(
                f"session {starting.req.session_id!r}",
                "a start that runs to the end",
                "a stop while it was starting",
                "start it again if it is wanted",
            )

    def _went_live(self, starting: _Starting) -> bool:
        """The start's last step: from here on stop() takes the running session's path. False
        (and nothing changed) when a stop came first: the caller tears down what it started."""
        with self._lock:
            if starting.cancelled.is_set():
                return False
            self._starting.pop(starting.req.session_id, None)
            return True

    def _start_procedural(self, starting: _Starting) -> None:
        req = starting.req
        self._check_cancelled(starting)
        sinks = self._sinks(req)
        engine = build_engine(req.avatar, sinks, None, None, self.cfg, loop=req.avatar_loop, engine="procedural")
        session = LiveSession(
            req.session_id,
            engine,
            make_input(req.audio, req.loop_audio),
            req.duration_s,
            on_end=functools.partial(self._session_ended, req),
        )
        with self._lock:
            self._solo[req.session_id] = session
        session.start()
        if not self._went_live(starting):
            session.stop()
            session.wait()
            self._check_cancelled(starting)

    def _start_inprocess(self, starting: _Starting) -> None:
        req = starting.req
        gen = self._generator(req.avatar)
        self._check_cancelled(starting)
        av = prepare_avatar(req.avatar, gen, str(self.checkpoint), self.cfg, req.avatar_loop)
        self._check_cancelled(starting)
        sinks = self._sinks(req)
        for sink in sinks:
            if isinstance(sink, PreparableSink):
                sink.prepare(*av.size)
        host = self._host
        assert isinstance(host, SessionHost)  # made by _generator() above, backend "inprocess"
        source = make_input(req.audio, req.loop_audio)
        host.add(req.session_id, av, sinks, source, req.duration_s, on_end=functools.partial(self._session_ended, req))
        host.start(req.session_id)
        if not self._went_live(starting):
            host.stop(req.session_id, None)
            self._check_cancelled(starting)

    def _sinks(self, req: SessionRequest) -> list:
        return [
            self.local_outputs[o](req.session_id)
            if o in self.local_outputs
            else make_sink(o, self.cfg.fps, self.mcfg.audio_rate_hz)
            for o in req.outputs
        ]

    def _start_ray(self, starting: _Starting) -> None:
        req = starting.req
        local = [o for o in req.outputs if o in self.local_outputs]
        if local:
            raise LipsyncError(
                f"session {req.session_id!r} outputs",
                "outputs a Ray session actor can open itself",
                repr(local[0]),
                "use --backend inprocess for it, or stream to rtmp:// / udp://",
            )
        self._generator(req.avatar)
        self._check_cancelled(starting)
        host = self._host
        assert isinstance(host, RaySessionHost)  # made by _generator() above, backend "ray"
        host.add(
            SessionSpec(
                req.session_id,
                str(Path(req.avatar).resolve()),
                functools.partial(make_input, req.audio, req.loop_audio),
                functools.partial(make_sinks, req.outputs, self.cfg.fps, self.mcfg.audio_rate_hz),
                req.duration_s,
                req.avatar_loop,
            )
        )
        if not self._went_live(starting):
            self._end_ray(req, 10.0)
            self._check_cancelled(starting)

    def stop(self, session_id: str, timeout_s: float = 10.0) -> dict:
        """Stop a session (one still starting is cancelled: its start raises StartCancelled) and
        give its last description. A session that does not end within `timeout_s` is let go
        when it does (Ray: its actor is killed now)."""
        with self._lock:
            req = self.requests.get(session_id)
            if req is None:
                if session_id in self._ended:
                    return dict(self._ended[session_id])
                raise KeyError(session_id)
            starting = self._starting.get(session_id)
            if starting is not None:
                starting.cancelled.set()
            solo = self._solo.get(session_id)
        if starting is not None:
            starting.done.wait(timeout_s)
        elif solo is not None:
            solo.stop()
            solo.wait(timeout_s)
        elif isinstance(self._host, RaySessionHost):
            self._end_ray(req, timeout_s)
        elif isinstance(self._host, SessionHost):
            try:
                self._host.stop(session_id, timeout_s)
            except KeyError:
                pass  # it ended meanwhile
        log.info("session %s stopped", session_id)
        return self.describe(session_id)

    def _session_ended(self, req: SessionRequest, session: LiveSession) -> None:
        """From the session's thread, once it ended (LiveSession's on_end): its last figures are
        kept, the session itself let go."""
        record = {**req.to_json(), **self._figures(session)}
        with self._lock:
            if self._solo.get(req.session_id) is session:
                del self._solo[req.session_id]
            self._forget(req, record)
        # What the session's engine, queues and frames freed goes back to the system (glibc
        # keeps freed heap otherwise: the RSS of a long-running server would only ever grow).
        heap.release_freed()

    def _forget(self, req: SessionRequest, record: dict) -> None:
        """With the lock: the session of `req` ended; `record` is what stays of it."""
        if self.requests.get(req.session_id) is req:
            del self.requests[req.session_id]
        self._ended.pop(req.session_id, None)
        self._ended[req.session_id] = record
        while len(self._ended) > self.mcfg.ended_kept:
            self._ended.popitem(last=False)

    def _end_ray(self, req: SessionRequest, timeout_s: float) -> None:
        """Stop a Ray session's actor (killed whatever happens) and keep its last figures."""
        host = self._host
        assert isinstance(host, RaySessionHost)
        record = {**req.to_json(), "state": "stopped"}
        try:
            summary = host.stop(req.session_id, timeout_s)
            record.update(
                {
                    "state": summary.get("state", "stopped"),
                    "frames": summary.get("frames"),
                    "dropped": summary.get("dropped"),
                    "fps_sustained": summary.get("fps_sustained"),
                    "summary": summary,
                }
            )
            if summary.get("error"):
                record["error"] = summary["error"]
        except KeyError:
            pass  # another stop got there first
        except Exception as e:  # the actor is killed all the same (RaySessionHost.stop)
            record["error"] = f"its last figures were lost: {type(e).__name__}: {e}"
        finally:
            with self._lock:
                self._forget(req, record)

    def wait(self, session_id: str, timeout_s: float | None = None) -> bool:
        """True once the session has ended (its input ran out, its duration passed, it failed or
        was stopped); sessions of this process only."""
        with self._lock:
            if session_id not in self.requests and session_id in self._ended:
                return True
            s = self._live_session(session_id)
        if s is None:
            raise KeyError(session_id)
        return s.wait(timeout_s)

    def _live_session(self, session_id: str) -> LiveSession | None:
        if session_id in self._solo:
            return self._solo[session_id]
        if isinstance(self._host, SessionHost):  # backend "inprocess"
            return self._host.sessions.get(session_id)
        return None

    @staticmethod
    def _figures(s: LiveSession) -> dict:
        summary = s.summary if s.done and s.summary is not None else s.engine.stats.summary()
        out = {"state": s.state, **{k: summary.get(k) for k in ("frames", "dropped", "fps_sustained")}}
        out["processing_p95_ms"] = (summary.get("processing_latency_ms") or {}).get("p95")
        # per output: frames it took, and frames it dropped being slower than the session
        out["sinks"] = {
            name: {"delivered": c.get("delivered"), "video_dropped": c.get("video_dropped")}
            for name, c in (summary.get("sinks") or {}).items()
        }
        if s.error is not None:
            out["error"] = str(s.error)
        return out

    def describe(self, session_id: str) -> dict:
        with self._lock:
            req = self.requests.get(session_id)
            if req is None:
                return dict(self._ended[session_id])  # KeyError: no such session
            starting = self._starting.get(session_id)
            s = self._live_session(session_id)
            ray_actor = self._host.actors.get(session_id) if isinstance(self._host, RaySessionHost) else None
        out = req.to_json()
        if starting is not None:  # "stopping": a stop came; the start gives up at its next step
            out["state"] = "stopping" if starting.cancelled.is_set() else "starting"
        elif s is not None:
            out.update(self._figures(s))
        elif ray_actor is not None:
            import ray  # ray: an optional extra; importing this module needs none

            try:
                info = ray.get(ray_actor.wait_frames.remote(0, 0), timeout=5)
                out.update({"frames": info["frames"], "state": info["state"]})
            except Exception as e:  # a restarting actor: say so, do not fail the listing
                out["state"] = f"unreachable ({type(e).__name__})"
            if out["state"] in ("stopped", "failed"):  # it ended by itself: its actor goes now
                self._end_ray(req, 10.0)
                return self.describe(session_id)
        else:  # ended this instant: its record is being written
            with self._lock:
                return dict(self._ended.get(session_id) or {**out, "state": "stopped"})
        return out

    def list(self) -> list[dict]:
        with self._lock:
            ids = [*(k for k in self._ended if k not in self.requests), *self.requests]
        out = []
        for sid in ids:
            try:
                out.append(self.describe(sid))
            except KeyError:  # forgotten meanwhile (ended_kept)
                pass
        return out

    def service_summary(self) -> dict | None:
        if not isinstance(self._host, SessionHost):  # none yet, or backend "ray"
            return None
        return self._host.service.summary()

    def close(self, timeout_s: float = 10.0) -> None:
        with self._lock:
            self._closed = True
            for st in self._starting.values():
                st.cancelled.set()
            solo = list(self._solo.values())
            starting = list(self._starting.values())
        for s in solo:
            s.stop()
        for s in solo:
            s.wait(timeout_s)
        for st in starting:
            st.done.wait(timeout_s)
        if self._host is not None:
            self._host.close(timeout_s)
