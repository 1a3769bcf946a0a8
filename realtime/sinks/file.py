"""Video files written with PyAV: `.mp4` (H.264 + AAC) or `.mkv` (lossless FFV1 RGB + FLAC).

Output goes to a hidden temp file beside the target and is renamed into place only when
`close()` succeeds, so a failed or interrupted run never leaves a half-written file behind.

A live recording (`live=` encoder settings) differs in three ways: H.264 with real-time settings
(see realtime.sinks.encoding); `.mp4`/`.mov` fragmented at each keyframe, so the muxer keeps one
fragment in memory instead of an index growing with the run (hours of it), and whatever reached
the disk stays playable if the process dies; and space held in reserve (`reserve_bytes`, see
realtime.sinks.diskspace), so a disk that fills up ends the recording with a finalised file.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from models.errors import LipsyncError
from realtime.sinks.diskspace import ReservedFile
from realtime.sinks.encoding import LiveVideoEncoding
from realtime.threads import encoder_options

# (video codec, pixel format, codec options, audio codec)
FORMATS = {
    ".mp4": ("libx264", "yuv420p", {"crf": "18", "preset": "medium"}, "aac"),
    ".mov": ("libx264", "yuv420p", {"crf": "18", "preset": "medium"}, "aac"),
    ".mkv": ("ffv1", "bgr0", {}, "flac"),
}
CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}
# Each fragment starts at a keyframe; `default_base_moof` makes fragments self-contained.
FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}


def fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


class VideoFileWriter:
    """Append BGR frames at a fixed rate; optionally mux a planar float audio track alongside."""

    def __init__(
        self,
        path: str | os.PathLike,
        width: int,
        height: int,
        fps: float,
        audio: np.ndarray | None = None,
        audio_rate_hz: int | None = None,
        live: LiveVideoEncoding | None = None,
        reserve_bytes: int = 0,
    ):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in FORMATS:
            raise LipsyncError(
                f"output {path}",
                "a file name ending in " + ", ".join(FORMATS),
                f"'{suffix or 'no extension'}'",
                "change the output file name",
            )
        vcodec, pix_fmt, options, acodec = FORMATS[suffix]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.stem}.partial{suffix}")
        self.width, self.height = width, height
        # 4:2:0 chroma needs even sizes; pad by repeating the last row/column instead of failing.
        self._even = pix_fmt == "yuv420p"
        enc_w, enc_h = (width + width % 2, height + height % 2) if self._even else (width, height)
        self._rate = fps_fraction(fps)
        container_options = FRAGMENTED_MP4 if live is not None and suffix in (".mp4", ".mov") else {}
        # Through a file object that holds space back, or straight to the file.
        self._io = ReservedFile(self._tmp, reserve_bytes) if reserve_bytes > 0 else None
        target = self._io if self._io is not None else str(self._tmp)
        self._container = av.open(target, "w", format=CONTAINERS[suffix], options=container_options)
        try:
            self._video = self._container.add_stream(vcodec, rate=self._rate)
            self._video.width, self._video.height, self._video.pix_fmt = enc_w, enc_h, pix_fmt
            if vcodec == "libx264":
                options = live.x264_options(self._rate) if live is not None else {**options, **encoder_options()}
            self._video.options = options
            self._video.codec_context.time_base = 1 / self._rate
            self._audio_stream = None
            if audio is not None:
                self._setup_audio(acodec, np.atleast_2d(np.asarray(audio, np.float32)), audio_rate_hz)
        except Exception:
            self.abort()
            raise
        self.frames_written = 0
        self._next_pts = 0

    def _setup_audio(self, codec: str, audio: np.ndarray, rate: int):
        channels = min(2, audio.shape[0])
        self._layout = "stereo" if channels == 2 else "mono"
        self._audio_stream = self._container.add_stream(codec, rate=rate, layout=self._layout)
        self._audio_fmt = "fltp" if codec == "aac" else "s16"
        self._audio_stream.format = self._audio_fmt
        self._audio_rate, self._channels = rate, channels
        self._pending = np.zeros((channels, 0), np.float32)
        self._audio_pos = 0  # samples encoded so far
        self._frame_size = self._audio_stream.codec_context.frame_size or 4096
        self._av = av
        self.append_audio(audio)

    def append_audio(self, pcm: np.ndarray) -> None:
        """More audio (channels, samples) at the rate given at construction; muxed as video advances."""
        pcm = np.asarray(pcm, np.float32)
        if pcm.ndim == 1:
            pcm = pcm[None]
        if pcm.shape[0] != self._channels:
            pcm = np.repeat(pcm[:1], self._channels, axis=0) if pcm.shape[0] == 1 else pcm[: self._channels]
        self._pending = np.concatenate([self._pending, pcm], axis=1)

    def _mux_audio_until(self, end_sample: int | None):
        """Encode pending audio up to `end_sample` (None: all of it) in the encoder's frame size."""
        if self._audio_stream is None:
            return
        while self._pending.shape[1] > 0:
            n = min(self._frame_size, self._pending.shape[1])
            if end_sample is not None and (n < self._frame_size or self._audio_pos + n > end_sample):
                break
            block = self._pending[:, :n]
            if self._audio_fmt == "s16":
                data = (np.clip(block, -1, 1) * 32767).round().astype(np.int16).T.reshape(1, -1)
            else:
                data = block
            frame = self._av.AudioFrame.from_ndarray(
                np.ascontiguousarray(data), format=self._audio_fmt, layout=self._layout
            )
            frame.sample_rate = self._audio_rate
            frame.pts = self._audio_pos
            frame.time_base = Fraction(1, self._audio_rate)
            self._container.mux(self._audio_stream.encode(frame))
            self._audio_pos += n
            self._pending = self._pending[:, n:]

    def write(self, bgr: np.ndarray, pts: int | None = None):
        """One frame; `pts` (frames at the writer's rate) leaves a gap for frames not written —
        the previous frame stays on screen — else frames follow each other."""
        if bgr.shape[:2] != (self.height, self.width):
            raise ValueError(f"frame is {bgr.shape[1]}x{bgr.shape[0]}, writer expects {self.width}x{self.height}")
        if self._even and (self.width % 2 or self.height % 2):
            bgr = np.pad(bgr, ((0, self.height % 2), (0, self.width % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(bgr), format="bgr24")
        if pts is not None and pts < self._next_pts:
            return  # a frame for a time already written: never reorder the track
        frame.pts = self._next_pts if pts is None else pts
        self._next_pts = frame.pts + 1
        frame.time_base = 1 / self._rate
        self._container.mux(self._video.encode(frame))
        self.frames_written += 1
        if self._audio_stream is not None:
            self._mux_audio_until(int(self._next_pts / self._rate * self._audio_rate) + self._frame_size)

    @property
    def duration_s(self) -> float:
        """Video time written so far (gaps for frames not written included)."""
        return float(self._next_pts / self._rate)

    @property
    def disk_full(self) -> bool:
        """The disk filled up and the reserve was used: stop writing and close()."""
        return self._io is not None and self._io.full

    def close(self) -> Path:
        """Flush encoders, finalise the container and move it into place."""
        try:
            self._container.mux(self._video.encode(None))
            if self._audio_stream is not None:
                self._mux_audio_until(None)
                self._container.mux(self._audio_stream.encode(None))
            self._container.close()
        except Exception:
            if not self.disk_full:
                self.abort()
                raise
            # Even the reserve ran out: keep what is on disk (a fragmented file plays up to its
            # last whole fragment) rather than deleting hours of recording.
            self._io.close()
            os.replace(self._tmp, self.path)
            raise
        if self._io is not None:
            self._io.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self):
        """Drop everything written so far; leaves no file behind."""
        try:
            self._container.close()
        except Exception:  # the container may be half-initialised; removing the file is what matters
            pass
        if self._io is not None:
            self._io.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
