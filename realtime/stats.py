"""Per-frame latency records -> percentiles, JSON and a one-line status."""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from pathlib import Path

import numpy as np


def _percentiles(values) -> dict:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    a = np.asarray(values, dtype=np.float64)
    return {k: round(float(np.percentile(a, q)), 2) for k, q in (("p50", 50), ("p95", 95), ("p99", 99))}


def _gap_percentiles(values) -> dict:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    a = np.asarray(values, dtype=np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 2), "p99": round(float(np.percentile(a, 99)), 2),
            "max": round(float(a.max()), 2)}


def rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stats:
    """Thread-safe; `record` is called by the sink thread once per frame a sink accepted."""

    def __init__(self):
        self._lock = threading.Lock()
        self.frames = 0
        self.generated = 0
        self.idle = 0
        self.dropped = 0
        self.no_face = 0
        self.audio_overruns = 0
        self.late = 0  # playout: ticks whose speech frame was not made in time (previous frame held)
        self.other: dict[str, int] = {}  # further frame kinds (playout: crossfade, held)
        self._gaps_ms: list[float] = []
        self._processing_ms: list[float] = []
        self._audio_to_frame_ms: list[float] = []
        self._first_ns = self._last_ns = None
        self._cpu0 = time.process_time()
        self._wall0 = time.monotonic()
        self._sections: dict = {}  # name -> callable returning a dict (e.g. per-sink counters)

    def add_section(self, name: str, fn) -> None:
        """Report `fn()` under `name` in every summary; `fn` takes its own locks, not this one's."""
        self._sections[name] = fn

    def record(self, accepted_ns: int, ready_ns: int | None, capture_ns: int | None, kind: str) -> None:
        with self._lock:
            self.frames += 1
            if kind == "generated":
                self.generated += 1
            elif kind == "idle":
                self.idle += 1
            elif kind == "dropped":
                self.dropped += 1
            elif kind == "no_face":
                self.no_face += 1
            else:
                self.other[kind] = self.other.get(kind, 0) + 1
            if self._last_ns is not None:
                self._gaps_ms.append((accepted_ns - self._last_ns) / 1e6)
            if ready_ns is not None and kind != "dropped":
                self._processing_ms.append((accepted_ns - ready_ns) / 1e6)
            if capture_ns is not None and kind != "dropped":
                self._audio_to_frame_ms.append((accepted_ns - capture_ns) / 1e6)
            self._first_ns = accepted_ns if self._first_ns is None else self._first_ns
            self._last_ns = accepted_ns

    def summary(self) -> dict:
        out = self._summary()
        for name, fn in list(self._sections.items()):
            out[name] = fn()
        return out

    def _summary(self) -> dict:
        with self._lock:
            span_s = ((self._last_ns - self._first_ns) / 1e9) if self.frames > 1 else 0.0
            wall = max(1e-9, time.monotonic() - self._wall0)
            return {
                "fps_sustained": round((self.frames - 1) / span_s, 2) if span_s > 0 else None,
                "frames": self.frames, "generated": self.generated, "idle": self.idle,
                "dropped": self.dropped, "no_face": self.no_face, "audio_overruns": self.audio_overruns,
                "processing_latency_ms": _percentiles(self._processing_ms),
                "audio_to_frame_ms": _percentiles(self._audio_to_frame_ms),
                "interframe_gap_ms": _gap_percentiles(self._gaps_ms),
                **({"late": self.late} if self.late else {}),
                **{k: v for k, v in self.other.items()},
                "cpu_percent": round(100 * (time.process_time() - self._cpu0) / wall / (os.cpu_count() or 1), 1),
                "rss_mb": round(rss_mb(), 1),
            }

    def status_line(self) -> str:
        s = self.summary()
        p = s["processing_latency_ms"]
        if p["p50"] is None and s["interframe_gap_ms"]["p99"] is not None:  # playout: no input latency
            g = s["interframe_gap_ms"]
            return (f"{s['fps_sustained'] or 0:5.1f} fps  gap p99 {g['p99']:5.1f} max {g['max']:5.1f} ms  "
                    f"speech {s['generated']}  idle {s['idle']}  late {s.get('late', 0)}  cpu {s['cpu_percent']:4.1f}%")
        return (f"{s['fps_sustained'] or 0:5.1f} fps  latency p50 {p['p50'] or 0:5.1f} p95 {p['p95'] or 0:5.1f} ms  "
                f"dropped {s['dropped']}  cpu {s['cpu_percent']:4.1f}%")

    def write_json(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.summary(), indent=2) + "\n")
