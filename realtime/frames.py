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


class AudioTimeline:
    """Turns timestamped chunks into one contiguous track for a writer: a gap (a chunk dropped
    upstream) becomes silence and an overlap is trimmed, so nothing after a loss moves earlier."""

    def __init__(self, start_pts: int = 0):
        self.next_pts = start_pts

    def place(self, chunk: AudioChunk) -> np.ndarray:
        """The samples to append for `chunk`, given everything placed before it."""
        pcm = np.asarray(chunk.pcm, np.float32)
        gap = chunk.pts - self.next_pts
        if gap > 0:
            pcm = np.concatenate([np.zeros(gap, np.float32), pcm])
        elif gap < 0:
            pcm = pcm[-gap:]
        self.next_pts += len(pcm)
        return pcm
