"""Plays a file through the engine with audio passthrough to the default output, in its own process.

The sink is the real AudioOutSink with one addition: a 10 ms tone written into its head start of
silence, `MARK_BEFORE_MS` before the head start ends. In a recording of the output, the speech
should then begin exactly that long after the tone: the delay as the device played it, measured
within one stream. (Not from the stream's very start: PulseAudio here drops the first 50 to
100 ms a starting stream is given, and two streams started together were placed 100 to 300 ms
apart for the same 200 ms delay, so neither a tone at the start nor a second sink is a reference.)"""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MARK_HZ, MARK_MS, MARK_BEFORE_MS = 1000, 10, 50


def mark(rate_hz: int) -> np.ndarray:
    t = np.arange(rate_hz * MARK_MS // 1000) / rate_hz
    return (0.5 * np.sin(2 * np.pi * MARK_HZ * t)).astype(np.float32)


def main(ckpt: str, photo: str, speech: str, delay_ms: int) -> None:
    from realtime.avatar import AvatarConfig, load_avatar
    from realtime.engine import Engine
    from realtime.generator import RuntimeConfig, load_generator
    from realtime.sinks.audio_out import AudioOutSink
    from realtime.sinks.base import NullSink
    from realtime.sources.file import FileSource

    class MarkedHeadStart(AudioOutSink):
        def send_audio(self, chunk):
            if self._stream is not None and not self._stream.active and self._read == 0:  # it starts now
                tone = mark(self.rate)
                at = (delay_ms - MARK_BEFORE_MS) * self.rate // 1000  # where the nominal head start puts it
                self._ring[at : at + len(tone)] = tone
            super().send_audio(chunk)  # the audio goes after the sink's own head start, over the tone if short

    assert delay_ms > MARK_BEFORE_MS
    gen = load_generator(ckpt, RuntimeConfig(runtime="openvino", precision="int8"), split=True)
    avatar = load_avatar(AvatarConfig(photo))
    avatar.attach_features(gen, "passthrough-test")
    out = MarkedHeadStart(delay_ms)
    summary = Engine(avatar, gen, [NullSink(), out]).run(FileSource(speech))
    print(json.dumps({"frames": summary["frames"], "underruns": out.underruns, "overruns": out.overruns}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
