"""LiveKit Agents avatars from this engine (extra `livekit`), as LiveKit's own avatar plugins work.

`LipsyncVideoGenerator` implements `livekit.agents.voice.avatar.VideoGenerator`: the agent's TTS
audio comes in through `push_audio` (frames, then `AudioSegmentEnd`), `clear_buffer` interrupts,
and iterating yields, once per output frame, an `rtc.VideoFrame` (RGBA) followed, while speaking,
by that frame's 40 ms `rtc.AudioFrame` (the audio the lips were made from) and an
`AudioSegmentEnd` when an utterance has played out. Idle frames keep coming while the agent is
silent. `AvatarRunner`'s AVSynchronizer owns the clock: the playout runs with Pacing.CONSUMER,
so each frame is made when the synchronizer asks for it and an interrupt leaves nothing made
ahead (no speech after `clear_buffer()` beyond the frame being handed over).

Two ways to use it, as the plugins do (bitHuman in process; Simli, Tavus, Anam, Bey remote):
- `LipsyncAvatarSession`: an `AvatarSession` for the agent's own process. `start(session, room)`
  puts a `QueueAudioOutput(wait_playback_start=True)` at the tail of the session's audio chain
  (`replace_audio_tail`: the transcript synchroniser and recorder stay in front of it) and an
  `AvatarRunner` publishes the avatar's tracks as the agent. Playback "starts" when the avatar
  really shows the first speech frame, so captions follow the lips, not the TTS.
- `LipsyncRemoteAvatarSession`: the agent side of an avatar worker in another process or machine.
  It mints the worker's token (kind agent, `lk.publish_on_behalf` = the agent, so clients show
  the avatar's tracks as the agent's), has `launch(url, token)` start the worker, and sends the
  audio with `DataStreamAudioOutput(wait_remote_track=KIND_VIDEO, wait_playback_start=True)`:
  nothing is streamed before the avatar's video is published, and nothing is lost meanwhile.
  The worker runs `run_avatar_worker` (or `connect_avatar_worker` with that url and token).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import numpy as np
from livekit import api, rtc
from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF
from livekit.agents.voice.avatar import (
    AudioSegmentEnd,
    AvatarOptions,
    AvatarRunner,
    AvatarSession,
    DataStreamAudioOutput,
    DataStreamAudioReceiver,
    QueueAudioOutput,
    VideoGenerator,
)

from realtime.config import EngineConfig
from realtime.live import build_playout
from realtime.playout import Pacing, PlayoutItem, SegmentEnd

if TYPE_CHECKING:
    from livekit.agents import AgentSession

PROVIDER = "lipsync-rt"


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
        pl = self._playout
        while True:
            epoch = pl.epoch
            try:
                item = await pl.recv()
            except StopAsyncIteration:
                return
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
            # The runner may have been told to clear while it took the picture (or while this
            # frame was being made): then its sound is cut too, so that nothing of the old
            # reply reaches the room after clear_buffer() (and no new "playback started").
            if item.video.meta.get("segment") is not None and pl.epoch == epoch:
                pcm16 = (np.clip(item.audio.pcm, -1, 1) * 32767).round().astype(np.int16)
                yield rtc.AudioFrame(pcm16.tobytes(), item.audio.sample_rate_hz, 1, len(pcm16))

    async def aclose(self) -> None:
        if self._started:
            await asyncio.to_thread(self._playout.stop)
            self._started = False


class LipsyncAvatarSession(AvatarSession):
    """In-process avatar for an AgentSession, as bitHuman's local mode:

        avatar = LipsyncAvatarSession(avatar="media/avatar.jpg")
        await avatar.start(session, room=ctx.room)   # before session.start()
        await session.start(agent=..., room=ctx.room)

    The avatar's tracks are published by the agent's own participant, so `avatar_identity` is the
    agent's identity; `wait_for_join()` returns once the avatar's video track is published.
    Inside a job the avatar is closed at shutdown; elsewhere call `aclose()`."""

    def __init__(self, avatar: str, checkpoint: str | None = None, **engine_options):
        super().__init__()
        self._spec = (avatar, checkpoint, engine_options)
        self.generator: LipsyncVideoGenerator | None = None
        self.runner: AvatarRunner | None = None
        self.audio: QueueAudioOutput | None = None
        self._identity: str | None = None

    @property
    def avatar_identity(self) -> str:
        if self._identity is None:
            raise RuntimeError("avatar_identity: expected a started LipsyncAvatarSession, found none; call start()")
        return self._identity

    @property
    def provider(self) -> str:
        return PROVIDER

    async def start(self, agent_session: AgentSession, room: rtc.Room) -> None:
        self._identity = room.local_participant.identity
        await super().start(agent_session, room)
        avatar, checkpoint, opts = self._spec
        # Loading (and, on first use, exporting a checkpoint) takes a while: off the event loop.
        self.generator = await asyncio.to_thread(LipsyncVideoGenerator, avatar, checkpoint, **opts)
        self.audio = QueueAudioOutput(sample_rate=None, wait_playback_start=True)  # any rate: the playout resamples
        self.runner = AvatarRunner(
            room, audio_recv=self.audio, video_gen=self.generator, options=self.generator.options()
        )
        await self.runner.start()
        agent_session.output.replace_audio_tail(self.audio)

    async def aclose(self) -> None:
        try:
            if self.runner is not None:
                await self.runner.aclose()
                self.runner = None
            if self.generator is not None:
                await self.generator.aclose()
                self.generator = None
        finally:
            await super().aclose()


def mint_avatar_token(
    *, api_key: str, api_secret: str, room_name: str, identity: str, name: str, on_behalf_of: str, ttl_s: int = 3600
) -> str:
    """The avatar worker's room token, as LiveKit's remote avatar plugins mint it: kind agent (the
    worker is part of the agent, not a user), allowed to join `room_name`, and publishing on behalf
    of the agent's participant `on_behalf_of` (front ends then show its tracks as the agent's)."""
    import datetime

    return (
        api.AccessToken(api_key=api_key, api_secret=api_secret)
        .with_kind("agent")
        .with_identity(identity)
        .with_name(name)
        .with_ttl(datetime.timedelta(seconds=ttl_s))
        .with_grants(api.VideoGrants(room_join=True, room=room_name))
        .with_attributes({ATTRIBUTE_PUBLISH_ON_BEHALF: on_behalf_of})
        .to_jwt()
    )


Launch = Callable[[str, str], Awaitable[None]]


class LipsyncRemoteAvatarSession(AvatarSession):
    """Agent side of a remote avatar worker, as the Simli/Tavus/Anam/Bey plugins work:

        async def launch(url, token):  # start the worker: a process, a job on a GPU box, ...
            ...                        # it runs connect_avatar_worker(url, token, avatar)
        avatar = LipsyncRemoteAvatarSession(launch)
        await avatar.start(session, room=ctx.room)   # before session.start()
        await avatar.wait_for_join()                 # optional: the avatar's video is up

    `livekit_url`, `api_key`, `api_secret` default to LIVEKIT_URL, LIVEKIT_API_KEY and
    LIVEKIT_API_SECRET."""

    def __init__(
        self,
        launch: Launch,
        *,
        avatar_participant_identity: str = "lipsync-avatar",
        avatar_participant_name: str = "lipsync-avatar",
        livekit_url: str | None = None,
        api_key: str | None = None,
        api_secret: str | None = None,
    ):
        super().__init__()
        self._launch = launch
        self._identity, self._name = avatar_participant_identity, avatar_participant_name
        self._url, self._key, self._secret = livekit_url, api_key, api_secret
        self.audio: DataStreamAudioOutput | None = None

    @property
    def avatar_identity(self) -> str:
        return self._identity

    @property
    def provider(self) -> str:
        return PROVIDER

    def _setting(self, given: str | None, env: str) -> str:
        value = given or os.environ.get(env, "")
        if not value:
            raise ValueError(
                f"LipsyncRemoteAvatarSession: expected {env} (or its argument) to be set, found nothing; "
                f"set {env} to your LiveKit project's value"
            )
        return value

    async def start(self, agent_session: AgentSession, room: rtc.Room) -> None:
        url = self._setting(self._url, "LIVEKIT_URL")
        key = self._setting(self._key, "LIVEKIT_API_KEY")
        secret = self._setting(self._secret, "LIVEKIT_API_SECRET")
        await super().start(agent_session, room)
        token = mint_avatar_token(
            api_key=key,
            api_secret=secret,
            room_name=room.name,
            identity=self._identity,
            name=self._name,
            on_behalf_of=room.local_participant.identity,
        )
        await self._launch(url, token)
        # Audio waits (buffered by the session, not lost) until the avatar's video is published,
        # and playback starts when the avatar reports it really started.
        self.audio = DataStreamAudioOutput(
            room,
            destination_identity=self._identity,
            wait_remote_track=rtc.TrackKind.KIND_VIDEO,
            wait_playback_start=True,
        )
        agent_session.output.replace_audio_tail(self.audio)


class AvatarWorker:
    """A started remote avatar: its runner and generator; `await worker.aclose()` ends both."""

    def __init__(self, runner: AvatarRunner, generator: LipsyncVideoGenerator, room: rtc.Room | None = None):
        self.runner, self.generator, self.room = runner, generator, room

    async def aclose(self) -> None:
        try:
            await self.runner.aclose()
            await self.generator.aclose()
        finally:
            if self.room is not None:  # connected by connect_avatar_worker: ours to leave
                await self.room.disconnect()


async def run_avatar_worker(
    room, avatar: str, checkpoint: str | None = None, sender_identity: str | None = None, **engine_options
) -> AvatarWorker:
    """The avatar as its own participant in `room` (already connected): audio from the agent over
    data streams (from `sender_identity`, or the first agent participant), video and audio
    published back."""
    gen = await asyncio.to_thread(LipsyncVideoGenerator, avatar, checkpoint, **engine_options)
    runner = AvatarRunner(
        room,
        audio_recv=DataStreamAudioReceiver(room, sender_identity=sender_identity),
        video_gen=gen,
        options=gen.options(),
    )
    await runner.start()
    return AvatarWorker(runner, gen)


async def connect_avatar_worker(
    url: str, token: str, avatar: str, checkpoint: str | None = None, **engine_options
) -> AvatarWorker:
    """The worker side of LipsyncRemoteAvatarSession: joins with the token it was launched with
    (the agent it speaks for is the one the token publishes on behalf of)."""
    room = rtc.Room()
    await room.connect(url, token)
    try:
        worker = await run_avatar_worker(room, avatar, checkpoint, **engine_options)
    except BaseException:
        await room.disconnect()
        raise
    worker.room = room
    return worker
