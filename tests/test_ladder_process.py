"""The precision ladder off the live process, and new avatars in seconds.

Export and ladder run in a child process (export.ladder_process), so a first start leaves the
live process as a warm start leaves it; a new avatar on a checkpoint laddered here reuses the
earlier choice when the gate passes on its own crops; a candidate that fails in any way is
refused and the ladder goes on."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading

import pytest

from conftest import ROOT
from models.errors import LipsyncError

AUTO = dict(runtime="auto", precision="auto", device="auto")


def _mirrored(photo, path):
    """Another photo: the same face mirrored and tinted (another file, other crops)."""
    import cv2
    import numpy as np

    img = cv2.flip(cv2.imread(str(photo)), 1).astype(np.float32) * np.array([1.1, 0.95, 0.85], np.float32)
    cv2.imwrite(str(path), np.clip(img, 0, 255).astype(np.uint8))
    return path


def _samples(path):
    """What `lipsync live` calibrates on for this photo, and the first decoder row it computes
    (the same as the CLI's, so the ladder's record is shared with the other tests' starts)."""
    from realtime.avatar import AvatarConfig, load_avatar
    from realtime.compositor import first_shown_row
    from realtime.generator import ladder_samples

    av = load_avatar(AvatarConfig(str(path)))
    return ladder_samples(path, av), first_shown_row(av.boxes, av.keypoints())


@pytest.mark.slow  # a ladder run of its own
def test_a_candidate_that_fails_in_its_build_is_refused_and_the_ladder_chooses_another(
    generator_ckpt, tmp_path, monkeypatch, caplog
):
    """NNCF raising (not a LipsyncError) in the int8 builds: refused with its reason on one log
    line, never fatal."""
    from export import precision
    from realtime.generator import RuntimeConfig

    # Its own cache: the choice it records (no int8) is no other test's earlier choice.
    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(tmp_path / "cache"))

    def nncf_fails(*a, **k):
        raise RuntimeError("nncf: quantization failed\non a second line")

    monkeypatch.setattr(precision, "quantize_openvino", nncf_fails)
    caplog.set_level(logging.INFO, logger="export")
    got = precision.choose(generator_ckpt, RuntimeConfig(**AUTO), first_row=48, remeasure=True)
    int8 = [t for t in got.trials if t.runtime == "openvino" and t.precision.startswith("int8")]
    if not int8:
        pytest.skip("no OpenVINO int8 candidates here (openvino and nncf not installed)")
    assert all(t.status == "refused" for t in int8)
    assert int8[0].reason == "RuntimeError: nncf: quantization failed on a second line"
    assert not got.precision.startswith("int8") and got.decoder_path.is_file()
    refused = [r.getMessage() for r in caplog.records if "refused: RuntimeError" in r.getMessage()]
    assert refused and all("\n" not in m for m in refused)


@pytest.mark.slow  # a ladder run (shared with the CLI tests' starts on this photo when they ran first)
def test_a_new_avatar_reuses_the_earlier_choice_when_the_gate_passes_on_its_crops(
    generator_ckpt, photo, tmp_path, monkeypatch, caplog
):
    from export import precision
    from realtime.generator import RuntimeConfig

    cfg = RuntimeConfig(**AUTO)
    mine, row = _samples(photo)
    first = precision.choose(generator_ckpt, cfg, first_row=row, avatar=mine)
    new, new_row = _samples(_mirrored(photo, tmp_path / "other.png"))
    assert new_row == row  # the same decoder rows: an earlier choice applies

    def no_ladder(*a, **k):
        raise AssertionError("the ladder ran again for an avatar the earlier choice suits")

    monkeypatch.setattr(precision, "_run_ladder", no_ladder)
    caplog.set_level(logging.INFO, logger="export")
    got = precision.lookup(generator_ckpt, cfg, first_row=row, avatar=new)
    assert got is not None and got.decoder_path == first.decoder_path
    assert any("on this avatar" in r.getMessage() for r in caplog.records)
    # Recorded for the new avatar: its next start reads the record, with no check.
    again = precision.choose(generator_ckpt, cfg, first_row=row, avatar=new)
    assert again.decoder_path == first.decoder_path
    records = [json.loads(p.read_text()) for p in first.decoder_path.parent.glob("ladder-*.json")]
    mine = [r for r in records if r.get("avatar") == new.key]
    assert len(mine) == 1 and len(mine[0]["psnr_db_on_avatar"]) == 2 and mine[0]["reused_from"]


