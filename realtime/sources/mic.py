"""A microphone through sounddevice (PortAudio): any device, any native rate.

The PortAudio callback does nothing but copy its buffer and hand it over with a timestamp;
resampling to 16 kHz happens on the engine's side. Overflows (the OS dropped input because we
were late) are counted and reported, never hidden.

When the input goes away mid-run (the audio server dies, the device is unplugged: PortAudio
stops the stream by itself), one line says so and the source keeps the session alive: it
pushes silence at the real-time pace, so idle frames go on and every timeline stays continuous,
and tries to reopen the device every `reopen_every_s`. When it opens again, one line says so and
capture resumes; after `give_up_after_s` without it, MicLost ends the session (exit 1).
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from models.errors import EngineFailure, LipsyncError
from models.quiet import native_stderr_filtered, native_stderr_silenced
from realtime.clock import MediaClock

log = logging.getLogger(__name__)

# What PortAudio's ALSA layer and ALSA itself print when the server behind a stream dies.
NATIVE_NOISE = (b"Expression '", b"ALSA lib ")


class MicLost(EngineFailure):
    """The microphone went away and did not come back in time."""


def _sounddevice():
    try:
        import sounddevice as sd  # sounddevice: needs the PortAudio library; reported here if it is missing
    except (ImportError, OSError) as e:
        raise LipsyncError(
            "--audio mic",
            "PortAudio and the sounddevice package",
            f"{e}".splitlines()[0][:100],
            "install libportaudio2 (Debian/Ubuntu) and pip install sounddevice",
        ) from None
    return sd


def find_input_device(device: str | int | None):
    """Index of an input device by index or by (part of) its name; None = the system default."""
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
    except Exception as e:  # PortAudio raises its own error type when there is no audio system
        devices = []
        err = str(e)
    else:
        err = ""
    inputs = [(i, d) for i, d in enumerate(devices) if d["max_input_channels"] > 0]
    if not inputs:
        raise LipsyncError(
            "--audio mic",
            "a microphone (an audio input device)",
            "no input devices" + (f" ({err[:60]})" if err else ""),
            "plug one in, start PulseAudio/PipeWire, or pass an audio file instead of mic",
        )
    if device is None or device == "":
        return None
    if isinstance(device, int) or str(device).isdigit():
        idx = int(device)
        if any(i == idx for i, _ in inputs):
            return idx
    else:
        for i, d in inputs:
            if str(device).lower() in d["name"].lower():
                return i
    names = ", ".join(f"{i}: {d['name']}" for i, d in inputs)
    raise LipsyncError(
        "--mic-device",
        f"one of the input devices ({names})",
        repr(device),
        "pick one by index or name (see `lipsync devices`)",
    )


class MicSource:
    def __init__(
        self,
        device: str | int | None = None,
        block_ms: int = 20,
        reopen_every_s: float = 1.0,
        give_up_after_s: float = 60.0,
    ):
        self.device = find_input_device(device)
        sd = _sounddevice()
        info = sd.query_devices(self.device, "input")
        self.name = f"mic:{info['name']}"
        self.rate = int(info["default_samplerate"])
        self.block = max(1, self.rate * block_ms // 1000)
        self.reopen_every_s, self.give_up_after_s = reopen_every_s, give_up_after_s
        self.overflows = 0
        self.losses = 0  # times the input went away mid-run
        self.silence_s = 0.0  # pushed in its place
        self._stop = threading.Event()
        self._engine_failed = False
        self.started = threading.Event()  # set once the device is capturing
        self.recovered = threading.Event()  # set each time capture resumes after a loss

    def run(self, push, clock: MediaClock, duration_s: float | None = None) -> None:
        sd = _sounddevice()
        rate = self.rate
        limit = None if duration_s is None else int(duration_s * rate)
        self._sent = 0  # samples pushed: captured, plus silence while the input was gone
        self._push_lock = threading.Lock()
        self._bridging = False
        self._last_audio_ns: int | None = None  # when the last captured block arrived

        def callback(indata, frames, time_info, status):
            if status.input_overflow:
                self.overflows += 1
            now = clock.now_ns()
            try:
                with self._push_lock:  # after a loss: the first real audio ends the silence
                    self._bridging = False
                    push(indata[:, 0].copy(), rate, now, now - frames * 1_000_000_000 // rate)
                    self._sent += frames
                    self._last_audio_ns = now
            except EngineFailure:  # the engine failed; it stops this source itself
                self._engine_failed = True
                raise sd.CallbackAbort from None

        with native_stderr_filtered(NATIVE_NOISE):
            try:
                stream = sd.InputStream(
                    device=self.device,
                    channels=1,
                    samplerate=rate,
                    blocksize=self.block,
                    dtype="float32",
                    callback=callback,
                )
                stream.start()
            except Exception as e:  # PortAudioError: no device, busy, unsupported rate
                raise LipsyncError(
                    "--audio mic",
                    "an input stream that opens",
                    str(e).splitlines()[0][:100],
                    "check the device with `lipsync devices`",
                ) from None
            try:
                self.started.set()
                while self._capture(stream, limit):
                    stream.close()
                    stream = None
                    stream = self._bridge(sd, callback, push, clock, limit)
                    if stream is None:
                        return
            finally:
                if stream is not None:
                    stream.close()

    def _done(self, limit: int | None) -> bool:
        return self._stop.is_set() or self._engine_failed or (limit is not None and self._sent >= limit)

    def _capture(self, stream, limit: int | None) -> bool:
        """Until stopped or the duration is reached (False), or the stream stopped by itself (True)."""
        while not self._stop.wait(0.05):
            if self._done(limit):
                return False
            if not stream.active:
                return not self._done(limit)
        return False

    def _bridge(self, sd, callback, push, clock: MediaClock, limit: int | None):
        """The input is gone: silence at the real-time pace, from where the captured audio ended,
        while reopening, until the reopened stream's first audio arrives. Returns that stream, or
        None once stopped or at the duration; raises MicLost after give_up_after_s."""
        self.losses += 1
        rate, block = self.rate, self.block
        log.warning(
            "%s stopped delivering audio (device or audio server gone); idle frames go on, reopening every %g s",
            self.name,
            self.reopen_every_s,
        )
        lost_ns = clock.now_ns()
        t0 = self._last_audio_ns if self._last_audio_ns is not None else lost_ns
        pushed, silence_before_s = 0, self.silence_s
        next_try_ns = lost_ns + int(self.reopen_every_s * 1e9)
        silence = np.zeros(block, np.float32)
        stream = None
        self._bridging = True
        while not self._done(limit):
            now = clock.now_ns()
            with self._push_lock:
                if not self._bridging:  # the reopened stream delivers: capture takes over
                    return stream
                while (pushed + block) * 1_000_000_000 // rate <= now - t0 and not self._done(limit):
                    push(silence, rate, now, t0 + pushed * 1_000_000_000 // rate)
                    pushed += block
                    self._sent += block
            self.silence_s = silence_before_s + pushed / rate
            if stream is not None and not stream.active:  # opened, then gone again before any audio
                stream.close()
                stream = None
            if stream is None and now >= next_try_ns:
                stream = self._reopen(sd, callback)
                if stream is not None:
                    log.warning("%s is back after %.1f s; capturing again", self.name, (now - lost_ns) / 1e9)
                    self.recovered.set()
                elif (now - lost_ns) / 1e9 >= self.give_up_after_s:
                    raise MicLost(
                        f"{self.name}: no audio input for {self.give_up_after_s:g} s (the device or "
                        "the audio server went away and did not come back); the session stops"
                    )
                next_try_ns = now + int(self.reopen_every_s * 1e9)
            self._stop.wait(block / rate)
        if stream is not None:
            stream.close()
        return None

    def _reopen(self, sd, callback):
        with native_stderr_silenced():  # each failed attempt has ALSA and PortAudio print a few lines
            try:
                stream = sd.InputStream(
                    device=self.device,
                    channels=1,
                    samplerate=self.rate,
                    blocksize=self.block,
                    dtype="float32",
                    callback=callback,
                )
            except Exception:  # PortAudioError: still gone; the next attempt is on schedule
                return None
            try:
                stream.start()
            except Exception:  # opened but cannot run yet
                stream.close()
                return None
        return stream

    def stop(self) -> None:
        self._stop.set()
