#!/usr/bin/env python3
"""Tracking vs per-frame detection on a synthetic moving avatar with a known path, and the
seam left by hard vs feathered compositing.

    python benchmarks/bench_tracking.py --json bench-out/tracking.json

The avatar is the embedded photo moved along a known sub-pixel path (cv2.warpAffine), so the
true face box in every frame is the first frame's detected box moved by the same offset.
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
    feather = grad(paste_feathered(img.copy(), fake, box, det.keypoints))
    # The two pixel rows/columns straddling the box edge: where a hard paste leaves its seam.
    ring = np.zeros((h, w), bool)
    ring[y1 - 1:y2 + 1, x1 - 1:x2 + 1] = True
    ring[y1 + 1:y2 - 1, x1 + 1:x2 - 1] = False
    m = np.zeros((h, w), np.float32)
    m[y1:y2, x1:x2] = mouth_mask((h, w), box, det.keypoints)
    band = (m > 0.05) & (m < 0.95)
    return {"hard_box_border": round(float(hard[ring].mean() / g0[ring].mean()), 3),
            "feather_box_border": round(float(feather[ring].mean() / g0[ring].mean()), 3),
            "feather_mask_band": round(float(feather[band].mean() / g0[band].mean()), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=250)
    ap.add_argument("--json", default="bench-out/tracking.json")
    args = ap.parse_args()

    import cv2

    from models.face_detector import FaceDetector
    from realtime.tracking import FaceTracker

    img = cv2.imread(str(ROOT / "media" / "avatar.jpg"))
    frames, offsets = moving_frames(img, args.frames)
    with FaceDetector() as det:
        d0 = det.detect(frames[0])
        truth = centre(d0.box) + offsets - offsets[0]
        # Per-frame detection (the baseline).
        t = time.perf_counter()
        raw = [det.detect(f) for f in frames]
        det_ms = (time.perf_counter() - t) * 1000 / len(frames)
        raw_err = np.linalg.norm(np.array([centre(r.box) for r in raw]) - truth, axis=1)
        # Tracking.
        tracker = FaceTracker(det.detect)
        t = time.perf_counter()
        tracks = [tracker.update(f) for f in frames]
        trk_ms = (time.perf_counter() - t) * 1000 / len(frames)
        trk_err = np.linalg.norm(np.array([centre(tr.box) for tr in tracks]) - truth, axis=1)
        calls = tracker.detector_calls
        # A still face with sensor noise: jitter.
        rng = np.random.default_rng(0)
        still = [np.clip(img.astype(np.int16) + rng.normal(0, 3, img.shape).round().astype(np.int16), 0, 255)
                 .astype(np.uint8) for _ in range(100)]
        still_tracker = FaceTracker(det.detect)
        still_c = np.array([centre(still_tracker.update(f).box) for f in still])
        raw_c = np.array([centre(det.detect(f).box) for f in still])
        seams = seam_ratios(img, d0)
    skip = 5  # the One-Euro filter's first frames settle from its start value
    doc = {
        "frames": len(frames), "frame_size": [img.shape[1], img.shape[0]],
        "path": "dx = 40 sin(2 pi t / 4 s), dy = 18 sin(2 pi t / 2.5 s), sub-pixel",
        "tracking_error_px": {"mean": round(float(trk_err[skip:].mean()), 2),
                              "p95": round(float(np.percentile(trk_err[skip:], 95)), 2)},
        "per_frame_detection_error_px": {"mean": round(float(raw_err.mean()), 2),
                                         "p95": round(float(np.percentile(raw_err, 95)), 2)},
        "still_face_jitter_px_std": {"tracking": round(float(still_c[skip:].std(axis=0).max()), 3),
                                     "per_frame_detection": round(float(raw_c.std(axis=0).max()), 3)},
        "detector_calls_per_100_frames": round(100 * calls / len(frames), 1),
        "ms_per_frame": {"tracking": round(trk_ms, 3), "per_frame_detection": round(det_ms, 3)},
        "tracking_cost_ratio": round(det_ms / trk_ms, 2),
        "seam_gradient_ratio_vs_original": seams,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
