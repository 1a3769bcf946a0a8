"""One thread budget for every pool in the process.

On a 2-core machine the generator's runtime needs both cores for the few milliseconds a frame
takes; every other pool that keeps threads awake takes them away. Measured: numpy's OpenBLAS
pool (woken by the mel stream's matrix products) spinning against OpenVINO's threads turned a
28%-CPU, 0-drop live run into 71% CPU with 79 frames dropped over 2 minutes. So one place
decides: the inference runtime gets the cores, and everything around it (BLAS, OpenCV, video
encoders) runs on the thread that calls it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
from threadpoolctl import threadpool_limits

from export.machine import cores
from models.errors import LipsyncError

# Inference threads instead of one per core: on two cores a pool of two waits on itself (and
# burns CPU doing it); one thread costs the decoder's latency instead. For measuring that trade.
INFERENCE_THREADS_ENV = "LIPSYNC_INFERENCE_THREADS"


@dataclass(frozen=True)
class ThreadBudget:
    inference_threads: int  # the generator's pool (ONNX Runtime intra-op / OpenVINO)
    blas_threads: int = 1  # numpy's BLAS: the mel filterbank, colour matching
    opencv_threads: int = 1  # resize / blur in the compositor
    encoder_threads: int = 1  # per video encoder (libx264 "threads"); 0 lets the encoder decide


_current: ThreadBudget | None = None
_limiter = None  # threadpoolctl keeps its limits while this object lives


def plan(mode: str = "live") -> ThreadBudget:
    """`live`: everything but inference on one thread. `offline`: batches are large and nothing
    is real time, so encoders may use their own threads too."""
    n = _inference_threads(cores())
    if mode == "live":
        return ThreadBudget(inference_threads=n)
    if mode == "offline":
        return ThreadBudget(inference_threads=n, encoder_threads=0)
    raise ValueError(f"mode must be live or offline, not {mode!r}")


def _inference_threads(n_cores: int) -> int:
    """The cores, unless LIPSYNC_INFERENCE_THREADS names a number from 1 to the cores."""
    raw = os.environ.get(INFERENCE_THREADS_ENV, "").strip()
    if not raw:
        return n_cores
    if not raw.isdigit() or not 1 <= int(raw) <= n_cores:
        raise LipsyncError(
            INFERENCE_THREADS_ENV,
            f"a whole number from 1 to {n_cores} (this machine's cores)",
            repr(raw),
            "unset it or fix it",
        )
    return int(raw)


def apply(budget: ThreadBudget) -> ThreadBudget:
    """Impose `budget` on this process's pools (those already loaded and those loaded later)."""
    global _current, _limiter
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(budget.blas_threads)  # for libraries not loaded yet
    _limiter = threadpool_limits(limits=budget.blas_threads, user_api="blas")
    cv2.setNumThreads(budget.opencv_threads)
    _current = budget
    return budget


def current() -> ThreadBudget:
    """The budget in force (the live default when none was applied)."""
    return _current or plan("live")


def encoder_options() -> dict[str, str]:
    """libx264 options for the current budget."""
    n = current().encoder_threads
    return {"threads": str(n)} if n else {}
