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
    engine = build_engine(f"camera:{cam}", [sink], str(generator_ckpt), cfg=EngineConfig(),
                          clock=MonotonicClock(), log=lambda m: None, engine="wav2lip")
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
    engine = build_engine(f"camera:{cam}", [sink], None, cfg=EngineConfig(), clock=MonotonicClock(),
                          log=lambda m: None, engine="procedural")
    summary = engine.run(FileSource(str(speech_wav)), 1.0)
    assert summary["no_face"] == summary["frames"] >= 20
    camera_frame = engine.avatar.frames[0]
    assert all(np.array_equal(f.bgr, camera_frame) or np.abs(f.bgr.astype(int) - 90).max() <= 6
               for f in sink.frames)  # the camera frames themselves (90 give or take codec noise)


def test_missing_camera_is_one_line(tmp_path, generator_ckpt, speech_wav):
    proc = subprocess.run([sys.executable, "-m", "realtime.cli", "live", "--avatar", "camera:7", "--audio",
                           str(speech_wav), "--to", "null", "--engine", "procedural"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "VIDEOIO" not in ln and "WARN" not in ln]
    assert proc.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error: --avatar camera:7"), proc.stderr
