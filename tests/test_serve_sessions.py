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


async def recvonly_peer(client, path: str):
    """An aiortc peer that only receives (video and audio), connected through the server's offer
    endpoint `path`: (the peer connection, {kind: remote track})."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    tracks: dict = {}
    pc.on("track", lambda t: tracks.__setitem__(t.kind, t))
    await pc.setLocalDescription(await pc.createOffer())
    r = await client.post(path, json={"sdp": pc.localDescription.sdp, "type": "offer"})
    assert r.status == 200, await r.text()
    await pc.setRemoteDescription(RTCSessionDescription(**await r.json()))
    return pc, tracks


def video_frames(path) -> int:
    with av.open(str(path)) as f:
        return sum(1 for _ in f.decode(video=0))


def serve(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lipsync.cli", "serve", "--port", "0", *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sessions_hosted_together_start_and_stop_over_the_api(tmp_path, generator_ckpt, photo, speech_wav):
    mirror = tmp_path / "mirror.jpg"
    cv2.imwrite(str(mirror), cv2.imread(str(photo))[:, ::-1])
    sessions = tmp_path / "sessions.json"
    sessions.write_text(
        json.dumps(
            [
                {"id": "a", "avatar": str(photo), "audio": str(speech_wav), "outputs": [str(tmp_path / "a.mkv")]},
                {"id": "b", "avatar": str(mirror), "audio": str(speech_wav), "outputs": ["null"]},
            ]
        )
    )
    proc = serve(
        "--sessions",
        sessions,
        "--checkpoint",
        generator_ckpt,
        "--runtime",
        "onnxruntime",
        "--precision",
        "fp32",
        "--blend",
        "hard",
        "--allow-read-dir",
        Path(photo).parent,
        "--allow-write-dir",
        tmp_path,
    )
    try:
        line = ""
        while not line.startswith("sessions:"):
            line = proc.stdout.readline()
            assert line, f"serve exited early: {proc.stderr.read()[-3000:]}"
        api = (
            line.split()[-1]
            if line.split()[-1].startswith("http")
            else next(w for w in line.split() if w.startswith("http"))
        )
        assert api.startswith("http://127.0.0.1:") and api.endswith("/api/sessions")
        status, doc = call("GET", api)
        live = ("waiting", "running")  # waiting: for its phase of the frame period (a few ms)
        assert status == 200 and {s["id"] for s in doc["sessions"]} == {"a", "b"}
        assert all(s["state"] in live for s in doc["sessions"]), doc

        status, doc = call(
            "POST",
            api,
            {"id": "c", "avatar": str(photo), "audio": str(speech_wav), "outputs": [str(tmp_path / "c.mkv")]},
        )
        assert status == 201 and doc["state"] in ("waiting", "running"), doc
        status, doc = call("POST", api, {"id": "c", "avatar": str(photo), "audio": str(speech_wav)})
        assert status == 409 and "already running" in doc["error"]
        status, doc = call(
            "POST",
            api,
            {"id": "d", "avatar": str(photo), "audio": str(speech_wav), "outputs": ["ftp://example.invalid/x"]},
        )
        assert status == 403 and "\n" not in doc["error"] and "--allow-url" in doc["error"]
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


@pytest.mark.parametrize(
    "content, says",
    [
        (None, "--avatar (the browser studio) and/or --sessions"),
        ("{", "invalid JSON"),
        ('{"id": "a"}', "a JSON list"),
        ('[{"id": "a", "avatar": "nowhere.jpg", "audio": "mic"}]', "existing photo or video"),
        ('[{"id": "a", "avatar": "AV", "audio": "mic"}, {"id": "a", "avatar": "AV", "audio": "mic"}]', "twice"),
    ],
)
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


def test_a_headless_session_is_watched_over_webrtc_by_several_viewers(photo, speech_wav):
    """The "webrtc" output: two aiortc viewers of one session get its 25 fps video (RTP pts step
    3600 at 90 kHz) at the avatar's size; stopping the session ends their tracks."""
    import asyncio

    import numpy as np
    from aiohttp.test_utils import TestClient, TestServer
    from aiortc.mediastreams import MediaStreamError

    from lipsync.web.ice import offer_candidates_for
    from lipsync.web.server import Studio, StudioConfig, make_app
    from lipsync.web.sessions_api import WebRtcOutputs
    from realtime.config import EngineConfig
    from realtime.service.manager import SessionManager
    from realtime.service.policy import SessionPolicy

    offer_candidates_for("127.0.0.1")  # both peers offer loopback only
    height, width = cv2.imread(str(photo)).shape[:2]

    async def viewer(client, sid):
        return await recvonly_peer(client, f"/api/sessions/{sid}/offer")

    async def go():
        cfg = EngineConfig(output_audio_rate_hz=48_000)
        manager = SessionManager(None, cfg=cfg)
        studio = Studio(StudioConfig(policy=SessionPolicy(read_dirs=(str(Path(photo).parent),))), cfg, build=None)
        studio.enabled = False
        outputs = WebRtcOutputs(cfg, asyncio.get_running_loop())
        manager.local_outputs["webrtc"] = outputs.make
        app = make_app(studio, manager, outputs)
        peers = []
        try:
            async with TestClient(TestServer(app, host="127.0.0.1")) as client:
                r = await client.post(
                    "/api/sessions",
                    json={"id": "w", "avatar": str(photo), "audio": str(speech_wav), "outputs": ["webrtc"]},
                )
                assert r.status == 201, await r.text()
                r = await client.post(
                    "/api/sessions",
                    json={"id": "plain", "avatar": str(photo), "audio": str(speech_wav), "outputs": ["null"]},
                )
                assert r.status == 201
                r = await client.post("/api/sessions/plain/offer", json={"sdp": "v=0", "type": "offer"})
                assert r.status == 409 and '"webrtc" output' in (await r.json())["error"]
                assert (await client.get("/watch/w")).status == 200
                peers += [await viewer(client, "w") for _ in range(2)]
                for _, tracks in peers:
                    frames = [await asyncio.wait_for(tracks["video"].recv(), 20) for _ in range(30)]
                    assert set(np.diff([f.pts for f in frames])) == {3600}
                    assert (frames[-1].width, frames[-1].height) == (width, height)
                    audio = await asyncio.wait_for(tracks["audio"].recv(), 20)
                    assert audio.sample_rate == 48_000
                r = await client.delete("/api/sessions/w")
                assert r.status == 200
                for _, tracks in peers:  # the session's end hangs up on its viewers
                    with pytest.raises(MediaStreamError):
                        for _ in range(100):
                            await asyncio.wait_for(tracks["video"].recv(), 20)
        finally:
            for pc, _ in peers:
                await pc.close()
            await asyncio.to_thread(manager.close)
            await outputs.close()

    asyncio.run(go())
