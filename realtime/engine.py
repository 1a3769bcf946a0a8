"""The live engine: audio in -> mel stream -> scheduler -> generator -> compositor -> sinks.

Threads and the bounded queues between them:
  source (mic callback / file pacer / push_audio)  --audio_q, NEVER_DROP-->  worker
  worker: resample, mel, decide each frame (generate / idle / drop), composite
  worker  --frames_q, DROP_OLDEST-->  sink thread  (and --sink_audio_q, NEVER_DROP--> for sound)
  sink thread: hands frames and audio to one SinkRunner per sink (each its own thread and
  bounded queue, so a reconnecting stream cannot freeze the webcam), records latency per frame
A failure in any thread stops the source at once and is raised by stop().

Scheduling: output frame i (at `fps`) needs the 16 mel frames of its window; it is decided the
moment the audio that completes that window arrives. A frame whose window completed more than
`max_lateness_ms` ago is not generated; the previous frame is repeated in its place and counted
as dropped, so a slow moment never turns into permanent delay.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass
from typing import cast

import numpy as np
import soxr

from models.errors import EngineFailure
from models.mel import HOP, N_FFT, WINDOW_FRAMES, chunk_start
from realtime.audio_input import to_mono_float32
from realtime.avatar import Avatar
from realtime.clock import FreeRunClock, MediaClock, MonotonicClock
from realtime.compositor import crossfade, full_face, paste_feathered, paste_hard, to_uint8_faces
from realtime.config import MODEL_SAMPLE_RATE_HZ, EngineConfig
from realtime.frames import AudioChunk, FrameKind, FrameMeta, VideoFrame
from realtime.mel_stream import MelStream
from realtime.protocols import AudioSource, DeadlineRenderer, FaceDecoder, PreparableSink, Renderer, Sink
from realtime.queues import BoundedQueue, Closed, Policy
from realtime.sinks.delivery import SinkRunner, close_all
from realtime.stats import Stats

SR = MODEL_SAMPLE_RATE_HZ
log = logging.getLogger(__name__)


class Wav2LipRenderer:
    """The neural lips: the split generator's decoder on cached face features, pasted back."""

    def __init__(self, generator: FaceDecoder, avatar: Avatar, blend: str = "hard"):
        self.gen, self.avatar, self.blend = generator, avatar, blend
        self.name = getattr(generator, "name", "wav2lip")
        if blend == "feather":
            avatar.keypoints()  # computed (and kept by the avatar) now, not on the first frame

    def render(self, frame: np.ndarray, idx: int, mel_window: np.ndarray, offset_frames: int, fps: float) -> np.ndarray:
        face = self.face_u8(idx, mel_window)
        if face.shape[0] != face.shape[1]:  # a row-cropped decoder: the lower rows only
            face = full_face(face, self.avatar.crops[idx])
        if self.blend == "feather":
            return paste_feathered(frame.copy(), face, self.avatar.boxes[idx], self.avatar.keypoints()[idx])
        return paste_hard(frame.copy(), face, self.avatar.boxes[idx])

    def face_u8(self, idx: int, mel_window: np.ndarray) -> np.ndarray:
        """The face for avatar frame `idx` as (rows, S, 3) uint8; a renderer whose faces come
        from another process overrides this to ship a quarter of the bytes."""
        return to_uint8_faces(self.face(idx, mel_window))[0]

    def face(self, idx: int, mel_window: np.ndarray) -> np.ndarray:
        """The decoder's output for avatar frame `idx`: (1, 3, rows, S) in [0, 1]. A shared
        generator service overrides this (realtime.service) and may raise FrameDropped."""
        return self.gen.decode(mel_window[None, None], self.avatar.features_at(idx))


@dataclass(frozen=True, slots=True)
class _InputPiece:
    """Where one piece of input audio sits on the 16 kHz sample axis, and when it came."""

    end: int  # one past its last 16 kHz sample
    arrival_ns: int
    capture0_ns: int  # capture time of its first sample
    start: int  # its first 16 kHz sample


