"""The face being animated: a still photo or a looping video, prepared once.

At load, in one pass over the video: one face box per frame (tracked, or detected, padded and
smoothed as the reference does) and the face crops at the generator's size (96x96 for the
original, 256x256 and up for the HD layouts); then the face encoder's features for every
frame. Features are the expensive part, so they are cached on disk keyed by the avatar file's
hash, the framing settings and the encoder graph; a restart with the same avatar starts at once.

Memory does not grow with the video's length beyond boxes and crops (27 KB a frame at 96, 192 KB
at 256): a video's
frames stay compressed and are decoded when shown (realtime.avatar_frames), and features are
read from the cache a frame at a time (realtime.avatar_features); each keeps a bounded cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import asdict, dataclass

import numpy as np

from mediaio import face_media
from models import cache_limit
from models.errors import LipsyncError
from models.face_boxes import pad_and_clip
from models.face_detector import FaceDetector
from models.face_input import crop_face
from models.face_model import cache_dir
from models.hashing import sha256_file
from realtime.avatar_features import FORMAT_VERSION, FeatureStore
from realtime.avatar_frames import VideoFrames
from realtime.avatar_mesh import avatar_meshes
from realtime.framing import RenderOptions, face_boxes
from realtime.tracking import FaceTracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AvatarConfig:
    path: str
    loop: str = "forward"  # forward | pingpong (video avatars)
    fps: float = 25.0  # output rate; a video avatar is stepped one frame per output frame
    pads: tuple[int, int, int, int] = (0, 10, 0, 0)
    box: tuple[int, int, int, int] = (-1, -1, -1, -1)
    nosmooth: bool = False
    face_model: str | None = None
    max_frames: int = 1500  # a minute at 25 fps; longer idle loops rarely help and cost load time and disk
    tracking: bool = True  # video avatars: track between keyframe detections (see realtime.tracking)
    frame_cache_mb: float = 32.0  # decoded video frames kept (at least 16); others are decoded again when shown
    feature_cache_frames: int = 16  # frames whose fp32 features stay in memory; others are read from disk
    face_size: int = 96  # the generator's face size, pixels (realtime.generator.model_face_size): crops are that size


# Settings that change only memory use, not any frame: left out of the feature cache's key.
_MEMORY_ONLY = ("frame_cache_mb", "feature_cache_frames")


class Avatar:
    def __init__(self, cfg: AvatarConfig, frames, boxes, crops: np.ndarray, keypoints=None):
        """`frames`: a list (a photo) or a VideoFrames (a video, decoded when shown)."""
        self.cfg, self.frames, self.boxes, self.crops = cfg, frames, boxes, crops
        self._keypoints = keypoints
        self._meshes: list[np.ndarray | None] | None = None
        self._paste_points: list[np.ndarray] | None = None
        self.features: FeatureStore | None = None
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

        out = []
        with FaceDetector(self.cfg.face_model) as det:
            for frame, (y1, y2, x1, x2) in zip(self.frames, self.boxes):
                found = det.detect(frame)
                if found is not None:
                    out.append(found.keypoints)
                    continue
                w, h = x2 - x1, y2 - y1
                # Called within this iteration only, so the loop variables they read are this box's.
                fx = lambda u: x1 + u * w  # noqa: E731, B023
                fy = lambda v: y1 + v * h  # noqa: E731, B023
                out.append(
                    np.array(
                        [
                            [fx(0.3), fy(0.3)],
                            [fx(0.7), fy(0.3)],
                            [fx(0.5), fy(0.5)],
                            [fx(0.5), fy(0.72)],
                            [fx(0), fy(0.4)],
                            [fx(1), fy(0.4)],
                        ]
                    )
                )
        self._keypoints = out
        return out

    def meshes(self) -> list[np.ndarray | None]:
        """The face mesh (468, 3) per frame, None where the model saw no face; computed once per
        avatar (cached on disk beside its features) around the keypoints above."""
        if self._meshes is None:
            self._meshes = avatar_meshes(self.cfg.path, self.frames, self.keypoints())
        return self._meshes

    def paste_points(self) -> list[np.ndarray]:
        """Per frame, what the feathered paste shapes its region from: the mesh where known,
        else BlazeFace's six keypoints (realtime.compositor.mouth_mask takes either)."""
        if self._paste_points is None:
            self._paste_points = [kp if m is None else m for kp, m in zip(self.keypoints(), self.meshes())]
        return self._paste_points

    def set_face_size(self, size: int) -> None:
        """Crop again at the generator's face size (an HD checkpoint's), from the frames and boxes
        found at load: the size is known only once the checkpoint is (the sinks open first)."""
        if size == self.cfg.face_size:
            return
        self.cfg = dataclasses.replace(self.cfg, face_size=size)
        self.crops = np.stack([crop_face(self.frames[i], b, size) for i, b in enumerate(self.boxes)])

    def features_at(self, i: int) -> list[np.ndarray]:
        """The (1, C, H, W) fp32 face-encoder features of avatar frame `i` (seven for the original)."""
        return self.features.get(i)

    def attach_features(self, encoder, encoder_id: str) -> None:
        """Face-encoder features for every frame: from the disk cache, or computed once now."""
        cfg = {k: v for k, v in asdict(self.cfg).items() if k not in _MEMORY_ONLY}
        key = hashlib.sha256(
            json.dumps(
                {
                    "avatar": sha256_file(self.cfg.path),
                    "cfg": cfg,
                    "store": FORMAT_VERSION,
                    "boxes": [list(b) for b in self.boxes],
                    "encoder": encoder_id,
                },
                sort_keys=True,
            ).encode()
        ).hexdigest()[:32]
        path = cache_dir() / "avatars" / key
        if self.features is not None:
            self.features.close()
        try:
            self.features = FeatureStore(path, self.cfg.feature_cache_frames)
            if self.features.frames == len(self.crops):
                cache_limit.touch(self.features.meta_path)
                return
            self.features.close()
        except (OSError, ValueError) as e:  # absent, or damaged: made again
            if path.with_suffix(".json").exists():
                log.warning("avatar feature cache %s unreadable (%s); computing it again", path, e)
        self.features = FeatureStore.build(path, self.crops, encoder, cache_frames=self.cfg.feature_cache_frames)
        cache_limit.added(self.features.meta_path)


