"""Content hashes used as cache keys (ONNX exports, face detections, avatar caches)."""

from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()