class FrameDropped(Exception):
    """A renderer gave up on a frame that would be too late anyway (a shared generator dropped
    it past its deadline); the engine shows the previous frame and counts a drop."""


class Engine:
    def __init__(
        self,
        avatar: Avatar,
        renderer: Renderer | FaceDecoder,
        sinks: list[Sink],
        cfg: EngineConfig = EngineConfig(),
        clock: MediaClock | None = None,
    ):
        """`renderer`: a Renderer (`render(frame, avatar_index, mel_window, offset, fps)`), or a
        split generator (a FaceDecoder: `decode`), which is wrapped in a Wav2LipRenderer."""
        if not isinstance(renderer, Renderer):
            renderer = Wav2LipRenderer(renderer, avatar, cfg.blend)
        self.avatar, self.renderer, self.sinks, self.cfg = avatar, renderer, list(sinks), cfg
        # Offline runs write files in order and wait for them; live, each sink gets its own thread.
        self._runners: list[SinkRunner] = []
        self.clock = clock or MonotonicClock()
        # Offline (free-running clock): every frame is generated and audio waits for the worker
        # instead of overrunning; latency figures then mean nothing and are not recorded.
        self.offline = isinstance(self.clock, FreeRunClock)
        self.stats = Stats()
        # Audio chunks are >= ~10 ms, so this many chunks hold at least audio_queue_ms of sound.
        self.audio_q = BoundedQueue(max(8, cfg.audio_queue_ms // 10), Policy.NEVER_DROP, "audio_in")
        self.frames_q = BoundedQueue(cfg.frames_in(cfg.output_queue_ms), Policy.DROP_OLDEST, "frames_out")
        self.sink_audio_q = BoundedQueue(max(8, cfg.audio_queue_ms // 10), Policy.NEVER_DROP, "audio_out")
        history_frames = cfg.history_ms * 80 // 1000
        self.mel = MelStream(history_frames=history_frames)
        self._hist = np.zeros(cfg.history_ms * SR // 1000, np.float32)  # 16 kHz audio ring for RMS
        self._samples = 0
        self._chunks: collections.deque[_InputPiece] = collections.deque(maxlen=4096)
        self._resamplers: dict = {}
        self._out_samples = 0  # audio handed to the sinks, at output_audio_rate_hz
        self._next_pts = 0
        self._alpha = 0.0
        self._last: np.ndarray | None = None
        self._mel_buf = np.zeros((80, WINDOW_FRAMES), np.float32)
        self._threads: list[threading.Thread] = []
        self._flush = True
        self._error: BaseException | None = None
        self._source: AudioSource | None = None
        self._stopped: tuple[dict | None, BaseException | None] | None = None  # what stop() gave
        self.stats.add_section("sinks", lambda: {r.sink.name: r.counts() for r in self._runners})
        # Media time (s) of the end of the last frame and of the last audio handed to the sinks.
        self._sent_video_s: float | None = None
        self._sent_audio_s: float | None = None
        self._decided_ns = 0  # when the worker decided the latest frame

    # -- input ----------------------------------------------------------------------------------
    def push_audio(
        self, pcm: np.ndarray, sample_rate_hz: int, arrival_ns: int | None = None, capture_ns: int | None = None
    ) -> bool:
        """Hand over audio at any rate (int16 or float, mono or interleaved); non-blocking, callable
        from a device callback. A malformed buffer raises AudioFormatError here; once the engine
        has failed, this raises the failure instead of queueing more work."""
        if self._error is not None:
            raise EngineFailure.wrap("engine", self._error)
        now = self.clock.now_ns()
        item = (
            to_mono_float32(pcm, sample_rate_hz),
            int(sample_rate_hz),
            now if arrival_ns is None else arrival_ns,
            capture_ns,
        )
        ok = self.audio_q.put_wait(item) if self.offline else self.audio_q.put(item)
        if not ok:
            self.stats.audio_overruns += 1
        return ok

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> Engine:
        # Sinks that must connect or open a device do it now, not on the first frame, where
        # the wait would make the first frames late.
        if self.offline:
            for sink in self.sinks:
                if isinstance(sink, PreparableSink):
                    sink.prepare(*self.avatar.size)
        else:  # each runner prepares its sink before its thread starts
            self._runners = [
                SinkRunner(s, self.cfg.fps, on_error=self._fail).start(*self.avatar.size) for s in self.sinks
            ]
        for target, name in ((self._work, "lipsync-worker"), (self._deliver, "lipsync-sinks")):
            t = threading.Thread(target=self._guard(target), name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _guard(self, fn):
        def run():
            try:
                fn()
            except BaseException as e:  # surfaced to the caller by push_audio, run and stop()
                self._fail(e)

        return run

    def _fail(self, e: BaseException) -> None:
        if self._error is None:
            self._error = e
        self.audio_q.close()
        self.frames_q.close()
        self.sink_audio_q.close()
        if self._source is not None:  # the input stops at once instead of feeding a dead engine
            self._source.stop()

    def stop(self, flush: bool = True) -> dict:
        """End of input: process what is queued (with `flush`, also the audio's last frames),
        close every sink (files are finalised) and return the stats summary. Every sink is closed
        even if another one's close() raises; calling stop() again gives the same outcome."""
        if self._stopped is None:
            self._stopped = self._stop_once(flush)
        summary, error = self._stopped
        if error is not None:
            raise error
        assert summary is not None  # _stop_once gives a summary or an error
        return summary

    def _stop_once(self, flush: bool) -> tuple[dict | None, BaseException | None]:
        self._flush = flush
        self.audio_q.close()
        for t in self._threads:
            t.join()
        # Runners deliver what is queued, then close their sink; offline, sinks are closed directly.
        closing = close_all(self._runners or self.sinks)
        if hasattr(self.avatar, "close"):  # a live camera releases its device
            self.avatar.close()
        if self._error is not None:
            if closing is not None:  # the run's own failure is the one to report
                log.warning("%s", closing)
            return None, self._error
        if closing is not None:
            return None, closing
        return self.stats.summary(), None

    def run(self, source: AudioSource, duration_s: float | None = None, on_started=None) -> dict:
        self._source = source
        self.start()
        if on_started is not None:
            on_started()
        try:
            source.run(self.push_audio, self.clock, duration_s)
        except KeyboardInterrupt:
            source.stop()
        except EngineFailure as e:
            if self._error is None:  # the source's own failure (e.g. a microphone gone for good)
                self._fail(e)
            # else the engine failed while the source pushed: stop() reports it
        except BaseException:
            # The source could not start (e.g. no such device): still close the sinks, so files
            # are finalised and devices released, then report the source's error.
            try:
                self.stop()
            except Exception as e:  # secondary to the source's error
                log.warning("%s", e)
            raise
        return self.stop()

    def gauges(self) -> dict:
        """What the per-interval stats add from the engine: queue depths now, the A/V offset at
        the hand-off to the sinks (media time of the audio sent minus that of the video sent:
        how far the sound runs ahead of the pictures; both are stamped from one clock, so this
        is buffering a muxer must absorb, not lip-sync error) and each sink's counts."""
        a, v = self._sent_audio_s, self._sent_video_s
        return {
            "queues": {q.name: len(q) for q in (self.audio_q, self.frames_q, self.sink_audio_q)},
            "av_offset_ms": round(1000 * (a - v), 1) if a is not None and v is not None else None,
            "sinks": {r.sink.name: r.counts() for r in self._runners},
        }

    # -- worker -----------------------------------------------------------------------------------
    def _to_16k(self, pcm: np.ndarray, rate: int) -> np.ndarray:
        if rate == SR:
            return pcm
        if rate not in self._resamplers:
            self._resamplers[rate] = soxr.ResampleStream(rate, SR, 1, dtype="float32", quality="HQ")
        return self._resamplers[rate].resample_chunk(pcm)

    def _to_out(self, pcm: np.ndarray, rate: int) -> np.ndarray:
        """The sinks' audio: the input itself at output_audio_rate_hz (not the model's 16 kHz),
        streamed through one resampler per input rate."""
        out_rate = self.cfg.output_audio_rate_hz
        if rate == out_rate:
            return pcm
        key = ("out", rate)
        if key not in self._resamplers:
            self._resamplers[key] = soxr.ResampleStream(rate, out_rate, 1, dtype="float32", quality="HQ")
        return self._resamplers[key].resample_chunk(pcm)

    def _work(self) -> None:
        while True:
            try:
                item = self.audio_q.get()
            except Closed:
                break
            self.process_audio(*item)
        if self._flush:
            self.mel.flush()
            self._emit_ready()
        self.frames_q.close()
        self.sink_audio_q.close()

    def process_audio(self, pcm: np.ndarray, rate: int, arrival_ns: int, capture_ns: int | None) -> None:
        """One input chunk: the worker's whole job for it. Tests drive this directly, in step
        with a manual clock, to make scheduling decisions deterministic."""
        pcm16 = self._to_16k(pcm, rate)
        out = self._to_out(pcm, rate)
        if len(out):
            chunk = AudioChunk(out, self.cfg.output_audio_rate_hz, self._out_samples, arrival_ns)
            self._out_samples += len(out)
            if self.offline:
                self.sink_audio_q.put_wait(chunk)  # nothing is real time: wait for the sinks
            elif not self.sink_audio_q.put(chunk):
                self.stats.audio_overruns += 1
        if capture_ns is None:
            capture_ns = arrival_ns - len(pcm16) * 1_000_000_000 // SR
        # Long pushes (a TTS sentence at once) are taken in 100 ms steps, so that frames are
        # decided while their audio is still in the mel and audio history rings.
        step = SR // 10
        for off in range(0, len(pcm16), step):
            piece = pcm16[off : off + step]
            start = self._samples
            self._samples += len(piece)
            self._chunks.append(_InputPiece(self._samples, arrival_ns, capture_ns + off * 1_000_000_000 // SR, start))
            idx = np.arange(start, self._samples) % len(self._hist)
            self._hist[idx] = piece
            self.mel.push(piece)
            self._emit_ready()

    def _window_start(self, pts: int) -> int:
        return max(0, chunk_start(pts, self.cfg.fps, self.cfg.mel_offset_frames))

    def _emit_ready(self) -> None:
        while self._window_start(self._next_pts) + WINDOW_FRAMES <= self.mel.frames_ready:
            self._decide(self._next_pts)
            self._next_pts += 1

    def _chunk_of(self, sample: int) -> _InputPiece:
        """The input piece holding 16 kHz `sample` (the nearest one when none does)."""
        for chunk in reversed(self._chunks):
            if chunk.start <= sample < chunk.end:
                return chunk
        return self._chunks[-1] if sample >= self._chunks[-1].end else self._chunks[0]

    def _arrival_of(self, sample: int) -> int:
        return self._chunk_of(sample).arrival_ns

    def _capture_of(self, sample: int) -> int:
        c = self._chunk_of(sample)
        return c.capture0_ns + (min(sample, c.end - 1) - c.start) * 1_000_000_000 // SR

    def _decide(self, pts: int) -> None:
        s = self._window_start(pts)
        last_sample = HOP * (s + WINDOW_FRAMES - 1) + N_FFT // 2 - 1
        ready_ns = self._arrival_of(min(last_sample, self._samples - 1))
        own = round(pts * SR / self.cfg.fps)
        capture_ns = self._capture_of(min(own, self._samples - 1))
        lateness_ms = (self.clock.now_ns() - ready_ns) / 1e6
        self._decided_ns = self.clock.now_ns()
        if not self.offline and lateness_ms > self.cfg.max_lateness_ms and self._last is not None:
            self._put(self._last, pts, ready_ns, capture_ns, FrameKind.DROPPED)
            return
        if hasattr(self.avatar, "advance"):  # a live camera: newest frame, tracked, encoded
            self.avatar.advance(pts)
        idx = self.avatar.index(pts)
        lo, hi = max(0, HOP * s - N_FFT // 2), min(self._samples, last_sample + 1)
        lo = max(lo, self._samples - len(self._hist))
        window = self._hist[np.arange(lo, hi) % len(self._hist)]
        dbfs = 10 * np.log10(float(np.mean(window.astype(np.float64) ** 2)) + 1e-12)
        step = 1.0 / self.cfg.frames_in(self.cfg.crossfade_ms)
        speaking = dbfs > self.cfg.silence_threshold_dbfs
        self._alpha = min(1.0, self._alpha + step) if speaking else max(0.0, self._alpha - step)
        idle = self.avatar.frames[idx]
        kind: FrameKind
        if not getattr(self.avatar, "has_face", True):
            out, kind = idle, FrameKind.NO_FACE  # passed through unchanged, counted
        elif self._alpha == 0.0:
            out, kind = idle, FrameKind.IDLE
        else:
            self.mel.window(s, out=self._mel_buf)
            if getattr(self.renderer, "wants_deadline", False):  # a shared generator schedules by it
                cast(DeadlineRenderer, self.renderer).deadline_ns = (
                    None if self.offline else ready_ns + int(self.cfg.max_lateness_ms * 1e6)
                )
            try:
                out = self.renderer.render(idle, idx, self._mel_buf, self.cfg.mel_offset_frames, self.cfg.fps)
            except FrameDropped:
                self._put(self._last if self._last is not None else idle, pts, ready_ns, capture_ns, FrameKind.DROPPED)
                return
            if self._alpha < 1.0:
                out = crossfade(out, idle, self._alpha)
            kind = FrameKind.GENERATED
        self._last = out
        self._put(out, pts, ready_ns, capture_ns, kind)

    def _put(self, bgr: np.ndarray, pts: int, ready_ns: int, capture_ns: int, kind: FrameKind) -> None:
        if self.offline:
            self.frames_q.put_wait(VideoFrame(bgr, pts, FrameMeta(ready_ns=None, capture_ns=None, kind=kind)))
            return
        if not self.frames_q.put(
            VideoFrame(
                bgr, pts, FrameMeta(ready_ns=ready_ns, capture_ns=capture_ns, kind=kind, decided_ns=self._decided_ns)
            )
        ):
            self.stats.record(self.clock.now_ns(), None, None, FrameKind.DROPPED)

    # -- sinks ------------------------------------------------------------------------------------
    def _drain_audio(self) -> None:
        while len(self.sink_audio_q):
            try:
                chunk = self.sink_audio_q.get(timeout_s=0)
            except Closed:
                return
            if chunk is None:
                return
            self._to_sinks(None, chunk)

    def _deliver(self) -> None:
        while True:
            try:
                # A short wait, so that audio keeps flowing to the sinks (and the worker never
                # waits on a full audio queue) even while no frame is due.
                frame = self.frames_q.get(timeout_s=0.05)
            except Closed:
                break
            self._drain_audio()
            if frame is None:
                continue
            self._to_sinks(frame, None)
            m = frame.meta
            self.stats.record(self.clock.now_ns(), m["ready_ns"], m["capture_ns"], m["kind"])
        self._drain_audio()

    def _to_sinks(self, frame: VideoFrame | None, chunk: AudioChunk | None) -> None:
        if frame is not None:
            self._sent_video_s = (frame.pts + 1) / self.cfg.fps
        if chunk is not None:
            self._sent_audio_s = (chunk.pts + chunk.samples) / chunk.sample_rate_hz
        if self._runners:
            for r in self._runners:
                r.offer(frame, chunk)
            return
        for sink in self.sinks:  # offline: in order, waiting for each
            if chunk is not None:
                sink.send_audio(chunk)
            if frame is not None:
                sink.send_video(frame)
