"""Network streams through PyAV: RTMP (FLV) to a server, MPEG-TS over UDP or SRT for OBS.

H.264 (live settings: see realtime.sinks.encoding) plus AAC of the input audio, both stamped
from the same media clock (video in frames, audio in samples from the stream start), so they
stay in sync however late the stream runs. When the server goes away the engine keeps running:
frames are dropped while the sink reconnects with exponential backoff, and `status` says so.
Only failures a reconnect can cure are retried (the connection's, see `is_network_error`); any
other error (bad settings, a bug such as timestamps going backwards) fails the sink at once
instead of turning into an endless reconnect loop.
"""

from __future__ import annotations

import logging
import time
from fractions import Fraction

import av
import numpy as np

from realtime.frames import AudioChunk, AudioTimeline, VideoFrame
from realtime.sinks.encoding import LiveVideoEncoding

log = logging.getLogger(__name__)

BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)


def is_network_error(e: BaseException, connecting: bool = False) -> bool:
    """True for failures of the connection or the server, which a reconnect may cure: OSErrors
    that are not about local files (refused, reset, broken pipe, timeouts, unreachable hosts;
    PyAV's own errors for these are OSError subclasses), PyAV's ExitError (its I/O timeout
    interrupts FFmpeg) and EOFError (the server closed mid-exchange); while connecting, also
    InvalidDataError (a server that answered the handshake with garbage, e.g. while starting)."""
    if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return False
    if isinstance(e, OSError):
        return True
    if isinstance(e, (av.error.ExitError, av.error.EOFError)):
        return True
    return connecting and isinstance(e, av.error.InvalidDataError)


def container_format(url: str) -> str:
    if url.startswith(("rtmp://", "rtmps://")):
        return "flv"
    if url.startswith(("udp://", "srt://", "rtp://")):
        return "mpegts"
    raise ValueError(f"not a stream URL: {url}")


class StreamSink:
    def __init__(
        self, url: str, fps: float, sample_rate_hz: int = 48_000, encoding: LiveVideoEncoding = LiveVideoEncoding()
    ):
        self.name = f"stream:{url}"
        self.url, self._fps, self._rate = url, Fraction(fps).limit_denominator(1001), sample_rate_hz
        self._enc = encoding
        self._fmt = container_format(url)
        self._out = None
        self._size = None
        self._audio_buf = np.zeros(0, np.float32)
        self._audio_pts = None
        self.status = "connecting"
        self.reconnects = 0
        self.frames_sent = 0
        self.frames_lost = 0
        self._retry_at = 0.0
        self._failures = 0

    def _connect(self) -> bool:
        w, h = self._size
        out = None
        try:
            out = av.open(self.url, "w", format=self._fmt, timeout=(5.0, 5.0))
            v = out.add_stream("libx264", rate=self._fps)
            v.width, v.height, v.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
            v.options = self._enc.x264_options(self._fps)
            v.codec_context.time_base = 1 / self._fps
            a = out.add_stream("aac", rate=self._rate, layout="mono")
            a.format = "fltp"
            # Write the header (the RTMP publish handshake) now: done lazily at the first mux,
            # it stalled the whole engine for ~80 ms at the start of every stream.
            out.start_encoding()
            self._out, self._v, self._a = out, v, a
            self._afs = a.codec_context.frame_size or 1024
            return True
        except Exception as e:
            if out is not None:
                try:
                    out.close()
                except Exception:  # half-open: the connection is dropped either way
                    pass
            if not is_network_error(e, connecting=True):
                raise
            self._down(e)  # retried later
            return False

    def _down(self, err: Exception) -> None:
        if self._out is not None:
            try:
                self._out.close()
            except Exception:  # the connection is already broken; nothing more to flush
                pass
        self._out = None
        delay = BACKOFF_S[min(self._failures, len(BACKOFF_S) - 1)]
        self._failures += 1
        self._retry_at = time.monotonic() + delay
        self.status = f"reconnecting in {delay:g}s ({type(err).__name__}: {str(err)[:60]})"
        log.warning("stream %s: %s", self.url, self.status)

    def _ensure(self) -> bool:
        if self._out is not None:
            return True
        if time.monotonic() < self._retry_at:
            return False
        if self._connect():
            if self._failures:
                self.reconnects += 1
                log.info("stream %s: connected again", self.url)
            self.status = "live"
            return True
        return False

    def prepare(self, width: int, height: int) -> None:
        """Connect before the first frame (a refused connection is retried later, as usual)."""
        if self._out is None:
            self._size = (width, height)
            self._ensure()

    def send_video(self, frame: VideoFrame) -> None:
        if self._size is None:
            self._size = frame.bgr.shape[1], frame.bgr.shape[0]
        if not self._ensure():
            self.frames_lost += 1
            return
        img = frame.bgr
        if img.shape[0] % 2 or img.shape[1] % 2:
            img = np.pad(img, ((0, img.shape[0] % 2), (0, img.shape[1] % 2), (0, 0)), mode="edge")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="bgr24")
        vf.pts, vf.time_base = frame.pts, 1 / self._fps
        try:
            self._out.mux(self._v.encode(vf))
            self.frames_sent += 1
            self._failures = 0
        except Exception as e:  # a broken connection shows up here first (e.g. BrokenPipeError)
            if not is_network_error(e):
                raise
            self.frames_lost += 1
            self._down(e)

    def send_audio(self, chunk: AudioChunk) -> None:
        if chunk.sample_rate_hz != self._rate:
            raise ValueError(f"StreamSink made for {self._rate} Hz audio got {chunk.sample_rate_hz} Hz")
        if self._audio_pts is None:
            self._audio_pts = chunk.pts
            self._timeline = AudioTimeline(chunk.pts)
        # By timestamp: audio dropped upstream leaves silence, later sound stays where it belongs.
        self._audio_buf = np.concatenate([self._audio_buf, self._timeline.place(chunk)])
        while self._out is not None and len(self._audio_buf) >= self._afs:
            block, self._audio_buf = self._audio_buf[: self._afs], self._audio_buf[self._afs :]
            af = av.AudioFrame.from_ndarray(block[None], format="fltp", layout="mono")
            af.sample_rate, af.pts, af.time_base = self._rate, self._audio_pts, Fraction(1, self._rate)
            self._audio_pts += self._afs
            try:
                self._out.mux(self._a.encode(af))
            except Exception as e:  # as for video: drop, reconnect later
                if not is_network_error(e):
                    raise
                self._down(e)
                break
        if self._out is None and self._size is not None:
            # While disconnected, audio is dropped like video, keeping its clock running. (Before
            # the first video frame opens the connection, it waits in the buffer instead.)
            self._audio_pts += len(self._audio_buf)
            self._audio_buf = self._audio_buf[:0]

    def close(self) -> None:
        if self._out is not None:
            try:
                self._out.mux(self._v.encode(None))
                self._out.close()
            except Exception:  # closing a stream whose server already left
                pass
            self._out = None
        self.status = "closed"
