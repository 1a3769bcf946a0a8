import cv2
import numpy as np
import pytest

from models.face_boxes import pad_and_clip, smooth


def test_smoothing_reproduces_reference_quirks():
    # Worked by hand from the reference loop: in-place, integer truncation, and a tail window
    # that re-reads already-smoothed boxes.
    boxes = np.zeros((6, 4), dtype=np.int64)
    boxes[:, 0] = [0, 10, 20, 30, 40, 50]
    assert smooth(boxes)[:, 0].tolist() == [20, 30, 34, 36, 38, 37]
    assert boxes[:, 0].tolist() == [0, 10, 20, 30, 40, 50]  # caller's array untouched


def test_smoothing_short_sequences_reuse_smoothed_boxes():
    # Fewer boxes than the window: every window is the whole sequence, already-smoothed rows included.
    boxes = np.array([[0, 0, 10, 10], [3, 3, 13, 13]])
    assert smooth(boxes).tolist() == [[1, 1, 11, 11], [2, 2, 12, 12]]


def test_pads_and_clipping():
    assert pad_and_clip((10, 20, 50, 60), (0, 10, 0, 0), 100, 100) == (10, 20, 50, 70)
    assert pad_and_clip((5, 3, 95, 97), (5, 10, 8, 8), 100, 100) == (0, 0, 100, 100)


def test_blazeface_box_is_wav2lip_framed(photo):
    from models.face_detector import FaceDetector

    img = cv2.imread(str(photo))
    with FaceDetector() as det:
        found = det.detect(img)
    assert found is not None and found.score > 0.8
    x1, y1, x2, y2 = found.box
    eyes_y = found.keypoints[:2, 1].max()
    mouth = found.keypoints[3]
    ears_x = sorted(found.keypoints[4:, 0])
    assert y1 < eyes_y - 15  # forehead included
    assert mouth[1] + 10 < y2  # below the mouth, towards the chin
    assert ears_x[0] - 10 <= x1 and x2 <= ears_x[1] + 10  # cheek to cheek, not ear to ear plus
    assert 0.8 < (x2 - x1) / (y2 - y1) < 1.25  # near square, like S3FD's boxes
    # The astronaut's face spans about x 170-275, y 70-185 in this photo.
    assert 160 < x1 < 190 and 255 < x2 < 285 and 60 < y1 < 100 and 160 < y2 < 190


def test_no_face_in_a_plain_image():
    from models.face_detector import FaceDetector

    gradient = np.tile(np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None], (240, 1, 3))
    with FaceDetector() as det:
        assert det.detect(gradient) is None


def test_detections_are_cached_per_input_file(photo, monkeypatch, cache_dir):
    from models import face_detector

    img = cv2.imread(str(photo))
    first = face_detector.detect_all([img, img], photo, {"resize_factor": 1})
    assert list((cache_dir / "detections").glob("*.npy"))

    class NoDetectorAllowed:
        def __init__(self, *a, **k):
            raise AssertionError("a cached input must not run the detector again")

    monkeypatch.setattr(face_detector, "FaceDetector", NoDetectorAllowed)
    again = face_detector.detect_all([img, img], photo, {"resize_factor": 1})
    assert np.array_equal(first, again)
    with pytest.raises(AssertionError, match="cached"):
        face_detector.detect_all([img, img], photo, {"resize_factor": 2})  # other settings: other key
