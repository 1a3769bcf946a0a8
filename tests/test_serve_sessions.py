"""`lipsync serve --sessions`: several avatars hosted by one server, each with its own outputs,
started and stopped independently over the JSON API (a real server process, real HTTP)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
import cv2
import pytest

pytest.importorskip("aiohttp")
ROOT = Path(__file__).resolve().parent.parent


def call(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_for_frames(api: str, sid: str, n: int, timeout_s: float = 60) -> dict:
    """Poll the API (what a client does) until session `sid` reports `n` frames."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _, doc = call("GET", api)
        s = next(s for s in doc["sessions"] if s["id"] == sid)
        if (s.get("frames") or 0) >= n:
            return s
        time.sleep(0.1)
    raise AssertionError(f"session {sid} reported fewer than {n} frames in {timeout_s} s: {s}")


def video_frames(path) -> int:
    with av.open(str(path)) as f:
        return sum(1 for _ in f.decode(video=0))


def serve(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lipsync.cli", "serve", "--port", "0", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sessions_hosted_together_start_and_stop_over_the_api(tmp_path, generator_ckpt, photo, speech_wav):
    mirror = tmp_path / "mirror.jpg"
    cv2.imwrite(str(mirror), cv2.imread(str(photo))[:, ::-1])
    sessions = tmp_path / "sessions.json"
    sessions.write_text(json.dumps([
        {"id": "a", "avatar": str(photo), "audio": str(speech_wav), "outputs": [str(tmp_path / "a.mkv")]},
        {"id": "b", "avatar": str(mirror), "audio": str(speech_wav), "outputs": ["null"]}]))
    proc = serve("--sessions", sessions, "--checkpoint", generator_ckpt, "--runtime", "onnxruntime",
                 "--precision", "fp32", "--blend", "hard")
    try:
        line = ""
        while not line.startswith("sessions:"):
            line = proc.stdout.readline()
            assert line, f"serve exited early: {proc.stderr.read()[-3000:]}"
        api = line.split()[-1] if line.split()[-1].startswith("http") else next(
            w for w in line.split() if w.startswith("http"))
        assert api.startswith("http://127.0.0.1:") and api.endswith("/api/sessions")
        status, doc = call("GET", api)
        live = ("waiting", "running")  # waiting: for its phase of the frame period (a few ms)
        assert status == 200 and {s["id"] for s in doc["sessions"]} == {"a", "b"}
        assert all(s["state"] in live for s in doc["sessions"]), doc

        status, doc = call("POST", api, {"id": "c", "avatar": str(photo), "audio": str(speech_wav),
                                         "outputs": [str(tmp_path / "c.mkv")]})
        assert status == 201 and doc["state"] in ("waiting", "running"), doc
        status, doc = call("POST", api, {"id": "c", "avatar": str(photo), "audio": str(speech_wav)})
        assert status == 409 and "already running" in doc["error"]
        status, doc = call("POST", api, {"id": "d", "avatar": str(photo), "audio": str(speech_wav),
                                         "outputs": ["ftp://example.invalid/x"]})
        assert status == 422 and "\n" not in doc["error"] and "rtmp" in doc["error"]
        status, doc = call("DELETE", api + "/nobody")
        assert status == 404

        wait_for_frames(api, "a", 25)
        wait_for_frames(api, "c", 25)
        status, a = call("DELETE", api + "/a")
        assert status == 200 and a["state"] == "stopped" and a["frames"] > 0
        (sink,) = a["sinks"].values()
        assert video_frames(tmp_path / "a.mkv") == sink["delivered"] > 0  # finalised when a stopped
        status, doc = call("GET", api)
        states = {s["id"]: s["state"] for s in doc["sessions"]}
        assert states["a"] == "stopped" and states["b"] in live and states["c"] in live, states
        per = doc["service"]["per_session"]
        assert per["a"]["served"] > 0 and per["b"]["served"] > 0  # one shared generator decoded for all
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert video_frames(tmp_path / "c.mkv") > 0  # the server's end stopped c and finalised its file


@pytest.mark.parametrize("content, says", [
    (None, "--avatar (the browser studio) and/or --sessions"),
    ("{", "invalid JSON"),
    ('{"id": "a"}', "a JSON list"),
    ('[{"id": "a", "avatar": "nowhere.jpg", "audio": "mic"}]', "existing photo or video"),
    ('[{"id": "a", "avatar": "AV", "audio": "mic"}, {"id": "a", "avatar": "AV", "audio": "mic"}]', "twice"),
])
def test_serve_refuses_a_bad_sessions_file_in_one_line(tmp_path, photo, content, says):
    args = []
    if content is not None:
        f = tmp_path / "s.json"
        f.write_text(content.replace("AV", str(photo)))
        args = ["--sessions", f]
    proc = serve(*args, "--engine", "procedural")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and says in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
