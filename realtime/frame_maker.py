"""One frame-maker for capture and playout: the speech gate, the blend ramp, the renderer call
and the crossfade with the idle frame.

The capture engine (microphone: the audio is the clock) and the playout (pushed speech: an
output clock) differ in when they make a frame, never in how: both hand this the 16 kHz audio
ring and the mel window of the frame, and get back the picture and its FrameKind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from models.mel import HOP, N_FFT, WINDOW_FRAMES
from realtime.compositor import crossfade
from realtime.config import EngineConfig
from realtime.frames import FrameKind
from realtime.protocols import Renderer
from realtime.renderer import FrameDropped


@dataclass(frozen=True, slots=True)
class Made:
    bgr: np.ndarray
    kind: FrameKind  # GENERATED, IDLE, NO_FACE or DROPPED (the renderer gave up: the previous frame)


class FrameMaker:
    """Gate + ramp + render + crossfade for one stream of frames; keeps the blend weight and the
    last frame made (what a dropped frame shows)."""

    def __init__(self, avatar, renderer: Renderer, cfg: EngineConfig):
        self.avatar, self.renderer, self.cfg = avatar, renderer, cfg
        self.alpha = 0.0  # the lips' blend weight: ramps over crossfade_ms between idle and speech
        self.last: np.ndarray | None = None
        self.mel_buf = np.zeros((80, WINDOW_FRAMES), np.float32)
        self._step = 1.0 / cfg.frames_in(cfg.crossfade_ms)

    def reset(self) -> None:
        """A cut (an interrupt): the next frame ramps up from idle again."""
        self.alpha = 0.0

    def gate(self, ring: np.ndarray, samples: int, window_start: int) -> float:
        """Moves the blend weight one step towards speech or silence, judged by the RMS level of
        the frame's mel window in `ring` (a 16 kHz ring holding `samples` so far); returns it."""
        last = HOP * (window_start + WINDOW_FRAMES - 1) + N_FFT // 2 - 1
        lo = max(0, HOP * window_start - N_FFT // 2, samples - len(ring))
        hi = max(lo + 1, min(samples, last + 1))
        window = ring[np.arange(lo, hi) % len(ring)]
        dbfs = 10 * np.log10(float(np.mean(window.astype(np.float64) ** 2)) + 1e-12)
        if dbfs > self.cfg.silence_threshold_dbfs:
            self.alpha = min(1.0, self.alpha + self._step)
        else:
            self.alpha = max(0.0, self.alpha - self._step)
        return self.alpha

    def make(self, idx: int, fill_mel: Callable[[np.ndarray], object]) -> Made:
        """The frame for avatar frame `idx` at the current blend weight. `fill_mel(buf)` writes the
        frame's mel window into `buf`; it is called only when lips are rendered."""
        idle = self.avatar.frames[idx]
        if not getattr(self.avatar, "has_face", True):  # a live camera frame without a face
            made = Made(idle, FrameKind.NO_FACE)
        elif self.alpha == 0.0:
            made = Made(idle, FrameKind.IDLE)
        else:
            fill_mel(self.mel_buf)
            try:
                out = self.renderer.render(idle, idx, self.mel_buf, self.cfg.mel_offset_frames, self.cfg.fps)
            except FrameDropped:
                return Made(self.last if self.last is not None else idle, FrameKind.DROPPED)
            if self.alpha < 1.0:
                out = crossfade(out, idle, self.alpha)
            made = Made(out, FrameKind.GENERATED)
        self.last = made.bgr
        return made
