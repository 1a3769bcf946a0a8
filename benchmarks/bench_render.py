#!/usr/bin/env python3
"""Offline render throughput: the classic command's pipeline on the embedded avatar and speech.

    python benchmarks/bench_render.py --checkpoint checkpoints/wav2lip_gan.pth --json bench-out/render.json

Runs the whole pipeline (decode, mel, boxes, generator, paste, H.264 + AAC encode) once per
backend, after a warm-up render that fills the detection and export caches. Without
--checkpoint, random weights in the official format are used: a forward pass costs the same
whatever the weights' values.
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
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # synthetic.py: the random-weight checkpoint makers

BACKENDS = [  # (backend, runtime, precision)
    ("torch", None, "fp32"),
    ("onnx", "onnxruntime", "fp32"),
    ("onnx", "openvino", "int8"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--face", default=str(ROOT / "media" / "avatar.jpg"))
    ap.add_argument("--audio", default=str(ROOT / "media" / "speech.mp3"))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from lipsync.offline import RenderOptions, render
    from lipsync.render_command import make_generator

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("LIPSYNC_CACHE_DIR", os.path.join(tmp, "cache"))
        ckpt, weights = args.checkpoint, "user checkpoint"
        if ckpt is None:
            from synthetic import make_checkpoint

            ckpt = os.path.join(tmp, "random.pth")
            make_checkpoint(ckpt, "Wav2Lip", seed=0)
            weights = "random weights (official format)"
        out = os.path.join(tmp, "bench.mp4")
        opts = RenderOptions(batch_size=args.batch, progress=False)
        for backend, runtime, precision in BACKENDS:
            ns = SimpleNamespace(
                checkpoint_path=ckpt,
                backend=backend,
                runtime=runtime or "onnxruntime",
                precision=precision,
                device="cpu",
            )
            gen = make_generator(ns)
            render(args.face, args.audio, out, gen, opts)  # warm-up: caches, allocator
            t = time.perf_counter()
            res = render(args.face, args.audio, out, gen, opts)
            wall = time.perf_counter() - t
            rows.append(
                {
                    "backend": gen.name,
                    "frames": res.frames,
                    "render_s": round(wall, 3),
                    "frames_per_s": round(res.frames / wall, 2),
                    "realtime_factor": round(res.frames / res.fps / wall, 3),
                }
            )
            print(f"{gen.name:40s} {rows[-1]['frames_per_s']:6.2f} frames/s", file=sys.stderr)
            del gen
    result = {
        "benchmark": "offline_render",
        "weights": weights,
        "face": Path(args.face).name,
        "audio": Path(args.audio).name,
        "batch": args.batch,
        "results": rows,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
