"""The neural renderer: the split generator's decoder on cached face features, pasted back into
the avatar frame. Services and remote actors subclass it to get their faces elsewhere
(realtime.service); the capture engine and the playout both reach it through the frame maker."""

from __future__ import annotations

import numpy as np

from realtime.avatar import Avatar
from realtime.compositor import FeatheredPaste, full_face, mouth_mask, paste_hard, to_uint8_faces
from realtime.protocols import FaceDecoder


class FrameDropped(Exception):
    """A renderer gave up on a frame that would be too late anyway (a shared generator dropped
    it past its deadline); the frame maker shows the previous frame and counts a drop."""


class Wav2LipRenderer:
    """The neural lips: the split generator's decoder on cached face features, pasted back."""

    def __init__(self, generator: FaceDecoder, avatar: Avatar, blend: str = "hard"):
        self.gen, self.avatar, self.blend = generator, avatar, blend
        self.name = getattr(generator, "name", "wav2lip")
        self._paste = FeatheredPaste()  # per avatar frame: what the paste needs, made once
        if blend == "feather":
            avatar.paste_points()  # computed (and kept by the avatar) now, not on the first frame

    def render(self, frame: np.ndarray, idx: int, mel_window: np.ndarray, offset_frames: int, fps: float) -> np.ndarray:
        face = self.face_u8(idx, mel_window)
        if face.shape[0] != face.shape[1]:  # a row-cropped decoder: the lower rows only
            face = full_face(face, self.avatar.crops[idx])
        box = self.avatar.boxes[idx]
        if self.blend == "feather":
            return self._paste(frame, idx, face, box, lambda: self.mask(frame, idx))
        return paste_hard(frame.copy(), face, box)

    def mask(self, frame: np.ndarray, idx: int) -> np.ndarray:
        """The feathered paste's weights over avatar frame `idx`'s box (made once per frame)."""
        return mouth_mask(frame.shape[:2], self.avatar.boxes[idx], self.avatar.paste_points()[idx])

    def face_u8(self, idx: int, mel_window: np.ndarray) -> np.ndarray:
        """The face for avatar frame `idx` as (rows, S, 3) uint8; a renderer whose faces come
        from another process overrides this to ship a quarter of the bytes."""
        return to_uint8_faces(self.face(idx, mel_window))[0]

    def face(self, idx: int, mel_window: np.ndarray) -> np.ndarray:
        """The decoder's output for avatar frame `idx`: (1, 3, rows, S) in [0, 1]. A shared
        generator service overrides this (realtime.service) and may raise FrameDropped."""
        return self.gen.decode(mel_window[None, None], self.avatar.features_at(idx))
