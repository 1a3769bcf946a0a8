#!/usr/bin/env python3
"""The live engine under real-time pacing: N seconds of speech from a file, played as a
microphone would deliver it, to the null sink and to RTMP (nginx-rtmp on loopback).

    python benchmarks/bench_live.py --seconds 60 --json bench-out/live.json [--checkpoint PTH]

Reports, per sink: fps sustained, frames, dropped, processing latency and audio-to-frame
latency percentiles, CPU (% of all cores) and RSS, exactly as `lipsync live --stats-json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def moving_avatar(path: Path, seconds: float = 10.0) -> Path:
    """The embedded photo moving along the tracking benchmark's known path, as an H.264 video."""
    import cv2

    from bench_tracking import moving_frames
    from media import video_only

    frames, _ = moving_frames(cv2.imread(str(ROOT / "media" / "avatar.jpg")), int(seconds * 25))
    return video_only(path, frames)


def one_run(ckpt: str, sink_name: str, seconds: float, runtime, workdir: Path, engine: str = "wav2lip",
            avatar: str | None = None) -> dict:
    from realtime.clock import MonotonicClock
    from realtime.config import EngineConfig
    from realtime.live import build_engine
    from realtime.sinks.base import NullSink
    from realtime.sources.file import FileSource

    server = None
    if sink_name == "rtmp":
        from realtime.sinks.stream import StreamSink
        from servers import NginxRtmp

        server = NginxRtmp(workdir / "nginx").start()
        sink = StreamSink(server.url("bench"), 25, log=lambda m: None)
    else:
        sink = NullSink()
    try:
        eng = build_engine(avatar or str(ROOT / "media" / "avatar.jpg"), [sink], ckpt, runtime, EngineConfig(),
                           clock=MonotonicClock(), log=lambda m: None, engine=engine)
        summary = eng.run(FileSource(str(ROOT / "media" / "speech.mp3"), loop=True), seconds)
    finally:
        if server is not None:
            server.stop()
    if sink_name == "rtmp":
        summary["rtmp_frames_sent"] = sink.frames_sent
        summary["rtmp_frames_lost"] = sink.frames_lost
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--sinks", nargs="+", default=["null", "rtmp"])
    ap.add_argument("--json", default="bench-out/live.json")
    ap.add_argument("--engine", default="wav2lip", choices=["wav2lip", "procedural"])
    ap.add_argument("--moving-avatar", action="store_true",
                    help="a 10 s video of the photo moving along a known path (tracked, feathered)")
    args = ap.parse_args()

    from realtime.live import default_runtime

    tmp = tempfile.TemporaryDirectory()
    os.environ.setdefault("LIPSYNC_CACHE_DIR", os.path.join(tmp.name, "cache"))
    ckpt, weights = args.checkpoint, "user checkpoint"
    if args.engine == "procedural":
        weights = "none (procedural engine)"
    elif ckpt is None:
        from models.synthetic import make_embedded_calibrated_checkpoint

        ckpt = os.path.join(tmp.name, "random.pth")
        make_embedded_calibrated_checkpoint(ckpt)
        weights = "random weights, official format"
    runtime = default_runtime()
    doc = {"seconds": args.seconds, "weights": weights, "engine": args.engine,
           "runtime": f"{runtime.runtime} {runtime.precision}" if args.engine == "wav2lip" else None,
           "avatar": "moving 512x512 video (10 s loop)" if args.moving_avatar else "media/avatar.jpg (512x512 photo)", "audio": "media/speech.mp3 looped, paced in real time",
           "runs": {}}
    for name in args.sinks:
        print(f"[{name}] {args.seconds:g} s ...", file=sys.stderr)
        avatar = str(moving_avatar(Path(tmp.name) / "moving.mp4")) if args.moving_avatar else None
        doc["runs"][name] = one_run(ckpt, name, args.seconds, runtime, Path(tmp.name), args.engine, avatar)
        print(json.dumps(doc["runs"][name]), file=sys.stderr)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
