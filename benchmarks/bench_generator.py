#!/usr/bin/env python3
"""Generator speed and picture quality per runtime and precision, in one run.

    python benchmarks/bench_generator.py --checkpoint checkpoints/wav2lip_gan.pth --json bench-out/generator.json

Measures torch eager fp32, ONNX Runtime fp32 / int8, OpenVINO fp32 / bf16 / int8, and the split
path (face features computed once, decoder per frame) at batch 1, 4 and 16, on real inputs
(crops of the embedded face photo, mels of the embedded speech). PSNR is against ONNX Runtime
fp32 on held-out real inputs. Without --checkpoint, random weights in the official format with
BatchNorm statistics calibrated on the same real media are used: speed does not depend on the
weights, but quality figures from random weights are not those of trained ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIGS = [  # (runtime, precision, split)
    ("torch", "fp32", False),
    ("onnxruntime", "fp32", False),
    ("onnxruntime", "int8-plain", False),
    ("onnxruntime", "int8", False),
    ("openvino", "fp32", False),
    ("openvino", "bf16", False),
    ("openvino", "int8", False),
    ("onnxruntime", "fp32", True),
    ("openvino", "int8", True),
]
VARIANT_NOTES = {
    ("onnxruntime", "int8-plain"): "QDQ over the graph as exported (ConvTranspose stays float in ORT)",
    ("onnxruntime", "int8"): "QDQ over the ConvTranspose->Conv rewrite",
    ("openvino", "int8"): "QDQ over the graph as exported, OpenVINO int8 kernels",
    ("openvino", "bf16"): "fp32 graph, INFERENCE_PRECISION_HINT=bf16",
}


def timed(fn, reps: int, warm: bool = True) -> list[float]:
    if warm:
        fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def make_runner(ckpt: str, runtime: str, precision: str, split: bool):
    """A callable (mels, faces) -> out for the config, and for split a callable on cached features."""
    if runtime == "torch":
        from models.torch_generator import TorchGenerator

        return TorchGenerator(ckpt), None
    from export.cache import ensure_exported
    from realtime.generator import OnnxGenerator, RuntimeConfig, SplitGenerator

    quiet = lambda msg: None  # noqa: E731
    if precision == "int8-plain":
        cfg = RuntimeConfig(runtime=runtime, precision="int8")
        return OnnxGenerator(ensure_exported(ckpt, "full", "int8", log=quiet)["full"], cfg), None
    cfg = RuntimeConfig(runtime=runtime, precision=precision)
    from realtime.generator import graph_precision

    paths = ensure_exported(ckpt, "split" if split else "full", graph_precision(cfg), log=quiet)
    if split:
        gen = SplitGenerator(paths["face_encoder"], paths["decoder"], cfg)
        return gen, gen
    return OnnxGenerator(paths["full"], cfg), None


def measure(ckpt: str, runtime: str, precision: str, split: bool, batches: list[int], frames: int,
            reference_npy: str) -> list[dict]:
    """One config, in its own process: ORT and OpenVINO thread pools of earlier configs would
    otherwise still be alive and compete for the 2 cores."""
    from export.onnx import verification_inputs
    from export.quantize import psnr_db

    mels, faces = verification_inputs(max(batches), seed=3)
    held_m, held_f = verification_inputs(16, seed=2)
    gen, splitter = make_runner(ckpt, runtime, precision, split)
    # The split path is compared with the full graph interleaved in the same process, so that
    # drift in machine speed between configs cannot decide which is faster.
    full_gen = make_runner(ckpt, runtime, precision, False)[0] if split else None
    quality_out = gen(held_m, held_f)
    if runtime == "onnxruntime" and precision == "fp32" and not split:
        np.save(reference_npy, quality_out)
        psnr = None
    elif runtime == "torch":
        psnr = None
    else:
        psnr = round(psnr_db(quality_out, np.load(reference_npy)), 2)
    rows = []
    for b in batches:
        m, f = mels[:b], faces[:b]
        reps = max(3, frames // b)
        if splitter is not None:
            feats = splitter.encode(f)  # once per avatar frame, outside the per-frame loop
            split_s, full_s = [], []
            for _ in range(reps):
                split_s += timed(lambda: splitter.decode(m, feats), 1, warm=False)
                full_s += timed(lambda: full_gen(m, f), 1, warm=False)
            per_frame_ms = np.array(split_s) * 1000 / b
            full_same_run = round(float(np.median(full_s)) * 1000 / b, 2)
        else:
            per_frame_ms = np.array(timed(lambda: gen(m, f), reps)) * 1000 / b
        note = VARIANT_NOTES.get((runtime, precision))
        row = {"runtime": runtime, "precision": "int8" if precision.startswith("int8") else precision,
               "variant": ("split-cached-face" if split else "full") + (f" ({note})" if note else ""),
               "batch": b, "ms_per_frame_median": round(float(np.median(per_frame_ms)), 2),
               "ms_per_frame_p95": round(float(np.percentile(per_frame_ms, 95)), 2),
               "psnr_db_vs_fp32": None if psnr is None or psnr == float("inf") else psnr}
        if split:
            row["full_graph_ms_per_frame_median_same_run"] = full_same_run
            row["max_abs_diff_vs_fp32_full"] = float(np.abs(quality_out - np.load(reference_npy)).max())
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--json", default="bench-out/generator.json")
    ap.add_argument("--png", default=None, help="chart; default: beside the JSON")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--frames-per-batch-size", type=int, default=64,
                    help="frames timed per (config, batch) pair")
    ap.add_argument("--chart-only", action="store_true", help="redraw the PNG from an existing --json")
    ap.add_argument("--one", nargs=4, metavar=("RUNTIME", "PRECISION", "SPLIT", "REFERENCE_NPY"),
                    help=argparse.SUPPRESS)  # internal: measure one config in this process
    args = ap.parse_args()

    if args.chart_only:
        chart(json.loads(Path(args.json).read_text())["results"],
              Path(args.png) if args.png else Path(args.json).with_suffix(".png"))
        return 0
    if args.one:
        runtime, precision, split, ref = args.one
        rows = measure(args.checkpoint, runtime, precision, split == "1", args.batches,
                       args.frames_per_batch_size, ref)
        print(json.dumps(rows))
        return 0

    import subprocess

    tmp = tempfile.TemporaryDirectory()
    os.environ.setdefault("LIPSYNC_CACHE_DIR", os.path.join(tmp.name, "cache"))
    ckpt, weights = args.checkpoint, "user checkpoint"
    if ckpt is None:
        from models.synthetic import make_embedded_calibrated_checkpoint

        ckpt = os.path.join(tmp.name, "random.pth")
        make_embedded_calibrated_checkpoint(ckpt)
        weights = "random weights, official format, BatchNorm calibrated on real face/speech"
    ref = os.path.join(tmp.name, "reference.npy")
    results = []
    for runtime, precision, split in CONFIGS:
        label = f"{runtime} {precision}{' split' if split else ''}"
        print(f"[{label}] ...", file=sys.stderr)
        proc = subprocess.run([sys.executable, __file__, "--checkpoint", ckpt, "--batches", *map(str, args.batches),
                               "--frames-per-batch-size", str(args.frames_per_batch_size),
                               "--one", runtime, precision, "1" if split else "0", ref],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        rows = json.loads(proc.stdout.strip().splitlines()[-1])
        for row in rows:
            print(f"  batch {row['batch']:>2}: {row['ms_per_frame_median']:7.2f} ms/frame "
                  f"(p95 {row['ms_per_frame_p95']:.2f})  PSNR {row['psnr_db_vs_fp32']}", file=sys.stderr)
        results.extend(rows)
    doc = {"results": results, "weights": weights, "inputs": "embedded face photo crops + embedded speech mels",
           "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "python": platform.python_version()},
           "versions": versions()}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    chart(results, Path(args.png) if args.png else out.with_suffix(".png"))
    print(json.dumps(doc, indent=2))
    return 0


def versions() -> dict:
    import onnxruntime
    import torch

    v = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    try:
        import openvino

        v["openvino"] = openvino.__version__
    except ImportError:
        pass
    return v


def chart(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({(r["runtime"], r["precision"], r["variant"]) for r in results},
                    key=lambda k: [(x["runtime"], x["precision"], x["variant"]) for x in results].index(k))
    batches = sorted({r["batch"] for r in results})
    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.8 / len(batches)
    for j, b in enumerate(batches):
        vals = [next(r["ms_per_frame_median"] for r in results if (r["runtime"], r["precision"], r["variant"]) == k
                     and r["batch"] == b) for k in labels]
        ax.bar(np.arange(len(labels)) + j * width, vals, width, label=f"batch {b}")
    ax.set_xticks(np.arange(len(labels)) + width * (len(batches) - 1) / 2)
    def short(rt, p, v):
        kind = " rewrite" if "ConvTranspose->Conv" in v else (" plain" if rt == "onnxruntime" and p == "int8" else "")
        return f"{rt}\n{p}{kind}{' split' if v.startswith('split') else ''}"

    ax.set_xticklabels([short(*k) for k in labels], fontsize=8)
    ax.set_ylabel("ms per frame (median)")
    ax.axhline(40, color="grey", ls="--", lw=1)
    ax.text(len(labels) - 0.5, 41, "40 ms = 25 fps budget", ha="right", fontsize=8, color="grey")
    ax.set_title("Wav2Lip generator on this CPU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
