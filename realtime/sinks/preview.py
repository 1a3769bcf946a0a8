"""A local preview window (OpenCV HighGUI); needs a display."""

from __future__ import annotations

import os

import cv2

from models.errors import LipsyncError
from realtime.frames import AudioChunk, VideoFrame


class PreviewSink:
    name = "preview"

    def __init__(self, title: str = "lipsync"):
        if os.name == "posix" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise LipsyncError(
                "--to preview",
                "a graphical display",
                "no DISPLAY or WAYLAND_DISPLAY",
                "run on a desktop session, or send to vcam / a file instead",
            )
        self.title = title

    def send_video(self, frame: VideoFrame) -> None:
        cv2.imshow(self.title, frame.bgr)
        cv2.waitKey(1)

    def send_audio(self, chunk: AudioChunk) -> None:
        pass

    def close(self) -> None:
        cv2.destroyWindow(self.title)
