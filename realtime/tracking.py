"""Face tracking for moving avatars: detect at keyframes, follow with optical flow, smooth.

Per-frame detection is slow and jitters; this runs the detector only every `redetect_frames`,
when too few tracked points survive, or on a scene cut, and in between moves the last box and
keypoints with the similarity transform fitted (RANSAC) to sparse Lucas-Kanade flow of corner
points inside the face. A One-Euro filter smooths the result: heavily when the face is still
(no shimmer), lightly when it moves fast (no lag).

A re-detection never makes the face jump: the flow runs on that frame too, the detection is
compared with where the flow puts the face, only the part of the difference beyond the
detector's own noise is taken as drift, and that correction is blended in over half a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


class OneEuroFilter:
    """Casiez et al.'s adaptive low-pass: cutoff rises with speed. Works on arrays."""

    def __init__(self, rate_hz: float, min_cutoff_hz: float = 1.0, beta: float = 0.05, d_cutoff_hz: float = 1.0):
        self.rate, self.min_cutoff, self.beta, self.d_cutoff = rate_hz, min_cutoff_hz, beta, d_cutoff_hz
        self._x = self._dx = None

    def _alpha(self, cutoff: float) -> float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau * self.rate)

    def reset(self, x=None) -> None:
        self._x = None if x is None else np.asarray(x, np.float64).copy()
        self._dx = None if x is None else np.zeros_like(self._x)

    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self._x is None:
            self.reset(x)
            return x.copy()
        dx = (x - self._x) * self.rate
        a_d = self._alpha(self.d_cutoff)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        a = 1.0 / (1.0 + self.rate / (2 * math.pi * cutoff))
        self._x = a * x + (1 - a) * self._x
        return self._x.copy()


@dataclass
class Track:
    box: np.ndarray | None  # (x1, y1, x2, y2) float, smoothed; None: no face in this frame
    keypoints: np.ndarray | None  # (6, 2), smoothed
    detected: bool  # the detector ran on this frame


