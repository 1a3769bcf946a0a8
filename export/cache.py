"""Exports on disk, keyed by checkpoint content hash + variant + precision.

The first use of a `.pth` exports and verifies (a few seconds, progress shown); later starts
find the files and only hash the checkpoint. Nothing unverified is ever at a final path: each
graph is written to a temp name, checked against torch, then renamed. An entry whose embedded
source hash differs from the checkpoint's is never used.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path

from export.metadata import decoder_variant, read_metadata
from export.quantize import build_reduced
from models import cache_limit
from models.errors import LipsyncError
from models.face_model import cache_dir
from models.hashing import sha256_file

log = logging.getLogger(__name__)

# "encoder": the face encoder alone, all a caller needs to learn the model's face size (the split
# layout's decoder for the rows it shows comes later, from the ladder).
LAYOUTS = ("full", "split", "encoder")


def graphs(layout: str, first_row: int = 0) -> tuple[str, ...]:
    """Graph variants of a layout; `first_row` > 0 picks the row-cropped decoder (split only)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    if layout == "encoder":
        return ("face_encoder",)
    if layout == "full":
        if first_row:
            raise ValueError("the full graph always computes every row; use the split layout")
        return ("full",)
    return ("face_encoder", decoder_variant(first_row))


def cache_root() -> Path:
    return cache_dir() / "exports"


def entry_dir(sha: str) -> Path:
    return cache_root() / sha[:24]


def entry_paths(sha: str, layout: str, precision: str = "fp32", first_row: int = 0) -> dict[str, Path]:
    d = entry_dir(sha)
    return {g: d / f"{g}-{precision}.onnx" for g in graphs(layout, first_row)}


def _valid(path: Path, sha: str, precision: str) -> bool:
    if not path.is_file():
        return False

    try:
        meta = read_metadata(path)
    except Exception:  # unreadable: treat as absent and rebuild
        return False
    return meta.get("lipsync.source_sha256") == sha and meta.get("lipsync.precision") == precision


def build(checkpoint: str | os.PathLike, sha: str, graphs, paths: dict[str, Path], face_size_px: int = 0) -> None:
    """Export, verify and move into place; on any failure, leave no file behind."""
    from export.onnx import export_variant, verify  # torch: only when a graph must be exported; a warm cache needs none
    from models.checkpoint import load_torch_generator

    net = load_torch_generator(checkpoint, face_size_px)
    for i, g in enumerate(graphs, 1):
        final = paths[g]
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.partial")
        log.info(f"exporting {Path(checkpoint).name} -> ONNX [{i}/{len(graphs)}] {g} ...")
        try:
            export_variant(net, g, tmp, sha)
            rel = verify(net, g, tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        log.info(f"  verified against torch: worst difference {rel:.1e} of the output's magnitude")


def checkpoint_sha256(checkpoint: str | os.PathLike, face_size_px: int = 0) -> str:
    """The key of a checkpoint's cache entry: its content hash, or with a face size given (the SAM
    layout's, which its weights do not fix) the hash of both. A missing file is the user's to fix."""
    if not Path(checkpoint).is_file():
        raise LipsyncError(
            f"checkpoint {checkpoint}",
            "a .pth file",
            "no such file",
            "check the path, or put the file in checkpoints/ (see checkpoints/README.md)",
        )
    st = os.stat(checkpoint)
    sha = _content_sha256(str(Path(checkpoint).resolve()), (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return hashlib.sha256(f"{sha}:face_size={face_size_px}".encode()).hexdigest() if face_size_px else sha


@functools.lru_cache(maxsize=16)
def _content_sha256(path: str, version: tuple[int, int, int, int]) -> str:
    """A start asks for the key several times (the face size, the ladder's lookup, the exports):
    hash a file once per version of it (~0.2 s for 145 MB); `version` is its inode, size, mtime and
    ctime, so a file replaced or rewritten is hashed again."""
    return sha256_file(path)


def exported(sha: str, layout: str, precision: str = "fp32", first_row: int = 0) -> dict[str, Path] | None:
    """Paths of the verified graphs when every one is already in the cache, else None; never
    exports (no torch): for a caller that builds elsewhere when something is missing."""
    paths = entry_paths(sha, layout, precision, first_row)
    if not all(_valid(p, sha, precision) for p in paths.values()):
        return None
    cache_limit.touch(entry_dir(sha))
    return paths


def ensure_exported(
    checkpoint: str | os.PathLike,
    layout: str = "full",
    precision: str = "fp32",
    first_row: int = 0,
    sha: str | None = None,
    face_size_px: int = 0,
) -> dict[str, Path]:
    """Paths of verified ONNX graphs for `checkpoint`, exporting them first if needed. `sha`: the
    checkpoint's key (`checkpoint_sha256`) when the caller has it (hashing 145 MB takes half a
    second). `face_size_px`: the SAM layout's face size (0 for the other layouts)."""
    checkpoint = Path(checkpoint)
    sha = sha or checkpoint_sha256(checkpoint, face_size_px)
    paths = entry_paths(sha, layout, precision, first_row)
    missing = [g for g, p in paths.items() if not _valid(p, sha, precision)]
    if missing:
        if precision == "fp32":
            build(checkpoint, sha, missing, paths, face_size_px)
        else:
            fp32 = ensure_exported(checkpoint, layout, "fp32", first_row, sha, face_size_px)
            build_reduced(fp32, sha, precision, paths, checkpoint=checkpoint, face_size_px=face_size_px)
        cache_limit.added(entry_dir(sha))  # the entry grew: make room (never by removing this one)
    else:
        cache_limit.touch(entry_dir(sha))
    return paths
