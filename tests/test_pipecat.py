"""The avatar as a Pipecat bot's face, through pipecat's own code: a real pipeline (PipelineWorker,
WorkerRunner) ending in a real `BaseOutputTransport` subclass whose writes record what they get
(the audio write takes the audio's duration against a device clock, as a real sink does), in both
`video_out_is_live` modes. Lips are procedural (no weights needed, fast); the Wav2Lip path behind
the same Playout is covered by tests/test_playout.py.
"""

import asyncio
import threading
import time

import numpy as np
import pytest

pytest.importorskip("pipecat")

from pipecat.frames.frames import (  # noqa: E402
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.transports.base_output import BaseOutputTransport  # noqa: E402
from pipecat.transports.base_transport import TransportParams  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from lipsync.integrations import pipecat as lipsync_pipecat  # noqa: E402
from lipsync.integrations.pipecat import LipsyncVideoService  # noqa: E402
from mediaio.audio import decode_audio  # noqa: E402

RATE = 48_000  # TTS, playout and transport rate: the audio written can be compared sample for sample
CHUNK = RATE // 25  # one output frame of audio (the transport's default 40 ms chunk, too)
WAIT_S = 30.0  # how long any one awaited condition may take on a loaded 2-core machine


def tts_pcm(speech_wav, seconds):
    """What a TTS engine would hand over: int16 mono."""
    import soxr

    pcm = decode_audio(speech_wav).mono_16k()
    pcm = np.tile(pcm, int(np.ceil(seconds * 16_000 / len(pcm))))[: int(seconds * 16_000)]
    return (np.clip(soxr.resample(pcm, 16_000, RATE), -1, 1) * 32767).astype(np.int16)


def tts_frames(pcm, piece_s=0.1):
    n = int(RATE * piece_s)
    return (
        [TTSStartedFrame()]
        + [TTSAudioRawFrame(pcm[i : i + n].tobytes(), RATE, 1) for i in range(0, len(pcm), n)]
        + [TTSStoppedFrame()]
    )


def speech_chunks(pcm: np.ndarray) -> list[bytes]:
    """`pcm` in output frames, leaving out all-silent ones (a late frame is played as silence)."""
    pad = np.concatenate([pcm, np.zeros(-len(pcm) % CHUNK, np.int16)])
    chunks = pad.reshape(-1, CHUNK)
    return [c.tobytes() for c in chunks if c.any()]


class Progress:
    """Recorders notify here; a test waits for a condition on what they recorded."""

    def __init__(self):
        self.cond = asyncio.Condition()

    async def notify(self):
        async with self.cond:
            self.cond.notify_all()

    async def until(self, predicate, what: str):
        async with self.cond:
            try:
                await asyncio.wait_for(self.cond.wait_for(predicate), WAIT_S)
            except TimeoutError:
                raise AssertionError(f"timed out waiting for {what}") from None


class RecordingTransport(BaseOutputTransport):
    """An output transport whose sink records what pipecat writes to it."""

    def __init__(self, params: TransportParams, progress: Progress):
        super().__init__(params)
        self.progress = progress
        self.audio: list[tuple[float, OutputAudioRawFrame]] = []  # (write started, frame)
        self.video: list[tuple[float, bytes]] = []
        self._device_due = 0.0

    async def start(self, frame: StartFrame):
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        now = time.monotonic()
        self.audio.append((now, frame))
        await self.progress.notify()
        # A device clock: each chunk plays for its duration after the one before (or from now,
        # when the device ran dry).
        self._device_due = max(self._device_due, now) + frame.num_frames / frame.sample_rate
        await asyncio.sleep(self._device_due - now)
        return True

    async def write_video_frame(self, frame: OutputImageRawFrame) -> bool:
        self.video.append((time.monotonic(), frame.image))
        await self.progress.notify()
        return True

    def speech(self, after: float = 0.0) -> list[tuple[float, bytes]]:
        """(write time, bytes) of the TTS audio written (from `after` on), all-silent chunks left out."""
        return [
            (t, f.audio)
            for t, f in self.audio
            if t >= after and isinstance(f, TTSAudioRawFrame) and np.frombuffer(f.audio, np.int16).any()
        ]


class Recorder(FrameProcessor):
    """Records the frames going one way past its place in the pipeline, with the time."""

    def __init__(self, direction: FrameDirection, progress: Progress):
        super().__init__()
        self.direction, self.progress = direction, progress
        self.frames: list[tuple[float, Frame]] = []

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if direction == self.direction:
            self.frames.append((time.monotonic(), frame))
            await self.progress.notify()
        await self.push_frame(frame, direction)

    def times(self, kind) -> list[float]:
        return [t for t, f in self.frames if isinstance(f, kind)]


async def run_bot(svc, live: bool, size, script):
    """`svc` between a recorder of upstream frames and a recording output transport (a recorder
    on each side of the transport), run by pipecat's own worker and runner; `script(worker,
    transport, up, down, progress)` drives it, then an EndFrame ends it."""
    progress = Progress()
    params = TransportParams(
        audio_out_enabled=True,
        audio_out_sample_rate=RATE,
        video_out_enabled=True,
        video_out_is_live=live,
        video_out_width=size[0],
        video_out_height=size[1],
        video_out_framerate=25,
    )
    transport = RecordingTransport(params, progress)
    up = Recorder(FrameDirection.UPSTREAM, progress)
    down = Recorder(FrameDirection.DOWNSTREAM, progress)
    pushed = Recorder(FrameDirection.DOWNSTREAM, progress)  # what the service pushed, as it pushed it
    worker = PipelineWorker(
        Pipeline([up, svc, pushed, transport, down]),
        cancel_on_idle_timeout=False,
        params=PipelineParams(audio_out_sample_rate=RATE),
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(worker, frame):
        started.set()

    async def drive():
        try:
            await asyncio.wait_for(started.wait(), WAIT_S)
            await script(worker, transport, up, down, progress)
        except BaseException:
            await worker.cancel()  # the failure is reported at once, not after the runner's limit
            raise
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner()
    await runner.add_workers(worker)
    await asyncio.wait_for(asyncio.gather(runner.run(), drive()), 4 * WAIT_S)
    return transport, up, down, pushed


def playout_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith("playout-")]


def rgb_of(path) -> bytes:
    import cv2

    return np.ascontiguousarray(cv2.imread(str(path))[:, :, ::-1]).tobytes()


@pytest.mark.parametrize("live", [True, False], ids=["video_out_is_live", "video_out_not_live"])
def test_pipecat_bot_speaks_with_moving_lips(photo, speech_wav, live):
    pcm = tts_pcm(speech_wav, 2.0)
    idle = rgb_of(photo)

    async def main():
        svc = await LipsyncVideoService(str(photo), engine="procedural").load()
        size = svc.transport_params()["video_out_width"], svc.transport_params()["video_out_height"]

        async def script(worker, transport, up, down, progress):
            await progress.until(lambda: transport.video, "the first avatar frame")
            for f in tts_frames(pcm):  # pushed at once, as a fast TTS does
                await worker.queue_frame(f)
            await progress.until(lambda: up.times(BotStoppedSpeakingFrame), "BotStoppedSpeakingFrame upstream")
            last = len(transport.video)
            await progress.until(lambda: len(transport.video) >= last + 5, "idle frames after the reply")

        return svc, *await run_bot(svc, live, size, script)

    svc, transport, up, down, pushed = asyncio.run(main())
    assert not playout_threads(), "the playout's threads outlive the pipeline"

    # All the pushed audio is written, once, in order, as TTS audio (so pipecat knows the bot speaks).
    speech = transport.speech()
    assert [a for _, a in speech] == speech_chunks(pcm)
    assert all(isinstance(f, TTSAudioRawFrame) for _, f in transport.audio if np.frombuffer(f.audio, np.int16).any())

    # The bot's turn is known upstream: started before the speech was written, stopped after it.
    started, stopped = up.times(BotStartedSpeakingFrame), up.times(BotStoppedSpeakingFrame)
    assert len(started) == 1 and len(stopped) == 1
    assert started[0] <= speech[0][0] + 0.2 and stopped[0] >= speech[-1][0]
    # The TTSStoppedFrame reached the transport after all of its audio (the transport pushes each
    # frame on once it has handled it).
    order = [type(f) for _, f in down.frames if isinstance(f, (TTSAudioRawFrame, TTSStoppedFrame))]
    assert order.count(TTSStoppedFrame) == 1 and order[-1] is TTSStoppedFrame

    # The lips move while the speech is written: the images differ from one another in the mouth
    # region.
    w, h = svc.transport_params()["video_out_width"], svc.transport_params()["video_out_height"]
    y1, y2, x1, x2 = svc.playout.avatar.boxes[0]
    images = [
        np.frombuffer(img, np.uint8).reshape(h, w, 3).astype(np.int16)
        for t, img in transport.video
        if speech[0][0] <= t <= speech[-1][0]
    ]
    assert len(images) >= 0.8 * len(speech), "frames were not written while the avatar spoke"
    mouth = slice((y1 + y2) // 2, y2), slice(x1, x2)
    moves = [np.abs(a[mouth] - b[mouth]).mean() > 0.5 for a, b in zip(images, images[1:])]
    assert np.mean(moves) > 0.5, f"the mouth changed in only {np.mean(moves):.0%} of consecutive frames"
    # Nothing changes away from the face (the jaw may move below the face box, by less than its height).
    changed = np.argwhere(np.any([np.abs(img - images[0]).max(axis=2) > 0 for img in images], axis=0))
    bh, bw = y2 - y1, x2 - x1
    assert changed[:, 0].min() >= y1 and changed[:, 0].max() < y2 + bh
    assert changed[:, 1].min() >= x1 - bw // 2 and changed[:, 1].max() < x2 + bw // 2
    # Idle frames do not overtake speech: the images are written in the order they were pushed
    # (live: each once; not live: the latest one, redrawn at the frame rate).
    sent = [f.image for _, f in pushed.frames if isinstance(f, OutputImageRawFrame)]
    written = [img for _, img in transport.video]
    if live:
        assert written == sent[: len(written)] and len(written) >= len(sent) - 3
    else:
        at = 0
        for img in written:
            at = next((i for i in range(at, len(sent)) if sent[i] == img), None)
            assert at is not None, "an image was written after one pushed later than it"
    assert written[-1] == idle  # and back to idle once the reply has played


@pytest.mark.parametrize("live", [True, False], ids=["video_out_is_live", "video_out_not_live"])
def test_pipecat_interruption_stops_speech_within_a_frame(photo, speech_wav, live):
    pcm = tts_pcm(speech_wav, 4.0)
    idle = rgb_of(photo)
    at = {}

    async def main():
        svc = await LipsyncVideoService(str(photo), engine="procedural").load()
        params = svc.transport_params()

        async def script(worker, transport, up, down, progress):
            await progress.until(lambda: transport.video, "the first avatar frame")
            for f in tts_frames(pcm)[:-1]:  # cut before its end
                await worker.queue_frame(f)
            await progress.until(lambda: len(transport.speech()) >= 25, "a second of speech written")
            at["interrupt"] = time.monotonic()
            await worker.queue_frame(InterruptionFrame())
            await progress.until(lambda: up.times(BotStoppedSpeakingFrame), "BotStoppedSpeakingFrame upstream")
            await progress.until(
                lambda: sum(img == idle for t, img in transport.video if t > at["interrupt"]) >= 10,
                "idle frames after the interruption",
            )

        return await run_bot(svc, live, (params["video_out_width"], params["video_out_height"]), script)

    transport, up, down, _ = asyncio.run(main())
    assert not playout_threads()
    # At most the chunk already on its way to the sink starts after the InterruptionFrame was sent.
    after = transport.speech(after=at["interrupt"])
    assert len(after) <= 1, f"{len(after)} chunks of speech written after the interruption"
    assert len(transport.speech()) < 50  # about the second before it, not the 4 s reply
    assert up.times(BotStartedSpeakingFrame) and up.times(BotStoppedSpeakingFrame)[-1] > at["interrupt"]


def test_pipecat_starts_at_once_while_the_avatar_loads(photo, speech_wav, monkeypatch):
    """The StartFrame does not wait for the avatar: the pipeline starts, the transport shows the
    avatar's first frame, and TTS audio is heard (unsynced) until the avatar is ready."""
    pcm = tts_pcm(speech_wav, 0.5)
    still = rgb_of(photo)
    gate = threading.Event()
    real = lipsync_pipecat.build_playout

    def slow_build(*args, **kwargs):  # the real load, after as long as the test needs
        gate.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(lipsync_pipecat, "build_playout", slow_build)

    async def main():
        svc = LipsyncVideoService(str(photo), engine="procedural")

        async def script(worker, transport, up, down, progress):
            await progress.until(lambda: len(transport.video) >= 5, "the still while loading")
            for f in tts_frames(pcm):
                await worker.queue_frame(f)
            await progress.until(lambda: up.times(BotStoppedSpeakingFrame), "BotStoppedSpeakingFrame upstream")
            assert svc.playout is None  # all of that while loading
            gate.set()
            await progress.until(lambda: svc.playout is not None, "the load")

        import cv2

        h, w = cv2.imread(str(photo)).shape[:2]
        return await run_bot(svc, True, (w, h), script)

    try:
        transport, up, down, _ = asyncio.run(main())
    finally:
        gate.set()
    assert not playout_threads()
    assert all(img == still for _, img in transport.video[:5])
    assert [a for _, a in transport.speech()] == speech_chunks(pcm)


def test_pipecat_each_tts_stop_follows_its_own_audio(photo, speech_wav):
    """A TTS that ends every sentence (TTSStoppedFrame per sentence, all pushed ahead of playback):
    each stop reaches the transport right after its own sentence's audio, as without an avatar."""
    first, second = tts_pcm(speech_wav, 1.0), tts_pcm(speech_wav, 0.7)

    async def main():
        svc = await LipsyncVideoService(str(photo), engine="procedural").load()
        params = svc.transport_params()

        async def script(worker, transport, up, down, progress):
            await progress.until(lambda: transport.video, "the first avatar frame")
            for f in tts_frames(first) + tts_frames(second):
                await worker.queue_frame(f)
            await progress.until(lambda: len(up.times(BotStoppedSpeakingFrame)) == 2, "two bot turns")

        return await run_bot(svc, True, (params["video_out_width"], params["video_out_height"]), script)

    transport, up, down, _ = asyncio.run(main())
    # What the transport handled, in order: the audio it wrote (in output frames) and the stops.
    seen = []
    for _, f in down.frames:
        if isinstance(f, TTSStoppedFrame):
            seen.append("stop")
        elif isinstance(f, TTSAudioRawFrame) and np.frombuffer(f.audio, np.int16).any():
            seen.append(f.audio)
    n1 = len(speech_chunks(first))
    assert seen == speech_chunks(first) + ["stop"] + speech_chunks(second) + ["stop"], (
        f"stops at {[i for i, x in enumerate(seen) if x == 'stop']}, expected at {n1} and the end"
    )


def test_pipecat_avatar_that_cannot_load(tmp_path, speech_wav):
    """load() raises the one-line reason; in a pipeline started without it, the reason goes
    upstream as an ErrorFrame and the bot is still heard."""
    from pipecat.frames.frames import ErrorFrame

    from models.errors import LipsyncError

    missing = str(tmp_path / "no-such-face.jpg")
    with pytest.raises(LipsyncError, match="no such file"):
        asyncio.run(LipsyncVideoService(missing, engine="procedural").load())

    pcm = tts_pcm(speech_wav, 0.5)

    async def script(worker, transport, up, down, progress):
        await progress.until(lambda: up.times(ErrorFrame), "the ErrorFrame upstream")
        for f in tts_frames(pcm):
            await worker.queue_frame(f)
        await progress.until(lambda: up.times(BotStoppedSpeakingFrame), "BotStoppedSpeakingFrame upstream")

    svc = LipsyncVideoService(missing, engine="procedural")
    transport, up, _, _ = asyncio.run(run_bot(svc, True, (64, 64), script))
    (error,) = [f for _, f in up.frames if isinstance(f, ErrorFrame)]
    assert "no such file" in error.error and "\n" not in error.error
    assert [a for _, a in transport.speech()] == speech_chunks(pcm)
    assert not transport.video
