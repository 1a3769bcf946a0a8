"""Reduced precision: int8 QDQ graphs calibrated on real inputs, fp16 graphs for GPUs.

int8: static quantization, per-channel symmetric int8 weights, per-tensor uint8 activations
(MinMax ranges over 32 real samples: jittered crops of a real face photo and mels of real
speech; never random noise, whose activation ranges look nothing like a face's). The result
must keep PSNR >= 30 dB against the fp32 graph on a held-out set of real inputs, or the build
fails and nothing is written. The graph stays standard ONNX (QuantizeLinear/DequantizeLinear
pairs), so ONNX Runtime and OpenVINO both run it; OpenVINO turns it into true int8 kernels.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from models.errors import LipsyncError

MIN_PSNR_DB = 30.0
MIN_FP16_PSNR_DB = 40.0  # fp16 should be near-lossless; less means an overflow somewhere
CALIBRATION_SAMPLES = 32
HELDOUT_SAMPLES = 8


def psnr_db(out: np.ndarray, ref: np.ndarray) -> float:
    """PSNR of generator outputs in [0, 1] (peak 1)."""
    mse = float(np.mean((np.asarray(out, np.float64) - np.asarray(ref, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def _feeds(graph: str, mels: np.ndarray, faces: np.ndarray, encoder_path: Path | None) -> list[dict]:
    """One feed dict per sample, for the graph being calibrated or evaluated."""
    import onnxruntime as ort

    if graph == "full":
        return [{"mel": mels[i:i + 1], "face": faces[i:i + 1]} for i in range(len(mels))]
    if graph == "face_encoder":
        return [{"face": faces[i:i + 1]} for i in range(len(faces))]
    enc = ort.InferenceSession(str(encoder_path), providers=["CPUExecutionProvider"])
    skips = enc.run(None, {"face": faces})
    return [{"mel": mels[i:i + 1], **{f"skip{k}": s[i:i + 1] for k, s in enumerate(skips)}}
            for i in range(len(mels))]


def _outputs(path: Path, feeds: list[dict]) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, f)[0] for f in feeds])


def quantize_int8(src: Path, dst: Path, graph: str, encoder_fp32: Path | None = None) -> float:
    """Write an int8 QDQ version of `src` to `dst`; returns its held-out PSNR vs `src`."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    from export.onnx import verification_inputs

    cal = _feeds(graph, *verification_inputs(CALIBRATION_SAMPLES, seed=1), encoder_fp32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(cal)

        def get_next(self):
            return next(self._it, None)

    # The quantizer logs advice and per-tensor notes on the root logger; keep the user's terminal clean.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    finally:
        root.setLevel(level)
    held = _feeds(graph, *verification_inputs(HELDOUT_SAMPLES, seed=2), encoder_fp32)
    if graph == "face_encoder":
        return float("nan")
    return psnr_db(_outputs(dst, held), _outputs(src, held))


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and math with fp32 inputs/outputs, for CUDA/TensorRT."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


REDUCED = ("int8", "int8-ort", "fp16")


def _conv_only_fp32(checkpoint: Path, graph: str, dst: Path, sha: str) -> Path:
    """The fp32 graph with ConvTranspose rewritten as Conv (export.rewrite), verified vs the original."""
    from export.onnx import export_variant, verify
    from export.rewrite import convtranspose_as_conv
    from models.checkpoint import load_generator

    net = load_generator(checkpoint)
    export_variant(convtranspose_as_conv(net), graph, dst, sha)
    verify(net, graph, dst)
    return dst


def build_reduced(fp32: dict[str, Path], sha: str, precision: str, paths: dict[str, Path], log=print,
                  checkpoint: Path | None = None) -> None:
    """Make `precision` versions of the verified fp32 graphs; same no-partial-file rules as fp32.

    int8      QDQ over the graph as exported: the fastest with OpenVINO, which has int8
              ConvTranspose kernels.
    int8-ort  QDQ over the ConvTranspose-free rewrite: ONNX Runtime then runs every conv in int8
              (plain int8 leaves ConvTranspose+BatchNorm in float there: ~1.3x instead of ~2.2x).
    fp16      for CUDA / TensorRT.
    """
    import onnx

    from export.metadata import metadata

    if precision not in REDUCED:
        raise LipsyncError("--precision", "fp32, " + ", ".join(REDUCED), repr(precision), "pick one of those")
    for graph, final in paths.items():
        if graph == "face_encoder" and precision.startswith("int8"):
            # Runs once per avatar frame and then is cached: no reason to trade its accuracy.
            target_src = fp32[graph]
        else:
            target_src = None
        tmp = final.with_name(f".{final.name}.{os.getpid()}.partial")
        log(f"building {precision} {graph} ...")
        try:
            if target_src is not None:
                model = onnx.load(str(target_src))
            else:
                if precision.startswith("int8"):
                    src = fp32[graph]
                    if precision == "int8-ort":
                        src = _conv_only_fp32(checkpoint, graph, tmp.with_suffix(".conv.onnx"), sha)
                    try:
                        psnr = quantize_int8(src, tmp, graph, fp32.get("face_encoder"))
                    finally:
                        if src != fp32[graph]:
                            src.unlink(missing_ok=True)
                    log(f"  held-out PSNR vs fp32 on real inputs: {psnr:.1f} dB")
                    if not psnr >= MIN_PSNR_DB:
                        raise LipsyncError(f"int8 {graph}", f"PSNR >= {MIN_PSNR_DB:g} dB vs fp32",
                                           f"{psnr:.1f} dB", "use fp32, or bf16 with --runtime openvino")
                else:
                    convert_fp16(fp32[graph], tmp)
                    if graph != "face_encoder":
                        from export.onnx import verification_inputs

                        held = _feeds(graph, *verification_inputs(HELDOUT_SAMPLES, seed=2), fp32.get("face_encoder"))
                        psnr = psnr_db(_outputs(tmp, held), _outputs(fp32[graph], held))
                        log(f"  held-out PSNR vs fp32 on real inputs: {psnr:.1f} dB")
                        if not psnr >= MIN_FP16_PSNR_DB:
                            raise LipsyncError(f"fp16 {graph}", f"PSNR >= {MIN_FP16_PSNR_DB:g} dB vs fp32",
                                               f"{psnr:.1f} dB", "use fp32 on this GPU")
                model = onnx.load(str(tmp))
            del model.metadata_props[:]
            for k, v in metadata(sha, graph, precision).items():
                model.metadata_props.add(key=k, value=v)
            onnx.save(model, str(tmp))
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
