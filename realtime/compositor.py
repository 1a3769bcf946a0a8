"""Putting the generated mouth back into the frame."""

from __future__ import annotations

import collections
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from realtime.frame_pool import FramePool, origin
from realtime.mouth_region import mesh_mouth_mask
from realtime.stage_timer import Stage, span


def to_uint8_faces(pred: np.ndarray) -> np.ndarray:
    """Generator output (B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8, truncating like the reference."""
    with span(Stage.CONVERT):
        return (pred.transpose(0, 2, 3, 1) * np.float32(255.0)).astype(np.uint8)


def crossfade(face: np.ndarray, idle: np.ndarray, alpha: float) -> np.ndarray:
    """`alpha` of the speaking frame over the idle one (uint8 in, uint8 out), for the fades in
    and out of speech: one fused, rounding OpenCV pass, no float copies of the frame. A face
    pasted into this very idle frame (a FramePool's) differs from it in the paste's region only:
    then only that region is blended, into another frame of the pool (the same pixels as the
    whole-frame blend: outside the region both inputs are equal, and so is their blend)."""
    a = float(alpha)
    with span(Stage.CROSSFADE):
        made = origin(face)
        if made is None or made.source is not idle:
            return cv2.addWeighted(face, a, idle, 1.0 - a, 0.0)
        out = made.pool.take(idle, made.region)
        r = made.region
        if out[r].size:
            cv2.addWeighted(face[r], a, idle[r], 1.0 - a, 0.0, dst=out[r])
        return out


def paste_hard(frame: np.ndarray, face96: np.ndarray, box) -> np.ndarray:
    """The reference behaviour: resize the face back to the box and overwrite a hard rectangle.

    `box` is (y1, y2, x1, x2). Writes into `frame` and returns it.
    """
    y1, y2, x1, x2 = box
    frame[y1:y2, x1:x2] = cv2.resize(face96, (x2 - x1, y2 - y1))
    return frame


def mouth_mask(shape: tuple[int, int], box, keypoints: np.ndarray) -> np.ndarray:
    """Soft (0..1) float32 mask over the mouth and jaw, inside `box` (y1, y2, x1, x2), feathered
    over ~12% of the box so the generated face fades into the original. From a face mesh (468
    points): the face below the nose with the chin's travel (realtime.mouth_region); from
    BlazeFace's six keypoints: an ellipse from just under the nose to the chin, cheek to cheek."""
    if len(keypoints) > 6:
        return mesh_mouth_mask(box, keypoints)
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
    with span(Stage.CONVERT):
        out = crop.copy()
        out[first:] = generated_rows
    return out


@dataclass(frozen=True, eq=False)
class PastePlan:
    """What the feathered paste into one avatar frame needs that does not change with the audio:
    made once per avatar frame (`plan_paste`), used for every face pasted there.

    Only the mask's bounding box inside the face box (`rows`, `cols`, box-relative) is blended:
    outside it the weight is under INVISIBLE_WEIGHT and the frame's own pixels stay. The target's
    colour statistics (weighted over the whole box, as the colour match defines them) and the
    frame's share of the blend (`keep`: pixel x (1 - weight)) are fixed by the frame.
    """

    box: tuple[int, int, int, int]  # (y1, y2, x1, x2) in the frame
    rows: tuple[int, int]  # [r0, r1) of the box
    cols: tuple[int, int]  # [c0, c1) of the box
    weight: np.ndarray  # (n, 1) float32: the mask over the bounding box, row-major
    weight_row: np.ndarray  # (n,) float32, the same: for the weighted sums (a BLAS mat-vec)
    weight_sum: float
    keep: np.ndarray  # (n, 3) float32: the frame's pixels x (1 - weight)
    ref_mean: np.ndarray  # (3,) float64: the frame's colour under the mask, per channel
    ref_std: np.ndarray  # (3,) float64

    @property
    def region(self) -> tuple[slice, slice]:
        """The frame pixels a paste writes."""
        y1, _, x1, _ = self.box
        return slice(y1 + self.rows[0], y1 + self.rows[1]), slice(x1 + self.cols[0], x1 + self.cols[1])


