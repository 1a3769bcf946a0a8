#!/usr/bin/env python3
"""Soak: `lipsync live` to RTMP for N minutes, watched by a viewer; does anything drift or grow?

    python benchmarks/soak.py --minutes 30 --json bench-out/soak.json [--checkpoint PTH]
        [--avatar PHOTO] [--audio FILE] [--engine wav2lip|procedural] [--interval-s 60]

What runs, all real: nginx-rtmp on loopback (tests/servers.py); `lipsync live` as a user runs it
(the audio file looped and paced in real time, the stream sink, `--stats-jsonl` every
`--interval-s`); a viewer process (soak_viewer.py) playing the stream with PyAV from the start
to the end. Without --checkpoint, the Wav2Lip engine runs on bench_live's stand-in (random
weights); a warm-up start (export, precision ladder, avatar cache) runs first, outside the soak.

Reports: per interval (a minute by default) fps, frames dropped, p95 processing and
audio-to-frame latency, RSS, CPU, threads and the frames the viewer received; RSS of the first
interval vs the last; p95 of the first vs the last; and the A/V offset at the viewer, measured
from the stream itself: the lip motion (picture change between frames of the still avatar) is
cross-correlated with the sound's loudness, in the first and in the last `--window-s` of the
run. The absolute lag includes the engine's by-design lead (the lips start with the speaking
decision, made on a 200 ms window that reaches 160 ms past the frame), so the figure to watch is
its change from the first window to the last. A video avatar moves by itself; the offset is
then not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import standin_checkpoint, write_json  # noqa: E402

VIEWER = ROOT / "benchmarks" / "soak_viewer.py"
FPS = 25.0


class StderrTail:
    """Drains a child's stderr on a thread (its status line never ends in a newline), keeps the
    last `keep` characters, and sets `started` once the "live:" line has been printed."""

    def __init__(self, stream, keep: int = 20_000):
        self.started = threading.Event()
        self._stream, self._keep, self.text = stream, keep, ""
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            chunk = self._stream.read1(4096) if hasattr(self._stream, "read1") else self._stream.read(4096)
            if not chunk:
                break
            self.text = (self.text + chunk.decode("utf-8", "replace"))[-self._keep :]
            if "live:" in self.text:  # what `lipsync live` prints once the engine and its sinks are up
                self.started.set()
        self.started.set()  # ended before starting: the caller sees the exit code

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)


def av_offset(motion, rms, max_lag: int = 12) -> dict:
    """Lag (frames, positive: pictures late) at which the lip motion best matches the sound's
    loudness, refined between frames by a parabola through the peak; with the correlation at the
    peak (its size says how much to trust the lag, its sign which way the lips follow)."""
    v = np.array([np.nan if m is None else m for m in motion], np.float64)
    a = np.array([np.nan if r is None else r for r in rms], np.float64)
    a = 20 * np.log10(a + 1e-5)  # loudness in dB: speech and pauses weigh alike
    ok = ~np.isnan(v) & ~np.isnan(a)
    if ok.sum() < 10 * max_lag:
        return {"lag_frames": None, "lag_ms": None, "peak_correlation": None, "slots": int(ok.sum())}
    v = (v - np.nanmean(v[ok])) / (np.nanstd(v[ok]) or 1.0)
    a = (a - np.nanmean(a[ok])) / (np.nanstd(a[ok]) or 1.0)
    lags = np.arange(-max_lag, max_lag + 1)
    corr = []
    for lag in lags:  # motion at slot k against the sound at slot k - lag
        if lag >= 0:
            x, y = v[lag:], a[: len(a) - lag]
        else:
            x, y = v[:lag], a[-lag:]
        both = ~np.isnan(x) & ~np.isnan(y)
        corr.append(float(np.mean(x[both] * y[both])) if both.sum() else -np.inf)
    corr = np.array(corr)
    # The strongest match either way: lips that move with the sound correlate positively; a
    # generator whose frames change most around pauses (random stand-in weights do) negatively.
    # Either pins the alignment.
    i = int(np.argmax(np.abs(corr)))
    lag = float(lags[i])
    if 0 < i < len(corr) - 1:
        c0, c1, c2 = np.sign(corr[i]) * corr[i - 1 : i + 2]
        denom = c0 - 2 * c1 + c2
        if denom < 0:
            lag += 0.5 * (c0 - c2) / denom
    lag = float(lag)
    return {
        "lag_frames": round(lag, 2),
        "lag_ms": round(1000 * lag / FPS, 1),
        "peak_correlation": round(float(corr[i]), 3),
        "slots": int(ok.sum()),
    }


def viewer_windows(view: dict, window_s: float, skip_s: float = 5.0) -> dict:
    slots = view.get("slots") or {}
    motion, rms = slots.get("motion") or [], slots.get("audio_rms") or []
    n = min(len(motion), len(rms))
    skip = int(skip_s * FPS)  # the first seconds: the viewer waits for a keyframe, the engine warms up
    w = min(int(window_s * FPS), max(0, (n - skip) // 2))  # a short run: two halves, no overlap
    window_s = w / FPS
    first = av_offset(motion[skip : skip + w], rms[skip : skip + w])
    last = av_offset(motion[max(skip, n - w) : n], rms[max(skip, n - w) : n])
    out = {"window_s": window_s, "first": first, "last": last}
    if first["lag_frames"] is not None and last["lag_frames"] is not None:
        out["drift_frames"] = round(last["lag_frames"] - first["lag_frames"], 2)
        out["drift_ms"] = round(1000 * out["drift_frames"] / FPS, 1)
    return out


def viewer_per_interval(view: dict, interval_s: float) -> list[int]:
    """Frames the viewer decoded in each interval of stream time (from pts 0, the stream's start,
    so that a viewer joining late shows as fewer frames in the first interval)."""
    slots = view.get("slots") or {}
    motion, first = slots.get("motion") or [], slots.get("first") or 0
    per = int(interval_s * FPS)
    counts: dict[int, int] = {}
    for i, m in enumerate(motion):
        if m is not None:
            counts[(first + i) // per] = counts.get((first + i) // per, 0) + 1
    return [counts.get(k, 0) for k in range(max(counts) + 1)] if counts else []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--checkpoint", default=None, help="default: bench_live's stand-in (random weights)")
    ap.add_argument("--avatar", default=str(ROOT / "media" / "avatar.jpg"))
    ap.add_argument("--audio", default=str(ROOT / "media" / "speech.mp3"), help="looped, paced in real time")
    ap.add_argument("--engine", default="wav2lip", choices=["wav2lip", "procedural"])
    ap.add_argument("--interval-s", type=float, default=60.0, help="--stats-jsonl interval: one row each")
    ap.add_argument("--window-s", type=float, default=60.0, help="viewer A/V offset: first and last window")
    ap.add_argument("--json", default="bench-out/soak.json")
    ap.add_argument("--keep", default=None, metavar="DIR", help="keep the stats jsonl and viewer report here")
    args = ap.parse_args(argv)

    from mediaio.face_media import is_image
    from servers import NginxRtmp

    tmp = tempfile.TemporaryDirectory()
    work = Path(args.keep) if args.keep else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LIPSYNC_CACHE_DIR", os.path.join(tmp.name, "cache"))
    ckpt, weights, engine_args = args.checkpoint, "user checkpoint", ["--engine", args.engine]
    if args.engine == "procedural":
        weights = "none (procedural engine)"
    else:
        if ckpt is None:
            ckpt, weights = standin_checkpoint(tmp.name)
        engine_args += ["--checkpoint", ckpt]
        from bench_live import warm_up

        print("warm-up start (export, ladder, avatar cache) ...", file=sys.stderr)
        warm_up(ckpt, args.avatar)

    server = NginxRtmp(Path(tmp.name) / "nginx").start()
    url = server.url("soak")
    jsonl, summary_path, view_path = work / "soak.jsonl", work / "summary.json", work / "viewer.json"
    seconds = args.minutes * 60
    cmd = [
        sys.executable,
        "-m",
        "lipsync.cli",
        "live",
        "--avatar",
        args.avatar,
        "--audio",
        args.audio,
        "--loop",
        "--to",
        url,
        "--duration",
        f"{seconds:g}",
        "--stats-jsonl",
        str(jsonl),
        "--stats-interval",
        f"{args.interval_s:g}",
        "--stats-json",
        str(summary_path),
        *engine_args,
    ]
    print(f"soak: {args.minutes:g} min, {' '.join(cmd[3:])}", file=sys.stderr)
    viewer = None
    try:
        live = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE)
        tail = StderrTail(live.stderr)
        if not tail.started.wait(300):
            raise SystemExit("live did not start within 300 s")
        # Publishing has begun (the stream sink connects before the engine starts); the viewer
        # joins now and waits for the first keyframe, as a viewer opening the page would.
        viewer = subprocess.Popen([sys.executable, str(VIEWER), url, str(view_path), "--fps", f"{FPS:g}"], cwd=ROOT)
        t0 = time.monotonic()
        rc = live.wait(timeout=seconds + 600)
        tail.join(10)
        run_s = time.monotonic() - t0
        if rc != 0:
            raise SystemExit(f"live exited with {rc}: {tail.text[-2000:]}")
        viewer.wait(timeout=60)  # it ends by its read timeout once the publisher has stopped
    finally:
        if viewer is not None and viewer.poll() is None:
            viewer.terminate()
            viewer.wait(timeout=30)
        server.stop()

    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    summary = json.loads(summary_path.read_text())
    view = json.loads(view_path.read_text()) if view_path.exists() else {}
    full = [r for r in rows if r["interval_s"] >= 0.5 * args.interval_s] or rows
    at_viewer = viewer_per_interval(view, args.interval_s)
    per_interval = []
    for i, r in enumerate(rows):
        sink = next(iter(r.get("sinks", {}).values()), {})
        per_interval.append(
            {
                "t_s": r["t_s"],
                "interval_s": r["interval_s"],
                "fps": r["fps"],
                "frames": r["frames"],
                "dropped": r["dropped"],
                "processing_p95_ms": r["processing_ms"]["p95"],
                "audio_to_frame_p95_ms": r["audio_to_frame_ms"]["p95"],
                "rss_mb": r["rss_mb"],
                "cpu_percent": r["cpu_percent"],
                "threads": r.get("threads"),
                "av_offset_at_sinks_ms": r["av_offset_ms"],
                "stream_frames_lost": sink.get("frames_lost"),
                "stream_reconnects": sink.get("reconnects"),
                "viewer_frames": at_viewer[i] if i < len(at_viewer) else None,
            }
        )
    p95_first, p95_last = full[0]["processing_ms"]["p95"], full[-1]["processing_ms"]["p95"]
    offset = (
        viewer_windows(view, min(args.window_s, seconds / 3))
        if is_image(args.avatar)
        else {"note": "not measured: a video avatar moves by itself"}
    )
    last_pts = (view.get("last_video_pts_s"), view.get("last_audio_pts_s"))
    doc = {
        "benchmark": "soak: lipsync live to RTMP (nginx-rtmp on loopback), viewer decoding with PyAV",
        "minutes": args.minutes,
        "run_s": round(run_s, 1),
        "engine": args.engine,
        "weights": weights,
        "avatar": args.avatar,
        "audio": f"{args.audio} looped, paced in real time",
        "interval_s": args.interval_s,
        "cpu_count": os.cpu_count(),
        "per_interval": per_interval,
        "rss_mb": {
            "first_interval": full[0]["rss_mb"],
            "last_interval": full[-1]["rss_mb"],
            "growth": round(full[-1]["rss_mb"] - full[0]["rss_mb"], 1),
        },
        "processing_p95_ms": {
            "first_interval": p95_first,
            "last_interval": p95_last,
            "last_vs_first": round(p95_last / p95_first, 3) if p95_first else None,
        },
        "threads": {"first_interval": full[0].get("threads"), "last_interval": full[-1].get("threads")},
        "whole_run": {
            k: summary.get(k)
            for k in (
                "fps_sustained",
                "frames",
                "dropped",
                "audio_overruns",
                "processing_latency_ms",
                "audio_to_frame_ms",
                "cpu_percent",
            )
        },
        "viewer": {
            "video_frames": view.get("video_frames"),
            "video_pts_gaps": view.get("video_pts_gaps"),
            "audio_s": round(view["audio_samples"] / view["audio_rate_hz"], 2) if view.get("audio_rate_hz") else None,
            "opened_after_s": view.get("opened_after_s"),
            # PyAV's read timeout fires as "Immediate exit requested" once the publisher is gone.
            "ended_by": "read timeout (publisher stopped)"
            if "Immediate exit" in str(view.get("ended_by"))
            else view.get("ended_by"),
            # Timestamps of the last picture and the last sound that arrived: how far
            # apart the two tracks reach the viewer at the end.
            "last_audio_minus_last_video_ms": round(1000 * (last_pts[1] - last_pts[0]), 1)
            if None not in last_pts
            else None,
            "av_offset": offset,
        },
    }
    drift = offset.get("drift_frames") if isinstance(offset, dict) else None
    doc["targets"] = {
        "rss_growth_under_20_mb": doc["rss_mb"]["growth"] < 20,
        "p95_last_within_10pct_of_first": bool(p95_first and abs(p95_last / p95_first - 1) <= 0.10),
        "viewer_av_drift_within_1_frame": None if drift is None else bool(abs(drift) <= 1.0),
        "zero_drops": summary.get("dropped") == 0,
    }
    write_json(doc, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
