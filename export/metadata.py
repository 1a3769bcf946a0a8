"""What every exported graph records about itself, readable without torch."""

from __future__ import annotations

import io
import json
import os

from models import mel as mel_params

OPSET = 17
TOOL_VERSION = "lipsync-rt 0.1.0"
# The face encoder's outputs, shallowest first: 7 in the original, 8 or 9 in the HD layouts. A
# graph has the first n of these names (zip against a graph's features stops at its count).
SKIPS = [f"skip{i}" for i in range(9)]
DEFAULT_FACE_SIZE = 96  # graphs exported before the size was recorded are all the original's


def decoder_variant(first_row: int) -> str:
    """The decoder graph that computes output rows `first_row`..95 (all rows for 0)."""
    return "decoder" if first_row == 0 else f"decoder_r{first_row}"


def variant_first_row(variant: str) -> int:
    return int(variant.removeprefix("decoder_r")) if variant.startswith("decoder_r") else 0


def metadata(source_sha256: str, variant: str, precision: str = "fp32", face_size: int = 96) -> dict[str, str]:
    return {
        "lipsync.source_sha256": source_sha256,
        "lipsync.face_size": str(face_size),
        "lipsync.variant": variant,
        "lipsync.precision": precision,
        "lipsync.opset": str(OPSET),
        "lipsync.tool": TOOL_VERSION,
        "lipsync.mel": json.dumps(
            {
                "sample_rate_hz": mel_params.SAMPLE_RATE_HZ,
                "n_fft": mel_params.N_FFT,
                "hop": mel_params.HOP,
                "n_mels": mel_params.N_MELS,
                "fmin_hz": mel_params.FMIN_HZ,
                "fmax_hz": mel_params.FMAX_HZ,
                "window_frames": mel_params.WINDOW_FRAMES,
                "pad": "reflect",
            }
        ),
    }


_METADATA_PROPS = 14  # ModelProto.metadata_props: repeated StringStringEntryProto {key = 1, value = 2}


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """A graph's metadata, read from the protobuf's top-level fields, seeking past the graph
    itself: every start checks its exports with this, and parsing a 100 MB model (and importing
    onnx, a second on a busy machine) only to read a few strings would be most of a warm start."""
    out: dict[str, str] = {}
    with open(path, "rb") as f:
        while (tag := _varint(f, eof_ok=True)) is not None:
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                _varint(f)
            elif wire == 1:
                f.seek(8, os.SEEK_CUR)
            elif wire == 5:
                f.seek(4, os.SEEK_CUR)
            elif wire == 2:
                size = _varint(f) or 0
                if field == _METADATA_PROPS:
                    out.update([_entry(f.read(size))])
                else:
                    f.seek(size, os.SEEK_CUR)
            else:
                raise ValueError(f"{path}: not an ONNX model (wire type {wire})")
    return out


def _varint(f, eof_ok: bool = False) -> int | None:
    value, shift = 0, 0
    while True:
        b = f.read(1)
        if not b:
            if eof_ok and shift == 0:
                return None
            raise ValueError("truncated ONNX model")
        value |= (b[0] & 0x7F) << shift
        if b[0] < 0x80:
            return value
        shift += 7


def _entry(data: bytes) -> tuple[str, str]:
    """One StringStringEntryProto: (key, value)."""
    f, got = io.BytesIO(data), {1: "", 2: ""}
    while (tag := _varint(f, eof_ok=True)) is not None:
        if tag & 7 != 2:
            raise ValueError("unexpected field in an ONNX metadata entry")
        size = _varint(f) or 0
        got[tag >> 3] = f.read(size).decode()
    return got[1], got[2]


def graph_face_size(path: str | os.PathLike) -> int:
    """The face size (pixels) a graph's generator runs at, as its export recorded it."""
    return int(read_metadata(path).get("lipsync.face_size", DEFAULT_FACE_SIZE))
