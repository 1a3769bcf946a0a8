"""A live camera as the avatar: the newest frame is always the one used.

A capture thread reads frames (OpenCV VideoCapture: V4L2, AVFoundation, DirectShow/MSMF) into a
KEEP_LATEST queue, so a slow consumer never sees stale video. A video file path works too
(paced at its own frame rate, looped unless `loop=False`), which is how it is tested on
machines without a camera.

A camera that stops delivering (unplugged, taken by another program; reads failing for
`lost_after_s`), or a stand-in file that ends, sets `ended`: the avatar then raises CameraLost,
which stops the session with one line, instead of showing the last picture frozen forever.
"""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np

from models.errors import EngineFailure, LipsyncError
from models.quiet import native_stderr_silenced
from realtime.queues import BoundedQueue, Policy


class CameraLost(EngineFailure):
    """The camera stopped delivering frames during a session."""


class CameraCapture:
    def __init__(
        self,
        source: int | str,
        width: int | None = None,
        height: int | None = None,
        loop: bool = True,
        lost_after_s: float = 2.0,
    ):
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
            raise LipsyncError(
                f"--avatar camera:{source}",
                "a camera that delivers frames",
                "none at that index" if isinstance(source, int) else "an unreadable video",
                "check the index (0 is the first camera), permissions, and that no other program holds the camera",
            )
        self.first = first
        self._is_file = isinstance(source, str)
        fps = self._cap.get(cv2.CAP_PROP_FPS) or 25.0
        self._period_s = 1.0 / fps if self._is_file else 0.0
        self._latest = BoundedQueue(1, Policy.KEEP_LATEST, "camera")
        self._latest.put(first)
        self._frame = first
        self._stop = threading.Event()
        self._loop, self.lost_after_s = loop, lost_after_s
        self.ended = threading.Event()
        self.ended_reason = ""
        self.frames_read = 1
        self._thread = threading.Thread(target=self._run, name="camera", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_t = time.monotonic()
        failing_since = None
        while not self._stop.is_set():
            ok, frame = self._cap.read()
            if not ok:
                if self._is_file and self._loop:  # a file stands in for a camera: loop it
                    self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    continue
                now = time.monotonic()
                failing_since = failing_since or now
                if self._is_file:
                    self._end(f"the video ended after {self.frames_read} frames")
                    return
                if now - failing_since >= self.lost_after_s:
                    self._end(
                        f"no frames for {self.lost_after_s:g} s after {self.frames_read} "
                        "(unplugged, or taken by another program)"
                    )
                    return
                self._stop.wait(0.02)  # a camera may fail a read or two and recover
                continue
            failing_since = None
            self.frames_read += 1
            self._latest.put(frame)
            if self._period_s:
                next_t += self._period_s
                self._stop.wait(max(0.0, next_t - time.monotonic()))

    def _end(self, reason: str) -> None:
        self.ended_reason = reason
        self.ended.set()

    def raise_if_ended(self) -> None:
        if self.ended.is_set():
            raise CameraLost(
                f"camera:{self.source}: {self.ended_reason}; the session stops (restart it once the camera is back)"
            )

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
