"""Video avatars in bounded memory: frames decoded when shown, features read from an fp16 file,
procedural grids and the cache folder bounded, and all of it showing the same pixels as before."""

import json
import os
import subprocess
import sys
import time

import av
import cv2
import numpy as np
import pytest

from conftest import ROOT
from mediaio.face_media import read_video
from realtime.avatar_frames import VideoFrames


def moving_video(path, img, n, x264_params="", size=192):
    """`img` shrunk to `size` and moved along a known path, H.264 with the given x264 settings."""
    small = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = size, size, "yuv420p"
        if x264_params:
            s.options = {"x264-params": x264_params}
        for i in range(n):
            m = np.float32([[1, 0, 12 * np.sin(i / 6)], [0, 1, 6 * np.sin(i / 9)]])
            f = av.VideoFrame.from_ndarray(
                cv2.warpAffine(small, m, (size, size), borderMode=cv2.BORDER_REFLECT), format="bgr24"
            )
            f.pts = i
            out.mux(s.encode(f))
        out.mux(s.encode(None))
    return path


@pytest.fixture(scope="module")
def img(photo):
    return cv2.imread(str(photo))


# Default x264 (one long GOP), short GOPs with B-frames, and open GOPs (keyframes whose leading
# B-frames refer to the previous GOP: decoding from such a keyframe alone cannot show them).
@pytest.mark.parametrize(
    "params", ["", "keyint=8:min-keyint=8:bframes=3", "keyint=8:min-keyint=8:bframes=3:open-gop=1"]
)
def test_frames_decoded_on_demand_equal_a_full_decode_in_any_order(tmp_path, img, params):
    path = moving_video(tmp_path / "v.mp4", img, 60, params)
    ref, _ = read_video(path, 50)
    vf = VideoFrames(path, max_frames=50, cache_mb=0, min_cached_frames=4)
    first = list(vf.scan())
    assert len(vf) == len(ref) == 50 and all(np.array_equal(a, b) for a, b in zip(first, ref))
    forward = list(range(50)) * 2
    pingpong = list(range(49, -1, -1))
    rng = np.random.default_rng(0)
    order = forward + pingpong + [int(i) for i in rng.integers(0, 50, 80)]
    for k, i in enumerate(order):
        if k == len(forward):
            before = vf.decoded
        assert np.array_equal(vf[i], ref[i]), i
        assert len(vf._cache) <= 4  # never more than the bound held decoded
        if k == len(forward) + len(pingpong) - 1 and params:
            # With keyframes to start from, the way back costs a few decodes a frame, not a
            # decode from the start for each (1275 here).
            assert vf.decoded - before <= 4 * len(pingpong)


def test_forward_loop_decodes_each_frame_once(tmp_path, img):
    vf = VideoFrames(moving_video(tmp_path / "v.mp4", img, 40), cache_mb=0, min_cached_frames=4)
    for _ in vf.scan():
        pass
    for _ in range(3):
        for i in range(len(vf)):
            vf[i]
    assert vf.decoded == 3 * 40 and vf.seeks == 2  # back to the first keyframe at each wrap but the first


def test_unreadable_video_is_a_clear_error(tmp_path):
    from models.errors import LipsyncError

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(LipsyncError, match="a readable video"):
        VideoFrames(bad)


def test_a_video_whose_frames_grow_mid_stream_is_refused_before_converting_them(tmp_path, img):
    """An upload's size check reads the first frame's size from the header; a stream that changes
    size later (two MPEG-TS segments back to back) must not get past it."""
    from models.errors import LipsyncError

    small = moving_video(tmp_path / "a.ts", img, 10, size=64)
    big = moving_video(tmp_path / "b.ts", img, 10, size=512)
    both = tmp_path / "both.ts"
    both.write_bytes(small.read_bytes() + big.read_bytes())
    vf = VideoFrames(both)
    shown = []
    with pytest.raises(LipsyncError, match=r"frames of one size \(64x64.*a 512x512 frame"):
        for f in vf.scan():
            shown.append(f.shape)
    assert shown and set(shown) == {(64, 64, 3)}


