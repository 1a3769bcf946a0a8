#!/usr/bin/env python3
"""Tracking vs per-frame detection on synthetic moving avatars with a known path, and the seam
left by hard vs feathered compositing.

    python benchmarks/bench_tracking.py --json bench-out/tracking.json
    python benchmarks/bench_tracking.py --code-root /tmp/base --json bench-out/tracking-before.json

Videos (the true face position in every frame is the first frame's detected box moved by the
same transform):
  whole_frame         the embedded photo moved along a sub-pixel path (cv2.warpAffine), 10 s;
  held-out videos     the face (a soft ellipse of the photo) moving, turning and scaling in front
                      of a static textured background, H.264-encoded and decoded with PyAV as a
                      real file would be, 20 s. Points on the static background pull optical
                      flow away from the face, so the periodic re-detection has drift to correct.
Per video: centre error (mean, p95) and the largest frame-to-frame jump of the tracked centre
beyond the true motion (what a viewer sees as the pasted mouth jumping), with how many
re-detections moved the tracked face.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def moving_frames(img, n: int, fps: float = 25.0):
    import cv2

    h, w = img.shape[:2]
    out, offsets = [], []
    for i in range(n):
        t = i / fps
        dx, dy = 40 * np.sin(2 * np.pi * t / 4.0), 18 * np.sin(2 * np.pi * t / 2.5)
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        out.append(cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
        offsets.append((dx, dy))
    return out, np.array(offsets)


def centre(box):
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


HELD_OUT_PATHS = {
    # dx, dy (px), scale, rotation (degrees) at time t (s)
    "sway": lambda t: (40 * np.sin(2 * np.pi * t / 4.0), 18 * np.sin(2 * np.pi * t / 2.5), 1.0, 0.0),
    "sway_turn_zoom": lambda t: (
        45 * np.sin(2 * np.pi * t / 3.1),
        20 * np.sin(2 * np.pi * t / 2.3),
        1 + 0.12 * np.sin(2 * np.pi * t / 4.3),
        6 * np.sin(2 * np.pi * t / 2.9),
    ),
    "slow_drift": lambda t: (25 * np.sin(2 * np.pi * t / 6.0), 10 * np.sin(2 * np.pi * t / 5.0), 1.0, 0.0),
}


def face_over_background(img, face_box, n: int, path, background, workdir: Path, fps: float = 25.0):
    """The face region of `img` (a feathered ellipse around `face_box`) moved by `path` over a
    static `background`, through an H.264 file; frames and each frame's 2x3 transform."""
    import cv2

    from media import video_only
    from mediaio.face_media import read_video

    h, w = img.shape[:2]
    x1, y1, x2, y2 = face_box
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(
        mask,
        (int((x1 + x2) / 2), int((y1 + y2) / 2 - 0.1 * (y2 - y1))),
        (int(0.95 * (x2 - x1)), int(1.25 * (y2 - y1))),
        0,
        0,
        360,
        1.0,
        -1,
    )
    mask = cv2.GaussianBlur(mask, (0, 0), 6)
    bg = cv2.resize(background, (w, h)).astype(np.float32)
    frames, transforms = [], []
    for i in range(n):
        dx, dy, scale, angle = path(i / fps)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
        m[:, 2] += (dx, dy)
        fg = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        alpha = cv2.warpAffine(mask, m, (w, h))[..., None]
        frames.append((fg * alpha + bg * (1 - alpha)).round().astype(np.uint8))
        transforms.append(m)
    video = video_only(workdir / "held-out.mp4", frames, int(fps))
    decoded, _ = read_video(video)
    return decoded, transforms


