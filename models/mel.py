"""Wav2Lip's audio features, and which mel frames belong to which video frame.

Pure numpy, no librosa at run time: the live path imports this too. Every mel frame depends
only on its own 800 samples, which is what lets a ring buffer reproduce these values exactly.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from models.errors import LipsyncError

SAMPLE_RATE_HZ = 16_000
N_FFT = 800
HOP = 200  # 12.5 ms -> 80 mel frames per second
N_MELS = 80
FMIN_HZ, FMAX_HZ = 55.0, 7600.0
PREEMPHASIS = 0.97
MEL_FRAMES_PER_S = SAMPLE_RATE_HZ / HOP
WINDOW_FRAMES = 16  # mel frames per video frame (200 ms)
MIN_LEVEL_DB, REF_LEVEL_DB, MAX_ABS = -100.0, 20.0, 4.0


def _hz_to_mel(hz):
    # Slaney: linear below 1 kHz, logarithmic above (librosa's htk=False).
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, hz / f_sp)


def _mel_to_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


@lru_cache(maxsize=1)
def mel_basis() -> np.ndarray:
    """(80, 401) triangular filters, Slaney-scaled and area-normalised."""
    fft_hz = np.linspace(0, SAMPLE_RATE_HZ / 2, 1 + N_FFT // 2)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(FMIN_HZ), _hz_to_mel(FMAX_HZ), N_MELS + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights


@lru_cache(maxsize=1)
def hann_window() -> np.ndarray:
    n = np.arange(N_FFT)
    return 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)  # periodic


def frames_to_mel(frames: np.ndarray) -> np.ndarray:
    """Pre-emphasised, windowable frames (T, 800) -> normalised mel (80, T) float32."""
    spec = np.abs(np.fft.rfft(frames * hann_window(), axis=1))
    mel = mel_basis() @ spec.T
    db = 20.0 * np.log10(np.maximum(1e-5, mel)) - REF_LEVEL_DB
    return np.clip(2 * MAX_ABS * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS, -MAX_ABS, MAX_ABS).astype(np.float32)


def preemphasize(wav: np.ndarray) -> np.ndarray:
    x = np.asarray(wav, dtype=np.float64)
    y = x.copy()
    y[1:] -= PREEMPHASIS * x[:-1]
    return y


def melspectrogram(wav16k: np.ndarray) -> np.ndarray:
    """Mono 16 kHz waveform -> (80, 1 + len // 200) mel spectrogram, as Wav2Lip was trained on."""
    y = preemphasize(wav16k)
    if len(y) < 2:
        raise LipsyncError("audio", "at least 2 samples", f"{len(y)}", "pass a longer audio file")
    padded = np.pad(y, N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    return frames_to_mel(frames)


def chunk_start(frame_index: int, fps: float, offset_frames: int = 0) -> int:
    """First mel frame of video frame `frame_index`'s 16-frame window (may be negative)."""
    return int(MEL_FRAMES_PER_S * (frame_index + offset_frames) / fps)


def mel_chunks(mel: np.ndarray, fps: float, offset_frames: int = 0) -> list[np.ndarray]:
    """Split a spectrogram into one (80, 16) window per video frame, as the reference tool does.

    The last window is the final 16 mel frames and the frame count stops there. Windows that
    would start before the audio (a negative offset) start at frame 0 instead.
    """
    total = mel.shape[1]
    if total < WINDOW_FRAMES:
        raise LipsyncError(
            "audio",
            f"at least {WINDOW_FRAMES / MEL_FRAMES_PER_S:.2f} s of sound",
            f"{total / MEL_FRAMES_PER_S:.3f} s",
            "pass a longer audio file",
        )
    chunks = []
    i = 0
    while True:
        start = max(0, chunk_start(i, fps, offset_frames))
        if start + WINDOW_FRAMES > total:
            chunks.append(mel[:, total - WINDOW_FRAMES :])
            return chunks
        chunks.append(mel[:, start : start + WINDOW_FRAMES])
        i += 1
