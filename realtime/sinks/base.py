"""What every sink offers the engine: video frames, the input audio, and a clean close."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from realtime.frames import AudioChunk, VideoFrame


class Sink(Protocol):
    name: str

    def send_video(self, frame: VideoFrame) -> None: ...

    def send_audio(self, chunk: AudioChunk) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class PreparableSink(Protocol):
    """The optional part of a sink: one that connects or opens a device does it in `prepare`,
    called once before the first frame (so the wait does not make the first frames late)."""

    def prepare(self, width: int, height: int) -> None: ...


class NullSink:
    """Accepts and forgets: for benchmarks, where only the engine's own cost should count."""

    name = "null"

    def __init__(self):
        self.frames = 0

    def send_video(self, frame: VideoFrame) -> None:
        self.frames += 1

    def send_audio(self, chunk: AudioChunk) -> None:
        pass

    def close(self) -> None:
        pass
