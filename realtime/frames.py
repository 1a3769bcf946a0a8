"""One frame type per medium, with integer timestamps.

Audio timestamps count samples at the stream's rate from the first sample the engine saw;
video timestamps count frames at the output rate. `*_ns` fields are clock readings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class AudioChunk:
    pcm: np.ndarray  # float32 mono, full scale +-1
    sample_rate_hz: int
    pts: int  # index of the first sample, in samples at sample_rate_hz
    arrival_ns: int  # clock reading when the last sample of the chunk reached the engine

    @property
    def samples(self) -> int:
        return len(self.pcm)


@dataclass(frozen=True)
class VideoFrame:
    bgr: np.ndarray  # uint8 (H, W, 3)
    pts: int  # frame index at the engine's fps
    meta: dict = field(default_factory=dict)