class FaceTracker:
    def __init__(
        self,
        detect,
        fps: float = 25.0,
        redetect_frames: int = 50,
        min_points: int = 10,
        scene_cut_level: float = 30.0,
        min_cutoff_hz: float = 1.0,
        beta: float = 0.5,
        centre_band: float = 0.05,
        size_band: float = 0.12,
        blend_s: float = 0.5,
    ):
        """`detect(bgr)` -> object with `.box` (x1, y1, x2, y2) and `.keypoints` (6, 2), or None."""
        self.detect = detect
        self.redetect_frames, self.min_points, self.scene_cut_level = redetect_frames, min_points, scene_cut_level
        # How far one detection may sit from the tracked face and still count as agreeing with
        # it: its centre within this fraction of the face width, its width and height within
        # this fraction of the tracked ones. One detection is noisy by a few pixels, flow between
        # two frames by a fraction of one; a re-detection corrects only what lies beyond these
        # bands (drift), so it neither adds detector noise nor trades the tracker's precision
        # for the detector's.
        self.centre_band, self.size_band = centre_band, size_band
        # A correction moves the face over this long instead of in one frame: 10 px of drift is
        # a 10 px jump of the pasted mouth if applied at once, under 1 px a frame when spread
        # over half a second.
        self.blend_frames = max(1, round(blend_s * fps))
        self.filter = OneEuroFilter(fps, min_cutoff_hz, beta)
        self.detector_calls = 0
        self.corrections = 0  # re-detections that moved the tracked face (blended in)
        self.frames = 0
        self.no_face = 0
        self._gray = self._small = self._pts = None
        self._state = None  # unsmoothed (box corners 2x2 + keypoints 6x2) as an (8, 2) array
        self._offset = None  # what is still shown of the face before the last correction, (8, 2)
        self._offset_left = 0  # frames until that is gone
        self._since = 0

    def _roi(self, shape) -> tuple[int, int, int, int]:
        """Where to look for the face in the next frame: its box grown by half on every side.
        Optical flow on this crop instead of the whole frame is most of the tracker's speed."""
        (x1, y1), (x2, y2) = self._state[0], self._state[1]
        mx, my = 0.5 * (x2 - x1), 0.5 * (y2 - y1)
        h, w = shape[:2]
        return max(0, int(x1 - mx)), max(0, int(y1 - my)), min(w, int(x2 + mx)), min(h, int(y2 + my))

    def _follow(self, bgr) -> bool:
        """Move the state by this frame's optical flow; False if too few points could be followed."""
        rx1, ry1, rx2, ry2 = self._roi_box
        gray = cv2.cvtColor(bgr[ry1:ry2, rx1:rx2], cv2.COLOR_BGR2GRAY)
        nxt, status, _ = cv2.calcOpticalFlowPyrLK(self._gray, gray, self._pts, None, winSize=(15, 15), maxLevel=2)
        good = status.ravel() == 1
        if good.sum() < self.min_points:
            return False
        m, inliers = cv2.estimateAffinePartial2D(
            self._pts[good], nxt[good], method=cv2.RANSAC, ransacReprojThreshold=2.0
        )
        if m is None or inliers is None or inliers.sum() < self.min_points:
            return False
        # The fit is in ROI coordinates; the ROI stays put between re-detections.
        off = np.array([rx1, ry1], np.float64)
        moved = (self._state - off) @ m[:, :2].T + m[:, 2] + off
        # The box stays upright: its centre moves with the fit and its size scales with it.
        # (Moving its two corners instead would turn a head tilt into a taller or flatter box:
        # a 6 degree tilt of a 90 px face changes the corners' height difference by ~10 px.)
        scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
        half = (self._state[1] - self._state[0]) / 2 * scale
        centre = moved[:2].mean(axis=0)
        self._state = np.vstack([centre - half, centre + half, moved[2:]])
        self._pts = nxt[good][inliers.ravel() == 1].reshape(-1, 1, 2)
        self._gray = gray
        self._since += 1
        return True

    def _shown_offset(self) -> np.ndarray | None:
        if self._offset is None or self._offset_left <= 0:
            return None
        return self._offset * (self._offset_left / self.blend_frames)

    def _corrected(self, fresh: np.ndarray) -> np.ndarray | None:
        """The tracked face moved toward a detection by what lies beyond the noise bands, or
        None where the two agree."""
        state = self._state.copy()
        width = fresh[1, 0] - fresh[0, 0]
        shift = fresh[:2].mean(axis=0) - state[:2].mean(axis=0)
        dist, band = float(np.linalg.norm(shift)), self.centre_band * width
        moved = dist > band
        if moved:
            state += shift * (1 - band / dist)
        # Width and height: scaled about the centre by what the ratio exceeds the band by.
        ratio = (fresh[1] - fresh[0]) / np.maximum(state[1] - state[0], 1e-6)
        over = np.abs(ratio - 1) > self.size_band
        if over.any():
            scale = np.where(over, ratio / (1 + np.sign(ratio - 1) * self.size_band), 1.0)
            c = state[:2].mean(axis=0)
            state[:2] = c + (state[:2] - c) * scale
            moved = True
        return state if moved else None

    def _redetect(self, bgr, tracked: bool, cut: bool) -> bool:
        """Run the detector and take its face: at once (first face, scene cut), in part (what the
        flow-tracked face has drifted beyond the detector's noise), or not at all; a correction
        is blended in over `blend_frames`. Then pick new points to follow."""
        self.detector_calls += 1
        found = self.detect(bgr)
        if found is None:
            self._state = self._pts = self._offset = None
            return False
        x1, y1, x2, y2 = found.box
        fresh = np.vstack([[[x1, y1], [x2, y2]], found.keypoints]).astype(np.float64)
        if self._state is None or cut:
            self._state, self._offset = fresh, None  # a new face or a new shot: nothing to blend from
        else:
            # Without flow this frame the state is a frame old: the detection is all there is.
            target = fresh if not tracked else self._corrected(fresh)
            if target is not None:
                # The face shown now stays where it is and glides to the corrected place.
                offset = self._shown_offset()
                shown = self._state if offset is None else self._state + offset
                self._state = target
                self._offset, self._offset_left = shown - target, self.blend_frames
                self.corrections += 1
        self._roi_box = self._roi(bgr.shape)
        rx1, ry1, rx2, ry2 = self._roi_box
        gray = cv2.cvtColor(bgr[ry1:ry2, rx1:rx2], cv2.COLOR_BGR2GRAY)
        (bx1, by1), (bx2, by2) = self._state[0] - (rx1, ry1), self._state[1] - (rx1, ry1)
        mask = np.zeros(gray.shape, np.uint8)
        mask[max(0, int(by1)) : int(by2), max(0, int(bx1)) : int(bx2)] = 255
        self._pts = cv2.goodFeaturesToTrack(gray, 40, 0.01, max(3, int((bx2 - bx1) / 20)), mask=mask)
        self._gray = gray
        self._since = 0
        return self._pts is not None

    def update(self, bgr: np.ndarray) -> Track:
        self.frames += 1
        small = bgr[::16, ::16, 1].astype(np.float32)  # a cheap thumbnail for scene-cut detection
        cut = self._small is not None and float(np.abs(small - self._small).mean()) > self.scene_cut_level
        self._small = small
        # Flow first, also on a keyframe: the detection is then compared with where the face
        # is in this frame, not where it was in the last one.
        tracked = not cut and self._state is not None and self._pts is not None and self._follow(bgr)
        need = not tracked or self._since >= self.redetect_frames
        # Re-centre the search region once the face has moved well inside it.
        if tracked and np.abs(self._state[:2] - np.array(self._roi_box).reshape(2, 2)).min() < 4:
            need = True
        if need and not self._redetect(bgr, tracked, cut):
            self.filter.reset()
        elif need and cut:
            self.filter.reset()
        if self._state is None:
            self.no_face += 1
            return Track(None, None, need)
        shown = self._state
        offset = self._shown_offset()
        if offset is not None:
            self._offset_left -= 1
            shown = self._state + offset
        s = self.filter(shown)
        return Track(s[:2].ravel(), s[2:], need)
