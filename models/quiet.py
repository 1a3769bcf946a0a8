"""Silencing native libraries that log straight to file descriptor 2."""

from __future__ import annotations

import contextlib
import os
import sys
import threading


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


@contextlib.contextmanager
def native_stderr_filtered(drop_prefixes: tuple[bytes, ...]):
    """While inside, lines written to file descriptor 2 that start with one of `drop_prefixes`
    are dropped; everything else passes through as it comes (a status line ending in no newline
    too). For C libraries that print diagnostics from their own threads at moments no
    `native_stderr_silenced` can surround (PortAudio when an audio server dies)."""
    sys.stderr.flush()
    real = os.dup(2)
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)

    def may_become_dropped(tail: bytes) -> bool:
        return any(p.startswith(tail) or tail.startswith(p) for p in drop_prefixes)

    def write_all(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(real, view) :]

    def pump():
        pending = b""
        try:
            while True:
                data = os.read(r, 65536)
                if not data:
                    break
                pending += data
                out = []
                while (nl := pending.find(b"\n")) >= 0:
                    line, pending = pending[: nl + 1], pending[nl + 1 :]
                    if not line.lstrip(b"\r").startswith(drop_prefixes):
                        out.append(line)
                if pending and not may_become_dropped(pending.lstrip(b"\r")):
                    out.append(pending)
                    pending = b""
                if out:
                    write_all(b"".join(out))
            if pending:
                write_all(pending)
        except OSError:  # the real stderr went away; nothing left to print to
            pass
        finally:
            os.close(r)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # closes the pipe's last write end (unless a child process still holds one)
        thread.join(timeout=1.0)
        if not thread.is_alive():  # else a child process still holds the pipe: leave `real` to the pump
            os.close(real)
