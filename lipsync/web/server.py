"""`lipsync serve`: the browser studio. One page, a JSON API beside it, WebRTC both ways.

  GET  /                 the page (plain HTML/JS from this package; no CDN, no build step)
  POST /offer            SDP offer -> answer; the browser's microphone in, the avatar out
  GET  /api/stats        engine stats, WebRTC counters, process CPU and memory
  POST /api/avatar       a photo or short video (multipart field 'file') becomes the avatar
  POST /api/speak        an audio file (multipart field 'file') is played through the avatar
  POST /api/interrupt    cut the file that is playing
  POST /api/bye          the page is going away (sent as a beacon)
  /api/sessions          headless sessions (lipsync.web.sessions_api): list, start, stop
One browser at a time: a new connection takes over from the previous one. Bound to 127.0.0.1
by default; any other host requires the token printed at start (Bearer header or ?token=).
Every request passes lipsync.web.guard first (Host, Origin, token, Content-Type); sessions
started over the API pass the operator's SessionPolicy (realtime.service.policy).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from lipsync.web.guard import Access, Body, Routes, make_guard
from lipsync.web.ice import is_loopback, offer_candidates_for
from lipsync.web.session import Loaded, Session
from lipsync.web.sessions_api import WebRtcOutputs, add_session_routes
from lipsync.web.tasks import spawn
from lipsync.web.uploads import AUDIO_KINDS, IMAGE_KINDS, VIDEO_KINDS, UploadError, check_pixels, read_upload
from mediaio.audio import AudioTooLong, decode_audio
from models.errors import LipsyncError
from realtime.config import EngineConfig
from realtime.service.policy import SessionPolicy
from realtime.stats import rss_mb

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
MIN_SPEECH_S = 0.2


@dataclass(frozen=True)
class StudioConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None  # required on the API and /offer when set
    allowed_hosts: tuple[str, ...] = ()  # Host names besides IP addresses, localhost and `host`
    policy: SessionPolicy = SessionPolicy()  # what sessions started over the API may touch
    max_audio_upload_bytes: int = 16 * 2**20
    max_avatar_upload_bytes: int = 32 * 2**20
    max_avatar_pixels: int = 25_000_000  # a 6000x4000 photo; per frame for a video
    max_speech_s: float = 120.0
    max_speech_channels: int = 2  # with max_speech_s at 48 kHz: the decoded samples' bound
    # A browser that vanished without a goodbye: ICE "disconnected" this long, or no microphone
    # audio this long while the microphone drives the avatar, ends its session.
    disconnect_grace_s: float = 3.0


class Studio:
    """The server's state: the current avatar (with its renderer) and at most one session."""

    def __init__(self, cfg: StudioConfig, engine_cfg: EngineConfig, build):
        """`build(path) -> (avatar, renderer)`: blocking; run off the event loop."""
        self.cfg, self.engine_cfg, self._build = cfg, engine_cfg, build
        self.loaded: Loaded | None = None
        self.enabled = True  # False: no --avatar, only headless sessions are served
        self.session: Session | None = None
        self._avatar_lock = asyncio.Lock()
        self._uploads = tempfile.TemporaryDirectory(prefix="lipsync-studio-")
        self._cpu = (time.process_time(), time.monotonic())
        self.sessions_started = 0
        self.started = time.monotonic()

    async def load_avatar(self, path: str) -> Loaded:
        avatar, renderer = await asyncio.to_thread(self._build, path)
        return Loaded(path, avatar, renderer)

    async def set_avatar(self, path: str) -> Loaded:
        async with self._avatar_lock:
            loaded = await self.load_avatar(path)
            old, self.loaded = self.loaded, loaded
            if self.session is not None:
                await self.session.set_avatar(loaded)
            if old is not None and old.path != path and self.is_upload(old.path):
                Path(old.path).unlink(missing_ok=True)  # a replaced upload: nothing shows it now
            return loaded

    def is_upload(self, path: str) -> bool:
        return Path(path).parent == Path(self._uploads.name)

    def upload_path(self, suffix: str) -> Path:
        return Path(self._uploads.name) / f"{secrets.token_hex(8)}{suffix}"

    def process_stats(self) -> dict:
        cpu0, wall0 = self._cpu
        cpu1, wall1 = time.process_time(), time.monotonic()
        self._cpu = (cpu1, wall1)
        return {
            "cpu_percent": round(100 * (cpu1 - cpu0) / max(1e-6, wall1 - wall0) / (os.cpu_count() or 1), 1),
            "rss_mb": round(rss_mb(), 1),
            "uptime_s": round(wall1 - self.started, 1),
        }

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        self._uploads.cleanup()


