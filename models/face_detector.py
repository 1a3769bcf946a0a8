"""Face boxes from mediapipe's BlazeFace, framed the way Wav2Lip's training crops were.

Wav2Lip was trained on S3FD boxes: roughly mid-forehead to just above the chin bottom (the
reference's default `--pads 0 10 0 0` adds the chin), cheek to cheek. BlazeFace's own box is
framed differently, so the box is rebuilt from its keypoints (eyes, mouth, ears) using face
proportions; see `FRAMING`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models import cache_limit
from models.errors import LipsyncError
from models.face_model import cache_dir, resolve_face_model
from models.hashing import sha256_file
from models.quiet import native_stderr_silenced

# Multiples of the eye-to-mouth distance `d` (vertical) and of the ear-to-ear distance (horizontal).
# On an upright adult face the eyes sit ~0.38 and the mouth ~0.78 of the hairline-to-chin height,
# so hairline-to-chin is ~2.5 d; S3FD's box starts about a quarter of the way down the forehead
# and ends a little above the chin.
FRAMING = {"top_d": 0.62, "bottom_d": 0.5, "width_ears": 0.95}
FRAMING_VERSION = "kp-v1"
MIN_SCORE = 0.5


@dataclass(frozen=True)
class Detection:
    box: tuple[int, int, int, int]  # (x1, y1, x2, y2) in Wav2Lip framing, before --pads
    keypoints: np.ndarray  # (6, 2) pixels: right eye, left eye, nose tip, mouth, right ear, left ear
    score: float


def frame_box(kp: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    eyes = (kp[0] + kp[1]) / 2
    mouth = kp[3]
    d = max(1.0, float(np.hypot(*(mouth - eyes))))
    half_w = max(d, float(np.hypot(*(kp[4] - kp[5])))) * FRAMING["width_ears"] / 2
    cx = (eyes[0] + mouth[0]) / 2
    x1, x2 = cx - half_w, cx + half_w
    y1, y2 = eyes[1] - FRAMING["top_d"] * d, mouth[1] + FRAMING["bottom_d"] * d
    return (max(0, int(round(x1))), max(0, int(round(y1))), min(width, int(round(x2))), min(height, int(round(y2))))


class FaceDetector:
    """BlazeFace short-range through mediapipe Tasks, one image at a time."""

    def __init__(self, model_path: str | None = None, min_score: float = MIN_SCORE):
        self.model_path = resolve_face_model(model_path)
        try:  # mediapipe: heavy (its own TFLite runtime), loaded only when a face must be detected
            import mediapipe as mp
            from mediapipe.tasks.python import BaseOptions, vision
        except ImportError as e:
            raise LipsyncError(
                "face detection", "the mediapipe package", f"an import error ({e})", "pip install mediapipe"
            ) from None
        self._mp = mp
        opts = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_path=str(self.model_path)), min_detection_confidence=min_score
        )
        with native_stderr_silenced():
            self._det = vision.FaceDetector.create_from_options(opts)
        self._warm = False

    def detect(self, bgr: np.ndarray) -> Detection | None:
        h, w = bgr.shape[:2]
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=rgb)
        if self._warm:
            result = self._det.detect(image)
        else:
            with native_stderr_silenced():
                result = self._det.detect(image)
            self._warm = True
        if not result.detections:
            return None
        best = max(result.detections, key=lambda d: d.categories[0].score)
        kp = np.array([[k.x * w, k.y * h] for k in best.keypoints], dtype=np.float64)
        return Detection(frame_box(kp, h, w), kp, float(best.categories[0].score))

    def close(self):
        with native_stderr_silenced():
            self._det.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _cache_key(source: Path, settings: dict, model_path: Path) -> str:
    blob = json.dumps(
        {
            "file": sha256_file(source),
            "model": sha256_file(model_path),
            "framing": [FRAMING_VERSION, FRAMING],
            **settings,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def detect_all(
    frames: list[np.ndarray],
    source: str | Path | None = None,
    settings: dict | None = None,
    model_path: str | None = None,
    progress=None,
) -> np.ndarray:
    """Raw Wav2Lip-framed boxes (N, 4) for `frames`; rows of -1 where no face was found.

    When `source` (the input file) is given, results are cached on disk keyed by the file's
    content hash, the detector model, the framing and `settings` (whatever changed the frames:
    resize, crop, rotate), so a second run over the same input skips detection.
    """
    model = resolve_face_model(model_path)
    cache_file = None
    if source is not None:
        cache_file = cache_dir() / "detections" / f"{_cache_key(Path(source), settings or {}, model)}.npy"
        if cache_file.is_file():
            boxes = np.load(cache_file)
            if len(boxes) >= len(frames):
                cache_limit.touch(cache_file)
                return boxes[: len(frames)]
    boxes = np.full((len(frames), 4), -1, dtype=np.int64)
    with FaceDetector(str(model)) as det:
        for i, frame in enumerate(progress(frames) if progress else frames):
            found = det.detect(frame)
            if found is not None:
                boxes[i] = found.box
    if cache_file is not None:
        cache_limit.save_array(cache_file, boxes)
    return boxes
