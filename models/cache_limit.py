"""The cache folder's size limit: what its entries are, when each was last used, LRU eviction.

Entries, each removed as a whole:
  exports/<checkpoint>/      one checkpoint's ONNX graphs and precision-ladder records
  avatars/<key>.*            one avatar's face-encoder features, or its face meshes
  detections/<key>.npy       one video's face boxes
`models/` (the face detector) is never evicted: it is what every run needs and cheap to keep.

"Last used" is the entry's modification time, set again whenever it is used (`touch`), since
access times are off or coarse on most mounts. After something is added, `enforce_limit`
removes least recently used entries until the total fits, never one this process has used:
a removed file that another process still has open stays readable to it (POSIX), and a
removed entry is rebuilt on its next use.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from models.errors import LipsyncError
from models.face_model import cache_dir

log = logging.getLogger(__name__)

ENV_LIMIT = "LIPSYNC_CACHE_MAX_MB"
DEFAULT_LIMIT_MB = 4096  # two checkpoints' exports and a few minute-long video avatars
KINDS = ("exports", "avatars", "detections")
STALE_TEMP_S = 3600  # a temp file this old belongs to a run that died

_used: set[Path] = set()
_lock = threading.Lock()


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    paths: tuple[Path, ...]
    size_bytes: int
    last_used_s: float  # epoch seconds

    @property
    def in_use(self) -> bool:
        return any(p in _used for p in self.paths)


def root() -> Path:
    return cache_dir()


def limit_bytes() -> int:
    """$LIPSYNC_CACHE_MAX_MB, else the default; 0 turns eviction off."""
    raw = os.environ.get(ENV_LIMIT, "").strip()
    if not raw:
        return DEFAULT_LIMIT_MB * 1_000_000
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if mb < 0:
        raise LipsyncError(f"${ENV_LIMIT}", "a size in MB (0: no limit)", repr(raw), f"set {ENV_LIMIT}=4096, say")
    return int(mb * 1_000_000)


def touch(path: str | os.PathLike) -> None:
    """Mark an entry's file or folder as used now (and by this process: never evicted by it)."""
    path = Path(path)
    with _lock:
        _used.add(path)
    try:
        os.utime(path)
    except OSError:  # gone or read-only: recency is a hint, never a reason to fail
        pass


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _is_temp(path: Path) -> bool:
    """A file being written (by this or another run): never an entry of its own."""
    n = path.name
    return n.endswith((".tmp", ".partial")) or ".tmp." in n or ".partial." in n


def entries() -> list[Entry]:
    """Every evictable entry, least recently used first."""
    out = []
    base = root()
    for kind in KINDS:
        folder = base / kind
        if not folder.is_dir():
            continue
        groups: dict[str, list[Path]] = {}
        for p in folder.iterdir():
            if _is_temp(p):
                continue
            name = p.name if kind == "exports" else p.name.split(".")[0]
            groups.setdefault(name, []).append(p)
        for name, paths in groups.items():
            try:
                size = sum(_size(p) for p in paths)
                used = max(p.stat().st_mtime for p in paths)
            except FileNotFoundError:  # another process removed it meanwhile
                continue
            out.append(Entry(kind, name, tuple(sorted(paths)), size, used))
    return sorted(out, key=lambda e: e.last_used_s)


def remove(entry: Entry) -> None:
    for p in entry.paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def stale_temps(age_s: float = STALE_TEMP_S) -> list[Path]:
    """Temp files left by runs that died mid-write (older than `age_s`)."""
    now = time.time()
    found = []
    for kind in KINDS:
        folder = root() / kind
        if folder.is_dir():
            for p in folder.rglob("*"):
                try:
                    if _is_temp(p) and now - p.stat().st_mtime > age_s:
                        found.append(p)
                except FileNotFoundError:
                    pass
    return found


def enforce_limit(limit: int | None = None) -> list[Entry]:
    """Remove least recently used entries until the cache fits `limit` bytes; what was removed."""
    limit = limit_bytes() if limit is None else limit
    if limit <= 0:
        return []
    for p in stale_temps():
        p.unlink(missing_ok=True)
    all_entries = entries()
    total = sum(e.size_bytes for e in all_entries)
    removed = []
    for e in all_entries:
        if total <= limit:
            break
        if e.in_use:
            continue
        remove(e)
        total -= e.size_bytes
        removed.append(e)
        log.info(
            "cache over %d MB: removed %s/%s (%.1f MB, unused for %.0f h)",
            limit // 1_000_000,
            e.kind,
            e.name,
            e.size_bytes / 1e6,
            (time.time() - e.last_used_s) / 3600,
        )
    if total > limit:
        log.warning(
            "cache holds %.0f MB in entries this run uses, over its %d MB limit ($%s)",
            total / 1e6,
            limit // 1_000_000,
            ENV_LIMIT,
        )
    return removed


def added(path: str | os.PathLike) -> None:
    """A new entry is complete at `path`: mark it used and make room for it."""
    touch(path)
    try:
        enforce_limit()
    except OSError as e:  # a cache that cannot be trimmed must not stop a run
        log.warning("cache limit not enforced: %s", e)


def save_array(path: Path, array) -> None:
    """Write a new entry holding one numpy array: to a temp file first, so that a reader never
    sees half of it, then in place, marked used, room made for it."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)
    added(path)
