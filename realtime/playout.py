"""Playout for pushed speech (TTS, a voice agent): an output clock that never stalls.

A TTS engine hands over a sentence in bursts, faster than real time, and the user may cut it
short. Unlike the capture engine (microphone audio is the clock; late frames are skipped),
playout plays *everything* pushed at real time:

  push_audio --pending (bounded in seconds: blocks or refuses)--> generator thread
  generator: resample (16 kHz for the mel, output rate for the sound), mel window per frame,
             lips or idle, crossfade (realtime.frame_maker); each frame paired with exactly
             its 1/fps of audio
  generator --ahead (bounded: lookahead_ms of frames, waits)--> one tick per output frame:
             the next speech frame if it is there, else an idle frame with silence

Exactly one component owns the clock that makes the ticks (`Pacing`):
  PLAYOUT   the playout's pacer thread ticks every 1/fps (re-anchoring after a stall, never
            bursting) for sinks without a clock of their own (virtual camera, RTMP, files): one
            SinkRunner per sink, and a copy for a `frames()` reader.
  CONSUMER  the reader owns the clock (LiveKit's AVSynchronizer, pipecat's output transport,
            an aiortc track's `recv()`): each `frames()` / `recv()` pull makes one tick, so
            frames are made as they are pulled, up to the lookahead; the audio producer waits
            (back-pressure), never the consumer.

What every sink and reader gets is the paired frame and audio, so the sound heard is the sound
the lips were made from. `interrupt()` (alias `clear_buffer()`) drops queued speech and every
frame made ahead; the very next tick starts the crossfade back to idle with silence, so no
speech reaches a consumer after the call beyond a frame it was already being handed.
`end_segment()` ends an utterance; so does `segment_idle_end_ms` without audio (a long pause:
the timer runs from when the generator has taken all pushed audio, not from a push's arrival).
Events (`on_event`): ("playback_started", segment) and ("playback_finished", SegmentEnd), called
on the ticking thread; a listener that raises is logged and the playout goes on. A reader gets
SegmentEnd in order between the frames, on a path that never drops it.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import soxr

from models.errors import EngineFailure
from models.mel import WINDOW_FRAMES, chunk_start
from realtime.audio_input import to_mono_float32
from realtime.clock import MediaClock, MonotonicClock
from realtime.compositor import crossfade
from realtime.config import MODEL_SAMPLE_RATE_HZ, EngineConfig
from realtime.frame_maker import FrameMaker
from realtime.frames import AudioChunk, FrameKind, FrameMeta, VideoFrame
from realtime.mel_stream import MelStream
from realtime.protocols import FaceDecoder, Renderer, Sink
from realtime.queues import BoundedQueue, Closed, Policy
from realtime.renderer import Wav2LipRenderer
from realtime.sinks.delivery import SinkRunner, close_all
from realtime.stage_timer import Stage, bind, span
from realtime.stats import Stats

SR = MODEL_SAMPLE_RATE_HZ
log = logging.getLogger(__name__)


class Pacing(enum.Enum):
    """Who owns the output clock (see the module docstring)."""

    PLAYOUT = "playout"  # the playout's pacer: sinks without a clock; frames() reads a copy
    CONSUMER = "consumer"  # the reader's pulls: each frames()/recv() item is made as it is asked for


class _Next(enum.Enum):
    """What a tick found instead of a speech frame."""

    LATE = "late"  # an utterance is playing and its next frame did not come in time
    INTERRUPTED = "interrupted"  # an interrupt came while the tick waited


@dataclass(frozen=True)
class PlayoutConfig:
    output_rate_hz: int = 48_000  # the paired audio every sink and reader receives
    lookahead_ms: int = 400  # frames generated ahead of the output clock
    max_pending_s: float = 20.0  # pushed audio not yet taken by the generator; pushes wait beyond
    start_buffer_ms: int = 120  # an utterance starts playing once this much of it is made (or all of it)
    late_frame_wait_ms: int = 30  # mid-utterance, how long a tick waits for a late speech frame
    # An utterance nobody ended is ended after this long without audio, counted from when all of
    # it was taken in (a TTS that stalls mid-reply for a second or two stays one utterance).
    segment_idle_end_ms: int = 3_000
    restart_after_ms: int = 200  # a tick later than this re-anchors the clock (no catch-up burst)
    output_queue_ms: int = 1_000  # Pacing.PLAYOUT: frames kept for a `frames()` reader; oldest dropped, events never


@dataclass(frozen=True)
class SegmentEnd:
    """End of one utterance in the output: how much of it played, and whether it was cut."""

    segment: int
    position_s: float
    interrupted: bool


@dataclass(frozen=True)
class PlayoutItem:
    video: VideoFrame
    audio: AudioChunk  # exactly 1/fps of sound at output_rate_hz, starting at the frame's time


@dataclass(frozen=True)
class _End:
    segment: int
    epoch: int


@dataclass(frozen=True)
class _PushedAudio:
    """A push_audio call, waiting for the generator thread."""

    segment: int
    pcm: np.ndarray  # float32 mono at rate_hz
    rate_hz: int


@dataclass(frozen=True)
class _EndSegment:
    """end_segment(), or an utterance nobody ended, for the generator thread."""

    segment: int


class PlayoutFull(RuntimeError):
    """push_audio could not queue the audio in time: more than max_pending_s is waiting."""


class _Segment:
    """One utterance being turned into frames: its own mel stream and resamplers."""

    def __init__(self, seg_id: int, rate: int, out_rate: int, history_ms: int):
        self.id, self.rate = seg_id, rate
        self.mel = MelStream(history_frames=history_ms * 80 // 1000)
        self.to16 = soxr.ResampleStream(rate, SR, 1, dtype="float32", quality="HQ") if rate != SR else None
        self.to_out = (
            soxr.ResampleStream(rate, out_rate, 1, dtype="float32", quality="HQ") if rate != out_rate else None
        )
        self.hist = np.zeros(history_ms * SR // 1000, np.float32)
        self.samples16 = 0
        self.out: collections.deque[np.ndarray] = collections.deque()  # output-rate audio not yet paired with a frame
        self.out_len = 0
        self.in_samples = 0  # at the input rate: the segment's length
        self.frames = 0  # frames made
        self.ended = False

    def add(self, pcm: np.ndarray) -> np.ndarray:
        self.in_samples += len(pcm)
        p16 = self.to16.resample_chunk(pcm) if self.to16 is not None else pcm
        po = self.to_out.resample_chunk(pcm) if self.to_out is not None else pcm
        self._keep(p16)
        self._queue_out(po)
        return p16

    def finish(self) -> np.ndarray:
        tail16 = (
            self.to16.resample_chunk(np.zeros(0, np.float32), last=True)
            if self.to16 is not None
            else np.zeros(0, np.float32)
        )
        if self.to_out is not None:
            self._queue_out(self.to_out.resample_chunk(np.zeros(0, np.float32), last=True))
        self._keep(tail16)
        self.ended = True
        return tail16

    def _keep(self, p16: np.ndarray) -> None:
        idx = np.arange(self.samples16, self.samples16 + len(p16)) % len(self.hist)
        self.hist[idx] = p16
        self.samples16 += len(p16)

    def _queue_out(self, po: np.ndarray) -> None:
        if len(po):
            self.out.append(po)
            self.out_len += len(po)

    def take_out(self, n: int) -> np.ndarray:
        """The next `n` output samples (zero-padded when the utterance has fewer left)."""
        buf = np.zeros(n, np.float32)
        got = 0
        while got < n and self.out:
            head = self.out[0]
            k = min(n - got, len(head))
            buf[got : got + k] = head[:k]
            got += k
            if k == len(head):
                self.out.popleft()
            else:
                self.out[0] = head[k:]
        self.out_len -= got
        return buf


class Playout:
    """Pushed speech in, paced and paired frames + audio out; see the module docstring."""

    def __init__(
        self,
        avatar,
        renderer: Renderer | FaceDecoder,
        sinks: list[Sink],
        cfg: EngineConfig = EngineConfig(),
        pcfg: PlayoutConfig = PlayoutConfig(),
        clock: MediaClock | None = None,
        deliver_to_reader=True,
        pacing: Pacing = Pacing.PLAYOUT,
    ):
        """`pacing`: who ticks (see Pacing). With Pacing.CONSUMER there are no sinks and the
        frames()/recv() reader is the consumer; `deliver_to_reader` is for Pacing.PLAYOUT (a copy
        of what the sinks get, for a reader; False when nobody reads it)."""
        if pacing is Pacing.CONSUMER and sinks:
            raise ValueError(
                f"Playout: expected no sinks with Pacing.CONSUMER (the reader owns the clock), found "
                f"{len(sinks)}; use Pacing.PLAYOUT to drive sinks"
            )
        self.pacing = pacing
        if not isinstance(renderer, Renderer):
            renderer = Wav2LipRenderer(renderer, avatar, cfg.blend)
        self.avatar, self.renderer, self.cfg, self.pcfg = avatar, renderer, cfg, pcfg
        self.clock = clock or MonotonicClock()
        self.stats = Stats()
        self._frame_ns = round(1e9 / cfg.fps)
        out_per_frame = pcfg.output_rate_hz / cfg.fps
        if abs(out_per_frame - round(out_per_frame)) > 1e-9:
            raise ValueError(
                f"output_rate_hz {pcfg.output_rate_hz} is not a whole number of samples per frame at {cfg.fps} fps"
            )
        self._spf_out = round(out_per_frame)
        self._runners = [SinkRunner(s, cfg.fps, on_error=self._fail) for s in sinks]
        self.stats.add_section("sinks", lambda: {r.sink.name: r.counts() for r in self._runners})
        self._stopped: tuple[dict | None, EngineFailure | None] | None = None  # what stop() gave
        self._reader = (
            BoundedQueue(cfg.frames_in(pcfg.output_queue_ms), Policy.DROP_OLDEST, "playout_out")
            if deliver_to_reader and pacing is Pacing.PLAYOUT
            else None
        )
        # Pacing.PLAYOUT: the reader's segment events, beside its lossy frame queue, each with the
        # pts of the frame it comes before. A few per utterance: the bound is only reached by a
        # reader that has not read for hours (then the oldest go).
        self._reader_events: collections.deque[tuple[int, SegmentEnd]] = collections.deque(maxlen=4096)
        self._reader_held: PlayoutItem | None = None  # a frame taken that waits behind an event
        # Pacing.CONSUMER: what the current pull made (segment events, then its frame); read by
        # the same puller, so it never holds more than one tick's output.
        self._outbox: collections.deque[PlayoutItem | SegmentEnd] = collections.deque()
        self._pull_lock = threading.Lock()  # one tick at a time, whoever pulls
        self._cv = threading.Condition()
        self._pending: collections.deque[_PushedAudio | _EndSegment] = collections.deque()
        self._pending_s = 0.0
        self._ahead = BoundedQueue(cfg.frames_in(pcfg.lookahead_ms), Policy.NEVER_DROP, "playout_ahead")
        self._seg_in = 0  # segment id new pushes go to
        self._seg_open = False
        self._epoch = 0  # bumped by interrupt(): older work is discarded
        self._speaking_seg: int | None = None  # segment whose frames the pacer is emitting
        self._seg_played: dict[int, int] = {}
        self._maker = FrameMaker(avatar, renderer, cfg)
        self._last_speech: np.ndarray | None = None
        self._fade_from: np.ndarray | None = None
        self._fade_alpha = 0.0
        self._listeners: list[Callable[[str, object], None]] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._closing = False
        self._error: BaseException | None = None
        self._out_pts = 0
        self._interrupt_pending = False
        self._busy = False  # the generator is working on a command (wait_idle)
        self._alpha_shown = 0.0  # blend weight of the last speech frame shown (where a fade starts)
        self._silence = np.zeros(self._spf_out, np.float32)
        self._av_offset_ms: float | None = None  # media time of the audio sent minus that of the video, at _emit

    # -- API ----------------------------------------------------------------------------------------
    def on_event(self, callback) -> None:
        """`callback(kind, payload)`: ("playback_started", segment) or ("playback_finished", SegmentEnd)."""
        self._listeners.append(callback)

    def push_audio(self, pcm, sample_rate_hz: int, timeout_s: float | None = None) -> bool:
        """Queue speech for playout (int16 or float, mono or interleaved). Blocks while more than
        max_pending_s is waiting; with `timeout_s`, raises PlayoutFull once it has passed."""
        self._raise_if_failed()
        a = to_mono_float32(pcm, sample_rate_hz)
        if not len(a):
            return True
        dur = len(a) / int(sample_rate_hz)
        with self._cv:
            ok = self._cv.wait_for(
                lambda: (
                    self._pending_s + dur <= self.pcfg.max_pending_s
                    or not self._pending
                    or self._error is not None
                    or self._closing
                ),
                timeout_s,
            )
            if self._error is not None:
                self._raise_if_failed()
            if self._closing:
                return False
            if not ok:
                raise PlayoutFull(
                    f"push_audio: expected room for {dur:.2f} s of audio within {timeout_s} s, found "
                    f"{self._pending_s:.1f} s already waiting (max_pending_s "
                    f"{self.pcfg.max_pending_s:g}); push as playback proceeds or raise max_pending_s"
                )
            self._seg_open = True
            self._pending.append(_PushedAudio(self._seg_in, a, int(sample_rate_hz)))
            self._pending_s += dur
            self._cv.notify_all()
        return True

    async def apush_audio(self, pcm, sample_rate_hz: int) -> bool:
        """push_audio for asyncio code: waits for room without blocking the event loop."""
        a = to_mono_float32(pcm, sample_rate_hz)  # bad input fails here, in the caller's task
        while True:
            try:
                return self.push_audio(a, sample_rate_hz, timeout_s=0)
            except PlayoutFull:
                await asyncio.sleep(self._frame_ns / 1e9)

    def end_segment(self) -> None:
        """The current utterance is complete: its last frames are made without waiting for more."""
        with self._cv:
            if self._seg_open:
                self._pending.append(_EndSegment(self._seg_in))
                self._seg_in += 1
                self._seg_open = False
                self._cv.notify_all()

    def interrupt(self) -> None:
        """Barge-in: drop every queued sample and frame of speech; the next tick fades to idle."""
        with self._cv:
            self._epoch += 1
            self._pending.clear()
            self._pending_s = 0.0
            if self._seg_open:
                self._seg_in += 1
                self._seg_open = False
            self._interrupt_pending = True
            # Made for the consumer but not yet handed over: speech goes, events stay.
            kept = [
                x for x in self._outbox if not (isinstance(x, PlayoutItem) and x.video.meta.get("segment") is not None)
            ]
            self._outbox.clear()
            self._outbox.extend(kept)
            self._cv.notify_all()
        self._ahead.clear()
        self._ahead.put(_End(-1, -1))  # wakes a tick that is waiting for a speech frame

    clear_buffer = interrupt

    @property
    def epoch(self) -> int:
        """How many interrupts so far. An adapter that hands a frame's picture and sound over
        in two steps compares it across them: if it moved, the sound was cut (drop it)."""
        return self._epoch

    # -- output stream (for transports that take frames themselves) -------------------------------
    def frames(self, timeout_s: float | None = None) -> Iterator[PlayoutItem | SegmentEnd]:
        """Yields PlayoutItem and SegmentEnd in output order until the playout is stopped. With
        Pacing.CONSUMER each item is made when asked for (`timeout_s` is not used: a pull returns
        within late_frame_wait_ms); with Pacing.PLAYOUT it is the pacer's copy (None when nothing
        came within `timeout_s`, then the iteration ends)."""
        if self.pacing is Pacing.CONSUMER:
            while True:
                try:
                    yield self._pull()
                except Closed:
                    return
        reader = self._reader
        if reader is None:
            raise RuntimeError("frames(): this playout was made with deliver_to_reader=False")
        while True:
            try:
                item = self._read(reader, timeout_s)
            except Closed:
                return
            if item is None:
                return
            yield item

    async def recv(self) -> PlayoutItem | SegmentEnd:
        """The next PlayoutItem or SegmentEnd (aiortc's track shape); raises StopAsyncIteration at the end."""
        if self.pacing is Pacing.CONSUMER:
            with self._cv:
                ready = self._outbox.popleft() if self._outbox else None
            if ready is not None:
                return ready
            try:
                # A tick may wait up to late_frame_wait_ms for a late speech frame: off the loop.
                return await asyncio.to_thread(self._pull)
            except Closed:
                raise StopAsyncIteration from None
        reader = self._reader
        if reader is None:
            raise RuntimeError("recv(): this playout was made with deliver_to_reader=False")
        while True:
            try:
                item = self._read(reader, timeout_s=0)
            except Closed:
                raise StopAsyncIteration from None
            if item is not None:
                return item
            await asyncio.sleep(self._frame_ns / 4e9)

    def _read(self, reader: BoundedQueue, timeout_s: float | None) -> PlayoutItem | SegmentEnd | None:
        """Pacing.PLAYOUT's reader: the next frame from the lossy queue, with the events that came
        before it first (None: nothing within `timeout_s`). Raises Closed at the end."""
        with self._cv:
            held, events = self._reader_held, self._reader_events
            if events and (held is None or events[0][0] <= held.video.pts):
                return events.popleft()[1]
            if held is not None:
                self._reader_held = None
                return held
        try:
            item = reader.get(timeout_s)
        except Closed:
            with self._cv:
                if self._reader_events:
                    return self._reader_events.popleft()[1]
            raise
        if item is None:
            return None
        with self._cv:
            if self._reader_events and self._reader_events[0][0] <= item.video.pts:
                self._reader_held = item
                return self._reader_events.popleft()[1]
        return item

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self.recv()

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> Playout:
        for r in self._runners:
            r.start(*self.avatar.size)
        loops = [(self._generate_loop, "playout-generator")]
        if self.pacing is Pacing.PLAYOUT:
            loops.append((self._pace_loop, "playout-pacer"))
        for fn, name in loops:
            t = threading.Thread(target=self._guard(fn), name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Until the next utterance can start at the next tick (its start buffer is made), e.g.
        to preroll before opening a stream; False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: self._ready_to_start() or self._error is not None, timeout_s)

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Until everything pushed has played (the pacer is back to idle frames)."""
        with self._cv:
            return self._cv.wait_for(
                lambda: (
                    (
                        not self._pending
                        and not self._seg_open
                        and self._speaking_seg is None
                        and not len(self._ahead)
                        and not self._busy
                    )
                    or self._error is not None
                ),
                timeout_s,
            )

    def stop(self) -> dict:
        """Stop the threads, close every sink (even if one's close() raises) and return the stats
        summary, or raise why the playout failed; calling it again gives the same outcome."""
        if self._stopped is None:
            try:
                self._stopped = (self._stop_once(), None)
            except EngineFailure as e:
                self._stopped = (None, e)
        summary, error = self._stopped
        if error is not None:
            raise error
        assert summary is not None  # _stop_once gives a summary or raises
        return summary

    def _stop_once(self) -> dict:
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._stop.set()
        self._ahead.close()
        for t in self._threads:
            t.join()
        closing = close_all(self._runners)
        if self._reader is not None:
            self._reader.close()
        self._raise_if_failed()
        for r in self._runners:
            r.raise_if_failed()
        if closing is not None:
            raise closing
        out = self.stats.summary()
        out["sink_frames_dropped"] = {r.sink.name: r.video_dropped for r in self._runners}
        return out

    def gauges(self) -> dict:
        """Queue depths now (pushed audio waiting, frames made ahead, the reader's queue), the A/V
        offset at the hand-off to the sinks (0: every frame leaves with exactly its own audio)
        and each sink's counts; for the per-interval stats."""
        with self._cv:
            pending_s = self._pending_s
        return {
            "queues": {
                "pending_audio_s": round(pending_s, 2),
                self._ahead.name: len(self._ahead),
                **({self._reader.name: len(self._reader)} if self._reader is not None else {}),
                **({"playout_outbox": len(self._outbox)} if self.pacing is Pacing.CONSUMER else {}),
            },
            "av_offset_ms": self._av_offset_ms,
            "sinks": {r.sink.name: r.counts() for r in self._runners},
        }

    def _guard(self, fn):
        def run():
            try:
                fn()
            except BaseException as e:  # surfaced at the next push and by stop()
                self._fail(e)

        return run

    def _fail(self, e: BaseException) -> None:
        with self._cv:
            if self._error is None:
                self._error = e
            self._cv.notify_all()
        self._stop.set()
        self._ahead.close()
        if self._reader is not None:
            self._reader.close()

    @property
    def error(self) -> BaseException | None:
        return self._error

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise EngineFailure.wrap("playout", self._error)

    # -- generator thread ---------------------------------------------------------------------------
    def _generate_loop(self) -> None:
        bind(self.stats.stages)
        seg: _Segment | None = None
        epoch = self._epoch
        last_audio_ns = self.clock.now_ns()
        idle_end_ns = self.pcfg.segment_idle_end_ms * 1_000_000
        while not self._stop.is_set():
            with self._cv:
                self._busy = False
                self._cv.notify_all()
                # wait_for calls the predicate before returning: `epoch` is this iteration's.
                self._cv.wait_for(lambda: self._pending or self._stop.is_set() or self._epoch != epoch, 0.05)  # noqa: B023
                if self._epoch != epoch:
                    epoch, seg = self._epoch, None
                    self._maker.reset()  # an interrupted utterance fades out in the pacer
                    continue
                if not self._pending:
                    if seg is not None and not seg.ended and self.clock.now_ns() - last_audio_ns > idle_end_ns:
                        # Nobody called end_segment: the utterance ends here, its last frames are made.
                        if self._seg_open and self._seg_in == seg.id:
                            self._seg_in += 1
                            self._seg_open = False
                        cmd: _PushedAudio | _EndSegment = _EndSegment(seg.id)
                    else:
                        continue
                else:
                    cmd = self._pending.popleft()
                    if isinstance(cmd, _PushedAudio):
                        self._pending_s = max(0.0, self._pending_s - len(cmd.pcm) / cmd.rate_hz)
                self._busy = True
                self._cv.notify_all()
            if isinstance(cmd, _PushedAudio):
                seg_id, pcm, rate = cmd.segment, cmd.pcm, cmd.rate_hz
                if seg is None or seg.id != seg_id or seg.rate != rate:
                    if seg is not None and not seg.ended:  # a rate change inside an utterance: close it
                        self._finish_segment(seg, epoch)
                    seg = _Segment(seg_id, rate, self.pcfg.output_rate_hz, self.cfg.history_ms)
                # In 100 ms pieces: a long push (a whole sentence) must not run past the mel and
                # audio history before its frames are made; the lookahead queue throttles us.
                step = max(1, rate // 10)
                for off in range(0, len(pcm), step):
                    if epoch != self._epoch or self._stop.is_set():
                        break
                    seg.mel.push(seg.add(pcm[off : off + step]))
                    self._make_frames(seg, epoch, final=False)
                # The silence that may end the utterance starts now: making its frames waited on
                # the lookahead for about the push's own length, and that was no pause.
                last_audio_ns = self.clock.now_ns()
            else:
                if seg is not None and seg.id == cmd.segment and not seg.ended:
                    self._finish_segment(seg, epoch)
                seg = None

    def _finish_segment(self, seg: _Segment, epoch: int) -> None:
        tail = seg.finish()
        if len(tail):
            seg.mel.push(tail)
        seg.mel.flush()
        self._make_frames(seg, epoch, final=True)
        if epoch == self._epoch:
            self._ahead.put_wait(_End(seg.id, epoch))
            with self._cv:
                self._cv.notify_all()

    def _total_frames(self, seg: _Segment) -> int:
        return int(np.ceil(seg.in_samples * self.cfg.fps / seg.rate - 1e-9))

    def _make_frames(self, seg: _Segment, epoch: int, final: bool) -> None:
        fps, off = self.cfg.fps, self.cfg.mel_offset_frames
        while epoch == self._epoch and not self._stop.is_set():
            k = seg.frames
            if final and k >= self._total_frames(seg):
                break
            s = max(0, chunk_start(k, fps, off))
            if not final and (s + WINDOW_FRAMES > seg.mel.frames_ready or seg.out_len < self._spf_out):
                break
            # Past the end, Wav2Lip's reference takes the last full window.
            s = min(s, max(0, seg.mel.frames_ready - WINDOW_FRAMES))
            with span(Stage.SCHEDULE):
                item = self._frame(seg, k, s, epoch)
            seg.frames += 1
            if not self._ahead.put_wait(item):
                return
            with self._cv:
                self._cv.notify_all()  # wait_ready()

    def _frame(self, seg: _Segment, k: int, s: int, epoch: int) -> PlayoutItem:
        # The avatar frame this output tick will show: the pacer's clock, plus what is queued ahead.
        pts = self._out_pts + len(self._ahead) + 1
        idx = self.avatar.index(pts)
        self._maker.gate(seg.hist, seg.samples16, s)

        def fill_mel(buf: np.ndarray) -> None:
            # Past the end of an utterance the last full window stays in `buf` (Wav2Lip's reference).
            if s + WINDOW_FRAMES <= seg.mel.frames_ready:
                seg.mel.window(s, out=buf)

        made = self._maker.make(idx, fill_mel)
        # A faceless frame plays as idle here (playout's picture is the avatar's own frame).
        kind = FrameKind.IDLE if made.kind is FrameKind.NO_FACE else made.kind
        out = made.bgr
        audio = seg.take_out(self._spf_out)
        return PlayoutItem(
            VideoFrame(out, -1, FrameMeta(kind=kind, segment=seg.id, epoch=epoch, alpha=self._maker.alpha)),
            AudioChunk(audio, self.pcfg.output_rate_hz, -1, 0),
        )

    # -- ticks: the pacer thread (Pacing.PLAYOUT) or each pull (Pacing.CONSUMER) --------------------
    def _pull(self) -> PlayoutItem | SegmentEnd:
        """The consumer's next item: what the last tick left, else one more tick. Raises Closed
        once the playout is stopped."""
        with self._pull_lock:
            while True:
                with self._cv:
                    if self._outbox:
                        return self._outbox.popleft()
                if self._stop.is_set():
                    raise Closed("playout")
                self._tick(self.clock.now_ns())

    def _out(self, item: PlayoutItem | SegmentEnd) -> None:
        """Hands a tick's output to the reader, in order."""
        if self.pacing is Pacing.CONSUMER:
            with self._cv:
                self._outbox.append(item)
        elif self._reader is not None:
            if isinstance(item, SegmentEnd):
                with self._cv:  # before the frame this tick is about to emit
                    self._reader_events.append((self._out_pts, item))
            else:
                self._reader.put(item)

    def _pace_loop(self) -> None:
        bind(self.stats.stages)
        t0 = self.clock.now_ns()
        n = 0
        while not self._stop.is_set():
            due = t0 + n * self._frame_ns
            self.clock.sleep_until_ns(due, self._stop)
            if self._stop.is_set():
                break
            now = self.clock.now_ns()
            if now - due > self.pcfg.restart_after_ms * 1_000_000:
                t0, n = now, 0  # the process stalled: restart pacing here, never burst to catch up
                due = now
            self._tick(now)
            n += 1

    def _take_interrupt(self) -> None:
        with self._cv:
            interrupted, self._interrupt_pending = self._interrupt_pending, False
        if interrupted and self._speaking_seg is not None:
            self._finish_playback(self._speaking_seg, True)

    def _tick(self, now: int) -> None:
        self._take_interrupt()
        item = self._next_item()
        if item is _Next.INTERRUPTED:  # arrived while this tick waited: it already shows the fade
            self._take_interrupt()
            item = None
        pts = self._out_pts
        idle = self.avatar.frames[self.avatar.index(pts)]
        if isinstance(item, PlayoutItem):
            seg = item.video.meta["segment"]
            assert seg is not None  # _frame() sets the utterance of every speech frame
            if self._speaking_seg != seg:
                if self._speaking_seg is not None:  # a segment without its end marker (rate change)
                    self._finish_playback(self._speaking_seg, False)
                self._speaking_seg = seg
                self._seg_played[seg] = 0
                self._emit_event("playback_started", seg)
            self._seg_played[seg] += 1
            bgr, audio, kind = item.video.bgr, item.audio.pcm, item.video.meta["kind"]
            self._last_speech, self._alpha_shown = bgr, item.video.meta["alpha"]
            self._fade_from = None
        else:
            bgr, audio, kind = idle, self._silence, FrameKind.IDLE
            if self._fade_from is not None:
                self._fade_alpha = max(0.0, self._fade_alpha - 1.0 / self.cfg.frames_in(self.cfg.crossfade_ms))
                if self._fade_alpha > 1e-6:  # thirds do not sum to exactly 1
                    bgr = crossfade(self._fade_from, idle, self._fade_alpha)
                    kind = FrameKind.CROSSFADE
                else:
                    self._fade_from = None
            elif item is _Next.LATE:
                bgr, kind = self._last_speech if self._last_speech is not None else idle, FrameKind.HELD
        # "segment": the utterance this frame belongs to (None while idle or fading out), so
        # that adapters can send audio only while speaking.
        seg_now = (
            item.video.meta["segment"]
            if isinstance(item, PlayoutItem)
            else (self._speaking_seg if kind == FrameKind.HELD else None)
        )
        self._emit(
            VideoFrame(bgr, pts, FrameMeta(kind=kind, emitted_ns=now, segment=seg_now)),
            AudioChunk(audio, self.pcfg.output_rate_hz, pts * self._spf_out, now),
        )
        self._out_pts += 1
        with self._cv:
            self._cv.notify_all()

    def _next_item(self) -> PlayoutItem | _Next | None:
        """This tick's speech frame (ending finished utterances on the way), else None, or LATE
        when an utterance is playing and its next frame has not come in time."""
        self._drop_stale()
        while True:
            if self._interrupt_pending:
                return _Next.INTERRUPTED
            if self._speaking_seg is None and not self._ready_to_start():
                return None
            wait = self.pcfg.late_frame_wait_ms / 1000 if self._speaking_seg is not None else 0
            try:
                item = self._ahead.get(timeout_s=wait)
            except Closed:
                return None
            if isinstance(item, _End):
                if item.epoch == self._epoch and item.segment == self._speaking_seg:
                    self._finish_playback(item.segment, False)
                continue
            if item is not None and item.video.meta["epoch"] != self._epoch:
                continue  # made before an interrupt
            if item is None and self._speaking_seg is not None:
                self.stats.late += 1
                return _Next.LATE
            return item

    def _drop_stale(self) -> None:
        """Work made before an interrupt (and the marker that woke us) leaves the queue here, so
        that it never blocks the start of the next utterance or wait_idle()."""
        while True:
            queued = self._ahead.snapshot()
            if not queued:
                return
            head = queued[0]
            epoch = head.epoch if isinstance(head, _End) else head.video.meta["epoch"]
            if epoch == self._epoch:
                return
            try:
                self._ahead.get(timeout_s=0)
            except Closed:
                return

    def _ready_to_start(self) -> bool:
        """Jitter buffer: an utterance starts once start_buffer_ms of it is made, or all of it."""
        epoch = self._epoch
        frames, ended = 0, False
        for x in self._ahead.snapshot():  # what was made before an interrupt does not count
            if isinstance(x, _End):
                ended = ended or x.epoch == epoch
            elif x.video.meta["epoch"] == epoch:
                frames += 1
        need = min(self.cfg.frames_in(self.pcfg.start_buffer_ms), self._ahead.capacity)
        return frames >= need or (ended and frames > 0)

    def _finish_playback(self, seg: int, interrupted: bool) -> None:
        played = self._seg_played.pop(seg, 0)
        end = SegmentEnd(seg, round(played / self.cfg.fps, 3), interrupted)
        self._speaking_seg = None
        # Back to idle through the crossfade, from the last face shown (an utterance may end on
        # open lips, and an interrupt always can).
        self._fade_from, self._fade_alpha = self._last_speech, self._alpha_shown
        self._out(end)
        self._emit_event("playback_finished", end)

    def _emit_event(self, kind: str, payload) -> None:
        for cb in list(self._listeners):
            try:
                cb(kind, payload)
            except Exception:  # a listener's bug must not stop the output clock
                log.exception("playout: on_event listener %r failed on %s", cb, kind)

    def _emit(self, video: VideoFrame, audio: AudioChunk) -> None:
        self._av_offset_ms = round(1000 * (audio.pts / audio.sample_rate_hz - video.pts / self.cfg.fps), 1)
        for r in self._runners:
            r.offer(video, audio)
        self._out(PlayoutItem(video, audio))
        self.stats.record(video.meta["emitted_ns"], None, None, video.meta["kind"])
