"""An audio file played into the engine as if it were a microphone: paced by the clock."""

from __future__ import annotations

import threading

from mediaio.audio import decode_audio
from realtime.clock import MediaClock


class FileSource:
    """Decodes once (any container PyAV reads), then releases `block_ms` chunks when the clock
    reaches each chunk's end time; with `loop`, starts over at the end until stopped."""

    def __init__(self, path: str, block_ms: int = 20, loop: bool = False):
        self.name = f"file:{path}"
        self.pcm = decode_audio(path).mono_16k()
        self.block = 16 * block_ms
        self.loop = loop
        self._stop = threading.Event()

    def run(self, push, clock: MediaClock, duration_s: float | None = None) -> None:
        """Calls `push(pcm, sample_rate_hz, arrival_ns, capture_ns)` per chunk until done or stopped."""
        t0 = clock.now_ns()
        sent = 0
        limit = None if duration_s is None else int(duration_s * 16000)
        while not self._stop.is_set():
            pos = sent % len(self.pcm) if self.loop else sent
            if pos >= len(self.pcm) or (limit is not None and sent >= limit):
                break
            n = min(self.block, len(self.pcm) - pos)
            if limit is not None:
                n = min(n, limit - sent)
            end_ns = t0 + (sent + n) * 1_000_000_000 // 16000
            clock.sleep_until_ns(end_ns)
            push(self.pcm[pos : pos + n], 16000, clock.now_ns(), t0 + sent * 1_000_000_000 // 16000)
            sent += n

    def stop(self) -> None:
        self._stop.set()
