"""What the generator sees: a square face crop, half masked, stacked with itself, in [0, 1].

Exactly the reference tool's preprocessing (OpenCV bilinear resize, BGR channel order,
rows 48..95 of the first copy zeroed, masked copy first), so trained weights see what they
were trained on. The crop is the model's size: 96 for the original, 256/288/... for the HD
layouts (models.layouts), which mask their lower half the same way.
"""

from __future__ import annotations

import cv2
import numpy as np

FACE_SIZE = 96


def crop_face(frame: np.ndarray, box, size: int = FACE_SIZE) -> np.ndarray:
    """`box` is (y1, y2, x1, x2), the reference's coords order. Returns a size x size BGR uint8 crop."""
    y1, y2, x1, x2 = box
    return cv2.resize(frame[y1:y2, x1:x2], (size, size))


def model_faces(crops: np.ndarray) -> np.ndarray:
    """(B, S, S, 3) uint8 crops -> (B, 6, S, S) float32 generator input."""
    crops = np.asarray(crops)
    masked = crops.copy()
    masked[:, crops.shape[1] // 2 :] = 0
    stacked = np.concatenate((masked, crops), axis=3).astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(stacked.transpose(0, 3, 1, 2))


def model_mels(chunks) -> np.ndarray:
    """A sequence of (80, 16) mel windows -> (B, 1, 80, 16) float32 generator input."""
    return np.ascontiguousarray(np.stack(chunks).astype(np.float32)[:, None])


def jittered_samples(
    face_bgr: np.ndarray, box, chunks, n: int, rng: np.random.Generator, jitter_px: int, size: int = FACE_SIZE
):
    """`n` (mels, faces) generator inputs from real media: crops (`size` pixels) of one face with
    the box shifted by up to `jitter_px`, paired with randomly chosen mel windows. For
    calibration and checks."""
    y1, y2, x1, x2 = box
    crops = []
    for _ in range(n):
        dy, dx = rng.integers(-jitter_px, jitter_px + 1, 2)
        crops.append(crop_face(face_bgr, (y1 + dy, y2 + dy, x1 + dx, x2 + dx), size))
    mels = [chunks[i] for i in rng.integers(0, len(chunks), n)]
    return model_mels(mels), model_faces(np.stack(crops))
