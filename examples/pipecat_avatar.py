"""A Pipecat bot whose face is this engine's avatar.

    pip install 'lipsync-rt[pipecat]'
    python examples/pipecat_avatar.py [avatar.jpg] [speech.mp3]

The shape of a real bot: load the avatar before building the pipeline (a first-use export can
take longer than pipecat's 20 s start limit), size the output transport's video from it, and put
LipsyncVideoService right after the TTS service:

    avatar = await LipsyncVideoService("media/avatar.jpg").load()
    transport = SmallWebRTCTransport(webrtc_connection, TransportParams(
        audio_in_enabled=True, audio_out_enabled=True, **avatar.transport_params()))
    Pipeline([transport.input(), stt, context_aggregator.user(), llm, tts, avatar,
              transport.output(), context_aggregator.assistant()])

`transport_params()` is live video (`video_out_is_live=True`: each avatar frame written once,
paced by the transport) at the avatar's size and frame rate. So that this runs without service
keys or a network, a TTS stand-in reads a sentence from a file and the output transport is a
small one that counts what it is given.
"""

import asyncio
import sys
import time

import numpy as np
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EndFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import TransportParams
from pipecat.workers.runner import WorkerRunner

from lipsync.integrations.pipecat import LipsyncVideoService
from mediaio.audio import decode_audio


class CountingOutput(BaseOutputTransport):
    """Stands in for a network transport's output: counts frames, plays audio in real time."""

    def __init__(self, params):
        super().__init__(params)
        self.images = 0
        self.speech_s = 0.0

    async def start(self, frame):
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def write_video_frame(self, frame):
        self.images += 1
        return True

    async def write_audio_frame(self, frame):
        seconds = frame.num_frames / frame.sample_rate
        if isinstance(frame, TTSAudioRawFrame):
            self.speech_s += seconds
        await asyncio.sleep(seconds)  # a real sink takes the audio's duration
        return True


class TurnWatcher(FrameProcessor):
    """Sees the transport's bot-speaking frames upstream, as an RTVI observer or an idle timer would."""

    def __init__(self):
        super().__init__()
        self.stopped = asyncio.Event()

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, BotStartedSpeakingFrame):
            print(f"{time.strftime('%X')} bot started speaking")
        elif isinstance(frame, BotStoppedSpeakingFrame):
            print(f"{time.strftime('%X')} bot stopped speaking")
            self.stopped.set()
        await self.push_frame(frame, direction)


async def main(avatar_path: str, speech_path: str):
    avatar = await LipsyncVideoService(avatar_path).load()
    output = CountingOutput(TransportParams(audio_out_enabled=True, **avatar.transport_params()))
    turns = TurnWatcher()
    worker = PipelineWorker(Pipeline([turns, avatar, output]))

    audio = decode_audio(speech_path)
    pcm = (audio.pcm.mean(axis=0) * 32767).astype(np.int16)
    rate, piece = audio.sample_rate_hz, audio.sample_rate_hz // 5

    @worker.event_handler("on_pipeline_started")
    async def speak(worker, frame):  # what a TTS service pushes for one reply
        await worker.queue_frame(TTSStartedFrame())
        for i in range(0, len(pcm), piece):
            await worker.queue_frame(TTSAudioRawFrame(pcm[i : i + piece].tobytes(), rate, 1))
        await worker.queue_frame(TTSStoppedFrame())
        await turns.stopped.wait()
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()
    print(f"{output.images} avatar frames written, {output.speech_s:.2f} s of lip-synced speech")


if __name__ == "__main__":
    args = sys.argv[1:] + ["media/avatar.jpg", "media/speech.mp3"][len(sys.argv[1:]) :]
    asyncio.run(main(*args[:2]))
