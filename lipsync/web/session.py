"""One browser's session: its peer connection, the engine feeding it, and mode switches.

Modes: "mic" runs the capture engine on the browser's microphone (audio is the clock, late frames
skipped; the engine pushes to the tracks); "speech" runs the playout engine on an uploaded file
with Pacing.CONSUMER: the video track's recv() owns the clock and each frame is made as it pulls
(lipsync.web.tracks), idle frames between utterances. When nothing is left to push or to play
(the file ended, or was interrupted, however many were queued) the session returns to the
microphone: that is read from the playout's own state (`wait_idle`), never counted from its
events. One avatar and renderer (the generator) are shared by whichever engine runs; only one
runs at a time, on the same output tracks, each engine under a new epoch so the tracks
re-anchor on its clock. An interrupt silences the speech from the instant it arrives: the
playout drops everything made, and the tracks' ring the sound of the frame pulled ahead.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from lipsync.web.tracks import TrackConfig, WebRtcOutput, make_tracks
from models.errors import EngineFailure
from realtime.config import EngineConfig
from realtime.engine import Engine
from realtime.playout import Pacing, Playout, PlayoutConfig, PlayoutFull

log = logging.getLogger(__name__)

SPEAK_PIECE_S = 1.0
PUSH_POLL_S = 0.05
IDLE_POLL_S = 0.5  # how often the return-to-mic watch re-checks that its playout is still the engine


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
        # Held around each push and around an interrupt's cancel + cut: once an interrupt holds
        # it, no piece of the file it cancels can reach the playout any more.
        self._push_gate = threading.Lock()
        self.last_cut_audio_pts: int | None = None  # the audio track's timestamp when the last interrupt came
        self._pusher: asyncio.Future | None = None
        self._speech_lock = asyncio.Lock()  # speak/interrupt and the return to the mic, one at a time
        self._watch: asyncio.Task | None = None  # returns to the mic once the playout is idle
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
            self.out.pull_from(None)
            if old is not None:
                await asyncio.to_thread(self._stop_engine, old)
            if loaded is not None:
                self.loaded = loaded
            self._epoch += 1
            self.engine = await asyncio.to_thread(self._start_engine, mode, self._epoch)
            if isinstance(self.engine, Playout):
                self.out.pull_from(self._epoch, self.engine)
            self.mode = mode
            log.info("session: %s mode on %s", mode, self.loaded.path)

    def _start_engine(self, mode: str, epoch: int):
        if mode == "mic":  # the microphone's audio is the clock: the engine pushes to the tracks
            return Engine(self.loaded.avatar, self.loaded.renderer, [self.out.sink(epoch)], self.cfg).start()
        # The video track pulls (it owns the clock); the caller hands the playout to the tracks.
        pl = Playout(
            self.loaded.avatar,
            self.loaded.renderer,
            [],
            self.cfg,
            PlayoutConfig(output_rate_hz=self.cfg.output_audio_rate_hz),
            pacing=Pacing.CONSUMER,
        )
        return pl.start()

    def _stop_engine(self, engine) -> None:
        try:
            if isinstance(engine, Playout):
                engine.stop()
            else:
                engine.stop(flush=False)
        except Exception as e:  # the failure was already reported where it happened, or is now
            log.warning("session: engine stopped with %s: %s", type(e).__name__, e)

    def _watch_for_idle(self) -> None:
        """Speech mode lasts while a file is being pushed or the playout has anything to play."""
        if self._mic is not None and (self._watch is None or self._watch.done()):
            self._watch = asyncio.ensure_future(self._back_to_mic_when_idle())

    async def _back_to_mic_when_idle(self) -> None:
        while not self.closed.is_set():
            engine = self.engine
            if self.mode != "speech" or not isinstance(engine, Playout):
                return
            idle = await asyncio.to_thread(engine.wait_idle, IDLE_POLL_S)
            async with self._speech_lock:  # a speak() in progress is not idle, whatever the playout says
                pushing = self._pusher is not None and not self._pusher.done()
                if idle and not pushing and self.engine is engine and engine.wait_idle(0):
                    await self._switch("mic")
                    return

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
        """Play decoded speech through the avatar; returns its duration in seconds. A file sent
        while another is still being pushed follows what of that one was pushed."""
        async with self._speech_lock:
            await self._cancel_pusher()
            if self.mode != "speech":
                await self._switch("speech")
            self._speak_cancel = cancel = threading.Event()
            self._pusher = asyncio.ensure_future(asyncio.to_thread(self._push_speech, self.engine, pcm, rate, cancel))
        self._watch_for_idle()
        return len(pcm) / rate

    def _push_speech(self, engine, pcm: np.ndarray, rate: int, cancel: threading.Event) -> None:
        step = int(SPEAK_PIECE_S * rate)
        try:
            for i in range(0, len(pcm), step):
                # Pushed as playback goes (the playout holds max_pending_s), never blocking under
                # the gate: an interrupt waits for it at most one non-blocking push.
                while True:
                    with self._push_gate:
                        if cancel.is_set():
                            engine.end_segment()  # what was pushed of it is an utterance of its own
                            return
                        try:
                            if not engine.push_audio(pcm[i : i + step], rate, timeout_s=0):
                                return  # the engine is stopping
                            break
                        except PlayoutFull:
                            pass
                    cancel.wait(PUSH_POLL_S)
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
        async with self._speech_lock:
            engine = self.engine
            if self.mode != "speech" or not isinstance(engine, Playout):
                return False
            # The cut comes first (within a frame of the request), then the pusher is joined;
            # under the gate nothing more of the file can be pushed after the cut.
            with self._push_gate:
                self._speak_cancel.set()
                engine.interrupt()
                self.last_cut_audio_pts = self.out.next_audio_pts
                self.out.cut_audio(self._epoch, time.monotonic_ns())
            await self._cancel_pusher()
        self._watch_for_idle()
        return True

    async def set_avatar(self, loaded: Loaded) -> None:
        mode = self.mode if self.mode in ("mic", "speech") else ("mic" if self._mic is not None else "speech")
        if mode == "speech":
            await self._cancel_pusher()
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
        if self._watch is not None:
            self._watch.cancel()
        self._ticker.cancel()
        await self.pc.close()
        log.info("session: closed")

    def stats(self) -> dict:
        engine = self.engine
        return {
            "mode": self.mode,
            "engine": engine.stats.summary() if engine is not None else None,
            "last_second": self.last_second,
            "webrtc": {
                **self.out.counters(),
                "mic_frames_in": self.mic_frames,
                "connection": self.pc.connectionState,
                "last_cut_audio_pts": self.last_cut_audio_pts,
            },
            "errors": list(self.engine_errors),
        }
