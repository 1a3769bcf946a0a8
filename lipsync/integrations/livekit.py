"""LiveKit Agents avatars from this engine (extra `livekit`).

`LipsyncVideoGenerator` implements `livekit.agents.voice.avatar.VideoGenerator`: the agent's TTS
audio comes in through `push_audio` (frames, then `AudioSegmentEnd`), `clear_buffer` interrupts,
and iterating yields, once per output frame, an `rtc.VideoFrame` (RGBA) followed, while speaking,
by that frame's 40 ms `rtc.AudioFrame` — the audio the lips were made from — and an
`AudioSegmentEnd` when an utterance has played out. Idle frames keep coming while the agent is
silent. `AvatarRunner` publishes and paces them (its AVSynchronizer takes one frame per 1/fps).

`LipsyncAvatarSession` wires it in-process: the session's audio output becomes a
`QueueAudioOutput` and an `AvatarRunner` publishes the avatar into the room. `run_avatar_worker`
is the remote form: a separate participant that receives the agent's audio over LiveKit data
streams (`DataStreamAudioReceiver`: lk.audio_stream, lk.clear_buffer, lk.playback_finished).
"""

from __future__ import annotations

import asyncio

import numpy as np
from livekit import rtc
from livekit.agents.voice.avatar import (
    AudioSegmentEnd,
    AvatarOptions,
    AvatarRunner,
    DataStreamAudioReceiver,
    QueueAudioOutput,
    VideoGenerator,
)

from realtime.config import EngineConfig
from realtime.live import build_playout
from realtime.playout import Pacing, PlayoutItem, SegmentEnd


class LipsyncVideoGenerator(VideoGenerator):
    def __init__(
        self, avatar: str, checkpoint: str | None = None, *, engine: str = "auto", runtime=None, cfg=None, pcfg=None
    ):
        self._playout = build_playout(
            avatar, [], checkpoint, runtime, cfg or EngineConfig(), pcfg, engine=engine, pacing=Pacing.CONSUMER
        )
        self.width, self.height = self._playout.avatar.size
        self.fps = self._playout.cfg.fps
        self.sample_rate = self._playout.pcfg.output_rate_hz
        self._started = False

    @property
    def playout(self):
        return self._playout

    def options(self) -> AvatarOptions:
        return AvatarOptions(
            video_width=self.width,
            video_height=self.height,
            video_fps=self.fps,
            audio_sample_rate=self.sample_rate,
            audio_channels=1,
        )

    def _ensure_started(self) -> None:
        if not self._started:
            self._playout.start()
            self._started = True

    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        self._ensure_started()
        if isinstance(frame, AudioSegmentEnd):
            self._playout.end_segment()
            return
        pcm = np.frombuffer(frame.data, np.int16).reshape(-1, frame.num_channels)
        await self._playout.apush_audio(pcm, frame.sample_rate)

    def clear_buffer(self) -> None:
        # The runner reports the interrupted playback itself; the playout fades to idle.
        self._playout.interrupt()

    def __aiter__(self):
        self._ensure_started()
        return self._frames()

    async def _frames(self):
        async for item in self._playout:
            if isinstance(item, SegmentEnd):
                if not item.interrupted:
                    yield AudioSegmentEnd()
                continue
            if not isinstance(item, PlayoutItem):
                continue
            bgr = item.video.bgr
            rgba = np.empty((bgr.shape[0], bgr.shape[1], 4), np.uint8)
            rgba[..., :3] = bgr[..., ::-1]
            rgba[..., 3] = 255
            yield rtc.VideoFrame(self.width, self.height, rtc.VideoBufferType.RGBA, rgba.tobytes())
            if item.video.meta.get("segment") is not None:
                pcm16 = (np.clip(item.audio.pcm, -1, 1) * 32767).round().astype(np.int16)
                yield rtc.AudioFrame(pcm16.tobytes(), item.audio.sample_rate_hz, 1, len(pcm16))

    async def aclose(self) -> None:
        if self._started:
            await asyncio.to_thread(self._playout.stop)
            self._started = False


class LipsyncAvatarSession:
    """In-process avatar for an AgentSession: `await LipsyncAvatarSession(avatar=...).start(session, room)`."""

    def __init__(self, avatar: str, checkpoint: str | None = None, **engine_options):
        self._spec = (avatar, checkpoint, engine_options)
        self.generator: LipsyncVideoGenerator | None = None
        self.runner: AvatarRunner | None = None
        self.audio: QueueAudioOutput | None = None

    async def start(self, session, room) -> LipsyncAvatarSession:
        avatar, checkpoint, opts = self._spec
        self.generator = await asyncio.to_thread(LipsyncVideoGenerator, avatar, checkpoint, **opts)
        self.audio = QueueAudioOutput(sample_rate=None)
        session.output.audio = self.audio
        self.runner = AvatarRunner(
            room, audio_recv=self.audio, video_gen=self.generator, options=self.generator.options()
        )
        await self.runner.start()
        return self

    async def aclose(self) -> None:
        if self.runner is not None:
            await self.runner.aclose()
        if self.generator is not None:
            await self.generator.aclose()


class AvatarWorker:
    """A started remote avatar: its runner and generator; `await worker.aclose()` ends both."""

    def __init__(self, runner: AvatarRunner, generator: LipsyncVideoGenerator):
        self.runner, self.generator = runner, generator

    async def aclose(self) -> None:
        await self.runner.aclose()
        await self.generator.aclose()


async def run_avatar_worker(
    room, avatar: str, checkpoint: str | None = None, sender_identity: str | None = None, **engine_options
) -> AvatarWorker:
    """The avatar as its own participant in `room` (already connected): audio from the agent over
    data streams, video and audio published back."""
    gen = await asyncio.to_thread(LipsyncVideoGenerator, avatar, checkpoint, **engine_options)
    runner = AvatarRunner(
        room,
        audio_recv=DataStreamAudioReceiver(room, sender_identity=sender_identity),
        video_gen=gen,
        options=gen.options(),
    )
    await runner.start()
    return AvatarWorker(runner, gen)
