#!/usr/bin/env python3
"""What the once-a-second status line costs after a minute and after a long run.

    python benchmarks/bench_stats.py --json bench-out/stats.json [--frames 1000000]

Fills one `Stats` with a minute's worth of frames (1,500 at 25 fps), times `status_line()`,
`summary()`, the lock hold of a summary (the time the sink thread could be kept waiting) and
`record()`; then records up to `--frames` in total (a run of 11 hours at 25 fps for 1,000,000)
and times them again. Latencies are drawn from a lognormal, so the buckets in use spread as in a
real run. Also reports the memory the latency summaries hold at both points.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import write_json  # noqa: E402
from realtime.stats import Stats  # noqa: E402

FRAME_NS = 40_000_000


def fill(stats: Stats, start: int, n: int, rng) -> int:
    processing = rng.lognormal(3.0, 0.5, n)
    for i in range(n):
        t = (start + i) * FRAME_NS
        stats.record(
            t, t - int(processing[i] * 1e6), t - int((processing[i] + 120) * 1e6), "generated" if i % 5 else "idle"
        )
    return start + n


def timed_ms(fn, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    a = np.array(times)
    return {
        "median": round(float(np.median(a)), 4),
        "p99": round(float(np.percentile(a, 99)), 4),
        "max": round(float(a.max()), 4),
    }


def lock_hold_ms(stats: Stats, repeats: int) -> dict:
    """How long one summary keeps the lock `record` needs: the copy made under it."""

    def under_lock():
        with stats._lock:
            {m: h.copy() for m, h in stats._all.hists.items()}

    return timed_ms(under_lock, repeats)


def measure(stats: Stats, repeats: int) -> dict:
    frames = stats.frames
    stats.status_line()  # first call warms numpy's code paths
    ticks = itertools.count(stats._last_ns + FRAME_NS, FRAME_NS)

    def record():
        t = next(ticks)
        stats.record(t, t - 20_000_000, t - 140_000_000, "generated")

    record_us = timed_ms(record, 2000)
    return {
        "frames": frames,
        "status_line_ms": timed_ms(stats.status_line, repeats),
        "summary_ms": timed_ms(stats.summary, repeats),
        "lock_hold_ms": lock_hold_ms(stats, repeats),
        "record_us": {k: round(v * 1000, 3) for k, v in record_us.items()},
        "summaries_bytes": stats.nbytes,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    stats = Stats()
    n = fill(stats, 0, 1500, rng)
    minute = measure(stats, args.repeats)
    t0 = time.perf_counter()
    fill(stats, n, args.frames - stats.frames, rng)
    fill_s = time.perf_counter() - t0
    long = measure(stats, args.repeats)
    doc = {
        "benchmark": "status line cost vs run length",
        "after_1_minute": minute,
        f"after_{long['frames']}_frames": long,
        "status_line_ratio_long_vs_minute": round(
            long["status_line_ms"]["median"] / minute["status_line_ms"]["median"], 2
        ),
        "record_cost_us_while_filling": round(fill_s / max(1, long["frames"] - minute["frames"]) * 1e6, 2),
    }
    if args.json:
        write_json(doc, args.json)
    else:
        import json

        print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
