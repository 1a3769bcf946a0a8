"""Reduced precision: int8 graphs calibrated on real inputs, fp16 graphs for GPUs.

ONNX Runtime int8 (`int8`, `int8-ort`): static QDQ, per-channel symmetric int8 weights,
per-tensor uint8 activations, MinMax ranges over real samples (`export.samples`: never random
noise, whose activation ranges look nothing like a face's). The offline command's explicit
`--precision int8` builds these; the result must keep PSNR >= 30 dB against fp32 on the held-out
set (another face, other voices) or the build fails and nothing is written.

OpenVINO int8 (`quantize_openvino`), the live path's: NNCF post-training quantization of the
decoder converted at static batch-1 shapes (a dynamic-batch graph hides conv biases behind shape
nodes and leaves BatchNorm unfolded after transposed convs, so NNCF would skip bias correction).
What was measured on a family of checkpoints decided the recipe (README, "Reduced precision"):
  * MinMax ranges: NNCF's default estimator clips the large activations some frames have,
    which is where the worst frames' 11-16 dB came from;
  * the audio encoder (its last layers collapse to one 512-vector that feeds every output
    pixel), the output block (its 1x1 conv before the sigmoid) and the residual Adds stay
    float: these are the sensitive quantizers; everything else is int8;
  * `int8-mixed`: NNCF's accuracy-aware search then returns the measured most sensitive of the
    remaining layers to float until a validation set (calibration sources, other samples)
    reaches the target — for checkpoints where the plain recipe falls short.
Float parts run in bf16 where the CPU has it (the runner's precision hint).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path

import numpy as np

from export.metadata import graph_face_size, metadata
from export.samples import calibration_set, heldout_set
from models.errors import LipsyncError

log = logging.getLogger(__name__)

MIN_PSNR_DB = 30.0
MIN_FP16_PSNR_DB = 40.0  # fp16 should be near-lossless; less means an overflow somewhere
CALIBRATION_SAMPLES = 32
HELDOUT_SAMPLES = 16


def psnr_db(out: np.ndarray, ref: np.ndarray) -> float:
    """PSNR of generator outputs in [0, 1] (peak 1)."""
    mse = float(np.mean((np.asarray(out, np.float64) - np.asarray(ref, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


@contextlib.contextmanager
def _quiet_ort_quantizer():
    """ONNX Runtime's quantizer reports per-tensor notes and advice through the module-level
    `logging.info`/`logging.warning`, i.e. on the root logger itself. A filter on the root *logger*
    (not its handlers) sees only records made there, never those propagated from named loggers, so
    it drops the quantizer's records without touching levels, handlers or anyone else's output.
    Those functions also call `logging.basicConfig()` when the root has no handler, which would
    leave a stderr handler behind in a program that configured no logging: a NullHandler stands
    in meanwhile."""
    import onnxruntime.quantization

    where = os.path.dirname(onnxruntime.quantization.__file__) + os.sep

    def keep(record: logging.LogRecord) -> bool:
        return not record.pathname.startswith(where)

    root = logging.getLogger()
    stand_in = logging.NullHandler() if not root.handlers else None
    if stand_in is not None:
        root.addHandler(stand_in)
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)
        if stand_in is not None:
            root.removeHandler(stand_in)


def _feeds(graph: str, mels: np.ndarray, faces: np.ndarray, encoder_path: Path | None) -> list[dict]:
    """One feed dict per sample, for the graph being calibrated or evaluated."""
    import onnxruntime as ort  # onnxruntime: an extra (the cpu or the gpu build), loaded when a graph runs

    if graph == "full":
        return [{"mel": mels[i : i + 1], "face": faces[i : i + 1]} for i in range(len(mels))]
    if graph == "face_encoder":
        return [{"face": faces[i : i + 1]} for i in range(len(faces))]
    enc = ort.InferenceSession(str(encoder_path), providers=["CPUExecutionProvider"])
    skips = enc.run(None, {"face": faces})
    return [
        {"mel": mels[i : i + 1], **{f"skip{k}": s[i : i + 1] for k, s in enumerate(skips)}} for i in range(len(mels))
    ]


def _outputs(path: Path, feeds: list[dict]) -> np.ndarray:
    import onnxruntime as ort  # onnxruntime: an extra (the cpu or the gpu build), loaded when a graph runs

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, f)[0] for f in feeds])


def quantize_int8(src: Path, dst: Path, graph: str, encoder_fp32: Path | None = None) -> float:
    """Write an int8 QDQ version of `src` to `dst`; returns its held-out PSNR vs `src`."""
    # onnxruntime: an extra (the cpu or the gpu build), loaded when a graph runs
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    size = graph_face_size(src)
    c = calibration_set(CALIBRATION_SAMPLES, size=size)
    cal = _feeds(graph, c.mels, c.faces, encoder_fp32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(cal)

        def get_next(self):
            return next(self._it, None)

    with _quiet_ort_quantizer():
        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    h = heldout_set(HELDOUT_SAMPLES, size=size)
    held = _feeds(graph, h.mels, h.faces, encoder_fp32)
    if graph == "face_encoder":
        return float("nan")
    return psnr_db(_outputs(dst, held), _outputs(src, held))


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and math with fp32 inputs/outputs, for CUDA/TensorRT."""
    import onnx  # only where a graph is built: a live start that finds its graphs never needs it

    # onnxruntime: an extra (the cpu or the gpu build), loaded when a graph runs
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


