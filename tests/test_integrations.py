"""The avatar as the face of a LiveKit agent, with LiveKit's real objects (Pipecat: test_pipecat.py).

LiveKit: the real AvatarRunner (with its AVSynchronizer, AudioSource and VideoSource), the real
QueueAudioOutput an AgentSession speaks into, and our VideoGenerator; only the Room is a small
in-memory stand-in (there is no LiveKit server here). Lips are procedural (no weights needed, fast); the Wav2Lip path
behind the same Playout is covered by tests/test_playout.py.
"""

import asyncio
import time

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
    def __init__(self, track):
        self.track, self.kind, self.sid = track, track.kind, f"TR_{id(track)}"

    async def wait_for_subscription(self):
        return None


class _Participant:
    def __init__(self, room, identity="agent"):
        from livekit import rtc

        self.room, self.identity, self.kind = room, identity, rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        self.tracks, self.track_publications, self.attributes = [], {}, {}

    async def publish_track(self, track, options=None):
        # As a connected Room does: the publication is listed, "local_track_published" fires
        # here and "track_published" at the other participant (LinkedRoom).
        pub = _Publication(track)
        self.tracks.append(track)
        self.track_publications[pub.sid] = pub
        self.room.emit("local_track_published", pub, track)
        peer = getattr(self.room, "peer", None)
        if peer is not None:
            remote = peer.remote_participants[self.identity]
            remote.track_publications[pub.sid] = pub
            peer.emit("track_published", pub, remote)
        return pub


class StandInRoom:
    """The parts of rtc.Room that AvatarRunner and AvatarSession touch: events, connection state,
    the local participant and its publications."""

    name = "room"

    def __init__(self, identity="agent"):
        self.local_participant = _Participant(self, identity)
        self.remote_participants = {}
        self._handlers = {}

    def on(self, event, cb=None):
        self._handlers.setdefault(event, []).append(cb)
        return cb

    def off(self, event, cb=None):
        if cb in self._handlers.get(event, []):
            self._handlers[event].remove(cb)

    def emit(self, event, *args):
        for cb in list(self._handlers.get(event, [])):
            cb(*args)

    def isconnected(self):
        return True


class AvSyncLog:
    """Watches the real AVSynchronizer of a runner: what it was handed and when, and when our
    generator was told to clear (the instant of the interrupt). With `hold_at_audio=n`, the
    runner's forwarding stops before handing over the n-th speech frame until `release()`: the
    consumer falls behind (a busy event loop), which is when speech made ahead of it would
    still come out after an interrupt."""

    def __init__(self, runner, gen, hold_at_audio=None):
        self.entries = []  # (perf_counter, "video" | "audio" | "clear", seconds of audio)
        self.held, self._go = asyncio.Event(), asyncio.Event()
        push, clear = runner.av_sync.push, gen.clear_buffer
        audio_frames = 0

        async def logged_push(frame, timestamp=None):
            from livekit import rtc

            nonlocal audio_frames
            if isinstance(frame, rtc.AudioFrame):
                audio_frames += 1
                if audio_frames == hold_at_audio:
                    self.held.set()
                    await self._go.wait()
                self.entries.append((time.perf_counter(), "audio", frame.duration))
            else:
                self.entries.append((time.perf_counter(), "video", 0.0))
            await push(frame, timestamp)

        def logged_clear():
            self.entries.append((time.perf_counter(), "clear", 0.0))
            return clear()

        runner.av_sync.push = logged_push
        gen.clear_buffer = logged_clear

    async def interrupt_while_held(self, clear_buffer, held_s=0.3):
        """The consumer is held for `held_s` (a stall of that length, as under load), the user
        interrupts meanwhile, then the consumer goes on."""
        await asyncio.wait_for(self.held.wait(), 20)
        await asyncio.sleep(held_s)  # the stall itself, not a wait for something to happen
        clear_buffer()
        self._go.set()

    def audio_after_clear_s(self):
        at = [i for i, e in enumerate(self.entries) if e[1] == "clear"]
        assert len(at) == 1
        return sum(e[2] for e in self.entries[at[0] :] if e[1] == "audio")

    def first_audio_at(self):
        return next(t for t, kind, _ in self.entries if kind == "audio")


def _frames_100ms(pcm, rate=24_000):
    from livekit import rtc

    n = rate // 10
    return [rtc.AudioFrame(pcm[i : i + n].tobytes(), rate, 1, len(pcm[i : i + n])) for i in range(0, len(pcm), n)]


