"""`lipsync live` as a user runs it: outputs, Ctrl-C, video avatars, and bad input."""

import json
import os
import signal
import subprocess
import sys

import av
import numpy as np
import pytest

import media
from conftest import ROOT
from servers import free_port, udp_bound, wait_for

READER = ROOT / "tests" / "rtmp_reader.py"


def live(*args, env=None, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "lipsync.cli", "live", *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kw,
    )


@pytest.mark.slow
def test_file_output_with_stats_json(tmp_path, generator_ckpt, photo, speech_wav):
    out, stats = tmp_path / "live.mkv", tmp_path / "stats.json"
    proc = live(
        "--avatar",
        photo,
        "--audio",
        speech_wav,
        "--to",
        out,
        "--to",
        "null",
        "--checkpoint",
        generator_ckpt,
        "--stats-json",
        stats,
        "--duration",
        2,
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    s = json.loads(stats.read_text())
    assert set(s) >= {
        "fps_sustained",
        "frames",
        "dropped",
        "processing_latency_ms",
        "audio_to_frame_ms",
        "cpu_percent",
        "rss_mb",
    }
    assert set(s["processing_latency_ms"]) == {"p50", "p95", "p99"}
    with av.open(str(out)) as c:
        kinds = sorted(st.type for st in c.streams)
        n = sum(1 for _ in c.decode(video=0))
    assert kinds == ["audio", "video"] and n == s["frames"]


def test_ctrl_c_stops_cleanly_and_finalises_the_file(tmp_path, generator_ckpt, photo, speech_wav):
    out = tmp_path / "interrupted.mp4"
    proc = live("--avatar", photo, "--audio", speech_wav, "--loop", "--to", out, "--checkpoint", generator_ckpt)
    # Wait until frames are flowing (the status line reports them), then interrupt like a user.
    buf = ""
    while "fps" not in buf:
        ch = proc.stderr.read(1)
        assert ch, "live exited early"
        buf += ch
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) > 10
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.slow
def test_video_avatar_pingpong_to_udp_mpegts(tmp_path, generator_ckpt, photo, speech_wav):
    import cv2

    img = cv2.imread(str(photo))
    frames = [np.roll(img, k, axis=1) for k in range(0, 12, 2)]  # a small sideways sway
    avatar = media.video_only(tmp_path / "idle.mp4", frames)
    port = free_port()
    url = f"udp://127.0.0.1:{port}"
    # The viewer listens first, so it sees the stream from its first packet and keyframe (UDP has
    # no handshake: a late listener waits for the next keyframe, 2 s on). Its wait for data is
    # ended by the data, not by a guess at how long `live` takes to start (a first use runs the
    # precision ladder: tens of seconds on a busy machine); 120 s only bounds a broken run, and a
    # run that fails ends the viewer at once. `live` loops until the viewer has its 40 frames
    # (then it is stopped like a user stops it): a fixed --duration raced the viewer on a busy
    # machine, where a lost first keyframe left it fewer than 40 frames before the stream ended.
    viewer = subprocess.Popen(
        [sys.executable, str(READER), url + "?timeout=120000000", "40", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_for(lambda: udp_bound(port) or viewer.poll() is not None, 60, "the viewer listening")
        assert viewer.poll() is None, "the viewer exited before listening"
        log = tmp_path / "live.log"  # a file, not a pipe: nobody reads it until the end
        with open(log, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "lipsync.cli", "live", "--avatar", str(avatar), "--avatar-loop", "pingpong"]
                + ["--audio", str(speech_wav), "--loop", "--to", url, "--checkpoint", str(generator_ckpt)],
                cwd=ROOT,
                stderr=err,
            )
        try:
            # The viewer ends at 40 frames (or on an error); a `live` that fails ends the wait too.
            wait_for(lambda: viewer.poll() is not None or proc.poll() is not None, 300, "the viewer's 40 frames")
            assert proc.poll() is None, log.read_text()  # still streaming: it did not fail
            got = json.loads(viewer.communicate(timeout=60)[0])
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        if viewer.poll() is None:
            viewer.kill()
            viewer.wait()
    assert got["video_frames"] >= 40, got["error"]
    assert got["size"] == [img.shape[1], img.shape[0]]


def test_avatar_pingpong_order():
    from realtime.avatar import Avatar, AvatarConfig

    frames = [np.full((4, 4, 3), k, np.uint8) for k in range(4)]
    av_ = Avatar(AvatarConfig("x.mp4", loop="pingpong"), frames, [(0, 4, 0, 4)] * 4, np.zeros((4, 96, 96, 3)))
    assert [av_.index(i) for i in range(8)] == [0, 1, 2, 3, 2, 1, 0, 1]
    fwd = Avatar(AvatarConfig("x.mp4"), frames, [(0, 4, 0, 4)] * 4, np.zeros((4, 96, 96, 3)))
    assert [fwd.index(i) for i in range(6)] == [0, 1, 2, 3, 0, 1]


@pytest.mark.parametrize("case", ["no microphone", "vcam without loopback", "avatar without a face"])
def test_bad_input_is_one_line(tmp_path, generator_ckpt, photo, speech_wav, case):
    import cv2

    env = dict(os.environ)
    args = ["--avatar", photo, "--audio", speech_wav, "--checkpoint", generator_ckpt, "--duration", 1]
    if case == "no microphone":
        # No audio server reachable: PortAudio sees no input devices.
        env.update(HOME=str(tmp_path), XDG_RUNTIME_DIR=str(tmp_path / "none"), PULSE_SERVER="unix:/nonexistent")
        args = ["--avatar", photo, "--audio", "mic", "--to", "null", "--checkpoint", generator_ckpt]
    elif case == "vcam without loopback":
        args += ["--to", "vcam"]
    else:
        blank = tmp_path / "blank.png"
        cv2.imwrite(str(blank), np.full((240, 320, 3), 128, np.uint8))
        args = ["--avatar", blank, "--audio", speech_wav, "--to", "null", "--checkpoint", generator_ckpt]
    proc = live(*args, env=env)
    _, err = proc.communicate(timeout=120)
    if case == "vcam without loopback" and proc.returncode == 0:
        pytest.skip("this machine has a v4l2loopback device")
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("fetching")]
    assert proc.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "expected" in lines[0] and "found" in lines[0]
