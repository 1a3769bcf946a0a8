"""Sessions end cleanly (realtime.service.manager through lipsync serve's JSON API): nothing of
a stopped or cancelled session stays, no lock is held while the shared generator is built, and a
server whose later session fails to start finalises the recordings already started."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import av
import cv2
import pytest

from realtime.config import EngineConfig
from realtime.generator import RuntimeConfig
from realtime.service.manager import SessionManager
from test_serve_sessions import call, wait_for_frames

pytest.importorskip("aiohttp")
ROOT = Path(__file__).resolve().parent.parent
JSON = {"Content-Type": "application/json"}  # what the API takes (no Origin: not a browser page)
FP32 = ("--runtime", "onnxruntime", "--precision", "fp32")  # no ladder: the sessions are what is measured


def allowed(directory) -> list[str]:
    """The serve flags that let API sessions read files under `directory`: the operator's
    SessionPolicy (realtime.service.policy) refuses them otherwise."""
    return ["--allow-read-dir", str(directory)]


def studio_config(directory):
    """StudioConfig whose API sessions may read files under `directory` (see `allowed`)."""
    from lipsync.web.server import StudioConfig
    from realtime.service.policy import SessionPolicy

    return StudioConfig(policy=SessionPolicy(read_dirs=(str(directory),)))


class SlowFirstBuild(SessionManager):
    """The real manager; its generator build waits for the test's `release` (a first ladder
    takes minutes), and every start that asks for the generator is counted."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.building, self.release = threading.Event(), threading.Event()
        self.builds = 0
        self.asking = 0
        self._asked = threading.Condition()

    def _generator(self, avatar_path):
        with self._asked:
            self.asking += 1
            self._asked.notify_all()
        return super()._generator(avatar_path)

    def _build_generator(self, avatar_path):
        self.builds += 1
        self.building.set()
        assert self.release.wait(60), "the test never released the build"
        return super()._build_generator(avatar_path)

    def wait_asking(self, n: int, timeout_s: float) -> bool:
        with self._asked:
            return self._asked.wait_for(lambda: self.asking >= n, timeout_s)


