"""One browser's session: its peer connection, the engine feeding it, and mode switches.

Modes: "mic" runs the capture engine on the browser's microphone (audio is the clock, late frames
skipped); "speech" runs the playout engine on an uploaded file (output clock, idle frames between
utterances). When the file ends or is interrupted the session returns to the microphone. One
avatar and renderer (the generator) are shared by whichever engine runs; only one runs at a time,
on the same output tracks, each engine under a new epoch so the tracks re-anchor on its clock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

import numpy as np

from lipsync.web.tasks import spawn
from lipsync.web.tracks import TrackConfig, WebRtcOutput, make_tracks
from models.errors import EngineFailure
from realtime.config import EngineConfig
from realtime.engine import Engine
from realtime.playout import Playout, PlayoutConfig, PlayoutFull

log = logging.getLogger(__name__)

SPEAK_PIECE_S = 1.0
PUSH_POLL_S = 0.05


@dataclass(frozen=True)
class Loaded:
    """An avatar ready to animate: what `realtime.live` builds from a path."""

    path: str
    avatar: object
    renderer: object

    def mouth_box(self) -> list[int]:
        """The lower half of the first frame's face box (x, y, w, h): where the page looks for
        lip motion, for its own latency measurement."""
        y1, y2, x1, x2 = (int(v) for v in self.avatar.boxes[0])
        mid = (y1 + y2) // 2
        return [x1, mid, x2 - x1, y2 - mid]


class Session:
    def __init__(self, pc, loaded: Loaded, cfg: EngineConfig, loop: asyncio.AbstractEventLoop):
        self.pc, self.loaded, self.cfg, self.loop = pc, loaded, cfg, loop
        self.out = WebRtcOutput(TrackConfig(fps=cfg.fps, audio_rate_hz=cfg.output_audio_rate_hz), loop)
        self.video_track, self.audio_track = make_tracks(self.out)
        self.mode = "starting"
        self.engine = None
        self._epoch = 0
        self._mic = None
        self._mic_task: asyncio.Task | None = None
        self._switch_lock = asyncio.Lock()
        self._speak_cancel = threading.Event()
        self._pusher: asyncio.Future | None = None
        self._speaking = 0  # uploads still being pushed or played
        self.mic_frames = 0
        self.engine_errors: list[str] = []
        self.closed = asyncio.Event()
        self.last_second: dict | None = None  # the engine's figures over the latest second
        self._ticker = asyncio.ensure_future(self._take_seconds())

    # -- inputs -------------------------------------------------------------------------------------
    def attach_mic(self, track) -> None:
        self._mic = track
        self._mic_task = asyncio.ensure_future(self._consume_mic(track))

    async def _consume_mic(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError  # aiortc: the web extra, needed only by lipsync serve

        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            # Drained even while a file plays: aiortc queues received audio without bound.
            pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels))
            self.mic_frames += 1
            engine = self.engine
            if self.mode == "mic" and engine is not None:
                try:
                    engine.push_audio(pcm, frame.sample_rate)
                except EngineFailure as e:
                    await self._engine_failed(e)

    # -- engines ------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._switch("mic" if self._mic is not None else "speech")

    async def _switch(self, mode: str, loaded: Loaded | None = None) -> None:
        async with self._switch_lock:
            if self.closed.is_set():
                return
            old, self.engine = self.engine, None
            self.mode = "switching"
            if old is not None:
                await asyncio.to_thread(self._stop_engine, old)
            if loaded is not None:
                self.loaded = loaded
            self._epoch += 1
            self.engine = await asyncio.to_thread(self._start_engine, mode, self._epoch)
            self.mode = mode
            log.info("session: %s mode on %s", mode, self.loaded.path)

    def _start_engine(self, mode: str, epoch: int):
        sink = self.out.sink(epoch)
        if mode == "mic":
            return Engine(self.loaded.avatar, self.loaded.renderer, [sink], self.cfg).start()

        pl = Playout(
            self.loaded.avatar,
            self.loaded.renderer,
            [sink],
            self.cfg,
            PlayoutConfig(output_rate_hz=self.cfg.output_audio_rate_hz),
            deliver_to_reader=False,
        )
        pl.on_event(self._on_playout_event)
        return pl.start()

    def _stop_engine(self, engine) -> None:
        try:
            if hasattr(engine, "interrupt"):
                engine.stop()
            else:
                engine.stop(flush=False)
        except Exception as e:  # the failure was already reported where it happened, or is now
            log.warning("session: engine stopped with %s: %s", type(e).__name__, e)

    def _on_playout_event(self, kind: str, payload) -> None:  # the playout's pacer thread
        if kind == "playback_finished":
            self.loop.call_soon_threadsafe(self._speech_finished)

    def _speech_finished(self) -> None:
        self._speaking = max(0, self._speaking - 1)
        if self._speaking == 0 and self._mic is not None and self.mode == "speech":
            spawn(self._switch("mic"))

    async def _engine_failed(self, e: BaseException) -> None:
        msg = str(EngineFailure.wrap("engine", e))
        if msg not in self.engine_errors:
            self.engine_errors.append(msg)
            log.error("session: %s", msg)
        await self.close()

    async def _take_seconds(self) -> None:
        # The page charts per-second figures: one interval per second, taken here so that
        # however many clients poll /api/stats, each second is counted once.
        while not self.closed.is_set():
            await asyncio.sleep(1.0)
            engine = self.engine
            if engine is not None:
                self.last_second = await asyncio.to_thread(engine.stats.take_interval)

    # -- controls -----------------------------------------------------------------------------------
    async def speak(self, pcm: np.ndarray, rate: int) -> float:
        """Play decoded speech through the avatar; returns its duration in seconds."""
        await self._cancel_pusher()
        if self.mode != "speech":
            await self._switch("speech")
        self._speak_cancel = cancel = threading.Event()
        self._speaking += 1
        self._pusher = asyncio.ensure_future(asyncio.to_thread(self._push_speech, self.engine, pcm, rate, cancel))
        return len(pcm) / rate

    def _push_speech(self, engine, pcm: np.ndarray, rate: int, cancel: threading.Event) -> None:
        step = int(SPEAK_PIECE_S * rate)
        try:
            for i in range(0, len(pcm), step):
                # Pushed as playback goes (the playout holds max_pending_s): the short wait lets
                # an interrupt stop this thread before it can queue another piece.
                while True:
                    if cancel.is_set():
                        return
                    try:
                        if not engine.push_audio(pcm[i : i + step], rate, timeout_s=PUSH_POLL_S):
                            return  # the engine is stopping
                        break
                    except PlayoutFull:
                        continue
            engine.end_segment()
        except Exception as e:
            asyncio.run_coroutine_threadsafe(self._engine_failed(e), self.loop)

    async def _cancel_pusher(self) -> None:
        self._speak_cancel.set()
        if self._pusher is not None:
            await self._pusher
            self._pusher = None

    async def interrupt(self) -> bool:
        """Cut the file that is playing; False when nothing was playing."""
        engine = self.engine
        if self.mode != "speech" or engine is None:
            return False
        await self._cancel_pusher()  # nothing more of the file may arrive after the cut
        engine.interrupt()
        return True

    async def set_avatar(self, loaded: Loaded) -> None:
        mode = self.mode if self.mode in ("mic", "speech") else ("mic" if self._mic is not None else "speech")
        if mode == "speech":
            await self._cancel_pusher()
            self._speaking = 0
            mode = "mic" if self._mic is not None else "speech"
        await self._switch(mode, loaded)

    # -- end ------------------------------------------------------------------------------------------
    async def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self._speak_cancel.set()  # the pusher sees it within PUSH_POLL_S, or the stopping engine
        async with self._switch_lock:
            engine, self.engine = self.engine, None
            if engine is not None:
                await asyncio.to_thread(self._stop_engine, engine)
        self.out.close()
        if self._mic_task is not None:
            self._mic_task.cancel()
        self._ticker.cancel()
        await self.pc.close()
        log.info("session: closed")

    def stats(self) -> dict:
        engine = self.engine
        return {
            "mode": self.mode,
            "engine": engine.stats.summary() if engine is not None else None,
            "last_second": self.last_second,
            "webrtc": {**self.out.counters(), "mic_frames_in": self.mic_frames, "connection": self.pc.connectionState},
            "errors": list(self.engine_errors),
        }
