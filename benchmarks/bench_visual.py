#!/usr/bin/env python3
"""What the viewer sees: each engine's mouth on a held-out face and voice, as a contact sheet and measures.

    python benchmarks/bench_visual.py                       # writes benchmarks/results/visual.{png,json}
    python benchmarks/bench_visual.py --seconds 3 --out /tmp/visual   # a short smoke run

Inputs nobody tuned on: Grace Hopper's portrait (matplotlib's sample data, a US Navy photograph
in the public domain; no test, calibration or gate uses it) and a Scottish espeak-ng voice
(`en-gb-scotland+f2`; the tests and the ladder use en-us, en-us+f3, en-us+f4 and en-gb+m4).
The embedded avatar (media/avatar.jpg, the face everything was tuned on) runs too, for the
README's comparison. Engines, each through the live Engine on a free-running clock:
  * procedural: the weight-free mouth warped from the face mesh (the default);
  * procedural-no-detail: the same without the detail step (the avatar's own fine detail put
    back where bilinear resampling took it; on by default);
  * procedural-6pt: the older field around BlazeFace's mouth keypoint (no mesh), for comparison;
  * wav2lip: a RANDOM-WEIGHT checkpoint (tests/synthetic.make_checkpoint, made in a child
    process): its mouth shapes mean nothing; it shows the feathered paste region (from the mesh)
    and what the paste does to sharpness and to pixels outside the face.
Measures per engine and avatar, all taken with the face mesh on the output frames:
  * open_corr: Pearson correlation, per output frame, of the inner-lip gap with the speech
    envelope (dB RMS from 20 ms before to 40 ms after the frame's time, floored at -60 dB);
  * open_range_face_heights: 95th minus 5th percentile of the inner-lip gap, in face heights;
  * sharpness_ratio: Laplacian variance of the mouth region (lips' box, widened, reaching down
    by the chin's travel) over the avatar's own, mean over frames where that region changed,
    leaving out the gap between the inner lips (its edges would count as detail); with the gap
    too: sharpness_ratio_with_gap;
  * outside_face_changed_pct: pixels outside the face region (the mesh outline's hull and the
    chin's travel below it) that differ from the avatar, mean and max over frames;
  * ms_per_frame: the renderer's own time per frame where it drew a mouth (mean, p95, min), on
    this machine (wav2lip: the decoder on cached features and the paste; procedural: all of it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # media.py: espeak-ng speech

HELD_OUT_VOICE = "en-gb-scotland+f2"
HELD_OUT_TEXT = (
    "Father saw a large dark barn across the calm harbour. Bob laughed and waved, and Anna opened the old gate wide."
)
SHEET_TILES = 10
TILE_PX = 112


def held_out_face() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


class Collect:
    name = "collect"

    def __init__(self):
        self.frames = []

    def send_video(self, frame):
        self.frames.append(frame.bgr)

    def send_audio(self, chunk):
        pass

    def close(self):
        pass


def envelope_db(wav: np.ndarray, frames: int, fps: float = 25.0) -> np.ndarray:
    hop = int(16000 / fps)
    out = []
    for i in range(frames):
        a, b = max(0, i * hop - hop // 2), min(len(wav), i * hop + hop)
        out.append(10 * np.log10(np.mean(wav[a:b].astype(np.float64) ** 2) + 1e-8) if b > a else -80.0)
    return np.maximum(np.array(out), -60.0)


def render(engine, wav: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
    """Every output frame of `engine` for `wav`, and the renderer's time per call (ms)."""
    times: list[float] = []
    inner = engine.renderer.render

    def timed(frame, *a, **k):
        t = time.perf_counter()
        out = inner(frame, *a, **k)
        if out is not frame:  # a mouth was drawn (a resting procedural frame is the photo itself)
            times.append((time.perf_counter() - t) * 1e3)
        return out

    engine.renderer.render = timed
    engine.start()
    for i in range(0, len(wav), 320):
        engine.push_audio(wav[i : i + 320], 16000)
    engine.stop()
    return engine.sinks[0].frames, times


def mouth_box(rest: np.ndarray, shape, travel: float) -> tuple[int, int, int, int]:
    from models import face_mesh as fm

    lips = rest[list(fm.UPPER_OUTER_LIP + fm.LOWER_OUTER_LIP), :2]
    (x1, y1), (x2, y2) = lips.min(axis=0), lips.max(axis=0)
    mw, mh = x2 - x1, y2 - y1
    h, w = shape[:2]
    return (
        max(0, int(y1 - 0.3 * mh)),
        min(h, int(y2 + 0.3 * mh + travel)),
        max(0, int(x1 - 0.15 * mw)),
        min(w, int(x2 + 0.15 * mw)),
    )


def lap_var(img: np.ndarray, skip: np.ndarray | None = None) -> float:
    """Laplacian variance, over the pixels not in `skip`."""
    lap = cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.CV_64F)
    return float(lap.var() if skip is None else lap[~skip].var())


