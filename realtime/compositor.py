"""Putting the generated mouth back into the frame."""

from __future__ import annotations

import cv2
import numpy as np


def to_uint8_faces(pred: np.ndarray) -> np.ndarray:
    """Generator output (B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8, truncating like the reference."""
    return (pred.transpose(0, 2, 3, 1) * np.float32(255.0)).astype(np.uint8)


def crossfade(face: np.ndarray, idle: np.ndarray, alpha: float) -> np.ndarray:
    """`alpha` of the speaking frame over the idle one (uint8 in, uint8 out), for the fades in
    and out of speech."""
    a = np.float32(alpha)
    return (face.astype(np.float32) * a + idle.astype(np.float32) * (1 - a)).round().astype(np.uint8)


def paste_hard(frame: np.ndarray, face96: np.ndarray, box) -> np.ndarray:
    """The reference behaviour: resize the face back to the box and overwrite a hard rectangle.

    `box` is (y1, y2, x1, x2). Writes into `frame` and returns it.
    """
    y1, y2, x1, x2 = box
    frame[y1:y2, x1:x2] = cv2.resize(face96, (x2 - x1, y2 - y1))
    return frame


def mouth_mask(shape: tuple[int, int], box, keypoints: np.ndarray) -> np.ndarray:
    """Soft (0..1) float32 mask over the mouth and jaw, inside `box` (y1, y2, x1, x2), from
    BlazeFace's keypoints: an ellipse from just under the nose to the chin, cheek to cheek,
    feathered over ~12% of the box so the generated face fades into the original."""
    y1, y2, x1, x2 = box
    h, w = y2 - y1, x2 - x1
    nose, mouth = keypoints[2], keypoints[3]
    top = (nose[1] + mouth[1]) / 2
    cy = (top + y2) / 2 - y1
    cx = mouth[0] - x1
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(
        mask, (int(round(cx)), int(round(cy))), (int(0.36 * w), max(1, int((y2 - top) / 2 * 0.92))), 0, 0, 360, 1.0, -1
    )
    k = max(3, int(0.12 * max(h, w)) | 1)
    return cv2.GaussianBlur(mask, (k, k), 0)


# A mask weight under half a grey level per 255 cannot change a uint8 pixel.
INVISIBLE_WEIGHT = 1.0 / 510.0
ROW_QUANTUM = 8  # first rows are rounded down to this, so that avatars share decoder graphs


def first_shown_row(boxes, keypoints, face_size: int = 96) -> int:
    """The first row of the generator's face_size x face_size output that the feathered paste can
    show, over all avatar frames: the decoder need not compute the rows above it (see
    Wav2LipFamily.decode_rows).

    Row y of the pasted box samples output rows floor((y + 0.5) * S / h - 0.5) and the one
    below (bilinear resize), so the first visible box row maps back to a conservative output row.
    """
    first = face_size - 1
    for box, kp in zip(boxes, keypoints):
        y1, y2, x1, x2 = box
        h = y2 - y1
        mask = mouth_mask((0, 0), box, kp)
        rows = np.nonzero(mask.max(axis=1) >= INVISIBLE_WEIGHT)[0]
        if len(rows) == 0:
            continue
        src = int(np.floor((rows[0] + 0.5) * face_size / h - 0.5))
        first = min(first, src)
    first = max(0, first) // ROW_QUANTUM * ROW_QUANTUM
    return min(first, face_size - 2 * ROW_QUANTUM)


def full_face(generated_rows: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """(rows, S, 3) generated rows at the bottom of the avatar's own S x S crop: the rows the
    decoder skipped are never shown, and the crop keeps the resize around them natural."""
    first = crop.shape[0] - generated_rows.shape[0]
    if first == 0:
        return generated_rows
    out = crop.copy()
    out[first:] = generated_rows
    return out


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
    y1, y2, x1, x2 = box
    gen = cv2.resize(face96, (x2 - x1, y2 - y1)).astype(np.float32)
    orig = frame[y1:y2, x1:x2].astype(np.float32)
    mask = mouth_mask(frame.shape[:2], box, keypoints)
    gen = match_colour(gen, orig, mask)
    m = mask[..., None]
    frame[y1:y2, x1:x2] = np.clip(gen * m + orig * (1 - m), 0, 255).round().astype(np.uint8)
    return frame
