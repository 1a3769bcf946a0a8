"""Faults a long live run meets, each with the real part: files, a virtual camera through
pyvirtualcam's own API, a full disk (a real tmpfs), a camera stand-in that ends, a stream whose
failure is not the network's. (RTMP server restarts: test_stream_rtmp.py; the microphone's audio
server going away: test_mic_pulse.py.)"""

import threading

import numpy as np
import pytest

from models.errors import EngineFailure

FPS = 25


def drive(eng, clock, wav, seconds):
    """Feed `seconds` of `wav` as 20 ms blocks arriving when they end (time moves with the test)."""
    for start in range(0, int(seconds * 16_000), 320):
        clock.advance_ns(20_000_000)
        eng.process_audio(wav[start % len(wav):start % len(wav) + 320], 16_000, clock.now_ns(), None)


def decoded_video_frames(path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


class FailingCloseCamera:
    """A pyvirtualcam backend whose device is gone by the time it is closed."""

    def __init__(self, width, height, fps, fourcc, device=None, **kw):
        self.width, self.height = width, height
        self.sent = 0

    @property
    def device(self):
        return "vanishing"

    def send(self, frame):
        self.sent += 1

    def close(self):
        if self.sent >= 0:  # once: pyvirtualcam's __del__ closes again
            self.sent = -1
            raise OSError("the video device vanished")


def test_stop_closes_every_sink_when_one_close_raises_and_can_be_called_again(tmp_path, photo, speech_wav):
    import pyvirtualcam

    from models.audio import decode_audio
    from realtime.clock import ManualClock
    from realtime.live import build_engine
    from realtime.sinks.recorder import FileSink
    from realtime.sinks.vcam import VcamSink

    pyvirtualcam.register_backend("lipsync-failing-close", FailingCloseCamera)
    before, after = tmp_path / "before.mp4", tmp_path / "after.mkv"
    sinks = [FileSink(str(before), FPS), VcamSink(FPS, backend="lipsync-failing-close"), FileSink(str(after), FPS)]
    clock = ManualClock()
    eng = build_engine(str(photo), sinks, engine="procedural", clock=clock, log=lambda m: None).start()
    drive(eng, clock, decode_audio(speech_wav).mono_16k(), 1.0)
    with pytest.raises(EngineFailure) as first:
        eng.stop()
    msg = str(first.value)
    assert msg.startswith("closing sink vcam:lipsync-failing-close failed: OSError: the video device vanished")
    assert "\n" not in msg
    # The sinks on either side of the failing one were closed: both files are finalised, with
    # every frame their sink took (time ran as fast as the test, so each may have skipped some).
    delivered = eng.stats.summary()["sinks"]
    assert decoded_video_frames(before) == delivered[f"file:{before}"]["delivered"] > 0
    assert decoded_video_frames(after) == delivered[f"file:{after}"]["delivered"] > 0
    with pytest.raises(EngineFailure) as second:
        eng.stop()
    assert second.value is first.value


def test_stop_twice_returns_the_same_summary(photo, speech_wav):
    import media
    from models.audio import decode_audio
    from realtime.clock import ManualClock
    from realtime.live import build_engine

    sink = media.CollectSink()
    clock = ManualClock()
    eng = build_engine(str(photo), [sink], engine="procedural", clock=clock, log=lambda m: None).start()
    drive(eng, clock, decode_audio(speech_wav).mono_16k(), 0.5)
    first = eng.stop()
    assert eng.stop() == first and first["frames"] == len(sink.frames) > 0
    assert first["sinks"]["collect"]["delivered"] == len(sink.frames)