def test_livekit_avatar_runner_plays_interrupts_and_survives_a_raising_listener(photo, speech_wav, caplog):
    pytest.importorskip("livekit.agents")
    from livekit.agents.voice.avatar import AvatarRunner, QueueAudioOutput

    from lipsync.integrations.livekit import LipsyncVideoGenerator

    def broken_listener(kind, payload):
        raise ValueError("a bug in someone's listener")

    async def scenario():
        gen = LipsyncVideoGenerator(str(photo), engine="procedural")
        gen.playout.on_event(broken_listener)
        room = StandInRoom()
        audio_out = QueueAudioOutput()
        finished = asyncio.Queue()
        audio_out.on("playback_finished", lambda ev: finished.put_nowait(ev))
        runner = AvatarRunner(room, audio_recv=audio_out, video_gen=gen, options=gen.options())
        await runner.start()
        log = AvSyncLog(runner, gen, hold_at_audio=25 + 25)
        try:
            for f in _frames_100ms(tts_pcm(speech_wav, 1.0)):  # as fast as the agent makes them
                await audio_out.capture_frame(f)
            audio_out.flush()
            first = await asyncio.wait_for(finished.get(), 20)

            for f in _frames_100ms(tts_pcm(speech_wav, 4.0)):
                await audio_out.capture_frame(f)
            audio_out.flush()
            # The user barges in about a second into the reply (25 frames of the first, 25 of this).
            await log.interrupt_while_held(audio_out.clear_buffer)
            second = await asyncio.wait_for(finished.get(), 20)
            # What the synchronizer is handed for the next half second: idle only.
            n = len(log.entries)
            while len(log.entries) < n + 12:
                await asyncio.sleep(0.01)
            stats = gen.playout.stats.summary()
            published = list(room.local_participant.tracks)
        finally:
            await runner.aclose()
            await gen.aclose()
        return first, second, stats, published, log

    with caplog.at_level("ERROR", logger="realtime.playout"):
        first, second, stats, published, log = asyncio.run(scenario())
    assert not first.interrupted and abs(first.playback_position - 1.0) <= 0.05
    assert second.interrupted and 0.9 <= second.playback_position <= 1.5
    # After the interrupt, at most the one frame being handed over: 40 ms of speech.
    assert log.audio_after_clear_s() <= 0.04 + 1e-6
    assert len(published) == 2  # the avatar's audio and video tracks
    assert stats["generated"] >= 20 and stats["dropped"] == 0
    # Four events (two utterances started and finished) reached the broken listener; each was logged.
    assert sum("a bug in someone's listener" in r.getMessage() or r.exc_info is not None for r in caplog.records) >= 4


def _say_frames(pcm, stall_after_s=None, stall_s=0.0, rate=24_000, frame_s=0.1, realtime=False):
    """What a TTS node yields: frames of `frame_s`, at once or (`realtime`) each when its audio
    would have been synthesised at real time; optionally a stall of `stall_s` once `stall_after_s`
    of the reply is out (with real-time frames the avatar then runs out of speech mid-reply)."""
    from livekit import rtc

    n = int(rate * frame_s)

    async def frames():
        t0, delay = time.perf_counter(), 0.0
        for i in range(0, len(pcm), n):
            if stall_after_s is not None and i == int(stall_after_s * rate):
                delay = stall_s
            due = t0 + delay + (i / rate if realtime else 0.0)
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            yield rtc.AudioFrame(pcm[i : i + n].tobytes(), rate, 1, len(pcm[i : i + n]))

    return frames()


def test_livekit_avatar_session_is_an_avatar_session_and_interrupts(photo, speech_wav):
    pytest.importorskip("livekit.agents")
    from livekit.agents import Agent, AgentSession
    from livekit.agents.voice.avatar import AvatarSession, QueueAudioOutput

    from lipsync.integrations.livekit import LipsyncAvatarSession

    async def scenario():
        session = AgentSession()
        room = StandInRoom("agent-1")
        avatar = LipsyncAvatarSession(avatar=str(photo), engine="procedural")
        await avatar.start(session, room)
        log = AvSyncLog(avatar.runner, avatar.generator, hold_at_audio=25)
        started = []
        avatar.audio.on("playback_started", lambda ev: started.append(time.perf_counter()))
        try:
            await avatar.wait_for_join(timeout=20)  # the avatar's video track is published
            await session.start(agent=Agent(instructions="You are a face."))
            tail = session.output.audio
            while tail is not None and tail.next_in_chain is not None:
                tail = tail.next_in_chain
            handle = session.say(
                "(pre-recorded reply)", audio=_say_frames(tts_pcm(speech_wav, 4.0)), add_to_chat_ctx=False
            )
            await log.interrupt_while_held(handle.interrupt)
            await asyncio.wait_for(handle.wait_for_playout(), 20)
            played = avatar.generator.playout.stats.summary()["generated"]
        finally:
            await session.aclose()
            await avatar.aclose()
        return avatar, room, tail, handle, played, log, started

    avatar, room, tail, handle, played, log, started = asyncio.run(scenario())
    assert isinstance(avatar, AvatarSession) and avatar.avatar_identity == "agent-1"
    assert isinstance(tail, QueueAudioOutput) and tail._wait_playback_start  # the avatar's queue at the tail
    assert handle.interrupted
    assert 10 <= played < 75  # lips moved, and stopped well before the 4 s reply's 100 frames
    assert log.audio_after_clear_s() <= 0.04 + 1e-6
    # Playback started when the avatar handed its first speech frame on, not when TTS audio came.
    # (AvatarRunner may report a second start: a frame whose hand-over straddles the clear finds
    # the position just reset; that race is in the runner, and that frame was handed before.)
    assert started and started[0] >= log.first_audio_at()


