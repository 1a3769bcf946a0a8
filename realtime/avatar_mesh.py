"""An avatar's face mesh: 468 points per frame, computed once and cached beside its features.

A prepared avatar (photo or video) runs the mesh once per frame at load and keeps the result in
the cache folder (`avatars/<key>.mesh.npy`, keyed by the avatar file's content, the mesh model,
and the keypoints the crops were cut around), so a second start reads it back. A frame where
the model sees no face has no mesh (NaN rows on disk, None here): the procedural engine and the
feathered paste then fall back to BlazeFace's six points for that frame.

A live camera cannot be prepared: `MeshFollower` runs the model only on the face tracker's
keyframes and moves that mesh between them with the similarity transform that carries the
keyframe's six tracked keypoints onto the current ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import cv2
import numpy as np

from models import cache_limit
from models.face_mesh import N_POINTS, FaceMesh, resolve_mesh_model
from models.face_model import cache_dir
from models.hashing import sha256_file

log = logging.getLogger(__name__)

MESH_CACHE_VERSION = 1


def mesh_cache_path(avatar_path: str, keypoints: list[np.ndarray], model: Path) -> Path:
    kp = hashlib.sha256(np.ascontiguousarray(np.stack(keypoints), np.float64).tobytes()).hexdigest()
    key = json.dumps(
        {"avatar": sha256_file(avatar_path), "model": sha256_file(model), "keypoints": kp, "v": MESH_CACHE_VERSION},
        sort_keys=True,
    )
    return cache_dir() / "avatars" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.mesh.npy"


def avatar_meshes(
    avatar_path: str, frames, keypoints: list[np.ndarray], model_path: str | None = None
) -> list[np.ndarray | None]:
    """(468, 3) float32 image-pixel points per frame of `frames`, or None where no face."""
    model = resolve_mesh_model(model_path)
    path = mesh_cache_path(avatar_path, keypoints, model)
    if path.is_file():
        try:
            stored = np.load(path)
            if stored.shape == (len(keypoints), N_POINTS, 3):
                cache_limit.touch(path)
                return [None if np.isnan(m).any() else m for m in stored]
        except (OSError, ValueError) as e:  # damaged: computed again
            log.warning("face mesh cache %s unreadable (%s); computing it again", path, e)
    mesh = FaceMesh(str(model))
    stored = np.full((len(keypoints), N_POINTS, 3), np.nan, np.float32)
    for i, (frame, kp) in enumerate(zip(frames, keypoints)):
        found = mesh.landmarks(frame, kp)
        if found is not None:
            stored[i] = found
    missing = int(np.isnan(stored[:, 0, 0]).sum())
    if missing:
        log.info("face mesh: no face in %d of %d avatar frames (BlazeFace's points used there)", missing, len(stored))
    cache_limit.save_array(path, stored)
    return [None if np.isnan(m).any() else m for m in stored]


class MeshFollower:
    """A live camera's mesh: the model on keyframes, carried along by the tracked keypoints between."""

    def __init__(self, model_path: str | None = None):
        self.mesh = FaceMesh(model_path)
        self._key_mesh: np.ndarray | None = None
        self._key_kp: np.ndarray | None = None

    def update(self, frame: np.ndarray, keypoints: np.ndarray, keyframe: bool) -> np.ndarray | None:
        if keyframe or self._key_mesh is None:
            self._key_mesh = self.mesh.landmarks(frame, keypoints)
            self._key_kp = keypoints.copy()
            return self._key_mesh
        m, _ = cv2.estimateAffinePartial2D(self._key_kp.astype(np.float32), keypoints.astype(np.float32))
        if m is None:
            return self._key_mesh
        moved = self._key_mesh.copy()
        moved[:, :2] = self._key_mesh[:, :2] @ m[:, :2].T + m[:, 2]
        moved[:, 2] *= float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
        return moved
