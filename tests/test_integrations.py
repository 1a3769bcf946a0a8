"""The avatar as the face of a LiveKit agent, with LiveKit's real objects (Pipecat: test_pipecat.py).

LiveKit: the real AvatarRunner (with its AVSynchronizer, AudioSource and VideoSource), the real
QueueAudioOutput an AgentSession speaks into, and our VideoGenerator; only the Room is a small
in-memory stand-in (there is no LiveKit server here). Lips are procedural (no weights needed, fast); the Wav2Lip path
behind the same Playout is covered by tests/test_playout.py.
"""

import asyncio

import numpy as np
import pytest

from mediaio.audio import decode_audio


def tts_pcm(speech_wav, seconds, rate=24_000):
    """What a TTS engine would hand over: int16 mono at 24 kHz."""
    import soxr

    pcm = decode_audio(speech_wav).mono_16k()
    pcm = np.tile(pcm, int(np.ceil(seconds * 16_000 / len(pcm))))[: int(seconds * 16_000)]
    return (np.clip(soxr.resample(pcm, 16_000, rate), -1, 1) * 32767).astype(np.int16)


# -- LiveKit ----------------------------------------------------------------------------------------
class _Publication:
    async def wait_for_subscription(self):
        return None


class _Participant:
    def __init__(self):
        self.tracks = []

    async def publish_track(self, track, options=None):
        self.tracks.append(track)
        return _Publication()


class StandInRoom:
    """The parts of rtc.Room that AvatarRunner touches: events, connection state, publishing."""

    def __init__(self):
        self.local_participant = _Participant()
        self._handlers = {}

    def on(self, event, cb=None):
        self._handlers.setdefault(event, []).append(cb)
        return cb

    def off(self, event, cb=None):
        self._handlers.get(event, []).remove(cb)

    def isconnected(self):
        return True


def test_livekit_avatar_runner_plays_and_interrupts_our_generator(photo, speech_wav):
    pytest.importorskip("livekit.agents")
    from livekit import rtc
    from livekit.agents.voice.avatar import AvatarRunner, QueueAudioOutput

    from lipsync.integrations.livekit import LipsyncVideoGenerator

    async def scenario():
        gen = LipsyncVideoGenerator(str(photo), engine="procedural")
        room = StandInRoom()
        audio_out = QueueAudioOutput()
        finished = asyncio.Queue()
        audio_out.on("playback_finished", lambda ev: finished.put_nowait(ev))
        runner = AvatarRunner(room, audio_recv=audio_out, video_gen=gen, options=gen.options())
        await runner.start()
        try:
            pcm = tts_pcm(speech_wav, 1.0)
            for i in range(0, len(pcm), 2400):  # 100 ms frames, as fast as the agent makes them
                await audio_out.capture_frame(rtc.AudioFrame(pcm[i : i + 2400].tobytes(), 24_000, 1, 2400))
            audio_out.flush()
            first = await asyncio.wait_for(finished.get(), 20)

            pcm = tts_pcm(speech_wav, 4.0)
            for i in range(0, len(pcm), 2400):
                await audio_out.capture_frame(rtc.AudioFrame(pcm[i : i + 2400].tobytes(), 24_000, 1, 2400))
            audio_out.flush()
            await asyncio.sleep(1.0)  # the user barges in about a second into the reply
            audio_out.clear_buffer()
            second = await asyncio.wait_for(finished.get(), 20)
            stats = gen.playout.stats.summary()
            published = list(room.local_participant.tracks)
        finally:
            await runner.aclose()
            await gen.aclose()
        return first, second, stats, published

    first, second, stats, published = asyncio.run(scenario())
    assert not first.interrupted and abs(first.playback_position - 1.0) <= 0.05
    assert second.interrupted and 0.3 <= second.playback_position <= 2.5
    assert len(published) == 2  # the avatar's audio and video tracks
    assert stats["generated"] >= 20 and stats["dropped"] == 0


def test_livekit_agent_session_say_then_interrupt_reports_interrupted(photo, speech_wav):
    pytest.importorskip("livekit.agents")
    from livekit import rtc
    from livekit.agents import Agent, AgentSession

    from lipsync.integrations.livekit import LipsyncAvatarSession

    async def scenario():
        session = AgentSession()
        avatar = await LipsyncAvatarSession(avatar=str(photo), engine="procedural").start(session, StandInRoom())
        try:
            await session.start(agent=Agent(instructions="You are a face."))
            pcm = tts_pcm(speech_wav, 4.0)

            async def frames():
                for i in range(0, len(pcm), 2400):
                    yield rtc.AudioFrame(pcm[i : i + 2400].tobytes(), 24_000, 1, 2400)

            handle = session.say("(pre-recorded reply)", audio=frames(), add_to_chat_ctx=False)
            await asyncio.sleep(1.2)
            handle.interrupt()
            await asyncio.wait_for(handle.wait_for_playout(), 20)
            played = avatar.generator.playout.stats.summary()["generated"]
        finally:
            await session.aclose()
            await avatar.aclose()
        return handle, played

    handle, played = asyncio.run(scenario())
    assert handle.interrupted
    assert 10 <= played < 75  # lips moved, and stopped well before the 4 s reply's 100 frames


