"""Silencing native libraries that log straight to file descriptor 2."""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def native_stderr_silenced():
    """Some C++ layers (mediapipe's, OpenCV's video I/O) print INFO and WARN lines to fd 2 that
    would bury our one-line errors and progress bars. Python exceptions still propagate."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
