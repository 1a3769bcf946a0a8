"""Real test media made offline: a face photo, speech, and random-weight checkpoints.

Nothing is downloaded: the photo ships inside scikit-image, the speech comes from espeak-ng,
and checkpoints are random weights in the official on-disk format with BatchNorm statistics
calibrated on these same real inputs (so outputs are pictures, not a saturated flat colour).
"""

from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np

ASTRONAUT_FACE_BOX = (60, 230, 150, 290)  # y1 y2 x1 x2 around the astronaut's face, by eye


def face_photo(path: Path) -> Path:
    import cv2
    from skimage import data

    cv2.imwrite(str(path), data.astronaut()[:, :, ::-1])
    return path


def speech_wav(path: Path, text: str, rate_hz: int = 16000, voice: str | None = None) -> Path:
    """espeak-ng speech (default voice, or `voice` such as "en-us+f4"), resampled to `rate_hz`,
    as 16-bit PCM wav."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng); the test media needs it")
    raw = path.with_suffix(".espeak.wav")
    subprocess.run([espeak, *(["-v", voice] if voice else []), "-w", str(raw), text], check=True)
    import soxr

    from mediaio.audio import decode_audio

    dec = decode_audio(raw)
    mono = soxr.resample(dec.pcm.mean(axis=0), dec.sample_rate_hz, rate_hz, quality="HQ")
    write_audio(path, mono[None], rate_hz)
    raw.unlink()
    return path


def write_audio(path: Path, pcm: np.ndarray, rate_hz: int, codec: str | None = None) -> Path:
    """Encode float planar `pcm` (channels, samples) with PyAV; codec chosen from the suffix."""
    import av

    codec = (
        codec
        or {".wav": "pcm_s16le", ".mp3": "libmp3lame", ".m4a": "aac", ".ogg": "libopus", ".flac": "flac"}[path.suffix]
    )
    layout = "mono" if pcm.shape[0] == 1 else "stereo"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate_hz if codec != "libopus" else 48000, layout=layout)
        fmt = stream.codec_context.codec.audio_formats[0].name
        resampler = av.AudioResampler(
            format=fmt, layout=layout, rate=stream.rate, frame_size=stream.codec_context.frame_size or 1024
        )
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm, dtype=np.float32), format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate_hz, 0, Fraction(1, rate_hz)
        for f in resampler.resample(frame) + resampler.resample(None):
            out.mux(stream.encode(f))
        out.mux(stream.encode(None))
    return path


def video_only(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="bgr24")
            f.pts = i
            out.mux(s.encode(f))
        out.mux(s.encode(None))
    return path


def calibration_batches(photo: Path, speech: Path):
    import cv2

    from mediaio.audio import decode_audio
    from synthetic import calibration_batches as batches

    return batches(cv2.imread(str(photo)), ASTRONAUT_FACE_BOX, decode_audio(speech).mono_16k())


class CollectSink:
    """A sink that keeps every frame it is given, for tests that inspect the engine's output."""

    name = "collect"

    def __init__(self):
        self.frames = []

    def send_video(self, frame):
        self.frames.append(frame)

    def send_audio(self, chunk):
        pass

    def close(self):
        pass
