"""`--stats-jsonl`: one JSON line per interval while a live session runs.

Cumulative figures hide when a run went bad (19 drops clustered in two minutes of a 19-minute
soak looked like a steady trickle). Each line holds one interval only: `Stats.take_interval()`
(fps, frames by kind, latency percentiles, CPU, RSS) plus what the engine reports through
`probe()` (queue depths, A/V offset at the sinks, per-sink counts). Lines are written whole and
flushed, so a run that dies leaves every interval up to the last one readable.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass

from models.errors import LipsyncError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StatsLogConfig:
    interval_s: float = 10.0  # one line per this much wall time; the last, partial one at the end


class StatsLog:
    def __init__(self, path: str | os.PathLike, cfg: StatsLogConfig = StatsLogConfig()):
        """Opens (truncates) `path` now, so that a bad path fails before the session starts."""
        if not cfg.interval_s > 0:
            raise LipsyncError(
                "--stats-interval", "a positive number of seconds", f"{cfg.interval_s:g}", "give e.g. 10"
            )
        self.path, self.cfg = os.fspath(path), cfg
        try:
            self._f = open(self.path, "w", encoding="utf-8")
        except OSError as e:
            raise LipsyncError(
                "--stats-jsonl",
                "a writable file path",
                f"{e.strerror} ({self.path})",
                "give a path in an existing, writable folder",
            ) from None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stats = self._probe = None
        self.lines = 0

    def start(self, stats, probe=None) -> StatsLog:
        """Begin the first interval now (what came before, e.g. model loading, is not counted)."""
        self._stats, self._probe = stats, probe
        stats.take_interval()
        self._thread = threading.Thread(target=self._run, name="stats-jsonl", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + self.cfg.interval_s
        while not self._stop.wait(max(0.0, deadline - time.monotonic())):
            # Deadlines on a fixed grid: a slow write does not push every later line back.
            deadline += self.cfg.interval_s
            self._write()

    def _write(self) -> None:
        if self._f.closed:
            return
        line = {"time_unix_s": round(time.time(), 3), **self._stats.take_interval()}
        if self._probe is not None:
            line.update(self._probe())
        try:
            self._f.write(json.dumps(line) + "\n")
            self._f.flush()
        except OSError as e:  # a full disk ends the log, never the live session
            log.warning("stats: writing %s failed (%s); no more interval lines", self.path, e.strerror)
            try:
                self._f.close()
            except OSError:  # the close flushes the same failed buffer again
                pass
            return
        self.lines += 1

    def abandon(self) -> None:
        """The session never started: close and remove the (still empty) file."""
        self._f.close()
        if self._thread is None and not self.lines:
            os.unlink(self.path)

    def close(self) -> None:
        """Stop, write the last (partial) interval and close the file."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            if self._stats.interval_frames:  # so that the lines add up to the whole run
                self._write()
        if not self._f.closed:
            self._f.close()
            log.info("stats: %d interval lines in %s", self.lines, self.path)
