"""Virtual webcam through pyvirtualcam: v4l2loopback on Linux, OBS / UnityCapture elsewhere."""

from __future__ import annotations

import sys

from models.errors import LipsyncError
from realtime.frames import AudioChunk, VideoFrame

LOOPBACK_HELP = (
    "load the v4l2loopback kernel module: sudo modprobe v4l2loopback devices=1 "
    "exclusive_caps=1 card_label=lipsync (package v4l2loopback-dkms)"
)


class VcamSink:
    def __init__(self, fps: float, device: str | None = None, backend: str | None = None):
        self.name = f"vcam:{backend or 'default'}"
        self._fps, self._device, self._backend = fps, device, backend
        self._cam = None

    def _open(self, width: int, height: int):
        try:
            import pyvirtualcam  # pyvirtualcam: only for --to vcam; reported here if it is missing
        except ImportError:
            raise LipsyncError(
                "--to vcam", "the pyvirtualcam package", "it is not installed", "pip install pyvirtualcam"
            ) from None
        try:
            return pyvirtualcam.Camera(
                width=width,
                height=height,
                fps=self._fps,
                fmt=pyvirtualcam.PixelFormat.BGR,
                device=self._device,
                backend=self._backend,
            )
        except (RuntimeError, KeyError) as e:
            first = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            fix = (
                LOOPBACK_HELP
                if sys.platform.startswith("linux")
                else ("install OBS Studio (its virtual camera) or UnityCapture, and start it once")
            )
            raise LipsyncError("--to vcam", "a virtual camera device", f"none usable ({first})", fix) from None

    def prepare(self, width: int, height: int) -> None:
        """Open the device up front: a missing loopback device fails before any work starts."""
        if self._cam is None:
            self._cam = self._open(width, height)

    def send_video(self, frame: VideoFrame) -> None:
        if self._cam is None:
            h, w = frame.bgr.shape[:2]
            self._cam = self._open(w, h)
        self._cam.send(frame.bgr)

    def send_audio(self, chunk: AudioChunk) -> None:
        pass  # a webcam carries no sound; see the audio passthrough for the matching microphone

    def close(self) -> None:
        if self._cam is not None:
            self._cam.close()
