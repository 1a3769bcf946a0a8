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
from dataclasses import dataclass
from pathlib import Path

from models.errors import LipsyncError
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
        self.requests: dict[str, SessionRequest] = {}
        self._lock = threading.RLock()
        # The shared split generator (inprocess) or its spec (ray); made with the first Wav2Lip session.
        self._gen: SplitGenerator | GeneratorSpec | None = None
        self._host: SessionHost | RaySessionHost | None = None
        self._solo: dict[str, LiveSession] = {}  # procedural sessions: LiveSession each, no service

    # -- the shared generator -----------------------------------------------------------------------
    def _generator(self, avatar_path: str):
        """Made on the first Wav2Lip session: the ladder calibrates on that avatar."""
        if self._gen is not None:
            return self._gen
        assert self.checkpoint is not None  # procedural sessions never reach the shared generator
        runtime = self.runtime or default_runtime()
        size = model_face_size(self.checkpoint, runtime)
        av = load_avatar(AvatarConfig(avatar_path, fps=self.cfg.fps, face_size=size))
        first_row = self.mcfg.first_row
        if first_row is None:
            first_row = first_shown_row(av.boxes, av.paste_points(), size) if self.cfg.blend == "feather" else 0
        make = live_generator_maker(self.checkpoint, runtime, first_row, ladder_samples(avatar_path, av))
        if self.mcfg.backend == "ray":
            self._gen = GeneratorSpec(make, str(self.checkpoint), face_size=size)
            self._host = RaySessionHost(self._gen, self.cfg)
        else:
            self._gen = make()
            self._host = SessionHost(GeneratorService(self._gen), self.cfg)
        log.info("shared generator made on %s (decoder rows %d-%d)", avatar_path, first_row, size - 1)
        return self._gen

    # -- sessions -----------------------------------------------------------------------------------
    def start(self, req: SessionRequest) -> dict:
        check_request(req)
        with self._lock:
            if req.session_id in self.requests and self._state(req.session_id) in ("waiting", "running", "starting"):
                raise LipsyncError(
                    f"session {req.session_id!r}",
                    "a new session id",
                    "one already running",
                    "stop it first or pick another id",
                )
            self.requests[req.session_id] = req
            try:
                if self.checkpoint is None:
                    self._start_procedural(req)
                elif self.mcfg.backend == "ray":
                    self._start_ray(req)
                else:
                    self._start_inprocess(req)
            except BaseException:
                self.requests.pop(req.session_id, None)
                raise
        log.info("session %s started: %s -> %s", req.session_id, req.avatar, ", ".join(req.outputs))
        return self.describe(req.session_id)

    def _start_procedural(self, req: SessionRequest) -> None:
        sinks = self._sinks(req)
        engine = build_engine(req.avatar, sinks, None, None, self.cfg, loop=req.avatar_loop, engine="procedural")
        self._solo[req.session_id] = LiveSession(
            req.session_id, engine, make_input(req.audio, req.loop_audio), req.duration_s
        ).start()

    def _start_inprocess(self, req: SessionRequest) -> None:
        gen = self._generator(req.avatar)
        av = prepare_avatar(req.avatar, gen, str(self.checkpoint), self.cfg, req.avatar_loop)
        sinks = self._sinks(req)
        for sink in sinks:
            if isinstance(sink, PreparableSink):
                sink.prepare(*av.size)
        host = self._host
        assert isinstance(host, SessionHost)  # made by _generator() above, backend "inprocess"
        host.add(req.session_id, av, sinks, make_input(req.audio, req.loop_audio), req.duration_s)
        host.start(req.session_id)

    def _sinks(self, req: SessionRequest) -> list:
        return [
            self.local_outputs[o](req.session_id)
            if o in self.local_outputs
            else make_sink(o, self.cfg.fps, self.mcfg.audio_rate_hz)
            for o in req.outputs
        ]

    def _start_ray(self, req: SessionRequest) -> None:
        local = [o for o in req.outputs if o in self.local_outputs]
        if local:
            raise LipsyncError(
                f"session {req.session_id!r} outputs",
                "outputs a Ray session actor can open itself",
                repr(local[0]),
                "use --backend inprocess for it, or stream to rtmp:// / udp://",
            )
        self._generator(req.avatar)
        host = self._host
        assert isinstance(host, RaySessionHost)  # made by _generator() above, backend "ray"
        if req.session_id in host.actors:  # a session of that id that ended by itself: its actor goes
            host.stop(req.session_id)
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

    def stop(self, session_id: str, timeout_s: float = 10.0) -> dict:
        with self._lock:
            if session_id not in self.requests:
                raise KeyError(session_id)
            desc = self.describe(session_id)
            if session_id in self._solo:
                s = self._solo[session_id]
                s.stop()
                s.wait(timeout_s)
            elif isinstance(self._host, RaySessionHost) and session_id in self._host.actors:
                desc["summary"] = self._host.stop(session_id, timeout_s)
            elif isinstance(self._host, SessionHost) and session_id in self._host.sessions:
                self._host.stop(session_id, timeout_s)
            desc.update(self.describe(session_id))
        log.info("session %s stopped", session_id)
        return desc

    def wait(self, session_id: str, timeout_s: float | None = None) -> bool:
        """True once the session has ended (its input ran out, its duration passed, it failed or
        was stopped); sessions of this process only."""
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

    def _state(self, session_id: str) -> str:
        s = self._live_session(session_id)
        if s is not None:
            return s.state
        if isinstance(self._host, RaySessionHost) and session_id in self._host.actors:
            return "running"  # the actor's own state is one call away; see describe()
        return "stopped"

    def describe(self, session_id: str) -> dict:
        req = self.requests[session_id]
        out = {**req.to_json(), "state": self._state(session_id)}
        s = self._live_session(session_id)
        if s is not None:
            summary = s.engine.stats.summary()
            out.update({k: summary.get(k) for k in ("frames", "dropped", "fps_sustained")})
            out["processing_p95_ms"] = (summary.get("processing_latency_ms") or {}).get("p95")
            # per output: frames it took, and frames it dropped being slower than the session
            out["sinks"] = {
                name: {"delivered": c.get("delivered"), "video_dropped": c.get("video_dropped")}
                for name, c in (summary.get("sinks") or {}).items()
            }
            if s.error is not None:
                out["error"] = str(s.error)
        elif isinstance(self._host, RaySessionHost) and session_id in self._host.actors:
            import ray  # ray: an optional extra; importing this module needs none

            try:
                info = ray.get(self._host.actors[session_id].wait_frames.remote(0, 0), timeout=5)
                out.update({"frames": info["frames"], "state": info["state"]})
            except Exception as e:  # a restarting actor: say so, do not fail the listing
                out["state"] = f"unreachable ({type(e).__name__})"
        return out

    def list(self) -> list[dict]:
        with self._lock:
            return [self.describe(sid) for sid in self.requests]

    def service_summary(self) -> dict | None:
        if not isinstance(self._host, SessionHost):  # none yet, or backend "ray"
            return None
        return self._host.service.summary()

    def close(self, timeout_s: float = 10.0) -> None:
        with self._lock:
            for s in self._solo.values():
                s.stop()
            for s in self._solo.values():
                s.wait(timeout_s)
            if self._host is not None:
                self._host.close(timeout_s)