def track_metrics(frames, truth, det, skip: int = 5) -> dict:
    """Tracking and per-frame detection against the true centres `truth` (N, 2)."""
    from realtime.tracking import FaceTracker

    tracker = FaceTracker(det.detect)
    t = time.perf_counter()
    got = np.array([centre(tracker.update(f).box) for f in frames])
    trk_ms = (time.perf_counter() - t) * 1000 / len(frames)
    err = np.linalg.norm(got - truth, axis=1)[skip:]
    # A jump: how far the tracked centre moved between two frames beyond how far the face moved.
    jump = np.linalg.norm(np.diff(got, axis=0) - np.diff(truth, axis=0), axis=1)[skip:]
    raw = np.array([centre(det.detect(f).box) for f in frames])
    raw_err = np.linalg.norm(raw - truth, axis=1)
    return {
        "frames": len(frames),
        "tracking_error_px": {
            "mean": round(float(err.mean()), 2),
            "p95": round(float(np.percentile(err, 95)), 2),
            "max": round(float(err.max()), 2),
        },
        "max_jump_beyond_true_motion_px": round(float(jump.max()), 2),
        "jump_at_frame": int(skip + jump.argmax() + 1),
        "frames_jumping_over_3px": int((jump > 3).sum()),
        "per_frame_detection_error_px": {
            "mean": round(float(raw_err.mean()), 2),
            "p95": round(float(np.percentile(raw_err, 95)), 2),
        },
        "detector_calls": tracker.detector_calls,
        "corrections": getattr(tracker, "corrections", None),
        "tracking_ms_per_frame": round(trk_ms, 3),
    }


