"""An avatar that is a live camera: each output frame takes the newest camera frame, tracks the
face in it, and computes its face-encoder features on the spot (nothing can be cached)."""

from __future__ import annotations

import numpy as np

from models.face_boxes import pad_and_clip
from models.face_detector import FaceDetector
from models.face_input import crop_face, model_faces
from realtime.avatar_mesh import MeshFollower
from realtime.tracking import FaceTracker


class CameraAvatar:
    def __init__(self, capture, pads=(0, 10, 0, 0), fps: float = 25.0, face_model: str | None = None):
        self.capture, self.pads = capture, pads
        self._detector = FaceDetector(face_model)
        self.tracker = FaceTracker(self._detector.detect, fps=fps)
        self.frames = [capture.first]
        self.boxes = [(0, 1, 0, 1)]
        self._kps = [np.zeros((6, 2))]
        self._meshes: list[np.ndarray | None] = [None]
        self._follower: MeshFollower | None = None
        self.has_face = False
        self.no_face_frames = 0
        self._encoder = None
        self.features = None

    @property
    def size(self) -> tuple[int, int]:
        h, w = self.frames[0].shape[:2]
        return w, h

    def index(self, pts: int) -> int:
        return 0

    def keypoints(self) -> list[np.ndarray]:
        return self._kps

    def meshes(self) -> list[np.ndarray | None]:
        """This frame's face mesh: the model runs from the first call on, on the tracker's keyframes."""
        if self._follower is None:
            self._follower = MeshFollower()
        return self._meshes

    def paste_points(self) -> list[np.ndarray]:
        return [self._kps[0] if self._meshes[0] is None else self._meshes[0]]

    def attach_features(self, encoder, encoder_id: str = "") -> None:
        self._encoder = encoder

    def features_at(self, i: int) -> list[np.ndarray]:
        return self.features

    def advance(self, pts: int) -> None:
        """Take the newest camera frame and prepare everything the renderers read for it; raises
        CameraLost once the camera has stopped delivering."""
        if hasattr(self.capture, "raise_if_ended"):
            self.capture.raise_if_ended()
        frame = self.capture.latest()
        self.frames[0] = frame
        track = self.tracker.update(frame)
        self.has_face = track.box is not None
        if not self.has_face:
            self.no_face_frames += 1
            return
        h, w = frame.shape[:2]
        x1, y1, x2, y2 = pad_and_clip([int(round(v)) for v in track.box], self.pads, h, w)
        if x2 - x1 < 8 or y2 - y1 < 8:
            self.has_face = False
            self.no_face_frames += 1
            return
        self.boxes[0] = (y1, y2, x1, x2)
        self._kps[0] = track.keypoints
        if self._follower is not None:
            self._meshes[0] = self._follower.update(frame, track.keypoints, track.detected)
        if self._encoder is not None:
            crop = crop_face(frame, self.boxes[0], self._encoder.face_size)
            self.features = self._encoder.encode(model_faces(crop[None]))

    def close(self) -> None:
        self.capture.close()
        self._detector.close()