def between_lips(points: np.ndarray, shape, box) -> np.ndarray:
    """bool mask, inside `box`, of the gap between the inner lips (and 2 px around it)."""
    from models import face_mesh as fm

    y1, y2, x1, x2 = box
    m = np.zeros(shape[:2], np.uint8)
    poly = points[list(fm.UPPER_INNER_LIP + fm.LOWER_INNER_LIP[::-1]), :2]
    cv2.fillPoly(m, [np.round(poly).astype(np.int32)], 1)
    return cv2.dilate(m, np.ones((5, 5), np.uint8))[y1:y2, x1:x2].astype(bool)


def measure(frames, times, avatar_img, rest, wav, mesh, keypoints, travel) -> tuple[dict, list[float]]:
    from models import face_mesh as fm
    from realtime.mouth_region import face_region

    gaps, found = [], []
    for f in frames:
        p = mesh.landmarks(f, keypoints)
        found.append(p)
        gaps.append(np.nan if p is None else fm.inner_lip_gap(p))
    gaps_a = np.array(gaps)
    env = envelope_db(wav, len(frames))
    ok = ~np.isnan(gaps_a)
    corr = {lag: float(np.corrcoef(env[ok][: ok.sum() - lag], gaps_a[ok][lag:])[0, 1]) for lag in range(3)}
    box = y1, y2, x1, x2 = mouth_box(rest, avatar_img.shape, travel)
    own_img = avatar_img[y1:y2, x1:x2]
    own, own_all = lap_var(own_img, between_lips(rest, avatar_img.shape, box)), lap_var(own_img)
    moved = [i for i, f in enumerate(frames) if found[i] is not None and not np.array_equal(f[y1:y2, x1:x2], own_img)]
    # Without the gap between the lips (the cavity's own edges would count as detail) ...
    ratios = [lap_var(frames[i][y1:y2, x1:x2], between_lips(found[i], avatar_img.shape, box)) / own for i in moved]
    # ... and with it, as the issue measured.
    ratios_all = [lap_var(frames[i][y1:y2, x1:x2]) / own_all for i in moved]
    outside = ~face_region(rest, avatar_img.shape[:2], travel)
    changed = [float((f != avatar_img).any(axis=2)[outside].mean() * 100) for f in frames]
    t = np.array(times) if times else np.zeros(1)
    return {
        "frames": len(frames),
        "mesh_missed_frames": int((~ok).sum()),
        "open_corr": round(corr[0], 3),
        "open_corr_by_lag_frames": {k: round(v, 3) for k, v in corr.items()},
        "open_range_face_heights": round(float(np.nanpercentile(gaps_a, 95) - np.nanpercentile(gaps_a, 5)), 4),
        "rest_gap_face_heights": round(fm.inner_lip_gap(rest), 4),
        "sharpness_ratio": round(float(np.mean(ratios)), 3) if ratios else None,
        "sharpness_ratio_median": round(float(np.median(ratios)), 3) if ratios else None,
        "sharpness_ratio_with_gap": round(float(np.mean(ratios_all)), 3) if ratios_all else None,
        "outside_face_changed_pct_mean": round(float(np.mean(changed)), 4),
        "outside_face_changed_pct_max": round(float(np.max(changed)), 4),
        "ms_per_frame_mean": round(float(t.mean()), 3),
        "ms_per_frame_p95": round(float(np.percentile(t, 95)), 3),
        "ms_per_frame_min": round(float(t.min()), 3),  # the least disturbed call, on a shared machine
    }, gaps


