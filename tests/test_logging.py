"""Logging: library modules only log; the `lipsync` command sets it up once, with -v and -q."""

import json
import logging
import os
import subprocess
import sys

import media
from conftest import ROOT


def _live(tmp_path, photo, speech, before=(), after=()):
    """`lipsync [before] live ... [after]` with the auto engine in a folder with no checkpoint: it
    logs which engine it chose (INFO) and where it looked for weights (DEBUG)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LIPSYNC_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "lipsync.cli",
            *before,
            "live",
            "--avatar",
            str(photo),
            "--audio",
            str(speech),
            "--to",
            "null",
            *after,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_quiet_hides_info_and_verbose_shows_a_library_modules_debug(tmp_path, photo):
    speech = media.speech_wav(tmp_path / "hi.wav", "Hi.")
    default = _live(tmp_path, photo, speech)
    quiet = _live(tmp_path, photo, speech, before=["-q"])  # before the command ...
    verbose = _live(tmp_path, photo, speech, after=["-v"])  # ... or after it
    for proc in (default, quiet, verbose):
        assert proc.returncode == 0, proc.stderr
        assert "live: " in proc.stderr  # the command's own line stays at every level
    engine_line = "INFO realtime.live: engine: procedural"
    looked_line = "DEBUG realtime.live: no wav2lip_gan.pth or wav2lip.pth in"
    assert engine_line in default.stderr and looked_line not in default.stderr
    assert "INFO " not in quiet.stderr and "DEBUG " not in quiet.stderr
    assert engine_line in verbose.stderr and looked_line in verbose.stderr


def test_importing_the_library_adds_no_handler_and_changes_no_level():
    """Every module of the three packages (those whose optional extra is missing excepted)."""
    code = """
import importlib, json, logging, pkgutil
skipped = []
for pkg in ("lipsync", "realtime", "export", "mediaio", "models"):
    for m in pkgutil.walk_packages(importlib.import_module(pkg).__path__, pkg + "."):
        try:
            importlib.import_module(m.name)
        except ImportError as e:  # an optional extra (web, livekit, pipecat, ray) not installed
            skipped.append(f"{m.name}: {e}")
import inference
root = logging.getLogger()
ours = [n for n, lg in logging.root.manager.loggerDict.items()
        if n.split(".")[0] in ("lipsync", "realtime", "export", "mediaio", "models") and isinstance(lg, logging.Logger)
        and (lg.handlers or lg.level != logging.NOTSET)]
print(json.dumps({"handlers": len(root.handlers), "level": logging.getLevelName(root.level),
                  "disabled": logging.root.manager.disable, "ours": ours, "skipped": skipped}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (got["handlers"], got["level"], got["disabled"], got["ours"]) == (0, "WARNING", 0, []), got


def test_the_quantizers_root_logger_chatter_is_dropped_without_touching_the_root(caplog):
    """ONNX Runtime's quantizer logs with the module-level `logging.warning` (the root logger).
    Inside `_quiet_ort_quantizer` its records are dropped; everyone else's still arrive, and the
    root logger's level, handlers and the global disable are as before."""
    import onnxruntime.quantization

    from export.quantize import _quiet_ort_quantizer

    inside_ort = os.path.join(os.path.dirname(onnxruntime.quantization.__file__), "stand_in.py")
    chatter = compile("import logging\nlogging.warning('please consider pre-processing')", inside_ort, "exec")
    root = logging.getLogger()
    before = (root.level, list(root.handlers), list(root.filters), logging.root.manager.disable)
    caplog.set_level(logging.INFO, logger="export")
    with _quiet_ort_quantizer():
        exec(chatter, {})
        logging.getLogger("export.quantize").info("building int8 decoder")
        logging.warning("someone else's root warning")
    exec(chatter, {})  # after it, the quantizer's records flow again
    got = [(r.name, r.getMessage()) for r in caplog.records]
    assert got == [
        ("export.quantize", "building int8 decoder"),
        ("root", "someone else's root warning"),
        ("root", "please consider pre-processing"),
    ], got
    assert (root.level, list(root.handlers), list(root.filters), logging.root.manager.disable) == before


def test_the_quantizer_leaves_no_handler_behind_in_a_program_without_logging_set_up():
    """`logging.warning` on a root with no handler would call basicConfig(): a stand-in prevents it."""
    code = """
import logging, os, onnxruntime.quantization
from export.quantize import _quiet_ort_quantizer
where = os.path.join(os.path.dirname(onnxruntime.quantization.__file__), "stand_in.py")
with _quiet_ort_quantizer():
    exec(compile("import logging\\nlogging.warning('chatter')", where, "exec"), {})
print(len(logging.getLogger().handlers))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0" and "chatter" not in proc.stderr, proc.stdout + proc.stderr
