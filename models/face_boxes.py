"""The reference tool's box post-processing: pads, clipping and 5-frame smoothing.

Boxes are int arrays of (x1, y1, x2, y2) per frame. Everything here reproduces the
reference's arithmetic exactly, quirks included, so that results match frame for frame.
"""

from __future__ import annotations

import numpy as np

SMOOTH_WINDOW_FRAMES = 5


def pad_and_clip(box, pads, height: int, width: int) -> tuple[int, int, int, int]:
    """`pads` is (top, bottom, left, right), as `--pads` gives it."""
    top, bottom, left, right = pads
    x1, y1, x2, y2 = box
    return (max(0, x1 - left), max(0, y1 - top), min(width, x2 + right), min(height, y2 + bottom))


def smooth(boxes: np.ndarray, window: int = SMOOTH_WINDOW_FRAMES) -> np.ndarray:
    """Average each box with the next `window - 1` boxes.

    Faithful to the reference: it works in place on an integer array (means truncate), and near
    the end the window is the last `window` boxes, which by then include already-smoothed ones.
    """
    boxes = np.array(boxes, dtype=np.int64)
    n = len(boxes)
    for i in range(n):
        w = boxes[n - window :] if i + window > n else boxes[i : i + window]
        boxes[i] = np.mean(w, axis=0)
    return boxes
