"""A live session recorded to a file (.mp4 H.264 + AAC, or lossless .mkv), audio included."""

from __future__ import annotations

from realtime.frames import AudioChunk, VideoFrame
from realtime.sinks.file import VideoFileWriter


class FileSink:
    def __init__(self, path: str, fps: float, sample_rate_hz: int = 16_000):
        self.name = f"file:{path}"
        self._path, self._fps, self._rate = path, fps, sample_rate_hz
        self._writer: VideoFileWriter | None = None
        self._early_audio = []

    def send_video(self, frame: VideoFrame) -> None:
        if self._writer is None:
            import numpy as np

            h, w = frame.bgr.shape[:2]
            audio = np.concatenate(self._early_audio) if self._early_audio else np.zeros(0, np.float32)
            self._writer = VideoFileWriter(self._path, w, h, self._fps, audio[None], self._rate)
            self._early_audio = []
        self._writer.write(frame.bgr)

    def send_audio(self, chunk: AudioChunk) -> None:
        if self._writer is None:
            self._early_audio.append(chunk.pcm)
        else:
            self._writer.append_audio(chunk.pcm)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