def seam_ratios(img, det):
    """Border gradient energy of hard vs feathered paste, relative to the original frame."""
    import cv2

    from models.face_boxes import pad_and_clip
    from realtime.compositor import mouth_mask, paste_feathered, paste_hard

    h, w = img.shape[:2]
    x1, y1, x2, y2 = pad_and_clip(det.box, (0, 10, 0, 0), h, w)
    box = (y1, y2, x1, x2)
    crop = cv2.resize(img[y1:y2, x1:x2], (96, 96))
    # A stand-in for generator output: Wav2Lip's faces are softer and a little off in tone.
    fake = np.clip(cv2.GaussianBlur(crop, (0, 0), 1.2).astype(np.int16) + np.array([14, 8, -6]), 0, 255)
    fake = fake.astype(np.uint8)

    def grad(x):
        g = cv2.cvtColor(x, cv2.COLOR_BGR2GRAY).astype(np.float32)
        return np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))

    g0 = grad(img)
    hard = grad(paste_hard(img.copy(), fake, box))
    feather = grad(paste_feathered(img.copy(), fake, box, mouth_mask((h, w), box, det.keypoints)))
    # The two pixel rows/columns straddling the box edge: where a hard paste leaves its seam.
    ring = np.zeros((h, w), bool)
    ring[y1 - 1 : y2 + 1, x1 - 1 : x2 + 1] = True
    ring[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1] = False
    m = np.zeros((h, w), np.float32)
    m[y1:y2, x1:x2] = mouth_mask((h, w), box, det.keypoints)
    band = (m > 0.05) & (m < 0.95)
    return {
        "hard_box_border": round(float(hard[ring].mean() / g0[ring].mean()), 3),
        "feather_box_border": round(float(feather[ring].mean() / g0[ring].mean()), 3),
        "feather_mask_band": round(float(feather[band].mean() / g0[band].mean()), 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=250)
    ap.add_argument("--held-out-frames", type=int, default=500)
    ap.add_argument("--code-root", default=str(ROOT), help="the checkout to measure (default: this one)")
    ap.add_argument("--json", default="bench-out/tracking.json")
    args = ap.parse_args()
    sys.path.insert(0, args.code_root)

    import tempfile

    import cv2
    from skimage import data

    from models.face_detector import FaceDetector
    from realtime.tracking import FaceTracker

    img = cv2.imread(str(ROOT / "media" / "avatar.jpg"))
    frames, offsets = moving_frames(img, args.frames)
    with FaceDetector() as det, tempfile.TemporaryDirectory() as tmp:
        d0 = det.detect(frames[0])
        truth = centre(d0.box) + offsets - offsets[0]
        # Per-frame detection (the baseline).
        t = time.perf_counter()
        raw = [det.detect(f) for f in frames]
        det_ms = (time.perf_counter() - t) * 1000 / len(frames)
        whole = track_metrics(frames, truth, det)
        # A still face with sensor noise: jitter.
        rng = np.random.default_rng(0)
        still = [
            np.clip(img.astype(np.int16) + rng.normal(0, 3, img.shape).round().astype(np.int16), 0, 255).astype(
                np.uint8
            )
            for _ in range(100)
        ]
        still_tracker = FaceTracker(det.detect)
        still_c = np.array([centre(still_tracker.update(f).box) for f in still])
        raw_c = np.array([centre(det.detect(f).box) for f in still])
        seams = seam_ratios(img, d0)
        held_out = {}
        face = det.detect(img)
        for bg_name in ("grass", "brick"):
            grey = getattr(data, bg_name)()
            background = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR) if grey.ndim == 2 else grey[:, :, ::-1]
            for name, path in HELD_OUT_PATHS.items():
                hf, ms = face_over_background(img, face.box, args.held_out_frames, path, background, Path(tmp))
                c0 = centre(face.box)
                true_c = np.array([m[:, :2] @ c0 + m[:, 2] for m in ms])
                true_c += centre(det.detect(hf[0]).box) - true_c[0]  # anchored at the first frame's detection
                held_out[f"{name}_over_{bg_name}"] = track_metrics(hf, true_c, det)
                print(f"{name}_over_{bg_name}: {json.dumps(held_out[f'{name}_over_{bg_name}'])}", file=sys.stderr)
    skip = 5  # the One-Euro filter's first frames settle from its start value
    raw_err = np.linalg.norm(np.array([centre(r.box) for r in raw]) - truth, axis=1)
    doc = {
        "code_root": args.code_root,
        "frames": len(frames),
        "frame_size": [img.shape[1], img.shape[0]],
        "path": "dx = 40 sin(2 pi t / 4 s), dy = 18 sin(2 pi t / 2.5 s), sub-pixel",
        "tracking_error_px": {k: whole["tracking_error_px"][k] for k in ("mean", "p95")},
        "max_jump_beyond_true_motion_px": whole["max_jump_beyond_true_motion_px"],
        "per_frame_detection_error_px": {
            "mean": round(float(raw_err.mean()), 2),
            "p95": round(float(np.percentile(raw_err, 95)), 2),
        },
        "still_face_jitter_px_std": {
            "tracking": round(float(still_c[skip:].std(axis=0).max()), 3),
            "per_frame_detection": round(float(raw_c.std(axis=0).max()), 3),
        },
        "detector_calls_per_100_frames": round(100 * whole["detector_calls"] / len(frames), 1),
        "ms_per_frame": {"tracking": whole["tracking_ms_per_frame"], "per_frame_detection": round(det_ms, 3)},
        "tracking_cost_ratio": round(det_ms / whole["tracking_ms_per_frame"], 2),
        "seam_gradient_ratio_vs_original": seams,
        "whole_frame": whole,
        "held_out": {
            "frames": args.held_out_frames,
            "paths": {
                "sway": "dx = 40 sin(2 pi t / 4 s), dy = 18 sin(2 pi t / 2.5 s)",
                "sway_turn_zoom": "dx = 45 sin(2 pi t / 3.1 s), dy = 20 sin(2 pi t / 2.3 s), "
                "scale 1 + 0.12 sin(2 pi t / 4.3 s), rotation 6 sin(2 pi t / 2.9 s) degrees",
                "slow_drift": "dx = 25 sin(2 pi t / 6 s), dy = 10 sin(2 pi t / 5 s)",
            },
            "backgrounds": "skimage grass / brick, static",
            "videos": held_out,
        },
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