def test_video_avatar_same_boxes_crops_and_frames_as_reading_every_frame(tmp_path, img):
    """The avatar a video gives: the same frames, boxes and crops as when every frame was read
    into memory first (the previous way), for the tracked and the reference framing."""
    from models.face_input import crop_face
    from realtime.avatar import AvatarConfig, load_avatar, track_faces
    from realtime.framing import RenderOptions, face_boxes

    path = str(moving_video(tmp_path / "v.mp4", img, 40, size=256))
    frames, _ = read_video(path, 1500)
    tracked = load_avatar(AvatarConfig(path))
    boxes, kps, crops = track_faces(frames, AvatarConfig(path))
    assert tracked.boxes == boxes and np.array_equal(tracked.crops, crops)
    assert all(np.array_equal(a, b) for a, b in zip(tracked.keypoints(), kps))
    assert all(np.array_equal(tracked.frames[i], frames[i]) for i in range(40))
    plain = load_avatar(AvatarConfig(path, tracking=False, loop="pingpong"))
    ref_boxes = face_boxes(frames, path, RenderOptions(pads=(0, 10, 0, 0)))
    assert plain.boxes == ref_boxes
    assert np.array_equal(plain.crops, np.stack([crop_face(f, b) for f, b in zip(frames, ref_boxes)]))
    assert all(np.array_equal(plain.frames[plain.index(p)], frames[plain.index(p)]) for p in range(0, 120, 3))
    assert isinstance(plain.frames, VideoFrames) and len(plain.frames._cache) <= plain.frames._capacity


@pytest.fixture(scope="module")
def split_gen(generator_ckpt):
    from realtime.generator import RuntimeConfig, load_generator

    return load_generator(generator_ckpt, RuntimeConfig(), split=True)


class CountingEncoder:
    """The real encoder, counting its calls and optionally scaling its output."""

    def __init__(self, gen, scale=1.0):
        self.gen, self.scale, self.calls = gen, scale, 0

    def encode(self, faces):
        self.calls += 1
        return [np.asarray(f) * self.scale for f in self.gen.encode(faces)]


def test_fp16_features_change_the_generated_face_by_rounding_only(tmp_path, split_gen, img, speech_wav):
    from mediaio.audio import decode_audio
    from models.face_input import model_faces
    from models.mel import melspectrogram
    from realtime.avatar_features import FeatureStore
    from realtime.compositor import to_uint8_faces

    crops = np.stack([cv2.resize(np.roll(img, 9 * k, axis=1)[60:230, 150:290], (96, 96)) for k in range(20)])
    store = FeatureStore.build(tmp_path / "feat", crops, split_gen, batch=8, cache_frames=4)
    assert store.dtype == np.float16 and store.frames == 20
    assert (tmp_path / "feat.npy").stat().st_size < 20 * 0.6e6  # half of fp32's 1.16 MB a frame
    mel = melspectrogram(decode_audio(speech_wav).mono_16k())
    worst = 0
    for i in range(20):
        ref = [np.asarray(f) for f in split_gen.encode(model_faces(crops[i : i + 1]))]
        got = store.get(i)
        assert [g.shape for g in got] == [r.shape for r in ref] and all(g.dtype == np.float32 for g in got)
        for g, r in zip(got, ref):  # fp16 keeps 11 significant bits
            assert np.all(np.abs(g - r) <= 2.0**-10 * np.abs(r) + 1e-7)
        window = np.ascontiguousarray(mel[None, None, :, 5 * i : 5 * i + 16], np.float32)
        a = to_uint8_faces(split_gen.decode(window, ref)).astype(int)
        b = to_uint8_faces(split_gen.decode(window, got)).astype(int)
        worst = max(worst, int(np.abs(a - b).max()))
        assert 10 * np.log10(255**2 / max(np.mean((a - b) ** 2), 1e-12)) > 50
    assert worst <= 2
    assert len(store._cache) <= 4
    store.close()


def test_features_out_of_fp16_range_are_stored_in_fp32(tmp_path, split_gen, img):
    from models.face_input import model_faces
    from realtime.avatar_features import FeatureStore

    crops = np.stack([cv2.resize(img[60:230, 150:290], (96, 96))] * 3)
    big = CountingEncoder(split_gen, scale=1e6)
    store = FeatureStore.build(tmp_path / "feat", crops, big, batch=2)
    assert store.dtype == np.float32
    ref = big.encode(model_faces(crops[:1]))
    assert all(np.array_equal(g, r.astype(np.float32)) for g, r in zip(store.get(0), ref))
    store.close()


