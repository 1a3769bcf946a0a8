"""A live session recorded to a file (.mp4 H.264 + AAC, or lossless .mkv), audio included."""

from __future__ import annotations

from realtime.frames import AudioChunk, AudioTimeline, VideoFrame
from realtime.sinks.file import VideoFileWriter


class FileSink:
    def __init__(self, path: str, fps: float, sample_rate_hz: int = 48_000):
        self.name = f"file:{path}"
        self._path, self._fps, self._rate = path, fps, sample_rate_hz
        self._writer: VideoFileWriter | None = None
        self._early_audio = []
        # Both tracks start at the engine's time zero (video pts 0, audio pts 0) and are written
        # by their timestamps: a dropped frame is a held frame in the file, not a shorter video.
        self._timeline = AudioTimeline()

    def send_video(self, frame: VideoFrame) -> None:
        if self._writer is None:
            import numpy as np

            h, w = frame.bgr.shape[:2]
            audio = np.concatenate(self._early_audio) if self._early_audio else np.zeros(0, np.float32)
            self._writer = VideoFileWriter(self._path, w, h, self._fps, audio[None], self._rate)
            self._early_audio = []
        self._writer.write(frame.bgr, pts=frame.pts if frame.pts >= 0 else None)

    def send_audio(self, chunk: AudioChunk) -> None:
        if chunk.sample_rate_hz != self._rate:
            raise ValueError(f"FileSink made for {self._rate} Hz audio got {chunk.sample_rate_hz} Hz")
        pcm = self._timeline.place(chunk)
        if self._writer is None:
            self._early_audio.append(pcm)
        else:
            self._writer.append_audio(pcm)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
