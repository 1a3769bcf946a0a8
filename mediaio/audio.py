"""Audio file decoding through PyAV: any container FFmpeg reads, no executable, no shell."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soxr

from models.errors import LipsyncError

MODEL_SAMPLE_RATE_HZ = 16_000


@dataclass(frozen=True)
class DecodedAudio:
    pcm: np.ndarray  # float32, (channels, samples), full scale +-1, at the file's own rate
    sample_rate_hz: int

    @property
    def duration_s(self) -> float:
        return self.pcm.shape[1] / self.sample_rate_hz

    def mono_16k(self) -> np.ndarray:
        """Mono float32 at 16 kHz the way the reference (librosa.load) made it: mean, then soxr HQ."""
        return to_model_rate(self.pcm.mean(axis=0), self.sample_rate_hz)


def to_model_rate(mono: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    mono = np.asarray(mono, dtype=np.float32)
    if sample_rate_hz == MODEL_SAMPLE_RATE_HZ:
        return mono
    return soxr.resample(mono, sample_rate_hz, MODEL_SAMPLE_RATE_HZ, quality="HQ").astype(np.float32)


class AudioTooLong(LipsyncError):
    """The file holds more audio than the caller's limit; decoding stopped there."""


def decode_audio(path: str | Path, max_duration_s: float | None = None, max_samples: int | None = None) -> DecodedAudio:
    """Decode the first audio stream of `path` to float32 planar at its native rate.

    `max_duration_s` / `max_samples` (all channels together): decoding stops with AudioTooLong
    as soon as the file passes either, whatever its header claims: a small file of compressed
    silence may hold hours, and memory must stay bounded by the limit, not by the file."""
    what = f"audio {path}"
    if not Path(path).is_file():
        raise LipsyncError(what, "an audio or video file", "no such file", "check the path")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                kinds = ", ".join(s.type for s in container.streams) or "no streams"
                raise LipsyncError(
                    what,
                    "a file with an audio stream",
                    f"only {kinds}",
                    "pass a file with sound (wav, mp3, m4a, ogg, or a video with audio)",
                )
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp")
            got = _Collected(what, max_duration_s, max_samples)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    got.add(out.to_ndarray(), frame.sample_rate)
            for out in resampler.resample(None):
                got.add(out.to_ndarray(), out.sample_rate)
            rate = stream.codec_context.sample_rate or stream.rate
    except LipsyncError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise LipsyncError(
            what,
            "a readable audio file",
            f"data FFmpeg cannot decode ({type(e).__name__}: {e})",
            "re-export or re-download the file",
        ) from None
    if got.frames == 0:
        raise LipsyncError(what, "some audio samples", "an empty audio stream", "pass a file with sound")
    return DecodedAudio(np.concatenate(got.blocks, axis=1).astype(np.float32, copy=False), int(rate))


class _Collected:
    """Decoded blocks, refused the moment they pass a limit."""

    def __init__(self, what: str, max_duration_s: float | None, max_samples: int | None):
        self.what, self.max_duration_s, self.max_samples = what, max_duration_s, max_samples
        self.blocks: list[np.ndarray] = []
        self.frames = 0  # samples per channel

    def add(self, block: np.ndarray, rate: int) -> None:
        self.blocks.append(block)
        self.frames += block.shape[1]
        if self.max_duration_s is not None and rate and self.frames > self.max_duration_s * rate:
            raise AudioTooLong(
                self.what,
                f"at most {self.max_duration_s:g} s of audio",
                f"more (decoding stopped at {self.frames / rate:.1f} s)",
                "send a shorter clip",
            )
        if self.max_samples is not None and self.frames * block.shape[0] > self.max_samples:
            raise AudioTooLong(
                self.what,
                f"at most {self.max_samples} samples (all channels together)",
                f"more at {block.shape[0]} channels, {rate} Hz (decoding stopped there)",
                "send a shorter clip, in mono or stereo at 48 kHz or less",
            )