def test_the_api_answers_during_a_generator_build_and_a_stop_cancels_a_start(generator_ckpt, photo, speech_wav):
    from aiohttp.test_utils import TestClient, TestServer

    from lipsync.web.server import Studio, make_app

    cfg = EngineConfig(blend="hard")
    manager = SlowFirstBuild(str(generator_ckpt), RuntimeConfig(), cfg)

    def body(sid):
        return json.dumps({"id": sid, "avatar": str(photo), "audio": str(speech_wav), "outputs": ["null"]})

    async def go():
        studio = Studio(studio_config(Path(photo).parent), cfg, build=None)
        studio.enabled = False
        async with TestClient(TestServer(make_app(studio, manager), host="127.0.0.1")) as client:
            post = {
                sid: asyncio.ensure_future(client.post("/api/sessions", data=body(sid), headers=JSON)) for sid in ("a",)
            }
            assert await asyncio.to_thread(manager.building.wait, 60), "the first start never built"
            r = await asyncio.wait_for(client.get("/api/sessions"), 10)  # not blocked by the build
            assert r.status == 200
            assert [(s["id"], s["state"]) for s in (await r.json())["sessions"]] == [("a", "starting")]
            for sid in ("b", "c"):  # two more starts that need the same generator
                post[sid] = asyncio.ensure_future(client.post("/api/sessions", data=body(sid), headers=JSON))
            assert await asyncio.to_thread(manager.wait_asking, 3, 60)
            stop_c = asyncio.ensure_future(client.delete("/api/sessions/c"))
            starting_c = manager._starting["c"]
            assert await asyncio.to_thread(starting_c.cancelled.wait, 30)
            r = await asyncio.wait_for(client.get("/api/sessions"), 10)
            states = {s["id"]: s["state"] for s in (await r.json())["sessions"]}
            assert states == {"a": "starting", "b": "starting", "c": "stopping"}
            manager.release.set()
            answers = {sid: await p for sid, p in post.items()}
            stopped = await stop_c
            assert answers["a"].status == 201 and answers["b"].status == 201, await answers["a"].text()
            assert answers["c"].status == 409 and "stop while it was starting" in (await answers["c"].json())["error"]
            # The stop waits for the start to give up, up to its timeout (a first build may take longer).
            assert stopped.status == 200 and (await stopped.json())["state"] in ("stopping", "stopped")
            r = await client.get("/api/sessions")
            states = {s["id"]: s["state"] for s in (await r.json())["sessions"]}
            assert states["c"] == "stopped" and states["a"] in ("waiting", "running"), states
            for sid in ("a", "b"):
                r = await client.delete(f"/api/sessions/{sid}")
                assert r.status == 200 and (await r.json())["state"] == "stopped"

    try:
        asyncio.run(go())
        assert manager.builds == 1  # the starts that came during the build waited for it
        # Nothing of the three sessions runs or is held: only their last descriptions stay.
        assert manager.requests == {} and manager._host.sessions == {}
        assert manager._host.service._avatars == {}
        assert [d["id"] for d in manager.list()] == ["c", "a", "b"]
    finally:
        manager.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def serve(*args) -> tuple[subprocess.Popen, str]:
    """A real `lipsync serve` on a free port; (process, the /api/sessions URL)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lipsync.cli", "serve", "--port", "0", *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = ""
    while not line.startswith("sessions:"):
        line = proc.stdout.readline()
        if not line:
            proc.wait(30)
            raise AssertionError(f"serve exited early: {proc.stderr.read()[-3000:]}")
    return proc, next(w for w in line.split() if w.startswith("http"))


def start_and_stop(api: str, n: int, avatar, audio, rss, pid: int) -> dict[int, float]:
    """`n` sessions one after another, each streaming a few frames, then stopped; RSS (via
    `rss(pid)`) after each."""
    after = {}
    for k in range(1, n + 1):
        sid = f"s{k}"
        status, doc = call("POST", api, {"id": sid, "avatar": str(avatar), "audio": str(audio), "outputs": ["null"]})
        assert status == 201, doc
        wait_for_frames(api, sid, 3)
        status, doc = call("DELETE", f"{api}/{sid}")
        assert status == 200 and doc["state"] == "stopped" and doc["frames"] >= 3, doc
        after[k] = rss(pid)
    return after


@pytest.mark.slow
def test_thirty_sessions_started_and_stopped_over_the_api_return_their_memory(
    tmp_path, generator_ckpt, photo, speech_wav
):
    empty = tmp_path / "none.json"
    empty.write_text("[]")
    proc, api = serve(
        "--sessions", empty, "--checkpoint", generator_ckpt, "--blend", "hard", *FP32, *allowed(Path(photo).parent)
    )
    try:
        after = start_and_stop(api, 30, photo, speech_wav, rss_mb, proc.pid)
        _, doc = call("GET", api)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    growth = after[30] - after[3]
    assert growth < 60, f"RSS grew {growth:.0f} MB from the 3rd to the 30th session: {after}"
    assert len(doc["sessions"]) == 30 and all(s["state"] == "stopped" for s in doc["sessions"])


def test_a_session_that_fails_to_start_finalises_the_recordings_already_started(tmp_path, photo, speech_wav):
    """Session b's avatar loses its face in its last frame, found out once the face was tracked
    through the 250 before (a second or two, while a records); then the server gives up. a's
    file must be finalised, not left as the partial file a recording in progress is."""
    import numpy as np

    import media

    face = cv2.imread(str(photo))
    noise = np.random.default_rng(0).integers(0, 255, face.shape, np.uint8)
    faceless = media.video_only(tmp_path / "face-lost.mp4", [face] * 250 + [noise])
    sessions = tmp_path / "sessions.json"
    a = tmp_path / "a.mp4"  # written as .a.partial.mp4 and moved into place when finalised
    sessions.write_text(
        json.dumps(
            [
                {"id": "a", "avatar": str(photo), "audio": str(speech_wav), "outputs": [str(a)]},
                {"id": "b", "avatar": str(faceless), "audio": str(speech_wav), "outputs": ["null"]},
            ]
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "lipsync.cli", "serve", "--port", "0", "--sessions", sessions, "--engine", "procedural"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "none in frame 250" in err and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("error: ") and err.count("error: ") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir() if "a." in p.name) == ["a.mp4"]  # no partial file left
    with av.open(str(a)) as f:  # a was stopped and its file closed before the server gave up
        assert f.streams.video and f.streams.audio
        assert sum(1 for _ in f.decode(video=0)) > 0
