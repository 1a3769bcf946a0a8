#!/usr/bin/env python3
"""Offline render throughput: the classic command's pipeline on the embedded avatar and speech.

    python benchmarks/bench_render.py --checkpoint checkpoints/wav2lip_gan.pth --json bench-out/render.json

Without --checkpoint, a random-weight checkpoint in the official format is used (the cost of a
forward pass does not depend on the weights' values). Reports wall time per stage and frames/s.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--face", default=str(ROOT / "media" / "avatar.jpg"))
    ap.add_argument("--audio", default=str(ROOT / "media" / "speech.mp3"))
    ap.add_argument("--outfile", default=None, help="default: a temp .mp4")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    from models.torch_generator import TorchGenerator
    from realtime.render import RenderOptions, render

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint
        weights = "user checkpoint"
        if ckpt is None:
            from models.synthetic import make_checkpoint

            ckpt = os.path.join(tmp, "random.pth")
            make_checkpoint(ckpt, "Wav2Lip", seed=0)
            weights = "random weights (official format)"
        out = args.outfile or os.path.join(tmp, "bench.mp4")
        t0 = time.perf_counter()
        gen = TorchGenerator(ckpt)
        t_load = time.perf_counter() - t0
        opts = RenderOptions(batch_size=args.batch, progress=False)
        render(args.face, args.audio, out, gen, opts)  # warm: detection cache, allocator
        t1 = time.perf_counter()
        res = render(args.face, args.audio, out, gen, opts)
        wall = time.perf_counter() - t1
    result = {
        "benchmark": "offline_render", "backend": gen.name, "weights": weights,
        "face": Path(args.face).name, "audio": Path(args.audio).name, "frames": res.frames,
        "batch": args.batch, "checkpoint_load_s": round(t_load, 3), "render_s": round(wall, 3),
        "frames_per_s": round(res.frames / wall, 2), "realtime_factor": round(res.frames / res.fps / wall, 3),
        "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
