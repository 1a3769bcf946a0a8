"""A full disk under a recording: finish the file instead of losing it.

Once a write fails with ENOSPC, FFmpeg's muxer refuses every later write, the closing index
included, and the whole recording is unplayable. So the recording holds space in reserve: a
file of `reserve_bytes` beside it. The first write that finds the disk full releases the
reserve and completes into that room; `full` then tells the recorder to stop and finalise
(the last fragment and the index fit in what the reserve freed).
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(Exception):
    """The disk filled up under a recording; the message says what was kept and where."""


class ReservedFile:
    """A binary file for PyAV to write through (write / seek / tell), with space held back."""

    def __init__(self, path: str | os.PathLike, reserve_bytes: int):
        self.path = Path(path)
        self._reserve: Path | None = self.path.with_name(self.path.name + ".reserve")
        self.full = False
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self._hold(reserve_bytes)
        except OSError:
            self.close()
            self.path.unlink(missing_ok=True)
            raise

    def _hold(self, n: int) -> None:
        fd = os.open(self._reserve, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            try:
                os.posix_fallocate(fd, 0, n)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                # A file system without fallocate: real blocks, or the reserve would be sparse.
                chunk = b"\0" * (1 << 20)
                for off in range(0, n, len(chunk)):
                    os.write(fd, chunk[: n - off])
        except OSError:
            os.close(fd)
            self._release()
            raise
        os.close(fd)

    def _release(self) -> None:
        if self._reserve is not None:
            self._reserve.unlink(missing_ok=True)
            self._reserve = None

    def write(self, data) -> int:
        view, done = memoryview(data), 0
        while done < len(view):
            try:
                done += os.write(self._fd, view[done:])
            except OSError as e:
                if e.errno not in _FULL or self._reserve is None:
                    raise
                log.debug("%s: disk full after %d bytes; releasing the reserve", self.path, self.tell())
                self._release()
                self.full = True
        return done

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return os.lseek(self._fd, offset, whence)

    def tell(self) -> int:
        return os.lseek(self._fd, 0, os.SEEK_CUR)

    def close(self) -> None:
        """Close the file and give back the reserve (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._release()