# -- HTTP handlers --------------------------------------------------------------------------------


def _error(status: int, message: str):
    from aiohttp import web  # aiohttp: the web extra, needed only by lipsync serve

    return web.json_response({"error": message}, status=status)


def make_app(studio: Studio, manager=None, outputs=None):
    """`manager`: a realtime.service.manager.SessionManager whose sessions /api/sessions controls;
    `outputs`: its "webrtc" output (lipsync.web.sessions_api.WebRtcOutputs)."""
    from aiohttp import web  # aiohttp: the web extra, needed only by lipsync serve

    @web.middleware
    async def upload_errors(request, handler):
        try:
            return await handler(request)
        except UploadError as e:
            return _error(e.status, str(e))

    async def page(request):
        if not studio.enabled:
            return _error(
                404,
                "studio: expected an avatar for the browser studio, found none; start lipsync serve "
                "with --avatar (sessions: GET /api/sessions)",
            )
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def offer(request):
        try:
            params = await request.json()
            sdp, kind = params["sdp"], params["type"]
            if kind != "offer" or not isinstance(sdp, str) or not sdp.startswith("v=0"):
                raise ValueError
        except Exception:
            return _error(
                400,
                'offer: expected JSON {"sdp": "v=0...", "type": "offer"}, found something '
                "else; send the RTCPeerConnection's localDescription",
            )
        if not studio.enabled:
            return _error(404, "offer: expected a studio avatar, found none; start lipsync serve with --avatar")
        if studio.loaded is None:
            return _error(503, "offer: expected an avatar, found none loaded yet; retry in a moment")
        try:
            answer = await _connect(studio, sdp)
        except ValueError as e:
            return _error(400, f"offer: expected an SDP offer aiortc can answer, found: {e}; reload the page")
        return web.json_response({"sdp": answer.sdp, "type": answer.type})

    async def stats(request):
        s = studio.session
        loaded = studio.loaded
        body = {
            "process": studio.process_stats(),
            "sessions": 0 if s is None or s.closed.is_set() else 1,
            "sessions_started": studio.sessions_started,
            "avatar": None
            if loaded is None
            else {
                "name": Path(loaded.path).name,
                "width": loaded.avatar.size[0],
                "height": loaded.avatar.size[1],
                "mouth_box": loaded.mouth_box(),
                "fps": studio.engine_cfg.fps,
            },
            "session": None if s is None or s.closed.is_set() else await asyncio.to_thread(s.stats),
        }
        return web.json_response(body)

    async def avatar(request):
        up = await read_upload(request, studio.cfg.max_avatar_upload_bytes, {**IMAGE_KINDS, **VIDEO_KINDS}, "avatar")
        path = studio.upload_path(up.suffix)
        path.write_bytes(up.data)
        try:
            await asyncio.to_thread(check_pixels, up, path, studio.cfg.max_avatar_pixels, f"avatar {up.filename}")
            loaded = await studio.set_avatar(str(path))
        except UploadError:
            path.unlink(missing_ok=True)
            raise
        except LipsyncError as e:
            path.unlink(missing_ok=True)
            return _error(422, f"avatar {up.filename}: expected {e.expected}, found {e.found}; {e.fix}")
        except Exception as e:  # a decoder giving up on a broken file deep inside OpenCV or FFmpeg
            path.unlink(missing_ok=True)
            log.debug("avatar upload failed", exc_info=True)
            return _error(
                422,
                f"avatar {up.filename}: expected a readable {up.kind} file, found one that fails to "
                f"decode ({type(e).__name__}); re-export it",
            )
        return web.json_response(
            {
                "ok": True,
                "name": up.filename,
                "width": loaded.avatar.size[0],
                "height": loaded.avatar.size[1],
                "mouth_box": loaded.mouth_box(),
            }
        )

    async def speak(request):
        s = studio.session
        up = await read_upload(request, studio.cfg.max_audio_upload_bytes, AUDIO_KINDS, "speak")
        if s is None or s.closed.is_set():
            return _error(409, "speak: expected a connected browser, found none; open the page and press Connect")
        path = studio.upload_path(up.suffix)
        path.write_bytes(up.data)
        cfg = studio.cfg
        limit = int(cfg.max_speech_s * 48_000 * cfg.max_speech_channels)
        try:
            decoded = await asyncio.to_thread(_decode_audio, str(path), cfg.max_speech_s, limit)
        except AudioTooLong as e:
            return _error(413, f"speak {up.filename}: expected {e.expected}, found {e.found}; {e.fix}")
        except LipsyncError as e:
            return _error(422, f"speak {up.filename}: expected {e.expected}, found {e.found}; {e.fix}")
        finally:
            path.unlink(missing_ok=True)
        pcm, rate = decoded
        if len(pcm) / rate < MIN_SPEECH_S:  # what a truncated upload usually decodes to
            return _error(
                422,
                f"speak {up.filename}: expected at least {MIN_SPEECH_S:g} s of audio, found "
                f"{len(pcm) / rate:.3f} s; the file may be cut short, resend it",
            )
        seconds = await s.speak(pcm, rate)
        return web.json_response({"ok": True, "seconds": round(seconds, 2)})

    async def interrupt(request):
        s = studio.session
        if s is None or s.closed.is_set():
            return _error(409, "interrupt: expected a connected browser, found none; connect first")
        return web.json_response({"ok": True, "interrupted": await s.interrupt()})

    async def bye(request):
        s = studio.session
        if s is not None:
            await s.close()
        return web.json_response({"ok": True})

    cfg = studio.cfg
    app = web.Application(client_max_size=max(cfg.max_audio_upload_bytes, cfg.max_avatar_upload_bytes) + 2**20)
    routes = Routes(app)
    access = Access(cfg.host, cfg.allowed_hosts, cfg.token)
    app.middlewares.extend([make_guard(access, routes, _error), upload_errors])
    routes.add("GET", "/", page)
    app.router.add_static("/static/", STATIC)
    routes.add("POST", "/offer", offer, Body.JSON)
    routes.add("GET", "/api/stats", stats)
    routes.add("POST", "/api/avatar", avatar, Body.UPLOAD)
    routes.add("POST", "/api/speak", speak, Body.UPLOAD)
    routes.add("POST", "/api/interrupt", interrupt)
    routes.add("POST", "/api/bye", bye)
    if manager is not None:
        add_session_routes(routes, manager, _error, outputs, cfg.policy)

    async def on_shutdown(app):
        await studio.close()

    app.on_shutdown.append(on_shutdown)
    return app


