"""The JSON API for headless sessions hosted by `lipsync serve` (realtime.service.manager):

  GET    /api/sessions        every session: its request, state, frames, drops, per-output counts
  POST   /api/sessions        JSON {"id", "avatar", "audio", "outputs", ...} starts one -> 201
  DELETE /api/sessions/{id}   stops it (its files are finalised) -> its last figures
  POST   /api/sessions/{id}/offer   SDP offer -> answer: watch a session that has the "webrtc"
                              output (any number of viewers, fanned out by aiortc's MediaRelay)
  GET    /watch/{id}          a page that does that in a browser

A session started here may use devices, read files, write recordings and stream to URLs only
as far as the operator's SessionPolicy allows (realtime.service.policy; refused with 403).

Starting a session loads its avatar (and, for the first one, chooses and loads the shared
generator): blocking work, run off the event loop so the studio's streams keep going.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from pathlib import Path

import av

from lipsync.web.guard import Body, Routes
from lipsync.web.tasks import spawn
from lipsync.web.tracks import TrackConfig, WebRtcOutput, make_tracks
from models.errors import LipsyncError
from realtime.config import EngineConfig
from realtime.service.manager import SessionManager, SessionRequest, StartCancelled
from realtime.service.policy import NotAllowed, SessionPolicy

log = logging.getLogger(__name__)
WATCH_PAGE = Path(__file__).resolve().parent / "static" / "watch.html"


class _Watched:
    """A session's WebRTC output: one pair of tracks, relayed to every viewer."""

    def __init__(self, out: WebRtcOutput):
        from aiortc.contrib.media import MediaRelay  # aiortc: the web extra, needed only by lipsync serve

        self.out = out
        self.video, self.audio = make_tracks(out)
        self.relay = MediaRelay()
        self.peers: set = set()

    async def hang_up(self) -> None:
        for pc in list(self.peers):
            self.peers.discard(pc)
            await pc.close()


def _own_copy(source):
    """A track giving each viewer frames of its own. MediaRelay hands every subscriber the same
    PyAV frame object, and each peer's encoder converts it on a thread of its own: two encoders
    on one frame crash PyAV (seen: a segfault with two viewers). The copy is made here, on the
    event loop, one at a time."""
    from aiortc import MediaStreamTrack  # aiortc: the web extra, needed only by lipsync serve

    class OwnCopy(MediaStreamTrack):
        kind = source.kind

        async def recv(self):
            f = await source.recv()
            if self.kind == "video":
                c = av.VideoFrame.from_ndarray(f.to_ndarray(format="bgr24"), format="bgr24")
            else:
                c = av.AudioFrame.from_ndarray(f.to_ndarray(), format=f.format.name, layout=f.layout.name)
                c.sample_rate = f.sample_rate
            c.pts, c.time_base = f.pts, f.time_base
            return c

        def stop(self):
            super().stop()
            source.stop()

    return OwnCopy()


class _EndsViewing:
    """The engine's sink for the "webrtc" output; the session ending closes its viewers'
    connections (a sender whose track ends just stops sending: the viewer would wait on).

    Pushed, not pulled (unlike the studio's speech mode): a headless session is a capture engine
    whose clock is its audio input (a file read in real time, a device), batched with other
    sessions on one generator, often beside file/RTMP sinks that have no clock of their own. Its
    tracks show its frames by their timestamps (lipsync.web.tracks, pushed mode); a viewer's
    recv() cannot set the pace of an input that is already paced, and MediaRelay pulls the
    tracks once for every viewer, so no viewer's clock is the session's either."""

    def __init__(self, watched: _Watched, loop: asyncio.AbstractEventLoop, on_close=None):
        self.watched, self.loop, self._on_close = watched, loop, on_close
        self.out, self._sink = watched.out, watched.out.sink(0)
        self.name = "webrtc"

    def send_video(self, frame) -> None:
        self._sink.send_video(frame)

    def send_audio(self, chunk) -> None:
        self._sink.send_audio(chunk)

    def close(self) -> None:
        self.out.close()
        self.loop.call_soon_threadsafe(lambda: spawn(self.watched.hang_up()))
        if self._on_close is not None:
            self._on_close()


