"""Tracking on a synthetic moving avatar with a known path, and seamless compositing."""

import cv2
import numpy as np
import pytest

from realtime.tracking import FaceTracker, OneEuroFilter


def moved(img, dx, dy):
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


def centre(box):
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


@pytest.fixture(scope="module")
def detector():
    from models.face_detector import FaceDetector

    with FaceDetector() as det:
        yield det


@pytest.fixture(scope="module")
def img(photo):
    return cv2.imread(str(photo))


def test_tracks_a_moving_face_within_5px_with_few_detections(detector, img):
    offsets = [(30 * np.sin(2 * np.pi * i / 75), 15 * np.sin(2 * np.pi * i / 50)) for i in range(100)]
    frames = [moved(img, dx, dy) for dx, dy in offsets]
    c0 = centre(detector.detect(frames[0]).box)
    tracker = FaceTracker(detector.detect)
    got = np.array([centre(tracker.update(f).box) for f in frames])
    truth = c0 + np.array(offsets) - offsets[0]
    err = np.linalg.norm(got - truth, axis=1)[5:]
    assert np.percentile(err, 95) <= 5.0
    assert tracker.detector_calls <= 5  # a keyframe every 2 s, not a detection per frame


def test_still_face_does_not_shimmer(detector, img):
    rng = np.random.default_rng(1)
    tracker = FaceTracker(detector.detect)
    c = np.array([centre(tracker.update(np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)).box)
                  for _ in range(60)])
    assert c[5:].std(axis=0).max() <= 0.5


def test_scene_cut_and_lost_face(detector, img):
    tracker = FaceTracker(detector.detect)
    for _ in range(3):
        tracker.update(img)
    calls = tracker.detector_calls
    blank = np.full_like(img, 30)
    assert tracker.update(blank).box is None  # a cut: detector asked again, finds nothing
    assert tracker.detector_calls == calls + 1 and tracker.no_face == 1
    back = tracker.update(img)
    assert back.box is not None and back.detected


def test_one_euro_smooths_still_and_follows_motion():
    f = OneEuroFilter(25, min_cutoff_hz=1.0, beta=0.5)
    rng = np.random.default_rng(0)
    still = [f(np.array([100.0]) + rng.normal(0, 1, 1))[0] for _ in range(100)]
    assert np.std(still[20:]) < 0.75  # noise of std 1 is damped
    f.reset()
    moving = [f(np.array([4.0 * i]))[0] for i in range(50)]
    assert 4.0 * 49 - moving[-1] < 4.0  # lags less than one frame's motion when moving fast


def test_feathered_paste_leaves_no_seam_and_keeps_the_rest(detector, img):
    from models.face_boxes import pad_and_clip
    from realtime.compositor import paste_feathered, paste_hard

    det = detector.detect(img)
    x1, y1, x2, y2 = pad_and_clip(det.box, (0, 10, 0, 0), *img.shape[:2])
    box = (y1, y2, x1, x2)
    crop = cv2.resize(img[y1:y2, x1:x2], (96, 96))
    fake = np.clip(cv2.GaussianBlur(crop, (0, 0), 1.2).astype(np.int16) + [14, 8, -6], 0, 255).astype(np.uint8)

    def seam(out):
        g = lambda x: np.abs(np.diff(x.astype(np.float32), axis=1)).mean(axis=2)  # noqa: E731
        cols = [x1 - 1, x2 - 1]
        rows = slice(y1 + 10, y2 - 10)
        return sum(g(out)[rows, c].mean() for c in cols) / sum(g(img)[rows, c].mean() for c in cols)

    hard = paste_hard(img.copy(), fake, box)
    soft = paste_feathered(img.copy(), fake, box, det.keypoints)
    assert seam(soft) <= 1.2 < seam(hard) or seam(soft) < seam(hard)
    assert seam(soft) <= 1.2
    outside = np.ones(img.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    assert np.array_equal(soft[outside], img[outside])
    # The upper face (eyes) stays the original: only mouth and jaw are replaced.
    eyes_y = int(det.keypoints[:2, 1].mean())
    assert np.abs(soft[y1:eyes_y, x1:x2].astype(int) - img[y1:eyes_y, x1:x2]).max() <= 2
