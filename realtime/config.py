"""Engine settings as frozen dataclasses; every quantity carries its unit in its name."""

from __future__ import annotations

from dataclasses import dataclass

MODEL_SAMPLE_RATE_HZ = 16_000


@dataclass(frozen=True)
class EngineConfig:
    fps: float = 25.0
    # -1: the alignment Wav2Lip was trained with (audio from 40 ms before to 160 ms after the
    # frame); 0: the reference tool's (one frame later).
    mel_offset_frames: int = -1
    # Speech vs silence on the RMS of each frame's 200 ms mel window. -45 dBFS sits well under
    # speech (espeak-ng speech here: -25 to -15 dBFS over voiced windows) and well over a quiet
    # room through a typical microphone (-60 to -50 dBFS), so breaths and hum stay idle.
    silence_threshold_dbfs: float = -45.0
    crossfade_ms: int = 120  # idle <-> generated, in and out of speech
    # A frame whose audio became complete longer ago than this is not generated: the previous
    # frame is shown again in its place (counted as dropped), so latency cannot accumulate.
    max_lateness_ms: int = 80
    audio_queue_ms: int = 2_000  # audio in never drops; a full queue is an overrun, counted
    output_queue_ms: int = 120  # generated frames waiting for the sinks; oldest dropped first
    history_ms: int = 4_000  # audio and mel kept for windows and passthrough
    output_audio_rate_hz: int = 48_000  # what sinks get: the input audio at this rate, not the model's 16 kHz
    # feather: mouth/jaw mask from the face keypoints, colour-matched (no visible box);
    # hard: the reference tool's rectangle, for parity runs.
    blend: str = "feather"

    def frames_in(self, ms: int) -> int:
        return max(1, round(ms * self.fps / 1000))
