"""A live camera as the avatar; a video file stands in for the camera device (none here)."""

import subprocess
import sys

import cv2
import numpy as np

import media
from conftest import ROOT
from realtime.clock import MonotonicClock
from realtime.config import EngineConfig


def test_camera_avatar_tracks_and_lip_syncs_each_frame(tmp_path, generator_ckpt, photo, speech_wav):
    from realtime.live import build_engine
    from realtime.sources.file import FileSource

    img = cv2.imread(str(photo))
    moving = [np.roll(img, k, axis=1) for k in range(0, 50, 2)]
    cam = media.video_only(tmp_path / "cam.mp4", moving)
    sink = media.CollectSink()
    engine = build_engine(
        f"camera:{cam}", [sink], str(generator_ckpt), cfg=EngineConfig(), clock=MonotonicClock(), engine="wav2lip"
    )
    summary = engine.run(FileSource(str(speech_wav)), 2.0)
    assert summary["no_face"] == 0 and summary["frames"] >= 45  # (speed: see the benchmarks)
    assert engine.avatar.tracker.detector_calls < summary["frames"] / 5  # tracked, not detected per frame
    generated = [f for f in sink.frames if f.meta["kind"] == "generated"]
    assert len(generated) > 30
    # The camera moves, and the face box moved with it.
    xs = {f.bgr[:, :40].tobytes() for f in generated[:20]}
    assert len(xs) > 1


def test_camera_without_a_face_passes_frames_through(tmp_path, generator_ckpt, speech_wav):
    from realtime.live import build_engine
    from realtime.sources.file import FileSource

    blank = [np.full((240, 320, 3), 90, np.uint8)] * 10
    cam = media.video_only(tmp_path / "blank.mp4", blank)
    sink = media.CollectSink()
    engine = build_engine(
        f"camera:{cam}", [sink], None, cfg=EngineConfig(), clock=MonotonicClock(), engine="procedural"
    )
    summary = engine.run(FileSource(str(speech_wav)), 1.0)
    assert summary["no_face"] == summary["frames"] >= 20
    camera_frame = engine.avatar.frames[0]
    assert all(
        np.array_equal(f.bgr, camera_frame) or np.abs(f.bgr.astype(int) - 90).max() <= 6 for f in sink.frames
    )  # the camera frames themselves (90 give or take codec noise)


def test_missing_camera_is_one_line(tmp_path, generator_ckpt, speech_wav):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lipsync.cli",
            "live",
            "--avatar",
            "camera:7",
            "--audio",
            str(speech_wav),
            "--to",
            "null",
            "--engine",
            "procedural",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "VIDEOIO" not in ln and "WARN" not in ln]
    assert proc.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error: --avatar camera:7"), proc.stderr


def test_camera_ending_stops_the_session_in_one_line_with_the_recording_finalised(tmp_path, photo, speech_wav):
    """A camera that stops delivering (here its stand-in video, not looped, ends after 4 s) stops
    the session at once with one line; it does not freeze on the last picture for the whole run."""
    import av
    import pytest

    from models.errors import EngineFailure
    from realtime.camera_avatar import CameraAvatar
    from realtime.engine import Engine
    from realtime.procedural import ProceduralRenderer
    from realtime.sinks.recorder import FileSink
    from realtime.sources.camera import CameraCapture
    from realtime.sources.file import FileSource

    img = cv2.imread(str(photo))
    # The camera runs from the moment it is opened, before the session starts: 4 s leaves room.
    cam = media.video_only(tmp_path / "cam.mp4", [np.roll(img, k % 40, axis=1) for k in range(0, 200, 2)])
    avatar = CameraAvatar(CameraCapture(str(cam), loop=False), fps=25)
    out = tmp_path / "rec.mkv"
    renderer = ProceduralRenderer(avatar.keypoints(), meshes=avatar.meshes())  # as `lipsync live` builds it
    engine = Engine(avatar, renderer, [FileSink(str(out), 25)], EngineConfig(), MonotonicClock())
    with pytest.raises(EngineFailure) as ended:
        engine.run(FileSource(str(speech_wav), loop=True), duration_s=30)
    msg = str(ended.value)
    assert msg.startswith(f"camera:{cam}: the video ended after 100 frames; the session stops") and "\n" not in msg
    assert engine.stats.frames < 100 + 2 * 25  # stopped within moments of the end, not after 30 s
    delivered = engine.stats.summary()["sinks"][f"file:{out}"]["delivered"]
    with av.open(str(out)) as c:  # the recording up to there is finalised
        assert sum(1 for _ in c.decode(video=0)) == delivered > 0
