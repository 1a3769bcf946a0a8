"""Fixed-memory latency summaries: counts in geometric buckets instead of every sample.

A live session runs for days; keeping each frame's latency grows without bound (~140 MB a day at
25 fps) and a percentile over all of it costs more every second. Here bucket k holds the values
in (g^(k-1), g^k] with g = (1 + e) / (1 - e); answering a bucket's values with 2 g^k / (g + 1)
is off by at most the fraction e of any value in it. So a percentile comes out within relative
error e of the one numpy computes over the kept samples (its linear interpolation between two
neighbouring samples included: the same interpolation between two answers that are each within
e stays within e), while the memory is one counter per bucket, fixed when it is made: with the
defaults (e = 1%, 1 µs to 1000 s in milliseconds) ~1,040 counters, 8 KB.

Values at or below `min_value` (0, clock jitter making a difference negative) share one bucket
and values above `max_value` another; those are answered with the exact smallest and largest
values seen, which are kept as they are, with the count and the sum.
"""

from __future__ import annotations

import array
import math
import sys

import numpy as np


class LogHistogram:
    def __init__(self, relative_error: float = 0.01, min_value: float = 1e-3, max_value: float = 1e6):
        if not 0 < relative_error < 1 or not 0 < min_value < max_value:
            raise ValueError("need 0 < relative_error < 1 and 0 < min_value < max_value")
        self.relative_error, self.min_value, self.max_value = relative_error, min_value, max_value
        self._gamma = (1 + relative_error) / (1 - relative_error)
        self._log_gamma = math.log(self._gamma)
        self._first = math.ceil(math.log(min_value) / self._log_gamma)  # bucket k of counts[1]
        n = math.ceil(math.log(max_value) / self._log_gamma) - self._first + 1
        # A stdlib array of int64: adding one costs ~60 ns where a numpy element costs ~120 ns
        # (the sink thread adds per frame), and numpy reads it without a copy for percentiles.
        self.counts = array.array("q", bytes(8 * (n + 2)))  # [0]: <= min_value; [-1]: > max_value
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def bucket(self, value: float) -> int:
        if value <= self.min_value:
            return 0
        if value > self.max_value:
            return len(self.counts) - 1
        return min(math.ceil(math.log(value) / self._log_gamma) - self._first + 1, len(self.counts) - 2)

    def add(self, value: float, bucket: int | None = None) -> None:
        """`bucket`: `self.bucket(value)` when the caller has it already (from a twin histogram)."""
        value = float(value)
        self.counts[self.bucket(value) if bucket is None else bucket] += 1
        self.count += 1
        self.total += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def reset(self) -> None:
        self.counts = array.array("q", bytes(8 * len(self.counts)))
        self.count, self.total, self.min, self.max = 0, 0.0, math.inf, -math.inf

    def copy(self) -> LogHistogram:
        other = LogHistogram.__new__(LogHistogram)
        other.__dict__.update(self.__dict__)
        other.counts = self.counts[:]
        return other

    def merge(self, other: LogHistogram) -> None:
        if len(other.counts) != len(self.counts) or other._gamma != self._gamma:
            raise ValueError("histograms with different buckets cannot be merged")
        merged = np.frombuffer(self.counts, np.int64) + np.frombuffer(other.counts, np.int64)
        self.counts = array.array("q", merged.tobytes())
        self.count += other.count
        self.total += other.total
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)

    def _value_of(self, bucket: int) -> float:
        if bucket == 0:
            return self.min
        if bucket == len(self.counts) - 1:
            return self.max
        k = bucket - 1 + self._first
        return 2 * self._gamma**k / (self._gamma + 1)

    def quantiles(self, qs) -> list[float | None]:
        """Values at fractions `qs` (0..1), as numpy.percentile(..., 100 * q) would give them
        (linear between neighbouring ranks), within `relative_error`; None when empty."""
        if self.count == 0:
            return [None for _ in qs]
        cum = np.cumsum(np.frombuffer(self.counts, np.int64))
        out = []
        for q in qs:
            rank = min(max(q, 0.0), 1.0) * (self.count - 1)
            lo = int(math.floor(rank))
            b_lo, b_hi = np.searchsorted(cum, [lo + 1, min(lo + 2, self.count)])
            v_lo, v_hi = self._value_of(int(b_lo)), self._value_of(int(b_hi))
            v = v_lo + (rank - lo) * (v_hi - v_lo)
            out.append(min(max(v, self.min), self.max))
        return out

    def quantile(self, q: float) -> float | None:
        return self.quantiles([q])[0]

    @property
    def nbytes(self) -> int:
        """Memory held by the counts: fixed when the histogram is made."""
        return sys.getsizeof(self.counts)
