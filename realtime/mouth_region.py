"""Where the mouth may change, from the face mesh: the face's region (its outline and the chin's
travel below it) for the procedural warp, and Wav2Lip's feathered paste region (mouth, chin and
the chin's travel; never the nose or the eyes). Computed per avatar frame, not per pixel of
motion: the live path only reads them."""

from __future__ import annotations

import collections
import hashlib
import threading

import cv2
import numpy as np

from models import face_mesh as fmesh

# How far Wav2Lip's generated chin may move below the avatar's, in face heights: the paste
# region reaches this far below the outline so an opening jaw is not cut at its edge.
PASTE_CHIN_TRAVEL_FACE_HEIGHTS = 0.08
# Masks kept, newest last: the paste asks for the same avatar frame's mask every time it is
# shown, and building one (~0.7 ms) is more than the live path may add per frame. 64 masks of
# a 200x200 box are 10 MB.
MASK_CACHE_ENTRIES = 64
_masks: collections.OrderedDict[bytes, np.ndarray] = collections.OrderedDict()
_masks_lock = threading.Lock()


def face_frame(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (image x, y) along the eye line and down the face."""
    eye = points[fmesh.LEFT_EYE_OUTER, :2] - points[fmesh.RIGHT_EYE_OUTER, :2]
    across = eye / max(1e-6, float(np.linalg.norm(eye)))
    return across, np.array([-across[1], across[0]])


def chin_travel_px(points: np.ndarray, face_heights: float) -> float:
    """How far the chin can move down at full openness (the skirt below the face's outline)."""
    return face_heights * fmesh.face_height(points)


def face_region(
    points: np.ndarray, shape: tuple[int, int], travel_px: float, offset: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """bool mask of the face: its outline's hull, with the chin's travel below it (the outline
    moved down the face by `travel_px`), over an image of `shape` whose top-left pixel is at
    `offset` (x, y). What may change when the mouth moves."""
    oval = points[list(fmesh.FACE_OVAL), :2]
    _, down = face_frame(points)
    hull = cv2.convexHull((np.vstack([oval, oval + down * travel_px]) - offset).astype(np.float32))
    mask = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(mask, np.round(hull).astype(np.int32), 1)
    return mask.astype(bool)


def mesh_mouth_mask(box, points: np.ndarray) -> np.ndarray:
    """`paste_mask` for this box and mesh, built once and then read from a small cache (read-only)."""
    key = hashlib.blake2b(np.ascontiguousarray(points).tobytes() + repr(tuple(box)).encode(), digest_size=16).digest()
    with _masks_lock:
        hit = _masks.get(key)
        if hit is not None:
            _masks.move_to_end(key)
            return hit
    mask = paste_mask(box, points)
    mask.flags.writeable = False
    with _masks_lock:
        _masks[key] = mask
        while len(_masks) > MASK_CACHE_ENTRIES:
            _masks.popitem(last=False)
    return mask


def paste_mask(box, points: np.ndarray) -> np.ndarray:
    """Soft (0..1) float32 mask inside `box` (y1, y2, x1, x2): the face below the line halfway
    between the base of the nose and the upper lip's top, with the chin's travel; shrunk by the
    feather's reach before feathering, so every weight it has lies inside the face region."""
    y1, y2, x1, x2 = box
    h, w = y2 - y1, x2 - x1
    p = points[:, :2].astype(np.float64)
    travel = chin_travel_px(p, PASTE_CHIN_TRAVEL_FACE_HEIGHTS)
    region = face_region(p, (h, w), travel, offset=(x1, y1)).astype(np.uint8)
    _, down = face_frame(p)
    top = (p[fmesh.SUBNASALE] + p[fmesh.UPPER_OUTER_LIP[5]]) / 2 - (x1, y1)
    gy, gx = np.mgrid[0:h, 0:w]
    region[(gx - top[0]) * down[0] + (gy - top[1]) * down[1] < 0] = 0
    k = max(3, int(0.12 * max(h, w)) | 1)
    reach = k // 2 + 1
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))
    # Outside the box counts as outside the region: the mask fades before the box's edge.
    region = cv2.erode(region, disc, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.GaussianBlur(region.astype(np.float32), (k, k), 0)
