"""The paste into the frame: the planned, bounding-box paste against the feathered paste it
replaced (kept here only, as the reference), the crossfade, and output frames reused without
being changed under anyone who still holds them."""

import cv2
import numpy as np
import pytest

from realtime.compositor import (
    FeatheredPaste,
    crossfade,
    mouth_mask,
    paste_feathered,
    paste_planned,
    plan_paste,
)
from realtime.frame_pool import FramePool, origin


# -- the reference: the feathered paste as it was (float over the whole box, per-frame mask) --------
def _match_colour_reference(src, ref, weight):
    w = weight[..., None]
    total = float(w.sum()) + 1e-6
    s_mean = (src * w).sum((0, 1)) / total
    r_mean = (ref * w).sum((0, 1)) / total
    s_std = np.sqrt(((src - s_mean) ** 2 * w).sum((0, 1)) / total) + 1e-3
    r_std = np.sqrt(((ref - r_mean) ** 2 * w).sum((0, 1)) / total) + 1e-3
    return (src - s_mean) * (r_std / s_std) + r_mean


def _paste_reference(frame, face96, box, mask):
    y1, y2, x1, x2 = box
    gen = cv2.resize(face96, (x2 - x1, y2 - y1)).astype(np.float32)
    orig = frame[y1:y2, x1:x2].astype(np.float32)
    gen = _match_colour_reference(gen, orig, mask)
    m = mask[..., None]
    frame[y1:y2, x1:x2] = np.clip(gen * m + orig * (1 - m), 0, 255).round().astype(np.uint8)
    return frame


@pytest.fixture(scope="module")
def scenes(photo):
    """Real frames with their face box and mask: the test photo and the product's avatar."""
    from conftest import ROOT
    from realtime.avatar import AvatarConfig, load_avatar

    out = []
    for path in (photo, ROOT / "media" / "avatar.jpg"):
        av = load_avatar(AvatarConfig(str(path)))
        frame, box = av.frames[0], av.boxes[0]
        out.append((frame, box, mouth_mask(frame.shape[:2], box, av.keypoints()[0]), av.crops[0]))
    return out


def _faces(crop96):
    """Stand-ins for decoder output, from real faces: the avatar's own crop blurred and tinted
    (Wav2Lip's faces are softer and off in tone), two other people's faces, and a face whose
    colour match must stretch a nearly flat patch (the paste's numerically hardest case)."""
    import export.samples as samples

    soft = np.clip(cv2.GaussianBlur(crop96, (0, 0), 1.2).astype(np.int16) + [14, 8, -6], 0, 255).astype(np.uint8)
    others = [cv2.resize(samples._image(n), (96, 96)) for n in ("face_a.jpg", "face_b.png")]
    flat = np.full((96, 96, 3), 128, np.uint8)
    flat[40:60, 30:70] = 131
    return [soft, *others, flat]


def test_planned_paste_is_within_one_level_of_the_reference(scenes):
    for frame, box, mask, crop in scenes:
        plan = plan_paste(frame, box, mask)
        for face in _faces(crop):
            want = _paste_reference(frame.copy(), face, box, mask).astype(int)
            got = paste_planned(frame.copy(), face, plan).astype(int)
            diff = np.abs(got - want)
            assert diff.max() <= 1, diff.max()
            assert (diff > 0).mean() < 0.001  # rounding ties only, not a systematic shift
            assert np.abs(want - frame).max() > 20  # the reference did change the mouth
            same = paste_feathered(frame.copy(), face, box, mask)
            assert np.array_equal(same, got)  # the one-off call is the planned paste


