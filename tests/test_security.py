"""`lipsync serve` is closed to other web pages and bounded in what it takes (a real server
process, real HTTP with the headers a browser would send; lipsync.web.guard, SessionPolicy).

A loopback bind is no boundary for a browser: any page it shows can send requests to
127.0.0.1. These tests send what such a page can (no-cors "simple" requests with a JSON body
labelled text/plain, form posts, a preflight, a DNS-rebinding Host) and check each is refused
with nothing started; then what API sessions may touch, and uploads that decode to far more
than they weigh."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import uuid
import zlib
from pathlib import Path

import av
import numpy as np
import pytest

from realtime.service.manager import SessionRequest
from realtime.service.policy import NotAllowed, SessionPolicy
from servers import wait_for

pytest.importorskip("aiohttp")
ROOT = Path(__file__).resolve().parent.parent
EVIL = "http://evil.example"


class Server:
    """`lipsync serve --engine procedural` on a free loopback port; output to files."""

    def __init__(self, tmp: Path, *args, tmpdir: Path | None = None):
        name = f"serve-{uuid.uuid4().hex[:6]}"
        self.out, self.err = tmp / f"{name}.out", tmp / f"{name}.err"
        env = None
        if tmpdir is not None:  # where the studio keeps its uploads
            tmpdir.mkdir(exist_ok=True)
            env = {**os.environ, "TMPDIR": str(tmpdir)}
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lipsync.cli",
                    "serve",
                    "--engine",
                    "procedural",
                    "--port",
                    "0",
                    *map(str, args),
                ],
                cwd=ROOT,
                stdout=out,
                stderr=err,
                env=env,
            )
        wait_for(lambda: "sessions:" in self.out.read_text() or self.proc.poll() is not None, 60, "serve listening")
        line = next(w for w in self.out.read_text().split() if w.startswith("http://"))
        self.port = int(line.split(":")[2].split("/")[0])
        self.origin = f"http://127.0.0.1:{self.port}"

    def call(self, method: str, path: str, body=None, headers=None, host: str | None = None):
        """(status, headers, JSON body or None); a dict body is sent as JSON, labelled as `headers` say."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        try:
            conn.request(method, path, body=data, headers={"Host": host or f"127.0.0.1:{self.port}", **(headers or {})})
            r = conn.getresponse()
            raw = r.read()
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = None
            return r.status, dict(r.getheaders()), doc
        finally:
            conn.close()

    def api(self, method: str, path: str, body=None):
        """A request as the server's own page (or curl) sends it."""
        status, _, doc = self.call(method, path, body, {"Content-Type": "application/json", "Origin": self.origin})
        return status, doc

    def sessions(self) -> dict:
        status, doc = self.api("GET", "/api/sessions")
        assert status == 200, doc
        return {s["id"]: s["state"] for s in doc["sessions"]}

    def rss_kb(self, field: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(field)

    def stop(self) -> tuple[str, str]:
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(timeout=60) == 0, self.err.read_text()[-3000:]
        return self.out.read_text(), self.err.read_text()


def multipart(filename: str, data: bytes) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    head = f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n\r\n'.encode()
    return head + data + f"\r\n--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def one_line_error(doc) -> str:
    assert isinstance(doc, dict) and doc.get("error") and "\n" not in doc["error"], doc
    return doc["error"]


@pytest.fixture
def studio(tmp_path, photo, speech_wav):
    s = Server(
        tmp_path, "--avatar", photo, "--allow-read-dir", Path(speech_wav).parent, "--allowed-host", "studio.test"
    )
    yield s
    s.stop()


def test_other_sites_cannot_drive_the_server(studio, speech_wav):
    srv = studio
    start = {"id": "ok", "avatar": str(Path(speech_wav).parent / "face.jpg"), "audio": str(speech_wav)}
    status, doc = srv.api("POST", "/api/sessions", {**start, "outputs": ["webrtc"]})  # the page itself
    assert status == 201, doc
    before = srv.sessions()
    evil = {**start, "id": "evil"}
    attempts = {
        # fetch(url, {mode: "no-cors", method: "POST", body: JSON, headers: text/plain})
        "no-cors json": ("POST", "/api/sessions", evil, {"Content-Type": "text/plain", "Origin": EVIL}),
        "form post": (
            "POST",
            "/api/sessions",
            b"id=evil&avatar=x",
            {"Content-Type": "application/x-www-form-urlencoded", "Origin": EVIL},
        ),
        "json after a preflight": ("POST", "/api/sessions", evil, {"Content-Type": "application/json", "Origin": EVIL}),
        "origin null": ("POST", "/api/sessions", evil, {"Content-Type": "application/json", "Origin": "null"}),
        "same site, other port": (
            "POST",
            "/api/sessions",
            evil,
            {"Content-Type": "application/json", "Origin": "http://127.0.0.1:1"},
        ),
        "cross-site without origin": (
            "POST",
            "/api/sessions",
            evil,
            {"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"},
        ),
        "stop from elsewhere": ("DELETE", "/api/sessions/ok", None, {"Origin": EVIL}),
        "offer from elsewhere": ("POST", "/offer", {"sdp": "v=0", "type": "offer"}, {"Origin": EVIL}),
        "watch offer from elsewhere": ("POST", "/api/sessions/ok/offer", {"sdp": "v=0"}, {"Origin": EVIL}),
        "interrupt from elsewhere": ("POST", "/api/interrupt", b"", {"Content-Type": "text/plain", "Origin": EVIL}),
        "bye beacon from elsewhere": ("POST", "/api/bye", None, {"Origin": EVIL}),
        "text/plain without origin": ("POST", "/api/sessions", evil, {"Content-Type": "text/plain"}),
        "form to interrupt without origin": (
            "POST",
            "/api/interrupt",
            b"",
            {"Content-Type": "application/x-www-form-urlencoded"},
        ),
    }
    for name, (method, path, body, headers) in attempts.items():
        status, got, doc = srv.call(method, path, body, headers)
        assert status in (403, 415), (name, status, doc)
        one_line_error(doc)
        assert not [h for h in got if h.lower().startswith("access-control-")], (name, got)
    # A preflight: no Access-Control-Allow-* answer, so the browser never sends the JSON POST.
    status, got, _ = srv.call(
        "OPTIONS",
        "/api/sessions",
        None,
        {"Origin": EVIL, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"},
    )
    assert status >= 400 and not [h for h in got if h.lower().startswith("access-control-")], got
    # DNS rebinding: evil.example now resolves to 127.0.0.1; the page's requests carry its name.
    rebound = f"evil.example:{srv.port}"
    for method, path, body in (("GET", "/api/sessions", None), ("GET", "/api/stats", None), ("GET", "/", None)):
        status, _, doc = srv.call(method, path, body, host=rebound)
        assert status == 403 and "--allowed-host" in one_line_error(doc), (path, status)
    status, _, doc = srv.call(
        "POST",
        "/api/sessions",
        evil,
        {"Content-Type": "application/json", "Origin": f"http://{rebound}"},
        host=rebound,
    )
    assert status == 403, doc
    # Nothing started, nothing stopped, the avatar is the one it was.
    assert srv.sessions() == before and before["ok"] in ("waiting", "running"), srv.sessions()
    # What is allowed still works: a name the operator gave, and the page's own requests.
    status, _, doc = srv.call("GET", "/api/stats", host=f"studio.test:{srv.port}")
    assert status == 200 and doc["avatar"]["name"] == "face.jpg", doc
    status, _, _ = srv.call("GET", "/", host=f"localhost:{srv.port}")
    assert status == 200
    status, doc = srv.api("DELETE", "/api/sessions/ok")
    assert status == 200 and doc["state"] == "stopped", doc


def test_api_sessions_touch_only_what_the_operator_allowed(tmp_path, photo, speech_wav):
    readable, writable, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    for d in (readable, writable, elsewhere):
        d.mkdir()
    shutil.copy(speech_wav, readable / "speech.wav")
    shutil.copy(speech_wav, elsewhere / "secret.wav")
    (readable / "link.wav").symlink_to(elsewhere / "secret.wav")
    srv = Server(
        tmp_path,
        "--avatar",
        photo,
        "--allow-read-dir",
        readable,
        "--allow-write-dir",
        writable,
        "--allow-url",
        "udp://127.0.0.1:5999",
    )
    try:
        base = {"avatar": str(photo), "audio": str(readable / "speech.wav"), "outputs": ["null"]}
        refused = [
            ({"audio": "mic"}, "--allow-devices"),
            ({"audio": "mic:3"}, "--allow-devices"),
            ({"avatar": "camera:0"}, "--allow-devices"),
            ({"outputs": ["vcam"]}, "--allow-devices"),
            ({"audio": str(elsewhere / "secret.wav")}, "--allow-read-dir"),
            ({"audio": str(readable / ".." / "elsewhere" / "secret.wav")}, "--allow-read-dir"),
            ({"audio": str(readable / "link.wav")}, "--allow-read-dir"),  # resolved before the check
            ({"avatar": str(elsewhere / "face.jpg")}, "--allow-read-dir"),
            ({"outputs": [str(elsewhere / "x.mkv")]}, "--allow-write-dir"),
            ({"outputs": [str(writable / ".." / "x.mp4")]}, "--allow-write-dir"),
            ({"outputs": ["rtmp://127.0.0.1/live/x"]}, "--allow-url"),
            ({"outputs": ["udp://127.0.0.1:6000"]}, "--allow-url"),
            ({"outputs": ["udp://127.0.0.1:5999.evil.example"]}, "--allow-url"),
        ]
        for i, (change, flag) in enumerate(refused):
            status, doc = srv.api("POST", "/api/sessions", {**base, **change, "id": f"r{i}"})
            assert status == 403 and flag in one_line_error(doc), (change, status, doc)
        assert srv.sessions() == {}
        # What was opened: the served avatar, a file under --allow-read-dir, a recording under
        # --allow-write-dir, a stream under --allow-url, the server's own WebRTC.
        record = writable / "a.mkv"
        status, doc = srv.api(
            "POST",
            "/api/sessions",
            {**base, "id": "a", "outputs": [str(record), "udp://127.0.0.1:5999?pkt_size=1316", "webrtc"]},
        )
        assert status == 201, doc

        def frames() -> int:
            _, doc = srv.api("GET", "/api/sessions")
            return doc["sessions"][0].get("frames") or 0

        wait_for(lambda: frames() >= 25, 60, "a second of the session")
        status, doc = srv.api("DELETE", "/api/sessions/a")
        assert status == 200 and doc["frames"] >= 25, doc
        with av.open(str(record)) as f:
            assert f.streams.video and f.streams.audio
    finally:
        srv.stop()


def test_session_policy_resolves_paths_and_compares_urls_by_host(tmp_path):
    inside = tmp_path / "in"
    inside.mkdir()
    (inside / "a.wav").write_bytes(b"")
    policy = SessionPolicy(read_dirs=(str(inside),), url_prefixes=("rtmp://a.example/live/",))
    req = SessionRequest("s", str(inside / "a.wav"), str(inside / "." / "a.wav"), ("rtmp://a.example/live/x",))
    assert policy.admit(req).audio == str(inside / "a.wav")  # the resolved path goes on
    for outputs in (("rtmp://a.example.evil.net/live/x",), ("rtmp://a.example/other",), ("rtmps://a.example/live/x",)):
        with pytest.raises(NotAllowed, match="--allow-url"):
            policy.admit(SessionRequest("s", str(inside / "a.wav"), str(inside / "a.wav"), outputs))


def opus_bomb(path: Path, hours: float = 1.0) -> Path:
    """`hours` of silence as Opus at 6 kbit/s: ~1.3 MB that decodes to ~690 MB of float32 per
    hour. One second is encoded; its silent packets are then repeated (encoding an hour of it
    would take half a minute)."""
    with av.open(str(path), "w", format="ogg") as c:
        s = c.add_stream("libopus", rate=48_000, layout="mono")
        s.bit_rate = 6000
        f = av.AudioFrame.from_ndarray(np.zeros((1, 48_000), np.int16), format="s16", layout="mono")
        f.sample_rate, f.pts = 48_000, 0
        p = list(s.encode(f))[10]  # past the encoder's start-up: steady silence
        body, dur, tb = bytes(p), p.duration, p.time_base
        for i in range(int(hours * 3600 * 48_000) // dur):
            q = av.Packet(body)
            q.pts = q.dts = i * dur
            q.duration, q.time_base, q.stream = dur, tb, s
            c.mux(q)
    return path


def png_bomb(path: Path, side: int = 20_000) -> Path:
    """A grey PNG of side x side pixels (400 megapixels: 1.2 GB decoded as BGR) in ~0.4 MB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    rows = (b"\x00" + bytes(side)) * 500
    idat = b"".join(comp.compress(rows) for _ in range(side // 500)) + comp.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_uploads_that_decode_to_gigabytes_are_refused_in_bounded_memory(tmp_path, photo):
    """/api/speak with an hour of Opus silence and /api/avatar with a 400-megapixel PNG: refused
    (413, one line) while the server's peak RSS grows by under 100 MB; a replaced avatar upload
    leaves the disk."""
    import asyncio

    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from lipsync.web.ice import offer_candidates_for

    offer_candidates_for("127.0.0.1")  # this peer offers loopback only, like the server
    speech, picture = opus_bomb(tmp_path / "silence.ogg"), png_bomb(tmp_path / "grey.png")
    srv = Server(tmp_path, "--avatar", photo, tmpdir=tmp_path / "tmp")

    async def connect():
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
        status, answer = await asyncio.to_thread(srv.api, "POST", "/offer", offer)
        assert status == 200, answer
        await pc.setRemoteDescription(RTCSessionDescription(**answer))
        return pc

    def upload(path: str, name: str, data: bytes):
        body, ctype = multipart(name, data)
        status, _, doc = srv.call("POST", path, body, {"Content-Type": ctype, "Origin": srv.origin})
        return status, doc

    def peak_growth_mb(send) -> tuple[float, tuple]:
        Path(f"/proc/{srv.proc.pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from now
        rss = srv.rss_kb("VmRSS")
        got = send()
        return (srv.rss_kb("VmHWM") - rss) / 1024, got

    async def go():
        pc = await connect()
        try:
            growth, (status, doc) = await asyncio.to_thread(
                peak_growth_mb, lambda: upload("/api/speak", "silence.ogg", speech.read_bytes())
            )
            assert status == 413 and "at most 120 s" in one_line_error(doc), doc
            assert growth < 100, growth
        finally:
            await pc.close()

    try:
        asyncio.run(go())
        growth, (status, doc) = peak_growth_mb(lambda: upload("/api/avatar", "grey.png", picture.read_bytes()))
        assert status == 413 and "20000x20000" in one_line_error(doc), doc
        assert growth < 100, growth
        uploads = next((tmp_path / "tmp").glob("lipsync-studio-*"))
        assert list(uploads.iterdir()) == []  # the refused file is gone
        mirrored = photo.read_bytes()
        for i in range(2):
            status, doc = upload("/api/avatar", f"face{i}.jpg", mirrored)
            assert status == 200, doc
            assert len(list(uploads.iterdir())) == 1  # the one shown; the one it replaced is deleted
    finally:
        srv.stop()


def test_a_token_never_reaches_the_log(tmp_path, photo):
    token = "tok-" + uuid.uuid4().hex
    srv = Server(tmp_path, "--avatar", photo, "--token", token, "-v")
    try:
        status, _, _ = srv.call("GET", f"/api/stats?token={token}")
        assert status == 200
        assert srv.call("GET", "/api/stats?token=wrong")[0] == 401
        assert srv.call("GET", "/api/stats")[0] == 401  # loopback too, once the operator set a token
        status, _, doc = srv.call("POST", f"/offer?token={token}", b"nonsense", {"Content-Type": "text/plain"})
        assert status == 415, doc
        status, _, doc = srv.call("POST", f"/offer?token={token}", {"sdp": "x"}, {"Content-Type": "application/json"})
        assert status == 400, doc
        status, _, _ = srv.call("POST", f"/api/interrupt?token={token}", None, {"Origin": EVIL})
        assert status == 403
        status, _, _ = srv.call("GET", "/api/stats", headers={"Authorization": f"Bearer {token}"})
        assert status == 200
    finally:
        out, err = srv.stop()
    assert "refused" in err  # the log did record the refusals ...
    assert token not in out and token not in err  # ... and never the token


def test_decoding_stops_at_the_callers_limit(speech_wav):
    from mediaio.audio import AudioTooLong, decode_audio

    full = decode_audio(speech_wav)
    assert decode_audio(speech_wav, max_duration_s=full.duration_s + 0.1).pcm.shape == full.pcm.shape
    with pytest.raises(AudioTooLong, match="at most 1 s of audio"):
        decode_audio(speech_wav, max_duration_s=1.0)
    with pytest.raises(AudioTooLong, match="at most 1000 samples"):
        decode_audio(speech_wav, max_samples=1000)


@pytest.mark.parametrize("ext, kind", [(".png", "png"), (".jpg", "jpeg"), (".bmp", "bmp"), (".webp", "webp")])
@pytest.mark.parametrize("lossless", [False, True])
def test_picture_sizes_come_from_the_header(ext, kind, lossless):
    import cv2

    from lipsync.web.uploads import image_size, sniff

    params = [cv2.IMWRITE_WEBP_QUALITY, 101 if lossless else 80] if ext == ".webp" else []
    ok, buf = cv2.imencode(ext, np.full((37, 53, 3), 90, np.uint8), params)
    data = buf.tobytes()
    assert ok and sniff(data[:16]) == kind
    assert image_size(data, kind) == (53, 37)
    assert image_size(data[:20], kind) is None  # cut short: unknown, and the upload is refused