def test_avatar_features_cached_reused_and_rebuilt_when_damaged(tmp_path, split_gen, photo, cache_dir):
    from realtime.avatar import AvatarConfig, load_avatar

    avatar = load_avatar(AvatarConfig(str(photo)))
    enc = CountingEncoder(split_gen)
    avatar.attach_features(enc, "memory-test")
    assert enc.calls == 1
    first = [f.copy() for f in avatar.features_at(0)]
    data = avatar.features.data_path
    assert data.parent == cache_dir / "avatars" and avatar.features.meta_path.is_file()
    again = load_avatar(AvatarConfig(str(photo)))
    again.attach_features(enc, "memory-test")
    assert enc.calls == 1 and all(np.array_equal(a, b) for a, b in zip(again.features_at(0), first))
    with open(data, "r+b") as f:  # an interrupted copy: the file is shorter than its header says
        f.truncate(data.stat().st_size // 2)
    third = load_avatar(AvatarConfig(str(photo)))
    third.attach_features(enc, "memory-test")
    assert enc.calls == 2 and all(np.array_equal(a, b) for a, b in zip(third.features_at(0), first))


def test_procedural_grids_bounded_and_output_unchanged(photo):
    from realtime.avatar import AvatarConfig, load_avatar
    from realtime.procedural import ProceduralConfig, ProceduralRenderer

    avatar = load_avatar(AvatarConfig(str(photo)))
    kp = avatar.keypoints()[0]
    # 40 "avatar frames" whose keypoints move: each has its own grid.
    kps = [kp + np.array([k % 7, k % 5], float) for k in range(40)]
    frame = avatar.frames[0]
    loud = np.zeros((80, 16), np.float32)
    bounded = ProceduralRenderer(kps, ProceduralConfig(geometry_cache_frames=8))
    unbounded = ProceduralRenderer(kps, ProceduralConfig(geometry_cache_frames=10_000))
    for k in list(range(40)) * 2 + list(range(39, -1, -1)):
        bounded._open = unbounded._open = 0.0
        a = bounded.render(frame, k, loud)
        b = unbounded.render(frame, k, loud)
        assert np.array_equal(a, b) and len(bounded._maps) <= 8
    assert len(unbounded._maps) == 40


def _entry(base, kind, name, mb, age_s, files=("",)):
    folder = base / kind
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "exports":
        (folder / name).mkdir()
        paths = [folder / name / f"graph{k}.onnx" for k in range(len(files))]
        touch = [folder / name, *paths]
    else:
        paths = [folder / f"{name}{suffix}" for suffix in files]
        touch = paths
    for p in paths:
        p.write_bytes(b"\0" * int(mb * 1e6 / len(paths)))
    when = time.time() - age_s
    for p in touch:
        os.utime(p, (when, when))


def test_cache_evicts_least_recently_used_and_keeps_what_this_run_uses(tmp_path, monkeypatch):
    from models import cache_limit

    base = tmp_path / "cache"
    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(base))
    _entry(base, "exports", "aaaa", 3, 5000)
    _entry(base, "avatars", "old", 2, 4000, (".npy", ".json"))
    _entry(base, "avatars", "inuse", 2, 3000, (".npy", ".json"))
    _entry(base, "detections", "d1", 1, 2000, (".npy",))
    _entry(base, "avatars", "new", 2, 10, (".npy", ".json"))
    (base / "models").mkdir()
    (base / "models" / "face.tflite").write_bytes(b"\0" * 3_000_000)  # never an entry
    (base / "avatars" / ".x.123.tmp.npy").write_bytes(b"\0" * 1000)  # someone's write in progress
    got = cache_limit.entries()
    assert [(e.kind, e.name) for e in got] == [
        ("exports", "aaaa"),
        ("avatars", "old"),
        ("avatars", "inuse"),
        ("detections", "d1"),
        ("avatars", "new"),
    ]
    assert got[1].size_bytes == 2_000_000 and len(got[1].paths) == 2
    cache_limit.touch(base / "avatars" / "inuse.json")  # used by this process: never evicted by it
    monkeypatch.setenv(cache_limit.ENV_LIMIT, "4.5")
    removed = cache_limit.enforce_limit()
    assert [(e.kind, e.name) for e in removed] == [("exports", "aaaa"), ("avatars", "old"), ("detections", "d1")]
    left = [(e.kind, e.name) for e in cache_limit.entries()]
    assert left == [("avatars", "new"), ("avatars", "inuse")]  # touched just now: the most recent
    assert (base / "models" / "face.tflite").is_file() and (base / "avatars" / ".x.123.tmp.npy").is_file()
    monkeypatch.setenv(cache_limit.ENV_LIMIT, "lots")
    from models.errors import LipsyncError

    with pytest.raises(LipsyncError, match="LIPSYNC_CACHE_MAX_MB"):
        cache_limit.limit_bytes()