def _decode_audio(path: str, max_duration_s: float, max_samples: int):
    d = decode_audio(path, max_duration_s, max_samples)
    return d.pcm.mean(axis=0), d.sample_rate_hz


async def _connect(studio: Studio, sdp: str):
    # aiortc: the web extra, needed only by lipsync serve
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    # No STUN/TURN: the studio answers with its own host address only (see lipsync.web.ice).
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    loop = asyncio.get_running_loop()
    session = Session(pc, studio.loaded, studio.engine_cfg, loop)
    grace = studio.cfg.disconnect_grace_s

    @pc.on("track")
    def on_track(track):
        if track.kind == "audio":
            session.attach_mic(track)

    @pc.on("connectionstatechange")
    async def on_state():
        state = pc.connectionState
        if state in ("failed", "closed"):
            await session.close()
        elif state == "disconnected":
            await asyncio.sleep(grace)  # ICE may recover; a vanished browser does not
            if pc.connectionState in ("disconnected", "failed"):
                await session.close()

    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        _release_mic_packets_at_once(pc)
        pc.addTrack(session.video_track)
        pc.addTrack(session.audio_track)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
    except Exception as e:
        await pc.close()
        raise ValueError(f"{type(e).__name__}: {e}") from None
    old, studio.session = studio.session, session
    if old is not None:
        await old.close()
    studio.sessions_started += 1
    await session.start()
    spawn(_watch_mic(session, grace))
    return pc.localDescription


