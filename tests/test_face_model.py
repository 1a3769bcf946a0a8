"""Tests for models.face_model: the face detector model ships with the package and nothing is
downloaded. Sockets are shut off for every test here, so a network access fails loudly."""

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models import face_model as fm
from models.errors import LipsyncError

ROOT = Path(__file__).resolve().parents[1]
MODEL_SIZE = 229_714


class NetworkUsed(AssertionError):
    pass


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise NetworkUsed(f"network access attempted: {args[1:] or kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("LIPSYNC_FACE_MODEL", raising=False)


def test_packaged_model_is_the_pinned_file():
    path = fm.resolve_face_model()
    assert path == fm.PACKAGED_MODEL
    assert path.stat().st_size == MODEL_SIZE
    assert hashlib.sha256(path.read_bytes()).hexdigest() in fm.KNOWN_SHA256
    notice = (path.parent / "NOTICE.md").read_text()
    assert "Apache" in notice and "mediapipe==0.10.21" in notice
    assert (path.parent / "LICENSE-APACHE-2.0.txt").read_text().lstrip().startswith("Apache License")


def test_pyproject_ships_the_model_as_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any(p.endswith(".tflite") or p == "data/*" for p in data.get("models", []))


def test_packaged_model_finds_one_face_in_astronaut():
    """The whole detector path, with sockets refused: it never needs the network."""
    from skimage import data

    from models.face_detector import FaceDetector

    with FaceDetector() as det:
        found = det.detect(np.ascontiguousarray(data.astronaut()[:, :, ::-1]))
    assert found is not None
    x1, y1, x2, y2 = found.box
    # Eileen Collins' face is in the upper middle of the 512x512 picture.
    assert 100 < (x1 + x2) / 2 < 300 and 50 < (y1 + y2) / 2 < 250


def test_env_var_wins_over_packaged(monkeypatch, tmp_path):
    mine = tmp_path / "mine.tflite"
    mine.write_bytes(b"user's own model, trusted as is")
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


def test_missing_env_var_path_is_an_error_not_a_fallback(monkeypatch, tmp_path):
    monkeypatch.setenv("LIPSYNC_FACE_MODEL", str(tmp_path / "typo.tflite"))
    with pytest.raises(LipsyncError, match="LIPSYNC_FACE_MODEL"):
        fm.resolve_face_model()


def test_missing_packaged_model_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(fm, "PACKAGED_MODEL", tmp_path / fm.MODEL_NAME)
    with pytest.raises(LipsyncError) as err:
        fm.resolve_face_model()
    message = str(err.value)
    assert "\n" not in message
    assert f"no file at {tmp_path / fm.MODEL_NAME}" in message
    assert "reinstall" in message and "LIPSYNC_FACE_MODEL" in message


def test_corrupted_packaged_model_is_refused(monkeypatch, tmp_path):
    bad = tmp_path / fm.MODEL_NAME
    data = bytearray(fm.PACKAGED_MODEL.read_bytes())
    data[1000] ^= 0xFF
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(fm, "PACKAGED_MODEL", bad)
    with pytest.raises(LipsyncError) as err:
        fm.resolve_face_model()
    message = str(err.value)
    assert hashlib.sha256(bytes(data)).hexdigest() in message and "reinstall" in message
    assert "\n" not in message


def test_live_cli_with_a_missing_model_is_one_line_error(tmp_path, photo, speech_wav):
    env = {**os.environ, "LIPSYNC_FACE_MODEL": str(tmp_path / "gone.tflite")}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lipsync.cli",
            "live",
            "--avatar",
            str(photo),
            "--audio",
            str(speech_wav),
            "--to",
            "null",
            "--engine",
            "procedural",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: face model ($LIPSYNC_FACE_MODEL)"), r.stderr
    assert "Traceback" not in r.stderr


def test_no_download_code_left():
    src = Path(fm.__file__).read_text()
    for needle in ("urllib", "http.client", "urlopen", "Range"):
        assert needle not in src


def test_cache_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("LIPSYNC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert fm.cache_dir() == tmp_path / "lipsync"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fm.cache_dir() == tmp_path / "home" / ".cache" / "lipsync"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert fm.cache_dir() == tmp_path / "home" / ".cache" / "lipsync"
