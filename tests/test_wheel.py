"""The wheel on its own: built from the sources, installed into a fresh venv where nothing of the
checkout is importable, it lip-syncs a file in a folder outside the checkout with the network
unreachable and an empty cache. Everything a run needs must therefore ship as package data (the
face detector, the export's verification and calibration samples) or be made on the fly.

The fresh venv gets the third-party packages it would otherwise download from a `.pth` file naming
this venv's site-packages: a plain path line only extends sys.path, so the `.pth` files inside
that folder (this project's editable install among them) are not run, and `realtime` can only come
from the wheel. The test checks that too, since a pass would prove nothing otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import media
from conftest import ROOT

pytestmark = pytest.mark.slow

FPS = 25
# Shipped data a run cannot do without; each is checked for in the wheel by name.
PACKAGE_DATA = (
    "models/data/face_detection_short_range.tflite",
    "models/data/face_landmark.tflite",
    "export/data/face_a.jpg",
    "export/data/face_b.png",
    "export/data/voice_a.mp3",
    "export/data/voice_b.mp3",
    "export/data/voice_c.mp3",
)
# Refuses internet sockets in every process of the fresh venv: the fallback where a network
# namespace cannot be made.
REFUSE_NETWORK = """import socket

_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


def _refuse(what):
    raise OSError(f"network use refused by the wheel test: {what}")


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _refuse(address)
    return _connect(self, address)


def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _refuse(address)
    return _connect_ex(self, address)


socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
socket.getaddrinfo = lambda *a, **k: _refuse(a[:2])
"""


def _namespace_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare -n is refused: {probe.stderr.strip()}"


def _copy_sources(dst: Path) -> Path:
    """The files git would commit (tracked, or new and not ignored): no build/, egg-info or caches
    of the checkout leak into the wheel."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:
        pytest.skip(f"the sources are listed with git: {listed.stderr.decode().strip()}")
    for rel in filter(None, listed.stdout.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():  # a deleted but still tracked file is listed too
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def _files(folder: Path) -> set[Path]:
    """Every file below `folder`, Python's own bytecode caches left out."""
    return {p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def _clean_env(**extra) -> dict:
    """This environment minus whatever could point Python back at the checkout or a warm cache."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP") and not k.startswith("LIPSYNC_")
    }
    return {**env, **extra}


def test_the_wheel_alone_lip_syncs_a_file_offline(tmp_path, generator_ckpt, photo):
    import av

    # 1. Build the wheel from a copy of the sources, without the network or build isolation.
    src = _copy_sources(tmp_path / "src")
    dist = tmp_path / "dist"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(dist),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=_clean_env(),
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = dist.glob("lipsync_rt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(PACKAGE_DATA) <= names, sorted(set(PACKAGE_DATA) - names)
    assert not [n for n in names if n.startswith(("tests/", "media/", "checkpoints/", "benchmarks/"))]

    # 2. A fresh venv holding only the wheel; third-party packages by a path line.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
            env=_clean_env(),
        ).stdout.strip()
    )
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=240,
        env=_clean_env(),
    )
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    ours = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    (site / "_project_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))

    # 3. A folder outside the checkout with the user's own files, and an empty cache.
    run = tmp_path / "run"
    (run / "mine").mkdir(parents=True)
    ckpt = shutil.copy(generator_ckpt, run / "mine" / "wav2lip_gan.pth")
    avatar = shutil.copy(photo, run / "mine" / "avatar.jpg")
    speech = media.speech_wav(run / "mine" / "hello.wav", "Hello there, nice to see you.")
    cache = tmp_path / "cache"
    env = _clean_env(LIPSYNC_CACHE_DIR=str(cache), HOME=str(tmp_path / "home"))
    where = subprocess.run(
        [
            py,
            "-c",
            "import export, lipsync, mediaio, models, realtime; "
            "print(*(m.__file__ for m in (lipsync, realtime, export, mediaio, models)), "
            "sep='\\n')",
        ],
        cwd=run,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    for path in where.stdout.split():
        assert Path(path).is_relative_to(site), f"imported from {path}, not from the wheel in {site}"

    # 4. `lipsync live` into a file with the network unreachable. The pinned fp32 runtime is the
    # precision ladder's one cheap candidate: the export and its verification still run in full.
    cmd = [
        str(venv / "bin" / "lipsync"),
        "live",
        "--checkpoint",
        ckpt,
        "--avatar",
        avatar,
        "--audio",
        str(speech),
        "--to",
        "out.mp4",
        "--runtime",
        "onnxruntime",
        "--precision",
        "fp32",
        "--device",
        "cpu",
    ]
    if _namespace_problem() is None:
        cmd = ["unshare", "-n", *cmd]  # only a loopback device, and that one down
    else:
        (site / "_refuse_network.py").write_text(REFUSE_NETWORK)
        (site / "_refuse_network.pth").write_text("import _refuse_network\n")
    installed_files = _files(site)
    proc = subprocess.run(cmd, cwd=run, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (cache / "exports").is_dir()  # the export was made now, in the empty cache ...
    assert _files(site) == installed_files  # ... and nothing was written beside the package
    with av.open(str(speech)) as c:
        samples = sum(f.samples for f in c.decode(audio=0))  # 16 kHz mono
    with av.open(str(run / "out.mp4")) as c:
        n_video = sum(1 for _ in c.decode(video=0))
    # Video to the end of the audio: one frame for every started 40 ms of speech (the last frames,
    # whose mel window runs past the end, take the last full window as the reference does).
    expected = -(-samples * FPS // 16000)
    assert n_video == expected, (n_video, expected, samples / 16000)
