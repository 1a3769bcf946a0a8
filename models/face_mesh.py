"""MediaPipe's 468-point face mesh (`face_landmark.tflite`), run offline with LiteRT.

The model ships inside the package beside the BlazeFace detector (Apache-2.0, models/data/
NOTICE.md) and is checked against a pinned SHA-256 before use; `$LIPSYNC_MESH_MODEL` or an
explicit path names another copy, trusted as it is (as for the detector, see models.face_model).

It takes a 192x192 RGB crop in [0, 1] of an upright face with a margin around it and returns
468 (x, y, z) points in crop pixels and a face-presence logit. The crop is cut the way
MediaPipe's own graph cuts it: centred on the face, turned so the eye line is level, 1.5 times
the face's size. The first crop comes from BlazeFace's six keypoints; a second one from the
points the first found, which frames the face far more tightly (the mesh is then as good as the
crop, not as the detector's box).

The runtime is LiteRT (`ai-edge-litert`): ~1.6 ms a face on one core here. The mesh runs once
per avatar frame at load (cached on disk with the avatar) and at a camera avatar's keyframes,
never per output frame of a prepared avatar.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from models.errors import LipsyncError
from models.face_model import check_packaged

MESH_MODEL_NAME = "face_landmark.tflite"
ENV_MESH_MODEL = "LIPSYNC_MESH_MODEL"
PACKAGED_MESH_MODEL = Path(__file__).resolve().parent / "data" / MESH_MODEL_NAME
# The file in the mediapipe==0.10.14 wheel (mediapipe/modules/face_landmark/), 1,242,398 bytes.
# (The 478-point `face_landmark_with_attention.tflite` needs MediaPipe's custom ops: plain
# LiteRT cannot load it.)
MESH_SHA256 = frozenset({"1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814"})
_FIX = (
    f"reinstall the lipsync-rt package (it ships {MESH_MODEL_NAME}), or set {ENV_MESH_MODEL} to a copy "
    f"of it (from the mediapipe==0.10.14 wheel, mediapipe/modules/face_landmark/)"
)

INPUT_PX = 192
CROP_SCALE = 1.5  # crop side over the face's size, as MediaPipe's graph frames it
MIN_PRESENCE = 0.5
N_POINTS = 468

# Landmark numbers in MediaPipe's canonical mesh.
FOREHEAD, CHIN, NOSE_TIP, SUBNASALE = 10, 152, 1, 2
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263  # the person's right eye is on the image's left
UPPER_INNER_LIP = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_INNER_LIP = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
UPPER_OUTER_LIP = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LOWER_OUTER_LIP = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
INNER_LIP_MID = (13, 14)
# The face's outline, clockwise from the top of the forehead.
FACE_OVAL = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)  # fmt: skip


def resolve_mesh_model(path: str | None = None) -> Path:
    """Path to a usable `face_landmark.tflite`; never touches the network."""
    named = path if path is not None else os.environ.get(ENV_MESH_MODEL) or None
    if named is not None:
        p = Path(named).expanduser()
        if not p.is_file():
            origin = "explicit path" if path is not None else f"${ENV_MESH_MODEL}"
            raise LipsyncError(
                f"face mesh model ({origin})",
                f"an existing {MESH_MODEL_NAME}",
                f"no file at {p}",
                "fix the path, or leave it unset to use the copy shipped with the package",
            )
        return p
    return check_packaged(PACKAGED_MESH_MODEL, MESH_SHA256, "face mesh model", _FIX)


def face_height(points: np.ndarray) -> float:
    """Forehead top to chin, in pixels: the unit the mouth's motion is measured in."""
    return float(np.linalg.norm(points[CHIN, :2] - points[FOREHEAD, :2]))


def inner_lip_gap(points: np.ndarray) -> float:
    """How open the mouth is: the inner lips' distance at the middle, in face heights."""
    return float(np.linalg.norm(points[INNER_LIP_MID[1], :2] - points[INNER_LIP_MID[0], :2])) / max(
        1.0, face_height(points)
    )


@dataclass(frozen=True)
class Crop:
    """A square region of the image, turned by `angle_rad`, that the model sees as 192x192."""

    centre: tuple[float, float]
    side_px: float
    angle_rad: float

    def to_crop(self) -> np.ndarray:
        """2x3 affine from image pixels to model-input pixels."""
        c, s = math.cos(self.angle_rad), math.sin(self.angle_rad)
        k = INPUT_PX / self.side_px
        cx, cy = self.centre
        # Rotate by -angle about the centre, scale, then put the centre in the middle.
        a = np.array([[c, s], [-s, c]]) * k
        t = np.array([INPUT_PX / 2, INPUT_PX / 2]) - a @ np.array([cx, cy])
        return np.hstack([a, t[:, None]])


