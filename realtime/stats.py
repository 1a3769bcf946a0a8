"""Per-frame latency records -> percentiles, JSON, a one-line status and per-interval figures.

Latencies go into fixed-memory histograms (realtime.histogram: percentiles within 1%), two of
each: one for the whole run (`summary`, the status line) and one for the current interval
(`take_interval`, the --stats-jsonl time series), so memory and the cost of a status line stay
the same after a minute or after a week.
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from pathlib import Path

from realtime.frames import FrameKind
from realtime.histogram import LogHistogram
from realtime.stage_timer import StageTimes, between

_METRICS = ("processing", "audio_to_frame", "gap")
# Always reported per interval (0 when absent); further kinds only when seen.
_KINDS = tuple(k.value for k in (FrameKind.GENERATED, FrameKind.IDLE, FrameKind.DROPPED, FrameKind.NO_FACE))


def _round(v):
    return None if v is None else round(float(v), 2)


def _percentiles(h: LogHistogram) -> dict:
    return dict(zip(("p50", "p95", "p99"), map(_round, h.quantiles((0.50, 0.95, 0.99)))))


def _gap_percentiles(h: LogHistogram) -> dict:
    p50, p99 = h.quantiles((0.50, 0.99))
    return {"p50": _round(p50), "p99": _round(p99), "max": _round(h.max if h.count else None)}


def _p50_p95_max(h: LogHistogram) -> dict:
    p50, p95 = h.quantiles((0.50, 0.95))
    return {"p50": _round(p50), "p95": _round(p95), "max": _round(h.max if h.count else None)}


def rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Window:
    """What one interval (or the whole run) accumulates: frame counts by kind and latencies."""

    def __init__(self):
        self.hists = {m: LogHistogram() for m in _METRICS}
        self.kinds: dict[str, int] = {}
        self.frames = 0

    def reset(self) -> None:
        for h in self.hists.values():
            h.reset()
        self.kinds.clear()
        self.frames = 0


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
        self._all, self._win = _Window(), _Window()
        self._first_ns: int | None = None  # accepted_ns of the first and the latest frame recorded
        self._last_ns: int | None = None
        self._cpu0 = time.process_time()
        self._wall0 = time.monotonic()
        # Where the current interval started, and the counters that are bumped from outside
        # (audio_overruns, late) as they stood then.
        self._win_cpu0, self._win_wall0 = self._cpu0, self._wall0
        self._win_overruns0 = self._win_late0 = 0
        self._sections: dict = {}  # name -> callable returning a dict (e.g. per-sink counts)
        # What each stage of the path costs per frame: the session's threads bind this.
        self.stages = StageTimes()
        self._win_stages0: dict | None = None

    def add_section(self, name: str, fn) -> None:
        """Report `fn()` under `name` in every summary; `fn` takes its own locks, not this one's."""
        self._sections[name] = fn

    def record(self, accepted_ns: int, ready_ns: int | None, capture_ns: int | None, kind: FrameKind | str) -> None:
        kind = str(kind)  # the value: counts are keyed (and reported) by plain strings
        with self._lock:
            self.frames += 1
            if kind == FrameKind.GENERATED:
                self.generated += 1
            elif kind == FrameKind.IDLE:
                self.idle += 1
            elif kind == FrameKind.DROPPED:
                self.dropped += 1
            elif kind == FrameKind.NO_FACE:
                self.no_face += 1
            else:
                self.other[kind] = self.other.get(kind, 0) + 1
            w = self._win
            w.frames += 1
            w.kinds[kind] = w.kinds.get(kind, 0) + 1
            values = []
            if self._last_ns is not None:
                values.append(("gap", (accepted_ns - self._last_ns) / 1e6))
            if ready_ns is not None and kind != FrameKind.DROPPED:
                values.append(("processing", (accepted_ns - ready_ns) / 1e6))
            if capture_ns is not None and kind != FrameKind.DROPPED:
                values.append(("audio_to_frame", (accepted_ns - capture_ns) / 1e6))
            for metric, ms in values:
                h = self._all.hists[metric]
                b = h.bucket(ms)
                h.add(ms, b)
                w.hists[metric].add(ms, b)
            self._first_ns = accepted_ns if self._first_ns is None else self._first_ns
            self._last_ns = accepted_ns

    def summary(self) -> dict:
        """The whole run, with the sections added by `add_section`."""
        out = self._summary()
        for name, fn in list(self._sections.items()):
            out[name] = fn()
        return out

    def _summary(self) -> dict:
        """The histograms are copied under the lock (a few KB) and read outside it, so the sink
        thread never waits on a percentile."""
        with self._lock:
            hists = {m: h.copy() for m, h in self._all.hists.items()}
            frames, first, last = self.frames, self._first_ns, self._last_ns
            span_ns = (last - first) if frames > 1 and first is not None and last is not None else 0
            counts = {
                "frames": self.frames,
                "generated": self.generated,
                "idle": self.idle,
                "dropped": self.dropped,
                "no_face": self.no_face,
                "audio_overruns": self.audio_overruns,
            }
            late, other = self.late, dict(self.other)
        span_s = span_ns / 1e9
        wall = max(1e-9, time.monotonic() - self._wall0)
        return {
            "fps_sustained": round((frames - 1) / span_s, 2) if span_s > 0 else None,
            **counts,
            "processing_latency_ms": _percentiles(hists["processing"]),
            "audio_to_frame_ms": _percentiles(hists["audio_to_frame"]),
            "interframe_gap_ms": _gap_percentiles(hists["gap"]),
            **({"late": late} if late else {}),
            **other,
            "cpu_percent": round(100 * (time.process_time() - self._cpu0) / wall / (os.cpu_count() or 1), 1),
            "rss_mb": round(rss_mb(), 1),
            "stages": self.stages.report(frames),
        }

    def take_interval(self) -> dict:
        """Figures for the time since the previous call (or since start), then a fresh interval:
        fps, frames by kind, processing / audio-to-frame latency and inter-frame gap
        percentiles, CPU (% of all cores), RSS and the per-stage costs. Counts are those of the
        interval only."""
        with self._lock:
            w, self._win = self._win, _Window()
            now, cpu = time.monotonic(), time.process_time()
            overruns, late = self.audio_overruns - self._win_overruns0, self.late - self._win_late0
            self._win_overruns0, self._win_late0 = self.audio_overruns, self.late
            wall0, cpu0 = self._win_wall0, self._win_cpu0
            self._win_wall0, self._win_cpu0 = now, cpu
            stages0, stages1 = self._win_stages0, self.stages.snapshot()
            self._win_stages0 = stages1
        span = max(1e-9, now - wall0)
        return {
            "t_s": round(now - self._wall0, 3),
            "interval_s": round(span, 3),
            "fps": round(w.frames / span, 2),
            "frames": w.frames,
            **{k: w.kinds.get(k, 0) for k in _KINDS},
            **{k: n for k, n in w.kinds.items() if k not in _KINDS},
            "late": late,
            "audio_overruns": overruns,
            "processing_ms": _p50_p95_max(w.hists["processing"]),
            "audio_to_frame_ms": _p50_p95_max(w.hists["audio_to_frame"]),
            "interframe_gap_ms": _gap_percentiles(w.hists["gap"]),
            "cpu_percent": round(100 * (cpu - cpu0) / span / (os.cpu_count() or 1), 1),
            "rss_mb": round(rss_mb(), 1),
            "threads": threading.active_count(),  # a leak shows as a count that keeps rising
            "stages": between(stages0, stages1, w.frames),
        }

    @property
    def interval_frames(self) -> int:
        """Frames recorded since the current interval began."""
        return self._win.frames

    @property
    def nbytes(self) -> int:
        """Memory held by the latency summaries: fixed, whatever the run length."""
        return sum(h.nbytes for w in (self._all, self._win) for h in w.hists.values())

    def status_line(self) -> str:
        s = self.summary()
        p = s["processing_latency_ms"]
        if p["p50"] is None and s["interframe_gap_ms"]["p99"] is not None:  # playout: no input latency
            g = s["interframe_gap_ms"]
            return (
                f"{s['fps_sustained'] or 0:5.1f} fps  gap p99 {g['p99']:5.1f} max {g['max']:5.1f} ms  "
                f"speech {s['generated']}  idle {s['idle']}  late {s.get('late', 0)}  cpu {s['cpu_percent']:4.1f}%"
            )
        return (
            f"{s['fps_sustained'] or 0:5.1f} fps  latency p50 {p['p50'] or 0:5.1f} p95 {p['p95'] or 0:5.1f} ms  "
            f"dropped {s['dropped']}  cpu {s['cpu_percent']:4.1f}%"
        )

    def write_json(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.summary(), indent=2) + "\n")
