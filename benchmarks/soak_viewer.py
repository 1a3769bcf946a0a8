#!/usr/bin/env python3
"""The viewer side of the soak: plays an RTMP stream with PyAV in its own process, as a viewer
would, until the stream ends, and writes what it saw as JSON.

    python benchmarks/soak_viewer.py URL OUT.json [--fps 25] [--open-timeout-s 30]

Per output-frame slot (1/fps of stream time) it keeps two numbers, so memory stays small for a
30-minute run: the picture's change from the previous frame (mean absolute difference of a
downscaled grey image: a still-photo avatar changes only where the lips move) and the sound's
RMS. `soak.py` cross-correlates the two to find the A/V offset the viewer experiences.
It ends when the stream has been silent for the read timeout (a publisher that stops sends no
EOF over RTMP), or on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("out")
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--open-timeout-s", type=float, default=30.0)
    ap.add_argument("--read-timeout-s", type=float, default=5.0)
    args = ap.parse_args(argv)

    import av

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    motion: dict[int, float] = {}  # slot -> picture change from the previous frame
    sq: dict[int, float] = {}  # slot -> sum of squared samples
    n: dict[int, int] = {}  # slot -> samples
    report = {
        "url": args.url,
        "video_frames": 0,
        "audio_samples": 0,
        "audio_rate_hz": None,
        "size": None,
        "first_video_pts_s": None,
        "last_video_pts_s": None,
        "first_audio_pts_s": None,
        "last_audio_pts_s": None,
        "video_pts_gaps": 0,
        "opened_after_s": None,
        "ended_by": None,
        "last_video_wall_s": None,
        "last_audio_wall_s": None,
    }
    prev = None
    prev_slot = None
    t_start = time.monotonic()
    container = None
    while container is None and not stop.is_set():
        try:
            container = av.open(
                args.url, options={"rtmp_live": "live"}, timeout=(args.open_timeout_s, args.read_timeout_s)
            )
        except Exception as e:  # the publisher may not be up yet: try again until the deadline
            if time.monotonic() - t_start > args.open_timeout_s:
                report["ended_by"] = f"open failed: {type(e).__name__}: {e}"
                break
            stop.wait(0.5)
    if container is not None:
        report["opened_after_s"] = round(time.monotonic() - t_start, 2)
        try:
            streams = [s for s in container.streams if s.type in ("video", "audio")]
            for packet in container.demux(streams):
                if stop.is_set():
                    report["ended_by"] = "signal"
                    break
                if packet.pts is None:
                    continue
                for frame in packet.decode():
                    t = float(frame.pts * frame.time_base)
                    if packet.stream.type == "video":
                        slot = round(t * args.fps)
                        grey = frame.to_ndarray(format="gray")[::4, ::4].astype(np.float32)
                        if prev is not None:
                            motion[slot] = float(np.mean(np.abs(grey - prev)))
                        if prev_slot is not None and slot - prev_slot > 1:
                            report["video_pts_gaps"] += 1
                        prev, prev_slot = grey, slot
                        report["video_frames"] += 1
                        report["size"] = [frame.width, frame.height]
                        report["first_video_pts_s"] = (
                            report["first_video_pts_s"] if report["first_video_pts_s"] is not None else t
                        )
                        report["last_video_pts_s"] = t
                        report["last_video_wall_s"] = time.monotonic() - t_start
                    else:
                        pcm = frame.to_ndarray().astype(np.float64)
                        pcm = pcm.mean(axis=0) if pcm.ndim == 2 and pcm.shape[0] < pcm.shape[1] else pcm.ravel()
                        rate = frame.sample_rate
                        report["audio_rate_hz"] = rate
                        slots = np.floor((t + np.arange(len(pcm)) / rate) * args.fps).astype(np.int64)
                        for s in np.unique(slots):
                            part = pcm[slots == s]
                            sq[int(s)] = sq.get(int(s), 0.0) + float(np.sum(part * part))
                            n[int(s)] = n.get(int(s), 0) + len(part)
                        report["audio_samples"] += len(pcm)
                        report["first_audio_pts_s"] = (
                            report["first_audio_pts_s"] if report["first_audio_pts_s"] is not None else t
                        )
                        report["last_audio_pts_s"] = t + len(pcm) / rate
                        report["last_audio_wall_s"] = time.monotonic() - t_start
            else:
                report["ended_by"] = "end of stream"
        except Exception as e:  # the read timeout after the publisher stopped, or a broken stream
            report["ended_by"] = f"{type(e).__name__}: {e}"
        finally:
            container.close()
    slots = sorted(set(motion) | set(n))
    report["slots"] = {
        "first": slots[0] if slots else None,
        "fps": args.fps,
        "motion": [motion.get(s) for s in range(slots[0], slots[-1] + 1)] if slots else [],
        "audio_rms": [(sq[s] / n[s]) ** 0.5 if n.get(s) else None for s in range(slots[0], slots[-1] + 1)]
        if slots
        else [],
    }
    with open(args.out, "w") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