def crop_from_keypoints(kp: np.ndarray) -> Crop:
    """From BlazeFace's six keypoints (eyes, nose, mouth, ears): the face's middle, the eye
    line's angle, the ear-to-ear width (or the eye-to-mouth height, whichever is larger)."""
    eyes = (kp[0] + kp[1]) / 2
    angle = math.atan2(kp[1][1] - kp[0][1], kp[1][0] - kp[0][0])
    size = max(float(np.linalg.norm(kp[4] - kp[5])), 2.2 * float(np.linalg.norm(kp[3] - eyes)))
    centre = (eyes + kp[3]) / 2
    return Crop((float(centre[0]), float(centre[1])), CROP_SCALE * size, angle)


def crop_from_points(points: np.ndarray) -> Crop:
    """From a found mesh: its extent in the face's own upright frame, 1.5 times."""
    eye = points[LEFT_EYE_OUTER, :2] - points[RIGHT_EYE_OUTER, :2]
    angle = math.atan2(eye[1], eye[0])
    c, s = math.cos(angle), math.sin(angle)
    upright = points[:, :2] @ np.array([[c, -s], [s, c]])  # rotate by -angle
    lo, hi = upright.min(axis=0), upright.max(axis=0)
    mid = (lo + hi) / 2
    centre = np.array([[c, -s], [s, c]]) @ mid  # back to the image
    return Crop((float(centre[0]), float(centre[1])), CROP_SCALE * float((hi - lo).max()), angle)


class FaceMesh:
    """One LiteRT interpreter; `landmarks(bgr, keypoints)` -> (468, 3) image pixels or None."""

    def __init__(self, model_path: str | None = None, threads: int = 1, refine_passes: int = 1):
        self.model_path = resolve_mesh_model(model_path)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise LipsyncError(
                "face mesh", "the ai-edge-litert package", f"an import error ({e})", "pip install ai-edge-litert"
            ) from None
        from models.quiet import native_stderr_silenced

        with native_stderr_silenced():  # LiteRT announces its XNNPACK delegate on stderr
            self._it = Interpreter(model_path=str(self.model_path), num_threads=threads)
            self._it.allocate_tensors()
        self._in = self._it.get_input_details()[0]["index"]
        outs = {tuple(o["shape"]): o["index"] for o in self._it.get_output_details()}
        self._pts_out, self._score_out = outs[(1, 1, 1, N_POINTS * 3)], outs[(1, 1, 1, 1)]
        self.refine_passes = refine_passes
        self.calls = 0

    def run(self, bgr: np.ndarray, crop: Crop) -> tuple[np.ndarray, float]:
        """The model on one crop: (468, 3) points in image pixels (z scaled like x), presence 0..1."""
        m = crop.to_crop()
        patch = cv2.warpAffine(bgr, m, (INPUT_PX, INPUT_PX), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        x = (patch[:, :, ::-1].astype(np.float32) * np.float32(1 / 255.0))[None]
        self._it.set_tensor(self._in, np.ascontiguousarray(x))
        self._it.invoke()
        self.calls += 1
        raw = self._it.get_tensor(self._pts_out).reshape(N_POINTS, 3).astype(np.float64)
        logit = float(self._it.get_tensor(self._score_out).ravel()[0])
        inv = cv2.invertAffineTransform(m)
        xy = raw[:, :2] @ inv[:, :2].T + inv[:, 2]
        z = raw[:, 2:] * (crop.side_px / INPUT_PX)
        return np.hstack([xy, z]), 1.0 / (1.0 + math.exp(-logit))

    def landmarks(
        self, bgr: np.ndarray, keypoints: np.ndarray | None = None, previous: np.ndarray | None = None
    ) -> np.ndarray | None:
        """The mesh of the face around BlazeFace's `keypoints` (or a `previous` mesh of it);
        None if the model says there is no face there."""
        crop = crop_from_points(previous) if previous is not None else crop_from_keypoints(keypoints)
        points, presence = self.run(bgr, crop)
        for _ in range(self.refine_passes):
            if presence < MIN_PRESENCE:
                break
            points, presence = self.run(bgr, crop_from_points(points))
        return points.astype(np.float32) if presence >= MIN_PRESENCE else None