REDUCED = ("int8", "int8-ort", "fp16")


def _conv_only_fp32(checkpoint: Path, graph: str, dst: Path, sha: str, face_size_px: int = 0) -> Path:
    """The fp32 graph with ConvTranspose rewritten as Conv (export.rewrite), verified vs the original."""
    from export.onnx import export_variant, verify  # torch: these export a graph from the checkpoint
    from export.rewrite import convtranspose_as_conv
    from models.checkpoint import load_torch_generator

    net = load_torch_generator(checkpoint, face_size_px)
    export_variant(convtranspose_as_conv(net), graph, dst, sha)
    verify(net, graph, dst)
    return dst


def build_reduced(
    fp32: dict[str, Path],
    sha: str,
    precision: str,
    paths: dict[str, Path],
    checkpoint: Path | None = None,
    face_size_px: int = 0,
) -> None:
    """Make `precision` versions of the verified fp32 graphs; same no-partial-file rules as fp32.

    int8      QDQ over the graph as exported: the fastest with OpenVINO, which has int8
              ConvTranspose kernels.
    int8-ort  QDQ over the ConvTranspose-free rewrite: ONNX Runtime then runs every conv in int8
              (plain int8 leaves ConvTranspose+BatchNorm in float there: ~1.3x instead of ~2.2x).
    fp16      for CUDA / TensorRT.
    """
    import onnx  # only where a graph is built: a live start that finds its graphs never needs it

    if precision not in REDUCED:
        raise LipsyncError("--precision", "fp32, " + ", ".join(REDUCED), repr(precision), "pick one of those")
    for graph, final in paths.items():
        if graph == "face_encoder" and precision.startswith("int8"):
            # Runs once per avatar frame and then is cached: no reason to trade its accuracy.
            target_src = fp32[graph]
        else:
            target_src = None
        tmp = final.with_name(f".{final.name}.{os.getpid()}.partial")
        log.info(f"building {precision} {graph} ...")
        try:
            if target_src is not None:
                model = onnx.load(str(target_src))
            else:
                if precision.startswith("int8"):
                    src = fp32[graph]
                    if precision == "int8-ort":
                        src = _conv_only_fp32(checkpoint, graph, tmp.with_suffix(".conv.onnx"), sha, face_size_px)
                    try:
                        psnr = quantize_int8(src, tmp, graph, fp32.get("face_encoder"))
                    finally:
                        if src != fp32[graph]:
                            src.unlink(missing_ok=True)
                    log.info(f"  held-out PSNR vs fp32 on real inputs: {psnr:.1f} dB")
                    if not psnr >= MIN_PSNR_DB:
                        raise LipsyncError(
                            f"int8 {graph}",
                            f"PSNR >= {MIN_PSNR_DB:g} dB vs fp32",
                            f"{psnr:.1f} dB",
                            "use fp32, or bf16 with --runtime openvino",
                        )
                else:
                    convert_fp16(fp32[graph], tmp)
                    if graph != "face_encoder":
                        h = heldout_set(HELDOUT_SAMPLES, size=graph_face_size(fp32[graph]))
                        held = _feeds(graph, h.mels, h.faces, fp32.get("face_encoder"))
                        psnr = psnr_db(_outputs(tmp, held), _outputs(fp32[graph], held))
                        log.info(f"  held-out PSNR vs fp32 on real inputs: {psnr:.1f} dB")
                        if not psnr >= MIN_FP16_PSNR_DB:
                            raise LipsyncError(
                                f"fp16 {graph}",
                                f"PSNR >= {MIN_FP16_PSNR_DB:g} dB vs fp32",
                                f"{psnr:.1f} dB",
                                "use fp32 on this GPU",
                            )
                model = onnx.load(str(tmp))
            del model.metadata_props[:]
            for k, v in metadata(sha, graph, precision, graph_face_size(fp32[graph])).items():
                model.metadata_props.add(key=k, value=v)
            onnx.save(model, str(tmp))
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)