def test_cache_cli_lists_and_clears(tmp_path):
    base = tmp_path / "cache"
    _entry(base, "exports", "bbbb", 1, 100)
    _entry(base, "avatars", "av1", 2, 50, (".npy", ".json"))
    _entry(base, "detections", "d1", 0.5, 10, (".npy",))
    (base / "models").mkdir()
    (base / "models" / "face.tflite").write_bytes(b"x")
    env = dict(os.environ, LIPSYNC_CACHE_DIR=str(base), PYTHONPATH=str(ROOT))

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "lipsync.cli", "cache", *args], env=env, cwd=ROOT, capture_output=True, text=True
        )

    listed = cli("list")
    assert listed.returncode == 0 and "3.5 MB in 3 entries" in listed.stdout
    lines = [ln.split() for ln in listed.stdout.splitlines()[1:-1]]
    assert [(ln[0], ln[-1]) for ln in lines] == [("exports", "bbbb"), ("avatars", "av1"), ("detections", "d1")]
    doc = json.loads(cli("list", "--json").stdout)
    assert doc["total_mb"] == 3.5 and [e["size_mb"] for e in doc["entries"]] == [1.0, 2.0, 0.5]
    cleared = cli("clear", "--kind", "avatars")
    assert cleared.returncode == 0 and "removed 1 entries (2.0 MB)" in cleared.stdout
    assert [e["name"] for e in json.loads(cli("list", "--json").stdout)["entries"]] == ["bbbb", "d1"]
    assert cli("clear").returncode == 0
    assert json.loads(cli("list", "--json").stdout)["entries"] == []
    assert (base / "models" / "face.tflite").is_file()
    bad = cli("frobnicate")
    assert bad.returncode != 0 and "invalid choice" in bad.stderr


def test_playout_on_a_pingpong_video_shows_the_decoded_frames(tmp_path, img, speech_wav):
    """Two threads read the frames (the generator ahead, the pacer on time), the loop turns
    back, an interrupt rewinds the lookahead: every idle frame shown is still the exact frame."""
    from mediaio.audio import decode_audio
    from realtime.clock import ManualClock
    from realtime.live import build_playout
    from realtime.playout import PlayoutConfig, PlayoutItem

    path = moving_video(tmp_path / "v.mp4", img, 60, "keyint=12:min-keyint=12", size=512)
    ref, _ = read_video(path)
    clock = ManualClock()
    pl = build_playout(
        str(path), [], engine="procedural", clock=clock, loop="pingpong", pcfg=PlayoutConfig(late_frame_wait_ms=20_000)
    ).start()
    assert isinstance(pl.avatar.frames, VideoFrames) and pl.avatar.frames._capacity < 60
    pcm = decode_audio(speech_wav).mono_16k()[:32_000]
    it = pl.frames(timeout_s=20)
    shown = []

    def step(n):
        for _ in range(n):
            clock.advance_ns(40_000_000)
            item = next(it)
            while not isinstance(item, PlayoutItem):
                item = next(it)
            shown.append(item)

    try:
        step(30)
        for off in range(0, len(pcm), 1600):
            pl.push_audio(pcm[off : off + 1600], 16_000, timeout_s=10)
        pl.end_segment()
        assert pl.wait_ready(timeout_s=20)
        step(25)
        pl.interrupt()
        step(140)  # past the pingpong's turn at both ends
    finally:
        pl.stop()
    idle = [i for i in shown if i.video.meta["kind"] == "idle"]
    assert len(idle) > 100
    for i in idle:
        assert np.array_equal(i.video.bgr, ref[pl.avatar.index(i.video.pts)]), i.video.pts
    assert len(pl.avatar.frames._cache) <= pl.avatar.frames._capacity