def load_avatar(cfg: AvatarConfig, progress: bool = False) -> Avatar:
    if cfg.loop not in ("forward", "pingpong"):
        raise LipsyncError("--loop", "forward or pingpong", repr(cfg.loop), "pick one of those")
    if face_media.is_image(cfg.path):
        frames = [face_media.read_image(cfg.path)]
    else:
        frames = VideoFrames(cfg.path, cfg.max_frames, cache_mb=cfg.frame_cache_mb)
    keypoints = None
    if cfg.tracking and not isinstance(frames, list) and cfg.box[0] == -1:
        boxes, keypoints, crops = track_faces(frames.scan(), cfg)
        if len(boxes) > 1:
            return Avatar(cfg, frames, boxes, crops, keypoints)
        keypoints = None  # a one-frame video: framed like a photo
    elif not isinstance(frames, list):
        for _ in frames.scan():  # counts the frames and indexes them, decoding each once
            pass
    opts = RenderOptions(
        pads=cfg.pads, box=cfg.box, nosmooth=cfg.nosmooth, face_model=cfg.face_model, progress=progress
    )
    boxes = face_boxes(frames, cfg.path, opts)
    crops = np.stack([crop_face(f, b, cfg.face_size) for f, b in zip(frames, boxes)])
    return Avatar(cfg, frames, boxes, crops, keypoints)


def track_faces(frames, cfg: AvatarConfig):
    """Boxes (y1, y2, x1, x2, padded like the reference), keypoints and face crops for a moving
    avatar, in one pass over `frames` (an iterable: each frame is seen once, then let go)."""
    boxes, kps, crops = [], [], []
    with FaceDetector(cfg.face_model) as det:
        tracker = FaceTracker(det.detect, fps=cfg.fps)
        for i, frame in enumerate(frames):
            t = tracker.update(frame)
            if t.box is None:
                raise LipsyncError(
                    f"avatar {cfg.path}",
                    "a face in every frame",
                    f"none in frame {i}",
                    "use a video where the face stays in view",
                )
            h, w = frame.shape[:2]
            x1, y1, x2, y2 = pad_and_clip([int(round(v)) for v in t.box], cfg.pads, h, w)
            boxes.append((y1, y2, x1, x2))
            kps.append(t.keypoints)
            crops.append(crop_face(frame, boxes[-1], cfg.face_size))
    return boxes, kps, np.stack(crops)
