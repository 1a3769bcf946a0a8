"""The weight-free lip engine: the mouth follows the speech envelope and rests in silence."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import media
from conftest import ROOT
from mediaio.audio import decode_audio
from realtime.clock import FreeRunClock
from realtime.config import EngineConfig


@pytest.fixture(scope="module")
def run_with_pause(photo, speech_wav):
    from realtime.avatar import AvatarConfig, load_avatar
    from realtime.engine import Engine
    from realtime.procedural import ProceduralRenderer

    speech = decode_audio(speech_wav).mono_16k()
    pause = np.zeros(int(1.6 * 16000), np.float32)
    wav = np.concatenate([speech[:32000], pause, speech[32000:64000]])
    avatar = load_avatar(AvatarConfig(str(photo)))
    kps = avatar.keypoints()
    sink = media.CollectSink()
    engine = Engine(avatar, ProceduralRenderer(kps, meshes=avatar.meshes()), [sink], EngineConfig(), FreeRunClock())
    engine.start()
    for i in range(0, len(wav), 320):
        engine.push_audio(wav[i : i + 320], 16000)
    engine.stop()
    return wav, avatar, kps[0], sink.frames


def test_mouth_motion_follows_the_speech_envelope(run_with_pause):
    wav, avatar, kp, frames = run_with_pause
    cx, cy = kp[3].astype(int)
    r = int(0.9 * np.linalg.norm(kp[0] - kp[1]))
    idle = avatar.frames[0][cy - r : cy + 2 * r, cx - r : cx + r].astype(np.float32)
    motion = np.array(
        [np.abs(f.bgr[cy - r : cy + 2 * r, cx - r : cx + r].astype(np.float32) - idle).mean() for f in frames]
    )
    # Loudness around each frame's own time (20 ms before to 40 ms after), in dB.
    env = []
    for i in range(len(frames)):
        a, b = max(0, i * 640 - 320), min(len(wav), i * 640 + 640)
        env.append(10 * np.log10(np.mean(wav[a:b].astype(np.float64) ** 2) + 1e-8) if b > a else -80)
    env = np.maximum(np.array(env), -60)
    n = min(len(env), len(motion))
    corr = {lag: np.corrcoef(env[: n - lag], motion[lag:n])[0, 1] for lag in range(0, 3)}
    assert corr[0] >= 0.6, corr  # at the right lag: the engine's own alignment, no shift
    assert max(corr.values()) == pytest.approx(corr[0], abs=0.1)
    # In the pause (away from the 120 ms crossfades and the window's 160 ms look-ahead) it rests.
    pause_frames = range(int(2.0 * 25) + 6, int(3.6 * 25) - 6)
    assert motion[list(pause_frames)].max() < 0.05
    assert motion.max() > 3.0  # and it really moves while speaking


def test_idle_frames_are_the_photo_untouched(run_with_pause):
    _, avatar, _, frames = run_with_pause
    idle = [f for f in frames if f.meta["kind"] == "idle"]
    assert idle and all(np.array_equal(f.bgr, avatar.frames[0]) for f in idle)


def test_the_default_checkpoint_is_looked_for_in_the_working_folder_then_the_cache(tmp_path, monkeypatch):
    """Never beside the package (site-packages once installed): ./checkpoints, then the cache's."""
    from models.errors import LipsyncError
    from realtime import live

    work, cache = tmp_path / "work", tmp_path / "cache"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(cache))
    with pytest.raises(LipsyncError) as e:
        live.default_checkpoint()
    msg = str(e.value)
    assert "\n" not in msg and str(work / "checkpoints") in msg and str(cache / "checkpoints") in msg
    assert "--checkpoint" in msg
    (cache / "checkpoints").mkdir(parents=True)
    (cache / "checkpoints" / "wav2lip.pth").write_bytes(b"x")
    assert live.default_checkpoint() == str(cache / "checkpoints" / "wav2lip.pth")
    (work / "checkpoints").mkdir()
    (work / "checkpoints" / "wav2lip_gan.pth").write_bytes(b"x")
    assert live.default_checkpoint() == str(work / "checkpoints" / "wav2lip_gan.pth")


def test_auto_engine_without_checkpoint_says_procedural(tmp_path, photo, speech_wav, monkeypatch):
    from realtime import live

    monkeypatch.chdir(tmp_path)  # no checkpoints/ there, nor in the session's empty cache folder
    assert live.choose_engine("auto", None) == ("procedural", None)
    assert live.choose_engine("auto", "x.pth") == ("wav2lip", "x.pth")
    stats = tmp_path / "stats.json"
    # The command line as a user runs it, with neither --engine nor --checkpoint: auto decides.
    # Its working folder is tmp_path: no checkpoints/ there (a developer's own ./checkpoints
    # might hold one), and the session's cache folder holds none either.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lipsync.cli",
            "live",
            "--avatar",
            str(photo),
            "--audio",
            str(speech_wav),
            "--to",
            "null",
            "--stats-json",
            str(stats),
            "--duration",
            "2",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    said = [ln for ln in lines if "engine: " in ln]
    assert len(said) == 1 and "engine: procedural (no Wav2Lip checkpoint given or in " in said[0], proc.stderr
    assert str(tmp_path / "checkpoints") in said[0], proc.stderr
    started = [ln for ln in lines if ln.startswith("live: ")]
    assert len(started) == 1 and started[0].endswith(" with procedural (Ctrl-C stops)"), proc.stderr
    s = json.loads(stats.read_text())
    assert s["dropped"] == 0 and s["frames"] >= 45 and s["generated"] > 20
