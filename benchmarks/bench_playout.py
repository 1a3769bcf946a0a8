#!/usr/bin/env python3
"""Playout for a voice agent, measured: TTS bursts, interruptions, a blocked sink, a long burst.

    python benchmarks/bench_playout.py --json bench-out/playout.json [--checkpoint PTH]
    python benchmarks/bench_playout.py --engine procedural --only consumer_interrupt,segments --cuts 1   # smoke

Set up like `lipsync live` with defaults (thread budget, precision ladder, feathered paste) on the
embedded 512x512 photo. Without --checkpoint, the hardest stand-in of bench_generator (not a
test checkpoint) is made; it and the first export + ladder run in child processes.

  burst      10 s of speech pushed in 100 ms pieces within 0.5 s: frames for the utterance, paced
             fps, inter-frame gaps, late/dropped, time from the first push to the first speech
             frame at a sink, and the A/V pairing error (lag between the audio the sink got beside
             the utterance's frames and the pushed audio)
  interrupt  three utterances, each cut 1.5 s in: from interrupt() to the last speech audio a
             sink received, how much speech audio it received after the call, and the time to
             the first idle frame after the crossfade (the playout's own pacer: Pacing.PLAYOUT)
  consumer_interrupt  the same cuts with a consumer that owns the clock (Pacing.CONSUMER, pulled
             one frame per 1/fps as LiveKit's AVSynchronizer does): speech audio it received
             after interrupt() returned (target <= 40 ms: the one frame being handed over)
  segments   replies with pauses inside (a 1.5 s TTS stall; 1 s pushes with 0.6 s gaps), each
             ended once by end_segment(): how many utterances the playout played for each
             (expected 1) and whether any ended by itself
  blocked    a second sink that blocks for 5 s: the fps the first sink keeps meanwhile
  cli        a 42 s file through `lipsync live --audio-pacing burst --to null`
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import standin_checkpoint, write_json  # noqa: E402

AVATAR = ROOT / "media" / "avatar.jpg"
SPEECH = ROOT / "media" / "speech.mp3"


class TimedSink:
    """Records when each frame reached it, what kind it was and whether its paired audio had sound."""

    def __init__(self, name="timed", block_s: float = 0.0):
        self.name, self.block_s = name, block_s
        self.rows = []  # (t_ns, pts, kind, audio_has_sound)
        self.audio = {}
        self._blocked = False

    def send_audio(self, chunk):
        self.audio[chunk.pts] = chunk.pcm

    def send_video(self, frame):
        if self.block_s and not self._blocked:
            self._blocked = True
            time.sleep(self.block_s)  # a sink stuck on a reconnect
        pcm = self.audio.get(frame.pts * 1920)
        self.rows.append(
            (time.monotonic_ns(), frame.pts, frame.meta.get("kind"), bool(pcm is not None and np.abs(pcm).max() > 1e-4))
        )

    def close(self):
        pass


def speech(seconds: float, rate=48_000):
    from mediaio.audio import decode_audio

    d = decode_audio(SPEECH)
    pcm = d.pcm.mean(axis=0).astype(np.float32)
    n = int(seconds * d.sample_rate_hz)
    return np.tile(pcm, int(np.ceil(n / len(pcm))))[:n], d.sample_rate_hz


def gaps_ms(rows):
    t = np.array([r[0] for r in rows], np.float64)
    g = np.diff(t) / 1e6
    return (
        {
            "p50": round(float(np.percentile(g, 50)), 2),
            "p99": round(float(np.percentile(g, 99)), 2),
            "max": round(float(g.max()), 2),
        }
        if len(g)
        else {}
    )


ENGINE = "wav2lip"  # --engine


def build(ckpt, sinks, pacing=None):
    from realtime.live import build_playout, default_runtime
    from realtime.playout import Pacing

    pacing = pacing or Pacing.PLAYOUT
    return build_playout(
        str(AVATAR), sinks, ckpt, default_runtime(), reader=pacing is Pacing.CONSUMER, engine=ENGINE, pacing=pacing
    )


class Puller:
    """A consumer that owns the clock: pulls one item per 1/fps (never faster than real time)
    from a Pacing.CONSUMER playout, and records (t_ns, seconds of speech audio, SegmentEnd|None)."""

    def __init__(self, pl):
        self.pl, self.rows = pl, []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._t.start()
        return self

    def _run(self):
        from realtime.playout import PlayoutItem

        t0, n = time.monotonic_ns(), 0
        for item in self.pl.frames():
            now = time.monotonic_ns()
            if not isinstance(item, PlayoutItem):
                self.rows.append((now, 0.0, item))
                continue
            speaking = item.video.meta.get("segment") is not None
            self.rows.append((now, item.audio.samples / item.audio.sample_rate_hz if speaking else 0.0, None))
            n += 1
            if self._stop.is_set():
                return
            time.sleep(max(0.0, (t0 + n * 40_000_000 - time.monotonic_ns()) / 1e9))

    def stop(self):
        self._stop.set()
        self._t.join(5)


def burst(ckpt) -> dict:
    import soxr

    sink = TimedSink()
    pl = build(ckpt, [sink])
    events = []
    pl.on_event(lambda k, p: events.append((time.monotonic_ns(), k, p)))
    pl.start()
    time.sleep(1.0)  # idle frames first, as an agent waiting for its first reply
    pcm, rate = speech(10.0)
    step = rate // 10
    t0 = time.monotonic_ns()
    for i, off in enumerate(range(0, len(pcm), step)):
        pl.push_audio(pcm[off : off + step], rate)
        time.sleep(max(0.0, (t0 + (i + 1) * 5_000_000 - time.monotonic_ns()) / 1e9))  # 100 pieces in 0.5 s
    pl.end_segment()
    push_s = (time.monotonic_ns() - t0) / 1e9
    pl.wait_idle(timeout_s=60)
    time.sleep(0.5)
    summary = pl.stop()
    end = next(p for _, k, p in events if k == "playback_finished")
    rows = sink.rows
    speech_pts = [r[1] for r in rows if r[3]]
    first_sound = next(r for r in rows if r[3])
    seg_rows = [r for r in rows if speech_pts[0] <= r[1] <= speech_pts[0] + round(end.position_s * 25) - 1]
    span_s = (seg_rows[-1][0] - seg_rows[0][0]) / 1e9
    heard = np.concatenate([sink.audio[r[1] * 1920] for r in seg_rows])
    want = soxr.resample(pcm, rate, 48_000).astype(np.float32) if rate != 48_000 else pcm
    n = min(len(heard), len(want))
    lags = range(-960, 961, 8)
    lag = max(lags, key=lambda k: float(np.dot(heard[max(0, k) : n + min(0, k)], want[max(0, -k) : n - max(0, k)])))
    return {
        "pushed_s": 10.0,
        "push_took_s": round(push_s, 3),
        "utterance_frames": round(end.position_s * 25),
        "fps_during_utterance": round((len(seg_rows) - 1) / span_s, 3),
        "generated_in_utterance": sum(r[2] == "generated" for r in seg_rows),
        "idle_in_utterance (silent windows)": sum(r[2] == "idle" for r in seg_rows),
        "late": summary.get("late", 0),
        "dropped": summary["dropped"],
        "interframe_gap_ms": gaps_ms(rows),
        "first_speech_frame_after_push_ms": round((first_sound[0] - t0) / 1e6, 1),
        "av_pairing_error_ms": round(lag / 48, 3),
        "cpu_percent": summary["cpu_percent"],
    }


def consumer_interrupts(ckpt, cuts=3) -> dict:
    from realtime.playout import Pacing

    pl = build(ckpt, [], Pacing.CONSUMER)
    started = threading.Event()
    pl.on_event(lambda k, p: started.set() if k == "playback_started" else None)
    pl.start()
    puller = Puller(pl).start()
    time.sleep(0.5)
    pcm, rate = speech(5.0)
    marks = []
    for _ in range(cuts):
        started.clear()
        pl.push_audio(pcm, rate)
        pl.end_segment()
        started.wait(10)
        time.sleep(1.5)
        pl.interrupt()
        marks.append(time.monotonic_ns())  # when interrupt() returned
        time.sleep(0.6)
    puller.stop()
    summary = pl.stop()
    after_ms = [round(1000 * sum(a for t, a, _ in puller.rows if m <= t < m + 500_000_000), 1) for m in marks]
    ends = [e for _, _, e in puller.rows if e is not None]
    return {
        "speech_audio_after_interrupt_ms": after_ms,
        "max_ms": max(after_ms),
        "target_ms": 40,
        "segment_ends": len(ends),
        "interrupted_ends": sum(e.interrupted for e in ends),
        "late": summary.get("late", 0),
    }


def segments(ckpt) -> dict:
    """Replies with pauses inside, pushed at real time as a streaming TTS does, each ended once."""
    from realtime.playout import Pacing

    pl = build(ckpt, [], Pacing.CONSUMER)
    ends = []
    pl.on_event(lambda k, p: ends.append(p) if k == "playback_finished" else None)
    pl.start()
    puller = Puller(pl).start()
    pcm, rate = speech(4.0)
    replies = {
        "tts_stall_1.5s": [(0.0, 0.0, 2.0), (1.5, 2.0, 4.0)],  # (pause before, from s, to s)
        "1s_pushes_0.6s_gaps": [(0.0, 0.0, 1.0), (0.6, 1.0, 2.0), (0.6, 2.0, 3.0), (0.6, 3.0, 4.0)],
    }
    out = {}
    for name, pieces in replies.items():
        before = len(ends)
        t0 = time.monotonic()
        for pause, a, b in pieces:
            t0 += pause
            for off in range(int(a * rate), int(b * rate), rate // 10):  # 100 ms pieces at real time
                time.sleep(max(0.0, t0 + off / rate - a - time.monotonic()))  # due at its place in the reply
                pl.push_audio(pcm[off : min(off + rate // 10, int(b * rate))], rate)
            t0 += b - a
        pl.end_segment()
        pl.wait_idle(timeout_s=30)
        out[name] = {"segments_played": len(ends) - before, "expected": 1}
    puller.stop()
    pl.stop()
    out["all_one_segment"] = all(v["segments_played"] == 1 for v in out.values() if isinstance(v, dict))
    return out


def interrupts(ckpt) -> dict:
    sink = TimedSink()
    pl = build(ckpt, [sink])
    started = threading.Event()
    pl.on_event(lambda k, p: started.set() if k == "playback_started" else None)
    pl.start()
    time.sleep(0.5)
    pcm, rate = speech(5.0)
    cuts = []
    for _ in range(3):
        started.clear()
        pl.push_audio(pcm, rate)
        pl.end_segment()
        started.wait(10)
        time.sleep(1.5)
        t_cut = time.monotonic_ns()
        pl.interrupt()
        time.sleep(0.6)
        cuts.append(t_cut)
    pl.wait_idle(timeout_s=10)
    summary = pl.stop()
    out = []
    idle = None
    for t_cut in cuts:
        after = [r for r in sink.rows if r[0] >= t_cut]
        # Until the next utterance is pushed (0.6 s after each cut).
        last_sound = max((r[0] for r in sink.rows if r[3] and r[0] < t_cut + 500_000_000), default=t_cut)
        idle = next(r for r in after if r[2] == "idle")
        sound_after = [r for r in after if r[3] and r[0] < t_cut + 500_000_000]
        out.append(
            {
                "to_last_speech_audio_ms": round(max(0, last_sound - t_cut) / 1e6, 1),
                "speech_audio_after_interrupt_ms": 40 * len(sound_after),
                "to_idle_frame_ms": round((idle[0] - t_cut) / 1e6, 1),
                "crossfade_frames": sum(1 for r in after if r[0] < idle[0] and r[2] == "crossfade"),
            }
        )
    return {"utterances": out, "interframe_gap_ms": gaps_ms(sink.rows), "dropped": summary["dropped"]}


def blocked(ckpt) -> dict:
    fine, stuck = TimedSink("fine"), TimedSink("stuck", block_s=5.0)
    pl = build(ckpt, [stuck, fine])
    pl.start()
    pcm, rate = speech(8.0)
    pl.push_audio(pcm, rate)
    pl.end_segment()
    pl.wait_idle(timeout_s=30)
    summary = pl.stop()
    t_block = stuck.rows[0][0] - 5_000_000_000 if stuck.rows else None
    during = [r for r in fine.rows if t_block is not None and t_block <= r[0] <= t_block + 5e9]
    return {
        "fine_sink_fps_while_other_blocked": round((len(during) - 1) / ((during[-1][0] - during[0][0]) / 1e9), 3),
        "fine_sink_gap_ms": gaps_ms(fine.rows),
        "fine_sink_frames": len(fine.rows),
        "blocked_sink_frames": len(stuck.rows),
        "blocked_sink_dropped": summary["sink_frames_dropped"]["stuck"],
    }


def cli(ckpt, tmp: Path) -> dict:
    import av

    from mediaio.audio import decode_audio

    pcm, rate = speech(42.0)
    path = tmp / "speech42.wav"
    with av.open(str(path), "w") as c:
        st = c.add_stream("pcm_s16le", rate=rate, layout="mono")
        fr = av.AudioFrame.from_ndarray(
            (np.clip(pcm, -1, 1) * 32767).astype(np.int16)[None], format="s16", layout="mono"
        )
        fr.sample_rate = rate
        c.mux(st.encode(fr))
        c.mux(st.encode(None))
    assert abs(decode_audio(path).duration_s - 42.0) < 0.01
    stats = tmp / "cli.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lipsync.cli",
            "live",
            "--avatar",
            str(AVATAR),
            "--audio",
            str(path),
            *(["--checkpoint", ckpt] if ckpt else ["--engine", ENGINE]),
            "--audio-pacing",
            "burst",
            "--to",
            "null",
            "--stats-json",
            str(stats),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr[-1000:]}
    s = json.loads(stats.read_text())
    return {
        k: s[k]
        for k in (
            "fps_sustained",
            "frames",
            "generated",
            "idle",
            "dropped",
            "interframe_gap_ms",
            "cpu_percent",
            "rss_mb",
        )
    } | {"late": s.get("late", 0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--json", default="bench-out/playout.json")
    ap.add_argument(
        "--engine", choices=["wav2lip", "procedural"], default="wav2lip", help="procedural: no weights (a smoke run)"
    )
    ap.add_argument("--only", default=None, help="comma-separated scenarios (default: all)")
    ap.add_argument("--cuts", type=int, default=3, help="interrupts in consumer_interrupt")
    args = ap.parse_args()
    global ENGINE
    ENGINE = args.engine
    tmp = tempfile.TemporaryDirectory()
    os.environ.setdefault("LIPSYNC_CACHE_DIR", os.path.join(tmp.name, "cache"))
    from realtime import threads

    ckpt, weights, ladder = args.checkpoint, "user checkpoint", ""
    if args.engine == "procedural":
        weights = "none (procedural lips)"
    else:
        if ckpt is None:
            ckpt, weights = standin_checkpoint(tmp.name)
        from bench_live import warm_up

        ladder = warm_up(ckpt, str(AVATAR))
    threads.apply(threads.plan("live"))
    doc = {
        "weights": weights,
        "avatar": "media/avatar.jpg (512x512 photo)",
        "ladder": [ln.strip() for ln in ladder.splitlines() if ln.startswith("precision:")],
    }
    scenarios = (
        ("burst", lambda: burst(ckpt)),
        ("interrupt", lambda: interrupts(ckpt)),
        ("consumer_interrupt", lambda: consumer_interrupts(ckpt, args.cuts)),
        ("segments", lambda: segments(ckpt)),
        ("blocked_sink", lambda: blocked(ckpt)),
        ("cli_burst_42s", lambda: cli(ckpt, Path(tmp.name))),
    )
    only = set(args.only.split(",")) if args.only else None
    if only is not None and only - {n for n, _ in scenarios}:
        ap.error(f"--only: expected names from {[n for n, _ in scenarios]}, found {sorted(only)}")
    for name, fn in scenarios:
        if only is not None and name not in only:
            continue
        print(f"[{name}] ...", file=sys.stderr)
        doc[name] = fn()
        print(json.dumps(doc[name]), file=sys.stderr)
    doc["torch_imported"] = "torch" in sys.modules
    write_json(doc, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
