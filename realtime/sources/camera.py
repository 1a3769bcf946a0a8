"""A live camera as the avatar: the newest frame is always the one used.

A capture thread reads frames (OpenCV VideoCapture: V4L2, AVFoundation, DirectShow/MSMF) into a
KEEP_LATEST queue, so a slow consumer never sees stale video. A video file path works too
(paced at its own frame rate), which is how it is tested on machines without a camera.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from models.errors import LipsyncError
from realtime.queues import BoundedQueue, Policy


class CameraCapture:
    def __init__(self, source: int | str, width: int | None = None, height: int | None = None):
        import cv2

        from models.quiet import native_stderr_silenced

        self.source = source
        with native_stderr_silenced():  # OpenCV lists every backend it tried on fd 2
            self._cap = cv2.VideoCapture(source)
        if width:
            self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        with native_stderr_silenced():
            ok, first = self._cap.read() if self._cap.isOpened() else (False, None)
        if not ok:
            self._cap.release()
            raise LipsyncError(f"--avatar camera:{source}", "a camera that delivers frames",
                               "none at that index" if isinstance(source, int) else "an unreadable video",
                               "check the index (0 is the first camera), permissions, and that no other "
                               "program holds the camera")
        self.first = first
        self._is_file = isinstance(source, str)
        fps = self._cap.get(cv2.CAP_PROP_FPS) or 25.0
        self._period_s = 1.0 / fps if self._is_file else 0.0
        self._latest = BoundedQueue(1, Policy.KEEP_LATEST, "camera")
        self._latest.put(first)
        self._frame = first
        self._stop = threading.Event()
        self.frames_read = 1
        self._thread = threading.Thread(target=self._run, name="camera", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            ok, frame = self._cap.read()
            if not ok:
                if self._is_file:  # a file stands in for a camera: loop it
                    import cv2

                    self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    continue
                break
            self.frames_read += 1
            self._latest.put(frame)
            if self._period_s:
                next_t += self._period_s
                self._stop.wait(max(0.0, next_t - time.monotonic()))

    def latest(self) -> np.ndarray:
        """The newest frame (the previous one again if none arrived since)."""
        frame = self._latest.get(timeout_s=0)
        if frame is not None:
            self._frame = frame
        return self._frame

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._cap.release()
