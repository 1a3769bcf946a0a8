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
