"""Export the Wav2Lip generator to ONNX and prove the export right before anyone uses it.

Graphs per checkpoint (S: the layout's face size, 96 for the original; n: its skip count, 7 to 9):
  full          (mel, face) -> out                       dynamic batch
  face_encoder  face -> skip0..skip{n-1}                 run once per avatar frame, then cached
  decoder       (mel, skip0..) -> out                    the per-frame work on the live path
  decoder_rN    (mel, skip0..) -> out rows N..S-1        only what the feathered paste shows
Each is checked against torch on real inputs (face crops of a real photo, mels of real speech);
a mismatch beyond tolerance deletes the file and raises.

The tolerance scales with the numbers compared: skip features of real checkpoints reach the
hundreds or thousands, where float32 rounding alone differs by more than any fixed 1e-4. Each
output must satisfy max|onnx - torch| <= ATOL + RTOL * max|torch|, and image outputs must also
keep a PSNR far above anything visible.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from export import samples
from export.metadata import OPSET, SKIPS, metadata, variant_first_row
from models.errors import LipsyncError
from models.layouts import Layout

FP32_ATOL = 1e-4
# Float32 accumulation over ~10^4-term dot products differs by ~1e-6 of the magnitude between
# kernels; 1e-5 leaves 10x headroom, while a real mismatch (a wrong op, a wrong weight) is off
# by a sizeable fraction of the magnitude.
FP32_RTOL = 1e-5
# The HD layouts are deeper (8-9 blocks each way, 1024 channels in SAM) with longer sums (the 256
# layout's 4x4 conv over 512 channels: 8192 terms): kernel-order rounding compounds over more layers.
# Measured on the HD stand-ins: up to 2e-5 of the magnitude on the deepest skip. 1e-4 keeps a real
# mismatch (a sizeable fraction of the magnitude) far outside.
HD_FP32_RTOL = 1e-4
FP32_MIN_PSNR_DB = 70.0  # image outputs in [0, 1]; fp32 rounding gives > 100 dB
VARIANTS = ("full", "face_encoder", "decoder", "decoder_rN")


class _FaceEncoder(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, face):
        return tuple(self.net.encode_face(face))


class _Decoder(nn.Module):
    def __init__(self, net, first_row: int = 0):
        super().__init__()
        self.net, self.first_row = net, first_row

    def forward(self, mel, *skips):
        if self.first_row:
            return self.net.decode_rows(mel, list(skips), self.first_row)
        return self.net.decode(mel, list(skips))


@dataclass(frozen=True)
class ExportSpec:
    module: nn.Module
    inputs: tuple
    input_names: list
    output_names: list


def skip_shapes(net, batch: int = 1) -> list[tuple[int, ...]]:
    with torch.no_grad():
        return [tuple(t.shape) for t in net.encode_face(torch.zeros(batch, 6, net.face_size, net.face_size))]


def spec_for(net, variant: str, batch: int = 2) -> ExportSpec:
    mel = torch.zeros(batch, 1, 80, 16)
    face = torch.zeros(batch, 6, net.face_size, net.face_size)
    if variant == "full":
        return ExportSpec(net, (mel, face), ["mel", "face"], ["out"])
    with torch.no_grad():
        skips = tuple(net.encode_face(face))
    names = SKIPS[: len(skips)]
    if variant == "face_encoder":
        return ExportSpec(_FaceEncoder(net), (face,), ["face"], names)
    if variant == "decoder" or variant.startswith("decoder_r"):
        return ExportSpec(_Decoder(net, variant_first_row(variant)), (mel, *skips), ["mel", *names], ["out"])
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def export_variant(net, variant: str, path: str | os.PathLike, source_sha256: str) -> Path:
    """Write one unverified fp32 graph to `path` (see `export.cache.build` for the verified path)."""
    # A fresh wrapper module is in training mode, and the exporter restores the wrapper's mode
    # recursively afterwards, which would leave `net`'s BatchNorms in training mode.
    spec = spec_for(net, variant)
    spec.module.eval()
    path = Path(path)
    dynamic = {name: {0: "batch"} for name in spec.input_names + spec.output_names}
    try:
        # The TorchScript exporter warns about shape inference details that do not apply here.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                spec.module,
                spec.inputs,
                str(path),
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=dynamic,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        model = onnx.load(str(path))
        for k, v in metadata(source_sha256, variant, face_size=net.face_size).items():
            model.metadata_props.add(key=k, value=v)
        onnx.save(model, str(path))
    except Exception:
        path.unlink(missing_ok=True)
        raise
    finally:
        net.eval()
    return path


def verification_inputs(batch: int = 4, seed: int = 0, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Real inputs: jittered face crops of the shipped photo, mels of the shipped speech."""
    got = samples.verification_inputs(batch, seed, size)
    return got.mels, got.faces


def _psnr_db(out: np.ndarray, ref: np.ndarray) -> float:
    mse = float(np.mean((out.astype(np.float64) - ref.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def check_parity(
    name: str, got: np.ndarray, want: np.ndarray, image: bool, rtol: float = FP32_RTOL
) -> tuple[float, float]:
    """Raise unless `got` equals `want` to float32 rounding; returns (worst abs, worst relative)."""
    err = float(np.abs(got.astype(np.float64) - want).max())
    scale = float(np.abs(want).max())
    tol = FP32_ATOL + rtol * scale
    rel = err / scale if scale else float("inf") if err else 0.0
    psnr = _psnr_db(got, want) if image else float("inf")
    if not err <= tol or not psnr >= FP32_MIN_PSNR_DB:
        found = f"worst abs {err:.3g} (relative {rel:.2g} of max |torch| {scale:.3g})"
        if image:
            found += f", PSNR {psnr:.1f} dB"
        raise LipsyncError(
            f"ONNX export, output {name}",
            f"|onnx - torch| <= {FP32_ATOL:g} + {rtol:g} x max|torch| = {tol:.3g}"
            + (f" and PSNR >= {FP32_MIN_PSNR_DB:g} dB" if image else ""),
            found,
            "report this with your torch, onnx and onnxruntime versions",
        )
    return err, rel


def verify(net, variant: str, path: str | os.PathLike) -> float:
    """Worst relative difference between ONNX Runtime and torch on real inputs, over all the
    graph's outputs; raises (naming the output) past the scaled tolerance."""
    import onnxruntime as ort  # onnxruntime: an extra (the cpu or the gpu build), loaded when a graph runs

    mels, faces = verification_inputs(size=net.face_size)
    with torch.no_grad():
        skips = net.encode_face(torch.from_numpy(faces))
        if variant == "face_encoder":
            want = [t.numpy() for t in skips]
            feeds = {"face": faces}
        elif variant == "full":
            want = [net(torch.from_numpy(mels), torch.from_numpy(faces)).numpy()]
            feeds = {"mel": mels, "face": faces}
        else:
            first_row = variant_first_row(variant)
            out = (
                net.decode_rows(torch.from_numpy(mels), skips, first_row)
                if first_row
                else net.decode(torch.from_numpy(mels), skips)
            )
            want = [out.numpy()]
            feeds = {"mel": mels, **{k: t.numpy() for k, t in zip(SKIPS, skips)}}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    worst = 0.0
    for name, g, w in zip(names, sess.run(None, feeds), want):
        rtol = FP32_RTOL if net.layout is Layout.W96 else HD_FP32_RTOL
        worst = max(worst, check_parity(f"{name} of {Path(path).name}", g, w, image=(name == "out"), rtol=rtol)[1])
    return worst
