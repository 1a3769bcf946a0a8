"""A lip engine that needs no weights: mouth motion from the audio, drawn by warping the photo.

Same inputs and timing as the neural engine (each frame's 200 ms mel window, same alignment),
so it plugs into the same scheduler, sinks, stats and API. Per frame:
  * openness from loudness in the speech band around the frame's own time (the first ~60 ms
    of the window after the 40 ms lead-in), between a floor and a ceiling in normalised mel units;
  * width from spectral shape: energy high in the band (e.g. "ee", "s") spreads the lips, energy
    low in the band (e.g. "oo", "o") rounds them;
  * where the avatar frame's face mesh is known (realtime.avatar_mesh), the avatar's own mouth
    is warped from it (realtime.mouth_warp): jaw and lower lip (and lower teeth) down, upper lip
    (and upper teeth) a little up, corners out or in, a shaded cavity where the lips part, and
    no pixel outside the face changed;
  * without a mesh (no face found by the mesh model), a smooth displacement field around
    BlazeFace's mouth keypoint and a soft dark ellipse for the cavity.
Closed and still in silence: openness 0 leaves the frame untouched.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import cv2
import numpy as np

from models import mel as M
from realtime.mouth_warp import MouthRig, WarpConfig, apply_rig, build_rig


@dataclass(frozen=True)
class ProceduralConfig:
    floor_mel: float = -2.6  # normalised mel (-4..4) at or under which the mouth stays shut
    ceiling_mel: float = 0.4  # at or over which it is fully open
    max_open_mouth_widths: float = 0.3  # jaw drop at full openness, in mouth widths
    smoothing: float = 0.5  # one-pole smoothing of openness between frames (0 = none)
    geometry_cache_frames: int = 64  # avatar frames whose warps stay in memory (~0.3-1.2 MB each)
    warp: WarpConfig = WarpConfig()


def _band(lo_hz: float, hi_hz: float) -> slice:
    centres = M._mel_to_hz(np.linspace(M._hz_to_mel(M.FMIN_HZ), M._hz_to_mel(M.FMAX_HZ), M.N_MELS + 2))[1:-1]
    idx = np.flatnonzero((centres >= lo_hz) & (centres <= hi_hz))
    return slice(int(idx[0]), int(idx[-1]) + 1)


SPEECH_BAND = _band(250, 4000)
LOW_BAND, HIGH_BAND = _band(250, 1000), _band(1800, 4000)


class ProceduralRenderer:
    name = "procedural"

    def __init__(
        self,
        keypoints: list[np.ndarray],
        cfg: ProceduralConfig = ProceduralConfig(),
        meshes: list[np.ndarray | None] | None = None,
    ):
        """`keypoints[i]`: BlazeFace's 6 points (eyes, nose, mouth, ears) in avatar frame i;
        `meshes[i]`: its face mesh (468, 3) or None (a live camera's list changes in place)."""
        self.kps, self.cfg, self.meshes = keypoints, cfg, meshes
        self._rigs: collections.OrderedDict[int, tuple[MouthRig, np.ndarray]] = collections.OrderedDict()
        self._open = 0.0
        # Grids per avatar frame, least recently used first: a video avatar reuses a frame's grid
        # once per loop, so keeping all of them only grows memory with the video's length.
        self._maps: collections.OrderedDict[int, tuple] = collections.OrderedDict()

    def mouth_shape(self, mel_window: np.ndarray, offset_frames: int = -1, fps: float = 25.0) -> tuple[float, float]:
        """(openness 0..1, width change -1..1) from one (80, 16) window."""
        lead = int(round(-offset_frames * M.MEL_FRAMES_PER_S / fps))  # mel frames before the frame's time
        now = mel_window[:, lead : lead + 5]
        level = float(now[SPEECH_BAND].mean())
        c = self.cfg
        target = float(np.clip((level - c.floor_mel) / (c.ceiling_mel - c.floor_mel), 0.0, 1.0))
        self._open = target if target > self._open else c.smoothing * self._open + (1 - c.smoothing) * target
        if self._open < 0.02:
            self._open = 0.0
        tilt = float(now[HIGH_BAND].mean() - now[LOW_BAND].mean())
        return self._open, float(np.clip(tilt / 3.0, -1.0, 1.0))

    def _geometry(self, idx: int, shape: tuple[int, int]):
        kp = self.kps[idx]
        cached = self._maps.get(idx)
        # A live camera's keypoints change every frame; a photo's or video's never do.
        if cached is None or not np.array_equal(cached[-1], kp):
            eyes = np.linalg.norm(kp[0] - kp[1])
            mouth_w = 0.9 * eyes  # mouth corners sit roughly under the pupils
            cx, cy = kp[3]
            r = int(1.6 * mouth_w)
            h, w = shape
            x0, x1 = max(0, int(cx) - r), min(w, int(cx) + r)
            y0, y1 = max(0, int(cy) - r), min(h, int(cy) + int(1.4 * r))
            ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            dx, dy = (xs - cx) / mouth_w, (ys - cy) / mouth_w
            self._maps[idx] = (x0, x1, y0, y1, xs, ys, dx, dy, mouth_w, float(cx), float(cy), kp.copy())
            while len(self._maps) > max(1, self.cfg.geometry_cache_frames):
                self._maps.popitem(last=False)
        self._maps.move_to_end(idx)
        return self._maps[idx][:-1]

    def _rig(self, idx: int, frame: np.ndarray, mesh: np.ndarray) -> MouthRig:
        cached = self._rigs.get(idx)
        if cached is None or not np.array_equal(cached[1], mesh):
            self._rigs[idx] = (build_rig(frame, mesh, self.cfg.warp), mesh.copy())
            while len(self._rigs) > max(1, self.cfg.geometry_cache_frames):
                self._rigs.popitem(last=False)
        self._rigs.move_to_end(idx)
        return self._rigs[idx][0]

    def render(
        self, frame: np.ndarray, idx: int, mel_window: np.ndarray, offset_frames: int = -1, fps: float = 25.0
    ) -> np.ndarray:
        openness, width = self.mouth_shape(mel_window, offset_frames, fps)
        if openness == 0.0:
            return frame
        mesh = self.meshes[idx] if self.meshes is not None else None
        if mesh is not None:
            return apply_rig(frame, self._rig(idx, frame, mesh), openness, width)
        x0, x1, y0, y1, xs, ys, dx, dy, mw, cx, cy = self._geometry(idx, frame.shape[:2])
        drop = openness * self.cfg.max_open_mouth_widths * mw
        # Falloff: 1 at the mouth, 0 well before the region's edge (no seam).
        fall = np.exp(-(dx**2 / 0.55 + (dy - 0.25) ** 2 / 0.7))
        below = 1.0 / (1.0 + np.exp(-dy * 8.0))  # 0 above the lip line, 1 below
        # Sampling map: a pixel shows what was `shift` away (positive dy shift moves content down).
        shift_y = fall * (drop * below - 0.25 * drop * (1 - below))
        shift_x = fall * dx * width * 0.12 * mw
        map_x = (xs - shift_x).astype(np.float32)
        map_y = (ys - shift_y).astype(np.float32)
        out = frame.copy()
        region = cv2.remap(frame, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        # The open mouth's cavity: a soft dark ellipse between the parted lips.
        cav = np.exp(
            -(
                ((xs - cx) / (0.42 * mw * (1 + 0.3 * width))) ** 2
                + ((ys - cy - 0.35 * drop) / max(1.0, 0.45 * drop)) ** 2
            )
            * 2.0
        )
        cav = (cav * min(1.0, 1.3 * openness))[..., None].astype(np.float32)
        dark = np.array([28, 22, 45], np.float32)
        out[y0:y1, x0:x1] = (region.astype(np.float32) * (1 - cav) + dark * cav).round().astype(np.uint8)
        return out
