"""A Pipecat processor that turns TTS audio into a lip-synced avatar (extra `pipecat`).

Place it right after the TTS service, before the output transport. It consumes the TTS's
`TTSAudioRawFrame`s (the playout makes the frames from them) and, per output frame (25 fps),
pushes one plain `OutputImageRawFrame` and, while the avatar speaks, that frame's 40 ms of audio
as a `TTSAudioRawFrame`. This is how pipecat's own avatar services behave (Simli re-emits
`TTSAudioRawFrame`; images go out unmarked), and it is what the output transport needs:
- images are not marked `sync_with_audio`: such images only replace the still that a
  non-live transport redraws, and a `video_out_is_live=True` transport never writes them.
  Unmarked, every image takes the same path, idle or speaking, in both modes, so an idle frame
  can never overtake a speech frame; the playout has paired each image with its audio already.
- the transport raises `BotStartedSpeakingFrame` / `BotSpeakingFrame` / `BotStoppedSpeakingFrame`
  only for `TTSAudioRawFrame` (or `SpeechOutputAudioRawFrame`), so the speech audio keeps that type.
- each `TTSStoppedFrame` is held until the audio pushed before it has been played out and is
  then forwarded after that audio: the transport flushes its resampler and ends the bot's turn
  there (forwarded at once, it would do both in the middle of the reply).
- `InterruptionFrame` empties the playout, and frames made before it are not forwarded: no
  speech follows it beyond the frame already on its way.

Loading the avatar (and, on first use, exporting the checkpoint) can take longer than pipecat's
20 s limits for set-up and start, so it runs in a thread: from `load()` (await it before building
the pipeline, e.g. to size the transport with `transport_params()`) or else from `setup()`. The
`StartFrame` passes at once; until the avatar is ready the transport shows the avatar's first
frame and TTS audio passes through unchanged (the bot is heard, not yet lip-synced). Nothing is
pushed before the output transport reports ready (`OutputTransportReadyFrame`): a transport
drops frames that come earlier.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import math
import threading
from collections import deque

import numpy as np
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    OutputTransportReadyFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor, FrameProcessorSetup

from mediaio import face_media
from models.errors import EngineFailure, LipsyncError
from realtime.config import EngineConfig
from realtime.live import build_playout
from realtime.playout import Playout, PlayoutItem, SegmentEnd

log = logging.getLogger(__name__)

DRAIN_SLACK_S = 5.0  # at EndFrame, how much longer than the speech still queued we wait for it to play


class _ReplyEnds:
    """Holds each TTSStoppedFrame until the speech pushed before it has played.

    Counted in output frames: a reply of `s` seconds, ended with `end_segment()`, plays as
    ceil(s * fps) frames (its last frame padded), and each SegmentEnd says how many frames its
    segment played. Everything here runs on the event loop."""

    def __init__(self, fps: float):
        self._fps = fps
        self._open_s = 0.0  # speech pushed since the last reply ended
        self._queued = 0  # frames of speech in the replies ended so far
        self._played = 0  # frames of speech played (segments that ended)
        self._held: deque[tuple[int, Frame]] = deque()

    def pushed(self, seconds: float) -> None:
        self._open_s += seconds

    def end_reply(self, stop: Frame | None = None) -> bool:
        """The reply in progress is complete (`stop` is forwarded once it has played); True when it
        had speech, i.e. the playout's segment is to be ended."""
        had_speech = self._open_s > 0
        if had_speech:
            self._queued += math.ceil(self._open_s * self._fps - 1e-6)
            self._open_s = 0.0
        if stop is not None:
            self._held.append((self._queued, stop))
        return had_speech

    def segment_played(self, frames: int) -> None:
        self._played += frames

    def due(self) -> list[Frame]:
        """The held frames whose speech has now played, in order."""
        out = []
        while self._held and self._held[0][0] <= self._played:
            out.append(self._held.popleft()[1])
        return out

    def take_all(self) -> list[Frame]:
        out = [f for _, f in self._held]
        self._held.clear()
        return out

    def clear(self) -> None:
        """Interrupted: nothing queued is played any more (and its stop frames go with it)."""
        self._open_s, self._queued, self._played = 0.0, 0, 0
        self._held.clear()

    @property
    def frames_to_play(self) -> int:
        return self._queued - self._played


