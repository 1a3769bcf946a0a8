"""What every exported graph records about itself, readable without torch."""

from __future__ import annotations

import json
import os

import onnx

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


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def graph_face_size(path: str | os.PathLike) -> int:
    """The face size (pixels) a graph's generator runs at, as its export recorded it."""
    return int(read_metadata(path).get("lipsync.face_size", DEFAULT_FACE_SIZE))
