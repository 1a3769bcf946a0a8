"""The live engine's parts: streaming mel, queues, scheduling on a manual clock, sinks."""

import glob

import numpy as np
import pytest

from mediaio.audio import decode_audio
from models.errors import LipsyncError
from models.mel import melspectrogram
from realtime.clock import ManualClock
from realtime.config import EngineConfig
from realtime.mel_stream import MelStream
from realtime.queues import BoundedQueue, Closed, Policy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_mel_equals_offline_for_random_chunks(speech_wav, seed):
    wav = decode_audio(speech_wav).mono_16k()
    offline = melspectrogram(wav)
    ms = MelStream(history_frames=offline.shape[1] + 16)
    buffers = (id(ms._ring), id(ms._mel), ms._ring.shape, ms._mel.shape)
    rng = np.random.default_rng(seed)
    i, ready_before_end = 0, 0
    while i < len(wav):
        n = int(rng.integers(1, 4000))
        ms.push(wav[i:i + n])
        i += n
        ready_before_end = ms.frames_ready
        # Never ahead of the audio: frame t needs sample 200t+399.
        assert ms.frames_ready == 0 or 200 * (ms.frames_ready - 1) + 400 <= ms.samples_received
    assert ready_before_end == (len(wav) - 400) // 200 + 1
    ms.flush()
    live = ms.window(0, frames=ms.frames_ready)
    assert live.shape == offline.shape
    assert np.abs(live - offline).max() < 1e-4
    assert (id(ms._ring), id(ms._mel), ms._ring.shape, ms._mel.shape) == buffers  # fixed rings


def test_mel_ring_forgets_old_frames(speech_wav):
    wav = decode_audio(speech_wav).mono_16k()
    ms = MelStream(history_frames=50)
    ms.push(wav)
    with pytest.raises(IndexError):
        ms.window(0)
    recent = ms.window(ms.frames_ready - 16)
    assert np.abs(recent - melspectrogram(wav)[:, ms.frames_ready - 16:ms.frames_ready]).max() < 1e-4


def test_queue_policies():
    q = BoundedQueue(2, Policy.DROP_OLDEST)
    assert q.put(1) and q.put(2) and not q.put(3)
    assert (q.get(), q.get(), q.dropped) == (2, 3, 1)
    latest = BoundedQueue(5, Policy.KEEP_LATEST)
    for k in range(4):
        latest.put(k)
    assert len(latest) == 1 and latest.get() == 3
    audio = BoundedQueue(2, Policy.NEVER_DROP)
    assert audio.put("a") and audio.put("b") and not audio.put("c")
    assert (audio.get(), audio.get(), audio.overruns) == ("a", "b", 1)
    audio.close()
    with pytest.raises(Closed):
        audio.get()


@pytest.fixture(scope="module")
def live_parts(generator_ckpt, photo):
    from realtime.avatar import AvatarConfig, load_avatar
    from realtime.generator import RuntimeConfig, load_generator

    gen = load_generator(generator_ckpt, RuntimeConfig(), split=True)
    avatar = load_avatar(AvatarConfig(str(photo)))
    avatar.attach_features(gen, "test")
    return gen, avatar


class CostlyGenerator:
    """The real generator, but each decode advances the manual clock by `cost_ms`: the engine
    must schedule as if the machine took that long per frame."""

    def __init__(self, gen, clock, cost_ms):
        self.gen, self.clock, self.cost_ns = gen, clock, int(cost_ms * 1e6)
        self.calls = 0

    def decode(self, mels, feats):
        self.calls += 1
        self.clock.advance_ns(self.cost_ns)
        return self.gen.decode(mels, feats)


def drive(engine, clock, wav, block=320):
    """Feed `wav` as a microphone would: each 20 ms block arrives when the clock reaches its end."""
    from realtime.frames import VideoFrame

    t0 = clock.now_ns()
    for start in range(0, len(wav), block):
        end_ns = t0 + (start + block) * 1_000_000_000 // 16000
        if clock.now_ns() < end_ns:
            clock.advance_ns(end_ns - clock.now_ns())
        # It arrived at end_ns; if the worker was still busy, it waited in the queue since.
        engine.process_audio(wav[start:start + block], 16000, end_ns, None)
    frames: list[VideoFrame] = []
    while len(engine.frames_q):
        frames.append(engine.frames_q.get())
    return frames


@pytest.mark.parametrize("cost_ms,expect_drops", [(15, False), (60, True)])
def test_scheduler_keeps_latency_bounded(live_parts, speech_wav, cost_ms, expect_drops):
    from realtime.engine import Engine

    gen, avatar = live_parts
    clock = ManualClock(10**12)
    costly = CostlyGenerator(gen, clock, cost_ms)
    cfg = EngineConfig(output_queue_ms=100_000)  # keep every frame for inspection
    engine = Engine(avatar, costly, [], cfg, clock)
    wav = decode_audio(speech_wav).mono_16k()
    frames = drive(engine, clock, wav)
    assert [f.pts for f in frames] == list(range(len(frames)))  # one frame per slot, in order
    kinds = [f.meta["kind"] for f in frames]
    dropped = kinds.count("dropped")
    assert len(frames) >= len(wav) / 16000 * 25 - 8
    # Every generated frame was started within max_lateness of its audio being complete, so the
    # delay cannot grow however long the speech goes on.
    waits_ms = [(f.meta["decided_ns"] - f.meta["ready_ns"]) / 1e6 for f in frames if f.meta["kind"] == "generated"]
    assert max(waits_ms) <= cfg.max_lateness_ms
    last_lag_ms = (frames[-1].meta["decided_ns"] - frames[-1].meta["ready_ns"]) / 1e6
    assert last_lag_ms <= cfg.max_lateness_ms + cost_ms
    if expect_drops:
        assert dropped > 0 and costly.calls < len(frames)
        assert costly.calls * cost_ms <= len(wav) / 16 + cfg.max_lateness_ms + cost_ms  # fits in real time
    else:
        assert dropped == 0 and costly.calls == kinds.count("generated")


