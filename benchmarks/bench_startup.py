#!/usr/bin/env python3
"""Start-up of `lipsync live` with defaults: time from process start to the first frame, and the
live process's memory, for the starts a user meets.

    python benchmarks/bench_startup.py --json bench-out/startup.json [--checkpoint PTH] [--seconds 3]

Runs, in order, each `lipsync live --avatar PHOTO --audio media/speech.mp3 --to null` in a fresh
process on one fresh cache folder:
  first_start     a checkpoint never seen: export and the precision ladder (in their own process)
  warm_start      the same photo again: everything from the cache
  new_avatar      another photo on the checkpoint now laddered: the earlier choice is checked on
                  the new face (the quality gate on its own crops) and reused when it passes
  new_avatar_warm that photo again
Each reports time_to_first_frame_s (from just before the process is started until its first
frame reaches the sink; CLOCK_MONOTONIC is one clock for every process), rss_mb at the end of the
run (what the run holds), peak_rss_mb (the live process's high-water mark) and whether torch or
NNCF were ever imported by the live process. The other photo is the shipped one mirrored and
tinted: another file, another face to the calibration.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_avatar_memory import rss_mb  # noqa: E402
from common import standin_checkpoint, write_json  # noqa: E402

SPEECH = ROOT / "media" / "speech.mp3"


def child(argv: list[str]) -> int:
    """`lipsync live ARGV` in this process, noting when the first frame reaches the sink."""
    from realtime.sinks.base import NullSink

    first: list[float] = []
    plain = NullSink.send_video

    def noting(self, frame):
        if not first:
            first.append(time.monotonic())
        plain(self, frame)

    NullSink.send_video = noting  # type: ignore[method-assign]
    from lipsync.cli import main

    code = main(argv)
    report = {
        "exit_code": code,
        "first_frame_monotonic": first[0] if first else None,
        **rss_mb(),
        "torch_imported": "torch" in sys.modules,
        "nncf_imported": "nncf" in sys.modules,
    }
    print("STARTUP " + json.dumps(report), flush=True)
    return code


def one_start(ckpt: str, photo: Path, seconds: float, env: dict) -> dict:
    argv = ["live", "--avatar", str(photo), "--audio", str(SPEECH), "--checkpoint", ckpt, "--to", "null"]
    argv += ["--duration", f"{seconds:g}"]
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("STARTUP ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"a start failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    got = json.loads(lines[-1].removeprefix("STARTUP "))
    return {
        "time_to_first_frame_s": round(got["first_frame_monotonic"] - t0, 2),
        "wall_s": round(wall, 2),
        "rss_mb": got["rss_mb"],
        "peak_rss_mb": got["peak_rss_mb"],
        "torch_imported": got["torch_imported"],
        "nncf_imported": got["nncf_imported"],
        "log": [ln.strip() for ln in proc.stderr.splitlines() if "precision" in ln or ln.startswith("  ")],
    }


def other_photo(path: Path) -> Path:
    """The shipped photo mirrored and tinted: another file and another face for the calibration."""
    import cv2
    import numpy as np

    img = cv2.imread(str(ROOT / "media" / "avatar.jpg"))
    tinted = np.clip(cv2.flip(img, 1).astype(np.float32) * np.array([1.1, 0.95, 0.85], np.float32), 0, 255)
    cv2.imwrite(str(path), tinted.astype(np.uint8))
    return path


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.path.insert(0, str(ROOT))
        return child(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each live run")
    ap.add_argument("--json", default="bench-out/startup.json")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    env = {**os.environ, "LIPSYNC_CACHE_DIR": os.path.join(tmp.name, "cache")}
    ckpt, weights = args.checkpoint, "user checkpoint"
    if ckpt is None:
        ckpt, weights = standin_checkpoint(tmp.name)
    photo = ROOT / "media" / "avatar.jpg"
    other = other_photo(Path(tmp.name) / "other.png")
    doc: dict = {"seconds": args.seconds, "weights": weights, "runs": {}}
    for name, p in (("first_start", photo), ("warm_start", photo), ("new_avatar", other), ("new_avatar_warm", other)):
        print(f"[{name}] ...", file=sys.stderr)
        doc["runs"][name] = one_start(ckpt, p, args.seconds, env)
        print(json.dumps(doc["runs"][name]), file=sys.stderr)
    runs = doc["runs"]
    doc["first_vs_warm_rss"] = round(runs["first_start"]["rss_mb"] / runs["warm_start"]["rss_mb"], 3)
    write_json(doc, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
