"""Mel frames computed as audio arrives, equal to `models.mel.melspectrogram` of the same audio.

Each mel frame t is the 800 pre-emphasised samples centred on sample 200*t (reflected at the
start, as the offline STFT pads), so frame t can be computed as soon as sample 200*t + 399 has
arrived, and never changes afterwards. Samples and mel frames live in fixed rings; the DFT is
numpy's FFT into preallocated buffers (no BLAS: a BLAS thread pool woken here would spin
against the generator's threads), so pushing audio allocates nothing that grows with the stream.
"""

from __future__ import annotations

import numpy as np

from models import mel as M
from realtime.stage_timer import Stage, span


class MelStream:
    def __init__(self, max_push_samples: int = 16_000, history_frames: int = 400):
        self._cap = 1 << int(np.ceil(np.log2(max_push_samples + 2 * M.N_FFT)))
        self._ring = np.zeros(self._cap, dtype=np.float64)
        self._n = 0  # samples received (absolute)
        self._prev_x = 0.0
        self.frames_ready = 0
        self._hist = history_frames
        self._mel = np.zeros((M.N_MELS, history_frames), dtype=np.float32)
        k = max_push_samples // M.HOP + 3  # most frames one push can complete
        self._k = k
        self._idx = np.zeros(M.N_FFT, dtype=np.int64)
        self._offsets = np.arange(M.N_FFT, dtype=np.int64)
        self._frames = np.zeros((k, M.N_FFT))
        self._window = M.hann_window()
        self._spec = np.zeros((k, M.N_FFT // 2 + 1), dtype=np.complex128)
        self._re = np.zeros((k, M.N_FFT // 2 + 1))
        self._melbuf = np.zeros((k, M.N_MELS))
        self._basis_t = np.ascontiguousarray(M.mel_basis().T)
        self._max_push = max_push_samples
        self._scratch = np.zeros(max_push_samples, dtype=np.float64)
        self._flushed = False

    @property
    def samples_received(self) -> int:
        return self._n

    def push(self, pcm16k: np.ndarray) -> int:
        """Append mono 16 kHz samples; returns how many mel frames are ready in total."""
        x = np.asarray(pcm16k)
        with span(Stage.MEL):
            for start in range(0, len(x), self._max_push):
                self._append(x[start : start + self._max_push])
                # Frame t is complete once sample 200t+399 exists; the reflected start needs y[400].
                if self._n > M.N_FFT // 2:
                    last = (self._n - M.N_FFT // 2) // M.HOP
                    self._compute(self.frames_ready, last + 1)
        return self.frames_ready

    def flush(self) -> int:
        """End of stream: the last frames, reflected at the end as the offline STFT pads them."""
        if not self._flushed and self._n > M.N_FFT // 2:
            self._compute(self.frames_ready, 1 + self._n // M.HOP, end=self._n)
        self._flushed = True
        return self.frames_ready

    def window(self, start: int, out: np.ndarray | None = None, frames: int = M.WINDOW_FRAMES) -> np.ndarray:
        """Mel frames [start, start + frames) as (80, frames); a negative start is clamped to 0."""
        start = max(0, start)
        if start + frames > self.frames_ready or start < self.frames_ready - self._hist:
            raise IndexError(
                f"mel frames {start}..{start + frames} not available "
                f"(have {max(0, self.frames_ready - self._hist)}..{self.frames_ready})"
            )
        out = np.empty((M.N_MELS, frames), np.float32) if out is None else out
        with span(Stage.MEL):
            cols = np.arange(start, start + frames) % self._hist if start % self._hist + frames > self._hist else None
            if cols is None:
                s = start % self._hist
                out[:] = self._mel[:, s : s + frames]
            else:
                np.take(self._mel, cols, axis=1, out=out)
        return out

    def _append(self, x: np.ndarray) -> None:
        m = len(x)
        if m == 0:
            return
        pos = self._n % self._cap
        first = min(m, self._cap - pos)
        for dst, src_lo, src_hi in ((pos, 0, first), (0, first, m)):
            if src_hi <= src_lo:
                continue
            seg = self._ring[dst : dst + src_hi - src_lo]
            seg[:] = x[src_lo:src_hi]
            prev = self._scratch[: src_hi - src_lo - 1]
            np.multiply(x[src_lo : src_hi - 1], M.PREEMPHASIS, out=prev)
            seg[1:] -= prev
            if src_lo == 0:
                if self._n > 0:
                    seg[0] -= M.PREEMPHASIS * self._prev_x
            else:
                seg[0] -= M.PREEMPHASIS * x[src_lo - 1]
        self._prev_x = float(x[-1])
        self._n += m

    def _compute(self, t0: int, t1: int, end: int | None = None) -> None:
        while t0 < t1:
            k = min(self._k, t1 - t0)
            for i in range(k):
                np.add(self._offsets, (t0 + i) * M.HOP - M.N_FFT // 2, out=self._idx)
                np.abs(self._idx, out=self._idx)  # reflect before the first sample: y[-j] = y[j]
                if end is not None:
                    over = self._idx >= end  # reflect past the last sample
                    self._idx[over] = 2 * (end - 1) - self._idx[over]
                np.remainder(self._idx, self._cap, out=self._idx)
                np.take(self._ring, self._idx, out=self._frames[i])
            fr, spec, re, mel = self._frames[:k], self._spec[:k], self._re[:k], self._melbuf[:k]
            np.multiply(fr, self._window, out=fr)
            np.fft.rfft(fr, axis=1, out=spec)
            np.abs(spec, out=re)
            # 80x401 filterbank: small enough that one BLAS thread (the thread budget) is plenty.
            np.matmul(re, self._basis_t, out=mel)
            np.maximum(mel, 1e-5, out=mel)
            np.log10(mel, out=mel)
            # 20*log10(x) - 20 dB, then map [-100, 0] dB to [-4, 4] and clip, as models.mel does.
            np.multiply(mel, 20.0 * 2 * M.MAX_ABS / -M.MIN_LEVEL_DB, out=mel)
            np.add(mel, (-M.REF_LEVEL_DB - M.MIN_LEVEL_DB) * 2 * M.MAX_ABS / -M.MIN_LEVEL_DB - M.MAX_ABS, out=mel)
            np.clip(mel, -M.MAX_ABS, M.MAX_ABS, out=mel)
            for i in range(k):
                self._mel[:, (t0 + i) % self._hist] = mel[i]
            t0 += k
            self.frames_ready = t0
