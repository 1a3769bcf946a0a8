"""The live engine's parts: streaming mel, queues, scheduling on a manual clock, sinks."""

import glob
import threading

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
        ms.push(wav[i : i + n])
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
    assert np.abs(recent - melspectrogram(wav)[:, ms.frames_ready - 16 : ms.frames_ready]).max() < 1e-4


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
        engine.process_audio(wav[start : start + block], 16000, end_ns, None)
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
    diffs = [
        np.abs(frames[k].bgr[y1:y2, x1:x2].astype(int) - avatar.frames[0][y1:y2, x1:x2]).mean()
        for k in range(first, first + 3)
    ]
    assert diffs[0] < diffs[2]


class RecordingCamera:
    """A pyvirtualcam backend (its documented register_backend interface) that reads each frame
    as a device would: in the pixel format it was opened with (the fourcc pyvirtualcam passes
    on), refusing formats it cannot read; and notes the media clock when each frame reached it."""

    instances = []
    clock = None  # set by the test: arrival times are read from the engine's own clock

    def __init__(self, width, height, fps, fourcc, device, **kw):
        from pyvirtualcam.util import decode_fourcc

        self.width, self.height, self.fps = width, height, fps
        self.fmt = decode_fourcc(fourcc)
        if self.fmt not in ("24BG", "raw "):  # BGR, RGB: what a test frame here can be read as
            raise ValueError(f"pixel format {self.fmt!r} not supported by this test device")
        self.rgb, self.arrived_ns = [], []
        self._cv = threading.Condition()
        RecordingCamera.instances.append(self)

    def device(self):
        return "recording"

    def send(self, frame):
        img = np.array(frame).reshape(self.height, self.width, 3)
        with self._cv:
            self.rgb.append(img[:, :, ::-1] if self.fmt == "24BG" else img)
            self.arrived_ns.append(self.clock.now_ns())
            self._cv.notify_all()

    def wait_for(self, n, timeout_s=10.0):
        with self._cv:
            return self._cv.wait_for(lambda: len(self.rgb) >= n, timeout_s)

    def close(self):
        pass


def test_virtual_camera_gets_every_frame_in_its_byte_order_at_the_output_rate(tmp_path, photo, speech_wav):
    """Through pyvirtualcam's real API: the device reads the colours the avatar has (a strip of
    pure red, green and blue across the top), every frame the engine made, and the frames reach it
    at 25 per second of the media clock: a manual clock the test moves as the microphone's 20 ms
    blocks arrive, waiting (on a condition) for each block's frames to reach the device."""
    import cv2
    import pyvirtualcam

    import media
    from realtime.live import build_engine
    from realtime.sinks.vcam import VcamSink

    img = cv2.imread(str(photo))
    w = img.shape[1]
    for k, bgr in enumerate([(0, 0, 255), (0, 255, 0), (255, 0, 0)]):  # red, green, blue
        img[:24, k * w // 3 : (k + 1) * w // 3] = bgr
    painted = tmp_path / "painted.png"
    cv2.imwrite(str(painted), img)
    clock = ManualClock(10**12)
    RecordingCamera.clock = clock
    pyvirtualcam.register_backend("lipsync-test", RecordingCamera)
    made = media.CollectSink()  # what the engine handed to its sinks
    eng = build_engine(
        str(painted), [VcamSink(25, backend="lipsync-test"), made], engine="procedural", clock=clock
    ).start()
    cam = RecordingCamera.instances[-1]
    wav = decode_audio(speech_wav).mono_16k()[: 3 * 16000]
    try:
        for start in range(0, len(wav), 320):
            clock.advance_ns(20_000_000)
            eng.process_audio(wav[start : start + 320], 16000, clock.now_ns(), None)
            # process_audio decides this block's frames before it returns; wait until they are out
            assert cam.wait_for(eng._next_pts), f"{eng._next_pts - len(cam.rgb)} frames did not reach the camera"
        driven = len(cam.rgb)
    finally:
        eng.stop()
    h, w = eng.avatar.size[1], eng.avatar.size[0]
    assert (cam.width, cam.height, cam.fps) == (w, h, 25)
    # Every frame the engine made, in order, with red, green and blue where the avatar has them.
    assert len(cam.rgb) == len(made.frames) > 60
    for got, frame in zip(cam.rgb, made.frames):
        assert np.array_equal(got, frame.bgr[:, :, ::-1])
    strip = cam.rgb[driven // 2][:24]
    for k, rgb in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        assert (strip[:, k * w // 3 + 2 : (k + 1) * w // 3 - 2] == rgb).all(), (k, strip[0, k * w // 3 + 2])
    assert sum(f.meta["kind"] == "generated" for f in made.frames) > 20  # and the lips moved
    # The rate they arrived at, on the media clock. Frames 0 and 1 leave together, at the first
    # complete mel window (frame 0's window would start before the audio does); from then on one
    # frame per 40 ms of audio, give or take the 20 ms the audio comes in: 25 per second.
    gaps_ms = np.diff(np.array(cam.arrived_ns[:driven])) / 1e6
    assert gaps_ms[0] == 0 and np.all(np.abs(gaps_ms[1:] - 40) <= 20), np.unique(gaps_ms)
    rate = (driven - 2) / (gaps_ms[1:].sum() / 1000)
    assert abs(rate - 25) < 0.25, rate


@pytest.mark.skipif(
    bool(glob.glob("/dev/video*")), reason="a video device exists here: the missing-loopback error cannot be provoked"
)
def test_vcam_without_loopback_is_one_clear_line():
    from realtime.frames import VideoFrame
    from realtime.sinks.vcam import VcamSink

    sink = VcamSink(25, backend="v4l2loopback")
    with pytest.raises(LipsyncError) as e:
        sink.send_video(VideoFrame(np.zeros((64, 64, 3), np.uint8), 0))
    msg = str(e.value)
    # pyvirtualcam's own v4l2loopback backend was asked and found no device (not, say, a registry
    # that no longer knows the backend), and the one line says how to load the module.
    assert "'v4l2loopback' backend: No v4l2 loopback device found" in msg, msg
    assert "modprobe v4l2loopback" in msg and "\n" not in msg


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
