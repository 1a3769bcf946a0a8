"""Locate mediapipe's BlazeFace short-range model (`face_detection_short_range.tflite`).

Resolution order of `resolve_face_model`:
  1. an explicit `path` argument (`lipsync render --face_model PATH`),
  2. the `LIPSYNC_FACE_MODEL` environment variable,
  3. the copy shipped inside this package (`models/data/`, Apache-2.0, see NOTICE.md there).

Nothing is ever downloaded: a live avatar must start on a machine with no network. Files named
by the user (1, 2) are trusted as they are: they may deliberately be another release of the
model. The shipped file (3) must match a pinned SHA-256; a missing or damaged copy is refused
with a one-line `LipsyncError` saying how to fix it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from models.errors import LipsyncError

MODEL_NAME = "face_detection_short_range.tflite"
ENV_MODEL = "LIPSYNC_FACE_MODEL"
PACKAGED_MODEL = Path(__file__).resolve().parent / "data" / MODEL_NAME

# Digests of model files known to work. This one (229,714 bytes) is what the mediapipe 0.10.21
# wheel ships (mediapipe/modules/face_detection/) and what this package carries. Add a digest
# only after checking that file loads in FaceDetector and finds faces.
KNOWN_SHA256 = frozenset(
    {
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    }
)

_FIX = (
    f"reinstall the lipsync-rt package (it ships {MODEL_NAME}), or set {ENV_MODEL} "
    f"to a copy of it (e.g. from the mediapipe==0.10.21 wheel, mediapipe/modules/face_detection/)"
)


def cache_dir() -> Path:
    """Per-user cache root: $LIPSYNC_CACHE_DIR, else $XDG_CACHE_HOME/lipsync, else ~/.cache/lipsync."""
    explicit = os.environ.get("LIPSYNC_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says a relative value is invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "lipsync"


def _user_path(path: str, origin: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise LipsyncError(
            f"face model ({origin})",
            f"an existing {MODEL_NAME}",
            f"no file at {p}",
            "fix the path, or leave it unset to use the copy shipped with the package",
        )
    return p


def check_packaged(model: Path, known_sha256: frozenset[str], what: str, fix: str) -> Path:
    """`model` if it exists and matches one of the pinned digests; else a one-line LipsyncError."""
    if not model.is_file():
        raise LipsyncError(what, f"{model.name} shipped with the package", f"no file at {model}", fix)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    if digest not in known_sha256:
        raise LipsyncError(
            what, f"SHA-256 {min(known_sha256)}", f"{digest} ({model.stat().st_size} bytes) at {model}", fix
        )
    return model


def _packaged() -> Path:
    return check_packaged(PACKAGED_MODEL, KNOWN_SHA256, "face model", _FIX)


def resolve_face_model(path: str | None = None) -> Path:
    """Path to a usable `face_detection_short_range.tflite`; never touches the network.

    Raises `LipsyncError` if an explicit or $LIPSYNC_FACE_MODEL path does not exist, or if the
    copy shipped with the package is missing or fails its checksum.
    """
    if path is not None:
        return _user_path(path, "explicit path")
    if os.environ.get(ENV_MODEL):
        # A typo in the variable must not silently fall back to some other file.
        return _user_path(os.environ[ENV_MODEL], f"${ENV_MODEL}")
    return _packaged()
