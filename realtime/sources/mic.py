"""A microphone through sounddevice (PortAudio): any device, any native rate.

The PortAudio callback does nothing but copy its buffer and hand it over with a timestamp;
resampling to 16 kHz happens on the engine's side. Overflows (the OS dropped input because we
were late) are counted and reported, never hidden.
"""

from __future__ import annotations

import threading

from models.errors import LipsyncError
from realtime.clock import MediaClock


def _sounddevice():
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:
        raise LipsyncError("--audio mic", "PortAudio and the sounddevice package", f"{e}".splitlines()[0][:100],
                           "install libportaudio2 (Debian/Ubuntu) and pip install sounddevice") from None
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
        raise LipsyncError("--audio mic", "a microphone (an audio input device)",
                           "no input devices" + (f" ({err[:60]})" if err else ""),
                           "plug one in, start PulseAudio/PipeWire, or pass an audio file instead of mic")
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
    raise LipsyncError("--mic-device", f"one of the input devices ({names})", repr(device),
                       "pick one by index or name (see `lipsync devices`)")


class MicSource:
    def __init__(self, device: str | int | None = None, block_ms: int = 20):
        self.device = find_input_device(device)
        sd = _sounddevice()
        info = sd.query_devices(self.device, "input")
        self.name = f"mic:{info['name']}"
        self.rate = int(info["default_samplerate"])
        self.block = max(1, self.rate * block_ms // 1000)
        self.overflows = 0
        self._stop = threading.Event()
        self.started = threading.Event()  # set once the device is capturing

    def run(self, push, clock: MediaClock, duration_s: float | None = None) -> None:
        sd = _sounddevice()
        captured = [0]
        rate = self.rate

        def callback(indata, frames, time_info, status):
            if status.input_overflow:
                self.overflows += 1
            now = clock.now_ns()
            push(indata[:, 0].copy(), rate, now, now - frames * 1_000_000_000 // rate)
            captured[0] += frames

        try:
            stream = sd.InputStream(device=self.device, channels=1, samplerate=rate, blocksize=self.block,
                                    dtype="float32", callback=callback)
        except Exception as e:  # PortAudioError: no device, busy, unsupported rate
            raise LipsyncError("--audio mic", "an input stream that opens", str(e).splitlines()[0][:100],
                               "check the device with `lipsync devices`") from None
        with stream:
            self.started.set()
            limit = None if duration_s is None else int(duration_s * rate)
            while not self._stop.wait(0.05):
                if limit is not None and captured[0] >= limit:
                    break

    def stop(self) -> None:
        self._stop.set()
