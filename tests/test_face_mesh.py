"""The face mesh (models.face_mesh on LiteRT), the mouth warp built from it, and Wav2Lip's paste
region from it. Real model, real photo (the astronaut the tests ship); no network."""

import hashlib

import cv2
import numpy as np
import pytest

from models import face_mesh as fmesh
from models.errors import LipsyncError


@pytest.fixture(scope="module")
def astronaut(photo):
    from models.face_detector import FaceDetector

    img = cv2.imread(str(photo))
    with FaceDetector() as det:
        found = det.detect(img)
    return img, found.keypoints


@pytest.fixture(scope="module")
def mesh():
    return fmesh.FaceMesh()


def _mesh_of(mesh, img):
    from models.face_detector import FaceDetector

    with FaceDetector() as det:
        found = det.detect(img)
    assert found is not None
    points = mesh.landmarks(img, found.keypoints)
    assert points is not None
    return points


def test_points_fall_on_the_face(mesh, astronaut):
    img, kp = astronaut
    p = mesh.landmarks(img, kp)
    assert p.shape == (468, 3)
    # The mouth's middle is near BlazeFace's mouth keypoint, the eye corners near its eyes.
    height = fmesh.face_height(p)
    assert np.linalg.norm(p[list(fmesh.INNER_LIP_MID), :2].mean(axis=0) - kp[3]) < 0.08 * height
    assert np.linalg.norm(p[fmesh.RIGHT_EYE_OUTER, :2] - kp[0]) < 0.12 * height
    assert np.linalg.norm(p[fmesh.LEFT_EYE_OUTER, :2] - kp[1]) < 0.12 * height
    # Eileen Collins smiles with her teeth showing: the inner lips are apart.
    assert fmesh.inner_lip_gap(p) > 0.03