@pytest.mark.slow  # a ladder run (shared with the CLI tests' starts on this photo when they ran first)
def test_a_new_avatar_on_which_the_earlier_choice_fails_the_gate_is_laddered_again(
    generator_ckpt, photo, tmp_path, monkeypatch, caplog
):
    from export import precision
    from realtime.generator import RuntimeConfig

    cfg = RuntimeConfig(**AUTO)
    mine, row = _samples(photo)
    precision.choose(generator_ckpt, cfg, first_row=row, avatar=mine)
    new, _ = _samples(_mirrored(photo, tmp_path / "other.png"))
    # A gate nothing can pass, not even fp32 against itself (capped at 200 dB): the check fails.
    monkeypatch.setattr(precision, "GATE_MEAN_DB", 1000.0)
    ran = []

    class Laddered(Exception):
        pass

    def ladder(*a, **k):
        ran.append(a)
        raise Laddered

    monkeypatch.setattr(precision, "_run_ladder", ladder)
    caplog.set_level(logging.INFO, logger="export")
    assert precision.lookup(generator_ckpt, cfg, first_row=row, avatar=new) is None
    assert any("choosing again for it" in r.getMessage() for r in caplog.records)
    with pytest.raises(Laddered):
        precision.choose(generator_ckpt, cfg, first_row=row, avatar=new)
    assert len(ran) == 1 and ran[0][6] is new  # calibrated on the new avatar


def test_errors_in_the_child_are_the_same_one_line(generator_ckpt, tmp_path):
    from export import ladder_process, precision
    from realtime.generator import RuntimeConfig

    bad = tmp_path / "truncated.pth"
    bad.write_bytes(generator_ckpt.read_bytes()[:1_000_000])
    with pytest.raises(LipsyncError) as here:
        precision.choose(bad, RuntimeConfig(**AUTO), first_row=48)
    with pytest.raises(LipsyncError) as there:
        ladder_process.choose(bad, RuntimeConfig(**AUTO), first_row=48)
    assert str(there.value) == str(here.value) and "\n" not in str(there.value)


def _children() -> set[int]:
    me = str(os.getpid())
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == me:
                        out.add(int(d))
            except OSError:
                continue
    return out


def test_cancel_kills_the_child(generator_ckpt, tmp_path, monkeypatch):
    """A start cancelled while the child exports: the child is killed, the caller told."""
    from export import ladder_process
    from realtime.generator import RuntimeConfig

    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(tmp_path / "cache"))  # never seen: it must export
    exporting, cancel = threading.Event(), threading.Event()

    class Watch(logging.Handler):
        def emit(self, record):
            if "exporting" in record.getMessage():
                exporting.set()

    watch = Watch(logging.INFO)
    logger = logging.getLogger("export")
    logger.addHandler(watch)
    level = logger.level
    logger.setLevel(logging.INFO)
    before = _children()
    outcome = []

    def run():
        try:
            ladder_process.choose(generator_ckpt, RuntimeConfig(**AUTO), first_row=48, cancel=cancel)
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=run)
    t.start()
    try:
        assert exporting.wait(120), "the child never started exporting"
        child = _children() - before
        assert len(child) == 1
        cancel.set()
        t.join(30)
    finally:
        cancel.set()
        logger.removeHandler(watch)
        logger.setLevel(level)
    assert not t.is_alive() and isinstance(outcome[0], ladder_process.LadderCancelled)
    assert not (_children() & child)  # killed and reaped


def test_ctrl_c_during_a_first_start_stops_the_child_and_is_one_line(generator_ckpt, photo, speech_wav, tmp_path):
    env = {**os.environ, "LIPSYNC_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lipsync.cli", "live", "--avatar", str(photo), "--audio", str(speech_wav)]
        + ["--checkpoint", str(generator_ckpt), "--to", "null", "--verbose"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen, pid = "", None
    try:
        for line in proc.stderr:  # waits on the child's own log line, not on time
            seen += line
            m = re.search(r"exporting and laddering in process (\d+)", line)
            if m:
                pid = int(m.group(1))
            if pid and "exporting" in line and "ONNX" in line:
                break
        assert pid, seen
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 130 and "Traceback" not in rest, rest
    assert rest.strip().splitlines()[-1] == "interrupted", rest
    assert not os.path.exists(f"/proc/{pid}")  # killed (and reaped) before the CLI exited


RSS_CODE = """
import json, logging, sys
logging.basicConfig(level=logging.INFO)
from realtime import threads
threads.apply(threads.plan("live"))
from realtime.live import build_renderer
avatar, renderer = build_renderer(sys.argv[1], checkpoint=sys.argv[2], engine="wav2lip")
rss = [int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmRSS:")][0] / 1024
print(json.dumps({"rss_mb": rss, "torch": "torch" in sys.modules, "nncf": "nncf" in sys.modules}))
"""


@pytest.mark.slow
def test_a_first_start_leaves_the_live_process_as_a_warm_start_does(generator_ckpt, photo, tmp_path):
    """RSS with the generator built, after a first start (export and ladder, in the child) and
    after a warm one, each measured by the run itself in a fresh process: within 10%."""
    env = {**os.environ, "LIPSYNC_CACHE_DIR": str(tmp_path / "cache")}  # a checkpoint never seen

    def start():
        proc = subprocess.run(
            [sys.executable, "-c", RSS_CODE, str(photo), str(generator_ckpt)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr

    first, first_log = start()
    warm, warm_log = start()
    assert "choosing the generator's precision" in first_log and "verified against torch" in first_log
    assert "chosen earlier on this machine" in warm_log
    assert not first["torch"] and not first["nncf"], first
    assert abs(first["rss_mb"] - warm["rss_mb"]) <= 0.10 * warm["rss_mb"], (first, warm)