@pytest.mark.parametrize("frame_s", [0.1, 1.0], ids=["100ms-frames", "1s-frames"])
def test_livekit_reply_with_a_tts_stall_is_one_segment(photo, speech_wav, caplog, frame_s):
    pytest.importorskip("livekit.agents")
    from livekit.agents import Agent, AgentSession

    from lipsync.integrations.livekit import LipsyncAvatarSession

    async def scenario():
        session = AgentSession()
        avatar = LipsyncAvatarSession(avatar=str(photo), engine="procedural")
        await avatar.start(session, StandInRoom())
        ends, finished = [], []
        avatar.generator.playout.on_event(lambda kind, p: ends.append(p) if kind == "playback_finished" else None)
        avatar.audio.on("playback_finished", lambda ev: finished.append(ev))
        try:
            await session.start(agent=Agent(instructions="You are a face."))
            pcm = tts_pcm(speech_wav, 4.0)
            handle = session.say(
                "(reply)", audio=_say_frames(pcm, 2.0, 1.5, frame_s=frame_s, realtime=True), add_to_chat_ctx=False
            )
            await asyncio.wait_for(handle.wait_for_playout(), 30)
        finally:
            await session.aclose()
            await avatar.aclose()
        return handle, ends, finished

    with caplog.at_level("WARNING"):
        handle, ends, finished = asyncio.run(scenario())
    assert not handle.interrupted
    assert len(ends) == 1 and not ends[0].interrupted  # one utterance, stall and all
    assert len(finished) == 1 and finished[0].playback_position >= 4.0
    assert not [r for r in caplog.records if "more times" in r.getMessage()]


class _Remote:
    def __init__(self, identity, kind):
        from livekit import rtc

        self.identity, self.kind, self.attributes, self.track_publications = identity, kind, {}, {}
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
        super().__init__(room, identity)
        self._rpc_handlers = {}

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
        super().__init__(identity)
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


def test_livekit_remote_avatar_session_mints_the_token_and_waits_for_the_video(photo, speech_wav):
    pytest.importorskip("livekit.agents")
    from livekit import api
    from livekit.agents import Agent, AgentSession
    from livekit.agents.voice.avatar import AvatarSession, DataStreamAudioOutput

    from lipsync.integrations.livekit import LipsyncRemoteAvatarSession, run_avatar_worker

    launched, workers = [], []

    async def scenario():
        agent_room, avatar_room = LinkedRoom.pair()

        async def launch(url, token):  # here the worker runs in this process, on the linked room
            launched.append((url, token))
            workers.append(await run_avatar_worker(avatar_room, str(photo), engine="procedural"))

        session = AgentSession()
        avatar = LipsyncRemoteAvatarSession(
            launch,
            avatar_participant_identity="avatar",
            livekit_url="ws://127.0.0.1:7880",
            api_key="devkey",
            api_secret="a-secret-of-at-least-32-characters!",
        )
        await avatar.start(session, agent_room)
        try:
            await session.start(agent=Agent(instructions="You are a face."))
            handle = session.say("(reply)", audio=_say_frames(tts_pcm(speech_wav, 1.0)), add_to_chat_ctx=False)
            await asyncio.wait_for(handle.wait_for_playout(), 30)
            await avatar.wait_for_join(timeout=10)
            out = avatar.audio
        finally:
            await session.aclose()
            await avatar.aclose()
            for w in workers:
                await w.aclose()
        return avatar, handle, out

    avatar, handle, out = asyncio.run(scenario())
    assert isinstance(avatar, AvatarSession) and not handle.interrupted
    assert isinstance(out, DataStreamAudioOutput) and out._wait_remote_track == 2  # KIND_VIDEO
    assert out._wait_playback_start and out._destination_identity == "avatar"
    ((url, token),) = launched
    claims = api.TokenVerifier("devkey", "a-secret-of-at-least-32-characters!").verify(token)
    assert url == "ws://127.0.0.1:7880" and claims.identity == "avatar" and claims.kind == "agent"
    assert claims.attributes == {"lk.publish_on_behalf": "agent"}
    assert claims.video.room_join and claims.video.room == "room"
