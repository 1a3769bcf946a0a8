#!/usr/bin/env python3
"""The live engine under real-time pacing: N seconds of speech from a file, played as a
microphone would deliver it, to the null sink and to RTMP (nginx-rtmp on loopback).

    python benchmarks/bench_live.py --seconds 60 --json bench-out/live.json [--checkpoint PTH]

Reports, per sink: fps sustained, frames, dropped, processing latency and audio-to-frame
latency percentiles, CPU (% of all cores) and RSS, exactly as `lipsync live --stats-json`, plus
the CPU time the whole live path spends per output frame and where it goes: "stages" (CPU and
wall ms per output frame of schedule, mel, decode, convert, paste, crossfade; the mean wait in
each queue; each engine thread's CPU), each sink's send cost under "sinks", printed as a table.

Set up like `lipsync live` with defaults: the same thread budget, the precision ladder's choice.
Without --checkpoint, a stand-in in a style the tests never use is made (bench_generator's
hardest: smooth-calibrated BatchNorm, trained-like affines, activations x100). Making it and the
first export + ladder run in child processes, so the measured process is what a warm start is:
no torch, no NNCF.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import standin_checkpoint, write_json  # noqa: E402


def moving_avatar(path: Path, seconds: float = 10.0) -> Path:
    """The embedded photo moving along the tracking benchmark's known path, as an H.264 video."""
    import cv2

    from bench_tracking import moving_frames
    from media import video_only

    frames, _ = moving_frames(cv2.imread(str(ROOT / "media" / "avatar.jpg")), int(seconds * 25))
    return video_only(path, frames)


def warm_up(ckpt: str, avatar: str) -> str:
    """Export + ladder (+ avatar cache) in a child, as a first `lipsync live` start does; its log."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lipsync.cli",
            "live",
            "--avatar",
            avatar,
            "--audio",
            str(ROOT / "media" / "speech.mp3"),
            "--checkpoint",
            ckpt,
            "--to",
            "null",
            "--duration",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"warm-up run failed: {proc.stderr[-2000:]}")
    return proc.stderr


def one_run(
    ckpt: str,
    sink_name: str,
    seconds: float,
    runtime,
    workdir: Path,
    engine: str = "wav2lip",
    avatar: str | None = None,
) -> dict:
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
        sink = StreamSink(server.url("bench"), 25)
    else:
        sink = NullSink()
    try:
        eng = build_engine(
            avatar or str(ROOT / "media" / "avatar.jpg"),
            [sink],
            ckpt,
            runtime,
            EngineConfig(),
            clock=MonotonicClock(),
            engine=engine,
        )
        summary = eng.run(FileSource(str(ROOT / "media" / "speech.mp3"), loop=True), seconds)
    finally:
        if server is not None:
            server.stop()
    if sink_name == "rtmp":
        summary["rtmp_frames_sent"] = sink.frames_sent
        summary["rtmp_frames_lost"] = sink.frames_lost
    # cpu_percent is of all cores: CPU-ms spent per output frame by the whole process.
    summary["cpu_ms_per_frame"] = round(
        summary["cpu_percent"] / 100 * (os.cpu_count() or 1) * 1000 / max(summary["fps_sustained"], 1e-9), 2
    )
    summary["generator"] = eng.renderer.name
    return summary


def breakdown(summary: dict) -> str:
    """The per-frame costs of one run as a few readable lines."""
    st = summary["stages"]
    cpu = summary["cpu_ms_per_frame"]
    lines = [f"  process          cpu {cpu:7.3f} ms/frame ({summary['cpu_percent']}% of all cores)"]
    for name, v in st["stages"].items():
        lines.append(f"  {name:16s} cpu {v['cpu_ms_per_frame']:7.3f}  wall {v['wall_ms_per_frame']:7.3f} ms/frame")
    for name, ms in st["thread_cpu_ms_per_frame"].items():
        lines.append(f"  thread {name:9s} cpu {ms:7.3f} ms/frame (all its work)")
    for name, v in summary.get("sinks", {}).items():
        lines.append(
            f"  sink {name:11s} cpu {v.get('video_cpu_ms_per_frame') or 0:7.3f}  "
            f"wall {v.get('video_wall_ms_per_frame') or 0:7.3f} ms/frame (send_video)"
        )
    waits = "  ".join(f"{k} {v:.1f}" for k, v in st["queue_wait_ms_mean"].items())
    lines.append(f"  queue waits (mean ms): {waits}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--sinks", nargs="+", default=["null", "rtmp"])
    ap.add_argument("--json", default="bench-out/live.json")
    ap.add_argument("--engine", default="wav2lip", choices=["wav2lip", "procedural"])
    ap.add_argument(
        "--moving-avatar",
        action="store_true",
        help="a 10 s video of the photo moving along a known path (tracked, feathered)",
    )
    args = ap.parse_args()

    from realtime import threads
    from realtime.live import default_runtime

    tmp = tempfile.TemporaryDirectory()
    os.environ.setdefault("LIPSYNC_CACHE_DIR", os.path.join(tmp.name, "cache"))
    ckpt, weights = args.checkpoint, "user checkpoint"
    if args.engine == "procedural":
        weights = "none (procedural engine)"
    elif ckpt is None:
        ckpt, weights = standin_checkpoint(tmp.name)
    avatar = (
        str(moving_avatar(Path(tmp.name) / "moving.mp4")) if args.moving_avatar else str(ROOT / "media" / "avatar.jpg")
    )
    ladder = ""
    if args.engine == "wav2lip":
        ladder = warm_up(ckpt, avatar)
        print(ladder, file=sys.stderr)
    budget = threads.apply(threads.plan("live"))
    runtime = default_runtime()
    doc = {
        "seconds": args.seconds,
        "weights": weights,
        "engine": args.engine,
        "ladder": [ln.strip() for ln in ladder.splitlines() if ln.startswith(("  ", "precision:"))],
        "threads": asdict(budget),
        "avatar": "moving 512x512 video (10 s loop)" if args.moving_avatar else "media/avatar.jpg (512x512 photo)",
        "audio": "media/speech.mp3 looped, paced in real time",
        "runs": {},
    }
    for name in args.sinks:
        print(f"[{name}] {args.seconds:g} s ...", file=sys.stderr)
        doc["runs"][name] = one_run(ckpt, name, args.seconds, runtime, Path(tmp.name), args.engine, avatar)
        doc["runs"][name]["torch_imported"] = "torch" in sys.modules
        print(json.dumps(doc["runs"][name]), file=sys.stderr)
        print(breakdown(doc["runs"][name]), file=sys.stderr)
    write_json(doc, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
