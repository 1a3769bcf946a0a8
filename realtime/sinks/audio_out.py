"""Audio passthrough: the input sound, delayed to match the video, to an output device.

Beside a virtual webcam this feeds a virtual microphone (e.g. a PulseAudio null sink's
monitor, or VB-Cable / BlackHole), so a call hears the voice in step with the lips. Video
reaches the sink about `delay_ms` after its audio was captured (the mel lookahead plus
processing: ~200 ms measured here), so the sound is held back by the same amount.
"""

from __future__ import annotations

import threading

import numpy as np

from models.errors import LipsyncError
from realtime.frames import AudioChunk, VideoFrame


class AudioOutSink:
    def __init__(self, delay_ms: int = 200, device=None, sample_rate_hz: int = 48_000, buffer_s: float = 4.0):
        self.name = f"audio-out:{device or 'default'}"
        self.delay_ms, self.device, self.rate = delay_ms, device, sample_rate_hz
        self._ring = np.zeros(int(buffer_s * sample_rate_hz), np.float32)
        self._write = int(delay_ms * sample_rate_hz / 1000)  # the delay is a head start of silence
        self._read = 0
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # the device callback frees room
        self._starved = False  # the device ran dry: the next audio gets its head start again
        self.underruns = 0
        self.overruns = 0
        self._stream = None
        self._drained = threading.Event()

    def prepare(self, width: int, height: int) -> None:
        if self._stream is not None:
            return
        try:
            import sounddevice as sd  # sounddevice: needs the PortAudio library; reported here if it is missing
        except (ImportError, OSError) as e:
            raise LipsyncError(
                "--audio-out",
                "PortAudio and sounddevice",
                str(e).splitlines()[0][:80],
                "install libportaudio2 and pip install sounddevice",
            ) from None
        try:
            self._stream = sd.OutputStream(
                device=self.device,
                channels=1,
                samplerate=self.rate,
                dtype="float32",
                blocksize=self.rate // 50,
                callback=self._callback,
            )
        except Exception as e:  # PortAudioError: no such device, unsupported rate
            raise LipsyncError(
                "--audio-out",
                "an output device that opens",
                str(e).splitlines()[0][:100],
                "see `lipsync devices` for output devices",
            ) from None

    def _callback(self, outdata, frames, time_info, status):
        with self._lock:
            avail = self._write - self._read
            n = min(frames, max(0, avail))
            idx = np.arange(self._read, self._read + n) % len(self._ring)
            outdata[:n, 0] = self._ring[idx]
            outdata[n:, 0] = 0
            self._read += n
            if n < frames and self._read > 0:
                if self._closing:
                    self._drained.set()
                elif not self._starved:
                    self.underruns += 1
                    self._starved = True
            self._room.notify_all()

    def send_audio(self, chunk: AudioChunk) -> None:
        """Queue `chunk` behind the delay. A burst larger than the ring waits for the device to
        play (this sink has its own delivery thread) instead of being cut short."""
        if chunk.sample_rate_hz != self.rate:
            raise ValueError(f"AudioOutSink made for {self.rate} Hz audio got {chunk.sample_rate_hz} Hz")
        # Playback starts with the first audio, so the head start of silence is the delay
        # between a sample reaching this sink and it being heard.
        start = self._stream is not None and not self._stream.active and self._read == 0
        pcm = chunk.pcm
        with self._room:
            if self._starved:
                # After an underrun the device is at the writer's position: put the delay back,
                # or the voice would from now on lead the lips by delay_ms.
                self._starved = False
                gap = int(self.delay_ms * self.rate / 1000)
                self._write = max(self._write, self._read)
                self._ring[np.arange(self._write, self._write + gap) % len(self._ring)] = 0
                self._write += gap
            while len(pcm):
                room = len(self._ring) - (self._write - self._read)
                if room == 0:
                    if self._stream is None or not self._stream.active:
                        if start:
                            break  # starts below, then the rest is written
                        self.overruns += 1  # no device is playing: nothing will ever make room
                        return
                    self._room.wait(timeout=0.5)
                    continue
                part, pcm = pcm[:room], pcm[room:]
                idx = np.arange(self._write, self._write + len(part)) % len(self._ring)
                self._ring[idx] = part
                self._write += len(part)
                self._room.notify_all()
        if start:
            self._stream.start()
            if len(pcm):
                self.send_audio(AudioChunk(pcm, chunk.sample_rate_hz, chunk.pts, chunk.arrival_ns))

    def send_video(self, frame: VideoFrame) -> None:
        pass

    _closing = False

    def close(self) -> None:
        """Let the delayed tail play out (bounded by what is queued), then release the device."""
        if self._stream is not None:
            if self._stream.active:
                self._closing = True
                pending_s = (self._write - self._read) / self.rate
                self._drained.wait(timeout=pending_s + 0.5)
            self._stream.stop()
            self._stream.close()
            self._stream = None
