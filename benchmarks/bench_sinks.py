#!/usr/bin/env python3
"""What each live sink costs: CPU milliseconds per frame, per sink type and frame size.

    python benchmarks/bench_sinks.py --json bench-out/sinks.json [--seconds 10] [--presets ultrafast veryfast]

Each case feeds one sink, through its own SinkRunner exactly as a live session does, with frames
and 48 kHz audio at 25 fps in real time for `--seconds`:
  file   a .mp4 recording (H.264 + AAC, fragmented, with its disk reserve)
  rtmp   RTMP to nginx-rtmp on loopback (FLV: H.264 + AAC)
  udp    MPEG-TS over UDP to a loopback port (nobody listening: the cost is the sender's)
  null   takes and forgets: what delivery itself costs
at 512x512 and 1280x720, with the live encoder settings (realtime.sinks.encoding) and the live
thread budget (one encoder thread). The picture is the embedded photo scaled to the size with a
mouth-sized ellipse opening and closing, so the encoder sees lip-sync-like motion.

Per case: the sink thread's CPU time per frame (time.thread_time around every send, as the
stats report it; audio included), that as % of one core, the whole process's CPU per frame, and
frames delivered / dropped at the sink. Real time on a shared machine: figures vary with load.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import write_json  # noqa: E402

FPS = 25
SIZES = ((512, 512), (1280, 720))
SINKS = ("file", "rtmp", "udp", "null")


def frames_for(width: int, height: int, n: int = 50) -> list[np.ndarray]:
    """The photo at this size, a mouth ellipse opening and closing over `n` frames (a loop)."""
    import cv2

    img = cv2.resize(cv2.imread(str(ROOT / "media" / "avatar.jpg")), (width, height), interpolation=cv2.INTER_AREA)
    cx, cy = width // 2, int(height * 0.62)
    out = []
    for i in range(n):
        f = img.copy()
        opening = int(3 + 12 * abs(np.sin(np.pi * i / 10)) * height / 512)
        cv2.ellipse(f, (cx, cy), (int(width * 0.05), opening), 0, 0, 360, (40, 30, 90), -1)
        out.append(f)
    return out


def make(sink: str, encoding, workdir: Path, servers: dict):
    from realtime.live import make_sink
    from servers import free_port

    if sink == "file":
        return make_sink(str(workdir / f"rec-{time.monotonic_ns()}.mp4"), FPS, 48_000, encoding)
    if sink == "rtmp":
        if "nginx" not in servers:
            from servers import NginxRtmp

            servers["nginx"] = NginxRtmp(workdir / "nginx").start()
        return make_sink(servers["nginx"].url(f"bench{time.monotonic_ns()}"), FPS, 48_000, encoding)
    if sink == "udp":
        return make_sink(f"udp://127.0.0.1:{free_port()}", FPS, 48_000, encoding)
    return make_sink("null", FPS, 48_000, encoding)


def one_case(sink_kind: str, size: tuple[int, int], encoding, seconds: float, workdir: Path, servers: dict) -> dict:
    from realtime.clock import MonotonicClock
    from realtime.frames import AudioChunk, VideoFrame
    from realtime.sinks.delivery import SinkRunner

    frames = frames_for(*size)
    sink = make(sink_kind, encoding, workdir, servers)
    runner = SinkRunner(sink, FPS).start(*size)
    clock = MonotonicClock()
    n = int(seconds * FPS)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(1920 * 50)).astype(np.float32)  # a loop of noise-like "speech"
    cpu0, t0 = time.process_time(), clock.now_ns()
    for i in range(n):
        clock.sleep_until_ns(t0 + i * 1_000_000_000 // FPS)
        k = i % 50
        runner.offer(VideoFrame(frames[k], i), AudioChunk(audio[k * 1920 : (k + 1) * 1920], 48_000, i * 1920, 0))
    runner.close()
    process_cpu_s = time.process_time() - cpu0
    c = runner.counts()
    return {
        "sink": sink_kind,
        "size": f"{size[0]}x{size[1]}",
        "preset": encoding.preset,
        "sink_cpu_ms_per_frame": c["cpu_ms_per_frame"],
        "sink_cpu_percent_of_one_core": c["cpu_percent"],
        "process_cpu_ms_per_frame": round(1000 * process_cpu_s / n, 2),
        "frames": n,
        "delivered": c["delivered"],
        "video_dropped": c["video_dropped"],
        "audio_dropped": c["audio_dropped"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="per case")
    ap.add_argument("--sinks", nargs="+", default=list(SINKS), choices=SINKS)
    ap.add_argument("--presets", nargs="+", default=["ultrafast"], help="x264 presets to measure (encoding sinks)")
    ap.add_argument("--json", default="bench-out/sinks.json")
    args = ap.parse_args()

    from export.machine import cpu_name
    from realtime import threads
    from realtime.sinks.encoding import LiveVideoEncoding

    budget = threads.apply(threads.plan("live"))
    doc = {
        "what": "CPU per frame of each live sink, fed at 25 fps in real time through its SinkRunner",
        "seconds_per_case": args.seconds,
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": asdict(budget),
        "encoding_defaults": asdict(LiveVideoEncoding()),
        "load_average_before": os.getloadavg(),
        "cases": [],
    }
    servers: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for size in SIZES:
                for kind in args.sinks:
                    for preset in args.presets if kind != "null" else ["ultrafast"]:
                        enc = LiveVideoEncoding(preset=preset)
                        print(f"[{kind} {size[0]}x{size[1]} {preset}] {args.seconds:g} s ...", file=sys.stderr)
                        case = one_case(kind, size, enc, args.seconds, Path(tmp), servers)
                        if kind == "null":
                            case["preset"] = None
                        print(case, file=sys.stderr)
                        doc["cases"].append(case)
        finally:
            if "nginx" in servers:
                servers["nginx"].stop()
    doc["load_average_after"] = os.getloadavg()
    doc["note"] = (
        "measured on a shared 2-core machine with other jobs running (see the load averages): "
        "per-frame CPU of the sink's own thread is the figure to compare; wall-clock effects vary"
    )
    write_json(doc, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