def _release_mic_packets_at_once(pc) -> None:
    """aiortc holds received audio until 4 more packets have come (80 ms of Opus) before decoding
    it; the capture engine tolerates jitter itself (frames late past max_lateness_ms are skipped),
    so the studio takes each packet as soon as the next one shows it is complete (~20 ms). There
    is no public option: the receiver's buffer is replaced, and left alone if aiortc renames it."""
    from aiortc.jitterbuffer import JitterBuffer  # aiortc: the web extra, needed only by lipsync serve

    for t in pc.getTransceivers():
        if t.kind == "audio" and hasattr(t.receiver, "_RTCRtpReceiver__jitter_buffer"):
            t.receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(capacity=16, prefetch=0)
        elif t.kind == "audio":
            log.warning("aiortc's receiver has no jitter buffer attribute; microphone audio keeps its 80 ms delay")


async def _watch_mic(session: Session, grace_s: float) -> None:
    """A closed tab stops the microphone at once; ICE notices only after its consent checks fail
    (tens of seconds). No microphone audio for `grace_s` while it drives the avatar ends it."""
    last, seen = session.mic_frames, time.monotonic()
    while not session.closed.is_set():
        await asyncio.sleep(grace_s / 4)
        if session.mic_frames != last or session.mode != "mic":
            last, seen = session.mic_frames, time.monotonic()
        elif time.monotonic() - seen > grace_s and session.mic_frames > 0:
            log.info("session: no microphone audio for %.1f s; the browser is gone", grace_s)
            await session.close()


def secured(cfg: StudioConfig) -> StudioConfig:
    """A studio reachable from other machines never runs without a token."""
    if not is_loopback(cfg.host) and not cfg.token:
        return replace(cfg, token=secrets.token_urlsafe(18))
    return cfg


def run_studio(
    avatar: str | None, build, engine_cfg: EngineConfig, cfg: StudioConfig, ready=None, manager=None, sessions=()
) -> int:
    """Serve until interrupted. `build(path) -> (avatar, renderer)` makes an avatar's renderer.
    `avatar` None: no browser studio, only the headless sessions of `manager` (started from
    `sessions`, SessionRequests, before the server listens; all stopped when it ends)."""
    from aiohttp import web  # aiohttp: the web extra, needed only by lipsync serve

    given = cfg.token
    cfg = secured(cfg)
    generated = cfg.token if given is None else None
    offer_candidates_for(cfg.host)
    studio = Studio(cfg, engine_cfg, build)
    studio.enabled = avatar is not None

    async def main():
        if avatar is not None:
            studio.loaded = await studio.load_avatar(avatar)
        outputs = None
        if manager is not None:
            outputs = WebRtcOutputs(engine_cfg, asyncio.get_running_loop())
            manager.local_outputs["webrtc"] = outputs.make
        app = make_app(studio, manager, outputs)
        if manager is not None:

            async def stop_sessions(_app=None):
                await asyncio.to_thread(manager.close)
                await outputs.close()

            app.on_shutdown.append(stop_sessions)
        runner = web.AppRunner(app, access_log=None)
        try:
            for req in sessions:
                await asyncio.to_thread(manager.start, req)
            await runner.setup()
            site = web.TCPSite(runner, cfg.host, cfg.port)
            await site.start()
        except BaseException:  # a later session or the port failed: what had started is finalised
            if runner.server is not None:
                await runner.cleanup()  # runs on_shutdown, stop_sessions included
            elif manager is not None:
                await stop_sessions()
            raise
        port = site._server.sockets[0].getsockname()[1] if cfg.port == 0 else cfg.port
        url = f"http://{'127.0.0.1' if cfg.host in ('0.0.0.0', '::') else cfg.host}:{port}/"
        if avatar is not None:
            print(f"studio: open {url}" + (f"?token={generated}" if generated else ""), flush=True)
        if manager is not None:
            print(
                f"sessions: {len(sessions)} running; {url}api/sessions lists, starts (POST) and stops (DELETE) them",
                flush=True,
            )
        # A generated token is shown once, on stdout, to the operator who started the server; one
        # the operator gave is never repeated. Logging never carries either (see lipsync.web.guard).
        if generated:
            print(f"studio: token {generated} (generated; required on /offer and /api/)", flush=True)
        elif cfg.token:
            print("studio: the --token given is required on /offer and /api/ (add ?token=... to the URL)", flush=True)
        if ready is not None:
            ready(port)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())
    return 0