class _Remote:
    def __init__(self, identity, kind):
        from livekit import rtc

        self.identity, self.kind, self.attributes = identity, kind, {}
        self.state = rtc.ParticipantState.PARTICIPANT_STATE_ACTIVE


class _Reader:
    def __init__(self, attributes):
        import types

        self.info = types.SimpleNamespace(attributes=dict(attributes), stream_id=str(id(self)))
        self._q = asyncio.Queue()

    def __aiter__(self):
        return self

    async def __anext__(self):
        chunk = await self._q.get()
        if chunk is None:
            raise StopAsyncIteration
        return chunk


class _Writer:
    def __init__(self, reader):
        self._reader = reader

    async def write(self, data):
        self._reader._q.put_nowait(bytes(data))

    async def aclose(self):
        self._reader._q.put_nowait(None)


class _LinkedParticipant(_Participant):
    def __init__(self, room, identity):
        super().__init__()
        self.room, self.identity, self._rpc_handlers = room, identity, {}

    def register_rpc_method(self, method, handler):
        self._rpc_handlers[method] = handler

    async def perform_rpc(self, *, destination_identity, method, payload, response_timeout=None):
        from livekit import rtc

        handler = self.room.peer.local_participant._rpc_handlers.get(method)
        if handler is None:
            raise rtc.RpcError(rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD, "no such method")
        res = handler(rtc.RpcInvocationData("req", self.identity, payload, 5.0, method))
        return await res if asyncio.iscoroutine(res) else res

    async def stream_bytes(self, *, name, topic, destination_identities, attributes):
        reader = _Reader(attributes)
        self.room.peer._byte_handlers[topic](reader, self.identity)
        return _Writer(reader)


class LinkedRoom(StandInRoom):
    """Two of these stand for two participants of one room: RPCs and byte streams go to the peer."""

    def __init__(self, identity, kind):
        super().__init__()
        self.local_participant = _LinkedParticipant(self, identity)
        self.kind, self.remote_participants, self._byte_handlers, self.peer = kind, {}, {}, None

    def register_byte_stream_handler(self, topic, handler):
        self._byte_handlers[topic] = handler

    @staticmethod
    def pair():
        from livekit import rtc

        agent = LinkedRoom("agent", rtc.ParticipantKind.PARTICIPANT_KIND_AGENT)
        avatar = LinkedRoom("avatar", rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD)
        agent.peer, avatar.peer = avatar, agent
        agent.remote_participants["avatar"] = _Remote("avatar", avatar.kind)
        avatar.remote_participants["agent"] = _Remote("agent", agent.kind)
        return agent, avatar


def test_livekit_remote_avatar_worker_over_data_streams(photo, speech_wav):
    pytest.importorskip("livekit.agents")
    from livekit import rtc
    from livekit.agents.voice.avatar import DataStreamAudioOutput

    from lipsync.integrations.livekit import run_avatar_worker

    async def scenario():
        agent_room, avatar_room = LinkedRoom.pair()
        worker = await run_avatar_worker(avatar_room, str(photo), engine="procedural", sender_identity="agent")
        out = DataStreamAudioOutput(agent_room, destination_identity="avatar")
        finished = asyncio.Queue()
        out.on("playback_finished", lambda ev: finished.put_nowait(ev))
        try:
            for seconds, cut_after_s in ((1.0, None), (4.0, 1.0)):
                pcm = tts_pcm(speech_wav, seconds)
                for i in range(0, len(pcm), 2400):
                    await out.capture_frame(rtc.AudioFrame(pcm[i : i + 2400].tobytes(), 24_000, 1, 2400))
                out.flush()
                if cut_after_s:
                    await asyncio.sleep(cut_after_s)
                    out.clear_buffer()
                results.append(await asyncio.wait_for(finished.get(), 30))
        finally:
            await worker.aclose()

    results = []
    asyncio.run(scenario())
    first, second = results
    assert not first.interrupted and abs(first.playback_position - 1.0) <= 0.05
    assert second.interrupted and second.playback_position < 3.0