def test_plan_blends_only_where_the_mask_shows(scenes):
    frame, box, mask, crop = scenes[0]
    plan = plan_paste(frame, box, mask)
    rows, cols = plan.region
    y1, y2, x1, x2 = box
    # A strict sub-box of the face box: the upper face is not touched at all.
    assert rows.start > y1 and (rows.stop - rows.start) * (cols.stop - cols.start) < (y2 - y1) * (x2 - x1)
    out = paste_planned(frame.copy(), _faces(crop)[0], plan)
    changed = np.argwhere(np.any(out != frame, axis=2))
    assert len(changed) > 0
    assert changed[:, 0].min() >= rows.start and changed[:, 0].max() < rows.stop
    assert changed[:, 1].min() >= cols.start and changed[:, 1].max() < cols.stop
    with pytest.raises(ValueError, match="mask is"):
        plan_paste(frame, box, mask[1:])


def test_crossfade_is_within_one_level_of_the_float_blend(scenes):
    frame, box, mask, crop = scenes[1]
    face = paste_planned(frame.copy(), _faces(crop)[1], plan_paste(frame, box, mask))
    for alpha in (1 / 3, 0.5, 2 / 3, 0.9):
        a = np.float32(alpha)
        want = (face.astype(np.float32) * a + frame.astype(np.float32) * (1 - a)).round()
        diff = np.abs(crossfade(face, frame, alpha).astype(int) - want.astype(int))
        assert diff.max() <= 1


def test_reused_output_frames_never_change_under_a_holder(scenes):
    frame, box, mask, crop = scenes[1]
    faces = _faces(crop)
    paste = FeatheredPaste(pool=FramePool(max_buffers=3))
    held, expected = [], []
    for k in range(12):
        face = faces[k % len(faces)]
        out = paste(frame, 0, face, box, lambda: mask)
        assert np.array_equal(out, paste_feathered(frame.copy(), face, box, mask))
        if k % 4 == 0:  # a sink that keeps some frames (a queue, an encoder)
            held.append(out)
            expected.append(out.copy())
        view = out[::2]  # a view keeps its base in use too
        del out
        if k == 5:
            kept_view = view
            kept_view_copy = view.copy()
        del view
    for h, e in zip(held, expected):
        assert np.array_equal(h, e)
    assert np.array_equal(kept_view, kept_view_copy)
    # The first frame was a whole copy; after it, only a frame kept downstream (three held, one
    # through a view) cost one more: every other frame reused a free buffer of the same frame.
    assert paste.pool.full_copies == 1 + len(held) + 1


def test_a_new_frame_array_is_a_new_plan(scenes):
    """A live camera hands a new array for the same index every frame: nothing of the old frame
    (its pixels, its colour statistics) may leak into the new one's paste."""
    frame, box, mask, crop = scenes[1]
    paste = FeatheredPaste()
    face = _faces(crop)[0]
    paste(frame, 0, face, box, lambda: mask)
    darker = (frame // 2).astype(np.uint8)
    out = paste(darker, 0, face, box, lambda: mask)
    assert np.array_equal(out, paste_feathered(darker.copy(), face, box, mask))


def test_crossfade_of_a_pasted_frame_blends_its_region_only_with_the_same_pixels(scenes):
    frame, box, mask, crop = scenes[1]
    paste = FeatheredPaste()
    face = paste(frame, 0, _faces(crop)[2], box, lambda: mask)
    before = face.copy()
    other = np.ascontiguousarray(frame[::-1])  # another avatar frame: the whole-frame blend
    for idle in (frame, other):
        for alpha in (1 / 3, 2 / 3):
            got = crossfade(face, idle, alpha)
            assert got is not face and got is not idle
            assert np.array_equal(got, cv2.addWeighted(face, alpha, idle, 1 - alpha, 0.0))
    assert np.array_equal(face, before)  # its inputs are never written
    # A fade of a fade (the playout fades from the last frame shown) takes the same short way.
    half = crossfade(face, frame, 0.5)
    assert origin(half).source is frame and origin(crossfade(face, other, 0.5)) is None  # the short way was taken
    assert np.array_equal(crossfade(half, frame, 0.5), cv2.addWeighted(half, 0.5, frame, 0.5, 0.0))
