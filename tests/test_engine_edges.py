"""The capture engine's edges: the end of a file, a source that gives up, a worker that crashes.

Each runs the real engine (threads, queues, sinks) with the procedural renderer; a file
recording is decoded back with PyAV."""

import threading

import numpy as np
import pytest

from models.errors import EngineFailure

FPS = 25


class KeepSink:
    """Keeps every frame and counts every audio sample it is given."""

    name = "keep"

    def __init__(self):
        self.frames, self.audio_samples = [], 0

    def send_video(self, frame):
        self.frames.append(frame)

    def send_audio(self, chunk):
        self.audio_samples += chunk.samples

    def close(self):
        pass


def _procedural(photo):
    from realtime.avatar import AvatarConfig, load_avatar
    from realtime.procedural import ProceduralRenderer

    avatar = load_avatar(AvatarConfig(str(photo)))
    return avatar, ProceduralRenderer(avatar.keypoints())


def test_a_file_gets_video_to_the_end_of_its_audio(tmp_path, photo, speech_wav):
    import av

    from realtime.clock import FreeRunClock
    from realtime.config import EngineConfig
    from realtime.engine import Engine
    from realtime.sinks.recorder import FileSink
    from realtime.sources.file import FileSource

    avatar, renderer = _procedural(photo)
    out = tmp_path / "rec.mkv"
    source = FileSource(str(speech_wav))
    engine = Engine(avatar, renderer, [FileSink(str(out), FPS)], EngineConfig(), FreeRunClock())
    summary = engine.run(source)
    audio_s = len(source.pcm) / 16_000
    # Every 40 ms of audio has its frame, the last one included (a partial frame's worth too).
    assert summary["frames"] == int(np.ceil(audio_s * FPS))
    with av.open(str(out)) as c:
        video = [float(f.pts * f.time_base) for f in c.decode(video=0)]
    with av.open(str(out)) as c:
        audio_end = max(float(f.pts * f.time_base) + f.samples / f.sample_rate for f in c.decode(audio=0))
    assert len(video) == summary["frames"]
    assert video[-1] + 1 / FPS >= audio_end - 1e-3, (video[-1], audio_end)


class GivingUpSource:
    """Pushes `seconds` of audio at once, as a microphone's backlog would be queued, then ends
    the session with MicLost, the microphone's own give-up. `release` lets the renderer go on
    only once everything is queued, so the give-up always finds work still queued."""

    name = "mic:giving-up"

    def __init__(self, pcm48k, release: threading.Event):
        self.pcm, self.release = pcm48k, release
        self.accepted = 0

    def run(self, push, clock, duration_s=None):
        from realtime.sources.mic import MicLost

        block = 960  # 20 ms at 48 kHz
        for start in range(0, len(self.pcm), block):
            piece = self.pcm[start : start + block]
            if push(piece, 48_000):
                self.accepted += len(piece)
        self.release.set()
        raise MicLost("mic:giving-up: no audio input for 2 s; the session stops")

    def stop(self):
        pass


def test_a_source_that_gives_up_keeps_everything_it_had_queued(photo, speech_wav):
    """The recording holds all of the audio that arrived, and frames to its end; then the
    source's own one-line error ends the run."""
    import soxr

    from mediaio.audio import decode_audio
    from realtime.config import EngineConfig
    from realtime.engine import Engine

    avatar, procedural = _procedural(photo)
    release = threading.Event()

    class HeldRenderer:
        name = "held"

        def render(self, frame, idx, mel_window, offset_frames, fps):
            release.wait(30)
            return procedural.render(frame, idx, mel_window, offset_frames, fps)

    speech = decode_audio(speech_wav).mono_16k()[: 2 * 16_000]
    pcm48k = soxr.resample(speech, 16_000, 48_000).astype(np.float32)
    source = GivingUpSource(pcm48k, release)
    sink = KeepSink()
    engine = Engine(avatar, HeldRenderer(), [sink], EngineConfig(output_audio_rate_hz=48_000))
    with pytest.raises(EngineFailure) as ended:
        engine.run(source)
    assert str(ended.value) == "mic:giving-up: no audio input for 2 s; the session stops"
    assert source.accepted == len(pcm48k)  # nothing was refused at the door: all of it arrived
    assert sink.audio_samples == source.accepted
    # Video to the end of that audio. (Live, a burst of frames may lose older ones to the
    # frame queue's drop-oldest policy; the newest, the last, is never the one dropped.)
    assert sink.frames[-1].pts == int(np.ceil(source.accepted / 48_000 * FPS)) - 1
    with pytest.raises(EngineFailure) as again:  # stop() after the run says the same
        engine.stop()
    assert again.value is ended.value


def test_a_crashing_capture_worker_ends_in_one_line_engine_failure(photo, speech_wav):
    from realtime.clock import FreeRunClock
    from realtime.config import EngineConfig
    from realtime.engine import Engine
    from realtime.sources.file import FileSource

    avatar, _ = _procedural(photo)

    class CrashingRenderer:
        name = "crashing"

        def render(self, frame, idx, mel_window, offset_frames, fps):
            raise ZeroDivisionError("a bug in the renderer")

    engine = Engine(avatar, CrashingRenderer(), [KeepSink()], EngineConfig(), FreeRunClock())
    with pytest.raises(EngineFailure) as ended:
        engine.run(FileSource(str(speech_wav)))
    msg = str(ended.value)
    assert msg == "engine failed: ZeroDivisionError: a bug in the renderer"
    assert isinstance(ended.value.__cause__, ZeroDivisionError)  # the original stays attached