def test_silence_shows_the_idle_avatar_without_running_the_generator(live_parts, speech_wav):
    from realtime.engine import Engine

    gen, avatar = live_parts
    clock = ManualClock(0)
    costly = CostlyGenerator(gen, clock, 0)
    engine = Engine(avatar, costly, [], EngineConfig(output_queue_ms=100_000), clock)
    speech = decode_audio(speech_wav).mono_16k()
    wav = np.concatenate([np.zeros(16000, np.float32), speech[:16000], np.zeros(24000, np.float32)])
    frames = drive(engine, clock, wav)
    kinds = [f.meta["kind"] for f in frames]
    assert kinds[:15] == ["idle"] * 15  # the first second is silent (window reaches 160 ms ahead)
    assert "generated" in kinds[25:50]
    assert kinds[-10:] == ["idle"] * 10  # the last second is silent again
    for f in frames:
        if f.meta["kind"] == "idle":
            assert np.array_equal(f.bgr, avatar.frames[0])
    assert costly.calls == kinds.count("generated")
    # Crossfade: right after speech starts, the mouth region moves only part of the way.
    first = kinds.index("generated")
    y1, y2, x1, x2 = avatar.boxes[0]
    diffs = [np.abs(frames[k].bgr[y1:y2, x1:x2].astype(int) - avatar.frames[0][y1:y2, x1:x2]).mean()
             for k in range(first, first + 3)]
    assert diffs[0] < diffs[2]


class RecordingCamera:
    """A pyvirtualcam backend (its documented register_backend interface) that keeps frames."""

    instances = []

    def __init__(self, width, height, fps, fourcc, device, **kw):
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self.frames = []
        RecordingCamera.instances.append(self)

    def device(self):
        return "recording"

    def send(self, frame):
        self.frames.append(np.array(frame))

    def close(self):
        pass


def test_virtual_camera_gets_frames_at_size_and_rate(live_parts, speech_wav):
    import pyvirtualcam

    from realtime.clock import FreeRunClock
    from realtime.engine import Engine
    from realtime.sinks.vcam import VcamSink
    from realtime.sources.file import FileSource

    pyvirtualcam.register_backend("lipsync-test", RecordingCamera)
    gen, avatar = live_parts
    engine = Engine(avatar, gen, [VcamSink(25, backend="lipsync-test")], EngineConfig(), FreeRunClock())
    summary = engine.run(FileSource(str(speech_wav)), duration_s=2.0)
    cam = RecordingCamera.instances[-1]
    assert (cam.width, cam.height, cam.fps) == (avatar.size[0], avatar.size[1], 25)
    assert len(cam.frames) == summary["frames"] >= 45
    w, h = avatar.size
    assert cam.frames[0].size == w * h * 3
    # Outside the face box the picture is the avatar's own, in the camera's byte order.
    got = cam.frames[-1].reshape(h, w, 3)[:40]
    want = avatar.frames[0][:40]
    assert np.array_equal(got, want) or np.array_equal(got, want[:, :, ::-1])


@pytest.mark.skipif(bool(glob.glob("/dev/video*")), reason="a video device exists here: the missing-loopback "
                    "error cannot be provoked")
def test_vcam_without_loopback_is_one_clear_line():
    from realtime.frames import VideoFrame
    from realtime.sinks.vcam import VcamSink

    sink = VcamSink(25, backend="v4l2loopback")
    with pytest.raises(LipsyncError) as e:
        sink.send_video(VideoFrame(np.zeros((64, 64, 3), np.uint8), 0))
    assert "modprobe v4l2loopback" in str(e.value) and "\n" not in str(e.value)


def test_unreachable_rtmp_retries_with_status(caplog):
    import socket

    from realtime.frames import AudioChunk, VideoFrame
    from realtime.sinks.stream import StreamSink

    with socket.socket() as s:  # a port on loopback that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = StreamSink(f"rtmp://127.0.0.1:{port}/live/test", 25)
    sink.send_audio(AudioChunk(np.zeros(1920, np.float32), 48000, 0, 0))
    sink.send_video(VideoFrame(np.zeros((64, 64, 3), np.uint8), 0))
    sink.send_video(VideoFrame(np.zeros((64, 64, 3), np.uint8), 1))
    assert sink.status.startswith("reconnecting")
    assert sink.frames_sent == 0 and sink.frames_lost == 2
    said = [r for r in caplog.records if r.name == "realtime.sinks.stream"]
    assert said and said[0].levelname == "WARNING" and "reconnecting" in said[0].getMessage()
    sink.close()