def sheet_row(frames, gaps, env, avatar_img, rest, label: str) -> np.ndarray:
    """The avatar's own mouth, then SHEET_TILES mouths at the loudest moments spread over the speech."""
    from models import face_mesh as fm

    c = rest[list(fm.INNER_LIP_MID), :2].mean(axis=0)
    r = int(0.28 * fm.face_height(rest))
    cx, cy = int(c[0]), int(c[1] + 0.15 * r)

    def tile(img):
        crop = img[max(0, cy - r) : cy + r, max(0, cx - r) : cx + r]
        return cv2.resize(crop, (TILE_PX, TILE_PX), interpolation=cv2.INTER_AREA)

    n = len(frames)
    picks = []
    for k in range(SHEET_TILES):  # the loudest frame in each of SHEET_TILES equal stretches
        a, b = k * n // SHEET_TILES, max(k * n // SHEET_TILES + 1, (k + 1) * n // SHEET_TILES)
        picks.append(a + int(np.argmax(env[a:b])))
    tiles = [tile(avatar_img)] + [tile(frames[i]) for i in picks]
    strip = np.full((TILE_PX, 190, 3), 255, np.uint8)
    for j, line in enumerate(label.split("\n")):
        cv2.putText(strip, line, (6, 22 + 20 * j), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.hstack([strip, *tiles])


def make_checkpoint(path: str) -> None:
    """A random-weight Wav2Lip checkpoint, made in a child so this process never imports torch."""
    code = f"import synthetic; synthetic.make_checkpoint({path!r}, 'Wav2Lip', seed=0)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT / "tests", check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--face", default=None, help="held-out photo (default: matplotlib's grace_hopper.jpg)")
    ap.add_argument("--voice", default=HELD_OUT_VOICE)
    ap.add_argument("--seconds", type=float, default=None, help="cut the speech to this long (a smoke run)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "visual"), help="writes OUT.png, OUT.json")
    ap.add_argument("--no-wav2lip", action="store_true", help="skip the random-weight Wav2Lip run")
    args = ap.parse_args()

    import media
    from export.runtime import RuntimeConfig
    from mediaio.audio import decode_audio
    from models import face_mesh as fm
    from realtime.avatar import AvatarConfig, load_avatar
    from realtime.clock import FreeRunClock
    from realtime.config import EngineConfig
    from realtime.engine import Engine
    from realtime.live import build_engine
    from realtime.mouth_warp import WarpConfig
    from realtime.procedural import ProceduralConfig, ProceduralRenderer

    face = Path(args.face) if args.face else held_out_face()
    avatars = {"held-out": face, "embedded": ROOT / "media" / "avatar.jpg"}
    results: dict = {
        "inputs": {
            "held_out_face": str(face.name) + " (matplotlib sample data; US Navy photograph, public domain)",
            "embedded_face": "media/avatar.jpg",
            "voice": f"espeak-ng {args.voice}: {HELD_OUT_TEXT!r}",
            "seconds": args.seconds,
        },
        "wav2lip_weights": "random (tests/synthetic.make_checkpoint, seed 0): mouth shapes mean nothing",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "engines": {},
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("LIPSYNC_CACHE_DIR", os.path.join(tmp, "cache"))
        wav_path = media.speech_wav(Path(tmp) / "voice.wav", HELD_OUT_TEXT, voice=args.voice)
        speech = decode_audio(wav_path).mono_16k()
        if args.seconds:
            speech = speech[: int(args.seconds * 16000)]
        lead = np.zeros(8000, np.float32)  # half a second of silence first: the resting face
        wav = np.concatenate([lead, speech, lead])
        ckpt = None
        if not args.no_wav2lip:
            ckpt = os.path.join(tmp, "random.pth")
            make_checkpoint(ckpt)
        mesh = fm.FaceMesh()
        for av_name, path in avatars.items():
            avatar = load_avatar(AvatarConfig(str(path)))
            img, rest, kp = avatar.frames[0], avatar.meshes()[0], avatar.keypoints()[0]
            if rest is None:
                print(f"no face mesh on {path}", file=sys.stderr)
                return 1
            travel = WarpConfig().max_gap_face_heights * WarpConfig().jaw_share * fm.face_height(rest)
            env = envelope_db(wav, int(len(wav) / 640) + 1)
            runs = {
                "procedural": lambda av=avatar: ProceduralRenderer(av.keypoints(), meshes=av.meshes()),
                "procedural-no-detail": lambda av=avatar: ProceduralRenderer(
                    av.keypoints(), ProceduralConfig(warp=WarpConfig(detail=0.0)), meshes=av.meshes()
                ),
                "procedural-6pt": lambda av=avatar: ProceduralRenderer(av.keypoints()),
            }
            for name, make in runs.items():
                engine = Engine(avatar, make(), [Collect()], EngineConfig(), FreeRunClock())
                frames, times = render(engine, wav)
                m, gaps = measure(frames, times, img, rest, wav, mesh, kp, travel)
                results["engines"].setdefault(name, {})[av_name] = m
                rows.append(sheet_row(frames, gaps, env, img, rest, f"{av_name}\n{name}\ncorr {m['open_corr']}"))
                print(av_name, name, json.dumps(m), flush=True)
            if ckpt is not None:
                engine = build_engine(
                    str(path),
                    [Collect()],
                    ckpt,
                    RuntimeConfig(),  # ONNX Runtime fp32: the ladder's choice would not change the look
                    cfg=EngineConfig(blend="feather"),
                    clock=FreeRunClock(),
                    engine="wav2lip",
                )
                frames, times = render(engine, wav)
                m, gaps = measure(frames, times, img, rest, wav, mesh, kp, travel)
                results["engines"].setdefault("wav2lip-random-weights", {})[av_name] = m
                rows.append(sheet_row(frames, gaps, env, img, rest, f"{av_name}\nwav2lip (random\nweights), feather"))
                print(av_name, "wav2lip", json.dumps(m), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    width = max(r.shape[1] for r in rows)
    sheet = np.vstack([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])
    cv2.imwrite(str(out.with_suffix(".png")), sheet, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.with_suffix('.png')} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
