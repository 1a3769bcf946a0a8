"""Where the mouth may change, from the face mesh: the face's region (its outline and the chin's
travel below it) for the procedural warp, and Wav2Lip's feathered paste region (mouth, chin and
the chin's travel; never the nose or the eyes). The paste mask costs ~0.1 ms (a polygon and a
distance transform over the box), so it is built per frame like the keypoint oval it replaces."""

from __future__ import annotations

import cv2
import numpy as np

from models import face_mesh as fmesh

# How far Wav2Lip's generated chin may move below the avatar's, in face heights: the paste
# region reaches this far below the outline so an opening jaw is not cut at its edge.
PASTE_CHIN_TRAVEL_FACE_HEIGHTS = 0.08


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
    """Soft (0..1) float32 mask inside `box` (y1, y2, x1, x2): the face below the line halfway
    between the base of the nose and the upper lip's top, with the chin's travel, rising from 0
    at that region's edge (or the box's) to 1 over half the feather width of the keypoint oval
    (12% of the box): every weight it has lies inside the face region."""
    y1, y2, x1, x2 = box
    h, w = y2 - y1, x2 - x1
    p = points[:, :2].astype(np.float64)
    travel = chin_travel_px(p, PASTE_CHIN_TRAVEL_FACE_HEIGHTS)
    # One pixel of margin all round: outside the box counts as outside the region.
    region = face_region(p, (h + 2, w + 2), travel, offset=(x1 - 1, y1 - 1)).astype(np.uint8)
    region[[0, -1]] = 0
    region[:, [0, -1]] = 0
    across, down = face_frame(p)
    top = (p[fmesh.SUBNASALE] + p[fmesh.UPPER_OUTER_LIP[5]]) / 2 - (x1 - 1, y1 - 1)
    far = 4.0 * (h + w)  # everything above the line: a quad well past the box's corners
    above = [top - across * far, top + across * far, top + across * far - down * far, top - across * far - down * far]
    cv2.fillConvexPoly(region, np.round(above).astype(np.int32), 0)
    reach = max(2.0, 0.06 * max(h, w))
    ramp = np.clip(cv2.distanceTransform(region, cv2.DIST_L2, 3)[1:-1, 1:-1] / np.float32(reach), 0.0, 1.0)
    return ramp * ramp * (3 - 2 * ramp)  # smoothstep: no crease where the ramp meets the plateau
