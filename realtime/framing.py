"""Face boxes the way the reference tool makes them: detected in every frame (or given with
`box`), padded, clipped to the frame and smoothed over 5 frames.

Shared by the offline render (lipsync.offline) and the live avatar's photos and untracked videos
(realtime.avatar), so both frame a face identically.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from mediaio import face_media
from models.errors import LipsyncError
from models.face_boxes import pad_and_clip, smooth
from models.face_detector import detect_all


@dataclass(frozen=True)
class RenderOptions:
    """The reference tool's flags: the framing ones used here, the rest by lipsync.offline."""

    fps: float = 25.0  # only for still images; a video's own rate wins
    pads: tuple[int, int, int, int] = (0, 10, 0, 0)  # top, bottom, left, right
    static: bool = False
    batch_size: int = 128
    resize_factor: int = 1
    crop: tuple[int, int, int, int] = (0, -1, 0, -1)
    box: tuple[int, int, int, int] = (-1, -1, -1, -1)  # y1 y2 x1 x2; -1 = detect
    rotate: bool = False
    nosmooth: bool = False
    mel_offset_frames: int = 0  # -1 = the alignment Wav2Lip was trained with
    face_model: str | None = None
    detection_cache: bool = True
    progress: bool = True


def progress_bar(opts: RenderOptions, **kw):
    return tqdm(disable=not opts.progress, file=sys.stderr, dynamic_ncols=True, **kw)


def face_boxes(frames: list[np.ndarray], face_path: str, opts: RenderOptions) -> list[tuple[int, int, int, int]]:
    """One (y1, y2, x1, x2) box per frame, exactly as the reference tool makes them."""
    h, w = frames[0].shape[:2]
    if opts.box[0] != -1:
        y1, y2, x1, x2 = opts.box
        if not (0 <= y1 < y2 <= h and 0 <= x1 < x2 <= w):
            raise LipsyncError(
                "--box",
                f"y1 y2 x1 x2 inside the {w}x{h} frame with y1<y2 and x1<x2",
                f"{opts.box}",
                "give a box inside the frame",
            )
        return [(y1, y2, x1, x2)] * len(frames)

    targets = frames[:1] if opts.static else frames
    settings = {
        "image": face_media.is_image(face_path),
        "resize_factor": opts.resize_factor,
        "rotate": opts.rotate,
        "crop": list(opts.crop),
    }
    with progress_bar(opts, total=len(targets), desc="face boxes", unit="frame") as bar:

        def tick(items):
            for item in items:
                yield item
                bar.update(1)

        raw = detect_all(targets, face_path if opts.detection_cache else None, settings, opts.face_model, progress=tick)
    missing = np.flatnonzero(raw[:, 0] < 0)
    if len(missing):
        raise LipsyncError(
            f"face {face_path}",
            "a detectable face in every frame",
            f"no face in frame {missing[0]} ({len(missing)} of {len(raw)} frames)",
            "use a clearer, frontal face, or give the box with --box y1 y2 x1 x2",
        )
    boxes = np.array([pad_and_clip(b, opts.pads, h, w) for b in raw.tolist()])
    if not opts.nosmooth:
        boxes = smooth(boxes)
    return [(int(y1), int(y2), int(x1), int(x2)) for x1, y1, x2, y2 in boxes]