def plan_paste(frame: np.ndarray, box, mask: np.ndarray) -> PastePlan:
    """The PastePlan of `frame` (uint8 BGR) for a face in `box` (y1, y2, x1, x2) blended through
    `mask` (box-sized soft 0..1 weights, e.g. `mouth_mask`)."""
    y1, y2, x1, x2 = box
    mask = np.asarray(mask, np.float32)
    if mask.shape != (y2 - y1, x2 - x1):
        raise ValueError(f"mask is {mask.shape}, the box is {(y2 - y1, x2 - x1)}")
    shown = mask >= INVISIBLE_WEIGHT
    rows, cols = np.nonzero(shown.any(axis=1))[0], np.nonzero(shown.any(axis=0))[0]
    if len(rows) == 0:
        r0 = r1 = c0 = c1 = 0
    else:
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    orig = frame[y1:y2, x1:x2].reshape(-1, 3).astype(np.float64)
    w = mask.reshape(-1).astype(np.float64)
    total = float(w.sum()) + 1e-6
    ref_mean = (w @ orig) / total
    ref_std = np.sqrt((w @ (orig - ref_mean) ** 2) / total) + 1e-3
    m = np.ascontiguousarray(mask[r0:r1, c0:c1]).reshape(-1, 1)
    keep = frame[y1 + r0 : y1 + r1, x1 + c0 : x1 + c1].reshape(-1, 3).astype(np.float32) * (1 - m)
    return PastePlan(
        (y1, y2, x1, x2), (r0, r1), (c0, c1), m, m.reshape(-1), float(m.sum()) + 1e-6, keep, ref_mean, ref_std
    )


def paste_planned(out: np.ndarray, face96: np.ndarray, plan: PastePlan) -> np.ndarray:
    """Blend `face96` (uint8, 96x96x3) into `out` through `plan`, colour-matched (Reinhard: each
    channel's weighted mean and spread made those of the frame under the mask). Writes only
    `plan.region` of `out`, which must hold the planned frame's pixels there; returns `out`.

    float32 over the bounding box only, in place: resize, two weighted sums (mat-vecs), one
    affine-and-blend pass, rounded straight into the frame."""
    with span(Stage.PASTE):
        y1, y2, x1, x2 = plan.box
        (r0, r1), (c0, c1) = plan.rows, plan.cols
        if r1 == r0 or c1 == c0:
            return out
        gen = cv2.resize(face96, (x2 - x1, y2 - y1))[r0:r1, c0:c1]
        d = gen.astype(np.float32).reshape(-1, 3)
        mean = (plan.weight_row @ d) / plan.weight_sum
        d -= mean.astype(np.float32)
        sq = np.square(d)
        std = np.sqrt(np.maximum(plan.weight_row @ sq, 0) / plan.weight_sum) + 1e-3
        d *= (plan.ref_std / std).astype(np.float32)
        d += plan.ref_mean.astype(np.float32)
        d *= plan.weight
        d += plan.keep
        np.clip(d, 0, 255, out=d)
        np.rint(d, out=d)
        np.copyto(out[plan.region], d.reshape(r1 - r0, c1 - c0, 3), casting="unsafe")
    return out


def paste_feathered(frame: np.ndarray, face96: np.ndarray, box, mask: np.ndarray) -> np.ndarray:
    """Blend the generated face into `frame` through `mask` (box-sized, 0..1; see `mouth_mask`),
    colour-matched; no box edge. Writes into `frame` and returns it. A renderer that pastes into
    the same avatar frame again keeps the `plan_paste` and calls `paste_planned`."""
    return paste_planned(frame, face96, plan_paste(frame, box, mask))


class FeatheredPaste:
    """`paste_feathered` for a renderer that pastes into the same avatar frames again and again,
    into a new output frame each time: each avatar frame's PastePlan is made once and kept (the
    latest `plans` of them: a long video's loop makes them again as it comes round), and output
    frames come from a FramePool, so an unchanged avatar frame is not copied per output frame."""

    def __init__(self, plans: int = 8, pool: FramePool | None = None):
        self._plans: collections.OrderedDict[int, tuple[weakref.ref, PastePlan]] = collections.OrderedDict()
        self._capacity = plans
        self.pool = pool or FramePool()
        self._lock = threading.Lock()

    def plan(self, idx: int, frame: np.ndarray, box, mask: Callable[[], np.ndarray]) -> PastePlan:
        """The plan of avatar frame `idx`, valid while it is this very `frame` array in this box
        (a live camera hands a new array every frame); `mask()` is called only to make one."""
        with self._lock:
            kept = self._plans.get(idx)
            if kept is not None and kept[0]() is frame and kept[1].box == tuple(box):
                self._plans.move_to_end(idx)
                return kept[1]
        with span(Stage.PASTE):
            plan = plan_paste(frame, tuple(box), mask())
        with self._lock:
            self._plans[idx] = (weakref.ref(frame), plan)
            self._plans.move_to_end(idx)
            while len(self._plans) > self._capacity:
                self._plans.popitem(last=False)
        return plan

    def __call__(self, frame: np.ndarray, idx: int, face96: np.ndarray, box, mask: Callable[[], np.ndarray]):
        """A new output frame: avatar frame `frame` (index `idx`) with `face96` pasted in."""
        plan = self.plan(idx, frame, box, mask)
        return paste_planned(self.pool.take(frame, plan.region), face96, plan)
