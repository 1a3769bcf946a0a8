#!/usr/bin/env python3
"""Memory of a moving-video avatar running live: RSS after loading, after a live run, and after
every avatar frame has been shown once (a full loop), for a 12 s and a 60 s avatar.

    python benchmarks/bench_avatar_memory.py --json bench-out/avatar_memory.json
    python benchmarks/bench_avatar_memory.py --code-root /tmp/base --json bench-out/avatar_memory_before.json

The avatar is the embedded photo moving along bench_tracking's known path, H.264-encoded with
PyAV. Each measurement runs in a fresh child process (RSS is per process): "cold" with an empty
avatar cache (features computed at load), then "warm" (features from the cache). The full loop
is simulated without generating 1500 frames: every avatar frame and its face features are read
once, as the live path reads them, then RSS is taken again. The procedural engine (no weights)
renders every avatar frame once, since its per-frame maps were the other thing that grew.

`--code-root` measures another checkout of the project with the same script (the "before").
Weights are bench_generator's stand-in (random, official format); the runtime is pinned to
ONNX Runtime fp32 so that no ladder runs: memory does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))


def rss_mb() -> dict:
    """Current and peak resident set size of this process, in MB."""
    got = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                got[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mb": got["VmRSS"], "peak_rss_mb": got["VmHWM"]}


RUNS = {"wav2lip_cold": "wav2lip", "wav2lip_warm": "wav2lip", "procedural": "procedural"}


def child(args) -> int:
    """One measurement in this (fresh) process; prints one JSON line."""
    sys.path.insert(0, args.code_root)
    import numpy as np

    from realtime.clock import MonotonicClock
    from realtime.config import EngineConfig
    from realtime.generator import RuntimeConfig
    from realtime.live import build_engine
    from realtime.sinks.base import NullSink
    from realtime.sources.file import FileSource

    out = {"start": rss_mb()}
    t = time.perf_counter()
    runtime = RuntimeConfig(runtime="onnxruntime", precision="fp32")
    eng = build_engine(
        args.avatar, [NullSink()], args.checkpoint, runtime, EngineConfig(), clock=MonotonicClock(), engine=args.engine
    )
    out["load_s"] = round(time.perf_counter() - t, 2)
    out["after_load"] = rss_mb()
    summary = eng.run(FileSource(str(ROOT / "media" / "speech.mp3"), loop=True), args.live_s)
    out["after_live"] = rss_mb()
    out["live"] = {
        k: summary.get(k)
        for k in ("fps_sustained", "frames", "generated", "dropped", "cpu_percent", "processing_latency_ms")
    }
    av, n = eng.avatar, len(eng.avatar.frames)
    t = time.perf_counter()
    if args.engine == "procedural":
        loud = np.zeros((80, 16), np.float32)  # a loud window: the mouth opens on every frame
        for i in range(n):
            eng.renderer._open = 0.0
            eng.renderer.render(av.frames[i], i, loud, -1, 25.0)
    else:
        for i in range(n):
            frame, feats = av.frames[i], av.features_at(i)
            assert frame.shape[2] == 3 and len(feats) == 7
    out["full_loop_read_ms_per_frame"] = round((time.perf_counter() - t) * 1000 / n, 3)
    out["after_full_loop"] = rss_mb()
    if args.engine == "wav2lip" and hasattr(av.features, "get"):  # features stored in fp16 (this checkout)
        out["fp16_features_vs_fp32"] = fidelity(eng.renderer.gen, av)
    out["avatar_frames"] = n
    print(json.dumps(out))
    return 0


def fidelity(gen, av, frames: int = 24) -> dict:
    """The decoder's output on stored (fp16) features vs on the encoder's fp32 features, for
    `frames` avatar frames spread over the loop, each with a different window of real speech."""
    import numpy as np

    from mediaio.audio import decode_audio
    from models.face_input import model_faces
    from models.mel import melspectrogram
    from realtime.compositor import to_uint8_faces

    mel = melspectrogram(decode_audio(str(ROOT / "media" / "speech.mp3")).mono_16k())
    worst_float, worst_u8, psnrs = 0.0, 0, []
    for k, i in enumerate(np.linspace(0, len(av.crops) - 1, frames).astype(int)):
        s = (k * 37) % (mel.shape[1] - 16)
        window = np.ascontiguousarray(mel[:, s : s + 16][None, None], np.float32)
        ref = gen.decode(window, [np.asarray(f) for f in gen.encode(model_faces(av.crops[i : i + 1]))])
        got = gen.decode(window, av.features_at(int(i)))
        worst_float = max(worst_float, float(np.abs(ref - got).max()))
        a, b = to_uint8_faces(ref).astype(np.int16), to_uint8_faces(got).astype(np.int16)
        worst_u8 = max(worst_u8, int(np.abs(a - b).max()))
        mse = float(np.mean((a - b) ** 2))
        psnrs.append(float("inf") if mse == 0 else 10 * np.log10(255**2 / mse))
    return {
        "frames": frames,
        "max_abs_diff_output_0_1": round(worst_float, 6),
        "max_abs_diff_uint8": worst_u8,
        "psnr_db_min": round(min(psnrs), 2),
        "psnr_db_mean_finite": round(float(np.mean([p for p in psnrs if np.isfinite(p)] or [float("inf")])), 2),
        "identical_frames": int(sum(not np.isfinite(p) for p in psnrs)),
    }


def moving_avatar(path: Path, seconds: float) -> Path:
    import cv2

    from bench_tracking import moving_frames
    from media import video_only

    frames, _ = moving_frames(cv2.imread(str(ROOT / "media" / "avatar.jpg")), int(seconds * 25))
    return video_only(path, frames)


def measure(code_root: str, avatar: Path, ckpt: str, engine: str, live_s: float, env: dict) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--code-root",
        code_root,
        "--avatar",
        str(avatar),
        "--checkpoint",
        ckpt,
        "--engine",
        engine,
        "--live-s",
        str(live_s),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=code_root)
    if proc.returncode != 0:
        raise SystemExit(f"child failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def warm_up(code_root: str, avatar: Path, ckpt: str, env: dict) -> None:
    """The export (torch, in a child) for this avatar's decoder rows, so no measured process has it."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lipsync.cli",
            "live",
            "--avatar",
            str(avatar),
            "--audio",
            str(ROOT / "media" / "speech.mp3"),
            "--checkpoint",
            ckpt,
            "--to",
            "null",
            "--duration",
            "1",
            "--runtime",
            "onnxruntime",
            "--precision",
            "fp32",
        ],
        cwd=code_root,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"warm-up run failed: {proc.stderr[-3000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, nargs="+", default=[12.0, 60.0], help="avatar lengths")
    ap.add_argument("--live-s", type=float, default=5.0, help="live run per measurement")
    ap.add_argument("--code-root", default=str(ROOT), help="the checkout to measure (default: this one)")
    ap.add_argument("--label", default="", help="what the checkout is (written to the JSON)")
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS), help="which measurements")
    ap.add_argument("--json", default="bench-out/avatar_memory.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--avatar", help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", help=argparse.SUPPRESS)
    ap.add_argument("--engine", default="wav2lip", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    from common import standin_checkpoint, write_json

    tmp = Path(tempfile.mkdtemp(prefix="bench-avatar-mem-"))
    try:
        env = dict(os.environ, LIPSYNC_CACHE_DIR=str(tmp / "cache"), PYTHONPATH=args.code_root)
        from models.face_model import resolve_face_model

        # The same face model for every child, resolved once here (no download per fresh cache).
        env.setdefault("LIPSYNC_FACE_MODEL", str(resolve_face_model()))
        ckpt, weights = standin_checkpoint(tmp)
        doc = {
            "code_root": args.code_root,
            "label": args.label,
            "weights": weights,
            "runtime": "onnxruntime fp32 (pinned)",
            "live_s": args.live_s,
            "avatars": {},
        }
        for seconds in args.seconds:
            avatar = moving_avatar(tmp / f"moving-{seconds:g}s.mp4", seconds)
            warm_up(args.code_root, avatar, ckpt, env)
            runs = {}
            for label in args.runs:
                engine = RUNS[label]
                print(f"[{seconds:g} s avatar] {label} ...", file=sys.stderr)
                if label == "wav2lip_cold":  # only the exports stay: the avatar is prepared from scratch
                    for sub in ("avatars", "detections"):
                        shutil.rmtree(tmp / "cache" / sub, ignore_errors=True)
                runs[label] = measure(args.code_root, avatar, ckpt, engine, args.live_s, env)
                print(json.dumps(runs[label]), file=sys.stderr)
            doc["avatars"][f"{seconds:g}s"] = {
                "frames": int(seconds * 25),
                "video_mb": round(avatar.stat().st_size / 1e6, 2),
                "runs": runs,
            }
        write_json(doc, args.json)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
