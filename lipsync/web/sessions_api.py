"""The JSON API for headless sessions hosted by `lipsync serve` (realtime.service.manager):

  GET    /api/sessions        every session: its request, state, frames, drops, per-output counts
  POST   /api/sessions        JSON {"id", "avatar", "audio", "outputs", ...} starts one -> 201
  DELETE /api/sessions/{id}   stops it (its files are finalised) -> its last figures

Starting a session loads its avatar (and, for the first one, chooses and loads the shared
generator): blocking work, run off the event loop so the studio's streams keep going.
"""

from __future__ import annotations

import asyncio

from models.errors import LipsyncError
from realtime.service.manager import SessionManager, SessionRequest


def add_session_routes(app, manager: SessionManager, error) -> None:
    """`error(status, message)` -> the server's JSON error response."""

    async def list_sessions(request):
        from aiohttp import web  # aiohttp: the web extra, needed only by lipsync serve

        sessions = await asyncio.to_thread(manager.list)
        return web.json_response({"sessions": sessions, "service": manager.service_summary()})

    async def start(request):
        from aiohttp import web  # aiohttp: the web extra, needed only by lipsync serve

        try:
            doc = await request.json()
        except Exception:
            return error(400, 'sessions: expected a JSON body {"id": ..., "avatar": ..., "audio": ..., "outputs": '
                              '[...]}, found something else; send JSON')
        try:
            req = SessionRequest.from_json(doc)
            desc = await asyncio.to_thread(manager.start, req)
        except LipsyncError as e:
            return error(409 if "already running" in e.found else 422, str(e))
        return web.json_response(desc, status=201)

    async def stop(request):
        from aiohttp import web  # aiohttp: the web extra, needed only by lipsync serve

        sid = request.match_info["sid"]
        try:
            desc = await asyncio.to_thread(manager.stop, sid)
        except KeyError:
            return error(404, f"sessions: expected the id of a session, found {sid!r}, which is not one; "
                              "GET /api/sessions lists them")
        return web.json_response(desc)

    app.router.add_get("/api/sessions", list_sessions)
    app.router.add_post("/api/sessions", start)
    app.router.add_delete("/api/sessions/{sid}", stop)
