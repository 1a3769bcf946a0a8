"""Each sink on its own thread behind its own bounded queue.

One thread serving every sink lets the slowest one set the pace of all: an RTMP reconnect
(seconds) would freeze the virtual webcam too. A SinkRunner gives each sink its own delivery:
  video  DROP_OLDEST within `video_queue_ms`: a frame that waited that long is stale for this
         sink; the others are not affected
  audio  kept in order within `audio_queue_ms` (10 s: a sink stuck for seconds still gets all
         of its sound once it moves again), then the oldest goes (counted) so memory stays bounded
A sink too slow for the frame rate thus loses video frames, counted here, never its audio and
never another sink's frames. Sinks stamp what they write by the media's own timestamps, so a
dropped frame or chunk leaves a gap where it was instead of moving everything after it earlier.

Each runner also keeps its thread's CPU and wall time around every video send and how long
frames waited in its queue, so the stats show what each sink costs per frame: encoders run on
the sink's own thread (see realtime.threads).
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from models.errors import EngineFailure
from realtime.frames import AudioChunk, VideoFrame
from realtime.sinks.base import PreparableSink

log = logging.getLogger(__name__)


class SinkRunner:
    def __init__(self, sink, fps: float, video_queue_ms: int = 200, audio_queue_ms: int = 10_000, on_error=None):
        self.sink = sink
        self._video_cap = max(1, round(video_queue_ms * fps / 1000))
        self._audio_ms_cap = audio_queue_ms
        self._items: collections.deque = collections.deque()
        self._videos = 0
        self._audio_ms = 0.0
        self._cv = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._on_error = on_error
        self.error: BaseException | None = None
        self.video_dropped = 0
        self.audio_dropped = 0
        self.delivered = 0
        self.cpu_s = 0.0  # this sink's thread CPU time spent in send_video / send_audio
        self.video_cpu_ns = self.video_wall_ns = 0  # in send_video alone
        self.video_wait_ns = 0  # frames' time in this runner's queue, summed
        self._started_s: float | None = None
        self._ended_s: float | None = None
        self._close_called = False

    def start(self, width: int, height: int) -> SinkRunner:
        # Sinks that connect or open a device do it now, not on the first frame, which would be late.
        if isinstance(self.sink, PreparableSink):
            self.sink.prepare(width, height)
        self._started_s = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"sink:{self.sink.name}", daemon=True)
        self._thread.start()
        return self

    def offer(self, video: VideoFrame | None, audio: AudioChunk | None = None) -> None:
        """Never blocks: queue audio then video for this sink, dropping the oldest beyond the bounds."""
        with self._cv:
            if self._closed or self.error is not None:
                return
            if audio is not None:
                self._items.append((0, audio))
                self._audio_ms += 1000 * audio.samples / audio.sample_rate_hz
                while self._audio_ms > self._audio_ms_cap:
                    self._drop_oldest(AudioChunk)
            if video is not None:
                self._items.append((time.perf_counter_ns(), video))
                self._videos += 1
                while self._videos > self._video_cap:
                    self._drop_oldest(VideoFrame)
            self._cv.notify()

    def _drop_oldest(self, kind) -> None:
        for i, (_, item) in enumerate(self._items):
            if isinstance(item, kind):
                del self._items[i]
                if kind is VideoFrame:
                    self._videos -= 1
                    self.video_dropped += 1
                else:
                    self._audio_ms -= 1000 * item.samples / item.sample_rate_hz
                    if not self.audio_dropped:
                        log.warning(
                            "sink %s: stuck for over %d s; its oldest audio is being dropped",
                            self.sink.name,
                            self._audio_ms_cap // 1000,
                        )
                    self.audio_dropped += 1
                return

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._items or self._closed)
                if not self._items:
                    return
                queued_ns, item = self._items.popleft()
                if isinstance(item, VideoFrame):
                    self._videos -= 1
                else:
                    self._audio_ms -= 1000 * item.samples / item.sample_rate_hz
            cpu0 = time.thread_time()
            try:
                if isinstance(item, VideoFrame):
                    wall0, tcpu0 = time.perf_counter_ns(), time.thread_time_ns()
                    self.video_wait_ns += wall0 - queued_ns
                    self.sink.send_video(item)
                    self.video_cpu_ns += time.thread_time_ns() - tcpu0
                    self.video_wall_ns += time.perf_counter_ns() - wall0
                    self.delivered += 1
                else:
                    self.sink.send_audio(item)
            except BaseException as e:  # this sink is broken: stop feeding it, tell the owner at once
                with self._cv:
                    self.error = e
                    self._items.clear()
                if self._on_error is not None:
                    self._on_error(EngineFailure.wrap(f"sink {self.sink.name}", e))
                return
            finally:
                self.cpu_s += time.thread_time() - cpu0

    def counts(self) -> dict:
        """Queue depth now, cumulative counts (with what the sink itself reports, e.g. a stream's
        status and reconnects) and what the sink costs: its thread's CPU seconds so far, per
        frame delivered, and as % of one core; for the stats and the per-interval lines."""
        with self._cv:
            out = {
                "queued_video": self._videos,
                "queued_audio_ms": round(self._audio_ms, 1),
                "delivered": self.delivered,
                "video_dropped": self.video_dropped,
                "audio_dropped": self.audio_dropped,
            }
        end_s = self._ended_s if self._ended_s is not None else time.monotonic()
        wall_s = end_s - self._started_s if self._started_s is not None else 0.0
        n = self.delivered
        out.update(
            cpu_s=round(self.cpu_s, 3),
            cpu_ms_per_frame=round(1000 * self.cpu_s / n, 2) if n else None,
            cpu_percent=round(100 * self.cpu_s / wall_s, 1) if wall_s > 0 else None,
            # send_video alone (the encoder, for a sink that encodes) and the wait before it
            video_cpu_ms_per_frame=round(self.video_cpu_ns / n / 1e6, 3) if n else None,
            video_wall_ms_per_frame=round(self.video_wall_ns / n / 1e6, 3) if n else None,
            queue_wait_ms_mean=round(self.video_wait_ns / n / 1e6, 3) if n else None,
        )
        for key in ("status", "frames_lost", "reconnects"):
            if hasattr(self.sink, key):
                out[key] = getattr(self.sink, key)
        return out

    def close(self) -> None:
        """Deliver what is queued, then close the sink (files are finalised). Only the first call
        does anything; an error from the sink's close() is raised to that caller."""
        with self._cv:
            if self._close_called:
                return
            self._close_called = True
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()
        self._ended_s = time.monotonic()
        self.sink.close()

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise EngineFailure.wrap(f"sink {self.sink.name}", self.error)


def close_all(sinks_or_runners) -> EngineFailure | None:
    """Close every one of them whatever the others do (a sink that fails to close must not keep
    a file after it from being finalised). Returns the first failure, wrapped, and logs the rest."""
    first = None
    for item in sinks_or_runners:
        name = getattr(getattr(item, "sink", item), "name", type(item).__name__)
        try:
            item.close()
        except Exception as e:  # reported once all are closed
            err = EngineFailure.wrap(f"closing sink {name}", e)
            if first is None:
                first = err
            else:
                log.warning("%s", err)
    return first
