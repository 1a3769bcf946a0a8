"""The contracts between the live engine's parts, as typing Protocols (structural: nothing has to
inherit from them; a class that has the methods fits).

  AudioSource   microphone, file pacer: pushes audio into the engine until stopped
  Renderer      draws one output frame from an avatar frame and its mel window
                (DeadlineRenderer: one that is told each frame's deadline)
  FaceDecoder   a split generator's per-frame half: mel window + cached face features -> face
  FeatureSource an avatar seen by a shared generator: cached face features per avatar frame
  Sink          (realtime.sinks.base) takes video frames and audio; PreparableSink also opens
                its device or connection before the first frame

`Renderer` and `PreparableSink` are runtime-checkable: the engine tells a renderer from a bare
generator, and a sink that prepares from one that does not, with isinstance().
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from realtime.clock import MediaClock
from realtime.sinks.base import PreparableSink, Sink


class PushAudio(Protocol):
    """Engine.push_audio: what a source calls with each buffer it captured (non-blocking live)."""

    def __call__(
        self, pcm: np.ndarray, sample_rate_hz: int, arrival_ns: int | None = None, capture_ns: int | None = None
    ) -> bool: ...


class AudioSource(Protocol):
    name: str

    def run(self, push: PushAudio, clock: MediaClock, duration_s: float | None = None) -> None:
        """Push audio until the input ends, `duration_s` passes or `stop()` is called."""

    def stop(self) -> None:
        """Make `run` return soon; callable from another thread, more than once."""


@runtime_checkable
class Renderer(Protocol):
    def render(self, frame: np.ndarray, idx: int, mel_window: np.ndarray, offset_frames: int, fps: float) -> np.ndarray:
        """The output frame (BGR uint8, the avatar frame's size) for avatar frame `idx` showing the
        lips of `mel_window` (80, 16); `frame` is that avatar frame and is not modified."""
        ...


class DeadlineRenderer(Renderer, Protocol):
    """A renderer whose faces come from a shared scheduler (realtime.service): with
    `wants_deadline` true, the engine sets `deadline_ns` (None: no deadline) before each render."""

    wants_deadline: bool
    deadline_ns: int | None


class FaceDecoder(Protocol):
    """A split generator's decoder (realtime.generator.SplitGenerator and stand-ins in tests)."""

    def decode(self, mels: np.ndarray, features: list) -> np.ndarray:
        """(B, 1, 80, 16) mels + the face encoder's 7 features (B, ...) -> (B, 3, rows, 96) in [0, 1]."""
        ...


class FeatureSource(Protocol):
    def features_at(self, i: int) -> list[np.ndarray]:
        """The face encoder's 7 features (1, C, H, W) of avatar frame `i`."""
        ...


__all__ = [
    "AudioSource",
    "DeadlineRenderer",
    "FaceDecoder",
    "FeatureSource",
    "PreparableSink",
    "PushAudio",
    "Renderer",
    "Sink",
]
