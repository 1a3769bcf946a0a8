"""One frame type per medium, with integer timestamps.

Audio timestamps count samples at the stream's rate from the first sample the engine saw;
video timestamps count frames at the output rate. `*_ns` fields are clock readings.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np


class FrameKind(str, enum.Enum):
    """Why a frame looks the way it does; counted per kind in the stats. A `str` enum: it compares
    equal to (and hashes like) its value, and JSON writes the value, so reports read as before."""

    GENERATED = "generated"  # lips made from this frame's audio (possibly crossfading in or out)
    IDLE = "idle"  # the avatar's own frame: silence
    DROPPED = "dropped"  # capture: too late to generate, the previous frame is shown again
    NO_FACE = "no_face"  # capture: a live camera frame without a face, passed through
    CROSSFADE = "crossfade"  # playout: fading from the last speech frame back to idle
    HELD = "held"  # playout: the next speech frame was late, the last one is held

    # The value, as enum.StrEnum (Python 3.11+) would give; a plain (str, Enum) gives "FrameKind.IDLE".
    def __str__(self) -> str:
        return self.value

    def __format__(self, format_spec: str) -> str:
        return format(self.value, format_spec)


class FrameMeta(TypedDict, total=False):
    """What the engine and the playout attach to each video frame. A plain dict at run time;
    which keys are set depends on who made the frame (see each key)."""

    kind: FrameKind  # both
    ready_ns: int | None  # capture: when the frame's audio window was complete (None offline)
    capture_ns: int | None  # capture: when the frame's own audio was captured (None offline)
    decided_ns: int  # capture, live: when the worker decided the frame
    emitted_ns: int  # playout: when the pacer sent it
    segment: int | None  # playout: the utterance it belongs to; None while idle or fading out
    epoch: int  # playout, before the pacer: the interrupt generation it was made in
    alpha: float  # playout, before the pacer: the lips' blend weight


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
    meta: FrameMeta = field(default_factory=lambda: FrameMeta())


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
