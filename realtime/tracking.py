"""Face tracking for moving avatars: detect at keyframes, follow with optical flow, smooth.

Per-frame detection is slow and jitters; this runs the detector only every `redetect_frames`,
when too few tracked points survive, or on a scene cut, and in between moves the last box and
keypoints with the similarity transform fitted (RANSAC) to sparse Lucas-Kanade flow of corner
points inside the face. A One-Euro filter smooths the result: heavily when the face is still
(no shimmer), lightly when it moves fast (no lag).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    def __init__(self, detect, fps: float = 25.0, redetect_frames: int = 50, min_points: int = 10,
                 scene_cut_level: float = 30.0, min_cutoff_hz: float = 1.0, beta: float = 0.5,
                 accept_drift: float = 0.08):
        """`detect(bgr)` -> object with `.box` (x1, y1, x2, y2) and `.keypoints` (6, 2), or None."""
        self.detect = detect
        self.redetect_frames, self.min_points, self.scene_cut_level = redetect_frames, min_points, scene_cut_level
        # A periodic re-detection only replaces the tracked face if they disagree by more than
        # this fraction of the face width: flow is more precise than one detection, which is
        # noisy by a few pixels; the check is there to catch drift, not to add detector noise.
        self.accept_drift = accept_drift
        self.filter = OneEuroFilter(fps, min_cutoff_hz, beta)
        self.detector_calls = 0
        self.frames = 0
        self.no_face = 0
        self._gray = self._small = self._pts = None
        self._state = None  # unsmoothed (box corners 2x2 + keypoints 6x2) as an (8, 2) array
        self._since = 0

    def _roi(self, shape) -> tuple[int, int, int, int]:
        """Where to look for the face in the next frame: its box grown by half on every side.
        Optical flow on this crop instead of the whole frame is most of the tracker's speed."""
        (x1, y1), (x2, y2) = self._state[0], self._state[1]
        mx, my = 0.5 * (x2 - x1), 0.5 * (y2 - y1)
        h, w = shape[:2]
        return max(0, int(x1 - mx)), max(0, int(y1 - my)), min(w, int(x2 + mx)), min(h, int(y2 + my))

    def _redetect(self, bgr, periodic: bool) -> bool:
        import cv2

        self.detector_calls += 1
        found = self.detect(bgr)
        if found is None:
            self._state = self._pts = None
            return False
        x1, y1, x2, y2 = found.box
        fresh = np.vstack([[[x1, y1], [x2, y2]], found.keypoints]).astype(np.float64)
        keep = periodic and self._state is not None and (
            np.abs(fresh[:2] - self._state[:2]).max() < self.accept_drift * (x2 - x1))
        if not keep:
            self._state = fresh
        self._roi_box = self._roi(bgr.shape)
        rx1, ry1, rx2, ry2 = self._roi_box
        gray = cv2.cvtColor(bgr[ry1:ry2, rx1:rx2], cv2.COLOR_BGR2GRAY)
        (bx1, by1), (bx2, by2) = self._state[0] - (rx1, ry1), self._state[1] - (rx1, ry1)
        mask = np.zeros(gray.shape, np.uint8)
        mask[max(0, int(by1)):int(by2), max(0, int(bx1)):int(bx2)] = 255
        self._pts = cv2.goodFeaturesToTrack(gray, 40, 0.01, max(3, int((bx2 - bx1) / 20)), mask=mask)
        self._gray = gray
        self._since = 0
        return self._pts is not None

    def update(self, bgr: np.ndarray) -> Track:
        import cv2

        self.frames += 1
        small = bgr[::16, ::16, 1].astype(np.float32)  # a cheap thumbnail for scene-cut detection
        detected = False
        cut = self._small is not None and float(np.abs(small - self._small).mean()) > self.scene_cut_level
        need = self._state is None or self._pts is None or cut or self._since >= self.redetect_frames
        if not need:
            rx1, ry1, rx2, ry2 = self._roi_box
            gray = cv2.cvtColor(bgr[ry1:ry2, rx1:rx2], cv2.COLOR_BGR2GRAY)
            nxt, status, _ = cv2.calcOpticalFlowPyrLK(self._gray, gray, self._pts, None, winSize=(15, 15), maxLevel=2)
            good = status.ravel() == 1
            need = True
            if good.sum() >= self.min_points:
                m, inliers = cv2.estimateAffinePartial2D(self._pts[good], nxt[good], method=cv2.RANSAC,
                                                         ransacReprojThreshold=2.0)
                if m is not None and inliers is not None and inliers.sum() >= self.min_points:
                    # The fit is in ROI coordinates; the ROI stays put between re-detections.
                    off = np.array([rx1, ry1], np.float64)
                    self._state = (self._state - off) @ m[:, :2].T + m[:, 2] + off
                    self._pts = nxt[good][inliers.ravel() == 1].reshape(-1, 1, 2)
                    self._gray = gray
                    self._since += 1
                    need = False
                    # Re-centre the search region once the face has moved well inside it.
                    if np.abs(self._state[:2] - np.array(self._roi_box).reshape(2, 2)).min() < 4:
                        need = True
        if need:
            detected = True
            periodic = not cut and self._state is not None
            if not self._redetect(bgr, periodic):
                self.filter.reset()
        if cut and detected:
            self.filter.reset()
        self._small = small
        if self._state is None:
            self.no_face += 1
            return Track(None, None, detected)
        s = self.filter(self._state)
        return Track(s[:2].ravel(), s[2:], detected)
