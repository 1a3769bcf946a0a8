"""Exports on disk, keyed by checkpoint content hash + variant + precision.

The first use of a `.pth` exports and verifies (a few seconds, progress shown); later starts
find the files and only hash the checkpoint. Nothing unverified is ever at a final path: each
graph is written to a temp name, checked against torch, then renamed. An entry whose embedded
source hash differs from the checkpoint's is never used.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from models.errors import LipsyncError
from models.hashing import sha256_file

GRAPHS = {"full": ("full",), "split": ("face_encoder", "decoder")}


def cache_root() -> Path:
    from models.face_model import cache_dir

    return cache_dir() / "exports"


def entry_paths(sha: str, layout: str, precision: str = "fp32") -> dict[str, Path]:
    d = cache_root() / sha[:24]
    return {g: d / f"{g}-{precision}.onnx" for g in GRAPHS[layout]}


def _valid(path: Path, sha: str, precision: str) -> bool:
    if not path.is_file():
        return False
    from export.metadata import read_metadata

    try:
        meta = read_metadata(path)
    except Exception:  # unreadable: treat as absent and rebuild
        return False
    return meta.get("lipsync.source_sha256") == sha and meta.get("lipsync.precision") == precision


def build(checkpoint: str | os.PathLike, sha: str, graphs, paths: dict[str, Path], log=print) -> None:
    """Export, verify and move into place; on any failure, leave no file behind."""
    from export.onnx import export_variant, verify
    from models.checkpoint import load_generator

    net = load_generator(checkpoint)
    for i, g in enumerate(graphs, 1):
        final = paths[g]
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.partial")
        log(f"exporting {Path(checkpoint).name} -> ONNX [{i}/{len(graphs)}] {g} ...")
        try:
            export_variant(net, g, tmp, sha)
            err = verify(net, g, tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        log(f"  verified against torch: max abs diff {err:.2e}")


def ensure_exported(checkpoint: str | os.PathLike, layout: str = "full", precision: str = "fp32",
                    log=None) -> dict[str, Path]:
    """Paths of verified ONNX graphs for `checkpoint`, exporting them first if needed."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise LipsyncError(f"checkpoint {checkpoint}", "a .pth file", "no such file",
                           "check the path, or put the file in checkpoints/ (see checkpoints/README.md)")
    if layout not in GRAPHS:
        raise ValueError(f"layout must be one of {sorted(GRAPHS)}")
    sha = sha256_file(checkpoint)
    paths = entry_paths(sha, layout, precision)
    missing = [g for g, p in paths.items() if not _valid(p, sha, precision)]
    if missing:
        if precision == "fp32":
            build(checkpoint, sha, missing, paths, log)
        else:
            from export.quantize import build_reduced

            fp32 = ensure_exported(checkpoint, layout, "fp32", log)
            build_reduced(fp32, sha, precision, paths, log, checkpoint=checkpoint)
    return paths