# -- OpenVINO + NNCF ------------------------------------------------------------------------------
OV_FLOAT_PATTERNS = (".*audio_encoder.*", ".*output_block.*")
OV_FLOAT_TYPES = ("Add",)
MIXED_TARGET_DB = 33.0  # validation target of the accuracy-aware search: margin over the 30 dB gate
PSNR_CAP_DB = 60.0  # "as good as fp32" for the search's drop arithmetic


def _static_ov_model(onnx_path: Path, example: dict):
    import openvino as ov  # openvino: an optional extra

    shapes = {name: list(v.shape) for name, v in example.items()}
    model = ov.convert_model(str(onnx_path))
    model.reshape(shapes)
    return model


def quantize_openvino(
    fp32_decoder: Path,
    dst_xml: Path,
    calibration: list[dict],
    mode: str = "int8",
    validation: list[dict] | None = None,
    validation_ref: list[np.ndarray] | None = None,
) -> Path:
    """NNCF int8 of a decoder graph (`mode` int8 or int8-mixed) written as OpenVINO IR at `dst_xml`.

    `calibration`: feed dicts (batch 1) the ranges come from. `int8-mixed` also needs
    `validation` feeds and their fp32 outputs, on which the search measures each layer's harm.
    """
    import nncf  # nncf, openvino: optional extras (nncf pulls in torch)
    import openvino as ov
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    model = _static_ov_model(fp32_decoder, calibration[0])
    scope = nncf.IgnoredScope(patterns=list(OV_FLOAT_PATTERNS), types=list(OV_FLOAT_TYPES), validate=False)
    adv = nncf.AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
    with _quiet_nncf():
        if mode == "int8":
            q = nncf.quantize(
                model,
                nncf.Dataset(calibration),
                subset_size=len(calibration),
                ignored_scope=scope,
                advanced_parameters=adv,
            )
        elif mode == "int8-mixed":
            if not validation or validation_ref is None:
                raise ValueError("int8-mixed needs validation feeds and their fp32 outputs")

            def metric(compiled, data):
                per = [min(PSNR_CAP_DB, psnr_db(compiled(f)[0], ref)) for f, ref in zip(data, validation_ref)]
                # A worst frame 3 dB under the mean counts as much as the mean: the gate has both.
                return float(min(np.mean(per), np.min(per) + 3.0)), per

            q = nncf.quantize_with_accuracy_control(
                model,
                nncf.Dataset(calibration),
                nncf.Dataset(validation),
                metric,
                max_drop=PSNR_CAP_DB - MIXED_TARGET_DB,
                drop_type=nncf.DropType.ABSOLUTE,
                subset_size=len(calibration),
                ignored_scope=scope,
                advanced_quantization_parameters=adv,
            )
        else:
            raise ValueError(f"unknown OpenVINO int8 mode {mode!r}")
    dst_xml = Path(dst_xml)
    ov.save_model(q, str(dst_xml), compress_to_fp16=False)
    return dst_xml


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF logs through its own "nncf" logger (not propagated: it has its own stdout handler);
    quietened by name while a build runs, and put back as it was."""
    import nncf  # nncf: an optional extra, and it pulls in torch

    logger = logging.getLogger("nncf")
    levels = [(x, x.level) for x in (logger, *logger.handlers)]
    nncf.set_log_level(logging.ERROR)
    # NNCF draws progress bars (rich) on the terminal; the ladder logs its own one line per step.
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        for x, level in levels:
            x.setLevel(level)