@pytest.mark.parametrize("change", ["mirrored", "scaled", "tinted"])
def test_points_move_with_the_picture(mesh, astronaut, change):
    img, _ = astronaut
    base = _mesh_of(mesh, img)
    h, w = img.shape[:2]
    if change == "mirrored":
        moved = _mesh_of(mesh, np.ascontiguousarray(img[:, ::-1]))
        # The person's right eye becomes the left: compare the point sets, mirrored.
        expected = base[:, :2].copy()
        expected[:, 0] = w - 1 - expected[:, 0]
        got = moved[:, :2]
        # Nearest-point distance, both ways (the mesh's numbering is not mirror-symmetric).
        d = np.linalg.norm(expected[:, None] - got[None], axis=2).min(axis=1)
        assert np.median(d) < 0.02 * fmesh.face_height(base)
        return
    if change == "scaled":
        small = cv2.resize(img, (w * 3 // 4, h * 3 // 4), interpolation=cv2.INTER_AREA)
        got = _mesh_of(mesh, small)[:, :2] / 0.75
    else:
        tint = np.clip(img.astype(np.float32) * (0.75, 1.0, 1.2), 0, 255).astype(np.uint8)
        got = _mesh_of(mesh, tint)[:, :2]
    err = np.linalg.norm(got - base[:, :2], axis=1)
    assert np.median(err) < 0.02 * fmesh.face_height(base)


def test_no_face_gives_no_mesh(mesh):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    kp = np.array([[100, 100], [156, 100], [128, 128], [128, 160], [80, 110], [176, 110]], np.float64)
    assert mesh.landmarks(noise, kp) is None


def test_the_packaged_model_is_pinned_and_a_damaged_copy_is_one_line(monkeypatch, tmp_path):
    assert fmesh.resolve_mesh_model() == fmesh.PACKAGED_MESH_MODEL
    data = bytearray(fmesh.PACKAGED_MESH_MODEL.read_bytes())
    assert len(data) == 1_242_398 and hashlib.sha256(data).hexdigest() in fmesh.MESH_SHA256
    notice = (fmesh.PACKAGED_MESH_MODEL.parent / "NOTICE.md").read_text()
    assert fmesh.MESH_MODEL_NAME in notice and "mediapipe==0.10.14" in notice
    data[5000] ^= 0xFF
    bad = tmp_path / fmesh.MESH_MODEL_NAME
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(fmesh, "PACKAGED_MESH_MODEL", bad)
    with pytest.raises(LipsyncError) as err:
        fmesh.FaceMesh()
    msg = str(err.value)
    assert "\n" not in msg and hashlib.sha256(bytes(data)).hexdigest() in msg and "reinstall" in msg


def test_warp_changes_nothing_outside_the_face(mesh, astronaut):
    from realtime.mouth_region import face_region
    from realtime.mouth_warp import WarpConfig, apply_rig, build_rig

    img, kp = astronaut
    p = mesh.landmarks(img, kp)
    cfg = WarpConfig()
    rig = build_rig(img, p, cfg)
    travel = cfg.max_gap_face_heights * cfg.jaw_share * fmesh.face_height(p)
    outside = ~face_region(p, img.shape[:2], travel)
    for openness, width in [(1.0, 0.0), (0.6, 1.0), (1.0, -1.0)]:
        out = apply_rig(img, rig, openness, width)
        assert np.array_equal(out[outside], img[outside])
        assert (out != img).any(axis=2).sum() > 200  # and the mouth did move
    # Wide open, the mesh sees the mouth open further than the photo's own.
    opened = mesh.landmarks(apply_rig(img, rig, 1.0, 0.0), kp)
    assert fmesh.inner_lip_gap(opened) > fmesh.inner_lip_gap(p) + 0.02


def test_paste_region_from_the_mesh_stays_inside_the_face_and_below_the_nose(mesh, astronaut):
    from realtime.compositor import INVISIBLE_WEIGHT, mouth_mask
    from realtime.mouth_region import PASTE_CHIN_TRAVEL_FACE_HEIGHTS, face_region

    img, kp = astronaut
    p = mesh.landmarks(img, kp)
    h, w = img.shape[:2]
    x1, y1 = (p[:, :2].min(axis=0) - 10).astype(int)
    x2, y2 = (p[:, :2].max(axis=0) + 10).astype(int)
    box = (max(0, y1), min(h, y2), max(0, x1), min(w, x2))
    mask = mouth_mask(img.shape[:2], box, p)
    seen = mask >= INVISIBLE_WEIGHT
    hull = face_region(p, (h, w), PASTE_CHIN_TRAVEL_FACE_HEIGHTS * fmesh.face_height(p))[
        box[0] : box[1], box[2] : box[3]
    ]
    assert seen.any() and not (seen & ~hull).any()
    # Never the nose or the eyes: nothing at or above the nose tip's row.
    nose_row = int(p[fmesh.NOSE_TIP, 1]) - box[0]
    assert not seen[: nose_row + 1].any()
    # The chin is covered.
    cx, cy = (p[fmesh.CHIN, :2] - (box[2], box[0])).astype(int)
    assert mask[cy - 3, cx] > 0.5


def test_avatar_meshes_are_cached_and_reused_on_a_second_start(photo, monkeypatch):
    from realtime import avatar_mesh
    from realtime.avatar import AvatarConfig, load_avatar

    calls = []
    real = fmesh.FaceMesh.run

    def counted(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(fmesh.FaceMesh, "run", counted)
    first = load_avatar(AvatarConfig(str(photo)))
    path = avatar_mesh.mesh_cache_path(str(photo), first.keypoints(), fmesh.resolve_mesh_model())
    path.unlink(missing_ok=True)
    meshes = first.meshes()
    assert calls and path.is_file() and meshes[0] is not None
    calls.clear()
    again = load_avatar(AvatarConfig(str(photo))).meshes()
    assert not calls  # read back, not computed
    assert np.array_equal(again[0], meshes[0])


def test_a_camera_mesh_runs_on_keyframes_and_follows_the_tracked_points_between(astronaut):
    from realtime.avatar_mesh import MeshFollower

    img, kp = astronaut
    follow = MeshFollower()
    first = follow.update(img, kp, keyframe=True)
    calls = follow.mesh.calls
    shift = np.array([7.0, -4.0])
    moved_img = np.roll(img, (-4, 7), axis=(0, 1))
    between = follow.update(moved_img, kp + shift, keyframe=False)
    assert follow.mesh.calls == calls  # no model run between keyframes
    assert np.allclose(between[:, :2], first[:, :2] + shift, atol=0.05)
    again = follow.update(moved_img, kp + shift, keyframe=True)
    assert follow.mesh.calls > calls
    # The model on the moved picture agrees with the carried mesh.
    assert np.median(np.linalg.norm(again[:, :2] - between[:, :2], axis=1)) < 0.02 * fmesh.face_height(first)


def test_procedural_mesh_warps_are_bounded_and_output_unchanged(photo):
    """A video avatar's warps are built per avatar frame and kept in a bounded LRU: evicting and
    rebuilding one gives the same pixels."""
    from realtime.avatar import AvatarConfig, load_avatar
    from realtime.procedural import ProceduralConfig, ProceduralRenderer

    avatar = load_avatar(AvatarConfig(str(photo)))
    kp, mesh = avatar.keypoints()[0], avatar.meshes()[0]
    shifts = [np.array([k % 7, k % 5, 0], np.float32) for k in range(20)]
    kps, meshes = [kp + s[:2] for s in shifts], [mesh + s for s in shifts]
    frame = avatar.frames[0]
    loud = np.zeros((80, 16), np.float32)
    bounded = ProceduralRenderer(kps, ProceduralConfig(geometry_cache_frames=4), meshes=meshes)
    unbounded = ProceduralRenderer(kps, ProceduralConfig(geometry_cache_frames=10_000), meshes=meshes)
    for k in list(range(20)) * 2 + list(range(19, -1, -1)):
        bounded._open = unbounded._open = 0.0
        a = bounded.render(frame, k, loud)
        b = unbounded.render(frame, k, loud)
        assert np.array_equal(a, b) and not np.array_equal(a, frame) and len(bounded._rigs) <= 4
    assert len(unbounded._rigs) == 20