def _first_frame(path: str) -> np.ndarray:
    """The avatar's first frame (BGR), read without loading the avatar: shown while it loads."""
    if face_media.is_image(path):
        return face_media.read_image(path)
    frames, _ = face_media.read_video(path, 1)
    return frames[0]


def _image_frame(bgr: np.ndarray) -> OutputImageRawFrame:
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    return OutputImageRawFrame(image=rgb.tobytes(), size=(bgr.shape[1], bgr.shape[0]), format="RGB")


def _int16(pcm: np.ndarray) -> bytes:
    # The inverse of the playout's int16 -> float scale (1/32768): pushed samples come back exact.
    return np.clip(np.round(pcm * 32768.0), -32768, 32767).astype(np.int16).tobytes()


def _stop(pl: Playout, when: str) -> None:
    try:
        pl.stop()
    except EngineFailure as e:
        log.error("lipsync playout stopped %s: %s", when, e)


class LipsyncVideoService(FrameProcessor):
    """The avatar as the face of a Pipecat bot; see the module docstring.

    `avatar`: a photo or a video of the face; `checkpoint`, `engine`, `runtime`, `cfg`, `pcfg` as
    for `realtime.live.build_playout`. Set the output transport's video to the avatar's size and
    frame rate (`transport_params()` gives them once loaded)."""

    def __init__(
        self,
        avatar: str,
        checkpoint: str | None = None,
        *,
        engine: str = "auto",
        runtime=None,
        cfg: EngineConfig | None = None,
        pcfg=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._avatar = avatar
        self._cfg = cfg or EngineConfig()
        self._build = functools.partial(build_playout, avatar, [], checkpoint, runtime, self._cfg, pcfg, engine=engine)
        self._loading: concurrent.futures.Future[Playout] | None = None
        self._playout: Playout | None = None  # started: TTS audio goes to it
        self._transport_ready = asyncio.Event()
        self._starter: asyncio.Task | None = None
        self._pump: asyncio.Task | None = None
        self._ends = _ReplyEnds(self._cfg.fps)
        self._progress = asyncio.Event()  # a segment ended (EndFrame waits on it)
        self._interrupt_ns = -1  # playout clock at the last interrupt: frames emitted before it are stale
        self._awaiting_fresh = False  # since the interrupt, no frame emitted after it has come yet
        self._passthrough_logged = False
        self._closed = False

    # -- loading ------------------------------------------------------------------------------------
    def start_loading(self) -> None:
        """Start loading the avatar in a thread (once); `setup()` calls it if you did not."""
        if self._loading is not None:
            return
        fut: concurrent.futures.Future[Playout] = concurrent.futures.Future()
        self._loading = fut

        def run():
            try:
                fut.set_result(self._build())
            except BaseException as e:  # reported on the event loop (load(), or an ErrorFrame)
                fut.set_exception(e)

        # A daemon thread: a first-use export cannot be cancelled, and must not hold up exit.
        threading.Thread(target=run, name="lipsync-avatar-load", daemon=True).start()

    async def load(self) -> LipsyncVideoService:
        """Load the avatar now (before building the pipeline) and return this service; raises
        LipsyncError when the avatar or checkpoint cannot be used."""
        self.start_loading()
        assert self._loading is not None
        await asyncio.wrap_future(self._loading)
        return self

    @property
    def playout(self) -> Playout | None:
        """The loaded playout (its avatar, stats and gauges); None until the avatar is loaded."""
        fut = self._loading
        return fut.result() if fut is not None and fut.done() and fut.exception() is None else None

    def transport_params(self) -> dict:
        """The `TransportParams` video settings for this avatar: live video at the avatar's size
        and frame rate (each image written once, paced by the transport). Needs `await load()`."""
        pl = self.playout
        if pl is None:
            raise LipsyncError(
                "transport_params()",
                "a loaded avatar",
                "none loaded yet" if self._loading is None or not self._loading.done() else "its load failed",
                "await service.load() first (it raises why a load failed)",
            )
        if self._cfg.fps != int(self._cfg.fps):
            raise LipsyncError(
                "cfg.fps", "a whole frame rate (pipecat's video_out_framerate is an int)", repr(self._cfg.fps), "use 25"
            )
        width, height = pl.avatar.size
        return dict(
            video_out_enabled=True,
            video_out_is_live=True,
            video_out_width=width,
            video_out_height=height,
            video_out_framerate=int(self._cfg.fps),
        )

    # -- pipecat lifecycle --------------------------------------------------------------------------
    async def setup(self, setup: FrameProcessorSetup):
        await super().setup(setup)
        self.start_loading()  # never waited for here: set-up has a 20 s limit

    async def cleanup(self):
        await self._shutdown()  # first: its tasks are cancelled through the task manager
        await super().cleanup()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        pl = self._playout
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            self.start_loading()
            self._starter = self.create_task(self._start_when_ready(), "lipsync-start")
        elif isinstance(frame, OutputTransportReadyFrame):
            self._transport_ready.set()
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSAudioRawFrame) and pl is not None:
            pcm = np.frombuffer(frame.audio, np.int16).reshape(-1, frame.num_channels)
            try:
                await pl.apush_audio(pcm, frame.sample_rate)
            except EngineFailure as e:
                await self._playout_failed(e)
                await self.push_frame(frame, direction)
                return
            self._ends.pushed(len(pcm) / frame.sample_rate)
        elif isinstance(frame, TTSAudioRawFrame):
            if not self._passthrough_logged:
                self._passthrough_logged = True
                log.warning("the avatar is not ready yet: TTS audio passes through without lip-sync")
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSStoppedFrame) and pl is not None:
            if self._ends.end_reply(frame):
                pl.end_segment()
            for f in self._ends.due():
                await self.push_frame(f)
        elif isinstance(frame, InterruptionFrame):
            if pl is not None:
                pl.interrupt()
                self._interrupt_ns = pl.clock.now_ns()  # after the call: every earlier tick is stale
                self._awaiting_fresh = True
            self._ends.clear()
            await self.push_frame(frame, direction)
        elif isinstance(frame, EndFrame):
            await self._drain()
            await self._shutdown()
            await self.push_frame(frame, direction)
        elif isinstance(frame, CancelFrame):
            await self._shutdown()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def _start_when_ready(self) -> None:
        """Once the transport is ready: the avatar's first frame until the avatar is loaded, then
        the playout."""
        loading = self._loading
        assert loading is not None
        loaded = asyncio.wrap_future(loading)
        await self._transport_ready.wait()
        if not loaded.done():
            await self._show_still_until(loaded)
        try:
            pl = await loaded
        except Exception as e:
            await self.push_error(f"lipsync avatar: {e}", exception=e, force_treat_as_permanent=True)
            return
        if self._closed:
            return
        pl.start()
        self._playout = pl
        self._pump = self.create_task(self._forward(pl), "lipsync-output")

    async def _show_still_until(self, loaded: asyncio.Future) -> None:
        try:
            still = await asyncio.to_thread(_first_frame, self._avatar)
        except LipsyncError:
            await asyncio.wait({loaded})  # the load reports the same problem
            return
        rgb = _image_frame(still)
        loop = asyncio.get_running_loop()
        period_s, due = 1.0 / self._cfg.fps, loop.time()
        while not loaded.done():
            # A new frame object each time (pipecat tracks frames by id); the pixels are shared.
            await self.push_frame(OutputImageRawFrame(image=rgb.image, size=rgb.size, format=rgb.format))
            due += period_s
            await asyncio.wait({loaded}, timeout=max(0.0, due - loop.time()))

    # -- output -------------------------------------------------------------------------------------
    def _stale(self, item: PlayoutItem) -> bool:
        """Emitted before the last interrupt (still in the reader queue when it came)."""
        return item.video.meta["emitted_ns"] < self._interrupt_ns

    async def _forward(self, pl: Playout) -> None:
        # A live transport writes an image one frame after it gets it (its video task waits out the
        # frame first) but starts writing audio at once: each frame's audio follows the next
        # frame's image, so that both are written together. (A non-live transport shows the image
        # at its next redraw, so there it leads its audio by up to a frame: the tolerable side.)
        spoken: PlayoutItem | None = None  # the last speech frame, whose audio is not pushed yet
        async for item in pl:
            if isinstance(item, SegmentEnd):
                spoken = await self._push_audio_of(spoken)
                # Before the first frame after an interrupt, a SegmentEnd is from before it too.
                if not item.interrupted and not self._awaiting_fresh:
                    self._ends.segment_played(round(item.position_s * self._cfg.fps))
                    for f in self._ends.due():
                        await self.push_frame(f)
                self._progress.set()
                continue
            if self._stale(item):
                if item.video.meta["segment"] is not None:
                    continue  # speech that was interrupted
            else:
                self._awaiting_fresh = False
            await self.push_frame(_image_frame(item.video.bgr))
            spoken = await self._push_audio_of(spoken)
            if item.video.meta["segment"] is not None:
                spoken = item
        if pl.error is not None and not self._closed:
            await self._playout_failed(pl.error)

    async def _push_audio_of(self, item: PlayoutItem | None) -> None:
        # Checked here, not when the frame came: an interrupt may have come since.
        if item is not None and not self._stale(item):
            pcm = item.audio.pcm
            await self.push_frame(
                TTSAudioRawFrame(audio=_int16(pcm), sample_rate=item.audio.sample_rate_hz, num_channels=1)
            )
        return None

    async def _drain(self) -> None:
        """At EndFrame: end the reply in progress and let everything pushed play out first."""
        pl = self._playout
        if pl is None:
            return
        if self._ends.end_reply():
            pl.end_segment()
        deadline = asyncio.get_running_loop().time() + self._ends.frames_to_play / self._cfg.fps + DRAIN_SLACK_S
        while self._ends.frames_to_play > 0 and self._pump is not None and not self._pump.done():
            self._progress.clear()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                log.warning(
                    "EndFrame: %d frames of speech had not played out; ending anyway", self._ends.frames_to_play
                )
                break
            try:
                await asyncio.wait_for(self._progress.wait(), left)
            except TimeoutError:
                pass
        for f in self._ends.take_all():  # the transport needs them to end the bot's turn
            await self.push_frame(f)

    async def _playout_failed(self, e: BaseException) -> None:
        pl, self._playout = self._playout, None
        await self.push_error(f"lipsync playout failed: {e}", exception=e, force_treat_as_permanent=True)
        for f in self._ends.take_all():  # from here on TTS frames pass through: these go first
            await self.push_frame(f)
        self._ends.clear()
        if pl is not None:
            await asyncio.to_thread(_stop, pl, "after its failure")

    async def _shutdown(self) -> None:
        """Stop the tasks and the playout (EndFrame, CancelFrame, cleanup(): whichever comes first)."""
        self._closed = True
        for task in (self._starter, self._pump):
            if task is not None and not task.done():
                await self.cancel_task(task)
        self._starter = self._pump = None
        pl, self._playout = self._playout, None
        if pl is not None:
            await asyncio.to_thread(_stop, pl, "at shutdown")
