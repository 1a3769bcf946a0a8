"""A Pipecat bot whose face is this engine's avatar.

    pip install 'lipsync-rt[pipecat]'
    python examples/pipecat_avatar.py

Put LipsyncVideoService right after your TTS service, before the output transport (with
video_out_enabled and video_out_width/height set to the avatar's size). Here a TTS stand-in
reads a sentence from a file so the example runs without any service keys; the output frames
are counted instead of sent to a transport.
"""

import asyncio

import numpy as np
from pipecat.frames.frames import (
    OutputAudioRawFrame,
    OutputImageRawFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.tests.utils import SleepFrame, run_test

from lipsync.integrations.pipecat import LipsyncVideoService
from mediaio.audio import decode_audio


async def main():
    audio = decode_audio("media/speech.mp3")
    pcm = (audio.pcm.mean(axis=0) * 32767).astype(np.int16)
    rate, piece = audio.sample_rate_hz, audio.sample_rate_hz // 5
    frames = (
        [TTSStartedFrame()]
        + [TTSAudioRawFrame(pcm[i : i + piece].tobytes(), rate, 1) for i in range(0, len(pcm), piece)]
        + [TTSStoppedFrame(), SleepFrame(1.0)]
    )
    down, _ = await run_test(LipsyncVideoService("media/avatar.jpg"), frames_to_send=frames, expected_down_frames=None)
    images = sum(isinstance(f, OutputImageRawFrame) for f in down)
    seconds = sum(len(f.audio) // 2 for f in down if isinstance(f, OutputAudioRawFrame)) / 48000
    print(f"{images} avatar frames, {seconds:.2f} s of lip-synced speech")


if __name__ == "__main__":
    asyncio.run(main())
