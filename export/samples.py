"""Real generator inputs for verification, calibration and the quality gate, kept apart.

Shipped with the package (export/data, see NOTICE.md there), so a wheel install can export:
  face A   the astronaut photo (public domain)          calibration, unless the avatar is known
  face B   the cameraman photo (CC0), another person    held out: judging only
  voice A  espeak-ng speech                             calibration
  voice B, voice C  other espeak-ng voices and texts    held out: judging only
Calibrating and judging on the same face or clip proves nothing about a new one, so the
held-out set never shares a face or a voice with the calibration set.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from mediaio.audio import decode_audio
from models.face_input import FACE_SIZE, jittered_samples, model_faces, model_mels
from models.mel import mel_chunks, melspectrogram

DATA = Path(__file__).resolve().parent / "data"
FACE_A_BOX = (70, 190, 170, 275)  # y1 y2 x1 x2, the astronaut's face in face_a.jpg
FACE_B_BOX = (60, 165, 68, 168)  # the cameraman's face in face_b.png (a three-quarter profile)


@dataclass(frozen=True)
class Samples:
    mels: np.ndarray  # (N, 1, 80, 16) float32
    faces: np.ndarray  # (N, 6, S, S) float32, S the model's face size

    def __len__(self) -> int:
        return len(self.mels)


@cache
def _image(name: str) -> np.ndarray:
    img = cv2.imread(str(DATA / name), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(DATA / name)
    return img


@cache
def _mel_windows(name: str, fps: float = 25.0) -> tuple:
    chunks = mel_chunks(melspectrogram(decode_audio(DATA / name).mono_16k()), fps)
    # Voiced windows only: silence is never sent to the generator (the engine shows the idle
    # face), so it would only dilute the statistics.
    loud = [c for c in chunks if float(c.mean()) > -2.5]
    return tuple(loud or chunks)


def voice(name: str) -> tuple:
    return _mel_windows(f"voice_{name}.mp3")


def verification_inputs(n: int = 4, seed: int = 0, size: int = FACE_SIZE) -> Samples:
    """Face A crops with voice A mels: the export's fp32 parity check (not a quality judgement)."""
    mels, faces = jittered_samples(
        _image("face_a.jpg"), FACE_A_BOX, voice("a"), n, np.random.default_rng(seed), jitter_px=8, size=size
    )
    return Samples(mels, faces)


def calibration_set(
    n: int = 48, avatar_crops: np.ndarray | None = None, seed: int = 1, size: int = FACE_SIZE
) -> Samples:
    """What int8 ranges are taken from: the user's own avatar crops when known (exactly what the
    decoder will see; they are the model's size), else face A at `size`; always with voice A."""
    rng = np.random.default_rng(seed)
    chunks = voice("a")
    if avatar_crops is None or len(avatar_crops) == 0:
        mels, faces = jittered_samples(_image("face_a.jpg"), FACE_A_BOX, chunks, n, rng, jitter_px=10, size=size)
        return Samples(mels, faces)
    crops = np.asarray(avatar_crops)[rng.integers(0, len(avatar_crops), n)]
    mels = model_mels([chunks[i] for i in rng.integers(0, len(chunks), n)])
    return Samples(mels, model_faces(crops))


def avatar_check_set(avatar_crops: np.ndarray, n: int = 16, seed: int = 3) -> Samples:
    """A new avatar's own crops with the held-out voices B and C: what a decoder chosen on another
    avatar is judged on before it is reused for this one (voices no calibration used)."""
    rng = np.random.default_rng(seed)
    chunks = voice("b") + voice("c")
    crops = np.asarray(avatar_crops)[rng.integers(0, len(avatar_crops), n)]
    mels = model_mels([chunks[i] for i in rng.integers(0, len(chunks), n)])
    return Samples(mels, model_faces(crops))


def heldout_set(n: int = 32, seed: int = 2, size: int = FACE_SIZE) -> Samples:
    """The quality gate's inputs: face B (framed several ways, plain and tinted) with voices B
    and C. Shares no face and no voice with `calibration_set`."""
    rng = np.random.default_rng(seed)
    img = _image("face_b.png")
    # Face B is a grey photo: tint half of the samples so the colour channels differ, as in any
    # real avatar.
    tinted = np.clip(img.astype(np.float32) * np.array([0.82, 0.95, 1.12], np.float32), 0, 255).astype(np.uint8)
    chunks = voice("b") + voice("c")
    half = n // 2
    parts = [
        jittered_samples(im, FACE_B_BOX, chunks, k, rng, jitter_px=8, size=size)
        for im, k in ((img, half), (tinted, n - half))
        if k
    ]
    return Samples(np.concatenate([m for m, _ in parts]), np.concatenate([f for _, f in parts]))
