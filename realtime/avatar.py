"""The face being animated: a still photo or a looping video, prepared once.

At load: frames, one face box per frame (detected, padded and smoothed as the reference does),
the 96x96 crops, and the face encoder's features for every frame. Features are the expensive
part, so they are cached on disk keyed by the avatar file's hash, the framing settings and the
encoder graph; a restart with the same avatar starts at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models import face_media
from models.errors import LipsyncError
from models.hashing import sha256_file
from realtime.face_input import crop_face, model_faces


@dataclass(frozen=True)
class AvatarConfig:
    path: str
    loop: str = "forward"  # forward | pingpong (video avatars)
    fps: float = 25.0  # output rate; a video avatar is stepped one frame per output frame
    pads: tuple[int, int, int, int] = (0, 10, 0, 0)
    box: tuple[int, int, int, int] = (-1, -1, -1, -1)
    nosmooth: bool = False
    face_model: str | None = None
    max_frames: int = 1500  # a minute at 25 fps; longer idle loops rarely help and cost memory
    tracking: bool = True  # video avatars: track between keyframe detections (see realtime.tracking)


class Avatar:
    def __init__(self, cfg: AvatarConfig, frames: list[np.ndarray], boxes, crops: np.ndarray, keypoints=None):
        self.cfg, self.frames, self.boxes, self.crops = cfg, frames, boxes, crops
        self._keypoints = keypoints
        self.features: list[np.ndarray] | None = None
        order = list(range(len(frames)))
        if cfg.loop == "pingpong" and len(frames) > 2:
            order += order[-2:0:-1]
        self._order = order

    @property
    def size(self) -> tuple[int, int]:
        h, w = self.frames[0].shape[:2]
        return w, h

    def index(self, pts: int) -> int:
        """Which avatar frame shows at output frame `pts`."""
        return self._order[pts % len(self._order)]

    def keypoints(self) -> list[np.ndarray]:
        """BlazeFace's 6 keypoints per frame (for the procedural engine); where no face is found
        (or --box skipped detection), estimated from the box with average face proportions."""
        if self._keypoints is not None:
            return self._keypoints
        from models.face_detector import FaceDetector

        out = []
        with FaceDetector(self.cfg.face_model) as det:
            for frame, (y1, y2, x1, x2) in zip(self.frames, self.boxes):
                found = det.detect(frame)
                if found is not None:
                    out.append(found.keypoints)
                    continue
                w, h = x2 - x1, y2 - y1
                fx = lambda u: x1 + u * w  # noqa: E731
                fy = lambda v: y1 + v * h  # noqa: E731
                out.append(np.array([[fx(.3), fy(.3)], [fx(.7), fy(.3)], [fx(.5), fy(.5)], [fx(.5), fy(.72)],
                                     [fx(0), fy(.4)], [fx(1), fy(.4)]]))
        self._keypoints = out
        return out

    def features_at(self, i: int) -> list[np.ndarray]:
        return [f[i:i + 1] for f in self.features]

    def attach_features(self, encoder, encoder_id: str) -> None:
        """Face-encoder features for every frame: from the disk cache, or computed once now."""
        key = hashlib.sha256(json.dumps({"avatar": sha256_file(self.cfg.path), "cfg": asdict(self.cfg),
                                         "boxes": [list(b) for b in self.boxes], "encoder": encoder_id},
                                        sort_keys=True).encode()).hexdigest()[:32]
        from models.face_model import cache_dir

        path = cache_dir() / "avatars" / f"{key}.npz"
        if path.is_file():
            with np.load(path) as z:
                self.features = [z[f"skip{k}"] for k in range(7)]
            return
        faces = model_faces(self.crops)
        parts = [encoder.encode(faces[i:i + 16]) for i in range(0, len(faces), 16)]
        self.features = [np.concatenate([np.asarray(p[k]) for p in parts]) for k in range(7)]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **{f"skip{k}": f for k, f in enumerate(self.features)})
        os.replace(tmp, path)


def load_avatar(cfg: AvatarConfig, progress: bool = False) -> Avatar:
    from realtime.render import RenderOptions, face_boxes

    if cfg.loop not in ("forward", "pingpong"):
        raise LipsyncError("--loop", "forward or pingpong", repr(cfg.loop), "pick one of those")
    if face_media.is_image(cfg.path):
        frames = [face_media.read_image(cfg.path)]
    else:
        frames, _ = face_media.read_video(cfg.path, cfg.max_frames)
    keypoints = None
    if cfg.tracking and len(frames) > 1 and cfg.box[0] == -1:
        boxes, keypoints = tracked_boxes(frames, cfg)
    else:
        opts = RenderOptions(pads=cfg.pads, box=cfg.box, nosmooth=cfg.nosmooth, face_model=cfg.face_model,
                             progress=progress)
        boxes = face_boxes(frames, cfg.path, opts)
    crops = np.stack([crop_face(f, b) for f, b in zip(frames, boxes)])
    return Avatar(cfg, frames, boxes, crops, keypoints)


def tracked_boxes(frames: list[np.ndarray], cfg: AvatarConfig):
    """Boxes (y1, y2, x1, x2, padded like the reference) and keypoints for a moving avatar."""
    from models.face_boxes import pad_and_clip
    from models.face_detector import FaceDetector
    from realtime.tracking import FaceTracker

    h, w = frames[0].shape[:2]
    boxes, kps = [], []
    with FaceDetector(cfg.face_model) as det:
        tracker = FaceTracker(det.detect, fps=cfg.fps)
        for i, frame in enumerate(frames):
            t = tracker.update(frame)
            if t.box is None:
                raise LipsyncError(f"avatar {cfg.path}", "a face in every frame", f"none in frame {i}",
                                   "use a video where the face stays in view")
            x1, y1, x2, y2 = pad_and_clip([int(round(v)) for v in t.box], cfg.pads, h, w)
            boxes.append((y1, y2, x1, x2))
            kps.append(t.keypoints)
    return boxes, kps
