"""RTMP for real: the engine publishes to nginx-rtmp on loopback, a separate process watches."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from realtime.clock import MonotonicClock
from realtime.config import EngineConfig
from servers import NginxRtmp

READER = Path(__file__).with_name("rtmp_reader.py")


@pytest.fixture
def nginx(tmp_path):
    try:
        server = NginxRtmp(tmp_path / "nginx").start()
    except RuntimeError as e:
        pytest.fail(str(e))
    yield server
    if server.proc is not None:
        server.stop()


def reader(url, frames, open_timeout_s=20):
    return subprocess.Popen(
        [sys.executable, str(READER), url, str(frames), str(open_timeout_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


@pytest.fixture(scope="module")
def engine_parts(generator_ckpt, photo):
    from realtime.avatar import AvatarConfig, load_avatar
    from realtime.generator import RuntimeConfig, load_generator

    gen = load_generator(generator_ckpt, RuntimeConfig(runtime="openvino", precision="int8"), split=True)
    avatar = load_avatar(AvatarConfig(str(photo)))
    avatar.attach_features(gen, "rtmp-test")
    return gen, avatar


def test_publish_and_read_back_in_sync(nginx, engine_parts, speech_wav):
    from realtime.engine import Engine
    from realtime.sinks.stream import StreamSink
    from realtime.sources.file import FileSource

    gen, avatar = engine_parts
    viewer = reader(nginx.url(), 60)
    sink = StreamSink(nginx.url(), 25)
    summary = Engine(avatar, gen, [sink], EngineConfig(), MonotonicClock()).run(FileSource(str(speech_wav)), 3.0)
    got = json.loads(viewer.communicate(timeout=60)[0])
    assert got["error"] is None or got["video_frames"] >= 60, got["error"]
    assert sink.frames_sent == summary["frames"] and summary["dropped"] == 0
    assert got["video_frames"] >= 60
    assert got["size"] == [avatar.size[0], avatar.size[1]]
    v, a = got["video_pts_s"], got["audio_pts_s"]
    assert all(abs((y - x) - 0.04) < 0.002 for x, y in zip(v, v[1:]))  # 25 fps, no gaps
    assert a, "no audio arrived"
    # The first AAC packet is the encoder's priming (1024 samples, 21 ms at the sinks' 48 kHz,
    # stamped before the first real sample); the muxer shifts both streams so that it lands at 0.
    # Real audio sample 0 therefore plays at a[0] + 21 ms, which must be video frame 0's time.
    aac_priming_s = 1024 / 48000
    assert abs(a[0] + aac_priming_s - v[0]) <= 0.04


def test_engine_survives_a_server_restart(nginx, engine_parts, speech_wav):
    from realtime.engine import Engine
    from realtime.sinks.stream import StreamSink
    from realtime.sources.file import FileSource

    gen, avatar = engine_parts
    sink = StreamSink(nginx.url(), 25)
    engine = Engine(avatar, gen, [sink], EngineConfig(), MonotonicClock())
    source = FileSource(str(speech_wav), loop=True)
    events = {}

    def push(pcm, rate, arrival_ns, capture_ns):
        engine.push_audio(pcm, rate, arrival_ns, capture_ns)
        pushed = events.get("samples", 0) + len(pcm)
        events["samples"] = pushed
        if "restarted" not in events and pushed >= 2 * 16000:
            events["sent_before"] = sink.frames_sent
            nginx.stop()
            nginx.start()
            events["restarted"] = True
        if "viewer" not in events and pushed >= 4 * 16000:
            events["viewer"] = reader(nginx.url(), 20)

    engine.start()
    source.run(push, engine.clock, duration_s=7.0)
    summary = engine.stop()
    got = json.loads(events["viewer"].communicate(timeout=60)[0])
    assert sink.reconnects >= 1 and sink.status == "closed"
    assert sink.frames_sent > events["sent_before"] > 0
    assert got["video_frames"] >= 20, got["error"]  # a viewer after the restart sees the stream
    assert summary["frames"] >= 170  # the engine itself never stopped making frames


def test_an_error_that_is_not_the_networks_fails_at_once_instead_of_reconnecting(nginx, caplog):
    """Timestamps going backwards are a bug upstream: reconnecting cannot cure it, so the sink
    raises (and its runner fails the engine) instead of looping through reconnects."""
    import numpy as np

    from realtime.frames import VideoFrame
    from realtime.sinks.stream import StreamSink

    caplog.set_level(logging.INFO, logger="realtime.sinks.stream")
    sink = StreamSink(nginx.url(), 25)
    sink.prepare(64, 64)
    assert sink.status == "live"
    img = np.zeros((64, 64, 3), np.uint8)
    for pts in (0, 1, 2, 5):
        sink.send_video(VideoFrame(img, pts))
    with pytest.raises(ValueError, match="Invalid argument"):  # PyAV's ArgumentError (EINVAL) from the muxer
        sink.send_video(VideoFrame(img, 3))
    assert sink.reconnects == 0 and sink.frames_lost == 0
    assert not [r for r in caplog.records if r.name == "realtime.sinks.stream"]  # no reconnecting, no reconnected
    assert sink.status == "live"  # it never went into "reconnecting"
    sink.close()


def test_live_encoding_settings_reach_the_stream(nginx):
    """The viewer sees the configured keyframe interval (a late viewer's wait) and no B-frames."""
    import numpy as np

    from realtime.frames import AudioChunk, VideoFrame
    from realtime.sinks.encoding import LiveVideoEncoding
    from realtime.sinks.stream import StreamSink

    viewer = reader(nginx.url(), 40)
    sink = StreamSink(nginx.url(), 25, encoding=LiveVideoEncoding(keyframe_interval_s=0.4, bitrate_kbps=300))
    sink.prepare(64, 64)
    clock, rng = MonotonicClock(), np.random.default_rng(0)
    t0, pts = clock.now_ns(), 0
    while viewer.poll() is None and pts < 25 * 30:  # at the media's own pace until the viewer has its frames
        # With its audio (a viewer waits for both tracks); noise: every frame a "scene cut".
        sink.send_audio(AudioChunk(np.zeros(1920, np.float32), 48_000, pts * 1920, 0))
        sink.send_video(VideoFrame(rng.integers(0, 255, (64, 64, 3), np.uint8), pts))
        pts += 1
        clock.sleep_until_ns(t0 + pts * 40_000_000)
    sink.close()
    got = json.loads(viewer.communicate(timeout=60)[0])
    assert got["video_frames"] >= 40, got["error"]
    keys = [round(t * 25) for t in got["key_pts_s"]]
    assert len(keys) >= 3 and all(b - a == 10 for a, b in zip(keys, keys[1:])), keys  # every 0.4 s, no more
    v = got["video_pts_s"]
    assert v == sorted(v)  # decode order is presentation order: zerolatency has no B-frames