class WebRtcOutputs:
    """The server's "webrtc" output for headless sessions (SessionManager's local_outputs)."""

    def __init__(self, cfg: EngineConfig, loop: asyncio.AbstractEventLoop):
        self.cfg, self.loop = cfg, loop
        self.watched: dict[str, _Watched] = {}
        self._lock = threading.Lock()

    def make(self, session_id: str):
        """Called from the thread that starts the session."""
        out = WebRtcOutput(TrackConfig(fps=self.cfg.fps, audio_rate_hz=self.cfg.output_audio_rate_hz), self.loop)
        watched = _Watched(out)
        with self._lock:
            old = self.watched.get(session_id)
            self.watched[session_id] = watched
        if old is not None:  # the same id started again: its old viewers are hung up on
            old.out.close()
            self.loop.call_soon_threadsafe(lambda: spawn(old.hang_up()))
        return _EndsViewing(watched, self.loop, functools.partial(self._forget, session_id, watched))

    def _forget(self, session_id: str, watched: _Watched) -> None:
        """The session ended: its tracks go (not those of a newer session under the same id)."""
        with self._lock:
            if self.watched.get(session_id) is watched:
                del self.watched[session_id]

    async def close(self) -> None:
        for w in list(self.watched.values()):
            w.out.close()
            await w.hang_up()


def add_session_routes(
    routes: Routes, manager: SessionManager, error, outputs: WebRtcOutputs | None, policy: SessionPolicy
) -> None:
    """`error(status, message)` -> the server's JSON error response; `outputs`: the "webrtc"
    output's registry (None: sessions cannot be watched over WebRTC); `policy`: what a session
    started here may touch."""

    async def list_sessions(request):
        from aiohttp import web  # aiohttp: the web extra, needed only by lipsync serve

        sessions = await asyncio.to_thread(manager.list)
        return web.json_response({"sessions": sessions, "service": manager.service_summary()})

    async def start(request):
        from aiohttp import web  # aiohttp: the web extra, needed only by lipsync serve

        try:
            doc = await request.json()
        except Exception:
            return error(
                400,
                'sessions: expected a JSON body {"id": ..., "avatar": ..., "audio": ..., "outputs": '
                "[...]}, found something else; send JSON",
            )
        try:
            req = policy.admit(SessionRequest.from_json(doc))
            desc = await asyncio.to_thread(manager.start, req)
        except NotAllowed as e:
            return error(403, str(e))
        except LipsyncError as e:
            conflict = isinstance(e, StartCancelled) or "already running" in e.found  # the state, not the request
            return error(409 if conflict else 422, str(e))
        return web.json_response(desc, status=201)

    async def stop(request):
        from aiohttp import web  # aiohttp: the web extra, needed only by lipsync serve

        sid = request.match_info["sid"]
        try:
            desc = await asyncio.to_thread(manager.stop, sid)
        except KeyError:
            return error(
                404,
                f"sessions: expected the id of a session, found {sid!r}, which is not one; "
                "GET /api/sessions lists them",
            )
        return web.json_response(desc)

    async def offer(request):
        from aiohttp import web  # aiohttp, aiortc: the web extra, needed only by lipsync serve
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        sid = request.match_info["sid"]
        watched = None if outputs is None else outputs.watched.get(sid)
        if watched is None or watched.out.closed:
            return error(
                409,
                f'watch {sid}: expected a running session with the "webrtc" output, found '
                f"{'none by that id' if sid not in manager.requests else 'none with it running'}; "
                'start it with "outputs": ["webrtc", ...]',
            )
        try:
            params = await request.json()
            sdp = params["sdp"]
            if params.get("type") != "offer" or not isinstance(sdp, str) or not sdp.startswith("v=0"):
                raise ValueError
        except Exception:
            return error(
                400,
                'watch: expected JSON {"sdp": "v=0...", "type": "offer"}, found something else; send the '
                "RTCPeerConnection's localDescription",
            )
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # host candidates only (lipsync.web.ice)
        watched.peers.add(pc)

        @pc.on("connectionstatechange")
        async def on_state():
            if pc.connectionState in ("failed", "closed"):
                watched.peers.discard(pc)
                await pc.close()

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            pc.addTrack(_own_copy(watched.relay.subscribe(watched.video)))
            pc.addTrack(_own_copy(watched.relay.subscribe(watched.audio)))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:
            watched.peers.discard(pc)
            await pc.close()
            return error(
                400,
                f"watch {sid}: expected an SDP offer aiortc can answer, found: {type(e).__name__}: {e}; "
                "reload the page",
            )
        log.info("session %s: a viewer joined (%d watching)", sid, len(watched.peers))
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})

    async def watch_page(request):
        from aiohttp import web  # aiohttp: the web extra, needed only by lipsync serve

        return web.FileResponse(WATCH_PAGE, headers={"Cache-Control": "no-store"})

    routes.add("GET", "/api/sessions", list_sessions)
    routes.add("POST", "/api/sessions/{sid}/offer", offer, Body.JSON)
    routes.add("GET", "/watch/{sid}", watch_page)
    routes.add("POST", "/api/sessions", start, Body.JSON)
    routes.add("DELETE", "/api/sessions/{sid}", stop)
