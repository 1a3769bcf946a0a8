"""A Pipecat processor that turns TTS audio into a lip-synced avatar (extra `pipecat`).

Place it after the TTS service. It takes TTSAudioRawFrame (and keeps it: the audio goes out again
paired with the frames made from it), TTSStoppedFrame (end of an utterance) and InterruptionFrame
(barge-in), and pushes downstream, once per output frame, an OutputImageRawFrame marked
`sync_with_audio` followed by that frame's 40 ms of OutputAudioRawFrame while speaking, or an
idle image alone while silent. Everything else passes through unchanged.
"""

from __future__ import annotations

import asyncio

import numpy as np
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from realtime.config import EngineConfig
from realtime.live import build_playout
from realtime.playout import PlayoutItem, SegmentEnd


class LipsyncVideoService(FrameProcessor):
    def __init__(
        self,
        avatar: str,
        checkpoint: str | None = None,
        *,
        engine: str = "auto",
        runtime=None,
        cfg=None,
        pcfg=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._spec = dict(avatar=avatar, checkpoint=checkpoint, engine=engine, runtime=runtime, cfg=cfg, pcfg=pcfg)
        self._playout = None
        self._pump: asyncio.Task | None = None

    async def _start(self) -> None:
        s = self._spec
        # Loading the avatar (and, on first use, exporting a checkpoint) takes a while: off the loop.
        self._playout = await asyncio.to_thread(
            build_playout,
            s["avatar"],
            [],
            s["checkpoint"],
            s["runtime"],
            s["cfg"] or EngineConfig(),
            s["pcfg"],
            engine=s["engine"],
        )
        self._playout.start()
        self._pump = self.create_task(self._forward_output(), "lipsync-output")

    async def _stop(self) -> None:
        if self._pump is not None:
            await self.cancel_task(self._pump)
            self._pump = None
        if self._playout is not None:
            pl, self._playout = self._playout, None
            await asyncio.to_thread(pl.stop)

    async def process_frame(self, frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self._start()
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSAudioRawFrame):
            pcm = np.frombuffer(frame.audio, np.int16).reshape(-1, frame.num_channels)
            await self._playout.apush_audio(pcm, frame.sample_rate)
        elif isinstance(frame, TTSStoppedFrame):
            self._playout.end_segment()
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            if self._playout is not None:
                self._playout.interrupt()
            await self.push_frame(frame, direction)
        elif isinstance(frame, (EndFrame, CancelFrame)):
            if isinstance(frame, EndFrame) and self._playout is not None:
                # Let what was said finish playing before the pipeline ends.
                await asyncio.to_thread(self._playout.wait_idle, 30.0)
            await self._stop()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def _forward_output(self) -> None:
        pl = self._playout
        async for item in pl:
            if isinstance(item, SegmentEnd) or not isinstance(item, PlayoutItem):
                continue
            bgr = item.video.bgr
            image = OutputImageRawFrame(
                image=bgr[:, :, ::-1].tobytes(), size=(bgr.shape[1], bgr.shape[0]), format="RGB"
            )
            speaking = item.video.meta.get("segment") is not None
            if speaking:
                image.sync_with_audio = True  # shown once the audio before it has played
            await self.push_frame(image)
            if speaking:
                pcm16 = (np.clip(item.audio.pcm, -1, 1) * 32767).round().astype(np.int16)
                await self.push_frame(
                    OutputAudioRawFrame(audio=pcm16.tobytes(), sample_rate=item.audio.sample_rate_hz, num_channels=1)
                )
