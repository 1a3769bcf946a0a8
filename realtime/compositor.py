"""Putting the generated mouth back into the frame."""

from __future__ import annotations

import numpy as np


def to_uint8_faces(pred: np.ndarray) -> np.ndarray:
    """Generator output (B, 3, 96, 96) in [0, 1] -> (B, 96, 96, 3) uint8, truncating like the reference."""
    return (pred.transpose(0, 2, 3, 1) * np.float32(255.0)).astype(np.uint8)


def paste_hard(frame: np.ndarray, face96: np.ndarray, box) -> np.ndarray:
    """The reference behaviour: resize the face back to the box and overwrite a hard rectangle.

    `box` is (y1, y2, x1, x2). Writes into `frame` and returns it.
    """
    import cv2

    y1, y2, x1, x2 = box
    frame[y1:y2, x1:x2] = cv2.resize(face96, (x2 - x1, y2 - y1))
    return frame


def mouth_mask(shape: tuple[int, int], box, keypoints: np.ndarray) -> np.ndarray:
    """Soft (0..1) float32 mask over the mouth and jaw, inside `box` (y1, y2, x1, x2), from
    BlazeFace's keypoints: an ellipse from just under the nose to the chin, cheek to cheek,
    feathered over ~12% of the box so the generated face fades into the original."""
    import cv2

    y1, y2, x1, x2 = box
    h, w = y2 - y1, x2 - x1
    nose, mouth = keypoints[2], keypoints[3]
    top = (nose[1] + mouth[1]) / 2
    cy = (top + y2) / 2 - y1
    cx = mouth[0] - x1
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(mask, (int(round(cx)), int(round(cy))), (int(0.36 * w), max(1, int((y2 - top) / 2 * 0.92))), 0, 0, 360,
                1.0, -1)
    k = max(3, int(0.12 * max(h, w)) | 1)
    return cv2.GaussianBlur(mask, (k, k), 0)


def match_colour(src: np.ndarray, ref: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Shift and scale each channel of `src` so its weighted mean/std equal `ref`'s (Reinhard):
    the generator's output is often a little off in brightness and tint from the frame."""
    w = weight[..., None]
    total = float(w.sum()) + 1e-6
    s_mean = (src * w).sum((0, 1)) / total
    r_mean = (ref * w).sum((0, 1)) / total
    s_std = np.sqrt(((src - s_mean) ** 2 * w).sum((0, 1)) / total) + 1e-3
    r_std = np.sqrt(((ref - r_mean) ** 2 * w).sum((0, 1)) / total) + 1e-3
    return (src - s_mean) * (r_std / s_std) + r_mean


def paste_feathered(frame: np.ndarray, face96: np.ndarray, box, keypoints: np.ndarray) -> np.ndarray:
    """Blend the generated face into the frame through `mouth_mask`, colour-matched; no box edge."""
    import cv2

    y1, y2, x1, x2 = box
    gen = cv2.resize(face96, (x2 - x1, y2 - y1)).astype(np.float32)
    orig = frame[y1:y2, x1:x2].astype(np.float32)
    mask = mouth_mask(frame.shape[:2], box, keypoints)
    gen = match_colour(gen, orig, mask)
    m = mask[..., None]
    frame[y1:y2, x1:x2] = np.clip(gen * m + orig * (1 - m), 0, 255).round().astype(np.uint8)
    return frame
