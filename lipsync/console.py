"""What a command-line run shows on the terminal: log records, one short line each, and the
status line that a carriage return rewrites in place.

Library modules only log (one logger each, never a handler); a program sets logging up once,
here. The level chosen applies to this project's loggers only: everyone else's stay at WARNING,
so `-v` shows this project's debug lines rather than every dependency's.
"""

from __future__ import annotations

import logging
import sys
import threading

FORMAT = "%(levelname)s %(name)s: %(message)s"
PACKAGES = ("lipsync", "realtime", "export", "mediaio", "models", "inference")  # this project's top-level names


class StatusLine:
    """One line on stderr, rewritten in place and left without a newline until `end`. A log
    record written meanwhile ends it first, so a warning never runs on from the figures."""

    def __init__(self):
        self._lock = threading.Lock()
        self._open = False

    def show(self, text: str) -> None:
        with self._lock:
            sys.stderr.write(f"\r{text}")
            sys.stderr.flush()
            self._open = True

    def end(self) -> None:
        with self._lock:
            if self._open:
                sys.stderr.write("\n")
                sys.stderr.flush()
                self._open = False


STATUS = StatusLine()


class _Handler(logging.StreamHandler):
    def __init__(self, status: StatusLine):
        super().__init__(sys.stderr)
        self._status = status

    def emit(self, record: logging.LogRecord) -> None:
        self._status.end()
        super().emit(record)


def configure_logging(level: int = logging.INFO, status: StatusLine = STATUS) -> None:
    """Records of this project's loggers at `level` and above, and of any other at WARNING and
    above, to stderr in FORMAT. Calling it again replaces the earlier set-up."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    handler = _Handler(status)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    for name in PACKAGES:
        logging.getLogger(name).setLevel(level)
