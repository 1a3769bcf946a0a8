"""What `push_audio` accepts, checked at the call so that a bad buffer fails where it was pushed
(one clear line) instead of killing a worker thread that reports it much later."""

from __future__ import annotations

import numpy as np

MIN_RATE_HZ, MAX_RATE_HZ = 8_000, 192_000
MAX_CHANNELS = 8


class AudioFormatError(ValueError):
    """A pushed buffer the engine cannot take; the message says what was expected and found."""


def to_mono_float32(pcm, sample_rate_hz) -> np.ndarray:
    """int16 or float PCM, mono `(n,)` or interleaved `(n, channels)` -> float32 mono in [-1, 1]."""
    if (
        isinstance(sample_rate_hz, bool)
        or not isinstance(sample_rate_hz, (int, np.integer))
        or not MIN_RATE_HZ <= int(sample_rate_hz) <= MAX_RATE_HZ
    ):
        raise AudioFormatError(
            f"push_audio: expected sample_rate_hz an integer in {MIN_RATE_HZ}..{MAX_RATE_HZ}, "
            f"found {sample_rate_hz!r}; pass the rate the audio was produced at"
        )
    a = np.asarray(pcm)
    if a.dtype == np.int16:
        a = a.astype(np.float32) * np.float32(1 / 32768)
    elif a.dtype in (np.float32, np.float64):
        a = a.astype(np.float32, copy=False)
    else:
        raise AudioFormatError(
            f"push_audio: expected int16 or float32 samples, found dtype {a.dtype}; "
            "convert with pcm.astype(np.float32) (full scale +-1) or send int16"
        )
    if a.ndim == 2 and 1 <= a.shape[1] <= MAX_CHANNELS:
        a = a[:, 0] if a.shape[1] == 1 else a.mean(axis=1, dtype=np.float32)
    elif a.ndim != 1:
        raise AudioFormatError(
            f"push_audio: expected mono (samples,) or interleaved (samples, channels<="
            f"{MAX_CHANNELS}) audio, found shape {a.shape}; transpose a (channels, samples) array"
        )
    if not np.isfinite(a).all():
        raise AudioFormatError("push_audio: expected finite samples, found NaN or infinity; check the producer")
    return np.ascontiguousarray(a)
