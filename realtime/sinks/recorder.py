"""A live session recorded to a file (.mp4 H.264 + AAC, or lossless .mkv), audio included.

Recorded with live encoder settings, fragmented (.mp4), and with disk space held in reserve:
when the disk fills up the recording stops with a finalised, playable file and a one-line error
(DiskFull) instead of a file with no index. See realtime.sinks.file and .diskspace.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from realtime.frames import AudioChunk, AudioTimeline, VideoFrame
from realtime.sinks.diskspace import DiskFull
from realtime.sinks.encoding import LiveVideoEncoding
from realtime.sinks.file import VideoFileWriter

# What is still to be written when the disk fills: the fragment being built (one keyframe
# interval) and the one whose write found the disk full, their audio, and the closing index.
# Lossless .mkv buffers a Matroska cluster instead (at most 5 MiB by FFmpeg's default).
INDEX_AND_AUDIO_RESERVE_BYTES = 512 * 1024
MKV_CLUSTER_BYTES = 5 * 1024 * 1024


def reserve_for(path: str, encoding: LiveVideoEncoding) -> int:
    per_unit = MKV_CLUSTER_BYTES if Path(path).suffix.lower() == ".mkv" else encoding.bytes_per_keyframe_interval()
    return 2 * per_unit + INDEX_AND_AUDIO_RESERVE_BYTES


class FileSink:
    def __init__(
        self,
        path: str,
        fps: float,
        sample_rate_hz: int = 48_000,
        encoding: LiveVideoEncoding = LiveVideoEncoding(),
        reserve_bytes: int | None = None,
    ):
        self.name = f"file:{path}"
        self._path, self._fps, self._rate, self._enc = path, fps, sample_rate_hz, encoding
        self._reserve = reserve_for(path, encoding) if reserve_bytes is None else reserve_bytes
        self._writer: VideoFileWriter | None = None
        self._early_audio = []
        # Both tracks start at the engine's time zero (video pts 0, audio pts 0) and are written
        # by their timestamps: a dropped frame is a held frame in the file, not a shorter video.
        self._timeline = AudioTimeline()

    def send_video(self, frame: VideoFrame) -> None:
        if self._writer is None:
            h, w = frame.bgr.shape[:2]
            audio = np.concatenate(self._early_audio) if self._early_audio else np.zeros(0, np.float32)
            self._writer = VideoFileWriter(
                self._path, w, h, self._fps, audio[None], self._rate, live=self._enc, reserve_bytes=self._reserve
            )
            self._early_audio = []
        self._writer.write(frame.bgr, pts=frame.pts if frame.pts >= 0 else None)
        self._stop_if_disk_full()

    def send_audio(self, chunk: AudioChunk) -> None:
        if chunk.sample_rate_hz != self._rate:
            raise ValueError(f"FileSink made for {self._rate} Hz audio got {chunk.sample_rate_hz} Hz")
        pcm = self._timeline.place(chunk)
        if self._writer is None:
            self._early_audio.append(pcm)
        else:
            self._writer.append_audio(pcm)
            self._stop_if_disk_full()

    def _stop_if_disk_full(self) -> None:
        if not self._writer.disk_full:
            return
        writer, self._writer = self._writer, None
        folder = Path(self._path).resolve().parent
        try:
            writer.close()
            kept = f"the recording up to there is finalised in {self._path}"
        except Exception as e:  # the reserve was not enough; the file is kept as far as it got
            kept = f"{self._path} is kept up to its last whole fragment (finalising failed: {type(e).__name__})"
        raise DiskFull(
            f"the disk holding {folder} is full after {writer.duration_s:.1f} s of video; "
            f"{kept}; free space or record elsewhere"
        )

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
