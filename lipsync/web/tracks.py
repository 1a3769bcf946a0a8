"""The engine's output as two WebRTC tracks: pushed by an engine, or pulled from a playout.

Two ways frames reach the tracks, one clock owner in each:
  pushed  the capture engine (the microphone's audio is its clock) hands frames and audio to
          `WebRtcOutput` (an ordinary engine sink) on its sink thread; the tracks take them on
          the asyncio loop and show them by their timestamps.
  pulled  a playout with Pacing.CONSUMER (`pull_from`): the video track's recv() owns the clock.
          Each recv() pulls one frame `pull_ahead_ms` before the instant it is shown at (frame n
          at anchor + n/fps) and writes that frame's own audio into the ring, so the audio track
          reads exactly the sound the lips were made from; `cut_audio` (an interrupt) silences
          the ring from the instant it arrives, and a frame pulled while an interrupt came
          (the playout's epoch moved) keeps its picture but not its sound.
Both tracks read one `Pacer`, so a video frame and the audio of the same instant leave together:
  video  shown at anchor + (pts - anchor_pts) / fps; at most `video_queue_ms` waiting (oldest
         dropped, counted) — a frame that waited longer is stale
  audio  20 ms frames cut from a sample ring by the same anchor: missing samples are silence
         (counted as underruns), samples already past are skipped
When a frame is due more than `restart_after_ms` ago (a stall, an engine swap, a new avatar),
the pacer re-anchors on it instead of bursting to catch up. aiortc's own VideoStreamTrack clock
assumes 30 fps, which is why the tracks stamp their frames here.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import threading
import time
from dataclasses import dataclass

import av
import numpy as np

from realtime.frames import AudioChunk, VideoFrame
from realtime.playout import Playout, PlayoutItem

VIDEO_CLOCK_HZ = 90_000
AUDIO_FRAME_MS = 20


@dataclass(frozen=True)
class TrackConfig:
    fps: float = 25.0
    audio_rate_hz: int = 48_000
    video_queue_ms: int = 200
    audio_ring_ms: int = 2_000
    restart_after_ms: int = 200
    # The first frame of an epoch is shown this long after it arrived. The capture engine hands
    # over audio ~200 ms before the frame of the same instant, and the playout emits both at once,
    # so only the frame's own jitter needs room; the browser's jitter buffer absorbs the rest.
    start_delay_ms: int = 10
    # Pulled mode: a frame is pulled this long before it is shown, so that its sound is in the
    # ring before the audio track's 20 ms packet that reaches into it is read (one packet, plus
    # the pull's own time off the loop).
    pull_ahead_ms: int = 30


class Pacer:
    """Maps media timestamps to wall-clock due times (monotonic ns), shared by both tracks."""

    def __init__(self, cfg: TrackConfig):
        self.cfg = cfg
        self._anchor: tuple[int, int, int] | None = None  # (epoch, t0_ns, pts0)
        self.restarts = 0

    def video_due_ns(self, epoch: int, pts: int, now_ns: int) -> int:
        a = self._anchor
        if a is None or a[0] != epoch:
            self._set(epoch, now_ns + self.cfg.start_delay_ms * 1_000_000, pts)
        else:
            due = self._due(pts)
            if now_ns - due > self.cfg.restart_after_ms * 1_000_000 or pts < a[2]:
                self.restarts += 1
                self._set(epoch, now_ns, pts)
        return self._due(pts)

    def audio_sample_at(self, t_ns: int) -> tuple[int, int] | None:
        """(epoch, sample position at the output rate) that should be playing at `t_ns`."""
        a = self._anchor
        if a is None:
            return None
        epoch, t0, pts0 = a
        s0 = round(pts0 * self.cfg.audio_rate_hz / self.cfg.fps)
        return epoch, s0 + (t_ns - t0) * self.cfg.audio_rate_hz // 1_000_000_000

    def _set(self, epoch: int, t0_ns: int, pts: int) -> None:
        self._anchor = (epoch, t0_ns, pts)

    def _due(self, pts: int) -> int:
        _, t0, pts0 = self._anchor
        return t0 + round((pts - pts0) * 1e9 / self.cfg.fps)


class WebRtcOutput:
    """Thread-safe hand-over from the engine's sink threads to the asyncio tracks.

    `sink(epoch)` gives the object an engine is built with; each engine (capture, playout, a new
    avatar) gets a new epoch, so its timestamps starting again at 0 re-anchor the pacer."""

    def __init__(self, cfg: TrackConfig, loop: asyncio.AbstractEventLoop):
        self.cfg, self.loop = cfg, loop
        self.pacer = Pacer(cfg)
        self._lock = threading.Lock()
        self._video: collections.deque = collections.deque()
        self._video_cap = max(1, round(cfg.video_queue_ms * cfg.fps / 1000))
        self._ring = np.zeros(cfg.audio_ring_ms * cfg.audio_rate_hz // 1000, np.int16)
        self._ring_epoch = -1
        self._ring_end = 0  # one past the newest sample written, in the epoch's sample positions
        self._wake = asyncio.Event()
        self.video_in = self.video_dropped = 0
        self.video_sent = self.audio_sent = self.audio_underrun_frames = 0
        self.closed = False
        self.source: tuple[int, Playout] | None = None  # (epoch, playout) the video track pulls from
        self.next_audio_pts = 0  # the audio track's timestamp for its next 20 ms packet

    def pull_from(self, epoch: int | None, playout: Playout | None = None) -> None:
        """On the loop: the video track pulls from `playout` (Pacing.CONSUMER) under `epoch`, or,
        with None, takes what an engine pushes. Frames pushed before are dropped."""
        with self._lock:
            self.source = (epoch, playout) if epoch is not None and playout is not None else None
            self._video.clear()
        self._wake.set()

    def cut_audio(self, epoch: int, t_ns: int) -> None:
        """Silence what the ring holds of `epoch` from the instant `t_ns` on (an interrupt): the
        sound of frames already pulled ahead is not played."""
        at = self.pacer.audio_sample_at(t_ns)
        with self._lock:
            if at is None or at[0] != epoch or epoch != self._ring_epoch or at[1] >= self._ring_end:
                return
            start = max(at[1], self._ring_end - len(self._ring))
            self._write(start, np.zeros(self._ring_end - start, np.int16))

    def sink(self, epoch: int) -> _EpochSink:
        return _EpochSink(self, epoch)

    # -- engine side (sink threads) ---------------------------------------------------------------
    def put_video(self, epoch: int, frame: VideoFrame) -> None:
        with self._lock:
            self._video.append((epoch, frame))
            self.video_in += 1
            while len(self._video) > self._video_cap:
                self._video.popleft()
                self.video_dropped += 1
        self.loop.call_soon_threadsafe(self._wake.set)

    def put_audio(self, epoch: int, chunk: AudioChunk) -> None:
        pcm = chunk.pcm
        if chunk.sample_rate_hz != self.cfg.audio_rate_hz:
            raise ValueError(
                f"WebRTC output: expected audio at {self.cfg.audio_rate_hz} Hz, "
                f"found {chunk.sample_rate_hz} Hz; build the engine with that output rate"
            )
        s16 = (np.clip(pcm, -1.0, 1.0) * 32767).astype(np.int16)
        n = len(self._ring)
        with self._lock:
            if epoch != self._ring_epoch:
                self._ring[:] = 0
                self._ring_epoch, self._ring_end = epoch, chunk.pts
            start = chunk.pts
            if start + len(s16) - self._ring_end > n:  # more than the ring holds: keep the newest
                s16, start = s16[-n:], start + len(s16) - n
            if start > self._ring_end:  # a gap (a chunk lost upstream) plays as silence
                self._write(self._ring_end, np.zeros(min(n, start - self._ring_end), np.int16))
            self._write(start, s16)
            self._ring_end = max(self._ring_end, start + len(s16))

    def _write(self, start: int, s16: np.ndarray) -> None:
        n = len(self._ring)
        idx = (start + np.arange(len(s16))) % n
        self._ring[idx] = s16

    def close(self) -> None:
        self.closed = True
        self.loop.call_soon_threadsafe(self._wake.set)

    # -- track side (asyncio) ---------------------------------------------------------------------
    async def next_video(self) -> tuple[int, VideoFrame] | None:
        """The next pushed frame; None once closed or when the tracks pull from a playout."""
        while True:
            with self._lock:
                if self._video:
                    return self._video.popleft()
                self._wake.clear()
            if self.closed or self.source is not None:
                return None
            await self._wake.wait()

    async def source_changed(self, epoch: int) -> None:
        """Until the tracks no longer pull from `epoch` (its playout stopped or failed: wait for
        the session to swap it, instead of pulling a stopped one again)."""
        while True:
            if self.closed or self.source is None or self.source[0] != epoch:
                return
            self._wake.clear()
            if self.closed or self.source is None or self.source[0] != epoch:
                return
            await self._wake.wait()

    def audio_between(self, epoch: int, start: int, n: int) -> np.ndarray:
        """Samples [start, start+n) of `epoch`; what is not in the ring is silence."""
        out = np.zeros(n, np.int16)
        with self._lock:
            if epoch != self._ring_epoch:
                return out
            lo = max(start, self._ring_end - len(self._ring))
            hi = min(start + n, self._ring_end)
            if hi > lo:
                out[lo - start : hi - start] = self._ring[np.arange(lo, hi) % len(self._ring)]
            if hi < start + n:
                self.audio_underrun_frames += 1
        return out

    def counters(self) -> dict:
        return {
            "video_frames_in": self.video_in,
            "video_frames_sent": self.video_sent,
            "video_dropped_at_track": self.video_dropped,
            "audio_frames_sent": self.audio_sent,
            "audio_underrun_frames": self.audio_underrun_frames,
            "pacing_restarts": self.pacer.restarts,
        }


class _EpochSink:
    """One engine's view of the shared output: closing it ends that engine's run, not the tracks."""

    def __init__(self, out: WebRtcOutput, epoch: int):
        self.out, self.epoch = out, epoch
        self.name = f"webrtc#{epoch}"

    def send_video(self, frame: VideoFrame) -> None:
        self.out.put_video(self.epoch, frame)

    def send_audio(self, chunk: AudioChunk) -> None:
        self.out.put_audio(self.epoch, chunk)

    def close(self) -> None:
        pass


def _monotonic_ns() -> int:
    return time.monotonic_ns()


async def _sleep_until(t_ns: int) -> None:
    delay = (t_ns - _monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


def make_tracks(out: WebRtcOutput):
    """(video track, audio track) for an RTCPeerConnection; aiortc is imported only here."""
    from aiortc import MediaStreamTrack  # aiortc: the web extra, needed only by lipsync serve
    from aiortc.mediastreams import MediaStreamError

    cfg = out.cfg
    frame_ns = round(1e9 / cfg.fps)

    class AvatarVideoTrack(MediaStreamTrack):
        kind = "video"

        def __init__(self):
            super().__init__()
            self._t_start: int | None = None
            self._last_pts = -1
            self._pull_at: tuple[int, int] | None = None  # pulled mode: (epoch, when to pull next)

        async def recv(self):
            while True:
                if self.readyState != "live" or out.closed:
                    raise MediaStreamError
                if out.source is not None:
                    epoch, playout = out.source
                    got = await self._pull(epoch, playout)
                    if got is None:  # the playout stopped or was swapped meanwhile
                        await out.source_changed(epoch)
                        continue
                    frame, due = got
                    break
                item = await out.next_video()
                if item is None:
                    continue
                epoch, frame = item
                due = out.pacer.video_due_ns(epoch, frame.pts, _monotonic_ns())
                await _sleep_until(due)
                break
            if self._t_start is None:
                self._t_start = due
            # RTP time follows the wall clock the frame is shown at, so epochs join seamlessly.
            pts = max(self._last_pts + 1, (due - self._t_start) * VIDEO_CLOCK_HZ // 1_000_000_000)
            self._last_pts = pts
            vf = av.VideoFrame.from_ndarray(frame.bgr, format="bgr24")
            vf.pts, vf.time_base = pts, fractions.Fraction(1, VIDEO_CLOCK_HZ)
            out.video_sent += 1
            return vf

        async def _pull(self, epoch: int, playout: Playout) -> tuple[VideoFrame, int] | None:
            """This recv() is the playout's clock: one frame made per call, shown at its instant."""
            if self._pull_at is not None and self._pull_at[0] == epoch:
                await _sleep_until(self._pull_at[1])
            while True:
                cut = playout.epoch
                try:
                    item = await playout.recv()
                except StopAsyncIteration:
                    return None
                if isinstance(item, PlayoutItem):  # segment events are the session's, not ours
                    break
            if out.source is None or out.source[0] != epoch:
                return None
            if playout.epoch == cut:  # else an interrupt came while it was made: picture only
                out.put_audio(epoch, item.audio)
            due = out.pacer.video_due_ns(epoch, item.video.pts, _monotonic_ns())
            self._pull_at = (epoch, due + frame_ns - cfg.pull_ahead_ms * 1_000_000)
            await _sleep_until(due)
            return item.video, due

    class AvatarAudioTrack(MediaStreamTrack):
        kind = "audio"

        def __init__(self):
            super().__init__()
            self._n = 0  # frames since the last (re)start of pacing
            self._sent = 0  # frames since the track began: the RTP clock never goes back
            self._t0: int | None = None
            self._spf = cfg.audio_rate_hz * AUDIO_FRAME_MS // 1000

        async def recv(self):
            if self.readyState != "live" or out.closed:
                raise MediaStreamError
            if self._t0 is None:
                self._t0 = _monotonic_ns()
            due = self._t0 + self._n * AUDIO_FRAME_MS * 1_000_000
            await _sleep_until(due)
            now = _monotonic_ns()
            if now - due > cfg.restart_after_ms * 1_000_000:  # stalled: restart, never burst
                self._t0, self._n, due = now, 0, now
            at = out.pacer.audio_sample_at(due)
            pcm = out.audio_between(at[0], at[1], self._spf) if at is not None else np.zeros(self._spf, np.int16)
            frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
            frame.sample_rate = cfg.audio_rate_hz
            frame.pts = self._sent * self._spf
            frame.time_base = fractions.Fraction(1, cfg.audio_rate_hz)
            self._n += 1
            self._sent += 1
            out.next_audio_pts = self._sent * self._spf
            out.audio_sent += 1
            return frame

    return AvatarVideoTrack(), AvatarAudioTrack()
