"""Reading the `--face` input: a still image, or every frame of a video, via OpenCV / PyAV."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np

from models.errors import LipsyncError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | Path) -> np.ndarray:
    what = f"face {path}"
    if not Path(path).is_file():
        raise LipsyncError(what, "an image or video file", "no such file", "check the path")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise LipsyncError(
            what, "a readable image (jpg, png, bmp, webp)", "data OpenCV cannot decode", "re-export the image"
        )
    return img


def read_video(
    path: str | Path,
    max_frames: int | None = None,
    *,
    resize_factor: int = 1,
    rotate: bool = False,
    crop=(0, -1, 0, -1),
) -> tuple[list[np.ndarray], float]:
    """BGR frames (with the reference tool's resize/rotate/crop applied, in that order) and fps."""
    what = f"face {path}"
    if not Path(path).is_file():
        raise LipsyncError(what, "an image or video file", "no such file", "check the path")
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise LipsyncError(
                    what,
                    "an image or a video with a video stream",
                    "no video stream",
                    "pass a photo or a video of the face",
                )
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 25)
            for frame in container.decode(stream):
                img = frame.to_ndarray(format="bgr24")
                if resize_factor > 1:
                    img = cv2.resize(img, (img.shape[1] // resize_factor, img.shape[0] // resize_factor))
                if rotate:
                    img = cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
                y1, y2, x1, x2 = crop
                x2 = img.shape[1] if x2 == -1 else x2
                y2 = img.shape[0] if y2 == -1 else y2
                frames.append(np.ascontiguousarray(img[y1:y2, x1:x2]))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except LipsyncError:
        raise
    except (av.error.FFmpegError, ValueError) as e:
        raise LipsyncError(
            what, "a readable video", f"data FFmpeg cannot decode ({type(e).__name__}: {e})", "re-export the video"
        ) from None
    if not frames or frames[0].size == 0:
        raise LipsyncError(what, "at least one non-empty frame", "none (check --crop)", "pass a valid video")
    return frames, fps
