"""An avatar's face-encoder features: fp16 on disk, read a frame at a time, a few kept in memory.

The encoder's seven skip tensors are 1.2 MB per avatar frame in fp32: 1.75 GB for a minute of
video if all are held. Here they are computed once, a batch at a time, straight into a file in
the cache (one row per frame, fp16: half the size, and the decoder's output moves by rounding
only; see benchmarks/bench_avatar_memory.py for the measured difference). A frame's row is read
with one positioned read when it is shown and converted to fp32 for the decoder; the last
`cache_frames` stay in memory. The rows are read with `pread` rather than memory-mapped: pages
of a mapped file count in the process's RSS once touched, so a looping avatar would grow to the
whole file; read pages stay in the kernel's page cache, shared and reclaimable.

Values beyond fp16's range (an unusual checkpoint) are stored in fp32 instead, never clipped.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import weakref
from pathlib import Path

import numpy as np

from models.face_input import model_faces

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def _numpy(x) -> np.ndarray:
    """An encoder output as a host array (a GPU run returns device-resident OrtValues)."""
    return x.numpy() if hasattr(x, "numpy") and not isinstance(x, np.ndarray) else np.asarray(x)


class FeatureStore:
    def __init__(self, path: Path, cache_frames: int = 32):
        """Open a complete store (`<path>.npy` + `<path>.json`); raises OSError/ValueError if it is not."""
        self.path = Path(path)
        meta = json.loads(self.meta_path.read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"feature store format {meta.get('format')}, expected {FORMAT_VERSION}")
        self.shapes = [tuple(s) for s in meta["shapes"]]
        self._sizes = [int(np.prod(s)) for s in self.shapes]
        self._fd = os.open(self.data_path, os.O_RDONLY)
        try:
            with open(self.data_path, "rb") as f:
                major, _ = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(f)
                self._offset = f.tell()
            if fortran or len(shape) != 2 or shape[1] != sum(self._sizes):
                raise ValueError(f"feature rows of shape {shape}, expected (frames, {sum(self._sizes)})")
            self.frames, self.dtype = shape[0], np.dtype(dtype)
            self._row_bytes = shape[1] * self.dtype.itemsize
            if os.fstat(self._fd).st_size < self._offset + self.frames * self._row_bytes:
                raise ValueError("feature file shorter than its header says (an interrupted write?)")
        except BaseException:
            os.close(self._fd)
            raise
        # The descriptor is closed with the store, or when it is dropped without close().
        self._closer = weakref.finalize(self, os.close, self._fd)
        self._cache: collections.OrderedDict[int, list[np.ndarray]] = collections.OrderedDict()
        self._capacity = max(1, cache_frames)
        self._lock = threading.Lock()
        self.reads = 0

    @property
    def data_path(self) -> Path:
        return self.path.with_suffix(".npy")

    @property
    def meta_path(self) -> Path:
        return self.path.with_suffix(".json")

    def get(self, i: int) -> list[np.ndarray]:
        """The seven (1, C, H, W) fp32 features of avatar frame `i`."""
        with self._lock:
            hit = self._cache.get(i)
            if hit is not None:
                self._cache.move_to_end(i)
                return hit
        if not 0 <= i < self.frames:
            raise IndexError(i)
        raw = os.pread(self._fd, self._row_bytes, self._offset + i * self._row_bytes)
        if len(raw) != self._row_bytes:
            raise OSError(f"{self.data_path}: short read of frame {i}")
        row = np.frombuffer(raw, self.dtype).astype(np.float32)
        feats, at = [], 0
        for shape, size in zip(self.shapes, self._sizes):
            feats.append(row[at : at + size].reshape(1, *shape))
            at += size
        with self._lock:
            self.reads += 1
            self._cache[i] = feats
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return feats

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
        self._closer()

    # -- building --------------------------------------------------------------------------------
    @classmethod
    def build(cls, path: Path, crops: np.ndarray, encoder, batch: int = 16, cache_frames: int = 32) -> FeatureStore:
        """Encode `crops` (N, 96, 96, 3) a batch at a time into a new store at `path`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # One writer's own names: two threads of a process may build the same store at once
        # (two sessions starting on one avatar). with_suffix would cut the thread id off.
        tmp = f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        data_tmp, meta_tmp = path.with_name(tmp + ".npy"), path.with_name(tmp + ".json")
        try:
            shapes = _write_rows(data_tmp, crops, encoder, batch, np.float16)
            if shapes is None:
                log.info("face features exceed fp16's range: stored in fp32")
                shapes = _write_rows(data_tmp, crops, encoder, batch, np.float32)
            meta_tmp.write_text(json.dumps({"format": FORMAT_VERSION, "shapes": shapes, "frames": len(crops)}))
            # The data first, the metadata last: a store is complete once its .json exists.
            os.replace(data_tmp, path.with_suffix(".npy"))
            os.replace(meta_tmp, path.with_suffix(".json"))
        finally:
            data_tmp.unlink(missing_ok=True)
            meta_tmp.unlink(missing_ok=True)
        return cls(path, cache_frames)


def _write_rows(dest: Path, crops: np.ndarray, encoder, batch: int, dtype) -> list | None:
    """One row per frame into `dest` (.npy); the skip shapes, or None if a value overflows `dtype`."""
    shapes = None
    narrow = np.dtype(dtype) == np.float16
    limit = float(np.finfo(np.float16).max)
    with open(dest, "wb") as f:
        for start in range(0, len(crops), batch):
            parts = [_numpy(p) for p in encoder.encode(model_faces(crops[start : start + batch]))]
            if shapes is None:
                shapes = [[int(d) for d in p.shape[1:]] for p in parts]
                np.lib.format.write_array_header_1_0(
                    f,
                    {
                        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                        "fortran_order": False,
                        "shape": (len(crops), sum(int(np.prod(s)) for s in shapes)),
                    },
                )
            rows = np.concatenate([p.reshape(len(p), -1) for p in parts], axis=1)
            if narrow and not np.all(np.abs(rows) <= limit):  # NaN fails too: nothing silently changed
                return None
            f.write(rows.astype(dtype).tobytes())
    return shapes
